"""The documentation site builds strictly and documents every public name.

`sphinx-build -W --keep-going`: any warning fails the build, including a broken local link or
heading anchor (MyST reports them), a docstring that reStructuredText cannot parse and a page
left out of the table of contents. Links into this repository (GitHub and Colab addresses,
relative links of the Markdown GitHub renders) and the built pages' own hrefs are checked here;
links to other sites are not (the build runs offline).

The notebook pages show the notebooks executed in their short version, but the build here
executes none of them: the notebooks run once per test run, for this site and for
tests/test_notebooks.py, in the session fixture ``executed_notebooks``
(tests/executed_notebooks.py, loaded through ``pytest_plugins``), which hands the folder of
executed copies to the build in ``ADAGRAD_JAX_EXECUTED_NOTEBOOKS`` (read by docs/conf.py). A
notebook that fails there fails the ``site`` fixture, as it failed the build when the build
executed it. ``sh dev docs`` sets no such variable and the build executes the notebooks itself.
"""

from __future__ import annotations

import ast
import html
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import adagrad_jax
from adagrad_jax import compat, experimental, schedules

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("flax")  # adagrad_jax.nnx is documented too

# After the importorskips: it imports nbclient and nbformat, which myst-nb brings.
from tests.executed_notebooks import EXECUTED_ENV

pytest_plugins = ["tests.executed_notebooks"]  # the session fixture `executed_notebooks`

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _reexported(module) -> set[str]:
    """Public names of a module: defined there, or re-exported as `from x import a as a`."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            names.add(node.name)
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.asname and a.asname == a.name}
    return names


def public_names() -> list[str]:
    import adagrad_jax.nnx as nnx_module

    names = [
        f"adagrad_jax.{n}"
        for n in adagrad_jax.__all__
        if not inspect.ismodule(getattr(adagrad_jax, n))
    ]
    for module in (compat, schedules, experimental, nnx_module):
        names += [f"{module.__name__}.{n}" for n in sorted(_reexported(module))]
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory, executed_notebooks) -> pathlib.Path:
    executed = executed_notebooks.folder_with_all()  # runs the notebooks not run yet
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, EXECUTED_ENV: str(executed)},
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in [
        "index",
        "choosing",
        "changelog",
        "notebooks",
        *API_PAGES,
        "guide/index",
        "guide/getting-started",
        "guide/rule",
        "guide/parity",
        "guide/tables",
        "guide/sparse-models",
        "guide/beyond-the-diagonal",
        "guide/scaling-out",
        "guide/performance",
        "guide/references",
        "recipes/flax",
        "recipes/equinox",
        "recipes/orbax",
        "recipes/accumulators",
    ]:
        assert (site / f"{page}.html").exists(), page
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.stem for p in (site / "notebooks").glob("*.html")) == notebooks


API_PAGES = [
    "api/index",
    "api/diagonal",
    "api/tables",
    "api/regularized",
    "api/beyond-the-diagonal",
    "api/modules",
    "api/state",
]


def _signatures(site: pathlib.Path) -> dict[str, str]:
    """Documented name -> its rendered signature as text, over every API page."""
    out = {}
    for page in API_PAGES:
        text = (site / f"{page}.html").read_text()
        for name, body in re.findall(
            r'<dt class="sig sig-object py" id="([^"]+)">(.*?)</dt>', text, flags=re.S
        ):
            out[name] = html.unescape(re.sub(r"<[^>]+>", "", body))
    return out


def test_api_reference_documents_every_public_name(site):
    documented = _signatures(site)
    missing = [n for n in public_names() if n not in documented]
    assert not missing, f"add these to a page of docs/api/: {missing}"


def test_api_pages_are_one_per_family_and_not_one_huge_page(site):
    """The reference was one page of about 500 KB; each family's page is now a fraction."""
    for page in API_PAGES:
        size = (site / f"{page}.html").stat().st_size
        assert size < 300_000, f"{page}.html is {size} bytes: split it"


def test_api_signatures_show_every_argument_and_type_aliases_by_name(site):
    """Each rendered signature lists every parameter `inspect.signature` gives (the
    `checked_arguments` wrapper must not hide `nonfinite` or any keyword), and annotations
    read `ArrayLike`, not Sphinx's placeholder `TypeAliasForwardRef('...')` (which leaked for
    `jax.typing.ArrayLike | None`) nor the expanded union of array types."""
    import adagrad_jax.nnx  # noqa: F401

    signatures = _signatures(site)
    checked = 0
    for name in public_names():
        module, _, attr = name.rpartition(".")
        obj = getattr(sys.modules[module], attr)
        if not inspect.isfunction(obj):
            continue
        text = signatures[name]
        for parameter in inspect.signature(obj).parameters:
            assert re.search(rf"\b{parameter}\b", text), f"{name}: {parameter} not shown"
        checked += 1
    assert checked >= 25
    every = " ".join(signatures.values())
    assert "TypeAliasForwardRef" not in every
    assert "weight_decay: ArrayLike | None = None" in signatures["adagrad_jax.adagrad"]
    assert "nonfinite: str = 'propagate'" in signatures["adagrad_jax.adagrad"]
    assert "jax.typing.ArrayLike" not in every and "ndarray | bool | number" not in every


def test_notebook_pages_show_outputs_and_plots(site):
    """Each page shows its notebook executed (short version, by the `executed_notebooks`
    fixture), plots as images; the committed notebooks carry no outputs
    (tests/test_notebooks.py)."""
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (site / "notebooks" / f"{notebook.stem}.html").read_text()
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page)
        assert images, f"{notebook.name}: no plot on its page"
        for image in images:
            assert (site / "notebooks" / image).exists(), image
        assert 'class="output' in page, f"{notebook.name}: no outputs on its page"


def test_every_documented_name_has_a_docstring_with_an_example():
    import adagrad_jax.nnx  # noqa: F401

    for name in public_names():
        module, _, attr = name.rpartition(".")
        obj = getattr(sys.modules[module], attr)
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        if callable(obj) and not isinstance(obj, type):
            assert ">>>" in doc, f"{name}: no runnable example"


def test_every_guide_page_is_linked_from_the_readme():
    """The README is the way in: each page of docs/guide/ (but its index) is one link away."""
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs" / "guide").glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/guide/{page.name}" in readme, page.name


def test_docs_notebooks_are_links_to_every_notebook():
    """docs/notebooks/ holds one symbolic link per notebooks/*.ipynb (Sphinx reads only files
    under docs/), so the site shows the committed notebooks themselves, never a copy."""
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    links = sorted(p.name for p in (ROOT / "docs" / "notebooks").iterdir())
    assert links == notebooks
    for name in links:
        link = ROOT / "docs" / "notebooks" / name
        assert link.is_symlink() and link.resolve() == (ROOT / "notebooks" / name).resolve()


REPOSITORY = "https://github.com/adagrad-jax/adagrad_jax"
LINK_SOURCES = [
    "README.md",
    "CHANGELOG.md",
    "docs/*.md",
    "docs/guide/*.md",
    "docs/api/*.md",
    "docs/recipes/*.md",
    "docs/conf.py",
    "adagrad_jax/**/*.py",
    "notebooks/*.ipynb",
    "benchmarks/*.md",
    "pyproject.toml",
]
# Markdown files that GitHub renders, whose relative links are links into the repository (the
# guide pages too: the README links to them).
RENDERED_ON_GITHUB = ["README.md", "CHANGELOG.md", "benchmarks/*.md", "docs/guide/*.md"]


def _check_link(source: pathlib.Path, target: str) -> None:
    from myst_parser.slugs import github_slugify

    path, _, anchor = target.partition("#")
    file = (ROOT / path) if path else source
    where = source.relative_to(ROOT)
    assert file.exists(), f"{where} links to missing {path}"
    if anchor and file.suffix == ".md":
        headings = re.findall(r"^#+ (.+)$", file.read_text(), re.MULTILINE)
        assert anchor in {github_slugify(h) for h in headings}, (
            f"{where}: no heading #{anchor} in {file.relative_to(ROOT)}"
        )


def test_links_into_the_repository_name_files_and_headings_that_exist():
    """The links that can be checked offline: every link to a file of this repository
    on GitHub (blob, tree, edit, raw) or in Colab, and every relative link of the
    Markdown that GitHub renders (README, CHANGELOG, benchmarks), names a path that
    exists here and, for Markdown, an #anchor that is a heading of that file. Links
    to other sites need the network, and the build here runs offline."""
    assert REPOSITORY in (ROOT / "pyproject.toml").read_text()
    absolute = re.compile(
        r"(?:" + re.escape(REPOSITORY) + r"|https://colab\.research\.google\.com/github/"
        r"adagrad-jax/adagrad_jax)/(?:blob|tree|edit|raw)/main/([^\s)\"'\\>`\]]+)"
    )
    relative = re.compile(r"\]\((?![a-z]+:|//)([^)\s]+)\)")
    checked = 0
    for glob in LINK_SOURCES:
        for source in sorted(ROOT.glob(glob)):
            for target in absolute.findall(source.read_text()):
                _check_link(source, target)
                checked += 1
    for glob in RENDERED_ON_GITHUB:
        for source in sorted(ROOT.glob(glob)):
            for target in relative.findall(source.read_text()):
                base = source.parent.relative_to(ROOT)
                path, hash_, anchor = target.partition("#")
                joined = (base / path).as_posix() if path else ""
                _check_link(source, f"{joined}{hash_}{anchor}" if path else f"#{anchor}")
                checked += 1
    assert checked >= 30  # README links and badges, notebook badges, ... (36 at writing)


def test_built_pages_link_only_to_files_the_site_has(site):
    """Every relative href and src in the built HTML (notebooks' raw HTML included,
    which MyST does not check) points to a file of the built site."""
    checked = 0
    for page in site.rglob("*.html"):
        for link in re.findall(r'(?:href|src)="([^"]+)"', page.read_text()):
            if re.match(r"^(?:[a-z]+:|#|//)", link):
                continue
            target = (page.parent / link.split("#")[0].split("?")[0]).resolve()
            assert target.exists(), f"{page.relative_to(site)} links to missing {link}"
            checked += 1
    assert checked > 100
