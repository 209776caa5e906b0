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
# # 4. Score matching, NCSN and annealed Langevin
#
# Langevin dynamics needs only the score $\nabla_\mathbf{x}\log p$. So why not
# learn the score directly, $s_\theta(\mathbf{x}) \approx \nabla_\mathbf{x}\log p_D(\mathbf{x})$,
# by minimising the Fisher divergence
#
# $$D_F = \mathbb{E}_{p_D}\tfrac12\|s_\theta(\mathbf{x}) - \nabla_\mathbf{x}\log p_D(\mathbf{x})\|^2 ?$$
#
# The data score is unknown, but three objectives get around it:
#
# * **implicit score matching** (ISM, Hyvärinen 2005): integrating by parts,
#   $D_F = \mathbb{E}\left[\tfrac12\|s_\theta\|^2 + \operatorname{tr}\nabla_\mathbf{x} s_\theta\right] + \text{const}$;
# * **sliced score matching** (SSM, Song et al. 2019): the trace estimated along
#   random directions $\mathbf{v}$, $\mathbb{E}_\mathbf{v}[\mathbf{v}^\top \nabla_\mathbf{x} s_\theta\, \mathbf{v}]$,
#   one backward pass whatever the dimension;
# * **denoising score matching** (DSM, Vincent 2011): regress
#   $s_\theta(\tilde{\mathbf{x}})$ on $-(\tilde{\mathbf{x}} - \mathbf{x})/\sigma^2$ for
#   noisy copies $\tilde{\mathbf{x}} = \mathbf{x} + \sigma\mathbf{z}$; the optimum is
#   the score of the *noisy* data.
#
# Then the catch (Song & Ermon 2019): Langevin dynamics with even the exact
# score gets the weights of separated modes wrong. Annealing the noise level
# fixes it, which is what a noise-conditional score network (NCSN) is for.

# %%
import math

import matplotlib.pyplot as plt
import torch

import ebmlab
from ebmlab import objectives, samplers, targets

g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## The objectives, checked against closed forms
#
# Take data $\mathbf{x}\sim N(0, I_2)$ and the one-parameter score model
# $s_\tau(\mathbf{x}) = -\mathbf{x}/\tau^2$ (the score of $N(0, \tau^2 I)$). With
# $d = 2$ everything is a short Gaussian computation:
#
# * ISM and SSM (Rademacher directions): $J(\tau) = d\left(\frac{1}{2\tau^4} - \frac{1}{\tau^2}\right)$,
#   which is $D_F - d/2$ and is smallest at $\tau^2 = 1$, the true score;
# * DSM at noise $\sigma$: $J(\tau) = \frac{d(1+\sigma^2)}{2\tau^4} - \frac{d}{\tau^2} + \frac{d}{2\sigma^2}$,
#   smallest at $\tau^2 = 1 + \sigma^2$: the score of the noisy data $N(0, (1+\sigma^2) I)$.
#
# We evaluate ebmlab's objectives (`objectives.implicit_score_matching`,
# `sliced_score_matching`, `denoising_score_matching`) on 50 batches of 400
# exact draws, the same draws for every $\tau$. At every $\tau$ each objective's
# mean is within 4 standard errors (over the 50 batches) of its closed form.

# %%
d, sigma = 2, 0.5
tau2s = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
batches = [torch.randn((400, d), generator=g, dtype=torch.float64) for _ in range(50)]
closed = {
    "ISM": lambda t2: d * (1 / (2 * t2**2) - 1 / t2),
    "SSM": lambda t2: d * (1 / (2 * t2**2) - 1 / t2),
    "DSM": lambda t2: d * (1 + sigma**2) / (2 * t2**2) - d / t2 + d / (2 * sigma**2),
}
measured = {name: [] for name in closed}
for t2 in tau2s:
    score = lambda x, t2=t2: -x / t2  # noqa: E731 - the model s_tau
    per_batch = {name: [] for name in closed}
    for x in batches:
        per_batch["ISM"].append(float(objectives.implicit_score_matching(score, x)[0].detach()))
        per_batch["SSM"].append(float(objectives.sliced_score_matching(score, x, generator=g)[0].detach()))
        per_batch["DSM"].append(float(objectives.denoising_score_matching(score, x, sigma, generator=g)[0].detach()))
    for name, values in per_batch.items():
        values = torch.tensor(values)
        measured[name].append((float(values.mean()), float(values.std() / math.sqrt(len(values)))))
for name in closed:
    print(name, "  ".join(f"tau^2={t2}: {m:+.3f} (exact {closed[name](t2):+.3f})"
                          for t2, (m, _) in zip(tau2s, measured[name])))

# %%
for name, rows in measured.items():
    for t2, (mean, se) in zip(tau2s, rows):
        assert abs(mean - closed[name](t2)) < 4 * se, (name, t2, mean, closed[name](t2), se)

# %%
fine = torch.linspace(0.45, 3.1, 200)
fig, axs = plt.subplots(1, 2, figsize=(8, 3))
for ax, names in zip(axs, (("ISM", "SSM"), ("DSM",))):
    ax.plot(fine, [closed[names[0]](float(t)) for t in fine], "k-", lw=1, label="closed form")
    for name, marker in zip(names, "os"):
        ax.errorbar(tau2s, [m for m, _ in measured[name]], yerr=[4 * se for _, se in measured[name]], fmt=marker,
                    label=f"{name}, 50 batches")
    best = 1.0 if names[0] == "ISM" else 1 + sigma**2
    ax.axvline(best, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("tau^2")
    ax.legend(fontsize=8)
axs[0].set_title("ISM / SSM: minimum at tau^2 = 1", fontsize=9)
axs[1].set_title(f"DSM, sigma = {sigma}: minimum at 1 + sigma^2", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Learning a score field from samples
#
# Now neural networks on the eight Gaussians, trained with `ebmlab.train_score`
# (Adam, a moving average of the weights). ISM needs
# $\operatorname{tr}\nabla_\mathbf{x} s_\theta$, so we train an *energy* network
# through its score (`EnergyScore(MLPEnergy(2))`, a second derivative per
# coordinate); SSM and DSM train a direct score network (`ScoreMLP`). The error
# is relative, $\mathbb{E}\|s_\theta - s\|^2 / \mathbb{E}\|s\|^2$ on 2000 held-out
# points, so a network that outputs 0 scores 1. ISM and SSM are compared with
# the true score; DSM at $\sigma = 0.5$ with the exact score of the noisy data
# (ebmlab's Gaussian-mixture targets give it in closed form, `perturbed(sigma)`),
# at noisy test points.

# %%
eight = targets.get("eight_gaussians")
train, test = eight.sample(10_000, generator=g), eight.sample(2000, generator=g)
dsm_sigma = 0.5
noisy_test = test + dsm_sigma * torch.randn(test.shape, generator=g)
reference = {"ISM": (test, eight.score(test)), "SSM": (test, eight.score(test)),
             "DSM": (noisy_test, eight.perturbed(dsm_sigma).score(noisy_test))}


def relative_error(model, points, true_score):
    with torch.enable_grad():  # an energy's score needs autograd
        s = model(points).detach()
    return float(((s - true_score) ** 2).sum(1).mean() / (true_score**2).sum(1).mean())


learned, errors = {}, {}
for name, method, steps in (("ISM", "ism", 300), ("SSM", "ssm-vr", 600), ("DSM", "dsm", 600)):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ebmlab.EnergyScore(ebmlab.MLPEnergy(2)) if method == "ism" else ebmlab.ScoreMLP(2)
    result = ebmlab.train_score(net, train, method=method, sigma=dsm_sigma, steps=steps, batch_size=256,
                                generator=g, log_every=10**9)
    learned[name] = result.ema
    errors[name] = relative_error(result.ema, *reference[name])
    print(f"{name} ({method}, {steps} steps, {result.seconds:.1f} s): relative error {errors[name]:.3f}")
dsm_vs_clean = relative_error(learned["DSM"], noisy_test, eight.score(noisy_test))
print(f"DSM against the clean data's score at the same points: {dsm_vs_clean:.3f}")

# %% [markdown]
# After a few hundred steps each network's relative error is below 0.35, and
# DSM's error is at least twice as large against the clean score as against the
# noisy-data score it was trained for: DSM learns the score of the data
# convolved with its noise.

# %%
assert all(e < 0.35 for e in errors.values()), errors
assert dsm_vs_clean > 2 * errors["DSM"], (dsm_vs_clean, errors["DSM"])

# %%
grid = torch.stack(torch.meshgrid(torch.linspace(-6, 6, 17), torch.linspace(-6, 6, 17), indexing="ij"), -1)
grid = grid.reshape(-1, 2)
fields = {"true score": eight.score(grid)}
fields.update({name: model(grid).detach() for name, model in learned.items()})
fig, axs = plt.subplots(1, 4, figsize=(11, 2.9))
for ax, (name, f) in zip(axs, fields.items()):
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-9)
    ax.quiver(grid[:, 0], grid[:, 1], f[:, 0], f[:, 1], color="#1f77b4")
    ax.scatter(train[:300, 0], train[:300, 1], s=1, c="#d62728")
    ax.set_title(name if name == "true score" else f"{name}: error {errors[name]:.2f}", fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Langevin gets the mode weights wrong; annealing gets them right
#
# Song & Ermon's example: $p = 0.2\,N((-5,-5), I) + 0.8\,N((5,5), I)$. Start
# 2000 chains uniformly on $[-8, 8]^2$ and run Langevin dynamics with the
# *exact* score. In the low-density gap between the modes the score is tiny and
# says nothing about the weights, so each chain stays in the basin where it
# started: the fraction that ends in the heavy $(5, 5)$ mode stays within 0.05
# of the fraction that *started* on its side, about a half, instead of 0.8.
#
# Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1;
# `ebmlab.AnnealedLangevin`) runs Langevin on the noisy densities
# $p * N(0, \sigma_i^2 I)$ for a decreasing ladder $\sigma_1 > \dots > \sigma_L$,
# with step $\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2$. At large $\sigma$ the
# two modes merge into one broad bump, chains move freely and settle in
# proportion to the weights; as $\sigma$ shrinks they are carried into the
# modes. Here with the exact noisy scores (`samplers.exact_perturbed_score`),
# ten levels from $\sigma = 20$ to 1, 100 steps each: the heavy mode gets within
# 0.05 of 0.8. (Annealed Langevin with finitely many steps is itself
# approximate, which is why the bound is 0.05 and not a few standard errors.)

# %%
mixture = targets.get("song_ermon_mixture")
chains = 2000
x0 = torch.empty((chains, 2), dtype=torch.float64).uniform_(-8, 8, generator=g)
heavy = lambda x: float((x.sum(1) > 0).double().mean())  # noqa: E731 - share of chains in the (5, 5) mode

plain = ebmlab.sample(mixture, ebmlab.Langevin(0.1**0.5), x0, 1000, burn_in=999, generator=g).final_state.x
annealer = ebmlab.AnnealedLangevin(torch.logspace(math.log10(20.0), 0.0, 10, dtype=torch.float64),
                                   steps_per_level=100, eps=0.3)
annealed = ebmlab.sample(samplers.exact_perturbed_score(mixture), annealer, x0, annealer.num_steps,
                         burn_in=annealer.num_steps - 1, generator=g).final_state.x
print(f"started on the heavy side: {heavy(x0):.3f}; Langevin: {heavy(plain):.3f}; annealed Langevin: "
      f"{heavy(annealed):.3f}; truth 0.8 (standard error of a share of {chains}: "
      f"{math.sqrt(0.16 / chains):.3f})")

# %%
assert abs(heavy(plain) - heavy(x0)) < 0.05 and abs(heavy(plain) - 0.8) > 0.2, (heavy(plain), heavy(x0))
assert abs(heavy(annealed) - 0.8) < 0.05, heavy(annealed)

# %% [markdown]
# ## A trained NCSN
#
# The same with a learned score: a noise-conditional network $s_\theta(\mathbf{x}, \sigma)$
# (`ScoreMLP(2, noise_conditional=True)`) trained on 20,000 samples of the
# mixture with the NCSN loss (DSM at every level, weighted by $\sigma^2$;
# `objectives.ncsn_loss`, which `train_score(method="ncsn")` uses), over twenty
# levels from the data's diameter down to 0.01. Sampled by annealed Langevin from
# the same uniform starts (`ebmlab.sample_scores`), it too puts within 0.05 of
# 0.8 on the heavy mode.

# %%
with torch.random.fork_rng():
    torch.manual_seed(0)
    ncsn = ebmlab.ScoreMLP(2, noise_conditional=True, scale_by_sigma=True)
fit = ebmlab.train_score(ncsn, mixture.sample(20_000, generator=g), method="ncsn", steps=800, batch_size=512,
                         generator=g, log_every=10**9)
from_ncsn = ebmlab.sample_scores(fit.ema, method="ncsn", n=chains, x0=x0.float(), sigmas=fit.sigmas,
                                 steps_per_level=50, generator=g)
print(f"NCSN: {len(fit.sigmas)} levels from {float(fit.sigmas[0]):.1f} to {float(fit.sigmas[-1]):.2f}, "
      f"{fit.step} steps in {fit.seconds:.1f} s; heavy-mode share {heavy(from_ncsn):.3f}")

# %%
assert len(fit.sigmas) == 20 and float(fit.sigmas[-1]) == 0.01
assert abs(heavy(from_ncsn) - 0.8) < 0.05, heavy(from_ncsn)

# %%
fig, axs = plt.subplots(1, 3, figsize=(9, 3.1), sharey=True)
for ax, (name, x) in zip(axs, (("Langevin, exact score", plain), ("annealed, exact scores", annealed),
                               ("annealed, trained NCSN", from_ncsn))):
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
    ax.set_xlim(-9, 9)
    ax.set_ylim(-9, 9)
    ax.set_aspect("equal")
    ax.set_title(f"{name}\n{heavy(x):.2f} in the (5, 5) mode (truth 0.80)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# Letting the noise level run continuously instead of over a ladder leads to
# score-based diffusion models (`ebmlab.sde`). The last notebook shows how to
# bring an energy of your own to all of this.
