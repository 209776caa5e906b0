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
        side = 1 if hi > 0 else -1
        p0 = [side * (x1 - x) / (eps * mi) + side * eps * w * x / 2
              for x1, x, mi, w in zip(xs[left + side].tolist(), start, m, omega2)]
        ref = _ReferenceTree(eps, omega2, m, start, p0)
        expect = torch.tensor([[xk for xk, _ in ref.at(k)] for k in range(lo, hi + 1)], dtype=F64)
        torch.testing.assert_close(xs, expect, rtol=1e-9, atol=1e-9)
        outcomes = [ref.build(d, max_depth) for d in _directions_for(lo, hi, depth)]
        assert (lo, hi, depth) in outcomes, f"chain {c}: NUTS built {(lo, hi, depth)}, the reference {outcomes}"


def test_biased_progressive_sampling_always_leaves_the_start():
    """Biased progressive sampling (Betancourt 2017, A.3.2) moves the proposal into each new subtree
    with probability min(1, W_new / W_old), so a chain stays at its start only if it refuses the first
    leaf, with probability <= max(0, H1 - H0). One leapfrog step on N(0, I) changes H by
    eps^3 (x . p) / 4 + O(eps^4): at eps = 0.1, about 1000 x 2.5e-4 x E[max(0, x . p)] ~ 0.1 chains
    stay in expectation. Uniform sampling over the whole tree would keep about 1 / (tree size) of them
    (~ 70 here), and so would a tree that never moved to its new subtrees."""
    target = targets.get("standard", dim=2)
    g = torch.Generator().manual_seed(11)
    x0 = target.sample(1000, generator=g, dtype=F64)
    nuts = NUTS(0.1, max_tree_depth=8)
    _, info = nuts.step(target, nuts.init(target, x0), generator=g)
    assert bool(info.accepted.all()), f"{int((~info.accepted).sum())} chains stayed at their start"


# --------------------------------------------------------------------------- the law

# Step size and max tree depth per target. On the banana, eps stays below the leapfrog's stability limit
# in the arms (curvature ~30 at |x1| = 6, so eps < 2 / sqrt(30) ~ 0.36): at 0.3, HMC and NUTS alike
# drift off E[x2^2] in long runs. The donut's thin ring lets a few trajectories circle for hundreds of
# steps; a depth of 6 keeps the test fast and NUTS exact. The standard Gaussian runs at eps = 1.4, still
# stable (eps < 2) but with energy errors that weigh the leaves unevenly (acceptance statistic 0.75):
# there the multinomial and biased draws differ most from their corruptions.
EXACT = {"banana": (0.2, 10), "multimodal": (0.5, 10), "donut": (0.15, 6), "standard": (1.4, 10)}
N_CHAINS, N_STEPS = 500, 60


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_draws_stay_exact_on_2d_targets(name):
    target = targets.get(name)
    eps, depth = EXACT[name]
    g = torch.Generator().manual_seed(1234)
    x0 = target.sample(N_CHAINS, generator=g, dtype=F64)
    accept = []
    trace = ebmlab.sample(target, NUTS(eps, max_tree_depth=depth), x0, N_STEPS, generator=g,
                          callback=lambda t, s, info: accept.append(info.acceptance_prob.mean()))
    assert 0.6 < float(torch.stack(accept).mean()) < 1.0
    assert_moments_match(trace.samples, target.sample(400_000, generator=g, dtype=F64), label=f"NUTS on {name}")
    fresh = target.sample(N_CHAINS, generator=g, dtype=F64)
    stat = ebmlab.evaluation.mmd(trace.final_state.x, fresh, generator=g)
    null = mmd_null_threshold(lambda n, gen: target.sample(n, generator=gen, dtype=F64), N_CHAINS, seed=7)
    assert stat <= null, f"NUTS on {name}: MMD^2 {stat:.2e} > null 99.5% point {null:.2e}"


def _assert_mean_and_cov(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, label: str) -> None:
    """E[x_i] and E[(x_i - m_i)(x_j - m_j)] = cov_ij (i <= j) of a trace (draws, chains, d) within
    z standard errors, SE = sd / sqrt(bulk ESS) per function. With k functions, z is the Bonferroni
    bound that keeps the family's false-alarm rate at that of one 4-SE check (6.3e-5)."""
    d = samples.shape[-1]
    i, j = torch.triu_indices(d, d)
    centred = samples - mean
    f = torch.cat((samples, centred[..., i] * centred[..., j]), dim=-1)
    exact = torch.cat((mean, cov[i, j]))
    ess = torch.as_tensor(ess_bulk(f), dtype=F64)
    se = f.reshape(-1, f.shape[-1]).std(dim=0) / ess.sqrt()
    alpha = 2 * (1 - NormalDist().cdf(Z))
    z = NormalDist().inv_cdf(1 - alpha / (2 * f.shape[-1]))
    err = (f.mean(dim=(0, 1)) - exact).abs() / se
    worst = int(err.argmax())
    assert float(err.max()) <= z, (
        f"{label}: function {worst} off by {float(err[worst]):.1f} SE > {z:.2f} "
        f"(estimate {float(f[..., worst].mean()):.4f}, exact {float(exact[worst]):.4f}, ESS {float(ess[worst]):.0f})"
    )


def _random_correlation(d: int, seed: int) -> torch.Tensor:
    """A fixed random correlation matrix: W W^T / d + I / 2 for Gaussian W, rescaled to unit diagonal."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((d, d), generator=g, dtype=F64)
    c = w @ w.T / d + 0.5 * torch.eye(d, dtype=F64)
    s = c.diagonal().rsqrt()
    return s[:, None] * c * s[None, :]


def test_correlated_gaussian_in_50d_mean_and_covariance():
    d = 50
    cov = _random_correlation(d, seed=0)
    mean = torch.linspace(-1.0, 1.0, d, dtype=F64)
    target = targets.Gaussian(mean, cov)
    g = torch.Generator().manual_seed(21)
    x0 = target.sample(200, generator=g, dtype=F64)
    trace = ebmlab.sample(target, NUTS(0.25), x0, 60, generator=g)
    _assert_mean_and_cov(trace.samples, mean, cov, "NUTS, correlated Gaussian d=50")


def test_inverse_mass_equal_to_the_variances_samples_an_anisotropic_gaussian():
    """Scales 0.1..10 (condition number 1e4): with M^-1 = the variances the dynamics see an isotropic
    Gaussian and a step size near 1 works. Started from N(0, I) noise (10 sd out along the narrowest
    axis, 0.1 sd along the widest), the chains must reach the law: each transition samples a random
    phase of the oscillation, so the excess energy halves per step and 15 burn-in steps suffice."""
    d = 10
    target = targets.ill_conditioned(d)
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn((200, d), generator=g, dtype=F64)
    nuts = NUTS(0.6, inverse_mass=target.scales**2)
    trace = ebmlab.sample(target, nuts, x0, 55, burn_in=15, generator=g)
    _assert_mean_and_cov(trace.samples, target.mean, target.cov, "NUTS with inverse_mass = variances")


# --------------------------------------------------------------------------- Info, divergences


def _replayed_energy_errors(target, nuts: NUTS, x0: torch.Tensor, info) -> tuple[torch.Tensor, ...]:
    """H(leaf) - H0 for every recorded position, recomputed from the positions alone.

    The leapfrog fixes each leaf's momentum from its neighbour towards the start: forward,
    x_k = x_{k-1} + eps M^-1 (p_{k-1} + eps/2 s_{k-1}) and p_k = p_{k-1} + eps/2 (s_{k-1} + s_k) give
    p_k = M (x_k - x_{k-1}) / eps + eps/2 s_k; backward, p_k = M (x_{k+1} - x_k) / eps - eps/2 s_k; the
    start's momentum follows from either neighbour.

    Returns:
        (errors (positions, chains) with NaN as +inf and padding as NaN, the start's row per chain,
        whether each row is a real leaf (chains' padding excluded)).
    """
    traj = info.trajectory
    rows, chains = traj.shape[:2]
    eps = nuts.step_size
    minv = torch.ones(traj.shape[2:], dtype=F64) if nuts.inverse_mass is None else nuts.inverse_mass
    real = torch.arange(rows)[:, None] <= info.num_grad_evals[None, :]
    flat = torch.where(real[..., None], traj, 0.0).reshape(rows * chains, -1)
    e, s = (v.reshape(rows, chains, *v.shape[1:]) for v in ebmlab.energies.core.energy_and_score(target, flat))
    fwd = torch.full_like(traj, math.nan)
    bwd = torch.full_like(traj, math.nan)
    fwd[1:] = (traj[1:] - traj[:-1]) / (eps * minv) + 0.5 * eps * s[1:]
    bwd[:-1] = (traj[1:] - traj[:-1]) / (eps * minv) - 0.5 * eps * s[:-1]
    start = (traj == x0[None]).all(dim=-1).float().argmax(dim=0)
    r = torch.arange(rows)[:, None]
    has_right = info.num_grad_evals > start
    use_bwd = (r < start) | ((r == start) & has_right)
    p = torch.where(use_bwd[..., None], bwd, fwd)
    h = e + 0.5 * (p * minv * p).sum(-1)
    h0 = h[start, torch.arange(chains)]
    err = torch.nan_to_num(h - h0, nan=math.inf)
    return torch.where(real, err, math.nan), start, real


@pytest.mark.parametrize("name, eps, inverse_mass", [("funnel", 0.3, None), ("banana", 0.3, (0.5, 2.0))])
def test_info_agrees_with_the_recorded_tree(name, eps, inverse_mass):
    """From the recorded positions alone: each chain is divergent iff one of its leaves has an energy
    error above the threshold; the acceptance statistic is the mean of min(1, exp(H0 - H)) over the
    leaves; the energy error is the chosen leaf's; the tree depth bounds the leapfrog count. On the
    funnel (d = 10) at eps = 0.3, chains started in the neck, where the leapfrog is unstable, diverge."""
    target = targets.funnel(dim=10) if name == "funnel" else targets.get(name)
    g = torch.Generator().manual_seed(5)
    x0 = target.sample(300, generator=g, dtype=F64)
    nuts = NUTS(eps, max_tree_depth=7, record_tree=True,
                inverse_mass=None if inverse_mass is None else torch.tensor(inverse_mass, dtype=F64))
    state, info = nuts.step(target, nuts.init(target, x0), generator=g)
    errors, start, real = _replayed_energy_errors(target, nuts, x0, info)
    leaves = real.clone()
    leaves[start, torch.arange(x0.shape[0])] = False
    worst = torch.where(leaves, errors, -math.inf).max(dim=0).values
    assert torch.equal(info.divergent, worst > nuts.divergence_threshold)
    if name == "funnel":
        # The leapfrog is unstable where eps sqrt(e^-v) > 2 (Neal 2011, sec. 5.4.1.1): the neck v < -3.8.
        neck = x0[:, -1] - 2.0 < -2 * math.log(2 / eps)
        assert int(info.divergent.sum()) >= 5 and bool(neck[info.divergent].all())
    else:
        assert not bool(info.divergent.any())
    accept = torch.where(leaves, torch.exp(-errors).clamp(max=1.0), 0.0).sum(0) / info.num_grad_evals
    torch.testing.assert_close(info.acceptance_prob, accept, rtol=1e-6, atol=1e-9)
    chosen = (info.trajectory == state.x[None]).all(dim=-1) & real
    assert bool((chosen.sum(0) >= 1).all())
    chosen_error = errors[chosen.float().argmax(0), torch.arange(x0.shape[0])]
    torch.testing.assert_close(info.energy_error, chosen_error, rtol=1e-6, atol=1e-8)
    assert torch.equal(info.proposal, state.x)
    assert torch.equal(info.accepted, (state.x != x0).any(dim=1))
    assert bool((2 ** (info.tree_depth - 1) <= info.num_grad_evals).all())
    assert bool((info.num_grad_evals <= 2**info.tree_depth - 1).all())
    torch.testing.assert_close(state.energy, target.energy(state.x))
    torch.testing.assert_close(state.score, target.score(state.x))


# --------------------------------------------------------------------------- reproducibility, shapes


def test_same_seed_same_chains_and_every_chain_its_own_tree():
    target = targets.get("banana")

    def run():
        g = torch.Generator().manual_seed(42)
        x0 = torch.zeros((64, 2), dtype=F64)  # one start for all: only the chains' own draws tell them apart
        infos = []
        trace = ebmlab.sample(target, NUTS(0.3), x0, 5, generator=g, callback=lambda t, s, i: infos.append(i))
        return trace.samples, infos

    (a, infos), (b, _) = run(), run()
    assert torch.equal(a, b)
    first = infos[0]
    assert len(set(first.num_grad_evals.tolist())) > 3
    assert len(set(first.tree_depth.tolist())) > 1
    assert len({tuple(x) for x in a[0].tolist()}) == 64


def test_image_shaped_chains_float32_and_autograd_energy():
    """Events of any shape (here 1 x 3 x 3 'images'), an autograd score, float32."""

    def energy(x):
        return 0.5 * (x**2).flatten(1).sum(1) / 4.0  # N(0, 4 I)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((256, 1, 3, 3), generator=g) * 2.0
    nuts = NUTS(0.8, record_tree=True, inverse_mass=torch.full((1, 1, 1), 4.0))
    state, info = nuts.step(energy, nuts.init(energy, x0), generator=g)
    assert state.x.shape == x0.shape and state.x.dtype == torch.float32
    assert info.tree_depth.shape == info.num_grad_evals.shape == info.divergent.shape == (256,)
    assert info.trajectory.shape[1:] == x0.shape
    assert info.trajectory.shape[0] == int(info.num_grad_evals.max()) + 1
    trace = ebmlab.sample(energy, NUTS(0.8), x0, 30, generator=g)
    var = trace.samples[10:].var(dim=(0, 1))
    ess = torch.as_tensor(ess_bulk(trace.samples[10:] ** 2)).reshape(var.shape)
    se = math.sqrt(2) * 4.0 / ess.sqrt()  # sd of x^2 for N(0, 4) is sqrt(2) 4
    assert bool(((var - 4.0).abs() <= Z * se).all()), var


def test_no_compiled_transition():
    with pytest.raises(ValueError, match="no deterministic transition"):
        ebmlab.sample(targets.get("banana"), NUTS(0.3), torch.zeros((4, 2)), 2, compile=True)


def test_nan_energy_is_a_divergence_and_never_chosen():
    """Past a wall the energy is NaN: a leaf there has H - H0 = NaN, which counts as +inf (divergent)."""

    def walled(x):
        e = 0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] < 1.0, e, math.nan)

    g = torch.Generator().manual_seed(2)
    x0 = torch.randn((200, 2), generator=g, dtype=F64).clamp(max=0.9)
    nuts = NUTS(0.3)
    state, info = nuts.step(walled, nuts.init(walled, x0), generator=g)
    assert 10 < int(info.divergent.sum()) < 200
    assert bool(torch.isfinite(state.energy).all()) and bool((state.x[:, 0] < 1.0).all())
    assert not bool(info.log_acceptance.isnan().any())  # -inf where the only leaf diverged: acceptance 0


# --------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("name, eps", [("banana", 0.3), ("funnel", 0.3)])
def test_dropping_finished_chains_from_the_batch_does_not_change_them(monkeypatch, name, eps):
    """Chains whose subtree is void leave the batch at power-of-two leaves (how many must be left
    decides when); the chains must be bit-identical whether that never happens or happens at every
    chance. The funnel adds divergent chains (NaN and inf leaves) to the ones dropped."""
    import ebmlab.samplers.nuts as nuts_module

    target = targets.funnel(dim=10) if name == "funnel" else targets.get(name)
    x0 = target.sample(300, generator=torch.Generator().manual_seed(9), dtype=F64)

    def run(compact_below):
        monkeypatch.setattr(nuts_module, "_COMPACT_BELOW", compact_below)
        g = torch.Generator().manual_seed(4)
        infos = []
        trace = ebmlab.sample(target, NUTS(eps, max_tree_depth=8), x0, 8, generator=g,
                              callback=lambda t, s, i: infos.append(i))
        return trace, infos, g.get_state()

    (a, infos_a, rng_a), (b, infos_b, rng_b) = run(0.0), run(1.0)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.energies, b.energies)
    assert torch.equal(a.final_state.score, b.final_state.score)
    assert torch.equal(rng_a, rng_b)  # the same random numbers drawn
    for ia, ib in zip(infos_a, infos_b):
        for field in ("accepted", "tree_depth", "num_grad_evals", "divergent"):
            assert torch.equal(getattr(ia, field), getattr(ib, field)), field
        # Up to rounding: the acceptance statistic sums the leaves in groups split where chains leave,
        # and the kinetic energy's matrix-vector product may round differently for another batch size.
        torch.testing.assert_close(ia.log_acceptance, ib.log_acceptance, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(ia.energy_error, ib.energy_error, rtol=1e-12, atol=1e-13)
    depths = torch.stack([i.tree_depth for i in infos_a])
    assert int(depths.max()) >= int(depths.min()) + 3  # chains of very different depths: many were dropped
    if name == "funnel":
        assert int(sum(int(i.divergent.sum()) for i in infos_a)) > 0


@pytest.mark.parametrize("name, eps", [("banana", 0.3), ("funnel", 0.3)])
def test_where_the_subtree_is_cut_into_segments_does_not_change_the_chains(monkeypatch, name, eps):
    """A subtree's leaves are integrated in segments ending at power-of-two leaves (from ``_FIRST_CUT``
    on), their energy errors, multinomial draws and U-turn checks batched at each segment's end, with
    the first leaf's momentum, the momentum before the segment, the running sum and the proposal carried
    across. Cutting at every power of two or never must give bit-identical chains and counts."""
    import ebmlab.samplers.nuts as nuts_module

    target = targets.funnel(dim=10) if name == "funnel" else targets.get(name)
    x0 = target.sample(300, generator=torch.Generator().manual_seed(9), dtype=F64)

    def run(first_cut):
        monkeypatch.setattr(nuts_module, "_FIRST_CUT", first_cut)
        monkeypatch.setattr(nuts_module, "_COMPACT_BELOW", 0.0)  # cut, but keep every row
        g = torch.Generator().manual_seed(4)
        infos = []
        trace = ebmlab.sample(target, NUTS(eps, max_tree_depth=8), x0, 8, generator=g,
                              callback=lambda t, s, i: infos.append(i))
        return trace, infos

    (a, infos_a), (b, infos_b) = run(1), run(2**10)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.energies, b.energies)
    for ia, ib in zip(infos_a, infos_b):
        for field in ("accepted", "tree_depth", "num_grad_evals", "divergent"):
            assert torch.equal(getattr(ia, field), getattr(ib, field)), field
        # Up to rounding: the kinetic energy's matrix-vector product runs over a segment's leaves at once,
        # and may round differently for another batch size.
        for field in ("energy_error", "log_acceptance"):
            torch.testing.assert_close(getattr(ia, field), getattr(ib, field), rtol=1e-13, atol=1e-15)
