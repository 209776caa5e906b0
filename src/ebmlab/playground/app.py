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
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

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
    "load_models",
    "serve",
]

STATIC = Path(__file__).parent / "static"


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


def create_app(models: dict[str, Any] | None = None, *, workers: int = 2) -> FastAPI:
    """The playground app.

    Args:
        models: extra 2-D targets by name: each an energy with a ``bounds``
            attribute, an ``(energy, bounds)`` pair, or a :class:`Model` (which
            may carry a noise-conditional score; see :func:`load_models` for
            ``ebmlab train`` run directories).
        workers: threads that run sampler steps, shared by all connections.

    Returns:
        The FastAPI app: ``/`` (the page), ``/static``, ``/api/targets``,
        ``/api/density`` and the ``/ws`` WebSocket.

    Raises:
        ValueError: for a model name that clashes with a built-in target, or a model without 2-D bounds.
    """
    registry = Registry(models)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="playground")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ebmlab playground", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry = registry
    app.state.pool = pool

    async def run(fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

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
    ) -> JSONResponse:
        lo, hi = LIMITS["min_resolution"], LIMITS["max_resolution"]
        if not lo <= resolution <= hi:
            raise HTTPException(422, f"resolution must be an integer in [{lo}, {hi}], got {resolution}")
        t_max = LIMITS["max_max_temperature"]
        if not (math.isfinite(temperature) and 1.0 <= temperature <= t_max):
            raise HTTPException(422, f"temperature must be a finite number in [1, {t_max:g}], got {temperature}")
        if target not in [*registry.names, PRODUCT]:
            raise HTTPException(404, f"unknown target {target!r}; expected one of: {', '.join([*registry.names, PRODUCT])}")
        try:
            return JSONResponse(await run(registry.density, target, resolution, expert1, expert2, temperature))
        except PlaygroundError as err:
            raise HTTPException(422, str(err)) from None

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        limiter = _RateLimiter(LIMITS["messages_per_second"])
        session: Session | None = None

        async def send_error(message: str, reply_to: str | None = None) -> None:
            await websocket.send_json({"type": "error", "message": message, "reply_to": reply_to})

        try:
            session = await run(Session, registry)
            while True:
                text = await websocket.receive_text()
                if len(text) > LIMITS["max_message_bytes"]:
                    await send_error(f"message too long ({len(text)} bytes > {LIMITS['max_message_bytes']})")
                    continue
                if not limiter.allow():
                    await send_error(f"rate limited: at most {LIMITS['messages_per_second']} messages per second")
                    continue
                try:
                    msg = json.loads(text)
                except ValueError:
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
                        reply = await run(session.export, msg.get("format", "csv"))
                    else:
                        raise PlaygroundError(f"unknown message type {kind!r}; expected configure, step, reset or export")
                except PlaygroundError as err:
                    await send_error(str(err), kind)
                    continue
                if isinstance(req_id, (int, str)):
                    reply["id"] = req_id
                await websocket.send_json(reply)
        except WebSocketDisconnect:
            return

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[Path] | None = None) -> None:
    """Run the playground with uvicorn (blocking).

    Args:
        host: the interface to bind (the loopback one by default: the page runs code on this machine).
        port: the TCP port.
        models: ``ebmlab train`` run directories (2-D energies and
            noise-conditional score models, see :func:`load_models`).
    """
    import uvicorn

    app = create_app(load_models(models or []))
    print(f"ebmlab playground on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=LIMITS["max_message_bytes"] * 4)
