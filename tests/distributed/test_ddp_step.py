"""One training step on two ranks equals one step on one process over the two ranks' batches together.

The ranks see fixed, different halves of each step's data batch and negatives; the loss is the
contrastive one with the energy regulariser, the gradient clip is small enough to act (so it must
see the global norm, after the all-reduce), and the EMA is on. Parameters, EMA and the logged
loss and gradient norm must equal the single process's on the concatenated batches.
"""

from __future__ import annotations

import json

import torch

from ebmlab import distributed
from ebmlab.energies.nets import MLPEnergy
from ebmlab.objectives.contrastive import contrastive_divergence
from ebmlab.training import Update, fit
from launch import run_ranks

B, STEPS, CLIP = 8, 3, 0.2


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2 * B, 2, generator=g), 2 * torch.randn(2 * B, 2, generator=g)) for _ in range(STEPS)]


def _model() -> MLPEnergy:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLPEnergy(2, hidden=(16, 16))


def _train(part: slice, generator: torch.Generator):
    model, batches = _model(), _batches()

    def step_fn(step: int) -> Update:
        x_pos, x_neg = (b[part] for b in batches[step - 1])
        loss, metrics = contrastive_divergence(model, x_pos, x_neg, alpha=0.1)
        return Update(loss, metrics, magnitude=metrics["regulariser"].sqrt())

    result = fit(model, step_fn, method="pcd", steps=STEPS, lr=0.05, betas=(0.0, 0.999), grad_clip=CLIP,
                 ema_decay=0.9, generator=generator, log_every=1)
    return model, result


def _rank(out: str) -> None:
    r = distributed.rank()
    model, result = _train(slice(r * B, (r + 1) * B), distributed.generator(0))
    torch.save({"model": model.state_dict(), "ema": result.ema.state_dict()}, f"{out}/rank{r}.pt")
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump(result.history, f)


def test_two_ranks_take_the_step_of_one_process_on_the_concatenated_batch(tmp_path):
    model, result = _train(slice(None), torch.Generator().manual_seed(0))
    assert all(row["grad_norm"] > CLIP for row in result.history), "the clip must act for the test to mean something"
    run_ranks(_rank, 2, str(tmp_path))
    start = _model().state_dict()
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for name, want in model.state_dict().items():
            assert not torch.equal(want, start[name])  # it trained
            torch.testing.assert_close(saved["model"][name], want, atol=1e-6, rtol=0, msg=f"rank {r} {name}")
        for name, want in result.ema.state_dict().items():
            torch.testing.assert_close(saved["ema"][name], want, atol=1e-6, rtol=0, msg=f"rank {r} EMA {name}")
        rows = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert [row["step"] for row in rows] == [1, 2, 3]
        for row, want in zip(rows, result.history):
            for key in ("loss", "energy_pos", "energy_neg", "regulariser", "grad_norm"):
                assert abs(row[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), (r, key, row[key], want[key])
