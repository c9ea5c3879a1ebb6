"""The page's fixed prose, kept in ``page.md`` beside this module and read once, at import.

A section runs from a line ``<!-- name -->`` to the next such line; its text is stripped of the blank
lines around it. Comments of more than one line (the file's own header) are not sections.
"""

from __future__ import annotations

import re
from pathlib import Path

PAGE_MD = Path(__file__).with_name("page.md")
_SECTION = re.compile(r"<!-- ([a-z0-9-]+) -->")


def read_sections(path: Path = PAGE_MD) -> dict[str, str]:
    """A markdown file -> {section name: its text}."""
    sections: dict[str, list[str]] = {}
    lines: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _SECTION.fullmatch(line.strip())
        if match:
            lines = sections[match[1]] = []
        elif lines is not None:
            lines.append(line)
    return {name: "\n".join(body).strip("\n") for name, body in sections.items()}


TEXT = read_sections()
