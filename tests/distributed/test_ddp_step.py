"""One training step on two ranks equals one step on one process over the two ranks' batches together.

The ranks see fixed, different halves of each step's data batch and negatives; the loss is the
contrastive one with the energy regulariser, the gradient clip is small enough to act (so it must
see the global norm, after the all-reduce), and the EMA is on. Parameters, EMA and the logged
loss and gradient norm must equal the single process's on the concatenated batches.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ebmlab import distributed
from ebmlab.energies.nets import MLPEnergy
from ebmlab.objectives.contrastive import contrastive_divergence
from ebmlab.objectives.implicit import implicit_score_matching
from ebmlab.samplers import DivergenceError
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


def _energy_score(model: MLPEnergy):
    """The score -grad E by autograd with ``create_graph``: the loss then differentiates in ``x`` and in the weights."""
    def score(x: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_(True)
        return -torch.autograd.grad(model(x).sum(), x, create_graph=True)[0]

    return score


def _train(part: slice, generator: torch.Generator, objective: str = "cd"):
    model, batches = _model(), _batches()

    def step_fn(step: int) -> Update:
        x_pos, x_neg = (b[part] for b in batches[step - 1])
        if objective == "ism":  # Hyvarinen's loss: a Jacobian trace, a double backward under DDP
            loss, metrics = implicit_score_matching(_energy_score(model), x_pos.clone())
            return Update(loss, metrics)
        loss, metrics = contrastive_divergence(model, x_pos, x_neg, alpha=0.1)
        return Update(loss, metrics, magnitude=metrics["regulariser"].sqrt())

    result = fit(model, step_fn, method="pcd", steps=STEPS, lr=0.05, betas=(0.0, 0.999), grad_clip=CLIP,
                 ema_decay=0.9, generator=generator, log_every=1)
    return model, result


def _rank(out: str, objective: str) -> None:
    r = distributed.rank()
    model, result = _train(slice(r * B, (r + 1) * B), distributed.generator(0), objective)
    torch.save({"model": model.state_dict(), "ema": result.ema.state_dict()}, f"{out}/rank{r}.pt")
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump(result.history, f)


@pytest.mark.parametrize("objective", ["cd", "ism"])
def test_two_ranks_take_the_step_of_one_process_on_the_concatenated_batch(tmp_path, objective):
    model, result = _train(slice(None), torch.Generator().manual_seed(0), objective)
    assert all(row["grad_norm"] > CLIP for row in result.history), "the clip must act for the test to mean something"
    run_ranks(_rank, 2, str(tmp_path), objective)
    start = _model().state_dict()
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        # it trained (all but, for a score loss, the energy's output bias: the score does not depend on it)
        trained = [name for name, want in model.state_dict().items() if not torch.equal(want, start[name])]
        assert trained == [name for name in start if objective == "cd" or name != "net.4.bias"]
        for name, want in model.state_dict().items():
            torch.testing.assert_close(saved["model"][name], want, atol=1e-6, rtol=0, msg=f"rank {r} {name}")
        for name, want in result.ema.state_dict().items():
            torch.testing.assert_close(saved["ema"][name], want, atol=1e-6, rtol=0, msg=f"rank {r} EMA {name}")
        rows = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert [row["step"] for row in rows] == [1, 2, 3]
        for row, want in zip(rows, result.history):
            for key in ("loss", "grad_norm", *(("energy_pos", "energy_neg", "regulariser") if objective == "cd" else ())):
                assert abs(row[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), (r, key, row[key], want[key])


class _TwoHeads(torch.nn.Module):
    """An energy whose second head only rank 0's loss uses (a parameter one rank leaves without a gradient)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)


def _rank_losses(model: _TwoHeads, x: torch.Tensor) -> list[torch.Tensor]:
    """Rank 0's loss uses both heads, rank 1's only the first."""
    return [(model.a(x[:B]) + model.b(x[:B])).pow(2).mean(), model.a(x[B:]).pow(2).mean()]


def _diverging_step(model: _TwoHeads, part: int | None, raised: list[int]):
    """Steps on fixed batches; the step-2 negatives "diverge" once on rank 1 (or, in one process, on its half)."""
    batches = [torch.randn(2 * B, 2, generator=torch.Generator().manual_seed(10 + i)) for i in range(STEPS + 1)]

    def step_fn(step: int) -> Update:
        if step == 2 and not raised and part in (1, None):
            raised.append(step)
            raise DivergenceError("planted: rank 1's chains diverged at step 2")
        losses = _rank_losses(model, batches[step - 1])
        loss = losses[part] if part is not None else (losses[0] + losses[1]) / 2  # DDP: the mean over ranks
        return Update(loss, {})

    return step_fn


def _fit_two_heads(part: int | None, generator: torch.Generator):
    model = _TwoHeads()
    result = fit(model, _diverging_step(model, part, []), method="pcd", steps=STEPS, lr=0.05, betas=(0.0, 0.999),
                 grad_clip=None, ema_decay=None, generator=generator, log_every=1)
    return model, result


def _two_heads_rank(out: str) -> None:
    r = distributed.rank()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the recovery's warning
        model, result = _fit_two_heads(r, distributed.generator(0))
    torch.save(model.state_dict(), f"{out}/rank{r}.pt")
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump(result.history, f)


def test_a_parameter_one_rank_leaves_unused_and_a_rank_whose_chains_diverge(tmp_path):
    """Rank 1 never uses head ``b``: its gradient is rank 0's halved (the mean over ranks, rank 1 adding zero),
    with no error at the next step. Rank 1's chains diverge at step 2: rank 1 still joins the gradient all-reduce,
    both ranks roll back to the start with the learning rate halved and then train as one, exactly as one process
    does when that step diverges."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model, result = _fit_two_heads(None, torch.Generator().manual_seed(0))
    assert [row.get("event") for row in result.history] == ["recovery", None, None, None]
    run_ranks(_two_heads_rank, 2, str(tmp_path))
    start = _TwoHeads().state_dict()
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for name, want in model.state_dict().items():
            assert not torch.equal(want, start[name])  # it trained, head b included
            torch.testing.assert_close(saved[name], want, atol=1e-6, rtol=0, msg=f"rank {r} {name}")
        rows = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert rows[0]["event"] == "recovery" and "rank 1" in rows[0]["what"], rows[0]
        assert [row["step"] for row in rows[1:]] == [1, 2, 3]
        for row, want in zip(rows[1:], result.history[1:]):
            assert abs(row["loss"] - want["loss"]) <= 1e-5 * max(1.0, abs(want["loss"])), (r, row, want)
