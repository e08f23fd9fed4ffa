"""Plain NumPy cross-correlation and its two transposes (for error bounds and dependency maps).

``_corr(x, w, p)`` is ``y[n,o,i,j] = sum_{c,ki,kj} xpad[n, c, i*sh + ki*dh, j*sw + kj*dw] w[o,c,ki,kj]``
with zero padding and groups; ``_corr_t_input`` and ``_corr_t_weight`` are its adjoints in
``x`` and ``w``. Applied to non-negative arrays (|levels|, masks) they give sums of |terms|
and counts of dependencies.
"""

from __future__ import annotations

import numpy as np


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
            patch = xs[:, :, rows, cols].reshape(n, cg, -1)  # (n, c, hw): BLAS matmul
            y[:, g * og:(g + 1) * og] += (ws[:, :, ki, kj] @ patch).reshape(n, og, p.out_h,
                                                                           p.out_w)
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
            dxp[:, g * cg:(g + 1) * cg, rows, cols] += (
                ws[:, :, ki, kj].T @ gs.reshape(n, og, -1)).reshape(n, cg, p.out_h, p.out_w)
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
            patch = xs[:, :, rows, cols].reshape(xs.shape[0], cg, -1)
            dw[g * og:(g + 1) * og, :, ki, kj] = np.tensordot(
                gs.reshape(gs.shape[0], og, -1), patch, axes=([0, 2], [0, 2]))
    return dw
