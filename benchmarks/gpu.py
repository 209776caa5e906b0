"""One-GPU benchmark of ebmlab: sampler throughput at 10^4, 10^5 and 10^6 chains, and training steps/s on the
digits against a hand-written PyTorch loop of the same step; a 2-GPU DDP run when two GPUs are present.

Writes (or replaces) the ``## GPU`` section of a markdown file:

    python benchmarks/gpu.py --write docs/benchmarks.md                  # one CUDA GPU, at most ~8 minutes
    python benchmarks/gpu.py --device cpu --small --write /tmp/gpu.md    # a smoke run on the CPU (< 1 minute)

Nothing is installed or downloaded: the digits ship with scikit-learn, the rest is ebmlab and torch.

* Samplers: ULA, MALA and HMC (L = 5) on the banana (analytic score) and on an MLP energy
  (2 -> 128 -> 128 -> 1, SiLU, autograd score), eager and ``compile=True``, through ``ebmlab.sample`` with
  ``keep="last"`` (no draws stored: throughput of the chains themselves) and a generator on the device.
  chain-steps/s = chains x steps / wall seconds of the timed run (compilation and a warm-up excluded,
  the device synchronised before the clock stops).
* Training on the 8x8 digits with the CLI's defaults: the EBM (ConvEnergy, replay buffer, 20 ULA steps
  per update, batch 128) and the NCSN (ScoreConvNet, 20 noise levels, batch 128), ebmlab's loop
  (``training.train_ebm`` / ``train_score``: the one ``fit`` loop with its per-step checks, EMA and
  clipping, no evaluation or checkpoints) against a hand-written PyTorch loop of the same step (same
  network, initialisation, data, sampler, loss, Adam, clipping and EMA; no checks, no syncs).
  Also: ebmlab's loop under ``torch.autocast(bfloat16)`` (not an ebmlab option: measured here to decide
  whether one is worth adding) and, on a GPU, ``compile=True`` for the EBM's negatives.
* Two GPUs: ``torchrun --nproc_per_node 2 -m ebmlab train --data digits`` against the same on one process.

Goals (stated in the section): on one H100/H200-class GPU, ULA on the banana at N = 10^6 reaches at least
1e9 chain-steps/s; ebmlab's training steps take at most 1.2x the hand-written loop's time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import ebmlab
from ebmlab import training
from ebmlab.devices import resolve_device
from doc_sections import write_section

HEADING = "## GPU"
GOAL_ULA_RATE = 1e9
GOAL_TRAIN_RATIO = 1.2
#: eps per (energy, sampler); the banana's as in benchmarks/samplers.py, the MLP's small enough for its scale
STEP_SIZES = {"banana": {"ULA": 0.3, "MALA": 0.5, "HMC": 0.15}, "MLP": {"ULA": 0.1, "MALA": 0.1, "HMC": 0.05}}
FULL_CHAINS = (10_000, 100_000, 1_000_000)
SMALL_CHAINS = (1_000, 10_000)
COMMAND = "python benchmarks/gpu.py --write docs/benchmarks.md"


# --------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Budget:
    """Wall-time budget: each part gets a deadline; work that would start after it is skipped and said so."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def until(self, fraction: float) -> float:
        """A deadline ``fraction`` of the whole budget after the start."""
        return self.start + fraction * self.seconds


def make_sampler(name: str, eps: float):
    if name == "ULA":
        return ebmlab.Langevin(eps)
    if name == "MALA":
        return ebmlab.MALA(eps)
    return ebmlab.HMC(eps, num_leapfrog=5)


def mlp_energy(device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ebmlab.MLPEnergy(2, hidden=(128, 128))
    return model.to(device).eval().requires_grad_(False)


def time_sampler(energy: Any, algo: str, eps: float, n: int, device: torch.device, compile: bool,
                 target_seconds: float, max_steps: int) -> dict[str, Any]:
    """One configuration: a warm-up (compilation included), a probe for the step time, the timed run."""
    sampler = make_sampler(algo, eps)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn((n, 2), generator=g, device=device)

    def run(steps: int):
        return ebmlab.sample(energy, sampler, x0, steps, generator=g, keep="last", compile=compile)

    t = time.perf_counter()
    run(3)
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    run(10)
    sync(device)
    per_step = (time.perf_counter() - t) / 10
    steps = int(min(max(target_seconds / max(per_step, 1e-9), 10), max_steps))
    t = time.perf_counter()
    trace = run(steps)
    sync(device)
    seconds = time.perf_counter() - t
    finite = bool(torch.isfinite(trace.final_state.x).all())
    return {"steps": steps, "seconds": seconds, "rate": n * steps / seconds, "finite": finite,
            "compile_s": max(warm - 3 * per_step, 0.0) if compile else None}


# --------------------------------------------------------------------------- training: ebmlab and by hand


def digits_setup(method: str, device: torch.device, small: bool) -> dict[str, Any]:
    """The CLI's digits run of ``method`` (``small``: batch 32 and 5 sampler steps): config, training images on
    ``device``, a freshly initialised network."""
    from ebmlab.runs import TrainConfig
    from ebmlab.runs.models import build_energy, data_section, load_data, model_section

    cfg = TrainConfig.resolve(data="digits", method=method, device=str(device),
                              **(dict(batch_size=32, langevin_steps=5) if small else {}))
    train_x, _ = load_data(data_section(cfg), device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_energy(model_section(cfg, train_x)).to(device)
    return {"cfg": cfg, "x": train_x, "model": model}


def _timed_rows(warm: int) -> tuple[Callable[[int, dict[str, Any]], None], Callable[[], float]]:
    """A ``fit`` callback recording each logged row's (step, seconds), and the steps/s after ``warm`` steps
    (rows are logged after the step's sync, so no device work is left out)."""
    rows: list[tuple[int, float]] = []

    def callback(step: int, row: dict[str, Any]) -> None:
        if "seconds" in row:
            rows.append((step, float(row["seconds"])))

    def rate() -> float:
        first = next(r for r in rows if r[0] >= warm)
        last = rows[-1]
        return (last[0] - first[0]) / (last[1] - first[1])

    return callback, rate


def ebmlab_ebm(setup: dict[str, Any], device: torch.device, warm: int, steps: int, *, compile: bool = False,
               autocast: bool = False) -> float:
    from ebmlab.runs.run import chain_sampler

    cfg = setup["cfg"]
    model = copy.deepcopy(setup["model"])
    section = {**cfg.to_dict(), "clamp": [-1.0, 1.0]}  # what runs.train derives from clamp_data for images
    callback, rate = _timed_rows(warm)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        training.train_ebm(model, setup["x"], sampler=chain_sampler(section, images=True), method=cfg.method,
                           steps=warm + steps, batch_size=cfg.batch_size, mcmc_steps=cfg.langevin_steps, lr=cfg.lr,
                           alpha=cfg.alpha, grad_clip=cfg.grad_clip, data_noise=cfg.data_noise,
                           buffer_size=cfg.buffer_size, reinit_prob=cfg.reinit_prob, ema_decay=cfg.ema, generator=g,
                           log_every=warm, callback=callback, compile=compile)
    return rate()


def hand_ebm(setup: dict[str, Any], device: torch.device, warm: int, steps: int) -> float:
    """The same EBM step written out: batch + data noise, replay buffer with restarts, ULA with tempered
    noise and clamping (k + 1 gradients: the start's and each step's), contrastive loss with the energy
    regulariser, Adam, gradient-norm clip, warmed-up EMA, buffer write-back."""
    cfg = setup["cfg"]
    model = copy.deepcopy(setup["model"])
    x_data = setup["x"]
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.0, 0.999))
    ema = [p.detach().clone() for p in params]
    g = torch.Generator(device=device).manual_seed(0)
    event = x_data.shape[1:]
    buffer = torch.rand((cfg.buffer_size, *event), generator=g, device=device) * 2 - 1
    b, eps, sd, k = cfg.batch_size, cfg.step_size, cfg.noise_scale, cfg.langevin_steps

    def energy_and_score(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        e = model(x)
        return e.detach(), -torch.autograd.grad(e.sum(), x)[0]

    def step(i: int) -> None:
        idx = torch.randint(x_data.shape[0], (b,), generator=g, device=device)
        x_pos = x_data[idx] + cfg.data_noise * torch.randn((b, *event), generator=g, device=device)
        slots = torch.randperm(cfg.buffer_size, generator=g, device=device)[:b]
        fresh = torch.rand(b, generator=g, device=device) < cfg.reinit_prob
        noise = torch.rand((b, *event), generator=g, device=device) * 2 - 1
        x = torch.where(fresh.reshape(b, 1, 1, 1), noise, buffer[slots])
        model.eval()
        _, s = energy_and_score(x)
        for _ in range(k):
            x = (x + 0.5 * eps * eps * s + sd * torch.randn(x.shape, generator=g, device=device)).clamp(-1.0, 1.0)
            _, s = energy_and_score(x)
        model.train()
        x_neg = x.detach()
        e_pos, e_neg = model(x_pos), model(x_neg)
        loss = e_pos.mean() - e_neg.mean() + cfg.alpha * ((e_pos ** 2).mean() + (e_neg ** 2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - min(cfg.ema, (1 + i) / (10 + i)))
        buffer[slots] = x_neg

    return _time_loop(step, device, warm, steps)


def ebmlab_ncsn(setup: dict[str, Any], device: torch.device, warm: int, steps: int, *, autocast: bool = False
                ) -> float:
    from ebmlab.score_training import default_sigmas, train_score

    cfg = setup["cfg"]
    model = copy.deepcopy(setup["model"])
    sigmas = default_sigmas(setup["x"], sigma_min=cfg.sigma_min, num_sigmas=cfg.num_sigmas)
    callback, rate = _timed_rows(warm)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        train_score(model, setup["x"], method="ncsn", sigmas=sigmas, steps=warm + steps, batch_size=cfg.batch_size,
                    lr=cfg.lr, grad_clip=cfg.grad_clip, ema_decay=cfg.ema, generator=g, log_every=warm,
                    callback=callback)
    return rate()


def hand_ncsn(setup: dict[str, Any], device: torch.device, warm: int, steps: int) -> float:
    """The same NCSN step written out: batch, one level per sample, ``1/2 ||sigma s(x + sigma z) + z||^2``
    (Song & Ermon 2019, eq. 5-6), Adam, gradient-norm clip, warmed-up EMA."""
    from ebmlab.score_training import default_sigmas

    cfg = setup["cfg"]
    model = copy.deepcopy(setup["model"])
    x_data = setup["x"]
    levels = default_sigmas(x_data, sigma_min=cfg.sigma_min, num_sigmas=cfg.num_sigmas).to(device, x_data.dtype)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    ema = [p.detach().clone() for p in params]
    g = torch.Generator(device=device).manual_seed(0)
    b = cfg.batch_size

    def step(i: int) -> None:
        x = x_data[torch.randint(x_data.shape[0], (b,), generator=g, device=device)]
        sigma = levels[torch.randint(0, levels.numel(), (b,), generator=g, device=device)]
        z = torch.randn(x.shape, generator=g, device=device)
        sb = sigma.reshape(b, 1, 1, 1)
        s = model(x + sb * z, sigma)
        loss = 0.5 * ((sb * s + z) ** 2).reshape(b, -1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - min(cfg.ema, (1 + i) / (10 + i)))

    return _time_loop(step, device, warm, steps)


def _time_loop(step: Callable[[int], None], device: torch.device, warm: int, steps: int) -> float:
    for i in range(warm):
        step(i)
    sync(device)
    t = time.perf_counter()
    for i in range(warm, warm + steps):
        step(i)
    sync(device)
    return steps / (time.perf_counter() - t)


# --------------------------------------------------------------------------- two GPUs


def ddp_rows(device: torch.device, steps: int, budget: Budget) -> tuple[list[dict[str, Any]], str]:
    """``ebmlab train --data digits`` on one process and under ``torchrun`` on two GPUs: images/s of the whole
    job from metrics.jsonl (rows after the first; evaluation and checkpoints excluded)."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return [], (f"not run: {torch.cuda.device_count() if device.type == 'cuda' else 0} GPU(s) here; the DDP "
                    "row needs two")
    # HOOK (distributed training): ebmlab.distributed and `torchrun -m ebmlab train` are the multi-GPU API;
    # until both are in place this part reports why it did not run instead of failing the benchmark.
    try:
        import ebmlab.distributed  # noqa: F401
    except ImportError as err:
        return [], f"not run: the distributed training API is not available ({err})"
    rows = []
    for nproc in (1, 2):
        if budget.left() < 45:
            return rows, "stopped: time budget"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            log_every = max(steps // 5, 1)
            train = ["-m", "ebmlab", "train", "--data", "digits", "--steps", str(steps), "--eval-every", str(steps),
                     "--log-every", str(log_every), "--device", "cuda", "--out", str(out), "--json"]
            cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                     if nproc > 1 else []), *train]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(budget.left() - 10, 30))
            if proc.returncode != 0:
                return rows, f"`{' '.join(cmd[1:])}` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            logged = [r for r in logged if "seconds" in r and "loss" in r]
            first, last = logged[0], logged[-1]
            rate = (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])
            batch = json.loads((out / "config.json").read_text())["train"]["batch_size"]
            rows.append({"gpus": nproc, "steps_per_s": rate, "images_per_s": rate * batch * nproc})
    return rows, ""


# --------------------------------------------------------------------------- markdown


def fmt_rate(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e9:.2f}G"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def build_markdown(meta: dict[str, Any], sampler_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]],
                   ddp: list[dict[str, Any]], ddp_note: str, notes: list[str]) -> str:
    on_gpu = meta["device"].startswith("cuda")
    lines = [HEADING, ""]
    lines += [
        "Goals, on one H100/H200-class GPU: ULA on the banana at N = 10^6 chains reaches at least 1e9 "
        "chain-steps/s; ebmlab's training steps (EBM and NCSN on the digits) take at most "
        f"{GOAL_TRAIN_RATIO}x the time of a hand-written PyTorch loop of the same step. The script "
        "(`benchmarks/gpu.py`, at most ~8 minutes, installs nothing) measures both, plus MALA and HMC, an "
        "MLP energy, `compile=True`, bf16 autocast and two GPUs under DDP when present.",
        "",
    ]
    if not on_gpu:
        lines += [
            "**GPU numbers: not measured yet.** No GPU was available when this section was written. On a "
            f"CUDA machine run `{COMMAND}`; it replaces this section. The tables below are what they say: "
            f"a `--device {meta['device']}{' --small' if meta['small'] else ''}` run on the CPU "
            f"({meta['machine'].removeprefix('CPU: ')}), small N and few steps, which shows the script works and "
            "nothing about GPU speed.",
            "",
        ]
    lines += [f"This run: `{meta['cmdline']}`", "",
              f"Device: {meta['device_name']}; torch {meta['torch']}, Python {meta['python']}, float32; "
              f"threads: {meta['threads']}; total {meta['total_s']:.0f} s.", ""]
    lines += [
        "### Sampler throughput",
        "",
        "`ebmlab.sample(..., keep=\"last\")` with a generator on the device, chains started from N(0, I). "
        "chain-steps/s = chains x steps / seconds of the timed run (warm-up and compilation excluded, device "
        "synchronised). MLP: 2 -> 128 -> 128 -> 1, SiLU, autograd score. HMC: 5 leapfrog steps per "
        "transition (counted as one step).",
        "",
        "| energy | sampler (eps) | chains | impl | steps | seconds | chain-steps/s | compile s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in sampler_rows:
        if "skipped" in r:
            lines.append(f"| {r['energy']} | {r['algo']} ({r['eps']}) | {r['n']:,} | {r['impl']} | "
                         f"{r['skipped']} | | | |")
            continue
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "—"
        flag = "" if r["finite"] else " (non-finite chains)"
        lines.append(f"| {r['energy']} | {r['algo']} ({r['eps']}) | {r['n']:,} | {r['impl']} | {r['steps']} | "
                     f"{r['seconds']:.2f} | {fmt_rate(r['rate'])}{flag} | {comp} |")
    lines += [
        "",
        "### Training steps on the digits",
        "",
        "The CLI's digits defaults (`ebmlab train --data digits`, and `--method ncsn`; batch 128"
        + (", here 32, and 5 ULA steps per EBM update: `--small`" if meta["small"] else "") + "). ebmlab: "
        "`training.train_ebm` / `train_score` (the one `fit` loop: per-step finiteness check, clipping, EMA; no "
        "evaluation, no checkpoints); steps/s from the logged rows after the warm-up. Hand-written: the same "
        "network and initialisation, data, sampler, loss, Adam, clipping and EMA in a plain loop without checks. "
        "Ratio = hand-written steps/s / ebmlab's (time per step of ebmlab relative to the hand loop; goal "
        f"<= {GOAL_TRAIN_RATIO}).",
        "",
        "| model | loop | warm-up + timed steps | steps/s | ratio (time per step vs hand-written) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in train_rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['loop']} | {r['skipped']} | | |")
            continue
        ratio = f"**{r['ratio']:.2f}x**" if r.get("ratio") is not None else ""
        lines.append(f"| {r['model']} | {r['loop']} | {r['warm']} + {r['steps']} | {r['rate']:.2f} | {ratio} |")
    lines += ["", "### Two GPUs (DDP)", ""]
    if ddp:
        lines += ["`ebmlab train --data digits` (EBM defaults, batch 128 per process) on one process and under "
                  "`torchrun --standalone --nproc_per_node 2 -m ebmlab train`; rates from metrics.jsonl.", "",
                  "| GPUs | steps/s | images/s | scaling |", "|---:|---:|---:|---:|"]
        base = ddp[0]["images_per_s"]
        for r in ddp:
            lines.append(f"| {r['gpus']} | {r['steps_per_s']:.2f} | {r['images_per_s']:.0f} | "
                         f"{r['images_per_s'] / base:.2f}x |")
        lines.append("")
    if ddp_note:
        lines += [f"DDP: {ddp_note}.", ""]
    lines += ["### Verdict", "", verdict(meta, sampler_rows, train_rows), ""]
    if notes:
        lines += ["Notes: " + " ".join(notes), ""]
    return "\n".join(lines)


def verdict(meta: dict[str, Any], sampler_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> str:
    on_gpu = meta["device"].startswith("cuda")
    out = []
    ula = [r for r in sampler_rows if r["energy"] == "banana" and r["algo"] == "ULA" and "rate" in r]
    if ula:
        n = max(r["n"] for r in ula)
        best = max((r for r in ula if r["n"] == n), key=lambda r: r["rate"])
        if on_gpu and n >= 1_000_000:
            met = "meets" if best["rate"] >= GOAL_ULA_RATE else "does not meet"
            out.append(f"ULA on the banana at N = {n:,}: {fmt_rate(best['rate'])} chain-steps/s ({best['impl']}), "
                       f"which {met} the 1e9 goal.")
        else:
            out.append(f"ULA on the banana at N = {n:,} ({meta['device']}): {fmt_rate(best['rate'])} chain-steps/s "
                       f"({best['impl']}); the 1e9 goal is for N = 10^6 on a GPU: not measured here.")
    for model in ("EBM", "NCSN"):
        r = next((r for r in train_rows if r["model"] == model and r.get("ratio") is not None), None)
        if r is None:
            continue
        if meta["small"]:
            out.append(f"{model} training: {r['ratio']:.2f}x the hand-written loop's time per step over "
                       f"{r['steps']} steps of a smoke run: noise, not a measurement of the {GOAL_TRAIN_RATIO}x goal.")
            continue
        met = "within" if r["ratio"] <= GOAL_TRAIN_RATIO else "outside"
        where = "" if on_gpu else f" on the {meta['device']} (the goal is for a GPU)"
        out.append(f"{model} training: ebmlab takes {r['ratio']:.2f}x the hand-written loop's time per step{where}, "
                   f"{met} the {GOAL_TRAIN_RATIO}x goal.")
    for model in ("EBM", "NCSN"):
        base = next((r for r in train_rows if r["model"] == model and r["loop"] == "ebmlab" and "rate" in r), None)
        bf = next((r for r in train_rows if r["model"] == model and r["loop"].startswith("ebmlab, bf16") and
                   "rate" in r), None)
        if base and bf:
            out.append(f"{model} under bf16 autocast: {bf['rate'] / base['rate']:.2f}x ebmlab's float32 steps/s"
                       + (" (smoke run)." if meta["small"] else "."))
    return " ".join(out) if out else "Nothing was measured."


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    ap.add_argument("--small", action="store_true", help="small N, few steps: a smoke run (the CPU test uses it)")
    ap.add_argument("--chains", type=int, nargs="+", default=None, help="chain counts (default 1e4 1e5 1e6)")
    ap.add_argument("--target-seconds", type=float, default=None, help="seconds per timed sampler run")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps per loop")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 450; small 120)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile=True rows")
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--write", type=Path, default=None, help="write/replace the '## GPU' section of this file")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"gpu.py: {err}; for a smoke run without a GPU: --device cpu --small", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.small and args.chains is None:
        print("gpu.py: the full sizes (up to 10^6 chains, hundreds of training steps) are for a GPU; on the CPU "
              "pass --small (or --chains)", file=sys.stderr)
        return 2
    small = args.small
    chains = tuple(args.chains) if args.chains else (SMALL_CHAINS if small else FULL_CHAINS)
    target_s = args.target_seconds or (0.1 if small else 1.0)
    max_steps = 200 if small else 20_000
    warm, train_steps = (2, args.train_steps or 4) if small else (10, args.train_steps or 100)
    budget = Budget(args.budget or (120.0 if small else 450.0))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 as documented (TF32 would change the numbers)
        name = f"{torch.cuda.get_device_name(device)} ({device})"
    else:
        name = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible"
    meta = {"device": str(device), "device_name": name, "small": small, "torch": torch.__version__,
            "python": platform.python_version(), "machine": name,
            "threads": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                       f"torch {torch.get_num_threads()} intra-op thread(s)",
            "cmdline": "python " + " ".join(["benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])])}
    notes: list[str] = []
    print(f"# {meta}", flush=True)

    # ---- samplers: banana eager, banana compiled, then the MLP energy (by priority: the goal's row first)
    rows: list[dict[str, Any]] = []
    energies = {"banana": ebmlab.targets.get("banana"), "MLP": mlp_energy(device)}
    plan = [("banana", False), ("banana", True), ("MLP", False), ("MLP", True)]
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2  # keep a quarter for the DDP runs
    deadline = budget.until((0.25 if args.no_training else 0.45) if two_gpus else (0.3 if args.no_training else 0.55))
    for energy_name, compiled in plan:
        if compiled and args.no_compile:
            continue
        for algo in ("ULA", "MALA", "HMC"):
            for n in chains:
                eps = STEP_SIZES[energy_name][algo]
                row = {"energy": energy_name, "algo": algo, "eps": eps, "n": n,
                       "impl": "compiled" if compiled else "eager"}
                if (compiled and small) or (energy_name == "MLP" and small and n != chains[0]):
                    continue  # --small: eager only, the MLP at the smallest N (a smoke run, not a measurement)
                if time.perf_counter() > deadline:
                    rows.append({**row, "skipped": "skipped (time budget)"})
                    continue
                try:
                    row.update(time_sampler(energies[energy_name], algo, eps, n, device, compiled, target_s,
                                            max_steps))
                except Exception as err:  # noqa: BLE001 - a failed configuration is reported, not hidden
                    row["skipped"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
                rows.append(row)
                print(f"{energy_name:6s} {algo:4s} N={n:>9,} {row['impl']:8s} "
                      + (row.get("skipped") or f"{fmt_rate(row['rate'])} chain-steps/s ({row['steps']} steps, "
                                                f"{row['seconds']:.2f} s)"), flush=True)
    if small:
        notes.append("`--small` runs eager samplers only (compilation costs 5-45 s per configuration on a CPU), "
                     "the MLP at the smallest N, and trains with batch 32 and 5 ULA steps per EBM update.")

    # ---- training on the digits
    train_rows: list[dict[str, Any]] = []
    if not args.no_training:
        deadline = budget.until(0.75 if two_gpus else 0.9)
        for model_name, method, ours, hand in (("EBM", "buffer", ebmlab_ebm, hand_ebm),
                                               ("NCSN", "ncsn", ebmlab_ncsn, hand_ncsn)):
            setup = digits_setup(method, device, small)
            loops = [("ebmlab", lambda: ours(setup, device, warm, train_steps)),
                     ("hand-written", lambda: hand(setup, device, warm, train_steps)),
                     ("ebmlab, bf16 autocast", lambda: ours(setup, device, warm, train_steps, autocast=True))]
            if model_name == "EBM" and not small and not args.no_compile:
                loops.append(("ebmlab, compile=True", lambda: ours(setup, device, warm, train_steps, compile=True)))
            result: dict[str, float] = {}
            for loop, fn in loops:
                row = {"model": model_name, "loop": loop, "warm": warm, "steps": train_steps}
                if time.perf_counter() > deadline:
                    row["skipped"] = "skipped (time budget)"
                else:
                    try:
                        row["rate"] = result[loop] = fn()
                    except Exception as err:  # noqa: BLE001
                        row["skipped"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
                train_rows.append(row)
                print(f"{model_name:4s} {loop:24s} " + (row.get("skipped") or f"{row['rate']:.2f} steps/s"),
                      flush=True)
            if "ebmlab" in result and "hand-written" in result:
                next(r for r in train_rows if r["model"] == model_name and r["loop"] == "ebmlab")["ratio"] = \
                    result["hand-written"] / result["ebmlab"]

    # ---- two GPUs
    ddp, ddp_note = ddp_rows(device, 10 if small else 100, budget)
    meta["total_s"] = time.perf_counter() - budget.start
    section = build_markdown(meta, rows, train_rows, ddp, ddp_note, notes)
    print(verdict(meta, rows, train_rows), flush=True)
    if args.write is not None:
        write_section(args.write, section)
        print(f"wrote the '{HEADING}' section of {args.write}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
