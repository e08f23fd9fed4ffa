"""Tests of adabin_np.equalization against closed forms, scipy and plain-NumPy brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from adabin_np.equalization import (
    OBJECTIVES,
    EqualizationResult,
    equalization_search,
    kl_divergence_histogram,
    kl_gaussian,
)

SETTINGS = settings(deadline=None, max_examples=40,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# plain-NumPy references
# ----------------------------------------------------------------------------------------------


def q_loss(x, alpha, beta):
    """Mean squared error of Q(x) = beta + alpha*sign(x - beta), sign(0) = +1."""
    s = np.where(x >= beta, 1.0, -1.0)
    return float(np.mean((x - (beta + alpha * s)) ** 2))


def brute_l2_splits(x):
    """All threshold partitions of the sorted values, levels = group means, loss with Q."""
    v = np.sort(x)
    best = np.inf
    if v[0] == v[-1]:
        return 0.0
    for m in range(1, v.size):
        if v[m - 1] == v[m]:
            continue
        b1, b2 = v[:m].mean(), v[m:].mean()
        best = min(best, q_loss(x, (b2 - b1) / 2, (b1 + b2) / 2))
    return best


def brute_l2_beta_sweep(x, num=4001):
    """Dense sweep over beta (plus data points and midpoints) with alpha = mean|x - beta|."""
    v = np.unique(x)
    betas = np.concatenate([np.linspace(v[0], v[-1], num), v, (v[1:] + v[:-1]) / 2])
    d = np.abs(x[None, :] - betas[:, None])
    alphas = d.mean(axis=1)
    losses = np.mean((d - alphas[:, None]) ** 2, axis=1)
    return float(losses.min())


def code_entropy_bits(x, beta):
    p = np.mean(x < beta)
    return float(stats.entropy([p, 1 - p], base=2))


weights = st.builds(
    lambda o, shape, log_scale, offset, dist, seed: _make_weights(o, shape, 10.0 ** log_scale,
                                                                  offset, dist, seed),
    st.integers(1, 4),
    st.sampled_from([(2,), (7,), (33,), (3, 3, 3), (1, 1, 1), (8, 1, 1), (5, 2, 3)]),
    st.floats(-3, 3),
    st.floats(-10, 10),
    st.sampled_from(["normal", "uniform", "laplace", "bimodal"]),
    st.integers(0, 2**32 - 1),
)


def _make_weights(o, shape, scale, offset, dist, seed):
    rng = np.random.default_rng(seed)
    size = (o,) + shape
    if dist == "normal":
        z = rng.normal(size=size)
    elif dist == "uniform":
        z = rng.uniform(-1, 1, size=size)
    elif dist == "laplace":
        z = rng.laplace(size=size)
    else:
        z = rng.choice([-1.0, 2.0], size=size) + 0.1 * rng.normal(size=size)
    return scale * (z + offset)


# ----------------------------------------------------------------------------------------------
# kl_gaussian / kl_divergence_histogram
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu,sigma,beta,alpha", [
    (0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 1.5), (2.0, 0.1, 2.5, 0.3), (-1.0, 2.0, 1.0, 0.7),
    (1e3, 1e2, 1.1e3, 2e2),
])
def test_kl_gaussian_matches_numerical_integration(mu, sigma, beta, alpha):
    p, q = stats.norm(mu, sigma), stats.norm(beta, alpha)

    def integrand(x):
        return p.pdf(x) * (p.logpdf(x) - q.logpdf(x))

    ref, _ = integrate.quad(integrand, mu - 40 * sigma, mu + 40 * sigma, points=[mu],
                            epsabs=1e-13, epsrel=1e-11, limit=200)
    assert kl_gaussian(mu, sigma, beta, alpha) == pytest.approx(ref, rel=1e-8, abs=1e-12)
    # only |alpha| enters
    assert kl_gaussian(mu, sigma, beta, -alpha) == kl_gaussian(mu, sigma, beta, alpha)


def test_kl_gaussian_matches_discretised_densities():
    rng = np.random.default_rng(1)
    x = np.linspace(-30, 30, 200001)
    for _ in range(5):
        mu, beta = rng.normal(size=2)
        sigma, alpha = rng.uniform(0.5, 2.0, size=2)
        p = stats.norm.pdf(x, mu, sigma)
        q = stats.norm.pdf(x, beta, alpha)
        ref = stats.entropy(p, q)
        assert kl_divergence_histogram(p, q) == pytest.approx(ref, rel=1e-12)
        assert kl_gaussian(mu, sigma, beta, alpha) == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_kl_gaussian_vectorised_minimum_and_degenerate():
    mu = np.array([0.0, 1.0, -2.0])[:, None]
    sigma = np.array([1.0, 0.5, 3.0])[:, None]
    out = kl_gaussian(mu, sigma, mu, sigma * np.array([1.0, 1.0 + 1e-7]))
    assert out.shape == (3, 2)
    assert np.all(out[:, 0] == 0.0)
    # near the minimum KL ~ t^2 with t = log(alpha/sigma): the stable form keeps precision
    assert out[:, 1] == pytest.approx(np.log1p(1e-7) ** 2, rel=1e-6)
    # larger distance from the minimum always costs more
    assert kl_gaussian(0.0, 1.0, 0.1, 1.0) < kl_gaussian(0.0, 1.0, 0.2, 1.0)
    assert kl_gaussian(0.0, 0.0, 0.0, 1.0) == np.inf
    assert kl_gaussian(0.0, 1.0, 0.0, 0.0) == np.inf
    assert isinstance(kl_gaussian(0.0, 1.0, 0.5, 2.0), float)
    with pytest.raises(ValueError, match="sigma"):
        kl_gaussian(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="mu"):
        kl_gaussian(np.nan, 1.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="alpha"):
        kl_gaussian(0.0, 1.0, 0.0, 1j)


def test_kl_divergence_histogram_eps_and_zeros():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(4, 10))
    q = rng.uniform(size=(4, 10))
    np.testing.assert_allclose(kl_divergence_histogram(p, q), stats.entropy(p, q, axis=-1),
                               rtol=1e-12)
    np.testing.assert_allclose(kl_divergence_histogram(p.T, q.T, axis=0),
                               stats.entropy(p, q, axis=-1), rtol=1e-12)
    assert kl_divergence_histogram([1, 1], [1, 1]) == 0.0
    # p = 0 terms vanish; q = 0 < p is infinite unless smoothed
    assert kl_divergence_histogram([1, 0], [1, 1]) == pytest.approx(math.log(2))
    assert kl_divergence_histogram([1, 1], [1, 0]) == np.inf
    eps = 1e-3
    qs = (np.array([1.0, 0.0]) + eps) / (1 + 2 * eps)
    assert kl_divergence_histogram([1, 1], [1, 0], eps=eps) == pytest.approx(
        stats.entropy([0.5, 0.5], qs), rel=1e-12)
    with pytest.raises(ValueError, match="eps"):
        kl_divergence_histogram([1, 1], [1, 1], eps=-1.0)
    with pytest.raises(ValueError, match="q"):
        kl_divergence_histogram([1, 1], [1, -1])
    with pytest.raises(ValueError, match="positive sum"):
        kl_divergence_histogram([0, 0], [1, 1])


# ----------------------------------------------------------------------------------------------
# "kl": moment matching by search
# ----------------------------------------------------------------------------------------------


@SETTINGS
@given(weights)
def test_kl_search_recovers_mean_and_population_std(w):
    res = equalization_search(w, "kl")
    x = w.reshape(w.shape[0], -1)
    mu, sd = x.mean(axis=1), x.std(axis=1)
    const = x.min(axis=1) == x.max(axis=1)
    ok = ~const
    assert res.alpha.dtype == np.float64 and res.alpha.shape == (w.shape[0],)
    # required: 1e-3 relative; measured: ~1e-12
    np.testing.assert_allclose(res.alpha[ok], sd[ok], rtol=1e-9, atol=0)
    tol_beta = 1e-9 * sd[ok] + 8 * np.spacing(np.abs(mu[ok]))
    assert np.all(np.abs(res.beta[ok] - mu[ok]) <= tol_beta)
    assert np.all(res.loss[ok] >= 0) and np.all(res.loss[ok] < 1e-15)
    assert np.all(res.alpha[const] == 0) and np.all(res.beta[const] == x[const, 0])
    # the lattice brackets the minimiser and holds kl_gaussian values
    ls = res.landscape
    assert ls.loss.shape == (w.shape[0], 64, 64)
    assert np.all(ls.alpha[ok, 0] <= sd[ok]) and np.all(sd[ok] <= ls.alpha[ok, -1])
    assert np.all(ls.beta[ok, 0] <= mu[ok] + 1e-12 * sd[ok])
    assert np.all(mu[ok] <= ls.beta[ok, -1] + 1e-12 * sd[ok])
    for o in np.flatnonzero(ok)[:1]:
        ref = kl_gaussian(mu[o], sd[o], ls.beta[o][None, :], ls.alpha[o][:, None])
        np.testing.assert_allclose(ls.loss[o], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("grid", [4, 5, 17, 64])
def test_kl_search_converges_for_any_grid(grid):
    rng = np.random.default_rng(grid)
    w = np.zeros((4, 50))
    w[:2] = rng.normal(5.0, 0.01, size=(2, 50))
    w[2] = rng.uniform(-1e3, 1e3, size=50)
    w[3, :2] = (-1.0, 1.0)  # outlier pair: std = range/sqrt(2n), the lower bound
    res = equalization_search(w, "kl", grid=grid)
    np.testing.assert_allclose(res.alpha, w.std(axis=1), rtol=1e-9)
    np.testing.assert_allclose(res.beta, w.mean(axis=1), rtol=0, atol=1e-9 * w.std(axis=1).max())
    coarse = equalization_search(w, "kl", grid=grid, refine=False)
    assert np.all(coarse.loss >= res.loss)
    # refine=False is exactly the lattice minimum
    np.testing.assert_allclose(coarse.loss, coarse.landscape.loss.min(axis=(1, 2)), rtol=1e-12,
                               atol=0)


def test_kl_search_agrees_with_weight_binary_set():
    binarize = pytest.importorskip("adabin_np.binarize")
    if not hasattr(binarize, "weight_binary_set"):
        pytest.skip("weight_binary_set not available")
    w = np.random.default_rng(3).normal(0.02, 0.1, size=(16, 8, 3, 3))
    alpha, beta = binarize.weight_binary_set(w)
    res = equalization_search(w, "kl")
    np.testing.assert_allclose(res.alpha, alpha, rtol=1e-9)
    np.testing.assert_allclose(res.beta, beta, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# "l2": exact 2-means
# ----------------------------------------------------------------------------------------------


l2_weights = st.one_of(
    weights.filter(lambda w: w[0].size <= 60),
    st.builds(lambda seed, n, k: np.random.default_rng(seed).integers(-k, k + 1, size=(2, n))
              .astype(np.float64), st.integers(0, 2**32 - 1), st.integers(1, 40),
              st.integers(1, 4)),
)


@SETTINGS
@given(l2_weights)
def test_l2_is_global_optimum(w):
    res = equalization_search(w, "l2")
    x2 = w.reshape(w.shape[0], -1)
    for o, x in enumerate(x2):
        scale = max(float(np.var(x)), np.finfo(float).tiny)
        loss = res.loss[o]
        assert res.alpha[o] >= 0
        assert loss == pytest.approx(q_loss(x, res.alpha[o], res.beta[o]), rel=1e-9,
                                     abs=1e-14 * scale)
        tol = 1e-12 * scale
        assert loss <= brute_l2_splits(x) + tol
        assert loss <= brute_l2_beta_sweep(x) + tol
        # better than (or equal to) moment matching and the median/mean-abs rule
        mu, sd = x.mean(), x.std()
        assert loss <= q_loss(x, sd, mu) + tol
        assert loss <= q_loss(x, np.mean(np.abs(x - mu)), mu) + tol
        # the coarse lattice never beats the exact search
        coarse = equalization_search(w, "l2", grid=16, refine=False)
        assert coarse.loss[o] >= loss - tol
        # optimal alpha for the returned beta (first-order condition of the docstring proof)
        if res.alpha[o] > 0:
            assert res.alpha[o] == pytest.approx(np.mean(np.abs(x - res.beta[o])), rel=1e-9)


@SETTINGS
@given(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3), st.integers(2, 200),
       st.integers(0, 2**32 - 1))
def test_l2_recovers_two_point_distribution(a, gap, n, seed):
    b = a + gap
    rng = np.random.default_rng(seed)
    x = rng.choice([a, b], size=n)
    x[0], x[1] = a, b  # both points present
    res = equalization_search(x.reshape(1, -1, 1), "l2")
    lo, hi = res.beta[0] - res.alpha[0], res.beta[0] + res.alpha[0]
    tol = 4 * np.spacing(max(abs(a), abs(b)))
    assert abs(lo - a) <= tol and abs(hi - b) <= tol
    assert res.loss[0] <= tol ** 2
    assert np.all(np.where(x >= res.beta[0], b, a) == x)  # codes reproduce the points


def test_l2_landscape_is_the_loss():
    w = np.random.default_rng(4).normal(size=(3, 20))
    res = equalization_search(w, "l2", grid=9)
    ls = res.landscape
    assert ls.alpha.shape == (3, 9) and ls.beta.shape == (3, 9) and ls.loss.shape == (3, 9, 9)
    for o in range(3):
        ref = np.array([[q_loss(w[o], a, b) for b in ls.beta[o]] for a in ls.alpha[o]])
        np.testing.assert_allclose(ls.loss[o], ref, rtol=1e-10, atol=1e-14)
        assert ls.alpha[o, 0] == 0.0
        assert ls.beta[o, 0] == w[o].min() and ls.beta[o, -1] == w[o].max()


# ----------------------------------------------------------------------------------------------
# "entropy": balanced codes
# ----------------------------------------------------------------------------------------------


@SETTINGS
@given(weights)
def test_entropy_balances_codes_for_distinct_values(w):
    res = equalization_search(w, "entropy")
    for o, x in enumerate(w.reshape(w.shape[0], -1)):
        if np.unique(x).size != x.size or x.size == 1:
            continue
        pos = np.count_nonzero(x >= res.beta[o])
        neg = x.size - pos
        assert abs(pos - neg) <= 1
        assert res.beta[o] == np.median(x)
        assert res.alpha[o] == pytest.approx(np.mean(np.abs(x - res.beta[o])), rel=1e-12)
        assert res.loss[o] == pytest.approx(-code_entropy_bits(x, res.beta[o]), abs=1e-12)
        if x.size % 2 == 0:
            assert res.loss[o] == -1.0


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(2, 30), st.integers(1, 3))
def test_entropy_with_ties_is_maximal(seed, n, k):
    x = np.random.default_rng(seed).integers(-k, k + 1, size=n).astype(float)
    res = equalization_search(x[None, :], "entropy")
    v = np.unique(x)
    candidates = np.concatenate([v, (v[1:] + v[:-1]) / 2])
    best = max(code_entropy_bits(x, b) for b in candidates)
    got = code_entropy_bits(x, res.beta[0])
    assert got == pytest.approx(best, abs=1e-12)
    assert got >= code_entropy_bits(x, np.median(x)) - 1e-12
    assert res.loss[0] == pytest.approx(-got, abs=1e-12)


def test_entropy_prefers_gap_when_median_is_tied():
    res = equalization_search(np.array([[0.0, 0.0, 0.0, 1.0]]), "entropy")
    assert res.beta[0] == 0.5  # median 0 would code everything +1 (entropy 0)
    assert res.alpha[0] == 0.5
    assert res.loss[0] == pytest.approx(-stats.entropy([0.75, 0.25], base=2))


# ----------------------------------------------------------------------------------------------
# constant filters, layouts, validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("refine", [True, False])
def test_constant_filters(objective, refine):
    w = np.random.default_rng(5).normal(size=(4, 2, 3, 3))
    w[0] = 0.1
    w[2] = -7.0
    w[3] = 0.0
    res = equalization_search(w, objective, refine=refine)
    assert isinstance(res, EqualizationResult) and res.objective == objective
    for arr in (res.alpha, res.beta, res.loss):
        assert arr.shape == (4,) and arr.dtype == np.float64 and not np.isnan(arr).any()
    assert not np.isnan(res.landscape.loss).any()
    for o, c in ((0, 0.1), (2, -7.0), (3, 0.0)):
        assert res.alpha[o] == 0.0 and res.beta[o] == c and res.loss[o] == 0.0
    assert res.alpha[1] > 0
    # single-element channels are constant too
    one = equalization_search(np.array([[3.0], [-1.0]]), objective, refine=refine)
    np.testing.assert_array_equal(one.alpha, [0.0, 0.0])
    np.testing.assert_array_equal(one.beta, [3.0, -1.0])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_layout_and_dtype_invariance(objective):
    w = np.random.default_rng(6).normal(size=(6, 3, 3, 3))
    ref = equalization_search(w, objective, grid=8)
    for variant in (np.asfortranarray(w), w[::-1][::-1], w[::-1].copy()[::-1]):
        got = equalization_search(variant, objective, grid=8)
        np.testing.assert_array_equal(got.alpha, ref.alpha)
        np.testing.assert_array_equal(got.beta, ref.beta)
        np.testing.assert_array_equal(got.landscape.loss, ref.landscape.loss)
    wi = np.arange(-12, 12).reshape(2, 12) % 7
    gi = equalization_search(wi, objective, grid=8)
    gf = equalization_search(wi.astype(np.float32), objective, grid=8)
    np.testing.assert_array_equal(gi.alpha, gf.alpha)
    np.testing.assert_array_equal(gi.beta, gf.beta)
    empty = equalization_search(np.zeros((0, 3)), objective, grid=8)
    assert empty.alpha.shape == (0,) and empty.landscape.loss.shape == (0, 8, 8)


def test_validation():
    w = np.ones((2, 3))
    for bad in (np.nan, np.inf, -np.inf):
        wb = np.random.default_rng(0).normal(size=(2, 3))
        wb[1, 2] = bad
        with pytest.raises(ValueError, match="w"):
            equalization_search(wb)
    for bad in (w.astype(complex), w.astype(object), w.astype(bool), np.full((2, 3), "a")):
        with pytest.raises(TypeError, match="w"):
            equalization_search(bad)
    for bad in (np.ones(3), np.float64(1.0)):
        with pytest.raises(ValueError, match="w"):
            equalization_search(bad)
    with pytest.raises(ValueError, match="w"):
        equalization_search(np.ones((2, 0, 3)))
    for bad in ("KL", "mse", None, 1):
        with pytest.raises(ValueError, match="'kl', 'l2', 'entropy'"):
            equalization_search(w, bad)
    for bad in (3, 0, -5):
        with pytest.raises(ValueError, match="grid"):
            equalization_search(w, grid=bad)
    for bad in (4.0, True, "64"):
        with pytest.raises(TypeError, match="grid"):
            equalization_search(w, grid=bad)
    with pytest.raises(TypeError, match="refine"):
        equalization_search(w, refine="yes")
