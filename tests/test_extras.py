"""The optional extras stay optional: without them the library imports and every other command works, and a
command that needs one exits 2 with one line naming the extra to install (``pip install 'ebmlab[web]'``).

"Not installed" is simulated in a fresh interpreter by an import finder ahead of all others that raises
ModuleNotFoundError for the extra's modules, and in-process by ``sys.modules[name] = None`` (which makes
``import name`` raise ImportError).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ebmlab.cli import main

WEB = ("fastapi", "uvicorn", "websockets", "starlette")  # the web extra and what it brings
TENSORBOARD = ("tensorboard", "torch.utils.tensorboard")
SERVE_LINE = "ebmlab serve needs the playground's server: pip install 'ebmlab[web]'"
TENSORBOARD_LINE = "ebmlab train --tensorboard needs the tensorboard package: pip install 'ebmlab[tensorboard]'"


BLOCKER = """
import sys
class Blocker:  # a finder ahead of all others: the modules (and their submodules) are not installed
    attempts = []
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in MODULES):
            cls.attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker)
"""


def _without(modules: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``modules`` fails as if not installed
    (``Blocker.attempts`` lists the imports tried)."""
    prelude = BLOCKER.replace("MODULES", repr(modules))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=300, env=env)


CLI = "from ebmlab.cli import main; sys.exit(main())"


def test_the_library_imports_without_the_web_and_tensorboard_extras() -> None:
    # Every module outside the playground (whose server is the web extra) imports; none pulls an extra in.
    code = """
import importlib, pkgutil, ebmlab
names = []
def walk(package):
    for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if m.name != "ebmlab.playground":
            names.append(m.name)
            module = importlib.import_module(m.name)
            if m.ispkg:
                walk(module)
walk(ebmlab)
print(json.dumps({"imported": names, "tried": Blocker.attempts}))
"""
    out = _without(WEB + TENSORBOARD, "import json\n" + code)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"ebmlab.cli", "ebmlab.report", "ebmlab.runs", "ebmlab.__main__"} <= set(result["imported"])
    assert result["tried"] == []  # not even tried: no import-time `try: import fastapi` either


def test_serve_without_the_web_extra_says_which_extra_in_one_line() -> None:
    out = _without(WEB, CLI, "serve", "--port", "8123")
    assert out.returncode == 2
    assert out.stderr == SERVE_LINE + "\n"  # one line, no traceback
    assert out.stdout == ""


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "websockets"])
def test_serve_names_the_web_extra_when_any_part_of_it_is_missing(module, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    assert main(["serve", "--port", "8123"]) == 2
    out, err = capsys.readouterr()
    assert err == SERVE_LINE + "\n" and out == ""


def test_sample_works_without_the_web_extra() -> None:
    out = _without(WEB + TENSORBOARD, CLI, "sample", "--target", "banana", "--steps", "20", "--burn-in", "5",
                   "--chains", "100", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["target"] == "banana" and result["steps"] == 20


def test_train_tensorboard_without_the_package_says_which_extra_in_one_line(tmp_path) -> None:
    run = tmp_path / "run"
    out = _without(TENSORBOARD, CLI, "train", "--data", "two_moons", "--steps", "2", "--tensorboard",
                   "--out", str(run))
    assert out.returncode == 2
    assert out.stderr == TENSORBOARD_LINE + "\n" and out.stdout == ""
    assert not run.exists()  # refused before any work
