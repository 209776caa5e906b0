"""Statistical assertions shared by the sampler tests.

Every tolerance is derived from the sample: an MCMC estimate of E[f] has
standard error sd(f) / sqrt(ESS_f), with ESS_f the rank-normalised bulk ESS
of the trace of f (Vehtari et al. 2021); an exact reference drawn i.i.d. has
sd / sqrt(N). We accept |estimate - reference| <= Z * combined SE, Z = 4
(two-sided false-alarm rate 6e-5 per check).
"""

from __future__ import annotations

import math

import torch

from ebmlab.evaluation import ess_bulk, mmd

Z = 4.0


def moment_functions(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """First and second moments of 2-D points x (..., 2): the mean and covariance entries."""
    return {
        "x1": x[..., 0],
        "x2": x[..., 1],
        "x1^2": x[..., 0] ** 2,
        "x2^2": x[..., 1] ** 2,
        "x1*x2": x[..., 0] * x[..., 1],
    }


def assert_moments_match(trace_samples: torch.Tensor, exact: torch.Tensor, label: str = "") -> None:
    """Check E[f] under the trace ``(draws, chains, 2)`` against i.i.d. exact samples ``(N, 2)``."""
    got = moment_functions(trace_samples.double())
    ref = moment_functions(exact.double())
    for name, f in got.items():
        ess = float(ess_bulk(f.unsqueeze(-1)).min())
        se_mcmc = float(f.std()) / math.sqrt(ess)
        r = ref[name]
        se_ref = float(r.std()) / math.sqrt(r.numel())
        se = math.hypot(se_mcmc, se_ref)
        diff = float(f.mean() - r.mean())
        assert abs(diff) <= Z * se, (
            f"{label} E[{name}]: sampler {float(f.mean()):.4f} vs exact {float(r.mean()):.4f}, "
            f"|diff| {abs(diff):.4f} > {Z} x SE {se:.4f} (ESS {ess:.0f})"
        )


def mmd_null_threshold(sample_exact, n: int, *, reps: int = 200, seed: int = 0) -> float:
    """Upper 99.5% point of MMD^2 between two independent exact samples of size n.

    Estimated as the maximum of ``reps`` = 200 exact-vs-exact replicates, so a
    correct sampler exceeds it with probability about 1/201.
    """
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(reps):
        a, b = sample_exact(n, g), sample_exact(n, g)
        vals.append(mmd(a, b, generator=g))
    return max(vals)


def screenshot_path(name: str, tmp_dir) -> "Path":
    """Where a test writes a screenshot: the README's ``docs/img/<name>`` when ``EBMLAB_REFRESH_SCREENSHOTS=1``
    (``make screenshots``), else a temporary directory, so a test run never rewrites tracked files."""
    import os
    from pathlib import Path

    if os.environ.get("EBMLAB_REFRESH_SCREENSHOTS") == "1":
        return Path(__file__).resolve().parents[1] / "docs" / "img" / name
    return Path(tmp_dir) / name
