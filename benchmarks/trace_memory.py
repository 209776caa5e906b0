"""What storing every draw costs: writing a step's points and energies into a trace's fresh memory.

``ebmlab.sample(..., keep="all")`` returns every draw and its energy, written into tensors allocated for the
run (``torch.empty``: the operating system hands their pages over, zeroed, on first write). This times
writing ``steps`` steps of ``(N, 2)`` float32 points and ``(N,)`` energies (what a 2-D sampler's trace
stores per step) three ways, the fastest of ``--repeats`` (alternated):

* into fresh tensors (the first write to each page faults it in, as in a sampling run),
* the same after ``madvise(MADV_POPULATE_WRITE)`` asked the kernel for every page in one call (Linux 5.14+;
  its time counted),
* into tensors advised for transparent huge pages (``madvise(MADV_HUGEPAGE)`` on their 2 MB-aligned interior,
  as NumPy does for its large arrays; Linux with huge pages in ``madvise`` or ``always`` mode): the kernel then
  hands the memory over 2 MB at a time,
* into tensors already written once (the writes alone: what the memory traffic costs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trace_memory.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import time
from pathlib import Path

import torch

from doc_sections import write_section

SECTION = "## Samplers: storing the draws"
_MADV_POPULATE_WRITE = 23
_MADV_HUGEPAGE = 14
_HUGE = 2 << 20


def _madvise(lo: int, hi: int, advice: int) -> bool:
    """``madvise(lo, hi - lo, advice)``; False where it cannot (not Linux, an old kernel, huge pages off)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    return hi > lo and libc.madvise(lo, hi - lo, advice) == 0


def _populate(t: torch.Tensor) -> bool:
    """Ask the kernel for every page of ``t`` now."""
    page = os.sysconf("SC_PAGE_SIZE")
    lo = t.data_ptr() & ~(page - 1)
    hi = (t.data_ptr() + t.numel() * t.element_size() + page - 1) & ~(page - 1)
    return _madvise(lo, hi, _MADV_POPULATE_WRITE)


def _huge(t: torch.Tensor) -> bool:
    """Advise the 2 MB-aligned interior of ``t`` for transparent huge pages (True also when it is too small to
    hold one: nothing to advise)."""
    lo = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
    hi = (t.data_ptr() + t.numel() * t.element_size()) & ~(_HUGE - 1)
    return hi <= lo or _madvise(lo, hi, _MADV_HUGEPAGE)


def _thp_mode() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or ``unknown``."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), "unknown")


def write_steps(n: int, steps: int, how: str, x: torch.Tensor, e: torch.Tensor) -> float | None:
    """Seconds to store ``steps`` steps of ``x`` and ``e`` into a new trace, ``how`` it is prepared."""
    out_x, out_e = torch.empty((steps, n, 2)), torch.empty((steps, n))
    if how == "written":
        out_x.zero_()
        out_e.zero_()
    start = time.perf_counter()
    if how == "populated" and not (_populate(out_x) and _populate(out_e)):
        return None
    if how == "huge pages" and not (_huge(out_x) and _huge(out_e)):
        return None
    for t in range(steps):
        out_x[t] = x
        out_e[t] = e
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in args.chains:
        x, e = torch.randn(n, 2), torch.randn(n)
        best: dict[str, float | None] = {"fresh": None, "populated": None, "huge pages": None, "written": None}
        for _ in range(args.repeats):
            for how in best:
                s = write_steps(n, args.steps, how, x, e)
                if s is not None:
                    best[how] = s if best[how] is None else min(best[how], s)
        us = {k: (None if v is None else v / args.steps * 1e6) for k, v in best.items()}
        rows.append((n, us))
        print(n, us, flush=True)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trace_memory.py " + " ".join(argv or sys.argv[1:])
    lines = [SECTION, "",
             "`ebmlab.sample` with `keep=\"all\"` (the default) writes every step's points and energies into tensors "
             "allocated for the run, whose pages the operating system hands over, zeroed, on their first write. "
             "This times storing one step of a 2-D sampler's trace (`(N, 2)` float32 points and `(N,)` energies) "
             f"over {args.steps} steps: into fresh tensors, as a sampling run does; after asking the kernel for "
             "every page in one call (`madvise(MADV_POPULATE_WRITE)`, its time counted); advised for transparent "
             "huge pages (`madvise(MADV_HUGEPAGE)`, as NumPy does for large arrays); and into tensors "
             f"written before (the memory traffic alone). Microseconds per step, the fastest of {args.repeats}.",
             "", f"Reproduce: `{cmd}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one thread; "
             f"transparent huge pages: {_thp_mode()}.", "",
             "| chains | bytes per step | fresh | populated first | huge pages | written before |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n, us in rows:
        cell = ["—" if us[k] is None else f"{us[k]:.1f}" for k in ("fresh", "populated", "huge pages", "written")]
        lines.append(f"| {n:,} | {n * 12:,} | " + " | ".join(cell) + " |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.write:
        write_section(args.write, md)


if __name__ == "__main__":
    main()
