"""The notebooks, executed once per test run for tests/test_notebooks.py and tests/test_docs.py.

Both modules need every ``notebooks/*.ipynb`` run in its short version: test_notebooks asserts
that each runs top to bottom within its time budget and draws a plot; test_docs builds the site,
whose notebook pages must show those outputs and plots. Each notebook used to run twice (once by
nbclient in test_notebooks, once more by myst-nb inside the Sphinx build); it now runs once.

This module is a pytest plugin: both test modules name it in ``pytest_plugins``, so pytest
registers it once and its session fixture ``executed_notebooks`` is one object for the whole run,
whichever module runs first and whether ``-k`` selects one module or both. The fixture executes
a notebook the first time a test asks for it (``run``: test_notebooks asks one notebook per test,
so each test's duration is its own notebook's), keeps the result (or the error, raised again for
every test that asks), and writes each executed copy into a temporary folder. ``folder_with_all``
(test_docs' ``site`` fixture) runs whatever is left and hands that folder to the Sphinx build
through ``ADAGRAD_JAX_EXECUTED_NOTEBOOKS``: docs/conf.py then reads the notebook pages from the
executed copies and executes nothing. Without the variable (``sh dev docs``), the build executes
the notebooks itself, as before.

Each notebook runs in a fresh kernel (one ``NotebookClient`` each), with
``ADAGRAD_JAX_NOTEBOOK_QUICK=1`` in the kernel's environment and within a budget of
``ADAGRAD_JAX_NOTEBOOK_TIMEOUT`` seconds (default 120: the "under 2 minutes on 2 cores" of the
notebooks issue) for the whole notebook.

PYTEST_DONT_REWRITE: the test modules import this module's names before pytest registers it as
a plugin, too late for assertion rewriting (pytest would warn, and warnings are errors here);
it holds no assert to rewrite.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
QUICK_ENV = "ADAGRAD_JAX_NOTEBOOK_QUICK"
TIMEOUT_S = float(os.environ.get("ADAGRAD_JAX_NOTEBOOK_TIMEOUT", "120"))
# The folder of executed copies, for the Sphinx build; docs/conf.py reads this name.
EXECUTED_ENV = "ADAGRAD_JAX_EXECUTED_NOTEBOOKS"


@dataclasses.dataclass(frozen=True)
class Execution:
    """One notebook run to its end: the notebook with its outputs, and its wall time."""

    notebook: nbformat.NotebookNode
    runtime_s: float


def kernel_environment() -> dict[str, str]:
    """This process's environment with the short version switched on. MPLBACKEND is left unset
    so the kernel uses matplotlib's inline backend (Agg-based, non-interactive), which emits the
    PNGs that the tests count and the site shows."""
    env = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"}
    env[QUICK_ENV] = "1"
    return env


def execute(path: Path) -> Execution:
    """Runs the notebook at `path` top to bottom in a fresh kernel, within TIMEOUT_S in all."""
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    deadline = start + TIMEOUT_S
    client = NotebookClient(
        nb,
        kernel_name="python3",
        # nbclient's timeout is per cell; give each cell what is left of the notebook's budget.
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute(env=kernel_environment())
    return Execution(notebook=nb, runtime_s=time.monotonic() - start)


class ExecutedNotebooks:
    """Each of `notebooks` executed at most once; executed copies kept in `folder`."""

    def __init__(self, folder: Path, notebooks: list[Path]):
        self.folder = folder
        self.notebooks = notebooks
        self._done: dict[str, Execution | Exception] = {}

    def run(self, path: Path) -> Execution:
        """The notebook at `path`, executed now or earlier in this test run. A notebook that
        failed (an error in a cell, or its budget spent) raises its error again."""
        if path.name not in self._done:
            self._done[path.name] = self._execute_and_keep(path)
        done = self._done[path.name]
        if isinstance(done, Exception):
            raise done
        return done

    def _execute_and_keep(self, path: Path) -> Execution | Exception:
        """Executes the notebook and writes its executed copy; returns its error if it fails,
        so that every test asking for this notebook fails with it."""
        try:
            execution = execute(path)
        except Exception as error:
            return error
        nbformat.write(execution.notebook, self.folder / path.name)
        return execution

    def folder_with_all(self) -> Path:
        """The folder holding an executed copy of every notebook, executing those not run yet.
        Fails, naming them, if any notebook failed: the site must not show a broken one."""
        failed = []
        for path in self.notebooks:
            try:
                self.run(path)
            except Exception as error:
                failed.append(f"{path.name}: {type(error).__name__}: {str(error)[-2000:]}")
        if failed:
            pytest.fail(
                "notebooks failed, so the site cannot show them (run tests/test_notebooks.py"
                " for each one's error):\n" + "\n".join(failed),
                pytrace=False,
            )
        return self.folder


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory: pytest.TempPathFactory) -> ExecutedNotebooks:
    return ExecutedNotebooks(
        folder=tmp_path_factory.mktemp("executed_notebooks"), notebooks=NOTEBOOKS
    )
