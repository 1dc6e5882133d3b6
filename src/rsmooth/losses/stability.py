"""Stability training (Li et al., 2019), as re-implemented by Jeong & Shin (2020)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import check_bool, check_nonnegative
from rsmooth.functional import sample_noise, stability_loss
from rsmooth.losses._base import SmoothingCriterion

__all__ = ["StabilityLoss"]


class StabilityLoss(SmoothingCriterion):
    r"""Stability training: clean cross-entropy plus a clean-to-noisy soft cross-entropy.

    The stability-training objective of :cite:`li2019certified`, in the PyTorch form used as the
    baseline by :cite:`jeong2020consistency`. Per call, one noise draw
    :math:`\delta_j \sim \mathcal{N}(0, \sigma^2 I)` per input and two forward passes in the
    model's current mode (the clean batch, then the noisy batch):

    .. math::
        L = \frac{1}{B}\sum_{j} \mathrm{CE}\big(f(x_j), y_j\big)
          - \lambda \frac{1}{B}\sum_{j} \sum_k \mathrm{softmax}(f(x_j))_k
            \log \mathrm{softmax}(f(x_j + \delta_j))_k

    The soft cross-entropy equals :math:`\mathrm{KL}(p_\text{clean} \| p_\text{noisy}) +
    H(p_\text{clean})`. As in the reference code the clean soft target is **not detached**, so
    it also receives gradient (this is not a KL regularizer); ``detach_target=True`` stops it.

    After each call, :attr:`last_terms` holds ``"natural"`` (the clean cross-entropy) and
    ``"stability"`` (the unweighted soft cross-entropy). The pure form is
    :func:`rsmooth.functional.stability_loss`.

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`.
        lbd: Weight :math:`\lambda \ge 0` of the stability term (:math:`\gamma` in
            :cite:`li2019certified`). Default: 2.0.
        detach_target: Stop the gradient through the clean soft target. Default: False.
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
        ValueError: ``sigma`` is not positive and finite, or ``lbd`` is negative or not finite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> criterion = StabilityLoss(sigma=0.5, lbd=2.0, generator=g)
        >>> criterion
        StabilityLoss(sigma=0.5, lbd=2.0, detach_target=False)
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> loss = criterion(model, torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> {name: round(value, 4) for name, value in criterion.last_terms.items()}
        {'natural': 1.0986, 'stability': 1.0986}
        >>> round(loss.item(), 4)  # 3 log 3
        3.2958
    """

    term_names: ClassVar[tuple[str, ...]] = ("natural", "stability")
    _repr_fields: ClassVar[tuple[str, ...]] = ("sigma", "lbd", "detach_target")

    lbd = Setting(check_nonnegative)
    detach_target = Setting(check_bool)

    def __init__(
        self,
        sigma: float,
        lbd: float = 2.0,
        *,
        detach_target: bool = False,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(sigma, generator=generator, input_range=input_range)
        self.lbd = lbd
        self.detach_target = detach_target

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, 1, generator=self.generator)
        with preserve_model_state(model):
            terms = stability_loss(
                model, inputs, targets, noise, self.lbd, detach_target=self.detach_target
            )
        self._record(natural=terms.natural, stability=terms.stability)
        return terms.loss
