"""benchmarks/gpu.py runs and writes its section: on the CPU with --small (everywhere), briefly on CUDA (where present).

No timing is asserted: the tables must hold numbers, the section must replace only itself, and a CPU run must say
that the GPU numbers are not measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
NUMBER = r"[0-9][0-9.,]*[kMG]?"


def run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def rows(text: str, first: str) -> list[list[str]]:
    """The table rows of ``text`` whose first cell is ``first``, as lists of stripped cells."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            out.append(cells)
    return out


def section_of(text: str) -> str:
    start = text.index("## GPU")
    nxt = text.find("\n## ", start + 1)
    return text[start:] if nxt < 0 else text[start:nxt]


def test_small_cpu_run_writes_its_section_with_numbers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Samplers\n\nkept above\n\n## GPU\n\nold numbers\n\n"
                   "## Playground\n\nkept below\n")
    proc = run_script(["--device", "cpu", "--small", "--write", str(doc)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    assert "kept above" in text and "kept below" in text and "old numbers" not in text
    assert text.count("## GPU") == 1 and text.index("## Samplers") < text.index("## GPU") < text.index("## Playground")
    gpu = section_of(text)
    assert "GPU numbers: not measured yet" in gpu and "python benchmarks/gpu.py --write docs/benchmarks.md" in gpu
    assert "failed:" not in gpu, gpu
    banana = rows(gpu, "banana")
    assert {(r[1], r[2]) for r in banana} >= {("ULA (0.3)", "1,000"), ("ULA (0.3)", "10,000"), ("MALA (0.5)", "1,000"),
                                              ("HMC (0.15)", "1,000")}
    for r in banana:  # steps, seconds, chain-steps/s
        assert re.fullmatch(r"\d+", r[4]) and re.fullmatch(r"[0-9.]+", r[5]) and re.fullmatch(NUMBER, r[6]), r
    assert rows(gpu, "MLP"), gpu
    for model in ("EBM", "NCSN"):
        loops = {r[1]: r for r in rows(gpu, model)}
        assert {"ebmlab", "hand-written"} <= set(loops), gpu
        for loop in ("ebmlab", "hand-written"):
            assert re.fullmatch(r"[0-9.]+", loops[loop][3]), loops[loop]
        assert re.fullmatch(r"\*\*[0-9.]+x\*\*", loops["ebmlab"][4]), loops["ebmlab"]
    assert "DDP: not run" in gpu and "### Verdict" in gpu


def test_full_sizes_are_refused_on_the_cpu():
    proc = run_script(["--device", "cpu"], timeout=120)
    assert proc.returncode == 2 and "--small" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_measures_the_real_sizes_briefly(tmp_path):
    """The real configurations at 10^4 and 10^6 chains and the digits training, with short timed runs."""
    doc = tmp_path / "benchmarks.md"
    proc = run_script(["--chains", "10000", "1000000", "--target-seconds", "0.05", "--train-steps", "10",
                       "--no-compile", "--budget", "300", "--write", str(doc)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpu = section_of(doc.read_text())
    assert "not measured yet" not in gpu and "failed:" not in gpu, gpu
    ula = [r for r in rows(gpu, "banana") if r[1] == "ULA (0.3)" and r[2] == "1,000,000"]
    assert ula and re.fullmatch(NUMBER, ula[0][6]), gpu
    for model in ("EBM", "NCSN"):
        loops = {r[1]: r for r in rows(gpu, model)}
        assert re.fullmatch(r"[0-9.]+", loops["ebmlab"][3]) and re.fullmatch(r"[0-9.]+", loops["hand-written"][3])
