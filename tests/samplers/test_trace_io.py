"""Trace.save / Trace.load (safetensors + JSON metadata, never pickle) and Trace.to_arviz (ArviZ's axes, ESS and
R-hat equal to ebmlab's own)."""

from __future__ import annotations

import dataclasses
import pickle
import sys

import numpy as np
import pytest
import torch

import ebmlab
from ebmlab.evaluation import ess_bulk, rhat
from ebmlab.samplers import AnnealedLangevin, AnnealedState, PTState, State, Trace, exact_perturbed_score


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same(a, b, where: str = "") -> None:
    """Equal values, recursively through states, tuples, dicts; tensors equal in dtype, shape and value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()), \
            where
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _roundtrip(trace: Trace, tmp_path) -> Trace:
    path = trace.save(tmp_path / "trace.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header (8-byte length, then JSON), not a pickle
    back = Trace.load(path)
    _assert_same(trace, back, "trace")
    return back


def test_a_mala_trace_round_trips_with_its_extras(tmp_path):
    banana = ebmlab.targets.get("banana")
    trace = ebmlab.sample(banana, ebmlab.MALA(0.3), torch.randn(20, 2, generator=_g()), 60, burn_in=10, thin=2,
                          generator=_g(1))
    trace.extras.update(note="from a test", weights=torch.arange(3.0), nested={"a": [1, 2.5, None]})
    back = _roundtrip(trace, tmp_path)
    assert back.num_grad_evals is None and back.divergences is None and back.moments is None  # None stays None
    assert type(back.final_state) is State and back.final_state.score is not None
    assert back.samples.shape == (25, 20, 2) and back.num_steps == 60 and back.burn_in == 10


def test_nuts_fields_and_a_float64_trace_round_trip(tmp_path):
    target = ebmlab.targets.get("standard")
    x0 = torch.randn(10, 2, generator=_g(), dtype=torch.float64)
    trace = ebmlab.sample(target, ebmlab.NUTS(0.5, max_tree_depth=4), x0, 30, burn_in=5, generator=_g(1))
    assert trace.num_grad_evals is not None and trace.mean_tree_depth is not None
    back = _roundtrip(trace, tmp_path)
    assert back.samples.dtype == torch.float64 and back.divergences.dtype == trace.divergences.dtype


def test_a_stats_trace_keeps_its_moments(tmp_path):
    trace = ebmlab.sample(ebmlab.targets.get("banana"), ebmlab.MALA(0.3), torch.randn(8, 2, generator=_g()), 50,
                          burn_in=5, generator=_g(1), keep="stats", max_kept=10)
    assert trace.moments is not None and trace.moments["cov"] is not None
    back = _roundtrip(trace, tmp_path)
    assert back.moments["count"] == 45 * 8 and back.moments["thin"] == trace.moments["thin"] > 1


def test_parallel_tempering_and_annealed_states_round_trip(tmp_path):
    two = ebmlab.targets.GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], [0.3, 0.3], [0.5, 0.5])
    pt = ebmlab.ParallelTempering(ebmlab.MALA(0.4), num_temperatures=3, max_temperature=8.0)
    trace = ebmlab.sample(two, pt, torch.randn(6, 2, generator=_g()), 40, generator=_g(1))
    assert isinstance(trace.final_state, PTState)
    _roundtrip(trace, tmp_path)
    mixture = ebmlab.targets.get("song_ermon_mixture")
    annealed = AnnealedLangevin(sigmas=(5.0, 1.0, 0.1), steps_per_level=3, eps=0.01)
    trace = ebmlab.sample(exact_perturbed_score(mixture), annealed, torch.randn(5, 2, generator=_g()), 9,
                          generator=_g(1))
    assert isinstance(Trace.load(trace.save(tmp_path / "a.safetensors")).final_state, AnnealedState)
    _roundtrip(trace, tmp_path)


def test_what_cannot_be_stored_is_named_and_own_states_keep_x_and_energy(tmp_path):
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.MALA(0.5), torch.randn(4, 2, generator=_g()), 5,
                          generator=_g(1))
    trace.extras["fn"] = print
    with pytest.raises(TypeError, match=r"extras\['fn'\] is a builtin_function_or_method"):
        trace.save(tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()
    del trace.extras["fn"]

    @dataclasses.dataclass(frozen=True)
    class MyState:
        x: torch.Tensor
        energy: torch.Tensor
        momentum: torch.Tensor

    s = trace.final_state
    trace.final_state = MyState(s.x, s.energy, torch.zeros_like(s.x))
    back = Trace.load(trace.save(tmp_path / "t.safetensors"))
    assert type(back.final_state) is State and torch.equal(back.final_state.x, s.x) and back.final_state.score is None


def test_a_path_named_for_another_format_is_refused_before_anything_is_written(tmp_path):
    # `ebmlab sample --out samples.npz` writes NumPy; Trace.save("t.npz") would write safetensors under that name,
    # which np.load then fails to read. Any other suffix (or none) is a trace file's name.
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.MALA(0.5), torch.randn(4, 2, generator=_g()), 5,
                          generator=_g(1))
    for name, what in (("t.npz", "NumPy .npz"), ("t.PT", "torch.save"), ("t.nc", "NetCDF")):
        with pytest.raises(ValueError, match=f"writes a safetensors file, not a.*{what}.*use a .safetensors path"):
            trace.save(tmp_path / name)
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.iterdir())
    for name in ("t.trace", "t"):
        assert torch.equal(Trace.load(trace.save(tmp_path / name)).samples, trace.samples)


def test_loading_never_unpickles_and_refuses_other_files(tmp_path, monkeypatch):
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.MALA(0.5), torch.randn(4, 2, generator=_g()), 5,
                          generator=_g(1))
    path = trace.save(tmp_path / "t.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    Trace.load(path)
    monkeypatch.undo()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not an ebmlab trace"):
        Trace.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Trace.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no trace file"):
        Trace.load(tmp_path / "gone.safetensors")


def _offset_chains_trace() -> Trace:
    """Chains that differ: chain c is centred at 3c, so a chain/draw swap changes every statistic."""
    x0 = torch.randn(4, 2, generator=_g())
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.MALA(0.9), x0, 400, burn_in=100, generator=_g(1))
    shift = 3.0 * torch.arange(4.0).reshape(1, 4, 1)
    return dataclasses.replace(trace, samples=trace.samples + shift)


def test_to_arviz_has_arviz_axes_and_ebmlab_diagnostics():
    az = pytest.importorskip("arviz")
    trace = _offset_chains_trace()
    idata = trace.to_arviz()
    x = idata.posterior["x"]
    assert x.dims[:2] == ("chain", "draw") and x.shape == (4, 300, 2)
    for c in range(4):
        assert np.array_equal(x.sel(chain=c).values, trace.samples[:, c].numpy())
    assert np.allclose(idata.sample_stats["lp"].values, -trace.energies.T.numpy())
    acc = idata.sample_stats["acceptance_rate"]
    assert acc.dims == ("chain",) and np.allclose(acc.values, trace.acceptance_rate.numpy())
    assert "energy" not in idata.sample_stats  # ArviZ's "energy" is HMC's Hamiltonian (BFMI), not E(x)
    assert idata.posterior.attrs["num_steps"] == 400 and idata.posterior.attrs["burn_in"] == 100
    ess_az = az.ess(idata, method="bulk")["x"].values
    rhat_az = az.rhat(idata, method="rank")["x"].values
    assert np.allclose(ess_az, ess_bulk(trace.samples), rtol=1e-6)
    assert np.allclose(rhat_az, rhat(trace.samples), rtol=1e-6)
    assert rhat_az.min() > 2  # the chains disagree: ArviZ sees them as chains, not as draws
    summary = az.summary(idata)
    assert np.allclose(summary["ess_bulk"].values, np.round(ess_bulk(trace.samples)), atol=1)
    assert np.allclose(summary["r_hat"].values, np.round(rhat(trace.samples), 2), atol=0.011)


def test_to_arviz_keeps_nuts_per_chain_statistics():
    pytest.importorskip("arviz")
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.NUTS(0.5, max_tree_depth=4),
                          torch.randn(3, 2, generator=_g()), 20, burn_in=5, generator=_g(1))
    stats = trace.to_arviz(var_name="theta").sample_stats
    for name in ("mean_tree_depth", "divergences", "num_grad_evals"):
        assert stats[name].dims == ("chain",)
        assert np.allclose(stats[name].values, getattr(trace, name).numpy())


def test_to_arviz_without_arviz_says_how_to_get_it(monkeypatch):
    trace = ebmlab.sample(ebmlab.targets.get("standard"), ebmlab.MALA(0.5), torch.randn(2, 2, generator=_g()), 5,
                          generator=_g(1))
    monkeypatch.setitem(sys.modules, "arviz", None)  # `import arviz` raises ImportError
    with pytest.raises(ImportError) as err:
        trace.to_arviz()
    assert str(err.value) == "Trace.to_arviz needs ArviZ: pip install 'ebmlab[arviz]'"


def test_repr_is_one_line_of_shapes_and_rates_not_the_tensors():
    g = torch.Generator().manual_seed(0)
    banana = ebmlab.targets.get("banana")
    x0 = torch.randn(300, 2, generator=g)
    trace = ebmlab.sample(banana, ebmlab.MALA(0.5), x0, 50, burn_in=10, generator=g)
    trace.extras["note"] = "x"
    text = repr(trace)
    rate = float(trace.acceptance_rate.mean())
    assert text == (f"Trace(samples=(40, 300, 2) float32, num_steps=50 (burn_in=10), seconds={trace.seconds:.3g}, "
                    f"acceptance_rate={rate:.3f} (mean over chains), extras=['note'])")
    nuts = ebmlab.sample(banana, ebmlab.NUTS(0.3), x0.double(), 5, generator=g)
    text = repr(nuts)
    assert "\n" not in text and len(text) < 300
    assert f"divergences={int(nuts.divergences.sum())}" in text
    assert f"mean_tree_depth={float(nuts.mean_tree_depth.mean()):.2f}" in text


def test_states_and_results_print_shapes_not_their_rows():
    g = torch.Generator().manual_seed(0)
    banana = ebmlab.targets.get("banana")
    x0 = torch.randn(5000, 2, generator=g)
    state = ebmlab.MALA(0.5).init(banana, x0)
    assert repr(state) == ("State(x=<tensor (5000, 2) float32>, energy=<tensor (5000,) float32>, "
                           "score=<tensor (5000, 2) float32>)")
    small = State(x=torch.zeros(2, 2), energy=torch.zeros(2))  # a few numbers are shown; a None field is left out
    assert repr(small) == f"State(x={torch.zeros(2, 2)!r}, energy={torch.zeros(2)!r})"
    tuned = ebmlab.adapt(banana, ebmlab.MALA(0.1), x0[:300], 40, generator=g)
    text = repr(tuned)
    assert "<tensor (300, 2) float32>" in text and f"step_size={tuned.step_size!r}" in text and len(text) < 400
    trace = ebmlab.sample(banana, ebmlab.ParallelTempering(ebmlab.MALA(0.3), num_temperatures=4), x0[:300], 5,
                          generator=g)
    text = repr(trace.final_state)
    assert text.startswith("PTState(base=State(x=<tensor (1200, 2) float32>") and "machine=<tensor (4, 300) int64>" in text
    _, info = ebmlab.NUTS(0.3).step(banana, ebmlab.NUTS(0.3).init(banana, x0.double()), generator=g)
    assert repr(info).startswith("Info(proposal=<tensor (5000, 2) float64>") and "trajectory" not in repr(info)
    assert "step=" in repr(AnnealedState(x=x0, energy=torch.zeros(5000), score=x0))
