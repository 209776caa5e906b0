"""Only the playground's own page can drive it: the Origin rule, the caps on clients, frames and
replies, and hostile input (a deterministic list of frames and hypothesis-drawn field values),
through FastAPI's TestClient and, where the transport matters, a real uvicorn server."""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from ebmlab.playground.app import (  # noqa: E402
    DEFAULTS, LIMITS, LOOPBACK_NAMES, MAX_CLIENTS, Registry, Session, create_app, is_loopback)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app()) as c:
        yield c


def ws_step(ws, n=1):
    ws.send_json({"type": "step", "n": n})
    msg = ws.receive_json()
    assert msg["type"] == "frames", msg
    return msg


def refused_code(client, headers, path="/ws"):
    """The close code of a WebSocket the server refuses before accepting it (None: accepted and it steps)."""
    try:
        with client.websocket_connect(path, headers=dict(headers)) as ws:
            ws_step(ws)
            return None
    except WebSocketDisconnect as err:
        return err.code


# --------------------------------------------------------------------------- the Origin rule


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts, tests: no Origin
    {"Origin": "http://testserver"},  # the page itself (TestClient's Host is "testserver")
    {"Origin": "HTTP://TestServer:80"},  # the same origin spelled differently
    {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"},
    {"Host": "127.0.0.1:8000", "Origin": "http://localhost:8000"},  # loopback aliases, same port
    {"Host": "localhost:8000", "Origin": "http://[::1]:8000"},
])
def test_same_origin_and_originless_clients_drive_the_socket(client, headers):
    assert refused_code(client, headers) is None


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Origin": "null"},  # sandboxed frames, file:// pages
    {"Origin": "http://testserver:8080"},  # another port
    {"Origin": "https://testserver"},  # another scheme
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "http://evil.example@testserver"},  # not an origin
    {"Origin": "http://testserver/path"},  # not an origin
    {"Origin": ""},
    {"Host": "127.0.0.1:8000", "Origin": "http://localhost:9000"},  # loopback, another port
    {"Host": "evil.example:8000", "Origin": "http://localhost:8000"},  # an alias only between loopback names
    {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.2:8000"},
])
def test_a_page_on_another_site_is_refused_before_the_socket_opens(client, headers):
    assert refused_code(client, headers) == 1008  # policy violation, before accept


def test_the_refusal_says_why(client):
    with pytest.raises(WebSocketDisconnect) as err:
        with client.websocket_connect("/ws", headers={"Origin": EVIL}):
            pass
    assert err.value.code == 1008 and "cross-origin" in err.value.reason and EVIL in err.value.reason


@pytest.mark.parametrize("path", ["/api/targets", "/api/density?target=banana&resolution=16", "/api/nothing"])
def test_http_api_refuses_other_sites_with_403_json(client, path):
    r = client.get(path, headers={"Origin": EVIL})
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    assert "cross-origin request refused" in r.json()["detail"]
    if path != "/api/nothing":
        assert client.get(path).status_code == 200
        assert client.get(path, headers={"Origin": "http://testserver"}).status_code == 200


def test_the_page_and_its_static_files_are_served_to_anyone(client):
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert client.get(path, headers={"Origin": EVIL}).status_code == 200


def test_loopback_servers_answer_only_to_loopback_names():
    """A site whose name is rebound to 127.0.0.1 (DNS rebinding) is same-origin with itself: the Host
    header gives it away."""
    with TestClient(create_app(hosts=LOOPBACK_NAMES), base_url="http://127.0.0.1:8000") as c:
        here = {"Host": "127.0.0.1:8000"}
        assert refused_code(c, here) is None
        assert refused_code(c, {**here, "Origin": "http://localhost:8000"}) is None
        assert refused_code(c, {"Host": "localhost"}) is None  # any port
        assert refused_code(c, {}) == 1008  # TestClient's own "testserver"
        assert refused_code(c, {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}) == 1008
        assert refused_code(c, {"Host": "evil.example:8000"}) == 1008
        r = c.get("/api/targets", headers={"Host": "evil.example:8000"})
        assert r.status_code == 403 and "not a name of this server" in r.json()["detail"]
        assert c.get("/api/targets").status_code == 200


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("8.8.8.8", False),
    ("no-such-host.invalid", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# --------------------------------------------------------------------------- caps


def test_one_client_over_the_cap_gets_a_clear_refusal_and_the_others_carry_on():
    app = create_app(max_clients=2)
    with TestClient(app) as c:
        with c.websocket_connect("/ws") as a, c.websocket_connect("/ws") as b:
            ws_step(a), ws_step(b)
            with c.websocket_connect("/ws") as extra:
                extra.send_json({"type": "step"})  # answered only if admitted: a missing cap fails, not hangs
                msg = extra.receive_json()
                assert msg["type"] == "error" and "too many clients (2)" in msg["message"]
                with pytest.raises(WebSocketDisconnect) as err:
                    extra.receive_json()
                assert err.value.code == 1013  # try again later
            assert app.state.clients == 2
            ws_step(a), ws_step(b)
        deadline = time.monotonic() + 10
        while app.state.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.clients == 0  # slots are given back when clients leave
        with c.websocket_connect("/ws") as again:
            ws_step(again)


def test_the_refusal_needs_no_worker_thread():
    """Over the cap nothing runs in the sampler pool: the refusal arrives while every worker is busy."""
    app = create_app(max_clients=1, workers=2)
    release = threading.Event()
    with TestClient(app) as c:
        with c.websocket_connect("/ws") as a:
            ws_step(a)
            busy = [app.state.pool.submit(release.wait, 10) for _ in range(2)]
            try:
                with c.websocket_connect("/ws") as extra:
                    extra.send_json({"type": "step"})
                    assert "too many clients (1)" in extra.receive_json()["message"]
            finally:
                release.set()
            assert all(f.result() for f in busy)
            ws_step(a)


def test_slow_work_and_steps_do_not_wait_for_each_other():
    """GIF exports and densities run on their own thread: a busy one holds up no step, and busy
    step workers hold up no density (the page's first paint)."""
    app = create_app()
    release = threading.Event()
    with TestClient(app) as c:
        with c.websocket_connect("/ws") as ws:
            blocked = app.state.slow_pool.submit(release.wait, 10)
            try:
                ws_step(ws)  # answered while the slow thread is held
                assert not blocked.done()
            finally:
                release.set()
            assert blocked.result()
            release.clear()
            busy = app.state.pool.submit(release.wait, 10)
            try:
                r = c.get("/api/density", params={"target": "donut", "resolution": 16})
                assert r.status_code == 200 and not busy.done()
            finally:
                release.set()
            assert busy.result()
            ws.send_json({"type": "export", "format": "gif"})
            assert ws.receive_json()["type"] == "export"


def test_the_default_cap():
    assert MAX_CLIENTS == 32 and create_app().state.clients == 0
    with pytest.raises(ValueError, match="max_clients"):
        create_app(max_clients=0)


def test_a_frame_over_the_size_cap_closes_with_1009(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(" " * (LIMITS["max_frame_bytes"] + 1))
        msg = ws.receive_json()
        assert msg["type"] == "error" and "too big" in msg["message"]
        with pytest.raises(WebSocketDisconnect) as err:
            ws.receive_json()
        assert err.value.code == 1009
    with client.websocket_connect("/ws") as ws:  # in bytes, not characters
        ws.send_text("é" * (LIMITS["max_frame_bytes"] // 2 + 1))
        assert "too big" in ws.receive_json()["message"]


def test_a_message_over_the_protocol_limit_but_under_the_frame_cap_keeps_the_connection(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text(" " * (LIMITS["max_message_bytes"] + 1))
        assert "too long" in ws.receive_json()["message"]
        ws_step(ws)


def test_binary_frames_get_an_error_frame(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b'{"type": "step", "n": 1}')
        msg = ws.receive_json()
        assert msg["type"] == "error" and "binary frames" in msg["message"]
        ws_step(ws)


@pytest.mark.parametrize("compare", ["", "rwmh"])
def test_a_step_reply_holds_a_bounded_number_of_points(compare):
    """Chains x steps per reply is capped (the time budget alone would let a fast machine send
    200 steps of 2000 chains, tens of MB of JSON); the rest is truncated as the budget truncates."""
    session = Session(Registry())
    session.configure({"algorithm": "mala", "compare": compare, "chains": LIMITS["max_chains"], "seed": 0})
    msg = session.step(LIMITS["max_steps_per_message"], budget_s=math.inf)
    samplers = 2 if compare else 1
    most = LIMITS["max_reply_points"] // (LIMITS["max_chains"] * samplers)
    assert len(msg["frames"]) == most < LIMITS["max_steps_per_message"] and msg["truncated"] is True
    if compare:
        assert len(msg["compare"]["frames"]) == most
    small = Session(Registry())
    small.configure({"chains": 4})
    msg = small.step(LIMITS["max_steps_per_message"], budget_s=math.inf)
    assert len(msg["frames"]) == LIMITS["max_steps_per_message"] and msg["truncated"] is False


def test_density_replies_are_serialised_off_the_event_loop(monkeypatch):
    """A 128 x 128 density is 200 kB of JSON, milliseconds to write: in the event loop it would stall every
    socket while a page loads. It is encoded once, on the slow-work thread."""
    import json

    threads = []
    dumps = json.dumps

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return dumps(*args, **kwargs)

    monkeypatch.setattr(json, "dumps", recording)
    with TestClient(create_app()) as c:
        first = c.get("/api/density?target=banana&resolution=128")
        encoded = len(threads)
        second = c.get("/api/density?target=banana&resolution=128")
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert encoded == len(threads) == 1 and threads[0].startswith("playground-slow"), threads


# --------------------------------------------------------------------------- hostile input

HOSTILE = [
    "", " ", "null", "true", "1", '"step"', "[]", "{}", "not json", "{", '{"type": "step"', "\x00",
    '{"type": null}', '{"type": 5}', '{"type": ["step"]}', '{"type": {"a": 1}}', '{"type": ""}',
    '{"type": "eval", "code": "__import__(\'os\')"}', '{"type": "__class__"}', '{"type": "\\ud800"}',
    '{"type": "reset", "id": "\\udfff"}', '{"type": "step", "id": {"nested": [1, 2]}}',
    '{"type": "step", "n": NaN}', '{"type": "step", "n": Infinity}', '{"type": "step", "n": -Infinity}',
    '{"type": "step", "n": 1e999}', '{"type": "step", "n": 1e308}', '{"type": "step", "n": -1}',
    '{"type": "step", "n": 1.5}', '{"type": "step", "n": true}', '{"type": "step", "n": null}',
    '{"type": "step", "n": [1]}', '{"type": "step", "n": "1"}', '{"type": "step", "n": ' + "9" * 4000 + "}",
    '{"type": "configure", "chains": ' + "9" * 4000 + "}", '{"type": "configure", "chains": NaN}',
    '{"type": "configure", "chains": 1e999}', '{"type": "configure", "chains": -0.0}',
    '{"type": "configure", "step_size": -Infinity}', '{"type": "configure", "step_size": 1e-320}',
    '{"type": "configure", "seed": -1}', '{"type": "configure", "target": {"$ne": ""}}',
    '{"type": "configure", "target": ["banana"]}', '{"type": "configure", "target": "../../etc/passwd"}',
    '{"type": "configure", "algorithm": "__init__"}', '{"type": "configure", "compare": null}',
    '{"type": "configure", "expert1": 1}', '{"type": "configure", "histogram_bins": 1e9}',
    '{"type": "configure", "animate_proposal": "yes"}', '{"type": "configure", "sigma_min": "0.1"}',
    '{"type": "configure", "__proto__": {}}', '{"type": "configure", "type": "configure"}',
    '{"type": "export", "format": null}', '{"type": "export", "format": "../../x"}',
    '{"type": "export", "format": "gif"}',
    '{"type": "step", "type": "reset", "n": 1}',  # a duplicate key: the last one wins
    "[" * 2000 + "]" * 2000,  # nested too deeply for the parser
    '{"a":' * 600 + "1" + "}" * 600,
    '{"type": "configure", "chains": ' + "[" * 1500 + "]" * 1500 + "}",
    "\ud7ff\ue000\uffff",
]


class Streamer(threading.Thread):
    """A second, well-behaved client stepping all along: its stream must not notice the fuzz."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.stop, self.replies, self.problems = client, threading.Event(), 0, []

    def run(self):
        try:
            with self.client.websocket_connect("/ws", headers={"Origin": "http://testserver"}) as ws:
                ws.send_json({"type": "configure", "algorithm": "hmc", "target": "eight_gaussians", "chains": 8})
                assert ws.receive_json()["type"] == "configured"
                while not self.stop.is_set():
                    msg = ws_step(ws, 2)
                    # a loaded machine may stop a message at its time budget: fewer frames, said so
                    assert len(msg["frames"]) == 2 or (msg["truncated"] is True and len(msg["frames"]) == 1)
                    assert math.isfinite(msg["diagnostics"]["acceptance_rate"])
                    self.replies += 1
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.problems.append(repr(err))


@pytest.fixture
def fuzz_client(monkeypatch):
    monkeypatch.setitem(LIMITS, "messages_per_second", 10_000)  # the fuzz is about content, not rate
    with TestClient(create_app()) as c:
        streamer = Streamer(c)
        streamer.start()
        deadline = time.monotonic() + 30
        while streamer.replies == 0 and not streamer.problems and time.monotonic() < deadline:
            time.sleep(0.01)
        before = streamer.replies
        yield c
        while streamer.replies < before + 3 and not streamer.problems and time.monotonic() < deadline + 30:
            time.sleep(0.01)  # the stream carries on after the fuzz too
        streamer.stop.set()
        streamer.join(30)
        assert not streamer.is_alive() and streamer.problems == []
        assert streamer.replies >= before + 3, "the other client's stream stalled"


def test_hostile_frames_get_error_frames_and_the_server_lives_on(fuzz_client):
    c = fuzz_client
    with c.websocket_connect("/ws") as ws:
        for frame in HOSTILE:  # none of these is worth more than an error frame: the connection stays
            assert len(frame.encode("utf-8", "surrogatepass")) <= LIMITS["max_message_bytes"]
            ws.send_text(frame)
            msg = ws.receive_json()
            if msg["type"] == "error":
                assert isinstance(msg["message"], str) and msg["message"], frame[:80]
            else:  # a valid message after all (a duplicate key, a step with defaults)
                assert msg["type"] in ("frames", "configured", "export"), (frame[:80], msg)
        for payload in (b"", b"\x00\xff" * 100, b'{"type": "step"}', bytes(range(256))):
            ws.send_bytes(payload)
            assert "binary frames" in ws.receive_json()["message"]
        ws.send_text("x" * (LIMITS["max_frame_bytes"] + 1))  # the one frame that ends the connection
        assert "too big" in ws.receive_json()["message"]
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    with c.websocket_connect("/ws") as fresh:  # the server lives on
        ws_step(fresh, 3)


def test_out_of_order_messages(fuzz_client):
    """Step, export and reset before any configure run on the default settings; steps after a
    refused configure run on the settings in force."""
    with fuzz_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "export", "format": "csv"})
        assert ws.receive_json()["type"] == "export"
        ws.send_json({"type": "reset"})
        assert ws.receive_json()["settings"] == DEFAULTS
        first = ws_step(ws)
        ws.send_json({"type": "configure", "chains": -3})
        assert ws.receive_json()["type"] == "error"
        assert len(ws_step(ws)["frames"][0]["x"]) == len(first["frames"][0]["x"]) == DEFAULTS["chains"]
        for _ in range(3):  # many messages without reading: answered in order, one each
            ws.send_json({"type": "step", "n": 1, "id": _})
        assert [ws.receive_json()["id"] for _ in range(3)] == [0, 1, 2]


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
# small valid values too, so that hypothesis also reaches configurations that run
VALID = {"chains": st.integers(1, 16), "algorithm": st.sampled_from(["rwmh", "mala", "hmc", "nuts", "pt", "ula"]),
         "target": st.sampled_from(["banana", "eight_gaussians", "standard", "product", "nope"]),
         "step_size": st.floats(1e-3, 50.0), "leapfrog_steps": st.integers(1, 20),
         "compare": st.sampled_from(["", "rwmh", "annealed", "diffusion"])}
FIELD = st.sampled_from(sorted(DEFAULTS)).flatmap(
    lambda key: st.tuples(st.just(key), (VALID[key] | ANY_JSON) if key in VALID else ANY_JSON))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=st.lists(FIELD, min_size=1, max_size=3), n=st.one_of(st.integers(-5, 5), ANY_JSON),
       fmt=ANY_JSON)
def test_fuzzed_fields_get_a_reply_never_a_crash(fuzz_client, fields, n, fmt):
    with fuzz_client.websocket_connect("/ws") as ws:
        for kind, body in (("configure", dict(fields)), ("step", {"n": n}), ("export", {"format": fmt})):
            ws.send_text(json.dumps({"type": kind, **body}))  # NaN and Infinity as Python's json writes them
            msg = ws.receive_json()
            assert msg["type"] in ("error", "configured", "frames", "export"), msg
            if msg["type"] == "error":
                assert msg["reply_to"] == kind and msg["message"]
        ws_step(ws)  # the connection still serves


# --------------------------------------------------------------------------- a real server


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_server():
    """``serve`` as ``ebmlab serve`` runs it (uvicorn, its frame limit and Host names), 3 clients at most."""
    pytest.importorskip("websockets")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from ebmlab.playground.app import serve; serve('127.0.0.1', {port}, [], "
                               "max_clients=3)"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"playground server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


def connect(port, origin=None, host="127.0.0.1"):
    from websockets.sync.client import connect as ws_connect

    return ws_connect(f"ws://{host}:{port}/ws", origin=origin, max_size=None, open_timeout=10, close_timeout=2)


def recv_json(ws):
    return json.loads(ws.recv(timeout=10))


def test_real_server_refuses_other_sites_at_the_handshake(real_server):
    from websockets.exceptions import InvalidStatus

    port = real_server
    with pytest.raises(InvalidStatus) as err:
        connect(port, origin=EVIL)
    assert err.value.response.status_code == 403
    for origin in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        with connect(port, origin=origin) as ws:
            ws.send('{"type": "step"}')
            assert recv_json(ws)["type"] == "frames"


def test_real_server_http_api_refuses_other_sites_and_rebound_names(real_server):
    import httpx

    base = f"http://127.0.0.1:{real_server}"
    assert httpx.get(base + "/api/targets").status_code == 200
    assert httpx.get(base + "/api/targets", headers={"Origin": f"http://localhost:{real_server}"}).status_code == 200
    r = httpx.get(base + "/api/targets", headers={"Origin": EVIL})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    r = httpx.get(base + "/api/targets", headers={"Host": f"evil.example:{real_server}"})  # DNS rebinding
    assert r.status_code == 403 and "not a name of this server" in r.json()["detail"]
    assert httpx.get(base + "/", headers={"Host": f"evil.example:{real_server}"}).status_code == 200


def test_real_server_closes_oversized_frames_with_1009(real_server):
    from websockets.exceptions import ConnectionClosed

    with connect(real_server) as ws:
        ws.send("x" * (LIMITS["max_frame_bytes"] + 1))
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009


def test_real_server_does_not_compress_frames(real_server):
    """Per-message deflate is off: on loopback it only costs CPU, and its per-connection zlib state kept
    the server's RSS creeping under connection churn (benchmarks/soak.py)."""
    with connect(real_server) as ws:  # the client offers permessage-deflate
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send('{"type": "step"}')
        assert recv_json(ws)["type"] == "frames"


def test_real_server_echoes_lone_surrogates_escaped(real_server):
    """A message type or id holding a lone surrogate came back unencodable as UTF-8 and the
    connection died with an ASGI exception; it gets an ordinary error frame."""
    with connect(real_server) as ws:
        ws.send('{"type": "\\ud800"}')
        msg = recv_json(ws)
        assert msg["type"] == "error" and msg["reply_to"] == "\ud800"
        ws.send('{"type": "reset", "id": "\\udfff"}')
        assert recv_json(ws)["id"] == "\udfff"
        ws.send('{"type": "step"}')
        assert recv_json(ws)["type"] == "frames"


def test_real_server_refuses_the_client_over_its_cap(real_server):
    from websockets.exceptions import ConnectionClosed

    time.sleep(0.5)  # the previous tests' connections are gone
    kept = [connect(real_server) for _ in range(3)]
    try:
        for ws in kept:
            ws.send('{"type": "step"}')
            assert recv_json(ws)["type"] == "frames"
        with connect(real_server) as extra:
            msg = recv_json(extra)
            assert msg["type"] == "error" and "too many clients (3)" in msg["message"]
            with pytest.raises(ConnectionClosed) as err:
                extra.recv(timeout=10)
            assert err.value.rcvd.code == 1013
        for ws in kept:
            ws.send('{"type": "step"}')
            assert recv_json(ws)["type"] == "frames"
    finally:
        for ws in kept:
            ws.close()


# --------------------------------------------------------------------------- ebmlab serve


@pytest.fixture
def served(monkeypatch):
    """``ebmlab serve`` up to the server: what it would have been started with."""
    import ebmlab.playground.app as playground

    calls = []
    monkeypatch.setattr(playground, "serve", lambda **kwargs: calls.append(kwargs))
    return calls


def run_cli(args, capsys):
    from ebmlab.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_on_a_non_loopback_host_needs_allow_remote(served, capsys):
    port = _free_port()
    code, out, err = run_cli(["serve", "--host", "0.0.0.0", "--port", str(port)], capsys)
    assert code == 2 and out == "" and served == []
    assert err.count("\n") == 1 and err.startswith("ebmlab: error: --host 0.0.0.0 is not loopback")
    assert "--allow-remote" in err and "drive the sampler" in err


def test_serve_with_allow_remote_warns_on_stderr(served, capsys):
    port = _free_port()
    code, out, err = run_cli(["serve", "--host", "0.0.0.0", "--port", str(port), "--allow-remote",
                              "--max-clients", "5"], capsys)
    assert code == 0, err
    assert err == f"ebmlab: warning: serving on 0.0.0.0:{port} (not loopback): anyone who can reach this port " \
                  "can drive the sampler\n"
    assert served == [{"host": "0.0.0.0", "port": port, "models": [], "max_clients": 5, "allow_remote": True}]


def test_serve_on_loopback_needs_no_flag_and_says_nothing(served, capsys):
    port = _free_port()
    code, out, err = run_cli(["serve", "--port", str(port)], capsys)
    assert code == 0 and err == ""
    assert served == [{"host": "127.0.0.1", "port": port, "models": [], "max_clients": MAX_CLIENTS,
                       "allow_remote": False}]
    code, out, err = run_cli(["serve", "--port", str(port), "--max-clients", "0"], capsys)
    assert code == 2 and err.startswith("ebmlab: error:") and "--max-clients" in err and len(served) == 1


def test_the_python_call_refuses_a_remote_host_without_allow_remote(monkeypatch):
    import uvicorn

    from ebmlab.playground.app import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    with pytest.raises(ValueError, match="allow_remote=True"):
        serve("0.0.0.0", _free_port())
