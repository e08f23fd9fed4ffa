r"""Flip risk: which activations and weights may binarize differently under rounding.

An activation ``x`` with ``v = (x - beta)/alpha`` is at flip risk when
:math:`|x - \beta| \le \mathrm{tol}\,(|x| + |\beta| + |\alpha|)` (``v`` within ``tol`` of the
threshold, relative to the operands); a weight when
:math:`|W - \beta_w| \le \mathrm{tol}\,(|W| + |\beta_w| + \alpha_w)`. Constant filters
(``alpha_w = 0``) are never at risk. Exact ties are included in the masks.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import binarize as _bin
from .. import conv as _conv
from ._setup import _act_setup, _conv_setup, _weights_setup
from .correlate import _corr

DEFAULT_TOL = 1e-5
"""Default flip-risk tolerance (relative, see the module docstring): ~100 float32 ulps."""


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
