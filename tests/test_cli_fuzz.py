"""A fuzz corpus of bad command lines for every subcommand, run in-process through ``ebmlab.cli.main``.

The corpus is generated deterministically: for each subcommand a cheap valid
base line (4 chains and 8 steps, a one-step training run, ...) that is checked
to succeed, then one mutation per line from per-option lists of bad values
(letters for numbers, negative, zero, NaN/inf, past 2**63, empty strings,
unicode, unknown choices, missing values, nonexistent or wrong-kind paths),
plus unknown options, stray arguments, conflicting flags, and pairs of
mutations drawn by a seeded ``random.Random``.

The property for every line: exit code 2, exactly one line on stderr that
starts with ``ebmlab: error:`` (or names the missing extra) and names the
option at fault, nothing on stdout, no traceback. ``serve`` never starts a
server here: the server start is replaced by one that fails the line.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from ebmlab import cli

HUGE = "99999999999999999999999"  # past 2**63: torch cannot hold it
COUNT = ["0", "-1", "abc", "1.5", "", "nan", "inf", "1e3", HUGE, "-" + HUGE, "ü", "0x10"]
COUNT0 = ["-1", "abc", "2.5", "", "nan", HUGE, "ü"]
POSITIVE = ["0", "-1", "abc", "nan", "inf", "-inf", "", "1e400", "ü", "0x1p3", "--"]
STEP = POSITIVE + ["1e300"]  # a step whose square overflows
CHOICE = ["bogus", "", "MALA", "mälä", "{0}", "ü" * 3]
DEVICE = ["tpu", "", "cuda:x", "cuda:-1", "{x}", "cpu:0:1", "ü"]
SEED = ["-1", "abc", "1.5", "", HUGE, "nan"]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except BaseException as e:  # noqa: BLE001 - main must never raise: report it as the failure it is
            import traceback

            code = -1
            err.write("Traceback (raised out of main):\n" + "".join(traceback.format_exception(e)))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Files the corpus points at: a trained run (for evaluate and sample --model), a file, an empty folder,
    broken configs and a small points file."""
    root = tmp_path_factory.mktemp("cli_fuzz")
    (root / "afile.txt").write_text("x")
    (root / "emptydir").mkdir()
    (root / "bad.json").write_text("{bad")
    (root / "list.json").write_text("[1, 2]")
    (root / "field.json").write_text(json.dumps({"lr": "x"}))
    (root / "unknown.json").write_text(json.dumps({"bogus": 1}))
    np.save(root / "points.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    broken = root / "broken_run"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_option(base: list[str], flag: str, *values: str) -> list[str]:
    """``base`` with ``flag`` set to ``values`` (replacing the base's own setting of it)."""
    out, i = [], 0
    while i < len(base):
        if base[i] == flag:
            i += 2
            continue
        out.append(base[i])
        i += 1
    return [*out, flag, *values]


def bases(ws: Path) -> dict[str, list[str]]:
    run0 = str(ws / "run0")
    return {
        "sample": ["sample", "--chains", "4", "--steps", "8", "--burn-in", "2", "--json"],
        "train": ["train", "--data", "two_moons", "--steps", "1", "--n-train", "64", "--n-test", "64",
                  "--batch-size", "8", "--hidden", "8", "--langevin-steps", "1", "--json", "--out", str(ws / "t")],
        "evaluate": ["evaluate", run0, "--no-plot", "--json"],
        "report": ["report", "--quick", "--json", "--out", str(ws / "report")],
        "serve": ["serve", "--port", str(free_port())],
    }


def corpus(ws: Path) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """``(id, argv, words the error line must hold one of)`` for every generated bad line."""
    base = bases(ws)
    # train lines write into a folder no valid line makes: a bad line that trained would leave it behind
    base["train"] = with_option(base["train"], "--out", str(ws / "t_fuzz"))
    run0, afile, empty = str(ws / "run0"), str(ws / "afile.txt"), str(ws / "emptydir")
    lines: list[tuple[str, list[str], tuple[str, ...]]] = []
    singles: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}

    def option(cmd: str, flag: str, values: list[str], *words: str) -> None:
        for v in values:
            # the flag, or the library's name of it (``--sampler: step_size must be ...``)
            named = (flag, flag[2:].replace("-", "_") + " ", *words)
            lines.append((f"{cmd} {flag}={v!r}", with_option(base[cmd], flag, v), named))
            singles.setdefault(cmd, []).append((flag, v, named))

    # ---------------------------------------------------------------- sample
    s = "sample"
    option(s, "--target", CHOICE + ["nope", "bänänä", "banana "])
    option(s, "--sampler", CHOICE)
    option(s, "--step-size", STEP)
    option(s, "--num-leapfrog", COUNT)
    option(s, "--max-tree-depth", ["0", "-3", "abc", HUGE])
    option(s, "--base", CHOICE + ["nuts", "pt"])
    option(s, "--num-temperatures", ["1", "0", "abc", HUGE])
    option(s, "--max-temperature", POSITIVE + ["1", "0.5"])
    option(s, "--keep", CHOICE + ["first", "LAST"])
    option(s, "--adapt", COUNT0)
    option(s, "--chains", COUNT)
    option(s, "--steps", COUNT)
    option(s, "--burn-in", COUNT0)
    option(s, "--thin", COUNT)
    option(s, "--init", CHOICE)
    option(s, "--steps-per-level", ["0", "abc", HUGE, "3"])  # 3: a score model's option, no --model
    option(s, "--sde-steps", ["0", "abc", HUGE, "3"])
    option(s, "--seed", SEED)
    option(s, "--device", DEVICE)
    option(s, "--dtype", ["int32", "float16", "", "double", "{x}"])
    option(s, "--out", [str(ws), afile + "/x.npz"])
    option(s, "--plot", [empty, afile + "/fig.png"])
    option(s, "--model", [str(ws / "nope"), afile, empty, str(ws / "broken_run")], "run", "config")
    for extra, words in [(["--bogus"], ("--bogus",)), (["--step_size", "0.1"], ("--step_size",)),
                         (["-x"], ("-x",)), (["---steps", "3"], ("---steps",)), (["extra"], ("extra",)),
                         (["--json", "yes"], ("yes",)), (["--compile", "1"], ("1",)),
                         (["--chains"], ("--chains",)), (["--target"], ("--target",)),
                         (["--burn-in", "8"], ("--burn-in",)),  # burn-in >= steps
                         (["--sampler", "rwmh", "--adapt", "5"], ("--adapt",)),
                         (["--sampler", "pt", "--adapt", "5"], ("--adapt",)),
                         (["--sampler", "annealed"], ("--sampler",)), (["--sampler", "pc"], ("--sampler",)),
                         (["--sampler", "ode"], ("--sampler",)),
                         (["--sampler", "rejection", "--model", run0], ("--sampler",)),
                         (["--init", "exact", "--model", run0], ("--init",)),
                         (["--steps-per-level", "5", "--model", run0], ("--steps-per-level",)),
                         (["--sampler", "pt", "--max-temperature", "1e300"], ("--sampler", "max_temperature")),
                         (["--sampler", "ula", "--step-size", "1e200"], ("--sampler", "step_size")),
                         (["--sampler", "mala", "--step-size", "1e-320"], ("--step-size", "step_size")),
                         (["--target", "ill_conditioned", "--sampler", "rejection", "--step-size", "1e-300"],
                          ("--sampler",))]:
        lines.append((f"sample {' '.join(extra)}", [*base[s], *extra], words))

    # ---------------------------------------------------------------- train
    t = "train"
    option(t, "--data", ["", "nope", "ü", str(ws / "nope.npy"), afile, "x.txt", empty, "{0}"], "data")
    option(t, "--method", CHOICE)
    option(t, "--sampler", CHOICE + ["pt", "rwmh"])
    option(t, "--steps", COUNT)
    option(t, "--batch-size", COUNT)
    option(t, "--langevin-steps", COUNT0)
    option(t, "--step-size", STEP)
    option(t, "--noise-scale", POSITIVE)
    option(t, "--score-clip", POSITIVE)
    option(t, "--lr", POSITIVE)
    option(t, "--alpha", ["-1", "abc", "nan", "inf", ""])
    option(t, "--grad-clip", POSITIVE)
    option(t, "--data-noise", ["-1", "nan", "inf", "abc"])
    option(t, "--hidden", ["", "a,b", "0", "-1,2", "8,,8", "1e3", "8.5", HUGE, "ü"])
    option(t, "--buffer-size", COUNT[:6])
    option(t, "--reinit-prob", ["-0.1", "1.5", "nan", "abc", ""])
    option(t, "--ema", ["-0.1", "1", "1.5", "nan", "abc"])
    option(t, "--n-train", COUNT[:6] + [HUGE])
    option(t, "--n-test", ["0", "-1", "abc", HUGE])
    option(t, "--test-fraction", ["0.2", "abc"])  # 0.2: a data file's option, for two_moons
    option(t, "--eval-every", ["0", "abc", HUGE])
    option(t, "--max-seconds", ["-1", "nan", "inf", "abc"])
    option(t, "--log-every", ["0", "abc"])
    option(t, "--checkpoint-every", ["0", "abc"])
    option(t, "--checkpoint-seconds", ["0", "-1", "nan", "abc"])
    option(t, "--max-recoveries", ["-1", "abc", HUGE])
    option(t, "--sigma", POSITIVE[:7])
    option(t, "--num-sigmas", ["1", "0", "abc"])
    option(t, "--steps-per-level", ["0", "abc"])
    option(t, "--seed", SEED)
    option(t, "--device", DEVICE)
    option(t, "--config", [str(ws / "nope.json"), empty, str(ws / "bad.json"), str(ws / "list.json"),
                           str(ws / "field.json"), str(ws / "unknown.json")], "config", "--lr", "bogus")
    option(t, "--data-root", [afile], "mnist")
    for extra, words in [(["--bogus"], ("--bogus",)), (["--clamp", "1"], ("--clamp",)),
                         (["--clamp", "a", "b"], ("--clamp",)), (["--clamp", "1", "0"], ("--clamp",)),
                         (["--clamp", "nan", "1"], ("--clamp",)), (["--clamp", "0", "1", "--clamp-data"], ("--clamp",)),
                         (["--noise-scale", "0.05", "--sampler", "mala"], ("--noise-scale",)),
                         (["--score-clip", "1", "--method", "dsm"], ("--score-clip",)),
                         (["--data", "mnist"], ("--data", "--data-root")),
                         (["--data-root", str(ws), "--data", "two_moons"], ("--data-root",)),
                         (["--beta-min", "0.1"], ("--beta-min",)), (["--weighting", "likelihood"], ("--weighting",)),
                         (["--sde-steps", "5"], ("--sde-steps",)),
                         (["--method", "sde-vp", "--beta-min", "2", "--beta-max", "1"], ("--beta-max",)),
                         (["--method", "sde-vp", "--beta-max", "nan"], ("--beta-max",)),
                         (["--method", "ncsn", "--sigma-max", "0.001", "--sigma-min", "0.01"], ("--sigma-max",)),
                         (["--method", "ism", "--data", "digits"], ("--method",)),
                         (["--method", "sde-ve", "--steps-per-level", "5"], ("--steps-per-level",)),
                         (["--data", str(ws / "points.npy"), "--n-train", "5"], ("--n-train",)),
                         (["--data", str(ws / "points.npy"), "--test-fraction", "1.5"], ("--test-fraction",)),
                         (["--resume", "--out", str(ws / "no_run")], ("--resume",)),
                         (["--json", "yes"], ("yes",)), (["--resume", "1"], ("1",)), (["--steps"], ("--steps",)),
                         (["--weighting", "bogus"], ("--weighting",)), (["--method"], ("--method",))]:
        lines.append((f"train {' '.join(extra)}", [*base[t], *extra], words))

    # ---------------------------------------------------------------- evaluate
    e = "evaluate"
    for d in [str(ws / "nope"), afile, empty, "", "ü", str(ws / "broken_run"), "{0}"]:
        lines.append((f"evaluate run_dir={d!r}", ["evaluate", d, "--no-plot", "--json"], ("run", "config", d or ".")))
    option(e, "--seed", SEED)
    option(e, "--device", DEVICE)
    for extra, words in [(["--bogus"], ("--bogus",)), (["extra"], ("extra",)), (["--plot", "yes"], ("yes",)),
                         (["--seed"], ("--seed",))]:
        lines.append((f"evaluate {' '.join(extra)}", [*base[e], *extra], words))
    lines.append(("evaluate (no run dir)", ["evaluate"], ("run_dir", "RUN_DIR")))

    # ---------------------------------------------------------------- report (never a valid line: it runs minutes)
    r = "report"
    option(r, "--seed", SEED)
    option(r, "--device", DEVICE + ["cuda", "cuda:0"])
    for extra, words in [(["--bogus"], ("--bogus",)), (["--quick", "yes"], ("yes",)), (["--out"], ("--out",)),
                         (["extra"], ("extra",))]:
        lines.append((f"report {' '.join(extra)}", [*base[r], *extra], words))

    # ---------------------------------------------------------------- serve (must fail before binding)
    v = "serve"
    option(v, "--port", ["0", "-1", "65536", "abc", "", HUGE])
    option(v, "--host", ["no.such.host.invalid", "0.0.0.0", "256.256.256.256", "ü"])
    option(v, "--model", [str(ws / "nope"), afile])
    option(v, "--max-clients", ["0", "-1", "abc"])
    for extra, words in [(["--bogus"], ("--bogus",)), (["extra"], ("extra",)), (["--allow-remote", "1"], ("1",)),
                         (["--port"], ("--port",))]:
        lines.append((f"serve {' '.join(extra)}", [*base[v], *extra], words))

    # ---------------------------------------------------------------- top level
    for argv, words in [(["bogus"], ("bogus",)), (["sampel"], ("sampel",)), ([""], ("''", "command")),
                        (["ü"], ("ü",)), (["--bogus"], ("--bogus",)), (["--threads"], ("--threads",)),
                        (["--version", "--bogus"], ("--bogus",)), (["-h"], ("-h",)), (["sample", "sample"], ("sample",))]:
        lines.append((f"top {argv!r}", argv, words))
    for v in ["0", "-1", "abc", HUGE, "", "nan"]:
        lines.append((f"top --threads={v!r}", ["--threads", v, "sample"], ("--threads",)))

    # ---------------------------------------------------------------- seeded pairs of mutations
    rng = random.Random(0)
    for _ in range(60):
        cmd = rng.choice(sorted(singles))
        (fa, va, wa), (fb, vb, wb) = rng.sample(singles[cmd], 2)
        if fa == fb:
            continue
        lines.append((f"{cmd} {fa}={va!r} {fb}={vb!r}", with_option(with_option(base[cmd], fa, va), fb, vb),
                      (*wa, *wb)))
    return lines


def check_line(argv: list[str], words: tuple[str, ...]) -> str | None:
    """``None`` when ``argv`` fails as a bad line should, else what went wrong."""
    code, out, err = run(argv)
    got = err.splitlines()
    if "Traceback" in out + err:
        return f"traceback:\n{err[-2000:]}"
    if code != 2:
        return f"exit {code} (expected 2); stderr {err[-500:]!r}"
    if out:
        return f"stdout not empty: {out[:300]!r}"
    if len(got) != 1 or not got[0].strip():
        return f"{len(got)} lines on stderr (expected one): {err[:600]!r}"
    line = got[0]
    if not (line.startswith("ebmlab: error: ") or line.startswith("ebmlab serve needs")):
        return f"stderr line does not start with 'ebmlab: error:': {line!r}"
    if not any(w in line for w in words):
        return f"the line names none of {words}: {line!r}"
    return None


@pytest.fixture
def no_server(monkeypatch):
    """A serve line that got past every check would start a server here: make that a failure instead."""
    try:
        import ebmlab.playground.app as app
    except ImportError:  # without the web extra, serve exits 2 naming it
        return

    def refuse(**kwargs):
        raise RuntimeError(f"serve started a server for a line meant to be refused: {kwargs}")

    monkeypatch.setattr(app, "serve", refuse)


def test_base_lines_are_valid(workspace, monkeypatch):
    """The bases the corpus mutates run (cheaply) and succeed, so each bad line fails for its own mutation.
    The training base's run is the run directory that evaluate and sample --model point at."""
    monkeypatch.chdir(workspace)
    base = bases(workspace)
    code, out, err = run(with_option(base["train"], "--out", str(workspace / "run0")))
    assert code == 0, err
    assert json.loads(out)["steps"] == 1
    for cmd in ("sample", "train"):
        code, out, err = run(base[cmd])
        assert code == 0, (cmd, err)
        json.loads(out)
    code, out, err = run(["sample", "--model", str(workspace / "run0"), *base["sample"][1:]])
    assert code == 0, err


def test_bare_command_shows_help(capsys):
    """``ebmlab`` alone is not an error line: it prints the help (stdout) and exits 2, as click does."""
    code, out, err = run([])
    assert code == 2 and "Usage" in out and "sample" in out and err == ""


def test_cli_fuzz_corpus(workspace, monkeypatch, no_server):
    monkeypatch.chdir(workspace)  # a relative path in a line lands in the workspace
    if not (workspace / "run0" / "config.json").exists():  # run alone: make the trained run first
        assert run(with_option(bases(workspace)["train"], "--out", str(workspace / "run0")))[0] == 0
    lines = corpus(workspace)
    failures = []
    for name, argv, words in lines:
        why = check_line(argv, words)
        if why is not None:
            failures.append(f"{name}\n    argv: {argv}\n    {why}")
    passed = len(lines) - len(failures)
    print(f"CLI fuzz corpus: {len(lines)} lines, {passed} passed")
    assert not (workspace / "t_fuzz").exists(), "a bad train line trained (it made its run directory)"
    assert len(lines) >= 200
    assert not failures, f"{len(failures)} of {len(lines)} bad lines misbehaved:\n" + "\n".join(failures[:40])
