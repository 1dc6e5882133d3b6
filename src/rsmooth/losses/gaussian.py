"""Gaussian data augmentation (Cohen et al., 2019)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import check_int
from rsmooth.functional import gaussian_augmentation_loss, sample_noise
from rsmooth.losses._base import SmoothingCriterion

__all__ = ["GaussianAugmentationLoss"]


class GaussianAugmentationLoss(SmoothingCriterion):
    r"""Cross-entropy on Gaussian-noise-augmented inputs.

    The training objective of :cite:`cohen2019certified`: every input gets ``m`` fresh noise
    draws :math:`\delta_{ij} \sim \mathcal{N}(0, \sigma^2 I)` per call, and the loss is the mean
    cross-entropy over the ``m * B`` noisy copies, computed in one batched forward pass in the
    model's current mode (normally ``train()``, set by your loop):

    .. math:: L = \frac{1}{mB} \sum_{i=1}^{m} \sum_{j=1}^{B}
        \mathrm{CE}\big(f(x_j + \delta_{ij}), y_j\big)

    Noisy inputs are not clamped. After each call, :attr:`last_terms` holds ``"natural"`` (equal
    to the loss). The pure form is :func:`rsmooth.functional.gaussian_augmentation_loss`.

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`, the same as at certification.
        num_noise: Noise copies per input, :math:`m`. The paper uses 1. Default: 1.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.
        input_range: ``(low, high)`` the inputs must lie in, or ``None`` to turn the check
            off (inputs in another space). Default: ``(0.0, 1.0)``.

    Shape:
        - inputs: :math:`(B, *)`, any input shape the model accepts.
        - targets: :math:`(B,)`, class indices.
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``sigma`` is not positive and finite, or ``num_noise < 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> criterion = GaussianAugmentationLoss(sigma=0.25, num_noise=2, generator=g)
        >>> criterion
        GaussianAugmentationLoss(sigma=0.25, num_noise=2)
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> loss = criterion(model, torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> loss.shape, round(criterion.last_terms["natural"], 4)  # log 3
        (torch.Size([]), 1.0986)
    """

    term_names: ClassVar[tuple[str, ...]] = ("natural",)
    _repr_fields: ClassVar[tuple[str, ...]] = ("sigma", "num_noise")

    num_noise = Setting(check_int)

    def __init__(
        self,
        sigma: float,
        num_noise: int = 1,
        *,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(sigma, generator=generator, input_range=input_range)
        self.num_noise = num_noise

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        with preserve_model_state(model):
            terms = gaussian_augmentation_loss(model, inputs, targets, noise)
        self._record(natural=terms.natural)
        return terms.loss
