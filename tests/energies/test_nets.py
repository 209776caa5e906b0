"""Neural energies: shapes, input checks, scores, spectral norm, composition, no batch norm."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

import ebmlab
from ebmlab.energies import compose
from ebmlab.energies.nets import ConvEnergy, MLPEnergy, conv_trunk, mlp

IMAGE_CASES = [(1, 8), (1, 28), (3, 32)]  # (channels, side)


@pytest.mark.parametrize("dim", [2, 5])
def test_mlp_energy_maps_batch_to_one_energy_each(dim):
    net = MLPEnergy(dim, hidden=(16, 16))
    assert net.event_shape == (dim,)
    x = torch.randn(7, *net.event_shape)
    assert net(x).shape == (7,)


@pytest.mark.parametrize("channels, side", IMAGE_CASES)
def test_conv_energy_maps_images_to_one_energy_each(channels, side):
    net = ConvEnergy(channels, side, width=8)
    assert net.event_shape == (channels, side, side)
    x = torch.randn(3, *net.event_shape)
    assert net(x).shape == (3,)


@pytest.mark.parametrize(
    "side, final", [(1, 1), (2, 2), (3, 3), (4, 2), (5, 3), (7, 2), (8, 2), (16, 4), (28, 4), (32, 4), (64, 4)]
)
def test_conv_trunk_output_shape_is_reported_and_small(side, final):
    trunk, out_shape = conv_trunk(2, side, width=4)
    assert out_shape == (16, final, final)
    assert trunk(torch.randn(2, 2, side, side)).shape == (2, *out_shape)


def test_mlp_helper_layout():
    net = mlp(3, [8, 8], 4, activation=functools.partial(nn.LeakyReLU, 0.2))
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU, nn.Linear]
    assert net(torch.randn(5, 3)).shape == (5, 4)
    assert [type(m) for m in mlp(3, (), 1)] == [nn.Linear]


@pytest.mark.parametrize("bad", [torch.randn(4, 3), torch.randn(4), torch.randn(4, 2, 1)])
def test_mlp_energy_rejects_wrong_shapes_naming_the_expected_one(bad):
    net = MLPEnergy(2, hidden=(8,))
    msg = f"MLPEnergy(dim=2) expects x of shape (batch, 2), got {tuple(bad.shape)}".replace(",)", ")")
    with pytest.raises(ValueError, match=re.escape(msg)):
        net(bad)


@pytest.mark.parametrize("bad_shape", [(2, 1, 8, 9), (2, 3, 8, 8), (2, 1, 28, 28), (2, 64), (1, 8, 8)])
def test_conv_energy_rejects_wrong_shapes_naming_the_expected_one(bad_shape):
    net = ConvEnergy(1, 8, width=4)
    expected = "expects x of shape (batch, 1, 8, 8), got " + "(" + ", ".join(map(str, bad_shape)) + ")"
    with pytest.raises(ValueError, match=re.escape(expected)):
        net(torch.randn(*bad_shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        MLPEnergy(0)
    with pytest.raises(TypeError, match="hidden"):
        MLPEnergy(2, hidden=(8.5,))
    with pytest.raises(TypeError, match="activation"):
        MLPEnergy(2, activation=lambda: 3)
    with pytest.raises(ValueError, match="image_size"):
        ConvEnergy(1, 0)


def _nets(dtype=torch.float32):
    torch.manual_seed(0)
    return [
        (MLPEnergy(2, hidden=(16, 16)).to(dtype), torch.randn(6, 2, dtype=dtype)),
        (MLPEnergy(5, hidden=(16,), spectral_norm=True).to(dtype), torch.randn(6, 5, dtype=dtype)),
        (ConvEnergy(1, 8, width=4).to(dtype), torch.randn(3, 1, 8, 8, dtype=dtype)),
        (ConvEnergy(3, 32, width=4, spectral_norm=True).to(dtype), torch.randn(2, 3, 32, 32, dtype=dtype)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_is_autograd_wrt_x_only_and_leaves_parameter_grads_alone(dtype):
    for net, x in _nets(dtype):
        net.eval()  # freeze spectral norm's power iteration so two calls see the same weights
        s = ebmlab.score(net, x)
        assert s.shape == x.shape and s.dtype == dtype
        assert torch.isfinite(s).all()
        assert all(p.grad is None for p in net.parameters())
        # against a direct autograd computation
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xg).sum(), xg)
        assert torch.allclose(s, -g)


def _spectral_normed_weights(net: nn.Module) -> list[torch.Tensor]:
    weights = []
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert torch.nn.utils.parametrize.is_parametrized(m, "weight"), m
            # Convs: spectral_norm normalises the (out, in*k*k) reshaped weight. That
            # matrix norm is what we check; it bounds the conv operator norm only up
            # to a constant (Miyato et al. 2018; Gouk et al. 2021), a proxy.
            weights.append(m.weight.reshape(m.weight.shape[0], -1))
    return weights


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLPEnergy(5, hidden=(32, 32), spectral_norm=True), (8, 5)),
        (lambda: ConvEnergy(1, 28, width=4, spectral_norm=True), (4, 1, 28, 28)),
    ],
)
def test_spectral_norm_makes_each_weight_have_unit_largest_singular_value(make, shape):
    torch.manual_seed(1)
    net = make().train()
    with torch.no_grad():
        for _ in range(5):  # each train-mode forward runs one power iteration
            net(torch.randn(*shape))
    weights = _spectral_normed_weights(net)
    assert len(weights) == (3 if isinstance(net, MLPEnergy) else 5)
    with torch.no_grad():
        sigmas = torch.stack([torch.linalg.matrix_norm(w, ord=2) for w in weights])
    assert torch.allclose(sigmas, torch.ones_like(sigmas), atol=0.05), sigmas


def test_without_spectral_norm_nothing_is_parametrized():
    for net in (MLPEnergy(2), ConvEnergy(1, 8, width=4)):
        assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in net.modules())


def test_plus_builds_a_product_of_experts_holding_both_nets_parameters():
    torch.manual_seed(2)
    a, b = MLPEnergy(2, hidden=(8,)), MLPEnergy(2, hidden=(4,))
    p = a + b
    assert isinstance(p, compose.Product)
    ids = {id(q) for q in p.parameters()}
    assert {id(q) for q in a.parameters()} <= ids and {id(q) for q in b.parameters()} <= ids
    x = torch.randn(5, 2)
    assert torch.allclose(p(x), a(x) + b(x))
    gauss = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    for q in (gauss + a, a + gauss, p + a):  # __radd__, __add__, flattening
        assert isinstance(q, compose.Product)
    assert len((p + a).parts) == 3
    img = ConvEnergy(1, 8, width=4) + ConvEnergy(1, 8, width=4)
    assert isinstance(img, compose.Product) and img(torch.randn(2, 1, 8, 8)).shape == (2,)


def test_same_seed_gives_same_initialisation():
    for make in (lambda: MLPEnergy(3), lambda: ConvEnergy(1, 8, width=4, spectral_norm=True)):
        torch.manual_seed(3)
        a = make()
        torch.manual_seed(3)
        b = make()
        torch.manual_seed(4)
        c = make()
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("channels, side", IMAGE_CASES)
def test_conv_energy_has_no_batch_norm_and_samples_do_not_interact(channels, side):
    net = ConvEnergy(channels, side, width=4).train()
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norm_types) for m in net.modules())
    # A sample's energy does not depend on the rest of the batch.
    x = torch.randn(4, channels, side, side)
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-6)


# --------------------------------------------------------------------------- closed-form MLP scores

ACTIVATIONS = [nn.SiLU, nn.Tanh, nn.ReLU, functools.partial(nn.LeakyReLU, 0.2), functools.partial(nn.ELU, 0.5), nn.Softplus,
               functools.partial(nn.Softplus, beta=2.0, threshold=1.0), nn.GELU]  # GELU: the autograd fallback


def _autograd_energy_and_score(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    e = net(xg)
    (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), -g


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("hidden", [(), (16,), (32, 16, 8)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_mlp_energy_and_score_equals_autograd(activation, hidden, spectral_norm):
    """The samplers' MLPEnergy.energy_and_score (a written-out backward pass) is autograd's, to rounding;
    in train mode with spectral norm it runs the power iteration as often as forward does."""
    torch.manual_seed(0)
    net = MLPEnergy(3, hidden, activation=activation, spectral_norm=spectral_norm).double()
    twin = MLPEnergy(3, hidden, activation=activation, spectral_norm=spectral_norm).double()
    twin.load_state_dict(net.state_dict())  # spectral norm's u, v included
    x = torch.randn(50, 3, dtype=torch.float64) * 2  # both signs of every pre-activation
    for _ in range(3):  # train mode: each call advances the power iteration; both must advance alike
        e, s = ebmlab.energy_and_score(net, x)
        e_ref, s_ref = _autograd_energy_and_score(twin, x)
        torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-12)
    assert not e.requires_grad and not s.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_mlp_energy_and_score_falls_back_to_autograd_where_it_must():
    """A subclass with its own forward, float64 points into float32 weights: autograd, its checks and errors."""

    class Shifted(MLPEnergy):
        def forward(self, x):
            return super().forward(x) + (x ** 2).sum(-1)

    torch.manual_seed(0)
    net = Shifted(2, (8,))
    x = torch.randn(6, 2)
    e, s = ebmlab.energy_and_score(net, x)
    e_ref, s_ref = _autograd_energy_and_score(net, x)
    torch.testing.assert_close(s, s_ref)
    patched = MLPEnergy(2, (8,))
    forward = patched.forward
    patched.forward = lambda x: forward(x) + 1.0  # an instance's own forward (a test's spy, a user's patch)
    assert torch.equal(ebmlab.energy_and_score(patched, x)[0], forward(x).detach() + 1.0)
    with pytest.raises(TypeError, match="convert the points"):
        ebmlab.energy_and_score(MLPEnergy(2), x.double())
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\)"):
        ebmlab.energy_and_score(MLPEnergy(2), torch.randn(4, 3))
