"""Training survives what users do to it: kill -9 at any moment, SIGTERM, double launches, a full disk,
a resume before the first checkpoint, and divergence (rolled back, step sizes halved)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ebmlab
from ebmlab.checkpoint import load_checkpoint
from ebmlab.cli import main
from ebmlab.energies import MLPEnergy
from ebmlab.io import CHECKPOINT, METRICS, RunDirectoryError, RunLocked, read_metrics, run_lock
from ebmlab.runs import TrainConfig, train
from ebmlab.training import TrainingDiverged, fit, train_ebm

# Small, cheap runs: a metrics row every step, a checkpoint every CKPT steps, evaluation only at the end.
CKPT = 3
EBM_ARGS = ["--data", "eight_gaussians", "--method", "pcd", "--batch-size", "64", "--langevin-steps", "5",
            "--n-train", "2000", "--n-test", "500", "--eval-every", "1000", "--log-every", "1",
            "--checkpoint-every", str(CKPT), "--seed", "3", "--json"]
SCORE_ARGS = ["--data", "eight_gaussians", "--method", "dsm", "--batch-size", "64", "--n-train", "2000",
              "--n-test", "500", "--eval-every", "1000", "--log-every", "1", "--checkpoint-every", str(CKPT),
              "--steps-per-level", "5", "--seed", "3", "--json"]


def _child(argv: list[str]) -> None:
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        os._exit(main(argv))


def _start(argv: list[str]) -> multiprocessing.Process:
    """The CLI in a forked process: torch is already imported, so a kill can land anywhere in the run."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    return proc


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds",)} for row in read_metrics(run / METRICS)]


def _model(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / CHECKPOINT)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "buffer.", "optim."))}


def _logged(run: Path) -> int:
    """Rows in metrics.jsonl so far (one per step here): cheap enough to poll every millisecond."""
    try:
        return (run / METRICS).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("args,steps", [(EBM_ARGS, 600), (SCORE_ARGS, 1000)], ids=["pcd", "dsm"])
def test_kill_9_at_20_random_moments_loses_nothing(tmp_path, args, steps):
    """SIGKILL 20 times at random moments (in a step, a checkpoint write, a metrics write, start-up), resume
    each time: the run finishes; every file parses; metrics.jsonl has each step once; at most one checkpoint
    interval is lost per kill; the finished run equals an uninterrupted one bit for bit (CPU)."""
    argv = ["train", *args, "--steps", str(steps)]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0  # in this process: the forked runs inherit its lazy imports
    run = tmp_path / "killed"
    rng = random.Random(12345)
    step_time = max(r["seconds"] for r in read_metrics(ref / METRICS)) / steps
    kills, lost, mid_write = 0, [], 0
    while True:
        resume = ["--resume"] if run.is_dir() else []
        proc = _start([*argv, "--out", str(run), *resume])
        if kills < 20:
            # a fifth of the kills at start-up, the others after 1-8 more logged steps plus a fraction of a step:
            # inside a step, a metrics write or a checkpoint write (one every CKPT steps)
            if rng.random() < 0.2:
                proc.join(rng.uniform(0.0, 0.5))
            else:
                target = _logged(run) + rng.randint(1, 8)
                while proc.is_alive() and _logged(run) < target:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, step_time))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                kills += 1
                mid_write += any(run.glob(".*.tmp"))
                if (run / CHECKPOINT).exists():  # the checkpoint on disk always loads, and is recent
                    ckpt_step = load_checkpoint(run / CHECKPOINT)[1]["step"]
                    done = max((r["step"] for r in read_metrics(run / METRICS)), default=0)
                    lost.append(done - ckpt_step)
                continue
        proc.join()
        assert proc.exitcode == 0, f"the run did not finish after {kills} kills (exit {proc.exitcode})"
        break
    assert kills == 20, f"the run finished after {kills} kills: make it longer"  # 20 x (1-8 steps) << steps
    assert max(lost) <= CKPT, f"steps lost per kill: {lost}"
    assert not list(run.glob(".*.tmp")), "a resumed run leaves no half-written temporary file"
    rows, ref_rows = _rows(run), _rows(ref)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), "each step logged exactly once"
    assert rows == ref_rows
    got, want = _model(run), _model(ref)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    json.loads((run / "config.json").read_text())
    print(f"{kills} kills ({mid_write} left a temporary file behind), steps lost per kill: max {max(lost)}, "
          f"{step_time * 1e3:.1f} ms per step")


def test_sigterm_checkpoints_and_exits_143_and_the_resumed_run_is_the_same(tmp_path):
    argv = ["train", *EBM_ARGS, "--steps", "400", "--checkpoint-every", "1000"]
    proc = _start([*argv, "--out", str(tmp_path / "a")])
    while not (tmp_path / "a" / METRICS).exists() or len(read_metrics(tmp_path / "a" / METRICS)) < 5:
        time.sleep(0.05)
        assert proc.is_alive()
    os.kill(proc.pid, signal.SIGTERM)
    proc.join()
    assert proc.exitcode == 128 + signal.SIGTERM
    rows = read_metrics(tmp_path / "a" / METRICS)
    ckpt_step = load_checkpoint(tmp_path / "a" / CHECKPOINT)[1]["step"]
    assert rows[-1]["stopped_by"] == "SIGTERM" and rows[-1]["step"] == ckpt_step < 400  # no 1000-step wait
    assert main([*argv, "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = _model(tmp_path / "a"), _model(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_second_process_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ebmlab.io import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = TrainConfig.resolve(steps=2, eval_every=1000, n_train=200, n_test=100)
        with pytest.raises(RunLocked, match=rf"in use by another training process \(pid {holder.pid}\)"):
            train(cfg, tmp_path)
        assert main(["train", "--steps", "2", "--out", str(tmp_path), "--json"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / METRICS).exists() and not (tmp_path / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(cfg, tmp_path)  # the kernel dropped the killed holder's lock
    with run_lock(tmp_path), run_lock(tmp_path):  # re-entrant within a process
        pass


def test_resume_before_the_first_checkpoint_starts_afresh_and_says_so(tmp_path, capsys):
    argv = ["train", *EBM_ARGS, "--steps", "6", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    (tmp_path / "r" / CHECKPOINT).unlink()  # as if killed after config.json and some rows, before a checkpoint
    for png in (tmp_path / "r").glob("*.png"):
        png.unlink()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "ebmlab: warning:" in err and "no checkpoint yet" in err and "afresh" in err and "Traceback" not in err
    assert [r["step"] for r in read_metrics(tmp_path / "r" / METRICS)] == list(range(1, 7))
    # a directory that is not a run is still refused, in one line
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "other"), "--resume"]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_disk_full_stops_with_a_clear_error_and_the_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    import ebmlab.training as training

    real, calls = training.save_checkpoint, []

    def full(path, tensors, meta):
        calls.append(meta["step"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, meta)

    monkeypatch.setattr(training, "save_checkpoint", full)
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RunDirectoryError, match=r"No space left on device; last good checkpoint: .* \(step 3\)"):
        train_ebm(MLPEnergy(2, hidden=(8,)), data, sampler=ebmlab.Langevin(0.1), steps=10, batch_size=16,
                  mcmc_steps=2, run_dir=tmp_path / "a", checkpoint_every=3,
                  generator=torch.Generator().manual_seed(0))
    assert load_checkpoint(tmp_path / "a" / CHECKPOINT)[1]["step"] == 3
    assert not list((tmp_path / "a").glob(".*.tmp"))
    calls.clear()
    assert main(["train", *EBM_ARGS, "--steps", "9", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ebmlab: failed: could not write the checkpoint at step 6") and "Traceback" not in err


def test_metrics_with_a_torn_last_line_are_read_and_garbage_is_named(tmp_path):
    path = tmp_path / METRICS
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"line 2: not a metrics row"):
        read_metrics(path)


# ---------------------------------------------------------------------------------------------- divergence

UNSTABLE = dict(data="eight_gaussians", method="pcd", steps=120, lr=0.5, alpha=0.0, eval_every=1000,
                checkpoint_every=20, n_train=2000, n_test=500, batch_size=64, seed=0,
                hidden=(128, 128), langevin_steps=20)  # a setting that diverges (pcd's 2-D defaults changed)


def test_an_unstable_run_diverges_without_recovery_and_recovers_with_it(tmp_path):
    """lr 0.5 without the energy regulariser: the energies run off to ~1e9 within 60 steps (before, the run
    finished with them there and reported a KL of ~9 nat as if nothing had happened)."""
    with pytest.raises(TrainingDiverged, match=r"energy magnitude .* is above max_energy"):
        train(TrainConfig.resolve(**UNSTABLE, max_recoveries=0), tmp_path / "stop")
    with pytest.warns(RuntimeWarning, match=r"rolled back to step \d+ with the learning rate halved to 0.25"):
        run = train(TrainConfig.resolve(**UNSTABLE), tmp_path / "go")
    rows = run.history()
    events = [r for r in rows if r.get("event") == "recovery"]
    assert 1 <= len(events) <= 3 and events[0]["lr"] == 0.25 and run.summary["recoveries"] == len(events)
    assert run.summary["steps"] == 120 and abs(run.summary["energy_pos"]) < 1e5
    steps = [r["step"] for r in rows if "event" not in r]
    assert steps == sorted(set(steps)), "rows rolled back over are dropped: each step once"
    ckpt = load_checkpoint(tmp_path / "go" / CHECKPOINT)[1]
    assert ckpt["recoveries"] == len(events) and ckpt["lr_scale"] == 0.5 ** len(events)


class _Steep(torch.nn.Module):
    """E(x) = w |x|^2 / 2 with w = 50: ULA at step 1 is unstable (|1 - 25 w| > 1) and its chains blow up."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        return 0.5 * self.w * (x**2).sum(-1)


def test_diverging_chains_halve_the_sampler_step_and_a_resume_keeps_it(tmp_path):
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    kw = dict(sampler=ebmlab.Langevin(0.4), method="short-run", batch_size=32, mcmc_steps=40, lr=1e-4, alpha=0.0,
              ema_decay=None, run_dir=tmp_path, checkpoint_every=2, log_every=1)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train_ebm(_Steep(), data, steps=4, max_recoveries=0, generator=torch.Generator().manual_seed(0),
                  **{**kw, "run_dir": None})
    with pytest.warns(RuntimeWarning, match="sampler_step_size"):
        result = train_ebm(_Steep(), data, steps=4, generator=torch.Generator().manual_seed(0), **kw)
    events = [r for r in result.history if r.get("event") == "recovery"]
    assert events and events[-1]["sampler_step_size"] == pytest.approx(0.4 * 0.5 ** len(events))
    assert events[-1]["sampler_step_size"] < 2 / (50 ** 0.5)  # now stable: eps^2 w / 2 < 2
    tensors, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert float(tensors["sampler_step_scale"]) == 0.5 ** len(events)
    resumed = train_ebm(_Steep(), data, steps=8, resume=True, generator=torch.Generator().manual_seed(0),
                        **{**kw, "overwrite": False})
    assert resumed.step == 8 and not [r for r in resumed.history if r.get("event")]  # no new divergence


def test_fit_checks_its_new_arguments():
    model = MLPEnergy(2, hidden=(4,))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="checkpoint_seconds"):
            fit(model, lambda s: None, method="x", steps=1, lr=1e-3, betas=(0.9, 0.999), grad_clip=None,
                ema_decay=None, generator=torch.Generator(), checkpoint_seconds=bad)
    with pytest.raises(ValueError, match="max_recoveries"):
        fit(model, lambda s: None, method="x", steps=1, lr=1e-3, betas=(0.9, 0.999), grad_clip=None,
            ema_decay=None, generator=torch.Generator(), max_recoveries=-1)


def test_checkpoint_seconds_writes_between_step_checkpoints(tmp_path):
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    written = []
    import ebmlab.training as training

    real = training.save_checkpoint

    def spy(path, tensors, meta):
        written.append(meta["step"])
        time.sleep(0.0)
        return real(path, tensors, meta)

    slow = MLPEnergy(2, hidden=(8,))
    orig_forward = slow.forward
    slow.forward = lambda x: (time.sleep(0.002), orig_forward(x))[1]
    training.save_checkpoint = spy
    try:
        train_ebm(slow, data, sampler=ebmlab.Langevin(0.1), steps=12, batch_size=16, mcmc_steps=5,
                  run_dir=tmp_path, checkpoint_every=1000, checkpoint_seconds=0.02,
                  generator=torch.Generator().manual_seed(0))
    finally:
        training.save_checkpoint = real
    assert len(written) >= 6 and written[-1] == 12, written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_steps_as_torch_adam_does(dtype):
    """fit's optimiser (fused on the CPU) is Adam with the given learning rate and betas: the same weights as
    torch's default per-tensor Adam driven by hand, to rounding, over 30 steps of a loss with a changing
    gradient."""
    from ebmlab.training import Update

    torch.manual_seed(0)
    model = MLPEnergy(2, hidden=(8,)).to(dtype)
    twin = MLPEnergy(2, hidden=(8,)).to(dtype)
    twin.load_state_dict(model.state_dict())
    xs = torch.randn(30, 16, 2, dtype=dtype)

    def loss(net, step):
        return (net(xs[step - 1]) ** 2).mean() + net(xs[step - 1]).mean()

    fit(model, lambda step: Update(loss(model, step), {}), method="x", steps=30, lr=3e-2, betas=(0.3, 0.99),
        grad_clip=None, ema_decay=None, generator=torch.Generator())
    opt = torch.optim.Adam(twin.parameters(), lr=3e-2, betas=(0.3, 0.99), foreach=False)
    for step in range(1, 31):
        opt.zero_grad()
        loss(twin, step).backward()
        opt.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
