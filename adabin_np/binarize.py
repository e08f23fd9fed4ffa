r"""AdaBin binarization of weights and activations: forward and explicit backward.

A binary set is a threshold ``beta`` and two levels ``{b1, b2} = {beta - alpha, beta + alpha}``
(Tu et al., "AdaBin: Improving Binary Neural Networks with Adaptive Binary Sets", ECCV 2022).
Two conventions are supported everywhere (``../shared/SPEC.md`` section 1):

=============  ===================================  =========================================
               ``"paper"`` (default)                ``"official"`` (public PyTorch release)
=============  ===================================  =========================================
activations    v = (x - beta)/alpha,                same v, out = alpha*(s + beta)
               out = alpha*s + beta
sign at v = 0  s = +1 (x >= beta maps to b2)        s = 0 (``torch.sign``)
weights        Wb = alpha_w*s + beta_w              same formula, sign(0) = 0
=============  ===================================  =========================================

All float paths compute in float64 and are deterministic (fixed summation order).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import kernels_cpu as _k
from .validation import (
    activation_params,
    as_float_array,
    check_convention,
    check_finite_scalar,
    finite_result,
)

__all__ = [
    "ActivationGrad",
    "weight_binary_set",
    "binarize_weights",
    "binarize_weights_grad",
    "binarize_activations",
    "binarize_activations_grad",
    "ede",
    "ede_schedule",
    "bireal_grad",
]


class ActivationGrad(NamedTuple):
    """Gradients of :func:`binarize_activations`: w.r.t. ``x``, ``alpha`` and ``beta``."""

    dx: np.ndarray
    dalpha: np.ndarray | float
    dbeta: np.ndarray | float


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------


def ede(u, *, k=10.0, t=0.1):
    r"""IR-Net error-decay estimator derivative: :math:`k\,t\,(1 - \tanh^2(t u))`.

    It is the derivative of :math:`F(u) = k \tanh(t u)`, the smooth surrogate of ``sign`` used
    for the weights' backward pass. With the defaults ``k = 10, t = 0.1`` its peak is 1.
    For huge ``k``, ``t`` (where ``k*t`` or ``t*u`` overflow) it is evaluated in logarithms,
    :math:`k t\,\mathrm{sech}^2 z = \pm\exp(\log|k| + \log|t| + \log 4 - 2|z| -
    2\log(1 + e^{-2|z|}))`, so every finite value comes back finite; a value beyond the
    float64 range is a ``ValueError``, never inf or NaN.
    """
    u = as_float_array(u, "u", allow_scalar=True)
    k = check_finite_scalar(k, "k")
    t = check_finite_scalar(t, "t")
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        out = np.atleast_1d(k * t * (1.0 - np.tanh(t * u) ** 2))
        bad = ~np.isfinite(out)
        if bad.any():
            # huge k, t: k*t or t*u overflows although the value may be finite. Evaluate
            # k t sech^2(z), z = t u, as sign(k t) exp(log|k| + log|t| + log sech^2 z) with the
            # cancellation-free log sech^2 z = log 4 - 2|z| - 2 log1p(exp(-2|z|)).
            z = np.abs(t * np.atleast_1d(u)[bad])
            log_sech2 = np.log(4.0) - 2.0 * z - 2.0 * np.log1p(np.exp(-2.0 * z))
            out[bad] = np.sign(k * t) * np.exp(np.log(abs(k)) + np.log(abs(t)) + log_sech2)
    out = out.reshape(np.shape(u))[()]
    return finite_result(out, "ede")


def bireal_grad(v):
    r"""Bi-Real Net piecewise-polynomial estimator derivative :math:`F'(v) = \max(0, 2 - 2|v|)`."""
    v = as_float_array(v, "v", allow_scalar=True)
    return np.maximum(0.0, 2.0 - 2.0 * np.abs(v))


def ede_schedule(epoch, epochs):
    r"""EDE schedule of IR-Net / the AdaBin release for epoch ``e`` of ``E``.

    :math:`t = 10^{-3 + 4e/E}`, :math:`k = \max(1/t, 1)`. Returns ``(k, t)`` as floats.
    ``epoch`` may be fractional (per-iteration schedules); ``0 <= epoch <= epochs``.
    """
    epoch = check_finite_scalar(epoch, "epoch")
    epochs = check_finite_scalar(epochs, "epochs", positive=True)
    if not 0.0 <= epoch <= epochs:
        raise ValueError(f"epoch must lie in [0, epochs={epochs}], got {epoch}")
    t = 10.0 ** (-3.0 + 4.0 * epoch / epochs)
    k = max(1.0 / t, 1.0)
    return k, t


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _weights_2d(w, name="w"):
    w = as_float_array(w, name, min_ndim=2)
    if 0 in w.shape:
        raise ValueError(f"{name} must be non-empty, got shape {w.shape}")
    return w, w.reshape(w.shape[0], -1)


def pow2_row_scale(w2):
    """Scale each row of ``w2`` by a power of two so that its largest magnitude is in [0.5, 1).

    Returns ``(w2s, e)`` with ``w2 = ldexp(w2s, e[:, None])``. Multiplying by a power of two is
    exact (for normal and subnormal values alike), and the weight binary set is scale-equivariant
    (``alpha``, ``beta``, ``Wb`` scale with the weights; ``u``, ``s`` and ``dW`` do not change),
    so computing on ``w2s`` gives bit-identical results wherever the unscaled computation does
    not overflow or underflow, and correct ones where it would: sums of 1e308-sized weights,
    squares of 1e-300-sized deviations.
    """
    peak = np.max(np.abs(w2), axis=1) if w2.shape[1] else np.zeros(w2.shape[0])
    e = np.frexp(peak)[1].astype(np.int64)  # frexp(0) gives exponent 0
    return np.ldexp(w2, -e[:, None]), e


def _weights_grad_args(w, grad, k, t):
    """Validated ``(w, w2, grad, k, t)`` of a weight backward (CPU and CUDA alike)."""
    k = check_finite_scalar(k, "k")
    t = check_finite_scalar(t, "t")
    w, w2 = _weights_2d(w)
    g = as_float_array(grad, "grad")
    if g.shape != w.shape:
        raise ValueError(f"grad has shape {g.shape} but w has shape {w.shape}")
    return w, w2, g, k, t


def _scaled_weight_set(w2):
    """``(w2s, e, alpha_s, beta_s)``: the set of the power-of-two scaled rows (exact rescale)."""
    w2s, e = pow2_row_scale(w2)
    alpha_s, beta_s = _k.weight_stats(w2s)
    return w2s, e, alpha_s, beta_s


def weight_binary_set(w):
    r"""Per-output-channel weight binary set ``(alpha, beta)``, each of shape ``(O,)``.

    For output channel ``o`` with ``n = (I/groups)*kh*kw`` weights:

    .. math:: \beta_w = \frac1n\sum_j W_{oj}, \qquad
              \alpha_w = \sqrt{\frac1n \sum_j (W_{oj} - \beta_w)^2}

    (population standard deviation), computed on the rows scaled by a power of two
    (:func:`pow2_row_scale`) so that any finite weights give their finite set, e.g.
    ``[[1e308, 1e308, -1e308, -1e308]]`` gives ``alpha = 1e308, beta = 0``. This moment matching is the paper's KL equalization: a
    two-point distribution on ``{beta - alpha, beta + alpha}`` has mean ``beta`` and variance
    ``alpha**2``, and ``KL(N(mu, sigma^2) || N(beta, alpha^2))`` is minimised at
    ``beta = mu, alpha = sigma``.

    Constant filter: when all weights of a channel are exactly equal, ``beta_w`` is that value
    (exactly, not a rounded mean) and ``alpha_w = 0``.

    ``w`` has at least 2 dimensions with output channels on axis 0 (conv ``(O, I, kh, kw)`` or
    linear ``(O, I)``); any real dtype, computed in float64.
    """
    _, w2 = _weights_2d(w)
    _, e, alpha_s, beta_s = _scaled_weight_set(w2)
    return finite_result((np.ldexp(alpha_s, e), np.ldexp(beta_s, e)), "weight_binary_set")


def binarize_weights(w, *, convention="paper"):
    r"""Binarize weights per output channel: :math:`W_b = \alpha_w\,\mathrm{sign}(u) + \beta_w`.

    :math:`u = (W - \beta_w)/\alpha_w` with ``(alpha_w, beta_w) = weight_binary_set(w)``.
    ``sign(0)`` is ``+1`` for ``convention="paper"`` and ``0`` for ``"official"`` (so a weight
    exactly at the channel mean maps to ``beta_w`` there). A constant filter
    (``alpha_w = 0``) binarizes to ``beta_w`` everywhere. Returns float64, same shape as ``w``.
    """
    official = check_convention(convention) == "official"
    w, w2 = _weights_2d(w)
    w2s, e, alpha_s, beta_s = _scaled_weight_set(w2)
    wb = np.ldexp(_k.weight_forward(w2s, alpha_s, beta_s, official), e[:, None])
    return finite_result(wb.reshape(w.shape), "binarize_weights")


def binarize_weights_grad(w, grad, *, k=10.0, t=0.1, convention="paper"):
    r"""Gradient of a loss through :func:`binarize_weights` w.r.t. the real weights ``W``.

    ``grad`` is dL/dWb. With the error-decay estimator :math:`\mathrm{EDE}(u) = k t (1 -
    \tanh^2(t u))` for d sign(u)/du, and ``alpha_w``, ``beta_w`` differentiated as functions of
    ``W`` (exactly what autograd does), per output channel with ``n`` elements:

    .. math::
        G_u &= g\,\alpha_w\,\mathrm{EDE}(u) \\
        \partial\alpha &= \textstyle\sum g s - \sum G_u u / \alpha_w, \qquad
        \partial\beta = \sum g - \sum G_u / \alpha_w \\
        dW_j &= G_{u,j}/\alpha_w + \partial\beta/n + u_j\,\partial\alpha/n

    Constant filter (``alpha_w = 0``): ``Wb = beta_w`` so ``dW_j = sum(g)/n`` (finite, never
    NaN). ``convention`` only matters for ``s`` at ``u == 0`` (paper +1, official 0).
    Scale invariance: ``binarize_weights_grad(c*w, g) == binarize_weights_grad(w, g)`` for any
    ``c > 0`` (exactly for powers of two), from 1e-300 to 1e300 alike.
    Defaults ``k = 10, t = 0.1``; see :func:`ede_schedule` for the training schedule.
    """
    official = check_convention(convention) == "official"
    w, w2, g, k, t = _weights_grad_args(w, grad, k, t)
    # dW is invariant under W -> c W (u, s and the EDE factor do not change), so the scaled
    # rows give dW itself, for weights of any magnitude
    w2s, _, alpha_s, beta_s = _scaled_weight_set(w2)
    dw = _k.weight_backward(w2s, g.reshape(w2.shape), alpha_s, beta_s, k, t, official)
    return finite_result(dw.reshape(w.shape), "binarize_weights_grad")


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


def _activations_3d(x, alpha, beta):
    """Validate ``x`` and the set; view x as (N, C, S) with channels on axis 1."""
    x = as_float_array(x, "x", allow_scalar=True)
    a_is_arr = np.ndim(alpha) > 0
    b_is_arr = np.ndim(beta) > 0
    if (a_is_arr or b_is_arr) and x.ndim < 2:
        raise ValueError(
            f"per-channel alpha/beta need x with a channel axis 1 (N, C, ...), got shape {x.shape}"
        )
    if x.ndim >= 2:
        channels = x.shape[1]
        x3 = x.reshape(x.shape[0], channels, int(np.prod(x.shape[2:])))
    else:
        channels = 1
        x3 = x.reshape(1, 1, x.size)
    alpha_c, beta_c, _ = activation_params(alpha, beta, channels)
    # each parameter's gradient takes that parameter's own shape (scalar or (C,))
    return x, x3, alpha_c, beta_c, (a_is_arr, b_is_arr)


def binarize_activations(x, alpha, beta, *, convention="paper"):
    r"""Binarize activations to the adaptive set of a layer.

    :math:`v = (x - \beta)/\alpha`, :math:`s = \mathrm{sign}(v)`;
    ``paper``: :math:`\alpha s + \beta \in \{\beta-\alpha, \beta+\alpha\}` with ``s(0) = +1``
    (``x >= beta`` maps to ``b2`` when alpha > 0); ``official``: :math:`\alpha (s + \beta)` with
    ``s(0) = 0`` (levels ``alpha*(beta -+ 1)``, and ``alpha*beta`` exactly at the threshold).

    ``alpha``/``beta`` are scalars, or arrays of shape ``(C,)`` applied along axis 1 of ``x``
    (``x`` of shape ``(N, C, ...)``). ``alpha == 0`` is a ``ValueError``; ``alpha < 0`` follows
    the formulas (the levels swap). Returns float64 of ``x``'s shape.
    """
    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, _ = _activations_3d(x, alpha, beta)
    return finite_result(_k.act_forward(x3, alpha_c, beta_c, official).reshape(x.shape),
                         "binarize_activations")


def binarize_activations_grad(x, alpha, beta, grad, *, convention="paper"):
    r"""Backward of :func:`binarize_activations` with the Bi-Real estimator.

    With :math:`F'(v) = \max(0, 2 - 2|v|)` and :math:`G = g\,F'(v)`:

    .. math::
        dx &= G \quad\text{(both conventions)} \\
        \text{paper:}\quad d\alpha &= \textstyle\sum g s - \sum G v, \qquad
            d\beta = \sum g - \sum G \\
        \text{official:}\quad d\alpha &= \textstyle\sum g (s + \beta) - \sum G v, \qquad
            d\beta = \alpha \sum g - \sum G

    Sums run over all elements for scalar ``alpha``/``beta`` (returned as floats) and over all
    axes except axis 1 for per-channel parameters (returned as ``(C,)`` arrays). Returns an
    :class:`ActivationGrad` ``(dx, dalpha, dbeta)``.
    """
    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, per_channel = _activations_3d(x, alpha, beta)
    g = as_float_array(grad, "grad", allow_scalar=True)
    if g.shape != x.shape:
        raise ValueError(f"grad has shape {g.shape} but x has shape {x.shape}")
    dx, s_gs, s_gv, s_g, s_gg = _k.act_backward(x3, alpha_c, beta_c, g.reshape(x3.shape), official)
    return finite_result(_combine_activation_grads(dx.reshape(x.shape), alpha_c, s_gs, s_gv,
                                                   s_g, s_gg, per_channel, official),
                         "binarize_activations_grad")


def _combine_activation_grads(dx, alpha_c, s_gs, s_gv, s_g, s_gg, per_channel, official):
    """Turn the kernels' per-channel partial sums into the SPEC's dalpha, dbeta.

    ``per_channel = (alpha_is_array, beta_is_array)``: a scalar parameter stands for every
    channel, so its gradient is the sum of the per-channel gradients (a float).
    """
    alpha_pc, beta_pc = per_channel
    dalpha = s_gs - s_gv
    dbeta = (alpha_c * s_g if official else s_g) - s_gg
    if not alpha_pc:
        dalpha = float(np.sum(s_gs) - np.sum(s_gv))
    if not beta_pc:
        dbeta = float(np.sum(dbeta))
    return ActivationGrad(dx, dalpha, dbeta)
