"""MkDocs hooks for the documentation site (mkdocs.yml names this file).

The pages in docs/ are also read on the repository's web view, where a link such as
``../benchmarks/results/full-scaling.png`` points at a file outside docs/. For the site, every
such link to a file that exists in the repository is served from the same relative path inside
the site (the file is added to the build and the link rewritten to it), so the link works in both
places and `mkdocs build --strict` still fails on links to files that do not exist.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

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


def on_files(files, config):
    docs_dir = Path(config["docs_dir"])
    repo = docs_dir.resolve().parent
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for _, rel in _outside_targets(page.src_uri, text, docs_dir, repo):
            if files.get_file_from_path(rel) is None:
                files.append(File(rel, src_dir=str(repo), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
    repo = docs_dir.resolve().parent
    for link, rel in _outside_targets(page.file.src_uri, markdown, docs_dir, repo):
        new = posixpath.relpath(rel, posixpath.dirname(page.file.src_uri) or ".")
        markdown = markdown.replace(f"]({link}", f"]({new}")
    return markdown
