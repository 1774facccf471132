"""Sphinx configuration of the adagrad_jax documentation site.

Build (strict: any warning fails, broken local links and references included):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Every page is a source file here: the guide (docs/guide/), the API reference (docs/api/, one page
per family), the recipes, and the notebooks (docs/notebooks/ holds links to notebooks/*.ipynb).

Sphinx, not MkDocs: the docstrings are written in reStructuredText conventions (``::`` literal
blocks for the update rules, double-backquoted literals, Google-style Args/Returns sections),
which autodoc with napoleon renders as written; the pages are Markdown through MyST, and
myst-nb executes the notebooks (in their short version) and renders their outputs and plots.
It is also what JAX, optax and Flax build their documentation with.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import adagrad_jax  # noqa: E402

project = "adagrad_jax"
author = "The adagrad_jax authors"
copyright = "the adagrad_jax authors"
release = version = adagrad_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_nb",  # Markdown pages (MyST) and notebooks
]

exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# Markdown: GitHub-style anchors for headings, as GitHub renders the same pages.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath"]  # $...$ in the notebooks
# Notebooks are committed without outputs; the site executes them in their short version (the
# variable the notebooks read, as tests/test_notebooks.py sets it), so their pages show outputs
# and plots. "cache": a rebuild re-executes only the notebooks that changed (the cache sits next
# to the output folder). Each runs in a temporary directory, so files it writes are not left here.
# Without the `notebooks` extra (matplotlib, scikit-learn, tqdm) the notebooks cannot run: the
# pages then show the notebooks as committed, and the build says so (setup() below).
# The test suite executes the notebooks once for its own checks and for this build
# (tests/executed_notebooks.py): it names the folder of executed copies in
# ADAGRAD_JAX_EXECUTED_NOTEBOOKS, and the pages are then read from those copies, with nothing
# executed here (_read_executed_copy below).
NOTEBOOK_EXTRA = ["matplotlib", "sklearn", "tqdm", "ipykernel"]
_missing = [name for name in NOTEBOOK_EXTRA if importlib.util.find_spec(name) is None]
_executed = os.environ.get("ADAGRAD_JAX_EXECUTED_NOTEBOOKS")
os.environ.setdefault("ADAGRAD_JAX_NOTEBOOK_QUICK", "1")
os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the plots as PNGs
nb_execution_mode = "off" if _missing or _executed else "cache"
nb_execution_in_temp = True
nb_execution_timeout = 300  # per cell
nb_execution_raise_on_error = True  # a failing notebook fails the build
# stderr is progress bars (tqdm's text fallback) and library notices: noise on a static page.
nb_output_stderr = "remove"

# Docstrings: single backquotes are references to Python objects where they resolve.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show the annotations by their short names (`ArrayLike`, `ScalarOrSchedule`), as optax's and
# JAX's own references do, not expanded into long unions and not module-qualified.
autodoc_type_aliases = {
    name: name.rpartition(".")[2]
    for name in [
        "jax.typing.ArrayLike",
        "optax.ScalarOrSchedule",
        "optax.Schedule",
        "optax.Params",
        "optax.Updates",
        "optax.GradientTransformation",
    ]
}
python_use_unqualified_type_names = True
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


# An alias inside a union (`ArrayLike | None`) reaches the signature as Sphinx's placeholder,
# `TypeAliasForwardRef('ArrayLike') | None`; show it by its name like the alias alone.
_FORWARD_REF = re.compile(r"TypeAliasForwardRef\('([^']+)'\)")


def _alias_names(app, what, name, obj, options, signature, return_annotation):
    def unwrap(text):
        return _FORWARD_REF.sub(r"\1", text) if text else text

    return unwrap(signature), unwrap(return_annotation)


class _NoConfigDump(logging.Filter):
    """Drops the configuration dumps myst-parser and myst-nb log at every build (a few
    hundred characters of every option's value each), and nbclient's line that repeats
    myst-nb's "Executing notebook"; warnings and progress pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            record.levelno == logging.INFO
            and (
                "myst v%s:" in message
                or "myst-nb v%s:" in message
                or message.startswith(("Using jupyter-cache at:", "Executing notebook with"))
            )
        )


def _say_notebooks_are_not_executed(app):
    if _missing and not _executed:
        logging.getLogger("sphinx.adagrad_jax").info(
            "notebooks are not executed (their pages show no outputs): %s not installed;"
            ' pip install -e ".[notebooks]" to execute them',
            ", ".join(_missing),
        )


def _read_executed_copy(app, docname, source):
    """With ADAGRAD_JAX_EXECUTED_NOTEBOOKS set, a notebook page (docs/notebooks/NAME.ipynb, a
    link to notebooks/NAME.ipynb) is read from the executed copy NAME.ipynb in that folder."""
    if not _executed or not docname.startswith("notebooks/"):
        return
    copy = pathlib.Path(_executed) / (docname.removeprefix("notebooks/") + ".ipynb")
    if not copy.is_file():
        raise FileNotFoundError(
            f"docs/conf.py: ADAGRAD_JAX_EXECUTED_NOTEBOOKS={_executed} has no {copy.name};"
            " put an executed copy of every notebook there, or unset the variable to execute"
            " the notebooks in the build"
        )
    source[0] = copy.read_text(encoding="utf-8")


def setup(app):
    app.connect("builder-inited", _say_notebooks_are_not_executed)
    app.connect("source-read", _read_executed_copy)
    logging.getLogger("traitlets").addFilter(_NoConfigDump())  # "Executing notebook with kernel"
    for name in ["sphinx.myst_parser.sphinx_ext.main", "sphinx.myst_nb.sphinx_ext"]:
        logging.getLogger(name).addFilter(_NoConfigDump())
    app.connect("autodoc-process-docstring", _plain_text_docstring, priority=400)
    app.connect("autodoc-process-signature", _alias_names)
