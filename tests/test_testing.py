"""Tests of :mod:`adabin_np.testing`, the oracle other people's tests call (issue 7).

Three promises are checked:

1. the assertion helpers catch real bugs (sign(0) conventions, padding with a binary level,
   the swapped official formula, stride off-by-one, unbiased std, wrong gradients, a flipped
   element that was not at risk) -- each deliberately wrong implementation must FAIL;
2. they forgive only flip-risk elements: a float32 implementation of the same ops passes over
   a hypothesis grid, a flip of an at-risk element passes (and is counted as forgiven), and the
   receptive-field mask equals a brute-force count for every stride/padding/dilation/groups;
3. the strategies only produce inputs the oracle accepts.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import adabin_np as ab
import adabin_np.testing as abt

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOAT32_SAFE_KINDS = abt.REALISTIC_WEIGHTS + ("constant", "zero", "one_hot", "ties")


# ----------------------------------------------------------------------------------------------
# A "user" implementation in any dtype, with switchable bugs
# ----------------------------------------------------------------------------------------------


def _pair(v):
    return (v, v) if np.ndim(v) == 0 else tuple(v)


def _chan(value, ndim, dtype):
    value = np.asarray(value, dtype=dtype)
    return value if value.ndim == 0 else value.reshape((1, -1) + (1,) * (ndim - 2))


def user_binarize_activations(x, alpha, beta, *, convention="paper", dtype=np.float32,
                              bug=None):
    x = np.asarray(x, dtype=dtype)
    a, b = _chan(alpha, x.ndim, dtype), _chan(beta, x.ndim, dtype)
    v = (x - b) / a
    official = convention == "official"
    if official or bug == "torch_sign":
        s = np.sign(v)
    elif bug == "sign0_negative":
        s = np.where(v > 0, 1.0, -1.0)
    else:
        s = np.where(v >= 0, 1.0, -1.0)
    s = s.astype(dtype)
    if bug == "swap_formula":
        official = not official
    return a * (s + b) if official else a * s + b


def _weight_stats(w, dtype, bug):
    wf = np.asarray(w, dtype=dtype).reshape(w.shape[0], -1)
    m = wf.mean(axis=1, keepdims=True)
    sd = wf.std(axis=1, ddof=1 if bug == "unbiased_std" else 0, keepdims=True)
    if bug == "no_mean":
        m = np.zeros_like(m)
    safe = np.where(sd > 0, sd, 1).astype(dtype)
    return wf, m, sd, (wf - m) / safe


def user_binarize_weights(w, *, convention="paper", dtype=np.float32, bug=None):
    w = np.asarray(w)
    _, m, sd, u = _weight_stats(w, dtype, bug)
    s = np.sign(u) if convention == "official" else np.where(u >= 0, 1.0, -1.0).astype(dtype)
    return np.where(sd > 0, sd * s + m, m).reshape(w.shape)


def _geometry(x_shape, w_shape, stride, padding, dilation, bug):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if bug == "ignore_dilation":
        dh = dw = 1
    _, _, h, wd = x_shape
    _, _, kh, kw = w_shape
    oh = (h + 2 * ph - _pair(dilation)[0] * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - _pair(dilation)[1] * (kw - 1) - 1) // sw + 1
    if bug == "out_size":
        oh -= 1
    return sh, sw, ph, pw, dh, dw, oh, ow


def user_conv2d(xb, wb, *, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0,
                dtype=np.float32, bug=None):
    """Plain tap-loop cross-correlation in ``dtype`` (padding value switchable for bugs)."""
    xb, wb = np.asarray(xb, dtype=dtype), np.asarray(wb, dtype=dtype)
    sh, sw, ph, pw, dh, dw, oh, ow = _geometry(xb.shape, wb.shape, stride, padding, dilation,
                                               bug)
    off = 1 if bug == "start_offset" else 0
    pad = ((0, 0), (0, 0), (ph, ph + off), (pw, pw + off))
    xp = np.pad(xb, pad, constant_values=np.asarray(pad_value, dtype=dtype))
    n, o, cg = xb.shape[0], wb.shape[0], wb.shape[1]
    og = o // groups
    y = np.zeros((n, o, oh, ow), dtype=dtype)
    for g in range(groups):
        for ki in range(wb.shape[2]):
            for kj in range(wb.shape[3]):
                r0, c0 = ki * dh + off, kj * dw + off
                patch = xp[:, g * cg:(g + 1) * cg, r0:r0 + sh * (oh - 1) + 1:sh,
                           c0:c0 + sw * (ow - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, wb[g * og:(g + 1) * og, :, ki, kj])
    return y


def user_adabin_conv2d(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                       convention="paper", dtype=np.float32, bug=None):
    xb = user_binarize_activations(x, alpha, beta, convention=convention, dtype=dtype, bug=bug)
    wb = user_binarize_weights(w, convention=convention, dtype=dtype, bug=bug)
    pad_value = 0.0
    if bug == "pad_with_b1":  # pad the *binarized* input with the low level instead of 0
        b1 = user_binarize_activations(np.full((1, x.shape[1], 1, 1), -np.inf), alpha, beta,
                                       convention=convention, dtype=dtype)
        pad_value = float(np.ravel(b1)[0])
    return user_conv2d(xb, wb, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, pad_value=pad_value, dtype=dtype, bug=bug)


def user_binarize_activations_grad(x, alpha, beta, grad, *, convention="paper",
                                   dtype=np.float32, bug=None):
    x, g = np.asarray(x, dtype=dtype), np.asarray(grad, dtype=dtype)
    a, b = _chan(alpha, x.ndim, dtype), _chan(beta, x.ndim, dtype)
    v = (x - b) / a
    official = convention == "official"
    s = np.sign(v) if official else np.where(v >= 0, 1.0, -1.0).astype(dtype)
    fprime = np.ones_like(v) if bug == "ste_no_clip" else np.maximum(0, 2 - 2 * np.abs(v))
    big_g = g * fprime
    axes_a = (0,) + tuple(range(2, x.ndim)) if np.ndim(alpha) else None
    axes_b = (0,) + tuple(range(2, x.ndim)) if np.ndim(beta) else None
    s_term = s + b if official else s
    dalpha = (g * s_term - big_g * v).sum(axis=axes_a)
    if official and bug != "official_dbeta_no_alpha":
        dbeta = (a * g - big_g).sum(axis=axes_b)
    else:
        dbeta = (g - big_g).sum(axis=axes_b)
    return big_g, dalpha, dbeta


def user_binarize_weights_grad(w, grad, *, k=10.0, t=0.1, convention="paper",
                               dtype=np.float32, bug=None):
    w = np.asarray(w)
    wf, m, sd, u = _weight_stats(w, dtype, None)
    g = np.asarray(grad, dtype=dtype).reshape(wf.shape)
    n = wf.shape[1]
    s = np.sign(u) if convention == "official" else np.where(u >= 0, 1.0, -1.0).astype(dtype)
    g_u = g * sd * (k * t * (1 - np.tanh(t * u) ** 2))
    safe = np.where(sd > 0, sd, 1)
    dalpha = (g * s).sum(1, keepdims=True) - (g_u * u).sum(1, keepdims=True) / safe
    dbeta = g.sum(1, keepdims=True) - g_u.sum(1, keepdims=True) / safe
    dw = g_u / safe + dbeta / n + u * dalpha / n
    if bug == "no_stat_grads":  # forgets that alpha_w, beta_w depend on W
        dw = g_u / safe
    dw = np.where(sd > 0, dw, g.sum(1, keepdims=True) / n)
    return dw.reshape(w.shape)


# ----------------------------------------------------------------------------------------------
# fixtures: a small fixed case with flip-risk elements planted
# ----------------------------------------------------------------------------------------------


def small_case(seed=0, alpha=0.7, beta=0.3, c=3, o=4):
    rng = np.random.default_rng(seed)
    x = beta + alpha * rng.normal(size=(2, c, 6, 7))
    w = rng.normal(size=(o, c, 3, 3)) * 0.1 + 0.02
    return x, w


GEO = dict(stride=2, padding=1)


def fails(fn, *args, **kwargs):
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# 1. correct implementations pass
# ----------------------------------------------------------------------------------------------


def test_oracle_matches_itself_and_reports():
    x, w = small_case()
    y = ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO)
    report = abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    assert report.ok and report.mismatched == 0 and report.rtol == 1e-9
    assert "matches the oracle" in str(report)
    assert abt.assert_matches_oracle(y, ab.adabin_conv2d, x, w, 0.7, 0.3, **GEO).ok


@SETTINGS
@given(abt.conv_cases(weight_kind=FLOAT32_SAFE_KINDS, negative_alpha=True), st.booleans())
def test_float32_implementation_passes(case, via_callable):
    if via_callable:  # actual may be the implementation itself
        report = abt.assert_matches_oracle(user_adabin_conv2d, "adabin_conv2d", *case.args,
                                           **case.kwargs)
    else:
        y = user_adabin_conv2d(*case.args, **case.kwargs)
        report = abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)
    assert report.tol == 1e-5  # chosen from the float32 output


@SETTINGS
@given(abt.conv_cases(weight_kind=None, negative_alpha=True))
def test_float64_implementation_passes_on_every_weight_kind(case):
    y = user_adabin_conv2d(*case.args, dtype=np.float64, **case.kwargs)
    abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)


@SETTINGS
@given(abt.conv_cases(weight_kind=FLOAT32_SAFE_KINDS, negative_alpha=True))
def test_float32_binarization_and_gradients_pass(case):
    x, w, alpha, beta = case.args
    conv = case.convention
    abt.assert_matches_oracle(user_binarize_activations(x, alpha, beta, convention=conv),
                              "binarize_activations", x, alpha, beta, convention=conv)
    abt.assert_matches_oracle(user_binarize_weights(w, convention=conv), "binarize_weights", w,
                              convention=conv)
    g = np.random.default_rng(1).normal(size=x.shape)
    abt.assert_grads_match(user_binarize_activations_grad(x, alpha, beta, g, convention=conv),
                           "binarize_activations", x, alpha, beta, g, convention=conv)
    gw = np.random.default_rng(2).normal(size=w.shape)
    abt.assert_grads_match(user_binarize_weights_grad(w, gw, k=5.0, t=0.3, convention=conv),
                           "binarize_weights", w, gw, k=5.0, t=0.3, convention=conv)


def test_float32_near_threshold_mismatches_are_forgiven_and_counted():
    x, w = small_case()
    x[0, 1, 2, 3] = np.nextafter(0.3, -np.inf)  # rounds to beta in float32: +1 vs oracle -1
    y = user_adabin_conv2d(x, w, 0.7, 0.3, **GEO)
    report = abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    assert report.mismatched > 0 and report.forgiven == report.mismatched
    with pytest.raises(AssertionError, match="forgiven"):  # tol=0: nothing is at risk
        abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, tol=0.0, **GEO)


def test_torch_like_tensors_and_partial_gradients():
    class FakeTensor:  # what assert_matches_oracle needs from a torch tensor
        def __init__(self, a):
            self.a, self.dtype = a, "torch.float32"

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a.astype(np.float32)

    x, w = small_case()
    gy = np.random.default_rng(3).normal(size=ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO).shape)
    grads = ab.adabin_conv2d_grad(x, w, 0.7, 0.3, gy, **GEO)
    report = abt.assert_grads_match({"dx": FakeTensor(grads.dx), "dalpha": grads.dalpha,
                                     "dbeta": None}, "adabin_conv2d", x, w, 0.7, 0.3, gy, **GEO)
    assert [f.name for f in report.fields] == ["dx", "dalpha"]
    assert report.rtol == 1e-5  # precision of the first (torch float32) output
    per_c = np.full(3, 0.3)  # parameter gradients may carry extra length-1 axes
    g = ab.binarize_activations_grad(x, 0.7, per_c, x)
    abt.assert_grads_match((g.dx, g.dalpha, g.dbeta.reshape(1, 3, 1, 1)), "binarize_activations",
                           x, 0.7, per_c, x)


# ----------------------------------------------------------------------------------------------
# 2. bugs are caught
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bug, geo", [
    ("sign0_negative", GEO), ("torch_sign", GEO), ("pad_with_b1", GEO),
    ("swap_formula", GEO), ("start_offset", GEO), ("out_size", GEO), ("unbiased_std", GEO),
    ("no_mean", GEO), ("ignore_dilation", dict(dilation=2, padding=2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_buggy_conv_implementations_fail(bug, geo, dtype):
    x, w = small_case()
    x[:, :, ::3, ::2] = 0.3  # exact ties decide the sign(0) convention
    y = user_adabin_conv2d(x, w, 0.7, 0.3, dtype=dtype, bug=bug, **geo)
    msg = fails(abt.assert_matches_oracle, y, "adabin_conv2d", x, w, 0.7, 0.3, **geo)
    assert "does not match the oracle" in msg
    if bug == "out_size":
        assert "shape" in msg
    else:
        assert "worst unforgiven: output[" in msg


def test_sign_at_zero_is_enforced_at_exact_ties():
    x, w = small_case()
    x[0, 0, 0, :] = 0.3  # exact ties: computed exactly in float32 too, so never forgiven
    for conv in ("paper", "official"):
        y = user_binarize_activations(x, 0.7, 0.3, convention=conv)
        abt.assert_matches_oracle(y, "binarize_activations", x, 0.7, 0.3, convention=conv)
    # torch.sign (s(0) = 0) with the paper convention is wrong exactly there ...
    y = user_binarize_activations(x, 0.7, 0.3, convention="paper", bug="torch_sign")
    report = abt.compare_with_oracle(y, "binarize_activations", x, 0.7, 0.3)
    assert report.mismatched == report.fields[0].unforgiven == 7
    # ... unless ties are forgiven (the bit-packed path's setting)
    abt.assert_matches_oracle(y, "binarize_activations", x, 0.7, 0.3, forgive_ties=True)
    # the official formula with the paper's s(0) = +1 is wrong too, at the ties only
    y = 0.7 * (np.where(x >= 0.3, 1.0, -1.0) + 0.3)
    report = abt.compare_with_oracle(y, "binarize_activations", x, 0.7, 0.3,
                                     convention="official")
    assert report.mismatched == report.fields[0].unforgiven == 7


@pytest.mark.parametrize("bug", ["ste_no_clip", "official_dbeta_no_alpha"])
def test_buggy_activation_gradients_fail(bug):
    x, _ = small_case()
    g = np.random.default_rng(4).normal(size=x.shape)
    got = user_binarize_activations_grad(x, 0.7, 0.3, g, convention="official", bug=bug)
    msg = fails(abt.assert_grads_match, got, "binarize_activations", x, 0.7, 0.3, g,
                convention="official")
    assert ("dx:" in msg) if bug == "ste_no_clip" else ("worst unforgiven: dbeta" in msg)


def test_buggy_weight_gradient_fails():
    _, w = small_case()
    g = np.random.default_rng(5).normal(size=w.shape)
    got = user_binarize_weights_grad(w, g, bug="no_stat_grads")
    fails(abt.assert_grads_match, got, "binarize_weights", w, g)


def test_wrong_shape_tuple_and_nan_are_reported():
    x, w = small_case()
    y = ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO)
    assert "differs from the oracle's" in fails(abt.assert_matches_oracle, y[:, :, :-1],
                                                "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    y_nan = y.copy()
    y_nan[1, 2, 0, 0] = np.nan
    assert "output[1, 2, 0, 0] = nan" in fails(abt.assert_matches_oracle, y_nan,
                                               "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    with pytest.raises(ValueError, match="4"):
        abt.assert_grads_match((y, y), "adabin_conv2d", x, w, 0.7, 0.3, y, **GEO)
    with pytest.raises(ValueError, match="op must be one of"):
        abt.assert_matches_oracle(y, "adabin_conv3d", x, w, 0.7, 0.3)
    with pytest.raises(TypeError, match="actual"):
        abt.assert_matches_oracle(y.astype(complex), "adabin_conv2d", x, w, 0.7, 0.3, **GEO)


# ----------------------------------------------------------------------------------------------
# flips: forgiven exactly where an input is at risk, and only there
# ----------------------------------------------------------------------------------------------


def _changed(y, y0):
    """Elements that differ by more than float64 rounding (conv2d and adabin_conv2d may sum in
    different orders)."""
    return np.abs(y - y0) > 1e-12 * np.abs(y0).max()


def _flip_activation(x, alpha, beta, idx, convention="paper"):
    """The oracle's binarized x with element ``idx`` moved to the other level."""
    xb = ab.binarize_activations(x, alpha, beta, convention=convention)
    lo, hi = beta - alpha, beta + alpha
    xb[idx] = lo if xb[idx] == hi else hi
    return xb


def test_flip_of_a_safe_activation_fails_with_a_precise_message():
    x, w = small_case()
    wb = ab.binarize_weights(w)
    idx = (1, 2, 3, 3)
    assert not abt.flip_risk(x, 0.7, 0.3)[idx]
    y = ab.conv2d(_flip_activation(x, 0.7, 0.3, idx), wb, **GEO)
    changed = int(_changed(y, ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO)).sum())
    assert changed == 16  # stride 2: 2 x 2 outputs of each of the 4 channels read it
    report = abt.compare_with_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    assert not report.ok and report.mismatched == changed > 0 and report.forgiven == 0
    msg = str(report)
    assert (f"{changed} of {y.size} elements outside the rounding bound, 0 within a possible "
            f"flip of risky inputs, {changed} not") in msg
    assert "worst unforgiven: output[1, " in msg and "flip bound" in msg


def test_flip_of_an_at_risk_activation_is_forgiven_in_its_receptive_field_only():
    x, w = small_case()
    idx = (1, 2, 3, 3)
    x[idx] = 0.3 + 1e-9  # at risk, not an exact tie
    wb = ab.binarize_weights(w)
    y = ab.conv2d(_flip_activation(x, 0.7, 0.3, idx), wb, **GEO)
    changed = _changed(y, ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO))
    report = abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    assert report.forgiven == changed.sum() > 0
    # the same flip plus a change outside the receptive field is not forgiven there
    y[0, 0, 0, 0] += 1.0
    report = abt.compare_with_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, **GEO)
    assert report.fields[0].unforgiven == 1 and report.fields[0].worst["index"] == (0, 0, 0, 0)


def test_flip_of_an_at_risk_weight_is_forgiven_in_its_channel():
    x, w = small_case()
    others = np.delete(w[2].ravel(), 1 * 9 + 1 * 3 + 1)
    w[2, 1, 1, 1] = others.mean() + 1e-12  # (almost) exactly the channel mean: at risk
    assert abt.weight_flip_risk(w)[2, 1, 1, 1] and abt.weight_flip_risk(w).sum() == 1
    alpha_w, beta_w = ab.weight_binary_set(w)
    xb = ab.binarize_activations(x, 0.7, 0.3)

    def conv_with_flipped(idx):
        wb = ab.binarize_weights(w)
        wb[idx] = 2 * beta_w[idx[0]] - wb[idx]  # the other level
        return ab.conv2d(xb, wb, **GEO)

    y = conv_with_flipped((2, 1, 1, 1))
    report = abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, tol=1e-5, **GEO)
    assert report.forgiven == report.mismatched > 0
    # every mismatch is in output channel 2
    assert _changed(y, ab.adabin_conv2d(x, w, 0.7, 0.3, **GEO))[:, [0, 1, 3]].sum() == 0
    # flipping a safe weight of another channel is not forgiven (one of the same channel would
    # be: a channel with a risky weight may legitimately differ anywhere)
    y = conv_with_flipped((1, 0, 0, 0))
    report = abt.compare_with_oracle(y, "adabin_conv2d", x, w, 0.7, 0.3, tol=1e-5, **GEO)
    assert report.forgiven == 0 and report.mismatched > 0


def test_gradient_flips_are_forgiven_only_where_signs_enter():
    x, _ = small_case()
    x[0, 0, 0, 0] = 0.3 + 1e-9  # at risk: only dalpha reads its sign
    g = np.random.default_rng(6).normal(size=x.shape)
    dx, dalpha, dbeta = ab.binarize_activations_grad(x, 0.7, 0.3, g)
    report = abt.assert_grads_match((dx, dalpha + 2 * g[0, 0, 0, 0], dbeta),
                                    "binarize_activations", x, 0.7, 0.3, g)
    assert report.forgiven == 1
    fails(abt.assert_grads_match, (dx, dalpha, dbeta + 1e-3), "binarize_activations",
          x, 0.7, 0.3, g)  # dbeta never depends on a sign


# ----------------------------------------------------------------------------------------------
# the receptive-field mask against a brute-force count
# ----------------------------------------------------------------------------------------------


def brute_conv_risk(rx, rw, shape):
    (sh, sw), (ph, pw), (dh, dw) = (_pair(shape.stride), _pair(shape.padding),
                                    _pair(shape.dilation))
    n_, o_, oh_, ow_ = shape.out_shape
    _, cg, kh, kw = rw.shape
    og = o_ // shape.groups
    out = np.zeros(shape.out_shape, dtype=np.int64)
    for n in range(n_):
        for o in range(o_):
            for i in range(oh_):
                for j in range(ow_):
                    for cc in range(cg):
                        for ki in range(kh):
                            for kj in range(kw):
                                ih, iw = i * sh - ph + ki * dh, j * sw - pw + kj * dw
                                if 0 <= ih < shape.h and 0 <= iw < shape.w:
                                    c = (o // og) * cg + cc
                                    out[n, o, i, j] += rx[n, c, ih, iw] + rw[o, cc, ki, kj]
    return out


@settings(max_examples=40, deadline=None)
@given(abt.conv_shapes(max_size=6, max_padding=3, max_dilation=3), st.integers(0, 2**31))
def test_conv_flip_risk_equals_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape.x_shape)
    w = rng.normal(size=shape.w_shape)
    x[rng.random(x.shape) < 0.1] = 0.25  # ties at beta: at risk
    x[rng.random(x.shape) < 0.1] = np.nextafter(0.25, 1)
    risky_w = rng.random(w.shape) < 0.1
    w[risky_w] = 0.0
    w -= w.reshape(w.shape[0], -1).mean(axis=1)[:, None, None, None]  # mean ~ 0
    _, beta_w = ab.weight_binary_set(w)
    w[risky_w] = np.broadcast_to(beta_w[:, None, None, None], w.shape)[risky_w]
    rx = abt.flip_risk(x, 1.0, 0.25)
    rw = abt.weight_flip_risk(w)
    got = abt.conv_flip_risk(x, w, 1.0, 0.25, **shape.kwargs)
    np.testing.assert_array_equal(got, brute_conv_risk(rx, rw, shape))


# ----------------------------------------------------------------------------------------------
# flip-risk masks
# ----------------------------------------------------------------------------------------------


def test_flip_risk_definition():
    np.testing.assert_array_equal(abt.flip_risk([0.5, 1e-7, 0.0, -1e-3], 1.0, 0.0),
                                  [False, True, True, False])
    # relative to the operands: x = beta (1 + 1e-7) is within rounding of beta = 1e6
    assert abt.flip_risk([1e6 * (1 + 1e-7)], 1.0, 1e6)[0]
    assert not abt.flip_risk([1e6 * (1 + 1e-3)], 1.0, 1e6)[0]
    # tol = 0 keeps only exact ties; per-channel sets along axis 1; negative alpha
    x = np.array([[0.0, 1.0], [2e-9, 1.0 + 1e-9]])
    np.testing.assert_array_equal(abt.flip_risk(x, np.array([1.0, -2.0]), np.array([0.0, 1.0]),
                                                tol=0.0), [[True, True], [False, False]])
    np.testing.assert_array_equal(abt.flip_risk(x, np.array([1.0, -2.0]), np.array([0.0, 1.0])),
                                  [[True, True], [True, True]])
    np.testing.assert_array_equal(abt.weight_flip_risk([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]),
                                  [[False, True, False], [False, False, False]])
    with pytest.raises(ValueError, match="tol"):
        abt.flip_risk(x, 1.0, 0.0, tol=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        abt.flip_risk(x, 0.0, 0.0)


def test_default_tolerance_is_float32_rounding_sized():
    assert abt.DEFAULT_TOL == 1e-5
    rng = np.random.default_rng(7)
    x = rng.normal(size=100_000)
    x32 = x.astype(np.float32).astype(np.float64)
    # every element whose sign changes when x and beta are rounded to float32 is flagged ...
    beta32 = np.float64(np.float32(0.1))
    flipped = np.sign(x32 - beta32) != np.sign(x - 0.1)
    assert not (flipped & ~abt.flip_risk(x, 1.0, 0.1)).any()
    # ... and random data is almost never at risk
    assert abt.flip_risk(x, 1.0, 0.1).mean() < 1e-4


# ----------------------------------------------------------------------------------------------
# 3. strategies produce valid inputs
# ----------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(abt.conv_cases(weight_kind=None, negative_alpha=True, max_padding=3, max_dilation=3))
def test_every_drawn_case_is_accepted_by_the_oracle(case):
    y = ab.adabin_conv2d(*case.args, **case.kwargs)
    assert y.shape == case.shape.out_shape == case.grad_y.shape and np.isfinite(y).all()
    grads = ab.adabin_conv2d_grad(*case.grad_args, **case.kwargs)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(case.alpha) != 0)
    assert case.convention in ("paper", "official")


@settings(max_examples=30, deadline=None)
@given(abt.binary_sets(5), abt.binary_sets(), abt.binary_sets(3, per_channel=True,
                                                                 negative_alpha=True))
def test_binary_sets(pc, scalar, forced):
    for alpha, beta in (pc, scalar, forced):
        assert np.all(np.asarray(alpha) != 0) and np.all(np.isfinite(beta))
    assert np.all(np.asarray(pc[0]) > 0) and np.all(np.asarray(scalar[0]) > 0)
    assert isinstance(scalar[0], float) and isinstance(scalar[1], float)
    assert forced[0].shape == forced[1].shape == (3,)
    ab.binarize_activations(np.ones((2, 5, 3)), *pc)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(abt.REALISTIC_WEIGHTS + abt.DEGENERATE_WEIGHTS).flatmap(
    lambda kind: st.tuples(st.just(kind), abt.weights((4, 3, 2, 2), kind=kind))))
def test_weight_kinds(kind_and_w):
    kind, w = kind_and_w
    assert w.shape == (4, 3, 2, 2) and w.dtype == np.float64 and np.isfinite(w).all()
    alpha_w, beta_w = ab.weight_binary_set(w)
    assert np.isfinite(ab.binarize_weights(w)).all()
    if kind == "zero":
        assert (w[0] == 0).all()
    if kind == "constant":
        assert (alpha_w == 0).any() or (alpha_w > 0).all()
    if kind == "one_hot":
        assert ((w.reshape(4, -1) != 0).sum(axis=1) == 1).all()
    if kind == "ties":  # weight 1 of every non-constant filter sits exactly at the mean
        flat = w.reshape(4, -1)
        assert ((flat[:, 1] == beta_w) | (alpha_w == 0)).all()
        assert (flat.astype(np.float32).mean(axis=1) == beta_w).all()  # exact in float32 too


def test_activations_can_hit_the_threshold_exactly():
    beta = np.array([0.1, -0.3])
    x = find(abt.activations((2, 2, 3, 3), 0.5, beta),
             lambda x: (x == beta.reshape(1, 2, 1, 1)).any(),
             settings=settings(database=None, derandomize=True, max_examples=5000))
    assert abt.flip_risk(x, 0.5, beta).any()
    x = find(abt.activations((4, 2, 3, 3), 0.5, beta),
             lambda x: (np.abs(x - beta.reshape(1, 2, 1, 1)) == 0.5).any(),
             settings=settings(database=None, derandomize=True, max_examples=5000))
    assert (ab.bireal_grad((x - beta.reshape(1, 2, 1, 1)) / 0.5) == 0).any()  # |v| = 1 kink


def test_conv_shapes_respect_bounds():
    # derandomized: a rare condition must not depend on the run's random seed
    shape = find(abt.conv_shapes(max_groups=2), lambda s: s.groups == 2 and s.h < s.kh,
                 settings=settings(database=None, derandomize=True, max_examples=5000))
    assert shape.c % 2 == 0 and shape.o % 2 == 0
    ab.adabin_conv2d(np.ones(shape.x_shape), np.ones(shape.w_shape) + np.arange(shape.kw),
                     0.5, 0.0, **shape.kwargs)


def test_importing_the_package_does_not_import_testing_hypothesis_or_torch():
    code = ("import sys, adabin_np; "
            "bad = [m for m in ('adabin_np.testing', 'hypothesis', 'torch') if m in sys.modules];"
            "assert not bad, bad; import adabin_np.testing; assert 'hypothesis' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# another real implementation: the bit-packed path (no zero level: forgive_ties=True)
# ----------------------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=20)
@given(abt.conv_cases(weight_kind=None, negative_alpha=True))
def test_bit_packed_path_matches_the_oracle(case):
    packed = pytest.importorskip("adabin_np.packed")
    y = packed.packed_adabin_conv2d(*case.args, **case.kwargs)
    abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, forgive_ties=True, **case.kwargs)
    if case.convention == "paper":  # same tie rule as the float path: nothing to forgive
        abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, tol=0.0, **case.kwargs)


def test_bit_packed_path_outputs_that_read_only_padding():  # regression: were garbage
    packed = pytest.importorskip("adabin_np.packed")
    x, w = np.array([[[[-2.03]]]]), np.array([[[[0.5, -0.2]]]])
    y = packed.packed_adabin_conv2d(x, w, 1.0, 0.3, padding=(0, 3))
    abt.assert_matches_oracle(y, "adabin_conv2d", x, w, 1.0, 0.3, padding=(0, 3))
