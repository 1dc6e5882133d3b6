"""Adaptive-noise training with easy-sample selection (Sun et al., 2025) :cite:`sun2025acr`."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import check_bool, check_int, check_positive, optional
from rsmooth.functional import adaptive_noise_attack, gaussian_augmentation_loss, sample_noise
from rsmooth.losses._base import SmoothingCriterion, check_unit_box_range

__all__ = ["AdaptiveNoiseLoss"]


class AdaptiveNoiseLoss(SmoothingCriterion):
    r"""Cross-entropy on adversarially rotated Gaussian noise (Sun et al.) :cite:`sun2025acr`.

    The criterion part of the training recipe of "Average Certified Radius is a Poor Metric for
    Randomized Smoothing" (the method has no name; its attack is ADAPTIVEADV). Per call, ``m``
    noises :math:`\delta_{ij} \sim \mathcal N(0, \sigma^2 I)` are drawn from :attr:`generator`.
    With the adversary on, each noise row is replaced by
    :func:`~rsmooth.functional.adaptive_noise_attack` (``eval()``, frozen parameters): rotated on
    the sphere of its own norm towards misclassification in ``T`` steps of length
    :math:`\epsilon`, keeping the first misclassified iterate. The loss is the plain mean
    cross-entropy over the ``m * B`` noisy copies, in the model's current mode, with the attack's
    result as a constant:

    .. math:: L = \frac{1}{mB} \sum_{i,j} \mathrm{CE}\big(f(x_j + \delta^*_{ij}), y_j\big)

    With ``adversarial=False`` it is exactly :class:`~rsmooth.GaussianAugmentationLoss`
    ``(sigma, num_noise)`` on the same noise. The rest of the recipe is data-level state that
    lives outside the criterion (:class:`rsmooth.training.EasySampleSchedule`): before the
    discard epoch :math:`E_{ds}` the adversary is off; at :math:`E_{ds}` every example whose
    noisy accuracy is below :math:`\tau` is dropped for good; from then on examples are drawn
    with replacement in proportion to an approximate certified radius, refreshed every 10 epochs.

    **Schedule.** ``adversarial_from`` (:math:`E_{ds}`, optional) keeps the adversary off
    before that epoch: call ``criterion.set_epoch(epoch)`` at the start of every epoch, and the
    adversary is on from epoch :math:`E_{ds}` (if :attr:`adversarial` is ``True``). The switch
    in force is ``criterion.scheduled["adversarial"]``; :attr:`adversarial` is the value you
    set, which the schedule never changes (``False`` keeps the adversary off in every epoch).
    With ``adversarial_from`` set and :meth:`set_epoch` never called, the adversary is on from
    the first call, which warns once. Without ``adversarial_from``, :attr:`adversarial` alone
    decides.

    ``last_terms`` keys: ``"ce"`` (the loss), ``"attack_stop_rate"`` (fraction of noise rows
    that stopped at a misclassified iterate) and ``"unchanged_rate"`` (fraction already
    misclassified at iterate 0, returned unchanged); both rates are 0 when the adversary is off.

    Cost per call: ``m`` forward+backward passes per example, plus :math:`mT` attack
    forward+backward passes when adversarial, i.e. :math:`m(T + 1)` per example.

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: Raw L2 length :math:`\epsilon` of an attack step (not divided by 256; official
            CIFAR-10: 0.25 / 0.25 / 0.5 for :math:`\sigma` = 0.25 / 0.5 / 1.0).
        num_steps: Attack steps :math:`T` (official CIFAR-10: 3 / 6 / 4); 0 means no attack.
        num_noise: Noise copies :math:`m`. Default: 4.
        adversarial: Whether the adversary is on (from ``adversarial_from``, if given).
            Default: ``True``.
        adversarial_from: Epoch :math:`E_{ds}` from which the adversary is on (applied by
            :meth:`set_epoch`), or ``None`` (default) to leave it to :attr:`adversarial`.
        generator: Optional ``torch.Generator`` for the noise.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A hyperparameter is out of range, or inputs lie outside :math:`[0, 1]`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
        >>> criterion = AdaptiveNoiseLoss(
        ...     0.5, 0.25, 3, num_noise=2, adversarial_from=5, generator=g
        ... )
        >>> criterion
        AdaptiveNoiseLoss(sigma=0.5, epsilon=0.25, num_steps=3, num_noise=2, adversarial=True)
        >>> criterion.set_epoch(0)
        >>> criterion.adversarial, dict(criterion.scheduled)
        (True, {'adversarial': False})
        >>> loss = criterion(model, x, y)
        >>> loss.shape, sorted(criterion.last_terms)
        (torch.Size([]), ['attack_stop_rate', 'ce', 'unchanged_rate'])
    """

    term_names: ClassVar[tuple[str, ...]] = ("ce", "attack_stop_rate", "unchanged_rate")
    _repr_fields: ClassVar[tuple[str, ...]] = (
        "sigma",
        "epsilon",
        "num_steps",
        "num_noise",
        "adversarial",
    )
    _unit_box: ClassVar[bool] = True

    input_range = Setting(check_unit_box_range)
    epsilon = Setting(check_positive)
    num_steps = Setting(functools.partial(check_int, min=0))
    num_noise = Setting(check_int)
    adversarial = Setting(check_bool)
    adversarial_from = Setting(optional(functools.partial(check_int, min=0)))

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int = 4,
        *,
        adversarial: bool = True,
        adversarial_from: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps
        self.num_noise = num_noise
        self.adversarial = adversarial
        self.adversarial_from = adversarial_from

    def _scheduled_values(self) -> dict[str, Any]:
        start, epoch = self.adversarial_from, self.epoch
        before = start is not None and epoch is not None and epoch < start
        return {"adversarial": self.adversarial and not before}

    def _unstepped_schedule(self) -> tuple[str, str, str] | None:
        start = self.adversarial_from
        if start is None or start == 0 or not self.adversarial or self.num_steps == 0:
            return None
        return (
            f"adversarial_from={start}: the adversary is off before epoch {start}",
            "it attacks the noise from the first step",
            "adversarial_from=None (and set adversarial yourself)",
        )

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        inputs = inputs.detach()
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        stopped = unchanged = torch.zeros((), device=inputs.device, dtype=inputs.dtype)
        with preserve_model_state(model):
            if self._scheduled_values()["adversarial"]:
                with preserve_model_state(model, train=False, requires_grad=False):
                    noise, stop_step = adaptive_noise_attack(
                        model, inputs, targets, noise, self.epsilon, self.num_steps
                    )
                stopped = (stop_step >= 0).to(inputs.dtype).mean()
                unchanged = (stop_step == 0).to(inputs.dtype).mean()
            terms = gaussian_augmentation_loss(model, inputs, targets, noise)
        self._record(ce=terms.loss, attack_stop_rate=stopped, unchanged_rate=unchanged)
        return terms.loss
