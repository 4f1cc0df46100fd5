"""The documentation site: `mkdocs build --strict` passes (broken links, anchors and API
cross-references fail it), and its API reference pages render in a real headless browser.

Skipped without the `docs` extra (mkdocs) or without a Chromium/Chrome binary."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import docs_screenshot  # noqa: E402

needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="the docs extra (mkdocs) is not installed")


def _build(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("the docs extra (mkdocs) is not installed")
    site = tmp_path_factory.mktemp("docs") / "site"
    proc = _build(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


@needs_mkdocs
def test_site_builds_strict_with_every_page(site):
    for page in ("index.html", "SCIENCE/index.html", "api/interop/index.html", "howto/nuts/index.html",
                 "benchmarks/results/full-scaling.png", "tutorials/quickstart/index.html",
                 "tutorials/your_data/index.html", "tutorials/reservoir_activity/index.html",
                 "examples/tutorials/quickstart.py"):
        assert (site / page).is_file(), page
    html = (site / "api" / "interop" / "index.html").read_text()
    assert "score_from_logdensity" in html and "ravel_pytree" in html


def test_screenshot_blank_detector(tmp_path):
    # the check the browser test relies on: a one-colour image is blank, a page-like one is not
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((50, 80), 255, np.uint8)).save(flat)
    assert docs_screenshot.screenshot_is_blank(flat)
    text = np.full((50, 80), 255, np.uint8)
    text[10:40:4, 5:70] = 0
    page = tmp_path / "page.png"
    Image.fromarray(text).save(page)
    assert not docs_screenshot.screenshot_is_blank(page)


@needs_mkdocs
@pytest.mark.skipif(docs_screenshot.find_browser() is None, reason="no headless Chromium/Chrome installed")
def test_api_reference_opens_in_headless_browser(site, tmp_path):
    problems = docs_screenshot.check_site(site, tmp_path / "api.png", docs_screenshot.find_browser())
    assert problems == []
    assert (tmp_path / "api.png").stat().st_size > 10_000
