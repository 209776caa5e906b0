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
        for code in blocks[:4]:  # sampling, the run API (which uses its generator), NUTS / PT / diffusion, traces
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
    # NUTS after Stan's warm-up on sds 0.1 .. 10: the inverse mass estimates the variances (4 SE of a variance
    # estimate from 500 chains' pooled windows is well inside 30%), the widest sd comes out near 10, no divergence
    var_lo, var_hi = (float(v) for v in lines[5].strip("[]").split(","))
    assert abs(var_lo / 0.01 - 1) < 0.3 and abs(var_hi / 100 - 1) < 0.3
    sd_hi, divergences = lines[6].split()
    assert abs(float(sd_hi) - 10) < 1.0 and int(divergences) == 0
    # parallel tempering from the minor mode: 500 chains, mode weight within 0.03 of 0.8 (MALA alone: 0)
    assert abs(float(lines[7]) - 0.8) < 0.03
    # predictor-corrector with the exact score: 2000 samples, 4 binomial SE = 0.036
    assert abs(float(lines[8]) - 0.8) < 0.036
    # the ODE log-likelihood of 200 exact draws: on average -entropy = -3.334; SE of a mean of 200 log densities
    # 0.08, so 4 SE = 0.32
    assert abs(float(lines[9]) + 3.334) < 0.32
    # the trace saved and loaded is the same trace; ArviZ's R-hat on to_arviz() is ebmlab's on the trace
    assert lines[10] == "True"
    rhat_arviz, rhat_ebmlab = map(float, lines[11].split())
    assert rhat_arviz == rhat_ebmlab and 1.0 <= rhat_arviz < 1.1
    assert (tmp_path / "banana.safetensors").is_file() and (tmp_path / "banana.png").is_file()
