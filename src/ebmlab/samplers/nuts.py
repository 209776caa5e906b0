"""The No-U-Turn sampler (NUTS), multinomial variant, as Stan (>= 2.26) and BlackJAX run it.

Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithm 3 (the
doubling tree); Betancourt (2017), "A conceptual introduction to Hamiltonian
Monte Carlo", arXiv:1701.02434, Appendix A: multinomial sampling of the
trajectory (A.3), uniform within a new subtree (A.3.1) and biased towards it
between subtrees (A.3.2), and the generalised no-U-turn criterion (A.4.2).

Hamiltonian ``H(x, p) = E(x) + p^T M^{-1} p / 2`` with a diagonal ``M^{-1}``
(``inverse_mass``), ``p ~ N(0, M)``. One transition per chain:

1. draw ``p``; the tree is the single point ``(x, p)``, its log weight 0;
2. doubling ``j = 0, 1, ...``: pick a direction at random and integrate a new
   subtree of ``2^j`` leapfrog steps (Neal 2011, eqs. 5.18-5.20) from the
   tree's end on that side. Each leaf has weight ``exp(H0 - H(leaf))``; the
   subtree's proposal is drawn progressively, leaf ``k`` replacing it with
   probability ``w_k / sum_{i<=k} w_i`` (multinomial, A.3.1). The subtree is
   void (not sampled from, and the tree stops) if one of its own sub-subtrees
   makes a U-turn or a leaf diverges (``H - H0 > divergence_threshold``);
3. otherwise the tree's proposal moves to the subtree's with probability
   ``min(1, W_subtree / W_tree)`` (biased progressive sampling, A.3.2), the two
   are merged, and the tree stops if the merged tree makes a U-turn or
   ``max_tree_depth`` doublings were made.

U-turn criterion (A.4.2; the form of NumPyro's and BlackJAX's
``is_turning``): a stretch of leaves ``a..b`` with momentum sum
``rho = sum_k p_k`` turns when ``p#_a . r <= 0`` or ``p#_b . r <= 0``, with
``r = rho - (p_a + p_b) / 2`` and ``p# = M^{-1} p`` the sharp momenta. It is
checked on every subtree of the binary decomposition when it is complete,
and, as Stan added in 2.26 (the "extra" checks between subtrees), also on
the stretch from a subtree's first leaf to the first leaf of its right half
and from the last leaf of its left half to its last leaf; the same three
checks run when the new subtree joins the tree.

The tree is built iteratively, as NumPyro's ``build_tree`` and BlackJAX's
``iterative_uturn_numpyro`` do: leaf ``n`` of a subtree closes the subtrees
of sizes ``2^1 .. 2^t`` (``t`` = trailing one bits of ``n``), whose first
leaves are kept as checkpoints (momentum and running momentum sum, stored at
the even leaves ``n`` in slot ``popcount(n >> 1)``), so a chain holds
``O(max_tree_depth)`` states, not ``O(2^depth)``. Chains are the batch
dimension: every chain draws its own directions and builds its own tree;
chains whose tree has stopped are masked (their state frozen, and not
evaluated).

Divergence: a leaf with ``H - H0 > divergence_threshold`` (NaN counts as
``+inf``) ends the chain's tree and marks it divergent (Stan's and BlackJAX's
default threshold is 1000).

``Info.log_acceptance`` is the log of Stan's acceptance statistic, the mean
of ``min(1, exp(H0 - H(leaf)))`` over every leaf the leapfrog visited (those
of a void subtree included), which step-size adaptation drives to about 0.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..checks import check_int, check_positive
from ..energies.core import energy_and_score
from .base import Info, State, broadcast_chains, normal_like, random_on, uniform_log

__all__ = ["NUTS"]


@dataclass(frozen=True)
class NUTS:
    """Multinomial NUTS with a diagonal inverse mass matrix.

    Args:
        step_size: leapfrog step ``eps``.
        max_tree_depth: most doublings per transition (at most
            ``2^max_tree_depth - 1`` leapfrog steps).
        inverse_mass: diagonal of ``M^{-1}``: ``None`` (identity), a float, or a
            tensor broadcastable to the event shape, finite and ``> 0``. A good
            choice is the target's marginal variances.
        divergence_threshold: a leaf whose energy error ``H - H0`` exceeds this
            ends the tree and marks the chain divergent.
        record_tree: also return every leapfrog position of each chain's tree
            in ``Info.trajectory`` (for plots and the playground; costs
            ``O(2^depth)`` memory).

    ``Info`` fields: ``proposal`` (the chosen point), ``accepted`` (the chain
    moved), ``log_acceptance`` (log of Stan's mean acceptance statistic over
    the tree's leaves), ``energy_error`` (``H(chosen) - H0``), ``tree_depth``
    (doublings made, counting a last one whose subtree was voided by a U-turn
    or divergence, as NumPyro and BlackJAX count), ``num_grad_evals``
    (leapfrog steps taken), ``divergent``. With ``record_tree``,
    ``trajectory`` has shape ``(num_positions, chains, *event)``: chain
    ``c``'s positions, initial point included, from the leftmost (most
    backward in time) to the rightmost, fill rows ``0 .. num_grad_evals[c]``;
    the rows after are NaN (padding for chains whose tree is shorter).
    """

    step_size: float
    max_tree_depth: int = 10
    inverse_mass: float | Tensor | None = None
    divergence_threshold: float = 1000.0
    record_tree: bool = False

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_int("max_tree_depth", self.max_tree_depth, 1)
        if isinstance(self.inverse_mass, Tensor):
            m = self.inverse_mass
            if not m.is_floating_point() or not bool(torch.isfinite(m).all() and (m > 0).all()):
                raise ValueError(
                    f"inverse_mass must be a floating-point tensor, finite and > 0 everywhere, got {m!r}"
                )
        elif self.inverse_mass is not None:
            check_positive("inverse_mass", self.inverse_mass)
        check_positive("divergence_threshold", self.divergence_threshold)
        if not isinstance(self.record_tree, bool):
            raise ValueError(f"record_tree must be a bool, got {self.record_tree!r}")

    def _inverse_mass_like(self, x: Tensor) -> float | Tensor | None:
        """``M^{-1}`` ready to broadcast against ``x`` ``(chains, *event)``: ``None`` (identity), a float,
        or a tensor on x's device and dtype."""
        m = self.inverse_mass
        if m is None:
            return None
        if not isinstance(m, Tensor):
            return float(m)
        event = tuple(x.shape[1:])
        try:
            ok = torch.broadcast_shapes(tuple(m.shape), event) == event
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"inverse_mass must broadcast to the event shape {event}, got shape {tuple(m.shape)}"
            )
        return m.to(device=x.device, dtype=x.dtype)

    def init(self, energy, x: Tensor) -> State:
        """Evaluate energy and score at ``x`` ``(chains, *event)``; the state caches both."""
        self._inverse_mass_like(x)  # fail here, not at the first step, on a wrong shape
        e, s = energy_and_score(energy, x)
        return State(x=x.detach(), energy=e, score=s)

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        """One NUTS transition of every chain.

        Args:
            energy: callable ``x -> (chains,)``.
            state: from :meth:`init` or a previous step.
            generator: source of all randomness (momenta, directions, the
                multinomial draws); ``None`` is torch's global generator.

        Returns:
            ``(new_state, info)``; see the class docstring for ``info``.
        """
        x0, e0, s0 = state.x, state.energy, state.score
        chains, dtype, device = x0.shape[0], x0.dtype, x0.device
        minv = self._inverse_mass_like(x0)
        eps, threshold = self.step_size, self.divergence_threshold

        ones = x0.new_ones(x0[0].numel())

        def dot(a: Tensor, b: Tensor) -> Tensor:
            # Per-chain inner product over the event dimensions, as a matrix-vector product: on CPU
            # it is several times faster than a sum over a short last dimension.
            return (a * b).reshape(chains, -1) @ ones

        def sharp(p: Tensor) -> Tensor:
            return p if minv is None else minv * p  # p# = M^-1 p, the velocity dx/dt

        def kinetic(p: Tensor) -> Tensor:
            return 0.5 * dot(p, sharp(p))  # p^T M^-1 p / 2

        def turning(pa: Tensor, pb: Tensor, rho: Tensor) -> Tensor:
            # Betancourt (2017) A.4.2 with rho less half its end momenta, as NumPyro and BlackJAX:
            # the stretch turns once either end's velocity M^-1 p points against r.
            r = rho - 0.5 * (pa + pb)
            return torch.minimum(dot(sharp(pa), r), dot(sharp(pb), r)) <= 0

        z = normal_like(x0, generator)
        p0 = z if minv is None else z / minv**0.5  # p ~ N(0, M), M = diag(1 / inverse_mass)
        h0 = e0 + kinetic(p0)

        # The tree: its two ends (to integrate further from), momentum sum, log weight and proposal.
        left_x, left_p, left_s = x0, p0, s0
        right_x, right_p, right_s = x0, p0, s0
        rho_tree = p0
        log_w_tree = torch.zeros(chains, dtype=dtype, device=device)  # the initial point's weight exp(H0 - H0)
        prop_x, prop_e, prop_s, prop_h = x0, e0, s0, h0
        active = torch.ones(chains, dtype=torch.bool, device=device)
        depth = torch.zeros(chains, dtype=torch.long, device=device)
        num_leapfrog = torch.zeros(chains, dtype=torch.long, device=device)
        divergent = torch.zeros(chains, dtype=torch.bool, device=device)
        sum_accept = torch.zeros(chains, dtype=dtype, device=device)
        # U-turn checkpoints (slot = popcount(n >> 1) for an even leaf n): the leaf's momentum, the
        # subtree's running momentum sum there, and the momentum of the leaf before it.
        slots = max(self.max_tree_depth - 1, 1)
        ck_p = x0.new_empty((slots, *x0.shape))
        ck_sum = x0.new_empty((slots, *x0.shape))
        ck_prev = x0.new_empty((slots, *x0.shape))
        if self.record_tree:
            left_off = torch.zeros(chains, dtype=torch.long, device=device)
            right_off = torch.zeros(chains, dtype=torch.long, device=device)
            path_x, path_off, path_ok = [x0], [left_off], [active]

        for j in range(self.max_tree_depth):
            if not bool(active.any()):
                break
            go_right = random_on(torch.rand, (chains,), generator, device, dtype) < 0.5
            log_u_tree = uniform_log(x0, generator)
            right = broadcast_chains(go_right, x0)
            signed_eps = broadcast_chains(eps * (2 * go_right.to(dtype) - 1), x0)  # +-eps
            half_eps = 0.5 * signed_eps
            eps_minv = signed_eps if minv is None else signed_eps * minv
            # The subtree grows from the tree's end on its side ("junction" end); the other is the "far" end.
            fx = torch.where(right, right_x, left_x)
            fp = torch.where(right, right_p, left_p)
            fs = torch.where(right, right_s, left_s)
            junction_p, far_p = fp, torch.where(right, left_p, right_p)
            if self.record_tree:
                f_off = torch.where(go_right, right_off, left_off)
                step_off = torch.where(go_right, 1, -1)

            # Below, the frontier (fx, fp, fs), rho_sub and log_w_sub of chains no longer building are
            # left unmasked: they are never read again (such a chain's subtree is void or it was
            # already stopped). Everything that outlives the doubling is masked by `building`.
            building = active
            sub_turning = torch.zeros_like(active)
            sub_divergent = torch.zeros_like(active)
            sub_x, sub_e, sub_s, sub_h = prop_x, prop_e, prop_s, prop_h
            for n in range(2**j):
                count = int(building.sum())
                if count == 0:
                    break
                # Leapfrog (Neal 2011, eqs. 5.18-5.20) with step +-eps: dp/dt = -grad E = score.
                p_half = fp + half_eps * fs
                x_new = fx + eps_minv * p_half
                e_new, s_new = _energy_and_score_of(energy, x_new, building, count)
                p_new = p_half + half_eps * s_new
                h_new = e_new + kinetic(p_new)
                delta = torch.nan_to_num(h_new - h0, nan=math.inf)  # a NaN energy error diverges
                log_w = -delta  # leaf weight exp(H0 - H), Betancourt (2017) eq. (A.3)
                diverging = building & (delta > threshold)
                # Stan's acceptance statistic: min(1, exp(H0 - H)) summed over every leaf built.
                sum_accept = sum_accept + torch.where(building, log_w.clamp(max=0.0).exp(), 0.0)
                num_leapfrog = num_leapfrog + building

                # Multinomial sampling within the subtree (A.3.1), progressively: leaf n replaces the
                # subtree's proposal with probability w_n / sum_{k<=n} w_k.
                if n == 0:
                    take, log_w_sub, rho_sub, first_p = building, log_w, p_new, p_new
                else:
                    log_w_total = torch.logaddexp(log_w_sub, log_w)
                    take = building & (uniform_log(x0, generator) < log_w - log_w_total)
                    log_w_sub, rho_sub = log_w_total, rho_sub + p_new
                t = broadcast_chains(take, x0)
                sub_x, sub_s = torch.where(t, x_new, sub_x), torch.where(t, s_new, sub_s)
                sub_e, sub_h = torch.where(take, e_new, sub_e), torch.where(take, h_new, sub_h)

                if n % 2 == 0:
                    slot = (n >> 1).bit_count()
                    ck_p[slot], ck_sum[slot], ck_prev[slot] = p_new, rho_sub, fp
                    turn = None  # an even leaf closes no subtree
                else:
                    turn = _closes_a_turning_subtree(n, p_new, rho_sub, ck_p, ck_sum, ck_prev, turning)

                if self.record_tree:
                    f_off = torch.where(building, f_off + step_off, f_off)
                    path_x.append(x_new)
                    path_off.append(f_off)
                    path_ok.append(building)
                fx, fp, fs = x_new, p_new, s_new
                sub_divergent = sub_divergent | diverging
                building = building & ~diverging
                if turn is not None:
                    sub_turning = sub_turning | (building & turn)
                    building = building & ~turn

            # Join the new subtree to the tree (A.3.2): unless it is void, the tree's proposal moves to
            # the subtree's with probability min(1, W_subtree / W_tree), biased towards the new part.
            valid = active & ~sub_turning & ~sub_divergent
            take = valid & (log_u_tree < log_w_sub - log_w_tree)
            t = broadcast_chains(take, x0)
            prop_x, prop_s = torch.where(t, sub_x, prop_x), torch.where(t, sub_s, prop_s)
            prop_e, prop_h = torch.where(take, sub_e, prop_e), torch.where(take, sub_h, prop_h)
            log_w_tree = torch.where(valid, torch.logaddexp(log_w_tree, log_w_sub), log_w_tree)
            vr, vl = broadcast_chains(valid & go_right, x0), broadcast_chains(valid & ~go_right, x0)
            right_x, right_p, right_s = (torch.where(vr, f, r) for f, r in ((fx, right_x), (fp, right_p), (fs, right_s)))
            left_x, left_p, left_s = (torch.where(vl, f, le) for f, le in ((fx, left_x), (fp, left_p), (fs, left_s)))
            rho_merged = rho_tree + rho_sub
            # The merged tree (far end to the subtree's last leaf), and Stan 2.26's checks across the
            # junction: far end to the subtree's first leaf, junction end to the subtree's last leaf.
            merged_turning = (
                turning(far_p, fp, rho_merged)
                | turning(far_p, first_p, rho_tree + first_p)
                | turning(junction_p, fp, junction_p + rho_sub)
            )
            rho_tree = torch.where(broadcast_chains(valid, x0), rho_merged, rho_tree)
            if self.record_tree:
                right_off = torch.where(valid & go_right, f_off, right_off)
                left_off = torch.where(valid & ~go_right, f_off, left_off)
            depth = depth + active
            divergent = divergent | sub_divergent
            active = valid & ~merged_turning

        new = State(x=prop_x, energy=prop_e, score=prop_s)
        moved = (prop_x != x0).reshape(chains, -1).any(dim=1)
        trajectory = _in_time_order(path_x, path_off, path_ok) if self.record_tree else None
        return new, Info(
            proposal=prop_x,
            accepted=moved,
            log_acceptance=torch.log(sum_accept / num_leapfrog.to(dtype)),
            energy_error=prop_h - h0,
            trajectory=trajectory,
            tree_depth=depth,
            num_grad_evals=num_leapfrog,
            divergent=divergent,
        )


def _closes_a_turning_subtree(n: int, p_new: Tensor, rho_sub: Tensor, ck_p: Tensor, ck_sum: Tensor,
                              ck_prev: Tensor, turning: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """Whether odd leaf ``n`` of a subtree completes a sub-subtree that makes a U-turn, per chain.

    Leaf ``n`` ends the sub-subtrees of ``2^m`` leaves, ``m = 1 .. t`` (``t`` the trailing one bits
    of ``n``); the one of ``2^m`` leaves starts at the leaf in slot ``i = popcount(n >> 1) - m + 1``
    and its right half at the leaf in slot ``i + 1`` (NumPyro's ``_leaf_idx_to_ckpt_idxs``). Running
    sums give every stretch's momentum sum: ``sum(a..b) = S_b - S_a + p_a``.
    """
    last = (n >> 1).bit_count()
    trailing = ((~n & (n + 1)) - 1).bit_count()
    turn = None
    for m in range(1, trailing + 1):
        i = last - m + 1
        t = turning(ck_p[i], p_new, rho_sub - ck_sum[i] + ck_p[i])
        if m >= 2:  # Stan 2.26: each half's inner end against the other half's outer end
            t = t | turning(ck_p[i], ck_p[i + 1], ck_sum[i + 1] - ck_sum[i] + ck_p[i])
            t = t | turning(ck_prev[i + 1], p_new, rho_sub - ck_sum[i + 1] + ck_p[i + 1] + ck_prev[i + 1])
        turn = t if turn is None else turn | t
    return turn


def _energy_and_score_of(energy, x: Tensor, mask: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Energy and score at the rows of ``x`` in ``mask`` (``count`` of them); zeros elsewhere.

    Chains whose tree has stopped are not evaluated: their frozen points may be
    far out (a divergence) and the work would be wasted.
    """
    if count == x.shape[0]:
        return energy_and_score(energy, x)
    idx = mask.nonzero().squeeze(1)
    e_sub, s_sub = energy_and_score(energy, x.index_select(0, idx))
    e = e_sub.new_zeros(x.shape[0]).index_copy(0, idx, e_sub)
    s = torch.zeros_like(x).index_copy(0, idx, s_sub)
    return e, s


def _in_time_order(path_x: list[Tensor], path_off: list[Tensor], path_ok: list[Tensor]) -> Tensor:
    """Each chain's recorded positions sorted by their leapfrog offset from the initial point, NaN-padded.

    Args:
        path_x: positions ``(chains, *event)`` in the order they were computed.
        path_off: their offsets in leapfrog steps from the initial point (negative: backward), ``(chains,)``.
        path_ok: whether the chain really visited it (its tree was still growing), ``(chains,)``.

    Returns:
        ``(num_positions, chains, *event)``, ``num_positions`` the longest chain's count.
    """
    xs, off, ok = torch.stack(path_x), torch.stack(path_off), torch.stack(path_ok)
    unused = torch.iinfo(off.dtype).max  # sorts after every real offset
    order = torch.argsort(torch.where(ok, off, unused), dim=0, stable=True)
    shape = (*order.shape, *([1] * (xs.dim() - 2)))
    xs = torch.take_along_dim(xs, order.reshape(shape), dim=0)
    counts = ok.sum(dim=0)
    rows = torch.arange(xs.shape[0], device=xs.device).unsqueeze(1)
    xs = torch.where((rows < counts).reshape(shape), xs, math.nan)
    return xs[: int(counts.max())]
