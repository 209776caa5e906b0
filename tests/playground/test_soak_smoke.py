"""benchmarks/soak.py in its quick mode (5 s, 20 churning clients): it runs against a real server and
reports its figures; no timing is asserted (the full run's figures are in docs/benchmarks.md)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("websockets")

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "benchmarks" / "soak.py"


def load_soak():
    if str(SOAK.parent) not in sys.path:  # as when run as a script: its sibling doc_sections is importable
        sys.path.insert(0, str(SOAK.parent))
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run():
    proc = subprocess.run([sys.executable, str(SOAK), "--seconds", "5", "--clients", "20", "--steady", "2",
                           "--json"], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_quick_soak_runs_and_reports_its_numbers(quick_run):
    r = quick_run
    assert r["clients"] == 20 and r["steady"] == 2 and r["seconds"] == 5
    assert r["connections"] >= 1 and r["messages"] >= r["connections"] and r["refused"] == 0
    assert sum(r["left"].values()) >= 1
    assert r["errors"] == 0 and r["problems"] == [] and r["server_exceptions"] == 0
    assert r["steady_steps"] > 0
    for key in ("p50_ms", "p99_ms", "max_ms"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    for key in ("rss_before_mib", "rss_warm_mib", "rss_end_mib", "rss_max_mib", "rss_settled_mib"):
        assert r[key] > 10, key  # a Python process with torch: tens of MiB at least
    assert r["rss_max_mib"] >= r["rss_end_mib"] and len(r["rss_quarters_mib"]) == 4
    assert r["rss_quarters_mib"][-1] == r["rss_end_mib"]
    assert r["rss_growth_mib"] == pytest.approx(r["rss_end_mib"] - r["rss_warm_mib"])
    assert isinstance(r["latency_ok"], bool) and isinstance(r["memory_ok"], bool)
    assert r["server_cores"] > 0 and r["server_cpu_ms_per_request"] > 0 and r["load_mean"] >= 0
    assert r["requests_per_s"] > 0


def test_the_section_it_writes_replaces_only_its_own(quick_run, tmp_path):
    soak = load_soak()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Samplers\n\nkept\n\n" + soak.SECTION
                   + "\n\nold figures\n\n## Later\n\nkept too\n")
    section = soak.build_markdown(quick_run, "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --seconds 5",
                                  "Quiet machine.")
    soak.write_section(doc, section)
    text = doc.read_text()
    assert "old figures" not in text and text.count(soak.SECTION) == 1
    assert "## Samplers\n\nkept\n" in text and text.endswith("## Later\n\nkept too\n")
    body = text[text.index(soak.SECTION):text.index("## Later")]
    for needle in ("benchmarks/soak.py --write docs/benchmarks.md", "p99", "RSS", "connections", "Quiet machine.",
                   f"{quick_run['connections']:,}"):
        assert needle in body, needle
