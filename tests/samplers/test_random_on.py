"""random_on: draws from a generator on another device type are made there and copied over."""

from __future__ import annotations

import pytest
import torch

import ebmlab
from ebmlab.samplers.base import normal_like, random_on, uniform_log


def test_same_numbers_as_torch_on_the_generators_device():
    a = random_on(torch.randn, (5, 2), torch.Generator().manual_seed(3), "cpu", torch.float64)
    b = torch.randn((5, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, b)
    x = torch.zeros((4, 3), dtype=torch.float32)
    assert normal_like(x, None).shape == (4, 3)
    assert uniform_log(x, torch.Generator().manual_seed(0)).shape == (4,)
    assert random_on(torch.rand, (3,), None, None, torch.float32).device == torch.get_default_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_drives_cuda_chains_like_cpu_ones():
    """A seeded CPU generator gives the same MALA chains on CUDA as on CPU (up to float rounding)."""
    from ebmlab.energies import targets

    t = targets.get("banana")
    x0 = torch.randn((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = ebmlab.sample(t, ebmlab.MALA(0.5), x0, 20, generator=torch.Generator().manual_seed(1))
    gpu = ebmlab.sample(t, ebmlab.MALA(0.5), x0.cuda(), 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu.samples.cpu(), cpu.samples)
