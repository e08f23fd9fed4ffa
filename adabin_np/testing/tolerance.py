r"""What the oracle expects of every output: its value, a rounding bound and a flip bound.

An element of the user's result passes when

.. math:: |\mathrm{actual} - \mathrm{expected}| \le \mathrm{atol}
          + \mathrm{rtol}\cdot\mathrm{scale} + \mathrm{flip},

* ``scale`` bounds the rounding error (``rtol`` ~ 170 units in the last place of the user's
  dtype): for a value computed elementwise or as one short sum, the sum of the absolute values
  of its terms; for a reduction ``q = sum_i t_i`` over ``n`` terms (``dalpha``, ``dbeta``, the
  channel sums inside ``dW``) the probabilistic bound
  ``sqrt(n) (|q| + ||t||_2) + ||scale(t)||_2`` (summation and coherent relative errors of the
  terms, plus independent errors carried by each term), never the sum of all nested |terms|;
* ``flip`` is the most that flipping the flip-risk inputs the element reads can change it: a
  risky activation moves its binarized value by at most ``2|alpha|`` (to the other level or
  the convention's tie value), a risky weight by ``2 alpha_w``; these changes are propagated
  through the same formulas with absolute values (0 for an element that reads no risky input).

docs/testing.md derives both.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import binarize as _bin
from .. import conv as _conv
from ..validation import check_convention
from ._setup import _act_setup, _conv_setup, _weights_setup
from .correlate import _corr, _corr_t_input, _corr_t_weight
from .flip_masks import _act_near, _weight_near

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
    scale: np.ndarray  # rounding scale: the allowed rounding error is rtol * scale
    flip: np.ndarray  # the most that flipping the risky inputs it reads can change the value
    squeeze_ok: bool  # parameter gradients: accept (1, C, 1, 1) etc. for (C,)
    explain: object = None  # index -> notes (exact ties read, zero padding read)


def _f(name, expected, scale, flip, squeeze_ok=False, explain=None):
    expected = np.asarray(expected, dtype=np.float64)
    shape = expected.shape
    return _Field(name, expected, np.broadcast_to(np.asarray(scale, np.float64), shape),
                  np.broadcast_to(np.asarray(flip, np.float64), shape), squeeze_ok, explain)


def _tie_rule(official):
    return ("the official convention maps ties to 0 (torch.sign), output alpha*beta"
            if official else "the paper convention maps ties to +1 (x >= beta -> b2)")


def _explain_elementwise(tie_mask, what, official):
    def explain(index):
        if tie_mask[index]:
            return [f"{what} at {list(index)} is an exact tie; {_tie_rule(official)}"]
        return []
    return explain


def _explain_conv(x_shape, w_shape, x_ties, w_ties, p, official, max_listed=3):
    """Notes for conv output ``(n, o, i, j)``: exact ties in its receptive field, padded taps."""
    o_total, cg, kh, kw = w_shape
    og = o_total // p.groups
    _, _, h, wd = x_shape

    def explain(index):
        n, o, i, j = index
        g = o // og
        ties, padded = [], 0
        for ki in range(kh):
            r = i * p.stride[0] + ki * p.dilation[0] - p.padding[0]
            for kj in range(kw):
                c_ = j * p.stride[1] + kj * p.dilation[1] - p.padding[1]
                if not (0 <= r < h and 0 <= c_ < wd):
                    padded += 1
                    continue
                for c in range(cg):
                    if x_ties is not None and x_ties[n, g * cg + c, r, c_]:
                        ties.append((n, g * cg + c, r, c_))
        notes = []
        if ties:
            listed = ", ".join(str(list(t)) for t in ties[:max_listed])
            more = f" and {len(ties) - max_listed} more" if len(ties) > max_listed else ""
            notes.append(f"reads x == beta at {listed}{more}; {_tie_rule(official)}")
        if w_ties is not None and w_ties[o].any():
            notes.append(f"filter {o} has {int(w_ties[o].sum())} weights W == beta_w exactly; "
                         + _tie_rule(official).replace("x >= beta -> b2", "W >= beta_w"))
        if padded:
            notes.append(f"border output, reads zero padding ({padded} of {kh * kw} taps; a "
                         "padded tap contributes 0, not b1 or b2)")
        return notes
    return explain


def _l2(a, axis, keepdims=False):
    """Euclidean norm along ``axis`` without overflow (scaled by the largest magnitude)."""
    a = np.abs(a)
    m = a.max(axis=axis, keepdims=True)
    safe = np.where(m > 0.0, m, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        r = m * np.sqrt(((a / safe) ** 2).sum(axis=axis, keepdims=True))
    return r if keepdims else np.squeeze(r, axis=axis)


_SIGMA = 0.1
"""Reductions: the bound is a standard deviation; ``rtol`` (~170 u) times ``_SIGMA`` leaves
~17 standard deviations, where a short sum gets the full ``rtol`` times its sum of |terms|."""


def _reduction_scale(terms, term_scale, axis, keepdims=False):
    r"""Rounding scale of ``q = sum(terms)`` over ``axis`` (``n`` terms).

    ``sqrt(n) (|q| + ||t||_2)``: any summation order with independent rounding errors of
    relative size u errs by ~ u sqrt(sum_k S_k^2) over its partial sums S_k, and
    ``sum_k S_k^2 <= n q^2 + n ||t||_2^2`` for sequential summation of terms that are not in
    an adversarial order (drift plus random walk); pairwise and blocked summation do better.
    The same term bounds a relative error of size u common to all terms
    (``sum |t| <= sqrt(n) ||t||_2``). ``||term_scale||_2`` adds the errors the terms carry in,
    taken as independent. Both are standard deviations of independent rounding errors, so the
    scale is multiplied by :data:`_SIGMA` (``rtol * _SIGMA`` ~ 17 u for float32).
    """
    terms = np.asarray(terms, dtype=np.float64)
    n = int(np.prod([terms.shape[a] for a in np.atleast_1d(axis)])) if axis is not None \
        else terms.size
    q = np.abs(terms.sum(axis=axis, keepdims=keepdims))
    with np.errstate(over="ignore"):
        return _SIGMA * (np.sqrt(n) * (q + _l2(terms, axis, keepdims))
                         + _l2(term_scale, axis, keepdims))


class _Act(NamedTuple):
    """Activations viewed as (N, C, S) with everything the bounds need."""

    x: np.ndarray  # validated float64, original shape
    x3: np.ndarray
    alpha_c: np.ndarray
    beta_c: np.ndarray
    per_channel: tuple  # (alpha is an array, beta is an array)
    official: bool
    a: np.ndarray  # (1, C, 1)
    b: np.ndarray
    v: np.ndarray  # (x - beta)/alpha
    s: np.ndarray  # the oracle's sign of v (paper: sign(0) = +1, official: 0)
    cond: np.ndarray  # |v| + (|x| + |beta|)/|alpha|: the rounding scale of v
    level: np.ndarray  # bound of a binarized value: |a| + |b| or |a|(1 + |b|)
    jump: np.ndarray  # the most a sign flip moves a binarized value: 2|a|


def _act_parts(x, alpha, beta, convention):
    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, per_channel = _act_setup(x, alpha, beta)
    a = alpha_c[None, :, None]
    b = beta_c[None, :, None]
    v = (x3 - b) / a
    s = np.sign(v) if official else np.where(v >= 0.0, 1.0, -1.0)
    with np.errstate(over="ignore"):
        cond = np.abs(v) + (np.abs(x3) + np.abs(b)) / np.abs(a)
    level = np.abs(a) * (1.0 + np.abs(b)) if official else np.abs(a) + np.abs(b)
    return _Act(x, x3, alpha_c, beta_c, per_channel, official, a, b, v, s, cond,
                np.broadcast_to(level, x3.shape), np.broadcast_to(2.0 * np.abs(a), x3.shape))


class _Weights(NamedTuple):
    a: np.ndarray  # alpha_w, (O, 1)
    b: np.ndarray  # beta_w, (O, 1)
    u: np.ndarray  # (W - beta_w)/alpha_w (0 in constant filters)
    cond: np.ndarray  # rounding scale of u
    level: np.ndarray  # bound of a binarized weight: alpha_w + |beta_w|
    jump: np.ndarray  # the most a sign flip moves a binarized weight: 2 alpha_w


def _weight_parts(w2):
    alpha, beta = _bin.weight_binary_set(w2)
    a = alpha[:, None]
    b = beta[:, None]
    live = a > 0.0
    safe = np.where(live, a, 1.0)
    with np.errstate(over="ignore"):
        u = np.where(live, (w2 - b) / safe, 0.0)
        cond = np.where(live, np.abs(u) + (np.abs(w2) + np.abs(b)) / safe, 0.0)
    return _Weights(a, b, u, cond, np.broadcast_to(a + np.abs(b), w2.shape),
                    np.broadcast_to(2.0 * a, w2.shape))


def _act_axes(act, is_array):
    return (0, 2) if is_array else None


def _act_grad_fields(act, g, g_scale, g_flip, near, weight_flips=None):
    """(dx, dalpha, dbeta) fields for dL/dxb = ``g`` on (N, C, S).

    ``g_scale`` is the rounding scale of ``g`` (``|g|`` for a given gradient), ``g_flip`` the
    most that risky weights can change it (0 for a given gradient), ``near`` the risky
    activations. Bi-Real ``F'(v) = max(0, 2 - 2|v|)`` is continuous, so only the sign ``s``
    can flip: it moves ``g*s`` (``g*(s + beta)``) by ``2|g|``. ``weight_flips(h)`` (inside a
    conv) returns, per channel, the exact sum over risky weights ``j`` of ``|jump_j * dq/dWb_j|``
    for ``q = sum(g*h)``: the change of ``dalpha``/``dbeta`` that flipping each risky weight
    causes, added in absolute value (much tighter than propagating ``g_flip``). ``F'`` moves by ``2|dv|`` when
    ``v`` is rounded; its rounding scale is ``2 + 2*cond`` where it can be non-zero.
    """
    active = np.abs(act.v) < 2.0
    fprime = np.maximum(0.0, 2.0 - 2.0 * np.abs(act.v))
    fs = np.where(active, 2.0 + 2.0 * act.cond, 0.0)
    alpha_pc, beta_pc = act.per_channel
    s_term = act.s + act.b if act.official else act.s
    c_term = act.a if act.official else 1.0
    ga = np.abs(g)
    dx_scale = g_scale * fs
    dx_flip = g_flip * fprime
    t_alpha = g * s_term - g * fprime * act.v
    ts_alpha = g_scale * ((1.0 + np.abs(act.b) if act.official else 1.0)
                          + fs * np.where(active, 1.0 + act.cond, 0.0))
    ax = _act_axes(act, alpha_pc)
    dalpha_scale = _reduction_scale(t_alpha, ts_alpha, ax)
    h_alpha = s_term - fprime * act.v
    h_beta = c_term - fprime
    if weight_flips is None:
        w_alpha = (g_flip * np.abs(h_alpha)).sum(axis=ax)
        w_beta = (g_flip * np.abs(h_beta)).sum(axis=(0, 2) if beta_pc else None)
    else:
        w_alpha, w_beta = weight_flips(h_alpha, alpha_pc), weight_flips(h_beta, beta_pc)
    dalpha_flip = (near * 2.0 * (ga + g_flip)).sum(axis=ax) + w_alpha
    t_beta = g * (c_term - fprime)
    bx = _act_axes(act, beta_pc)
    dbeta_scale = _reduction_scale(t_beta, g_scale * (np.abs(c_term) + fs), bx)
    dbeta_flip = w_beta
    shape = act.x.shape
    return (dx_scale.reshape(shape), dx_flip.reshape(shape), dalpha_scale, dalpha_flip,
            dbeta_scale, dbeta_flip)


def _weight_grad_fields(w2, g, g_scale, g_flip, risky, k, t, official):
    """(scale, flip) of dW (SPEC section 2) for dL/dWb = ``g`` on (O, n).

    ``dW_i = g_i e_i + dbeta_w/n + u_i dalpha_w/n`` with ``e = EDE(u)``,
    ``dalpha_w = sum_j g_j (s_j - e_j u_j)`` and ``dbeta_w = sum_j g_j (1 - e_j)``: an element
    gets its own rounding plus the reduction bounds of the two channel sums. A risky weight's
    sign flip moves ``dalpha_w`` by ``2|g_j|``; a change ``g_flip`` of ``g`` (risky
    activations) propagates through all three terms.
    """
    wp = _weight_parts(w2)
    n = w2.shape[1]
    live = wp.a > 0.0
    th = np.tanh(t * wp.u)
    e = k * t * (1.0 - th * th)
    es = np.abs(k * t) * (1.0 - th * th) + np.abs(k * t * t) * wp.cond  # EDE and its slope
    s = np.sign(wp.u) if official else np.where(wp.u >= 0.0, 1.0, -1.0)
    ga = np.abs(g)
    a_scale = _reduction_scale(g * (s - e * wp.u), g_scale * (1.0 + es * wp.cond), 1, True)
    b_scale = _reduction_scale(g * (1.0 - e), g_scale * (1.0 + es), 1, True)
    dalpha = np.abs((g * (s - e * wp.u)).sum(axis=1, keepdims=True))
    scale = g_scale * es + b_scale / n + wp.cond * a_scale / n + 0.0 * dalpha
    flip = (g_flip * np.abs(e)
            + (g_flip * np.abs(1.0 - e)).sum(axis=1, keepdims=True) / n
            + np.abs(wp.u) / n * ((g_flip * np.abs(s - e * wp.u)).sum(axis=1, keepdims=True)
                                  + (risky * 2.0 * (ga + g_flip)).sum(axis=1, keepdims=True)))
    # constant filter: dW = sum(g)/n. An implementation whose float mean of the equal weights
    # is inexact finds u = +-1 for all of them instead and dW_i = e g_i + (1 - 2e) sum(g)/n
    const_scale = _reduction_scale(g, g_scale, 1, True) / n
    kt = abs(k * t)
    gsum = np.abs(g.sum(axis=1, keepdims=True)) + g_flip.sum(axis=1, keepdims=True)
    const_flip = kt * (ga + g_flip) + (1.0 + 2.0 * kt) * gsum / n
    return (np.where(live, scale, const_scale), np.where(live, flip, const_flip))


def _exp_binarize_activations(oracle, b, ctx):
    expected = oracle(**b)
    act = _act_parts(b["x"], b["alpha"], b["beta"], b["convention"])
    near = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    ties = np.broadcast_to(act.x3 == act.b, act.x3.shape).reshape(act.x.shape)
    shape = act.x.shape
    return [_f("output", expected, act.level.reshape(shape), (near * act.jump).reshape(shape),
               explain=_explain_elementwise(ties, "x == beta", act.official))]


def _exp_binarize_weights(oracle, b, ctx):
    expected = oracle(**b)
    w, w2 = _weights_setup(b["w"])
    wp = _weight_parts(w2)
    near = _weight_near(w2, ctx.tol, ctx.ties)
    ties = ((w2 == wp.b) & (wp.a > 0.0)).reshape(w.shape)
    official = check_convention(b["convention"]) == "official"
    return [_f("output", expected, wp.level.reshape(w.shape), (near * wp.jump).reshape(w.shape),
               explain=_explain_elementwise(ties, "W == beta_w", official))]


def _exp_binarize_activations_grad(oracle, b, ctx):
    got = oracle(**b)
    act = _act_parts(b["x"], b["alpha"], b["beta"], b["convention"])
    g3 = np.asarray(b["grad"], dtype=np.float64).reshape(act.x3.shape)
    near = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    sc = _act_grad_fields(act, g3, np.abs(g3), np.zeros(g3.shape), near)
    return [_f("dx", got.dx, sc[0], sc[1]),
            _f("dalpha", got.dalpha, sc[2], sc[3], True),
            _f("dbeta", got.dbeta, sc[4], sc[5], True)]


def _exp_binarize_weights_grad(oracle, b, ctx):
    got = oracle(**b)
    w, w2 = _weights_setup(b["w"])
    g2 = np.asarray(b["grad"], dtype=np.float64).reshape(w2.shape)
    risky = _weight_near(w2, ctx.tol, ctx.ties)
    scale, flip = _weight_grad_fields(w2, g2, np.abs(g2), np.zeros(g2.shape), risky,
                                      float(b["k"]), float(b["t"]),
                                      check_convention(b["convention"]) == "official")
    return [_f("dw", got, scale.reshape(w.shape), flip.reshape(w.shape))]


def _geometry(b):
    return _conv_setup(b["x"], b["w"], b["stride"], b["padding"], b["dilation"], b["groups"])


def _exp_conv2d(oracle, b, ctx):
    expected = oracle(**b)
    x, w, p = _geometry(b)
    return [_f("output", expected, _corr(np.abs(x), np.abs(w), p), 0.0,
               explain=_explain_conv(x.shape, w.shape, None, None, p, False))]


class _ConvParts(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    w2: np.ndarray
    p: object
    act: _Act
    wp: _Weights
    x_level: np.ndarray  # (N, C, H, W)
    w_level: np.ndarray  # (O, C/g, kh, kw)
    dx_flip: np.ndarray  # jump of risky activations, 0 elsewhere (N, C, H, W)
    dw_flip: np.ndarray  # jump of risky weights, 0 elsewhere (O, C/g, kh, kw)
    rx: np.ndarray  # risky activations (N, C, S)
    rw: np.ndarray  # risky weights (O, n)
    x_ties: np.ndarray  # exact activation ties (N, C, H, W)
    w_ties: np.ndarray  # exact weight ties (O, C/g, kh, kw)


def _conv_parts(b, ctx):
    """Geometry, activations, weights, level bounds, flip jumps and masks of a conv."""
    x, w, p = _geometry(b)
    act = _act_parts(x, b["alpha"], b["beta"], b["convention"])
    w2 = w.reshape(w.shape[0], -1)
    wp = _weight_parts(w2)
    rx = _act_near(act.x3, act.alpha_c, act.beta_c, ctx.tol, ctx.ties)
    rw = _weight_near(w2, ctx.tol, ctx.ties)
    return _ConvParts(x, w, w2, p, act, wp, act.level.reshape(x.shape),
                      wp.level.reshape(w.shape), (rx * act.jump).reshape(x.shape),
                      (rw * wp.jump).reshape(w.shape), rx, rw,
                      (act.x3 == act.b).reshape(x.shape),
                      ((w2 == wp.b) & (wp.a > 0.0)).reshape(w.shape))


def _exp_adabin_conv2d(oracle, b, ctx):
    expected = oracle(**b)
    c = _conv_parts(b, ctx)
    # |y' - y| <= sum over taps of |dxb||Wb| + |xb||dWb| + |dxb||dWb|
    flip = (_corr(c.dx_flip, c.w_level, c.p) + _corr(c.x_level, c.dw_flip, c.p)
            + _corr(c.dx_flip, c.dw_flip, c.p))
    return [_f("output", expected, _corr(c.x_level, c.w_level, c.p), flip,
               explain=_explain_conv(c.x.shape, c.w.shape, c.x_ties, c.w_ties, c.p,
                                            c.act.official))]


def _per_input_channel(oc, groups):
    """(O, C/groups) -> (C,): sum over the output channels of each input channel's group."""
    o, cg = oc.shape
    og = o // groups
    return np.concatenate([oc[g * og:(g + 1) * og].sum(axis=0) for g in range(groups)])


def _exp_adabin_conv2d_grad(oracle, b, ctx):
    got = oracle(**b)
    c = _conv_parts(b, ctx)
    official = c.act.official
    gy = np.asarray(b["grad_y"], dtype=np.float64)
    gya = np.abs(gy)
    xb = _bin.binarize_activations(c.x, b["alpha"], b["beta"], convention=b["convention"])
    wb = _bin.binarize_weights(c.w, convention=b["convention"])
    shape3 = c.act.x3.shape
    # dL/dxb = conv^T_x(gy, Wb), its rounding scale and how far risky weights can move it
    g_x = _corr_t_input(gy, wb, c.p, c.x.shape).reshape(shape3)
    gx_scale = _corr_t_input(gya, c.w_level, c.p, c.x.shape).reshape(shape3)
    gx_flip = _corr_t_input(gya, c.dw_flip, c.p, c.x.shape).reshape(shape3)

    def weight_flips(h, per_channel):
        # dq/dWb = conv^T_W(h, gy) for q = sum(conv^T_x(gy, Wb) * h); per input channel c
        if not c.dw_flip.any():
            return np.zeros(c.act.alpha_c.shape if per_channel else ())
        hq = np.broadcast_to(h, shape3).reshape(c.x.shape)
        contrib = np.abs(_corr_t_weight(hq, gy, c.p, c.w.shape)) * c.dw_flip  # (O, C/g, kh, kw)
        per_c = _per_input_channel(contrib.sum(axis=(2, 3)), c.p.groups)
        return per_c if per_channel else per_c.sum()

    sc = _act_grad_fields(c.act, g_x, gx_scale, gx_flip, c.rx, weight_flips)
    # dL/dWb = conv^T_W(xb, gy), likewise with risky activations
    g_w = _corr_t_weight(xb, gy, c.p, c.w.shape).reshape(c.w2.shape)
    gw_scale = _corr_t_weight(c.x_level, gya, c.p, c.w.shape).reshape(c.w2.shape)
    gw_flip = _corr_t_weight(c.dx_flip, gya, c.p, c.w.shape).reshape(c.w2.shape)
    dw_scale, dw_flip = _weight_grad_fields(c.w2, g_w, gw_scale, gw_flip, c.rw,
                                            float(b["k"]), float(b["t"]), official)
    return [_f("dx", got.dx, sc[0], sc[1]),
            _f("dw", got.dw, dw_scale.reshape(c.w.shape), dw_flip.reshape(c.w.shape)),
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
