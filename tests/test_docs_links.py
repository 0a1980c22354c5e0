"""Every relative link in the README and docs/ reaches a file, and an anchor a heading of it (the
README was cut into docs/ pages; a link into a moved section pointed at nothing)."""
from __future__ import annotations

import re

from project_docs import ROOT


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (``_`` and ``-`` kept), spaces to ``-``."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_reaches_its_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path) if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text(encoding="utf-8")):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert broken == []
