"""Consistency regularization (Jeong & Shin, 2020)."""

from __future__ import annotations

import functools
from typing import ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import check_bool, check_int, check_nonnegative
from rsmooth.functional import consistency_loss, sample_noise
from rsmooth.losses._base import SmoothingCriterion

__all__ = ["ConsistencyLoss"]


class ConsistencyLoss(SmoothingCriterion):
    r"""Gaussian augmentation plus a consistency (KL) and an entropy regularizer.

    The objective of :cite:`jeong2020consistency` (its ``default`` loss). Per call, ``m`` noise
    draws per input go through one batched forward pass in the model's current mode. With
    :math:`p_{ij} = \mathrm{softmax}(f(x_j + \delta_{ij}))` and the average
    :math:`\hat p_j = \frac1m \sum_i p_{ij}`:

    .. math::
        L = \frac{1}{mB}\sum_{i,j} \mathrm{CE}\big(f(x_j + \delta_{ij}), y_j\big)
          + \frac{1}{B}\sum_j \Big[ \frac{\lambda}{m} \sum_i
            \mathrm{KL}\big(\hat p_j \,\|\, p_{ij}\big) + \eta\, H(\hat p_j) \Big]

    with :math:`H(p) = -\sum_k p_k \log \max(p_k, 10^{-20})`. The KL goes *from*
    :math:`\hat p` to each :math:`p_i`. As in the official code :math:`\hat p` is **not
    detached**: it receives gradient as the KL target and in the entropy. ``detach_target=True``
    stops the gradient through the KL target only.

    After each call, :attr:`last_terms` holds ``"natural"`` (the mean cross-entropy),
    ``"consistency"`` (the mean KL) and ``"entropy"`` (the mean entropy), all unweighted, so
    ``loss = natural + lbd * consistency + eta * entropy``. The pure form is
    :func:`rsmooth.functional.consistency_loss`.

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`.
        num_noise: Noise copies per input, :math:`m \ge 2` (with one copy the KL is zero).
            Default: 2.
        lbd: Weight :math:`\lambda \ge 0` of the KL term. Default: 10.0.
        eta: Weight :math:`\eta \ge 0` of the entropy term. Default: 0.5.
        detach_target: Stop the gradient through :math:`\hat p` as the KL target.
            Default: False.
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
        ValueError: ``sigma`` is not positive and finite, ``num_noise < 2``, or ``lbd`` or
            ``eta`` is negative or not finite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> criterion = ConsistencyLoss(sigma=0.5, num_noise=2, lbd=10.0, eta=0.5, generator=g)
        >>> criterion
        ConsistencyLoss(sigma=0.5, num_noise=2, lbd=10.0, eta=0.5, detach_target=False)
        >>> model = nn.Linear(4, 3)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        >>> loss = criterion(model, torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> {name: round(value, 4) for name, value in criterion.last_terms.items()}
        {'natural': 1.0986, 'consistency': 0.0, 'entropy': 1.0986}
    """

    term_names: ClassVar[tuple[str, ...]] = ("natural", "consistency", "entropy")
    _repr_fields: ClassVar[tuple[str, ...]] = (
        "sigma",
        "num_noise",
        "lbd",
        "eta",
        "detach_target",
    )

    num_noise = Setting(functools.partial(check_int, min=2))
    lbd = Setting(check_nonnegative)
    eta = Setting(check_nonnegative)
    detach_target = Setting(check_bool)

    def __init__(
        self,
        sigma: float,
        num_noise: int = 2,
        lbd: float = 10.0,
        eta: float = 0.5,
        *,
        detach_target: bool = False,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(sigma, generator=generator, input_range=input_range)
        self.num_noise = num_noise
        self.lbd = lbd
        self.eta = eta
        self.detach_target = detach_target

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        with preserve_model_state(model):
            terms = consistency_loss(
                model,
                inputs,
                targets,
                noise,
                self.lbd,
                self.eta,
                detach_target=self.detach_target,
            )
        self._record(natural=terms.natural, consistency=terms.consistency, entropy=terms.entropy)
        return terms.loss
