import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import beta, norm

from rsmooth.stats import (
    binomial_pvalue,
    certified_radius,
    clopper_pearson_lower,
    max_certified_radius,
    min_samples_to_certify,
    min_samples_to_predict,
)

# algorithms.md §2.7, alpha = 0.001: (n_A, n, p_lower, radius / sigma or None for abstain)
CERTIFY_VECTORS = [
    (100, 100, 0.93325430, 1.500475),
    (99, 100, 0.91137311, 1.349259),
    (90, 100, 0.77532988, 0.756515),
    (60, 100, 0.44098427, None),
    (100000, 100000, 0.99993092, 3.811457),
    (99900, 100000, 0.99865099, 3.000201),
    (99000, 100000, 0.98898934, 2.290000),
    (90000, 100000, 0.89703650, 1.264845),
    (50500, 100000, 0.50010895, 0.000273),
    (50000, 100000, 0.49510904, None),
]

PREDICT_VECTORS = [
    (510, 490, 0.547973, False),
    (600, 400, 2.728e-10, True),
    (10, 0, 0.001953, False),
    (9, 1, 0.021484, False),
    (20, 8, 0.035698, False),
    (5, 5, 1.0, False),
]


@pytest.mark.parametrize(("count", "n", "p_lower", "radius"), CERTIFY_VECTORS)
def test_certify_vectors(count, n, p_lower, radius):
    bound = float(clopper_pearson_lower(count, n, 0.001))
    assert bound == pytest.approx(p_lower, abs=5e-9)
    if radius is None:
        assert bound < 0.5
    else:
        assert float(certified_radius(bound, 1.0)) == pytest.approx(radius, abs=2e-6)
        assert float(certified_radius(bound, 0.5)) == pytest.approx(0.5 * radius, abs=1e-6)


def test_clopper_pearson_is_vectorised_and_matches_beta_quantile():
    counts = np.array([0, 1, 37, 99, 100])
    got = clopper_pearson_lower(counts, 100, 0.01)
    expected = np.where(counts == 0, 0.0, beta.ppf(0.01, counts, 100 - counts + 1))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)
    assert got.shape == (5,)


def test_clopper_pearson_is_one_sided_not_two_sided():
    # the two-sided (1 - alpha) bound is looser (smaller) than the one-sided one
    one_sided = float(clopper_pearson_lower(90, 100, 0.001))
    two_sided_at_alpha = float(beta.ppf(0.0005, 90, 11))
    assert one_sided > two_sided_at_alpha


@pytest.mark.parametrize(("top1", "top2", "pvalue", "predicts"), PREDICT_VECTORS)
def test_predict_vectors(top1, top2, pvalue, predicts):
    got = binomial_pvalue(top1, top2)
    assert got == pytest.approx(pvalue, rel=1e-3)
    assert (got <= 0.001) is predicts


def test_max_radius_defaults():
    assert max_certified_radius(100_000, 0.001, 1.0) == pytest.approx(3.811457, abs=1e-5)
    assert max_certified_radius(100_000, 0.001, 0.25) == pytest.approx(0.953, abs=5e-4)
    assert max_certified_radius(100_000, 0.001, 0.5) == pytest.approx(1.906, abs=5e-4)
    # equals the radius of an all-votes certificate
    for n in (10, 100, 1000):
        assert max_certified_radius(n, 0.001, 1.0) == pytest.approx(
            float(certified_radius(clopper_pearson_lower(n, n, 0.001), 1.0)), abs=1e-9
        )


def test_minimum_sample_sizes():
    assert min_samples_to_certify(0.001) == 10
    assert min_samples_to_predict(0.001) == 11
    assert max_certified_radius(9, 0.001, 1.0) == 0.0
    assert max_certified_radius(10, 0.001, 1.0) > 0.0
    assert binomial_pvalue(10, 0) > 0.001 >= binomial_pvalue(11, 0)


@given(st.floats(min_value=1e-6, max_value=0.5, exclude_max=True))
def test_minimum_sample_sizes_are_tight(alpha):
    n = min_samples_to_certify(alpha)
    assert clopper_pearson_lower(n, n, alpha) >= 0.5
    if n > 1:
        assert clopper_pearson_lower(n - 1, n - 1, alpha) < 0.5
    m = min_samples_to_predict(alpha)
    assert binomial_pvalue(m, 0) <= alpha
    if m > 1:
        assert binomial_pvalue(m - 1, 0) > alpha


@given(
    st.integers(min_value=1, max_value=10_000),
    st.data(),
    st.floats(min_value=1e-6, max_value=0.5),
)
def test_lower_bound_is_below_the_estimate(n, data, alpha):
    # for alpha <= 1/2 the one-sided lower bound never exceeds the point estimate
    count = data.draw(st.integers(min_value=0, max_value=n))
    bound = float(clopper_pearson_lower(count, n, alpha))
    assert 0.0 <= bound <= count / n


@given(st.floats(min_value=0.5, max_value=0.999999), st.floats(min_value=1e-3, max_value=10))
def test_radius_formula(p, sigma):
    assert float(certified_radius(p, sigma)) == pytest.approx(sigma * norm.ppf(p), abs=1e-9)
    assert float(certified_radius(p, sigma)) >= 0


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: clopper_pearson_lower(5, 10, 0.0),
            ValueError,
            "alpha must be in the open interval",
        ),
        (lambda: clopper_pearson_lower(5, 10, 1.5), ValueError, "alpha"),
        (lambda: clopper_pearson_lower(11, 10, 0.1), ValueError, "count must be in"),
        (lambda: clopper_pearson_lower(-1, 10, 0.1), ValueError, "count must be in"),
        (lambda: clopper_pearson_lower(0, 0, 0.1), ValueError, "n must be positive"),
        (lambda: clopper_pearson_lower(0.5, 10, 0.1), TypeError, "integers"),
        (lambda: certified_radius(0.7, 0.0), ValueError, "sigma must be positive"),
        (lambda: certified_radius(1.5, 1.0), ValueError, "p_lower"),
        (lambda: certified_radius(math.nan, 1.0), ValueError, "p_lower"),
        (
            lambda: max_certified_radius(0, 0.001, 1.0),
            ValueError,
            "n must be a positive integer, got 0",
        ),
        (
            lambda: max_certified_radius(10.0, 0.001, 1.0),
            TypeError,
            "n must be an integer, got float",
        ),
        (lambda: binomial_pvalue(-1, 3), ValueError, "top1"),
        (lambda: min_samples_to_predict(1.0), ValueError, "alpha"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
