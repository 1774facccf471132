"""Sphinx configuration of the adagrad_jax documentation site.

Build (strict: any warning fails, broken local links and references included):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Sphinx, not MkDocs: the docstrings are written in reStructuredText conventions (``::`` literal
blocks for the update rules, double-backquoted literals, Google-style Args/Returns sections),
which autodoc with napoleon renders as written; the pages are Markdown through MyST, and
myst-nb renders the notebooks without executing them (tests/test_notebooks.py executes them).
It is also what JAX, optax and Flax build their documentation with.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

import _readme_pages

import adagrad_jax

_readme_pages.build()  # README sections -> docs/guide/*.md; notebooks -> docs/notebooks/

project = "adagrad_jax"
author = "The adagrad_jax authors"
copyright = "the adagrad_jax authors"
release = version = adagrad_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_nb",  # Markdown pages (MyST) and notebooks
]

exclude_patterns = ["_build", "guide/_*", "**/.ipynb_checkpoints", "README.md"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# Markdown: GitHub-style anchors for headings, so README's `#section` links keep working.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath"]  # $...$ in the notebooks
# Notebooks are shown as committed (outputs stripped or small), never executed here.
nb_execution_mode = "off"

# Docstrings: single backquotes are references to Python objects where they resolve.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show the annotations as written, not expanded into long unions.
autodoc_type_aliases = {
    name: name
    for name in [
        "jax.typing.ArrayLike",
        "optax.ScalarOrSchedule",
        "optax.Schedule",
        "optax.Params",
        "optax.Updates",
        "optax.GradientTransformation",
    ]
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Differences from other libraries", "notes_style")]

# Unlabelled code blocks (tables of numbers, rules) are plain text, not Python.
highlight_language = "none"

html_theme = "furo"
html_title = f"adagrad_jax {version}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "source_repository": "https://github.com/adagrad-jax/adagrad_jax/",
    "source_branch": "main",
    "source_directory": "docs/",
}


# Docstrings are written to read well in help() too: plain-text math such as |g|^2 and
# (k, *shape), and a Markdown table in a module docstring. reStructuredText would take |g| for a
# substitution and *shape for emphasis, so before napoleon reads a docstring, such characters
# outside literals are escaped and Markdown tables become literal blocks. Text in ``literals``,
# `references`, :: literal blocks and >>> examples is left as written.
import re

_PROTECTED = re.compile(r"(``.+?``|`[^`]+`|\*\*[^*\s][^*]*?\*\*|(?<![\w*])\*[^*\s][^*]*?\*(?!\w))")


def _escape(text: str) -> str:
    parts = _PROTECTED.split(text)
    out = []
    for i, p in enumerate(parts):
        if i % 2 == 0:
            p = p.replace("|", r"\|").replace("*", r"\*")
            if i and parts[i - 1].endswith("`") and p[:1].isalnum():
                p = "\\ " + p  # `Mesh`s: an escaped space ends the reference
        out.append(p)
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _plain_text_docstring(app, what, name, obj, options, lines):
    out: list[str] = []
    literal_indent = None  # indentation of the paragraph that opened a :: block
    doctest = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if literal_indent is not None:
            if stripped and _indent(line) <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                i += 1
                continue
        if doctest:
            if not stripped:
                doctest = False
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            doctest = True
            out.append(line)
            i += 1
            continue
        if (
            stripped.startswith("|")
            and stripped.endswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|[-|: ]+\|", lines[i + 1].strip())
        ):
            pad = " " * _indent(line)
            out += [pad + "::", ""]
            while i < len(lines) and lines[i].strip().startswith("|"):
                out.append(pad + "    " + lines[i].strip())
                i += 1
            out.append("")
            continue
        out.append(_escape(line))
        if stripped.endswith("::"):
            literal_indent = _indent(line)
        i += 1
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", _plain_text_docstring, priority=400)
