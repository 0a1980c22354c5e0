"""The project's user documentation as one text: the README and the pages under docs/ it links to
(tests that check a documented promise find it wherever the README moved it)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def docs_text() -> str:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)
