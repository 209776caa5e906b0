"""`ebmlab report --quick`: every section, figure and number is there, finite and sane."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ebmlab.cli import main
from helpers import screenshot_path


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, float):
        yield obj


@pytest.mark.slow
def test_quick_report_writes_every_section(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--quick", "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert json.loads((out / "metrics.json").read_text())["sections"].keys() == metrics["sections"].keys()
    assert list(metrics["sections"]) == ["tractable", "rejection", "langevin", "training", "products", "scores",
                                          "images", "diffusion"]
    page = (out / "index.html").read_text()
    for key, sec in metrics["sections"].items():
        assert f"id='{key}'" in page
        assert sec["figures"], key
        for fig in sec["figures"]:
            assert (out / fig).stat().st_size > 5_000 and fig in page
    assert all(math.isfinite(v) for v in _finite_numbers(metrics["sections"]) if v is not None)
    s = metrics["sections"]
    assert s["tractable"]["metrics"]["max_score_error"] < 1e-6
    assert s["tractable"]["metrics"]["max_log_z_error"] < 1e-4
    rows = s["rejection"]["rows"]
    for r in rows:  # first proposals are i.i.d. Bernoulli(Z/C): 4 binomial standard errors
        p_hat = r["Z / C (predicted)"]
        assert abs(r["acceptance (measured)"] - p_hat) < 4 * math.sqrt(p_hat * (1 - p_hat) / r["proposals"])
    assert s["langevin"]["metrics"]["ula_kl_at_largest_eps"] > s["langevin"]["metrics"]["mala_kl_at_largest_eps"]
    assert s["langevin"]["metrics"]["no_noise_spread"] < 0.05
    assert all(0 < v["kl"] < 5 for v in s["training"]["metrics"].values())
    p = s["products"]["metrics"]
    assert p["A + B (product)"] > max(p["A: ring"], p["B: half-plane"])
    sc = s["scores"]["metrics"]  # 2048 chains: SE of a weight 0.009; 4 SE plus the schedule's ~0.01 bias
    assert abs(sc["annealed_weight"] - 0.8) < 0.05 and abs(sc["langevin_weight"] - 0.8) > 0.15
    assert abs(sc["ncsn_weight"] - 0.8) < 0.1  # a trained score in quick mode: looser than the exact one
    assert all(0 < sc[f"{m}_relative_fisher"] < 0.5 for m in ("ism", "ssm-vr", "dsm"))
    im = s["images"]["metrics"]  # quick mode trains 150 steps: sane, not yet good
    assert 0.1 < im["mean_max_prob"] <= 1 and im["nearest_min"] > 0
    assert 0.1 < im["ncsn_mean_max_prob"] <= 1 and im["ncsn_nearest_min"] > 0

    d = s["diffusion"]["metrics"]  # exact scores, 2000 samples: 4 binomial SE of the 0.8 weight = 0.036
    for method in ("sde", "pc", "ode"):
        assert abs(d[f"{method}_weight"] - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 2000), method
    for name in ("song_ermon_mixture", "eight_gaussians"):
        for label in ("vp", "ve"):
            assert abs(d[f"{name}_{label}_likelihood_error"]) < 0.02  # on average, prior in place of p_T
            assert d[f"{name}_{label}_flow_error"] < 2e-3  # per point, with the exact p_T: the solver's error
    assert all(0 < d[f"{m}_kl"] < 1.0 for m in ("sde-vp", "sde-ve"))  # 8 s of training: sane, not yet good

    _render_in_a_browser(out / "index.html")


CHROMIUM = Path("/usr/bin/chromium")
def _render_in_a_browser(page_path: Path) -> None:
    """The page renders in Chromium with every figure loaded and no console error; its top is the README's
    screenshot."""
    if not CHROMIUM.exists():
        pytest.skip("rendering the report needs Chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 1500})
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
        assert broken == 0 and not errors, (broken, errors)
        shot = screenshot_path("report.png", page_path.parent)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        browser.close()
    assert shot.stat().st_size > 20_000
