"""The training loop: learns a Gaussian by each method, resumes bit-for-bit,
never leaves a partial checkpoint, and stops with a clear message on divergence."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import ebmlab
from ebmlab.checkpoint import load_checkpoint
from ebmlab.energies.nets import MLPEnergy
from ebmlab.io import CHECKPOINT
from ebmlab.training import TrainingDiverged, train_ebm


class FullGaussian(nn.Module):
    """E(x) = 1/2 (x - mu)^T L L^T (x - mu): a Gaussian family with free mean and precision."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.raw = nn.Parameter(torch.eye(2, dtype=torch.float64))

    def precision(self):
        L = torch.tril(self.raw)
        return L @ L.T

    def forward(self, x):
        d = x - self.mu
        return 0.5 * ((d @ self.precision()) * d).sum(1)


MEAN = torch.tensor([1.0, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "short-run", "pcd"])
def test_each_method_learns_a_gaussian(method):
    g = torch.Generator().manual_seed(0)
    data = MEAN + torch.randn((4000, 2), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    model = FullGaussian()
    means, covs = [], []

    def track(step, row):
        if step > 300:
            means.append(model.mu.detach().clone())
            covs.append(torch.linalg.inv(model.precision().detach()))

    steps = {"cd": 10, "short-run": 60, "pcd": 10}[method]
    train_ebm(model, data, sampler=ebmlab.MALA(0.9), method=method, steps=600, batch_size=256, mcmc_steps=steps,
              lr=0.03, betas=(0.5, 0.999), alpha=0.0, log_every=1, generator=g, callback=track)
    mean_hat, cov_hat = torch.stack(means).mean(0), torch.stack(covs).mean(0)
    mle_mean, mle_cov = data.mean(0), torch.cov(data.T)
    # Tolerance: the Polyak average of 300 iterates driven by batch-256 gradients;
    # its SE is at most that of one batch mean (sd/sqrt(256)), so 4 of those bound it.
    se_mean = (mle_cov.diagonal() / 256).sqrt()
    assert torch.all((mean_hat - mle_mean).abs() < 4 * se_mean), (method, mean_hat, mle_mean)
    se_cov = math.sqrt(2 / 256) * mle_cov.diagonal().max()
    assert torch.all((cov_hat - mle_cov).abs() < 4 * se_cov), (method, cov_hat, mle_cov)


def _run(tmp, steps, resume=False, checkpoint_every=10):
    torch.manual_seed(0)
    model = MLPEnergy(2, hidden=(16, 16))
    data = ebmlab.targets.get("eight_gaussians").sample(512, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    train_ebm(model, data, sampler=ebmlab.Langevin(0.1), method="buffer", steps=steps, batch_size=32,
              mcmc_steps=5, buffer_size=128, run_dir=tmp, resume=resume, checkpoint_every=checkpoint_every,
              log_every=5, generator=g)
    return model


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path):
    full = _run(tmp_path / "full", 40)
    _run(tmp_path / "split", 20)
    resumed = _run(tmp_path / "split", 40, resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    split_rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(full_rows) == strip(split_rows)
    tensors, meta = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert meta["step"] == 40 and "buffer.data" in tensors and "generator" in tensors


def test_divergence_names_the_step_and_the_last_checkpoint(tmp_path):
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            e = self.lin(x).squeeze(1)
            return e * float("nan") if self.calls > 200 else e

    data = torch.randn(64, 2)
    with pytest.raises(TrainingDiverged, match=r"at step \d+: .*last good checkpoint: .*checkpoint.safetensors"):
        train_ebm(Exploding(), data, sampler=ebmlab.Langevin(0.1), method="short-run", steps=100, batch_size=8,
                  mcmc_steps=3, run_dir=tmp_path, checkpoint_every=5, generator=torch.Generator().manual_seed(0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown method"):
        train_ebm(MLPEnergy(2), torch.zeros(4, 2), sampler=ebmlab.Langevin(0.1), method="nce")
    with pytest.raises(ValueError, match="batch_size"):
        train_ebm(MLPEnergy(2), torch.zeros(4, 2), sampler=ebmlab.Langevin(0.1), batch_size=0)
    with pytest.raises(ValueError, match="resume"):
        train_ebm(MLPEnergy(2), torch.zeros(4, 2), sampler=ebmlab.Langevin(0.1), resume=True)


def test_run_directory_names_still_import_from_training():
    """The run directory's names moved to ebmlab.io; code written against 0.1 imports them from training."""
    import ebmlab.io
    import ebmlab.training

    for name in ("CHECKPOINT", "METRICS", "RunDirectoryError", "prepare_run_dir", "read_metrics", "truncate_metrics"):
        assert getattr(ebmlab.training, name) is getattr(ebmlab.io, name), name
        assert name in ebmlab.io.__all__ and name not in ebmlab.training.__all__, name


@pytest.mark.slow
def test_checkpoint_is_never_partially_written(tmp_path):
    """SIGKILL a process that saves checkpoints in a loop: the file on disk always loads."""
    script = textwrap.dedent(f"""
        import torch
        from ebmlab.checkpoint import save_checkpoint
        big = {{"w": torch.randn(2_000_000)}}
        i = 0
        while True:
            big["w"][0] = i
            save_checkpoint({str(tmp_path / 'ck.safetensors')!r}, big, {{"step": i}})
            i += 1
            if i == 1:
                print("ready", flush=True)
    """)
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        import time

        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        tensors, meta = load_checkpoint(tmp_path / "ck.safetensors")
        assert float(tensors["w"][0]) == meta["step"]  # tensors and metadata from the same save


def test_wall_time_budget_stops_and_checkpoints_the_last_step(tmp_path):
    data = torch.randn(64, 2)
    result = train_ebm(MLPEnergy(2, hidden=(8,)), data, sampler=ebmlab.Langevin(0.1), method="short-run",
                       steps=1000, batch_size=8, mcmc_steps=2, run_dir=tmp_path, max_seconds=0.0,
                       generator=torch.Generator().manual_seed(0))
    assert result.step == 1 and result.history[-1]["step"] == 1
    assert load_checkpoint(tmp_path / CHECKPOINT)[1]["step"] == 1
