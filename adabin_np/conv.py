r"""AdaBin convolution: float path, explicit backward.

.. math:: y = \mathrm{conv2d}(\mathrm{binarize\_activations}(x),\ \mathrm{binarize\_weights}(W))

NCHW activations, OIHW weights, no bias, with ``stride``, ``padding``, ``dilation`` and
``groups`` as in ``torch.nn.functional.conv2d``. Padding is a real zero inserted **after**
binarization: a padded tap contributes 0, not ``b1``/``b2``, and receives no gradient.

How it is computed (kernels in :mod:`adabin_np.kernels_float`; issue 15):

* forward (:func:`adabin_conv2d`): exact integer counts of the level pairs
  (activation level x weight level) over the valid taps of every output, from the bit-packed
  XOR/popcount kernel (one activation set per group, no zero level) or else a GEMM of
  {-1, 0, +1} sign matrices (exact in float32 BLAS for ``K < 2**24``), times the level
  products of the elementwise path; both routes give bit-identical results. Independent of summation order and thread count; within
  ``(K + T) u sum|x_b w_b|`` of the elementwise sum (``T = 9 * segments``, ``u = 2**-53``).
* backward (:func:`adabin_conv2d_grad`, the layers' ``_conv_backward``): im2col / col2im and a
  register-blocked float64 GEMM whose every output is summed in one fixed order, so results
  are bit-for-bit identical for any ``NUMBA_NUM_THREADS``.
* :func:`conv2d` (the real-valued stem) keeps the direct fixed-order kernel of
  :mod:`adabin_np.kernels_cpu`.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numba
import numpy as np

from . import kernels_cpu as _k
from . import kernels_float as _kf
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


#: below this many multiply-adds a call runs its kernels on one thread: waking the thread pool
#: costs more than it saves (about 10 us on a quiet machine, milliseconds on a loaded one).
#: Results do not depend on the thread count, so this changes speed only.
_PARALLEL_MIN_MACS = 2 ** 21


@contextlib.contextmanager
def _threads_for(macs):
    """Run the enclosed kernels on one Numba thread when the problem is small."""
    prev = numba.get_num_threads()
    if macs >= _PARALLEL_MIN_MACS or prev == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(prev)


_BLAS_CONTROLLER = None


#: GEMMs of at least this many multiply-adds use as many BLAS threads as Numba has
_BLAS_PARALLEL_MIN_MACS = 2 ** 27


def _blas_threads(macs):
    """Context: NumPy's BLAS thread count for the forward's exact-integer GEMMs.

    The GEMMs are exact, so the thread count cannot change a result. Below
    ``_BLAS_PARALLEL_MIN_MACS`` one BLAS thread keeps OpenBLAS's spinning workers from
    competing with the Numba kernels that follow (on a 2-core machine they halved the speed
    of the next kernel); large GEMMs get ``numba.get_num_threads()`` threads. Needs
    ``threadpoolctl`` (a scikit-learn dependency); without it the BLAS keeps its own setting.
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            import threadpoolctl

            _BLAS_CONTROLLER = threadpoolctl.ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or broken
            _BLAS_CONTROLLER = False
    if _BLAS_CONTROLLER is False:
        return contextlib.nullcontext()
    limit = numba.get_num_threads() if macs >= _BLAS_PARALLEL_MIN_MACS else 1
    return _BLAS_CONTROLLER.limit(limits=limit, user_api="blas")


def _macs(x, w, p):
    return x.shape[0] * w.shape[0] * p.out_h * p.out_w * w.shape[1] * w.shape[2] * w.shape[3]


def _conv(xb, wb, p):
    return _k.conv_forward(xb, wb, p.stride[0], p.stride[1], p.padding[0], p.padding[1],
                           p.dilation[0], p.dilation[1], p.groups, p.out_h, p.out_w)


def _geom_args(w, p):
    """Kernel geometry tuple (cg, kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w)."""
    return (w.shape[1], w.shape[2], w.shape[3], p.stride[0], p.stride[1], p.padding[0],
            p.padding[1], p.dilation[0], p.dilation[1], p.out_h, p.out_w)


def _conv_backward(x, w, gy, p):
    """dx, dw of the plain cross-correlation (see :func:`_conv_backward_kernels`)."""
    with _threads_for(_macs(x, w, p)):
        return _conv_backward_kernels(x, w, gy, p)


def _conv_backward_kernels(x, w, gy, p):
    r"""dx, dw of the plain cross-correlation y = conv2d(x, w) (padded taps dropped).

    Per sample ``n`` and group ``g``, with ``col = im2col(x[n])`` (``P x K``, tap-major, zero
    at padded taps) and ``G = g_y[n]`` viewed as ``O_g x P``:

    .. math:: dW \mathrel{+}= G\,\mathrm{col}, \qquad
              dx[n] = \mathrm{col2im}(G^\top W)

    with the fixed-order blocked GEMM :func:`adabin_np.kernels_float.gemm_acc` (every element
    of ``dW`` sums over ``(n, p)`` in ascending order, every element of ``G^T W`` over the
    output channels in ascending order) and :func:`~adabin_np.kernels_float.col2im_add`
    (taps in a fixed order). Bit-for-bit identical for any number of threads.
    """
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    groups = p.groups
    og = o_ // groups
    sh, sw = p.stride
    ph, pw = p.padding
    dh, dw = p.dilation
    taps = kh * kw
    k_g = cg * taps
    pix = p.out_h * p.out_w
    # weights tap-major, channels contiguous: (G, O_g, taps*cg); g_y as (G, O_g, N*P)
    wt = np.ascontiguousarray(w.reshape(o_, cg, taps).transpose(0, 2, 1)).reshape(groups, og,
                                                                                   k_g)
    gyt = np.ascontiguousarray(gy.reshape(n_, groups, og, pix).transpose(1, 2, 0, 3))
    gyt = gyt.reshape(groups, og, n_ * pix)
    dwt = np.zeros((groups, og, k_g))
    dx = np.empty(x.shape)
    chunk = max(1, min(n_, _BWD_CHUNK_ELEMENTS // max(1, groups * pix * k_g)))
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    xp_buf = np.zeros(chunk * hp * wp * c_)
    dxp_buf = np.empty_like(xp_buf)
    col_buf = np.empty(groups * chunk * pix * k_g)
    dcol_buf = np.empty_like(col_buf)
    geo = (cg, kh, kw, sh, sw, dh, dw, p.out_h, p.out_w)
    for n0 in range(0, n_, chunk):
        m = min(chunk, n_ - n0)
        rows = m * pix
        xp = xp_buf[:m * hp * wp * c_].reshape(m, hp, wp, c_)      # border stays zero
        dxp = dxp_buf[:m * hp * wp * c_].reshape(m, hp, wp, c_)
        col = col_buf[:groups * rows * k_g].reshape(groups, rows, k_g)
        dcol = dcol_buf[:groups * rows * k_g].reshape(groups, rows, k_g)
        gyc = gyt[:, :, n0 * pix:n0 * pix + rows]
        _kf.pad_nhwc(x, n0, ph, pw, xp)
        _kf.im2col(xp, *geo, col)
        _kf.gemm_acc(gyc, col, dwt, True, 16)    # long reduction: reuse b rows
        _kf.gemm_acc(gyc.transpose(0, 2, 1), wt, dcol, False, 4)
        dxp.fill(0.0)
        _kf.col2im_add(dcol, *geo, dxp)
        _kf.unpad_nchw(dxp, n0, ph, pw, dx)
    dwt = dwt.reshape(o_, taps, cg).transpose(0, 2, 1).reshape(w.shape)
    return dx, np.ascontiguousarray(dwt)


_F32_EXACT = 2 ** 24        # |integer| below which float32 sums of {-1, 0, 1} products are exact
_CHUNK_ELEMENTS = 2 ** 24   # im2col elements per forward chunk (64 MiB in float32)
_BWD_CHUNK_ELEMENTS = 2 ** 22   # im2col elements per backward chunk (32 MiB in float64)


def _segments(alpha_c, beta_c, cg, groups):
    """Runs of consecutive channels of one group with equal (alpha, beta).

    Returns seg_of_chan (C,), seg_c0 (S,) first local channel, seg_len (S,), g_seg0/g_seg1
    (groups,) the segment range of each group, seg_group (S,).
    """
    c_ = cg * groups
    seg_of_chan = np.empty(c_, dtype=np.int64)
    c0, lens, sgroup, g0, g1 = [], [], [], [], []
    for g in range(groups):
        g0.append(len(c0))
        for cc in range(cg):
            c = g * cg + cc
            if cc == 0 or alpha_c[c] != alpha_c[c - 1] or beta_c[c] != beta_c[c - 1]:
                c0.append(cc)
                lens.append(0)
                sgroup.append(g)
            lens[-1] += 1
            seg_of_chan[c] = len(c0) - 1
        g1.append(len(c0))
    as_i = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return seg_of_chan, as_i(c0), as_i(lens), as_i(g0), as_i(g1), as_i(sgroup)


def _levels(alpha_c, beta_c, wa, wbeta, seg_first, official):
    """Level products prods[o, s, i, j] = L_i(segment s) * W_j(o), i, j = sign +1, -1, 0.

    The levels are computed with the very operations of the elementwise path
    (:func:`adabin_np.kernels_cpu.act_forward` / ``weight_forward``), so each product is
    bit-identical to the product the elementwise path forms at such a tap.
    """
    signs = np.array([1.0, -1.0, 0.0])
    a = alpha_c[seg_first][:, None]
    b = beta_c[seg_first][:, None]
    act = a * (signs + b) if official else a * signs + b                    # (S, 3)
    aw = wa[:, None]
    bw = wbeta[:, None]
    wl = np.where(aw == 0.0, bw, aw * signs + bw)                           # (O, 3)
    with np.errstate(over="ignore"):  # an inf product is only used where its count is > 0
        return act[None, :, :, None] * wl[:, None, None, :]                 # (O, S, 3, 3)


# the common case (one activation set per group, no zero level, finite level products) takes
# its integer sums from the bit-packed XOR/popcount kernel; tests switch this off to check that
# both routes give bit-identical results
USE_PACKED_COUNTS = True


def _forward_from_packed_counts(x, w, wa, wbeta, alpha_c, beta_c, p, official):
    """The forward of :func:`_adabin_forward` from :func:`adabin_np.packed.packed_conv_counts`.

    Returns ``None`` where that route does not apply: several activation sets in one group,
    a zero level (``official`` ties ``x == beta`` or ``W == beta_w``), a constant filter,
    level products that overflow, or weight sets of the packed weights that differ in any bit
    from the elementwise path's (they agree for every normal-range weight). Otherwise the
    counts are the same exact integers the GEMM route computes, combined in the same order:
    bit-identical results.
    """
    from .packed import pack_weights  # packed imports this module
    from .packed.cpu import _run_cpu

    n_, c_, _, _ = x.shape
    o_ = w.shape[0]
    groups = p.groups
    cg = c_ // groups
    a_g = alpha_c.reshape(groups, cg)
    b_g = beta_c.reshape(groups, cg)
    if np.any(a_g != a_g[:, :1]) or np.any(b_g != b_g[:, :1]):
        return None
    w2 = w.reshape(o_, -1)
    if np.any(wa == 0.0):
        return None
    if official and (np.any(x == beta_c[None, :, None, None])
                     or np.any(w2 == wbeta[:, None])):
        return None
    prods = _levels(alpha_c, beta_c, wa, wbeta, np.arange(groups) * cg, official)
    if not np.all(np.isfinite(prods)):
        return None
    pw = pack_weights(w)
    if not (np.array_equal(pw.alpha, wa) and np.array_equal(pw.beta, wbeta)):
        return None
    counts = _run_cpu(x, pw, alpha_c, beta_c, p, False, raw=True)
    y = np.empty((n_, o_, p.out_h, p.out_w))
    return _kf.combine_packed_counts(counts.sum_aw, counts.sum_a, counts.sum_w,
                                     counts.n_valid, prods, o_ // groups, y)


def _adabin_forward(x, w, alpha_c, beta_c, p, official):
    """AdaBin conv forward through exact integer counts (see :mod:`adabin_np.kernels_float`)."""
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    w2 = w.reshape(o_, cg * kh * kw)
    wa, wbeta = _k.weight_stats(w2)
    if USE_PACKED_COUNTS:
        y = _forward_from_packed_counts(x, w, wa, wbeta, alpha_c, beta_c, p, official)
        if y is not None:
            return y
    groups = p.groups
    og = o_ // groups
    taps = kh * kw
    k_g = cg * taps
    sh, sw = p.stride
    ph, pw = p.padding
    dh, dw = p.dilation
    gdt = np.float32 if k_g < _F32_EXACT else np.float64
    sp = np.zeros((n_, h_ + 2 * ph, w_ + 2 * pw, c_), dtype=gdt)
    zeros_a = _kf.activation_signs(x, alpha_c, beta_c, official, ph, pw, sp)
    sw_, zeros_w = _kf.weight_signs(w2, wa, wbeta, official)
    ties = bool(official and (zeros_a or zeros_w))
    _, seg_c0, seg_len, g_seg0, g_seg1, seg_group = _segments(alpha_c, beta_c, cg, groups)
    n_seg = len(seg_c0)
    prods = _levels(alpha_c, beta_c, wa, wbeta, seg_group * cg + seg_c0, official)
    # per segment: tap-major weight signs plus a row of ones (its GEMM row is the activation
    # sum), views into one flat array; per-tap counts of +1 / -1 weights
    seg_off = np.zeros(n_seg + 1, dtype=np.int64)
    seg_off[1:] = np.cumsum((og + 1) * taps * seg_len)
    bflat = np.empty(seg_off[-1], dtype=gdt)
    wtap = np.zeros((2, o_, n_seg, taps), dtype=np.int64)
    _kf.weight_tables(sw_.reshape(o_, cg, taps), seg_c0, seg_len, seg_group, seg_off, og,
                      bflat, wtap)
    b_s = [bflat[seg_off[s]:seg_off[s + 1]].reshape(og + 1, taps * seg_len[s])
           for s in range(n_seg)]
    b_abs = [np.abs(b) for b in b_s] if ties else b_s
    pix = p.out_h * p.out_w
    q = 4 if ties else 1
    chunk = max(1, min(n_, _CHUNK_ELEMENTS // max(1, groups * pix * k_g)))
    y = np.empty((n_, o_, p.out_h, p.out_w))
    for n0 in range(0, n_, chunk):
        n1 = min(n_, n0 + chunk)
        rows = (n1 - n0) * pix
        a_s = np.empty((groups, rows, k_g), dtype=gdt)
        _kf.sign_im2col(sp, n0, n1, cg, kh, kw, sh, sw, dh, dw, p.out_h, p.out_w, seg_c0,
                        seg_len, g_seg0, g_seg1, a_s)
        a_abs = np.abs(a_s) if ties else a_s
        # segments in batches whose GEMM results fit the chunk budget (many per-channel sets)
        batch = max(1, min(n_seg, _CHUNK_ELEMENTS // (q * (og + 1) * rows)))
        for s0 in range(0, n_seg, batch):
            s1 = min(n_seg, s0 + batch)
            r = np.empty((q, s1 - s0, og + 1, rows), dtype=gdt)
            gemm_macs = q * (og + 1) * rows * int(np.sum(seg_len[s0:s1])) * taps
            with _blas_threads(gemm_macs):   # a limiter applies once: a fresh one per use
                _segment_gemms(r, s0, s1, a_s, a_abs, b_s, b_abs, seg_c0, seg_len, seg_group,
                               taps, ties)
            _kf.combine_counts(r, s0, wtap, seg_len, g_seg0, g_seg1, prods, ties, n0, n1, h_,
                               w_, kh, kw, sh, sw, ph, pw, dh, dw, y)
    return y


def _segment_gemms(r, s0, s1, a_s, a_abs, b_s, b_abs, seg_c0, seg_len, seg_group, taps, ties):
    """Exact sign GEMMs of segments s0..s1-1 into r (see :func:`_adabin_forward`)."""
    for s in range(s0, s1):
        g = seg_group[s]
        cols = slice(seg_c0[s] * taps, (seg_c0[s] + seg_len[s]) * taps)
        np.matmul(b_s[s], a_s[g][:, cols].T, out=r[0, s - s0])
        if ties:
            np.matmul(b_abs[s], a_s[g][:, cols].T, out=r[1, s - s0])
            np.matmul(b_s[s], a_abs[g][:, cols].T, out=r[2, s - s0])
            np.matmul(b_abs[s], a_abs[g][:, cols].T, out=r[3, s - s0])
    return r


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

    Computed exactly as (SPEC section 4, generalised to three levels for ``official`` ties)

    .. math:: y = \sum_{s} \sum_{i, j \in \{+,-,0\}} (L^{(s)}_i W_j)\; n^{(s)}_{ij}

    with ``L_i`` the activation levels of channel segment ``s`` (channels of one group sharing
    ``alpha``, ``beta``), ``W_j`` the weight levels of output channel ``o`` (both computed as
    the elementwise path computes them) and ``n_ij`` the exact number of valid taps with that
    pair of signs. Error: ``|y - E| <= T u sum|x_b w_b|`` with ``E`` the exact sum of the
    elementwise products, ``T = 9 * segments``, ``u = 2**-53``. A zero level gives exactly 0.
    Bit-for-bit the same result for every thread count.
    """
    official = check_convention(convention) == "official"
    x, w, p = _geometry(x, w, stride, padding, dilation, groups)
    _, _, alpha_c, beta_c, _ = _activations_3d(x, alpha, beta)
    with _threads_for(_macs(x, w, p)):
        y = _adabin_forward(x, w, alpha_c, beta_c, p, official)
    return finite_result(y, "adabin_conv2d")


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
    _, w2 = _weights_2d(w)
    with _threads_for(_macs(x, w, p)):
        xb = _k.act_forward(x3, alpha_c, beta_c, official).reshape(x.shape)
        wa, wbeta = _k.weight_stats(w2)
        wb = _k.weight_forward(w2, wa, wbeta, official).reshape(w.shape)
        dxb, dwb = _conv_backward_kernels(xb, wb, gy, p)
        dx, s_gs, s_gv, s_g, s_gg = _k.act_backward(x3, alpha_c, beta_c,
                                                    dxb.reshape(x3.shape), official)
        dw = _k.weight_backward(w2, dwb.reshape(w2.shape), wa, wbeta, k, t,
                                official).reshape(w.shape)
    act = _combine_activation_grads(dx.reshape(x.shape), alpha_c, s_gs, s_gv, s_g, s_gg,
                                    per_channel, official)
    return finite_result(ConvGrad(act.dx, dw, act.dalpha, act.dbeta), "adabin_conv2d_grad")
