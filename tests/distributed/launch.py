"""Process groups for the distributed tests: forked ranks on a free port, or ``torchrun`` itself.

``run_ranks`` forks the test process (torch and ebmlab already imported, so a rank starts in
milliseconds) into ``world`` ranks of one gloo group, the environment set as torchrun sets it,
and fails the test with a rank's traceback, or when the ranks outlive ``timeout``.
``torchrun`` runs ``python -m torch.distributed.run`` with the given arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, timeout: float) -> None:
    from ebmlab import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert distributed.init_from_env(timeout=timeout)
    fn(*args)
    import torch.distributed as dist

    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 90.0, step_timeout: float = 30.0) -> None:
    """Run ``fn(*args)`` on ``world`` forked ranks of one gloo process group; re-raise a rank's failure."""
    port = free_port()
    ctx = mp.start_processes(_rank_main, args=(world, port, fn, args, step_timeout), nprocs=world, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"the {world} ranks were still running after {timeout:.0f} s")


def torchrun(args: list[str], *, timeout: float = 120.0, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun ARGS`` (as ``python -m torch.distributed.run``), single-threaded ranks, output captured."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=torchrun_env(env))


def torchrun_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a torchrun launched by a test: one thread per rank, no inherited rank variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env
