"""The playground's REST endpoints and WebSocket protocol, through FastAPI's TestClient."""

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
from ebmlab.playground.app import LIMITS, create_app, load_models  # noqa: E402

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
    assert set(info["algorithms"]) == {"rwmh", "ula", "mala", "hmc", "rejection"}


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


def test_mala_on_banana_accepts_in_range_and_stays_in_bounds(client):
    (lo1, hi1), (lo2, hi2) = targets.get("banana").bounds
    with client.websocket_connect("/ws") as ws:
        configure(ws, algorithm="mala", target="banana", chains=8, step_size=0.3, seed=0)
        xs = [f["x"] for f in step(ws, 200)["frames"]]
        d = step(ws, 1)["diagnostics"]
    assert 0.5 <= d["acceptance_rate"] <= 0.99
    x = np.array(xs)
    assert x.shape == (200, 8, 2)
    assert (x[..., 0] >= lo1).all() and (x[..., 0] <= hi1).all()
    assert (x[..., 1] >= lo2).all() and (x[..., 1] <= hi2).all()
    assert d["num_samples"] == 201 * 8


@pytest.mark.parametrize("algorithm", ["rwmh", "ula", "mala", "hmc", "rejection"])
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
    ({"type": "step", "n": LIMITS["max_steps_per_message"] + 1}, "n must be"),
    ({"type": "step", "n": 0}, "n must be"),
    ({"type": "step", "n": "5"}, "n must be"),
    ({"type": "export", "format": "pickle"}, "unknown export format"),
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
    from ebmlab.training import CHECKPOINT

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
    from ebmlab.training import CHECKPOINT

    net = MLPEnergy(3, hidden=(8,))
    save_checkpoint(tmp_path / CHECKPOINT, {f"model.{k}": v for k, v in net.state_dict().items()}, {})
    save_config(tmp_path, {"model": {"kind": "mlp", "dim": 3, "hidden": [8]}, "data": {"bounds": [[0, 1]] * 3}})
    with pytest.raises(ValueError, match="2-D MLP"):
        load_models([tmp_path])


@pytest.mark.filterwarnings("ignore:histogram_kl. dropped:RuntimeWarning")
def test_cached_kl_equals_the_librarys_histogram_kl():
    from ebmlab.evaluation import histogram_kl
    from ebmlab.playground.app import KL_SUBDIVISIONS, Registry, _histogram_kl

    reg = Registry()
    for name in ("banana", "product"):
        model = reg.resolve(name, "donut", "standard")
        x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        expected = histogram_kl(x, model.energy, model.bounds, bins=17, subdivisions=KL_SUBDIVISIONS)
        assert _histogram_kl(x, model, 17) == pytest.approx(expected, rel=1e-9)
