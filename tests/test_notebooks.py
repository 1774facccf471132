"""The notebooks in notebooks/: executed in their short version, and checked as committed.

Every ``notebooks/*.ipynb`` (found by glob, none excluded) runs top to bottom in a fresh
kernel with ``ADAGRAD_JAX_NOTEBOOK_QUICK=1`` within a per-notebook time budget
(``ADAGRAD_JAX_NOTEBOOK_TIMEOUT`` seconds, default 120: the "under 2 minutes on 2 cores" of
the notebooks issue), draws at least one plot, and ends in a cell that asserts what the
notebook showed. Each notebook's runtime is printed to the terminal and recorded as the
``runtime_s`` property (visible in ``--junitxml`` reports).

The notebooks run once per test run, for this module and for the site that tests/test_docs.py
builds: the session fixture ``executed_notebooks`` (tests/executed_notebooks.py, loaded through
``pytest_plugins``) executes a notebook when the first test asks for it and keeps the result.
If test_docs ran first, the runtime shown here is the one measured then.

The committed files must carry no outputs, and their "Open in Colab" badges and Colab
install cells must point at ``[project.urls] Repository`` in pyproject.toml, the one place
the repository URL is written down.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from tests.executed_notebooks import NOTEBOOKS, QUICK_ENV, ROOT, TIMEOUT_S, ExecutedNotebooks

pytest_plugins = ["tests.executed_notebooks"]  # the session fixture `executed_notebooks`

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
def test_runs_in_short_version(path, executed_notebooks, capsys, record_property):
    # Executed here, or earlier for the site of tests/test_docs.py (same run, same budget).
    execution = executed_notebooks.run(path)
    runtime = execution.runtime_s
    record_property("runtime_s", round(runtime, 1))
    with capsys.disabled():
        print(f"\n{path.name}: {runtime:.1f} s (short version)", end="")

    assert runtime <= TIMEOUT_S, f"{path.name} took {runtime:.0f} s (budget {TIMEOUT_S:.0f} s)"
    images = [
        output
        for cell in code_cells(execution.notebook)
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{path.name}: no plot was rendered"


def test_a_failed_notebook_is_run_once_and_fails_every_asker(tmp_path):
    """The shared executions keep a failure: the second ask raises the very error of the first
    (the same object, so nothing ran again), and the site's `folder_with_all` fails naming the
    notebook. A missing file fails in nbformat.read, before any kernel starts."""
    missing = tmp_path / "missing.ipynb"
    executions = ExecutedNotebooks(folder=tmp_path, notebooks=[missing])
    with pytest.raises(FileNotFoundError) as first:
        executions.run(missing)
    with pytest.raises(FileNotFoundError) as second:
        executions.run(missing)
    assert second.value is first.value
    with pytest.raises(pytest.fail.Exception, match=r"missing\.ipynb: FileNotFoundError"):
        executions.folder_with_all()
    assert list(tmp_path.iterdir()) == []  # no executed copy of a failed notebook
