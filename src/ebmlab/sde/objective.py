"""The training loss of score-based diffusion: denoising score matching over continuous time.

Song et al. (2021), eq. (7):

    L(s) = E_t [ lambda(t) E_{x(0)} E_{x(t) | x(0)} ||s(x(t), t) - grad log p_0t(x(t) | x(0))||^2 ],

``t ~ U(eps, T)``, with the Gaussian perturbation kernel
``x(t) = a(t) x(0) + std(t) z`` of a linear SDE, whose score is
``-z / std(t)``. Like NCSN's loss (:mod:`ebmlab.objectives.ncsn`) this is
denoising score matching (Vincent 2011) at a continuum of noise levels; as
there, a 1/2 in front makes the per-sample term a plain squared norm.

Weightings:

* ``"default"``: ``lambda(t) = std(t)^2`` (Song et al. 2021, sec. 3.3: lambda
  proportional to ``1 / E||grad log p_0t||^2``, which is ``std^2 / d``), per sample
  ``1/2 ||std s(x(t), t) + z||^2`` -- every time contributes a term of order one;
* ``"likelihood"``: ``lambda(t) = g(t)^2`` (Song, Durkan, Murray & Ermon 2021,
  "Maximum likelihood training of score-based diffusion models", Theorem 1:
  then the loss bounds the negative log-likelihood of the probability-flow
  model up to a constant), per sample ``1/2 g(t)^2 ||s + z / std||^2``.

Both weightings have the same minimiser, the true score; they differ in how
the error is spread over time.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..checks import check_positive
from ..objectives.score_common import call_score, check_batch, check_choice
from ..samplers.base import normal_like, random_on
from .sdes import SDE, check_sde, per_sample

__all__ = ["WEIGHTINGS", "dsm_loss"]

#: The weightings ``lambda(t)`` of :func:`dsm_loss`.
WEIGHTINGS = ("default", "likelihood")


def dsm_loss(score: Callable[[Tensor, Tensor], Tensor], sde: SDE, x: Tensor, *,
             generator: torch.Generator | None = None, weighting: str = "default", eps: float = 1e-5,
             t: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7).

    Per sample: ``t ~ U(eps, T)`` (unless ``t`` is given), ``z ~ N(0, I)``,
    ``x(t) = a(t) x + std(t) z``, and

    * ``weighting="default"``: ``1/2 ||std(t) s(x(t), t) + z||^2``
      (``lambda = std^2``);
    * ``weighting="likelihood"``: ``1/2 g(t)^2 ||s(x(t), t) + z / std(t)||^2``
      (``lambda = g^2``).

    The loss is their batch mean. For data ``N(m, C)`` in ``d`` dimensions, at
    the true score and a fixed ``t`` the default term has expectation
    ``1/2 (d - std^2 tr C_t^-1)`` with ``C_t = a^2 C + std^2 I`` (the
    irreducible part of denoising score matching), the likelihood term
    ``g^2 / std^2`` times that.

    Args:
        score: ``score(x, t) -> (B, *event)``, ``t`` of shape ``(B,)``
            (e.g. :func:`~ebmlab.sde.score_model` of a noise-conditional net).
        sde: the forward SDE.
        x: data batch ``(B, *event)``.
        generator: randomness of ``t`` (drawn first) and ``z``.
        weighting: ``"default"`` or ``"likelihood"``.
        eps: the smallest time, ``0 < eps < T`` (the kernel's score blows up at 0).
        t: optional per-sample times ``(B,)`` in ``[eps, T]`` instead of
            drawing them (fixed-time evaluation, stratified or importance-sampled times).

    Returns:
        ``(loss, metrics)``; metrics (detached 0-d tensors): ``loss``,
        ``t_mean`` (mean time), ``scaled_score_norm`` (mean ``std ||s||``,
        about ``sqrt(d)`` for a good model at every time).

    Raises:
        ValueError: for a bad weighting, ``eps`` or ``t``, or a score of the wrong shape.
    """
    check_batch(x)
    check_sde(sde)
    check_choice("weighting", weighting, WEIGHTINGS)
    eps = check_positive("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must be < T = {sde.T}, got {eps!r}")
    b = x.shape[0]
    if t is None:
        t = eps + (sde.T - eps) * random_on(torch.rand, (b,), generator, x.device, x.dtype)
    else:
        if not isinstance(t, Tensor) or t.shape != (b,) or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must be a floating-point tensor of shape (batch,) = ({b},), got {got}")
        if bool(((t < eps) | (t > sde.T)).any()):
            raise ValueError(f"t must lie in [eps, T] = [{eps}, {sde.T}], got values in "
                             f"[{float(t.min())}, {float(t.max())}]")
        t = t.to(device=x.device, dtype=x.dtype)
    z = normal_like(x, generator)
    a, std = sde.marginal(t)
    xt = per_sample(a, x) * x + per_sample(std, x) * z  # the perturbation kernel's draw (Appendix B)
    s = call_score(score, xt, t)
    scaled = (per_sample(std, x) * s).reshape(b, -1)  # std s(x(t), t)
    # lambda ||s + z / std||^2 with lambda = std^2 is ||std s + z||^2 (eq. 7 with the kernel's score -z / std).
    per_sample_loss = 0.5 * ((scaled + z.reshape(b, -1)) ** 2).sum(1)
    if weighting == "likelihood":
        # lambda = g^2 (Song, Durkan et al. 2021): g^2 ||s + z / std||^2 = (g / std)^2 ||std s + z||^2
        per_sample_loss = per_sample_loss * (sde.diffusion(t) / std) ** 2
    loss = per_sample_loss.mean()
    return loss, {"loss": loss.detach(), "t_mean": t.detach().mean(),
                  "scaled_score_norm": scaled.detach().norm(dim=1).mean()}
