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
# # 3. Training an EBM by maximum likelihood
#
# The log-likelihood of a data point under $p_\theta = e^{-E_\theta}/Z(\theta)$
# has the gradient
#
# $$\nabla_\theta \log p_\theta(\mathbf{x}) = -\nabla_\theta E_\theta(\mathbf{x})
#   + \mathbb{E}_{\tilde{\mathbf{x}}\sim p_\theta}\left[\nabla_\theta E_\theta(\tilde{\mathbf{x}})\right]:$$
#
# lower the energy of the data, raise it on samples of the model. The samples
# $\tilde{\mathbf{x}}$ come from a few steps of MCMC (notebook 2), and the
# methods differ only in where those chains start:
#
# * **CD** (contrastive divergence, Hinton 2002): at the data batch;
# * **short-run** (Nijkamp et al. 2019): at fresh noise, every update;
# * **PCD** (persistent CD, Tieleman 2008): where the previous update's chains ended.
#
# In two dimensions we can judge a trained model exactly: its $Z$ by quadrature
# gives its normalised density, hence its test log-likelihood, and since the
# data's true density is known, the KL divergence from the data to the model.
# We train all three through the run layer (`ebmlab.runs`), the same calls the
# command line makes (`ebmlab train --data eight_gaussians --method pcd ...`),
# then multiply two trained models together: a product of experts.

# %%
import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import ebmlab
from ebmlab import data, evaluation, runs, training

g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## The data
#
# Eight Gaussians on a circle of radius 4. ebmlab knows their exact density, so
# every number below is exact up to quadrature and the finite test set.

# %%
truth = data.true_density("eight_gaussians")
split = data.load_toy("eight_gaussians", 10_000, 5_000, generator=g)
bounds = truth.bounds

(u, v), true_dens = evaluation.density_on_grid(truth, bounds, 200)
fig, axs = plt.subplots(1, 2, figsize=(7, 3.2))
axs[0].scatter(split.train[:2000, 0], split.train[:2000, 1], s=1, alpha=0.5)
axs[0].set_title("2000 training points")
axs[1].imshow(true_dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
axs[1].set_title("the true density")
for ax in axs:
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## How far an untrained network is
#
# `ebmlab.MLPEnergy(2)` is the network the run layer trains (two hidden layers
# of 128). The KL from the data to a model is its test NLL minus the true
# density's test NLL on the same points. For the freshly initialised network
# that is more than 1.5 nat. (Its density has not decayed at the edge of the
# box, so quadrature normalises it on the box only; that can only make the
# untrained model look better, so the true KL is larger still.)


# %%
def exact_kl(energy, test):
    """KL(data || model) on the test points: mean of log p_true - log p_model, and its standard error."""
    with torch.no_grad(), warnings.catch_warnings():
        # a model that has not decayed at the box's edge is normalised on the box (see the note below)
        warnings.filterwarnings("ignore", message="log_partition: .* outermost cells")
        log_model = evaluation.normalized_log_prob(energy, test, bounds, 256).double()
    gap = -truth(test.double()) - log_model
    return float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))


with torch.random.fork_rng():
    torch.manual_seed(0)
    untrained = ebmlab.MLPEnergy(2)
kl_untrained, _ = exact_kl(untrained, split.test)
print(f"KL(data || untrained network) = {kl_untrained:.3f} nat")

# %%
assert kl_untrained > 1.5, kl_untrained

# %% [markdown]
# ## CD, short-run and PCD
#
# `runs.TrainConfig.resolve` fills every default for this data and method
# (Langevin negatives with $\epsilon = 0.1$, Adam, an exponential moving
# average of the weights) and `runs.train` writes a run directory:
# `config.json`, `metrics.jsonl` and a checkpoint. We set what the comparison
# needs to be fair and lecture-like: CD-$k$ with $k = 20$ Langevin steps per
# update for all three, Adam at learning rate $10^{-3}$, and the same
# 2-128-128-1 network. (`ebmlab train`'s own 2-D defaults for cd, pcd and
# buffer are tuned for KL per second of CPU instead: fewer Langevin steps per
# update, a smaller network and more chains; docs/benchmarks.md measures them.)
# We keep the budget small, 200 updates of 128 points per method, and
# evaluate after 100 and 200 (the KL estimated on the run's 5000 test
# points, the model normalised by quadrature). Every run starts from the untrained network above: the run layer
# builds it under the run's seed. Longer runs go much further; this notebook is
# about the shape of the curves.

# %%
methods = ("cd", "short-run", "pcd")
trained = {}
for method in methods:
    cfg = runs.TrainConfig.resolve(data="eight_gaussians", method=method, steps=200, batch_size=128, eval_every=100,
                                   seed=0, langevin_steps=20, lr=1e-3, hidden=(128, 128))
    trained[method] = runs.train(cfg, Path("runs") / method, overwrite=True)
    curve = [(0, kl_untrained)] + [(row["step"], row["kl"]) for row in trained[method].history() if "kl" in row]
    print(f"{method:9s} {trained[method].summary['seconds']:5.1f} s  KL by step: "
          + ", ".join(f"{s}: {k:.3f}" for s, k in curve))

# %% [markdown]
# Each method brings the KL more than 1 nat below the untrained
# network's, and each curve falls at every evaluation. The
# three end within 0.15 nat of each other; the standard error of each KL
# estimate is about 0.01 nat (5000 test points), so some of that spread is
# real, but which start is best is not something 200 updates settle: the
# budget matters more here than where the chains start.

# %%
final = {}
for method, run in trained.items():
    curve = [kl_untrained] + [row["kl"] for row in run.history() if "kl" in row]
    _, test = run.data()
    final[method] = exact_kl(run.model, test)
    print(f"{method:9s} final KL {final[method][0]:.3f} +- {final[method][1]:.3f} nat")
    assert curve[-1] < kl_untrained - 1.0 and all(b < a for a, b in zip(curve, curve[1:])), (method, curve)
    assert abs(final[method][0] - curve[-1]) < 1e-3  # the run's own evaluation is the same KL estimate
assert max(k for k, _ in final.values()) - min(k for k, _ in final.values()) < 0.15, final
assert all(se < 0.015 for _, se in final.values()), final
assert (cfg.sampler, cfg.step_size) == ("ula", 0.1)  # the defaults named above
with torch.random.fork_rng():
    torch.manual_seed(cfg.seed)
    start = runs.build_energy(trained["pcd"].config["model"])  # how the run layer built its network
assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), untrained.state_dict().values()))

# %% [markdown]
# Which part of the KL is it: the mass each model puts on each of the eight
# modes, or the modes' shapes? Split the plane into the regions nearest to
# each mode's centre; by the chain rule the KL is exactly the KL of the eight
# mode masses plus the mass-weighted KL of the densities within each region
# (`evaluation.kl_by_mode`, by quadrature, so with no test-set noise: it lands
# within four standard errors of the test-set estimate above). After 200
# updates all three models put about the right mass on every mode (the mode
# weights' share is under 0.05 nat), and nearly all of the KL, over 90%, is
# shape: every mode is still more than 1.5 times as broad as the data's, in
# variance. What the models have left to learn is to sharpen the modes.

# %%
for method, run in trained.items():
    parts = evaluation.kl_by_mode(run.model, truth, truth.means, bounds, resolution=256)
    ratio = parts.variance_ratio
    print(f"{method:9s} KL {parts.kl:.3f} = mode weights {parts.kl_masses:.3f} + mode shapes {parts.kl_within:.3f}; "
          f"mode masses {float(parts.masses_model.min()):.3f}-{float(parts.masses_model.max()):.3f}, "
          f"variance {float(ratio.min()):.2f}-{float(ratio.max()):.2f}x the data's")
    assert abs(parts.kl - final[method][0]) < 4 * final[method][1], (method, parts.kl, final[method])
    assert parts.kl_masses < 0.05 and parts.kl_within > 0.9 * parts.kl and float(ratio.min()) > 1.5, (method, parts)

# %%
fig, axs = plt.subplots(1, 4, figsize=(11, 2.9))
for method, run in trained.items():
    curve = [(0, kl_untrained)] + [(row["step"], row["kl"]) for row in run.history() if "kl" in row]
    axs[0].plot(*zip(*curve), "o-", label=method)
axs[0].set_yscale("log")
axs[0].set_xlabel("update")
axs[0].set_ylabel("KL(data || model), nat")
axs[0].legend(fontsize=8)
for ax, (method, run) in zip(axs[1:], trained.items()):
    _, dens = evaluation.density_on_grid(run.model, bounds, 160, dtype=torch.float32)
    ax.imshow(dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
    ax.set_title(f"{method}: KL {final[method][0]:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# A run directory opens again with `runs.Run.load`, whether `runs.train` or
# `ebmlab train` wrote it, and samples the way the run is evaluated (MALA on the
# model's energy, from uniform noise over the box). Reloaded, the PCD model
# gives the same KL as before.

# %%
reloaded = runs.Run.load(Path("runs") / "pcd")
kl_reloaded, _ = exact_kl(reloaded.model, split.test)
kl_before, _ = exact_kl(trained["pcd"].model, split.test)
samples = reloaded.sample(100, generator=g)
print(f"reloaded at step {reloaded.step}: KL {kl_reloaded:.4f} (before: {kl_before:.4f}); samples {tuple(samples.shape)}")

# %%
assert reloaded.step == 200 and abs(kl_reloaded - kl_before) < 1e-9

# %% [markdown]
# ## A product of experts
#
# Adding energies multiplies densities:
# $p_{12} \propto p_1\,p_2$, i.e. $E_{12} = E_1 + E_2$, so the product keeps
# what *both* experts find probable. Expert A is the PCD model of the eight
# Gaussians. Expert B is a second EBM that only learned "$x_1 > 0$", from a
# Gaussian folded onto the right half-plane; we train it with the lower layer,
# `ebmlab.training.train_ebm`, which takes any `nn.Module`. In ebmlab the
# product is literally `expert_a + expert_b`.

# %%
half_plane = 2.0 * torch.randn((5000, 2), generator=g)
half_plane[:, 0] = half_plane[:, 0].abs()
with torch.random.fork_rng():
    torch.manual_seed(1)
    expert_b = ebmlab.MLPEnergy(2, hidden=(64, 64))
result = training.train_ebm(expert_b, half_plane, sampler=ebmlab.Langevin(0.1), method="pcd", steps=150,
                            generator=g, log_every=10**9)
expert_b = result.ema.requires_grad_(False)
expert_a = trained["pcd"].model
experts = {"A: eight Gaussians": expert_a, "B: right half-plane": expert_b, "A + B": expert_a + expert_b}

# %% [markdown]
# Quadrature gives each energy's normalised density, so we can integrate it
# over regions exactly: the right half-plane, the ring of radius $4 \pm 1.5$
# where A's modes are, and both. Their product puts more than 0.85 of its mass
# on the right half of the ring, at least 0.3 more than either expert alone.

# %%
radius = (u[:, None] ** 2 + v[None, :] ** 2).sqrt()
right, ring = u[:, None] > 0, (radius - 4).abs() < 1.5
masses, densities = {}, {}
for name, energy in experts.items():
    _, dens = evaluation.density_on_grid(energy, bounds, 200, dtype=torch.float32)
    cell = float((u[1] - u[0]) * (v[1] - v[0]))
    masses[name] = {region: float((dens * mask).sum() * cell)
                    for region, mask in (("right", right), ("ring", ring), ("both", right & ring))}
    densities[name] = dens
    print(f"{name:20s} mass on the right {masses[name]['right']:.3f}, on the ring {masses[name]['ring']:.3f}, "
          f"on the right half of the ring {masses[name]['both']:.3f}")

# %%
alone = max(masses["A: eight Gaussians"]["both"], masses["B: right half-plane"]["both"])
assert masses["A + B"]["both"] > 0.85 and masses["A + B"]["both"] > alone + 0.3, masses

# %% [markdown]
# The product is an energy like any other, so MALA samples it directly (white
# points, from uniform starts over the box). Chains that start in one of A's
# left-hand wells can stay there for a while: B only made those wells shallow,
# not gone. The exact masses above come from quadrature, not from the chains.

# %%
x0 = torch.empty((500, 2)).uniform_(-7, 7, generator=g)
product_samples = ebmlab.sample(experts["A + B"], ebmlab.MALA(0.1), x0, 300, burn_in=299, generator=g).final_state.x
fig, axs = plt.subplots(1, 3, figsize=(9, 3))
for ax, (name, dens) in zip(axs, densities.items()):
    ax.imshow(dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
axs[2].scatter(product_samples[:, 0], product_samples[:, 1], s=1, c="white", alpha=0.6)
axs[2].set_xlim(*bounds[0])
axs[2].set_ylim(*bounds[1])
fig.tight_layout()
plt.show()

# %% [markdown]
# Maximum likelihood needs samples of the model at every update. The next
# notebook learns the score $\nabla_\mathbf{x}\log p$ directly instead, with no
# sampling during training at all.
