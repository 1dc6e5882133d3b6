"""CAT-RS: confidence-aware training of smoothed classifiers :cite:`jeong2023catrs`."""

from __future__ import annotations

import functools
from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._prior import Confidence, check_prior_rows
from rsmooth._settings import Setting
from rsmooth._validation import (
    check_choice,
    check_epsilon_in_box,
    check_int,
    check_nonnegative,
    check_positive,
)
from rsmooth.functional import catrs_loss, sample_noise
from rsmooth.losses._base import SmoothingCriterion, check_unit_box_range

__all__ = ["CATRSLoss"]


def _check_confidence(name: str, value: object) -> Confidence:
    return cast(Confidence, check_choice("model", "prior")(name, value))


class CATRSLoss(SmoothingCriterion):
    r"""CAT-RS: confidence-aware training with a worst-case noise term :cite:`jeong2023catrs`.

    Called as ``loss = criterion(model, inputs, targets, prior=prior_rows)`` (``prior`` is a
    required keyword), where ``prior_rows`` ``[B, K]`` are the rows of a **precomputed** smoothed
    class-frequency table for the examples of the batch (:func:`rsmooth.training.prediction_table` of a Gaussian model
    trained at :math:`\sigma = 0.25`, for every training :math:`\sigma`, as the official recipe
    does), indexed by dataset index (:class:`rsmooth.training.IndexedDataset`).

    Per call, ``m`` noises :math:`\delta_{ij} \sim \mathcal N(0, \sigma^2 I)` and uniforms
    :math:`u_{ji}` (for the Binomial draws) are drawn in that order from :attr:`generator`.
    Forward A (model's current mode) gives the per-copy cross-entropies and the hard-vote
    confidence :math:`w_j`; :math:`K_j \sim \max(1, \mathrm{Binomial}(m, w_j))`; the noise
    adversary (:func:`~rsmooth.functional.catrs_noise_attack`, ``eval()``, frozen parameters)
    moves each noise row inside an :math:`\epsilon`-ball towards disagreement with the prior;
    forward B (current mode) evaluates the adversarial noise:

    .. math::

        L = \frac1B \sum_j \Big[ \frac1m \sum_{k=1}^{K_j} \ell_{j(k)}
            + \lambda\, \mathbb 1[K_j = m] \max_i
            \mathrm{KL}\big(\pi_j \,\big\|\, \mathrm{softmax} f(x_j + \delta^*_{ij})\big) \Big]

    with :math:`\ell_{j(1)} \le \dots \le \ell_{j(m)}` the sorted CEs of forward A. See
    :func:`rsmooth.functional.catrs_loss` for the exact computation.

    ``last_terms`` keys: ``"low"`` (mean :math:`L^{low}`), ``"high"`` (mean of the gated
    :math:`L^{high}`, before :math:`\lambda`), ``"accept_rate"`` (fraction with
    :math:`K_j = m`) and ``"mean_k"``.

    Cost per call: :math:`T` attack passes plus two training passes, each forward+backward over
    :math:`mB` samples, i.e. :math:`(T + 2)\,m` per example. The official code takes one
    optimizer step per chunk of ``B/m`` examples: use a loader batch of 64 for ``B = 256``,
    ``m = 4``.

    Every argument is an attribute of the same name, checked again whenever it is assigned.

    Args:
        sigma: Noise level :math:`\sigma` (the training :math:`\sigma`; the prior's model always
            uses 0.25 in the official recipe).
        epsilon: Radius :math:`\epsilon` of the noise adversary, in input units (the official
            ``--epsilon 256`` divided by 256; a value larger than the diameter of the input box,
            :math:`\sqrt d` for :math:`[0, 1]^d`, such as the flag itself, is a ``ValueError``
            at the call). The official ``--warmup W`` doubles it from epoch ``W``: assign
            ``criterion.epsilon = 2.0`` then. Default: 1.0.
        num_steps: Attack steps :math:`T` (0: no attack). Default: 4.
        num_noise: Noise copies :math:`m` (``--num-noise-vec``). Default: 4.
        lbd: Weight :math:`\lambda` of :math:`L^{high}` (official CIFAR-10: 0.5 / 1.0 / 2.0 for
            :math:`\sigma` = 0.25 / 0.5 / 1.0). Default: 1.0.
        confidence: ``"model"`` (vote fraction of forward A, the default) or ``"prior"``
            (:math:`\pi_j[y_j]`, the official ImageNet ``--confidence_mask``).
        generator: Optional ``torch.Generator`` for the noise and the Binomial draws.

    Shape:
        - inputs: :math:`(B, *)`, values in :math:`[0, 1]`.
        - targets: :math:`(B)`.
        - prior: :math:`(B, K)`, rows summing to 1.
        - output: scalar.

    Returns:
        The loss, a 0-d tensor.

    Raises:
        TypeError: An argument has the wrong type, or ``prior`` is missing.
        ValueError: A hyperparameter is out of range, ``confidence`` is not ``"model"`` or
            ``"prior"``, inputs lie outside :math:`[0, 1]`, or ``prior`` has the wrong shape,
            is not finite, is negative, or has rows that do not sum to 1.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, y = torch.rand(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
        >>> prior = torch.full((4, 3), 1 / 3)
        >>> criterion = CATRSLoss(0.5, 1.0, 2, 2, generator=g)  # sigma, epsilon, T, m
        >>> criterion
        CATRSLoss(sigma=0.5, epsilon=1.0, num_steps=2, num_noise=2, lbd=1.0, confidence='model')
        >>> loss = criterion(model, x, y, prior=prior)
        >>> loss.shape, sorted(criterion.last_terms)
        (torch.Size([]), ['accept_rate', 'high', 'low', 'mean_k'])
    """

    term_names: ClassVar[tuple[str, ...]] = ("low", "high", "accept_rate", "mean_k")
    _repr_fields: ClassVar[tuple[str, ...]] = (
        "sigma",
        "epsilon",
        "num_steps",
        "num_noise",
        "lbd",
        "confidence",
    )
    _unit_box: ClassVar[bool] = True

    input_range = Setting(check_unit_box_range)
    epsilon = Setting(check_positive)
    num_steps = Setting(functools.partial(check_int, min=0))
    num_noise = Setting(check_int)
    lbd = Setting(check_nonnegative)
    confidence = Setting(_check_confidence)

    def __init__(
        self,
        sigma: float,
        epsilon: float = 1.0,
        num_steps: int = 4,
        num_noise: int = 4,
        lbd: float = 1.0,
        *,
        confidence: Confidence = "model",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(sigma, generator=generator)
        self.epsilon = epsilon
        self.num_steps = num_steps
        self.num_noise = num_noise
        self.lbd = lbd
        self.confidence = confidence

    def forward(  # type: ignore[override]
        self, model: nn.Module, inputs: Tensor, targets: Tensor, *, prior: Tensor
    ) -> Tensor:
        """Compute the CAT-RS loss of ``model`` on a batch.

        Args:
            model: The base classifier being trained (returns logits ``[N, K]``).
            inputs: Clean inputs ``[B, *]`` in :math:`[0, 1]`.
            targets: Class indices ``[B]``, each in ``[0, K)``.
            prior: The batch's rows of the prior table ``[B, K]`` (a required keyword).

        Returns:
            A 0-d tensor; ``backward()`` sends gradients into the model's parameters.
        """

        def check_prior(checked: Tensor) -> tuple[str, int]:
            rows = check_prior_rows(prior, checked.shape[0], checked.device)
            return ("prior", int(rows.shape[1]))

        return self._checked_call(
            model, inputs, targets, functools.partial(self._catrs_loss, prior=prior), check_prior
        )

    def _check_call(self, inputs: Tensor) -> None:
        check_epsilon_in_box("epsilon", self.epsilon, inputs)

    def _catrs_loss(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, prior: Tensor
    ) -> Tensor:
        inputs = inputs.detach()
        noise = sample_noise(inputs, self.sigma, self.num_noise, generator=self.generator)
        uniforms = torch.rand(
            (inputs.shape[0], self.num_noise),
            generator=self.generator,
            device=inputs.device,
            dtype=inputs.dtype,
        )
        with preserve_model_state(model):
            terms = catrs_loss(
                model,
                inputs,
                targets,
                prior,
                noise,
                uniforms,
                self.epsilon,
                self.num_steps,
                self.lbd,
                confidence=self.confidence,
            )
        self._record(
            low=terms.low, high=terms.high, accept_rate=terms.accept_rate, mean_k=terms.mean_k
        )
        return terms.loss
