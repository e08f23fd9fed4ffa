"""Plain-NumPy float64 specification of AdaBin (the slow, obviously-correct reference).

Every function here is a direct transcription of ``SPEC.md``; the fast kernels of
``adabin_np`` are tested against it. Nothing here is optimised beyond vectorising over batch
and channel inside explicit loops over output pixels and kernel taps. Inputs are converted to
float64; sums that define a binary set use :func:`math.fsum` (correctly rounded), so the
reference values do not depend on a summation order.

Notation (SPEC.md):

* activations ``x`` (NCHW or (N, C)), activation binary set ``alpha_a``, ``beta_a``
  (scalars, or arrays of shape (C,) along axis 1), ``v = (x - beta_a) / alpha_a``;
* weights ``W`` (O, C/groups, kh, kw), per output channel ``o``: ``beta_w = mean(W_o)``,
  ``alpha_w = std(W_o)`` (population), ``u = (W_o - beta_w) / alpha_w``;
* ``s`` a sign; ``g`` an upstream gradient.

Conventions (SPEC section 1):

=========== ================================ ===================================
            paper                            official
=========== ================================ ===================================
activations ``alpha*s + beta``, s(0) = +1    ``alpha*(s + beta)``, s(0) = 0
weights     ``alpha_w*s + beta_w``, s(0)=+1  ``alpha_w*s + beta_w``, s(0) = 0
=========== ================================ ===================================

The bit-packed formula (:func:`packed_conv_formula`) has no zero level: it uses s(0) = +1 in
both conventions.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

__all__ = [
    "ActivationGrad",
    "ConvGrad",
    "activation_v",
    "adabin_conv2d",
    "adabin_conv2d_grad",
    "binarize_activations",
    "binarize_activations_grad",
    "binarize_weights",
    "binarize_weights_grad",
    "bireal_grad",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv_output_shape",
    "ede",
    "ede_schedule",
    "flip_risk_mask",
    "packed_conv_formula",
    "sign_official",
    "sign_paper",
    "weight_binary_set",
    "weight_u",
]

ActivationGrad = namedtuple("ActivationGrad", ["dx", "dalpha", "dbeta"])
ConvGrad = namedtuple("ConvGrad", ["dx", "dw", "dalpha", "dbeta"])

CONVENTIONS = ("paper", "official")


# --------------------------------------------------------------------------------------------
# signs and surrogate derivatives
# --------------------------------------------------------------------------------------------
def sign_paper(v):
    """Paper sign: ``s = +1 if v >= 0 else -1`` (so v == 0 maps to the upper level)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v >= 0, 1.0, -1.0)


def sign_official(v):
    """Official-release sign ``torch.sign``: ``s = -1, 0, +1`` for ``v < 0, == 0, > 0``."""
    return np.sign(np.asarray(v, dtype=np.float64))


def _sign(v, convention):
    assert convention in CONVENTIONS, convention
    return sign_paper(v) if convention == "paper" else sign_official(v)


def bireal_grad(v):
    """Bi-Real Net estimator of d sign(v)/dv: ``F'(v) = max(0, 2 - 2|v|)``.

    It is the derivative of the piecewise quadratic ApproxSign
    ``F(v) = -1 (v < -1), 2v + v^2 (-1 <= v < 0), 2v - v^2 (0 <= v < 1), 1 (v >= 1)``.
    """
    v = np.asarray(v, dtype=np.float64)
    return np.maximum(0.0, 2.0 - 2.0 * np.abs(v))


def ede(u, k=10.0, t=0.1):
    """IR-Net error-decay estimator of d sign(u)/du: ``EDE(u) = k*t*(1 - tanh(t*u)^2)``.

    It is the derivative of ``k*tanh(t*u)``.
    """
    u = np.asarray(u, dtype=np.float64)
    return k * t * (1.0 - np.tanh(t * u) ** 2)


def ede_schedule(epoch, epochs):
    """EDE schedule of the release: ``t = 10**(-3 + 4*epoch/epochs)``, ``k = max(1/t, 1)``.

    Returns ``(k, t)`` as floats. ``epoch = 0`` gives (1000, 1e-3); ``epoch = epochs/2`` gives
    (10, 0.1) (the defaults); ``epoch = epochs`` gives (1, 10).
    """
    assert epochs > 0
    t = 10.0 ** (-3.0 + 4.0 * float(epoch) / float(epochs))
    k = max(1.0 / t, 1.0)
    return float(k), float(t)


def flip_risk_mask(v, tol):
    """Elements at flip risk: ``|v| <= tol`` (boolean array of v's shape).

    ``v`` is a normalised pre-sign value (``v`` of the activations or ``u`` of the weights).
    Elements inside the band may binarise differently under a different rounding order (and
    v == 0 exactly is where the conventions and the packed path disagree).
    """
    return np.abs(np.asarray(v, dtype=np.float64)) <= tol


# --------------------------------------------------------------------------------------------
# weights (SPEC section 2)
# --------------------------------------------------------------------------------------------
def weight_binary_set(w):
    """Per-output-channel binary set of the weights, ``(alpha_w, beta_w)``, each shape (O,).

    For each output channel ``o`` (axis 0), over all other axes, ``n`` elements::

        beta_w  = mean(W_o)                          = fsum(W_o) / n
        alpha_w = sqrt(mean((W_o - beta_w)^2))        (population std)

    Constant-filter rule (project decision): if all elements of ``W_o`` are exactly equal,
    ``beta_w`` is that value exactly and ``alpha_w = 0`` exactly (a floating mean of equal
    values need not reproduce the value, e.g. three times 0.1).

    Sums use :func:`math.fsum`, so the result is independent of summation order up to the
    final division/sqrt rounding.
    """
    w = np.asarray(w, dtype=np.float64)
    assert w.ndim >= 2, "w must have ndim >= 2 (output channels on axis 0)"
    flat = w.reshape(w.shape[0], -1)
    n = flat.shape[1]
    alpha = np.empty(flat.shape[0])
    beta = np.empty(flat.shape[0])
    for o, row in enumerate(flat):
        if np.all(row == row[0]):
            beta[o] = row[0]
            alpha[o] = 0.0
            continue
        b = math.fsum(row.tolist()) / n
        beta[o] = b
        alpha[o] = math.sqrt(math.fsum(((row - b) ** 2).tolist()) / n)
    return alpha, beta


def _per_out(arr, ndim):
    """Reshape a per-output-channel vector (O,) to broadcast against a weight of ``ndim``."""
    return np.asarray(arr).reshape((-1,) + (1,) * (ndim - 1))


def weight_u(w):
    """Normalised weights ``u = (W_o - beta_w) / alpha_w``; ``u = 0`` for a degenerate filter.

    A filter is degenerate when ``alpha_w == 0`` (always the case for a constant filter, see
    :func:`weight_binary_set`). Its binarised value is ``beta_w`` whatever its sign, so the
    choice ``u = 0`` only affects what flip-risk reporting sees.
    """
    w = np.asarray(w, dtype=np.float64)
    alpha, beta = weight_binary_set(w)
    a = _per_out(alpha, w.ndim)
    b = _per_out(beta, w.ndim)
    safe = np.where(a == 0.0, 1.0, a)
    return np.where(a == 0.0, 0.0, (w - b) / safe)


def binarize_weights(w, *, convention="paper"):
    """Binarised weights ``Wb = alpha_w*s(u) + beta_w`` per output channel (SPEC section 2).

    ``s`` is the sign of the convention (paper: s(0) = +1; official: s(0) = 0, so an element
    exactly at the mean stays at ``beta_w``). A degenerate (constant) filter gives ``Wb =
    beta_w``.
    """
    w = np.asarray(w, dtype=np.float64)
    alpha, beta = weight_binary_set(w)
    u = weight_u(w)
    s = _sign(u, convention)
    return _per_out(alpha, w.ndim) * s + _per_out(beta, w.ndim)


def binarize_weights_grad(w, grad, *, k=10.0, t=0.1, convention="paper"):
    """Gradient of a loss w.r.t. the real weights, given ``grad = dL/dWb`` (SPEC section 2).

    alpha_w and beta_w depend on W and the gradient flows through them; d s(u)/du is replaced
    by ``EDE(u) = k*t*(1 - tanh(t*u)^2)``. Per output channel (n elements)::

        G_u    = g * alpha_w * EDE(u)
        dalpha = sum(g*s) - sum(G_u*u) / alpha_w
        dbeta  = sum(g)   - sum(G_u)   / alpha_w
        dW_j   = G_u_j / alpha_w + dbeta / n + u_j * dalpha / n

    (from d beta_w/dW_j = 1/n, d alpha_w/dW_j = u_j/n, d u_i/dW_j = (delta_ij - 1/n - u_i u_j/n)
    / alpha_w). ``s`` follows the convention. Degenerate filter (alpha_w == 0):
    ``dW_j = sum(g)/n``.
    """
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    assert g.shape == w.shape
    alpha, beta = weight_binary_set(w)
    u_all = weight_u(w)
    out = np.empty_like(w)
    n = w[0].size
    for o in range(w.shape[0]):
        go = g[o]
        if alpha[o] == 0.0:
            out[o] = math.fsum(go.ravel().tolist()) / n
            continue
        u = u_all[o]
        s = _sign(u, convention)
        g_u = go * alpha[o] * ede(u, k, t)
        dalpha = np.sum(go * s) - np.sum(g_u * u) / alpha[o]
        dbeta = np.sum(go) - np.sum(g_u) / alpha[o]
        out[o] = g_u / alpha[o] + dbeta / n + u * dalpha / n
    return out


# --------------------------------------------------------------------------------------------
# activations (SPEC section 3)
# --------------------------------------------------------------------------------------------
def _per_channel(p, x):
    """Broadcast a scalar or a (C,) activation parameter along axis 1 of ``x``."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0:
        return p
    assert p.shape == (x.shape[1],), f"per-channel parameter must have shape ({x.shape[1]},)"
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _check_alpha(alpha):
    if np.any(np.asarray(alpha) == 0):
        raise ValueError("alpha must be nonzero (alpha == 0 has no binary set)")


def activation_v(x, alpha, beta):
    """Normalised activations ``v = (x - beta) / alpha`` (parameters along axis 1)."""
    x = np.asarray(x, dtype=np.float64)
    _check_alpha(alpha)
    return (x - _per_channel(beta, x)) / _per_channel(alpha, x)


def binarize_activations(x, alpha, beta, *, convention="paper"):
    """Binarised activations (SPEC section 1).

    ``v = (x - beta)/alpha``; paper: ``alpha*s + beta`` with s(0) = +1 (levels beta -+ alpha);
    official: ``alpha*(s + beta)`` with s = sign(v), s(0) = 0 (levels alpha*(beta -+ 1), and
    alpha*beta at v == 0). ``alpha``/``beta`` are scalars or arrays (C,) along axis 1.
    ``alpha == 0`` raises ValueError; ``alpha < 0`` follows the formulas.
    """
    x = np.asarray(x, dtype=np.float64)
    v = activation_v(x, alpha, beta)
    a = _per_channel(alpha, x)
    b = _per_channel(beta, x)
    s = _sign(v, convention)
    if convention == "paper":
        return a * s + b
    return a * (s + b)


def _reduce_like(arr, param, x):
    """Sum ``arr`` (shape of x) to the shape of ``param``: everything, or all axes but 1."""
    if np.ndim(param) == 0:
        return float(math.fsum(np.ravel(arr).tolist()))
    axes = tuple(i for i in range(x.ndim) if i != 1)
    return np.sum(arr, axis=axes)


def binarize_activations_grad(x, alpha, beta, grad, *, convention="paper"):
    """Gradients of the activation binarizer (SPEC section 3), ``(dx, dalpha, dbeta)``.

    With ``F'(v) = max(0, 2 - 2|v|)`` (Bi-Real) standing in for d s/dv and ``G = g*F'(v)``::

        dx = G                                                       (both conventions)
        paper:    dalpha = sum(g*s) - sum(G*v);          dbeta = sum(g) - sum(G)
        official: dalpha = sum(g*(s+beta)) - sum(G*v);   dbeta = alpha*sum(g) - sum(G)

    (paper: d out/d alpha = s + alpha F'(v) dv/dalpha = s - F'(v) v; d out/d beta = 1 - F'(v).
    official: d out/d alpha = s + beta - F'(v) v; d out/d beta = alpha - F'(v).)
    ``s`` is the convention's sign (official: 0 at v == 0). ``dalpha`` has the shape of
    ``alpha`` and ``dbeta`` the shape of ``beta``: a float (sum over everything) for a scalar,
    an array (C,) (sum over all axes but 1) for a per-channel parameter.
    """
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    assert g.shape == x.shape
    v = activation_v(x, alpha, beta)
    a = _per_channel(alpha, x)
    b = _per_channel(beta, x)
    s = _sign(v, convention)
    G = g * bireal_grad(v)
    dx = G
    if convention == "paper":
        dalpha_el = g * s - G * v
        dbeta_el = g - G
    else:
        dalpha_el = g * (s + b) - G * v
        dbeta_el = a * g - G
    return ActivationGrad(dx, _reduce_like(dalpha_el, alpha, x), _reduce_like(dbeta_el, beta, x))


# --------------------------------------------------------------------------------------------
# real convolution (cross-correlation, NCHW, zero padding, no bias)
# --------------------------------------------------------------------------------------------
def _pair(v):
    if np.ndim(v) == 0:
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def conv_output_shape(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """Output shape ``(N, O, OH, OW)``, ``OH = (H + 2*ph - dh*(kh-1) - 1)//sh + 1``."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    assert sh >= 1 and sw >= 1 and ph >= 0 and pw >= 0 and dh >= 1 and dw >= 1
    assert groups >= 1 and c % groups == 0 and o % groups == 0 and cg == c // groups
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assert oh >= 1 and ow >= 1, "kernel larger than padded input"
    return n, o, oh, ow


def _valid_taps(h, wd, oh, ow, kh, kw, stride, padding, dilation):
    """Yield ``(i, j, p, q, hi, wi)``: output pixel (i, j), kernel tap (p, q) reading input
    pixel ``hi = i*sh + p*dh - ph``, ``wi = j*sw + q*dw - pw``, for in-bounds taps only
    (an out-of-bounds tap reads the zero padding and contributes nothing)."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    for i in range(oh):
        for j in range(ow):
            for p in range(kh):
                hi = i * sh + p * dh - ph
                if not 0 <= hi < h:
                    continue
                for q in range(kw):
                    wi = j * sw + q * dw - pw
                    if not 0 <= wi < wd:
                        continue
                    yield i, j, p, q, hi, wi


def conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1):
    """Real 2-D cross-correlation (``torch.nn.functional.conv2d`` without bias), NCHW.

    With ``Cg = C/groups``, ``Og = O/groups`` and output channel ``o`` in group ``gr = o // Og``::

        y[n, o, i, j] = sum_{c < Cg} sum_{p, q} xpad[n, gr*Cg + c, i*sh + p*dh - ph,
                                                     j*sw + q*dw - pw] * w[o, c, p, q]

    where ``xpad`` is x surrounded by zeros. stride/padding/dilation are ints or (h, w) pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, o, oh, ow = conv_output_shape(x.shape, w.shape, stride=stride, padding=padding,
                                     dilation=dilation, groups=groups)
    cg, og = x.shape[1] // groups, o // groups
    y = np.zeros((n, o, oh, ow))
    for gr in range(groups):
        xs = x[:, gr * cg:(gr + 1) * cg]
        ws = w[gr * og:(gr + 1) * og]
        for i, j, p, q, hi, wi in _valid_taps(x.shape[2], x.shape[3], oh, ow, w.shape[2],
                                              w.shape[3], stride, padding, dilation):
            y[:, gr * og:(gr + 1) * og, i, j] += xs[:, :, hi, wi] @ ws[:, :, p, q].T
    return y


def conv2d_grad_input(grad_y, w, x_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """``dL/dx`` of :func:`conv2d`: ``dx[n, gr*Cg + c, hi, wi] += g[n, o, i, j] * w[o, c, p, q]``
    over the same valid taps (padded positions receive nothing)."""
    grad_y = np.asarray(grad_y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    x_shape = tuple(x_shape)
    shape = conv_output_shape(x_shape, w.shape, stride=stride, padding=padding,
                              dilation=dilation, groups=groups)
    assert grad_y.shape == shape
    oh, ow = shape[2], shape[3]
    cg, og = x_shape[1] // groups, w.shape[0] // groups
    dx = np.zeros(x_shape)
    for gr in range(groups):
        ws = w[gr * og:(gr + 1) * og]
        gs = grad_y[:, gr * og:(gr + 1) * og]
        for i, j, p, q, hi, wi in _valid_taps(x_shape[2], x_shape[3], oh, ow, w.shape[2],
                                              w.shape[3], stride, padding, dilation):
            dx[:, gr * cg:(gr + 1) * cg, hi, wi] += gs[:, :, i, j] @ ws[:, :, p, q]
    return dx


def conv2d_grad_weight(x, grad_y, w_shape, *, stride=1, padding=0, dilation=1, groups=1):
    """``dL/dw`` of :func:`conv2d`: ``dw[o, c, p, q] += sum_n g[n, o, i, j] * x[n, gr*Cg + c,
    hi, wi]`` over the valid taps."""
    x = np.asarray(x, dtype=np.float64)
    grad_y = np.asarray(grad_y, dtype=np.float64)
    w_shape = tuple(w_shape)
    shape = conv_output_shape(x.shape, w_shape, stride=stride, padding=padding,
                              dilation=dilation, groups=groups)
    assert grad_y.shape == shape
    oh, ow = shape[2], shape[3]
    cg, og = x.shape[1] // groups, w_shape[0] // groups
    dw = np.zeros(w_shape)
    for gr in range(groups):
        xs = x[:, gr * cg:(gr + 1) * cg]
        gs = grad_y[:, gr * og:(gr + 1) * og]
        for i, j, p, q, hi, wi in _valid_taps(x.shape[2], x.shape[3], oh, ow, w_shape[2],
                                              w_shape[3], stride, padding, dilation):
            dw[gr * og:(gr + 1) * og, :, p, q] += gs[:, :, i, j].T @ xs[:, :, hi, wi]
    return dw


# --------------------------------------------------------------------------------------------
# AdaBin convolution (SPEC section 4)
# --------------------------------------------------------------------------------------------
def adabin_conv2d(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                  convention="paper"):
    """``y = conv2d(binarize_activations(x), binarize_weights(w))`` (float path).

    Zero padding is applied **after** binarization: a padded tap contributes 0, not a binary
    level.
    """
    xb = binarize_activations(x, alpha, beta, convention=convention)
    wb = binarize_weights(w, convention=convention)
    return conv2d(xb, wb, stride=stride, padding=padding, dilation=dilation, groups=groups)


def adabin_conv2d_grad(x, w, alpha, beta, grad_y, *, stride=1, padding=0, dilation=1,
                       groups=1, k=10.0, t=0.1, convention="paper"):
    """Backward of :func:`adabin_conv2d`, ``(dx, dw, dalpha, dbeta)`` by the chain rule::

        dxb = conv2d_grad_input(grad_y, Wb)      dWb = conv2d_grad_weight(xb, grad_y)
        (dx, dalpha, dbeta) = binarize_activations_grad(x, alpha, beta, dxb)
        dw = binarize_weights_grad(w, dWb, k=k, t=t)

    Padded taps are constants (0) and receive no gradient.
    """
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    xb = binarize_activations(x, alpha, beta, convention=convention)
    wb = binarize_weights(w, convention=convention)
    dxb = conv2d_grad_input(grad_y, wb, x.shape, **opts)
    dwb = conv2d_grad_weight(xb, grad_y, w.shape, **opts)
    dx, dalpha, dbeta = binarize_activations_grad(x, alpha, beta, dxb, convention=convention)
    dw = binarize_weights_grad(w, dwb, k=k, t=t, convention=convention)
    return ConvGrad(dx, dw, dalpha, dbeta)


def packed_conv_formula(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                        convention="paper"):
    """The bit-packed AdaBin convolution formula of SPEC section 4, evaluated naively.

    Signs (no zero level, **both** conventions): ``s_a = +1 if v >= 0 else -1`` with
    ``v = (x - beta_a)/alpha_a``; ``s_w = +1 if u >= 0 else -1`` (u = 0 for a constant filter,
    which has d_w = 0 anyway). Levels ``c +- d``:

    * activations, paper: ``c_a = beta_a, d_a = alpha_a``; official (levels
      ``alpha*(beta -+ 1)``): ``c_a = alpha_a*beta_a, d_a = alpha_a``;
    * weights (per output channel o): ``c_w = beta_w, d_w = alpha_w``.

    For one output pixel with valid (in-bounds) taps P (over input channels of the group and
    kernel positions), ``N = |P|``, bits ``a = [s_a > 0]``, ``b = [s_w > 0]``::

        y = d_a*d_w*sum(s_a*s_w) + d_a*c_w*sum(s_a) + c_a*d_w*sum_P(s_w) + c_a*c_w*N
        sum(s_a*s_w) = N - 2*popcount(a XOR b),   sum(s_a) = 2*popcount(a) - N

    which is ``sum_P (c_a + d_a s_a)(c_w + d_w s_w)`` expanded. With per-channel activation
    parameters, ``c_a``/``d_a`` depend on the input channel c; the same expansion is taken
    per channel: ``y = d_w*sum_c d_a[c]*S_aw[c] + c_w*sum_c d_a[c]*S_a[c]
    + d_w*sum_c c_a[c]*S_w[c] + c_w*sum_c c_a[c]*N_c`` with the integer sums restricted to
    channel c (N_c = number of valid kernel positions). Border pixels thus get their own
    ``sum_P(s_w)`` and ``N`` (zero-padding correction). Returns y (N, O, OH, OW), float64.
    """
    assert convention in CONVENTIONS, convention
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, o, oh, ow = conv_output_shape(x.shape, w.shape, stride=stride, padding=padding,
                                     dilation=dilation, groups=groups)
    c = x.shape[1]
    cg, og = c // groups, o // groups
    kh, kw = w.shape[2], w.shape[3]

    # activation bits and levels
    v = activation_v(x, alpha, beta)
    a_bits = v >= 0                                            # s_a = +1  <->  bit 1
    scalar = np.ndim(alpha) == 0 and np.ndim(beta) == 0
    alpha_c = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (c,))
    beta_c = np.broadcast_to(np.asarray(beta, dtype=np.float64), (c,))
    d_a = alpha_c
    c_a = beta_c if convention == "paper" else alpha_c * beta_c

    # weight bits and levels
    alpha_w, beta_w = weight_binary_set(w)
    b_bits = weight_u(w) >= 0
    d_w, c_w = alpha_w, beta_w

    y = np.zeros((n, o, oh, ow))
    taps_of = {}
    for i, j, p, q, hi, wi in _valid_taps(x.shape[2], x.shape[3], oh, ow, kh, kw, stride,
                                          padding, dilation):
        taps_of.setdefault((i, j), []).append((p, q, hi, wi))
    for gr in range(groups):
        cs = slice(gr * cg, (gr + 1) * cg)
        os_ = slice(gr * og, (gr + 1) * og)
        for (i, j), taps in taps_of.items():
            ps = [t_[0] for t_ in taps]
            qs = [t_[1] for t_ in taps]
            his = [t_[2] for t_ in taps]
            wis = [t_[3] for t_ in taps]
            a = a_bits[:, cs][:, :, his, wis]                  # (N, Cg, T) bits
            b = b_bits[os_][:, :, ps, qs]                      # (Og, Cg, T) bits
            nc = len(taps)                                     # valid taps per channel
            # integer sums per input channel c of the group
            xor_count = np.sum(a[:, None] ^ b[None], axis=3)   # (N, Og, Cg) popcount(a^b)
            s_aw = nc - 2 * xor_count                          # sum_taps s_a*s_w
            s_a = 2 * np.sum(a, axis=2) - nc                   # (N, Cg)  sum_taps s_a
            s_w = 2 * np.sum(b, axis=2) - nc                   # (Og, Cg) sum_taps s_w
            dw_, cw_ = d_w[os_], c_w[os_]
            if scalar:
                # the SPEC formula verbatim, integer totals over P
                da, ca, big_n = d_a[0], c_a[0], nc * cg
                y[:, os_, i, j] = (da * dw_ * s_aw.sum(axis=2)
                                   + da * cw_ * s_a.sum(axis=1)[:, None]
                                   + ca * dw_ * s_w.sum(axis=1)
                                   + ca * cw_ * big_n)
            else:
                da, ca = d_a[cs], c_a[cs]
                y[:, os_, i, j] = (dw_ * (s_aw @ da)
                                   + cw_ * (s_a @ da)[:, None]
                                   + dw_ * (s_w @ ca)
                                   + cw_ * nc * ca.sum())
    return y
