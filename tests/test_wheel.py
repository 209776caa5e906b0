"""The package people install: the version written in one place, and an sdist and a wheel that work
without the source tree.

The wheel test builds both with ``python -m build`` (the wheel from the sdist, so the sdist must hold what
a build needs), installs the wheel with ``--no-deps`` into a fresh venv and makes the dependencies visible
through a ``.pth`` file naming this interpreter's site-packages: a directory added by a ``.pth`` line is
put on ``sys.path`` without its own ``.pth`` files being processed, so the editable install's path entry
(the source tree) stays off. Every command runs with the temporary directory as cwd and no PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import ebmlab
from ebmlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ebmlab"


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_in_one_place() -> None:
    from ebmlab import _version

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ebmlab._version.__version__"}
    assert ebmlab.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", ebmlab.__version__)
    assigned = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "__version__ =" in p.read_text()]
    assert assigned == ["_version.py"]


def test_version_flag_prints_the_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ebmlab {ebmlab.__version__}\n"


def _clean_env() -> dict[str, str]:
    """This environment without anything that could put the source tree on sys.path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _start(cmd: list, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _build(out: Path, cwd: Path, env: dict[str, str]) -> None:
    """``python -m build``: an sdist, then the wheel from it, in an isolated env with setuptools from the
    package index; offline, the build backend of this interpreter instead (what the isolated env would hold)."""
    cmd = [sys.executable, "-m", "build", "--outdir", out, ROOT]
    done = _run(cmd, cwd, env)
    if done.returncode != 0:
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("ERROR")]
        provisioning = bool(errors) and "install" in errors[-1]  # pip could not fetch the build requirements
        if not provisioning:
            pytest.fail(f"python -m build failed:\n{done.stdout}\n{done.stderr}")
        done = _run(cmd + ["--no-isolation", "--skip-dependency-check"], cwd, env)
        assert done.returncode == 0, f"python -m build --no-isolation failed:\n{done.stdout}\n{done.stderr}"


def test_the_wheel_installs_and_runs_without_the_source_tree(tmp_path) -> None:
    env = _clean_env()
    version = ebmlab.__version__
    dist = tmp_path / "dist"
    _build(dist, tmp_path, env)
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert [p.name for p in sdists] == [f"ebmlab-{version}.tar.gz"]
    assert [p.name for p in wheels] == [f"ebmlab-{version}-py3-none-any.whl"]

    # The sdist: what a build needs, nothing else (the wheel above was built from it).
    with tarfile.open(sdists[0]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    top = {n.split("/")[0] for n in names}
    assert top <= {"PKG-INFO", "README.md", "LICENSE", "pyproject.toml", "setup.cfg", "MANIFEST.in", "src"}, top
    assert {"README.md", "LICENSE", "pyproject.toml", "src/ebmlab/__init__.py", "src/ebmlab/_version.py",
            "src/ebmlab/playground/static/index.html"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".npz"))]

    # The wheel: every module and the playground's static files (the package data the code reads).
    with zipfile.ZipFile(wheels[0]) as whl:
        files = set(whl.namelist())
        metadata = whl.read(f"ebmlab-{version}.dist-info/METADATA").decode()
    expected = {f"ebmlab/{p.relative_to(SRC).as_posix()}" for p in SRC.rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {f"ebmlab/playground/static/{p.name}" for p in (SRC / "playground" / "static").iterdir()}
    assert "ebmlab/playground/static/index.html" in expected
    assert not expected - files, sorted(expected - files)
    assert "License-Expression: MIT" in metadata and f"ebmlab-{version}.dist-info/licenses/LICENSE" in files
    assert all(f.startswith(("ebmlab/", f"ebmlab-{version}.dist-info/")) for f in files)
    assert f"\nVersion: {version}\n" in metadata
    assert {"web", "tensorboard", "dev"} <= set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))

    # A fresh venv with the wheel alone; the dependencies through a .pth naming this interpreter's site-packages.
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    assert done.returncode == 0, done.stderr
    python, script = venv / "bin" / "python", venv / "bin" / "ebmlab"
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                 "--disable-pip-version-check", "-q", wheels[0]], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path, env).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_ebmlab_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))

    # Imported from the venv; the static files load through the playground app.
    code = """
import json, re, ebmlab
from fastapi.testclient import TestClient
from ebmlab.playground import create_app
from ebmlab.playground.app import STATIC
with TestClient(create_app()) as client:
    page = client.get("/")
    assets = sorted(set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)))
    status = {"/": page.status_code, **{path: client.get(path).status_code for path in assets}}
print(json.dumps({"file": ebmlab.__file__, "static": str(STATIC), "version": ebmlab.__version__,
                  "status": status}))
"""
    # Five fresh interpreters at once (each imports torch): the check above, the script and python -m ebmlab.
    cmds = {"app": [python, "-c", code], "version": [script, "--version"], "help": [script, "--help"],
            "-m help": [python, "-m", "ebmlab", "--help"],
            "sample": [script, "sample", "--target", "banana", "--steps", "50", "--burn-in", "10", "--chains", "200",
                       "--json"]}
    runs = {name: _start(cmd, tmp_path, env) for name, cmd in cmds.items()}
    out = {name: _finish(proc) for name, proc in runs.items()}
    done = out["app"]
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(site.resolve()), seen["file"]  # the installed copy, not src/
    assert Path(seen["static"]).resolve().is_relative_to(site.resolve())
    assert seen["version"] == version
    assert len(seen["status"]) >= 3 and set(seen["status"].values()) == {200}, seen["status"]

    # The commands, from the venv's script and as python -m ebmlab.
    done = out["version"]
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ebmlab {version}\n", "")
    helps = [out["help"], out["-m help"]]
    assert [h.returncode for h in helps] == [0, 0], [h.stderr for h in helps]
    assert "Usage: ebmlab " in helps[0].stdout and "Usage: python -m ebmlab " in helps[1].stdout
    same = [[line.rstrip() for line in h.stdout.replace("python -m ebmlab", "ebmlab").splitlines()] for h in helps]
    assert same[0] == same[1] and any("serve" in line for line in same[0])
    done = out["sample"]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["target"] == "banana" and result["steps"] == 50 and 0 < result["acceptance_rate"] <= 1
