"""Every evaluation of a run, in one place: during training (the evaluators the loop calls) and after it
(:func:`evaluate`, the dict ``ebmlab evaluate --json`` prints).

* 2-D EBMs: exact test NLL by quadrature, KL to the data when their density
  is known (with its standard error and the test set's own noise beside it),
  MMD and sliced-W of MALA samples; on a Gaussian mixture's data
  (eight_gaussians) also the exact KL by quadrature split into the mode
  weights' and the mode shapes' shares (:func:`mode_split`);
* 2-D score models: MMD and sliced-W of (annealed) Langevin samples; ``ism``
  trains an energy, so it gets the exact NLL and KL too;
* 2-D diffusion models (``sde-ve``, ``sde-vp``): MMD and sliced-W of PC
  samples, and the test NLL by the probability-flow ODE
  (:func:`ebmlab.sde.log_likelihood`, exact divergence) on the first
  :data:`DIFFUSION_NLL_POINTS` test points, with the KL and the test set's
  noise on those points as for the EBMs;
* images (EBMs and score models): a classifier's confidence and class balance
  of samples, feature and pixel MMD, nearest training images; diffusion
  models also bits/dim (:func:`ebmlab.sde.bits_per_dim`, uniform
  dequantisation) on the first :data:`DIFFUSION_BPD_IMAGES` test images.

Own data (a data file, :mod:`ebmlab.data.files`) get what can be measured
without a known density: the test NLL by quadrature for ``d <= 2`` on the
data's range padded by 10% (by the ODE for diffusion runs), MMD and sliced-W
of samples for any ``d``, the figures for ``d = 2``; own images get pixel MMD,
nearest training images and the sample grid (the classifier exists for
digits, MNIST and Fashion-MNIST only). :func:`evaluate`'s ``skipped`` maps
every metric it left out to the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..evaluation.models import SAMPLE_METRICS
from ..score_training import SDE_METHODS
from .models import density_name
from .run import Run, score_samples

__all__ = ["CLASSIFIER_EPOCHS_28", "CLASSIFIER_MAX_TRAIN_28", "DIFFUSION_BPD_IMAGES", "DIFFUSION_NLL_POINTS",
           "EVAL_IMAGE_SAMPLES", "EVAL_NEAREST", "IMAGE_SCORE_EVAL_SAMPLES", "PIXEL_LEVELS", "SKIP_REASONS", "evaluate",
           "image_classifier", "likelihood_metrics", "mode_split", "training_evaluator"]

#: Samples ``evaluate`` draws from an image model (EBM: at most this many of its chains; score model:
#: annealed Langevin from noise), and how many of them the nearest-neighbour check compares with every
#: training image.
EVAL_IMAGE_SAMPLES = {"ebm": 1000, "score": 500}
EVAL_NEAREST = 100
#: Samples scored by the classifier while training an image model (annealed Langevin is costly).
IMAGE_SCORE_EVAL_SAMPLES = 200
IMAGE_EBM_EVAL_CHAINS = 500
#: Image runs' classifier (evaluation only) on 28x28 data: trained on the first images of the training split.
CLASSIFIER_MAX_TRAIN_28, CLASSIFIER_EPOCHS_28 = 10_000, 5
_IMAGE_METRICS = ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd")
#: The evaluation's generator is seeded with the run's seed plus this (training's own stream stays apart).
EVAL_SEED_OFFSET = 17
#: In-training MMD compares with this many held-out points, one subset fixed for the whole run (``mmd``'s own
#: ``max_samples``: a larger test set was sub-sampled afresh at every evaluation, which added noise between rows).
TRAINING_MMD_POINTS = 2000
#: 2-D diffusion runs: test points whose NLL the probability-flow ODE computes (adaptive RK45, exact 2-D
#: divergence: about 150 evaluations of the field on the CPU), in ``evaluate`` and while training.
DIFFUSION_NLL_POINTS = {"evaluate": 2000, "training": 500}
#: Image diffusion runs: test images whose bits/dim ``evaluate`` computes (Hutchinson's divergence, one
#: Rademacher probe per image, through RK45).
DIFFUSION_BPD_IMAGES = 100
#: Quantisation levels of each image set's pixels (sklearn's digits are 0..16; MNIST-family 8-bit).
PIXEL_LEVELS = {"digits": 17, "mnist": 256, "fashion_mnist": 256}


def density_metrics(energy: nn.Module, name: str | None, test: Tensor, bounds: list, *, resolution: int,
                    generator: torch.Generator, num_chains: int = 0, num_steps: int = 0, step_size: float = 0.1,
                    sample_metrics: Sequence[str] = SAMPLE_METRICS, sample_test: Tensor | None = None
                    ) -> dict[str, Any]:
    """Exact test NLL, KL with its test-set noise (when the density of ``name`` is known; ``None``: a data
    file), and ``sample_metrics`` (MMD, sliced-W) of ``num_chains`` MALA chains of ``num_steps`` steps (none
    run when ``sample_metrics`` is empty) against ``sample_test`` (default ``test``). For ``d > 2`` (no
    quadrature): the sample metrics and the sampler's acceptance only."""
    from ..data import toy
    from ..evaluation import evaluate_density_model, model_samples, sample_quality

    if len(bounds) > 2:
        x, acc = model_samples(energy, bounds, num_chains=num_chains, num_steps=num_steps, step_size=step_size,
                               generator=generator)
        return {**sample_quality(x, test if sample_test is None else sample_test, sample_metrics, generator),
                "sampler_acceptance": acc}
    with torch.no_grad():
        return evaluate_density_model(energy, test, bounds,
                                      true_density=toy.true_density(name) if name is not None else None,
                                      entropy=toy.entropy(name) if name is not None else None,
                                      resolution=resolution, generator=generator,
                                      num_chains=num_chains, num_steps=num_steps, step_size=step_size,
                                      sample_metrics=sample_metrics, sample_test=sample_test)


def mode_split(energy: nn.Module, name: str | None, bounds: list, *, resolution: int = 512) -> dict[str, Any]:
    """For data whose density is a Gaussian mixture (eight_gaussians): the model's exact KL by quadrature, split
    into the mode weights' share and the mode shapes' share (:func:`ebmlab.evaluation.kl_by_mode`, regions
    nearest to each component's mean): ``kl_by_quadrature``, ``kl_mode_weights``, ``kl_mode_shapes``,
    ``mode_masses`` (the model's mass on each mode's region) and ``mode_variance_ratios`` (each mode's
    variance over the data's). Empty for other data."""
    from ..data import toy
    from ..energies.targets.mixture import GaussianMixture
    from ..evaluation import kl_by_mode

    truth = toy.true_density(name) if name is not None else None
    if not isinstance(truth, GaussianMixture) or len(bounds) != 2:
        return {}
    with torch.no_grad():
        split = kl_by_mode(energy, truth, truth.means, bounds, resolution=resolution)
    return {"kl_by_quadrature": split.kl, "kl_mode_weights": split.kl_masses, "kl_mode_shapes": split.kl_within,
            "mode_masses": [round(float(v), 4) for v in split.masses_model],
            "mode_variance_ratios": [round(float(v), 3) for v in split.variance_ratio]}


def likelihood_metrics(log_prob: Tensor, name: str | None, test: Tensor) -> dict[str, Any]:
    """Test NLL and, when the density of ``name`` is known (``None``: a data file), KL with the test set's noise,
    from a model's
    per-point log-likelihoods ``log_prob`` of ``test`` (the definitions of
    :func:`~ebmlab.evaluation.evaluate_density_model`): ``kl = test_nll - true_nll`` on the same points,
    ``test_set_noise = true_nll - entropy``; ``test_nll_se`` is the NLL's standard error over the points,
    ``kl_se`` the paired difference's."""
    from ..data import toy

    nll = -log_prob.detach().double().cpu()
    out: dict[str, Any] = {"test_nll": float(nll.mean()), "test_nll_se": float(nll.std() / len(nll) ** 0.5)}
    true_density = toy.true_density(name) if name is not None else None
    if true_density is not None:
        true = true_density(test.detach().cpu().double())
        out.update({"true_nll": float(true.mean()), "kl": float((nll - true).mean()),
                    "kl_se": float((nll - true).std() / len(nll) ** 0.5)})
        entropy = toy.entropy(name)
        if entropy is not None:
            out.update({"entropy": entropy, "test_set_noise": out["true_nll"] - entropy})
    return out


def _diffusion_nll(model: nn.Module, config: dict[str, Any], test: Tensor, n: int,
                   generator: torch.Generator | None = None) -> dict[str, Any]:
    """:func:`likelihood_metrics` of the probability-flow ODE likelihood on the first ``n`` test points
    (``generator``: Hutchinson's probes, used only above :data:`ebmlab.sde.EXACT_DIVERGENCE_MAX_DIM` values)."""
    from ..sde import log_likelihood, score_model
    from .models import build_sde

    sde = build_sde(config["train"]["sde"])
    points = test[:n]
    ll, info = log_likelihood(score_model(model, sde), sde, points, return_info=True, generator=generator)
    return {**likelihood_metrics(ll, density_name(config["data"]), points), "nll_test_points": int(points.shape[0]),
            "nll_nfe": info.nfe}


def image_classifier(run_dir: str | Path, data: dict[str, Any]):
    """The run's evaluation classifier, trained once and cached in ``run_dir/classifier.safetensors``.

    Digits: on the digits' training split. 28x28 data: the same classifier
    architecture on the first :data:`CLASSIFIER_MAX_TRAIN_28` images of the
    full training split for :data:`CLASSIFIER_EPOCHS_28` epochs (deterministic).

    Args:
        run_dir: the run directory, where the classifier is cached.
        data: the config's ``data`` section (an image data set).
    """
    from ..data import ImageDataset
    from ..evaluation.images import load_or_train_classifier
    from .models import load_image_data

    path = Path(run_dir) / "classifier.safetensors"
    if data["name"] == "digits":
        return load_or_train_classifier(path, load_image_data(data, "train"), test=load_image_data(data, "test"))
    full = {**data, "n_train": None, "n_test": None}
    train, test = load_image_data(full, "train"), load_image_data(full, "test")
    k = min(len(train), CLASSIFIER_MAX_TRAIN_28)
    train = ImageDataset(images=train.images[:k], labels=train.labels[:k], name=train.name, scale=train.scale)
    return load_or_train_classifier(path, train, test=test, epochs=CLASSIFIER_EPOCHS_28)


def _image_metrics(run_dir: Path, data: dict[str, Any], test: Tensor, x: Tensor, step: int, generator,
                   classifier) -> dict[str, float]:
    """The classifier's metrics of samples ``x`` against the test images (``classifier=None``, own images:
    the pixel MMD only); writes ``samples_{step}.png``."""
    from ..evaluation.images import classifier_metrics, pixel_mmd, sample_grid
    from ..viz import save_figure

    x = x.detach().cpu()  # the classifier and its features live on the CPU
    if classifier is None:
        out = {"pixel_mmd": float(pixel_mmd(x, test.cpu(), generator=generator))}
    else:
        m = classifier_metrics(x, classifier, reference=test.cpu(), generator=generator)
        out = {k: float(m[k]) for k in _IMAGE_METRICS}
    save_figure(sample_grid(x[:64], nrow=8, title=f"samples after {step} steps"), run_dir / f"samples_{step}.png")
    return out


def _fixed_subset(points: Tensor, n: int, seed: int) -> Tensor:
    """``points`` when there are at most ``n`` of them, else ``n`` of them drawn without replacement by a
    generator seeded with ``seed`` (the same subset at every call)."""
    if points.shape[0] <= n:
        return points
    return points[torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def training_evaluator(config: dict[str, Any], run_dir: Path, test: Tensor) -> Callable[..., dict[str, Any]]:
    """What the training loop calls every ``eval_every`` steps, for the run ``config`` describes.

    EBMs get ``evaluate(model, step, negatives)`` (image EBMs: the current
    chains run 60 more steps, Du & Mordatch 2019), score models
    ``evaluate(model, step)``.
    """
    from ..evaluation import mmd, sliced_wasserstein
    from ..training import negatives as run_negatives
    from .run import EBM_IMAGE_EXTRA_STEPS, chain_sampler

    tr, data = config["train"], config["data"]
    g = torch.Generator().manual_seed(tr["seed"] + EVAL_SEED_OFFSET)
    kind = config["model"]["kind"]
    images = kind in ("conv", "score_conv")
    if images:
        state: dict[str, Any] = {}

        def classifier():
            if "path" in data:  # own images: no classifier
                return None
            if "clf" not in state:
                state["clf"] = image_classifier(run_dir, data)
            return state["clf"]

        if kind == "conv":
            sampler = chain_sampler(tr, images=True)

            def evaluate_image_ebm(model, step, negatives):
                x = run_negatives(model, sampler, negatives[:IMAGE_EBM_EVAL_CHAINS], EBM_IMAGE_EXTRA_STEPS,
                                  generator=g)[0]
                return _image_metrics(run_dir, data, test, x, step, g, classifier())

            return evaluate_image_ebm

        def evaluate_image_score(model, step):
            x = score_samples(model, config, IMAGE_SCORE_EVAL_SAMPLES, g)
            return _image_metrics(run_dir, data, test, x, step, g, classifier())

        return evaluate_image_score
    bounds = [tuple(b) for b in data["bounds"]]
    name = density_name(data)
    mmd_test = _fixed_subset(test, TRAINING_MMD_POINTS, tr["seed"] + EVAL_SEED_OFFSET)
    if kind == "mlp":
        def evaluate_2d(model, step, negatives):  # noqa: ARG001 - 2-D models are sampled afresh
            row = density_metrics(model, name, test, bounds, resolution=256, generator=g, num_chains=500,
                                  num_steps=200, step_size=tr["step_size"], sample_metrics=("mmd",),
                                  sample_test=mmd_test)
            return {k: row[k] for k in ("test_nll", "kl", "mmd") if k in row}

        return evaluate_2d

    def evaluate_score(model, step):  # noqa: ARG001
        x = score_samples(model, config, 1000, g)
        row = {"mmd": mmd(x, mmd_test, generator=g), "sliced_w": sliced_wasserstein(x, test, generator=g)}
        if tr["method"] in SDE_METHODS:  # a density by the probability-flow ODE: NLL and KL as for the EBMs
            ev = _diffusion_nll(model, config, test, DIFFUSION_NLL_POINTS["training"], generator=g)
            row.update({k: ev[k] for k in ("test_nll", "kl") if k in ev})
        if kind == "energy_score" and len(bounds) <= 2:  # an energy: exact NLL by quadrature
            row["test_nll"] = density_metrics(model.energy, name, test, bounds, resolution=256,
                                              generator=g, sample_metrics=())["test_nll"]
        return row

    return evaluate_score


#: Why :func:`evaluate` leaves a metric out (its ``skipped``).
SKIP_REASONS = {
    "quadrature": "the test NLL is exact by quadrature for d <= 2 only; the data have d = {d}",
    "density": "the data's density is unknown (KL needs it)",
    "score": "a direct score model has no normalised density (ism, sde-ve and sde-vp runs have one)",
    "plot": "the figures draw 2-D points; the data have d = {d}",
    "classifier": "no classifier for own images (ebmlab has one for digits, mnist and fashion_mnist only)",
    "levels": "the pixels' quantisation is unknown (floating-point source images)",
}


def evaluate(run: Run | str | Path, *, seed: int = 0, plot: bool = False, device: str | torch.device = "cpu"
             ) -> dict[str, Any]:
    """Evaluate a trained run: the dict that ``ebmlab evaluate --json`` prints.

    Args:
        run: a :class:`Run` or its directory.
        seed: randomness of the model's chains and of the MMD subsets.
        plot: write the run's figure (``density.png``, ``samples.png`` or
            ``nearest_neighbours.png``) into the run directory.
        device: where to load the run when given as a directory.

    Returns:
        ``run_dir``, ``step``, ``data``, the metrics of its kind (see the module docstring)
        and ``skipped``: each metric left out (e.g. ``test_nll`` for ``d > 2``, ``kl``
        when the data's density is unknown) mapped to the reason (:data:`SKIP_REASONS`).

    Raises:
        FileNotFoundError, ValueError: for a run that cannot be opened (see :meth:`Run.load`), or
            a data file that is gone or changed since the run was trained.
    """
    if not isinstance(run, Run):
        run = Run.load(run, device=device)
    train, test = run.data()
    if run.is_image:
        return _evaluate_images(run, train, test, seed=seed, plot=plot)
    g = torch.Generator().manual_seed(seed)
    data, tr = run.config["data"], run.config["train"]
    name, known, dim = data["name"], density_name(data), int(test.shape[1])
    head = {"run_dir": str(run.path), "step": run.step, "data": name}
    skipped: dict[str, str] = {}
    if run.is_score:
        from ..evaluation import mmd, sliced_wasserstein

        x = run.sample(2000, generator=g)
        result = {**head, "method": run.method, "mmd": mmd(x, test, generator=g),
                  "sliced_w": sliced_wasserstein(x, test, generator=g)}
        if run.is_diffusion:  # exact likelihood by the probability-flow ODE, on a capped number of test points
            result.update(_diffusion_nll(run.model, run.config, test, DIFFUSION_NLL_POINTS["evaluate"], generator=g))
        if run.energy is not None and dim <= 2:
            ev = density_metrics(run.energy, known, test, run.bounds, resolution=512, generator=g,
                                 sample_metrics=())
            result.update({k: ev[k] for k in ("test_nll", "log_z", "true_nll", "kl", "kl_se", "entropy", "test_set_noise")
                           if k in ev})
        elif run.energy is not None:
            skipped["test_nll"] = SKIP_REASONS["quadrature"].format(d=dim)
        elif not run.is_diffusion:
            skipped["test_nll"] = SKIP_REASONS["score"]
        if "test_nll" in result and "kl" not in result:
            skipped["kl"] = SKIP_REASONS["density"]
        if plot and dim == 2:
            from ..viz import save_figure, scatter_pair

            fig = scatter_pair(test, x, f"{run.method} on {name} after {run.step} steps: MMD^2 {result['mmd']:.2e}")
            result["plot"] = str(save_figure(fig, run.path / "samples.png"))
        elif plot:
            skipped["plot"] = SKIP_REASONS["plot"].format(d=dim)
        return {**result, "skipped": skipped}
    result = {**head, **density_metrics(run.model, known, test, run.bounds, resolution=512, generator=g,
                                        num_chains=2000, num_steps=1000, step_size=tr["step_size"])}
    if "kl" in result:
        result.update(mode_split(run.model, known, run.bounds))
    if "test_nll" not in result:
        skipped["test_nll"] = SKIP_REASONS["quadrature"].format(d=dim)
    elif "kl" not in result:
        skipped["kl"] = SKIP_REASONS["density"]
    if plot and dim == 2:
        from ..viz import plot_samples, save_figure

        x = run.sample(2000, generator=g)
        fig = plot_samples(run.model, x, run.bounds, title=f"model of {name} after {run.step} steps: "
                           f"test NLL {result['test_nll']:.3f}, MMD^2 {result['mmd']:.2e}", generator=g,
                           density_label="model")
        result["plot"] = str(save_figure(fig, run.path / "density.png"))
    elif plot:
        skipped["plot"] = SKIP_REASONS["plot"].format(d=dim)
    return {**result, "skipped": skipped}


def _evaluate_images(run: Run, train: Tensor, test: Tensor, *, seed: int, plot: bool) -> dict[str, Any]:
    """Images (EBMs and score models alike): classifier metrics of samples (where a classifier exists),
    pixel MMD, sample and nearest-neighbour grids."""
    from ..evaluation.images import classifier_metrics, nearest_neighbour_grid, nearest_neighbours
    from ..viz import save_figure

    g = torch.Generator().manual_seed(seed)
    data = run.config["data"]
    own = "path" in data
    skipped: dict[str, str] = {}
    if run.is_score:
        n = EVAL_IMAGE_SAMPLES["score"]
    else:  # the run's chains (all of them, up to the cap); cd / short-run: fresh uniform noise
        chains = run.chains()
        n = EVAL_IMAGE_SAMPLES["ebm"] if chains is None else min(EVAL_IMAGE_SAMPLES["ebm"], chains.shape[0])
    x = run.sample(n, generator=g).detach().cpu()
    clf = None if own else image_classifier(run.path, data)
    metrics = _image_metrics(run.path, data, test, x, run.step, g, clf)
    train = train.cpu()
    dist, _ = nearest_neighbours(x[:EVAL_NEAREST], train)
    result = {"run_dir": str(run.path), "step": run.step, "data": data["name"], "method": run.method,
              "samples": int(x.shape[0]), **metrics}
    if clf is not None:
        result.update({"class_fractions": classifier_metrics(x, clf)["class_fractions"],  # per predicted class
                       "classifier_train_images": int(clf.info["train_size"]),
                       "classifier_test_accuracy": clf.info.get("test_accuracy")})
    else:
        for key in (*(k for k in _IMAGE_METRICS if k != "pixel_mmd"), "class_fractions"):
            skipped[key] = SKIP_REASONS["classifier"]
    result.update({"nearest_train_distance_min": float(dist.min()), "nearest_train_distance_mean": float(dist.mean()),
                   "samples_plot": str(run.path / f"samples_{run.step}.png")})
    levels = data.get("pixel_levels") if own else PIXEL_LEVELS[data["name"]]
    if run.is_diffusion and levels is None:
        skipped["bits_per_dim"] = SKIP_REASONS["levels"]
    elif run.is_diffusion:  # bits/dim by dequantisation and the probability-flow ODE (Song et al. 2021, sec. 4.3)
        from ..sde import bits_per_dim

        images = test[:DIFFUSION_BPD_IMAGES]
        bpd = bits_per_dim(run.score, run.sde, images, generator=g, num_levels=levels,
                           data_range=tuple(data.get("range", (-1.0, 1.0)))).double().cpu()
        result.update({"bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / len(bpd) ** 0.5),
                       "bpd_test_images": int(images.shape[0]), "pixel_levels": levels})
    if plot:
        result["plot"] = str(save_figure(nearest_neighbour_grid(x[:16], train), run.path / "nearest_neighbours.png"))
    return {**result, "skipped": skipped}
