"""Where a sampler's normal random numbers can come from, and what each source costs per number on one CPU core.

Plain Langevin (ULA) on a 2-D target does little per step besides drawing ``(N, 2)`` standard normals, so the
source of those numbers bounds its speed. This times, for one step's ``(N, 2)`` float32 normals (and for a block
of ``--block`` steps drawn at once), the fastest of ``--repeats`` rounds (the sources alternated in each round):

* ``torch.randn`` from a ``torch.Generator`` (mt19937 and a vectorised Box-Muller; what ``ebmlab.sample`` uses),
  one step at a time and one block at a time (what ULA's blocks draw);
* torch.compile's own generator inside a compiled graph (``torch._inductor.config.fallback_random = False``:
  inductor's counter-based Philox, seeded once per call; the graph ``x + randn_like(x)``, less the same graph
  without the draw), the "counter-based generator inside the compiled step" that JAX uses;
* NumPy's ``default_rng`` (PCG64 and a ziggurat; ``standard_normal(dtype=float32)``);
* JAX's ``jax.random.normal`` (threefry) inside a jitted ``lax.scan`` of 200 steps, one key per step split
  from the run's key, as ebmlab's JAX ULA benchmark (``benchmarks/samplers.py``) does, less a jitted loop of
  200 pointwise steps without a draw; when JAX is installed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/normals.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from doc_sections import write_section  # noqa: E402

SECTION = "## Samplers: where the normal numbers come from"


def _loop(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def sources(n: int, block: int) -> dict[str, tuple[Callable[[], object], int]]:
    """Each source as (function drawing its numbers once, how many numbers one call draws)."""
    gen = torch.Generator().manual_seed(0)
    step, blk = (n, 2), (block, n, 2)
    out: dict[str, tuple[Callable[[], object], int]] = {
        "torch.randn, one step": (lambda: torch.randn(step, generator=gen), 2 * n),
        f"torch.randn, {block} steps": (lambda: torch.randn(blk, generator=gen), 2 * n * block),
    }
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = False  # inductor's own generator inside the graph
    x = torch.zeros(step)
    with_draw = torch.compile(lambda x: x + torch.randn_like(x), dynamic=False)
    without = torch.compile(lambda x: x + x, dynamic=False)
    for _ in range(3):
        with_draw(x)
        without(x)
    inductor_config.fallback_random = True
    out["inductor in-graph (Philox)"] = (lambda: with_draw(x), 2 * n)
    out["  (the same graph without the draw)"] = (lambda: without(x), 2 * n)
    rng = np.random.default_rng(0)
    out["NumPy default_rng (ziggurat)"] = (lambda: rng.standard_normal(step, dtype=np.float32), 2 * n)
    try:
        import jax
    except ImportError:
        return out
    jax.config.update("jax_platforms", "cpu")

    steps = 200

    @jax.jit
    def jax_scan(key: object, x: object) -> object:
        def body(x: object, k: object) -> tuple:
            return x + jax.random.normal(k, step, dtype=jax.numpy.float32), None

        return jax.lax.scan(body, x, jax.random.split(key, steps))[0]

    key, x0 = jax.random.key(0), jax.numpy.zeros(step, dtype=jax.numpy.float32)

    @jax.jit
    def jax_add(x: object) -> object:
        return jax.lax.fori_loop(0, steps, lambda i, x: x + x * 0.5, x)

    jax_scan(key, x0).block_until_ready()
    jax_add(x0).block_until_ready()
    out["JAX random.normal in lax.scan (threefry)"] = (lambda: jax_scan(key, x0).block_until_ready(),
                                                       2 * n * steps)
    out["  (a loop without the draw)"] = (lambda: jax_add(x0).block_until_ready(), 2 * n * steps)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--numbers", type=int, default=4_000_000, help="numbers drawn per timed run of a source")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    table: dict[int, dict[str, float]] = {}
    for n in args.chains:
        srcs = sources(n, args.block)
        best = {name: float("inf") for name in srcs}
        for _ in range(args.repeats):
            for name, (fn, count) in srcs.items():
                best[name] = min(best[name], _loop(fn, max(3, args.numbers // count)) / count)
        # the draws' share of a compiled call or loop: less the same graph without them
        best["inductor in-graph (Philox)"] -= best.pop("  (the same graph without the draw)")
        if "  (a loop without the draw)" in best:
            best["JAX random.normal in lax.scan (threefry)"] -= best.pop("  (a loop without the draw)")
        table[n] = {name: s * 1e9 for name, s in best.items()}
        print(n, {k: round(v, 2) for k, v in table[n].items()}, flush=True)
    names = list(next(iter(table.values())))
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/normals.py " + " ".join(argv or sys.argv[1:])
    lines = [SECTION, "",
             "Plain Langevin on a 2-D target does little per step besides drawing `(N, 2)` standard normals, so "
             "their source bounds its speed. Nanoseconds per float32 normal number, drawn as one step's `(N, 2)` "
             f"(and as {args.block} steps at once, as ULA's blocks draw them), the fastest of {args.repeats} "
             "rounds, the sources alternated in each round. Inductor's in-graph generator (`fallback_random = "
             "False`, a counter-based Philox inside the compiled graph) is timed as the compiled "
             "`x + randn_like(x)` less the same graph without the draw. JAX's draws are timed inside a jitted "
             "`lax.scan` of 200 steps, one key per step (as `benchmarks/samplers.py`'s JAX ULA draws), less a "
             "jitted loop of 200 pointwise steps without a draw.", "",
             f"Reproduce: `{cmd}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, NumPy "
             f"{np.__version__}" + _jax_version() + ", one thread.", "",
             "| source | " + " | ".join(f"N = {n:,}" for n in table) + " |",
             "|---|" + "---:|" * len(table)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{table[n][name]:.2f}" for n in table) + " |")
    lines += ["", *reading(table, args.block)]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.write:
        write_section(args.write, md)


def reading(table: dict[int, dict[str, float]], block: int) -> list[str]:
    """What the table means for one 2-D sampler step (``2 N`` numbers), from this run's numbers."""
    blk, philox = f"torch.randn, {block} steps", "inductor in-graph (Philox)"
    jax = "JAX random.normal in lax.scan (threefry)"
    per_step = "; ".join(
        f"N = {n:,}: torch.randn {row[blk] * 2 * n / 1e3:.0f} us"
        + (f", JAX's threefry {row[jax] * 2 * n / 1e3:.0f} us" if jax in row else "")
        + f", inductor's Philox {row[philox] * 2 * n / 1e3:.0f} us" for n, row in table.items())
    slowest = max(row[philox] / row[blk] for row in table.values())
    fastest = min(row[philox] / row[blk] for row in table.values())
    text = (f"Reading it: one 2-D step's normals (2N numbers, drawn in blocks of {block} steps as ULA does) cost "
            f"{per_step}. A counter-based generator inside the compiled step (what JAX does, and what "
            "`fallback_random = False` gives torch.compile) costs {:.0f}-{:.0f}x torch.randn per number on this "
            "CPU, so ebmlab's compiled blocks keep drawing with torch.randn from the caller's generator, outside "
            "the graph (which also keeps compiled chains equal to eager ones).").format(fastest, slowest)
    if all(jax in row for row in table.values()):
        if all(row[jax] > row[blk] for row in table.values()):
            text += (" JAX's own draws cost more per number than torch.randn at every N here, so where ebmlab's "
                     "ULA trails JAX's scan (docs/benchmarks.md, \"Samplers\") the draws are not the part that "
                     "loses.")
        else:
            text += " JAX's own draws cost less per number than torch.randn at some N here."
    return _wrap(text)


def _wrap(text: str, width: int = 115) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def _jax_version() -> str:
    try:
        import jax
    except ImportError:
        return ""
    return f", JAX {jax.__version__}"


if __name__ == "__main__":
    main()
