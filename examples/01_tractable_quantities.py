# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. What is (and isn't) tractable about an energy-based model
#
# An energy-based model is a density
#
# $$p(\mathbf{x}) = \frac{\exp(-E(\mathbf{x}))}{Z}, \qquad Z = \int \exp(-E(\mathbf{x}))\,d\mathbf{x}.$$
#
# The energy $E$ is any function we can evaluate; the normaliser $Z$ is an
# integral over the whole space. This notebook goes through what that means in
# practice:
#
# * the energy, ratios $p(\mathbf{x}_1)/p(\mathbf{x}_2)$ and the score
#   $\nabla_\mathbf{x} \log p = -\nabla_\mathbf{x} E$ never need $Z$;
# * $Z$ itself needs an integral; in one or two dimensions a grid gives it to
#   many digits (`ebmlab.log_partition`), which we check against a closed form;
# * rejection sampling draws exact samples from $\exp(-E)$ without knowing $Z$,
#   and its acceptance rate turns out to be $Z / C$.
#
# Every number the text states is computed and checked by an `assert` in the
# cell after it.

# %%
import math

import matplotlib.pyplot as plt
import torch

import ebmlab
from ebmlab import evaluation, samplers, targets

torch.set_default_dtype(torch.float64)  # quadrature and exact comparisons in double precision
g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## An energy is just a function
#
# Any callable that maps a batch of points `(B, d)` to energies `(B,)` is an
# energy. Here is a ring of radius 1: the energy is lowest on the circle
# $\|\mathbf{x}\| = 1$ and grows quadratically away from it.


# %%
def ring(x):
    """E(x) = (|x| - 1)^2 / 0.5: a ring of radius 1 and radial scale 0.5."""
    return (x.norm(dim=1) - 1.0) ** 2 / 0.5


x1 = torch.tensor([[1.0, 0.0]])   # on the ring
x2 = torch.tensor([[0.0, 0.0]])   # at the centre
x3 = torch.tensor([[2.5, 0.0]])   # outside
print("energies:", ring(torch.cat([x1, x2, x3])).tolist())

# %% [markdown]
# ## Ratios need no Z
#
# $\log \frac{p(\mathbf{x}_1)}{p(\mathbf{x}_2)} = E(\mathbf{x}_2) - E(\mathbf{x}_1)$:
# the $Z$s cancel. `ebmlab.log_ratio` computes it from the energy alone. To see
# that nothing was lost, we compare it with the same ratio of the *normalised*
# log-density, whose $Z$ comes from quadrature (next section). The two agree to
# rounding error (below $10^{-9}$) on a thousand random pairs of points.

# %%
a = 3 * torch.rand((1000, 2), generator=g) - 1.5
b = 3 * torch.rand((1000, 2), generator=g) - 1.5
box = [(-4.0, 4.0), (-4.0, 4.0)]
ratio_from_energy = ebmlab.log_ratio(ring, a, b)
log_p_a = ebmlab.normalized_log_prob(ring, a, box, 512)
log_p_b = ebmlab.normalized_log_prob(ring, b, box, 512)
gap = float((ratio_from_energy - (log_p_a - log_p_b)).abs().max())
print(f"p(x1)/p(x2) for the three points above: on the ring vs centre {math.exp(ebmlab.log_ratio(ring, x1, x2)):.2f}, "
      f"on the ring vs outside {math.exp(ebmlab.log_ratio(ring, x1, x3)):.1f}")
print(f"largest |log-ratio from energies - log-ratio from normalised densities|: {gap:.1e}")

# %%
assert gap < 1e-9, gap

# %% [markdown]
# ## The score needs no Z either
#
# $\nabla_\mathbf{x} \log p(\mathbf{x}) = -\nabla_\mathbf{x} E(\mathbf{x}) - \nabla_\mathbf{x} \log Z$,
# and the last term is zero because $Z$ does not depend on $\mathbf{x}$.
# `ebmlab.score` differentiates any energy with autograd. For the ring the
# score is also easy by hand, $-4(\|\mathbf{x}\| - 1)\,\mathbf{x}/\|\mathbf{x}\|$, and
# ebmlab's analytic targets (here the banana) carry their own hand-written
# score. Autograd and the formulas agree to $10^{-12}$.

# %%
xs = 3 * torch.rand((2000, 2), generator=g) - 1.5
by_hand = -4 * (xs.norm(dim=1, keepdim=True) - 1) * xs / xs.norm(dim=1, keepdim=True)
ring_gap = float((ebmlab.score(ring, xs) - by_hand).abs().max())

banana = targets.get("banana")
xb = banana.sample(2000, generator=g, dtype=torch.float64)
banana_gap = float((ebmlab.score(lambda y: banana.energy(y), xb) - banana.score(xb)).abs().max())
print(f"ring: max |autograd - by hand| = {ring_gap:.1e}; banana: max |autograd - analytic| = {banana_gap:.1e}")

# %%
assert ring_gap < 1e-12 and banana_gap < 1e-12, (ring_gap, banana_gap)

# %% [markdown]
# The score field points uphill in density: towards the ring from both sides,
# and along the banana's curved ridge. Arrows are normalised to unit length.


# %%
def score_field(ax, energy, bounds, n_arrows=17, resolution=160, title=""):
    axes, dens = evaluation.density_on_grid(energy, bounds, resolution)
    ax.imshow(dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis", aspect="auto")
    grid = torch.stack(torch.meshgrid(torch.linspace(*bounds[0], n_arrows), torch.linspace(*bounds[1], n_arrows),
                                      indexing="ij"), -1).reshape(-1, 2)
    s = ebmlab.score(energy, grid)
    s = s / s.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ax.quiver(grid[:, 0], grid[:, 1], s[:, 0], s[:, 1], color="white", alpha=0.8)
    ax.set_title(title)


fig, axs = plt.subplots(1, 2, figsize=(8, 3.4))
score_field(axs[0], ring, [(-2.0, 2.0), (-2.0, 2.0)], title="ring: density and score")
score_field(axs[1], banana, [(-4.0, 4.0), (-7.0, 2.0)], title="banana: density and score")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Z needs an integral: quadrature in two dimensions
#
# For the ring the integral has a closed form. In polar coordinates, with
# $\sigma^2 = 1/4$,
#
# $$Z = 2\pi \int_0^\infty r\, e^{-(r-1)^2/(2\sigma^2)}\,dr
#     = 2\pi\left[\sigma^2 e^{-1/(2\sigma^2)} + \sigma\sqrt{2\pi}\,\Phi(1/\sigma)\right].$$
#
# `ebmlab.log_partition` integrates $\exp(-E)$ over a box by the midpoint rule
# and reports an error estimate (the change from half the resolution). At 512
# cells per side the quadrature is within $10^{-6}$ of the closed form, and the
# reported error estimate is an upper bound on the actual error at every
# resolution from 16 to 512.

# %%
sigma = 0.5
Phi = 0.5 * math.erfc(-(1 / sigma) / math.sqrt(2))
log_z_exact = math.log(2 * math.pi * (sigma**2 * math.exp(-1 / (2 * sigma**2)) + sigma * math.sqrt(2 * math.pi) * Phi))
resolutions = [16, 32, 64, 128, 256, 512]
quad = [ebmlab.log_partition(ring, box, r) for r in resolutions]
actual = [abs(q.value - log_z_exact) for q in quad]
for r, q, e in zip(resolutions, quad, actual):
    print(f"{r:4d} cells: log Z = {q.value:.10f}  estimate of the error {q.error:.1e}  actual error {e:.1e}")
print(f"closed form:    log Z = {log_z_exact:.10f}")

# %%
assert actual[-1] < 1e-6, actual
assert all(e <= q.error for e, q in zip(actual, quad)), list(zip(actual, [q.error for q in quad]))

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.loglog(resolutions, actual, "o-", label="actual error")
ax.loglog(resolutions, [q.error for q in quad], "s--", label="error estimate")
ax.set_xlabel("cells per side")
ax.set_ylabel("|log Z error|")
ax.set_title("midpoint rule on the ring")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The same works for any energy in one or two dimensions. Every analytic target
# in ebmlab is exactly normalised ($E = -\log p$), so its $\log Z$ is 0; adding
# a constant $c$ to the energy must give $\log Z = -c$. Quadrature agrees to
# $10^{-6}$ on four targets.

# %%
shift = 3.0
for name in ("banana", "donut", "multimodal", "eight_gaussians"):
    t = targets.get(name)
    lz = ebmlab.log_partition(lambda y, t=t: t.energy(y) + shift, t.bounds, 512)
    print(f"{name:16s} log Z = {lz.value:+.8f}  (exact {-shift:+.1f})")
    assert abs(lz.value + shift) < 1e-6, (name, lz)

# %% [markdown]
# In more dimensions a grid is out of the question (512 cells per side in 10
# dimensions is $10^{27}$ points): that is why $Z$ is "intractable", and why the
# rest of the lecture avoids needing it.
#
# ## Rejection sampling
#
# To sample $p = \tilde p / Z$ with $\tilde p = e^{-E}$ we need a proposal $q$
# we can sample and a constant $C$ with $\tilde p(\mathbf{x}) \le C\,q(\mathbf{x})$
# everywhere. Draw $\mathbf{x}_0 \sim q$, draw $u \sim U(0, C q(\mathbf{x}_0))$,
# and accept when $u \le \tilde p(\mathbf{x}_0)$. Accepted points are exact
# samples of $p$, and
#
# $$P(\text{accept}) = \int q(\mathbf{x}) \frac{\tilde p(\mathbf{x})}{C q(\mathbf{x})}\,d\mathbf{x} = \frac{Z}{C}.$$
#
# For the ring we propose from $N(0, I)$. `find_log_c` finds the smallest $C$ on
# a fine grid (plus a 0.1-nat margin). The figure shows the envelope
# $C q$ above $\tilde p$ along the line $x_2 = 0$.

# %%
proposal = samplers.GaussianProposal(loc=[0.0, 0.0], scale=1.0)
log_c = samplers.find_log_c(ring, proposal, box)
print(f"log C = {log_c:.4f}; predicted acceptance Z / C = {math.exp(log_z_exact - log_c):.4f}")

line = torch.stack([torch.linspace(-4, 4, 400), torch.zeros(400)], 1)
fig, axs = plt.subplots(1, 2, figsize=(8, 3))
axs[0].plot(line[:, 0], torch.exp(-ring(line)), label="p~(x) = exp(-E(x))")
axs[0].plot(line[:, 0], torch.exp(log_c + proposal.log_prob(line)), "--", label="C q(x)")
axs[0].set_xlabel("x1 (x2 = 0)")
axs[0].legend(fontsize=8)
axs[0].set_title("the envelope")
# one step of 3000 chains: every sampler has init(energy, x) -> state and step(energy, state) -> (state, info)
rejection = samplers.RejectionSampler(proposal, log_c)
_, info = rejection.step(ring, rejection.init(ring, torch.zeros((3000, 2))), generator=g)
acc = info.accepted  # the first proposal of each chain: accepted or not
axs[1].scatter(info.proposal[~acc, 0], info.proposal[~acc, 1], s=2, c="#d62728", alpha=0.4, label="rejected")
axs[1].scatter(info.proposal[acc, 0], info.proposal[acc, 1], s=2, c="#2ca02c", alpha=0.4, label="accepted")
axs[1].set_aspect("equal")
axs[1].set_xlim(-3.5, 3.5)
axs[1].set_ylim(-3.5, 3.5)
axs[1].legend(markerscale=4, fontsize=8)
axs[1].set_title("3000 proposals from N(0, I)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Now the acceptance rate. Each step of `RejectionSampler` gives every chain one
# exact draw; its first proposal's outcome is recorded, and those outcomes are
# independent Bernoulli($Z/C$) trials. With $N$ trials the measured rate has
# standard error $\sqrt{p(1-p)/N}$. We loosen $C$ by factors 1, 2, 4 and 8: the
# measured acceptance is within 4 standard errors of $Z/C$ every time, so it
# halves each time $C$ doubles.

# %%
chains, steps = 2000, 10
rows = []
for factor in (1, 2, 4, 8):
    sampler = ebmlab.RejectionSampler(proposal, log_c + math.log(factor))
    trace = ebmlab.sample(ring, sampler, torch.zeros((chains, 2)), steps, generator=g)
    predicted = math.exp(log_z_exact - log_c) / factor
    se = math.sqrt(predicted * (1 - predicted) / (chains * steps))
    rows.append((factor, float(trace.acceptance_rate.mean()), predicted, se))
    print(f"C x {factor}: acceptance {rows[-1][1]:.4f}, Z / C = {predicted:.4f} +- {se:.4f}")

# %%
for factor, measured, predicted, se in rows:
    assert abs(measured - predicted) < 4 * se, (factor, measured, predicted, se)

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([r[0] for r in rows], [r[1] for r in rows], "o", label="measured")
ax.plot([r[0] for r in rows], [r[2] for r in rows], "k--", label="Z / C")
ax.set_xscale("log", base=2)
ax.set_xlabel("C relative to the smallest valid C")
ax.set_ylabel("acceptance rate")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The accepted points are exact samples. One check: their mean radius
# $\mathbb{E}\|\mathbf{x}\|$ matches the value the quadrature density gives,
# $\int \|\mathbf{x}\|\,p(\mathbf{x})\,d\mathbf{x}$, within 4 standard errors of
# the sample mean.

# %%
draws = trace.samples.reshape(-1, 2)  # the last run: 2000 chains x 10 exact draws
(u, v), dens = evaluation.density_on_grid(ring, box, 512)
cell = (u[1] - u[0]) * (v[1] - v[0])
radius_exact = float((dens * (u[:, None] ** 2 + v[None, :] ** 2).sqrt()).sum() * cell)
r = draws.norm(dim=1)
se = float(r.std() / math.sqrt(len(r)))
print(f"mean radius of {len(r)} draws: {float(r.mean()):.4f} +- {se:.4f}; by quadrature {radius_exact:.4f}")

# %%
assert abs(float(r.mean()) - radius_exact) < 4 * se

# %% [markdown]
# Rejection sampling is exact but wasteful when $C$ is loose, and in high
# dimensions no proposal stays close to $\tilde p$: the acceptance $Z/C$
# collapses. The next notebook samples with gradients instead (Langevin
# dynamics and MALA), which scale to many dimensions.
