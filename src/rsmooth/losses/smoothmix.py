"""SmoothMix :cite:`jeong2021smoothmix`."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import (
    check_bool,
    check_int,
    check_nonnegative,
    check_positive,
    optional,
)
from rsmooth.functional import sample_noise, smoothmix_terms, unrestricted_smooth_attack
from rsmooth.losses._base import SmoothingCriterion, check_unit_box_range

__all__ = ["SmoothMixLoss"]


class SmoothMixLoss(SmoothingCriterion):
    r"""SmoothMix: mixup of clean and unrestricted-adversarial points :cite:`jeong2021smoothmix`.

    For a chunk of ``B`` inputs, ``m`` noises :math:`\delta_1..\delta_m \sim \mathcal N(0,
    \sigma^2 I)` are drawn once and used everywhere. The unrestricted adversary
    (:class:`~rsmooth.UnrestrictedSmoothAttack`, eval mode, frozen parameters) gives
    :math:`\tilde x = \tilde x^{(T)}` and the clean side :math:`x_c` (``x``, or the one-step
    point :math:`\tilde x^{(1)}` with ``one_step_adversary=True``). Then, in the model's current
    mode, with :math:`\lambda_j \sim U[0, \tfrac12)` per example and :math:`K` classes:

    .. math::

        \mathcal L &= \mathcal L_{nat} + \eta\, w\, \mathcal L_{mix}, \qquad
        \mathcal L_{nat} = \frac{1}{mB}\sum_{i,j}\mathrm{CE}(f(x_{c,j} + \delta_i), y_j), \\
        \mathcal L_{mix} &= \frac{1}{mB}\sum_{i,j} \mathbb 1[\arg\max \hat F(x_{c,j}) = y_j]\,
        \mathrm{KL}\Big((1-\lambda_j)\hat F(x_{c,j}) + \tfrac{\lambda_j}{K}\mathbf 1 \,\Big\|\,
        \mathrm{softmax}\big(f((1-\lambda_j) x_{c,j} + \lambda_j \tilde x_j + \delta_i)\big)\Big)

    where :math:`\hat F(x_c) = \frac1m\sum_i \mathrm{softmax}(f(x_c + \delta_i))` comes from the
    same (training-mode) forward as :math:`\mathcal L_{nat}` and is **not detached** by default
    (the official code), and the mix branch is a second, separate forward. See
    :func:`rsmooth.functional.smoothmix_terms`.

    **Warm-up.** The official loop sets :math:`w_e = \min(1, (e+1)/10)` at epoch ``e`` (0-based).
    Call ``criterion.set_epoch(epoch)`` at the start of every epoch: the criterion then uses
    :math:`w_e = \min(1, (e+1)/W)` with :math:`W` = ``warmup_epochs`` (10, as in the official
    code). :math:`w_e` multiplies :math:`\eta` and, for the one-step adversary, the norm cap of
    :math:`\tilde x^{(1)}` (:math:`w_e \alpha`, see :attr:`one_step_max_norm`). :attr:`eta` is
    the value you set (the schedule never changes it; assigning it sets the weight the warm-up
    ramps to); ``criterion.scheduled`` holds :math:`w_e` (``"warmup"``) and the weight in force,
    :math:`\eta w_e` (``"eta"``). Without :meth:`set_epoch`, :math:`w_e = 1` (no warm-up) and
    the first call warns once (pass ``warmup_epochs=0`` to train without the warm-up).

    **Batch size.** The official code takes one optimizer step per chunk of ``B/m`` examples of
    a loader batch ``B``; with this criterion, use a loader batch of ``B/m`` (e.g. 64 for MNIST
    with ``m = 4``, 128 for CIFAR-10 with ``m = 2``) to reproduce it.

    Cost per call: :math:`T` forward+backward passes (attack) and 2 forward+backward passes
    (loss), each over :math:`mB` samples, i.e. about :math:`(T + 2)\,m` per example.

    ``last_terms`` keys: ``"natural"`` (:math:`\mathcal L_{nat}`) and ``"mix"``
    (:math:`\mathcal L_{mix}`, before the :math:`\eta w` weight).

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise level :math:`\sigma`.
        step_size: Attack step size :math:`\alpha` (official: 1.0 on MNIST; 0.5 / 1.0 / 2.0 for
            :math:`\sigma` = 0.25 / 0.5 / 1.0 on CIFAR-10).
        num_steps: Attack steps :math:`T` (official MNIST: 2-3 / 4 / 8 for
            :math:`\sigma` = 0.25 / 0.5 / 1.0; CIFAR-10: 4).
        num_noise: Noise samples :math:`m` (official: 4 on MNIST, 2 on CIFAR-10).
        eta: Mixup weight :math:`\eta` (official: 1.0 or 5.0 on MNIST, 5.0 on CIFAR-10), the
            value the warm-up ramps to.
        one_step_adversary: Use :math:`\tilde x^{(1)}` as the clean side (``--mix_step 1``).
            Default: ``False``.
        warmup_epochs: Epochs :math:`W` of the linear warm-up applied by :meth:`set_epoch`
            (the official ``--warmup``); 0 (or 1) turns it off. Default: 10.
        detach_target: Stop the gradient through :math:`\hat F` (not the official behaviour).
            Default: ``False``.
        max_norm: Optional L2 radius for the attack (the ``--maxnorm`` ablation). Default:
            ``None`` (unrestricted).
        generator: Optional ``torch.Generator`` for the noise and :math:`\lambda`.

    Attributes:
        one_step_max_norm: Norm cap of :math:`\tilde x^{(1)}`; ``None`` (default) means
            :math:`w_e \alpha` as in the official code. Checked when assigned (``None`` or a
            non-negative number).

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: scalar.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For non-positive ``sigma``/``step_size``/``max_norm``, a negative ``eta``,
            counts below 1, inputs outside :math:`[0, 1]`, or mismatched targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
        >>> criterion = SmoothMixLoss(0.5, 1.0, 2, 2, 5.0, generator=g)
        >>> criterion
        SmoothMixLoss(sigma=0.5, step_size=1.0, num_steps=2, num_noise=2, eta=5.0,
                      one_step_adversary=False, warmup_epochs=10)
        >>> criterion.set_epoch(0)  # the official warm-up: w = 1/10 in epoch 0
        >>> dict(criterion.scheduled), criterion.eta
        ({'warmup': 0.1, 'eta': 0.5}, 5.0)
        >>> loss = criterion(model, x, y)
        >>> loss.shape, sorted(criterion.last_terms)
        (torch.Size([]), ['mix', 'natural'])
    """

    term_names: ClassVar[tuple[str, ...]] = ("natural", "mix")
    _repr_fields: ClassVar[tuple[str, ...]] = (
        "sigma",
        "step_size",
        "num_steps",
        "num_noise",
        "eta",
        "one_step_adversary",
        "warmup_epochs",
    )
    _unit_box: ClassVar[bool] = True

    input_range = Setting(check_unit_box_range)
    step_size = Setting(check_positive)
    num_steps = Setting(check_int)
    num_noise = Setting(check_int)
    eta = Setting(check_nonnegative)
    one_step_adversary = Setting(check_bool)
    warmup_epochs = Setting(functools.partial(check_int, min=0))
    detach_target = Setting(check_bool)
    max_norm = Setting(optional(check_positive))
    one_step_max_norm = Setting(optional(check_nonnegative))

    def __init__(
        self,
        sigma: float,
        step_size: float,
        num_steps: int,
        num_noise: int,
        eta: float,
        *,
        one_step_adversary: bool = False,
        warmup_epochs: int = 10,
        detach_target: bool = False,
        max_norm: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, generator=generator)
        self.step_size = step_size
        self.num_steps = num_steps
        self.num_noise = num_noise
        self.eta = eta
        self.one_step_adversary = one_step_adversary
        self.detach_target = detach_target
        self.warmup_epochs = warmup_epochs
        self.max_norm = max_norm
        self.one_step_max_norm = None

    def _scheduled_values(self) -> dict[str, Any]:
        # official train_smoothmix.py: warmup_v = min(1, (epoch + 1) / warmup), times eta
        epochs, epoch = self.warmup_epochs, self.epoch
        warmup = 1.0 if epochs == 0 or epoch is None else min(1.0, (epoch + 1) / epochs)
        return {"warmup": warmup, "eta": self.eta * warmup}

    def _unstepped_schedule(self) -> tuple[str, str, str] | None:
        if self.warmup_epochs <= 1:
            return None
        return (
            f"warmup_epochs={self.warmup_epochs}: the mixup weight eta (and the one-step "
            f"adversary's cap) ramps up over the first {self.warmup_epochs} epochs",
            f"it trains with the full eta={self.eta:g} from the first step",
            "warmup_epochs=0 to train without the warm-up",
        )

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        scheduled = self._scheduled_values()
        warmup, eta = scheduled["warmup"], scheduled["eta"]
        mix_step = 1 if self.one_step_adversary else 0
        cap = self.one_step_max_norm
        if cap is None:
            cap = warmup * self.step_size * mix_step
        inputs = inputs.detach()
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        with preserve_model_state(model, train=False, requires_grad=False):
            clean, adversarial = unrestricted_smooth_attack(
                model,
                inputs,
                targets,
                noise,
                self.step_size,
                self.num_steps,
                mix_step=mix_step,
                max_norm=self.max_norm,
                mix_step_max_norm=cap,
            )
        mix_weights = (
            torch.rand(
                inputs.shape[0], generator=self.generator, device=inputs.device, dtype=inputs.dtype
            )
            / 2
        )
        natural, mix = smoothmix_terms(
            model,
            clean,
            adversarial,
            targets,
            noise,
            mix_weights,
            detach_target=self.detach_target,
        )
        self._record(natural=natural, mix=mix)
        return natural + eta * mix
