"""A run of two ranks trains, checkpoints every rank's chains and generator, and resumes: with two ranks
bit for bit as if never stopped, with one rank as a recorded change of world size."""

from __future__ import annotations

from pathlib import Path

import torch

from ebmlab import runs
from ebmlab.checkpoint import load_checkpoint
from ebmlab.io import CHECKPOINT, METRICS, read_metrics
from launch import run_ranks

BATCH = 32


def _cfg(steps: int) -> runs.TrainConfig:
    return runs.TrainConfig.resolve(data="eight_gaussians", method="pcd", steps=steps, batch_size=BATCH,
                                    langevin_steps=5, hidden=(16, 16), eval_every=1000, log_every=2, seed=3)


def _ranks(out: str) -> None:
    out = Path(out)
    full = runs.train(_cfg(10), out / "full")
    runs.train(_cfg(5), out / "split")
    split = runs.train(_cfg(10), out / "split", resume=True)
    assert full.summary["world_size"] == split.summary["world_size"] == 2
    assert full.summary["steps"] == split.summary["steps"] == 10


def test_two_ranks_checkpoint_resume_bitwise_and_resume_on_one(tmp_path):
    run_ranks(_ranks, 2, str(tmp_path), timeout=120)
    full, meta = load_checkpoint(tmp_path / "full" / CHECKPOINT)
    split, split_meta = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert meta["world_size"] == split_meta["world_size"] == 2 and meta["step"] == split_meta["step"] == 10
    assert meta["rank_sizes"] == {"buffer.data": [BATCH, BATCH]}
    assert "generator" not in full and full["buffer.data"].shape == (2 * BATCH, 2)
    assert not torch.equal(full["generator.rank0"], full["generator.rank1"])  # each rank its own stream
    assert not torch.equal(full["buffer.data"][:BATCH], full["buffer.data"][BATCH:])  # and its own chains
    assert sorted(full) == sorted(split)
    for key in full:  # parameters, optimiser, EMA, both generators, both ranks' chains
        assert torch.equal(full[key], split[key]), key
    rows = {r["step"]: r for r in read_metrics(tmp_path / "full" / METRICS)}
    again = {r["step"]: r for r in read_metrics(tmp_path / "split" / METRICS)}
    assert sorted(rows) == [2, 4, 6, 8, 10] and sorted(again) == [2, 4, 5, 6, 8, 10]  # 5: the first call's last
    for step in rows:  # means over the two ranks, logged by rank 0 only (one row per step)
        assert {k: v for k, v in rows[step].items() if k != "seconds"} == {
            k: v for k, v in again[step].items() if k != "seconds"}, step

    # the same run continued by one process: every chain is re-split onto it, its generator re-seeded
    run = runs.train(_cfg(14), tmp_path / "split", resume=True)
    assert run.summary["steps"] == 14 and "world_size" not in run.summary
    events = [r for r in read_metrics(tmp_path / "split" / METRICS) if r.get("event")]
    assert events == [{"step": 10, "event": "world_size_changed", "from": 2, "to": 1}]
    one, one_meta = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert one_meta["world_size"] == 1 and one_meta["step"] == 14
    assert "generator" in one and "generator.rank1" not in one and one["buffer.data"].shape == (BATCH, 2)
    assert any(not torch.equal(one[k], split[k]) for k in split if k.startswith("model."))  # it trained on
