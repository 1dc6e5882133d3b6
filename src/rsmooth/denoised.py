r"""Denoised smoothing: certify an off-the-shelf classifier through a denoiser in front of it.

A denoiser :math:`D` followed by a classifier :math:`f` is just another base classifier
:math:`f \circ D`, and :class:`~rsmooth.SmoothedClassifier` certifies it like any other: the noise
:math:`\delta \sim \mathcal{N}(0, \sigma^2 I)` is added by rsmooth *before* the denoiser, so the
guarantee of :cite:`cohen2019certified` holds for whatever the denoiser does. A better denoiser only
makes :math:`f \circ D` right more often under noise, which makes the certified radii larger.

- :class:`DiffusionDenoiser`: one-shot denoising with a diffusion model's noise predictor
  :cite:`carlini2023certified`.
- :class:`DenoisedClassifier`: ``classifier(denoiser(x))``, optionally resizing the denoised
  image for a classifier trained at another resolution.
- :class:`DenoiserMSELoss` and :class:`DenoiserStabilityLoss`: the two objectives of
  :cite:`salman2020denoised` for training a denoiser in front of a frozen classifier, called like
  every rsmooth criterion, ``loss = criterion(denoiser, inputs, targets)``; their pure forms
  :func:`denoiser_mse_loss` and :func:`denoiser_stability_loss` take the noise as an argument.
- :func:`diffusion_timestep`: the timestep of a noise schedule that matches a smoothing noise
  level, for tables and checks.

Nothing here imports diffusers: any callable with the calling conventions below works, and
diffusers' ``UNet2DModel`` and schedulers are among them (``pip install 'rsmooth[denoised]'``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth._denoiser_losses import (
    DenoiserMSELoss,
    DenoiserStabilityLoss,
    denoiser_mse_loss,
    denoiser_stability_loss,
)
from rsmooth._validation import check_positive

__all__ = [
    "DenoisedClassifier",
    "DenoiserMSELoss",
    "DenoiserStabilityLoss",
    "DiffusionDenoiser",
    "denoiser_mse_loss",
    "denoiser_stability_loss",
    "diffusion_timestep",
]

_INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _alphas_cumprod(schedule: Any) -> Tensor:
    """The schedule's alphas_cumprod as a float64 CPU tensor, validated."""
    values = getattr(schedule, "alphas_cumprod", schedule)
    if isinstance(values, Tensor):
        table = values.detach().to("cpu", torch.float64)
    elif isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(
            "schedule must be a 1-D tensor of alphas_cumprod or an object with an "
            f"alphas_cumprod attribute (a diffusers scheduler), got {_type_name(schedule)}"
        )
    else:  # a numpy array (guided-diffusion's GaussianDiffusion) or a sequence
        try:
            table = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"schedule's alphas_cumprod must be numbers, got {_type_name(values)}"
            ) from error
    if table.dim() != 1 or table.numel() == 0:
        raise ValueError(
            f"schedule must be a non-empty 1-D table of alphas_cumprod, got shape "
            f"{tuple(table.shape)}"
        )
    if not bool(((table > 0) & (table <= 1)).all()):
        raise ValueError(
            "schedule's alphas_cumprod must lie in (0, 1], got values in "
            f"[{table.min().item():.4g}, {table.max().item():.4g}]"
        )
    return table


def diffusion_timestep(schedule: Any, sigma: float) -> int:
    r"""The timestep whose noise level matches smoothing noise ``sigma`` on data in [0, 1].

    Mapping data from [0, 1] to a diffusion model's [-1, 1] doubles the noise, so the model
    must see noise :math:`2\sigma`. Its forward process
    :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` is
    :math:`\sqrt{\bar\alpha_t}` times :math:`x_0` plus noise of standard deviation
    :math:`\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`, which equals :math:`2\sigma` when
    :math:`\bar\alpha_t = 1/(1+4\sigma^2)`. The schedule is discrete, so this returns the closest:

    .. math:: t^* = \operatorname*{arg\,min}_t \big|\bar\alpha_t - 1/(1+4\sigma^2)\big|

    (the first such index on a tie).

    Args:
        schedule: A 1-D tensor (or array) of :math:`\bar\alpha_t` (``alphas_cumprod``), or an
            object with an ``alphas_cumprod`` attribute (diffusers' schedulers, guided-diffusion's
            ``GaussianDiffusion``).
        sigma: Smoothing noise standard deviation :math:`\sigma > 0` in data units ([0, 1]).

    Returns:
        :math:`t^*`, an index into the schedule.

    Raises:
        TypeError: ``schedule`` is not a table of numbers or ``sigma`` is not a number.
        ValueError: ``sigma`` is not positive and finite, or the table is not 1-D with values
            in (0, 1].

    Example:
        >>> betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear schedule
        >>> schedule = torch.cumprod(1 - betas, dim=0)
        >>> diffusion_timestep(schedule, 0.25), diffusion_timestep(schedule, 0.5)
        (144, 258)
    """
    sigma = check_positive("sigma", sigma)
    table = _alphas_cumprod(schedule)
    target = 1.0 / (1.0 + 4.0 * sigma * sigma)
    return int(torch.argmin((table - target).abs()).item())


def _noise_prediction(output: Any, inputs: Tensor) -> Tensor:
    """ε̂ from the model's output: a tensor or ``.sample``; the first C of 2C channels."""
    eps = output if isinstance(output, Tensor) else getattr(output, "sample", None)
    if not isinstance(eps, Tensor):
        raise TypeError(
            "model(x_t, t) must return the predicted noise as a tensor or as an object with a "
            f".sample tensor (diffusers' UNet2DModel), got {_type_name(output)}"
        )
    channels = inputs.shape[1]
    if (
        eps.dim() == inputs.dim()
        and eps.shape[0] == inputs.shape[0]
        and eps.shape[2:] == inputs.shape[2:]
    ):
        if eps.shape[1] == channels:
            return eps
        if eps.shape[1] == 2 * channels:  # learned variance: [ε̂, variance values]
            return eps[:, :channels]
    raise ValueError(
        f"model(x_t, t) returned shape {tuple(eps.shape)} for inputs of shape "
        f"{tuple(inputs.shape)}; expected the inputs' shape, or twice their channels (a model "
        "that also predicts the variance)"
    )


class DiffusionDenoiser(nn.Module):
    r"""One-shot denoising with a diffusion model, the denoiser of :cite:`carlini2023certified`.

    A noisy input :math:`\tilde x = x + \delta` in [0, 1] data units, with
    :math:`\delta \sim \mathcal{N}(0, \sigma^2 I)` added by rsmooth, is mapped to the model's
    [-1, 1] range, scaled to look like a diffusion sample at timestep :math:`t^*`
    (:func:`diffusion_timestep`), and denoised in a single call of the noise predictor:

    .. math::
        x_t = \sqrt{\bar\alpha_{t^*}}\,(2\tilde x - 1), \qquad
        \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_{t^*}}\;\hat\epsilon(x_t, t^*)}
                        {\sqrt{\bar\alpha_{t^*}}}, \qquad
        D(\tilde x) = \operatorname{clamp}\big((\hat x_0 + 1)/2,\ 0,\ 1\big)

    **Why the certificate stays sound.** The denoiser is part of the base classifier
    :math:`f \circ D`; the guarantee of randomized smoothing is about the Gaussian noise that
    rsmooth adds to the input and holds for *any* base classifier. Nothing the denoiser assumes
    (its timestep, its training data, that the noise is Gaussian) enters the certificate: a wrong
    assumption can only make :math:`f \circ D` less accurate under noise, so the radii are
    smaller, never unsound. The certified :math:`\sigma` is the one given to
    :class:`~rsmooth.SmoothedClassifier`.

    **What the discrete timestep costs.** The schedule has no timestep whose noise is exactly
    :math:`2\sigma`; at :math:`t^*` the model assumes noise
    :attr:`noise_level` :math:`=\sqrt{(1-\bar\alpha_{t^*})/\bar\alpha_{t^*}}` in its [-1, 1]
    space. The mismatch makes the denoised image slightly over- or under-smoothed (a loss of
    accuracy of the base classifier, typically negligible: under 1% of the noise level for
    1,000-step schedules at :math:`\sigma \ge 0.12`); ``repr`` prints both numbers.

    Cost: one call of ``model`` per noisy sample, so certifying with ``n`` samples costs ``n``
    forward passes of the diffusion model plus ``n`` of the classifier; the engine's batching,
    ``compile`` and ``autocast`` apply to both.

    Args:
        model: The noise predictor, called as ``model(x_t, t)`` with ``x_t`` of the inputs' shape
            and ``t`` a ``long`` tensor ``[B]`` filled with :math:`t^*`. It returns
            :math:`\hat\epsilon` as a tensor or as an object with a ``.sample`` tensor (diffusers'
            ``UNet2DModel``). If it returns 2C channels for C input channels (a model that also
            learns the variance, such as guided-diffusion's), the first C are
            :math:`\hat\epsilon`. An ``nn.Module`` is registered as a submodule (so ``.to()``,
            ``eval()`` and ``parameters()`` reach it); any other callable is kept as is.
        schedule: The :math:`\bar\alpha_t` table: a 1-D tensor or array (``alphas_cumprod``), or an
            object with an ``alphas_cumprod`` attribute (diffusers' schedulers, guided-diffusion's
            ``GaussianDiffusion``).
        sigma: The smoothing noise :math:`\sigma` this denoiser is for, in data units; use the
            same value as the :class:`~rsmooth.SmoothedClassifier`.

    Attributes:
        timestep: :math:`t^*`, the timestep the model is called with.
        alpha_bar: :math:`\bar\alpha_{t^*}`, as a Python float.

    Shape:
        - inputs: :math:`(B, C, *)`, noisy data in [0, 1] (any spatial shape the model accepts).
        - output: :math:`(B, C, *)`, the denoised data in [0, 1].

    Raises:
        TypeError: ``model`` is not callable, or ``schedule`` is not a table of numbers; when
            called, ``model`` does not return a tensor or an object with ``.sample``.
        ValueError: ``sigma`` is not positive and finite, or the schedule is not 1-D with values
            in (0, 1]; when called, ``model`` returns a shape other than the inputs' or twice
            their channels.

    Example:
        >>> betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        >>> schedule = torch.cumprod(1 - betas, dim=0)
        >>> zero_noise = lambda x_t, t: torch.zeros_like(x_t)  # stands for a trained ε-predictor
        >>> denoiser = DiffusionDenoiser(zero_noise, schedule, sigma=0.25)
        >>> denoiser
        DiffusionDenoiser(sigma=0.25, timestep=144, alpha_bar=0.8004, noise_level=0.4994 (2*sigma=0.5))
        >>> x = torch.tensor([[[[0.0, 0.25, 0.5, 1.0]]]])
        >>> denoiser(x)  # with ε̂ = 0 the clean estimate is the noisy input itself
        tensor([[[[0.0000, 0.2500, 0.5000, 1.0000]]]])
    """

    def __init__(self, model: Callable[..., Any], schedule: Any, *, sigma: float) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t), got {_type_name(model)}")
        self.sigma = check_positive("sigma", sigma)
        table = _alphas_cumprod(schedule)
        self.model = model
        self.timestep = diffusion_timestep(table, self.sigma)
        self.alpha_bar = float(table[self.timestep])

    @property
    def noise_level(self) -> float:
        r"""The noise the model assumes at :math:`t^*`, in its [-1, 1] space (compare with 2σ)."""
        return math.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)

    def extra_repr(self) -> str:
        """The hyperparameters, the timestep and the noise level it assumes against 2σ."""
        return (
            f"sigma={self.sigma!r}, timestep={self.timestep}, alpha_bar={self.alpha_bar:.4f}, "
            f"noise_level={self.noise_level:.4f} (2*sigma={2 * self.sigma:.4g})"
        )

    def forward(self, inputs: Tensor) -> Tensor:
        """Denoise a batch of noisy inputs in [0, 1] with one call of the noise predictor.

        Args:
            inputs: Noisy data ``[B, C, *]`` in data units.

        Returns:
            The denoised batch, of the inputs' shape, clamped to [0, 1].
        """
        scale, noise_scale = math.sqrt(self.alpha_bar), math.sqrt(1.0 - self.alpha_bar)
        x_t = (2.0 * inputs - 1.0) * scale
        t = torch.full((inputs.shape[0],), self.timestep, dtype=torch.long, device=inputs.device)
        eps = _noise_prediction(self.model(x_t, t), inputs)
        x0 = (x_t - noise_scale * eps.to(x_t.dtype)) / scale
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_size(resize: Any) -> tuple[int, ...] | None:
    if resize is None:
        return None
    if isinstance(resize, numbers.Integral) and not isinstance(resize, bool):
        if int(resize) < 1:
            raise ValueError(f"resize must be a positive integer, got {resize}")
        return (int(resize),)
    if (
        isinstance(resize, Sequence)
        and not isinstance(resize, str)
        and len(resize) > 0
        and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in resize)
    ):
        if min(int(s) for s in resize) < 1:
            raise ValueError(f"resize must hold positive integers, got {tuple(resize)!r}")
        return tuple(int(s) for s in resize)
    raise TypeError(
        "resize must be None, an int (a square size) or a sequence of ints such as (224, 224), "
        f"got {_type_name(resize)} {resize!r}"
    )


class DenoisedClassifier(nn.Module):
    r"""A denoiser in front of a classifier, ``classifier(denoiser(x))``: a base classifier.

    Denoised smoothing :cite:`salman2020denoised,carlini2023certified` certifies
    :math:`f \circ D` with the usual machinery: pass this module to
    :class:`~rsmooth.SmoothedClassifier` (then ``certify``, ``certify_radius``,
    :func:`rsmooth.runner.certify_dataset`, or ``rsmooth certify --model module:factory`` with a
    factory that returns it). The certificate is sound whatever the denoiser is: it is part of the
    base classifier, and the guarantee is about the noise rsmooth adds before it.

    The denoised image can be resized for a classifier trained at another resolution (the
    ImageNet pipelines of :cite:`carlini2023certified` upsample 256×256 images to 224 or 512) with
    :func:`torch.nn.functional.interpolate` (``antialias=True`` for the bilinear and bicubic
    modes, as in the reference code). Put the classifier's own input normalisation inside
    ``classifier``: the denoiser returns data in [0, 1].

    Args:
        denoiser: Maps noisy inputs ``[B, C, *]`` to denoised ones (e.g. a
            :class:`DiffusionDenoiser`, or a network trained with :class:`DenoiserMSELoss` or
            :class:`DenoiserStabilityLoss`).
        classifier: The classifier, returning logits ``[B, K]``; it is not changed.
        resize: ``None`` (no resizing), an int (a square size, for 4-D images), or the output
            size per spatial dimension, e.g. ``(224, 224)``. Default: ``None``.
        interpolation: The ``mode`` of :func:`~torch.nn.functional.interpolate`.
            Default: ``"bicubic"``, as in :cite:`carlini2023certified`.

    Shape:
        - inputs: :math:`(B, C, *)`, noisy data.
        - output: :math:`(B, K)`, the classifier's logits.

    Raises:
        TypeError: ``denoiser`` or ``classifier`` is not an ``nn.Module``, or ``resize`` or
            ``interpolation`` has the wrong type.
        ValueError: ``resize`` is not positive, or ``interpolation`` is not a mode of
            :func:`~torch.nn.functional.interpolate`.

    Example:
        >>> model = DenoisedClassifier(nn.Identity(), nn.Sequential(nn.Flatten(), nn.LazyLinear(3)),
        ...                            resize=16)
        >>> model
        DenoisedClassifier(
          resize=(16, 16), interpolation='bicubic'
          (denoiser): Identity()
          (classifier): Sequential(
            (0): Flatten(start_dim=1, end_dim=-1)
            (1): LazyLinear(in_features=0, out_features=3, bias=True)
          )
        )
        >>> model(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        denoiser: nn.Module,
        classifier: nn.Module,
        *,
        resize: int | Sequence[int] | None = None,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module, got {_type_name(denoiser)}")
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be a torch.nn.Module, got {_type_name(classifier)}")
        size = _check_size(resize)
        if not isinstance(interpolation, str):
            raise TypeError(f"interpolation must be a str, got {_type_name(interpolation)}")
        if interpolation not in _INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation must be one of {list(_INTERPOLATION_MODES)}, got {interpolation!r}"
            )
        self.denoiser = denoiser
        self.classifier = classifier
        #: The output size of the resizing, one entry per spatial dimension (``None``: none).
        self.resize = size * 2 if size is not None and len(size) == 1 else size
        self.interpolation = interpolation

    def extra_repr(self) -> str:
        """The resizing settings (the two modules print as children)."""
        return f"resize={self.resize!r}, interpolation={self.interpolation!r}"

    def forward(self, inputs: Tensor) -> Tensor:
        """Classify the denoised (and resized) inputs.

        Args:
            inputs: Noisy inputs ``[B, C, *]``.

        Returns:
            The classifier's logits.
        """
        images = self.denoiser(inputs)
        if self.resize is not None:
            size = self.resize
            if len(size) == 2 and images.dim() != 4:
                raise ValueError(
                    f"resize={size!r} needs 4-D images [B, C, H, W], the denoiser returned shape "
                    f"{tuple(images.shape)}"
                )
            antialias = self.interpolation in ("bilinear", "bicubic")
            images = F.interpolate(images, size=size, mode=self.interpolation, antialias=antialias)
        return self.classifier(images)
