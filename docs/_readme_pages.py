"""Cut README.md into pages of the documentation site (run by conf.py at every build).

README.md stays the single source of the long material (its Python blocks are tested by
tests/test_readme.py); the site shows the same text, one topic per page. Each `## ` section goes
to the page named in PAGES (several sections may share a page, in README order); a section not
named there gets a page of its own, so a new README section is never lost. Links are rewritten
for the site: `#anchor` to the page that now holds that heading, `notebooks/*.ipynb` to the
rendered notebook, `docs/...` to the page itself, `CHANGELOG.md` to the changelog page, and any
other file of the repository to its address on GitHub.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import tomllib

from myst_parser.slugs import github_slugify

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDE = DOCS / "guide"  # generated (git-ignored)

# README section title -> (page, page title). Pages starting with "_" are fragments that other
# pages include (excluded from the build on their own).
PAGES = {
    "Install": ("getting-started", "Getting started"),
    "Quickstart": ("getting-started", "Getting started"),
    "Two commands": ("getting-started", "Getting started"),
    "The rule": ("rule", "The exact rule"),
    "Defaults": ("rule", "The exact rule"),
    "Parity with other libraries": ("parity", "Parity with other libraries"),
    "Sparse embedding tables": ("tables", "Embedding tables"),
    "Sparse models: L1 and L2 (proximal Adagrad, dual averaging, FTRL)": (
        "sparse-models",
        "Sparse models with L1 and L2",
    ),
    "Beyond the diagonal: full-matrix Adagrad, Shampoo, AdaGrad-Norm": (
        "beyond-the-diagonal",
        "Beyond the diagonal",
    ),
    "Scaling out": ("scaling-out", "Scaling out"),
    "Performance": ("performance", "Performance"),
    "Notebooks": ("_notebooks", None),
    "API": ("_api", None),
    "References": ("references", "References"),
}
# Fragments and the page (in docs/) that includes each.
HOSTS = {"_notebooks": "notebooks.md", "_api": "api.md"}
ORDER = [
    "getting-started",
    "rule",
    "parity",
    "tables",
    "sparse-models",
    "beyond-the-diagonal",
    "scaling-out",
    "performance",
    "references",
]


def _sections(readme: str) -> list[tuple[str, str]]:
    """(title, text) of each `## ` section, skipping fenced code when looking for headings."""
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in readme.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
    return [(title, "\n".join(lines)) for title, lines in sections]


def _headings(text: str) -> list[str]:
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#{2,3}) (.+)", line)
        if m:
            out.append(github_slugify(m.group(2).strip()))
    return out


def _promote(text: str) -> str:
    """Every heading one level up (`## ` -> `# `), outside fenced code."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append(line[1:] if not fenced and re.match(r"#{2,6} ", line) else line)
    return "\n".join(out)


def _relative(target: pathlib.Path, base: pathlib.Path) -> str:
    return pathlib.Path(
        *([".."] * len(base.relative_to(DOCS).parts)), target.relative_to(DOCS)
    ).as_posix()


def build() -> None:
    readme = (ROOT / "README.md").read_text()
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    pages: dict[str, list[str]] = {}
    titles: dict[str, str | None] = {}
    anchors: dict[str, str] = {}
    section_pages = []
    for title, text in _sections(readme):
        page, page_title = PAGES.get(title, (github_slugify(title), title))
        section_pages.append((title, page))
        pages.setdefault(page, []).append(text)
        titles[page] = page_title
        for anchor in _headings(text):
            anchors.setdefault(anchor, page)

    def rewrite(text: str, base: pathlib.Path) -> str:
        def link(m: re.Match) -> str:
            label, target = m.group(1), m.group(2)
            if re.match(r"[a-z]+:", target):
                return m.group(0)
            path, _, anchor = target.partition("#")
            if not path:
                page = anchors.get(anchor)
                if page is None:
                    return m.group(0)  # left for the build to report
                if page in HOSTS:  # the host page; the fragment's own heading is not kept
                    own = github_slugify(next(t for t, p in section_pages if p == page))
                    host = _relative(DOCS / HOSTS[page], base)
                    return f"[{label}]({host}{'' if anchor == own else '#' + anchor})"
                return f"[{label}]({_relative(GUIDE / f'{page}.md', base)}#{anchor})"
            if path.startswith("notebooks/") and path.endswith(".ipynb"):
                return f"[{label}]({_relative(DOCS / path, base)})"
            if path.startswith("docs/"):
                new = _relative(DOCS / path.removeprefix("docs/"), base)
                return f"[{label}]({new}{'#' + anchor if anchor else ''})"
            if path == "CHANGELOG.md":
                return f"[{label}]({_relative(DOCS / 'changelog.md', base)})"
            kind = "tree" if (ROOT / path).is_dir() else "blob"
            return f"[{label}]({repo}/{kind}/main/{path}{'#' + anchor if anchor else ''})"

        # Not inside code: only links of the form [label](target).
        parts = re.split(r"(```.*?```)", text, flags=re.DOTALL)
        return "".join(
            p if p.startswith("```") else re.sub(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)", link, p)
            for p in parts
        )

    if GUIDE.exists():
        shutil.rmtree(GUIDE)
    GUIDE.mkdir()
    for page, texts in pages.items():
        body = "\n\n".join(texts)
        if page.startswith("_"):  # a fragment: included by a page in docs/, links from there
            body = body.split("\n", 1)[1]  # without its heading: the includer has its own
            (GUIDE / f"{page}.md").write_text(rewrite(body, DOCS) + "\n")
            continue
        if len(texts) == 1:  # one section: its heading becomes the page's title
            text = _promote(body)
        else:  # several: a page title above them
            text = f"# {titles[page]}\n\n{body}"
        (GUIDE / f"{page}.md").write_text(
            "<!-- Generated from README.md by docs/_readme_pages.py: edit README.md. -->\n\n"
            + rewrite(text, GUIDE)
            + "\n"
        )
    # Getting started sits in the site's "Start" section (docs/index.md), not here.
    toc = [p for p in ORDER if p in pages and p != "getting-started"] + sorted(
        p for p in pages if p not in ORDER and not p.startswith("_")
    )
    (GUIDE / "index.md").write_text(
        "# User guide\n\nThe long material of the README, one topic per page.\n\n"
        "```{toctree}\n:maxdepth: 2\n\n" + "\n".join(toc) + "\n```\n"
    )

    # The notebooks, rendered without executing them (tests/test_notebooks.py runs them).
    target = DOCS / "notebooks"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)
