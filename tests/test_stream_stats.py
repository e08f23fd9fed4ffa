"""Mergeable statistics (adabin_np.distributions.stats): any split of the data, merged in any
order, gives the statistics of the whole data (integers exactly, floats to 1e-9), and those
equal direct NumPy computations of the same definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from adabin_np import testing as abt
from adabin_np.distributions import FLIP_RISK_LADDER
from adabin_np.distributions.stats import (ActivationStats, BottomK, Moments, splitmix64)
from adabin_np.distributions.summary import activation_entry, layer_spec

RTOL = 1e-9


def _close(a, b, path=""):
    """ints/bools/str exactly, floats to RTOL (relative to the larger magnitude, abs 1e-12)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, float), (path, a, b)
        assert a == b or abs(a - b) <= RTOL * max(abs(a), abs(b)) + 1e-12, (path, a, b)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def _split(n, cuts):
    pts = sorted({c % (n + 1) for c in cuts} | {0, n})
    return list(zip(pts[:-1], pts[1:]))


def _merge_tree(parts, order):
    """Merge ``parts`` pairwise in an order drawn by hypothesis (any tree shape)."""
    parts = list(parts)
    for o in order:
        if len(parts) == 1:
            break
        i = o % (len(parts) - 1)
        parts[i:i + 2] = [parts[i].merge(parts[i + 1])]
    while len(parts) > 1:
        parts[-2:] = [parts[-2].merge(parts[-1])]
    return parts[0]


@st.composite
def layer_data(draw):
    n = draw(st.integers(1, 12))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 4))
    per_channel = draw(st.booleans())
    convention = draw(st.sampled_from(["paper", "official"]))
    if per_channel:
        alpha = np.array(draw(st.lists(st.sampled_from([0.5, 1.0, -2.0, 3e-3]), min_size=c,
                                       max_size=c)))
        beta = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, -1.0]), min_size=c,
                                      max_size=c)))
    else:
        alpha = draw(st.sampled_from([0.7, 1.0, -1.5, 1e-3]))
        beta = draw(st.sampled_from([0.0, 0.3, -0.2]))
    elems = st.one_of(st.floats(-10, 10, allow_nan=False), st.sampled_from([0.0, 0.25, 0.3,
                                                                           -0.2, -1.0, 1e-7]))
    x = draw(hnp.arrays(np.float64, (n, c, h, h), elements=elems))
    k = draw(st.sampled_from([16, 40, 1000]))
    return x, alpha, beta, convention, k


def _spec(x, alpha, beta, convention, k, tol=1e-3, conv=None, weight=None):
    c = x.shape[1]
    w = np.random.default_rng(0).standard_normal((4, c, 3, 3)) if weight is None else weight
    return layer_spec("L", w, alpha, beta, convention, tol=tol, conv=conv, max_samples=k,
                      seed=3, index=1), w


@settings(max_examples=60, deadline=None)
@given(layer_data(), st.lists(st.integers(0, 20), max_size=6),
       st.lists(st.integers(0, 100), max_size=10))
def test_any_split_any_merge_order_gives_the_same_statistics(data, cuts, order):
    x, alpha, beta, convention, k = data
    spec, _ = _spec(x, alpha, beta, convention, k, conv={"stride": 1, "padding": 1,
                                                         "dilation": 1, "groups": 1})
    whole = ActivationStats(spec)
    whole.update(x, 0)
    parts = []
    for s, e in _split(x.shape[0], cuts):
        p = ActivationStats(spec)
        p.update(x[s:e], s)
        parts.append(p)
    merged = _merge_tree(parts, order)
    objectives = ("kl",)
    _close(activation_entry(merged, objectives), activation_entry(whole, objectives))
    # the equalization sample is the same set in the same (key) order, bit for bit
    np.testing.assert_array_equal(merged.sample_matrix(), whole.sample_matrix())


@settings(max_examples=40, deadline=None)
@given(layer_data())
def test_statistics_equal_direct_definitions(data):
    x, alpha, beta, convention, k = data
    tol = 1e-3
    spec, w = _spec(x, alpha, beta, convention, k, tol=tol)
    stt = ActivationStats(spec)
    stt.update(x, 0)
    e = activation_entry(stt, ())
    mask = abt.flip_risk(x, alpha, beta, tol=tol)
    a = np.asarray(alpha, np.float64).reshape((1, -1, 1, 1) if np.ndim(alpha) else ())
    b = np.asarray(beta, np.float64).reshape((1, -1, 1, 1) if np.ndim(beta) else ())
    v = (x - b) / a
    assert e["flip_risk"]["count"] == int(mask.sum())
    assert e["flip_risk"]["exact_zero"] == int(np.sum(x == b))
    np.testing.assert_array_equal(np.asarray(e["flip_risk"]["per_channel"]) * x[:, 0].size,
                                  mask.sum(axis=(0, 2, 3)))
    up = (v > 0) if convention == "official" else (v >= 0)
    assert e["levels"] == {"b1": int(np.sum(v < 0)), "b2": int(up.sum()),
                           "zero": int(np.sum(v == 0)) if convention == "official" else 0}
    r = np.abs(x - b) / (np.abs(x) + np.abs(b) + np.abs(a))
    assert e["flip_risk_curve"]["count"] == [int(np.sum(r <= t)) for t in FLIP_RISK_LADDER]
    data_ = v if np.ndim(alpha) else x
    h = e["histogram"]
    counts, _ = np.histogram(data_, bins=np.asarray(h["edges"]))
    assert h["counts"] == counts.tolist()
    assert h["below"] + h["above"] + sum(h["counts"]) == x.size
    g = e["gaussian"]
    np.testing.assert_allclose(g["mean"], x.mean(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g["std"], x.std(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e["channel_mean"], x.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e["channel_std"], x.std(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)


def test_histogram_edges_fixed_by_the_set_before_data():
    # the edges depend on the binary set only: two different data sets share them
    x1 = np.random.default_rng(1).normal(size=(4, 2, 3, 3))
    spec, _ = _spec(x1, 0.5, 0.1, "official", 64)
    s1, s2 = ActivationStats(spec), ActivationStats(spec)
    s1.update(x1, 0)
    s2.update(100 * x1, 0)
    e1, e2 = activation_entry(s1, ()), activation_entry(s2, ())
    assert e1["histogram"]["edges"] == e2["histogram"]["edges"]
    edges = e1["histogram"]["edges"]
    # x-space edges cover beta -+ 8|alpha| and both official levels alpha(beta -+ 1)
    assert edges[0] <= min(0.1 - 8 * 0.5, 0.5 * (0.1 - 1)) and edges[-1] >= 0.1 + 8 * 0.5
    assert e2["histogram"]["above"] + e2["histogram"]["below"] > 0


def test_moments_against_scipy_and_extreme_splits():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    x = 1e6 + rng.gamma(2.0, 3.0, size=5000)  # a large offset: the naive sums would cancel
    whole = Moments.of(x)
    single = Moments()
    for v in x[:200]:
        single = single.merge(Moments.of([v]))  # one element at a time
    ref = {"mean": x.mean(), "std": x.std(), "skew": scipy_stats.skew(x),
           "excess_kurtosis": scipy_stats.kurtosis(x)}
    got = whole.summary()
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-9, abs=1e-9), key
    ref200 = Moments.of(x[:200]).summary()
    for key, val in ref200.items():
        assert single.summary()[key] == pytest.approx(val, rel=1e-8, abs=1e-9), key
    # scale-free: tiny and huge samples give the same shape statistics, no under/overflow
    for scale in (2.0 ** -1000, 2.0 ** 1000):
        got = Moments.of((x - 1e6) * scale).merge(Moments.of([])).summary()
        assert got["skew"] == pytest.approx(ref["skew"], rel=1e-6)
        assert got["excess_kurtosis"] == pytest.approx(ref["excess_kurtosis"], rel=1e-6)
        assert got["std"] == pytest.approx(ref["std"] * scale, rel=1e-6)
    # merging with an empty accumulator is the identity; a constant has std 0
    assert Moments().merge(whole).summary() == whole.summary()
    assert Moments.of(np.full(7, 2.5)).summary() == {"mean": 2.5, "std": 0.0, "skew": 0.0,
                                                     "excess_kurtosis": 0.0}


def test_bottom_k_is_a_seeded_uniform_sample_without_replacement():
    # splitmix64 is a bijection: distinct indices, distinct keys
    keys = splitmix64(np.arange(100_000, dtype=np.uint64))
    assert np.unique(keys).size == keys.size
    vals = np.arange(10_000, dtype=np.float64)
    s = BottomK.of(500, vals, np.arange(10_000), 42)
    assert s.values.size == 500 and np.unique(s.values).size == 500
    # roughly uniform over the index range (a biased selection would fail this)
    assert 4000 < s.values.mean() < 6000
    other = BottomK.of(500, vals, np.arange(10_000), 43)
    assert not np.array_equal(np.sort(s.values), np.sort(other.values))  # the salt matters
    # two halves merged == the whole, in the same order
    h = BottomK.of(500, vals[:3000], np.arange(3000), 42).merge(
        BottomK.of(500, vals[3000:], np.arange(3000, 10_000), 42))
    np.testing.assert_array_equal(h.ordered(), s.ordered())


def test_merge_refuses_other_layers_and_shapes():
    x = np.zeros((2, 1, 2, 2))
    spec, _ = _spec(x, 1.0, 0.0, "paper", 16)
    a = ActivationStats(spec)
    a.update(x, 0)
    b = ActivationStats(spec)
    b.update(np.zeros((2, 1, 3, 3)), 2)
    with pytest.raises(ValueError, match="shapes"):
        a.merge(b)
    with pytest.raises(ValueError, match="differs"):
        a.update(np.zeros((1, 1, 3, 3)), 2)
    spec2 = layer_spec("M", np.ones((1, 1, 1, 1)), 1.0, 0.0, "paper", tol=1e-5)
    with pytest.raises(ValueError, match="layers"):
        a.merge(ActivationStats(spec2))
    assert math.isfinite(activation_entry(a, ())["gaussian"]["std"])
