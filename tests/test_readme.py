"""The README's Python example runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_matches_its_comments(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    out = io.StringIO()
    monkeypatch.chdir(tmp_path)  # the run API example writes runs/eg
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for code in blocks[:2]:  # the sampling example, then the run API example (which uses its generator)
            exec(compile(code, "README.md", "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("torch.Size([700, 1000, 2])")
    assert abs(float(lines[0].split()[-1]) - 0.62) < 0.03
    assert abs(float(lines[1]) - 1.01) < 0.02
    assert abs(float(lines[2]) - 2.07) < 0.01
    assert abs(float(lines[3])) < 0.01
    kl, noise = map(float, lines[4].split())
    assert 0 < kl < 1.0  # 30 s of PCD; an untrained MLPEnergy scores about 1.76
    assert abs(noise) < 0.05  # the true density's own test NLL is within a few hundredths of its entropy
    assert (tmp_path / "runs" / "eg" / "config.json").is_file()
