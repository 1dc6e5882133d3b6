r"""Sequential certification at fixed radii: decide "certified at r?" with far fewer samples.

:meth:`rsmooth.SmoothedClassifier.certify_radius` and :class:`RadiusGrid` answer the question that
certified-accuracy tables ask (is the smoothed classifier's prediction robust at radius :math:`r`,
or at each radius of a grid?) with a group-sequential test (:cite:`horvath2022boosting`,
:cite:`voracek2024confidence`): one candidate class per input (from ``n0`` fresh selection
samples, or given), cumulative estimation counts checked at geometric looks
:math:`N_1 < \dots < N_K = \texttt{max\_n}` (:func:`rsmooth.stats.sequential_looks`), alpha split
equally over the looks, and integer certify / futility thresholds
(:func:`rsmooth.stats.sequential_thresholds`). An input stops as soon as every radius of the grid
that the schedule can reach is either certified or ruled out; inputs still open at ``max_n`` are
undecided.

The running lower bound :math:`L = \max_k \mathrm{CP}_{lo}(A_k, N_k, \alpha/K)` is a lower
confidence sequence: with probability at least :math:`1-\alpha` it is below the candidate's
vote share at every look at once, so all claims an input reports hold together, and
:math:`\sigma\Phi^{-1}(L)` is itself a valid certified radius.

**Independence.** The selection and estimation samples come from noise streams of their own,
drawn by no other public call: candidates given to :meth:`~rsmooth.SmoothedClassifier.certify_radius`
must not depend on its estimation noise, and with the same generator they cannot (for example
:meth:`~rsmooth.SmoothedClassifier.sample_counts`, :meth:`~rsmooth.SmoothedClassifier.predict` and
:meth:`~rsmooth.SmoothedClassifier.certify` each draw from other streams). Candidates chosen by
looking at this procedure's own results would void the guarantee.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import binom, norm

from rsmooth._engine.sampler import Draw, Item, Votes
from rsmooth._engine.streams import Stream
from rsmooth._validation import check_int, check_open_unit, check_positive, check_radii, check_real
from rsmooth.certificates import (
    ABSTAIN,
    CERTIFIED,
    RULED_OUT,
    UNDECIDED,
    UNREACHABLE,
    RadiusCertificate,
    ResultKind,
    float_tensor,
)
from rsmooth.stats import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_sequential_max_n,
    radius_to_probability,
    sequential_looks,
    sequential_operating_characteristic,
    sequential_thresholds,
)

__all__ = [
    "GridRow",
    "GridSchedule",
    "RadiusGrid",
    "UnreachableRadiusWarning",
    "expected_cost",
    "plug_in_probabilities",
]


class UnreachableRadiusWarning(UserWarning):
    """Warns that some radii of a grid cannot be certified within ``max_n`` samples."""


@dataclass(frozen=True)
class RadiusGrid:
    r"""The sequential procedure's settings: a sorted grid of radii and the sampling budget.

    Args:
        radii: One radius or a sorted sequence of radii, all ``>= 0``.
        alpha: Failure probability of the certificates. Default: 0.001.
        max_n: Largest number of estimation samples per input (the last look). Default: 100,000.
        n0: Selection samples per input (unused for inputs whose candidate is given). Default: 100.
        beta: Failure probability of the "ruled out" decisions (only affects cost). Default:
            ``alpha``.
        growth: Ratio of consecutive looks, ``> 1``. Default: 1.5.

    Example:
        >>> RadiusGrid([0.25, 0.5], max_n=10_000)
        RadiusGrid(radii=(0.25, 0.5), alpha=0.001, max_n=10000, n0=100, beta=0.001, growth=1.5)
    """

    kind: ClassVar[ResultKind] = "grid"

    radii: tuple[float, ...]
    alpha: float = 0.001
    max_n: int = 100_000
    n0: int = 100
    beta: float | None = None
    growth: float = 1.5

    def __post_init__(self) -> None:
        alpha = check_open_unit("alpha", self.alpha)
        object.__setattr__(self, "radii", check_radii(self.radii))
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "max_n", check_int("max_n", self.max_n))
        object.__setattr__(self, "n0", check_int("n0", self.n0))
        beta = alpha if self.beta is None else check_open_unit("beta", self.beta)
        object.__setattr__(self, "beta", beta)
        growth = check_real("growth", self.growth)
        if not growth > 1:
            raise ValueError(f"growth must be greater than 1, got {growth}")
        object.__setattr__(self, "growth", growth)

    def samples(self) -> int:
        """The most samples an input can draw."""
        return self.n0 + self.max_n

    def bind(self, sigma: float, *, stacklevel: int = 2) -> GridSchedule:
        """The schedule at noise level ``sigma``: looks, thresholds and reachable radii.

        Raises:
            ValueError: No radius of the grid can be certified within ``max_n`` samples (the
                message names the smallest ``max_n`` that works), or ``Phi(r/sigma) == 1``.

        Warns:
            UnreachableRadiusWarning: Some (not all) radii cannot be certified within ``max_n``:
                they are reported with status :data:`UNREACHABLE`.
        """
        sigma = check_positive("sigma", sigma)
        p = radius_to_probability(np.asarray(self.radii), sigma)
        if not np.all(p < 1.0):
            raise ValueError(
                f"radius {max(self.radii)} is too large for sigma={sigma}: Phi(r/sigma) == 1"
            )
        alpha, beta = self.alpha, float(self.beta)  # type: ignore[arg-type]
        try:
            looks = sequential_looks(self.max_n, alpha, float(p[0]), self.growth)
        except ValueError:
            looks = None
        cert = fut = None
        reach = 0
        if looks is not None:
            cert, fut = sequential_thresholds(looks, p, alpha, beta)
            reach = int((cert[-1] <= looks[-1]).sum())  # certifiable at the last look
        if reach == 0 or looks is None or cert is None or fut is None:
            needed = min_sequential_max_n(float(p[0]), alpha, float(p[0]), self.growth)
            raise ValueError(
                f"max_n must be at least {needed} to certify the radius {self.radii[0]} at "
                f"sigma={sigma}, alpha={alpha}, growth={self.growth}, got {self.max_n}"
            )
        if reach < len(self.radii):
            needed = _max_n_to_reach(float(p[-1]), alpha, float(p[0]), self.growth, self.max_n)
            warnings.warn(
                f"radii {list(self.radii[reach:])} cannot be certified with max_n={self.max_n} "
                f"at sigma={sigma}, alpha={alpha}: they are reported as unreachable (status "
                f"UNREACHABLE, counted as not certified); max_n={needed} reaches "
                f"{self.radii[-1]}",
                UnreachableRadiusWarning,
                stacklevel=stacklevel + 1,
            )
        return GridSchedule(self, sigma, tuple(looks), cert, fut, reach)


def _max_n_to_reach(p_top: float, alpha: float, p_min: float, growth: float, start: int) -> int:
    """The smallest ``max_n >= start`` whose own schedule's thresholds can certify ``p_top``."""
    n = max(start + 1, min_sequential_max_n(p_top, alpha, p_min, growth))
    while True:
        looks = sequential_looks(n, alpha, p_min, growth)
        cert, _ = sequential_thresholds(looks, [p_top], alpha, alpha)
        if cert[-1, 0] <= looks[-1]:
            return n
        n = max(n + 1, int(cert[-1, 0]))


@dataclass(frozen=True, slots=True)
class _Decided:
    """An input's decisions when its job ends: the counts at each look it reached."""

    candidate: int
    history: list[int]
    jc: int  # radii[:jc] certified
    ju: int  # radii[ju:reach] ruled out
    nonfinite: int


@dataclass(frozen=True, slots=True)
class GridRow:
    """The sequential procedure's result for one input (float64 numbers, whatever the device)."""

    prediction: int
    status: tuple[int, ...]
    radius: float
    p_lower: float
    p_upper: float
    count: int
    num_samples: int
    candidate: int
    nonfinite: int


@dataclass(frozen=True, eq=False)
class GridSchedule:
    r"""A :class:`RadiusGrid` at a noise level: the engine's procedure (a job per input).

    Attributes:
        grid: The settings.
        sigma: The noise level.
        looks: Cumulative sample sizes :math:`N_1 < \dots < N_K`.
        certify: Certify thresholds ``[K, J]``.
        futile: Futility thresholds ``[K, J]``.
        reach: How many radii (the smallest ones) some count can certify within ``max_n``.
    """

    grid: RadiusGrid
    sigma: float
    looks: tuple[int, ...]
    certify: np.ndarray
    futile: np.ndarray
    reach: int

    def job(self, item: Item) -> Generator[tuple[Draw, ...], tuple[Votes, ...], _Decided]:
        """Select (or take) the candidate, then count its votes look by look until decided.

        ``item.extra`` is the given candidate class, or None to select one.
        """
        g, looks, reach = self.grid, self.looks, self.reach
        candidate: int | None = item.extra
        if candidate is None:
            selection, votes = yield (
                Draw(Stream.GRID_SELECTION, 0, g.n0),
                Draw(Stream.GRID_ESTIMATION, 0, looks[0]),
            )
            candidate, nonfinite = int(np.argmax(selection.counts)), selection.nonfinite
        else:
            (votes,) = yield (Draw(Stream.GRID_ESTIMATION, 0, looks[0]),)
            nonfinite = 0
        if candidate >= len(votes.counts):
            raise ValueError(
                f"candidates must be classes in [0, {len(votes.counts)}), got {candidate} for "
                f"input {item.key}"
            )
        count = jc = 0
        ju = reach
        history = []
        for k, n_k in enumerate(looks):
            if k:
                (votes,) = yield (Draw(Stream.GRID_ESTIMATION, looks[k - 1], n_k),)
            count += int(votes.counts[candidate])
            nonfinite += votes.nonfinite
            jc = max(jc, int((count >= self.certify[k, :reach]).sum()))
            ju = min(ju, int((count > self.futile[k, :reach]).sum()))
            history.append(count)
            if jc >= ju:
                break
        return _Decided(candidate, history, jc, ju, nonfinite)

    def finalize(self, decided: Sequence[_Decided]) -> list[GridRow]:
        """The rows of inputs decided at one synchronisation, their bounds computed together.

        The running bounds are the best Clopper–Pearson bounds over the looks each input
        reached: one vectorised computation over every (count, look) pair of all the inputs.
        """
        g, num = self.grid, len(self.looks)
        lengths = [len(d.history) for d in decided]
        counts = np.concatenate([np.asarray(d.history, dtype=np.int64) for d in decided])
        looks = np.concatenate([np.asarray(self.looks[:k], dtype=np.int64) for k in lengths])
        starts = np.cumsum([0, *lengths[:-1]])
        lower = np.maximum.reduceat(clopper_pearson_lower(counts, looks, g.alpha / num), starts)
        beta = float(g.beta)  # type: ignore[arg-type]
        upper = np.minimum.reduceat(clopper_pearson_upper(counts, looks, beta / num), starts)
        radius = self.sigma * norm.ppf(np.maximum(lower, 0.5))
        return [
            self._row(d, float(lo), float(up), float(r))
            for d, lo, up, r in zip(decided, lower, upper, radius, strict=True)
        ]

    def _row(self, decided: _Decided, lower: float, upper: float, radius: float) -> GridRow:
        g = self.grid
        candidate, history, jc, ju = decided.candidate, decided.history, decided.jc, decided.ju
        status = []
        for j in range(len(g.radii)):
            if j >= self.reach:
                status.append(UNREACHABLE)
            elif j < jc:
                status.append(CERTIFIED)
            elif j >= max(ju, jc):
                status.append(RULED_OUT)
            else:
                status.append(UNDECIDED)
        predicted = lower >= 0.5 or jc > 0
        # agree exactly with the integer decisions (only ever within float rounding): at least
        # the largest certified radius, below the smallest uncertified one
        if jc > 0:
            radius = max(radius, g.radii[jc - 1])
        if jc < len(g.radii) and radius >= g.radii[jc]:
            radius = math.nextafter(g.radii[jc], -math.inf)
        return GridRow(
            prediction=candidate if predicted else ABSTAIN,
            status=tuple(status),
            radius=max(radius, 0.0) if predicted else 0.0,
            p_lower=lower,
            p_upper=upper,
            count=int(history[-1]),
            num_samples=self.looks[len(history) - 1],
            candidate=candidate,
            nonfinite=decided.nonfinite,
        )

    def collect(
        self, rows: Sequence[GridRow], device: torch.device, *, given: bool
    ) -> RadiusCertificate:
        """Stack the rows of ``B`` inputs into a :class:`RadiusCertificate` on ``device``."""
        status = np.array([r.status for r in rows], dtype=np.int8).reshape(len(rows), -1)

        def longs(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        return RadiusCertificate(
            prediction=longs([r.prediction for r in rows]),
            certified=torch.from_numpy(status == CERTIFIED).to(device),
            status=torch.from_numpy(status).to(device),
            radius=float_tensor(np.array([r.radius for r in rows]), device),
            p_lower=float_tensor(np.array([r.p_lower for r in rows]), device),
            p_upper=float_tensor(np.array([r.p_upper for r in rows]), device, bound="upper"),
            count=longs([r.count for r in rows]),
            num_samples=longs([r.num_samples for r in rows]),
            candidate=longs([r.candidate for r in rows]),
            nonfinite=longs([r.nonfinite for r in rows]),
            radii=self.grid.radii,
            looks=self.looks,
            alpha=self.grid.alpha,
            beta=float(self.grid.beta),  # type: ignore[arg-type]
            sigma=self.sigma,
            n0=0 if given else self.grid.n0,
            max_n=self.looks[-1],
            growth=self.grid.growth,
        )


# ---------------------------------------------------------------------------- planning
def plug_in_probabilities(
    count: np.ndarray, n: np.ndarray, label: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in vote share of the candidate class per row of a CERTIFY results file.

    Returns ``(p, correct)``: ``p = (count + 1/2) / (n + 1)`` is the share of the class CERTIFY
    selected (the sequential procedure selects a class the same way), which sets the cost; a
    certificate counts for certified accuracy only where that class is the label (``correct``;
    abstentions count as wrong).

    Example:
        >>> p, ok = plug_in_probabilities(np.array([99]), np.array([100]), np.array([3]),
        ...                               np.array([3]))
        >>> round(float(p[0]), 4), bool(ok[0])
        (0.9851, True)
    """
    share = (count + 0.5) / (n + 1.0)
    return share, (prediction == label) & (prediction >= 0)


def expected_cost(
    p_values: np.ndarray, grid: RadiusGrid, sigma: float, certify_n: int
) -> dict[str, np.ndarray]:
    """Per true vote share: expected samples, P(certify r_j) sequentially and with CERTIFY.

    Exact (the operating characteristic, :func:`~rsmooth.stats.sequential_operating_characteristic`),
    assuming the candidate is the class whose share is p; identical p values are computed once.
    Unreachable radii have probability 0. This is what ``rsmooth plan`` prints.

    Returns:
        ``{"looks", "samples", "certify_sequential", "certify_certify"}``: the schedule, and per
        p the expected estimation samples ``[P]`` and the probabilities ``[P, J]``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreachableRadiusWarning)
        schedule = grid.bind(sigma)
    targets = radius_to_probability(np.asarray(grid.radii), sigma)
    certify_threshold, _ = sequential_thresholds((certify_n,), targets, grid.alpha, grid.alpha)
    unique, inverse = np.unique(np.asarray(p_values, dtype=np.float64), return_inverse=True)
    samples = np.empty(len(unique))
    p_seq = np.zeros((len(unique), len(grid.radii)))
    reach = schedule.reach
    for i, p in enumerate(unique.tolist()):
        oc = sequential_operating_characteristic(
            p, schedule.looks, schedule.certify[:, :reach], schedule.futile[:, :reach]
        )
        samples[i], p_seq[i, :reach] = oc.expected_samples, oc.certify
    p_certify = binom.sf(certify_threshold[0][None, :] - 1, certify_n, unique[:, None])
    return {
        "looks": np.asarray(schedule.looks),
        "samples": samples[inverse],
        "certify_sequential": p_seq[inverse],
        "certify_certify": p_certify[inverse],
    }
