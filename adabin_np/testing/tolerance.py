"""What the oracle expects of every output: value, error bound and flip-risk dependencies."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import binarize as _bin
from .. import conv as _conv
from ..validation import check_convention
from ._setup import _act_setup, _conv_setup, _weights_setup
from .correlate import _corr, _corr_t_input, _corr_t_weight
from .flip_masks import _act_near, _conv_deps, _weight_near

# (rtol, tol) chosen from the dtype of the implementation's output.
_PRECISION = {
    "float64": (1e-9, 1e-9),
    "float32": (1e-5, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


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
