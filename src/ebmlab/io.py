"""Files a user keeps are written atomically: a crash never leaves half a file.

Write to a temporary file in the same directory, flush and fsync, then
``os.replace`` it over the destination (atomic on POSIX and Windows). A run
directory is trained into by one process at a time (:func:`run_lock`).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: run directories are not locked
    fcntl = None

__all__ = ["LOCK", "RunLocked", "atomic_write", "remove_stale_temporaries", "run_lock", "save_npz"]


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
