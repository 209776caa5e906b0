"""Rejection sampling: exact draws, acceptance Z/C, and refusal of invalid envelopes."""

from __future__ import annotations

import math

import pytest
import torch

import ebmlab
from ebmlab.samplers import GaussianProposal, RejectionSampler, UniformProposal, find_log_c


def unnormalised_gaussian(x):  # p~ = exp(-|x|^2/2): Z = 2 pi in 2-D
    return 0.5 * (x**2).sum(1)


def test_acceptance_rate_is_z_over_c():
    proposal = GaussianProposal(loc=[0.0, 0.0], scale=2.0)
    # p~/q = 2 pi * 4 * exp(-|x|^2 (1/2 - 1/8)) <= 8 pi: the tight C.
    log_c = math.log(8 * math.pi)
    g = torch.Generator().manual_seed(0)
    trace = ebmlab.sample(unnormalised_gaussian, RejectionSampler(proposal, log_c), torch.zeros((4000, 2)), 25, generator=g)
    n = trace.acceptance_rate.numel() * 25
    expected = 2 * math.pi / math.exp(log_c)  # Z / C = 1/4
    se = math.sqrt(expected * (1 - expected) / n)
    assert abs(float(trace.acceptance_rate.mean()) - expected) < 4 * se
    # Draws are exact N(0, I): first two moments within 4 SE (i.i.d., ESS = n).
    x = trace.samples.reshape(-1, 2).double()
    assert torch.all(x.mean(0).abs() < 4 / math.sqrt(n))
    assert torch.all((x.var(0) - 1).abs() < 4 * math.sqrt(2 / n))


def test_find_log_c_is_valid_and_near_tight():
    proposal = GaussianProposal(loc=[0.0, 0.0], scale=2.0)
    log_c = find_log_c(unnormalised_gaussian, proposal, ((-8, 8), (-8, 8)))
    assert math.log(8 * math.pi) <= log_c <= math.log(8 * math.pi) + 0.11


def test_find_log_c_refuses_a_proposal_that_does_not_dominate():
    narrow = GaussianProposal(loc=[0.0, 0.0], scale=0.5)  # lighter tails than p~
    with pytest.raises(ValueError, match="does not dominate"):
        find_log_c(unnormalised_gaussian, narrow, ((-6, 6), (-6, 6)))


def test_too_small_c_is_refused_while_sampling():
    proposal = UniformProposal(((-5, 5), (-5, 5)))
    sampler = RejectionSampler(proposal, log_c=0.0)  # p~/q = 100 at the mode: C=1 is far too small
    with pytest.raises(ValueError, match="too small"):
        ebmlab.sample(unnormalised_gaussian, sampler, torch.zeros((100, 2)), 3, generator=torch.Generator().manual_seed(0))
