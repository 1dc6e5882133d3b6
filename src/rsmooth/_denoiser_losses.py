"""Salman et al.'s denoiser objectives; public through :mod:`rsmooth.denoised`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth.functional import sample_noise
from rsmooth.losses._base import SmoothingCriterion

__all__ = [
    "DenoiserMSELoss",
    "DenoiserStabilityLoss",
    "denoiser_mse_loss",
    "denoiser_stability_loss",
]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_noise(inputs: Tensor, noise: Tensor) -> None:
    if noise.shape != inputs.shape:
        raise ValueError(
            f"noise must have the shape of inputs {tuple(inputs.shape)}, got {tuple(noise.shape)}"
        )


def _denoised(denoiser: Callable[[Tensor], Any], noisy: Tensor) -> Tensor:
    output = denoiser(noisy)
    if not isinstance(output, Tensor):
        raise TypeError(f"denoiser must return a tensor, got {_type_name(output)}")
    return output


def denoiser_mse_loss(
    denoiser: Callable[[Tensor], Tensor], inputs: Tensor, noise: Tensor
) -> Tensor:
    r"""The denoising objective of :cite:`salman2020denoised` on given noise.

    .. math:: L = \frac{1}{N} \big\lVert D(x + \delta) - x \big\rVert_2^2

    with :math:`N` the number of entries of the batch (the mean squared error over every entry,
    ``torch.nn.MSELoss()`` as in the official code). One forward pass of the denoiser in its
    current mode; noisy inputs are not clamped.

    Args:
        denoiser: Maps noisy inputs to denoised ones of the same shape.
        inputs: Clean inputs ``[B, *]``.
        noise: Noise ``[B, *]``, already scaled by :math:`\sigma`.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        ValueError: ``noise`` or the denoiser's output does not have the shape of ``inputs``.
        TypeError: The denoiser does not return a tensor.

    Example:
        >>> x = torch.zeros(2, 3)
        >>> denoiser_mse_loss(nn.Identity(), x, torch.full_like(x, 0.5))  # 0.5 ** 2
        tensor(0.2500)
    """
    _check_noise(inputs, noise)
    denoised = _denoised(denoiser, inputs + noise)
    if denoised.shape != inputs.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(denoised.shape)} for inputs of shape "
            f"{tuple(inputs.shape)}; the MSE objective needs the inputs' shape"
        )
    return F.mse_loss(denoised, inputs)


def denoiser_stability_loss(
    denoiser: Callable[[Tensor], Tensor],
    classifier: Callable[[Tensor], Tensor],
    inputs: Tensor,
    noise: Tensor,
) -> Tensor:
    r"""The stability objective of :cite:`salman2020denoised` on given noise.

    .. math::
        L = \frac{1}{B} \sum_j \mathrm{CE}\Big(f\big(D(x_j + \delta_j)\big),\
            \operatorname*{arg\,max}_k f(x_j)_k\Big)

    The targets are the classifier's own predictions on the clean inputs (computed without
    gradient), not the labels; the gradient flows through the classifier into the denoiser.
    The classifier runs as it is: :class:`DenoiserStabilityLoss` puts it in ``eval()`` mode with
    frozen parameters for the call, as the official code does.

    Args:
        denoiser: Maps noisy inputs to denoised ones.
        classifier: The classifier :math:`f`, returning logits ``[B, K]``.
        inputs: Clean inputs ``[B, *]``.
        noise: Noise ``[B, *]``, already scaled by :math:`\sigma`.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        ValueError: ``noise`` does not have the shape of ``inputs``.
        TypeError: The denoiser does not return a tensor.

    Example:
        >>> classifier = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(classifier.weight), nn.init.zeros_(classifier.bias)
        >>> x = torch.rand(2, 4)
        >>> round(denoiser_stability_loss(nn.Identity(), classifier, x, 0.1 * x).item(), 4)  # log 3
        1.0986
    """
    _check_noise(inputs, noise)
    with torch.no_grad():
        clean = classifier(inputs)
    logits = classifier(_denoised(denoiser, inputs + noise))
    predictions = clean.argmax(dim=1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, predictions)


class _DenoiserCriterion(SmoothingCriterion):
    """The criteria's base, for a ``model`` that is a denoiser: its output is an image."""

    _returns: ClassVar[str | None] = "a tensor (the denoised inputs)"


class DenoiserMSELoss(_DenoiserCriterion):
    r"""Train a denoiser to undo Gaussian noise: the MSE objective of :cite:`salman2020denoised`.

    Per call, one noise draw :math:`\delta_j \sim \mathcal{N}(0, \sigma^2 I)` per input and one
    forward pass of the denoiser :math:`D` in its current mode (normally ``train()``):

    .. math:: L = \frac{1}{N} \sum_{j} \big\lVert D(x_j + \delta_j) - x_j \big\rVert_2^2

    with :math:`N` the number of entries in the batch (``torch.nn.MSELoss()``, as in the official
    ``train_denoiser.py`` with ``--objective denoising``). The classifier plays no part, so one
    denoiser serves any classifier; :class:`DenoiserStabilityLoss` trains for a given one (and
    :cite:`salman2020denoised` found fine-tuning an MSE-trained denoiser with it best).

    The call shape is every criterion's, ``loss = criterion(denoiser, inputs, targets)``;
    ``targets`` are checked but not used (the clean inputs are the targets). After each call,
    :attr:`last_terms` holds ``"mse"`` (equal to the loss). The pure form is
    :func:`denoiser_mse_loss`.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`, the one the denoised classifier will
            be certified at.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.
        input_range: ``(low, high)`` the inputs must lie in, or ``None`` to turn the check
            off. Default: ``(0.0, 1.0)``.

    Shape:
        - inputs: :math:`(B, *)`, any input shape the denoiser accepts.
        - targets: :math:`(B,)`, class indices (unused).
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type, or the denoiser does not return a tensor.
        ValueError: ``sigma`` is not positive and finite, or the denoiser's output does not have
            the inputs' shape.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> criterion = DenoiserMSELoss(sigma=0.25, generator=g)
        >>> criterion
        DenoiserMSELoss(sigma=0.25)
        >>> denoiser = nn.Conv2d(1, 1, 3, padding=1)
        >>> loss = criterion(denoiser, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
        >>> loss.shape, list(criterion.last_terms)
        (torch.Size([]), ['mse'])
    """

    term_names: ClassVar[tuple[str, ...]] = ("mse",)

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, 1, generator=self.generator)
        with preserve_model_state(model):
            loss = denoiser_mse_loss(model, inputs, noise)
        self._record(mse=loss)
        return loss


class DenoiserStabilityLoss(_DenoiserCriterion):
    r"""Train a denoiser for a frozen classifier: the stability objective of :cite:`salman2020denoised`.

    Per call, one noise draw :math:`\delta_j \sim \mathcal{N}(0, \sigma^2 I)` per input; the
    classifier :math:`f` labels the clean inputs (without gradient) and the loss is the
    cross-entropy of :math:`f(D(x + \delta))` against those labels:

    .. math::
        L = \frac{1}{B} \sum_j \mathrm{CE}\Big(f\big(D(x_j + \delta_j)\big),\
            \operatorname*{arg\,max}_k f(x_j)_k\Big)

    as the official ``train_denoiser.py`` computes it with ``--objective stability``. The
    dataset's labels are not used, so the denoiser learns to make :math:`f` agree with itself
    under noise (unlabelled data works too). The gradient flows through :math:`f` into the
    denoiser; :math:`f` itself is **frozen**: for the call it is put in ``eval()`` mode with every
    parameter's ``requires_grad`` off (no ``.grad`` accumulates in it), and every submodule's mode
    and every flag are restored afterwards, also when the call raises. The denoiser runs in its
    current mode (normally ``train()``).

    The classifier is kept on the criterion as a plain attribute, not as a submodule, so it is
    not in ``criterion.parameters()`` or ``state_dict()``; ``criterion.classifier = other``
    swaps it. The call shape is every criterion's, ``loss = criterion(denoiser, inputs,
    targets)``; ``targets`` are checked but not used. After each call, :attr:`last_terms` holds
    ``"stability"`` (equal to the loss). The pure form is :func:`denoiser_stability_loss`.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`, the one the denoised classifier will
            be certified at.
        classifier: The frozen classifier :math:`f` (returns logits ``[B, K]``), fed the
            denoiser's output as it is (wrap it to resize or normalise).
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.
        input_range: ``(low, high)`` the inputs must lie in, or ``None`` to turn the check
            off. Default: ``(0.0, 1.0)``.

    Shape:
        - inputs: :math:`(B, *)`, any input shape the denoiser accepts.
        - targets: :math:`(B,)`, class indices (unused).
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type, or the denoiser does not return a tensor.
        ValueError: ``sigma`` is not positive and finite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> classifier = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(classifier.weight), nn.init.zeros_(classifier.bias)
        >>> criterion = DenoiserStabilityLoss(0.25, classifier, generator=g)
        >>> criterion
        DenoiserStabilityLoss(sigma=0.25, classifier=Linear)
        >>> loss = criterion(nn.Linear(4, 4), torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
        >>> round(loss.item(), 4), list(criterion.parameters())  # log 3; f is not a submodule
        (1.0986, [])
    """

    term_names: ClassVar[tuple[str, ...]] = ("stability",)

    def __init__(
        self,
        sigma: float,
        classifier: nn.Module,
        *,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(sigma, generator=generator, input_range=input_range)
        self.classifier = classifier

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "classifier":  # a plain attribute, never a registered submodule
            if not isinstance(value, nn.Module):
                raise TypeError(f"classifier must be a torch.nn.Module, got {_type_name(value)}")
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def extra_repr(self) -> str:
        """``sigma`` and the classifier's class name (its layers are not repeated)."""
        return f"sigma={self.sigma!r}, classifier={type(self.classifier).__name__}"

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, 1, generator=self.generator)
        with (
            preserve_model_state(model),
            preserve_model_state(self.classifier, train=False, requires_grad=False),
        ):
            loss = denoiser_stability_loss(model, self.classifier, inputs, noise)
        self._record(stability=loss)
        return loss
