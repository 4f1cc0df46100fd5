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
