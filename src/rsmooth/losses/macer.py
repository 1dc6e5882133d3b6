"""MACER: attack-free certified-radius maximization (Zhai et al., 2020)."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._settings import Setting
from rsmooth._validation import check_int, check_nonnegative, check_positive, optional
from rsmooth.functional import macer_loss, sample_noise
from rsmooth.losses._base import SmoothingCriterion

__all__ = ["MACERLoss"]


class MACERLoss(SmoothingCriterion):
    r"""MACER: cross-entropy of the soft smoothed classifier plus a certified-radius hinge.

    The objective of :cite:`zhai2020macer`, as the official code computes it. Per call, ``m``
    noise draws per input go through one batched forward pass in the model's current mode,
    giving logits :math:`z_{ij} = f(x_j + \delta_{ij})`. With
    :math:`\hat F_j = \frac1m \sum_i \mathrm{softmax}(z_{ij})` and
    :math:`\hat G_j = \frac1m \sum_i \mathrm{softmax}(\beta z_{ij})`:

    .. math::
        L = \frac{1}{B} \Big[ \sum_{j} -\log\big(\hat F_j[y_j] + 10^{-10}\big)
          + \lambda \frac{\sigma}{2} \sum_{j \in \mathcal{K}}
            \big(\gamma - \Phi^{-1}(p_{A,j}) + \Phi^{-1}(p_{B,j})\big) \Big]

    :math:`p_{A,j}` and :math:`p_{B,j}` are the largest and the second-largest (runner-up)
    entries of :math:`\hat G_j`. The kept set :math:`\mathcal{K}` holds the inputs whose top
    class under :math:`\hat G` is the label and whose gap
    :math:`\Phi^{-1}(p_A) - \Phi^{-1}(p_B)` is finite and at most :math:`\gamma` (the hinge).
    Saturated inputs (:math:`p_A = 1` or :math:`p_B = 0`, an infinite gap) are dropped with an
    explicit :func:`torch.isfinite` mask, as the official code drops them; they get no
    robustness gradient. Both sums are divided by ``B``, not ``m * B``.

    After each call, :attr:`last_terms` holds ``"classification"`` and ``"robustness"``
    (unweighted, each divided by ``B``), so ``loss = classification + lbd * robustness``.
    The pure form is :func:`rsmooth.functional.macer_loss`.

    **Deferred start.** Jeong's MACER training (``--deferred``, used for MNIST and for CIFAR-10 at
    :math:`\sigma = 1`) sets :math:`\lambda = 0` while ``epoch <= lr_step_size``. Pass
    ``deferred_until`` (the LR step size, e.g. 30 on MNIST or 50 on CIFAR-10) and call
    ``criterion.set_epoch(epoch)`` at the start of every epoch: the weight in force,
    ``criterion.scheduled["lbd"]``, is 0 for epochs ``0..deferred_until`` and :attr:`lbd`
    afterwards. :attr:`lbd` itself is the value you set (the schedule never changes it; assigning
    it sets the weight the schedule switches to). Without the deferred start, a large
    :math:`\lambda` from the first epoch can collapse a short run to a single class; so with
    ``deferred_until`` set and :meth:`set_epoch` never called, the first call warns (and trains
    with :attr:`lbd`).

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise standard deviation :math:`\sigma > 0`; also scales the robustness term.
        num_noise: Noise copies per input, :math:`k` in the paper. Default: 16.
        lbd: Weight :math:`\lambda \ge 0` of the robustness term (after the deferred start).
            Default: 12.0.
        gamma: Hinge margin :math:`\gamma > 0`. Default: 8.0.
        beta: Inverse temperature :math:`\beta > 0` of the robustness term. Default: 16.0.
        deferred_until: Last epoch (0-based) with :math:`\lambda = 0`, applied by
            :meth:`set_epoch`; ``None`` (the official default) never defers. Default: ``None``.
        generator: Optional ``torch.Generator`` (on the inputs' device) for the noise.
        input_range: ``(low, high)`` the inputs must lie in, or ``None`` to turn the check
            off (inputs in another space). Default: ``(0.0, 1.0)``.

    Shape:
        - inputs: :math:`(B, *)`, any input shape the model accepts.
        - targets: :math:`(B,)`, class indices; the model must return at least 2 classes.
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``sigma``, ``gamma`` or ``beta`` is not positive and finite, ``lbd`` is
            negative or not finite, or ``num_noise < 1``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> criterion = MACERLoss(sigma=0.25, num_noise=4, generator=g)
        >>> criterion
        MACERLoss(sigma=0.25, num_noise=4, lbd=12.0, gamma=8.0, beta=16.0)
        >>> model = nn.Linear(4, 3)
        >>> loss = criterion(model, torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> loss.shape, sorted(criterion.last_terms)
        (torch.Size([]), ['classification', 'robustness'])
        >>> deferred = MACERLoss(sigma=0.25, deferred_until=30)
        >>> deferred.set_epoch(0)
        >>> deferred.lbd, dict(deferred.scheduled)
        (12.0, {'lbd': 0.0})
    """

    term_names: ClassVar[tuple[str, ...]] = ("classification", "robustness")
    _repr_fields: ClassVar[tuple[str, ...]] = ("sigma", "num_noise", "lbd", "gamma", "beta")

    num_noise = Setting(check_int)
    lbd = Setting(check_nonnegative)
    gamma = Setting(check_positive)
    beta = Setting(check_positive)
    deferred_until = Setting(optional(functools.partial(check_int, min=0)))

    def __init__(
        self,
        sigma: float,
        num_noise: int = 16,
        lbd: float = 12.0,
        gamma: float = 8.0,
        beta: float = 16.0,
        *,
        deferred_until: int | None = None,
        generator: torch.Generator | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(sigma, generator=generator, input_range=input_range)
        self.num_noise = num_noise
        self.lbd = lbd
        self.gamma = gamma
        self.beta = beta
        self.deferred_until = deferred_until

    def _scheduled_values(self) -> dict[str, Any]:
        # Jeong's train_macer.py: lbd = 0 if args.deferred and epoch <= args.lr_step_size
        until, epoch = self.deferred_until, self.epoch
        deferred = until is not None and epoch is not None and epoch <= until
        return {"lbd": 0.0 if deferred else self.lbd}

    def _unstepped_schedule(self) -> tuple[str, str, str] | None:
        if self.deferred_until is None:
            return None
        return (
            f"deferred_until={self.deferred_until}: lbd is 0 until the end of epoch "
            f"{self.deferred_until}",
            f"it trains with lbd={self.lbd} from the first step, which can collapse a run to a "
            "single class",
            "deferred_until=None to train with lbd from the start",
        )

    def _loss(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        with preserve_model_state(model):
            terms = macer_loss(
                model,
                inputs,
                targets,
                noise,
                self.sigma,
                self._scheduled_values()["lbd"],
                self.gamma,
                self.beta,
            )
        self._record(classification=terms.classification, robustness=terms.robustness)
        return terms.loss
