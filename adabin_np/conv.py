r"""AdaBin convolution: float path, explicit backward.

.. math:: y = \mathrm{conv2d}(\mathrm{binarize\_activations}(x),\ \mathrm{binarize\_weights}(W))

NCHW activations, OIHW weights, no bias, with ``stride``, ``padding``, ``dilation`` and
``groups`` as in ``torch.nn.functional.conv2d``. Padding is a real zero inserted **after**
binarization: a padded tap contributes 0, not ``b1``/``b2``, and receives no gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import kernels_cpu as _k
from .binarize import _activations_3d, _combine_activation_grads, _weights_2d
from .validation import (
    as_float_array,
    check_convention,
    check_finite_scalar,
    conv_params,
    finite_result,
)

__all__ = ["ConvGrad", "conv2d", "adabin_conv2d", "adabin_conv2d_grad"]


class ConvGrad(NamedTuple):
    """Gradients of :func:`adabin_conv2d` w.r.t. ``x``, ``w``, ``alpha`` and ``beta``."""

    dx: np.ndarray
    dw: np.ndarray
    dalpha: np.ndarray | float
    dbeta: np.ndarray | float


def _geometry(x, w, stride, padding, dilation, groups):
    x = as_float_array(x, "x", ndim=4)
    w = as_float_array(w, "w", ndim=4)
    if 0 in x.shape:
        raise ValueError(f"x must be non-empty, got shape {x.shape}")
    p = conv_params(x.shape, w.shape, stride, padding, dilation, groups)
    return x, w, p


def _conv(xb, wb, p):
    return _k.conv_forward(xb, wb, p.stride[0], p.stride[1], p.padding[0], p.padding[1],
                           p.dilation[0], p.dilation[1], p.groups, p.out_h, p.out_w)


def _conv_backward(x, w, gy, p):
    """dx, dw of the plain cross-correlation y = conv2d(x, w) (padded taps dropped)."""
    sh, sw = p.stride
    ph, pw = p.padding
    dh, dw = p.dilation
    dx = _k.conv_backward_input(gy, w, x.shape[2], x.shape[3], sh, sw, ph, pw, dh, dw, p.groups)
    dwt = _k.conv_backward_weight(x, gy, w.shape[2], w.shape[3], sh, sw, ph, pw, dh, dw, p.groups)
    return dx, dwt


def conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1):
    r"""Plain real-valued float64 cross-correlation (``torch.nn.functional.conv2d`` without bias).

    .. math:: y[n,o,i,j] = \sum_{c \in g(o)} \sum_{k_h,k_w} W[o,c,k_h,k_w]\;
              x^{pad}[n,c,\ i s_h - p_h + k_h d_h,\ j s_w - p_w + k_w d_w]

    with zero padding and ``g(o)`` the input channels of ``o``'s group. Summation order is
    fixed (c, k_h, k_w), so the result is deterministic. Used for the real-valued stem of the
    models and as the building block of the AdaBin conv.
    """
    x, w, p = _geometry(x, w, stride, padding, dilation, groups)
    return finite_result(_conv(x, w, p), "conv2d")


def adabin_conv2d(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                  convention="paper"):
    r"""AdaBin convolution, float64 path.

    ``x``: ``(N, C, H, W)``; ``w``: ``(O, C/groups, kh, kw)``; ``alpha``, ``beta``: the
    activation binary set, scalars or ``(C,)`` arrays. Weights are binarized per output channel
    with their moment-matched set (:func:`~adabin_np.binarize.weight_binary_set`).

    .. math:: y[n,o,i,j] = \sum_{c,k_h,k_w} W_b[o,c,k_h,k_w]\; x_b^{pad}[n,c,
              i s_h - p_h + k_h d_h,\ j s_w - p_w + k_w d_w]

    where :math:`x_b^{pad}` is zero outside the input (zero padding after binarization).
    Output shape ``(N, O, H_out, W_out)``, ``H_out = (H + 2p_h - d_h(k_h - 1) - 1)//s_h + 1``.
    """
    official = check_convention(convention) == "official"
    x, w, p = _geometry(x, w, stride, padding, dilation, groups)
    _, x3, alpha_c, beta_c, _ = _activations_3d(x, alpha, beta)
    xb = _k.act_forward(x3, alpha_c, beta_c, official).reshape(x.shape)
    _, w2 = _weights_2d(w)
    wa, wbeta = _k.weight_stats(w2)
    wb = _k.weight_forward(w2, wa, wbeta, official).reshape(w.shape)
    return finite_result(_conv(xb, wb, p), "adabin_conv2d")


def adabin_conv2d_grad(x, w, alpha, beta, grad_y, *, stride=1, padding=0, dilation=1, groups=1,
                       k=10.0, t=0.1, convention="paper"):
    r"""Backward of :func:`adabin_conv2d`: returns :class:`ConvGrad` ``(dx, dw, dalpha, dbeta)``.

    Chain rule, written out:

    1. :math:`\partial x_b = \mathrm{conv2d}^\top_x(g_y, W_b)` and
       :math:`\partial W_b = \mathrm{conv2d}^\top_W(x_b, g_y)` (padded taps dropped);
    2. ``dx, dalpha, dbeta`` from :func:`~adabin_np.binarize.binarize_activations_grad` applied
       to :math:`\partial x_b` (Bi-Real estimator);
    3. ``dw`` from :func:`~adabin_np.binarize.binarize_weights_grad` applied to
       :math:`\partial W_b` (EDE with ``k``, ``t``, through alpha_w(W) and beta_w(W)).

    ``dalpha``/``dbeta`` are floats for scalar ``alpha``/``beta`` and ``(C,)`` arrays otherwise.
    """
    official = check_convention(convention) == "official"
    k = check_finite_scalar(k, "k")
    t = check_finite_scalar(t, "t")
    x, w, p = _geometry(x, w, stride, padding, dilation, groups)
    _, x3, alpha_c, beta_c, per_channel = _activations_3d(x, alpha, beta)
    gy = as_float_array(grad_y, "grad_y", ndim=4)
    expected = (x.shape[0], w.shape[0], p.out_h, p.out_w)
    if gy.shape != expected:
        raise ValueError(f"grad_y has shape {gy.shape}, expected {expected}")
    xb = _k.act_forward(x3, alpha_c, beta_c, official).reshape(x.shape)
    _, w2 = _weights_2d(w)
    wa, wbeta = _k.weight_stats(w2)
    wb = _k.weight_forward(w2, wa, wbeta, official).reshape(w.shape)
    dxb, dwb = _conv_backward(xb, wb, gy, p)
    dx, s_gs, s_gv, s_g, s_gg = _k.act_backward(x3, alpha_c, beta_c, dxb.reshape(x3.shape),
                                                official)
    act = _combine_activation_grads(dx.reshape(x.shape), alpha_c, s_gs, s_gv, s_g, s_gg,
                                    per_channel, official)
    dw = _k.weight_backward(w2, dwb.reshape(w2.shape), wa, wbeta, k, t, official).reshape(w.shape)
    return finite_result(ConvGrad(act.dx, dw, act.dalpha, act.dbeta), "adabin_conv2d_grad")
