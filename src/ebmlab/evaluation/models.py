"""Evaluating a trained 2-D energy against held-out data (exact, by quadrature).

For d = 2 the model's normaliser is computed on the evaluation box, so the
test NLL is exact for the model restricted to that box. When the data density
is known (entropy ``H``), ``NLL - H`` estimates ``KL(p_data || p_theta)``.
Sample quality (MMD, sliced Wasserstein) uses long-run MALA chains of the
model started from uniform noise over the box.
"""

from __future__ import annotations

import warnings

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..grid import uniform_in_bounds
from ..samplers.mala import MALA
from ..samplers.base import sample
from .distances import mmd, sliced_wasserstein
from .partition import log_partition, normalized_log_prob

__all__ = ["SAMPLE_METRICS", "evaluate_density_model", "model_samples", "sample_quality"]

#: The sample-based metrics :func:`evaluate_density_model` computes by default, in the order they draw from
#: the generator.
SAMPLE_METRICS = ("mmd", "sliced_w")


def _sample_metrics(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"sample_metrics must be a sequence of names among {SAMPLE_METRICS}, got {names!r}")
    unknown = [n for n in names if n not in SAMPLE_METRICS]
    if unknown:
        raise ValueError(f"sample_metrics: unknown {unknown}; expected names among {SAMPLE_METRICS}")
    return tuple(n for n in SAMPLE_METRICS if n in names)


def sample_quality(x: Tensor, test: Tensor, names: Sequence[str] = SAMPLE_METRICS,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """MMD^2 (unbiased) and / or sliced Wasserstein between a model's samples and held-out points.

    Args:
        x: model samples ``(n, *event)``.
        test: held-out points ``(m, *event)``.
        names: which of ``"mmd"`` and ``"sliced_w"`` (computed in that order, so the generator's draws
            for MMD are the same whether sliced-W follows or not).
        generator: the sub-sampling and projections' randomness.

    Raises:
        ValueError: for an unknown name.
    """
    wanted = _sample_metrics(names)
    fns = {"mmd": mmd, "sliced_w": sliced_wasserstein}
    return {n: fns[n](x, test, generator=generator) for n in wanted}


def model_samples(energy: Any, bounds: Sequence[tuple[float, float]], *, num_chains: int = 2000,
                  num_steps: int = 1000, step_size: float = 0.1, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[Tensor, float]:
    """End points of long MALA chains started uniformly over ``bounds``.

    Args:
        energy: the model's energy, a callable ``x -> (B,)``.
        bounds: the box the chains start in, one ``(lo, hi)`` pair per dimension.
        num_chains: the number of chains (one sample each).
        num_steps: MALA steps per chain; only the last state is kept.
        step_size: MALA's step size ``eps``.
        generator: the source of randomness (starts and steps), on any device: a CPU generator gives
            the same chains on every device (:func:`ebmlab.devices.random_on`); ``None`` is torch's
            global generator.
        device: where the chains run; default the energy's own (an ``nn.Module``'s first
            floating-point parameter or buffer, in its dtype), else the CPU in torch's default dtype.

    Returns:
        ``(samples, acceptance)``: the final states ``(num_chains, d)`` on ``device`` and the mean
        acceptance rate.
    """
    own_device, dtype = _device_dtype(energy)
    x0 = uniform_in_bounds(num_chains, bounds, generator=generator, device=own_device if device is None else device,
                           dtype=dtype)
    trace = sample(energy, MALA(step_size), x0, num_steps, burn_in=num_steps - 1, generator=generator)
    return trace.final_state.x, float(trace.acceptance_rate.mean())


def _device_dtype(energy: Any) -> tuple[torch.device, torch.dtype]:
    """A network's device and dtype (its first floating-point parameter or buffer); CPU and torch's default
    dtype for anything else (a target or a plain function follows its input)."""
    if isinstance(energy, nn.Module):
        for t in (*energy.parameters(), *energy.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def evaluate_density_model(energy: Any, test: Tensor, bounds: Sequence[tuple[float, float]], *,
                           true_density: Any = None, entropy: float | None = None, resolution: int = 512,
                           generator: torch.Generator | None = None, num_chains: int = 2000,
                           num_steps: int = 1000, step_size: float = 0.1,
                           sample_metrics: Sequence[str] = SAMPLE_METRICS,
                           sample_test: Tensor | None = None) -> dict[str, float]:
    """Exact test NLL, KL to the data when their density is known, MMD and sliced-W of model samples.

    The KL is the one definition ebmlab uses everywhere: the model's test NLL
    minus the true density's test NLL on the same points,
    ``mean(log p(x) - log q(x))``, an unbiased estimate of ``KL(p || q)`` whose
    paired difference cancels most of the test set's own noise. That noise is
    reported next to it: ``test_set_noise = true_nll - entropy`` (how far the
    true density's own test NLL is from its expectation, the entropy).

    Args:
        energy: the model's energy (normalised here by quadrature on ``bounds``).
        test: held-out points ``(N, 2)``.
        bounds: the quadrature box.
        true_density: the data's exactly normalised energy ``-log p`` (e.g.
            :func:`ebmlab.data.toy.true_density`), when known.
        entropy: the data's entropy (e.g. :func:`ebmlab.data.toy.entropy`), for ``test_set_noise``.
        resolution: quadrature cells per dimension.
        generator: randomness of the model's MALA chains and of MMD / sliced-W.
        num_chains: the number of MALA chains for the model's samples (see :func:`model_samples`).
        num_steps: MALA steps per chain.
        step_size: MALA's step size.
        sample_metrics: which of ``"mmd"`` and ``"sliced_w"`` to compute from the model's samples; empty:
            no chains are run (an NLL / KL-only evaluation, e.g. during training).
        sample_test: the held-out points the sample metrics compare with (default ``test``): a fixed subset
            of at most 2,000 points keeps MMD from drawing a new random subset of ``test`` at every call,
            so evaluations of a training run differ by the model's samples alone.

    Returns:
        ``test_nll`` (nats per point), ``log_z`` and ``log_z_error``, ``log_z_edge_mass`` (the
        share of the model's mass in the box's outermost cells: large when the model spreads past the box,
        and the NLL is then that of the density truncated to the box), ``mmd``
        (squared, unbiased) and ``sliced_w`` as ``sample_metrics`` asks, ``sampler_acceptance`` when it
        asks for any; with
        ``true_density``: ``true_nll``, ``kl`` and ``kl_se`` (the paired difference's standard error over the
        test points; NaN for one point); with ``entropy`` too:
        ``entropy`` and ``test_set_noise``.

    Raises:
        ValueError: if test points lie outside ``bounds`` (the message counts them), or for an unknown name
            in ``sample_metrics``.
    """
    wanted = _sample_metrics(sample_metrics)
    with torch.no_grad(), warnings.catch_warnings():
        # a model early in training spreads mass past the data's box: reported as log_z_edge_mass, not warned
        # at every evaluation
        warnings.filterwarnings("ignore", message="log_partition: .* outermost cells")
        lz = log_partition(energy, bounds, resolution)
        lp = normalized_log_prob(energy, test, bounds, resolution, log_z=lz.value)
    lo = torch.tensor([b[0] for b in bounds], dtype=test.dtype, device=test.device)
    hi = torch.tensor([b[1] for b in bounds], dtype=test.dtype, device=test.device)
    outside = int(((test < lo) | (test > hi)).any(dim=1).sum())
    if outside:
        raise ValueError(f"{outside} of {test.shape[0]} test points lie outside the quadrature box "
                         f"{[tuple(b) for b in bounds]}, where the model's density is unknown; widen the bounds")
    nll = float(-lp.mean())
    out = {"test_nll": nll, "log_z": lz.value, "log_z_error": lz.error, "log_z_edge_mass": lz.edge_mass}
    if wanted:
        x, acc = model_samples(energy, bounds, num_chains=num_chains, num_steps=num_steps, step_size=step_size,
                               generator=generator)
        out.update(sample_quality(x, test if sample_test is None else sample_test, wanted, generator))
        out["sampler_acceptance"] = acc
    if true_density is not None:
        with torch.no_grad():
            true = true_density(test.to(torch.float64))
        true_nll = float(true.mean())
        out["true_nll"] = true_nll
        out["kl"] = nll - true_nll
        # the paired difference's standard error over the test points: how far the estimate can sit from the KL
        diff = -lp.to(device=true.device, dtype=torch.float64) - true
        out["kl_se"] = float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else float("nan")
        if entropy is not None:
            out["entropy"] = entropy
            out["test_set_noise"] = true_nll - entropy
    return out
