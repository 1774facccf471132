"""The documentation site builds strictly and documents every public name.

`sphinx-build -W --keep-going`: any warning fails the build, including a broken local link or
heading anchor (MyST reports them), a docstring that reStructuredText cannot parse, and a page
left out of the table of contents. Links into this repository (GitHub and Colab addresses,
relative links of the Markdown GitHub renders) and the built pages' own hrefs are checked here;
links to other sites are not (the build runs offline).
"""

from __future__ import annotations

import ast
import inspect
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
def site(tmp_path_factory) -> pathlib.Path:
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
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in [
        "index",
        "choosing",
        "api",
        "changelog",
        "notebooks",
        "guide/getting-started",
        "guide/rule",
        "guide/parity",
        "guide/tables",
        "guide/performance",
        "recipes/flax",
        "recipes/equinox",
        "recipes/orbax",
        "recipes/accumulators",
    ]:
        assert (site / f"{page}.html").exists(), page
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.stem for p in (site / "notebooks").glob("*.html")) == notebooks


def test_api_reference_documents_every_public_name(site):
    api = (site / "api.html").read_text()
    documented = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', api))
    missing = [n for n in public_names() if n not in documented]
    assert not missing, f"add these to docs/api.md: {missing}"


def test_every_documented_name_has_a_docstring_with_an_example():
    import adagrad_jax.nnx  # noqa: F401

    for name in public_names():
        module, _, attr = name.rpartition(".")
        obj = getattr(sys.modules[module], attr)
        doc = inspect.getdoc(obj) or ""
        assert doc, name
        if callable(obj) and not isinstance(obj, type):
            assert ">>>" in doc, f"{name}: no runnable example"


def test_readme_sections_all_reach_the_site(site):
    """Every `## ` section of README.md is on a page of the site (docs/_readme_pages.py)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import _readme_pages
    finally:
        sys.path.remove(str(ROOT / "docs"))
    titles = [t for t, _ in _readme_pages._sections((ROOT / "README.md").read_text())]
    text = " ".join(p.read_text() for p in site.rglob("*.html"))
    for title in titles:
        assert title.split(":")[0].split(" (")[0] in text, title


REPOSITORY = "https://github.com/adagrad-jax/adagrad_jax"
# Sources as committed (docs/guide and docs/notebooks are generated from README and notebooks).
LINK_SOURCES = ["README.md", "CHANGELOG.md", "docs/*.md", "docs/recipes/*.md", "docs/conf.py",
                "docs/_readme_pages.py", "adagrad_jax/**/*.py", "notebooks/*.ipynb",
                "benchmarks/*.md", "pyproject.toml"]
# Markdown files that GitHub renders, whose relative links are links into the repository.
RENDERED_ON_GITHUB = ["README.md", "CHANGELOG.md", "benchmarks/*.md"]


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
