"""MkDocs hooks for the documentation site (mkdocs.yml names this file).

The pages in docs/ are also read on the repository's web view, where a link such as
``../benchmarks/results/full-scaling.png`` points at a file outside docs/. For the site, every
such link to a file that exists in the repository is served from the same relative path inside
the site (the file is added to the build and the link rewritten to it), so the link works in both
places and `mkdocs build --strict` still fails on links to files that do not exist.

The tutorials in examples/tutorials/ are jupytext "percent" scripts (``# %%`` code cells and
``# %% [markdown]`` cells). Each becomes the page ``tutorials/<name>.md`` of the site
(`percent_to_markdown`: markdown cells as text, code cells as Python blocks; nothing is run),
and the script itself is served next to it for download.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

TUTORIALS = "examples/tutorials"
_CELL = re.compile(r"^# %%(?P<rest>.*)$")

_LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)")


def _outside_targets(page_src: str, text: str, docs_dir: Path, repo: Path):
    """(link, path relative to the repository) for each ``../`` link that leaves docs/."""
    for match in _LINK.finditer(text):
        link = match.group(2)
        resolved = (docs_dir / posixpath.dirname(page_src) / link).resolve()
        try:
            rel = resolved.relative_to(repo)
        except ValueError:
            continue
        if resolved.is_file() and not resolved.is_relative_to(docs_dir.resolve()):
            yield link, rel.as_posix()


def percent_to_markdown(text: str, *, source: str) -> str:
    """A jupytext percent script as a markdown page.

    ``# %% [markdown]`` cells lose their leading ``# `` and become text; every other cell (and
    anything before the first ``# %%``) becomes a fenced Python block; empty cells are dropped.
    `source`, the script's path relative to the repository, is named in a note after the title.
    """
    cells: list[tuple[str, list[str]]] = [("code", [])]
    for line in text.splitlines():
        match = _CELL.match(line)
        if match:
            cells.append(("markdown" if "[markdown]" in match.group("rest") else "code", []))
        else:
            cells[-1][1].append(line)
    blocks = []
    for kind, lines in cells:
        if kind == "markdown":
            body = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines).strip()
        else:
            body = "\n".join(lines).strip("\n")
            body = f"```python\n{body}\n```" if body.strip() else ""
        if body:
            blocks.append(body)
    note = (f"!!! note \"Run this tutorial\"\n    This page is the script [`{source}`](../../{source}), "
            f"shown without its outputs. Run it with `python {source}`, or in seconds with "
            f"`RSNJAX_TUTORIAL_SIZE=tiny python {source}`.")
    if blocks and blocks[0].startswith("# "):  # keep the title first
        title, _, rest = blocks[0].partition("\n")
        blocks[0] = "\n\n".join(part for part in (title, note, rest.strip()) if part)
    else:
        blocks.insert(0, note)
    return "\n\n".join(blocks) + "\n"


def _tutorial_files(files, config, repo: Path):
    for script in sorted((repo / TUTORIALS).glob("*.py")):
        source = f"{TUTORIALS}/{script.name}"
        files.append(File.generated(config, f"tutorials/{script.stem}.md",
                                    content=percent_to_markdown(script.read_text(encoding="utf-8"), source=source)))
        if files.get_file_from_path(source) is None:
            files.append(File(source, src_dir=str(repo), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))


def on_files(files, config):
    docs_dir = Path(config["docs_dir"])
    repo = docs_dir.resolve().parent
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for _, rel in _outside_targets(page.src_uri, text, docs_dir, repo):
            if files.get_file_from_path(rel) is None:
                files.append(File(rel, src_dir=str(repo), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    _tutorial_files(files, config, repo)
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
    repo = docs_dir.resolve().parent
    for link, rel in _outside_targets(page.file.src_uri, markdown, docs_dir, repo):
        new = posixpath.relpath(rel, posixpath.dirname(page.file.src_uri) or ".")
        markdown = markdown.replace(f"]({link}", f"]({new}")
    return markdown
