"""Image-sample metrics: the digit classifier, what it says about real and noise images, the memorisation check."""

from __future__ import annotations

import json

import pytest
import torch
from matplotlib.figure import Figure

from ebmlab.data import load_digits
from ebmlab.evaluation import classifier as classifier_module
from ebmlab.evaluation.images import (
    classifier_accuracy,
    classifier_metrics,
    feature_mmd,
    load_or_train_classifier,
    nearest_neighbour_grid,
    nearest_neighbours,
    pixel_mmd,
    sample_grid,
    train_classifier,
)

EPOCHS = 20


@pytest.fixture(scope="module")
def digits():
    return load_digits(split="train"), load_digits(split="test")


@pytest.fixture(scope="module")
def classifier(digits):
    return train_classifier(digits[0], epochs=EPOCHS, seed=0)


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_classifier_is_accurate_on_the_test_split(classifier, digits):
    assert classifier_accuracy(classifier, digits[1].images, digits[1].labels) >= 0.95


def test_classifier_training_is_deterministic_and_leaves_global_rng_alone(digits):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = train_classifier(digits[0], epochs=2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = train_classifier(digits[0], epochs=2, seed=0)
    for (k, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    other = train_classifier(digits[0], epochs=2, seed=1)
    assert not torch.equal(other.head.weight, first.head.weight)


def test_metrics_on_real_digits(classifier, digits):
    m = classifier_metrics(digits[1].images, classifier)
    assert m["mean_max_prob"] >= 0.9
    assert len(m["class_fractions"]) == 10
    assert sum(m["class_fractions"]) == pytest.approx(1.0)
    assert min(m["class_fractions"]) >= 0.05
    assert m["min_class_fraction"] == min(m["class_fractions"])


def test_metrics_on_noise_are_worse(classifier, digits):
    real = classifier_metrics(digits[1].images, classifier)
    noise = classifier_metrics(noise_images(500), classifier)
    assert noise["mean_max_prob"] < real["mean_max_prob"] - 0.1 or noise["min_class_fraction"] < 0.05
    assert noise["mean_entropy"] > real["mean_entropy"]


def test_non_finite_samples_count_as_failures(classifier, digits):
    x = digits[1].images[:10].clone()
    x[:5] = float("nan")
    m = classifier_metrics(x, classifier)
    assert m["finite_fraction"] == 0.5
    assert sum(m["class_fractions"]) == pytest.approx(0.5)
    assert m["mean_max_prob"] <= 0.5


def test_feature_and_pixel_mmd_separate_digits_from_noise(classifier, digits):
    train, test = digits
    g = torch.Generator().manual_seed(0)
    close = feature_mmd(test.images, train.images, classifier, generator=g)
    far = feature_mmd(noise_images(len(test)), train.images, classifier, generator=g)
    assert abs(close) < 0.02 and far > 0.1 and far > 10 * abs(close)
    assert abs(pixel_mmd(test.images, train.images, generator=g)) < 0.02
    assert pixel_mmd(noise_images(len(test)), train.images, generator=g) > 0.1
    m = classifier_metrics(test.images, classifier, reference=train.images, generator=g)
    assert {"feature_mmd", "pixel_mmd"} <= m.keys()


def test_nearest_neighbour_of_a_training_image_is_itself(digits):
    train = digits[0].images
    idx = torch.tensor([0, 5, 100, len(train) - 1])
    d, j = nearest_neighbours(train[idx], train, k=3)
    assert d.shape == j.shape == (4, 3)
    assert torch.equal(d[:, 0], torch.zeros(4, dtype=d.dtype))
    assert torch.equal(j[:, 0], idx)
    assert (d[:, 1:] >= d[:, :1]).all() and (d[:, 2] >= d[:, 1]).all()
    brute = (train[idx[1]] - train).flatten(1).norm(dim=1).double()
    assert torch.allclose(d[1], brute.sort().values[:3])


def test_classifier_cache_roundtrip_without_retraining(tmp_path, digits, monkeypatch):
    train, test = digits
    path = tmp_path / "run" / "classifier.safetensors"
    first = load_or_train_classifier(path, train, test=test, epochs=2)
    assert not first.info["loaded"]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["architecture"]["class"] == "DigitClassifier" and side["epochs"] == 2
    assert side["test_accuracy"] == pytest.approx(classifier_accuracy(first, test.images, test.labels))
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)  # where load_or_train_classifier looks it up
    second = load_or_train_classifier(path, train, test=test, epochs=2)
    assert second.info["loaded"]
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(AssertionError, match="retrained"):  # different settings: not reused
        load_or_train_classifier(path, train, test=test, epochs=3)


@pytest.mark.parametrize("damage", ["truncated weights", "sidecar not JSON", "sidecar a list", "huge sidecar",
                                    "sidecar without architecture"])
def test_an_unreadable_classifier_cache_is_retrained_with_a_warning(tmp_path, digits, damage):
    train, test = digits
    path = tmp_path / "classifier.safetensors"
    side = path.with_suffix(".json")
    first = load_or_train_classifier(path, train, test=test, epochs=2)
    if damage == "truncated weights":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "sidecar not JSON":
        side.write_text("{not json")
    elif damage == "sidecar a list":
        side.write_text("[1, 2]")
    elif damage == "huge sidecar":  # never read whole: the first MAX_SIDECAR_BYTES + 1 bytes decide
        side.write_text(" " * classifier_module.MAX_SIDECAR_BYTES + side.read_text())
    else:
        info = json.loads(side.read_text())
        side.write_text(json.dumps({k: v for k, v in info.items() if k != "architecture"}))
    if damage == "sidecar without architecture":  # other settings than asked: retrained, no warning needed
        again = load_or_train_classifier(path, train, test=test, epochs=2)
    else:
        with pytest.warns(RuntimeWarning, match="cannot be read.*retraining it"):
            again = load_or_train_classifier(path, train, test=test, epochs=2)
    assert not again.info["loaded"]
    for (k, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k  # deterministic training: the same classifier
    assert load_or_train_classifier(path, train, test=test, epochs=2).info["loaded"]  # the cache is whole again


def test_figures(digits):
    train = digits[0].images
    fig = sample_grid(train[:20], nrow=8)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    fig = nearest_neighbour_grid(noise_images(6), train, n=16)
    assert isinstance(fig, Figure) and len(fig.axes) == 6


def test_images_module_still_offers_every_name():
    from ebmlab.evaluation import classifier, image_figures, image_metrics, images

    for module in (classifier, image_metrics, image_figures):
        for name in module.__all__:
            if name not in ("check_images", "classifier_apply"):  # helpers of the split, not image metrics
                assert getattr(images, name) is getattr(module, name), name
    assert set(images.__all__) >= {"DigitClassifier", "digits_evaluator", "classifier_accuracy", "classifier_features",
                                   "classifier_metrics", "feature_mmd", "load_or_train_classifier",
                                   "nearest_neighbour_grid", "nearest_neighbours", "pixel_mmd", "sample_grid",
                                   "train_classifier"}
