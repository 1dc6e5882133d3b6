r"""The fixed-sample procedures of :cite:`cohen2019certified`: CERTIFY and PREDICT, and plain counts.

A procedure is a small frozen record of its settings (:class:`Certify`, :class:`Predict`,
:class:`Counts`; the sequential :class:`~rsmooth.sequential.RadiusGrid` lives in
:mod:`rsmooth.sequential`). ``procedure.bind(sigma)`` gives what the sampling engine runs: a job per
input that asks for the samples it needs and turns their vote counts into the input's result with
the pure statistics of :mod:`rsmooth.stats`. :class:`~rsmooth.SmoothedClassifier` and
:func:`~rsmooth.runner.certify_dataset` run the same procedures, so a dataset row and a call's
certificate agree exactly for the same seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from rsmooth._engine.sampler import Draw, Item, Votes
from rsmooth._engine.streams import BlockSeeding, Stream, auxiliary_uniform
from rsmooth._validation import check_int, check_open_unit, check_positive
from rsmooth.certificates import ResultKind
from rsmooth.stats import (
    certify_from_counts,
    min_samples_to_certify,
    min_samples_to_predict,
    predict_from_counts,
)

__all__ = ["Certify", "Counts", "Predict", "SampleSizeWarning"]

Bound = Literal["clopper-pearson", "randomized"]
_BOUNDS = ("clopper-pearson", "randomized")


class SampleSizeWarning(UserWarning):
    """Warns that a sample size is too small for PREDICT or CERTIFY to ever return a class."""


def warn_sample_size(task: str, n: int, alpha: float, *, stacklevel: int) -> None:
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


@dataclass(frozen=True, slots=True)
class CertifyRow:
    """CERTIFY's result for one input (float64 numbers, whatever the device)."""

    prediction: int
    radius: float
    p_lower: float
    count: int
    nonfinite: int


@dataclass(frozen=True)
class Certify:
    r"""CERTIFY's settings: ``n0`` selection samples, ``n`` estimation samples, level ``alpha``.

    For each input, ``n0`` noise draws select the candidate class (ties go to the lowest index),
    ``n`` fresh, independent draws count its votes :math:`n_A`, and the one-sided
    :math:`(1-\alpha)` lower bound :math:`\underline{p_A}` gives the radius
    :math:`\sigma\Phi^{-1}(\underline{p_A})`; below 1/2 it abstains
    (:func:`~rsmooth.stats.certify_from_counts`).

    Args:
        n: Estimation samples per input. Default: 100,000.
        n0: Selection samples per input. Default: 100.
        alpha: Failure probability. Default: 0.001.
        bound: ``"clopper-pearson"`` (CERTIFY's, reproduces published numbers) or
            ``"randomized"`` (:func:`~rsmooth.stats.randomized_clopper_pearson_lower`, with its
            uniform draw from the input's own noise stream). Default: ``"clopper-pearson"``.

    Example:
        >>> Certify(n=10_000, alpha=0.01)
        Certify(n=10000, n0=100, alpha=0.01, bound='clopper-pearson')
    """

    kind: ClassVar[ResultKind] = "certify"

    n: int = 100_000
    n0: int = 100
    alpha: float = 0.001
    bound: Bound = "clopper-pearson"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_int("n", self.n))
        object.__setattr__(self, "n0", check_int("n0", self.n0))
        object.__setattr__(self, "alpha", check_open_unit("alpha", self.alpha))
        if self.bound not in _BOUNDS:
            raise ValueError(f"bound must be 'clopper-pearson' or 'randomized', got {self.bound!r}")

    def samples(self) -> int:
        """Samples drawn per input."""
        return self.n0 + self.n

    def bind(self, sigma: float, seeding: BlockSeeding | None = None) -> CertifyJobs:
        """The engine's procedure at noise level ``sigma``."""
        return CertifyJobs(self, check_positive("sigma", sigma), seeding)


@dataclass(frozen=True)
class CertifyJobs:
    """:class:`Certify` bound to a noise level: one job per input for the sampling engine."""

    settings: Certify
    sigma: float
    seeding: BlockSeeding | None = None

    def job(
        self, item: Item
    ) -> Generator[tuple[Draw, ...], tuple[Votes, ...], tuple[int, Votes, Votes]]:
        """Draw the selection and the estimation samples (CERTIFY is computed in finalize)."""
        s = self.settings
        selection, estimation = yield (
            Draw(Stream.SELECTION, 0, s.n0),
            Draw(Stream.ESTIMATION, 0, s.n),
        )
        return item.seed, selection, estimation

    def finalize(self, drawn: list[tuple[int, Votes, Votes]]) -> list[CertifyRow]:
        """CERTIFY for the inputs that finished together, in one vectorised computation."""
        s = self.settings
        classes = max(max(len(a.counts), len(b.counts)) for _, a, b in drawn)
        selection = np.stack([_pad(a.counts, classes) for _, a, _ in drawn])
        estimation = np.stack([_pad(b.counts, classes) for _, _, b in drawn])
        u = None
        if s.bound == "randomized":
            u = auxiliary_uniform([seed for seed, _, _ in drawn], self.seeding)
        out = certify_from_counts(selection, estimation, s.n, s.alpha, self.sigma, u=u)
        return [
            CertifyRow(
                prediction=int(out.prediction[j]),
                radius=float(out.radius[j]),
                p_lower=float(out.p_lower[j]),
                count=int(out.count[j]),
                nonfinite=a.nonfinite + b.nonfinite,
            )
            for j, (_, a, b) in enumerate(drawn)
        ]


@dataclass(frozen=True)
class Predict:
    """PREDICT's settings: ``n`` samples, abstain unless the binomial test passes at ``alpha``.

    Example:
        >>> Predict(n=1000)
        Predict(n=1000, alpha=0.001)
    """

    n: int = 100_000
    alpha: float = 0.001

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_int("n", self.n))
        object.__setattr__(self, "alpha", check_open_unit("alpha", self.alpha))

    def samples(self) -> int:
        """Samples drawn per input."""
        return self.n

    def job(self, item: Item) -> Generator[tuple[Draw, ...], tuple[Votes, ...], int]:
        """Draw ``n`` samples from the input's PREDICT stream, then test."""
        (votes,) = yield (Draw(Stream.PREDICT, 0, self.n),)
        return int(predict_from_counts(_pad(votes.counts, 2)[None], self.alpha)[0])


@dataclass(frozen=True)
class Counts:
    """Plain vote counts of ``num`` samples per input, from a stream of their own.

    Example:
        >>> Counts(num=50)
        Counts(num=50)
    """

    num: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "num", check_int("num", self.num))

    def samples(self) -> int:
        """Samples drawn per input."""
        return self.num

    def job(self, item: Item) -> Generator[tuple[Draw, ...], tuple[Votes, ...], Votes]:
        """Draw ``num`` samples from the input's COUNTS stream."""
        (votes,) = yield (Draw(Stream.COUNTS, 0, self.num),)
        return votes


def _pad(counts: np.ndarray, classes: int) -> np.ndarray:
    """``counts`` with zeros appended up to ``classes`` entries."""
    if len(counts) >= classes:
        return counts
    return np.concatenate([counts, np.zeros(classes - len(counts), dtype=counts.dtype)])
