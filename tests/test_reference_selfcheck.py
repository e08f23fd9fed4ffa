"""Self-checks of the reference specification (``reference/``).

The reference is the oracle for the fast kernels, so it is checked here independently of its
own code paths: hand-computed tiny cases (worked out in the comments), finite differences of
the smooth parts (straight-through surrogate), adjoint identities, SciPy's correlate, the
packed formula against the float path, and reproduction of the stored golden files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

import reference as ref
from reference import make_golden

RNG = np.random.default_rng


# --------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------
def test_signs_by_hand():
    v = np.array([-2.0, -0.0, 0.0, 1e-300, 3.0])
    np.testing.assert_array_equal(ref.sign_paper(v), [-1, 1, 1, 1, 1])
    np.testing.assert_array_equal(ref.sign_official(v), [-1, 0, 0, 1, 1])


def test_weight_binary_set_by_hand():
    # filter 0 = [1, 2, 3, 6]: mean 3, deviations -2, -1, 0, 3,
    # variance (4 + 1 + 0 + 9)/4 = 3.5, alpha = sqrt(3.5); u = [-2, -1, 0, 3]/sqrt(3.5).
    # filter 1 = [0.1]*4 (constant): beta exactly 0.1, alpha exactly 0.
    w = np.array([[1.0, 2.0, 3.0, 6.0], [0.1, 0.1, 0.1, 0.1]])
    alpha, beta = ref.weight_binary_set(w)
    assert beta[0] == 3.0 and beta[1] == 0.1
    assert alpha[0] == pytest.approx(math.sqrt(3.5), rel=1e-15) and alpha[1] == 0.0
    a = math.sqrt(3.5)
    # paper: u >= 0 -> upper level, so the element at the mean (u = 0) goes up
    np.testing.assert_allclose(ref.binarize_weights(w)[0], [3 - a, 3 - a, 3 + a, 3 + a])
    # official: sign(0) = 0, the element at the mean stays at beta
    np.testing.assert_allclose(ref.binarize_weights(w, convention="official")[0],
                               [3 - a, 3 - a, 3, 3 + a])
    # constant filter binarises to beta exactly, in both conventions
    for conv in ("paper", "official"):
        np.testing.assert_array_equal(ref.binarize_weights(w, convention=conv)[1], 0.1)


def test_constant_filter_rule_beats_floating_mean():
    # 27 copies of -1.265 (and 3 copies of 0.1): the floating mean (fsum, pairwise or naive)
    # is off by an ulp, which would give alpha ~ 1e-16 and Wb = beta +- alpha. The rule gives
    # beta = the value and alpha = 0 exactly.
    w = np.full((2, 3, 3, 3), -1.265)
    w[1] = 0.1
    alpha, beta = ref.weight_binary_set(w)
    np.testing.assert_array_equal(alpha, [0.0, 0.0])
    np.testing.assert_array_equal(beta, [-1.265, 0.1])
    np.testing.assert_array_equal(ref.weight_u(w), 0.0)
    w3 = np.full((1, 3), 0.1)
    a3, b3 = ref.weight_binary_set(w3)
    assert a3[0] == 0.0 and b3[0] == 0.1
    for conv in ("paper", "official"):
        np.testing.assert_array_equal(ref.binarize_weights(w, convention=conv)[0], -1.265)
        np.testing.assert_array_equal(ref.binarize_weights(w3, convention=conv), 0.1)
    # constant filter gradient: dW_j = sum(g)/n, finite
    g = np.arange(54.0).reshape(w.shape)
    dw = ref.binarize_weights_grad(w, g)
    np.testing.assert_allclose(dw[0], g[0].sum() / 27)
    np.testing.assert_allclose(dw[1], g[1].sum() / 27)


def test_weight_binary_set_ignores_layout():
    w = RNG(0).standard_normal((3, 2, 3, 3))
    a1, b1 = ref.weight_binary_set(w)
    a2, b2 = ref.weight_binary_set(np.asfortranarray(w))
    a3, b3 = ref.weight_binary_set(w.reshape(3, -1)[:, ::-1])   # permuted elements
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(b1, b3)                          # fsum: order-independent
    np.testing.assert_allclose(a1, w.reshape(3, -1).std(axis=1), rtol=1e-14)
    np.testing.assert_allclose(b1, w.reshape(3, -1).mean(axis=1), rtol=1e-14)


@pytest.mark.parametrize("k,t", [(10.0, 0.1), (1000.0, 1e-3), (1.0, 10.0), (3.0, 0.7)])
def test_two_element_filter_is_identity(k, t):
    # For a 2-element filter [a, b] (a != b): beta = (a+b)/2, alpha = |a-b|/2, u = -+1, and
    # Wb = beta -+ alpha = [a, b] exactly, i.e. binarisation is the identity. Chain rule with
    # e = EDE(1) = EDE(-1), g = [g1, g2], s = u = [-1, 1] (taking a < b):
    #   G_u = alpha*e*g;  dalpha = (g2 - g1) - e*(g2 - g1) = (g2 - g1)(1 - e)
    #   dbeta = (g1 + g2)(1 - e)
    #   dW_1 = e*g1 + (g1 + g2)(1 - e)/2 - (g2 - g1)(1 - e)/2 = e*g1 + (1 - e)*g1 = g1
    #   dW_2 = e*g2 + (g1 + g2)(1 - e)/2 + (g2 - g1)(1 - e)/2 = g2
    # so dW == g for every k, t: the gradient of an identity map.
    w = np.array([[-0.3, 1.1], [2.0, -4.0]])
    g = np.array([[0.7, -1.9], [3.0, 0.25]])
    for conv in ("paper", "official"):
        np.testing.assert_allclose(ref.binarize_weights(w, convention=conv), w, rtol=1e-15)
        np.testing.assert_allclose(ref.binarize_weights_grad(w, g, k=k, t=t, convention=conv),
                                   g, rtol=1e-12, atol=1e-12)


def test_binarize_activations_by_hand():
    # alpha = 2, beta = 0.5, x = [-1, 0.5, 3] -> v = [-0.75, 0, 1.25]
    # paper: s = [-1, +1, +1] -> 2*s + 0.5 = [-1.5, 2.5, 2.5]
    # official: s = [-1, 0, +1] -> 2*(s + 0.5) = [-1, 1, 3]
    x = np.array([[-1.0, 0.5, 3.0]])
    np.testing.assert_array_equal(ref.binarize_activations(x, 2.0, 0.5), [[-1.5, 2.5, 2.5]])
    np.testing.assert_array_equal(ref.binarize_activations(x, 2.0, 0.5, convention="official"),
                                  [[-1.0, 1.0, 3.0]])


def test_binarize_activations_grad_by_hand():
    # Same x, alpha, beta; g = [1, 2, 3].
    # F'(v) = max(0, 2 - 2|v|) = [0.5, 2, 0];  G = g*F' = [0.5, 4, 0] = dx.
    # paper:    dalpha = sum(g*s) - sum(G*v) = (-1 + 2 + 3) - (0.5*-0.75) = 4.375
    #           dbeta  = sum(g) - sum(G) = 6 - 4.5 = 1.5
    # official: s = [-1, 0, 1]; sum(g*(s + 0.5)) = -0.5 + 1 + 4.5 = 5; minus -0.375 -> 5.375
    #           dbeta  = alpha*sum(g) - sum(G) = 12 - 4.5 = 7.5
    x = np.array([[-1.0, 0.5, 3.0]])
    g = np.array([[1.0, 2.0, 3.0]])
    dx, da, db = ref.binarize_activations_grad(x, 2.0, 0.5, g)
    np.testing.assert_allclose(dx, [[0.5, 4.0, 0.0]])
    assert isinstance(da, float) and isinstance(db, float)
    assert da == pytest.approx(4.375) and db == pytest.approx(1.5)
    dx, da, db = ref.binarize_activations_grad(x, 2.0, 0.5, g, convention="official")
    np.testing.assert_allclose(dx, [[0.5, 4.0, 0.0]])
    assert da == pytest.approx(5.375) and db == pytest.approx(7.5)


def test_per_channel_activation_params_by_hand():
    # x (N=1, C=2): channel 0 alpha 1, beta 0; channel 1 alpha 4, beta 10.
    # x = [[0.5, 9]] -> v = [0.5, -0.25]; paper s = [1, -1] -> [1*1 + 0, 4*-1 + 10] = [1, 6]
    # F' = [1, 1.5]; g = [[2, 1]] -> G = [2, 1.5]
    # dalpha = [g*s - G*v] = [2 - 1, -1 + 0.375] = [1, -0.625]; dbeta = g - G = [0, -0.5]
    x = np.array([[0.5, 9.0]])
    a, b = np.array([1.0, 4.0]), np.array([0.0, 10.0])
    np.testing.assert_allclose(ref.binarize_activations(x, a, b), [[1.0, 6.0]])
    dx, da, db = ref.binarize_activations_grad(x, a, b, np.array([[2.0, 1.0]]))
    np.testing.assert_allclose(dx, [[2.0, 1.5]])
    np.testing.assert_allclose(da, [1.0, -0.625])
    np.testing.assert_allclose(db, [0.0, -0.5])


def test_alpha_zero_is_value_error():
    with pytest.raises(ValueError):
        ref.binarize_activations(np.ones((1, 2)), 0.0, 0.0)
    with pytest.raises(ValueError):
        ref.binarize_activations(np.ones((1, 2)), np.array([1.0, 0.0]), 0.0)


def test_ede_schedule_by_hand():
    # t = 10^(-3 + 4e/E), k = max(1/t, 1)
    assert ref.ede_schedule(0, 10) == pytest.approx((1000.0, 1e-3))
    assert ref.ede_schedule(5, 10) == pytest.approx((10.0, 0.1))     # the defaults
    assert ref.ede_schedule(10, 10) == pytest.approx((1.0, 10.0))    # k clipped at 1
    assert ref.ede_schedule(3, 4) == pytest.approx((1.0, 1.0))
    # EDE(0) = k*t
    assert float(ref.ede(0.0, 10.0, 0.1)) == pytest.approx(1.0)


def test_flip_risk_mask():
    np.testing.assert_array_equal(ref.flip_risk_mask([-0.2, -0.1, 0.0, 0.05, 0.3], 0.1),
                                  [False, True, True, True, False])


def test_conv2d_by_hand():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)          # [[1,2,3],[4,5,6],[7,8,9]]
    ones = np.ones((1, 1, 2, 2))
    # stride 1, no padding: sums of 2x2 windows
    np.testing.assert_array_equal(ref.conv2d(x, ones)[0, 0], [[12, 16], [24, 28]])
    # padding 1, stride 2 -> 2x2 output; windows start at rows/cols -1, 1:
    # (0,0): only x[0,0] = 1; (0,1): x[0,1] + x[0,2] = 5; (1,0): x[1,0] + x[2,0] = 11;
    # (1,1): 5 + 6 + 8 + 9 = 28
    np.testing.assert_array_equal(ref.conv2d(x, ones, stride=2, padding=1)[0, 0],
                                  [[1, 5], [11, 28]])
    # dilation 2: taps at the corners, 1 + 3 + 7 + 9 = 20
    np.testing.assert_array_equal(ref.conv2d(x, ones, dilation=2)[0, 0], [[20]])
    # groups: x = [1, 10] (two channels), w = [[2], [3]], groups 2 -> [2, 30]
    xg = np.array([1.0, 10.0]).reshape(1, 2, 1, 1)
    wg = np.array([2.0, 3.0]).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(ref.conv2d(xg, wg, groups=2).ravel(), [2, 30])
    # same weights as a 1-group conv (w (1, 2, 1, 1)): 2*1 + 3*10 = 32
    np.testing.assert_array_equal(ref.conv2d(xg, wg.reshape(1, 2, 1, 1)).ravel(), [32])


def _conv_via_scipy(x, w, stride, padding, dilation, groups):
    """Independent construction: zero-pad with np.pad, dilate the kernel with zeros,
    correlate at stride 1 with scipy, subsample by the stride, loop over groups."""
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    ph, pw = (padding, padding) if np.ndim(padding) == 0 else padding
    dh, dw = (dilation, dilation) if np.ndim(dilation) == 0 else dilation
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    og = o // groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    wd = np.zeros((o, cg, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    wd[:, :, ::dh, ::dw] = w
    out = []
    for b in range(n):
        rows = []
        for oc in range(o):
            gr = oc // og
            acc = sum(signal.correlate(xp[b, gr * cg + ci], wd[oc, ci], mode="valid")
                      for ci in range(cg))
            rows.append(acc[::sh, ::sw])
        out.append(rows)
    return np.array(out)


def test_conv2d_matches_scipy_correlate_plain():
    rng = RNG(1)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    expect = np.array([[sum(signal.correlate(x[b, c], w[o, c], mode="valid") for c in range(3))
                        for o in range(4)] for b in range(2)])
    np.testing.assert_allclose(ref.conv2d(x, w), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (2, 1, 1, 1), ((2, 1), (0, 2), (1, 2), 1), (1, 2, 2, 2), ((1, 3), 1, 1, 4), (3, (2, 0), 2, 2),
])
def test_conv2d_matches_scipy_construction(stride, padding, dilation, groups):
    rng = RNG(2)
    x = rng.standard_normal((2, 4, 8, 7))
    w = rng.standard_normal((4, 4 // groups, 3, 2))
    got = ref.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    np.testing.assert_allclose(got, _conv_via_scipy(x, w, stride, padding, dilation, groups),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), ((2, 1), (1, 2), (2, 1), 2), (1, 1, 1, 4),
])
def test_conv2d_grads_are_adjoints(stride, padding, dilation, groups):
    # conv2d is bilinear: <conv(x, w), g> = <x, grad_input(g, w)> = <w, grad_weight(x, g)>
    rng = RNG(3)
    x = rng.standard_normal((2, 4, 7, 8))
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = ref.conv2d(x, w, **opts)
    g = rng.standard_normal(y.shape)
    lhs = np.sum(y * g)
    assert np.sum(x * ref.conv2d_grad_input(g, w, x.shape, **opts)) == pytest.approx(lhs)
    assert np.sum(w * ref.conv2d_grad_weight(x, g, w.shape, **opts)) == pytest.approx(lhs)
    # and against finite differences of the (linear) conv for one entry each
    e = np.zeros_like(x)
    e[1, 2, 3, 4] = 1.0
    fd = np.sum(ref.conv2d(x + e, w, **opts) * g) - lhs
    assert ref.conv2d_grad_input(g, w, x.shape, **opts)[1, 2, 3, 4] == pytest.approx(fd, abs=1e-9)


def test_conv2d_matches_torch_if_available():
    torch = pytest.importorskip("torch")
    rng = RNG(4)
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    opts = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3)
    expect = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), **opts)
    np.testing.assert_allclose(ref.conv2d(x, w, **opts), expect.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# finite differences of the smooth parts (straight-through surrogates)
# --------------------------------------------------------------------------------------------
# An STE gradient is the exact gradient of  f(theta) = out(s0 + F(v(theta)) - F(v0))  where s0
# and v0 are frozen at the base point and F is a smooth function with F' = the estimator
# (autograd's "x + (f(x) - x).detach()" trick). The frozen part is constant, so the surrogate
# has a well-defined derivative that finite differences can check.
def _approx_sign(v):
    """Bi-Real ApproxSign: F' = max(0, 2 - 2|v|)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v < -1, -1.0, np.where(v < 0, 2 * v + v * v,
                                           np.where(v < 1, 2 * v - v * v, 1.0)))


def _act_surrogate(x, alpha, beta, s0, v0, convention):
    a = alpha if np.ndim(alpha) == 0 else np.asarray(alpha).reshape(1, -1, *([1] * (x.ndim - 2)))
    b = beta if np.ndim(beta) == 0 else np.asarray(beta).reshape(1, -1, *([1] * (x.ndim - 2)))
    v = (x - b) / a
    s = s0 + _approx_sign(v) - _approx_sign(v0)
    return a * s + b if convention == "paper" else a * (s + b)


def _weight_surrogate(w, s0, u0, k, t):
    alpha, beta = ref.weight_binary_set(w)
    a = alpha.reshape(-1, *([1] * (w.ndim - 1)))
    b = beta.reshape(-1, *([1] * (w.ndim - 1)))
    u = (w - b) / a
    return a * (s0 + k * np.tanh(t * u) - k * np.tanh(t * u0)) + b


def _fd(f, theta, idx, h=1e-6):
    tp, tm = theta.copy(), theta.copy()
    tp[idx] += h
    tm[idx] -= h
    return (f(tp) - f(tm)) / (2 * h)


def test_surrogates_reproduce_forward():
    # sanity of the test harness: at the base point the surrogates equal the binarizers
    rng = RNG(5)
    x = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((3, 2, 2, 2))
    for conv in ("paper", "official"):
        v0 = ref.activation_v(x, 0.7, 0.1)
        s0 = ref.sign_paper(v0) if conv == "paper" else np.sign(v0)
        np.testing.assert_allclose(_act_surrogate(x, 0.7, 0.1, s0, v0, conv),
                                   ref.binarize_activations(x, 0.7, 0.1, convention=conv))
    u0 = ref.weight_u(w)
    np.testing.assert_allclose(_weight_surrogate(w, ref.sign_paper(u0), u0, 10.0, 0.1),
                               ref.binarize_weights(w))


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_activation_grad_finite_differences(convention, per_channel):
    rng = RNG(6)
    x = rng.standard_normal((3, 4, 2, 2)) * 0.8
    g = rng.standard_normal(x.shape)
    if per_channel:
        alpha, beta = np.array([0.7, 1.2, -0.9, 0.5]), np.array([0.1, -0.2, 0.3, 0.0])
    else:
        alpha, beta = 0.7, 0.15
    v0 = ref.activation_v(x, alpha, beta)
    s0 = ref.sign_paper(v0) if convention == "paper" else np.sign(v0)
    dx, da, db = ref.binarize_activations_grad(x, alpha, beta, g, convention=convention)

    loss_x = lambda xx: np.sum(g * _act_surrogate(xx, alpha, beta, s0, v0, convention))
    for idx in [(0, 0, 0, 0), (1, 2, 1, 0), (2, 3, 1, 1), (0, 1, 0, 1)]:
        assert dx[idx] == pytest.approx(_fd(loss_x, x, idx), rel=1e-5, abs=1e-7)
    al, be = np.atleast_1d(np.asarray(alpha, float)), np.atleast_1d(np.asarray(beta, float))
    shp = lambda p: p if per_channel else p[0]
    loss_a = lambda aa: np.sum(g * _act_surrogate(x, shp(aa), beta, s0, v0, convention))
    loss_b = lambda bb: np.sum(g * _act_surrogate(x, alpha, shp(bb), s0, v0, convention))
    for c in range(al.size):
        assert np.ravel(da)[c] == pytest.approx(_fd(loss_a, al, c), rel=1e-5, abs=1e-7)
        assert np.ravel(db)[c] == pytest.approx(_fd(loss_b, be, c), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("k,t", [(10.0, 0.1), (2.0, 1.3)])
def test_weight_grad_finite_differences(convention, k, t):
    rng = RNG(7)
    w = rng.standard_normal((3, 2, 2, 2)) * 0.1 + 0.05
    w[2, 0, 0, 0] = w[2].mean() + 1e-3          # near (not at) the threshold
    g = rng.standard_normal(w.shape)
    u0 = ref.weight_u(w)
    s0 = ref.sign_paper(u0) if convention == "paper" else np.sign(u0)
    dw = ref.binarize_weights_grad(w, g, k=k, t=t, convention=convention)
    loss = lambda ww: np.sum(g * _weight_surrogate(ww, s0, u0, k, t))
    for idx in np.ndindex(w.shape):
        assert dw[idx] == pytest.approx(_fd(loss, w, idx, h=1e-7), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_adabin_conv2d_grad_finite_differences(convention):
    # end to end through padding/stride/dilation/groups: surrogate forward = conv2d of the
    # surrogate binarizations, padding applied after binarization (conv2d's zero padding).
    rng = RNG(8)
    x = rng.standard_normal((2, 4, 5, 5))
    w = rng.standard_normal((4, 2, 3, 3)) * 0.1
    alpha, beta = np.array([0.9, 1.1, 0.6, 1.4]), np.array([0.1, -0.2, 0.0, 0.3])
    opts = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    k, t = 3.0, 0.5
    y = ref.adabin_conv2d(x, w, alpha, beta, convention=convention, **opts)
    g = rng.standard_normal(y.shape)
    dx, dw, da, db = ref.adabin_conv2d_grad(x, w, alpha, beta, g, k=k, t=t,
                                            convention=convention, **opts)
    v0 = ref.activation_v(x, alpha, beta)
    u0 = ref.weight_u(w)
    sg = ref.sign_paper if convention == "paper" else np.sign
    s0, sw0 = sg(v0), sg(u0)

    def loss(xx, ww, aa, bb):
        xs = _act_surrogate(xx, aa, bb, s0, v0, convention)
        ws = _weight_surrogate(ww, sw0, u0, k, t)
        return np.sum(g * ref.conv2d(xs, ws, **opts))

    assert loss(x, w, alpha, beta) == pytest.approx(np.sum(g * y))
    for idx in [(0, 0, 0, 0), (1, 3, 4, 2), (0, 2, 2, 4)]:
        assert dx[idx] == pytest.approx(_fd(lambda z: loss(z, w, alpha, beta), x, idx),
                                        rel=1e-5, abs=1e-7)
    for idx in [(0, 0, 0, 0), (3, 1, 2, 1), (1, 1, 1, 2)]:
        assert dw[idx] == pytest.approx(_fd(lambda z: loss(x, z, alpha, beta), w, idx, h=1e-7),
                                        rel=1e-5, abs=1e-6)
    for c in range(4):
        assert da[c] == pytest.approx(_fd(lambda z: loss(x, w, z, beta), alpha, c),
                                      rel=1e-5, abs=1e-7)
        assert db[c] == pytest.approx(_fd(lambda z: loss(x, w, alpha, z), beta, c),
                                      rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------------------------
# AdaBin convolution and the packed formula
# --------------------------------------------------------------------------------------------
def test_padding_after_binarization_by_hand():
    # x = 5 (1x1 image), alpha 1, beta 0 -> xb = +1 (paper). w = ones(3x3) is a constant
    # filter -> Wb = 1. With padding 1 only the centre tap is in bounds: y = 1. (Padding
    # before binarization would binarize the 8 padded zeros to +1 too and give 9.)
    x = np.full((1, 1, 1, 1), 5.0)
    w = np.ones((1, 1, 3, 3))
    assert ref.adabin_conv2d(x, w, 1.0, 0.0, padding=1).item() == 1.0
    assert ref.packed_conv_formula(x, w, 1.0, 0.0, padding=1).item() == 1.0
    dx, dw, da, db = ref.adabin_conv2d_grad(x, w, 1.0, 0.0, np.ones((1, 1, 1, 1)), padding=1)
    # dWb is 1 at the centre tap only (padded taps get nothing); constant filter: dW = 1/9
    np.testing.assert_allclose(dw, np.full((1, 1, 3, 3), 1 / 9))


def test_packed_formula_by_hand():
    # paper, alpha_a 2, beta_a 1 -> c_a = 1, d_a = 2, levels -1, 3.
    # x = [3, -1] (1 row): v = [1, -1], s_a = [+1, -1], xb = [3, -1].
    # w = [1, 3]: beta_w = 2, alpha_w = 1 (c_w = 2, d_w = 1), s_w = [-1, +1], Wb = [1, 3].
    # padding (0, 1): 3 outputs.
    # y0: only tap (x col 0, w col 1): N=1, sum s_a s_w = 1, sum s_a = 1, sum_P s_w = 1
    #     y = 2*1*1 + 2*2*1 + 1*1*1 + 1*2*1 = 9   (= 3*3)
    # y1: both taps: sum s_a s_w = -1 - 1 = -2, sum s_a = 0, sum s_w = 0, N = 2
    #     y = -4 + 0 + 0 + 4 = 0                  (= 3*1 + -1*3)
    # y2: tap (x col 1, w col 0): s_a s_w = 1, s_a = -1, s_w = -1, N = 1
    #     y = 2 - 4 - 1 + 2 = -1                  (= -1*1)
    x = np.array([3.0, -1.0]).reshape(1, 1, 1, 2)
    w = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    got = ref.packed_conv_formula(x, w, 2.0, 1.0, padding=(0, 1))
    np.testing.assert_allclose(got.ravel(), [9.0, 0.0, -1.0])
    np.testing.assert_allclose(ref.adabin_conv2d(x, w, 2.0, 1.0, padding=(0, 1)).ravel(),
                               [9.0, 0.0, -1.0])
    # official, alpha 2, beta 1: levels 2*(1 -+ 1) = 0, 4 -> c_a = 2, d_a = 2; xb = [4, 0]
    # y = [4*3, 4*1 + 0, 0] = [12, 4, 0]
    got = ref.packed_conv_formula(x, w, 2.0, 1.0, padding=(0, 1), convention="official")
    np.testing.assert_allclose(got.ravel(), [12.0, 4.0, 0.0])


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("opts", [
    dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=(1, 2), groups=2),
    dict(stride=(1, 2), padding=1, groups=4),
])
@pytest.mark.parametrize("per_channel", [False, True])
def test_packed_formula_equals_float_path(convention, opts, per_channel):
    rng = RNG(9)
    x = rng.standard_normal((2, 4, 6, 7))
    w = rng.standard_normal((4, 4 // opts.get("groups", 1), 3, 3)) * 0.1 - 0.03
    w[1] = 0.25                                           # a constant filter
    if per_channel:
        alpha, beta = np.array([0.8, -1.1, 0.4, 1.6]), np.array([0.2, 0.0, -0.3, 0.5])
    else:
        alpha, beta = -0.9, 0.2
    y = ref.adabin_conv2d(x, w, alpha, beta, convention=convention, **opts)
    yp = ref.packed_conv_formula(x, w, alpha, beta, convention=convention, **opts)
    np.testing.assert_allclose(yp, y, rtol=1e-12, atol=1e-12)


def test_packed_differs_from_official_only_at_exact_zeros():
    # official float path has a zero level (s = 0 at v == 0 / u == 0); the packed path maps
    # those to +1. Without exact zeros they agree; the paper convention always agrees.
    rng = RNG(10)
    x = rng.integers(-2, 3, size=(1, 2, 5, 5)) / 2.0      # many x == beta = 0
    w = rng.standard_normal((3, 2, 3, 3))
    y_off = ref.adabin_conv2d(x, w, 1.0, 0.0, padding=1, convention="official")
    y_pap = ref.adabin_conv2d(x, w, 1.0, 0.0, padding=1, convention="paper")
    yp_off = ref.packed_conv_formula(x, w, 1.0, 0.0, padding=1, convention="official")
    yp_pap = ref.packed_conv_formula(x, w, 1.0, 0.0, padding=1, convention="paper")
    np.testing.assert_allclose(yp_pap, y_pap, rtol=1e-12, atol=1e-12)
    # official: the difference is conv of (alpha*(1+beta) - alpha*beta) = alpha at zero taps
    at_risk = ref.flip_risk_mask(ref.activation_v(x, 1.0, 0.0), 0.0).astype(float)
    assert at_risk.sum() > 0
    wb = ref.binarize_weights(w, convention="official")
    np.testing.assert_allclose(yp_off - y_off, ref.conv2d(at_risk, wb, padding=1),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# golden files
# --------------------------------------------------------------------------------------------
def test_golden_files_reproduce():
    cases = make_golden.build_cases()
    files = sorted(p.stem for p in make_golden.GOLDEN_DIR.glob("*.npz"))
    assert files == sorted(cases), "golden dir out of sync: run python -m reference.make_golden"
    total = sum(p.stat().st_size for p in make_golden.GOLDEN_DIR.glob("*.npz"))
    assert total < 200_000
    for name, arrays in cases.items():
        with np.load(make_golden.GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as stored:
            assert sorted(stored.files) == sorted(arrays), name
            for key, value in arrays.items():
                if value.dtype.kind in "US" or value.dtype.kind == "i":
                    np.testing.assert_array_equal(stored[key], value, err_msg=f"{name}/{key}")
                else:
                    np.testing.assert_allclose(stored[key], value, rtol=1e-12, atol=1e-13,
                                               err_msg=f"{name}/{key}")


def test_golden_cases_cover_the_brief():
    cases = make_golden.build_cases()
    conventions = {str(c["convention"]) for c in cases.values()}
    assert conventions == {"paper", "official"}
    assert any((c["stride"] == 2).any() for c in cases.values())
    assert any((c["padding"] > 0).any() for c in cases.values())
    assert any((c["dilation"] > 1).any() for c in cases.values())
    assert any(int(c["groups"]) > 1 for c in cases.values())
    assert any(c["alpha"].ndim == 1 for c in cases.values())
    assert any((c["alpha_w"] == 0).any() for c in cases.values())            # constant filter
    zeros = cases["official_zeros_constant"]
    v = ref.activation_v(zeros["x"], zeros["alpha"], zeros["beta"])
    assert (v == 0).any() and (ref.weight_u(zeros["w"]) == 0).any()
    assert not np.allclose(zeros["y"], zeros["y_packed"])     # documented disagreement
    np.testing.assert_allclose(cases["paper_zeros_constant"]["y"],
                               cases["paper_zeros_constant"]["y_packed"], rtol=1e-12, atol=1e-12)
