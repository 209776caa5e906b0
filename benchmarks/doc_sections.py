"""Every benchmark writes its results as one ``## ...`` section of docs/benchmarks.md: this replaces that section
(from its heading line to the next ``## `` heading) or appends it, leaving the others as they are.

Notes written by hand below a section's generated text (readings of several runs, exploration results) survive a
rewrite when they follow the line :data:`KEEP`: everything from that line to the section's end is put back after
the new text."""

from __future__ import annotations

import re
from pathlib import Path

#: The line above a section's hand-written notes (an HTML comment: not rendered).
KEEP = "<!-- notes: kept when the benchmark rewrites this section -->"


def write_section(path: Path, section: str) -> None:
    """Put ``section`` into the markdown file ``path`` in place of the section with the same heading line.

    Args:
        path: the markdown file (created with a ``# Benchmarks`` title when missing).
        section: the new section; its first line is its ``## `` heading, matched exactly. The old section's
            notes from a :data:`KEEP` line on are appended to it (unless it has such a line itself).
    """
    path = Path(path)
    heading = section.strip().splitlines()[0].rstrip()
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    m = re.search(rf"^{re.escape(heading)}[ \t]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        old = text[m.start(): end]
        notes = re.search(rf"^{re.escape(KEEP)}[ \t]*$", old, flags=re.M)
        if notes and KEEP not in section:
            section = section.strip() + "\n\n" + old[notes.start():].strip()
        text = text[: m.start()] + section.strip() + "\n" + ("\n" + text[end:] if nxt else "")
    else:
        text = text.rstrip() + "\n\n" + section.strip() + "\n"
    path.write_text(text)
