"""Callbacks a training run reports to: ``callback(step, row)`` after each logged row.

The library prints nothing unless asked: pass :class:`ProgressPrinter` (a
plain-text line every few seconds, what logs and notebooks want) or
:class:`TensorBoardLogger`; the command line adds its own progress bar on a
terminal. A callback may have ``close()``, called when training ends.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ProgressPrinter", "TensorBoardLogger", "progress_text"]


def progress_text(row: dict[str, Any]) -> str:
    """A short summary of a metric row: loss and whichever of the energy gap, test NLL, KL,
    MMD or classifier confidence it holds.

    Args:
        row: one row of ``metrics.jsonl`` (metric name -> value).
    """
    text = f"loss {row['loss']:+.3f}" if "loss" in row else ""
    for key, label, fmt in (("energy_gap", "gap", "+.3f"), ("test_nll", "nll", ".3f"), ("kl", "kl", ".4f"),
                            ("mmd", "mmd", ".2e"), ("mean_max_prob", "max-prob", ".2f")):
        if isinstance(row.get(key), (int, float)):
            text += f" {label} {row[key]:{fmt}}"
    return text.strip()


class ProgressPrinter:
    """Print one plain-text progress line every ``every`` seconds (and at the last step).

    Args:
        total: the run's total steps (shown as ``step/total``), if known.
        every: seconds between lines.
        file: where to print (default ``sys.stderr``).
    """

    def __init__(self, total: int | None = None, *, every: float = 5.0, file: TextIO | None = None) -> None:
        self.total, self.every, self.file = total, float(every), file
        self.t0 = time.perf_counter()
        self.last = -float("inf")

    def __call__(self, step: int, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        print(f"step {step}{of} {progress_text(row)} ({now - self.t0:.0f} s)", file=self.file or sys.stderr,
              flush=True)


class TensorBoardLogger:
    """Write every numeric metric of each logged row as a TensorBoard scalar into ``log_dir``.

    The writer opens at the first row (after the run directory was prepared);
    on a resumed run, events past the checkpoint's step are purged.

    Args:
        log_dir: the directory of the event files (the run directory, where the checkpoint is).
        resume: the run resumes: purge the events logged after its checkpoint's step.

    Raises:
        ImportError: at construction when the tensorboard package is missing
            (``pip install 'ebmlab[tensorboard]'``), before any work is done.
    """

    def __init__(self, log_dir: str | Path, *, resume: bool = False) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoard logging needs the tensorboard package: "
                              "pip install 'ebmlab[tensorboard]'") from err
        self._writer_class, self.log_dir, self.resume, self.writer = SummaryWriter, Path(log_dir), resume, None

    def __call__(self, step: int, row: dict[str, Any]) -> None:
        if self.writer is None:
            purge_step = None
            if self.resume:
                from ..checkpoint import load_checkpoint
                from ..io import CHECKPOINT

                ckpt = self.log_dir / CHECKPOINT
                # the loop logs its first row after the checkpoint's step: drop the stale events from there on
                purge_step = int(load_checkpoint(ckpt)[1]["step"]) + 1 if ckpt.is_file() else None
            self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge_step)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the event file (called when training ends)."""
        if self.writer is not None:
            self.writer.close()
