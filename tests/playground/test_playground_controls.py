"""Every display control of the playground changes what the canvas shows (pixels compared with the control off
and on), autoplay steps by itself and stops, and the numbers the page displays are the ones the WebSocket API
computes for the same settings and seed (replayed through a separate server)."""

from __future__ import annotations

import json

import pytest

from test_playground_browser import browser, open_page, score_run, server, set_value, text, wait_idle  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Pixels of the main canvas whose colour is within 40 (per channel) of an RGB colour of the page's palette.
COUNT = """([r, g, b]) => {
    const c = document.querySelector('[data-testid=canvas]');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40) n++;
    }
    return n;
}"""
# Pixels that are not (near) white: anything drawn at all.
INK = """() => {
    const c = document.querySelector('[data-testid=canvas]');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) n++;
    return n / (d.length / 4);
}"""
ACCEPT, REJECT = (0x16, 0xA3, 0x4A), (0xDC, 0x26, 0x26)


def toggle(page, testid, on):
    (page.check if on else page.uncheck)(f"[data-testid={testid}]")
    wait_idle(page)
    page.wait_for_timeout(300)  # the redraw after a display change (and any tween) is done


def steps(page, clicks):
    for _ in range(clicks):
        page.click("[data-testid=step]")
        wait_idle(page)
    page.wait_for_timeout(300)


def test_show_target_draws_the_density(open_page):
    page = open_page("?algorithm=mala&target=banana&chains=20&seed=3")
    toggle(page, "show-target", True)
    on = page.evaluate(INK)
    toggle(page, "show-target", False)
    off = page.evaluate(INK)
    toggle(page, "show-target", True)
    assert on > 0.02 and off < on / 5 and page.evaluate(INK) == pytest.approx(on, rel=1e-6), (on, off)


def test_show_samples_draws_the_kept_samples(open_page):
    page = open_page("?algorithm=mala&target=banana&chains=50&seed=3")
    toggle(page, "show-target", False)
    toggle(page, "animate-proposal", False)
    empty = page.evaluate(INK)  # only the chains' current points and the labels
    set_value(page, "steps-per-click", 40)
    steps(page, 2)
    on = page.evaluate(INK)
    toggle(page, "show-samples", False)
    off = page.evaluate(INK)
    assert on > off + 0.01 and off == pytest.approx(empty, abs=0.01), (empty, on, off)


def test_proposals_are_drawn_green_and_red_only_when_animated(open_page):
    """MALA at a large step rejects often: after a step the proposals are drawn, accepted in green and
    rejected in red, with the animation on, and neither colour appears with it off."""
    page = open_page("?algorithm=mala&target=banana&chains=60&seed=5&step_size=0.8")
    toggle(page, "show-target", False)
    toggle(page, "animate-proposal", True)
    set_value(page, "steps-per-click", 1)
    steps(page, 1)
    green, red = page.evaluate(COUNT, list(ACCEPT)), page.evaluate(COUNT, list(REJECT))
    toggle(page, "animate-proposal", False)
    assert green > 100 and red > 100, (green, red)
    assert page.evaluate(COUNT, list(ACCEPT)) < 10 and page.evaluate(COUNT, list(REJECT)) < 10


def test_autoplay_steps_by_itself_and_stops(open_page):
    page = open_page("?algorithm=mala&target=banana&chains=10&seed=1")
    set_value(page, "autoplay-delay", 20)
    assert int(text(page, "num-samples")) == 0
    page.check("[data-testid=autoplay]")
    page.wait_for_function("Number(document.querySelector('[data-testid=num-samples]').textContent) >= 100",
                           timeout=20000)
    page.uncheck("[data-testid=autoplay]")
    wait_idle(page)
    page.wait_for_timeout(300)
    stopped = int(text(page, "num-samples"))
    page.wait_for_timeout(1000)
    assert int(text(page, "num-samples")) == stopped


def test_displayed_numbers_are_the_apis_for_the_same_seed(browser, server):  # noqa: F811
    """Record what the page sends over its WebSocket, replay it on a fresh app through the API, and compare the
    diagnostics the API returns with the numbers the page shows (to the digits it shows)."""
    from fastapi.testclient import TestClient

    from ebmlab.playground.app import create_app

    sent, errors = [], []
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.goto(server + "?algorithm=mala&target=banana&chains=25&seed=7&step_size=0.6")
    page.wait_for_function("document.body.dataset.ready === '1' && document.body.dataset.idle === '1'",
                           timeout=15000)
    set_value(page, "steps-per-click", 30)
    steps(page, 3)
    shown = {k: text(page, k) for k in ("num-samples", "acceptance-rate", "ess", "rhat", "kl")}
    page.close()
    assert not errors, errors
    messages = [json.loads(m) for m in sent if isinstance(m, str)]
    kinds = [m.get("type") for m in messages]
    assert "configure" in kinds and kinds.count("step") >= 3, kinds
    with TestClient(create_app()) as client, client.websocket_connect("/ws") as ws:
        last = None
        for m in messages:
            if m.get("type") not in ("configure", "step", "reset"):
                continue
            ws.send_json(m)
            reply = ws.receive_json()
            assert reply["type"] != "error", reply
            last = reply.get("diagnostics", last)
    assert last is not None and int(shown["num-samples"]) == last["num_samples"] == 25 * 90
    assert shown["acceptance-rate"] == f"{last['acceptance_rate']:.3f}"
    assert shown["ess"] == f"{last['ess']:.1f}"
    assert shown["rhat"] == f"{last['rhat']:.3f}"
    assert shown["kl"] == f"{last['kl']:.3f}"
    assert 0.3 < last["acceptance_rate"] < 0.99 and last["ess"] > 0 and last["kl"] > 0
