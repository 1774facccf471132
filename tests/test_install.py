"""The package builds (`python -m build`) and its wheel installs into a fresh venv and works.

The fresh environment gets the wheel alone (`--no-deps`); its dependencies (jax, jaxlib, optax)
come from this environment through a path entry, so the test needs no network beyond the
build's own setuptools and takes seconds. The quickstart of README.md runs there, outside the
repository, and must import the installed copy.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

import adagrad_jax

pytest.importorskip("build")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_wheel_builds_installs_into_a_fresh_venv_and_runs_the_quickstart(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the repository
    src.mkdir()
    for name in ["pyproject.toml", "README.md", "LICENSE"]:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "adagrad_jax",
        src / "adagrad_jax",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    version = adagrad_jax.__version__
    wheel = dist / f"adagrad_jax-{version}-py3-none-any.whl"
    assert wheel.exists() and (dist / f"adagrad_jax-{version}.tar.gz").exists()
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
        metadata = zf.read(f"adagrad_jax-{version}.dist-info/METADATA").decode()
    assert "adagrad_jax/py.typed" in files
    assert f"adagrad_jax-{version}.dist-info/licenses/LICENSE" in files
    assert "License-Expression: Apache-2.0" in metadata
    assert not [f for f in files if f.startswith(("tests/", "benchmarks/", "notebooks/", "devtools/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from this environment (a plain path entry: its .pth files, among them the
    # editable install of the repository, are not processed).
    (pathlib.Path(fresh_site) / "_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")

    script = _quickstart() + (
        "\nimport importlib.metadata, pathlib\n"
        f"assert adagrad_jax.__version__ == importlib.metadata.version('adagrad_jax') == "
        f"{version!r}\n"
        f"assert pathlib.Path(adagrad_jax.__file__).is_relative_to({str(venv)!r})\n"
        "print('ok', adagrad_jax.__file__)\n"
    )
    run = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok ")


def test_version_comes_from_one_place_and_is_shown():
    """`__version__` is the only literal version; pyproject, README and CHANGELOG follow it."""
    version = adagrad_jax.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "adagrad_jax.__version__" }' in pyproject
    readme = (ROOT / "README.md").read_text()
    assert f"**Version {version}**" in readme
    assert f"adagrad_jax-{version}-py3-none-any.whl" in readme
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[(\d[^\]]*)\]", changelog, flags=re.M).group(1) == version
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in pyproject
