"""Load test of the playground: N concurrent WebSocket clients stepping on loopback.

Starts ``ebmlab.playground`` with uvicorn in a subprocess (OMP_NUM_THREADS=1) on
a free port, connects N clients (default 50) that behave like autoplaying pages
(MALA on the banana, 4 chains; send ``step n=1``, wait for the frames, think
``--think`` ms -- default 300 = the page's default autoplay delay 100 ms +
tweening 200 ms -- and repeat) for ``--seconds`` (default 20), and reports the
step round-trip latency percentiles (send -> frames received, diagnostics
included). Target: p99 < 200 ms on 2 cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/playground_load.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/playground_load.py --think 0   # saturation
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/playground_load.py --write docs/benchmarks.md

``--write`` replaces only the ``## Playground`` section of that file (appends it
when missing) and leaves every other section untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from doc_sections import write_section


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from ebmlab.playground.app import serve; serve('127.0.0.1', {port}, [])"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)


async def client(url: str, settings: dict, seconds: float, think: float, latencies: list, errors: list,
                 start_gate: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "configure", **settings}))
        json.loads(await ws.recv())
        await start_gate.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await ws.send('{"type": "step", "n": 1}')
            msg = json.loads(await ws.recv())
            dt = time.perf_counter() - t0
            if msg["type"] != "frames":
                errors.append(msg.get("message"))
            else:
                latencies.append(dt)
            if think:
                await asyncio.sleep(think)


async def run(url: str, n: int, seconds: float, think: float, settings: dict) -> tuple[np.ndarray, list, float]:
    latencies: list[float] = []
    errors: list = []
    gate = asyncio.Event()
    tasks = [asyncio.create_task(client(url, {**settings, "seed": i}, seconds, think, latencies, errors, gate))
             for i in range(n)]
    await asyncio.sleep(1.0)  # let every client connect and configure
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return np.array(latencies) * 1000, errors, time.perf_counter() - t0


def write_playground_section(path: Path, body: str) -> None:
    write_section(path, "## Playground\n\n" + body.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--think", type=float, default=300.0, help="ms between a reply and the next step (default 300)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--algorithm", default="mala")
    ap.add_argument("--target", default="banana")
    ap.add_argument("--url", help="an already running server's ws URL (default: start one)")
    ap.add_argument("--write", type=Path, help="replace the '## Playground' section of this markdown file")
    args = ap.parse_args()

    settings = {"algorithm": args.algorithm, "target": args.target, "chains": args.chains, "step_size": 0.3}
    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        proc = start_server(port)
        url = f"ws://127.0.0.1:{port}/ws"
    try:
        lat, errors, wall = asyncio.run(run(url, args.clients, args.seconds, args.think / 1000, settings))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    if lat.size == 0:
        sys.exit(f"no step completed; errors: {errors[:5]}")
    p50, p90, p99, mx = np.percentile(lat, [50, 90, 99, 100])
    rate = lat.size / wall
    verdict = "PASS" if p99 < 200 else "FAIL"
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/playground_load.py " + " ".join(sys.argv[1:])
    print(f"{args.clients} clients, {args.seconds:g} s, think {args.think:g} ms, {args.algorithm} on {args.target}, "
          f"{args.chains} chains: {lat.size} steps ({rate:.0f}/s), errors {len(errors)}")
    print(f"step latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {mx:.1f}  -> {verdict} (p99 < 200 ms)")
    if args.write:
        body = f"""
Step latency of the interactive playground (`ebmlab serve`) under load: `benchmarks/playground_load.py` starts the server (uvicorn, `OMP_NUM_THREADS=1`, 2 sampler worker threads) and drives {args.clients} concurrent WebSocket clients on loopback for {args.seconds:g} s. Each client behaves like an autoplaying page: `{args.algorithm}` on `{args.target}`, {args.chains} chains, sends `step n=1`, waits for the frames (which include all diagnostics: acceptance, bulk ESS, R-hat, histogram KL), thinks {args.think:g} ms, repeats. Latency = send to reply received. Target: p99 < 200 ms.

This run: `{cmd.strip()}`

Machine: {os.cpu_count()} cores visible; Python {platform.python_version()}; shared with other work while this ran.

| clients | think (ms) | steps | steps/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | errors |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| {args.clients} | {args.think:g} | {lat.size} | {rate:.0f} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {mx:.1f} | {len(errors)} |
"""
        write_playground_section(args.write, body)
        print(f"wrote the Playground section of {args.write}")


if __name__ == "__main__":
    main()
