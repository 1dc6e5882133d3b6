r"""Statistics of randomized-smoothing certification, thin over SciPy and statsmodels.

- :func:`clopper_pearson_lower`: the one-sided :math:`(1-\alpha)` Clopper–Pearson lower bound on a
  binomial proportion (CERTIFY's :math:`\underline{p_A}`).
- :func:`binomial_pvalue`: the two-sided exact binomial test of top-1 against top-2 counts at
  :math:`p = 1/2` (PREDICT's abstain test).
- :func:`certified_radius`: :math:`R = \sigma\,\Phi^{-1}(\underline{p_A})`.
- :func:`max_certified_radius`, :func:`min_samples_to_certify`, :func:`min_samples_to_predict`:
  what a given sample size can ever achieve.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest, norm

from rsmooth._validation import check_int, check_open_unit, check_positive

__all__ = [
    "binomial_pvalue",
    "certified_radius",
    "clopper_pearson_lower",
    "max_certified_radius",
    "min_samples_to_certify",
    "min_samples_to_predict",
]

ArrayLike = npt.ArrayLike


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
