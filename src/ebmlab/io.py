"""Files a user keeps are written atomically: a crash never leaves half a file.

Write to a temporary file in the same directory, flush and fsync, then
``os.replace`` it over the destination (atomic on POSIX and Windows). A run
directory is trained into by one process at a time (:func:`run_lock`); it
holds ``config.json`` (written by the run layer), :data:`METRICS` (one JSON
row per logged step, read back by :func:`read_metrics`) and
:data:`CHECKPOINT`, and :func:`prepare_run_dir` says what a training call may
do with one before it writes anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked
    fcntl = None

__all__ = [
    "CHECKPOINT",
    "LOCK",
    "METRICS",
    "RunDirectoryError",
    "RunLocked",
    "atomic_write",
    "prepare_run_dir",
    "read_metrics",
    "remove_stale_temporaries",
    "run_lock",
    "save_npz",
    "truncate_metrics",
]

#: The checkpoint's file name in a run directory.
CHECKPOINT = "checkpoint.safetensors"
#: The metrics' file name in a run directory (one JSON row per logged step).
METRICS = "metrics.jsonl"


class RunDirectoryError(OSError):
    """Writing into the run directory failed (disk full, read-only); the last good checkpoint is intact."""



def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``.

    Args:
        path: the destination; its directory is created if missing.
        write: writes the content into the binary file object it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` written atomically.

    Args:
        path: the ``.npz`` file.
        **arrays: the arrays, by name.

    Returns:
        ``path`` as a ``Path``.
    """
    return atomic_write(path, lambda f: np.savez(f, **arrays))


#: The lock file a training process holds in its run directory (see :func:`run_lock`).
LOCK = ".ebmlab.lock"
_held: dict[str, tuple[Any, int]] = {}  # resolved run dir -> (open lock file, depth): re-entrant per process


class RunLocked(ValueError):
    """Another process is training into this run directory."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike | None) -> Iterator[Path | None]:
    """Hold the run directory's lock while training into it (``None``: no directory, nothing to lock).

    An advisory ``flock`` on ``run_dir/.ebmlab.lock``: a second process that
    trains into the same directory (a double launch) is refused instead of
    interleaving its metrics and checkpoints with the first's. The kernel
    drops the lock when its holder exits, however it exits (``kill -9``
    included), so a killed run never leaves it stuck. Re-entrant within one
    process (the run layer and the training loop both take it). Where
    ``fcntl`` does not exist (Windows) the directory is not locked.

    Args:
        run_dir: the run directory (created if missing), or ``None``.

    Raises:
        RunLocked: another live process holds the lock (its pid is named).
    """
    if run_dir is None:
        yield None
        return
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run_dir {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        f, depth = _held[key]
        _held[key] = (f, depth + 1)
        try:
            yield path
        finally:
            f, depth = _held[key]
            _held[key] = (f, depth - 1)
        return
    f = open(path / LOCK, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "unknown"
                raise RunLocked(f"{path} is in use by another training process (pid {owner}); wait for it to "
                                "finish or stop it, or train into another directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held[key] = (f, 1)
        try:
            yield path
        finally:
            del _held[key]
    finally:
        f.close()  # releases the flock


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves when its process is killed mid-write.

    Call only while holding :func:`run_lock` (another process's write in
    progress would otherwise lose its file). Returns the removed paths.

    Args:
        run_dir: the run directory.
    """
    removed = []
    for tmp in Path(run_dir).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a torn last line (a process killed mid-write) is dropped.

    Args:
        path: the file (missing: no rows).

    Raises:
        ValueError: a line other than the last is not a JSON object with a
            ``step`` (the file was edited or is not ebmlab's), naming the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row with an integer step")
        except ValueError as err:
            if i == len(lines) - 1:  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}, line {i + 1}: not a metrics row ({err}): {line[:80]!r}") from None
        rows.append(row)
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a crashed run may have logged past its last checkpoint),
    and a torn last line.

    Args:
        path: the ``metrics.jsonl`` file (rewritten atomically; missing: nothing to do).
        step: the last step to keep.
    """
    if not path.exists():
        return
    keep = [json.dumps(row) for row in read_metrics(path) if row["step"] <= step]
    atomic_write(path, lambda f: f.write(("\n".join(keep) + ("\n" if keep else "")).encode()))


def prepare_run_dir(run_dir: str | os.PathLike | None, *, resume: bool, overwrite: bool = False) -> Path | None:
    """Check what a training call may do with ``run_dir`` before it writes anything.

    A directory that already holds a run (a checkpoint or ``metrics.jsonl``)
    is continued only with ``resume=True`` and started over only with
    ``overwrite=True`` (which empties it first): training into it otherwise
    would overwrite the checkpoint and append a second run's rows to the
    first's metrics. ``config.json`` alone does not count (the run layer
    writes it just before training starts).

    Args:
        run_dir: the run directory, or ``None`` (nothing is written).
        resume: continue the run in ``run_dir``.
        overwrite: empty an existing run in ``run_dir`` first.

    Returns:
        The directory as a ``Path`` (created), or ``None`` without a run_dir.

    Raises:
        ValueError: ``resume`` without a run_dir or without its checkpoint,
            ``resume`` and ``overwrite`` together, an existing run without
            either, or ``overwrite`` on a non-empty directory that is not a run.
    """
    if run_dir is None:
        if resume:
            raise ValueError("resume=True needs the run_dir to resume from")
        return None
    path = Path(run_dir)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or start it over")
    if path.exists() and not path.is_dir():
        raise ValueError(f"run_dir {path} exists and is not a directory")
    has_run = (path / CHECKPOINT).exists() or (path / METRICS).exists()
    if resume:
        if not (path / CHECKPOINT).is_file():
            raise ValueError(f"resume: {path} holds no {CHECKPOINT} to continue from")
    elif overwrite and path.is_dir() and _entries(path):
        if not (has_run or (path / "config.json").exists()):
            raise ValueError(f"overwrite: {path} is not a run directory (no config.json, checkpoint or metrics); "
                             "refusing to empty it")
        for entry in _entries(path):  # the lock file stays: another process may be waiting on it
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    elif has_run:
        raise ValueError(f"{path} already holds a run; resume it (--resume, resume=True) or start it over "
                         "(--overwrite, overwrite=True)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _entries(path: Path) -> list[Path]:
    """A directory's entries other than its lock file."""
    return [p for p in path.iterdir() if p.name != LOCK]
