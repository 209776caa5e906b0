"""The README's Python example runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_matches_its_comments():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("torch.Size([700, 1000, 2])")
    assert abs(float(lines[0].split()[-1]) - 0.62) < 0.03
    assert abs(float(lines[1]) - 1.01) < 0.02
    assert abs(float(lines[2]) - 2.07) < 0.01
    assert abs(float(lines[3])) < 0.01
    assert 0 < float(lines[4]) < 1.0  # 500 steps give about 0.43; an untrained MLPEnergy scores about 1.76
