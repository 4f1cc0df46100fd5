"""Open pages of the built documentation site in headless Chromium: check that each renders what
it should and save a screenshot.

    make docs                                   # builds site/ (mkdocs build --strict)
    python scripts/docs_screenshot.py           # serves site/ on 127.0.0.1, checks the API
                                                # reference page, writes site-screenshot.png

Needs a Chromium or Chrome binary (Debian: `apt-get install chromium`); nothing is downloaded.
Exit status 0 when every page rendered its expected text and the screenshot is not blank.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

#: page (relative URL) -> text its rendered DOM must contain
PAGES = {
    "api/sampling/": ["rsnjax.sample", "num_chains", "SampleResult"],
    "api/interop/": ["as_blackjax", "score_from_logdensity", "to_arviz"],
    "tutorials/quickstart/": ["Run this tutorial", "stable_step_size", "format_table"],
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve `site` on 127.0.0.1 (a free port) in a daemon thread; returns (server, base URL)."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _chromium(browser: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def dump_dom(browser: str, url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _chromium(browser, "--virtual-time-budget=5000", "--dump-dom", url).stdout


def screenshot(browser: str, url: str, out: Path, *, size=(1280, 1400)) -> Path:
    out = Path(out).resolve()
    out.unlink(missing_ok=True)
    proc = _chromium(browser, f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000",
                     f"--screenshot={out}", url)
    if not out.is_file():
        raise RuntimeError(f"no screenshot written for {url}: {proc.stderr[-2000:]}")
    return out


def screenshot_is_blank(path: Path) -> bool:
    """True when the image is (nearly) one colour: the page did not render."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return float(pixels.std()) < 5.0


def check_site(site: Path, out: Path, browser: str, pages=PAGES) -> list[str]:
    """Check every page of `pages`; screenshot the first. Returns the problems found."""
    problems = []
    server, base = serve(site)
    try:
        for i, (page, needles) in enumerate(pages.items()):
            dom = dump_dom(browser, base + page)
            missing = [n for n in needles if n not in dom]
            if missing:
                problems.append(f"{page}: rendered page lacks {missing}")
            if i == 0:
                shot = screenshot(browser, base + page, out)
                if screenshot_is_blank(shot):
                    problems.append(f"{page}: the screenshot {shot} is blank")
    finally:
        server.shutdown()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="site", help="the built site (default: site/)")
    parser.add_argument("--out", default="site-screenshot.png", help="screenshot file (PNG)")
    args = parser.parse_args(argv)
    site = Path(args.site)
    if not (site / "index.html").is_file():
        print(f"error: no built site in {site}/ (run `make docs` first)", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print(f"error: no headless browser found (looked for {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    problems = check_site(site, Path(args.out), browser)
    for p in problems:
        print("error:", p, file=sys.stderr)
    if not problems:
        print(f"ok: {len(PAGES)} pages rendered; screenshot of {next(iter(PAGES))} in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
