"""Saved files are written atomically: a crash mid-write leaves the old file intact."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ebmlab.io import atomic_write, save_npz


def test_crash_during_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "samples.npz"
    save_npz(path, a=np.arange(3))

    def crash(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    with np.load(path) as data:
        assert data["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temp file left behind


def test_saved_file_has_umask_permissions(tmp_path):
    path = save_npz(tmp_path / "x.npz", a=np.zeros(1))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
