"""Long runs with ``ebmlab.sample``'s default ``compile="auto"``: wall time against eager and ``compile=True``.

Each run is a fresh process, so the wall time includes everything a user waits for: the eager probe steps,
torch.compile's first compilation in the process, and the compiled steps. The number of steps is set so that
the eager run takes about ``--seconds``. The "auto, again" column is a second run of the same (sampler,
energy) in the same process: it starts compiled (the compile is paid once, as JAX's jit is).

Reproduce: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/auto_compile.py --write docs/benchmarks.md`` (about 16 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_sections import write_section  # noqa: E402

#: (energy, sampler, step size, chains): a user's closure (autograd score), an analytic target, a network.
#: The mixture is a user's closure around ``torch.logsumexp`` (autograd score): the case where a compiled
#: step used to be slower than eager.
CASES = [("double well", "MALA", 0.2, 1000), ("mixture", "MALA", 0.3, 1000),
         ("banana", "ULA", 0.3, 1000), ("banana", "HMC", 0.15, 1000), ("MLP", "MALA", 0.1, 1000)]


def _setup(energy_name: str, algo: str, eps: float, n: int):
    import ebmlab
    from ebmlab.energies import targets

    torch.manual_seed(0)
    if energy_name == "double well":
        def energy(x):  # a user's closure: its score comes from autograd
            return 2 * ((x**2 - 1) ** 2).sum(-1)
    elif energy_name == "mixture":
        angles = torch.arange(8) * (2 * torch.pi / 8)
        means = 4 * torch.stack([angles.cos(), angles.sin()], 1)

        def energy(x):  # eight Gaussians of variance 0.25 on a circle, written as a user would
            return -torch.logsumexp(-2.0 * ((x[:, None, :] - means) ** 2).sum(-1), dim=1)
    elif energy_name == "MLP":
        energy = ebmlab.MLPEnergy(2, hidden=(128, 128))
    else:
        energy = targets.get(energy_name)
    sampler = {"ULA": lambda: ebmlab.Langevin(eps), "MALA": lambda: ebmlab.MALA(eps),
               "HMC": lambda: ebmlab.HMC(eps, num_leapfrog=5)}[algo]()
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return ebmlab, energy, sampler, x0


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    ebmlab, energy, sampler, x0 = _setup(args.energy, args.algo, args.eps, args.chains)
    out = {}
    if args.mode == "calibrate":
        ebmlab.sample(energy, sampler, x0, 50, generator=torch.Generator().manual_seed(1), compile=False)
        t = time.perf_counter()
        ebmlab.sample(energy, sampler, x0, 400, generator=torch.Generator().manual_seed(1), compile=False)
        out["per_step"] = (time.perf_counter() - t) / 400
    else:
        mode = {"eager": False, "compile": True, "auto": "auto"}[args.mode]
        runs = []
        for _ in range(2 if args.mode == "auto" else 1):
            t = time.perf_counter()
            tr = ebmlab.sample(energy, sampler, x0, args.steps, generator=torch.Generator().manual_seed(1),
                               compile=mode, keep="last")
            runs.append({"wall": time.perf_counter() - t, "compiled_from": tr.compiled_from,
                         "acceptance": float(tr.acceptance_rate.mean())})
        out["runs"] = runs
    print(json.dumps(out))


def call(case, mode: str, steps: int = 0) -> dict:
    energy, algo, eps, n = case
    cmd = [sys.executable, __file__, "--child", "--energy", energy, "--algo", algo, "--eps", str(eps),
           "--chains", str(n), "--mode", mode, "--steps", str(steps)]
    with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache: no process reuses another's compile
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=75.0, help="the eager run's length to aim at")
    ap.add_argument("--write", type=Path, default=None, help="replace the section in this markdown file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--energy", default="double well", help=argparse.SUPPRESS)
    ap.add_argument("--algo", default="MALA", help=argparse.SUPPRESS)
    ap.add_argument("--eps", type=float, default=0.2, help=argparse.SUPPRESS)
    ap.add_argument("--chains", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    from ebmlab.samplers.base import AUTO_COMPILE_SECONDS

    rows = []
    for case in CASES:
        per_step = call(case, "calibrate")["per_step"]
        steps = max(1000, int(args.seconds / per_step))
        eager = call(case, "eager", steps)["runs"][0]
        auto = call(case, "auto", steps)["runs"]
        comp = call(case, "compile", steps)["runs"][0]
        row = {"case": case, "steps": steps, "eager": eager, "auto": auto, "compile": comp}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        '## Samplers: long runs (the default compile="auto")',
        "",
        "`ebmlab.sample(energy, sampler, x0, steps)` with no `compile` argument starts eagerly, times its first "
        "steps, and compiles the transition when the rest of the run would take longer than "
        f"`AUTO_COMPILE_SECONDS` = {AUTO_COMPILE_SECONDS:g} s eagerly; it keeps the compiled step only if it "
        "measures faster. Each cell is one run in a fresh process, so its wall time includes the eager probe, "
        "torch.compile's first compilation in the process (from an empty inductor cache; later processes reuse "
        "the on-disk cache and compile faster) and the compiled steps (`keep=\"last\"`: the loop "
        "stores no draws, as in training; one thread). "
        "\"auto, again\" is a second run of the same pair in the same process: it starts compiled. "
        "compile=True also pays its compilation inside the cell.",
        "",
        f"Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/auto_compile.py --seconds {args.seconds:g} "
        "--write docs/benchmarks.md`",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, Python {platform.python_version()}; "
        "a shared host, where identical runs vary in time (see below).",
        "",
        "| energy | sampler | chains | steps | eager s | auto s (compiled from step) | compile=True s | "
        "auto, again s | eager / auto | accept eager / auto |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        energy, algo, eps, n = r["case"]
        a1, a2 = r["auto"]
        lines.append(
            f"| {energy} | {algo} ({eps:g}) | {n:,} | {r['steps']:,} | {r['eager']['wall']:.1f} | "
            f"{a1['wall']:.1f} ({a1['compiled_from']}) | {r['compile']['wall']:.1f} | {a2['wall']:.1f} | "
            f"**{r['eager']['wall'] / a1['wall']:.2f}x** | {r['eager']['acceptance']:.3f} / {a1['acceptance']:.3f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
