"""Does bf16 autocast pay for ebmlab's training step? Steps/s (and, in 2-D, the exact KL reached) of the same
training run in float32 and under ``torch.autocast(device, bfloat16)``.

    OMP_NUM_THREADS=1 python benchmarks/autocast.py --write docs/benchmarks.md     # the CPU, about 5 minutes

Runs: the CLI's default 2-D training (eight Gaussians, PCD, MLP 128x128, batch 256, 20 ULA steps per update)
for ``--steps-2d`` updates, then the exact KL by quadrature (``evaluate_density_model``, the definition
``ebmlab evaluate`` uses); the digits EBM and NCSN with the CLI's defaults (batch 128) for a few timed steps
(their sample quality needs a long run and is not measured here). The autocast context wraps the whole
``train_ebm`` / ``train_score`` call: matmuls and convolutions run in bf16 inside the sampler, the loss and the
backward pass; the optimiser, EMA and finiteness checks stay float32. Writes the ``## bf16 autocast`` section.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import digits_setup, ebmlab_ebm, ebmlab_ncsn  # noqa: E402
from doc_sections import write_section  # noqa: E402

HEADING = "## bf16 autocast"


def two_d(device: torch.device, steps: int, autocast: bool) -> dict[str, float]:
    """The CLI's default 2-D run for ``steps`` updates: steps/s over the updates after the first 20, and the KL."""
    from ebmlab import training
    from ebmlab.data import toy
    from ebmlab.evaluation import evaluate_density_model
    from ebmlab.runs import TrainConfig
    from ebmlab.runs.models import build_energy, data_bounds, data_section, load_data, model_section
    from ebmlab.runs.run import chain_sampler

    cfg = TrainConfig.resolve(data="eight_gaussians", device=str(device))
    data = data_section(cfg)
    train_x, test = load_data(data, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_energy(model_section(cfg, train_x)).to(device)
    rows: list[tuple[int, float]] = []
    g = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        result = training.train_ebm(model, train_x, sampler=chain_sampler(cfg.to_dict(), images=False),
                                    method=cfg.method, steps=steps, batch_size=cfg.batch_size,
                                    mcmc_steps=cfg.langevin_steps, lr=cfg.lr, alpha=cfg.alpha, grad_clip=cfg.grad_clip,
                                    data_noise=cfg.data_noise, ema_decay=cfg.ema, generator=g, log_every=20,
                                    callback=lambda step, row: rows.append((step, row["seconds"])))
    (s0, t0), (s1, t1) = rows[0], rows[-1]
    ema = result.ema if result.ema is not None else model
    bounds = [tuple(b) for b in data_bounds("eight_gaussians", train_x.cpu())]
    with torch.no_grad():
        ev = evaluate_density_model(ema, test, bounds, true_density=toy.true_density("eight_gaussians"),
                                    resolution=256, num_chains=200, num_steps=50,
                                    generator=torch.Generator().manual_seed(1))
    return {"rate": (s1 - s0) / (t1 - t0), "kl": ev["kl"]}


def build_section(best: dict[tuple[str, bool], dict[str, float]], meta: dict) -> str:
    """The markdown section from the best steps/s (and 2-D KL) of each (training, bf16) pair."""
    lines = [HEADING, "",
             "Does `torch.autocast(bfloat16)` around ebmlab's training step pay? Measured on the CPU only: no GPU "
             "was available, so the GPU answer comes from `benchmarks/gpu.py` (its training table has a bf16 row) "
             "when someone runs it. Until then ebmlab has **no autocast option**: an option whose effect on a GPU "
             "and on sample quality is unmeasured would be a guess.",
             "",
             f"This run: `{meta['cmd']}`; {meta['device']} ({meta['cpu']}, {meta['cores']} cores visible; "
             f"{meta['flags']}), torch {meta['torch']}, one thread, a machine shared with other work (expect "
             f"20-50% noise on steps/s). Steps/s: the best of {meta['repeats']} alternating runs. 2-D: "
             f"{meta['steps_2d']} updates of the CLI's default run, then the exact KL of the EMA model by quadrature "
             f"(seeded: every repeat reaches the same KL). Digits: 5 warm-up and {meta['digits_steps']} timed "
             "updates with the CLI's defaults (sample quality not measured).",
             "",
             "| training | float32 steps/s | bf16 autocast steps/s | speed-up | KL float32 | KL bf16 |",
             "|---|---:|---:|---:|---:|---:|"]
    findings = []
    for name in dict.fromkeys(k[0] for k in best):
        f32, b16 = best[(name, False)], best[(name, True)]
        speed = b16["rate"] / f32["rate"]
        kl = f"{f32['kl']:.3f} | {b16['kl']:.3f}" if "kl" in f32 else "— | —"
        lines.append(f"| {name} | {f32['rate']:.2f} | {b16['rate']:.2f} | {speed:.2f}x | {kl} |")
        if "kl" in f32:
            worse = b16["kl"] > f32["kl"] + 0.05
            findings.append(f"{name}: bf16 runs at {speed:.2f}x the float32 steps/s and reaches KL {b16['kl']:.3g} "
                            f"nat against {f32['kl']:.3g}: " + ("it hurts the model, so it stays off for 2-D "
                                                              "training." if worse else "no loss of quality here."))
        else:
            findings.append(f"{name}: {speed:.2f}x the float32 steps/s; sample quality under bf16 not measured.")
    lines += ["", "Reading it: " + " ".join(findings) + " Without a GPU measurement and a quality check on the "
              "images, ebmlab adds no autocast flag.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps-2d", type=int, default=600)
    ap.add_argument("--digits-steps", type=int, default=20, help="timed digits steps (after 5 of warm-up)")
    ap.add_argument("--repeats", type=int, default=2, help="float32 / bf16 runs alternate; the best steps/s is kept")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    best: dict[tuple[str, bool], dict[str, float]] = {}
    for _ in range(args.repeats):
        for bf16 in (False, True):
            r = two_d(device, args.steps_2d, bf16)
            key = ("2-D PCD (eight Gaussians)", bf16)  # seeded: every repeat reaches the same KL
            best[key] = {"rate": max(r["rate"], best.get(key, {"rate": 0.0})["rate"]), "kl": r["kl"]}
            print(f"2-D bf16={bf16}: {r['rate']:.1f} steps/s, KL {r['kl']:.3f}", flush=True)
    for name, method, fn in (("digits EBM (buffer)", "buffer", ebmlab_ebm), ("digits NCSN", "ncsn", ebmlab_ncsn)):
        setup = digits_setup(method, device, small=False)
        for _ in range(args.repeats):
            for bf16 in (False, True):
                rate = fn(setup, device, 5, args.digits_steps, autocast=bf16)
                key = (name, bf16)
                best[key] = {"rate": max(rate, best.get(key, {"rate": 0.0})["rate"])}
                print(f"{name} bf16={bf16}: {rate:.2f} steps/s", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        text = open("/proc/cpuinfo").read()
        flags = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in text) or "no bf16 instructions"
    except OSError:
        pass
    meta = {"cmd": "OMP_NUM_THREADS=1 python " + " ".join(["benchmarks/autocast.py",
                                                          *(argv if argv is not None else sys.argv[1:])]),
            "device": str(device), "cpu": cpu, "cores": os.cpu_count(), "flags": flags, "torch": torch.__version__,
            "repeats": args.repeats, "steps_2d": args.steps_2d, "digits_steps": args.digits_steps}
    section = build_section(best, meta)
    print(section)
    if args.write is not None:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
