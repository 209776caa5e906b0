"""The playground page in a real browser: Playwright (sync API) driving Debian's /usr/bin/chromium
against a uvicorn server started on a free loopback port (with one tiny noise-conditional score
run, so the page's score-model path runs too)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import screenshot_path

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("browser tests need Chromium at /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright Python package")

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    """A tiny untrained noise-conditional score run (``score_mlp``, as ``ebmlab train --method ncsn`` writes)."""
    import torch

    from ebmlab.checkpoint import save_checkpoint
    from ebmlab.energies.score_nets import ScoreMLP
    from ebmlab.io import CHECKPOINT
    from ebmlab.runs import save_config

    run = tmp_path_factory.mktemp("runs") / "ncsn"
    run.mkdir()
    torch.manual_seed(0)
    net = ScoreMLP(2, hidden=(16, 16), noise_conditional=True, scale_by_sigma=True)
    save_checkpoint(run / CHECKPOINT, {f"model.{k}": v for k, v in net.state_dict().items()}, {})
    save_config(run, {"model": {"kind": "score_mlp", "dim": 2, "hidden": [16, 16], "activation": "silu",
                                "noise_conditional": True, "scale_by_sigma": True},
                      "data": {"name": "two_moons", "bounds": [[-3, 3], [-3, 3]]},
                      "train": {"method": "ncsn", "sigmas": [8.0, 2.0, 0.5, 0.1]}})
    return run


@pytest.fixture(scope="module")
def server(score_run):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"from ebmlab.playground.app import serve; serve('127.0.0.1', {port}, [{str(score_run)!r}])"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"playground server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser, server):
    """Open the playground (optionally with a query string); fails the test on any console error."""
    pages, errors = [], []

    def _open(query: str = ""):
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + query)
        page.wait_for_function("document.body.dataset.ready === '1' && document.body.dataset.idle === '1'",
                               timeout=15000)
        pages.append(page)
        return page

    yield _open
    for p in pages:
        p.close()
    assert errors == [], f"console errors: {errors}"


def set_value(page, testid, value):
    sel = f"[data-testid={testid}]"
    page.fill(sel, str(value))
    page.dispatch_event(sel, "change")
    wait_idle(page)


def wait_idle(page):
    page.wait_for_function("document.body.dataset.idle === '1'", timeout=20000)


def text(page, testid):
    return page.text_content(f"[data-testid={testid}]")


def run_steps(page, total, per_click=50):
    set_value(page, "steps-per-click", per_click)
    before = int(text(page, "num-samples"))
    chains = int(page.input_value("[data-testid=chains]"))
    for i in range(total // per_click):  # one click at a time: a click while busy may be queued or dropped
        page.click("[data-testid=step]")
        # Wait for this click's samples, not only for idle: under load the idle flag can still read '1' from
        # before the click's run started, and the next click would then land while busy. A click of 100 steps
        # on two panes, with the other test worker's browser on the same 2 cores: minutes.
        want = before + (i + 1) * per_click * chains
        try:
            page.wait_for_function(
                "document.querySelector('[data-testid=num-samples]').textContent === "
                f"'{want}' && document.body.dataset.idle === '1'", timeout=120000)
        except Exception as err:  # a timeout: say what the page was waiting on
            state = page.evaluate("""() => ({samples: document.querySelector('[data-testid=num-samples]').textContent,
                idle: document.body.dataset.idle, queue: window.ebmlabPlayground.queue(),
                error: document.getElementById('error').textContent,
                status: document.getElementById('status').textContent})""")
            raise AssertionError(f"click {i + 1} of {total // per_click}: waiting for {want} samples; page: {state}") from err
    assert int(text(page, "num-samples")) == before + total * chains


def test_page_loads_with_every_control(open_page):
    page = open_page()
    for testid in ["algorithm", "target", "autoplay", "autoplay-delay", "tweening-delay", "step", "reset",
                   "animate-proposal", "show-target", "show-samples", "show-histogram", "histogram-bins",
                   "step-size", "leapfrog-steps", "chains", "seed", "acceptance-rate", "ess", "rhat",
                   "num-samples", "kl"]:
        assert page.locator(f"[data-testid={testid}]").count() == 1, testid
    assert text(page, "num-samples") == "0"
    options = page.eval_on_selector_all("[data-testid=target] option", "els => els.map(e => e.value)")
    assert {"banana", "donut", "eight_gaussians", "product"} <= set(options)


def test_mala_on_banana_and_reset(open_page):
    page = open_page()
    page.select_option("[data-testid=algorithm]", "mala")
    page.select_option("[data-testid=target]", "banana")
    set_value(page, "step-size", 0.3)
    set_value(page, "tweening-delay", 0)
    run_steps(page, 200)
    chains = int(page.input_value("[data-testid=chains]"))
    assert int(text(page, "num-samples")) == 200 * chains
    assert 0.5 <= float(text(page, "acceptance-rate")) <= 0.99
    for testid in ("ess", "rhat", "kl"):
        assert float(text(page, testid)) > 0
    xs = page.evaluate("window.ebmlabPlayground.samples()")
    (lo1, hi1), (lo2, hi2) = page.evaluate("window.ebmlabPlayground.bounds()")
    assert len(xs) == 2 * 200 * chains
    assert all(lo1 <= a <= hi1 for a in xs[0::2]) and all(lo2 <= b <= hi2 for b in xs[1::2])

    page.click("[data-testid=reset]")
    wait_idle(page)
    assert text(page, "num-samples") == "0"
    assert text(page, "acceptance-rate") == "—"
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 0


def test_a_click_is_all_its_steps_when_the_server_cuts_a_reply_short(open_page):
    """The server ends a step message at its time budget or at its reply-size bound (``truncated``); the page
    asks for the rest, so a click of k steps is k steps. Here the size bound cuts a 150-step click of 1,000
    chains after 100 steps; a loaded machine's time budget cuts any click the same way, which used to drop
    steps silently (and time this file's clicks out waiting for their samples)."""
    from ebmlab.playground.settings import LIMITS

    chains, steps = 1000, 150
    assert LIMITS["max_reply_points"] // chains < steps <= LIMITS["max_steps_per_message"]
    page = open_page(f"?algorithm=ula&target=banana&chains={chains}&tween=0")
    run_steps(page, steps, per_click=steps)
    assert int(text(page, "num-samples")) == steps * chains
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 2 * steps * chains


def test_reset_cancels_the_rest_of_a_cut_short_click(open_page):
    """Reset while a cut-short click is in flight: the rest of the click is not asked for after it (it would
    run on the reset chains). The reply of 100 steps of 1,000 chains (about 3 MB of JSON) is normally still
    on its way when the reset is clicked; had it arrived, the rest was asked for before the reset, which
    then clears it: either way the page ends empty."""
    chains = 1000
    page = open_page(f"?algorithm=ula&target=banana&chains={chains}&tween=0")
    set_value(page, "steps-per-click", 150)
    page.click("[data-testid=step]")
    page.click("[data-testid=reset]")
    wait_idle(page)
    page.wait_for_timeout(500)  # a wrongly asked-for rest would arrive in this time
    wait_idle(page)
    assert text(page, "num-samples") == "0"
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 0


def test_histogram_bins_change_the_drawing(open_page):
    page = open_page("?tween=0")
    run_steps(page, 100)
    url = "document.querySelector('[data-testid=hist-x]').toDataURL()"
    before = page.evaluate(url)
    set_value(page, "histogram-bins", 7)
    after = page.evaluate(url)
    assert before != after
    assert int(text(page, "num-samples")) > 0  # changing bins keeps the chains
    page.uncheck("[data-testid=show-histogram]")
    assert page.evaluate(url) != after


def test_permalink_reproduces_the_state(open_page):
    page = open_page()
    page.select_option("[data-testid=algorithm]", "hmc")
    page.select_option("[data-testid=target]", "donut")
    set_value(page, "step-size", 0.2)
    set_value(page, "leapfrog-steps", 7)
    set_value(page, "chains", 6)
    set_value(page, "seed", 1234)
    set_value(page, "tweening-delay", 0)
    run_steps(page, 40, per_click=20)
    url = page.url
    assert "algorithm=hmc" in url and "seed=1234" in url and "leapfrog_steps=7" in url
    expected = {k: text(page, k) for k in ("num-samples", "acceptance-rate", "ess", "rhat", "kl")}

    copy = open_page("?" + url.split("?", 1)[1])
    assert copy.input_value("[data-testid=algorithm]") == "hmc"
    assert copy.input_value("[data-testid=target]") == "donut"
    assert copy.input_value("[data-testid=chains]") == "6"
    assert copy.input_value("[data-testid=steps-per-click]") == "20"
    run_steps(copy, 40, per_click=20)
    assert {k: text(copy, k) for k in expected} == expected


def test_product_target_and_csv_export(open_page):
    page = open_page("?tween=0&target=product&expert1=banana&expert2=standard&algorithm=rwmh&chains=3")
    assert page.is_visible("[data-testid=expert1]")
    run_steps(page, 10, per_click=10)
    with page.expect_download() as dl:
        page.click("[data-testid=export-csv]")
    lines = Path(dl.value.path()).read_text().strip().split("\n")
    assert lines[0] == "step,chain,x1,x2" and len(lines) == 1 + 10 * 3


def test_invalid_input_shows_the_servers_message(open_page):
    page = open_page()
    set_value(page, "chains", 5000)
    assert "chains must be an integer in [1, 2000]" in text(page, "error")
    set_value(page, "chains", 4)
    assert page.is_hidden("[data-testid=error]")


def test_side_by_side_screenshot(open_page, tmp_path):
    """The README's second picture: MALA next to ULA on the eight Gaussians, same seed and budget."""
    page = open_page("?algorithm=mala&compare=ula&target=eight_gaussians&chains=20&step_size=0.5&tween=0&bins=40")
    run_steps(page, 300, per_click=100)
    assert text(page, "num-samples") == text(page, "num-samples-b") == str(300 * 20)
    path = screenshot_path("playground_side_by_side.png", tmp_path)
    page.screenshot(path=str(path))
    import matplotlib.image as mpimg

    assert mpimg.imread(str(path))[..., :3].std() > 0.05  # not blank


def test_screenshot(open_page, tmp_path):
    page = open_page("?algorithm=mala&target=banana&chains=8&step_size=0.3&tween=0&bins=40")
    run_steps(page, 200, per_click=100)
    set_value(page, "tweening-delay", 1500)  # shoot mid-animation, so the proposals show
    set_value(page, "steps-per-click", 1)
    page.click("[data-testid=step]")
    page.wait_for_timeout(1100)
    shot = screenshot_path("playground.png", tmp_path)
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    import matplotlib.image as mpimg

    img = mpimg.imread(str(shot))
    assert img.shape[0] >= 800 and img.shape[1] >= 1200
    assert img[..., :3].std() > 0.05  # not blank
    canvas = page.evaluate("""() => {
        const c = document.querySelector('[data-testid=canvas]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let nonWhite = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) nonWhite++;
        return nonWhite / (d.length / 4);
    }""")
    assert canvas > 0.05


def test_side_by_side_panels_share_the_budget(open_page, tmp_path):
    page = open_page("?tween=0&target=donut&chains=5&seed=3")
    assert page.is_hidden("[data-testid=canvas-b]") and page.is_hidden("[data-testid=num-samples-b]")
    page.select_option("[data-testid=compare-algorithm]", "hmc")
    wait_idle(page)
    assert page.is_visible("[data-testid=canvas-b]") and page.is_visible("[data-testid=num-samples-b]")
    assert page.is_visible("[data-testid=leapfrog-steps]")  # sampler B needs it
    run_steps(page, 60, per_click=20)
    assert text(page, "num-samples-b") == text(page, "num-samples") == str(60 * 5)
    for testid in ("acceptance-rate", "ess", "rhat", "kl"):
        a, b = float(text(page, testid)), float(text(page, testid + "-b"))
        assert a > 0 and b > 0, testid
    assert text(page, "acceptance-rate") != text(page, "acceptance-rate-b")
    assert len(page.evaluate("window.ebmlabPlayground.samplesB()")) == 2 * 60 * 5
    assert page.evaluate("window.ebmlabPlayground.chainsB()") != page.evaluate("window.ebmlabPlayground.chains()")
    inked = """(id) => {
        const c = document.querySelector(`[data-testid=${id}]`);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++;
        return n / (d.length / 4);
    }"""
    assert page.evaluate(inked, "canvas-b") > 0.05 and page.evaluate(inked, "canvas") > 0.05
    page.screenshot(path=str(tmp_path / "side-by-side.png"))

    url = page.url
    assert "compare=hmc" in url
    copy = open_page("?" + url.split("?", 1)[1])
    assert copy.input_value("[data-testid=compare-algorithm]") == "hmc"
    run_steps(copy, 60, per_click=20)
    for testid in ("num-samples", "acceptance-rate", "ess", "rhat", "kl"):
        assert text(copy, testid + "-b") == text(page, testid + "-b"), testid  # the permalink reproduces B too

    page.select_option("[data-testid=compare-algorithm]", "")
    wait_idle(page)
    assert page.is_hidden("[data-testid=canvas-b]") and "compare=" not in page.url


def test_annealed_langevin_on_song_ermons_mixture(open_page, tmp_path):
    page = open_page("?tween=0&chains=20")
    disabled = "(v) => document.querySelector(`[data-testid=algorithm] option[value=${v}]`).disabled"
    assert page.evaluate(disabled, "annealed")  # banana has no noise-conditional score
    assert page.is_hidden("[data-testid=sigma-max]") and page.is_hidden("[data-testid=sigma]")
    page.select_option("[data-testid=target]", "song_ermon_mixture")
    wait_idle(page)
    assert not page.evaluate(disabled, "annealed")
    page.select_option("[data-testid=algorithm]", "annealed")
    wait_idle(page)
    assert page.is_visible("[data-testid=sigma-max]") and page.is_visible("[data-testid=sigma]")
    assert float(page.input_value("[data-testid=sigma-max]")) > 10  # the target's suggested schedule
    assert page.is_disabled("[data-testid=step-size]")
    set_value(page, "num-levels", 3)
    set_value(page, "steps-per-level", 10)
    run_steps(page, 15, per_click=15)
    assert text(page, "sigma").endswith("(2/3)") and "annealing" in page.text_content("#caption")
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 0  # annealing draws are not kept
    run_steps(page, 25, per_click=25)
    assert text(page, "sigma") == f"{float(page.input_value('[data-testid=sigma-min]')):g} (3/3)"
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 2 * 20 * 20  # the last level's draws
    page.screenshot(path=str(tmp_path / "annealed.png"))
    assert float(text(page, "kl")) > 0 and text(page, "acceptance-rate") == "1.000"
    assert "algorithm=annealed" in page.url and "levels=3" in page.url and "per_level=10" in page.url

    # Back to a target without a score: the page moves to MALA rather than send a refused setting.
    page.select_option("[data-testid=target]", "banana")
    wait_idle(page)
    assert page.input_value("[data-testid=algorithm]") == "mala" and "not available" in page.text_content("#hint")
    # A permalink asking for it anyway gets the server's reason.
    copy = open_page("?algorithm=annealed&target=banana")
    assert "needs a noise-conditional score" in text(copy, "error")


def test_score_model_has_no_density_and_runs_annealed_only(open_page):
    page = open_page("?tween=0&target=model:ncsn&algorithm=annealed&chains=6&levels=4&sigma_max=8&sigma_min=0.1"
                     "&per_level=3&eps=0.002")
    assert page.is_hidden("[data-testid=error]")
    enabled = page.eval_on_selector_all("[data-testid=algorithm] option", "els => els.filter(e => !e.disabled).map(e => e.value)")
    assert enabled == ["annealed"]
    experts = page.eval_on_selector_all("[data-testid=expert1] option", "els => els.map(e => e.value)")
    assert "model:ncsn" not in experts
    run_steps(page, 15, per_click=15)
    assert "no density to draw" in page.text_content("#caption")
    assert text(page, "kl") == "—" and text(page, "sigma") == "0.1 (4/4)"


def test_gif_export_downloads_an_animation(open_page):
    page = open_page("?tween=0&algorithm=hmc&target=banana&chains=4")
    run_steps(page, 10, per_click=10)
    with page.expect_download() as dl:
        page.click("[data-testid=export-gif]")
    assert dl.value.suggested_filename.endswith(".gif")
    from PIL import Image

    data = Path(dl.value.path()).read_bytes()
    assert data[:6] == b"GIF89a" and Image.open(dl.value.path()).n_frames == 11


# --------------------------------------------------------------------------- NUTS, parallel tempering, diffusion

PIXELS = """(id) => {
    const c = document.querySelector(`[data-testid=${id}]`);
    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
}"""


def pixels(page, testid):
    import numpy as np

    w, h = page.evaluate(f"[document.querySelector('[data-testid={testid}]').width, "
                         f"document.querySelector('[data-testid={testid}]').height]")
    return np.array(page.evaluate(PIXELS, testid), dtype=np.uint8).reshape(h, w, 4)[..., :3].astype(int)


def near(img, p, q, rgb, tol=60, radius=1):
    """Whether a pixel within ``radius`` of canvas point (p, q) has colour ``rgb`` (within ``tol`` per channel)."""
    h, w, _ = img.shape
    i, j = int(q), int(p)  # the pixel the point falls in
    patch = img[max(0, i - radius): i + radius + 1, max(0, j - radius): j + radius + 1]
    return bool((abs(patch - rgb) <= tol).all(-1).any())


TEAL, RED, AMBER, INK = (15, 118, 110), (220, 38, 38), (217, 119, 6), (17, 24, 39)


def test_nuts_draws_each_chains_tree(open_page, tmp_path):
    """Animate proposal on: the tree's leaves are drawn where the server says, in the tree colour (the
    divergent ones in the reject colour); off: none of that ink is there."""
    page = open_page("?tween=0&algorithm=nuts&target=donut&chains=5&step_size=0.15&seed=3&show_target=0")
    assert page.is_visible("[data-testid=max-tree-depth]") and page.is_hidden("[data-testid=leapfrog-steps]")
    run_steps(page, 3, per_click=1)
    frame = page.evaluate("window.ebmlabPlayground.frame()")
    tree, div = frame["tree"], frame["divergent"]
    assert len(tree) == 5 and all(len(t) == n + 1 for t, n in zip(tree, frame["num_grad_evals"]))
    on = pixels(page, "canvas")
    page.screenshot(path=str(tmp_path / "nuts.png"), full_page=True)
    page.uncheck("[data-testid=animate-proposal]")
    wait_idle(page)
    off = pixels(page, "canvas")
    leaves = [(c, leaf) for c, t in enumerate(tree) for leaf in t]
    px = [page.evaluate("([a, b]) => window.ebmlabPlayground.toPx(a, b)", leaf) for _, leaf in leaves]
    colour = [RED if div[c] else TEAL for c, _ in leaves]
    drawn_on = sum(near(on, p, q, rgb, tol=30) for (p, q), rgb in zip(px, colour))
    drawn_off = sum(near(off, p, q, rgb, tol=30) for (p, q), rgb in zip(px, colour))
    assert drawn_on >= 0.9 * len(leaves), (drawn_on, len(leaves))  # a few may hide under chain dots
    assert drawn_off <= 0.02 * len(leaves), drawn_off
    assert (abs(on - off).sum(-1) > 60).mean() > 0.002  # the trees are a visible part of the picture
    depth = page.evaluate("window.ebmlabPlayground.diagnostics().nuts.mean_tree_depth")
    assert float(text(page, "tree-depth")) == round(depth, 2) and float(text(page, "grad-evals")) > 1
    assert "algorithm=nuts" in page.url and "tree_depth=10" in page.url


def test_parallel_tempering_strip_shows_every_temperature(open_page, tmp_path):
    """One panel per temperature: the replicas at their positions over the tempered density (flatter when
    hotter), accepted swaps marked between the pair's panels; the strip goes with Show replicas."""
    page = open_page("?tween=0&algorithm=pt&target=multimodal&chains=12&step_size=0.3&temps=5&max_temp=12")
    assert page.is_visible("[data-testid=pt-strip]") and page.is_visible("[data-testid=num-temperatures]")
    run_steps(page, 5, per_click=5)
    page.wait_for_function("window.ebmlabPlayground.temperedReady()", timeout=20000)
    page.evaluate("window.dispatchEvent(new Event('resize'))")  # redraw now that every density is in
    wait_idle(page)
    frame = page.evaluate("window.ebmlabPlayground.frame()")
    rects = page.evaluate("window.ebmlabPlayground.stripRects()")
    temps, replicas, swaps = frame["temperatures"], frame["replicas"], frame["swaps"]
    assert len(rects) == len(temps) == len(replicas) == 5 and len(swaps) == 4
    (a1, b1), (a2, b2) = page.evaluate("window.ebmlabPlayground.bounds()")
    img = pixels(page, "pt-strip")
    page.screenshot(path=str(tmp_path / "pt.png"), full_page=True)
    hits = total = 0
    for r, rows in zip(rects, replicas):
        for x1, x2 in rows:
            if a1 <= x1 <= b1 and a2 <= x2 <= b2:
                p = r["x"] + (x1 - a1) / (b1 - a1) * r["size"]
                q = r["y"] + r["size"] - (x2 - a2) / (b2 - a2) * r["size"]
                hits += near(img, p, q, INK, tol=40)
                total += 1
    assert total > 40 and hits >= 0.95 * total, (hits, total)
    for k in range(4):  # the gap between panels k and k + 1: amber exactly when a swap was accepted there
        gap_x = (rects[k]["x"] + rects[k]["size"] + rects[k + 1]["x"]) / 2
        marked = near(img, gap_x, rects[k]["y"] + 3, AMBER, tol=30)
        assert marked == any(swaps[k]), (k, swaps[k])
    assert any(map(any, swaps))

    def blue(img_, r):  # pixels of the panel tinted by the density
        y, x, s = int(r["y"]) + 2, int(r["x"]) + 2, int(r["size"]) - 4
        patch = img_[y: y + s, x: x + s]
        return ((patch[..., 2] - patch[..., 0]) > 25).mean()

    assert blue(img, rects[-1]) > blue(img, rects[0]) + 0.1  # the hottest density is the flattest
    page.uncheck("[data-testid=show-target]")
    bare = pixels(page, "pt-strip")
    assert blue(bare, rects[-1]) < 0.01 and (abs(img - bare).sum(-1) > 30).mean() > 0.2
    assert "T = 12" in page.evaluate("document.querySelector('[data-testid=pt-strip]').getAttribute('aria-label')") \
        or len(temps) == 5
    assert text(page, "round-trips").isdigit() and float(text(page, "barrier")) >= 0
    assert len(text(page, "ladder").split("·")) == 5 and len(text(page, "swap-rates").split("·")) == 4
    page.uncheck("[data-testid=show-replicas]")
    assert page.is_hidden("[data-testid=pt-strip]")
    assert "algorithm=pt" in page.url and "temps=5" in page.url and "show_replicas=0" in page.url


def test_reverse_diffusion_moves_noise_to_the_target(open_page, tmp_path):
    page = open_page("?tween=0&chains=300")
    disabled = "(v) => document.querySelector(`[data-testid=algorithm] option[value=${v}]`).disabled"
    assert page.evaluate(disabled, "diffusion")  # banana has no diffusion score
    page.select_option("[data-testid=target]", "song_ermon_mixture")
    wait_idle(page)
    page.select_option("[data-testid=algorithm]", "diffusion")
    wait_idle(page)
    assert page.is_visible("[data-testid=sde]") and page.is_disabled("[data-testid=step-size]")
    set_value(page, "diffusion-steps", 40)
    start = page.evaluate("window.ebmlabPlayground.chains()")
    set_value(page, "steps-per-click", 20)
    page.click("[data-testid=step]")
    page.wait_for_function("window.ebmlabPlayground.diagnostics().diffusion.step === 20", timeout=20000)
    wait_idle(page)
    assert text(page, "diffusion-t").endswith("(20/40)") and "σ(t) =" in page.text_content("#caption")
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 0  # not samples yet
    middle = pixels(page, "canvas")
    page.screenshot(path=str(tmp_path / "diffusion-middle.png"), full_page=True)
    page.click("[data-testid=step]")
    page.wait_for_function("window.ebmlabPlayground.diagnostics().diffusion.done", timeout=20000)
    wait_idle(page)
    end = page.evaluate("window.ebmlabPlayground.chains()")
    img = pixels(page, "canvas")
    page.screenshot(path=str(tmp_path / "diffusion-end.png"), full_page=True)
    assert page.evaluate("window.ebmlabPlayground.samples().length") == 2 * 300
    assert "reached" in page.text_content("#caption") and text(page, "num-samples") == "300"
    inside = [(a, b) for a, b in end if -11 < a < 11 and -11 < b < 11]
    px = [page.evaluate("([a, b]) => window.ebmlabPlayground.toPx(a, b)", pt) for pt in inside[:100]]
    assert sum(near(img, p, q, INK, tol=40) for p, q in px) >= 0.95 * len(px)
    assert sum(near(middle, p, q, INK, tol=40) for p, q in px) < 0.6 * len(px)  # the picture moved with them
    weight = sum(a + b > 0 for a, b in end) / len(end)
    assert abs(weight - 0.8) < 0.1 and abs(sum(a + b > 0 for a, b in start) / len(start) - 0.5) < 0.15
    page.click("[data-testid=step]")  # done: the chains stay
    wait_idle(page)
    assert page.evaluate("window.ebmlabPlayground.chains()") == end
    assert "algorithm=diffusion" in page.url and "dsteps=40" in page.url and "sde=vp" in page.url

    page.select_option("[data-testid=target]", "banana")
    wait_idle(page)
    assert page.input_value("[data-testid=algorithm]") == "mala" and "not available" in page.text_content("#hint")
    copy = open_page("?algorithm=diffusion&target=banana")
    assert "needs a diffusion score" in text(copy, "error")
