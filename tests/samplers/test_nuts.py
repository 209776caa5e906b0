"""NUTS: the tree against a closed-form reference, the law it leaves invariant, divergences, reproducibility.

* The tree: on a 1-D standard Gaussian the leapfrog is a rotation known in
  closed form, and the no-U-turn criterion of a stretch ``a..b`` reduces to
  the signs of ``p_a (x_b - x_a)`` and ``p_b (x_b - x_a)``; an independent
  reference built from these must reproduce every chain's recorded tree.
* The law: started at exact draws, NUTS keeps them exact (moments within 4 SE
  with SE from the bulk ESS, MMD below the exact-vs-exact null) on 2-D
  targets, a correlated 50-D Gaussian and an anisotropic Gaussian under a
  matching inverse mass.
* Divergences on the funnel, and every ``Info`` field, are checked against
  energies recomputed from the recorded leapfrog positions.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

import ebmlab
from ebmlab.energies import targets
from ebmlab.evaluation import ess_bulk
from ebmlab.samplers.nuts import NUTS
from helpers import Z, assert_moments_match, mmd_null_threshold

F64 = torch.float64


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -0.1}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"step_size": 0.1, "max_tree_depth": 0}, "max_tree_depth"),
        ({"step_size": 0.1, "max_tree_depth": 3.0}, "max_tree_depth"),
        ({"step_size": 0.1, "max_tree_depth": True}, "max_tree_depth"),
        ({"step_size": 0.1, "inverse_mass": 0.0}, "inverse_mass"),
        ({"step_size": 0.1, "inverse_mass": float("inf")}, "inverse_mass"),
        ({"step_size": 0.1, "inverse_mass": torch.tensor([1.0, 0.0])}, "inverse_mass"),
        ({"step_size": 0.1, "inverse_mass": torch.tensor([1.0, float("nan")])}, "inverse_mass"),
        ({"step_size": 0.1, "inverse_mass": torch.tensor([1, 2])}, "inverse_mass"),
        ({"step_size": 0.1, "divergence_threshold": 0.0}, "divergence_threshold"),
        ({"step_size": 0.1, "record_tree": 1}, "record_tree"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NUTS(**kwargs)


def test_inverse_mass_must_broadcast_to_the_event_shape():
    nuts = NUTS(0.1, inverse_mass=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"inverse_mass must broadcast to the event shape \(2,\), got shape \(3,\)"):
        nuts.init(targets.get("banana"), torch.zeros((4, 2), dtype=F64))


# --------------------------------------------------------------------------- the tree, in closed form


def _oscillator(eps: float, omega2: float, minv: float, x0: float, p0: float, k: int) -> tuple[float, float]:
    """Leapfrog on H = omega2 x^2 / 2 + minv p^2 / 2 after k steps (k < 0: backward), in closed form.

    One step is the linear map L = [[c, eps minv], [-eps omega2 (1 - eps^2 minv omega2 / 4), c]] with
    c = 1 - eps^2 minv omega2 / 2 and det L = 1, so by Cayley-Hamilton
    L^k = cos(k theta) I + sin(k theta) / sin(theta) (L - c I), cos(theta) = c.
    """
    a = eps**2 * minv * omega2
    theta = math.acos(1 - a / 2)
    ck, sk = math.cos(k * theta), math.sin(k * theta) / math.sin(theta)
    return ck * x0 + sk * eps * minv * p0, ck * p0 - sk * eps * omega2 * (1 - a / 4) * x0


class _ReferenceTree:
    """An independent transcription of NUTS's tree building on a diagonal Gaussian, in plain floats.

    Stan's recursive doubling (Hoffman & Gelman 2014, Alg. 3) with Stan 2.26's extra checks, on the
    closed-form leapfrog. The criterion is in closed form too: per coordinate,
    (p_k + p_{k+1}) / 2 = (x_{k+1} - x_k) (1 / (eps minv) - eps omega2 / 4), so the stretch a < b
    (time order) has r = sum_{k=a}^{b} p_k - (p_a + p_b) / 2 = (x_b - x_a) (1 / (eps minv) - eps omega2 / 4)
    and turns iff sum minv p_a r <= 0 or sum minv p_b r <= 0.
    """

    def __init__(self, eps, omega2, minv, x0, p0):
        self.eps, self.omega2, self.minv, self.x0, self.p0 = eps, omega2, minv, x0, p0
        self.memo = {}

    def at(self, k):
        if k not in self.memo:
            self.memo[k] = [_oscillator(self.eps, w, m, x, p, k)
                            for w, m, x, p in zip(self.omega2, self.minv, self.x0, self.p0)]
        return self.memo[k]

    def turns(self, u, v):
        a, b = self.at(min(u, v)), self.at(max(u, v))
        r = [(xb - xa) * (1 / (self.eps * m) - self.eps * w / 4)
             for (xa, _), (xb, _), w, m in zip(a, b, self.omega2, self.minv)]
        dot_a = sum(m * pa * ri for (_, pa), m, ri in zip(a, self.minv, r))
        dot_b = sum(m * pb * ri for (_, pb), m, ri in zip(b, self.minv, r))
        return dot_a <= 0 or dot_b <= 0

    def build(self, directions, max_depth):
        """(leftmost offset, rightmost offset, depth) of the tree for these doubling directions."""
        lo = hi = 0
        for j, right in enumerate(directions):
            leaves = [hi + 1 + i for i in range(2**j)] if right else [lo - 1 - i for i in range(2**j)]
            for n in range(2**j):  # leaf n closes the subtrees of 2^m leaves, m <= trailing ones of n
                m_max = (~n & (n + 1)).bit_length() - 1
                for m in range(1, m_max + 1):
                    s, h = n - 2**m + 1, 2 ** (m - 1)
                    if self.turns(leaves[s], leaves[n]) or (
                        m >= 2 and (self.turns(leaves[s], leaves[s + h]) or self.turns(leaves[s + h - 1], leaves[n]))
                    ):  # the subtree is void; its leaves up to n were integrated
                        return (lo, leaves[n], j + 1) if right else (leaves[n], hi, j + 1)
            far, junction, first, last = (lo, hi, leaves[0], leaves[-1]) if right else (hi, lo, leaves[0], leaves[-1])
            lo, hi = min(lo, last), max(hi, last)
            if self.turns(lo, hi) or self.turns(far, first) or self.turns(junction, last):
                return lo, hi, j + 1
        return lo, hi, max_depth


def _directions_for(lo: int, hi: int, depth: int) -> list[list[bool]]:
    """The doubling directions that can produce a tree spanning offsets lo..hi in `depth` doublings.

    Doubling j adds 2^j leaves on its side, so a tree of 2^depth leaves has hi = sum of 2^j over the
    rightward doublings. A last subtree voided part-way adds fewer; then either side may have had it.
    """
    bits = lambda v, n: [bool((v >> j) & 1) for j in range(n)]  # noqa: E731
    steps, earlier = hi - lo, 2 ** (depth - 1) - 1
    if steps == 2**depth - 1:
        return [bits(hi, depth)]
    last = steps - earlier
    out = []
    if hi >= last:
        out.append(bits(hi - last, depth - 1) + [True])
    if -lo >= last:
        out.append(bits(hi, depth - 1) + [False])
    return out


@pytest.mark.parametrize(
    "eps, minv",
    [(0.3, None), (0.8, None), (0.8, (0.5, 2.0))],
    ids=["eps0.3", "eps0.8", "eps0.8-inverse-mass"],
)
def test_tree_matches_closed_form_reference_on_a_diagonal_gaussian(eps, minv):
    """Every chain's tree (its extent left and right of the start, its depth, its leapfrog positions)
    is the one the closed-form reference builds for the chain's directions. An anisotropic target
    (scales 1 and 10) makes each of the checks per merge decide some trees (a few % for Stan's extra ones)."""
    scales = (1.0, 10.0)
    target = targets.DiagonalGaussian(scales)
    omega2 = [1 / s**2 for s in scales]
    m = [1.0, 1.0] if minv is None else list(minv)
    g = torch.Generator().manual_seed(3)
    chains, max_depth = 300, 8
    x0 = target.sample(chains, generator=g, dtype=F64)
    nuts = NUTS(eps, max_tree_depth=max_depth, record_tree=True,
                inverse_mass=None if minv is None else torch.tensor(minv, dtype=F64))
    _, info = nuts.step(target, nuts.init(target, x0), generator=g)
    for c in range(chains):
        n = int(info.num_grad_evals[c])
        xs = info.trajectory[: n + 1, c]
        assert not torch.isnan(xs).any() and torch.isnan(info.trajectory[n + 1 :, c]).all()
        left = int((xs == x0[c]).all(dim=1).nonzero()[0])
        lo, hi, depth = -left, n - left, int(info.tree_depth[c])
        # The momentum from the first leapfrog step: x_{+-1} = x0 +- eps minv (p0 -+ eps omega2 x0 / 2).
        start = x0[c].tolist()
        if hi > 0:
            p0 = [(x1 - x) / (eps * mi) + eps * w * x / 2 for x1, x, mi, w in zip(xs[left + 1].tolist(), start, m, omega2)]
        else:
            p0 = [(x - x1) / (eps * mi) - eps * w * x / 2 for x1, x, mi, w in zip(xs[left - 1].tolist(), start, m, omega2)]
        ref = _ReferenceTree(eps, omega2, m, start, p0)
        expect = torch.tensor([[xk for xk, _ in ref.at(k)] for k in range(lo, hi + 1)], dtype=F64)
        torch.testing.assert_close(xs, expect, rtol=1e-9, atol=1e-9)
        outcomes = [ref.build(d, max_depth) for d in _directions_for(lo, hi, depth)]
        assert (lo, hi, depth) in outcomes, f"chain {c}: NUTS built {(lo, hi, depth)}, the reference {outcomes}"


def test_biased_progressive_sampling_always_leaves_the_start():
    """With energy errors ~ 0 every leaf weighs the same, so the biased step (Betancourt 2017, A.3.2)
    moves the proposal into each new subtree with probability min(1, W_new/W_old) ~ 1 and the chain
    leaves its start unless the first leaf's weight says otherwise (probability <= max(0, H1 - H0)
    ~ 1e-4 here). Uniform sampling over the whole tree would stay put with probability 1/tree size."""
    target = targets.get("standard", dim=2)
    g = torch.Generator().manual_seed(11)
    x0 = target.sample(400, generator=g, dtype=F64)
    nuts = NUTS(0.05, max_tree_depth=8)
    _, info = nuts.step(target, nuts.init(target, x0), generator=g)
    assert float(info.energy_error.abs().max()) < 1e-3
    assert bool(info.accepted.all()), f"{int((~info.accepted).sum())} chains stayed at their start"
