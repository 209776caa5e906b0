"""``torchrun -m ebmlab sample`` splits the chains over the ranks and reports on all of them.

Two ranks of 200 chains each against one process of 400: the same layout in ``--out``, rank 0's
chains bit for bit those of a one-process job of 200 (its stream is the one-process stream), and
statistics that agree within 4 standard errors (moments with the SE from each run's bulk ESS, the
acceptance rate with the SE of the per-chain rates)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from ebmlab import runs
from ebmlab.evaluation import ess_bulk
from launch import torchrun

Z = 4.0
ARGS = dict(target="standard", sampler="mala", step_size=1.0, init="uniform", chains=400, steps=600, burn_in=100,
            seed=0)


def _moments(x: np.ndarray) -> dict[str, torch.Tensor]:
    t = torch.as_tensor(x, dtype=torch.float64)
    return {"x1": t[..., 0], "x2": t[..., 1], "x1^2": t[..., 0] ** 2, "x2^2": t[..., 1] ** 2,
            "x1*x2": t[..., 0] * t[..., 1]}


def _estimate(f: torch.Tensor) -> tuple[float, float]:
    """Mean of f over (draws, chains) and its standard error from the bulk ESS."""
    ess = float(ess_bulk(f.unsqueeze(-1)).min())
    return float(f.mean()), float(f.std()) / math.sqrt(ess)


def test_two_ranks_sample_as_one_process_within_sampling_error(tmp_path):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    out = torchrun(["--standalone", "--nproc_per_node", "2", "-m", "ebmlab", "sample", *flags, "--json",
                    "--out", str(tmp_path / "two.npz")])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # rank 0 alone prints, one JSON object
    result = json.loads(lines[0])
    one = runs.sample(runs.SampleConfig(**ARGS), out=tmp_path / "one.npz")
    runs.sample(runs.SampleConfig(**{**ARGS, "chains": 200}), out=tmp_path / "half.npz")
    two, ref, half = (np.load(tmp_path / f"{n}.npz") for n in ("two", "one", "half"))

    # one file, every chain in rank order, the layout of a one-process run
    for key in ("samples", "energies", "acceptance_rate"):
        assert two[key].shape == ref[key].shape, key
    assert two["samples"].shape == (500, 400, 2)
    np.testing.assert_array_equal(two["samples"][:, :200], half["samples"])  # rank 0: the one-process stream
    assert not np.allclose(two["samples"][:, 200:], two["samples"][:, :200])  # rank 1: its own

    # the diagnostics cover all 400 chains
    flat = two["samples"].reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(result["mean"], flat.mean(0), atol=1e-6)
    assert abs(result["acceptance_rate"] - float(two["acceptance_rate"].mean())) < 1e-6
    assert result["chains"] == 400 and result["rhat_max"] < 1.01 and one["rhat_max"] < 1.01

    # and agree with one process of 400 chains within sampling error
    got, want = _moments(two["samples"]), _moments(ref["samples"])
    for name in got:
        (m2, se2), (m1, se1) = _estimate(got[name]), _estimate(want[name])
        assert abs(m2 - m1) <= Z * math.hypot(se2, se1), (name, m2, m1, se2, se1)
    a2, a1 = two["acceptance_rate"].astype(np.float64), ref["acceptance_rate"].astype(np.float64)
    se = math.hypot(a2.std() / math.sqrt(a2.size), a1.std() / math.sqrt(a1.size))
    assert abs(a2.mean() - a1.mean()) <= Z * se, (a2.mean(), a1.mean(), se)


def test_two_ranks_write_one_trace_file_of_every_chain(tmp_path):
    # --out x.safetensors under torchrun: rank 0 writes the gathered trace, every chain in rank order.
    small = {**ARGS, "chains": 40, "steps": 30, "burn_in": 10}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in small.items()]
    out = torchrun(["--standalone", "--nproc_per_node", "2", "-m", "ebmlab", "sample", *flags, "--json",
                    "--out", str(tmp_path / "two.safetensors")])
    assert out.returncode == 0, out.stderr[-3000:]
    import ebmlab

    trace = ebmlab.Trace.load(tmp_path / "two.safetensors")
    assert trace.samples.shape == (20, 40, 2) and trace.final_state.x.shape == (40, 2)
    assert trace.extras["config"]["chains"] == 40
    runs.sample(runs.SampleConfig(**{**small, "chains": 20}), out=tmp_path / "half.npz")
    np.testing.assert_array_equal(trace.samples[:, :20].numpy(), np.load(tmp_path / "half.npz")["samples"])
