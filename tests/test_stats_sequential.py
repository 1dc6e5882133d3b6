"""Tests of the sequential-certification statistics in rsmooth.stats (issue 8)."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, norm
from statsmodels.stats.proportion import proportion_confint

from rsmooth.stats import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_sequential_max_n,
    radius_to_probability,
    randomized_clopper_pearson_lower,
    sequential_looks,
    sequential_operating_characteristic,
    sequential_thresholds,
)

# (radii, sigma, alpha, max_n, growth)
SCHEDULES = [
    ((0.5,), 0.5, 0.001, 100_000, 1.5),
    ((0.25, 0.5, 0.75, 1.0), 0.5, 0.001, 100_000, 1.5),
    ((0.25,), 0.25, 0.01, 5_000, 2.0),
    ((0.1, 0.3), 1.0, 0.1, 2_000, 1.5),
    ((0.0, 0.2), 0.5, 0.05, 1_000, 1.25),
]


def _schedule(radii, sigma, alpha, max_n, growth, beta=None):
    p = radius_to_probability(np.array(radii), sigma)
    looks = sequential_looks(max_n, alpha, float(p[0]), growth)
    cert, fut = sequential_thresholds(looks, p, alpha, alpha if beta is None else beta)
    return p, looks, cert, fut


# ---------------------------------------------------------------------------- bounds
def test_upper_matches_statsmodels_and_beta_quantile():
    counts = np.array([0, 1, 37, 99, 100])
    got = clopper_pearson_upper(counts, 100, 0.01)
    _, expected = proportion_confint(counts, 100, alpha=0.02, method="beta")
    np.testing.assert_allclose(got, np.where(counts == 100, 1.0, expected), rtol=1e-12)
    assert got[-1] == 1.0
    # mirror of the lower bound: upper(c, n) = 1 - lower(n - c, n)
    np.testing.assert_allclose(got, 1 - clopper_pearson_lower(100 - counts, 100, 0.01), atol=1e-12)


def test_randomized_bound_is_bracketed_by_clopper_pearson_and_solves_its_equation():
    alpha = 0.01
    # count 0 with u > alpha: P_0(X > 0) + u P_0(X = 0) = u > alpha, so the bound is 0
    assert float(randomized_clopper_pearson_lower(0, 20, alpha, 0.3)) == 0.0
    for count, n, u in [(1, 20, 0.3), (7, 20, 0.9), (990, 1000, 0.5), (50, 100, 1.0)]:
        got = float(randomized_clopper_pearson_lower(count, n, alpha, u))
        assert float(clopper_pearson_lower(count, n, alpha)) <= got + 1e-12
        assert got <= float(clopper_pearson_lower(count + 1, n, alpha)) + 1e-12
        # P_L(X > x) + u P_L(X = x) = alpha at the root
        value = binom.sf(count, n, got) + u * binom.pmf(count, n, got)
        assert value == pytest.approx(alpha, rel=1e-6)


def test_randomized_bound_closed_form_at_all_votes_and_clamp():
    alpha = 0.001
    assert float(randomized_clopper_pearson_lower(100, 100, alpha, 0.5)) == pytest.approx(
        (alpha / 0.5) ** (1 / 100)
    )
    # u <= alpha would give 1 (an infinite radius): u is raised to 2 alpha
    clamped = float(randomized_clopper_pearson_lower(100, 100, alpha, 1e-9))
    assert clamped == pytest.approx(0.5 ** (1 / 100)) and clamped < 1
    # with u = 1 it equals Clopper-Pearson
    assert float(randomized_clopper_pearson_lower(60, 100, alpha, 1.0)) == pytest.approx(
        float(clopper_pearson_lower(60, 100, alpha)), abs=1e-12
    )


@pytest.mark.parametrize("p", [0.6, 0.7])
def test_randomized_bound_has_exact_coverage(p):
    # P(L > p) integrated exactly over X and (numerically) over U: it is alpha, less only the
    # part removed by raising u to 2 alpha (which makes the bound smaller)
    n, alpha = 30, 0.05
    u = (np.arange(500) + 0.5) / 500
    x = np.arange(n + 1)
    bounds = randomized_clopper_pearson_lower(x[:, None], n, alpha, u[None, :])
    miss = float((binom.pmf(x, n, p) * np.mean(bounds > p, axis=1)).sum())
    # the knife-edge count x*: P(X > x*) <= alpha < P(X >= x*)
    x_star = int(np.nonzero(binom.sf(np.arange(n + 1), n, p) <= alpha)[0][0])
    t = (alpha - binom.sf(x_star, n, p)) / binom.pmf(x_star, n, p)
    expected = binom.sf(x_star, n, p) + binom.pmf(x_star, n, p) * (t if t > 2 * alpha else 0.0)
    assert miss == pytest.approx(expected, abs=1e-3)
    assert miss <= alpha + 1e-3  # (the u grid integrates to about 1e-4)
    cp_miss = sum(
        binom.pmf(x, n, p) * (float(clopper_pearson_lower(x, n, alpha)) > p) for x in range(n + 1)
    )
    assert cp_miss <= miss + 1e-12


def test_radius_to_probability_inverts_certified_radius():
    r = np.array([0.0, 0.25, 1.0, 2.5])
    np.testing.assert_allclose(radius_to_probability(r, 0.5), norm.cdf(r / 0.5))


# ---------------------------------------------------------------------------- schedule
def test_looks_match_the_specification_example():
    looks = sequential_looks(100_000, 0.001, float(norm.cdf(1.0)), 1.5)
    assert looks == (58, 87, 131, 197, 296, 444, 666, 999, 1499, 2249, 3374, 5061, 7592,
                     11388, 17082, 25623, 38435, 57653, 86480, 100000)  # fmt: skip


@pytest.mark.parametrize(("radii", "sigma", "alpha", "max_n", "growth"), SCHEDULES)
def test_looks_are_geometric_and_start_where_all_votes_can_certify(
    radii, sigma, alpha, max_n, growth
):
    p, looks, cert, _ = _schedule(radii, sigma, alpha, max_n, growth)
    k = len(looks)
    assert looks[-1] == max_n and all(b > a for a, b in itertools.pairwise(looks))
    for a, b in itertools.pairwise(looks[:-1]):
        assert b == math.ceil(growth * a)
    # first look: unanimous votes certify the smallest target at alpha / K, one fewer cannot
    n1 = looks[0]
    assert binom.sf(n1 - 1, n1, p[0]) <= alpha / k
    # (K is a fixed point of the schedule, or one of a 2-cycle: then N_1 is for K + 1)
    assert n1 == 1 or binom.sf(n1 - 2, n1 - 1, p[0]) > alpha / (k + 1)
    assert cert[0, 0] == n1


@pytest.mark.parametrize(("radii", "sigma", "alpha", "max_n", "growth"), SCHEDULES)
def test_thresholds_agree_with_statsmodels_at_both_edges(radii, sigma, alpha, max_n, growth):
    p, looks, cert, fut = _schedule(radii, sigma, alpha, max_n, growth, beta=0.05)
    k = len(looks)
    for i, n in enumerate(looks):
        for j, pj in enumerate(p):
            c, f = int(cert[i, j]), int(fut[i, j])
            if c <= n:
                lower = proportion_confint(c, n, alpha=2 * alpha / k, method="beta")[0]
                assert lower >= pj
            if c - 1 >= 1:
                below = proportion_confint(c - 1, n, alpha=2 * alpha / k, method="beta")[0]
                assert below < pj
            if f >= 0:
                upper = proportion_confint(f, n, alpha=2 * 0.05 / k, method="beta")[1]
                assert upper < pj
            if f + 1 < n:
                above = proportion_confint(f + 1, n, alpha=2 * 0.05 / k, method="beta")[1]
                assert above >= pj
            assert f < c


def test_max_n_too_small_names_the_smallest_that_works():
    p = float(norm.cdf(2.0))
    needed = min_sequential_max_n(p, 0.001)
    with pytest.raises(ValueError, match=f"max_n must be at least {needed}"):
        sequential_looks(needed - 1, 0.001, p)
    looks = sequential_looks(needed, 0.001, p)
    cert, _ = sequential_thresholds(looks, [p], 0.001, 0.001)
    assert cert[-1, 0] <= needed


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sequential_looks(0, 0.001, 0.8), ValueError, "max_n must be a positive"),
        (lambda: sequential_looks(100, 1.5, 0.8), ValueError, "alpha must be in"),
        (lambda: sequential_looks(100, 0.001, 0.4), ValueError, r"p_min must be in \[0.5, 1\)"),
        (lambda: sequential_looks(100, 0.001, 0.8, 1.0), ValueError, "growth must be greater"),
        (lambda: sequential_looks(100, 0.001, 0.8, -2), ValueError, "growth must be positive"),
        (lambda: sequential_looks(1.5, 0.001, 0.8), TypeError, "max_n must be an integer"),
        (lambda: sequential_thresholds((10, 5), [0.8], 0.1, 0.1), ValueError, "increasing"),
        (lambda: sequential_thresholds((10,), [0.9, 0.8], 0.1, 0.1), ValueError, "sorted"),
        (lambda: sequential_thresholds((10,), [1.0], 0.1, 0.1), ValueError, "p_targets"),
        (lambda: sequential_thresholds((10,), [0.8], 0.1, 0.0), ValueError, "beta must be in"),
        (lambda: clopper_pearson_upper(5, 3, 0.1), ValueError, "count must be in"),
        (lambda: clopper_pearson_upper(0.5, 3, 0.1), TypeError, "count and n must be integers"),
        (lambda: randomized_clopper_pearson_lower(1, 3, 0.1, 0.0), ValueError, "u must be"),
        (lambda: radius_to_probability(-1.0, 0.5), ValueError, "radius must be non-negative"),
        (lambda: radius_to_probability(1.0, 0.0), ValueError, "sigma must be positive"),
        (lambda: sequential_operating_characteristic(1.2, (5,), [5], [1]), ValueError, "p must"),
        (lambda: sequential_operating_characteristic(0.5, (5, 9), [5], [1]), ValueError, "shape"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------- operating characteristic
@pytest.mark.parametrize(("radii", "sigma", "alpha", "max_n", "growth"), SCHEDULES)
def test_exact_false_certificate_probability_is_at_most_alpha(radii, sigma, alpha, max_n, growth):
    p, looks, cert, fut = _schedule(radii, sigma, alpha, max_n, growth)
    for j, pj in enumerate(p):
        at = sequential_operating_characteristic(float(pj), looks, cert, fut)
        assert at.certify[j] <= alpha
        assert at.certify[j] > 0.2 * alpha  # Bonferroni is conservative, not vacuous
        below = sequential_operating_characteristic(float(pj) - 0.01, looks, cert, fut)
        assert below.certify[j] <= at.certify[j]
        total = at.certify + at.ruled_out + at.undecided
        np.testing.assert_allclose(total, 1.0, atol=1e-9)


def test_operating_characteristic_single_target_by_direct_enumeration():
    # a tiny schedule enumerated by brute force over every path of counts
    looks, p = (4, 7, 10), 0.7
    cert = np.array([4, 7, 9])
    fut = np.array([0, 2, 5])
    oc = sequential_operating_characteristic(p, looks, cert, fut)
    p_cert = p_fut = e_n = 0.0
    for a1 in range(5):
        w1 = binom.pmf(a1, 4, p)
        if a1 >= 4 or a1 <= 0:
            p_cert += w1 * (a1 >= 4)
            p_fut += w1 * (a1 <= 0)
            e_n += w1 * 4
            continue
        for d2 in range(4):
            a2, w2 = a1 + d2, w1 * binom.pmf(d2, 3, p)
            if a2 >= 7 or a2 <= 2:
                p_cert += w2 * (a2 >= 7)
                p_fut += w2 * (a2 <= 2)
                e_n += w2 * 7
                continue
            for d3 in range(4):
                a3, w3 = a2 + d3, w2 * binom.pmf(d3, 3, p)
                p_cert += w3 * (a3 >= 9)
                p_fut += w3 * (a3 <= 5)
                e_n += w3 * 10
    assert oc.certify[0] == pytest.approx(p_cert, abs=1e-12)
    assert oc.ruled_out[0] == pytest.approx(p_fut, abs=1e-12)
    assert oc.expected_samples == pytest.approx(e_n, abs=1e-9)


def _monte_carlo(p, looks, cert, fut, runs, rng):
    """Simulate the grid procedure on Bernoulli streams: returns certified [runs, J], samples."""
    num_targets = cert.shape[1]
    count = np.zeros(runs, dtype=np.int64)
    jc = np.zeros(runs, dtype=np.int64)
    ju = np.full(runs, num_targets)
    used = np.zeros(runs, dtype=np.int64)
    active = np.ones(runs, dtype=bool)
    previous = 0
    for k, n in enumerate(looks):
        idx = np.nonzero(active)[0]
        count[idx] += rng.binomial(n - previous, p, idx.size)
        previous = n
        used[idx] = n
        jc[idx] = np.maximum(jc[idx], (count[idx, None] >= cert[k]).sum(1))
        ju[idx] = np.minimum(ju[idx], (count[idx, None] > fut[k]).sum(1))
        active[idx] = jc[idx] < ju[idx]
    certified = np.arange(num_targets)[None, :] < jc[:, None]
    return certified, used


@pytest.mark.parametrize("p", [0.7, 0.86, 0.93])
def test_operating_characteristic_agrees_with_monte_carlo(p):
    _, looks, cert, fut = _schedule((0.25, 0.5, 0.75), 0.5, 0.1, 2_000, 1.5)
    oc = sequential_operating_characteristic(p, looks, cert, fut)
    runs = 20_000
    certified, used = _monte_carlo(p, looks, cert, fut, runs, np.random.default_rng(1))
    for j in range(cert.shape[1]):
        se = math.sqrt(max(oc.certify[j] * (1 - oc.certify[j]), 1e-4) / runs)
        assert abs(certified[:, j].mean() - oc.certify[j]) < 4 * se
    se_n = used.std() / math.sqrt(runs)
    assert abs(used.mean() - oc.expected_samples) < 4 * se_n + 1e-9


def test_operating_characteristic_reproduces_the_specification_numbers():
    p, looks, cert, fut = _schedule((0.5,), 0.5, 0.001, 100_000, 1.5)
    assert sequential_operating_characteristic(float(p[0]), looks, cert, fut).certify[
        0
    ] == pytest.approx(6.49e-4, abs=1e-6)
    assert sequential_operating_characteristic(0.9, looks, cert, fut).expected_samples == (
        pytest.approx(694, abs=1)
    )
    near = sequential_operating_characteristic(0.845, looks, cert, fut)
    assert near.certify[0] == pytest.approx(0.27, abs=0.01)
