"""Packaging metadata: one version, an SPDX licence string, the typed-package marker, citation."""

import re
from pathlib import Path

import pytest

import rsnjax

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11


def test_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "rsnjax._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", rsnjax.__version__)
    # CITATION.cff cites the same version (update both when releasing)
    cff = (ROOT / "CITATION.cff").read_text()
    assert f'\nversion: "{rsnjax.__version__}"\n' in cff
    assert "2308.11809" in cff  # and the paper


def test_license_is_an_spdx_string_with_its_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # a table here is deprecated by setuptools ≥ 77
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_typed_marker_is_package_data():
    assert (ROOT / "rsnjax" / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["rsnjax"]


def test_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"dev", "docs", "arviz", "cuda12", "bench"} <= set(extras)
    assert any(req.startswith("arviz") for req in extras["dev"])


@pytest.mark.slow
def test_wheel_ships_the_marker_and_licence_but_no_tests_or_docs(tmp_path):
    # `pip wheel .` (an isolated build: fetches setuptools ≥ 77 from the package index)
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "No matching distribution" in proc.stderr:
        pytest.skip("no package index reachable for the isolated build")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("rsnjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rsnjax/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "rsnjax/__init__.py" in names and "rsnjax/experiments/__init__.py" in names
    assert {n.split("/")[0] for n in names} == {"rsnjax", f"rsnjax-{rsnjax.__version__}.dist-info"}
    # the optional C++ kernel is built where there is a compiler (setup.py)
    import shutil

    if shutil.which("g++") or shutil.which("c++"):
        assert any(n.startswith("rsnjax/_kernels/_reservoir") and n.endswith(".so") for n in names), names
    metadata = zipfile.ZipFile(wheel).read(f"rsnjax-{rsnjax.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata
