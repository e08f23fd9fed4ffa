"""Numba CPU kernels (float64 paths).

Every kernel here assumes its inputs were validated by the public wrappers in
:mod:`adabin_np.binarize` and :mod:`adabin_np.conv`: C-contiguous float64 arrays of consistent
shapes, finite values, valid geometry. Numba does not bounds-check, so these functions must
never be called on unvalidated data.

Summation order is fixed (it never depends on the number of threads), so every float path is
bit-for-bit deterministic on a given machine: parallel loops (``prange``) only ever split work
over independent output elements.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# ----------------------------------------------------------------------------------------------
# Activation binarization, x viewed as (N, C, S)
# ----------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _sign(v, official):
    """sign with the convention's value at zero: paper +1, official (torch.sign) 0."""
    if v > 0.0:
        return 1.0
    if v < 0.0:
        return -1.0
    return 0.0 if official else 1.0


@njit(cache=True, parallel=True)
def act_forward(x, alpha, beta, official):
    """out[n, c, s] for the paper (alpha*s + beta) or official (alpha*(s + beta)) convention."""
    n_, c_, s_ = x.shape
    out = np.empty_like(x)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        a = alpha[c]
        b = beta[c]
        for i in range(s_):
            s = _sign((x[n, c, i] - b) / a, official)
            if official:
                out[n, c, i] = a * (s + b)
            else:
                out[n, c, i] = a * s + b
    return out


@njit(cache=True, parallel=True)
def act_backward(x, alpha, beta, g, official):
    """Bi-Real straight-through backward.

    Returns dx and four per-channel partial sums, ``sum(g*s_term)``, ``sum(G*v)``, ``sum(g)``,
    ``sum(G)`` where ``s_term`` is ``s`` (paper) or ``s + beta`` (official) and
    ``G = g * max(0, 2 - 2|v|)``. Elements with F'(v) = 0 add nothing to ``sum(G*v)`` (so an
    overflowing v can never produce 0 * inf = NaN).
    """
    n_, c_, s_ = x.shape
    dx = np.empty_like(x)
    sum_gs = np.zeros(c_)
    sum_gv = np.zeros(c_)
    sum_g = np.zeros(c_)
    sum_gg = np.zeros(c_)
    for c in prange(c_):
        a = alpha[c]
        b = beta[c]
        acc_gs = 0.0
        acc_gv = 0.0
        acc_g = 0.0
        acc_gg = 0.0
        for n in range(n_):
            for i in range(s_):
                v = (x[n, c, i] - b) / a
                s = _sign(v, official)
                gi = g[n, c, i]
                fp = 2.0 - 2.0 * abs(v)
                if fp > 0.0:
                    big_g = gi * fp
                    acc_gv += big_g * v
                else:
                    big_g = 0.0
                dx[n, c, i] = big_g
                if official:
                    acc_gs += gi * (s + b)
                else:
                    acc_gs += gi * s
                acc_g += gi
                acc_gg += big_g
        sum_gs[c] = acc_gs
        sum_gv[c] = acc_gv
        sum_g[c] = acc_g
        sum_gg[c] = acc_gg
    return dx, sum_gs, sum_gv, sum_g, sum_gg


# ----------------------------------------------------------------------------------------------
# Weight binarization, w viewed as (O, n)
# ----------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def weight_stats(w):
    """Per-row mean and population std; an all-equal row gets beta = its value, alpha = 0.

    The mean overflows only when sum(W_o) exceeds the float64 range (|W| ~ 1e308 / n).
    """
    o_, n_ = w.shape
    alpha = np.empty(o_)
    beta = np.empty(o_)
    for o in prange(o_):
        first = w[o, 0]
        const = True
        acc = 0.0
        for j in range(n_):
            acc += w[o, j]
            if w[o, j] != first:
                const = False
        if const:
            beta[o] = first
            alpha[o] = 0.0
        else:
            # scaled two-pass variance: squares of (W - beta)/max|W - beta| neither overflow
            # (|W| ~ 1e200) nor underflow (|W| ~ 1e-200)
            m = acc / n_
            scale = 0.0
            for j in range(n_):
                scale = max(scale, abs(w[o, j] - m))
            ss = 0.0
            if scale > 0.0:
                for j in range(n_):
                    d = (w[o, j] - m) / scale
                    ss += d * d
            beta[o] = m
            alpha[o] = scale * math.sqrt(ss / n_)
    return alpha, beta


@njit(cache=True, parallel=True)
def weight_forward(w, alpha, beta, official):
    """Wb = alpha*sign(u) + beta with u = (W - beta)/alpha; alpha == 0 rows give Wb = beta."""
    o_, n_ = w.shape
    out = np.empty_like(w)
    for o in prange(o_):
        a = alpha[o]
        b = beta[o]
        for j in range(n_):
            if a == 0.0:
                out[o, j] = b
            else:
                out[o, j] = a * _sign((w[o, j] - b) / a, official) + b
    return out


@njit(cache=True, parallel=True)
def weight_backward(w, g, alpha, beta, k, t, official):
    """dW through the EDE estimator and through alpha_w(W), beta_w(W) (SPEC section 2)."""
    o_, n_ = w.shape
    dw = np.empty_like(w)
    for o in prange(o_):
        a = alpha[o]
        b = beta[o]
        if a == 0.0:
            acc = 0.0
            for j in range(n_):
                acc += g[o, j]
            for j in range(n_):
                dw[o, j] = acc / n_
            continue
        sum_g = 0.0
        sum_gs = 0.0
        sum_gu = 0.0
        sum_guu = 0.0
        for j in range(n_):
            u = (w[o, j] - b) / a
            th = math.tanh(t * u)
            gu = g[o, j] * a * (k * t * (1.0 - th * th))
            dw[o, j] = gu  # stash G_u
            sum_g += g[o, j]
            sum_gs += g[o, j] * _sign(u, official)
            sum_gu += gu
            sum_guu += gu * u
        dalpha = sum_gs - sum_guu / a
        dbeta = sum_g - sum_gu / a
        for j in range(n_):
            u = (w[o, j] - b) / a
            dw[o, j] = dw[o, j] / a + dbeta / n_ + u * dalpha / n_
    return dw


# ----------------------------------------------------------------------------------------------
# Float convolution (NCHW x, OIHW w), zero padding, stride, dilation, groups
# ----------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _valid_range(off, step, size, count):
    """Indices i in [0, count) with 0 <= i*step + off < size, as a half-open range."""
    lo = 0
    if off < 0:
        lo = (-off + step - 1) // step
    hi = (size - off - 1) // step + 1
    if hi > count:
        hi = count
    if hi < lo:
        hi = lo
    return lo, hi


@njit(cache=True, parallel=True)
def conv_forward(x, w, sh, sw, ph, pw, dh, dw, groups, out_h, out_w):
    """y[n, o] = sum over (c, ki, kj) in that order of w[o, c, ki, kj] * x_pad[n, c, ...]."""
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    og = o_ // groups
    y = np.zeros((n_, o_, out_h, out_w))
    for idx in prange(n_ * o_):
        n = idx // o_
        o = idx % o_
        c0 = (o // og) * cg
        for cc in range(cg):
            c = c0 + cc
            for ki in range(kh):
                offh = ki * dh - ph
                oh_lo, oh_hi = _valid_range(offh, sh, h_, out_h)
                for kj in range(kw):
                    wv = w[o, cc, ki, kj]
                    offw = kj * dw - pw
                    ow_lo, ow_hi = _valid_range(offw, sw, w_, out_w)
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * sh + offh
                        for ow in range(ow_lo, ow_hi):
                            y[n, o, oh, ow] += wv * x[n, c, ih, ow * sw + offw]
    return y


@njit(cache=True, parallel=True)
def conv_backward_input(gy, w, h_, w_, sh, sw, ph, pw, dh, dw, groups):
    """dx[n, c] = sum over (o, ki, kj) of w[o, c, ki, kj] * gy scattered back (padding dropped)."""
    n_, o_, out_h, out_w = gy.shape
    _, cg, kh, kw = w.shape
    c_ = cg * groups
    og = o_ // groups
    dx = np.zeros((n_, c_, h_, w_))
    for idx in prange(n_ * c_):
        n = idx // c_
        c = idx % c_
        grp = c // cg
        cc = c % cg
        for o in range(grp * og, (grp + 1) * og):
            for ki in range(kh):
                offh = ki * dh - ph
                oh_lo, oh_hi = _valid_range(offh, sh, h_, out_h)
                for kj in range(kw):
                    wv = w[o, cc, ki, kj]
                    offw = kj * dw - pw
                    ow_lo, ow_hi = _valid_range(offw, sw, w_, out_w)
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * sh + offh
                        for ow in range(ow_lo, ow_hi):
                            dx[n, c, ih, ow * sw + offw] += wv * gy[n, o, oh, ow]
    return dx


@njit(cache=True, parallel=True)
def conv_backward_weight(x, gy, kh, kw, sh, sw, ph, pw, dh, dw, groups):
    """dw[o, cc, ki, kj] = sum over (n, oh, ow) of gy[n, o, oh, ow] * x_pad[n, c, ih, iw]."""
    n_, c_, h_, w_ = x.shape
    _, o_, out_h, out_w = gy.shape
    cg = c_ // groups
    og = o_ // groups
    dwt = np.zeros((o_, cg, kh, kw))
    for idx in prange(o_ * cg):
        o = idx // cg
        cc = idx % cg
        c = (o // og) * cg + cc
        for ki in range(kh):
            offh = ki * dh - ph
            oh_lo, oh_hi = _valid_range(offh, sh, h_, out_h)
            for kj in range(kw):
                offw = kj * dw - pw
                ow_lo, ow_hi = _valid_range(offw, sw, w_, out_w)
                acc = 0.0
                for n in range(n_):
                    for oh in range(oh_lo, oh_hi):
                        ih = oh * sh + offh
                        for ow in range(ow_lo, ow_hi):
                            acc += gy[n, o, oh, ow] * x[n, c, ih, ow * sw + offw]
                dwt[o, cc, ki, kj] = acc
    return dwt


# The bit-packed XNOR/popcount kernels live in :mod:`adabin_np.kernels_packed`.
