"""Hostile or broken run directories: ``Run.load`` and ``ebmlab evaluate / sample --model / serve --model``
refuse each with one clear error naming the file and the problem (the CLI: exit 2, one line, no traceback),
before anything large is allocated, and never unpickle anything.

One small real run is trained per module; every case copies it and breaks the copy.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ebmlab import runs
from ebmlab.checkpoint import CHECKSUM_KEY, inspect_checkpoint, load_checkpoint
from ebmlab.cli import main
from ebmlab.runs.models import MAX_PARAMETERS
from ebmlab.io import CHECKPOINT, METRICS

CONFIG = runs.CONFIG
MARKER = "PWNED_MARKER"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "base"
    cfg = runs.TrainConfig.resolve(data="two_moons", steps=4, eval_every=1000, n_train=200, n_test=100,
                                   hidden=(16, 16))
    runs.train(cfg, out)
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A fresh copy of the module's run, to break."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


class _Evil:
    """Unpickling this creates the marker file next to it: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# --------------------------------------------------------------------------- how each case breaks a run


def _config(run: Path) -> dict:
    return json.loads((run / CONFIG).read_text())


def _set_config(run: Path, config) -> None:
    (run / CONFIG).write_text(json.dumps(config))


def _edit(section: str, key: str, value):
    def edit(run: Path) -> None:
        config = _config(run)
        config[section][key] = value
        _set_config(run, config)
    return edit


def _drop(section: str, key: str | None = None):
    def edit(run: Path) -> None:
        config = _config(run)
        if key is None:
            del config[section]
        else:
            del config[section][key]
        _set_config(run, config)
    return edit


def _flip(offset_of):
    """Flip every bit of one byte of the checkpoint, at ``offset_of(size, header_length)``."""
    def edit(run: Path) -> None:
        path = run / CHECKPOINT
        blob = bytearray(path.read_bytes())
        n = struct.unpack("<Q", blob[:8])[0]
        blob[offset_of(len(blob), n)] ^= 0xFF
        path.write_bytes(bytes(blob))
    return edit


def _truncate(keep):
    def edit(run: Path) -> None:
        path = run / CHECKPOINT
        blob = path.read_bytes()
        path.write_bytes(blob[:keep(len(blob))])
    return edit


def _wrong_shape_in_header(run: Path) -> None:
    """A digit of a shape changed: the header still parses, but its byte ranges no longer add up."""
    path = run / CHECKPOINT
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = blob[8:8 + n]
    assert header.count(b'"shape":[16,2]') >= 2  # model., ema. (and the optimiser's moments of) the first layer
    path.write_bytes(blob[:8] + header.replace(b'"shape":[16,2]', b'"shape":[17,2]', 1) + blob[8 + n:])


def _resave(run: Path, change=None, *, checksum: bool = True) -> None:
    """Rewrite the checkpoint with plain safetensors (no digest unless ``checksum``), after ``change(tensors)``."""
    from ebmlab.checkpoint import save_checkpoint

    tensors, meta = load_checkpoint(run / CHECKPOINT)
    if change is not None:
        change(tensors)
    if checksum:
        save_checkpoint(run / CHECKPOINT, tensors, meta)
    else:
        save_file(tensors, str(run / CHECKPOINT), metadata={"ebmlab": json.dumps(meta)})


def _nan_weights_without_checksum(run: Path) -> None:
    _resave(run, lambda t: t["ema.net.0.weight"].__setitem__((0, 0), float("nan")), checksum=False)


def _wider_checkpoint(run: Path) -> None:
    """A checkpoint of a (32, 32) network under a config that says (16, 16)."""
    from ebmlab.checkpoint import save_checkpoint
    from ebmlab.energies.nets import MLPEnergy

    sd = MLPEnergy(2, hidden=(32, 32)).state_dict()
    tensors = {f"{p}{k}": v.clone() for p in ("model.", "ema.") for k, v in sd.items()}
    save_checkpoint(run / CHECKPOINT, tensors, load_checkpoint(run / CHECKPOINT)[1])


def _symlink_outside(name: str):
    def edit(run: Path) -> None:
        outside = run.parent / f"outside_{name}"
        shutil.copy(run / name, outside)
        (run / name).unlink()
        (run / name).symlink_to(outside)
    return edit


def _fifo(name: str):
    def edit(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)
    return edit


def _huge_config(run: Path) -> None:
    with open(run / CONFIG, "r+b") as f:  # 100 MB, sparse: reading it all would be the bug
        f.truncate(100 * 2**20)


def _deep_config(run: Path) -> None:
    (run / CONFIG).write_text('{"model": ' + "[" * 200_000 + "]" * 200_000 + "}")


def _pickle_as_checkpoint(protocol: int):
    def edit(run: Path) -> None:
        (run / CHECKPOINT).write_bytes(pickle.dumps(_Evil(run / MARKER), protocol=protocol))
    return edit


def _torch_save_as_checkpoint(run: Path) -> None:
    torch.save({"model": _Evil(run / MARKER)}, run / CHECKPOINT)


def _pickles_instead_of_checkpoint(run: Path) -> None:
    (run / CHECKPOINT).unlink()
    torch.save({"model": _Evil(run / MARKER)}, run / "checkpoint.pt")
    (run / "model.pkl").write_bytes(pickle.dumps(_Evil(run / MARKER)))


def _config_not_an_object(run: Path) -> None:
    _set_config(run, [1, 2, 3])


def _extra_top_level(run: Path) -> None:
    config = _config(run)
    config["modle"] = config["model"]
    _set_config(run, config)


# (id, breakage, file named in the message, pattern of the problem, exception of Run.load)
CASES = [
    ("truncated-half", _truncate(lambda n: n // 2), CHECKPOINT, "is truncated", ValueError),
    ("truncated-to-4-bytes", _truncate(lambda n: 4), CHECKPOINT, "is truncated", ValueError),
    ("truncated-in-header", _truncate(lambda n: 40), CHECKPOINT, "is truncated", ValueError),
    ("flip-length-field", _flip(lambda size, n: 5), CHECKPOINT, "header length field", ValueError),
    ("flip-header-json", _flip(lambda size, n: 8), CHECKPOINT, "header is not valid JSON", ValueError),
    ("flip-header-metadata", _flip(lambda size, n: 8 + n // 2), CHECKPOINT, "is corrupt", ValueError),
    ("shape-digit-in-header", _wrong_shape_in_header, CHECKPOINT, "needs 136 bytes", ValueError),
    ("flip-tensor-data", _flip(lambda size, n: size - 7), CHECKPOINT, "do not match the SHA-256", ValueError),
    ("flip-first-tensor-byte", _flip(lambda size, n: 8 + n), CHECKPOINT, "do not match the SHA-256", ValueError),
    ("nan-weights-old-format", _nan_weights_without_checksum, CHECKPOINT, "non-finite", ValueError),
    ("checkpoint-of-another-network", _wider_checkpoint, CHECKPOINT, r"has shape \(32, 2\).*needs \(16, 2\)",
     ValueError),
    ("billion-unit-network", _edit("model", "hidden", [10**9, 10**9]), CONFIG, "parameters, more than", ValueError),
    ("wide-input", _edit("model", "dim", 10**7), CONFIG, "model.dim must be an integer from 1 to", ValueError),
    ("negative-width", _edit("model", "hidden", [16, -16]), CONFIG, r"model.hidden\[1\] must be an integer",
     ValueError),
    ("zero-width", _edit("model", "hidden", [0]), CONFIG, r"model.hidden\[0\] must be an integer", ValueError),
    ("fractional-width", _edit("model", "hidden", [16.5, 16]), CONFIG, r"model.hidden\[0\].*got 16.5", ValueError),
    ("width-as-text", _edit("model", "hidden", ["16", "16"]), CONFIG, r"model.hidden\[0\].*got '16'", ValueError),
    ("width-as-bool", _edit("model", "hidden", [True, 16]), CONFIG, r"model.hidden\[0\].*got True", ValueError),
    ("absurd-depth", _edit("model", "hidden", [16] * 100_000), CONFIG, "model.hidden must be a list of 1 to 100",
     ValueError),
    ("hidden-not-a-list", _edit("model", "hidden", 16), CONFIG, "model.hidden must be a list", ValueError),
    ("unknown-kind", _edit("model", "kind", "transformer"), CONFIG, "model.kind must be one of", ValueError),
    ("unknown-activation", _edit("model", "activation", "__import__('os')"), CONFIG,
     "model.activation must be one of", ValueError),
    ("flag-as-text", _edit("model", "spectral_norm", "false"), CONFIG, "model.spectral_norm must be true or false",
     ValueError),
    ("misspelt-model-key", _edit("model", "hiden", [64]), CONFIG, "unknown key model.hiden", ValueError),
    ("misspelt-train-key", _edit("train", "stepsize", 0.5), CONFIG, "unknown key train.stepsize", ValueError),
    ("misspelt-data-key", _edit("data", "n_trian", 5), CONFIG, "unknown key data.n_trian", ValueError),
    ("unknown-section", _extra_top_level, CONFIG, "unknown key config.modle", ValueError),
    ("missing-model-key", _drop("model", "hidden"), CONFIG, "model.hidden is missing", ValueError),
    ("missing-model-section", _drop("model"), CONFIG, "the model section is missing", ValueError),
    ("missing-data-section", _drop("data"), CONFIG, "the data section is missing", ValueError),
    ("missing-train-section", _drop("train"), CONFIG, "the train section is missing", ValueError),
    ("missing-method", _drop("train", "method"), CONFIG, "train.method is missing", ValueError),
    ("config-not-an-object", _config_not_an_object, CONFIG,
     "must hold a JSON object", ValueError),
    ("method-of-another-kind", _edit("train", "method", "ncsn"), CONFIG, "cannot have been trained by", ValueError),
    ("negative-step-size", _edit("train", "step_size", -0.1), CONFIG, "train.step_size must be a finite number > 0",
     ValueError),
    ("trillion-points", _edit("data", "n_train", 10**12), CONFIG, "data.n_train must be an integer from 1 to",
     ValueError),
    ("bounds-of-other-dimension", _edit("data", "bounds", [[0, 1]] * 3), CONFIG, "data.bounds must be 2 pairs",
     ValueError),
    ("relative-data-path", _edit("data", "path", "../../../etc/passwd"), CONFIG, "data.path must be the absolute",
     ValueError),
    ("data-path-without-digest", _edit("data", "path", "/etc/passwd"), CONFIG, "without data.sha256", ValueError),
    ("huge-config", _huge_config, CONFIG, "is larger than 1048576 bytes", ValueError),
    ("deeply-nested-config", _deep_config, CONFIG, "nested too deeply", ValueError),
    ("config-not-json", lambda r: (r / CONFIG).write_bytes(b"\x80\x04not json"), CONFIG, "is not valid JSON",
     ValueError),
    ("integer-of-10k-digits", lambda r: (r / CONFIG).write_text('{"model": {"dim": ' + "9" * 10_000 + "}}"),
     CONFIG, "is not valid JSON", ValueError),
    ("symlinked-checkpoint", _symlink_outside(CHECKPOINT), CHECKPOINT, "is a symbolic link", ValueError),
    ("symlinked-config", _symlink_outside(CONFIG), CONFIG, "is a symbolic link", ValueError),
    ("fifo-config", _fifo(CONFIG), CONFIG, "is not a regular file", ValueError),
    ("fifo-checkpoint", _fifo(CHECKPOINT), CHECKPOINT, "is not a regular file", ValueError),
    ("pickle-as-checkpoint", _pickle_as_checkpoint(4), CHECKPOINT, "is a Python pickle, not a safetensors",
     ValueError),
    ("protocol-0-pickle-as-checkpoint", _pickle_as_checkpoint(0), CHECKPOINT, "not a safetensors checkpoint",
     ValueError),
    ("torch-save-as-checkpoint", _torch_save_as_checkpoint, CHECKPOINT, "zip archive, as torch.save writes",
     ValueError),
    ("pickles-instead-of-checkpoint", _pickles_instead_of_checkpoint, "", r"has no checkpoint.safetensors.*"
     r"checkpoint.pt, model.pkl: ebmlab never loads pickled files", FileNotFoundError),
]
IDS = [c[0] for c in CASES]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ebmlab: error: ")
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_server(monkeypatch):
    """``serve``'s server never starts: uvicorn.run records that it was reached instead of binding the port."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    return calls


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_run_load_refuses_naming_the_file_and_the_problem(case, run):
    _, breakage, name, problem, error = case
    breakage(run)
    with pytest.raises(error, match=problem) as info:
        runs.Run.load(run)
    assert str(run / name) in str(info.value)
    assert not (run / MARKER).exists()


def test_the_untouched_copy_loads(run):
    """The control: a copy of the run loads, with the checksum it was saved with."""
    loaded = runs.Run.load(run)
    assert loaded.step == 4 and inspect_checkpoint(run / CHECKPOINT).sha256.startswith("sha256:")


def test_old_checkpoints_without_a_checksum_still_load(run):
    want = runs.Run.load(run).model.state_dict()
    _resave(run, checksum=False)
    assert inspect_checkpoint(run / CHECKPOINT).sha256 is None
    got = runs.Run.load(run).model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_flipped_weight_in_an_old_checkpoint_loads_as_wrong_weights(run):
    """What the checksum is for: without it a flipped bit in the data parses and gives other weights."""
    _resave(run, checksum=False)
    before = runs.Run.load(run).model.state_dict()
    blob = (run / CHECKPOINT).read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    start = json.loads(blob[8:8 + n])["ema.net.2.weight"]["data_offsets"][0]
    _flip(lambda size, n: 8 + n + start + 1)(run)  # the second byte of a float32: a small change, still finite
    after = runs.Run.load(run).model.state_dict()
    assert not torch.equal(before["net.2.weight"], after["net.2.weight"])


def test_a_billion_unit_network_is_refused_in_milliseconds(run):
    """Counted on the meta device: 2 -> 1e9 -> 1e9 -> 1 is 10^18 + 5 10^9 + 1 parameters, none allocated."""
    _edit("model", "hidden", [10**9, 10**9])(run)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"has 1,000,000,005,000,000,001 parameters, more than the 100,000,000"):
        runs.Run.load(run)
    assert time.perf_counter() - t < 5.0
    assert torch.empty(0).device.type == "cpu"  # the meta device does not outlive the check


def test_the_parameter_limit_can_be_raised(run):
    _edit("model", "hidden", [16, 16])(run)
    with pytest.raises(ValueError, match="parameters, more than the 100 a run may have"):
        runs.Run.load(run, max_parameters=100)
    assert runs.Run.load(run, max_parameters=MAX_PARAMETERS).step == 4


def test_garbage_metrics_do_not_stop_loading_and_history_names_the_line(run):
    with open(run / METRICS, "ab") as f:
        f.write(b"\x00\xff garbage {{{\n" + b"[1, 2]\n")
    loaded = runs.Run.load(run)
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a metrics row"):
        loaded.history()


def test_the_checksum_covers_the_metadata(run):
    """A changed step in the header's JSON (a valid edit) is caught too, not only the tensor bytes."""
    path = run / CHECKPOINT
    blob = path.read_bytes()
    assert blob.count(b'\\"step\\": 4') == 1
    path.write_bytes(blob.replace(b'\\"step\\": 4', b'\\"step\\": 9'))
    with pytest.raises(ValueError, match="do not match the SHA-256"):
        load_checkpoint(path)
    info = inspect_checkpoint(path)
    assert info.meta["step"] == 9 and CHECKSUM_KEY == "ebmlab_sha256"


def test_data_file_that_is_a_fifo_is_refused_at_evaluation(run, capsys):
    """An absolute data path is allowed (own-data runs), but only a regular file or folder is read."""
    fifo = run.parent / "points.npy"
    os.mkfifo(fifo)
    config = _config(run)
    config["data"].update(path=str(fifo), sha256="0" * 64, kind="points", test_fraction=0.2)
    del config["data"]["n_train"], config["data"]["n_test"]
    _set_config(run, config)
    code, err = _cli(["evaluate", str(run), "--no-plot"], capsys)
    assert code == 2 and f"data file {fifo} is not a regular file or folder" in _one_error_line(err)


# --------------------------------------------------------------------------- the command line


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    _, err = capsys.readouterr()
    return code, err


def _commands(run: Path) -> dict[str, list[str]]:
    return {"evaluate": ["evaluate", str(run), "--no-plot", "--json"],
            "sample": ["sample", "--model", str(run), "--chains", "20", "--steps", "10", "--burn-in", "0", "--json"],
            "serve": ["serve", "--port", str(_free_port()), "--model", str(run)]}


@pytest.mark.parametrize("command", ["evaluate", "sample", "serve"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_cli_exits_2_in_one_line(case, command, run, capsys, no_server):
    _, breakage, name, problem, _ = case
    breakage(run)
    t = time.perf_counter()
    code, err = _cli(_commands(run)[command], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(run / name) in line and re.search(problem, line), line
    assert not no_server  # serve refused before the server (and its port) started
    assert not (run / MARKER).exists()
    assert time.perf_counter() - t < 5.0


@pytest.mark.parametrize("command", ["evaluate", "sample", "serve"])
def test_the_cli_runs_the_untouched_copy_and_ignores_garbage_metrics(command, run, capsys, no_server):
    """The control for the refusals above, with a metrics.jsonl that none of the three commands needs."""
    (run / METRICS).write_bytes(b"not json at all\n\x00\x01\x02\n")
    code, err = _cli(_commands(run)[command], capsys)
    assert code == 0, err
    assert len(no_server) == (command == "serve")


def test_a_pickle_planted_as_the_checkpoint_is_never_unpickled_by_the_real_cli(run):
    """The installed entry point, in a process of its own: exit 2, one line, and no marker file."""
    _torch_save_as_checkpoint(run)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args in (["evaluate", str(run)], ["serve", "--port", str(_free_port()), "--model", str(run)]):
        res = subprocess.run([sys.executable, "-m", "ebmlab", *args], capture_output=True, text=True, timeout=120,
                             env=env)
        assert res.returncode == 2 and res.stdout == "", res
        assert "zip archive, as torch.save writes" in _one_error_line(res.stderr)
        assert not (run / MARKER).exists()
