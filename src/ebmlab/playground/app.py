"""The interactive sampler playground: a FastAPI app that runs ebmlab samplers
and streams every step to a canvas page over a WebSocket.

The page (``static/``) only draws: all sampling, diagnostics, densities and
exported files are computed here with the library's own samplers and
evaluation functions.

Protocol on ``/ws`` (JSON text messages):

client -> server
    ``{"type": "configure", ...settings}``  (any subset of :data:`DEFAULTS`;
        resets the chains unless only :data:`SOFT` settings changed)
    ``{"type": "step", "n": k}``            (1 <= k <= LIMITS["max_steps_per_message"])
    ``{"type": "reset"}``                   (same settings, fresh chains)
    ``{"type": "export", "format": "csv" | "npz" | "gif"}``

server -> client
    ``{"type": "configured", "reset": bool, "settings": {...},
       "bounds": [[lo, hi], [lo, hi]], "x": [[x1, x2], ...], "diagnostics": {...},
       "compare": null | {"algorithm", "x", "diagnostics"}}``
    ``{"type": "frames", "frames": [{"x", "proposal", "accepted",
       ["trajectory"], ["sigma", "annealing"], ["swap_counts"],
       ["t", "sigma", "step", "done", "kept"]}, ...], "diagnostics": {...},
       "truncated": bool, ["compare": {"algorithm", "frames", "diagnostics"}],
       ["error": "..."]}``
    ``{"type": "export", "format", "filename", "data"}`` (``data``: CSV text,
       or base64 of the ``.npz`` / ``.gif`` bytes)
    ``{"type": "error", "message": "...", "reply_to": type | null}``

Side by side: ``compare`` names a second algorithm ("" = off); both advance
by the same number of steps (see :mod:`ebmlab.playground.session`).

The last frame of each reply also carries what the page animates beyond the
chains: NUTS' trees (``"tree"``: per chain its leapfrog positions from the
leftmost to the rightmost leaf, ``"num_grad_evals"``, ``"tree_depth"``,
``"divergent"``; with ``animate_proposal``), parallel tempering's replicas
(``"replicas"`` ``(K, chains, 2)``, ``"swaps"`` ``(K - 1, chains)``,
``"temperatures"``). Reverse diffusion frames carry the time ``t``, the
noise level ``sigma`` (the forward marginal's std), the ``step`` and whether
the process is ``done``; only the last one is ``kept`` (its points are the
samples). Diagnostics hold ``nuts``, ``tempering`` and ``diffusion`` sections
(``null`` for the other algorithms). ``/api/density`` takes a ``temperature``
for the tempered densities ``p^(1/T)`` drawn under the replicas.

Annealed Langevin (``algorithm="annealed"``, Song & Ermon 2019) runs on a
noise-conditional score (see :mod:`ebmlab.playground.models` for which
models have one and :mod:`ebmlab.playground.session` for its schedule).

The modules by concern: :mod:`~ebmlab.playground.settings` (names, defaults,
limits, validation), :mod:`~ebmlab.playground.models` (what can be sampled),
:mod:`~ebmlab.playground.session` (the chains and their stepping),
:mod:`~ebmlab.playground.gif` (the GIF export) and this one (the FastAPI app,
its routes and :func:`serve`).

Safety: the server binds 127.0.0.1 by default; every setting is validated
against known names and finite ranges; models come only from the server's
command line (the page can name them, never give paths); each connection runs
one command at a time, its steps run in a small shared thread pool under a
per-message time budget, exports are bounded in frames, size and time, and
messages are rate-limited per connection.

Only the page drives the server: ``/ws`` and ``/api/*`` (everything but
``/`` and ``/static``) refuse a request whose ``Origin`` is another site's
(a WebSocket is closed with 1008 before it opens, HTTP gets 403 with a JSON
``detail``; see :func:`_refusal` for the rule), and a server bound to
loopback answers there only to loopback ``Host`` names. At most
``max_clients`` WebSockets are open at once (one more gets an error frame
and close code 1013); a frame over ``LIMITS["max_frame_bytes"]`` ends its
connection (1009), and a step reply holds at most
``LIMITS["max_reply_points"]`` chain-steps. A reply cut short by the budget or
that bound says ``"truncated": true``, and the page asks for the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import socket
import time
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Collection
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .models import Model, Registry, load_models
from .session import KL_SUBDIVISIONS, Session, cached_histogram_kl
from .settings import DEFAULTS, LIMITS, PRODUCT, PlaygroundError

__all__ = [
    "DEFAULTS",
    "KL_SUBDIVISIONS",
    "LIMITS",
    "Model",
    "PlaygroundError",
    "Registry",
    "Session",
    "cached_histogram_kl",
    "create_app",
    "is_loopback",
    "load_models",
    "serve",
]

STATIC = Path(__file__).parent / "static"
MAX_CLIENTS = 32  # concurrent WebSocket connections by default (``ebmlab serve --max-clients``)
#: The names of this machine's loopback interface; a page on one may drive a server reached by another
#: (same scheme and port), and a server bound to loopback answers only to them (see :func:`serve`).
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only.

    Args:
        host: an interface as given to ``--host``: an IP address or a name.

    Returns:
        True for loopback addresses (``127.0.0.0/8``, ``::1``) and for names
        that resolve to loopback addresses only; False for anything else
        (``0.0.0.0``, ``::``, a public address, a name that does not resolve).
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def _endpoint(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of ``scheme://netloc`` (the default port filled in), or None when malformed."""
    if scheme not in _DEFAULT_PORTS or not netloc or any(c in netloc for c in "/?#@\\ "):
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def _refusal(scope: Scope, hosts: Collection[str] | None) -> str | None:
    """Why a request may not act (its page is on another site, or it names another host), or None.

    Allowed: no ``Origin`` header (curl, scripts, tests), or an ``Origin`` whose
    ``scheme://host:port`` is the one the request came to (its ``Host`` header);
    two loopback names (:data:`LOOPBACK_NAMES`) for the same scheme and port
    count as one. With ``hosts``, the ``Host`` header must name one of them
    (any port): a page on another site whose name was rebound to this
    machine's address (DNS rebinding) is same-origin by the first rule.
    """
    headers = {}
    for key, value in scope.get("headers", []):
        key = key.decode("latin-1").lower()
        if key in ("origin", "host"):
            if key in headers:
                return f"more than one {key.title()} header"
            headers[key] = value.decode("latin-1").strip()
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    host = _endpoint(scheme, headers.get("host", ""))
    if hosts is not None and (host is None or host[1] not in hosts):
        return (f"Host {headers.get('host', '')!r} is not a name of this server "
                f"(it answers to {', '.join(sorted(hosts))})")
    if "origin" not in headers:
        return None
    origin_text = headers["origin"]
    try:
        parts = urlsplit(origin_text)  # an origin is scheme://host[:port], nothing more
        origin = None if parts.path or parts.query or parts.fragment else _endpoint(parts.scheme, parts.netloc)
    except ValueError:
        origin = None
    if origin is not None and host is not None and (
            origin == host
            or (origin[0], origin[2]) == (host[0], host[2]) and {origin[1], host[1]} <= LOOPBACK_NAMES):
        return None
    return f"cross-origin request refused: Origin {origin_text!r} is not this server's page"


class _OriginGuard:
    """ASGI middleware: everything but the page and its static files runs only for the page's own
    origin (see :func:`_refusal`). HTTP gets 403 with a JSON ``detail``; a WebSocket is closed
    before it is accepted with code 1008 (policy violation; uvicorn answers the handshake with 403)."""

    def __init__(self, app: ASGIApp, hosts: Collection[str] | None = None) -> None:
        self.app, self.hosts = app, None if hosts is None else frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, path = scope["type"], scope.get("path", "")
        if kind not in ("http", "websocket") or (kind == "http" and (path == "/" or path.startswith("/static/"))):
            await self.app(scope, receive, send)
            return
        problem = _refusal(scope, self.hosts)
        if problem is None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await JSONResponse({"detail": problem}, status_code=403)(scope, receive, send)
        else:
            reason = problem.encode()[:123].decode(errors="ignore")  # a close reason holds 123 bytes
            await WebSocket(scope, receive, send).close(code=1008, reason=reason)


class _RateLimiter:
    """Token bucket: ``rate`` messages per second, bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, 2 * rate
        self.tokens, self.last = self.capacity, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    """Send ``message`` as JSON text escaped to ASCII: what a client sent and is echoed back (a
    message type, an id) may hold lone surrogates, which have no UTF-8 encoding."""
    await websocket.send_text(json.dumps(message, separators=(",", ":")))


def create_app(models: dict[str, Any] | None = None, *, workers: int = 1, max_clients: int = MAX_CLIENTS,
               hosts: Collection[str] | None = None) -> FastAPI:
    """The playground app.

    Args:
        models: extra 2-D targets by name: each an energy with a ``bounds``
            attribute, an ``(energy, bounds)`` pair, or a :class:`Model` (which
            may carry a noise-conditional score; see :func:`load_models` for
            ``ebmlab train`` run directories).
        workers: threads that run sessions' messages (configure, step, reset, CSV / JSON
            export), shared by all connections. One by default: the threads share one GIL, and
            in the soak benchmark (docs/benchmarks.md) a second one raised the CPU per request
            from 4.3 to 6.0 ms and the p99 step latency from 93 to 176 ms (eight: 8.9 ms and
            491 ms). Densities and GIF exports, which take up to seconds when not cached, run on
            one more thread of their own, so that they never hold up a step.
        max_clients: concurrent WebSocket connections; one more is accepted,
            sent an error frame and closed with code 1013 (try again later).
        hosts: the ``Host`` names the WebSocket and ``/api`` answer to (any
            port; ``None``: any name). :func:`serve` passes
            :data:`LOOPBACK_NAMES` when it binds a loopback interface.

    Returns:
        The FastAPI app: ``/`` (the page), ``/static``, ``/api/targets``,
        ``/api/density`` and the ``/ws`` WebSocket.

    Raises:
        ValueError: for a model name that clashes with a built-in target, a model without 2-D bounds,
            or ``max_clients < 1``.
    """
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
        raise ValueError(f"max_clients must be a positive integer, got {max_clients!r}")
    registry = Registry(models)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="playground")
    slow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playground-slow")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        slow_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ebmlab playground", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry = registry
    app.state.pool = pool
    app.state.slow_pool = slow_pool
    app.state.clients = 0  # open WebSocket connections (at most max_clients)
    app.add_middleware(_OriginGuard, hosts=hosts)

    async def run(fn: Callable, *args: Any, slow: bool = False) -> Any:
        return await asyncio.get_running_loop().run_in_executor(slow_pool if slow else pool, fn, *args)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/targets")
    def api_targets() -> JSONResponse:
        return JSONResponse(registry.info())

    @app.get("/api/density")
    async def api_density(
        target: str = Query(...),
        resolution: int = Query(128),
        expert1: str = Query(DEFAULTS["expert1"]),
        expert2: str = Query(DEFAULTS["expert2"]),
        temperature: float = Query(1.0),
    ) -> Response:
        lo, hi = LIMITS["min_resolution"], LIMITS["max_resolution"]
        if not lo <= resolution <= hi:
            raise HTTPException(422, f"resolution must be an integer in [{lo}, {hi}], got {resolution}")
        t_max = LIMITS["max_max_temperature"]
        if not (math.isfinite(temperature) and 1.0 <= temperature <= t_max):
            raise HTTPException(422, f"temperature must be a finite number in [1, {t_max:g}], got {temperature}")
        if target not in [*registry.names, PRODUCT]:
            raise HTTPException(404, f"unknown target {target!r}; expected one of: {', '.join([*registry.names, PRODUCT])}")
        try:
            # serialised in the pool too: 128 x 128 densities take tens of ms, which would stall every socket
            body = await run(registry.density_json, target, resolution, expert1, expert2, temperature, slow=True)
            return Response(body, media_type="application/json")
        except PlaygroundError as err:
            raise HTTPException(422, str(err)) from None

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        if app.state.clients >= max_clients:  # refused at once: no session, no worker thread
            try:
                await websocket.accept()
                await _send(websocket, {"type": "error", "reply_to": None, "message":
                                        f"too many clients ({max_clients}) on this server; try again later"})
                await websocket.close(code=1013, reason="too many clients")
            except (WebSocketDisconnect, RuntimeError):
                pass
            return
        app.state.clients += 1
        try:
            await websocket.accept()
            await _serve_connection(websocket)
        except WebSocketDisconnect:
            pass
        finally:
            app.state.clients -= 1

    async def _serve_connection(websocket: WebSocket) -> None:
        limiter = _RateLimiter(LIMITS["messages_per_second"])

        async def send_error(message: str, reply_to: str | None = None) -> None:
            await _send(websocket, {"type": "error", "message": message, "reply_to": reply_to})

        session = await run(Session, registry)
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return
            text, data = frame.get("text"), frame.get("bytes")
            size = len(text.encode("utf-8", "surrogatepass")) if text is not None else len(data or b"")
            if size > LIMITS["max_frame_bytes"]:  # uvicorn (ws_max_size) closes such frames before they arrive
                await send_error(f"message too big ({size} bytes > {LIMITS['max_frame_bytes']}); closing")
                await websocket.close(code=1009, reason="message too big")
                return
            if not limiter.allow():
                await send_error(f"rate limited: at most {LIMITS['messages_per_second']} messages per second")
                continue
            if text is None:
                await send_error("binary frames are not part of the protocol: send JSON text messages")
                continue
            if size > LIMITS["max_message_bytes"]:
                await send_error(f"message too long ({size} bytes > {LIMITS['max_message_bytes']})")
                continue
            try:
                msg = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested too deeply
                await send_error("messages must be JSON objects")
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                await send_error('messages must be JSON objects with a "type"')
                continue
            kind = msg.pop("type")
            req_id = msg.pop("id", None)
            try:
                if kind == "configure":
                    reply = await run(session.configure, msg)
                elif kind == "reset":
                    reply = await run(session.reset)
                elif kind == "step":
                    reply = await run(session.step, msg.get("n", 1))
                elif kind == "export":
                    fmt = msg.get("format", "csv")
                    reply = await run(session.export, fmt, slow=fmt == "gif")
                else:
                    raise PlaygroundError(f"unknown message type {kind!r}; expected configure, step, reset or export")
            except PlaygroundError as err:
                await send_error(str(err), kind)
                continue
            except Exception:  # a bug, not the client's error: this connection ends, the server lives on
                _log.exception("playground: a %r message failed", kind[:40])
                await send_error(f"internal error while handling a {kind!r} message; closing", kind)
                await websocket.close(code=1011, reason="internal error")
                return
            if isinstance(req_id, (int, str)):
                reply["id"] = req_id
            await _send(websocket, reply)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[Path] | None = None, *,
          max_clients: int = MAX_CLIENTS, allow_remote: bool = False) -> None:
    """Run the playground with uvicorn (blocking).

    Args:
        host: the interface to bind (the loopback one by default: the page runs code on this machine).
        port: the TCP port.
        models: ``ebmlab train`` run directories (2-D energies and
            noise-conditional score models, see :func:`load_models`).
        max_clients: concurrent WebSocket connections (see :func:`create_app`).
        allow_remote: required for a ``host`` that is not loopback (see
            :func:`is_loopback`): anyone who can reach the port can then drive
            the sampler. On loopback the server answers only to loopback
            ``Host`` names (:data:`LOOPBACK_NAMES`), which keeps out pages
            whose site name was rebound to 127.0.0.1.

    Raises:
        ValueError: for a host that is not loopback without ``allow_remote``.
    """
    import uvicorn

    local = is_loopback(host)
    if not (local or allow_remote):
        raise ValueError(f"{host} is not a loopback interface: pass allow_remote=True to serve the playground "
                         "to anyone who can reach the port")
    hosts = LOOPBACK_NAMES | {host.strip().strip("[]").lower()} if local else None
    app = create_app(load_models(models or []), max_clients=max_clients, hosts=hosts)
    print(f"ebmlab playground on http://{host}:{port}/")
    # ws_max_size: the transport refuses larger frames (close 1009) before reading them. No per-message
    # deflate: on loopback it only costs CPU, and its zlib state per connection kept the server's RSS
    # creeping under connection churn (+22 MiB over 8,000 connections; flat without it).
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=LIMITS["max_frame_bytes"],
                ws_per_message_deflate=False)
