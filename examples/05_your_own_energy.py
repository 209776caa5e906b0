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
# # 5. Bring your own energy
#
# Everything in ebmlab takes an energy as a plain callable `x -> (batch,)`.
# This notebook writes one as a `torch.nn.Module` with learnable parameters and
# takes it through the whole library: what is tractable about it, sampling it
# with `ebmlab.sample`, training it by maximum likelihood, evaluating it
# exactly, keeping it in a run directory (and resuming from it), and looking
# at it in the playground.

# %%
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

import ebmlab
from ebmlab import checkpoint, evaluation, playground, runs, targets, training

g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## The energy
#
# A ring whose radius $r$ and width $s$ are parameters:
#
# $$E_\theta(\mathbf{x}) = \frac{(\|\mathbf{x}\| - r)^2}{2 s^2}, \qquad \theta = (r, \log s).$$
#
# Any module works the same way (a network, a physical model, a mix of both);
# a two-parameter model keeps the answers checkable by hand.


# %%
class RingEnergy(nn.Module):
    """E(x) = (|x| - radius)^2 / (2 width^2), with a learnable radius and (log) width."""

    def __init__(self, radius: float = 1.0, width: float = 1.0) -> None:
        super().__init__()
        self.radius = nn.Parameter(torch.tensor(float(radius)))
        self.log_width = nn.Parameter(torch.tensor(math.log(width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = (x.pow(2).sum(dim=1) + 1e-12).sqrt()  # smooth at the origin
        return (norm - self.radius) ** 2 / (2 * torch.exp(2 * self.log_width))

    def log_partition(self) -> float:
        """log Z in closed form: Z = 2 pi s sqrt(2 pi) [r Phi(r/s) + s phi(r/s)]."""
        r, s = float(self.radius.detach()), float(self.log_width.detach().exp())
        Phi = 0.5 * math.erfc(-(r / s) / math.sqrt(2))
        phi = math.exp(-0.5 * (r / s) ** 2) / math.sqrt(2 * math.pi)
        return math.log(2 * math.pi * s * math.sqrt(2 * math.pi) * (r * Phi + s * phi))


model = RingEnergy(radius=1.5, width=0.5)
bounds = [(-3.5, 3.5), (-3.5, 3.5)]

# %% [markdown]
# ## What is tractable about it
#
# The energy and its score come for free (`ebmlab.score` differentiates with
# respect to $\mathbf{x}$ only and leaves the parameters' `.grad` alone), and in
# two dimensions `ebmlab.log_partition` integrates $e^{-E}$. For this ring $Z$
# also has a closed form; quadrature over a box that holds the ring with room to
# spare ($\pm 6$, twelve widths past the ring) matches it to $10^{-6}$.

# %%
x = torch.tensor([[1.5, 0.0], [0.0, 2.0], [0.3, 0.4]])
print("energies:", model(x).tolist())
print("scores:", ebmlab.score(model, x).tolist())
quad = ebmlab.log_partition(model, [(-6.0, 6.0), (-6.0, 6.0)], 512)
print(f"log Z: quadrature {quad.value:.8f}, closed form {model.log_partition():.8f}")

# %%
assert abs(quad.value - model.log_partition()) < 1e-6
assert all(p.grad is None for p in model.parameters())  # the score left the parameters alone

# %% [markdown]
# ## Sampling it
#
# `ebmlab.sample` runs any sampler on any energy; MALA's gradient comes from
# autograd. 2000 chains start uniformly in the box and run 300 steps. Their
# final radii average to the model's mean radius, which quadrature gives
# exactly, within 4 standard errors.


# %%
def mean_radius(energy):
    """E_p |x| under exp(-E) / Z, by quadrature."""
    (u, v), dens = evaluation.density_on_grid(energy, bounds, 512, dtype=torch.float32)
    return float((dens * (u[:, None] ** 2 + v[None, :] ** 2).sqrt()).sum() * (u[1] - u[0]) * (v[1] - v[0]))


x0 = torch.empty((2000, 2)).uniform_(-3.5, 3.5, generator=g)
trace = ebmlab.sample(model, ebmlab.MALA(0.2), x0, 300, burn_in=299, generator=g)
radii = trace.final_state.x.norm(dim=1)
se = float(radii.std() / math.sqrt(len(radii)))
print(f"MALA acceptance {float(trace.acceptance_rate.mean()):.2f}; mean radius {float(radii.mean()):.4f} +- {se:.4f}, "
      f"exact {mean_radius(model):.4f}")

# %%
assert abs(float(radii.mean()) - mean_radius(model)) < 4 * se

# %% [markdown]
# ## Training it
#
# The data: ebmlab's `donut` target, exactly a ring of radius 2.6 with
# $E = (\|\mathbf{x}\| - 2.6)^2 / 0.033$, i.e. width $s = \sqrt{0.0165} \approx 0.128$.
# Our model family contains the truth, so maximum likelihood should find it.
#
# `ebmlab.training.train_ebm` trains any `nn.Module` energy: persistent chains
# (PCD) of MALA, 10 steps per update, a learning rate suited to two parameters,
# no energy regulariser (`alpha=0`: it would bias the fit), and a moving
# average of the weights. With a `run_dir` it writes `metrics.jsonl` and a
# checkpoint as it goes.

# %%
donut = targets.get("donut")
r_true, s_true = 2.6, math.sqrt(0.033 / 2)
train, test = donut.sample(10_000, generator=g), donut.sample(5000, generator=g)
run_dir = Path("runs") / "my-ring"
settings = dict(sampler=ebmlab.MALA(0.1), method="pcd", mcmc_steps=10, lr=0.02, alpha=0.0, ema_decay=0.99,
                log_every=25)
result = training.train_ebm(model, train, steps=300, generator=torch.Generator().manual_seed(1), run_dir=run_dir,
                            overwrite=True, **settings)
fitted = result.ema
print(f"{result.step} updates in {result.seconds:.1f} s: radius {float(fitted.radius):.4f} (true {r_true}), "
      f"width {float(fitted.log_width.exp()):.4f} (true {s_true:.4f})")

# %% [markdown]
# The fitted radius is within 0.02 of 2.6 and the width within 5% of 0.128.

# %%
assert abs(float(fitted.radius) - r_true) < 0.02
assert abs(float(fitted.log_width.exp()) / s_true - 1) < 0.05

# %% [markdown]
# ## Evaluating it
#
# `evaluation.evaluate_density_model` is the evaluation every 2-D run gets:
# the exact test NLL by quadrature, the KL from the data to the model (the true
# density is known here), and the MMD of the model's own MALA samples against
# the test set. The fitted ring is within 0.01 nat of the truth, against more
# than 1 nat for where it started.

# %%
report = evaluation.evaluate_density_model(fitted, test, bounds, true_density=donut, resolution=256,
                                           generator=g, num_chains=1000, num_steps=300, step_size=0.1)
kl_before = ebmlab.exact_nll(RingEnergy(radius=1.5, width=0.5), test, bounds, 256) - report["true_nll"]
print(f"test NLL {report['test_nll']:.4f} (the truth's {report['true_nll']:.4f}); KL {report['kl']:.4f} nat "
      f"(at the start: {kl_before:.2f}); MMD^2 of samples {report['mmd']:.1e}")

# %%
assert abs(report["kl"]) < 0.01 and kl_before > 1.0, (report["kl"], kl_before)

# %%
history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
(u, v), dens = evaluation.density_on_grid(fitted, bounds, 200, dtype=torch.float32)
fig, axs = plt.subplots(1, 2, figsize=(8, 3.2))
axs[0].plot([h["step"] for h in history], [h["energy_gap"] for h in history])
axs[0].axhline(0, color="grey", lw=0.8)
axs[0].set_xlabel("update")
axs[0].set_ylabel("E(negatives) - E(data)")
axs[0].set_title("the contrastive gap closes as the model fits", fontsize=9)
axs[1].imshow(dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
axs[1].scatter(test[:400, 0], test[:400, 1], s=1, c="white", alpha=0.5)
axs[1].set_title("fitted density, with test points", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The run directory: reopen and resume
#
# `run_dir` now holds `metrics.jsonl` (one JSON row per logged step) and
# `checkpoint.safetensors`: the weights, their moving average, the optimiser,
# the persistent chains and the generator's state, in safetensors (loading it
# never unpickles anything). `ebmlab.checkpoint.load_checkpoint` reads it back
# into a fresh `RingEnergy`, and `train_ebm(..., resume=True)` continues the run
# exactly: 300 updates and then 100 more end on the same parameters, bit for
# bit, as 400 updates in one go.

# %%
print(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")))  # (and a lock file)
tensors, meta = checkpoint.load_checkpoint(run_dir / "checkpoint.safetensors")
reopened = RingEnergy()
reopened.load_state_dict({k.removeprefix("ema."): t for k, t in tensors.items() if k.startswith("ema.")})
print(f"checkpoint at step {meta['step']}: radius {float(reopened.radius.detach()):.4f}")

resumed = training.train_ebm(model, train, steps=400, generator=torch.Generator(), run_dir=run_dir, resume=True,
                             **settings)
straight = training.train_ebm(RingEnergy(radius=1.5, width=0.5), train, steps=400,
                              generator=torch.Generator().manual_seed(1), **settings)
print(f"resumed: radius {float(resumed.ema.radius):.6f}; straight: {float(straight.ema.radius):.6f}")

# %%
assert meta["step"] == 300 and torch.equal(reopened.radius, fitted.radius)
assert all(torch.equal(a, b) for a, b in zip(resumed.ema.parameters(), straight.ema.parameters()))

# %% [markdown]
# ## In the playground
#
# `ebmlab serve` opens the lecture's interactive sampler page. An energy
# defined in Python goes to it as a `playground.Model` (the energy and the box
# to draw) through `playground.create_app`, which builds the web app; serving
# it is one more line, `uvicorn.run(app, host="127.0.0.1", port=8000)`, run
# outside this notebook since it blocks.

# %%
mine = playground.Model(fitted.requires_grad_(False), bounds, kind="my ring energy")
app = playground.create_app({"my ring": mine})
print("algorithms the page offers for it:", ", ".join(mine.algorithms))

# %%
assert {"mala", "hmc"} <= set(mine.algorithms)

# %% [markdown]
# From the command line, `ebmlab serve --model RUN` opens run directories made
# by `ebmlab train` or `runs.train`. Their `config.json` describes the network
# by kind and sizes so that the server can rebuild it without unpickling, so
# these are runs of ebmlab's own networks (here `MLPEnergy`, fitted to the same
# donut for a few steps; a class defined in a notebook has no such entry).
#
# ```
# ebmlab serve --model runs/mlp-donut
# ```
#
# `playground.load_models` is what that command calls to read the runs, so
# calling it here checks, without a server, that the page can open the run;
# the model it returns is then sampled with the same MALA the page steps.

# %%
cfg = runs.TrainConfig.resolve(data="donut", method="pcd", steps=100, eval_every=100, seed=0)
mlp_run = runs.train(cfg, Path("runs") / "mlp-donut", overwrite=True)
offered = playground.load_models([Path("runs") / "mlp-donut"])
name, served = next(iter(offered.items()))
on_page = ebmlab.sample(served.energy, ebmlab.MALA(0.1), torch.zeros((200, 2)), 50, burn_in=49, generator=g)
print(f"{name}: {served.kind}, box {served.bounds}; 200 MALA chains, acceptance "
      f"{float(on_page.acceptance_rate.mean()):.2f}")

# %%
assert name == "model:mlp-donut" and served.energy is not None and "mala" in served.algorithms
assert torch.isfinite(on_page.final_state.x).all()
