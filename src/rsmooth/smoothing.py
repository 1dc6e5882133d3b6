r"""The smoothed classifier: Monte-Carlo sampling engine, PREDICT and CERTIFY.

Given a base classifier :math:`f` and a noise level :math:`\sigma`, the smoothed classifier is

.. math:: g(x) = \arg\max_c \; \mathbb{P}_{\delta \sim \mathcal{N}(0, \sigma^2 I)}\big(f(x + \delta) = c\big).

:meth:`SmoothedClassifier.certify` implements CERTIFY and :meth:`SmoothedClassifier.predict`
implements PREDICT of :cite:`cohen2019certified`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from rsmooth._model_state import preserve_model_state
from rsmooth._validation import (
    DEFAULT_INPUT_RANGE,
    check_generator,
    check_input_range,
    check_input_range_arg,
    check_inputs,
    check_int,
    check_model,
    check_open_unit,
    check_positive,
)
from rsmooth.functional import sample_noise, soft_smoothed_probs
from rsmooth.stats import (
    binomial_pvalue,
    certified_radius,
    clopper_pearson_lower,
    max_certified_radius,
    min_samples_to_certify,
    min_samples_to_predict,
)

__all__ = ["ABSTAIN", "Certificate", "SampleSizeWarning", "SmoothedClassifier"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None

#: Label returned by :meth:`SmoothedClassifier.predict` and :meth:`SmoothedClassifier.certify`
#: when the smoothed classifier abstains.
ABSTAIN: int = -1


class SampleSizeWarning(UserWarning):
    """Warns that a sample size is too small for PREDICT or CERTIFY to ever return a class."""


@dataclass(frozen=True, eq=False, slots=True)
class Certificate:
    """The result of :meth:`SmoothedClassifier.certify` for a batch of ``B`` inputs.

    All tensors have shape ``[B]`` and live on the inputs' device.

    Attributes:
        prediction: Certified class per input (``int64``), :data:`ABSTAIN` (-1) where it abstains.
        radius: Certified L2 radius per input (``float64``); 0.0 where it abstains.
        p_lower: One-sided Clopper–Pearson lower bound on the selected class's probability.
        count: Number of the ``n`` estimation samples that voted for the selected class.
        n: Number of estimation samples per input.
        n0: Number of selection samples per input.
        alpha: Failure probability of the certificate.
        sigma: Noise level the certificate is for.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    count: Tensor
    n: int
    n0: int
    alpha: float
    sigma: float

    @property
    def abstained(self) -> Tensor:
        """Boolean mask ``[B]``, True where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    def __len__(self) -> int:
        return int(self.prediction.shape[0])


def _warn_sample_size(task: str, n: int, alpha: float, *, stacklevel: int) -> None:
    """Warn with :class:`SampleSizeWarning` when ``n`` can never predict/certify at ``alpha``."""
    if task == "predict":
        needed, why = min_samples_to_predict(alpha), "for the binomial test to reject"
    else:
        needed, why = min_samples_to_certify(alpha), "for a lower bound above 1/2"
    if n < needed:
        warnings.warn(
            f"{task} with n={n} at alpha={alpha} always abstains: at least n={needed} "
            f"samples are needed {why}",
            SampleSizeWarning,
            stacklevel=stacklevel + 1,
        )


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class SmoothedClassifier:
    r"""A randomized-smoothing classifier over any base classifier.

    Certifies that the smoothed classifier :math:`g` is constant on an L2 ball around each input
    :cite:`cohen2019certified`. :math:`\sigma` is measured in the space the model receives its
    inputs in, so input normalisation belongs *inside* ``model`` (a first layer).

    Sampling is vectorised: forward batches of at most ``batch_size`` noisy samples are filled
    across inputs and samples, so memory is bounded by ``batch_size`` (never by ``n`` or the
    number of inputs), and certifying many inputs with a small ``n`` is as efficient as one input
    with a large ``n``. For every call, each input gets its own noise stream seeded from the
    ``generator``; the same generator state, arguments and ``batch_size`` give bit-identical
    results on the same device.

    Args:
        model: Base classifier ``f`` mapping a batch ``[N, *]`` to logits ``[N, K]``.
        sigma: Noise standard deviation :math:`\sigma > 0`.
        num_classes: Number of classes ``K``. Default: inferred from the model's output (and
            checked against it when given).
        batch_size: Maximum number of noisy samples per forward pass. Default: 1000.
        input_range: ``(low, high)`` every input entry must lie in, or ``None`` to turn the
            check off (inputs in another space). Default: ``(0.0, 1.0)``, pixels scaled to
            [0, 1]: 8-bit pixels, or a normalisation applied outside the model, are errors.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: ``sigma`` is not positive and finite, ``num_classes < 2``, ``batch_size < 1``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=500, input_range=None)
        >>> x = torch.tensor([[3.0, -3.0], [0.0, 0.0]])
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        >>> g = torch.Generator().manual_seed(0)
        >>> cert = smoothed.certify(x, n=1000, n0=100, alpha=0.001, generator=g)
        >>> cert.prediction.tolist()
        [0, -1]
        >>> round(float(cert.radius[0]), 3)  # every vote for class 0: the cap for n=1000
        0.616
        >>> round(smoothed.max_radius(n=1000, alpha=0.001), 3)
        0.616
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        *,
        num_classes: int | None = None,
        batch_size: int = 1000,
        input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
    ) -> None:
        self.model = check_model(model)
        self.input_range = check_input_range_arg("input_range", input_range)
        self.sigma = check_positive("sigma", sigma)
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, min=2)
        )
        self.batch_size = check_int("batch_size", batch_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma={self.sigma}, num_classes={self.num_classes}, "
            f"batch_size={self.batch_size})"
        )

    # ------------------------------------------------------------------ engine
    def _input_generators(
        self, inputs: Tensor, generator: torch.Generator | list[torch.Generator] | None
    ) -> list[torch.Generator]:
        """One generator per input: given, or seeded from ``generator`` (or the global RNG)."""
        if isinstance(generator, list):
            return generator
        seed_device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(
            0, 2**62, (inputs.shape[0],), generator=generator, device=seed_device
        ).tolist()
        return [torch.Generator(device=inputs.device).manual_seed(s) for s in seeds]

    def _check_logits(self, logits: Tensor, rows: int) -> int:
        if logits.dim() != 2 or logits.shape[0] != rows:
            raise ValueError(
                f"model must return logits of shape [N, num_classes] for N inputs, got shape "
                f"{tuple(logits.shape)} for N={rows}"
            )
        classes = int(logits.shape[1])
        if self.num_classes is not None and classes != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but the model returned {classes} logits"
            )
        if classes < 2:
            raise ValueError(f"the model must return at least 2 logits, got {classes}")
        return classes

    def _counts(self, inputs: Tensor, num: int, generators: Sequence[torch.Generator]) -> Tensor:
        """Class counts ``[B, K]`` of ``argmax f(x_j + delta)`` over ``num`` draws per input.

        Input ``j``'s noise is drawn from ``generators[j]`` in pieces of ``min(num, batch_size)``
        samples, so it depends only on that generator, ``num`` and ``batch_size``, not on the
        other inputs of the call. Whole pieces are packed into forward batches of at most
        ``batch_size`` samples.
        """
        device, batch = inputs.device, inputs.shape[0]
        piece = min(num, self.batch_size)
        sizes = [piece] * (num // piece) + ([num % piece] if num % piece else [])
        buffer = torch.empty(
            (min(self.batch_size, num * batch),) + tuple(inputs.shape[1:]),
            dtype=inputs.dtype,
            device=device,
        )
        counts: Tensor | None = None
        chunk: list[tuple[int, int]] = []
        filled = 0

        def flush() -> None:
            nonlocal counts, chunk, filled
            offset = 0
            for j, size in chunk:
                segment = buffer[offset : offset + size]
                segment.normal_(0.0, self.sigma, generator=generators[j])
                segment.add_(inputs[j])
                offset += size
            logits = self.model(buffer[:filled])
            classes = self._check_logits(logits, filled)
            if counts is None:
                counts = torch.zeros(batch * classes, dtype=torch.long, device=device)
            owners = torch.repeat_interleave(
                torch.tensor([j for j, _ in chunk], device=device),
                torch.tensor([size for _, size in chunk], device=device),
                output_size=filled,
            )
            flat = owners * classes + logits.argmax(dim=1)
            counts.index_add_(0, flat, torch.ones_like(flat))
            chunk, filled = [], 0

        with preserve_model_state(self.model, train=False), torch.inference_mode():
            for j in range(batch):
                for size in sizes:
                    if filled + size > self.batch_size:
                        flush()
                    chunk.append((j, size))
                    filled += size
            flush()
        if counts is None:  # unreachable: num >= 1 and the batch is non-empty
            raise RuntimeError("no noise samples were drawn")
        return counts.view(batch, -1)

    def _validate_call(
        self, inputs: Tensor, generator: GeneratorArg
    ) -> tuple[Tensor, torch.Generator | list[torch.Generator] | None]:
        inputs = check_inputs("inputs", inputs)
        check_input_range("inputs", inputs, self.input_range)
        if isinstance(generator, (list, tuple)):
            if len(generator) != inputs.shape[0]:
                raise ValueError(
                    "generator must be one torch.Generator or a sequence of one per input, got "
                    f"a sequence of length {len(generator)} for {inputs.shape[0]} inputs"
                )
            checked = [check_generator(g, inputs.device) for g in generator]
            if any(g is None for g in checked):
                raise TypeError("generator must not contain None")
            return inputs, [g for g in checked if g is not None]
        return inputs, check_generator(generator, inputs.device)

    # ------------------------------------------------------------------ public
    def sample_counts(self, inputs: Tensor, num: int, *, generator: GeneratorArg = None) -> Tensor:
        """Count the base classifier's votes under ``num`` noise draws per input.

        Args:
            inputs: Batch ``[B, *]``.
            num: Noise draws per input.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]``, the sample sizes and ``batch_size``).

        Returns:
            ``int64`` counts ``[B, K]`` on the inputs' device; each row sums to ``num``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(3, 4), sigma=0.5)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.sample_counts(torch.zeros(2, 3), 50, generator=g).sum(1).tolist()
            [50, 50]
        """
        inputs, generator = self._validate_call(inputs, generator)
        num = check_int("num", num)
        return self._counts(inputs, num, self._input_generators(inputs, generator))

    def predict(
        self,
        inputs: Tensor,
        n: int = 100_000,
        alpha: float = 0.001,
        *,
        generator: GeneratorArg = None,
    ) -> Tensor:
        """PREDICT: the smoothed classifier's class, abstaining unless the vote is significant.

        Draws ``n`` noisy samples per input, takes the two most frequent classes and returns the
        first unless the two-sided binomial test of their counts at p = 1/2 has p-value > alpha
        (then :data:`ABSTAIN`). With probability at least ``1 - alpha`` a returned class is the
        smoothed classifier's class.

        Args:
            inputs: Batch ``[B, *]``.
            n: Noise draws per input. Default: 100,000.
            alpha: Level of the abstain test. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]``, the sample sizes and ``batch_size``).

        Returns:
            ``int64`` tensor ``[B]`` of classes, :data:`ABSTAIN` (-1) where it abstains.

        Warns:
            SampleSizeWarning: ``n`` is too small for the test ever to pass at this ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.predict(torch.zeros(3, 2), n=200, generator=g).shape
            torch.Size([3])
        """
        inputs, generator = self._validate_call(inputs, generator)
        n = check_int("n", n)
        alpha = check_open_unit("alpha", alpha)
        _warn_sample_size("predict", n, alpha, stacklevel=2)
        counts = self._counts(inputs, n, self._input_generators(inputs, generator))
        top_counts, top_classes = counts.topk(2, dim=1)
        top = top_counts.cpu().tolist()
        keep = [binomial_pvalue(c1, c2) <= alpha for c1, c2 in top]
        prediction = top_classes[:, 0].clone()
        prediction[~torch.tensor(keep, device=prediction.device)] = ABSTAIN
        return prediction

    def certify(
        self,
        inputs: Tensor,
        n: int = 100_000,
        n0: int = 100,
        alpha: float = 0.001,
        *,
        generator: GeneratorArg = None,
    ) -> Certificate:
        r"""CERTIFY: a class and an L2 radius on which the smoothed classifier is constant.

        For each input, ``n0`` noise draws select the candidate class :math:`\hat c_A` (ties go
        to the lowest index); ``n`` fresh, independent draws count its votes :math:`n_A`; the
        one-sided :math:`(1-\alpha)` Clopper–Pearson lower bound :math:`\underline{p_A}` gives
        the radius :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`. If
        :math:`\underline{p_A} < 1/2` it abstains (prediction :data:`ABSTAIN`, radius 0).
        With probability at least :math:`1-\alpha` over the sampling, a returned class is
        :math:`g(x)` and :math:`g` is constant on the ball of radius :math:`R`. The radius can
        never exceed :func:`~rsmooth.stats.max_certified_radius` ``(n, alpha, sigma)``.

        Args:
            inputs: Batch ``[B, *]``.
            n: Estimation draws per input. Default: 100,000.
            n0: Selection draws per input. Default: 100.
            alpha: Failure probability. Default: 0.001.
            generator: Optional ``torch.Generator`` on the inputs' device, or a sequence of
                ``B`` generators, one per input (then input ``j``'s noise depends only on
                ``generator[j]``, the sample sizes and ``batch_size``).

        Returns:
            A :class:`Certificate` with tensors of shape ``[B]``.

        Warns:
            SampleSizeWarning: ``n`` is too small for any input ever to be certified at ``alpha``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 2), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> cert = smoothed.certify(torch.zeros(3, 2), n=500, generator=g)
            >>> cert.radius.shape, cert.prediction.dtype
            (torch.Size([3]), torch.int64)
        """
        inputs, generator = self._validate_call(inputs, generator)
        n = check_int("n", n)
        n0 = check_int("n0", n0)
        alpha = check_open_unit("alpha", alpha)
        _warn_sample_size("certify", n, alpha, stacklevel=2)
        return self._certify(inputs, n, n0, alpha, self._input_generators(inputs, generator))

    def _certify(
        self,
        inputs: Tensor,
        n: int,
        n0: int,
        alpha: float,
        generators: Sequence[torch.Generator],
    ) -> Certificate:
        """CERTIFY with one generator per input (the dataset runner seeds them per index)."""
        selection = self._counts(inputs, n0, generators)
        candidate = selection.argmax(dim=1)
        estimation = self._counts(inputs, n, generators)
        count = estimation.gather(1, candidate[:, None])[:, 0]
        p_lower = clopper_pearson_lower(count.cpu().numpy(), n, alpha)
        radius = certified_radius(p_lower, self.sigma)
        abstain = p_lower < 0.5
        device, dtype = inputs.device, _float_dtype(inputs.device)
        prediction = candidate.clone()
        prediction[torch.from_numpy(abstain).to(device)] = ABSTAIN
        return Certificate(
            prediction=prediction,
            radius=torch.from_numpy(np.where(abstain, 0.0, radius)).to(device, dtype),
            p_lower=torch.from_numpy(p_lower).to(device, dtype),
            count=count,
            n=n,
            n0=n0,
            alpha=alpha,
            sigma=self.sigma,
        )

    def soft_predict(
        self,
        inputs: Tensor,
        num_noise: int = 8,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""The soft smoothed classifier :math:`\hat F(x) = \frac1m\sum_i \mathrm{softmax}(f(x+\delta_i))`.

        Differentiable in the inputs and the model's parameters (one forward pass over the
        ``num_noise * B`` noisy copies, in eval mode; the model's mode is restored).

        Args:
            inputs: Batch ``[B, *]``.
            num_noise: Noise copies ``m`` per input. Default: 8.
            generator: Optional ``torch.Generator`` on the inputs' device.

        Returns:
            Probabilities ``[B, K]``.

        Example:
            >>> smoothed = SmoothedClassifier(nn.Linear(2, 3), sigma=0.1)
            >>> g = torch.Generator().manual_seed(0)
            >>> smoothed.soft_predict(torch.zeros(4, 2), generator=g).shape
            torch.Size([4, 3])
        """
        inputs = check_inputs("inputs", inputs)
        check_input_range("inputs", inputs, self.input_range)
        generator = check_generator(generator, inputs.device)
        num_noise = check_int("num_noise", num_noise)
        noise = sample_noise(inputs, self.sigma, num_noise, generator=generator)
        with preserve_model_state(self.model, train=False):
            return soft_smoothed_probs(self.model, inputs, noise)

    def max_radius(self, n: int = 100_000, alpha: float = 0.001) -> float:
        """The largest radius :meth:`certify` can return with ``n`` samples at level ``alpha``.

        Example:
            >>> round(SmoothedClassifier(nn.Linear(2, 2), sigma=0.5).max_radius(), 3)
            1.906
        """
        return max_certified_radius(n, alpha, self.sigma)
