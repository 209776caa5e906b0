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
evaluated). Within a subtree a leaf is only the leapfrog step; its energy
error, multinomial draw and U-turn checks are batched over the leaves of a
segment (from a power-of-two leaf to the next, from leaf ``_FIRST_CUT``
on), at whose end the rows whose subtree became void leave the batch.

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
import torch
from torch import Tensor

from ..checks import check_int, check_positive
from ..energies.core import energy_and_score
from .base import Info, State, normal_like, random_on

__all__ = ["NUTS"]

# A power-of-two leaf drops the void rows from the batch when at most this fraction of them is left
# building (0: never; the chains are the same either way).
_COMPACT_BELOW = 0.9
# The first power-of-two leaf at which a subtree's segment ends (its bookkeeping batched, void rows dropped).
_FIRST_CUT = 8


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
        object.__setattr__(self, "step_size", check_positive("step_size", self.step_size))  # torch takes no huge int
        check_int("max_tree_depth", self.max_tree_depth, 1)
        if isinstance(self.inverse_mass, Tensor):
            m = self.inverse_mass
            if not m.is_floating_point() or not bool(torch.isfinite(m).all() and (m > 0).all()):
                raise ValueError(
                    f"inverse_mass must be a floating-point tensor, finite and > 0 everywhere, got {m!r}"
                )
        elif self.inverse_mass is not None:
            object.__setattr__(self, "inverse_mass", check_positive("inverse_mass", self.inverse_mass))
        object.__setattr__(self, "divergence_threshold", check_positive("divergence_threshold",
                                                                        self.divergence_threshold))
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
        return State(x=x.detach(), energy=e.to(x.dtype), score=s)  # the tree's fused ops need one dtype

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        """One NUTS transition of every chain.

        Args:
            energy: callable ``x -> (chains,)``.
            state: from :meth:`init` or a previous step.
            generator: source of all randomness (momenta, directions, the
                multinomial draws); ``None`` is torch's global generator.

        Returns:
            ``(new_state, info)``; see the class docstring for ``info``.

        Random numbers: ``p`` (one normal per coordinate), then per doubling, for
        the chains still active only, one block of ``2^j + 1`` uniforms per chain
        (its direction, the subtree-vs-tree draw and one draw per leaf after the
        first). Which chains are compacted away when does not change them, so
        the chains do not depend on that bookkeeping.
        """
        x0, s0 = state.x, state.score
        chains, dtype, device = x0.shape[0], x0.dtype, x0.device
        e0 = state.energy.to(dtype)
        event = tuple(x0.shape[1:])
        size = x0[0].numel()
        unit = (1,) * len(event)
        minv = self._inverse_mass_like(x0)
        eps, threshold = self.step_size, self.divergence_threshold
        record = self.record_tree

        ones = x0.new_ones(size)
        eps_t = x0.new_tensor(eps)
        half_ones = 0.5 * ones

        def dot(a: Tensor, b: Tensor) -> Tensor:
            # Per-chain inner product over the event dimensions (any leading dimensions), as a matrix-vector
            # product: on CPU it is several times faster than a sum over a short last dimension.
            ab = a * b
            if len(event) == 1:
                return ab @ ones
            return (ab.reshape(-1, size) @ ones).reshape(ab.shape[: ab.dim() - len(event)])

        def sharp(p: Tensor) -> Tensor:
            return p if minv is None else minv * p  # p# = M^-1 p, the velocity dx/dt

        def turning(pa: Tensor, pb: Tensor, rho: Tensor | None) -> Tensor:
            # Betancourt (2017) A.4.2 with rho less half its end momenta, as NumPyro and BlackJAX:
            # the stretch turns once either end's velocity M^-1 p points against r. rho=None: a stretch of
            # two leaves, whose r is (pa + pb) / 2 (only its sign matters: pa + pb).
            r = pa + pb if rho is None else rho - 0.5 * (pa + pb)
            ends = torch.stack(torch.broadcast_tensors(pa, pb))
            return dot(sharp(ends), r).amin(0) <= 0

        def col(v: Tensor) -> Tensor:
            return v.view(-1, *unit)  # (rows,) against (rows, *event)

        def rowmask(m: Tensor) -> Tensor:
            # A row mask as a full, contiguous one: torch.where is several times slower on a broadcast mask.
            return m.view(-1, *unit).expand(-1, *event).contiguous()

        z = normal_like(x0, generator)
        p0 = z if minv is None else z / minv**0.5  # p ~ N(0, M), M = diag(1 / inverse_mass)
        h0 = e0 + 0.5 * dot(p0, sharp(p0))

        # The tree, per chain: its two ends (row 0 the leftmost leaf, row 1 the rightmost, gathered through
        # the flat views by side * chains + chain), momentum sum, log weight and proposal (with its energy
        # error H - H0).
        end_x, end_p, end_s = torch.stack((x0, x0)), torch.stack((p0, p0)), torch.stack((s0, s0))
        flat_x, flat_p, flat_s = (t.view(2 * chains, *event) for t in (end_x, end_p, end_s))
        rho_tree = p0.clone()
        log_w_tree = torch.zeros(chains, dtype=dtype, device=device)  # the initial point's weight exp(H0 - H0)
        prop_x, prop_e, prop_s = x0.clone(), e0.clone(), s0.clone()
        prop_d = torch.zeros(chains, dtype=dtype, device=device)
        active = torch.ones(chains, dtype=torch.bool, device=device)
        depth = torch.zeros(chains, dtype=torch.long, device=device)
        num_leapfrog = torch.zeros(chains, dtype=torch.long, device=device)
        divergent = torch.zeros(chains, dtype=torch.bool, device=device)
        sum_accept = torch.zeros(chains, dtype=dtype, device=device)
        if record:
            end_off = torch.zeros(2 * chains, dtype=torch.long, device=device)
            path_x, path_off, path_ok = [x0], [end_off[:chains].clone()], [active.clone()]

        for j in range(self.max_tree_depth):
            # One sync per doubling: the chains still building; the doubling runs on them alone.
            rows = torch.arange(chains, device=device) if j == 0 else active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            leaves = 2**j
            u = random_on(torch.rand, (leaves + 1, rows.numel()), generator, device, dtype)
            log_u = u[1:].log()
            go_right, log_u_tree, log_u_leaf = u[0] < 0.5, log_u[0], log_u[1:]
            depth = depth + active
            active = torch.zeros_like(active)  # set again below for the chains whose tree goes on
            # The subtree grows from the tree's end on its side ("junction" end); the other is the "far" end.
            right_rows = rows + chains
            junction, far = torch.where(go_right, right_rows, rows), torch.where(go_right, rows, right_rows)
            fx, fp, fs = flat_x.index_select(0, junction), flat_p.index_select(0, junction), flat_s.index_select(0, junction)
            signed_eps = col(torch.where(go_right, eps_t, -eps_t))  # +-eps
            half_eps = 0.5 * signed_eps
            eps_minv = signed_eps if minv is None else signed_eps * minv
            h0_r = h0.index_select(0, rows)
            if record:
                j_off = end_off.index_select(0, junction)

            # Row r of every tensor below is chain rows[r]. The leaves are integrated in segments that end at
            # the power-of-two leaves; within a segment a leaf is only the leapfrog and the running momentum
            # sum, and its energy error, multinomial draw, U-turn checks and counts are computed for the
            # whole segment at its end, batched over its leaves. A row becomes void when one of its leaves
            # diverges or one of its sub-subtrees turns; it runs on unmasked (nothing it computes is read)
            # until a segment's end drops it from the batch. Carried from one segment to the next: the
            # first leaf's momentum p0_sub (the only checkpoint a later segment's checks read, with the
            # momentum before the segment), the running sum rho_sub and the proposal so far.
            void = torch.zeros_like(go_right)
            pending: list[tuple[Tensor, Tensor, Tensor]] = []  # per segment (built, log_w, diverging), unflushed
            all_void = False
            seg_start = 0
            xs, ps, ss, es, rhos = [], [], [], [], []
            for n in range(leaves + 1):
                if n >= _FIRST_CUT and not n & (n - 1) or n == leaves:
                    # A segment ends (a power-of-two leaf, or the last): its leaves' bookkeeping, batched.
                    (void, log_w_sub, rho_sub, p0_sub, sub_x, sub_s, sub_e, sub_d) = self._segment(
                        seg_start, n, xs, ps, ss, es, rhos, p_prev, void, log_w_sub if seg_start else None,
                        p0_sub if seg_start else None, (sub_x, sub_s, sub_e, sub_d) if seg_start else None,
                        h0_r, log_u_leaf, pending, dot, sharp, threshold, half_ones, size)
                    if record:
                        path_ok.extend(torch.zeros_like(active).index_copy_(0, rows, b) for b in pending[-1][0])
                    if n == leaves:
                        break
                    # Only checkpoint slot 0 is live here, so dropping the void rows is cheap.
                    keep = (~void).nonzero().squeeze(1)
                    if keep.numel() == 0:
                        all_void = True
                        break
                    if keep.numel() <= _COMPACT_BELOW * rows.numel():
                        self._flush(rows, pending, sum_accept, num_leapfrog, divergent)
                        pending = []
                        (fx, fp, fs, sub_x, sub_s, sub_e, sub_d, log_w_sub, rho_sub, p0_sub,
                         half_eps, eps_minv, h0_r, log_u_tree, go_right, junction, far, rows) = (
                            t.index_select(0, keep) for t in (
                                fx, fp, fs, sub_x, sub_s, sub_e, sub_d, log_w_sub, rho_sub, p0_sub,
                                half_eps, eps_minv, h0_r, log_u_tree, go_right, junction, far, rows))
                        log_u_leaf = log_u_leaf.index_select(1, keep)
                        if record:
                            j_off = j_off.index_select(0, keep)
                        void = torch.zeros_like(go_right)
                    seg_start = n
                    xs, ps, ss, es, rhos = [], [], [], [], []
                if n == seg_start:
                    p_prev = fp  # the momentum before the segment's first leaf

                # Leapfrog (Neal 2011, eqs. 5.18-5.20) with step +-eps: dp/dt = -grad E = score.
                p_half = torch.addcmul(fp, half_eps, fs)
                x_new = torch.addcmul(fx, eps_minv, p_half)
                e_new, s_new = energy_and_score(energy, x_new)
                e_new = e_new.to(dtype)  # an energy computed in float64 for float32 chains (a no-op otherwise)
                p_new = torch.addcmul(p_half, half_eps, s_new)
                rho_sub = p_new if n == 0 else rho_sub + p_new
                xs.append(x_new)
                ps.append(p_new)
                ss.append(s_new)
                es.append(e_new)
                rhos.append(rho_sub)
                if record:
                    path_x.append(torch.zeros_like(x0).index_copy_(0, rows, x_new))
                    path_off.append(torch.zeros_like(end_off[:chains]).index_copy_(
                        0, rows, j_off + (n + 1) * (2 * go_right.long() - 1)))
                fx, fp, fs = x_new, p_new, s_new

            self._flush(rows, pending, sum_accept, num_leapfrog, divergent)
            if all_void:
                continue  # every subtree void: those trees stop, as they are

            # Join the new subtree to the tree (A.3.2): unless it is void, the tree's proposal moves to
            # the subtree's with probability min(1, W_subtree / W_tree), biased towards the new part.
            valid = ~void
            log_w_old = log_w_tree.index_select(0, rows)
            take = valid & (log_u_tree < log_w_sub - log_w_old)
            t = rowmask(take)
            prop_x.index_copy_(0, rows, torch.where(t, sub_x, prop_x.index_select(0, rows)))
            prop_s.index_copy_(0, rows, torch.where(t, sub_s, prop_s.index_select(0, rows)))
            prop_e.index_copy_(0, rows, torch.where(take, sub_e, prop_e.index_select(0, rows)))
            prop_d.index_copy_(0, rows, torch.where(take, sub_d, prop_d.index_select(0, rows)))
            log_w_tree.index_copy_(0, rows, torch.where(valid, torch.logaddexp(log_w_old, log_w_sub), log_w_old))
            junction_p, far_p = flat_p.index_select(0, junction), flat_p.index_select(0, far)
            v = rowmask(valid)
            flat_x.index_copy_(0, junction, torch.where(v, fx, flat_x.index_select(0, junction)))
            flat_p.index_copy_(0, junction, torch.where(v, fp, junction_p))
            flat_s.index_copy_(0, junction, torch.where(v, fs, flat_s.index_select(0, junction)))
            if record:
                end_off.index_copy_(0, junction, torch.where(valid, j_off + leaves * (2 * go_right.long() - 1),
                                                             end_off.index_select(0, junction)))
            rho_old = rho_tree.index_select(0, rows)
            rho_merged = rho_old + rho_sub
            rho_tree.index_copy_(0, rows, torch.where(v, rho_merged, rho_old))
            # The merged tree (far end to the subtree's last leaf), and Stan 2.26's checks across the
            # junction: far end to the subtree's first leaf, junction end to the subtree's last leaf.
            first_p = p0_sub
            merged_turning = turning(
                torch.stack((far_p, far_p, junction_p)),
                torch.stack((fp, first_p, fp)),
                torch.stack((rho_merged, rho_old + first_p, junction_p + rho_sub)),
            ).any(0)
            active.index_copy_(0, rows, valid & ~merged_turning)

        new = State(x=prop_x, energy=prop_e, score=prop_s)
        moved = (prop_x != x0).reshape(chains, -1).any(dim=1)
        trajectory = _in_time_order(path_x, path_off, path_ok) if record else None
        return new, Info(
            proposal=prop_x,
            accepted=moved,
            log_acceptance=torch.log(sum_accept / num_leapfrog.to(dtype)),
            energy_error=prop_d,
            trajectory=trajectory,
            tree_depth=depth,
            num_grad_evals=num_leapfrog,
            divergent=divergent,
        )

    @staticmethod
    def _segment(start, end, xs, ps, ss, es, rhos, p_prev, void, log_w_sub, p0_sub, sub, h0_r, log_u_leaf,
                 pending, dot, sharp, threshold, half_ones, size):
        """The bookkeeping of the subtree's leaves ``start .. end - 1``, batched over them.

        Args:
            xs, ps, ss, es, rhos: per leaf, its position, momentum, score, energy and the running momentum
                sum of the subtree up to it.
            p_prev: the momentum before leaf ``start``; void: the rows void before it; log_w_sub, p0_sub and
                sub (x, score, energy, energy error): the subtree's log weight, first leaf's momentum and
                proposal so far (``None`` when ``start`` is 0).
            pending: ``(built, log_w, diverging)`` of the leaves is appended, for :meth:`_flush`.

        Returns:
            ``(void, log_w_sub, rho_sub, p0_sub, sub_x, sub_s, sub_e, sub_d)`` after leaf ``end - 1``.
        """
        count, rows = len(ps), ps[0].shape[0]
        device = ps[0].device
        if start:
            pext = torch.stack([p0_sub, p_prev, *ps])
            e_all = torch.stack([sub[2], *es])
            e = e_all[1:]
        else:
            pext = torch.stack([ps[0], p_prev, *ps])
            e = e_all = torch.stack(es)
        p = pext[2:]
        # H - H0 = E - H0 + p^T M^-1 p / 2; a NaN energy error diverges.
        q = p * sharp(p)
        delta = torch.nan_to_num(torch.addmv((e - h0_r).reshape(-1), q.reshape(-1, size), half_ones),
                                 nan=math.inf).view(count, rows)
        log_w = -delta  # leaf weight exp(H0 - H), Betancourt (2017) eq. (A.3)
        diverging = delta > threshold

        # Multinomial sampling within the subtree (A.3.1), progressively: leaf n replaces the subtree's
        # proposal with probability w_n / sum_{k<=n} w_k. Index 0 of the stacks below is the proposal so far
        # (leaf 0 itself when start is 0), index i the segment's leaf i - 1 (leaf i when start is 0).
        lo = 0 if start else 1  # the segment's first leaf that draws (leaf 0 never does)
        log_ws = log_w.unbind(0)
        totals = []
        total = log_w_sub if start else log_ws[0]
        for i in range(lo, count):
            total = torch.logaddexp(total, log_ws[i])
            totals.append(total)
        if totals:
            take = log_u_leaf[start + lo - 1 : end - 1] < log_w[lo:] - torch.stack(totals)
            pick = torch.where(take, _positions(1, len(totals), device), 0).amax(0)
            at = pick * rows + torch.arange(rows, device=device)
            if start:
                x_all, s_all = torch.stack([sub[0], *xs]), torch.stack([sub[1], *ss])
                d_all = torch.cat((sub[3].unsqueeze(0), delta))
            else:
                x_all, s_all, d_all = torch.stack(xs), torch.stack(ss), delta
            sub_x = x_all.flatten(0, 1).index_select(0, at)
            sub_s = s_all.flatten(0, 1).index_select(0, at)
            sub_e = e_all.reshape(-1).index_select(0, at)
            sub_d = d_all.reshape(-1).index_select(0, at)
        else:  # the segment is leaf 0 alone
            sub_x, sub_s, sub_e, sub_d = xs[0], ss[0], es[0], delta[0]
        log_w_sub = total

        # U-turns of the sub-subtrees the segment's odd leaves complete, all as one batch; then per leaf
        # whether its row was still building (no divergence or U-turn at an earlier leaf).
        events = diverging.long()
        checks = _uturn_checks(start, end)
        if checks is not None:
            ia, ib, ix, iy, iz, iw, k1, leaf = checks if device.type == "cpu" else (
                t if isinstance(t, int) else t.to(device) for t in checks)
            pa, pb = pext.index_select(0, ia), pext.index_select(0, ib)
            ab = pa + pb
            if ix.numel():
                sext = torch.stack([p0_sub if start else ps[0], *rhos])
                rho = sext.index_select(0, ix) - sext.index_select(0, iy) + pext.index_select(0, iz)
                if iw.numel():
                    rho[rho.shape[0] - iw.numel():] += pext.index_select(0, iw)
                r2 = rho - 0.5 * ab[k1:]
                r = torch.cat((ab[:k1], r2)) if k1 else r2
            else:
                r = ab
            turned = dot(sharp(torch.stack((pa, pb))), r).amin(0) <= 0
            events.index_add_(0, leaf, turned.long())
        upto = events.cumsum(0)
        built = (upto == events) & ~void
        void = void | (upto[-1] > 0)
        pending.append((built, log_w, diverging))
        return void, log_w_sub, rhos[-1], (p0_sub if start else ps[0]), sub_x, sub_s, sub_e, sub_d

    @staticmethod
    def _flush(rows: Tensor, pending: list[tuple[Tensor, Tensor, Tensor]], sum_accept: Tensor,
               num_leapfrog: Tensor, divergent: Tensor) -> None:
        """Add the leaves ``rows`` built since the last flush to their chains' counts, in place.

        A leaf counts while its row was not yet void (its tree still building): Stan's acceptance
        statistic ``min(1, exp(H0 - H))`` sums over those leaves, the leapfrog count counts them, and
        the chain is divergent if one of them diverged.
        """
        if not pending:
            return
        if len(pending) == 1:
            built, log_w, divs = pending[0]
        else:
            built, log_w, divs = (torch.cat(t) for t in zip(*pending))
        accept = torch.where(built, log_w.clamp(max=0.0).exp(), 0.0).sum(0)
        sum_accept.index_add_(0, rows, accept)
        num_leapfrog.index_add_(0, rows, built.sum(0))
        divergent.index_copy_(0, rows, (divs & built).any(0))


_POSITIONS: dict = {}


def _positions(lo: int, count: int, device: torch.device) -> Tensor:
    """``lo .. lo + count - 1`` as a column ``(count, 1)`` (cached)."""
    key = (lo, count, device)
    t = _POSITIONS.get(key)
    if t is None:
        t = _POSITIONS[key] = torch.arange(lo, lo + count, device=device).unsqueeze(1)
    return t


_CHECKS: dict = {}


def _uturn_checks(start: int, end: int):
    """Index tensors of the U-turn checks that the subtree's leaves ``start .. end - 1`` close, or ``None``.

    Odd leaf ``n`` ends the sub-subtrees of ``2^m`` leaves, ``m = 1 .. t`` (``t`` the trailing one bits of
    ``n``); the one of ``2^m`` leaves starts at ``a = n - 2^m + 1`` and its right half at
    ``c = n - 2^(m-1) + 1``. Checks: the two-leaf one ``(n - 1, n)`` (``r = p_a + p_b``), then for ``m >= 2``
    the whole stretch ``a..n``, and Stan 2.26's ``a..c`` and ``c - 1..n``, with the momentum sums
    ``sum(a..b) = S_b - S_a + p_a`` from the running sums ``S``. Momenta are indexed in the stack
    ``(p_0, p_{start-1}, p_start, ..)`` and running sums in ``(S_0, S_start, ..)``: a check that a leaf in
    this segment closes reads no other earlier leaf (its sub-subtree starts at leaf 0, or in the segment).

    Returns ``(ia, ib, ix, iy, iz, iw, two, leaf)``: the checks' two ends ``ia``, ``ib``; ``rho = S[ix] -
    S[iy] + p[iz]`` for the ``m >= 2`` checks, plus ``p[iw]`` for the last ``len(iw)`` of them; ``two`` the
    number of two-leaf checks (first); ``leaf`` the segment position of the leaf each check belongs to.
    """
    key = (start, end)
    if key in _CHECKS:
        return _CHECKS[key]

    def pi(k: int) -> int:
        if start <= k < end:
            return 2 + k - start
        if k == 0:
            return 0
        assert k == start - 1
        return 1

    def si(k: int) -> int:
        if start <= k < end:
            return 1 + k - start
        assert k == 0
        return 0

    two, whole, halves, inner = [], [], [], []  # (ia, ib, [ix, iy, iz, iw], leaf)
    for n in range(start | 1, end, 2):
        pos = n - start
        two.append((pi(n - 1), pi(n), None, pos))
        trailing = ((~n & (n + 1)) - 1).bit_count()
        for m in range(2, trailing + 1):
            a, c = n - 2**m + 1, n - 2 ** (m - 1) + 1
            whole.append((pi(a), pi(n), (si(n), si(a), pi(a)), pos))
            halves.append((pi(a), pi(c), (si(c), si(a), pi(a)), pos))
            inner.append((pi(c - 1), pi(n), (si(n), si(c), pi(c), pi(c - 1)), pos))
    allc = two + whole + halves + inner
    if not allc:
        _CHECKS[key] = None
        return None
    long = torch.long
    rest = whole + halves + inner
    out = (torch.tensor([c[0] for c in allc], dtype=long), torch.tensor([c[1] for c in allc], dtype=long),
           torch.tensor([c[2][0] for c in rest], dtype=long), torch.tensor([c[2][1] for c in rest], dtype=long),
           torch.tensor([c[2][2] for c in rest], dtype=long), torch.tensor([c[2][3] for c in inner], dtype=long),
           len(two), torch.tensor([c[3] for c in allc], dtype=long))
    _CHECKS[key] = out
    return out


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
