"""Score networks: shapes, sigma handling, input checks, and EnergyScore's gradients."""

from __future__ import annotations

import pytest
import torch

from ebmlab.energies.nets import MLPEnergy
from ebmlab.energies.score_nets import EnergyScore, ScoreConvNet, ScoreMLP
from ebmlab.objectives.score_matching import implicit_score_matching, ncsn_loss, sliced_score_matching


@pytest.mark.parametrize("embedding", ["log", "fourier"])
@pytest.mark.parametrize("dim", [2, 5])
def test_score_mlp_shapes(dim, embedding):
    x = torch.randn(7, dim)
    assert ScoreMLP(dim, hidden=(16,)).event_shape == (dim,)
    assert ScoreMLP(dim, hidden=(16,))(x).shape == (7, dim)
    cond = ScoreMLP(dim, hidden=(16,), noise_conditional=True, sigma_embedding=embedding)
    for sigma in (torch.rand(7) + 0.1, torch.tensor(0.5), 0.5, torch.full((7, 1), 0.5)):
        assert cond(x, sigma).shape == (7, dim)
    assert cond(x, 0.5).allclose(cond(x, torch.full((7,), 0.5)))


def test_score_mlp_sigma_changes_the_output_and_scale_by_sigma_divides():
    torch.manual_seed(0)
    x = torch.randn(5, 2)
    cond = ScoreMLP(2, hidden=(16,), noise_conditional=True)
    assert not cond(x, 0.1).allclose(cond(x, 1.0))
    plain = ScoreMLP(2, hidden=(16,), noise_conditional=True, sigma_embedding=None, scale_by_sigma=True)
    sigma = torch.tensor([0.1, 0.2, 0.5, 1.0, 4.0])
    torch.testing.assert_close(plain(x, sigma), plain.net(x) / sigma[:, None])


def test_score_mlp_errors():
    with pytest.raises(ValueError, match="sigma_embedding"):
        ScoreMLP(2, noise_conditional=True, sigma_embedding="sinusoid")
    with pytest.raises(ValueError, match="scale_by_sigma=True needs noise_conditional"):
        ScoreMLP(2, scale_by_sigma=True)
    with pytest.raises(ValueError, match="ignores sigma"):
        ScoreMLP(2, noise_conditional=True, sigma_embedding=None, scale_by_sigma=False)
    net, cond = ScoreMLP(2, hidden=(8,)), ScoreMLP(2, hidden=(8,), noise_conditional=True)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\), got \(4, 3\)"):
        net(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"got \(2\)"):
        net(torch.randn(2))
    with pytest.raises(ValueError, match="takes no sigma"):
        net(torch.randn(4, 2), torch.ones(4))
    with pytest.raises(ValueError, match=r"model\(x, sigma\)"):
        cond(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"sigma of shape \(batch,\) = \(4,\), got \(3\)"):
        cond(torch.randn(4, 2), torch.ones(3))


@pytest.mark.parametrize("channels, side", [(1, 8), (1, 28), (3, 32)])
def test_score_conv_net_maps_images_to_images(channels, side):
    net = ScoreConvNet(channels, side, width=8)
    assert net.event_shape == (channels, side, side)
    x = torch.randn(3, channels, side, side)
    out = net(x, torch.tensor([0.1, 1.0, 10.0]))
    assert out.shape == x.shape
    # NCSNv2 conditioning: output / sigma
    torch.testing.assert_close(net(x, 1.0) / torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1, 1), out)
    uncond = ScoreConvNet(channels, side, width=8, noise_conditional=False)
    assert uncond(x).shape == x.shape


def test_score_conv_net_is_per_sample_and_errors():
    net = ScoreConvNet(1, 8, width=4)
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.ones(4)
    torch.testing.assert_close(net(x, sigma)[:1], net(x[:1], sigma[:1]))  # no batch coupling
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 1, 8, 8\), got \(4, 1, 7, 7\)"):
        net(torch.randn(4, 1, 7, 7), sigma)
    with pytest.raises(ValueError, match=r"model\(x, sigma\)"):
        net(x)
    with pytest.raises(ValueError, match="takes no sigma"):
        ScoreConvNet(1, 8, width=4, noise_conditional=False)(x, sigma)
    loss, _ = ncsn_loss(net, x, torch.tensor([1.0, 0.1]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_energy_score_is_minus_grad_energy():
    torch.manual_seed(0)
    energy = MLPEnergy(3, hidden=(16, 16))
    model = EnergyScore(energy)
    assert model.event_shape == (3,)
    x = torch.randn(6, 3)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(xg).sum(), xg)
    torch.testing.assert_close(model(x), -g)
    with torch.no_grad():
        s = model(x)
    assert not s.requires_grad
    torch.testing.assert_close(s, -g)


@pytest.mark.parametrize("objective", ["ism", "ssm", "dsm"])
def test_energy_score_losses_train_the_energy(objective):
    torch.manual_seed(0)
    energy = MLPEnergy(2, hidden=(16, 16))
    model = EnergyScore(energy)
    x = torch.randn(32, 2)
    g = torch.Generator().manual_seed(0)
    if objective == "ism":
        loss, _ = implicit_score_matching(model, x)
    elif objective == "ssm":
        loss, _ = sliced_score_matching(model, x, generator=g)
    else:
        loss = 0.5 * ((model(x + 0.1) + 0.1 / 0.01) ** 2).sum(1).mean()
    loss.backward()
    *shaping, offset = list(energy.parameters())  # the output bias shifts E by a constant: no score change
    assert offset.grad is None or float(offset.grad.abs().max()) == 0.0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in shaping)
    # the ISM loss's parameter gradient equals a finite difference of the loss
    if objective == "ism":
        p = energy.net[0].bias
        h = 1e-3
        with torch.no_grad():
            p[0] += h
        up = float(implicit_score_matching(model, x)[0].detach())
        with torch.no_grad():
            p[0] -= 2 * h
        down = float(implicit_score_matching(model, x)[0].detach())
        assert abs((up - down) / (2 * h) - float(p.grad[0])) < 1e-2 * max(1.0, abs(float(p.grad[0])))


def test_energy_score_errors():
    model = EnergyScore(MLPEnergy(2, hidden=(8,)))
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\)"):
        model(torch.randn(3, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        EnergyScore(lambda x: x.sum(1))

    class Bad(torch.nn.Module):
        def forward(self, x):
            return x  # (B, d), not (B,)

    with pytest.raises(ValueError, match=r"shape \(batch,\) = \(3,\), got \(3, 2\)"):
        EnergyScore(Bad())(torch.randn(3, 2))
    with pytest.raises(ValueError, match="floating-point"):
        EnergyScore(MLPEnergy(2, hidden=(8,)))(torch.ones(3, 2, dtype=torch.long))


def test_noise_conditional_score_mlp_scales_by_sigma_by_default():
    """One set of defaults: Python's ScoreMLP is what `ebmlab train --method ncsn` builds."""
    assert ScoreMLP(2, noise_conditional=True).scale_by_sigma
    assert not ScoreMLP(2).scale_by_sigma
    assert not ScoreMLP(2, noise_conditional=True, scale_by_sigma=False).scale_by_sigma
