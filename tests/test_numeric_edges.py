"""Numeric edges of the weight binarization and equalization: scale invariance is part of the
contract (issue 10, section 4).

* ``weight_binary_set``, ``binarize_weights`` and ``equalization_search`` are scale-equivariant
  (``f(c w) = c f(w)``); ``binarize_weights_grad`` is scale-invariant. Powers of two must give
  bit-identical results (multiplying by 2^k is exact); any other ``c`` in 10^[-300, 300] must
  agree to rounding.
* ``ede`` returns the finite value or raises ``ValueError``, never inf/NaN.
* framework tensors that require grad are a ``TypeError`` that says what to pass instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adabin_np as ab

SETTINGS = settings(max_examples=60, deadline=None)

# weights whose every element is at least 1e-3 in magnitude: c*w stays a normal float64 for
# every c in 10^[-300, 300], so a non-power-of-two rescale only rounds each element once
_SHAPES = st.sampled_from([(1, 4), (3, 2, 3, 3), (5, 7), (2, 1, 1, 5)])


@st.composite
def _weights(draw):
    shape = draw(_SHAPES)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    w = np.where(np.abs(w) < 1e-3, np.copysign(1e-3, w), w)
    return w


_DECADES = st.integers(-300, 300)
_POW2 = st.integers(-990, 990)


def _c(decade, mantissa):
    return mantissa * 10.0**decade


@SETTINGS
@given(w=_weights(), k=_POW2)
def test_weight_set_power_of_two_scale_is_bit_exact(w, k):
    c = math.ldexp(1.0, k)
    if np.max(np.abs(w)) * c > 1e307 or np.min(np.abs(w)) * c < 1e-300:
        return  # outside the normal range of float64: not a lossless rescale
    alpha, beta = ab.weight_binary_set(w)
    alpha_c, beta_c = ab.weight_binary_set(c * w)
    np.testing.assert_array_equal(alpha_c, np.ldexp(alpha, k))
    np.testing.assert_array_equal(beta_c, np.ldexp(beta, k))
    np.testing.assert_array_equal(ab.binarize_weights(c * w), np.ldexp(ab.binarize_weights(w), k))
    g = np.random.default_rng(0).normal(size=w.shape)
    np.testing.assert_array_equal(ab.binarize_weights_grad(c * w, g),
                                  ab.binarize_weights_grad(w, g))


@SETTINGS
@given(w=_weights(), decade=_DECADES, mantissa=st.floats(1.0, 9.99))
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_weight_grad_scale_invariant(w, decade, mantissa, convention):
    c = _c(decade, mantissa)
    g = np.random.default_rng(1).normal(size=w.shape)
    ref = ab.binarize_weights_grad(w, g, convention=convention)
    got = ab.binarize_weights_grad(c * w, g, convention=convention)
    scale = np.max(np.abs(ref))
    assert np.all(np.isfinite(got))
    # dW is O(1) here; the rescale rounds each weight once (u moves by ~1e-16)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale)


@SETTINGS
@given(w=_weights(), decade=_DECADES, mantissa=st.floats(1.0, 9.99))
def test_weight_set_scale_equivariant(w, decade, mantissa):
    c = _c(decade, mantissa)
    alpha, beta = ab.weight_binary_set(w)
    alpha_c, beta_c = ab.weight_binary_set(c * w)
    np.testing.assert_allclose(alpha_c / c, alpha, rtol=1e-13)
    np.testing.assert_allclose(beta_c / c, beta, rtol=0, atol=1e-13 * np.max(alpha))
    wb = ab.binarize_weights(c * w)
    np.testing.assert_allclose(wb / c, ab.binarize_weights(w), rtol=1e-13,
                               atol=1e-13 * np.max(np.abs(w)))


@SETTINGS
@given(w=_weights(), decade=_DECADES, mantissa=st.floats(1.0, 9.99),
       objective=st.sampled_from(["kl", "l2", "entropy"]))
def test_equalization_scale_equivariant(w, decade, mantissa, objective):
    c = _c(decade, mantissa)
    ref = ab.equalization_search(w, objective, grid=8)
    got = ab.equalization_search(c * w, objective, grid=8)
    assert np.all(np.isfinite(got.alpha)) and np.all(np.isfinite(got.beta))
    np.testing.assert_allclose(got.alpha / c, ref.alpha, rtol=1e-11)
    np.testing.assert_allclose(got.beta / c, ref.beta, rtol=0, atol=1e-11 * np.max(ref.alpha))
    if objective == "l2":
        # compare in w's units (got / c / c never overflows); inf only where c^2 loss does;
        # a loss below 2.2e-308 is subnormal and only known to a few ulps of 5e-324
        finite = np.isfinite(got.loss)
        subnormal_ulps = 4 * np.finfo(float).smallest_subnormal / c / c
        np.testing.assert_allclose(got.loss[finite] / c / c, ref.loss[finite], rtol=1e-9,
                                   atol=1e-12 * np.max(ref.alpha) ** 2 + subnormal_ulps)
        with np.errstate(over="ignore"):  # max / c is inf for c < 1: nothing may be inf then
            assert np.all(ref.loss[~finite] * c > np.finfo(float).max / c * (1 - 1e-9))
    else:
        np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-9, atol=1e-12)


def test_weight_set_near_float_max():
    alpha, beta = ab.weight_binary_set(np.array([[1e308, 1e308, -1e308, -1e308]]))
    assert alpha[0] == 1e308 and beta[0] == 0.0
    wb = ab.binarize_weights(np.array([[1e308, 1e308, -1e308, -1e308]]))
    np.testing.assert_array_equal(wb, [[1e308, 1e308, -1e308, -1e308]])
    res = ab.equalization_search(np.array([[1e308, 1e308, -1e308, -1e308]]), "kl")
    np.testing.assert_allclose(res.alpha, [1e308], rtol=1e-11)


def test_weight_set_subnormal():
    w = np.array([[3e-320, 5e-320, -3e-320, -5e-320]])
    alpha, beta = ab.weight_binary_set(w)
    # exact: mean 0, population std 4e-320 (rounded to the subnormal grid)
    assert beta[0] == 0.0
    assert abs(alpha[0] - math.sqrt((9 + 25 + 9 + 25) / 4) * 1e-320) <= 5e-324


# ----------------------------------------------------------------------------------------------
# ede
# ----------------------------------------------------------------------------------------------


def _ede_log(u, k, t):
    """Independent evaluation in Python floats via logarithms (never overflows)."""
    z = abs(t * u) if math.isfinite(t * u) else math.inf
    if k == 0 or t == 0:
        return 0.0
    log_mag = math.log(abs(k)) + math.log(abs(t)) + math.log(4.0) - 2 * z \
        - 2 * math.log1p(math.exp(-2 * z))
    if log_mag > 709.78:
        return math.inf
    return math.copysign(math.exp(log_mag), k * t)


@settings(max_examples=300, deadline=None)
@given(u=st.floats(-1e300, 1e300), k=st.floats(-1e300, 1e300), t=st.floats(-1e300, 1e300))
def test_ede_finite_or_value_error(u, k, t):
    expected = _ede_log(u, k, t)
    try:
        got = float(ab.ede(np.array([u]), k=k, t=t)[0])
    except ValueError:
        assert not math.isfinite(expected) or abs(expected) > 1e307
        return
    assert math.isfinite(got)
    # where k*t is finite, ede evaluates the SPEC's (and autograd's) k t (1 - tanh^2): the
    # subtraction has an absolute error of a few ulps of 1, i.e. ~ 4 eps |k t|
    kt = abs(k * t)
    slack = 4 * np.finfo(float).eps * kt if math.isfinite(kt) else 0.0
    assert abs(got - expected) <= 1e-9 * abs(expected) + slack + 1e-300


@settings(max_examples=100, deadline=None)
@given(u=st.floats(-50, 50), decade=st.integers(0, 300))
def test_ede_linear_in_k(u, decade):
    """ede(u, k=c k) = c ede(u, k): finite whenever the product is."""
    c = 10.0**decade
    base = float(ab.ede(u, k=10.0, t=0.1))
    expected = c * base
    if not math.isfinite(expected):
        with pytest.raises(ValueError):
            ab.ede(u, k=10.0 * c, t=0.1)
        return
    got = float(ab.ede(u, k=10.0 * c, t=0.1))
    assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=0.0) or expected == 0.0


def test_ede_huge_k_t_examples():
    # k = t = 1e200, u = 4e-198: z = t u = 400, k t sech^2 z = 1e400 * 4 e^-800 ~ 1.47e53
    got = ab.ede(np.array([4e-198]), k=1e200, t=1e200)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [_ede_log(4e-198, 1e200, 1e200)], rtol=1e-12)
    with pytest.raises(ValueError, match="overflows"):
        ab.ede(np.array([1e-300]), k=1e200, t=1e200)  # true value 1e400: beyond float64


# ----------------------------------------------------------------------------------------------
# framework tensors that require grad
# ----------------------------------------------------------------------------------------------


def _public_calls(bad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 4, 4))
    w = rng.normal(size=(3, 2, 3, 3))
    g = np.ones((1, 3, 4, 4))
    return {
        "binarize_activations(alpha)": lambda: ab.binarize_activations(x, bad, 0.0),
        "binarize_activations(beta)": lambda: ab.binarize_activations(x, 1.0, bad),
        "binarize_activations(x)": lambda: ab.binarize_activations(bad, 1.0, 0.0),
        "binarize_activations_grad(alpha)":
            lambda: ab.binarize_activations_grad(x, bad, 0.0, np.ones_like(x)),
        "adabin_conv2d(alpha)": lambda: ab.adabin_conv2d(x, w, bad, 0.0, padding=1),
        "adabin_conv2d_grad(beta)": lambda: ab.adabin_conv2d_grad(x, w, 1.0, bad, g, padding=1),
        "packed_adabin_conv2d(alpha)": lambda: ab.packed_adabin_conv2d(x, w, bad, 0.0, padding=1),
        "weight_binary_set(w)": lambda: ab.weight_binary_set(bad),
        "equalization_search(w)": lambda: ab.equalization_search(bad),
    }


@pytest.mark.parametrize("name", list(_public_calls(None)))
def test_requires_grad_tensor_is_type_error(name):
    torch = pytest.importorskip("torch")
    shape = () if "alpha" in name or "beta" in name else \
        ((1, 2, 4, 4) if "(x)" in name else (3, 2, 3, 3))
    bad = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"detach\(\)"):
        _public_calls(bad)[name]()
