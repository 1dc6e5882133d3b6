"""SmoothAdv :cite:`salman2019provably`."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import (
    check_choice,
    check_epsilon_in_box,
    check_int,
    check_nonnegative,
)
from rsmooth.functional import (
    sample_noise,
    smooth_ddn_attack,
    smooth_pgd_attack,
    smoothadv_loss,
)
from rsmooth.losses._base import SmoothingCriterion, check_unit_box_range

__all__ = ["SmoothAdvLoss"]


class SmoothAdvLoss(SmoothingCriterion):
    r"""SmoothAdv: adversarial training of the smoothed classifier :cite:`salman2019provably`.

    For a chunk of ``B`` inputs, ``m`` noises :math:`\delta_1..\delta_m \sim \mathcal N(0,
    \sigma^2 I)` are drawn once. An L2 attack on the soft smoothed classifier (PGD or DDN, in
    eval mode with frozen parameters, the same noise at every step) finds

    .. math::

        x' \approx \arg\max_{\|x' - x\|_2 \le \epsilon}
        -\log \frac{1}{m}\sum_{i=1}^m \mathrm{softmax}(f(x' + \delta_i))_y ,

    and the loss, in the model's current mode and with the **same** noise, is the mean of the
    cross-entropies (not the cross-entropy of the mean):

    .. math::

        \mathcal L = \frac{1}{mB}\sum_{j=1}^B\sum_{i=1}^m \mathrm{CE}(f(x'_j + \delta_i), y_j).

    See :func:`rsmooth.functional.smooth_pgd_attack`,
    :func:`rsmooth.functional.smooth_ddn_attack` and :func:`rsmooth.functional.smoothadv_loss`.

    **Units.** :attr:`epsilon` is an L2 radius in input units (pixels in :math:`[0, 1]`). The
    official ``--epsilon`` flag is an integer divided by **256** (64 → 0.25, 127 → 0.496,
    255 → 0.996, 512 → 2.0): an :attr:`epsilon` larger than the diameter of the input box
    (:math:`\sqrt d` for :math:`[0, 1]^d`), such as a flag passed as it is, is a ``ValueError``
    at the call.

    **Warm-up.** The official loop warms :math:`\epsilon` up per epoch:
    :math:`\epsilon_e = \min(\epsilon, (e+1)\epsilon/10)` at epoch ``e`` (0-based). Call
    ``criterion.set_epoch(epoch)`` at the start of every epoch: the attack then uses
    :math:`\epsilon_e = \min(\epsilon, (e+1)\epsilon/W)`, with :math:`W` = ``warmup_epochs``
    (10 in every published command) and :math:`\epsilon` = :attr:`epsilon`, the value you set:
    the schedule never changes it (assigning it sets the radius the warm-up ramps to), and
    :math:`\epsilon_e` can be read as ``criterion.scheduled["epsilon"]``. PGD's step
    :math:`2\epsilon_e/T` and DDN's initial norm (set to :math:`\epsilon_e`, as the official
    training does) follow it. Without :meth:`set_epoch`, the full :math:`\epsilon` is used from
    the first call, which warns once (pass ``warmup_epochs=0`` to train without the warm-up).

    **Batch size.** The official code takes one optimizer step per chunk of ``B/m`` examples of
    a loader batch ``B``; with this criterion, use a loader batch of ``B/m`` to reproduce it.

    Cost per call: :math:`T` forward+backward passes (attack) and 1 forward+backward pass
    (loss), each over :math:`mB` samples.

    ``last_terms`` key: ``"adversarial"`` (the loss itself).

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise level :math:`\sigma`.
        epsilon: L2 radius :math:`\epsilon` in input units (official CIFAR-10:
            64/256 to 512/256), the value the warm-up ramps to.
        num_steps: Attack steps :math:`T` (official CIFAR-10: 1 to 10).
        num_noise: Noise samples :math:`m` (official CIFAR-10: 1, 2, 4 or 8).
        attack: ``"pgd"`` or ``"ddn"`` (DDN with :math:`\gamma = 0.05`). Default: ``"pgd"``.
        warmup_epochs: Epochs :math:`W` of the linear :math:`\epsilon` warm-up applied by
            :meth:`set_epoch` (the official ``--warmup``); 0 (or 1) turns it off. Default: 10.
        generator: Optional ``torch.Generator`` for the noise (and random directions).

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: scalar.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For a non-positive ``sigma``, a negative ``epsilon``, counts below 1, an
            unknown ``attack``, inputs outside :math:`[0, 1]`, mismatched targets, or (when
            called) an ``epsilon`` larger than the diameter of the input box.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
        >>> criterion = SmoothAdvLoss(0.5, 255 / 256, 2, 2, generator=g)
        >>> criterion
        SmoothAdvLoss(sigma=0.5, epsilon=0.99609375, num_steps=2, num_noise=2, attack='pgd',
                      warmup_epochs=10)
        >>> criterion.set_epoch(0)  # the official warm-up: epsilon / 10 in epoch 0
        >>> round(criterion.scheduled["epsilon"], 4), criterion.epsilon
        (0.0996, 0.99609375)
        >>> loss = criterion(model, x, y)
        >>> loss.shape, list(criterion.last_terms)
        (torch.Size([]), ['adversarial'])
    """

    term_names: ClassVar[tuple[str, ...]] = ("adversarial",)
    _repr_fields: ClassVar[tuple[str, ...]] = (
        "sigma",
        "epsilon",
        "num_steps",
        "num_noise",
        "attack",
        "warmup_epochs",
    )
    _unit_box: ClassVar[bool] = True

    input_range = Setting(check_unit_box_range)
    epsilon = Setting(check_nonnegative)
    num_steps = Setting(check_int)
    num_noise = Setting(check_int)
    attack = Setting(check_choice("pgd", "ddn"))
    warmup_epochs = Setting(functools.partial(check_int, min=0))

    def __init__(
        self,
        sigma: float,
        epsilon: float,
        num_steps: int,
        num_noise: int,
        *,
        attack: Literal["pgd", "ddn"] = "pgd",
        warmup_epochs: int = 10,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps
        self.num_noise = num_noise
        self.attack = attack
        self.warmup_epochs = warmup_epochs

    def _scheduled_values(self) -> dict[str, Any]:
        # official train_pgd.py: epsilon = min(eps, (epoch + 1) * eps / warmup), per epoch
        eps, epochs, epoch = self.epsilon, self.warmup_epochs, self.epoch
        if epochs == 0 or epoch is None:
            return {"epsilon": eps}
        return {"epsilon": min(eps, (epoch + 1) * eps / epochs)}

    def _unstepped_schedule(self) -> tuple[str, str, str] | None:
        if self.warmup_epochs <= 1 or self.epsilon == 0:
            return None
        return (
            f"warmup_epochs={self.warmup_epochs}: epsilon ramps up to {self.epsilon:g} over "
            f"the first {self.warmup_epochs} epochs",
            f"it attacks with the full epsilon={self.epsilon:g} from the first step",
            "warmup_epochs=0 to train without the warm-up",
        )

    def _check_call(self, inputs: Tensor) -> None:
        check_epsilon_in_box("epsilon", self.epsilon, inputs)

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        epsilon = self._scheduled_values()["epsilon"]
        inputs = inputs.detach()
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        with preserve_model_state(model, train=False, requires_grad=False):
            if self.attack == "pgd":
                adversarial = smooth_pgd_attack(
                    model, inputs, targets, noise, epsilon, self.num_steps, generator=self.generator
                )
            else:
                adversarial = smooth_ddn_attack(
                    model,
                    inputs,
                    targets,
                    noise,
                    epsilon,
                    self.num_steps,
                    init_norm=epsilon,
                    generator=self.generator,
                )
        loss = smoothadv_loss(model, adversarial, targets, noise)
        self._record(adversarial=loss)
        return loss
