"""Parallel tempering vs MALA on multimodal targets: mode-weight error against wall time.

Every chain starts in one mode. MALA alone (the lecture's sampler) keeps each
chain in its starting basin when the modes are separated; parallel tempering
(``ebmlab.ParallelTempering`` over the same MALA, DEO swaps, adaptive ladder)
moves them across through its hot replicas. For each step budget both run the
same number of chains and steps; the first half is burn-in (PT adapts its
ladder there). Error = max over modes of |fraction of draws nearest that
mode - its weight|, with a Monte-Carlo standard error from the bulk ESS of the
mode indicators.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tempering.py --write docs/benchmarks.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

import ebmlab  # noqa: E402
from ebmlab.energies import targets  # noqa: E402
from ebmlab.evaluation import ess_bulk  # noqa: E402
from doc_sections import write_section  # noqa: E402

SECTION = "## Parallel tempering vs MALA"


def problems():
    """(name, target, MALA step, start mode index)."""
    two = targets.GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], [0.25, 0.25], [0.2, 0.8], name="two_modes")
    return [("two_modes (0.2 / 0.8, 8 apart, sd 0.5)", two, 0.5, 0),
            ("eight_gaussians", targets.get("eight_gaussians"), 0.45, 0)]


def mode_error(samples: torch.Tensor, target) -> tuple[float, float]:
    """Max over modes of |fraction - weight| and its Monte-Carlo SE (from the ESS of that mode's indicator)."""
    flat = samples.reshape(-1, samples.shape[-1])
    nearest = torch.cdist(flat, target.means.to(flat.dtype)).argmin(1).reshape(samples.shape[:2])
    worst, se_worst = -1.0, 0.0
    for k, w in enumerate(target.weights.tolist()):
        ind = (nearest == k).double()
        err = abs(float(ind.mean()) - w)
        if err > worst:
            ess = float(ess_bulk(ind.unsqueeze(-1)).min()) if float(ind.std()) > 0 else float("nan")
            worst, se_worst = err, float(ind.std()) / math.sqrt(ess) if ess == ess else float("nan")
    return worst, se_worst


def run(chains: int, budgets: list[int], seed: int) -> list[dict]:
    rows = []
    for label, target, eps, start in problems():
        for steps in budgets:
            for name, sampler in (("MALA", ebmlab.MALA(eps)),
                                  ("PT (MALA, 8 temperatures to 64, DEO, adaptive ladder)",
                                   ebmlab.ParallelTempering(ebmlab.MALA(eps), num_temperatures=8,
                                                            max_temperature=64.0))):
                if isinstance(sampler, ebmlab.ParallelTempering):
                    # as many doubling rounds of ladder adaptation as fit in the burn-in (half the budget)
                    rounds = max(1, int(math.log2(steps // 2 / sampler.first_round_steps + 1)))
                    sampler = ebmlab.ParallelTempering(ebmlab.MALA(eps), num_temperatures=8, max_temperature=64.0,
                                                       adapt_rounds=rounds)
                g = torch.Generator().manual_seed(seed)
                mean = target.means[start].to(torch.float64)
                x0 = mean + float(target.variances[start]) ** 0.5 * torch.randn(chains, 2, generator=g,
                                                                                 dtype=torch.float64)
                trace = ebmlab.sample(target, sampler, x0, steps, burn_in=max(steps // 2, getattr(
                    sampler, "num_adapt_steps", 0)), generator=g)
                err, se = mode_error(trace.samples, target)
                rows.append({"target": label, "sampler": name, "steps": steps, "seconds": trace.seconds,
                             "error": err, "se": se})
                print(f"{label[:20]:20s} {name[:4]:4s} steps {steps:6d} {trace.seconds:7.2f} s  error {err:.3f} "
                      f"(SE {se:.3f})", flush=True)
    return rows


def build_markdown(rows, meta, cmdline) -> str:
    lines = [SECTION, "", __doc__.split("\n\n")[1].replace("\n", " "), "", "Reproduce:", "", "```",
             "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tempering.py --write docs/benchmarks.md", "```", "",
             f"This run: `{cmdline}`; {meta['chains']:,} chains, float64, one thread; {meta['machine']}, "
             f"torch {meta['torch']}.", "",
             "| target | sampler | steps | seconds | max mode-weight error | its SE |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        se = "—" if r["se"] != r["se"] else f"{r['se']:.3f}"
        lines.append(f"| {r['target']} | {r['sampler']} | {r['steps']:,} | {r['seconds']:.2f} | {r['error']:.3f} "
                     f"| {se} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--budgets", default="500,2000,8000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    cmdline = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tempering.py " + " ".join(argv or sys.argv[1:])
    rows = run(args.chains, [int(b) for b in args.budgets.split(",")], args.seed)
    meta = {"chains": args.chains, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__}
    md = build_markdown(rows, meta, cmdline)
    print(md)
    if args.write:
        write_section(args.write, md)


if __name__ == "__main__":
    main()
