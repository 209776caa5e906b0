"""Score networks ``s_theta(x) ~ grad_x log p(x)``, trained by score matching.

Three kinds, all ``nn.Module`` s with an ``event_shape``:

* :class:`ScoreMLP` -- a *direct* score model for vectors: an MLP
  ``x -> (B, dim)``, or, noise-conditional (Song & Ermon 2019),
  ``(x, sigma) -> (B, dim)`` with ``log sigma`` (or a small Fourier embedding
  of it) concatenated to the input, optionally divided by ``sigma`` (NCSNv2,
  Song & Ermon 2020, "Improved techniques for training score-based
  generative models", technique 3: the optimal score's norm scales like
  ``1 / sigma``, so ``net(x) / sigma`` lets one unconditional net serve every
  level);
* :class:`ScoreConvNet` -- a small convolutional encoder/decoder for square
  images (8x8 digits, 28x28), noise-conditional by ``net(x) / sigma`` (NCSNv2);
* :class:`EnergyScore` -- an energy-parameterised score
  ``s(x) = -grad_x E_theta(x)``, computed with ``create_graph=True`` so that a
  score-matching loss trains the energy's parameters (Hyvarinen 2005 fits an
  unnormalised density exactly this way).

Direct score nets are not gradients of anything (their Jacobian need not be
symmetric), so they cannot be used with MH samplers, only with (annealed)
Langevin dynamics; :class:`EnergyScore` keeps an energy and so a density.

Like the energies in :mod:`ebmlab.energies.nets`: smooth activations (SiLU),
no batch normalisation (score matching differentiates each sample's score with
respect to its own input, which batch statistics would couple), default
PyTorch initialisation. A noise-conditional model takes ``sigma`` as a tensor
of shape ``(B,)`` (one level per sample, as :func:`~ebmlab.objectives.ncsn_loss`
and :class:`~ebmlab.samplers.AnnealedLangevin` pass it), a 0-d tensor or a
Python number (shared by the batch); levels must be ``> 0`` (not checked, to
keep the forward pass free of host synchronisation).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import check_count, format_shape
from .nets import Activation, conv_trunk, make_activation, mlp

__all__ = ["EnergyScore", "ScoreConvNet", "ScoreMLP", "SIGMA_EMBEDDINGS"]

#: How :class:`ScoreMLP` feeds the noise level to the network.
SIGMA_EMBEDDINGS = ("log", "fourier", None)


def _check_batch(x: object, event_shape: tuple[int, ...], who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 1 + len(event_shape) or tuple(x.shape[1:]) != event_shape:
        got = format_shape(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} expects x of shape {format_shape(('batch', *event_shape))}, got {got}")


def _sigma_per_sample(sigma: object, x: Tensor, who: str) -> Tensor:
    """``sigma`` as a ``(B,)`` tensor on ``x``'s device and dtype.

    Accepts a number, a 0-d tensor, or a ``(B,)`` or ``(B, 1)`` tensor.
    """
    b = x.shape[0]
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        return torch.full((b,), float(sigma), dtype=x.dtype, device=x.device)
    if not isinstance(sigma, Tensor):
        raise ValueError(f"{who} needs sigma as a number or a tensor of shape (batch,) = ({b},), "
                         f"got {type(sigma).__name__}")
    if sigma.dim() == 0:
        return sigma.to(device=x.device, dtype=x.dtype).expand(b)
    if tuple(sigma.shape) in ((b,), (b, 1)):
        return sigma.reshape(b).to(device=x.device, dtype=x.dtype)
    raise ValueError(f"{who} needs sigma of shape (batch,) = ({b},), got {format_shape(tuple(sigma.shape))}")


class ScoreMLP(nn.Module):
    """MLP score model for vectors: ``x -> (B, dim)`` or ``(x, sigma) -> (B, dim)``.

    Unconditional (``noise_conditional=False``): ``s(x) = mlp(x)``, for
    implicit, sliced and denoising score matching at one level.

    Noise-conditional (``noise_conditional=True``), for NCSN training
    (:func:`~ebmlab.objectives.ncsn_loss`) and annealed Langevin sampling:

    * ``sigma_embedding="log"``: ``s(x, sigma) = mlp([x, log sigma])``;
    * ``sigma_embedding="fourier"``: ``mlp([x, log sigma, sin(f_k log sigma), cos(f_k log sigma)])``
      with fixed frequencies ``f_k = 2^k / 4``, ``k < num_frequencies``
      (a small version of the Fourier features of Tancik et al. 2020 /
      the sinusoidal noise embeddings of later score models);
    * ``sigma_embedding=None``: ``mlp(x)`` ignores ``sigma`` (needs ``scale_by_sigma``);
    * ``scale_by_sigma=True`` divides the output by ``sigma`` (NCSNv2, Song &
      Ermon 2020: the optimal score at level ``sigma`` has norm about
      ``1 / sigma``); with ``sigma_embedding=None`` this is exactly "an
      unconditional net's output divided by sigma".

    Args:
        dim: event dimension.
        hidden: hidden widths of :func:`~ebmlab.energies.nets.mlp`.
        activation: zero-argument factory of the activation module (SiLU).
        noise_conditional: take ``(x, sigma)``.
        sigma_embedding: ``"log"``, ``"fourier"`` or ``None`` (noise-conditional only).
        scale_by_sigma: divide the output by ``sigma`` (noise-conditional only);
            default ``noise_conditional`` (NCSNv2's technique 3, what ``ebmlab train`` uses).
        num_frequencies: Fourier frequencies (``"fourier"`` only).

    Attributes:
        event_shape: ``(dim,)``.
        net: the ``nn.Sequential`` from :func:`~ebmlab.energies.nets.mlp`.

    Raises:
        ValueError: for an unknown embedding, options that need
            ``noise_conditional=True``, or a noise-conditional model that
            would ignore ``sigma`` entirely.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (128, 128),
        activation: Activation = nn.SiLU,
        noise_conditional: bool = False,
        sigma_embedding: str | None = "log",
        scale_by_sigma: bool | None = None,
        num_frequencies: int = 4,
    ) -> None:
        super().__init__()
        self.dim = check_count("dim", dim, 1)
        self.event_shape: tuple[int, ...] = (self.dim,)
        if sigma_embedding not in SIGMA_EMBEDDINGS:
            raise ValueError(f"sigma_embedding must be one of {SIGMA_EMBEDDINGS}, got {sigma_embedding!r}")
        self.noise_conditional = bool(noise_conditional)
        # default: on for noise-conditional models, the setting the CLI has always used (on a spiral the
        # unscaled network learns a blob, the scaled one the spiral)
        self.scale_by_sigma = bool(noise_conditional if scale_by_sigma is None else scale_by_sigma)
        if not self.noise_conditional:
            if self.scale_by_sigma:
                raise ValueError("scale_by_sigma=True needs noise_conditional=True (the model must receive sigma)")
            sigma_embedding = None
        elif sigma_embedding is None and not self.scale_by_sigma:
            raise ValueError("a noise-conditional ScoreMLP needs a sigma_embedding or scale_by_sigma=True "
                             "(otherwise it ignores sigma)")
        self.sigma_embedding = sigma_embedding
        if sigma_embedding == "fourier":
            k = check_count("num_frequencies", num_frequencies, 1)
            self.register_buffer("frequencies", 2.0 ** torch.arange(k, dtype=torch.float32) / 4.0)
            extra = 1 + 2 * k
        else:
            self.frequencies = None
            extra = 1 if sigma_embedding == "log" else 0
        self.net = mlp(self.dim + extra, hidden, self.dim, activation)

    def _embed(self, log_sigma: Tensor) -> Tensor:
        """``(B,)`` log-levels -> ``(B, extra)`` features."""
        if self.sigma_embedding == "log":
            return log_sigma.unsqueeze(1)
        phase = log_sigma.unsqueeze(1) * self.frequencies.to(log_sigma.dtype)
        return torch.cat([log_sigma.unsqueeze(1), phase.sin(), phase.cos()], dim=1)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """Scores of ``x`` (at noise level ``sigma`` for a noise-conditional model).

        Args:
            x: points, shape ``(B, dim)``.
            sigma: noise levels ``> 0``, shape ``(B,)``, a 0-d tensor or a
                number; required exactly when the model is noise-conditional.

        Returns:
            Scores, shape ``(B, dim)``.

        Raises:
            ValueError: if ``x`` or ``sigma`` has the wrong shape, or ``sigma``
                is given to an unconditional model or missing for a conditional one.
        """
        who = f"ScoreMLP(dim={self.dim}, noise_conditional={self.noise_conditional})"
        _check_batch(x, self.event_shape, who)
        if not self.noise_conditional:
            if sigma is not None:
                raise ValueError(f"{who} is unconditional and takes no sigma; "
                                 "build it with noise_conditional=True for NCSN")
            return self.net(x)
        if sigma is None:
            raise ValueError(f"{who} needs the noise level: call it as model(x, sigma)")
        s = _sigma_per_sample(sigma, x, who)
        h = x if self.sigma_embedding is None else torch.cat([x, self._embed(s.log())], dim=1)
        out = self.net(h)
        return out / s.unsqueeze(1) if self.scale_by_sigma else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, noise_conditional={self.noise_conditional}, "
                f"sigma_embedding={self.sigma_embedding!r}, scale_by_sigma={self.scale_by_sigma}")


class ScoreConvNet(nn.Module):
    """Small convolutional score model for square images: ``(B, C, S, S) -> (B, C, S, S)``.

    Encoder: :func:`~ebmlab.energies.nets.conv_trunk` (3x3 convolutions,
    halving the size while doubling the channels; 8x8 -> 2x2, 28x28 -> 4x4).
    Decoder: at each encoder level in reverse, nearest-neighbour upsampling to
    that level's size, concatenation with that level's features (U-Net skip
    connections, Ronneberger et al. 2015) and a 3x3 convolution with the
    activation; a last 3x3 convolution maps back to ``C`` channels. No batch
    normalisation (it would couple the samples of a batch).

    Noise-conditional (the default): ``s(x, sigma) = net(x) / sigma`` (NCSNv2,
    Song & Ermon 2020, technique 3); otherwise ``s(x) = net(x)``.

    Args:
        in_channels: image channels ``C``.
        image_size: side ``S`` of the square input.
        width: channels of the first convolution (then ``2w``, ``4w``).
        noise_conditional: take ``(x, sigma)`` and divide by ``sigma``.
        activation: zero-argument factory of the activation module (SiLU).

    Attributes:
        event_shape: ``(in_channels, image_size, image_size)``.
        trunk: the encoder from :func:`~ebmlab.energies.nets.conv_trunk`.
        decoder: one ``Conv2d`` per encoder level but the deepest.
        head: the last ``Conv2d`` to ``C`` channels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        width: int = 32,
        noise_conditional: bool = True,
        activation: Activation = nn.SiLU,
    ) -> None:
        super().__init__()
        self.in_channels = check_count("in_channels", in_channels, 1)
        self.image_size = check_count("image_size", image_size, 1)
        self.width = check_count("width", width, 1)
        self.noise_conditional = bool(noise_conditional)
        self.event_shape: tuple[int, ...] = (self.in_channels, self.image_size, self.image_size)
        self.trunk, _ = conv_trunk(self.in_channels, self.image_size, self.width, activation)
        # conv_trunk alternates (Conv2d, activation); the output of each pair is one encoder level.
        channels = [m.out_channels for m in self.trunk if isinstance(m, nn.Conv2d)]
        self.decoder = nn.ModuleList(
            nn.Conv2d(c_deep + c_skip, c_skip, 3, padding=1)
            for c_deep, c_skip in zip(channels[::-1][:-1], channels[::-1][1:])
        )
        self.decoder_act = nn.ModuleList(make_activation(activation) for _ in self.decoder)
        self.head = nn.Conv2d(channels[0], self.in_channels, 3, padding=1)

    def forward(self, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """Scores of a batch of images (at noise level ``sigma`` when noise-conditional).

        Args:
            x: images, shape ``(B, in_channels, image_size, image_size)``.
            sigma: noise levels ``> 0``, shape ``(B,)``, 0-d or a number;
                required exactly when the model is noise-conditional.

        Returns:
            Scores, the shape of ``x``.

        Raises:
            ValueError: if ``x`` or ``sigma`` has the wrong shape, or ``sigma``
                is missing / unexpected.
        """
        who = (f"ScoreConvNet(in_channels={self.in_channels}, image_size={self.image_size}, "
               f"noise_conditional={self.noise_conditional})")
        _check_batch(x, self.event_shape, who)
        if self.noise_conditional and sigma is None:
            raise ValueError(f"{who} needs the noise level: call it as model(x, sigma)")
        if not self.noise_conditional and sigma is not None:
            raise ValueError(f"{who} is unconditional and takes no sigma")
        levels = []
        h = x
        for i in range(0, len(self.trunk), 2):
            h = self.trunk[i + 1](self.trunk[i](h))
            levels.append(h)
        for conv, act, skip in zip(self.decoder, self.decoder_act, levels[::-1][1:]):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = act(conv(torch.cat([h, skip], dim=1)))
        out = self.head(h)
        if self.noise_conditional:
            out = out / _sigma_per_sample(sigma, x, who).reshape(-1, 1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, width={self.width}, "
                f"noise_conditional={self.noise_conditional}")


class EnergyScore(nn.Module):
    """The score of an energy model, ``s(x) = -grad_x E_theta(x)``, as a trainable score model.

    Score matching on ``EnergyScore(energy)`` fits the *energy*: the score is
    computed by autograd with ``create_graph=True`` whenever gradients are
    enabled, so a loss of the score (which for implicit and sliced score
    matching is itself differentiated with respect to ``x`` again) back-propagates
    to ``energy``'s parameters. Under ``torch.no_grad()`` (e.g. inside a
    sampler) the score is computed without keeping the graph and returned
    detached. If ``x`` already requires grad (the leaf a score-matching loss
    differentiates with respect to) the score is taken with respect to that
    very tensor; otherwise with respect to a detached copy.

    The density ``exp(-E) / Z`` stays available through :attr:`energy`
    (e.g. ``ebmlab.log_partition(model.energy, bounds)``).

    Args:
        energy: an ``nn.Module`` ``x -> (B,)`` (e.g.
            :class:`~ebmlab.energies.nets.MLPEnergy`).
        event_shape: the event shape; default ``energy.event_shape`` (if the
            energy has none, inputs are not shape-checked beyond ``(B, ...)``).

    Attributes:
        energy: the wrapped energy.
        event_shape: as above, or ``None``.
    """

    def __init__(self, energy: nn.Module, event_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(energy, nn.Module):
            raise TypeError(f"EnergyScore wraps an nn.Module energy x -> (B,), got {type(energy).__name__}")
        self.energy = energy
        shape = event_shape if event_shape is not None else getattr(energy, "event_shape", None)
        self.event_shape: tuple[int, ...] | None = None if shape is None else tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        """``-grad_x E(x)``, shape ``x.shape``.

        Args:
            x: points, shape ``(B, *event_shape)``, floating point.

        Raises:
            ValueError: if ``x`` has the wrong shape, or the energy does not
                return one finite-shaped value ``(B,)`` per sample.
        """
        if self.event_shape is not None:
            _check_batch(x, self.event_shape, f"EnergyScore(event_shape={self.event_shape})")
        elif not isinstance(x, Tensor) or x.dim() < 2:
            got = format_shape(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"EnergyScore expects x of shape (batch, *event), got {got}")
        if not x.is_floating_point():
            raise ValueError(f"EnergyScore expects a floating-point x, got dtype {x.dtype}")
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            e = self.energy(xg)
            if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
                got = format_shape(tuple(e.shape)) if isinstance(e, Tensor) else type(e).__name__
                raise ValueError(f"the energy must return shape (batch,) = ({x.shape[0]},), got {got}")
            (g,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph)
        return -g if create_graph else -g.detach()

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"

