"""Finite-difference checks of every explicit backward, in plain NumPy (no torch needed).

A straight-through gradient is the exact gradient of a smooth surrogate: with the forward sign
values ``s0`` and surrogate values ``F(v0)`` frozen at the evaluation point,

    phi(x, alpha, beta) = sum(g * (alpha * (F(v) + s0 - F(v0)) + beta))        (paper)
    phi(x, alpha, beta) = sum(g * alpha * (F(v) + s0 - F(v0) + beta))          (official)

has value equal to the real loss at that point and gradient equal to the STE gradient. F is
C^1 (Bi-Real polynomial; k*tanh(t*u) for weights), so central differences converge to it.
"""

import numpy as np
import pytest

import adabin_np as ab

H = 1e-6


def bireal(v):
    return np.where(v < -1, -1.0, np.where(v < 0, 2 * v + v * v, np.where(v < 1, 2 * v - v * v, 1.0)))


def sign(v, convention):
    return np.where(v >= 0, 1.0, -1.0) if convention == "paper" else np.sign(v)


def act_surrogate(x0, a0, b0, convention):
    shape = (1, -1) + (1,) * (x0.ndim - 2)
    v0 = (x0 - b0.reshape(shape)) / a0.reshape(shape)
    frozen = sign(v0, convention) - bireal(v0)

    def act(x, a, b):
        a, b = a.reshape(shape), b.reshape(shape)
        s = bireal((x - b) / a) + frozen
        return a * s + b if convention == "paper" else a * (s + b)

    return act


def weight_surrogate(w0, k, t, convention):
    flat0 = w0.reshape(w0.shape[0], -1)
    beta0 = flat0.mean(1, keepdims=True)
    u0 = (flat0 - beta0) / flat0.std(1, keepdims=True)
    frozen = sign(u0, convention) - k * np.tanh(t * u0)

    def wbin(w):
        flat = w.reshape(w.shape[0], -1)
        beta = flat.mean(1, keepdims=True)
        alpha = flat.std(1, keepdims=True)
        return (alpha * (k * np.tanh(t * (flat - beta) / alpha) + frozen) + beta).reshape(w.shape)

    return wbin


def fd(fun, arr, idx):
    plus, minus = arr.copy(), arr.copy()
    plus[idx] += H
    minus[idx] -= H
    return (fun(plus) - fun(minus)) / (2 * H)


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_grad_matches_finite_differences(convention, per_channel):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 4, 6, 5))
    w = rng.normal(size=(6, 2, 3, 3)) * 0.2
    if per_channel:
        alpha = rng.uniform(0.5, 1.5, 4) * np.array([1, -1, 1, 1])
        beta = rng.normal(size=4) * 0.2
    else:
        alpha, beta = np.array(0.9), np.array(0.1)
    geo = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    k, t = 3.0, 0.4
    y = ab.adabin_conv2d(x, w, alpha, beta, convention=convention, **geo)
    gy = rng.normal(size=y.shape)
    grads = ab.adabin_conv2d_grad(x, w, alpha, beta, gy, convention=convention, k=k, t=t, **geo)

    a_vec = np.broadcast_to(alpha, (4,)).astype(float).copy()
    b_vec = np.broadcast_to(beta, (4,)).astype(float).copy()
    act = act_surrogate(x, a_vec, b_vec, convention)
    wbin = weight_surrogate(w, k, t, convention)

    def loss(x_, w_, a_, b_):
        return float(np.sum(gy * ab.conv2d(act(x_, a_, b_), wbin(w_), **geo)))

    # the surrogate reproduces the real forward at the evaluation point
    np.testing.assert_allclose(ab.conv2d(act(x, a_vec, b_vec), wbin(w), **geo), y, rtol=1e-12,
                               atol=1e-12)
    for idx in [tuple(rng.integers(0, s) for s in x.shape) for _ in range(6)]:
        num = fd(lambda xx: loss(xx, w, a_vec, b_vec), x, idx)
        assert grads.dx[idx] == pytest.approx(num, rel=1e-5, abs=1e-6)
    for idx in [tuple(rng.integers(0, s) for s in w.shape) for _ in range(6)]:
        num = fd(lambda ww: loss(x, ww, a_vec, b_vec), w, idx)
        assert grads.dw[idx] == pytest.approx(num, rel=1e-5, abs=1e-6)
    da = [fd(lambda aa: loss(x, w, aa, b_vec), a_vec, (c,)) for c in range(4)]
    db = [fd(lambda bb: loss(x, w, a_vec, bb), b_vec, (c,)) for c in range(4)]
    if per_channel:
        np.testing.assert_allclose(grads.dalpha, da, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads.dbeta, db, rtol=1e-5, atol=1e-6)
    else:  # a shared scalar: its gradient is the sum over the channels it stands for
        assert grads.dalpha == pytest.approx(sum(da), rel=1e-5, abs=1e-6)
        assert grads.dbeta == pytest.approx(sum(db), rel=1e-5, abs=1e-6)


def test_plain_conv_is_adjoint_of_its_backward():
    """<conv(x, w), g> == <x, conv_T_x(g, w)> == <w, conv_T_w(x, g)> via the binarized path."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 7, 6))
    w = rng.normal(size=(5, 3, 2, 3))
    geo = dict(stride=2, padding=(2, 1), dilation=(2, 1))
    y = ab.conv2d(x, w, **geo)
    g = rng.normal(size=y.shape)
    # linearity in x: directional derivative equals the inner product exactly
    d = rng.normal(size=x.shape)
    lhs = np.sum(g * (ab.conv2d(x + d, w, **geo) - y))
    assert lhs == pytest.approx(np.sum(g * ab.conv2d(d, w, **geo)), rel=1e-10)


def test_constant_filter_gradient_is_mean_of_upstream():
    w = np.full((2, 1, 3, 3), 0.3)
    w[1] = -1.25
    g = np.arange(18, dtype=float).reshape(w.shape)
    dw = ab.binarize_weights_grad(w, g)
    # Wb = beta = mean(W) for a constant filter, so dL/dW_j = sum(g)/n; by hand: sum(0..8)/9 = 4
    np.testing.assert_allclose(dw[0], 4.0)
    np.testing.assert_allclose(dw[1], (9 + 17) / 2)
    np.testing.assert_array_equal(ab.binarize_weights(w), w)
    alpha, beta = ab.weight_binary_set(w)
    np.testing.assert_array_equal(alpha, [0.0, 0.0])
    np.testing.assert_array_equal(beta, [0.3, -1.25])


def test_weight_set_is_mean_and_population_std_by_hand():
    w = np.array([[1.0, 2.0, 3.0, 6.0]])  # mean 3, deviations (-2,-1,0,3): var = 14/4
    alpha, beta = ab.weight_binary_set(w)
    assert beta[0] == 3.0
    assert alpha[0] == pytest.approx(np.sqrt(3.5), rel=1e-15)
    # u = dev/alpha; the element on the mean is a tie: paper +1, official 0
    np.testing.assert_allclose(ab.binarize_weights(w), [[3 - np.sqrt(3.5), 3 - np.sqrt(3.5),
                                                         3 + np.sqrt(3.5), 3 + np.sqrt(3.5)]])
    np.testing.assert_allclose(ab.binarize_weights(w, convention="official"),
                               [[3 - np.sqrt(3.5), 3 - np.sqrt(3.5), 3.0, 3 + np.sqrt(3.5)]])


def test_ede_schedule_endpoints():
    assert ab.ede_schedule(0, 10) == pytest.approx((1000.0, 1e-3))
    assert ab.ede_schedule(10, 10) == pytest.approx((1.0, 10.0))
    k, t = ab.ede_schedule(7.5, 10)  # t = 10^(-3 + 3) = 1 -> k = max(1, 1)
    assert (k, t) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="epoch"):
        ab.ede_schedule(11, 10)
