"""Reliability soak of the playground: hundreds of clients coming and going against one server for minutes.

Starts ``ebmlab.playground`` (uvicorn, ``OMP_NUM_THREADS=1``, its default worker threads) in a subprocess on a
free loopback port and, for ``--seconds`` (default 300), runs ``--clients`` (default 200) churning clients and
``--steady`` (default 8) steady ones. A churning client loops: load like a page (``/api/targets`` and its
target's density), connect, configure (a random sampler among
rwmh, mala, hmc, nuts and pt on a random target, 4 to 16 chains), one to three step messages of 1 to 5 steps,
sometimes a CSV export or an invalid setting, then leaves: politely, with a step still in flight, or by
dropping the TCP connection; it pauses 0.5 to 1.5 times ``--pause`` (default 10 s) and comes back. A steady
client stays connected like an autoplaying page (MALA on the banana, 4 chains, ``step n=1``, ``--think``
ms between a reply and the next step, default 300 = the page's autoplay delay plus its tweening) and
measures each step's latency (send to reply). The server's resident memory (``VmRSS`` of
``/proc/PID/status``) is sampled every second.

Goals: p99 step latency of the steady clients < 200 ms after the warm-up (the first fifth of the run, at
most 60 s, while the first requests fill the server's per-target caches), and no memory growth: RSS at the
end at most ``--rss-bound`` MiB (default 64) above RSS after the warm-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --write docs/benchmarks.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --seconds 5 --clients 20   # a quick check

``--write`` replaces only the ``## Reliability: playground soak`` section of that file (appends it when
missing); ``--json`` prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from doc_sections import write_section

SECTION = "## Reliability: playground soak"
ALGORITHMS = ("rwmh", "mala", "hmc", "nuts", "pt")
TARGETS = ("banana", "eight_gaussians", "standard", "donut", "multimodal")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, max_clients: int, log) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ebmlab.playground.app import serve; "
                               f"serve('127.0.0.1', {port}, [], max_clients={max_clients})"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,  # a file: a full pipe would stall the server
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                raise RuntimeError(f"server did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.1)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Stats:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.latencies: list[tuple[float, float]] = []  # (seconds into the run, latency)
        self.connections = self.refused = self.messages = self.http = self.errors = self.timeouts = 0
        self.left = {"polite": 0, "in_flight": 0, "dropped": 0}
        self.problems: list[str] = []

    def problem(self, what: str) -> None:
        self.errors += 1
        if len(self.problems) < 10:
            self.problems.append(what)


async def visit(url: str, http, rng: random.Random, stats: Stats) -> None:
    """One churning client's visit, as a page loads: the targets and the density, then connect, configure,
    step, maybe export, leave."""
    from websockets.asyncio.client import connect

    settings = {"algorithm": rng.choice(ALGORITHMS), "target": rng.choice(TARGETS),
                "chains": rng.randint(4, 16), "seed": rng.randrange(1000)}
    for path in ("/api/targets", f"/api/density?target={settings['target']}&resolution=128"):
        r = await http.get(path)
        stats.http += 1
        if r.status_code != 200:
            stats.problem(f"GET {path}: {r.status_code}")
    async with connect(url, max_size=None, open_timeout=20, close_timeout=2) as ws:
        stats.connections += 1
        if rng.random() < 0.05:
            settings["chains"] = -1  # an invalid setting: an error frame, the connection stays
        await ws.send(json.dumps({"type": "configure", **settings}))
        reply = json.loads(await ws.recv())
        if reply["type"] == "error" and "too many clients" in reply["message"]:
            stats.refused += 1
            return
        stats.messages += 1
        if reply["type"] != ("error" if settings["chains"] < 0 else "configured"):
            stats.problem(f"configure: {str(reply)[:200]}")
        for _ in range(rng.randint(1, 3)):
            await ws.send(json.dumps({"type": "step", "n": rng.randint(1, 5)}))
            reply = json.loads(await ws.recv())
            stats.messages += 1
            if reply["type"] != "frames":
                stats.problem(f"step: {str(reply)[:200]}")
        if rng.random() < 0.1:
            await ws.send('{"type": "export", "format": "csv"}')
            reply = json.loads(await ws.recv())
            stats.messages += 1
            if reply["type"] != "export":
                stats.problem(f"export: {str(reply)[:200]}")
        how = rng.random()
        if how < 0.1:  # leave with a step in flight: the server's reply finds no one
            await ws.send('{"type": "step", "n": 10}')
            stats.left["in_flight"] += 1
        elif how < 0.15:  # drop the TCP connection without a closing handshake
            await ws.send('{"type": "step", "n": 10}')
            stats.left["dropped"] += 1
            ws.transport.abort()
        else:
            stats.left["polite"] += 1


async def churner(url: str, http, end: float, rng: random.Random, stats: Stats, pause: float,
                  delay: float) -> None:
    import httpx
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    await asyncio.sleep(delay)
    while time.monotonic() < end:
        dropped = stats.left["dropped"]
        try:
            await asyncio.wait_for(visit(url, http, rng, stats), 30)
        except asyncio.TimeoutError:
            stats.timeouts += 1
        except InvalidStatus as err:
            stats.problem(f"handshake: {err}")
        except (ConnectionClosed, OSError, httpx.HTTPError) as err:
            refused = isinstance(err, ConnectionClosed) and err.rcvd is not None and err.rcvd.code == 1013
            if not refused and stats.left["dropped"] == dropped:  # after our own abort, errors are expected
                stats.problem(f"closed: {err!r}")
        await asyncio.sleep(max(0.0, min(rng.uniform(0.5, 1.5) * pause, end - time.monotonic())))


async def steady(url: str, end: float, stats: Stats, think: float) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "configure", "algorithm": "mala", "target": "banana", "chains": 4}))
        json.loads(await ws.recv())
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await ws.send('{"type": "step", "n": 1}')
            reply = json.loads(await ws.recv())
            stats.latencies.append((time.monotonic() - stats.start, time.perf_counter() - t0))
            if reply["type"] != "frames":
                stats.problem(f"steady step: {str(reply)[:200]}")
            await asyncio.sleep(think)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


async def sample_rss(pid: int, end: float, samples: list, loads: list) -> None:
    t0 = time.monotonic()
    while time.monotonic() < end:
        samples.append((time.monotonic() - t0, rss_mib(pid)))
        loads.append(load_average())
        await asyncio.sleep(1.0)


async def soak(url: str, pid: int, args):
    import httpx

    seconds, clients = args.seconds, args.clients
    stats, rss, loads = Stats(), [], []
    start = stats.start = time.monotonic()
    end = start + seconds
    rng = random.Random(args.seed)
    tasks = [asyncio.create_task(sample_rss(pid, end, rss, loads))]
    tasks += [asyncio.create_task(steady(url, end, stats, args.think / 1000)) for _ in range(args.steady)]
    first = min(args.pause, seconds / 2)  # first arrivals spread evenly, as later ones are: no opening rush
    base = url.replace("ws://", "http://").rsplit("/", 1)[0]
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=httpx.Limits(max_connections=50)) as http:
        tasks += [asyncio.create_task(churner(url, http, end, random.Random(rng.random()), stats, args.pause,
                                              first * (i + 0.5) / clients)) for i in range(clients)]
        await asyncio.gather(*tasks)
    return stats, rss, loads, time.monotonic() - start


def summarize(stats: Stats, rss: list, settled: float, before: float, args) -> dict:
    warm_s = min(60.0, args.seconds / 5)
    every = np.array([dt for _, dt in stats.latencies]) * 1000
    lat = np.array([dt for t, dt in stats.latencies if t >= warm_s]) * 1000  # first requests fill the caches
    times = np.array([t for t, _ in rss])
    values = np.array([v for _, v in rss])
    warm = float(values[times <= warm_s][-1]) if (times <= warm_s).any() else float(values[0])
    p50, p99, mx = (np.percentile(lat, [50, 99, 100]) if lat.size else (float("nan"),) * 3)
    # RSS at each quarter of the run: a leak climbs from quarter to quarter, a warmed-up server plateaus
    quarters = [float(values[times <= times[-1] * q / 4][-1]) for q in (1, 2, 3, 4)]
    out = {
        "seconds": args.seconds, "clients": args.clients, "steady": args.steady, "pause": args.pause,
        "think": args.think,
        "connections": stats.connections, "refused": stats.refused, "messages": stats.messages,
        "http_requests": stats.http,
        "left": stats.left, "errors": stats.errors, "timeouts": stats.timeouts, "problems": stats.problems,
        "steady_steps": int(lat.size), "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(mx),
        "warm_up_steps": int(every.size - lat.size),
        "warm_up_max_ms": float(every[: every.size - lat.size].max()) if every.size > lat.size else float("nan"),
        "rss_before_mib": before, "rss_warm_mib": warm, "rss_end_mib": float(values[-1]),
        "rss_max_mib": float(values.max()), "rss_settled_mib": settled, "rss_growth_mib": float(values[-1]) - warm,
        "rss_quarters_mib": quarters, "warm_up_s": warm_s, "rss_bound_mib": args.rss_bound,
    }
    out["latency_ok"] = bool(out["p99_ms"] < 200)
    out["memory_ok"] = bool(out["rss_growth_mib"] <= args.rss_bound)
    return out


def build_markdown(r: dict, cmdline: str, load: str) -> str:
    r = {k: float("nan") if v is None else v for k, v in r.items()}  # --json writes NaN as null
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    return "\n".join([
        SECTION, "",
        "Hundreds of WebSocket clients coming and going against one `ebmlab serve` process for minutes: does "
        "its memory grow, and do the pages that stay keep their latency? `benchmarks/soak.py` starts the server "
        "(uvicorn, `OMP_NUM_THREADS=1`, its default threads: one for sessions' messages, one for densities and GIF exports; `--max-clients` raised to admit every client) and "
        f"runs {r['clients']} churning clients and {r['steady']} steady ones for {r['seconds']:g} s on loopback. "
        "A churning client loads like a page (`/api/targets`, then its target's 128 x 128 density), connects, "
        "configures a random sampler (rwmh, mala, hmc, nuts, pt; 4-16 chains; one "
        "in twenty an invalid setting), sends 1-3 step messages of 1-5 steps, sometimes a CSV export, then "
        "leaves (politely, with a step in flight, or by dropping the TCP connection), pauses "
        f"{0.5 * r['pause']:g}-{1.5 * r['pause']:g} s and comes back. A steady client is an autoplaying page "
        f"(MALA on the banana, 4 chains, `step n=1`, {r['think']:g} ms between a reply and the next step) and "
        "measures each step from send to reply. The server's RSS (`VmRSS`) is sampled every second.", "",
        "Reproduce:", "", "```",
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --write docs/benchmarks.md", "```", "",
        f"This run: `{cmdline}`; {platform.machine()}, {os.cpu_count()} cores visible, Python "
        f"{platform.python_version()}. 1-minute load average while it ran: mean {r['load_mean']:.1f}, max "
        f"{r['load_max']:.1f} (the server and this script included). {load}".rstrip(), "",
        f"The server used {r['server_cores']:.2f} cores on average, {r['server_cpu_ms_per_request']:.1f} ms of CPU "
        f"per request (WebSocket message or HTTP GET). One Python process (its event loop and worker threads "
        f"share one GIL, so it gets little past one core) serves roughly "
        f"{1000 / r['server_cpu_ms_per_request']:.0f} such requests a second per core; this run asked for "
        f"{r['requests_per_s']:.0f}.", "",
        "| connections | refused | messages | HTTP requests | left politely / in flight / dropped | errors "
        "| timeouts |",
        "|---:|---:|---:|---:|---|---:|---:|",
        f"| {r['connections']:,} | {r['refused']} | {r['messages']:,} | {r['http_requests']:,} | "
        f"{r['left']['polite']:,} / {r['left']['in_flight']:,} / {r['left']['dropped']:,} | {r['errors']} "
        f"| {r['timeouts']} |", "",
        "| server RSS (MiB) | value |", "|---|---:|",
        f"| before any client | {r['rss_before_mib']:.1f} |",
        f"| after the warm-up ({r['warm_up_s']:g} s) | {r['rss_warm_mib']:.1f} |",
        "| at 1/4, 1/2, 3/4 of the run | " + ", ".join(f"{v:.1f}" for v in r["rss_quarters_mib"][:3]) + " |",
        f"| at the end | {r['rss_end_mib']:.1f} |",
        f"| maximum | {r['rss_max_mib']:.1f} |",
        f"| 3 s after every client left | {r['rss_settled_mib']:.1f} |",
        f"| **growth, end - warm-up** (bound {r['rss_bound_mib']:g}) | **{r['rss_growth_mib']:+.1f}** |", "",
        f"Steady clients after the warm-up: {r['steady_steps']:,} steps, latency p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms (during the warm-up, while the first requests fill "
        f"the server's per-target caches: {r['warm_up_steps']:,} steps, max {r['warm_up_max_ms']:.0f} ms).", "",
        f"Goals: p99 < 200 ms {verdict(r['latency_ok'])}; memory growth <= {r['rss_bound_mib']:g} MiB "
        f"{verdict(r['memory_ok'])}.",
    ]) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--clients", type=int, default=200, help="churning clients (default 200)")
    ap.add_argument("--steady", type=int, default=8, help="clients kept connected, measuring latency (default 8)")
    ap.add_argument("--pause", type=float, default=10.0, help="a churning client's mean pause between visits, s")
    ap.add_argument("--think", type=float, default=300.0, help="a steady client's pause after each reply, ms")
    ap.add_argument("--max-clients", type=int, help="the server's cap (default: clients + steady, none refused)")
    ap.add_argument("--rss-bound", type=float, default=64.0, help="allowed RSS growth after the warm-up, MiB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load", default="", help="a sentence on what else ran on the machine, for --write")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--write", type=Path, help=f"replace the '{SECTION}' section of this markdown file")
    args = ap.parse_args(argv)
    cmdline = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json")
    cmdline = re.sub(r" --load (\"[^\"]*\"|\S+)", "", cmdline)
    port = _free_port()
    with tempfile.TemporaryFile() as log:
        proc = start_server(port, args.max_clients or args.clients + args.steady, log)
        try:
            time.sleep(1.0)
            before = rss_mib(proc.pid)
            cpu0 = cpu_seconds(proc.pid)
            stats, rss, loads, wall = asyncio.run(soak(f"ws://127.0.0.1:{port}/ws", proc.pid, args))
            cpu = cpu_seconds(proc.pid) - cpu0
            time.sleep(3.0)
            settled = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
        log.seek(0)
        server_log = log.read().decode(errors="replace")
    r = summarize(stats, rss, settled, before, args)
    r["wall_s"] = wall
    r["server_cores"] = cpu / wall  # the server's mean CPU use, in cores
    requests = r["messages"] + r["http_requests"] + len(stats.latencies)
    r["server_cpu_ms_per_request"] = 1000 * cpu / requests if requests else float("nan")
    r["requests_per_s"] = requests / wall
    # the machine's 1-minute load average while it ran (this run's own processes included)
    r["load_mean"], r["load_max"] = float(np.mean(loads)), float(np.max(loads))
    r["server_exceptions"] = server_log.count("Traceback")
    if args.json:
        print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in r.items()}))
    else:
        print(f"server CPU: {r['server_cores']:.2f} cores, {r['server_cpu_ms_per_request']:.1f} ms per request")
        print(f"{r['connections']} connections ({r['refused']} refused), {r['messages']} messages, "
              f"{r['errors']} errors, {r['timeouts']} timeouts, {r['server_exceptions']} server tracebacks")
        print(f"steady latency ms after the warm-up: p50 {r['p50_ms']:.1f}  p99 {r['p99_ms']:.1f}  "
              f"max {r['max_ms']:.1f} "
              f"-> {'PASS' if r['latency_ok'] else 'FAIL'} (p99 < 200 ms)")
        print(f"server RSS MiB: before {r['rss_before_mib']:.1f}, warm {r['rss_warm_mib']:.1f}, max "
              f"{r['rss_max_mib']:.1f}, end {r['rss_end_mib']:.1f}, growth {r['rss_growth_mib']:+.1f}, "
              f"settled {r['rss_settled_mib']:.1f} -> {'PASS' if r['memory_ok'] else 'FAIL'} "
              f"(growth <= {args.rss_bound:g} MiB)")
        for p in r["problems"]:
            print("  problem:", p)
    if args.write:
        load = args.load
        write_section(args.write, build_markdown(r, cmdline, load))
        print(f"wrote the '{SECTION}' section of {args.write}", file=sys.stderr)
    return r


if __name__ == "__main__":
    main()
