"""A rank that fails takes the job down with its message, and a rank that hangs does not hang the others."""

from __future__ import annotations

import json
import re
import textwrap
import time

import torch

from ebmlab import distributed
from ebmlab.training import Update, fit
from launch import run_ranks, torchrun

# rank 1 raises at its third step while rank 0 waits for it in the gradient all-reduce
SCRIPT = textwrap.dedent("""
    import time

    import torch
    from ebmlab import distributed
    from ebmlab.training import Update, fit

    distributed.init_from_env()
    model, g = torch.nn.Linear(2, 1), distributed.generator(0)

    def step_fn(step):
        if distributed.rank() == 1 and step == 3:
            raise RuntimeError(f"planted failure on rank 1 at step 3, at {time.time()!r}")
        return Update(model(torch.randn(16, 2, generator=g)).pow(2).mean(), {})

    fit(model, step_fn, method="test", steps=10**9, lr=1e-3, betas=(0.9, 0.999), grad_clip=None, ema_decay=None,
        generator=g, log_every=10**6)
""")


def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(SCRIPT)
    # a collective timeout far beyond the bound: the job must go down because rank 1 did, not by waiting it out
    out = torchrun(["--standalone", "--nproc_per_node", "2", str(script)], timeout=180,
                   env={"EBMLAB_DIST_TIMEOUT": "600"})
    ended = time.time()
    assert out.returncode != 0
    found = re.search(r"planted failure on rank 1 at step 3, at ([0-9.]+)", out.stdout + out.stderr)
    assert found, out.stderr[-3000:]
    seconds = ended - float(found.group(1))
    assert seconds < 45, f"the job took {seconds:.0f} s to go down after rank 1 failed"


STEP_TIMEOUT = 3.0


def _hang(out: str) -> None:
    model, g = torch.nn.Linear(2, 1), distributed.generator(0)
    start = time.monotonic()

    def step_fn(step: int) -> Update:
        nonlocal start
        if step == 3:
            start = time.monotonic()
            if distributed.rank() == 1:
                time.sleep(4 * STEP_TIMEOUT)  # stuck, far past the collective timeout
        return Update(model(torch.randn(16, 2, generator=g)).pow(2).mean(), {})

    try:
        fit(model, step_fn, method="test", steps=10**9, lr=1e-3, betas=(0.9, 0.999), grad_clip=None,
            ema_decay=None, generator=g, log_every=10**6)
        error = None
    except Exception as err:  # noqa: BLE001 - recorded for the test
        error = f"{type(err).__name__}: {err}"
    with open(f"{out}/rank{distributed.rank()}.json", "w") as f:
        json.dump({"error": error, "seconds": time.monotonic() - start}, f)  # from the step the other hung in


def test_a_hung_rank_times_the_others_out(tmp_path):
    run_ranks(_hang, 2, str(tmp_path), timeout=60, step_timeout=STEP_TIMEOUT)
    waited = json.loads((tmp_path / "rank0.json").read_text())
    assert waited["error"] is not None and "timed out" in waited["error"].lower(), waited
    assert waited["seconds"] < 3 * STEP_TIMEOUT, waited  # it waited about the timeout, not for the hung rank
    assert json.loads((tmp_path / "rank1.json").read_text())["error"] is not None  # its peer is gone
