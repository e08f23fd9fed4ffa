r"""Test your own AdaBin implementation against the oracle (SPEC section 7).

A binary neural network amplifies rounding: an activation or weight that sits next to its
threshold can binarize to the other level in another precision or summation order, and one
flipped sign changes every output that reads it. (The same ResNet-20 in float32 and float64
disagrees on about 0.1% of CIFAR-10 predictions.) So an exact comparison is too strict and a
loose ``allclose`` hides real bugs. This module compares *values* with a tolerance scaled to
the magnitude of the terms that make them up, and forgives *sign flips* only where an input is
within ``tol`` of a threshold (a **flip risk**)::

    import adabin_np.testing as abt

    y = my_adabin_conv(x, w, alpha, beta, stride=2)        # your code: torch, JAX, C, ...
    abt.assert_matches_oracle(y, "adabin_conv2d", x, w, alpha, beta, stride=2)

    @given(abt.conv_cases())                               # hypothesis grid of valid cases
    def test_my_conv(case):
        y = my_adabin_conv(*case.args, **case.kwargs)
        abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)

Contents
--------
* :func:`assert_matches_oracle`, :func:`compare_with_oracle`, :func:`assert_grads_match` --
  compare an output (array, torch tensor, tuple of gradients, or a callable) with the oracle.
* :func:`flip_risk`, :func:`weight_flip_risk`, :func:`conv_flip_risk` -- where signs may flip.
* hypothesis strategies :func:`conv_shapes`, :func:`weights`, :func:`activations`,
  :func:`binary_sets`, :func:`conventions`, :func:`conv_cases` (hypothesis is imported only
  when a strategy is built; ``import adabin_np`` never imports this module).

Flip risk
---------
An activation ``x`` with ``v = (x - beta)/alpha`` is at flip risk when

.. math:: |x - \beta| \le \mathrm{tol}\,(|x| + |\beta| + |\alpha|)
          \quad\Longleftrightarrow\quad
          |v| \le \mathrm{tol}\,\Bigl(1 + \frac{|x| + |\beta|}{|\alpha|}\Bigr),

i.e. ``v`` lies within ``tol`` of the threshold 0, measured relative to the operands: rounding
``x`` or ``beta`` to a working precision moves ``x - beta`` by about ``eps*(|x| + |beta|)``,
whatever ``alpha`` is. For ``|x|, |beta| << |alpha|`` this is simply ``|v| <= tol``. A weight
is at risk when ``|W - beta_w| <= tol*(|W| + |beta_w| + alpha_w)`` (``u`` within ``tol`` of 0;
the extra terms bound the rounding of a float32 mean). Constant filters (``alpha_w = 0``)
binarize to ``beta_w`` whatever the sign, so they are never at risk.

:data:`DEFAULT_TOL` ``= 1e-5`` is about 100 float32 ulps: wide enough for float32 rounding of
the inputs and a differently ordered float32 mean over ~10^4 weights, narrow enough that
random data almost never has a risky element (so real bugs cannot hide behind it).
:func:`assert_matches_oracle` picks ``tol`` from the dtype of your output (float64 ``1e-9``,
float32 ``1e-5``, float16 ``1e-2``, bfloat16 ``5e-2``).

Exact ties (``x == beta`` or ``W == beta_w`` exactly) are in the flip-risk masks, but they are
not a rounding ambiguity: every precision computes ``x - beta == 0`` there (and ``W - mean(W)
== 0`` whenever the mean is exact, e.g. for dyadic weights), and the convention decides the
sign (paper +1, official 0). :func:`assert_matches_oracle` therefore does **not** forgive
mismatches at exact ties unless ``forgive_ties=True`` (needed for the bit-packed path, which
maps 0 to +1 in both conventions, or for weight ties whose mean your code cannot compute
exactly). This is what catches ``torch.sign`` used with the paper convention.

Values
------
An element passes when ``|actual - expected| <= atol + rtol*scale``, where ``scale`` bounds the
rounding error of the expected value: the sum of the absolute values of the terms that make it
up, each term's operands counted at their own magnitude (a binarized activation at
``|alpha| + |beta|``, a binarized weight at ``alpha_w + |beta_w|``, so a level that nearly
cancels, ``beta - alpha ~ 0``, is not held to a relative accuracy it cannot have), and ``v``/``u``
at ``|v| + (|x| + |beta|)/|alpha|`` where an estimator's slope reads them. Cancellation never
makes a correct float32 result fail; the largest error seen for float32 PyTorch is ~2e-7 of
``scale``, so the float32 default ``rtol = 1e-5`` leaves a 50x margin and still catches an
unbiased (n - 1) standard deviation.
"""

from __future__ import annotations

import inspect
import numbers
from typing import NamedTuple

import numpy as np

from . import binarize as _bin
from . import conv as _conv
from .validation import (CONVENTIONS, activation_params, as_float_array, check_convention,
                         conv_params)

__all__ = [
    "DEFAULT_TOL",
    "DEGENERATE_WEIGHTS",
    "REALISTIC_WEIGHTS",
    "ConvCase",
    "ConvShape",
    "FieldReport",
    "OracleReport",
    "activations",
    "assert_grads_match",
    "assert_matches_oracle",
    "binary_sets",
    "compare_with_oracle",
    "conv_cases",
    "conv_flip_risk",
    "conv_shapes",
    "conventions",
    "flip_risk",
    "weight_flip_risk",
    "weights",
]

DEFAULT_TOL = 1e-5
"""Default flip-risk tolerance (relative, see the module docstring): ~100 float32 ulps."""

# (rtol, tol) chosen from the dtype of the implementation's output.
_PRECISION = {
    "float64": (1e-9, 1e-9),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


# ==============================================================================================
# argument set-up (public validation helpers only; the oracle validated the arguments already)
# ==============================================================================================


def _act_setup(x, alpha, beta):
    """x as float64, viewed (N, C, S) with channels on axis 1; per-channel sets of shape (C,).

    Returns ``x, x3, alpha_c, beta_c, (alpha_is_array, beta_is_array)``.
    """
    x = as_float_array(x, "x", allow_scalar=True)
    if x.ndim >= 2:
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
    else:
        x3 = x.reshape(1, 1, -1)
    alpha_c, beta_c, _ = activation_params(alpha, beta, x3.shape[1])
    return x, x3, alpha_c, beta_c, (np.ndim(alpha) > 0, np.ndim(beta) > 0)


def _weights_setup(w):
    w = as_float_array(w, "w", min_ndim=2)
    if w.size == 0:
        raise ValueError(f"w must be non-empty, got shape {w.shape}")
    return w, w.reshape(w.shape[0], -1)


def _conv_setup(x, w, stride, padding, dilation, groups):
    x = as_float_array(x, "x", ndim=4)
    w = as_float_array(w, "w", ndim=4)
    return x, w, conv_params(x.shape, w.shape, stride, padding, dilation, groups)


# ==============================================================================================
# flip risk
# ==============================================================================================


def _act_near(x3, alpha_c, beta_c, tol, ties=True):
    """Flip-risk mask of activations viewed as (N, C, S); ``ties=False`` drops exact ties."""
    a = alpha_c[None, :, None]
    b = beta_c[None, :, None]
    d = x3 - b
    near = np.abs(d) <= tol * (np.abs(x3) + np.abs(b) + np.abs(a))
    if not ties:
        near &= d != 0.0
    return near


def _weight_near(w2, tol, ties=True):
    """Flip-risk mask of weights viewed as (O, n)."""
    alpha, beta = _bin.weight_binary_set(w2)
    a = alpha[:, None]
    b = beta[:, None]
    d = w2 - b
    near = (a > 0.0) & (np.abs(d) <= tol * (np.abs(w2) + np.abs(b) + a))
    if not ties:
        near &= d != 0.0
    return near


def _check_tol(tol):
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    tol = float(tol)
    if not (np.isfinite(tol) and tol >= 0.0):
        raise ValueError(f"tol must be finite and >= 0, got {tol}")
    return tol


def flip_risk(x, alpha, beta, *, tol=DEFAULT_TOL):
    r"""Boolean mask of activations whose sign may flip under rounding.

    ``True`` where :math:`|x - \beta| \le tol\,(|x| + |\beta| + |\alpha|)`, i.e. where
    ``v = (x - beta)/alpha`` lies within ``tol`` of the threshold 0 (relative to the operands;
    for ``|x|, |beta| << |alpha|`` this is ``|v| <= tol``). Exact ties ``x == beta`` are
    included. ``alpha``/``beta`` are scalars or ``(C,)`` arrays along axis 1 of ``x``, as in
    :func:`~adabin_np.binarize_activations`. Default ``tol`` = :data:`DEFAULT_TOL` (1e-5, about
    100 float32 ulps): a BNN amplifies rounding -- float32 and float64 runs of one ResNet-20
    disagree on ~0.1% of CIFAR-10 predictions -- and these are the elements responsible.

    >>> flip_risk([0.5, 1e-7, 0.0, -1e-3], 1.0, 0.0)
    array([False,  True,  True, False])
    """
    tol = _check_tol(tol)
    _bin.binarize_activations(x, alpha, beta)  # the oracle's validation and messages
    x, x3, alpha_c, beta_c, _ = _act_setup(x, alpha, beta)
    return _act_near(x3, alpha_c, beta_c, tol).reshape(x.shape)


def weight_flip_risk(w, *, tol=DEFAULT_TOL):
    r"""Boolean mask of weights whose sign may flip under rounding.

    With the oracle's per-output-channel set ``(alpha_w, beta_w)`` (axis 0 of ``w``),
    ``True`` where :math:`|W - \beta_w| \le tol\,(|W| + |\beta_w| + \alpha_w)`, i.e.
    ``u = (W - beta_w)/alpha_w`` within ``tol`` of 0. The extra terms bound the error of a mean
    computed in lower precision. Exact ties ``W == beta_w`` are included; constant filters
    (``alpha_w = 0``, binarized to ``beta_w`` whatever the sign) are never at risk.

    >>> weight_flip_risk([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    array([[False,  True, False],
           [False, False, False]])
    """
    tol = _check_tol(tol)
    _bin.weight_binary_set(w)  # the oracle's validation and messages
    w, w2 = _weights_setup(w)
    return _weight_near(w2, tol).reshape(w.shape)


def conv_flip_risk(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                   tol=DEFAULT_TOL):
    """Number of flip-risk inputs each output of :func:`~adabin_np.adabin_conv2d` reads.

    Returns an int array of the output's shape ``(N, O, H_out, W_out)``: the flip-risk
    activation taps inside each output's receptive field (padded taps excluded; stride,
    padding, dilation and groups honoured) plus the flip-risk weights of its output channel
    that meet an in-bounds tap. An output with count 0 cannot change by a sign flip.
    """
    tol = _check_tol(tol)
    _conv.adabin_conv2d(x, w, alpha, beta, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)  # the oracle's validation and messages
    x, w, p = _conv_setup(x, w, stride, padding, dilation, groups)
    _, x3, alpha_c, beta_c, _ = _act_setup(x, alpha, beta)
    rx = _act_near(x3, alpha_c, beta_c, tol).reshape(x.shape)
    rw = _weight_near(w.reshape(w.shape[0], -1), tol).reshape(w.shape)
    return np.rint(_conv_deps(rx, rw, p)).astype(np.int64)


def _conv_deps(rx, rw, p):
    """Flip-risk dependencies of conv outputs: risky taps in the field + risky in-bounds weights."""
    ones_x = np.ones(rx.shape)
    ones_w = np.ones(rw.shape)
    return _corr(rx.astype(np.float64), ones_w, p) + _corr(ones_x, rw.astype(np.float64), p)


# ==============================================================================================
# plain NumPy correlation and its two transposes (for scales and dependency counts)
# ==============================================================================================


def _tap_slices(p, kh, kw):
    """(ki, kj, rows, cols): slices of the zero-padded input read by tap (ki, kj)."""
    sh, sw = p.stride
    dh, dw = p.dilation
    for ki in range(kh):
        rows = slice(ki * dh, ki * dh + sh * (p.out_h - 1) + 1, sh)
        for kj in range(kw):
            yield ki, kj, rows, slice(kj * dw, kj * dw + sw * (p.out_w - 1) + 1, sw)


def _pad(x, p):
    ph, pw = p.padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _corr(x, w, p):
    """y = cross-correlation of NCHW ``x`` with OIHW ``w`` (zero padding, float64)."""
    n, _, _, _ = x.shape
    o, cg, kh, kw = w.shape
    og = o // p.groups
    xp = _pad(x, p)
    y = np.zeros((n, o, p.out_h, p.out_w))
    for g in range(p.groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for ki, kj, rows, cols in _tap_slices(p, kh, kw):
            y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", xs[:, :, rows, cols],
                                                   ws[:, :, ki, kj])
    return y


def _corr_t_input(gy, w, p, x_shape):
    """Transpose of :func:`_corr` w.r.t. its input (padded taps dropped)."""
    o, cg, kh, kw = w.shape
    og = o // p.groups
    ph, pw = p.padding
    n, c, h, wd = x_shape
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    for g in range(p.groups):
        gs = gy[:, g * og:(g + 1) * og]
        ws = w[g * og:(g + 1) * og]
        for ki, kj, rows, cols in _tap_slices(p, kh, kw):
            dxp[:, g * cg:(g + 1) * cg, rows, cols] += np.einsum("nohw,oc->nchw", gs,
                                                                 ws[:, :, ki, kj])
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def _corr_t_weight(x, gy, p, w_shape):
    """Transpose of :func:`_corr` w.r.t. its weights."""
    o, cg, kh, kw = w_shape
    og = o // p.groups
    xp = _pad(x, p)
    dw = np.zeros(w_shape)
    for g in range(p.groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        gs = gy[:, g * og:(g + 1) * og]
        for ki, kj, rows, cols in _tap_slices(p, kh, kw):
            dw[g * og:(g + 1) * og, :, ki, kj] = np.einsum("nchw,nohw->oc", xs[:, :, rows, cols],
                                                           gs)
    return dw


# ==============================================================================================
# what the oracle expects: value, error scale and flip-risk dependencies of every output
# ==============================================================================================


class _Field(NamedTuple):
    name: str
    expected: np.ndarray
    scale: np.ndarray  # rounding scale of each expected value (sum of |terms|, conditioning)
    deps: np.ndarray  # number of forgivable flip-risk inputs each value depends on
    squeeze_ok: bool  # parameter gradients: accept (1, C, 1, 1) etc. for (C,)


def _f(name, expected, scale, deps, squeeze_ok=False):
    expected = np.asarray(expected, dtype=np.float64)
    shape = expected.shape
    return _Field(name, expected, np.broadcast_to(np.asarray(scale, np.float64), shape),
                  np.broadcast_to(np.asarray(deps, np.float64), shape), squeeze_ok)


class _Act(NamedTuple):
    """Activations viewed as (N, C, S) with everything the scales need."""

    x: np.ndarray  # validated float64, original shape
    x3: np.ndarray
    alpha_c: np.ndarray
    beta_c: np.ndarray
    per_channel: tuple  # (alpha is an array, beta is an array)
    official: bool
    a: np.ndarray  # (1, C, 1)
    b: np.ndarray
    v: np.ndarray  # (x - beta)/alpha
    cond: np.ndarray  # |v| + (|x| + |beta|)/|alpha|: the rounding scale of v
    level: np.ndarray  # rounding scale of a binarized value: |a| + |b| or |a|(1 + |b|)


def _act_parts(x, alpha, beta, convention):
    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, per_channel = _act_setup(x, alpha, beta)
    a = alpha_c[None, :, None]
    b = beta_c[None, :, None]
    v = (x3 - b) / a
    with np.errstate(over="ignore"):
        cond = np.abs(v) + (np.abs(x3) + np.abs(b)) / np.abs(a)
    level = np.abs(a) * (1.0 + np.abs(b)) if official else np.abs(a) + np.abs(b)
    return _Act(x, x3, alpha_c, beta_c, per_channel, official, a, b, v, cond,
                np.broadcast_to(level, x3.shape))


def _weight_parts(w2):
    """(alpha_w, beta_w) as (O, 1), u, the rounding scale of u, and that of a binarized weight."""
    alpha, beta = _bin.weight_binary_set(w2)
    a = alpha[:, None]
    b = beta[:, None]
    live = a > 0.0
    safe = np.where(live, a, 1.0)
    with np.errstate(over="ignore"):
        u = np.where(live, (w2 - b) / safe, 0.0)
        cond = np.where(live, np.abs(u) + (np.abs(w2) + np.abs(b)) / safe, 0.0)
    return a, b, u, cond, np.broadcast_to(a + np.abs(b), w2.shape)


def _constant_channels(w2):
    """(O, 1) mask of constant filters: their dW rule (sum(g)/n) is a knife-edge.

    A mean of equal values need not reproduce the value (three times 0.1), so an implementation
    that does not test for exact equality finds a tiny alpha_w and random signs instead: the
    forward values still agree (Wb ~ beta_w), the gradient does not. NaN is never forgiven.
    """
    return _bin.weight_binary_set(w2)[0][:, None] == 0.0


def _reduce(a, per_channel):
    return a.sum(axis=(0, 2)) if per_channel else np.asarray(a.sum())


def _act_grad_fields(act, g_abs, g_nz, near, dxb_deps=None):
    """Scales and flip-risk deps of (dx, dalpha, dbeta) for |g| (or its scale) on (N, C, S).

    ``F'(v) = max(0, 2 - 2|v|)`` moves by ``2|dv|`` when ``v`` is rounded, so its scale is
    ``2 + 2*cond`` where it can be non-zero (``|v| < 2`` leaves a wide margin) and 0 elsewhere.
    """
    active = np.abs(act.v) < 2.0
    fs = np.where(active, 2.0 + 2.0 * act.cond, 0.0)
    s_term = 1.0 + np.abs(act.b) if act.official else 1.0
    alpha_pc, beta_pc = act.per_channel
    dx_scale = g_abs * fs
    dalpha_scale = _reduce(g_abs * (s_term + fs * np.where(active, 1.0 + act.cond, 0.0)),
                           alpha_pc)
    dbeta_scale = _reduce(g_abs * ((np.abs(act.a) if act.official else 1.0) + fs), beta_pc)
    sign_deps = (near & g_nz).astype(np.float64)
    if dxb_deps is None:  # binarization alone: only the s of dalpha can flip
        dx_deps = grad_deps = np.zeros(act.v.shape)
    else:  # inside the conv, dL/dxb itself depends on the weights' signs
        dx_deps = dxb_deps * (np.abs(act.v) < 1.0)
        grad_deps = dxb_deps
    return (dx_scale.reshape(act.x.shape), dx_deps.reshape(act.x.shape),
            dalpha_scale, _reduce(sign_deps + grad_deps, alpha_pc),
            dbeta_scale, _reduce(grad_deps, beta_pc))


def _weight_grad_scale(w2, g_abs, k, t):
    """Forward-error scale of dW (SPEC section 2) for |dL/dWb| (or its scale) ``g_abs``."""
    a, _, u, cond, _ = _weight_parts(w2)
    e = np.abs(k * t) * (1.0 - np.tanh(t * u) ** 2) + np.abs(k * t * t) * cond  # EDE and slope
    n = w2.shape[1]
    s1 = (g_abs * (1.0 + e)).sum(axis=1, keepdims=True) / n
    s2 = (g_abs * (1.0 + e * cond)).sum(axis=1, keepdims=True) / n
    scale = g_abs * e + s1 + cond * s2
    const = g_abs.sum(axis=1, keepdims=True) / n
    return np.where(a > 0.0, scale, const)


def _exp_binarize_activations(oracle, b, ctx):
    expected = oracle(**b)
    act = _act_parts(b["x"], b["alpha"], b["beta"], b["convention"])
    deps = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    return [_f("output", expected, act.level.reshape(act.x.shape), deps.reshape(act.x.shape))]


def _exp_binarize_weights(oracle, b, ctx):
    expected = oracle(**b)
    w, w2 = _weights_setup(b["w"])
    level = _weight_parts(w2)[4]
    deps = _weight_near(w2, ctx.tol, ctx.ties).reshape(w.shape)
    return [_f("output", expected, level.reshape(w.shape), deps)]


def _exp_binarize_activations_grad(oracle, b, ctx):
    got = oracle(**b)
    act = _act_parts(b["x"], b["alpha"], b["beta"], b["convention"])
    g3 = np.asarray(b["grad"], dtype=np.float64).reshape(act.x3.shape)
    near = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    sc = _act_grad_fields(act, np.abs(g3), g3 != 0.0, near)
    return [_f("dx", got.dx, sc[0], sc[1]),
            _f("dalpha", got.dalpha, sc[2], sc[3], True),
            _f("dbeta", got.dbeta, sc[4], sc[5], True)]


def _exp_binarize_weights_grad(oracle, b, ctx):
    got = oracle(**b)
    w, w2 = _weights_setup(b["w"])
    g2 = np.abs(np.asarray(b["grad"], dtype=np.float64).reshape(w2.shape))
    scale = _weight_grad_scale(w2, g2, float(b["k"]), float(b["t"]))
    near = _weight_near(w2, ctx.tol, ctx.ties) & (g2 != 0.0)
    deps = near.sum(axis=1, keepdims=True) + _constant_channels(w2) * w2.shape[1]
    return [_f("dw", got, scale.reshape(w.shape), np.broadcast_to(deps, w2.shape).reshape(w.shape))]


def _geometry(b):
    return _conv_setup(b["x"], b["w"], b["stride"], b["padding"], b["dilation"], b["groups"])


def _exp_conv2d(oracle, b, ctx):
    expected = oracle(**b)
    x, w, p = _geometry(b)
    return [_f("output", expected, _corr(np.abs(x), np.abs(w), p), 0.0)]


def _conv_parts(b, ctx):
    """Geometry, activations, weights, binarized-value scales and flip-risk masks of a conv."""
    x, w, p = _geometry(b)
    act = _act_parts(x, b["alpha"], b["beta"], b["convention"])
    w2 = w.reshape(w.shape[0], -1)
    x_level = act.level.reshape(x.shape)
    w_level = _weight_parts(w2)[4].reshape(w.shape)
    rx = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    rw = _weight_near(w2, ctx.tol, ctx.ties).reshape(w.shape)
    return x, w, w2, p, act, x_level, w_level, rx, rw


def _exp_adabin_conv2d(oracle, b, ctx):
    expected = oracle(**b)
    x, w, _, p, _, x_level, w_level, rx, rw = _conv_parts(b, ctx)
    return [_f("output", expected, _corr(x_level, w_level, p),
               _conv_deps(rx.reshape(x.shape), rw, p))]


def _exp_adabin_conv2d_grad(oracle, b, ctx):
    got = oracle(**b)
    x, w, w2, p, act, x_level, w_level, rx, rw = _conv_parts(b, ctx)
    gy = np.abs(np.asarray(b["grad_y"], dtype=np.float64))
    gy_nz = (gy != 0.0).astype(np.float64)
    rwf = rw.astype(np.float64)
    # dL/dxb = conv^T_x(gy, Wb) and dL/dWb = conv^T_W(xb, gy): scales and sign dependencies
    dxb_scale = _corr_t_input(gy, w_level, p, x.shape).reshape(act.x3.shape)
    dxb_deps = _corr_t_input(gy_nz, rwf, p, x.shape).reshape(act.x3.shape)
    dwb_scale = _corr_t_weight(x_level, gy, p, w.shape).reshape(w2.shape)
    dwb_deps = _corr_t_weight(rx.reshape(x.shape).astype(np.float64), gy_nz, p, w.shape)
    sc = _act_grad_fields(act, dxb_scale, dxb_scale != 0.0, rx, dxb_deps)
    dw_scale = _weight_grad_scale(w2, dwb_scale, float(b["k"]), float(b["t"]))
    # dW of a channel mixes all of its dL/dWb (through alpha_w, beta_w) and its weights' signs
    dw_deps = (dwb_deps.reshape(w2.shape).sum(axis=1, keepdims=True)
               + rwf.reshape(w2.shape).sum(axis=1, keepdims=True)
               + _constant_channels(w2) * w2.shape[1])
    dw_deps = np.broadcast_to(dw_deps, w2.shape).reshape(w.shape)
    return [_f("dx", got.dx, sc[0], sc[1]),
            _f("dw", got.dw, dw_scale.reshape(w.shape), dw_deps),
            _f("dalpha", got.dalpha, sc[2], sc[3], True),
            _f("dbeta", got.dbeta, sc[4], sc[5], True)]


_OPS = {  # name: (oracle, expectation builder, names of the outputs)
    "binarize_activations": (_bin.binarize_activations, _exp_binarize_activations,
                             ("output",)),
    "binarize_weights": (_bin.binarize_weights, _exp_binarize_weights, ("output",)),
    "binarize_activations_grad": (_bin.binarize_activations_grad,
                                  _exp_binarize_activations_grad, ("dx", "dalpha", "dbeta")),
    "binarize_weights_grad": (_bin.binarize_weights_grad, _exp_binarize_weights_grad, ("dw",)),
    "conv2d": (_conv.conv2d, _exp_conv2d, ("output",)),
    "adabin_conv2d": (_conv.adabin_conv2d, _exp_adabin_conv2d, ("output",)),
    "adabin_conv2d_grad": (_conv.adabin_conv2d_grad, _exp_adabin_conv2d_grad,
                           ("dx", "dw", "dalpha", "dbeta")),
}


# ==============================================================================================
# reports
# ==============================================================================================


class FieldReport(NamedTuple):
    """Comparison of one output (``"output"``, ``"dx"``, ``"dw"``, ``"dalpha"``, ``"dbeta"``)."""

    name: str
    shape: tuple
    size: int
    mismatched: int  # elements outside atol + rtol*scale
    forgiven: int  # ... of which depend on a flip-risk input
    worst: dict | None  # worst unforgiven element: index, actual, expected, diff, allowed
    table: str  # a few rows: worst unforgiven first, then forgiven ones
    error: str | None = None  # shape problem, if any

    @property
    def unforgiven(self):
        return self.mismatched - self.forgiven

    @property
    def ok(self):
        return self.error is None and self.unforgiven == 0


class OracleReport(NamedTuple):
    """Result of :func:`compare_with_oracle`; ``str(report)`` is the assertion message."""

    op: str
    fields: tuple
    rtol: float
    atol: float
    tol: float

    @property
    def ok(self):
        return all(f.ok for f in self.fields)

    @property
    def mismatched(self):
        return sum(f.mismatched for f in self.fields)

    @property
    def forgiven(self):
        return sum(f.forgiven for f in self.fields)

    def __str__(self):
        head = "matches" if self.ok else "does not match"
        lines = [f"{self.op} {head} the oracle (rtol={self.rtol:g} of the summed |terms|, "
                 f"atol={self.atol:g}, flip-risk tol={self.tol:g})"]
        for f in self.fields:
            if f.error is not None:
                lines.append(f"  {f.name}: {f.error}")
                continue
            lines.append(f"  {f.name}: {f.mismatched} of {f.size} elements differ, "
                         f"{f.forgiven} forgiven as flip risk, {f.unforgiven} not")
            if f.worst is not None:
                wst = f.worst
                lines.append(f"    worst unforgiven: {f.name}{_fmt_index(wst['index'])} = "
                             f"{wst['actual']:.9g}, oracle {wst['expected']:.9g} "
                             f"(|diff| {wst['diff']:.3g} > allowed {wst['allowed']:.3g})")
            if f.table:
                lines.append(f.table)
        return "\n".join(lines)


def _fmt_index(index):
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _table(idx_rows, actual, expected, diff, allowed, deps, forgiven_mask):
    header = (f"    {'index':<16} {'actual':>14} {'oracle':>14} {'|diff|':>10} {'allowed':>10}"
              f" {'flip-risk deps':>14}")
    lines = [header]
    for i in idx_rows:
        mark = "  (forgiven)" if forgiven_mask[i] else ""
        lines.append(f"    {_fmt_index(i):<16} {actual[i]:>14.7g} {expected[i]:>14.7g} "
                     f"{diff[i]:>10.3g} {allowed[i]:>10.3g} {int(deps[i]):>14d}{mark}")
    return "\n".join(lines)


def _compare_field(field, actual, rtol, atol, max_rows):
    exp = field.expected
    name = field.name
    if actual.shape != exp.shape:
        if field.squeeze_ok and actual.size == exp.size and \
                np.squeeze(actual).shape == np.squeeze(exp).shape:
            actual = actual.reshape(exp.shape)
        else:
            return FieldReport(name, exp.shape, exp.size, exp.size, 0, None, "",
                               f"shape {actual.shape} differs from the oracle's {exp.shape}")
    allowed = atol + rtol * field.scale
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(actual - exp)
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = ~(diff <= allowed)
    forgiven = bad & (field.deps > 0) & np.isfinite(actual)
    unforgiven = bad & ~forgiven
    worst = None
    rows = []
    if unforgiven.any():
        order = np.argsort(-np.where(unforgiven, diff, -1.0), axis=None, kind="stable")
        rows = [np.unravel_index(j, exp.shape) for j in order[:int(min(max_rows,
                                                                         unforgiven.sum()))]]
        i = rows[0]
        worst = dict(index=tuple(int(k) for k in i), actual=float(actual[i]),
                     expected=float(exp[i]), diff=float(diff[i]), allowed=float(allowed[i]))
    n_forgiven = int(forgiven.sum())
    if n_forgiven:
        extra = np.argwhere(forgiven)[:3]
        rows += [tuple(int(k) for k in r) for r in extra]
    table = _table(rows, actual, exp, diff, allowed, field.deps, forgiven) if rows else ""
    return FieldReport(name, exp.shape, exp.size, int(bad.sum()), n_forgiven, worst, table)


# ==============================================================================================
# comparing
# ==============================================================================================


class _Ctx(NamedTuple):
    tol: float
    ties: bool


def _to_numpy(value, what):
    """array-like, torch tensor, CuPy / numba.cuda array -> (float64 ndarray, dtype name)."""
    if hasattr(value, "detach") and callable(value.detach):  # torch, without importing it
        t = value.detach()
        if hasattr(t, "cpu"):
            t = t.cpu()
        name = str(getattr(t, "dtype", "")).replace("torch.", "")
        if name == "bfloat16":
            t = t.float()
        return _real(np.asarray(t.numpy()), what), name
    if hasattr(value, "copy_to_host"):  # numba.cuda device array
        value = value.copy_to_host()
    elif type(value).__module__.split(".")[0] == "cupy":
        value = value.get()
    arr = _real(np.asarray(value), what)
    return arr, arr.dtype.name


def _real(arr, what):
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _unwrap_arg(value):
    if hasattr(value, "detach") and callable(value.detach):
        return _to_numpy(value, "argument")[0]
    return value


def _resolve_op(op):
    if callable(op):
        op = getattr(op, "__name__", op)
    if not isinstance(op, str):
        raise TypeError(f"op must be an oracle function or its name, got {op!r}")
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
    return op


def _split_actual(actual, names):
    """Match ``actual`` to the oracle's outputs: {name: value} (None = not checked)."""
    names = list(names)
    if isinstance(actual, dict):
        unknown = set(actual) - set(names)
        if unknown:
            raise ValueError(f"actual has unknown gradient names {sorted(unknown)}; "
                             f"expected a subset of {names}")
        return {n: actual.get(n) for n in names}
    if len(names) == 1:
        if isinstance(actual, (tuple, list)) and len(actual) == 1:
            actual = actual[0]
        return {names[0]: actual}
    if hasattr(actual, "_asdict"):
        return _split_actual(dict(actual._asdict()), names)
    if isinstance(actual, (tuple, list)):
        if len(actual) != len(names):
            raise ValueError(f"actual has {len(actual)} entries but the oracle returns "
                             f"{len(names)} ({', '.join(names)}); pass a dict to check a subset")
        return dict(zip(names, actual))
    raise TypeError(f"actual must be a tuple ({', '.join(names)}) or a dict of them, "
                    f"got {type(actual).__name__}")


def compare_with_oracle(actual, op, *args, rtol=None, atol=None, tol=None, forgive_ties=False,
                        max_rows=8, **kwargs):
    """Like :func:`assert_matches_oracle` but return the :class:`OracleReport`, never raise it."""
    name = _resolve_op(op)
    oracle, expect, names = _OPS[name]
    if callable(actual) and not hasattr(actual, "shape"):
        actual = actual(*args, **kwargs)  # your function gets the arguments as given
    args = tuple(_unwrap_arg(a) for a in args)
    kwargs = {k: _unwrap_arg(v) for k, v in kwargs.items()}
    bound = inspect.signature(oracle).bind(*args, **kwargs)
    bound.apply_defaults()
    if actual is None:
        raise TypeError("actual is None (did your implementation return nothing?)")

    values = {}
    precision = None
    for fname, value in _split_actual(actual, names).items():
        if value is None:
            continue
        arr, dtype_name = _to_numpy(value, f"actual {fname}")
        values[fname] = arr
        precision = precision or dtype_name
    if not values:
        raise ValueError("actual contains nothing to compare (all entries are None)")
    d_rtol, d_tol = _PRECISION.get(precision, _PRECISION["float64"])
    rtol = d_rtol if rtol is None else _nonneg(rtol, "rtol")
    atol = 0.0 if atol is None else _nonneg(atol, "atol")
    tol = d_tol if tol is None else _check_tol(tol)
    fields = expect(oracle, dict(bound.arguments), _Ctx(tol, bool(forgive_ties)))
    reports = tuple(_compare_field(f, values[f.name].astype(np.float64), rtol, atol, max_rows)
                    for f in fields if f.name in values)
    return OracleReport(name, reports, rtol, atol, tol)


def _nonneg(value, name):
    value = float(value)
    if not (np.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def assert_matches_oracle(actual, op, *args, rtol=None, atol=None, tol=None, forgive_ties=False,
                          max_rows=8, **kwargs):
    r"""Assert that ``actual`` equals the oracle's ``op(*args, **kwargs)`` up to rounding.

    Parameters
    ----------
    actual : array_like, torch tensor, tuple, dict or callable
        Your implementation's result: an array (NumPy, torch -- detached and moved to the CPU
        automatically -- CuPy, numba.cuda) for a forward op; for a ``*_grad`` op a tuple in the
        oracle's order (``(dx, dalpha, dbeta)``, ``dw``, ``(dx, dw, dalpha, dbeta)``) or a dict
        with any subset of those names (``None`` entries are skipped). Parameter gradients may
        carry extra length-1 axes (``(1, C, 1, 1)`` for ``(C,)``). If callable, it is called
        as ``actual(*args, **kwargs)``.
    op : str or function
        ``"binarize_activations"``, ``"binarize_weights"``, ``"adabin_conv2d"``, ``"conv2d"``,
        their ``"*_grad"`` versions (not ``conv2d``), or the oracle function itself.
    *args, **kwargs
        Exactly the oracle's arguments (torch tensors are accepted and converted).
    rtol, atol : float, optional
        An element passes when ``|actual - expected| <= atol + rtol * scale``, where ``scale``
        is the sum of the absolute values of the terms that make up the expected value (for a
        convolution output ``conv2d(|x_b|, |W_b|)``; for gradients propagated likewise). This
        is a forward-error bound, so cancellation never makes it fail spuriously. Default
        ``rtol`` from the dtype of ``actual``: float64 1e-9, float32 1e-5, float16 1e-2,
        bfloat16 5e-2; default ``atol`` 0.
    tol : float, optional
        Flip-risk tolerance (see :func:`flip_risk`); default by dtype like ``rtol``.
    forgive_ties : bool
        Also forgive mismatches caused by exact ties (``x == beta``, ``W == beta_w``), where
        the convention decides the sign. Keep False to test the convention; set True for the
        bit-packed path (it maps 0 to +1 in both conventions).
    max_rows : int
        Rows of the failure table.

    Mismatches are **forgiven** only when the expected value depends on a flip-risk input:
    the element itself (binarization), an activation tap in the receptive field or a weight of
    the output channel (convolution; stride, padding, dilation and groups honoured), or any
    risky sign in the same reduction (``dalpha``, ``dw`` of a channel). ``dbeta`` and the ``dx``
    of a binarization never depend on a sign, so they are never forgiven. The ``dw`` of a
    constant filter is forgiven too: its rule ``sum(g)/n`` holds only when the implementation
    detects exact equality (a floating mean of equal values need not be exact). Non-finite values
    in ``actual`` are never forgiven. Note that a channel with one risky weight may differ
    anywhere: which weight flipped cannot be told from the outputs of a channel.

    Returns the :class:`OracleReport` (``.forgiven`` tells how many were forgiven). Raises
    ``AssertionError`` whose message gives, per output, the number of mismatches, how many were
    forgiven, the worst unforgiven index with its value and the oracle's, and a short table.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(4, 3, 3, 3))
    >>> y = my_conv(x, w, 0.8, 0.1, stride=2, padding=1)             # doctest: +SKIP
    >>> assert_matches_oracle(y, "adabin_conv2d", x, w, 0.8, 0.1,
    ...                       stride=2, padding=1)                      # doctest: +SKIP
    >>> grads = my_conv_backward(x, w, 0.8, 0.1, gy)                  # doctest: +SKIP
    >>> assert_matches_oracle({"dx": grads[0], "dw": grads[1]}, "adabin_conv2d_grad",
    ...                       x, w, 0.8, 0.1, gy)                     # doctest: +SKIP
    """
    report = compare_with_oracle(actual, op, *args, rtol=rtol, atol=atol, tol=tol,
                                 forgive_ties=forgive_ties, max_rows=max_rows, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report


def assert_grads_match(grads, op, *args, **kwargs):
    """:func:`assert_matches_oracle` for the gradient of ``op`` (``"_grad"`` appended if missing).

    >>> assert_grads_match((dx, dalpha, dbeta), "binarize_activations",
    ...                    x, alpha, beta, g)                               # doctest: +SKIP
    """
    name = op if isinstance(op, str) else _resolve_op(op)
    if not name.endswith("_grad"):
        name += "_grad"
    return assert_matches_oracle(grads, name, *args, **kwargs)


# ==============================================================================================
# hypothesis strategies
# ==============================================================================================


def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError("adabin_np.testing strategies need hypothesis "
                          "(pip install 'adabin-np[test]')") from exc
    return st


class ConvShape(NamedTuple):
    """A valid AdaBin conv geometry drawn by :func:`conv_shapes`."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: int | tuple
    padding: int | tuple
    dilation: int | tuple
    groups: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self):
        return (self.o, self.c // self.groups, self.kh, self.kw)

    @property
    def kwargs(self):
        """``dict(stride=..., padding=..., dilation=..., groups=...)``."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    @property
    def out_shape(self):
        p = conv_params(self.x_shape, self.w_shape, **self.kwargs)
        return (self.n, self.o, p.out_h, p.out_w)


def _maybe_pair(a, b):
    return a if a == b else (a, b)


def conv_shapes(*, max_batch=2, max_channels_per_group=4, max_out_per_group=3, max_groups=3,
                max_size=8, max_kernel=4, max_stride=3, max_padding=2, max_dilation=2,
                min_filter_size=1):
    """Strategy for valid conv geometries, as :class:`ConvShape`.

    Channels are multiples of ``groups``; every filter has at least ``min_filter_size``
    weights (``(C/groups)*kh*kw``; a one-weight filter is always constant);
    ``stride``/``padding``/``dilation`` come as ints or (h, w) pairs; the input is never
    smaller than the dilated kernel minus the padding (it may be smaller than the kernel itself
    when padded, and the padding may exceed the kernel: some outputs then read padding only).
    ``shape.x_shape``, ``shape.w_shape``, ``shape.kwargs`` and ``shape.out_shape`` feed the
    oracle directly.
    """
    st = _st()

    @st.composite
    def draw_shape(draw):
        groups = draw(st.integers(1, max_groups))
        cg = draw(st.integers(1, max_channels_per_group))
        og = draw(st.integers(1, max_out_per_group))
        kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
        while cg * kh * kw < min_filter_size:
            kw += 1
        sh, sw = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
        dh, dw = draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation))
        ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
        h_lo = max(1, dh * (kh - 1) + 1 - 2 * ph)
        w_lo = max(1, dw * (kw - 1) + 1 - 2 * pw)
        h = draw(st.integers(h_lo, max(h_lo, max_size)))
        w = draw(st.integers(w_lo, max(w_lo, max_size)))
        n = draw(st.integers(1, max_batch))
        return ConvShape(n, cg * groups, h, w, og * groups, kh, kw, _maybe_pair(sh, sw),
                         _maybe_pair(ph, pw), _maybe_pair(dh, dw), groups)

    return draw_shape()


REALISTIC_WEIGHTS = ("gaussian", "laplace", "uniform", "trained")
DEGENERATE_WEIGHTS = ("constant", "zero", "one_hot", "ties", "huge", "tiny")


def _shape_strategy(st, shape):
    if isinstance(shape, tuple):
        return st.just(tuple(int(s) for s in shape))
    return shape


def _weights_sample(rng, shape, kind):
    o = shape[0]
    inner = shape[1:]
    n = int(np.prod(inner))
    if kind == "gaussian":
        w = rng.normal(0.0, 0.1, size=shape)
    elif kind == "laplace":
        w = rng.laplace(0.0, 0.05, size=shape)
    elif kind == "uniform":
        w = rng.uniform(-0.2, 0.2, size=shape)
    elif kind == "trained":
        # per-channel scales spread over decades, small channel offsets, heavy tails
        scale = 10.0 ** rng.uniform(-3, 0, size=(o,) + (1,) * len(inner))
        shift = rng.normal(0.0, 0.3, size=(o,) + (1,) * len(inner)) * scale
        w = np.where(rng.random(shape) < 0.9, rng.normal(size=shape),
                     rng.laplace(0.0, 3.0, size=shape)) * scale + shift
    elif kind == "constant":
        value = rng.normal(size=(o,) + (1,) * len(inner))
        w = np.broadcast_to(value, shape).copy()
        mixed = rng.random(o) < 0.5  # some ordinary channels next to the constant ones
        w[mixed] = rng.normal(size=(int(mixed.sum()),) + inner)
    elif kind == "zero":
        w = np.zeros(shape)
        if o > 1 and rng.random() < 0.5:
            w[1:] = rng.normal(size=(o - 1,) + inner)
    elif kind == "one_hot":
        w = np.zeros((o, n))
        w[np.arange(o), rng.integers(0, n, size=o)] = rng.normal(size=o) + 2.0
        w = w.reshape(shape)
    elif kind == "ties":
        # dyadic weights whose mean is exact (in float32 too) and hit by weight 1 exactly
        k = rng.integers(-3, 4, size=(o, n)).astype(np.float64)
        if n > 1:
            k[:, 1] = 0.0
        k[:, 0] = -(k.sum(axis=1) - k[:, 0])  # every row sums to exactly 0
        mean = rng.integers(-8, 9, size=(o, 1)) * 0.125
        w = (mean + k * 2.0 ** -int(rng.integers(2, 6))).reshape(shape)
    elif kind in ("huge", "tiny"):
        exps = (6, 12, 30) if kind == "huge" else (-6, -12, -30)
        scale = 10.0 ** exps[int(rng.integers(0, 3))]
        w = (rng.normal(size=shape) + rng.normal()) * scale
    else:
        raise ValueError(f"unknown weight kind {kind!r}")
    return np.ascontiguousarray(w, dtype=np.float64)


def weights(shape, kind=None):
    """Strategy for float64 weight arrays of ``shape`` (a tuple or a strategy of tuples).

    ``kind`` (a name, a list of names, ``"realistic"``, ``"degenerate"`` or None for all):
    realistic ``"gaussian"``, ``"laplace"``, ``"uniform"``, ``"trained"`` (per-channel scales
    over three decades, offsets, heavy tails); degenerate ``"constant"`` (constant filters
    next to ordinary ones), ``"zero"``, ``"one_hot"`` (one non-zero per filter), ``"ties"``
    (dyadic weights exactly at the channel mean, exact in float32 too), ``"huge"``/``"tiny"``
    (scales 1e6..1e30 / 1e-6..1e-30 -- float32 implementations over- or underflow the
    variance at the extremes). Values come from a NumPy generator seeded by hypothesis.
    """
    st = _st()
    if kind is None:
        kinds = REALISTIC_WEIGHTS + DEGENERATE_WEIGHTS
    elif kind == "realistic":
        kinds = REALISTIC_WEIGHTS
    elif kind == "degenerate":
        kinds = DEGENERATE_WEIGHTS
    elif isinstance(kind, str):
        kinds = (kind,)
    else:
        kinds = tuple(kind)
    for k in kinds:
        if k not in REALISTIC_WEIGHTS + DEGENERATE_WEIGHTS:
            raise ValueError(f"unknown weight kind {k!r}")

    @st.composite
    def draw_weights(draw):
        shp = draw(_shape_strategy(st, shape))
        if len(shp) < 2:
            raise ValueError(f"weights need >= 2 dimensions (O, ...), got {shp}")
        k = draw(st.sampled_from(kinds))
        seed = draw(st.integers(0, 2**32 - 1))
        return _weights_sample(np.random.default_rng(seed), shp, k)

    return draw_weights()


def _channel_view(value, ndim):
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return value
    return value.reshape((1, -1) + (1,) * (ndim - 2))


def activations(shape, alpha=1.0, beta=0.0, *, kind=None, at_threshold=True):
    """Strategy for float64 activations around the binary set ``(alpha, beta)``.

    ``x = beta + alpha * v`` with ``v`` from ``kind`` (``"gaussian"``, ``"laplace"``,
    ``"uniform"`` on [-3, 3], ``"relu"`` -- post-activation, mostly >= 0 -- or None for any);
    ``alpha``/``beta`` are scalars or ``(C,)`` arrays along axis 1. With ``at_threshold`` a
    fraction of the elements is set exactly to ``beta`` (exact ties), one float64 ulp either
    side of it (flip risk), and to ``beta +- alpha`` (the kinks of the Bi-Real estimator).
    """
    st = _st()
    kinds = ("gaussian", "laplace", "uniform", "relu") if kind is None else (kind,)

    @st.composite
    def draw_x(draw):
        shp = draw(_shape_strategy(st, shape))
        a = _channel_view(alpha, len(shp))
        b = _channel_view(beta, len(shp))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        k = draw(st.sampled_from(kinds))
        if k == "gaussian":
            v = rng.normal(0.0, 1.5, size=shp)
        elif k == "laplace":
            v = rng.laplace(0.0, 1.0, size=shp)
        elif k == "uniform":
            v = rng.uniform(-3.0, 3.0, size=shp)
        elif k == "relu":
            v = np.maximum(rng.normal(0.5, 1.0, size=shp), -0.1)
        else:
            raise ValueError(f"unknown activation kind {k!r}")
        x = np.broadcast_to(b + a * v, shp).copy()
        if at_threshold:
            frac = draw(st.sampled_from((0.0, 0.05, 0.3)))
            special = rng.random(shp) < frac
            choice = rng.integers(0, 5, size=shp)
            bb = np.broadcast_to(b, shp)
            aa = np.broadcast_to(a, shp)
            table = [bb, np.nextafter(bb, np.inf), np.nextafter(bb, -np.inf), bb + aa, bb - aa]
            picked = np.choose(choice, table)
            x = np.where(special, picked, x)
        return np.ascontiguousarray(x)

    return draw_x()


def binary_sets(channels=None, *, negative_alpha=False, per_channel=None, max_abs_alpha=4.0,
                max_abs_beta=2.0):
    """Strategy for activation binary sets ``(alpha, beta)``, ``alpha != 0``.

    ``channels=None`` gives Python floats. With ``channels=C`` each of ``alpha`` and ``beta`` is
    a float or a float64 ``(C,)`` array (``per_channel=True``/``False`` forces arrays/floats).
    ``|alpha|`` is log-uniform in ``[0.05, max_abs_alpha]`` or exactly 1 or 0.5; negative
    ``alpha`` (levels swap) only with ``negative_alpha=True``. ``beta`` is uniform in
    ``[-max_abs_beta, max_abs_beta]`` or exactly 0.
    """
    st = _st()
    lo = np.log10(0.05)
    hi = np.log10(max_abs_alpha)

    def one_alpha(rng):
        mag = rng.choice([1.0, 0.5, 10.0 ** rng.uniform(lo, hi), 10.0 ** rng.uniform(lo, hi)])
        sign = rng.choice([-1.0, 1.0]) if negative_alpha else 1.0
        return float(sign * mag)

    def one_beta(rng):
        return float(rng.choice([0.0, rng.uniform(-max_abs_beta, max_abs_beta),
                                 rng.uniform(-max_abs_beta, max_abs_beta)]))

    @st.composite
    def draw_set(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if channels is None:
            return one_alpha(rng), one_beta(rng)
        out = []
        for gen in (one_alpha, one_beta):
            arr = per_channel if per_channel is not None else draw(st.booleans())
            out.append(np.array([gen(rng) for _ in range(channels)]) if arr else gen(rng))
        return tuple(out)

    return draw_set()


def conventions():
    """Strategy for ``"paper"`` and ``"official"``."""
    return _st().sampled_from(CONVENTIONS)


class ConvCase(NamedTuple):
    """A complete ``adabin_conv2d`` case drawn by :func:`conv_cases`."""

    x: np.ndarray
    w: np.ndarray
    alpha: float | np.ndarray
    beta: float | np.ndarray
    grad_y: np.ndarray
    shape: ConvShape
    convention: str

    @property
    def args(self):
        """``(x, w, alpha, beta)``."""
        return (self.x, self.w, self.alpha, self.beta)

    @property
    def grad_args(self):
        """``(x, w, alpha, beta, grad_y)`` for ``adabin_conv2d_grad``."""
        return (self.x, self.w, self.alpha, self.beta, self.grad_y)

    @property
    def kwargs(self):
        """Geometry and ``convention`` keywords."""
        return dict(self.shape.kwargs, convention=self.convention)


def conv_cases(*, convention=None, weight_kind="realistic", activation_kind=None,
               at_threshold=True, negative_alpha=False, per_channel=None, **shape_options):
    """Strategy for complete AdaBin conv cases, as :class:`ConvCase`.

    ``y = f(*case.args, **case.kwargs)`` runs ``adabin_conv2d`` or your implementation;
    ``case.grad_args`` adds an upstream gradient for ``adabin_conv2d_grad``. ``shape_options``
    go to :func:`conv_shapes` (``min_filter_size`` defaults to 2 for realistic weights, so no
    filter is constant); ``weight_kind`` to :func:`weights` (default realistic only -- pass
    None to add the degenerate kinds); the rest to :func:`activations` and
    :func:`binary_sets`. ``convention=None`` draws both.
    """
    st = _st()
    shape_options.setdefault("min_filter_size", 2 if weight_kind == "realistic" else 1)
    conv_strategy = conventions() if convention is None else st.just(check_convention(convention))

    @st.composite
    def draw_case(draw):
        shape = draw(conv_shapes(**shape_options))
        alpha, beta = draw(binary_sets(shape.c, negative_alpha=negative_alpha,
                                       per_channel=per_channel))
        x = draw(activations(shape.x_shape, alpha, beta, kind=activation_kind,
                             at_threshold=at_threshold))
        w = draw(weights(shape.w_shape, kind=weight_kind))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        gy = rng.normal(size=shape.out_shape)
        return ConvCase(x, w, alpha, beta, gy, shape, draw(conv_strategy))

    return draw_case()
