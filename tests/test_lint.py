"""CI hygiene: ruff (lint and format check) and mypy on the package, clean.

Their versions are pinned in the `test` extra, so a new release cannot turn the
suite red on its own. Configuration: [tool.ruff] and [tool.mypy] in pyproject.toml.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def _ruff() -> str:
    found = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
    if found is None:
        pytest.fail("ruff is not installed: install the test extra (pip install -e '.[test]')")
    return found


def test_ruff_check():
    result = _run(_ruff(), "check", "adagrad_jax")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_ruff_format_check():
    result = _run(_ruff(), "format", "--check", "adagrad_jax")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_mypy():
    result = _run(sys.executable, "-m", "mypy")  # files and options: [tool.mypy]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
