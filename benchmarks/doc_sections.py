"""Every benchmark writes its results as one ``## ...`` section of docs/benchmarks.md: this replaces that section
(from its heading line to the next ``## `` heading) or appends it, leaving the others as they are."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, section: str) -> None:
    """Put ``section`` into the markdown file ``path`` in place of the section with the same heading line.

    Args:
        path: the markdown file (created with a ``# Benchmarks`` title when missing).
        section: the new section; its first line is its ``## `` heading, matched exactly.
    """
    path = Path(path)
    heading = section.strip().splitlines()[0].rstrip()
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    m = re.search(rf"^{re.escape(heading)}[ \t]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        text = text[: m.start()] + section.strip() + "\n" + ("\n" + text[end:] if nxt else "")
    else:
        text = text.rstrip() + "\n\n" + section.strip() + "\n"
    path.write_text(text)
