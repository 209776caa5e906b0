"""The playground's REST endpoints and WebSocket protocol, through FastAPI's TestClient
(and its Session directly where a test needs many steps without the time budget)."""

import base64
import io
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ebmlab.energies import targets  # noqa: E402
from ebmlab.playground.app import DEFAULTS, LIMITS, Registry, Session, create_app, load_models  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app()) as c:
        yield c


def configure(ws, **settings):
    ws.send_json({"type": "configure", **settings})
    msg = ws.receive_json()
    assert msg["type"] == "configured", msg
    return msg


def step(ws, n):
    ws.send_json({"type": "step", "n": n})
    msg = ws.receive_json()
    assert msg["type"] == "frames", msg
    return msg


def error_of(ws, payload):
    ws.send_text(payload if isinstance(payload, str) else json.dumps(payload))
    msg = ws.receive_json()
    assert msg["type"] == "error", msg
    return msg["message"]


# --------------------------------------------------------------------------- REST


def test_targets_lists_every_2d_analytic_target_with_bounds(client):
    info = client.get("/api/targets").json()
    names = {t["name"]: t for t in info["targets"]}
    assert set(targets.names()) <= set(names)
    assert names["banana"]["bounds"] == [list(b) for b in targets.get("banana").bounds]
    assert info["product"] == "product"
    assert set(info["algorithms"]) == {"rwmh", "ula", "mala", "hmc", "nuts", "pt", "rejection", "annealed", "diffusion"}


def test_targets_list_what_each_target_can_run(client):
    info = client.get("/api/targets").json()
    names = {t["name"]: t for t in info["targets"]}
    energies = ["rwmh", "ula", "mala", "hmc", "nuts", "pt", "rejection"]
    # Gaussians and Gaussian mixtures have an exact noise-conditional score and exact diffusion scores
    # (under both SDEs); the others only an energy.
    for name in ("song_ermon_mixture", "eight_gaussians", "multimodal", "standard", "ill_conditioned"):
        assert names[name]["algorithms"] == [*energies, "annealed", "diffusion"], name
        schedule = names[name]["annealed"]
        assert schedule["sigma_min"] < schedule["sigma_max"] and 0 < schedule["eps"] <= LIMITS["max_eps"]
        assert names[name]["diffusion"]["sdes"] == ["vp", "ve"], name
    for name in ("banana", "donut", "funnel", "rings", "squiggle"):
        assert names[name]["algorithms"] == energies and names[name]["annealed"] is None, name
        assert names[name]["diffusion"] is None, name
    assert all(t["density"] for t in info["targets"])
    assert info["product_algorithms"] == energies
    # Song & Ermon's rule: sigma_max about the largest distance between two draws (modes 14.1 apart).
    assert 17 < names["song_ermon_mixture"]["annealed"]["sigma_max"] < 24


def test_density_is_normalised_with_marginals(client):
    d = client.get("/api/density", params={"target": "banana", "resolution": 32}).json()
    dens = np.array(d["density"])
    assert dens.shape == (32, 32)
    (a, b), (c, e) = d["bounds"]
    cell = (b - a) / 32 * (e - c) / 32
    assert dens.sum() * cell == pytest.approx(1.0, abs=1e-3)
    m1, m2 = (np.array(m) for m in d["marginals"])
    assert m1.shape == m2.shape == (32,)
    assert m1.sum() * (b - a) / 32 == pytest.approx(1.0, abs=1e-3)
    assert len(d["levels"]) == 3 and d["levels"][0] > d["levels"][1] > d["levels"][2] > 0


def test_density_body_is_the_density_encoded_once():
    """/api/density sends Registry.density as JSON, encoded once per grid and reused (not per request)."""
    reg = Registry()
    with TestClient(create_app()) as c:
        r = c.get("/api/density", params={"target": "donut", "resolution": 24, "temperature": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(json.dumps(reg.density("donut", 24, temperature=2.0)))
    body = reg.density_json("donut", 24, temperature=2.0)
    assert json.loads(body) == r.json()
    assert reg.density_json("donut", 24, temperature=2.0) is body  # cached bytes, not re-encoded
    assert reg.density_json("donut", 24, "x", "y", temperature=2.00001) is body  # experts ignored, T rounded


def test_density_of_a_product(client):
    d = client.get("/api/density", params={"target": "product", "expert1": "banana", "expert2": "standard",
                                           "resolution": 16}).json()
    assert np.array(d["density"]).shape == (16, 16)


@pytest.mark.parametrize("params,status", [
    ({"target": "nope", "resolution": 32}, 404),
    ({"target": "/etc/passwd", "resolution": 32}, 404),
    ({"target": "banana", "resolution": 100000}, 422),
    ({"target": "banana", "resolution": 2}, 422),
    ({"target": "banana", "resolution": "x"}, 422),
    ({"target": "product", "expert1": "nope", "expert2": "banana", "resolution": 16}, 422),
])
def test_density_rejects_bad_parameters(client, params, status):
    r = client.get("/api/density", params=params)
    assert r.status_code == status
    assert r.json()["detail"]


def test_index_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="algorithm"' in page.text
    for f in ("app.js", "style.css"):
        assert client.get(f"/static/{f}").status_code == 200


# --------------------------------------------------------------------------- websocket


def test_step_frames_have_the_documented_shape(client):
    with client.websocket_connect("/ws") as ws:
        cfg = configure(ws, algorithm="mala", target="banana", chains=3, step_size=0.3, seed=1)
        assert cfg["reset"] is True and len(cfg["x"]) == 3
        assert cfg["diagnostics"]["num_samples"] == 0
        msg = step(ws, 5)
        assert len(msg["frames"]) == 5 and msg["truncated"] is False
        for f in msg["frames"]:
            assert np.array(f["x"]).shape == (3, 2)
            assert np.array(f["proposal"]).shape == (3, 2)
            assert len(f["accepted"]) == 3 and all(isinstance(a, bool) for a in f["accepted"])
            assert "trajectory" not in f
        d = msg["diagnostics"]
        assert d["num_samples"] == 15 and d["num_steps"] == 5
        assert 0.0 <= d["acceptance_rate"] <= 1.0
        assert d["ess"] is not None and d["ess"] > 0
        assert d["rhat"] is not None and d["kl"] is not None


def _fresh_costly(session, run=0):
    """ESS, R-hat and KL of a run's kept draws computed now, bypassing the refresh rule."""
    chains = session.runs[run]
    chains.costly = None
    d = chains.diagnostics(session.model, session.settings["histogram_bins"])
    return d["ess"], d["rhat"], d["kl"]


def test_costly_diagnostics_follow_the_refresh_rule():
    """ESS, R-hat and KL are reused between refreshes, never older than the rule allows, recomputed
    when the bins change, and equal to a fresh computation at the step they name."""
    session = Session(Registry())
    session.configure({"algorithm": "mala", "target": "banana", "chains": 4, "seed": 3})
    refreshed, stale_seen = [], False
    for _ in range(1200):  # past diag_max_draws: the window slides
        d = session.step(1)["diagnostics"]
        n, at = d["num_steps"], d["diagnosed_step"]
        window = min(d["kept_draws"], LIMITS["diag_max_draws"])
        assert at is not None and 0 <= n - at < max(1, math.ceil(LIMITS["diag_refresh"] * window))
        if at == n:
            refreshed.append(n)
            if n >= 4 and n % 7 == 0:  # a sample of the refreshes: the reply equals a fresh computation
                assert (d["ess"], d["rhat"], d["kl"]) == _fresh_costly(session)
        else:
            stale_seen = True
    assert stale_seen and 40 < len(refreshed) < 200  # about 1200 / 20 after the window filled
    assert refreshed[:10] == list(range(1, 11))  # every step while the window is small
    before = session.step(1)["diagnostics"]
    session.configure({"histogram_bins": 20})
    after = session.diagnostics()
    assert after["diagnosed_step"] == before["num_steps"] and after["kl"] != before["kl"]
    assert after["kl"] == _fresh_costly(session)[2]


def test_mala_on_banana_accepts_in_range_and_stays_in_bounds(client):
    (lo1, hi1), (lo2, hi2) = targets.get("banana").bounds
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="mala", target="banana", chains=8, step_size=0.3, seed=0)
        xs = []
        while len(xs) < 200:  # a message stops at its time budget (truncated) on a loaded machine: go on
            xs += [f["x"] for f in step(ws, 200 - len(xs))["frames"]]
        d = step(ws, 1)["diagnostics"]
    assert 0.5 <= d["acceptance_rate"] <= 0.99
    x = np.array(xs)
    assert x.shape == (200, 8, 2)
    assert (x[..., 0] >= lo1).all() and (x[..., 0] <= hi1).all()
    assert (x[..., 1] >= lo2).all() and (x[..., 1] <= hi2).all()
    assert d["num_samples"] == 201 * 8


@pytest.mark.parametrize("algorithm", ["rwmh", "ula", "mala", "hmc", "nuts", "pt", "rejection"])
@pytest.mark.parametrize("target", ["standard", "eight_gaussians", "product"])
def test_every_algorithm_on_targets_and_products(client, algorithm, target):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm=algorithm, target=target, expert1="donut", expert2="standard",
                  chains=4, step_size=0.2, leapfrog_steps=5, seed=3)
        msg = step(ws, 10)
    assert 1 <= len(msg["frames"]) <= 10
    d = msg["diagnostics"]
    assert 0.0 < d["acceptance_rate"] <= 1.0
    assert all(math.isfinite(v) for f in msg["frames"] for row in f["x"] for v in row)
    if algorithm == "hmc":
        assert np.array(msg["frames"][0]["trajectory"]).shape == (4, 6, 2)  # (chains, L + 1, 2)
    if algorithm == "ula":
        assert d["acceptance_rate"] == 1.0


def test_hmc_trajectory_only_when_animating(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="hmc", target="banana", chains=2, step_size=0.1, animate_proposal=False)
        assert "trajectory" not in step(ws, 2)["frames"][0]


@pytest.mark.parametrize("algorithm", ["rwmh", "ula", "mala", "hmc"])
@pytest.mark.parametrize("animate", [True, False])
def test_samplers_are_the_librarys_by_name(algorithm, animate):
    """The page's kernels are ebmlab.samplers.build_sampler's, with the page's step size and leapfrog count."""
    from dataclasses import replace

    from ebmlab.samplers import HMC, build_sampler

    session = Session(Registry())
    session.configure({"algorithm": algorithm, "step_size": 0.17, "leapfrog_steps": 7, "animate_proposal": animate})
    expected = build_sampler(algorithm, 0.17, num_leapfrog=7)
    if isinstance(expected, HMC):  # HMC records its leapfrog path only while the page animates proposals
        expected = replace(expected, record_trajectory=animate)
    assert type(session.sampler) is type(expected) and session.sampler == expected


def test_reset_clears_and_repeats_the_same_chains(client):
    with client.websocket_connect("/ws") as ws:
        cfg = configure(ws, algorithm="rwmh", target="donut", chains=5, step_size=0.5, seed=42)
        a = step(ws, 20)
        ws.send_json({"type": "reset"})
        r = ws.receive_json()
        assert r["type"] == "configured" and r["reset"] is True
        assert r["diagnostics"]["num_samples"] == 0 and r["diagnostics"]["acceptance_rate"] is None
        assert r["x"] == cfg["x"]
        b = step(ws, 20)
    assert a["frames"] == b["frames"]
    assert a["diagnostics"] == b["diagnostics"]


def test_soft_settings_keep_the_chains(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="mala", target="banana", chains=2)
        step(ws, 10)
        cfg = configure(ws, step_size=0.1, histogram_bins=20)
        assert cfg["reset"] is False and cfg["diagnostics"]["num_samples"] == 20
        assert configure(ws, seed=5)["reset"] is True


@pytest.mark.parametrize("payload,needle", [
    ({"type": "configure", "chains": LIMITS["max_chains"] + 1}, "chains"),
    ({"type": "configure", "chains": 0}, "chains"),
    ({"type": "configure", "chains": 2.5}, "chains"),
    ({"type": "configure", "step_size": -1}, "step_size"),
    ({"type": "configure", "step_size": 0}, "step_size"),
    ({"type": "configure", "step_size": "0.3"}, "step_size"),
    ('{"type": "configure", "step_size": Infinity}', "step_size"),
    ('{"type": "configure", "step_size": NaN}', "step_size"),
    ({"type": "configure", "leapfrog_steps": 0}, "leapfrog_steps"),
    ({"type": "configure", "algorithm": "gibbs"}, "unknown algorithm"),
    ({"type": "configure", "target": "/etc/passwd"}, "unknown target"),
    ({"type": "configure", "target": "product", "expert1": "../model"}, "unknown expert1"),
    ({"type": "configure", "model_path": "/tmp/x"}, "unknown setting"),
    ({"type": "configure", "animate_proposal": "yes"}, "animate_proposal"),
    ({"type": "configure", "histogram_bins": 1}, "histogram_bins"),
    ({"type": "configure", "seed": -1}, "seed"),
    ({"type": "configure", "compare": "gibbs"}, "unknown compare algorithm"),
    ({"type": "configure", "num_levels": 1}, "num_levels"),
    ({"type": "configure", "num_levels": LIMITS["max_levels"] + 1}, "num_levels"),
    ({"type": "configure", "steps_per_level": 0}, "steps_per_level"),
    ({"type": "configure", "sigma_min": 5.0, "sigma_max": 2.0}, "sigma_min must be below sigma_max"),
    ({"type": "configure", "sigma_min": 0.0}, "sigma_min"),
    ('{"type": "configure", "sigma_max": Infinity}', "sigma_max"),
    ({"type": "configure", "sigma_max": LIMITS["max_sigma"] * 2}, "sigma_max"),
    ({"type": "configure", "eps": 0}, "eps"),
    ({"type": "configure", "eps": LIMITS["max_eps"] * 2}, "eps"),
    ('{"type": "configure", "eps": NaN}', "eps"),
    ({"type": "configure", "algorithm": "annealed"}, "needs a noise-conditional score"),
    ({"type": "configure", "target": "song_ermon_mixture", "algorithm": "annealed", "compare": "hmc",
      "chains": 3, "target_typo": 1}, "unknown setting"),
    ({"type": "step", "n": LIMITS["max_steps_per_message"] + 1}, "n must be"),
    ({"type": "step", "n": 0}, "n must be"),
    ({"type": "step", "n": "5"}, "n must be"),
    ({"type": "export", "format": "pickle"}, "unknown export format"),
    ({"type": "export", "format": ["gif"]}, "unknown export format"),
    ({"type": "export", "format": "gif"}, "nothing to animate"),
    ({"type": "eval", "code": "1"}, "unknown message type"),
    ({"n": 1}, '"type"'),
    ("[1, 2]", '"type"'),
    ("not json", "JSON"),
    ("x" * (LIMITS["max_message_bytes"] + 1), "too long"),
])
def test_invalid_messages_get_clear_errors_and_change_nothing(client, payload, needle):
    with client.websocket_connect("/ws") as ws:
        before = configure(ws, algorithm="mala", target="banana", chains=3, seed=9)
        message = error_of(ws, payload)
        assert needle in message
        ws.send_json({"type": "reset"})
        after = ws.receive_json()
        assert after["settings"] == before["settings"] and after["x"] == before["x"]


def test_rate_limit_per_connection(client):
    burst = int(2 * LIMITS["messages_per_second"]) + 40
    with client.websocket_connect("/ws") as ws:
        for _ in range(burst):
            ws.send_text('{"type": "nope"}')
        replies = [ws.receive_json()["message"] for _ in range(burst)]
    assert any("rate limited" in m for m in replies)


def test_export_csv_and_npz(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="rwmh", target="standard", chains=3, seed=0)
        frames = step(ws, 4)["frames"]
        ws.send_json({"type": "export", "format": "csv"})
        csv_msg = ws.receive_json()
        ws.send_json({"type": "export", "format": "npz"})
        npz_msg = ws.receive_json()
    lines = csv_msg["data"].strip().split("\n")
    assert csv_msg["filename"] == "samples.csv" and lines[0] == "step,chain,x1,x2"
    assert len(lines) == 1 + 4 * 3
    step_, chain, x1, x2 = lines[-1].split(",")
    assert (int(step_), int(chain)) == (4, 2)
    assert float(x1) == pytest.approx(frames[-1]["x"][2][0], abs=1e-3)
    arr = np.load(io.BytesIO(base64.b64decode(npz_msg["data"])))["samples"]
    assert arr.shape == (4, 3, 2)
    np.testing.assert_allclose(arr[-1], frames[-1]["x"], atol=1e-3)


def test_divergence_is_reported_not_streamed_as_nan(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="ula", target="banana", chains=4, step_size=50.0, seed=0)
        ws.send_json({"type": "step", "n": 200})
        msg = ws.receive_json()
        if msg["type"] == "frames":
            assert "diverged" in msg.get("error", "")
            message = error_of(ws, {"type": "step", "n": 1})
        else:
            message = msg["message"]
        assert "diverged" in message or "failed" in message
        ws.send_json({"type": "reset"})
        assert ws.receive_json()["type"] == "configured"
        assert step(ws, 1)["frames"]


def test_large_requests_are_time_budgeted(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="hmc", target="banana", chains=LIMITS["max_chains"], step_size=0.1,
                  leapfrog_steps=100, animate_proposal=False)
        msg = step(ws, LIMITS["max_steps_per_message"])
    assert msg["truncated"] is True and 1 <= len(msg["frames"]) < LIMITS["max_steps_per_message"]


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from ebmlab.checkpoint import save_checkpoint
    from ebmlab.energies.nets import MLPEnergy
    from ebmlab.runs import save_config
    from ebmlab.io import CHECKPOINT

    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    torch.manual_seed(0)
    net = MLPEnergy(2, hidden=(16, 16))
    save_checkpoint(run / CHECKPOINT, {f"model.{k}": v for k, v in net.state_dict().items()}, {})
    save_config(run, {"model": {"kind": "mlp", "dim": 2, "hidden": [16, 16]},
                      "data": {"name": "two_moons", "bounds": [[-3, 3], [-3, 3]]}})
    return run


def test_trained_model_from_the_command_line(run_dir):
    models = load_models([run_dir])
    assert list(models) == ["model:tiny"]
    with TestClient(create_app(models)) as c:
        info = c.get("/api/targets").json()
        m = next(t for t in info["targets"] if t["name"] == "model:tiny")
        assert m["bounds"] == [[-3.0, 3.0], [-3.0, 3.0]] and m["model"] is True
        d = c.get("/api/density", params={"target": "model:tiny", "resolution": 16}).json()
        assert np.array(d["density"]).shape == (16, 16) and d["analytic"] is False
        with c.websocket_connect("/ws") as ws:
            configure(ws, algorithm="mala", target="model:tiny", chains=4, step_size=0.1)
            msg = step(ws, 5)
            assert msg["diagnostics"]["kl"] is None and len(msg["frames"]) == 5
            configure(ws, algorithm="rwmh", target="product", expert1="model:tiny", expert2="standard")
            assert step(ws, 3)["frames"]


def test_models_need_bounds():
    with pytest.raises(ValueError, match="bounds"):
        create_app({"m": lambda x: (x**2).sum(-1)})
    app = create_app({"m": (lambda x: (x**2).sum(-1), ((-2, 2), (-2, 2)))})
    assert any(t["name"] == "m" for t in app.state.registry.info()["targets"])


def test_non_2d_models_are_refused(tmp_path):
    from ebmlab.checkpoint import save_checkpoint
    from ebmlab.energies.nets import MLPEnergy
    from ebmlab.runs import save_config
    from ebmlab.io import CHECKPOINT

    net = MLPEnergy(3, hidden=(8,))
    save_checkpoint(tmp_path / CHECKPOINT, {f"model.{k}": v for k, v in net.state_dict().items()}, {})
    save_config(tmp_path, {"model": {"kind": "mlp", "dim": 3, "hidden": [8]}, "data": {"bounds": [[0, 1]] * 3}})
    with pytest.raises(ValueError, match="2-D MLP"):
        load_models([tmp_path])


@pytest.mark.filterwarnings("ignore:histogram_kl. dropped:RuntimeWarning")
def test_cached_kl_equals_the_librarys_histogram_kl():
    from ebmlab.evaluation import histogram_kl
    from ebmlab.playground.app import KL_SUBDIVISIONS, Registry, cached_histogram_kl

    reg = Registry()
    for name in ("banana", "product"):
        model = reg.resolve(name, "donut", "standard")
        x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        expected = histogram_kl(x, model.energy, model.bounds, bins=17, subdivisions=KL_SUBDIVISIONS)
        assert cached_histogram_kl(x, model, 17) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- annealed Langevin


def test_annealed_langevin_recovers_the_mode_weight_of_song_ermons_mixture():
    """0.2 N((-5,-5), I) + 0.8 N((5,5), I) from a uniform start: annealing gets the weights right.

    Tolerance: the default schedule's bias with the exact score, measured on 80,000 chains
    (4 seeds x 20,000), is -0.013 (weight 0.787, SE 0.0014), so 0.017 allows for it; plus
    3 binomial standard errors at 2000 chains (3 x sqrt(0.16 / 2000) = 0.027): 0.045.
    """
    session = Session(Registry())
    cfg = session.configure({"algorithm": "annealed", "target": "song_ermon_mixture", "chains": 2000, "seed": 0})
    x0 = np.array(cfg["x"])
    assert (x0 > -11).all() and (x0 < 11).all() and abs((x0.sum(1) > 0).mean() - 0.5) < 0.05  # uniform start
    s = cfg["settings"]
    total = s["num_levels"] * s["steps_per_level"]
    sigmas = []
    while session.runs[0].num_steps < total:
        msg = session.step(LIMITS["max_steps_per_message"], budget_s=math.inf)
        sigmas += [f["sigma"] for f in msg["frames"]]
    x = np.array(msg["frames"][-1]["x"])
    weight = (x.sum(1) > 0).mean()
    assert abs(weight - 0.8) < 0.045, f"weight of the (5, 5) mode {weight:.3f}, expected 0.8"
    upper = x[x.sum(1) > 0]
    assert np.abs(upper.mean(0) - 5).max() < 0.15 and abs(upper.std(0).mean() - 1) < 0.1
    # the schedule: geometric from sigma_max to sigma_min, steps_per_level steps each, decreasing
    assert sigmas[0] == pytest.approx(s["sigma_max"], rel=1e-3) and sigmas[-1] == pytest.approx(s["sigma_min"], rel=1e-3)
    assert len(set(sigmas)) == s["num_levels"] and all(a >= b for a, b in zip(sigmas, sigmas[1:]))
    d = msg["diagnostics"]
    assert d["sigma"] == pytest.approx(s["sigma_min"]) and d["level"] == d["num_levels"] == s["num_levels"]
    assert d["acceptance_rate"] == 1.0 and d["num_samples"] == total * 2000
    # only the last level's draws are kept for diagnostics and export: the annealing is burn-in
    assert d["kept_draws"] == s["steps_per_level"] and d["kl"] is not None


def test_annealed_frames_show_the_noise_level_and_keep_only_the_last_levels_draws(client):
    with client.websocket_connect("/ws") as ws:
        cfg = configure(ws, algorithm="annealed", target="eight_gaussians", chains=5, num_levels=3,
                        sigma_max=8.0, sigma_min=0.5, steps_per_level=4, eps=0.05, seed=2)
        assert cfg["diagnostics"]["sigma"] == 8.0 and cfg["diagnostics"]["level"] == 1
        msg = step(ws, 14)
    frames = msg["frames"]
    assert [f["sigma"] for f in frames] == [8.0] * 4 + [2.0] * 4 + [0.5] * 6
    assert [f["annealing"] for f in frames] == [True] * 8 + [False] * 6
    assert all(all(f["accepted"]) for f in frames)
    d = msg["diagnostics"]
    assert (d["sigma"], d["level"], d["num_levels"], d["num_steps"], d["kept_draws"]) == (0.5, 3, 3, 14, 6)


def test_annealed_stepping_respects_the_time_budget():
    session = Session(Registry())
    session.configure({"algorithm": "annealed", "target": "song_ermon_mixture", "chains": 50, "compare": "mala"})
    msg = session.step(LIMITS["max_steps_per_message"], budget_s=0.0)
    assert msg["truncated"] is True and len(msg["frames"]) == len(msg["compare"]["frames"]) == 1


def test_eps_is_soft_but_the_schedule_resets_annealed_chains(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="annealed", target="standard", chains=2)
        step(ws, 5)
        assert configure(ws, eps=0.001)["reset"] is False
        assert configure(ws, sigma_max=5.0)["reset"] is True
        configure(ws, algorithm="mala")
        step(ws, 5)
        assert configure(ws, sigma_max=6.0, num_levels=5)["reset"] is False  # no sampler anneals


@pytest.mark.parametrize("settings", [
    {"algorithm": "annealed", "target": "banana"},
    {"algorithm": "mala", "compare": "annealed", "target": "banana"},
    {"algorithm": "annealed", "target": "product", "expert1": "standard", "expert2": "standard"},
])
def test_annealed_without_a_noise_conditional_score_is_refused_clearly(client, settings):
    with client.websocket_connect("/ws") as ws:
        before = configure(ws, algorithm="mala", target="banana", chains=2)
        message = error_of(ws, {"type": "configure", **settings})
        ws.send_json({"type": "reset"})
        assert ws.receive_json()["settings"] == before["settings"]
    role = "compare" if settings.get("compare") else "algorithm"
    # what was expected, what was given, and where annealed Langevin is available
    assert f"{role} 'annealed' needs a noise-conditional score s(x, sigma)" in message
    assert f"target {settings['target']!r} is a" in message
    assert "song_ermon_mixture" in message and "--model" in message


def test_annealed_divergence_is_reported(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="annealed", target="standard", chains=3, eps=1.0, sigma_min=0.01,
                  sigma_max=1.0, num_levels=2, steps_per_level=50)
        msg = step(ws, 200)
        assert "diverged (non-finite score)" in msg["error"] and "reduce eps" in msg["error"]
        assert "diverged" in error_of(ws, {"type": "step", "n": 1})


# --------------------------------------------------------------------------- side by side


def test_side_by_side_runs_two_independent_samplers_with_equal_budgets(client):
    with client.websocket_connect("/ws") as ws:
        cfg = configure(ws, algorithm="mala", compare="rwmh", target="donut", chains=6, step_size=0.4, seed=7)
        assert cfg["compare"]["algorithm"] == "rwmh" and np.array(cfg["compare"]["x"]).shape == (6, 2)
        assert cfg["compare"]["x"] == cfg["x"]  # same seed, same start
        a = step(ws, 30)
        b = step(ws, 20)
    for msg in (a, b):
        assert len(msg["frames"]) == len(msg["compare"]["frames"])
        assert msg["compare"]["algorithm"] == "rwmh"
    da, db = b["diagnostics"], b["compare"]["diagnostics"]
    assert da["num_samples"] == db["num_samples"] == 50 * 6 and da["num_steps"] == db["num_steps"] == 50
    for d in (da, db):
        assert 0 < d["acceptance_rate"] <= 1 and d["ess"] > 0 and d["rhat"] > 0 and d["kl"] > 0
    assert da["acceptance_rate"] != db["acceptance_rate"]  # two kernels, two panels
    assert a["frames"][-1]["x"] != a["compare"]["frames"][-1]["x"]


def test_side_by_side_panel_equals_the_same_sampler_run_alone(client):
    """Same seed and budget, no coupling: panel B is exactly what HMC alone would draw."""
    settings = dict(target="banana", chains=3, step_size=0.2, leapfrog_steps=5, seed=11)
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="mala", compare="hmc", **settings)
        both = [step(ws, 10), step(ws, 7)]
        configure(ws, algorithm="hmc", compare="", **settings)
        alone = [step(ws, 10), step(ws, 7)]
    for pair, single in zip(both, alone):
        assert pair["compare"]["frames"] == single["frames"]
        assert pair["compare"]["diagnostics"] == single["diagnostics"]
    assert "compare" not in alone[0]


def test_side_by_side_divergence_names_the_sampler(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="mala", compare="ula", target="banana", chains=4, step_size=50.0)
        msg = step(ws, 200)
        assert "sampler B (ula)" in msg["error"] and "diverged" in msg["error"]
        assert len(msg["frames"]) == len(msg["compare"]["frames"])
        assert "sampler B (ula)" in error_of(ws, {"type": "step", "n": 1})


def test_side_by_side_exports_both_samplers(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="rwmh", compare="mala", target="standard", chains=2, seed=0)
        msg = step(ws, 3)
        ws.send_json({"type": "export", "format": "csv"})
        lines = ws.receive_json()["data"].strip().split("\n")
        ws.send_json({"type": "export", "format": "npz"})
        npz = np.load(io.BytesIO(base64.b64decode(ws.receive_json()["data"])))
    assert lines[0] == "sampler,step,chain,x1,x2" and len(lines) == 1 + 2 * 3 * 2
    assert lines[1].startswith("A:rwmh,1,0,") and lines[-1].startswith("B:mala,3,1,")
    assert npz["samples"].shape == npz["compare_samples"].shape == (3, 2, 2)
    assert str(npz["algorithm"]) == "rwmh" and str(npz["compare_algorithm"]) == "mala"
    np.testing.assert_allclose(npz["compare_samples"][-1], msg["compare"]["frames"][-1]["x"], atol=1e-3)


# --------------------------------------------------------------------------- GIF export


def gif_of(ws):
    from PIL import Image

    ws.send_json({"type": "export", "format": "gif"})
    msg = ws.receive_json()
    assert msg["type"] == "export" and msg["format"] == "gif" and msg["filename"].endswith(".gif"), msg
    data = base64.b64decode(msg["data"])
    assert data[:6] == b"GIF89a"
    img = Image.open(io.BytesIO(data))
    img.load()
    return data, img


def test_gif_export_animates_the_recent_steps(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="hmc", target="banana", chains=6, step_size=0.2, leapfrog_steps=5)
        step(ws, 12)
        data, img = gif_of(ws)
        assert img.format == "GIF" and img.size == (LIMITS["gif_px"], LIMITS["gif_px"])
        assert img.n_frames == 13  # the start + 12 steps
        assert img.info.get("loop") == 0
        configure(ws, compare="rwmh")  # side by side: two panels per frame
        step(ws, 3)
        _, img = gif_of(ws)
        assert img.size == (2 * LIMITS["gif_px"], LIMITS["gif_px"]) and img.n_frames == 4


def test_gif_export_is_bounded_in_frames_bytes_and_time(client, monkeypatch):
    from ebmlab.playground import app as playground

    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="rwmh", target="standard", chains=LIMITS["max_chains"], step_size=1.0)
        for _ in range(3):
            step(ws, 40)
        data, img = gif_of(ws)
        assert 2 <= img.n_frames <= LIMITS["gif_frames"] and len(data) <= LIMITS["gif_max_bytes"]
        monkeypatch.setitem(playground.LIMITS, "gif_budget_s", 0.0)  # out of time: the two newest frames
        _, img = gif_of(ws)
        assert img.n_frames == 2
        monkeypatch.setitem(playground.LIMITS, "gif_budget_s", 5.0)
        monkeypatch.setitem(playground.LIMITS, "gif_max_bytes", 1)  # too big: halved down to two frames
        _, img = gif_of(ws)
        assert img.n_frames == 2


# --------------------------------------------------------------------------- score runs


def _score_run(path, *, noise_conditional=True, kind="score_mlp"):
    from ebmlab.checkpoint import save_checkpoint
    from ebmlab.energies.nets import MLPEnergy
    from ebmlab.energies.score_nets import EnergyScore, ScoreMLP
    from ebmlab.runs import save_config
    from ebmlab.io import CHECKPOINT

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind == "energy_score":
        net = EnergyScore(MLPEnergy(2, hidden=(16, 16)))
        model = {"kind": "energy_score", "dim": 2, "hidden": [16, 16], "activation": "silu"}
        train = {"method": "ism", "sigmas": None}
    else:
        net = ScoreMLP(2, hidden=(16, 16), noise_conditional=noise_conditional, scale_by_sigma=noise_conditional)
        model = {"kind": "score_mlp", "dim": 2, "hidden": [16, 16], "activation": "silu",
                 "noise_conditional": noise_conditional, "scale_by_sigma": noise_conditional}
        train = {"method": "ncsn", "sigmas": [8.0, 2.0, 0.5, 0.1]} if noise_conditional else {"method": "dsm",
                                                                                              "sigmas": [0.1]}
    save_checkpoint(path / CHECKPOINT, {f"model.{k}": v for k, v in net.state_dict().items()}, {})
    save_config(path, {"model": model, "data": {"name": "two_moons", "bounds": [[-3, 3], [-2.5, 3.5]]},
                       "train": train})
    return path


def test_noise_conditional_score_run_samples_with_annealed_langevin_only(tmp_path):
    models = load_models([_score_run(tmp_path / "ncsn")])
    m = models["model:ncsn"]
    assert m.energy is None and m.score is not None and m.algorithms == ("annealed",)
    assert m.schedule == {"num_levels": 4, "sigma_max": 8.0, "sigma_min": 0.1, "eps": 0.002}
    with TestClient(create_app(models)) as c:
        info = next(t for t in c.get("/api/targets").json()["targets"] if t["name"] == "model:ncsn")
        assert info["algorithms"] == ["annealed"] and info["density"] is False and info["model"] is True
        r = c.get("/api/density", params={"target": "model:ncsn", "resolution": 16})
        assert r.status_code == 422 and "no density" in r.json()["detail"]
        with c.websocket_connect("/ws") as ws:
            message = error_of(ws, {"type": "configure", "algorithm": "mala", "target": "model:ncsn"})
            assert "algorithm 'mala' needs an energy" in message and "expected algorithm 'annealed'" in message
            message = error_of(ws, {"type": "configure", "target": "product", "expert1": "model:ncsn"})
            assert "both experts need an energy" in message
            cfg = configure(ws, algorithm="annealed", target="model:ncsn", chains=8, num_levels=4, sigma_max=8.0,
                            sigma_min=0.1, steps_per_level=3, eps=0.002)
            x0 = np.array(cfg["x"])
            assert (x0[:, 0] >= -3).all() and (x0[:, 0] <= 3).all() and (x0[:, 1] >= -2.5).all()
            msg = step(ws, 15)
            assert len(msg["frames"]) == 15 and np.isfinite(np.array(msg["frames"][-1]["x"])).all()
            d = msg["diagnostics"]
            assert d["kl"] is None and d["sigma"] == pytest.approx(0.1) and d["kept_draws"] == 6
            _, img = gif_of(ws)  # no density to draw: a plain background
            assert img.n_frames == 16


def test_energy_score_run_is_an_energy_for_every_algorithm_but_annealed(tmp_path):
    models = load_models([_score_run(tmp_path / "ism", kind="energy_score")])
    m = models["model:ism"]
    assert m.energy is not None and m.score is None and "annealed" not in m.algorithms
    with TestClient(create_app(models)) as c:
        d = c.get("/api/density", params={"target": "model:ism", "resolution": 16}).json()
        assert np.array(d["density"]).shape == (16, 16)
        with c.websocket_connect("/ws") as ws:
            configure(ws, algorithm="mala", compare="rwmh", target="model:ism", chains=3, step_size=0.1)
            msg = step(ws, 4)
            assert len(msg["frames"]) == len(msg["compare"]["frames"]) == 4
            assert "needs a noise-conditional score" in error_of(ws, {"type": "configure", "algorithm": "annealed"})


def test_unconditional_score_runs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="noise-conditional"):
        load_models([_score_run(tmp_path / "dsm", noise_conditional=False)])


def test_a_score_model_that_fails_to_start_leaves_the_session_as_it_was():
    from ebmlab.playground.app import Model

    bad = Model(None, ((-2.0, 2.0), (-2.0, 2.0)), score=lambda x, sigma: x[:, :1], kind="broken score model")
    with TestClient(create_app({"bad": bad})) as c, c.websocket_connect("/ws") as ws:
        before = configure(ws, algorithm="mala", target="banana", chains=2)
        message = error_of(ws, {"type": "configure", "algorithm": "annealed", "target": "bad"})
        assert message.startswith("could not start the chains") and "shape of its input" in message
        ws.send_json({"type": "reset"})
        after = ws.receive_json()
        assert after["settings"] == before["settings"] and after["x"] == before["x"]


# --------------------------------------------------------------------------- NUTS


def _generator_copy(session):
    """A generator in the state of the session's first sampler's (what its next step will draw from)."""
    g = torch.Generator()
    g.set_state(session.runs[0].generator.get_state())
    return g


def test_nuts_frames_carry_each_chains_tree_as_the_library_records_it():
    """The tree of each of the first 64 chains is Info.trajectory's finite rows (num_grad_evals + 1 of them)."""
    from ebmlab.samplers import NUTS, build_sampler

    session = Session(Registry())
    session.configure({"algorithm": "nuts", "target": "banana", "chains": 70, "step_size": 0.25,
                       "max_tree_depth": 6, "seed": 4})
    assert session.sampler == NUTS(0.25, max_tree_depth=6, record_tree=True)
    assert session.sampler == replace_record(build_sampler("nuts", 0.25, max_tree_depth=6))
    x0, g = session.state.x.clone(), _generator_copy(session)
    msg = session.step(3, budget_s=math.inf)
    frames = msg["frames"]
    assert len(frames) == 3 and all("tree" not in f and "trajectory" not in f for f in frames[:-1])
    last = frames[-1]
    assert "trajectory" not in last  # HMC's padded path is not sent for NUTS: the tree is
    nuts = NUTS(0.25, max_tree_depth=6, record_tree=True)
    energy = targets.get("banana")
    state = nuts.init(energy, x0)
    depths, evals, divergent = [], [], 0
    for _ in range(3):
        state, info = nuts.step(energy, state, generator=g)
        depths.append(info.tree_depth)
        evals.append(info.num_grad_evals)
        divergent += int(info.divergent.sum())
    g_evals = info.num_grad_evals[:64].tolist()
    assert len(last["tree"]) == LIMITS["tree_chains"] == 64 and last["num_grad_evals"] == g_evals
    assert last["tree_depth"] == info.tree_depth[:64].tolist()
    assert last["divergent"] == info.divergent[:64].tolist()
    for c, rows in enumerate(last["tree"]):
        assert len(rows) == g_evals[c] + 1, c  # the start point and one leaf per gradient evaluation
        expected = info.trajectory[: g_evals[c] + 1, c].to(torch.float64)
        np.testing.assert_allclose(rows, expected.numpy(), atol=6e-4)
        assert any(np.allclose(r, x0c, atol=1e-3) for r in rows for x0c in [frames[-2]["x"][c]])  # contains the start
    np.testing.assert_allclose(last["x"], state.x.numpy(), atol=6e-5)
    d = msg["diagnostics"]["nuts"]
    assert d["mean_tree_depth"] == pytest.approx(torch.cat(depths).double().mean().item())
    assert d["grad_evals_per_step"] == pytest.approx(torch.cat(evals).double().mean().item())
    assert d["divergences"] == divergent and msg["diagnostics"]["tempering"] is None


def replace_record(sampler, record=True):
    from dataclasses import replace

    return replace(sampler, record_tree=record)


def test_nuts_tree_only_when_animating_and_depth_is_soft(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="nuts", target="donut", chains=3, step_size=0.2, animate_proposal=False)
        f = step(ws, 2)["frames"][-1]
        assert "tree" not in f and "trajectory" not in f
        cfg = configure(ws, max_tree_depth=2, animate_proposal=True)
        assert cfg["reset"] is False and cfg["diagnostics"]["num_steps"] == 2
        msg = step(ws, 5)
        f = msg["frames"][-1]
        assert all(len(t) == n + 1 <= 2**2 for t, n in zip(f["tree"], f["num_grad_evals"]))
        assert max(f["tree_depth"]) <= 2 and msg["diagnostics"]["nuts"]["mean_tree_depth"] > 0


def test_nuts_on_the_funnel_reports_divergences(client):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="nuts", target="funnel", chains=20, step_size=1.5, seed=0)
        msg = step(ws, 20)
    last = msg["frames"][-1]
    d = msg["diagnostics"]["nuts"]
    assert d["divergences"] > 0
    assert len(last["divergent"]) == len(last["tree"]) == 20


# --------------------------------------------------------------------------- parallel tempering


def test_pt_replicas_and_swap_marks_are_the_librarys():
    """Same seed, same start: each frame's swap counts, the last frame's swap marks and its replicas at
    every temperature are Info.swap_accepted and PTState.replicas_x of the library's sampler."""
    from ebmlab.samplers import build_sampler

    session = Session(Registry())
    session.configure({"algorithm": "pt", "target": "multimodal", "chains": 230, "step_size": 0.3,
                       "pt_base": "mala", "num_temperatures": 6, "max_temperature": 20.0, "seed": 2})
    pt = build_sampler("pt", 0.3, base="mala", num_temperatures=6, max_temperature=20.0)
    assert session.sampler == pt
    x0, g = session.state.x.clone(), _generator_copy(session)
    msg = session.step(7, budget_s=math.inf)
    energy = targets.get("multimodal")
    state = pt.init(energy, x0)
    infos = []
    for _ in range(7):
        state, info = pt.step(energy, state, generator=g)
        infos.append(info)
    frames = msg["frames"]
    assert [f["swap_counts"] for f in frames] == [i.swap_accepted.sum(1).tolist() for i in infos]
    assert sum(map(sum, (f["swap_counts"] for f in frames))) > 0
    last = frames[-1]
    assert all("replicas" not in f for f in frames[:-1])
    m = LIMITS["replica_chains"]
    replicas = np.array(last["replicas"])
    assert replicas.shape == (6, m, 2)  # one panel per temperature, at most replica_chains chains each
    np.testing.assert_allclose(replicas, state.replicas_x[:, :m].numpy(), atol=6e-5)
    np.testing.assert_allclose(replicas[0], np.array(last["x"])[:m])  # the T = 1 replicas are the chains
    assert last["swaps"] == infos[-1].swap_accepted[:, :m].tolist()
    assert last["temperatures"] == pytest.approx(list(state.temperatures), rel=1e-3)
    d = msg["diagnostics"]["tempering"]
    assert d["temperatures"] == last["temperatures"] and len(d["swap_rates"]) == 5
    np.testing.assert_allclose(d["swap_rates"], state.swap_acceptance_rates.numpy())
    assert d["round_trips"] == state.total_round_trips
    assert d["barrier"] == pytest.approx(state.communication_barrier)
    assert (d["rounds_done"], d["adapt_rounds"], d["adapting"]) == (0, pt.adapt_rounds, True)


def test_pt_ladder_adapts_then_freezes_and_hmc_base_animates_the_cold_paths():
    session = Session(Registry())
    session.configure({"algorithm": "pt", "target": "multimodal", "chains": 4, "num_temperatures": 4,
                       "pt_base": "hmc", "leapfrog_steps": 3, "step_size": 0.2})
    first = session.sampler.first_round_steps
    msg = session.step(first, budget_s=math.inf)
    d = msg["diagnostics"]["tempering"]
    assert d["rounds_done"] == 1 and d["base"] == "HMC"
    assert d["temperatures"][0] == 1.0 and d["temperatures"][-1] == 10.0
    assert np.array(msg["frames"][0]["trajectory"]).shape == (4, 4, 2)  # the T = 1 replicas' leapfrog paths
    assert len(msg["frames"][-1]["replicas"]) == 4


@pytest.mark.parametrize("key,value,algorithm", [
    ("num_temperatures", 5, "pt"), ("max_temperature", 4.0, "pt"), ("pt_base", "rwmh", "pt"),
    ("sde", "ve", "diffusion"), ("diffusion_method", "ode", "diffusion"), ("diffusion_steps", 50, "diffusion"),
])
def test_an_algorithms_own_settings_reset_its_chains_only(client, key, value, algorithm):
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm=algorithm, target="song_ermon_mixture", chains=2)
        step(ws, 3)
        assert configure(ws, **{key: value})["reset"] is True
        configure(ws, algorithm="mala")
        step(ws, 3)
        assert configure(ws, **{key: DEFAULTS[key]})["reset"] is False  # nobody reads it


def test_tempered_density_is_the_librarys(client):
    from ebmlab.energies.compose import tempered
    from ebmlab.evaluation import density_on_grid

    t = targets.get("multimodal")
    d = client.get("/api/density", params={"target": "multimodal", "resolution": 24, "temperature": 4.0}).json()
    (a1, a2), expected = density_on_grid(tempered(t, 4.0), t.bounds, 24)
    np.testing.assert_allclose(np.array(d["density"]), expected.numpy(), rtol=1e-5)
    cold = client.get("/api/density", params={"target": "multimodal", "resolution": 24}).json()
    assert d["temperature"] == 4.0 and d["max"] < cold["max"]  # flatter
    for bad in (0.5, "inf", "nan", LIMITS["max_max_temperature"] * 2):
        r = client.get("/api/density", params={"target": "multimodal", "resolution": 24, "temperature": bad})
        assert r.status_code == 422 and "temperature" in r.json()["detail"]


# --------------------------------------------------------------------------- reverse diffusion


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("method", ["sde", "pc", "ode"])
def test_reverse_diffusion_steps_are_the_librarys_sample(sde_name, method):
    """Stepped one time step per frame, the chains end exactly where ebmlab.sde.sample takes them from the
    same prior draw and generator (Tweedie's denoising included; the ODE by RK4)."""
    from ebmlab import sde

    n, steps, seed = 40, 12, 5
    session = Session(Registry())
    cfg = session.configure({"algorithm": "diffusion", "target": "eight_gaussians", "chains": n, "seed": seed,
                             "sde": sde_name, "diffusion_method": method, "diffusion_steps": steps})
    forward = sde.VPSDE() if sde_name == "vp" else sde.VESDE()
    score = sde.exact_score(targets.get("eight_gaussians"), forward)
    g = torch.Generator().manual_seed(seed)
    x_t = forward.prior_sample((n, 2), generator=g, dtype=torch.float32)
    assert torch.equal(session.state.x, x_t) and cfg["diagnostics"]["diffusion"]["t"] == 1.0
    expected = sde.sample(score, forward, x_t, method=method, num_steps=steps, generator=g, solver="rk4")
    msg = session.step(steps, budget_s=math.inf)
    torch.testing.assert_close(session.state.x, expected, rtol=0, atol=0)
    frames = msg["frames"]
    times = torch.linspace(1.0, 1e-3, steps + 1, dtype=torch.float64)
    assert [f["t"] for f in frames] == pytest.approx(times[1:].tolist(), rel=1e-3)
    stds = forward.marginal(times[1:])[1]
    assert [f["sigma"] for f in frames] == pytest.approx(stds.tolist(), rel=1e-3)
    assert [f["step"] for f in frames] == list(range(1, steps + 1))
    assert [f["done"] for f in frames] == [f["kept"] for f in frames] == [False] * (steps - 1) + [True]
    d = msg["diagnostics"]
    assert d["diffusion"] == {"t": pytest.approx(1e-3), "sigma": pytest.approx(float(stds[-1])), "step": steps,
                              "num_steps": steps, "done": True, "sde": sde_name, "method": method}
    assert d["num_samples"] == n and d["kept_draws"] == 1 and d["acceptance_rate"] is None and d["kl"] is not None
    after = session.step(3)  # done: the chains stay, nothing more is kept
    assert all(f["x"] == frames[-1]["x"] and f["kept"] is False and f["done"] for f in after["frames"])
    assert after["diagnostics"]["num_samples"] == n


@pytest.mark.parametrize("method", ["sde", "pc", "ode"])
def test_reverse_diffusion_recovers_the_mode_weight_of_song_ermons_mixture(method):
    """0.2 N((-5,-5), I) + 0.8 N((5,5), I) from the VP prior, exact score, 200 steps, 2000 chains.

    Tolerance: 3 binomial standard errors at 2000 chains (3 sqrt(0.16 / 2000) = 0.027), plus 0.01 for the
    discretisation's bias, measured with ebmlab.sde.sample on 40,000 draws (weights 0.798, 0.800, 0.792
    for sde, pc, ode; SE 0.002): 0.037.
    """
    session = Session(Registry())
    session.configure({"algorithm": "diffusion", "target": "song_ermon_mixture", "chains": 2000, "seed": 0,
                       "sde": "vp", "diffusion_method": method, "diffusion_steps": 200})
    x0 = session.state.x.numpy()
    assert abs(x0.mean()) < 0.1 and abs(x0.std() - 1) < 0.05  # the VP prior N(0, I): noise
    while not session.runs[0].state.n == 200:
        msg = session.step(LIMITS["max_steps_per_message"], budget_s=math.inf)
    x = np.array(msg["frames"][-1]["x"])
    weight = (x.sum(1) > 0).mean()
    assert abs(weight - 0.8) < 0.037, f"weight of the (5, 5) mode {weight:.3f}, expected 0.8"
    upper = x[x.sum(1) > 0]
    assert np.abs(upper.mean(0) - 5).max() < 0.15 and abs(upper.std(0).mean() - 1) < 0.1


def test_diffusion_starts_from_the_ve_prior_and_runs_beside_annealed_langevin(client):
    with client.websocket_connect("/ws") as ws:
        cfg = configure(ws, algorithm="diffusion", compare="annealed", target="song_ermon_mixture", chains=400,
                        sde="ve", diffusion_steps=10)
        x0 = np.array(cfg["x"])
        assert abs(x0.std() - 50) < 5  # VE's prior N(0, 50^2 I), wider than the box
        msg = step(ws, 4)
        assert len(msg["frames"]) == len(msg["compare"]["frames"]) == 4
        assert msg["diagnostics"]["diffusion"]["step"] == 4 and msg["compare"]["diagnostics"]["diffusion"] is None
        assert msg["diagnostics"]["diffusion"]["sigma"] < 50


@pytest.mark.parametrize("settings", [
    {"algorithm": "diffusion", "target": "banana"},
    {"algorithm": "mala", "compare": "diffusion", "target": "funnel"},
    {"algorithm": "diffusion", "target": "product", "expert1": "standard", "expert2": "standard"},
])
def test_diffusion_without_a_diffusion_score_is_refused_clearly(client, settings):
    with client.websocket_connect("/ws") as ws:
        before = configure(ws, algorithm="mala", target="banana", chains=2)
        message = error_of(ws, {"type": "configure", **settings})
        ws.send_json({"type": "reset"})
        assert ws.receive_json()["settings"] == before["settings"]
    role = "compare" if settings.get("compare") else "algorithm"
    assert f"{role} 'diffusion' needs a diffusion score s(x, t)" in message
    assert f"target {settings['target']!r} is a" in message
    assert "song_ermon_mixture" in message and "sde-ve" in message and "--model" in message


@pytest.mark.parametrize("payload,needle", [
    ({"max_tree_depth": 0}, "max_tree_depth"),
    ({"max_tree_depth": LIMITS["max_tree_depth"] + 1}, "max_tree_depth"),
    ({"max_tree_depth": 2.5}, "max_tree_depth"),
    ({"pt_base": "nuts"}, "unknown pt_base"),
    ({"pt_base": "rejection"}, "unknown pt_base"),
    ({"pt_base": 1}, "unknown pt_base"),
    ({"num_temperatures": 1}, "num_temperatures"),
    ({"num_temperatures": LIMITS["max_temperatures"] + 1}, "num_temperatures"),
    ({"max_temperature": 1.0}, "max_temperature"),
    ({"max_temperature": 0.5}, "max_temperature"),
    ({"max_temperature": "10"}, "max_temperature"),
    ({"max_temperature": True}, "max_temperature"),
    ({"max_temperature": LIMITS["max_max_temperature"] * 2}, "max_temperature"),
    ('{"type": "configure", "max_temperature": Infinity}', "max_temperature"),
    ('{"type": "configure", "max_temperature": NaN}', "max_temperature"),
    ({"sde": "subvp"}, "unknown sde"),
    ({"sde": None}, "unknown sde"),
    ({"diffusion_method": "euler"}, "unknown diffusion_method"),
    ({"diffusion_steps": 1}, "diffusion_steps"),
    ({"diffusion_steps": LIMITS["max_diffusion_steps"] + 1}, "diffusion_steps"),
    ({"algorithm": "diffusion"}, "needs a diffusion score"),
])
def test_invalid_new_settings_get_clear_errors_and_change_nothing(client, payload, needle):
    with client.websocket_connect("/ws") as ws:
        before = configure(ws, algorithm="mala", target="banana", chains=3, seed=9)
        message = error_of(ws, payload if isinstance(payload, str) else {"type": "configure", **payload})
        assert needle in message
        ws.send_json({"type": "reset"})
        after = ws.receive_json()
        assert after["settings"] == before["settings"] and after["x"] == before["x"]


def test_gif_export_of_the_new_views(client):
    with client.websocket_connect("/ws") as ws:
        for settings in ({"algorithm": "nuts", "target": "donut"}, {"algorithm": "pt", "target": "multimodal"},
                         {"algorithm": "diffusion", "target": "standard", "diffusion_steps": 5}):
            configure(ws, chains=4, **settings)
            step(ws, 6)
            _, img = gif_of(ws)
            assert img.n_frames == 7


def test_a_diffusion_run_is_reversed_under_its_own_sde(tmp_path, monkeypatch):
    """Runs trained by --method sde-vp / sde-ve: the playground takes Run.load(dir).sde and .score from the
    run layer (here a stand-in that returns the exact VP score, so the mode weight is checkable)."""
    import types

    from ebmlab import runs, sde

    path = _score_run(tmp_path / "vp")
    cfg = json.loads((path / "config.json").read_text())
    cfg["train"] = {"method": "sde-vp"}
    (path / "config.json").write_text(json.dumps(cfg))
    forward = sde.VPSDE()
    score = sde.exact_score(targets.get("song_ermon_mixture"), forward)
    monkeypatch.setattr(runs.Run, "load", classmethod(lambda cls, p, **kw: types.SimpleNamespace(sde=forward,
                                                                                                score=score)))
    models = load_models([path])
    m = models["model:vp"]
    assert m.energy is None and m.score is None and m.algorithms == ("diffusion",) and m.diffusion.sdes == ("vp",)
    with TestClient(create_app(models)) as c:
        info = next(t for t in c.get("/api/targets").json()["targets"] if t["name"] == "model:vp")
        assert info["algorithms"] == ["diffusion"] and info["diffusion"]["sdes"] == ["vp"] and not info["density"]
        with c.websocket_connect("/ws") as ws:
            message = error_of(ws, {"type": "configure", "algorithm": "diffusion", "target": "model:vp", "sde": "ve"})
            assert "under the vp SDE only" in message and "sde-vp" in message
            message = error_of(ws, {"type": "configure", "algorithm": "annealed", "target": "model:vp"})
            assert "needs a noise-conditional score" in message
            configure(ws, algorithm="diffusion", target="model:vp", sde="vp", chains=500, diffusion_steps=100)
            msg = step(ws, 100)
            for _ in range(100):  # a message stops at its time budget (truncated) on a loaded machine: go on
                if msg["diagnostics"]["diffusion"]["done"]:
                    break
                assert msg["truncated"]
                msg = step(ws, 100 - msg["diagnostics"]["diffusion"]["step"])
    x = np.array(msg["frames"][-1]["x"])
    assert msg["diagnostics"]["diffusion"]["done"] and msg["diagnostics"]["kl"] is None
    # 3 binomial SE at 500 chains (0.054) + slack; ebmlab.sde.sample gives 0.800 on 40,000 draws at 100 steps
    assert abs((x.sum(1) > 0).mean() - 0.8) < 0.07


def test_a_trained_diffusion_run_is_reversed_as_run_sample_draws_it(tmp_path):
    """A tiny run trained by --method sde-ve: the playground's steps end where Run.sample(method="sde") ends
    from the same seed (the same prior draw and noise), and only the run's own SDE is offered."""
    from ebmlab import runs

    cfg = runs.TrainConfig.resolve(method="sde-ve", data="eight_gaussians", steps=20, batch_size=64, eval_every=20,
                                   hidden=(16, 16), n_train=500, n_test=200, sde_steps=10)
    run = runs.train(cfg, tmp_path / "ve")
    models = load_models([tmp_path / "ve"])
    assert models["model:ve"].algorithms == ("diffusion",) and models["model:ve"].diffusion.sdes == ("ve",)
    expected = run.sample(30, generator=torch.Generator().manual_seed(7), method="sde", num_steps=12)
    with TestClient(create_app(models)) as c, c.websocket_connect("/ws") as ws:
        assert "under the ve SDE only" in error_of(ws, {"type": "configure", "algorithm": "diffusion",
                                                        "target": "model:ve", "sde": "vp"})
        configure(ws, algorithm="diffusion", target="model:ve", sde="ve", chains=30, seed=7, diffusion_steps=12)
        msg = step(ws, 12)
    assert msg["diagnostics"]["diffusion"]["done"] and msg["diagnostics"]["diffusion"]["sde"] == "ve"
    np.testing.assert_allclose(msg["frames"][-1]["x"], expected.numpy(), atol=6e-5)
