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
# # 2. Langevin dynamics, MALA and HMC
#
# Langevin dynamics samples $p \propto e^{-E}$ with gradients: start anywhere
# and repeat
#
# $$\mathbf{x}_{t+1} = \mathbf{x}_t + \frac{\epsilon^2}{2}\nabla_\mathbf{x}\log p(\mathbf{x}_t) + \epsilon\,\mathbf{z},
#   \qquad \mathbf{z}\sim N(0, I).$$
#
# Only the score $-\nabla E$ is needed, never $Z$. Run as it stands (the
# *unadjusted* Langevin algorithm, ULA, `ebmlab.Langevin`) the chain is biased:
# its stationary law is not quite $p$, and the bias grows with $\epsilon$.
# MALA (`ebmlab.MALA`) treats the same move as a proposal and accepts it with a
# Metropolis-Hastings test, which removes the bias exactly. HMC (`ebmlab.HMC`)
# follows the gradient for several leapfrog steps before its test and moves
# much further per step.
#
# This notebook measures all of that against exact answers: ULA's bias on a
# Gaussian, where its stationary variance has a closed form; samples on the
# banana against exact samples and exact moments; and the usual MCMC
# diagnostics (acceptance, effective sample size, $\hat R$).

# %%
import math
import warnings

import matplotlib.pyplot as plt
import torch

import ebmlab
from ebmlab import evaluation, targets

g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## ULA's bias, exactly
#
# On a standard Gaussian, $\nabla\log p(\mathbf{x}) = -\mathbf{x}$ and ULA is the
# linear recursion $\mathbf{x}' = (1 - \epsilon^2/2)\mathbf{x} + \epsilon\mathbf{z}$.
# Its stationary variance $v$ solves $v = (1-\epsilon^2/2)^2 v + \epsilon^2$:
#
# $$v(\epsilon) = \frac{1}{1 - \epsilon^2/4},$$
#
# not 1. We run 20,000 independent chains for 300 steps from exact draws and
# estimate the variance from their final states (independent draws, so the
# standard error of $\widehat{v}$ is $v\sqrt{2/N}$ with $N$ = 40,000
# coordinates). ULA's measured variance is within 4 standard errors of
# $v(\epsilon)$ at every step size, and from $\epsilon = 0.5$ on it is more than
# 4 standard errors away from the true variance 1. MALA's is within 4 standard
# errors of 1 at every step size.

# %%
gauss = targets.get("standard")  # N(0, I) in two dimensions
chains = 20_000
x0 = gauss.sample(chains, generator=g)
step_sizes = [0.25, 0.5, 0.75, 1.0]
variance = {"ULA": [], "MALA": []}
for eps in step_sizes:
    for name, sampler in (("ULA", ebmlab.Langevin(eps)), ("MALA", ebmlab.MALA(eps))):
        trace = ebmlab.sample(gauss, sampler, x0, 300, burn_in=299, generator=g)
        variance[name].append(float((trace.final_state.x.double() ** 2).mean()))
ula_exact = [1 / (1 - eps**2 / 4) for eps in step_sizes]
se = lambda v: v * math.sqrt(2 / (2 * chains))  # noqa: E731 - standard error of the variance estimate
for eps, vu, ve, vm in zip(step_sizes, variance["ULA"], ula_exact, variance["MALA"]):
    print(f"eps {eps:4.2f}: ULA variance {vu:.4f} (exact {ve:.4f} +- {se(ve):.4f}),  MALA {vm:.4f} (exact 1 +- {se(1):.4f})")

# %%
for eps, vu, ve, vm in zip(step_sizes, variance["ULA"], ula_exact, variance["MALA"]):
    assert abs(vu - ve) < 4 * se(ve), (eps, vu, ve)
    assert abs(vm - 1) < 4 * se(1), (eps, vm)
    if eps >= 0.5:
        assert abs(vu - 1) > 4 * se(1), (eps, vu)

# %%
fine = torch.linspace(0.0, 1.1, 100)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(fine, 1 / (1 - fine**2 / 4), "k--", label="ULA, exact: 1 / (1 - eps^2/4)")
ax.errorbar(step_sizes, variance["ULA"], yerr=[4 * se(v) for v in ula_exact], fmt="o", label="ULA, measured")
ax.errorbar(step_sizes, variance["MALA"], yerr=4 * se(1), fmt="s", label="MALA, measured")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set_xlabel("step size eps")
ax.set_ylabel("stationary variance")
ax.set_title("N(0, I): ULA is biased, MALA is not (bars: 4 SE)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What if there were no noise?
#
# The lecture asks it. Without $\epsilon\mathbf{z}$ the update is gradient
# ascent on $\log p$: every chain runs to a mode and stops. With a noise of
# $10^{-12}$ (numerically none) and 1000 steps on the banana, every one of 500
# chains ends where the score is below $10^{-4}$ in norm, all at the same point
# (spread below $10^{-4}$). Noise is what turns optimisation into sampling.

# %%
banana = targets.get("banana")
start = torch.randn((500, 2), generator=g)
no_noise = ebmlab.sample(banana, ebmlab.Langevin(0.3, noise_scale=1e-12), start, 1000, burn_in=999, generator=g)
ends = no_noise.final_state.x.double()
largest_score = float(banana.score(ends).norm(dim=1).max())
spread = float(ends.std(dim=0).max())
print(f"largest |score| at the chains' ends: {largest_score:.1e}; spread of the ends: {spread:.1e}")

# %%
assert largest_score < 1e-4 and spread < 1e-4, (largest_score, spread)

# %% [markdown]
# ## The banana: ULA against MALA as the step grows
#
# The banana has exact samples and exact moments (mean $(0, 0.4)$, variances 4
# and 1.53). Chains start at exact draws, so whatever drift we measure is the
# sampler's bias, not slow mixing from a bad start. We compare the histogram of
# the draws with the exact density (KL by quadrature; it has a small positive
# floor from the finite sample) and the variance of each coordinate with the
# exact one, with a standard error from the effective sample size of the
# squared deviations.

# %%
chains, steps, burn = 1000, 600, 100
x0 = banana.sample(chains, generator=g)
exact_var = banana.cov.diagonal()
rows, traces = [], {}
for eps in (0.1, 0.2, 0.3):
    for name, sampler in (("ULA", ebmlab.Langevin(eps)), ("MALA", ebmlab.MALA(eps))):
        trace = ebmlab.sample(banana, sampler, x0, steps, burn_in=burn, generator=g)
        sq = (trace.samples.double() - banana.mean) ** 2  # (kept, chains, 2)
        var = sq.mean(dim=(0, 1))
        var_se = sq.reshape(-1, 2).std(dim=0) / torch.as_tensor(evaluation.ess_bulk(sq)).sqrt()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few ULA draws may leave the plotting box
            kl = evaluation.histogram_kl(trace.samples.reshape(-1, 2), banana, banana.bounds)
        z = ((var - exact_var) / var_se).tolist()
        rows.append({"sampler": name, "eps": eps, "kl": kl, "z": z, "acceptance": float(trace.acceptance_rate.mean())})
        traces[(name, eps)] = trace
        print(f"{name:4s} eps {eps}: KL {kl:.4f}, variances {var[0]:.3f} / {var[1]:.3f} "
              f"(exact 4 / 1.53; {z[0]:+.1f} and {z[1]:+.1f} SE away)")

# %% [markdown]
# MALA's variances are within 4 standard errors of the exact ones at every
# step; ULA's are not at $\epsilon = 0.3$, and its histogram KL there is more
# than five times MALA's.

# %%
for r in rows:
    if r["sampler"] == "MALA":
        assert max(abs(v) for v in r["z"]) < 4, r
ula, mala = rows[-2], rows[-1]
assert ula["eps"] == mala["eps"] == 0.3
assert max(abs(v) for v in ula["z"]) > 4, ula
assert ula["kl"] > 5 * mala["kl"], (ula, mala)

# %%
fig, axs = plt.subplots(1, 2, figsize=(8, 3))
for name, style in (("ULA", "o-"), ("MALA", "s-")):
    pts = [(r["eps"], r["kl"]) for r in rows if r["sampler"] == name]
    axs[0].plot(*zip(*pts), style, label=name)
axs[0].set_yscale("log")
axs[0].set_xlabel("step size eps")
axs[0].set_ylabel("KL(histogram || exact)")
axs[0].legend()
(u, v), dens = evaluation.density_on_grid(banana, banana.bounds, 300)
marginal = dens.sum(0) * float(u[1] - u[0])  # exact density of x2
for name in ("ULA", "MALA"):
    axs[1].hist(traces[(name, 0.3)].samples[..., 1].reshape(-1), bins=80, range=banana.bounds[1], density=True,
                histtype="step", label=f"{name}, eps 0.3")
axs[1].plot(v, marginal, "k", lw=1, label="exact")
axs[1].set_xlim(-7, 3)
axs[1].set_xlabel("x2")
axs[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Acceptance, effective sample size and $\hat R$
#
# Now the realistic setting: 500 chains start from $N(0, I)$ noise, as in the
# lecture, and we do not know the answer. MALA's acceptance rate falls as the
# step grows: big steps are proposed but rejected. Two diagnostics say whether
# the draws can be trusted: the bulk effective sample size (ESS, how many
# independent draws they are worth) and the rank-normalised split $\hat R$
# (Vehtari et al. 2021), which compares chains with each other and with their
# own halves; values above 1.01 mean the chains have not mixed.

# %%
chains = 500
start = torch.randn((chains, 2), generator=g)
diag = []
for eps in (0.2, 0.5, 0.8):
    trace = ebmlab.sample(banana, ebmlab.MALA(eps), start, 1500, burn_in=500, generator=g)
    summary = evaluation.summarize(trace.samples)
    diag.append({"sampler": f"MALA eps {eps}", "acceptance": float(trace.acceptance_rate.mean()),
                 "ess": summary["ess_bulk_min"], "rhat": summary["rhat_max"],
                 "gradients": trace.samples.shape[0] * chains, "trace": trace})
hmc_steps = 15
trace = ebmlab.sample(banana, ebmlab.HMC(0.2, num_leapfrog=hmc_steps), start, 1500, burn_in=500, generator=g)
summary = evaluation.summarize(trace.samples)
diag.append({"sampler": f"HMC eps 0.2, {hmc_steps} leapfrog", "acceptance": float(trace.acceptance_rate.mean()),
             "ess": summary["ess_bulk_min"], "rhat": summary["rhat_max"],
             "gradients": trace.samples.shape[0] * chains * hmc_steps, "trace": trace})
for d in diag:
    d["ess_per_gradient"] = d["ess"] / d["gradients"]
    print(f"{d['sampler']:26s} acceptance {d['acceptance']:.2f}  min bulk ESS {d['ess']:8.0f}  "
          f"R-hat {d['rhat']:.3f}  ESS per gradient {d['ess_per_gradient']:.4f}")

# %% [markdown]
# MALA's acceptance falls with the step (from above 0.9 at $\epsilon = 0.2$ to
# below 0.5 at 0.8), and after 1000 kept steps its $\hat R$ is still above 1.01
# at every step size: the chains have not yet explored the banana's long arms.
# HMC, whose fifteen leapfrog steps carry each move along the ridge, reaches
# $\hat R < 1.01$ in the same number of steps and gets at least three times
# MALA's best effective sample size per gradient evaluation, although each of
# its steps costs fifteen gradients.

# %%
mala_rows, hmc = diag[:-1], diag[-1]
assert mala_rows[0]["acceptance"] > 0.9 and mala_rows[-1]["acceptance"] < 0.5, mala_rows
assert all(a["acceptance"] > b["acceptance"] for a, b in zip(mala_rows, mala_rows[1:]))
assert all(d["rhat"] > 1.01 for d in mala_rows), [d["rhat"] for d in mala_rows]
assert hmc["rhat"] < 1.01, hmc["rhat"]
assert hmc["ess_per_gradient"] > 3 * max(d["ess_per_gradient"] for d in mala_rows)

# %%
fig, axs = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
for ax, d in zip(axs, (mala_rows[1], hmc)):
    x = d["trace"].samples
    for c in range(3):  # three chains' paths over the first 300 kept steps
        ax.plot(x[:300, c, 0], x[:300, c, 1], lw=0.6)
    ax.contour(u, v, dens.T, levels=6, colors="k", linewidths=0.5)
    ax.set_xlim(-6, 6)
    ax.set_ylim(-7, 3)
    ax.set_title(f"{d['sampler']}: R-hat {d['rhat']:.3f}", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Distance to exact samples
#
# A last check needs exact samples: the squared maximum mean discrepancy
# (MMD$^2$) between the final states of the HMC chains and as many exact draws.
# How large MMD$^2$ gets by chance we learn from 20 pairs of *exact* sample sets
# of the same size; the HMC samples' MMD$^2$ is below the largest of those.

# %%
hmc_final = hmc["trace"].final_state.x
n = hmc_final.shape[0]
null = [evaluation.mmd(banana.sample(n, generator=g), banana.sample(n, generator=g), generator=g) for _ in range(20)]
hmc_mmd = evaluation.mmd(hmc_final, banana.sample(n, generator=g), generator=g)
print(f"MMD^2 of HMC vs exact: {hmc_mmd:.2e}; exact vs exact: largest of 20 {max(null):.2e}")

# %%
assert hmc_mmd < max(null), (hmc_mmd, max(null))

# %% [markdown]
# The same samplers draw the negatives of EBM training (notebook 3), and
# Langevin dynamics on a *learned* score is how score-based models sample
# (notebook 4).
