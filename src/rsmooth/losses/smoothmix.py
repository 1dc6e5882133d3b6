"""SmoothMix :cite:`jeong2021smoothmix`."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._validation import check_int, check_nonnegative, check_positive
from rsmooth.functional import sample_noise, smoothmix_terms, unrestricted_smooth_attack
from rsmooth.losses._base import SmoothingCriterion

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
    Call ``criterion.set_epoch(epoch)`` at the start of every epoch: it sets :attr:`warmup` to
    :math:`\min(1, (e+1)/W)` with :math:`W` = ``warmup_epochs`` (10, as in the official code).
    :math:`w_e` multiplies :math:`\eta` and, for the one-step adversary, the norm cap of
    :math:`\tilde x^{(1)}` (:math:`w_e \alpha`, see :attr:`one_step_max_norm`). Without
    :meth:`set_epoch`, :attr:`warmup` keeps its constructor value (1.0: no warm-up).

    **Batch size.** The official code takes one optimizer step per chunk of ``B/m`` examples of
    a loader batch ``B``; with this criterion, use a loader batch of ``B/m`` (e.g. 64 for MNIST
    with ``m = 4``, 128 for CIFAR-10 with ``m = 2``) to reproduce it.

    Cost per call: :math:`T` forward+backward passes (attack) and 2 forward+backward passes
    (loss), each over :math:`mB` samples, i.e. about :math:`(T + 2)\,m` per example.

    ``last_terms`` keys: ``"natural"`` (:math:`\mathcal L_{nat}`) and ``"mix"``
    (:math:`\mathcal L_{mix}`, before the :math:`\eta w` weight).

    Args:
        sigma: Noise level :math:`\sigma`.
        step_size: Attack step size :math:`\alpha` (official: 1.0 on MNIST; 0.5 / 1.0 / 2.0 for
            :math:`\sigma` = 0.25 / 0.5 / 1.0 on CIFAR-10).
        num_steps: Attack steps :math:`T` (official MNIST: 2-3 / 4 / 8 for
            :math:`\sigma` = 0.25 / 0.5 / 1.0; CIFAR-10: 4).
        num_noise: Noise samples :math:`m` (official: 4 on MNIST, 2 on CIFAR-10).
        eta: Mixup weight :math:`\eta` (official: 1.0 or 5.0 on MNIST, 5.0 on CIFAR-10).
        one_step_adversary: Use :math:`\tilde x^{(1)}` as the clean side (``--mix_step 1``).
            Default: ``False``.
        warmup: Warm-up factor :math:`w_e`, set by :meth:`set_epoch`. Default: 1.0.
        warmup_epochs: Epochs :math:`W` of the linear warm-up applied by :meth:`set_epoch`
            (the official ``--warmup``); 0 turns it off. Default: 10.
        detach_target: Stop the gradient through :math:`\hat F` (not the official behaviour).
            Default: ``False``.
        max_norm: Optional L2 radius for the attack (the ``--maxnorm`` ablation). Default:
            ``None`` (unrestricted).
        generator: Optional ``torch.Generator`` for the noise and :math:`\lambda`.

    Attributes:
        one_step_max_norm: Norm cap of :math:`\tilde x^{(1)}`; ``None`` (default) means
            :math:`w_e \alpha` as in the official code. A plain attribute.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - output: scalar.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For non-positive ``sigma``/``step_size``/``max_norm``, negative
            ``eta``/``warmup``, counts below 1, inputs outside :math:`[0, 1]`, or mismatched
            targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
        >>> criterion = SmoothMixLoss(0.5, 1.0, 2, 2, 5.0, generator=g)
        >>> criterion
        SmoothMixLoss(sigma=0.5, step_size=1.0, num_steps=2, num_noise=2, eta=5.0,
                      one_step_adversary=False, warmup=1.0)
        >>> criterion.set_epoch(0)  # the official warm-up: w = 1/10 in epoch 0
        >>> criterion.warmup
        0.1
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
        "warmup",
    )
    _unit_box: ClassVar[bool] = True

    def __init__(
        self,
        sigma: float,
        step_size: float,
        num_steps: int,
        num_noise: int,
        eta: float,
        *,
        one_step_adversary: bool = False,
        warmup: float = 1.0,
        warmup_epochs: int = 10,
        detach_target: bool = False,
        max_norm: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, generator=generator)
        self.step_size = check_positive("step_size", step_size)
        self.num_steps = check_int("num_steps", num_steps)
        self.num_noise = check_int("num_noise", num_noise)
        self.eta = check_nonnegative("eta", eta)
        for name, flag in (
            ("one_step_adversary", one_step_adversary),
            ("detach_target", detach_target),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.one_step_adversary = one_step_adversary
        self.detach_target = detach_target
        self.warmup = check_nonnegative("warmup", warmup)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, min=0)
        self.max_norm = None if max_norm is None else check_positive("max_norm", max_norm)
        self.one_step_max_norm: float | None = None

    def _apply_schedule(self, epoch: int) -> None:
        # official train_smoothmix.py: warmup_v = min(1, (epoch + 1) / warmup)
        epochs = self.warmup_epochs
        self.warmup = 1.0 if epochs == 0 else min(1.0, (epoch + 1) / epochs)

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        warmup = check_nonnegative("warmup", self.warmup)
        eta = check_nonnegative("eta", self.eta)
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
        return natural + (eta * warmup) * mix
