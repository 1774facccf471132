"""The notebooks in notebooks/: executed in their short version, and checked as committed.

Every ``notebooks/*.ipynb`` (found by glob, none excluded) runs top to bottom in a fresh
kernel with ``ADAGRAD_JAX_NOTEBOOK_QUICK=1`` within a per-notebook time budget
(``ADAGRAD_JAX_NOTEBOOK_TIMEOUT`` seconds, default 120: the "under 2 minutes on 2 cores" of
the notebooks issue), draws at least one plot, and ends in a cell that asserts what the
notebook showed. Each notebook's runtime is printed to the terminal and recorded as the
``runtime_s`` property (visible in ``--junitxml`` reports).

The committed files must carry no outputs, and their "Open in Colab" badges and Colab
install cells must point at ``[project.urls] Repository`` in pyproject.toml, the one place
the repository URL is written down.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
QUICK_ENV = "ADAGRAD_JAX_NOTEBOOK_QUICK"
TIMEOUT_S = float(os.environ.get("ADAGRAD_JAX_NOTEBOOK_TIMEOUT", "120"))
COLAB_CHECK = 'if "google.colab" in sys.modules:'

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


def repository_url() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["project"]["urls"]["Repository"].rstrip("/")


def read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_there_are_notebooks():
    # An empty glob would leave every parametrized test below with nothing to run.
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


def test_repository_url_is_a_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository_url())


@by_name
def test_committed_without_outputs(path):
    nb = read(path)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {index} has outputs; clear them"
            assert cell.execution_count is None, f"{path.name}: cell {index} has a count"
        assert "execution" not in cell.metadata, f"{path.name}: cell {index} has timings"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state is committed"


@by_name
def test_title_badge_and_colab_install_cell(path):
    nb = read(path)
    url = repository_url()
    slug = url.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"

    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{path.name}: the first cell must be a markdown title"
    )
    assert f"]({badge})" in first.source, f"{path.name}: no Colab badge linking to {badge}"

    install = nb.cells[1]
    assert install.cell_type == "code", f"{path.name}: cell 1 must be the install cell"
    lines = install.source.splitlines()
    assert COLAB_CHECK in lines, f"{path.name}: the install cell must run only in Colab"
    pip = [line for line in lines if "%pip install" in line]
    assert len(pip) == 1 and pip[0].startswith("    "), (
        f"{path.name}: one %pip install line, inside `{COLAB_CHECK}`"
    )
    assert f'"adagrad_jax[notebooks] @ git+{url}"' in pip[0], (
        f"{path.name}: the install cell must install adagrad_jax[notebooks] from {url}"
    )
    # The cell is plain Python once IPython has rewritten its magic: it must be valid outside
    # Colab too, where it installs nothing.
    compile(TransformerManager().transform_cell(install.source), path.name, "exec")

    # No other copy of the URL may drift: every GitHub or Colab link is one of the two above.
    text = "\n".join(cell.source for cell in nb.cells)
    for link in re.findall(r"https://colab\.research\.google\.com/github/[^\s)\"']+", text):
        assert link == badge, f"{path.name}: stray Colab link {link}"
    for link in re.findall(r"https://github\.com/[^\s)\"']+", text):
        assert link == url, f"{path.name}: stray GitHub link {link}"


@by_name
def test_parameter_cell_and_closing_assertion(path):
    cells = code_cells(read(path))
    params = [cell for cell in cells if "# @param" in cell.source]
    assert params, f"{path.name}: no `# @param` cell"
    assert QUICK_ENV in params[0].source, (
        f"{path.name}: the parameter cell must read {QUICK_ENV} to shorten the run"
    )
    assert re.search(r"^assert ", cells[-1].source, re.MULTILINE), (
        f"{path.name}: the last code cell must assert what the notebook showed"
    )


@by_name
def test_runs_in_short_version(path, monkeypatch, capsys, record_property):
    # The kernel inherits this process's environment. Leaving MPLBACKEND unset lets the kernel
    # use matplotlib's inline backend (Agg-based, non-interactive), which emits the PNGs
    # counted below.
    monkeypatch.setenv(QUICK_ENV, "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = read(path)
    start = time.monotonic()
    deadline = start + TIMEOUT_S
    client = NotebookClient(
        nb,
        kernel_name="python3",
        # nbclient's timeout is per cell; give each cell what is left of the notebook's budget.
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    runtime = time.monotonic() - start
    record_property("runtime_s", round(runtime, 1))
    with capsys.disabled():
        print(f"\n{path.name}: {runtime:.1f} s (short version)", end="")

    assert runtime <= TIMEOUT_S, f"{path.name} took {runtime:.0f} s (budget {TIMEOUT_S:.0f} s)"
    images = [
        output
        for cell in code_cells(nb)
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{path.name}: no plot was rendered"
