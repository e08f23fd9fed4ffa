"""Argument set-up shared by the comparison helpers (public validation helpers only)."""

from __future__ import annotations

import numpy as np

from ..validation import activation_params, as_float_array, conv_params



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
