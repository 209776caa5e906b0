"""The lecture notebooks in ``examples/`` run from top to bottom, in time, and draw their figures.

Each ``examples/NN_*.py`` is a jupytext percent-format notebook (``# %%`` code
cells, ``# %% [markdown]`` prose). To open one in Jupyter, either convert it,
``jupytext --to ipynb examples/*.py``, or open the ``.py`` file directly in
Jupyter with jupytext installed (``pip install 'ebmlab[notebooks]'``). Every
number a notebook's prose claims is checked by an ``assert`` in a cell of that
notebook, so running it here checks the claims too.

One test per notebook (pytest-xdist spreads them over workers). Each runs in a
fresh IPython kernel of *this* interpreter (ipykernel's own kernel spec, written
to a temporary directory, so no other ``python3`` kernel on the machine is
picked up), with one intra-op thread, inside a temporary working directory so
nothing is written into the repository. A notebook fails on any error, when it
takes longer than :data:`BUDGET_S` seconds, or when it shows no figure.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
#: Wall-time budget of a whole notebook (kernel start included), on one CPU core.
BUDGET_S = 90.0
#: No single cell may run longer than this.
CELL_TIMEOUT_S = 90
#: What the kernel's environment adds: one thread (two notebooks share a 2-core machine), figures inline.
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_the_lecture_has_its_notebooks() -> None:
    names = {p.stem for p in NOTEBOOKS}
    lecture = {"01_tractable_quantities", "02_langevin_vs_mala", "03_training_an_ebm", "04_score_matching",
               "05_your_own_energy"}
    assert lecture <= names, f"missing: {sorted(lecture - names)}"



def _kernel_manager(tmp_path: Path) -> AsyncKernelManager:
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher`` with :data:`KERNEL_ENV`."""
    kernels = tmp_path / "kernels"
    write_kernel_spec(path=kernels / "python3", overrides={"env": KERNEL_ENV})
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result"))


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_time_and_draws(path: Path, tmp_path: Path) -> None:
    nb = jupytext.read(path)
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name}: no prose cells"
    # One more cell, in the executed copy only: which interpreter the kernel runs, and with how many threads.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, torch; print(json.dumps({'prefix': sys.prefix, 'threads': torch.get_num_threads()}))"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = NotebookClient(nb, km=_kernel_manager(tmp_path), kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)  # shut the kernel down at the end (the manager is ours, not nbclient's)
    except Exception as err:  # noqa: BLE001 - the cell's error, with the time it took to get there
        seconds = time.perf_counter() - start
        message = _ANSI.sub("", str(err))[-3000:]  # the end of the cell's traceback, without terminal colours
        pytest.fail(f"{path.name} failed after {seconds:.1f} s: {type(err).__name__}:\n{message}")
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    assert not _errors(nb), f"{path.name}: {_errors(nb)}"
    kernel = json.loads(_stdout(nb.cells[-1]).strip().splitlines()[-1])
    assert Path(kernel["prefix"]).resolve() == Path(sys.prefix).resolve(), (
        f"{path.name} ran in the interpreter of {kernel['prefix']}, not this one ({sys.prefix})")
    assert kernel["threads"] == 1, f"{path.name} ran with {kernel['threads']} intra-op threads, not 1"
    assert _images(nb) >= 1, f"{path.name} showed no figure (plt.show() with the inline backend)"
    assert seconds <= BUDGET_S, f"{path.name} took {seconds:.1f} s, more than its budget of {BUDGET_S:.0f} s"
