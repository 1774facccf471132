"""README.md must match the code: its Python blocks run, its claims hold."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
import subprocess
import sys

import jax
import pytest

import adagrad_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_blocks_run(index):
    # README examples are written for users' default JAX configuration.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_readme_has_blocks_and_lists_every_public_name():
    assert len(BLOCKS) >= 2
    for name in adagrad_jax.__all__:
        assert f"adagrad_jax.{name}" in README or f"`{name}" in README, name


def test_readme_defaults_table_matches_signature():
    signature = inspect.signature(adagrad_jax.adagrad)
    for name, parameter in signature.parameters.items():
        row = re.search(rf"\| `{name}`[^|]*\| ([^|]+) \|", README)
        assert row is not None, name
        assert ast.literal_eval(row.group(1).strip()) == parameter.default, name


def test_demo_runs_and_prints_the_table():
    """`python -m adagrad_jax` (short run): one row per optimizer, finite losses."""
    out = subprocess.run(
        [sys.executable, "-m", "adagrad_jax", "--steps", "30"],
        capture_output=True, text=True, check=True, timeout=300).stdout
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("optax.", "adagrad_jax."))]
    assert [r[0] for r in rows] == ["optax.sgd", "adagrad_jax.adagrad", "optax.adagrad"]
    losses = [float(r[1]) for r in rows]
    assert all(0 < loss < 0.6931 for loss in losses)  # below the initial log(2)


def test_readme_badges_point_at_the_repository_and_existing_notebooks():
    """The repository URL lives in pyproject.toml; README badges must follow it."""
    import tomllib
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    repo = url.removeprefix("https://github.com/")
    links = re.findall(r"https://colab\.research\.google\.com/github/([^)]+)", README)
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(link.rsplit("/", 1)[1] for link in links) == notebooks
    for link in links:
        assert link.startswith(f"{repo}/blob/main/notebooks/"), link
