"""benchmarks/doc_sections.py: a benchmark's rewrite replaces only its own section and keeps the notes written
below its ``KEEP`` line."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from doc_sections import KEEP, write_section  # noqa: E402


def test_rewrite_replaces_only_its_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n\n## C\n\nold c\n")
    write_section(doc, "## B\n\nnew b\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nold a\n\n## B\n\nnew b\n\n## C\n\nold c\n"
    write_section(doc, "## D\n\nnew d")
    assert doc.read_text().endswith("## C\n\nold c\n\n## D\n\nnew d\n")


def test_notes_below_the_keep_line_survive_a_rewrite(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\n## A\n\ntable 1\n\n{KEEP}\n\nread by hand\n\n## B\n\nold b\n")
    write_section(doc, "## A\n\ntable 2\n")
    text = doc.read_text()
    assert text == f"# Benchmarks\n\n## A\n\ntable 2\n\n{KEEP}\n\nread by hand\n\n## B\n\nold b\n"
    write_section(doc, "## A\n\ntable 3")  # again: kept once, not twice
    assert doc.read_text().count("read by hand") == 1 and "table 3" in doc.read_text()
    assert "table 2" not in doc.read_text()


def test_notes_in_the_last_section_survive_too(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\n## A\n\ntable 1\n{KEEP}\nnotes\n")
    write_section(doc, "## A\n\ntable 2\n")
    assert doc.read_text() == f"# Benchmarks\n\n## A\n\ntable 2\n\n{KEEP}\nnotes\n"


def test_a_section_without_the_keep_line_is_replaced_whole(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## A\n\ntable 1\n\nnotes\n")
    write_section(doc, "## A\n\ntable 2\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\ntable 2\n"


def test_a_new_section_with_its_own_keep_line_wins(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Benchmarks\n\n## A\n\nt\n\n{KEEP}\n\nold notes\n")
    write_section(doc, f"## A\n\nt2\n\n{KEEP}\n\nnew notes\n")
    assert "old notes" not in doc.read_text() and "new notes" in doc.read_text()
