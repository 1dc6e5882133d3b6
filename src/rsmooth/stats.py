r"""Statistics of randomized-smoothing certification, thin over SciPy and statsmodels.

- :func:`clopper_pearson_lower`: the one-sided :math:`(1-\alpha)` Clopper–Pearson lower bound on a
  binomial proportion (CERTIFY's :math:`\underline{p_A}`).
- :func:`binomial_pvalue`: the two-sided exact binomial test of top-1 against top-2 counts at
  :math:`p = 1/2` (PREDICT's abstain test).
- :func:`certified_radius`: :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`.
- :func:`max_certified_radius`, :func:`min_samples_to_certify`, :func:`min_samples_to_predict`:
  what a given sample size can ever achieve.
- :func:`certify_from_counts` and :func:`predict_from_counts`: CERTIFY and PREDICT from vote
  counts, without a model.
- :func:`clopper_pearson_upper` and :func:`randomized_clopper_pearson_lower`: the upper bound, and
  the exact randomized lower bound of :cite:`voracek2024confidence`.
- :func:`radius_to_probability`, :func:`sequential_looks`, :func:`sequential_thresholds` and
  :func:`sequential_operating_characteristic`: the look schedule, integer thresholds and exact
  operating characteristic of the sequential certifier
  (:meth:`rsmooth.SmoothedClassifier.certify_radius`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import fftconvolve
from scipy.stats import binom, binomtest, norm

from rsmooth._validation import check_int, check_open_unit, check_positive

__all__ = [
    "CertifyOutcome",
    "OperatingCharacteristic",
    "binomial_pvalue",
    "certified_radius",
    "certify_from_counts",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "max_certified_radius",
    "min_samples_to_certify",
    "min_samples_to_predict",
    "min_sequential_max_n",
    "predict_from_counts",
    "radius_to_probability",
    "randomized_clopper_pearson_lower",
    "sequential_looks",
    "sequential_operating_characteristic",
    "sequential_thresholds",
]

ArrayLike = npt.ArrayLike


def _check_counts(count: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate integer ``count`` and ``n`` (``0 <= count <= n``, ``n >= 1``); broadcast as int64."""
    count_arr = np.asarray(count)
    n_arr = np.asarray(n)
    if not (np.issubdtype(count_arr.dtype, np.integer) and np.issubdtype(n_arr.dtype, np.integer)):
        raise TypeError(
            f"count and n must be integers, got dtypes {count_arr.dtype} and {n_arr.dtype}"
        )
    count_arr, n_arr = np.broadcast_arrays(count_arr.astype(np.int64), n_arr.astype(np.int64))
    if np.any(n_arr < 1):
        raise ValueError(f"n must be positive integers, got {n_arr[n_arr < 1].flat[0]}")
    if np.any((count_arr < 0) | (count_arr > n_arr)):
        bad = count_arr[(count_arr < 0) | (count_arr > n_arr)].flat[0]
        raise ValueError(f"count must be in [0, n], got {bad}")
    return count_arr, n_arr


def clopper_pearson_lower(count: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    r"""One-sided :math:`(1-\alpha)` Clopper–Pearson lower confidence bound on a proportion.

    Equals ``statsmodels.stats.proportion.proportion_confint(count, n, alpha=2 * alpha,
    method="beta")[0]``, i.e. the :math:`\alpha` quantile of
    :math:`\mathrm{Beta}(\text{count}, n - \text{count} + 1)`, and 0 when ``count == 0``.
    This is the bound used by CERTIFY (Cohen et al., 2019).

    Args:
        count: Number of successes (array-like of integers, ``0 <= count <= n``).
        n: Number of trials (array-like of positive integers, broadcast with ``count``).
        alpha: Failure probability of the bound, in (0, 1).

    Returns:
        Float64 array of lower bounds, the broadcast shape of ``count`` and ``n``.

    Example:
        >>> round(float(clopper_pearson_lower(99, 100, 0.001)), 8)
        0.91137311
    """
    from statsmodels.stats.proportion import proportion_confint

    alpha = check_open_unit("alpha", alpha)
    count_arr, n_arr = _check_counts(count, n)
    lower, _ = proportion_confint(count_arr, n_arr, alpha=2 * alpha, method="beta")
    lower = np.where(count_arr == 0, 0.0, np.asarray(lower, dtype=np.float64))
    return np.asarray(lower, dtype=np.float64)


def binomial_pvalue(top1: int, top2: int) -> float:
    """Two-sided exact binomial test p-value of ``top1`` successes in ``top1 + top2`` trials at 1/2.

    This is PREDICT's abstain test (``scipy.stats.binomtest``); PREDICT abstains when the p-value
    exceeds alpha. Ties give 1.0.

    Args:
        top1: Count of the most frequent class.
        top2: Count of the runner-up class.

    Returns:
        The p-value, a float in (0, 1].

    Example:
        >>> round(binomial_pvalue(510, 490), 6)
        0.547973
    """
    top1 = check_int("top1", top1, min=0)
    top2 = check_int("top2", top2, min=0)
    if top1 + top2 == 0:
        return 1.0
    return float(binomtest(top1, top1 + top2, p=0.5, alternative="two-sided").pvalue)


def certified_radius(p_lower: ArrayLike, sigma: float) -> np.ndarray:
    r"""The certified L2 radius :math:`\sigma\,\Phi^{-1}(\underline{p_A})`, 0 where :math:`\underline{p_A} \le 1/2`.

    CERTIFY abstains when :math:`\underline{p_A} < 1/2`; at exactly 1/2 it returns radius 0.

    Args:
        p_lower: Lower bounds on the top-class probability, in [0, 1].
        sigma: Noise level :math:`\sigma`.

    Returns:
        Float64 array of radii (non-negative).

    Example:
        >>> round(float(certified_radius(0.9332543, 0.5)), 4)
        0.7502
    """
    sigma = check_positive("sigma", sigma)
    p = np.asarray(p_lower, dtype=np.float64)
    if np.any(~np.isfinite(p) | (p < 0) | (p > 1)):
        raise ValueError("p_lower must be probabilities in [0, 1]")
    return np.asarray(sigma * norm.ppf(np.maximum(p, 0.5)), dtype=np.float64)


def max_certified_radius(n: int, alpha: float, sigma: float) -> float:
    r"""The largest radius CERTIFY can ever report with ``n`` samples: :math:`\sigma\,\Phi^{-1}(\alpha^{1/n})`.

    Reached when all ``n`` estimation samples vote for the selected class. Returns 0.0 when even
    that bound does not exceed 1/2 (then CERTIFY can only abstain, or return radius 0).

    Args:
        n: Number of estimation samples.
        alpha: Failure probability.
        sigma: Noise level.

    Example:
        >>> round(max_certified_radius(100_000, 0.001, 1.0), 4)
        3.8115
    """
    n = check_int("n", n)
    alpha = check_open_unit("alpha", alpha)
    sigma = check_positive("sigma", sigma)
    p = math.exp(math.log(alpha) / n)
    return float(sigma * norm.ppf(p)) if p > 0.5 else 0.0


def min_samples_to_certify(alpha: float) -> int:
    r"""The smallest ``n`` for which CERTIFY can return a class at level ``alpha``.

    With all ``n`` samples on the selected class the bound is :math:`\alpha^{1/n}`, which is
    at least 1/2 iff :math:`n \ge \log_2(1/\alpha)`.

    Example:
        >>> min_samples_to_certify(0.001)
        10
    """
    alpha = check_open_unit("alpha", alpha)
    n = max(1, math.ceil(math.log2(1.0 / alpha) - 1e-12))
    while clopper_pearson_lower(n, n, alpha) < 0.5:  # guard against rounding at the boundary
        n += 1
    return n


def min_samples_to_predict(alpha: float) -> int:
    r"""The smallest ``n`` for which PREDICT can return a class at level ``alpha``.

    The most favourable outcome (all ``n`` samples on one class) has two-sided p-value
    :math:`2^{1-n}`, which is at most :math:`\alpha` iff :math:`n \ge \log_2(2/\alpha)`.

    Example:
        >>> min_samples_to_predict(0.001)
        11
    """
    alpha = check_open_unit("alpha", alpha)
    n = max(1, math.ceil(math.log2(2.0 / alpha) - 1e-12))
    while binomial_pvalue(n, 0) > alpha:  # guard against rounding at the boundary
        n += 1
    return n


@dataclass(frozen=True)
class CertifyOutcome:
    """CERTIFY's numbers per input (arrays ``[B]``), from :func:`certify_from_counts`.

    Attributes:
        prediction: The candidate class where certified, -1 where CERTIFY abstains (``int64``).
        count: The candidate's votes among the ``n`` estimation samples (``int64``).
        p_lower: The one-sided lower confidence bound on the candidate's vote share.
        radius: The certified radius, 0 where CERTIFY abstains (``float64``).
    """

    prediction: np.ndarray
    count: np.ndarray
    p_lower: np.ndarray
    radius: np.ndarray


def certify_from_counts(
    selection: ArrayLike,
    estimation: ArrayLike,
    n: int,
    alpha: float,
    sigma: float,
    *,
    u: ArrayLike | None = None,
) -> CertifyOutcome:
    r"""CERTIFY :cite:`cohen2019certified` from vote counts: candidate, bound, radius.

    The candidate is the most frequent class of the selection counts (ties go to the lowest
    index); its estimation count :math:`n_A` of ``n`` gives the one-sided :math:`(1-\alpha)`
    lower bound :math:`\underline{p_A}` (:func:`clopper_pearson_lower`, or with ``u`` the
    randomized bound :func:`randomized_clopper_pearson_lower`) and the radius
    :math:`\sigma\Phi^{-1}(\underline{p_A})`; below 1/2 it abstains. Samples that voted for no
    class (non-finite logits) are in ``n`` but in no count: they count against the candidate.

    Args:
        selection: Selection counts ``[B, K]`` (integers).
        estimation: Estimation counts ``[B, K]``, from samples independent of the selection.
        n: Estimation samples per input (at least each row's sum).
        alpha: Failure probability.
        sigma: Noise level.
        u: Uniform draws in (0, 1] per input for the randomized bound, drawn independently of
            the counts. Default: None (Clopper–Pearson).

    Returns:
        A :class:`CertifyOutcome` of arrays ``[B]``.

    Example:
        >>> out = certify_from_counts([[3, 97], [50, 50]], [[10, 990], [500, 500]], 1000, 0.001, 0.5)
        >>> out.prediction.tolist(), out.count.tolist(), out.radius.round(4).tolist()
        ([1, -1], [990, 500], [0.989, 0.0])
    """
    alpha = check_open_unit("alpha", alpha)
    sigma = check_positive("sigma", sigma)
    n = check_int("n", n)
    chosen = np.atleast_2d(np.asarray(selection))
    counted = np.atleast_2d(np.asarray(estimation))
    if chosen.shape != counted.shape:
        raise ValueError(
            "selection and estimation must have the same shape [B, K], got "
            f"{chosen.shape} and {counted.shape}"
        )
    candidate = chosen.argmax(axis=1).astype(np.int64)
    count = counted[np.arange(len(candidate)), candidate].astype(np.int64)
    if u is None:
        p_lower = clopper_pearson_lower(count, n, alpha)
    else:
        p_lower = randomized_clopper_pearson_lower(count, n, alpha, u)
    abstain = p_lower < 0.5
    radius = np.where(abstain, 0.0, certified_radius(p_lower, sigma))
    prediction = np.where(abstain, -1, candidate).astype(np.int64)
    return CertifyOutcome(prediction, count, np.asarray(p_lower, np.float64), radius)


def predict_from_counts(counts: ArrayLike, alpha: float) -> np.ndarray:
    """PREDICT :cite:`cohen2019certified` from vote counts: the top class, or -1 (abstain).

    The two most frequent classes' counts are compared with the two-sided binomial test at
    :math:`p = 1/2` (:func:`binomial_pvalue`); PREDICT abstains when its p-value exceeds
    ``alpha``. Ties between classes go to the lowest index.

    Args:
        counts: Vote counts ``[B, K]`` (integers, ``K >= 2``).
        alpha: Level of the test.

    Returns:
        ``int64`` array ``[B]`` of classes, -1 where PREDICT abstains.

    Example:
        >>> predict_from_counts([[5, 95, 0], [48, 52, 0]], 0.001).tolist()
        [1, -1]
    """
    alpha = check_open_unit("alpha", alpha)
    table = np.atleast_2d(np.asarray(counts))
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"counts must have shape [B, K] with K >= 2, got {table.shape}")
    order = np.argsort(-table, axis=1, kind="stable")[:, :2]
    top = np.take_along_axis(table, order, axis=1)
    keep = np.array([binomial_pvalue(int(a), int(b)) <= alpha for a, b in top], dtype=bool)
    return np.where(keep, order[:, 0], -1).astype(np.int64)


# ---------------------------------------------------------------------------- sequential testing
def clopper_pearson_upper(count: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    r"""One-sided :math:`(1-\alpha)` Clopper–Pearson upper confidence bound on a proportion.

    The mirror of :func:`clopper_pearson_lower`: the :math:`1-\alpha` quantile of
    :math:`\mathrm{Beta}(\text{count} + 1, n - \text{count})`, and 1 when ``count == n``. Equals
    ``proportion_confint(count, n, alpha=2 * alpha, method="beta")[1]`` of statsmodels.
    With probability at least :math:`1-\alpha` the true proportion is at most the bound.

    Args:
        count: Number of successes (array-like of integers, ``0 <= count <= n``).
        n: Number of trials (array-like of positive integers, broadcast with ``count``).
        alpha: Failure probability of the bound, in (0, 1).

    Returns:
        Float64 array of upper bounds, the broadcast shape of ``count`` and ``n``.

    Example:
        >>> round(float(clopper_pearson_upper(1, 100, 0.001)), 8)
        0.08862689
        >>> float(clopper_pearson_upper(100, 100, 0.001))
        1.0
    """
    from statsmodels.stats.proportion import proportion_confint

    alpha = check_open_unit("alpha", alpha)
    count_arr, n_arr = _check_counts(count, n)
    _, upper = proportion_confint(count_arr, n_arr, alpha=2 * alpha, method="beta")
    upper = np.where(count_arr == n_arr, 1.0, np.asarray(upper, dtype=np.float64))
    return np.asarray(upper, dtype=np.float64)


def randomized_clopper_pearson_lower(
    count: ArrayLike, n: ArrayLike, alpha: float, u: ArrayLike
) -> np.ndarray:
    r"""The randomized (exact, uniformly most powerful) one-sided lower bound on a proportion.

    With :math:`X \sim \mathrm{Bin}(n, p)` and a uniform draw :math:`U` independent of the count
    :cite:`voracek2024confidence`,

    .. math:: L(x, U) = \inf\{p : P_p(X > x) + U\,P_p(X = x) > \alpha\}.

    Its coverage is exactly :math:`1-\alpha` for every :math:`p`, and
    ``clopper_pearson_lower(x) <= L <= clopper_pearson_lower(x + 1)``: it is never worse than
    Clopper–Pearson. At ``count == n`` it is :math:`(\alpha/U)^{1/n}`, which tends to 1 as
    :math:`U \to 0`; so ``u`` is first raised to at least ``2 * alpha`` and at most 1
    (:math:`U' = \min(\max(U, 2\alpha), 1)`), which only lowers the bound (it stays valid),
    keeps it and the radius finite, and keeps it at least Clopper–Pearson's :math:`\alpha^{1/n}`
    for every alpha. The bound is valid for a **fixed** ``n`` only (not at a
    data-dependent stopping time).

    Args:
        count: Number of successes (array-like of integers, ``0 <= count <= n``).
        n: Number of trials (array-like of positive integers).
        alpha: Failure probability of the bound, in (0, 1).
        u: Uniform draws in (0, 1], one per bound (broadcast with ``count`` and ``n``), drawn
            independently of the counts by the caller (reproducibly, e.g. from the input's own
            noise stream).

    Returns:
        Float64 array of lower bounds, the broadcast shape of ``count``, ``n`` and ``u``.

    Example:
        >>> round(float(randomized_clopper_pearson_lower(990, 1000, 0.001, 0.5)), 5)
        0.97662
        >>> round(float(clopper_pearson_lower(990, 1000, 0.001)), 5)
        0.97604
    """
    alpha = check_open_unit("alpha", alpha)
    count_arr, n_arr = _check_counts(count, n)
    u_arr = np.asarray(u, dtype=np.float64)
    if np.any(~np.isfinite(u_arr) | (u_arr <= 0) | (u_arr > 1)):
        bad = u_arr[~np.isfinite(u_arr) | (u_arr <= 0) | (u_arr > 1)].flat[0]
        raise ValueError(f"u must be uniform draws in (0, 1], got {bad}")
    count_arr, n_arr, u_arr = np.broadcast_arrays(count_arr, n_arr, u_arr)
    w = np.minimum(np.maximum(u_arr, 2 * alpha), 1.0)
    full = count_arr == n_arr
    low = clopper_pearson_lower(count_arr, n_arr, alpha)
    high = np.where(
        full, 1.0, clopper_pearson_lower(np.minimum(count_arr + 1, n_arr), n_arr, alpha)
    )
    # h(p) = P_p(X > x) + w P_p(X = x) - alpha is continuous and increasing in p, <= 0 at `low`
    # and >= 0 at `high`: bisect, keeping the lower (conservative) end.
    for _ in range(60):
        mid = 0.5 * (low + high)
        h = binom.sf(count_arr, n_arr, mid) + w * binom.pmf(count_arr, n_arr, mid) - alpha
        above = h > 0
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    closed = np.exp(np.log(alpha / w) / np.maximum(n_arr, 1))  # count == n: (alpha / w)^(1/n)
    return np.asarray(np.where(full, closed, low), dtype=np.float64)


def radius_to_probability(radius: ArrayLike, sigma: float) -> np.ndarray:
    r"""The vote share :math:`p^* = \Phi(r/\sigma)` that certifies radius ``r``.

    The inverse of :func:`certified_radius` on :math:`[1/2, 1)`: a lower bound
    :math:`\underline{p_A} \ge p^*` certifies every radius up to ``r``.

    Args:
        radius: Radii (array-like, non-negative and finite).
        sigma: Noise level :math:`\sigma`.

    Returns:
        Float64 array of probabilities in :math:`[1/2, 1)`.

    Example:
        >>> round(float(radius_to_probability(0.5, 0.5)), 6)
        0.841345
    """
    sigma = check_positive("sigma", sigma)
    r = np.asarray(radius, dtype=np.float64)
    if np.any(~np.isfinite(r) | (r < 0)):
        bad = r[~np.isfinite(r) | (r < 0)].flat[0]
        raise ValueError(f"radius must be non-negative and finite, got {bad}")
    return np.asarray(norm.cdf(r / sigma), dtype=np.float64)


def _check_probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(p).__name__}")
    p = float(p)
    if not 0.5 <= p < 1.0:
        raise ValueError(f"{name} must be in [0.5, 1), got {p}")
    return p


def _first_look(num_looks: int, alpha: float, p_min: float) -> int:
    """Smallest N at which N votes out of N certify p_min at level alpha / num_looks."""
    n = max(1, math.ceil(math.log(num_looks / alpha) / -math.log(p_min) - 1e-9))
    while binom.sf(n - 1, n, p_min) > alpha / num_looks:  # guard against rounding
        n += 1
    return n


def _geometric_looks(first: int, max_n: int, growth: float) -> tuple[int, ...]:
    looks = [first]
    while looks[-1] < max_n:
        looks.append(min(max_n, max(looks[-1] + 1, math.ceil(growth * looks[-1] - 1e-9))))
    return tuple(looks)


def sequential_looks(
    max_n: int, alpha: float, p_min: float, growth: float = 1.5
) -> tuple[int, ...]:
    r"""The look schedule of the sequential certifier: cumulative sample sizes :math:`N_1 < \dots < N_K`.

    :math:`N_1 = \lceil \ln(K/\alpha) / \ln(1/p_{\min}) \rceil` is the smallest sample size at
    which unanimous votes can certify :math:`p_{\min}` at level :math:`\alpha/K` (no alpha is
    spent on looks that cannot certify); then :math:`N_{k+1} = \lceil \rho N_k \rceil` with
    :math:`\rho` = ``growth``, and the last look is ``max_n``. :math:`K` (the number of looks)
    depends on :math:`N_1` and is found by fixed-point iteration from :math:`K = 20`.

    Args:
        max_n: Largest number of estimation samples (the last look).
        alpha: Failure probability, split equally over the :math:`K` looks.
        p_min: The smallest target vote share (:func:`radius_to_probability` of the smallest
            radius), in [0.5, 1).
        growth: Ratio :math:`\rho > 1` of consecutive looks. Default: 1.5.

    Returns:
        The looks, a tuple of strictly increasing integers ending at ``max_n``.

    Raises:
        ValueError: ``max_n`` is below :math:`N_1` (no look could certify ``p_min``).

    Example:
        >>> looks = sequential_looks(100_000, 0.001, float(radius_to_probability(0.5, 0.5)))
        >>> len(looks), looks[:4], looks[-2:]
        (20, (58, 87, 131, 197), (86480, 100000))
    """
    max_n = check_int("max_n", max_n)
    alpha = check_open_unit("alpha", alpha)
    p_min = _check_probability("p_min", p_min)
    growth = check_positive("growth", growth)
    if growth <= 1:
        raise ValueError(f"growth must be greater than 1, got {growth}")
    looks = _schedule(max_n, alpha, p_min, growth)
    if looks is None:
        needed = min_sequential_max_n(p_min, alpha, p_min, growth)
        raise ValueError(
            f"max_n must be at least {needed} to certify a vote share of {p_min:.6g} at "
            f"alpha={alpha}, got {max_n}"
        )
    return looks


def _schedule(max_n: int, alpha: float, p_min: float, growth: float) -> tuple[int, ...] | None:
    """The fixed-point schedule, or None when its last look cannot certify ``p_min``."""
    num_looks, seen = 20, []
    while num_looks not in seen:
        seen.append(num_looks)
        first = _first_look(num_looks, alpha, p_min)
        looks = _geometric_looks(min(first, max_n), max_n, growth)
        num_looks = len(looks)
    # the thresholds always use alpha / len(looks), so any schedule is valid; keep the one of
    # the cycle whose first look can certify (N_1 >= first look at its own K), if any
    cycle = seen[seen.index(num_looks) :]
    for k in sorted(cycle, reverse=True):
        looks = _geometric_looks(min(_first_look(k, alpha, p_min), max_n), max_n, growth)
        if _first_look(len(looks), alpha, p_min) <= max_n:
            return looks
    return None


def min_sequential_max_n(
    p_target: float, alpha: float, p_min: float | None = None, growth: float = 1.5
) -> int:
    """The smallest ``max_n`` whose schedule can certify the vote share ``p_target`` at all.

    The schedule is :func:`sequential_looks` ``(max_n, alpha, p_min, growth)`` (``p_min``
    defaults to ``p_target``); ``p_target`` is certifiable when unanimous votes at the last look
    reach the threshold at level ``alpha / K``.

    Args:
        p_target: The vote share to certify (the largest radius's), in [0.5, 1).
        alpha: Failure probability.
        p_min: The schedule's smallest target. Default: ``p_target``.
        growth: Ratio of consecutive looks. Default: 1.5.

    Example:
        >>> min_sequential_max_n(float(radius_to_probability(1.0, 0.5)), 0.001, 0.6915)
        391
    """
    alpha = check_open_unit("alpha", alpha)
    p_target = _check_probability("p_target", p_target)
    p_min = p_target if p_min is None else _check_probability("p_min", p_min)
    if p_min > p_target:
        raise ValueError(f"p_min must be at most p_target={p_target}, got {p_min}")
    growth = check_positive("growth", growth)
    if growth <= 1:
        raise ValueError(f"growth must be greater than 1, got {growth}")
    n = _first_look(1, alpha, p_target)
    while True:
        looks = _schedule(n, alpha, p_min, growth)
        need = _first_look(len(looks) if looks is not None else 1, alpha, p_target)
        if looks is not None and need <= n:
            return n
        n = max(n + 1, need)


def sequential_thresholds(
    looks: Sequence[int], p_targets: ArrayLike, alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""Integer certify and futility thresholds of the sequential certifier.

    With :math:`K` = ``len(looks)``, at look :math:`k` with :math:`A_k` votes out of :math:`N_k`:

    - certify target :math:`j` when :math:`A_k \ge c_{kj} = \min\{a : P_{p_j}(\mathrm{Bin}(N_k,
      p_j) \ge a) \le \alpha/K\}`, i.e. when the Clopper–Pearson lower bound
      ``clopper_pearson_lower(A_k, N_k, alpha / K) >= p_j`` (``N_k + 1`` where impossible);
    - rule it out when :math:`A_k \le f_{kj} = \max\{a : P_{p_j}(\mathrm{Bin}(N_k, p_j) \le a)
      < \beta/K\}` (a count equal to :math:`f_{kj}` is ruled out), i.e. when
      ``clopper_pearson_upper(A_k, N_k, beta / K) < p_j`` (-1 if no count can be).

    Comparing integer counts with integer thresholds makes the decisions exact. By a union bound
    over the looks, a candidate whose vote share is below :math:`p_j` is certified at :math:`j`
    with probability at most :math:`\alpha`.

    Args:
        looks: Cumulative sample sizes (strictly increasing positive integers).
        p_targets: Target vote shares :math:`p_j` (sorted, in [0.5, 1)), e.g.
            :func:`radius_to_probability` of the radii.
        alpha: Failure probability of the certificates, split equally over the looks.
        beta: Failure probability of the futility ("ruled out") decisions, in (0, 1).

    Returns:
        ``(certify, futile)``, two ``int64`` arrays of shape ``[K, J]``.

    Example:
        >>> looks = (58, 87, 131)
        >>> cert, futile = sequential_thresholds(looks, [0.841345], 0.001, 0.001)
        >>> cert[:, 0].tolist(), futile[:, 0].tolist()
        ([58, 84, 124], [37, 60, 94])
    """
    alpha = check_open_unit("alpha", alpha)
    beta = check_open_unit("beta", beta)
    looks_arr = _check_looks(looks)
    p = _check_targets(p_targets)
    k = len(looks_arr)
    cert = np.empty((k, len(p)), dtype=np.int64)
    futile = np.empty((k, len(p)), dtype=np.int64)
    qa, qb = alpha / k, beta / k
    for i, n in enumerate(looks_arr.tolist()):
        for j, pj in enumerate(p.tolist()):
            a = int(binom.isf(qa, n, pj)) + 1
            while a > 0 and binom.sf(a - 2, n, pj) <= qa:
                a -= 1
            while a <= n and binom.sf(a - 1, n, pj) > qa:
                a += 1
            cert[i, j] = min(a, n + 1)
            f = int(binom.ppf(qb, n, pj)) - 1
            while f >= 0 and binom.cdf(f, n, pj) >= qb:
                f -= 1
            while f + 1 <= n and binom.cdf(f + 1, n, pj) < qb:
                f += 1
            futile[i, j] = max(f, -1)
    return cert, futile


def _check_looks(looks: Sequence[int]) -> np.ndarray:
    try:
        values = [check_int("looks", v) for v in looks]
    except TypeError:
        raise TypeError(f"looks must be a sequence of positive integers, got {looks!r}") from None
    if not values or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"looks must be strictly increasing positive integers, got {looks!r}")
    return np.asarray(values, dtype=np.int64)


def _check_targets(p_targets: ArrayLike) -> np.ndarray:
    p = np.atleast_1d(np.asarray(p_targets, dtype=np.float64))
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"p_targets must be a non-empty 1-D sequence, got shape {p.shape}")
    if np.any(~np.isfinite(p) | (p < 0.5) | (p >= 1)):
        raise ValueError(f"p_targets must be in [0.5, 1), got {p.tolist()}")
    if np.any(np.diff(p) < 0):
        raise ValueError(f"p_targets must be sorted in increasing order, got {p.tolist()}")
    return p


@dataclass(frozen=True)
class OperatingCharacteristic:
    """What the sequential certifier does at a true vote share ``p`` (exact, see :func:`sequential_operating_characteristic`).

    Attributes:
        p: The true vote share of the candidate class.
        certify: Probability of certifying each target ``[J]`` (non-increasing in ``j``).
        ruled_out: Probability that each target ends ruled out ``[J]``.
        undecided: Probability that each target is still open at ``max_n`` ``[J]``.
        expected_samples: Expected number of estimation samples drawn.
        samples_quantiles: Median and 95th percentile of the number of samples drawn.
    """

    p: float
    certify: np.ndarray
    ruled_out: np.ndarray
    undecided: np.ndarray
    expected_samples: float
    samples_quantiles: tuple[int, int]


def sequential_operating_characteristic(
    p: float, looks: Sequence[int], certify: ArrayLike, futile: ArrayLike
) -> OperatingCharacteristic:
    r"""The exact operating characteristic of the sequential certifier at a true vote share ``p``.

    Dynamic programming over the distribution of the cumulative vote count of the runs still
    open (convolving with :math:`\mathrm{Bin}(N_k - N_{k-1}, p)` between looks). A run stops when
    every target is decided: target :math:`j` is certified once :math:`A_k \ge c_{kj}` at some
    look and ruled out once :math:`A_k \le f_{kj}` (the running decisions of
    :meth:`rsmooth.SmoothedClassifier.certify_radius`). Probabilities below about
    :math:`10^{-20}` per count are dropped, so results are exact to about that level.

    Args:
        p: True vote share of the candidate class, in [0, 1].
        looks: Cumulative sample sizes, as from :func:`sequential_looks`.
        certify: Certify thresholds ``[K, J]`` (or ``[K]`` for one target), as from
            :func:`sequential_thresholds`.
        futile: Futility thresholds of the same shape.

    Returns:
        An :class:`OperatingCharacteristic` (probabilities per target ``[J]``, expected samples,
        and the median and 95th percentile of the samples drawn).

    Example:
        >>> p_star = float(radius_to_probability(0.5, 0.5))
        >>> looks = sequential_looks(100_000, 0.001, p_star)
        >>> cert, fut = sequential_thresholds(looks, [p_star], 0.001, 0.001)
        >>> oc = sequential_operating_characteristic(0.9, looks, cert, fut)
        >>> round(float(oc.certify[0]), 4), round(oc.expected_samples)
        (1.0, 694)
        >>> float(sequential_operating_characteristic(p_star, looks, cert, fut).certify[0]) < 0.001
        True
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    looks_arr = _check_looks(looks)
    cert = np.asarray(certify, dtype=np.int64)
    fut = np.asarray(futile, dtype=np.int64)
    if cert.ndim == 1:
        cert, fut = cert[:, None], fut[:, None]
    if cert.shape != fut.shape or cert.ndim != 2 or cert.shape[0] != len(looks_arr):
        raise ValueError(
            "certify and futile must have shape [len(looks), J], got "
            f"{tuple(cert.shape)} and {tuple(fut.shape)} for {len(looks_arr)} looks"
        )
    num_targets = cert.shape[1]
    p_cert = np.zeros(num_targets)
    p_ruled = np.zeros(num_targets)
    stop_mass = np.zeros(len(looks_arr) + 1)  # mass stopping at each look; last = undecided
    # open states: (jc, ju) -> (offset, probability vector over counts offset + i)
    states: dict[tuple[int, int], tuple[int, np.ndarray]] = {(0, num_targets): (0, np.ones(1))}
    previous = 0
    for k, n_k in enumerate(looks_arr.tolist()):
        step = n_k - previous
        previous = n_k
        support = np.arange(step + 1)
        pmf = binom.pmf(support, step, p)
        keep = np.nonzero(pmf > 1e-22)[0]
        pm_off = int(keep[0]) if keep.size else 0
        pm = pmf[pm_off : (int(keep[-1]) + 1 if keep.size else 1)]
        new_states: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
        for (jc, ju), (off, vec) in states.items():
            conv = fftconvolve(vec, pm) if min(len(vec), len(pm)) > 64 else np.convolve(vec, pm)
            conv = np.clip(conv, 0.0, None)
            base = off + pm_off
            counts = base + np.arange(len(conv))
            new_jc = np.maximum(jc, np.searchsorted(cert[k], counts, side="right"))
            new_ju = np.minimum(ju, np.searchsorted(fut[k], counts, side="left"))
            pairs = new_jc * (num_targets + 1) + new_ju
            for code in np.unique(pairs).tolist():
                a, b = divmod(code, num_targets + 1)
                mask = pairs == code
                mass_vec = np.where(mask, conv, 0.0)
                if a >= b:  # every target decided: the run stops here
                    mass = float(mass_vec.sum())
                    p_cert[:a] += mass
                    p_ruled[max(a, b) :] += mass
                    stop_mass[k] += mass
                    continue
                nz = np.nonzero(mass_vec > 1e-22)[0]
                if nz.size == 0:
                    continue
                lo, hi = int(nz[0]), int(nz[-1]) + 1
                _add_state(new_states, (a, b), base + lo, mass_vec[lo:hi])
        states = new_states
    for (jc, ju), (_, vec) in states.items():
        mass = float(vec.sum())
        p_cert[:jc] += mass
        p_ruled[ju:] += mass
        stop_mass[-1] += mass
    stops = np.append(looks_arr, looks_arr[-1]).astype(np.float64)
    total = stop_mass.sum()
    expected = float((stop_mass * stops).sum() + (1.0 - total) * looks_arr[-1])
    cdf = np.cumsum(stop_mass) / max(total, 1e-300)
    median = int(stops[min(int(np.searchsorted(cdf, 0.5)), len(stops) - 1)])
    p95 = int(stops[min(int(np.searchsorted(cdf, 0.95)), len(stops) - 1)])
    p_cert = np.clip(p_cert, 0.0, 1.0)
    p_ruled = np.clip(p_ruled, 0.0, 1.0)
    return OperatingCharacteristic(
        p=p,
        certify=p_cert,
        ruled_out=p_ruled,
        undecided=np.clip(1.0 - p_cert - p_ruled, 0.0, 1.0),
        expected_samples=expected,
        samples_quantiles=(median, p95),
    )


def _add_state(
    states: dict[tuple[int, int], tuple[int, np.ndarray]],
    key: tuple[int, int],
    offset: int,
    vec: np.ndarray,
) -> None:
    if key not in states:
        states[key] = (offset, vec.copy())
        return
    old_off, old = states[key]
    lo = min(old_off, offset)
    hi = max(old_off + len(old), offset + len(vec))
    merged = np.zeros(hi - lo)
    merged[old_off - lo : old_off - lo + len(old)] += old
    merged[offset - lo : offset - lo + len(vec)] += vec
    states[key] = (lo, merged)
