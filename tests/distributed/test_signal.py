"""SIGTERM to one rank stops every rank at the same step, with one checkpoint of that step."""

from __future__ import annotations

import json
import os
import signal

import torch

from ebmlab import distributed
from ebmlab.checkpoint import load_checkpoint
from ebmlab.io import CHECKPOINT, METRICS, read_metrics
from ebmlab.training import Update, fit
from launch import run_ranks

STOP_AT = 7


def _train(out: str) -> None:
    model, g = torch.nn.Linear(2, 1), distributed.generator(0)

    def step_fn(step: int) -> Update:
        if distributed.rank() == 1 and step == STOP_AT:  # what a scheduler does to one process of the job
            os.kill(os.getpid(), signal.SIGTERM)
        return Update(model(torch.randn(16, 2, generator=g)).pow(2).mean(), {})

    result = fit(model, step_fn, method="test", steps=10**9, lr=1e-3, betas=(0.9, 0.999), grad_clip=1.0,
                 ema_decay=None, generator=g, run_dir=f"{out}/run", log_every=10**6, checkpoint_every=10**6)
    with open(f"{out}/rank{distributed.rank()}.json", "w") as f:
        json.dump({"step": result.step, "stopped_by": result.stopped_by}, f)


def test_sigterm_to_one_rank_stops_all_at_the_same_step(tmp_path):
    run_ranks(_train, 2, str(tmp_path))
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"step": STOP_AT, "stopped_by": "SIGTERM"}
    _, meta = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert meta["step"] == STOP_AT and meta["world_size"] == 2
    rows = read_metrics(tmp_path / "run" / METRICS)
    assert rows[-1]["step"] == STOP_AT and rows[-1]["stopped_by"] == "SIGTERM"
