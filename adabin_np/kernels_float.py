r"""Numba CPU kernels of the fast float64 path (:mod:`adabin_np.conv`).

Two jobs, both deterministic for any number of threads:

**Forward through exact integer counts** (SPEC section 4). Per input channel ``c`` the binarized
activation takes one of the levels ``L_i`` (``i`` in ``{+, -, 0}``; ``0`` only in the
``official`` convention at an exact tie), per output channel ``o`` the binarized weight one of
``W_j``. Both levels are computed exactly as the elementwise float path computes them, so every
tap product of the float path is one of the numbers ``P_ij = L_i * W_j``, and

.. math:: y[n,o,p] = \sum_{\text{segments } s} \sum_{i,j} P^{(s,o)}_{ij}\; n^{(s)}_{ij}[n,o,p]

where ``n_ij`` counts the valid (in-bounds) taps of the segment's channels whose activation sign
is ``i`` and weight sign ``j`` (a *segment* is a run of channels of one group sharing ``alpha``
and ``beta``; a scalar set gives one segment per group). The counts are exact integers, obtained
from integer sign matrices:

* ``S = sum s_a s_w`` over valid taps by a GEMM of {-1, 0, +1} matrices (im2col of the
  activation signs, zero at padded taps, times the weight signs). Every partial sum of such a
  GEMM is an integer of magnitude <= K, so it is exact in any summation order in float32 for
  ``K < 2**24`` (float64 beyond); the GEMM is NumPy's BLAS ``sgemm``.
* the activation marginals ``n_+``, ``n_-`` (per pixel, per segment) are counted while the
  im2col matrix is written; the weight marginals ``w_+``, ``w_-`` over the valid taps are the
  per-channel totals for interior pixels and a sum of per-tap counts at border pixels (the
  zero-padding correction).
* without zero signs (always in ``paper``), ``n_++ = (S + n_+ - n_- + 2 w_+)/4`` and the other
  three counts follow from the marginals; with ties (``official``) three more GEMMs give
  ``sum s_a|s_w|``, ``sum |s_a| s_w`` and ``sum |s_a||s_w|`` and the nine counts follow.

Error bound: ``y`` is the sum of at most ``T = 9 * segments`` terms ``P_ij * n_ij`` (``n_ij``
exact), so ``|y - E| <= T u sum|x_b w_b|`` with ``E`` the exact sum of the float path's
products and ``u = 2**-53``; the elementwise path's own error is ``<= (K - 1) u sum|x_b w_b|``
(``K`` taps), so the two agree within ``(K + T) u sum|x_b w_b|``. A zero level gives exactly 0
(its products are 0), a term with count 0 is skipped (never ``inf * 0``).

**Backward with register-blocked float64 GEMMs in a fixed reduction order.**
:func:`gemm_acc` computes ``C[g] += A[g] @ B[g]``; each output element is one accumulator that
adds ``A[i, k] * B[k, j]`` for ``k = 0, 1, ..., K-1`` in that order (no FMA contraction, no
reassociation), and ``prange`` only splits independent output tiles, so the result does not
depend on the thread count. Vectorisation runs across ``j`` (independent outputs).

All kernels assume validated, C-contiguous float64 inputs of consistent shapes (see
:mod:`adabin_np.conv`); Numba does not bounds-check.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ----------------------------------------------------------------------------------------------
# signs and levels
# ----------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _sign_i(v, official):
    """Integer sign with the convention's value at zero: paper +1, official 0."""
    if v > 0.0:
        return 1
    if v < 0.0:
        return -1
    return 0 if official else 1


@njit(cache=True, parallel=True)
def activation_signs(x, alpha, beta, official, ph, pw, out):
    """Signs ``sign((x - beta)/alpha)`` of x (N, C, H, W) into a zero-padded NHWC array.

    ``out[n, ph + h, pw + w, c]`` (``out`` is pre-zeroed, so the padding stays 0); the
    division is the one of the elementwise path, so the signs are bit-identical to it
    (``v == 0``: +1 in ``paper``, 0 in ``official``). Returns the number of ``v == 0``.
    """
    n_, c_, h_, w_ = x.shape
    zero_sign = 0.0 if official else 1.0
    zeros = np.zeros(n_ * h_, dtype=np.int64)
    for nh in prange(n_ * h_):
        n = nh // h_
        h = nh % h_
        z = 0
        row = np.empty(w_)
        for c in range(c_):
            a = alpha[c]
            b = beta[c]
            for w in range(w_):
                row[w] = (x[n, c, h, w] - b) / a
            for w in range(w_):
                v = row[w]
                s = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else zero_sign)
                out[n, ph + h, pw + w, c] = s
                z += v == 0.0
        zeros[nh] = z
    return zeros.sum()


@njit(cache=True)
def weight_signs(w, alpha, beta, official):
    """int8 weight signs ``sign((W - beta_w)/alpha_w)`` per row of w (O, n).

    A constant filter (``alpha_w == 0``) gets +1: all its levels equal ``beta_w`` exactly.
    Returns the signs and the number of zero signs.
    """
    o_, n_ = w.shape
    out = np.empty((o_, n_), dtype=np.int8)
    zeros = 0
    for o in range(o_):
        a = alpha[o]
        b = beta[o]
        for j in range(n_):
            if a == 0.0:
                out[o, j] = 1
            else:
                s = _sign_i((w[o, j] - b) / a, official)
                out[o, j] = s
                if s == 0:
                    zeros += 1
    return out, zeros


@njit(cache=True)
def weight_tables(sw3, seg_c0, seg_len, seg_group, seg_off, og, bflat, wtap):
    """GEMM operands and per-tap counts of the weight signs ``sw3`` (O, cg, taps), per segment.

    Segment ``s`` (group ``g``, local channels ``c0 .. c0 + len``) gets the matrix
    ``B_s = bflat[seg_off[s]:seg_off[s+1]]`` viewed as ``(og + 1, taps*len)``:
    ``B_s[ol, t*len + l] = sw3[g*og + ol, c0 + l, t]`` (tap-major, as :func:`sign_im2col`) and a
    last row of ones. ``wtap[0/1, o, s, t]``: weights of ``o`` in the segment with sign +1/-1
    at tap ``t`` (``wtap`` pre-zeroed).
    """
    taps = sw3.shape[2]
    for s in range(seg_len.shape[0]):
        g = seg_group[s]
        c0 = seg_c0[s]
        ln = seg_len[s]
        width = taps * ln
        base = seg_off[s]
        for ol in range(og):
            o = g * og + ol
            row = base + ol * width
            for l in range(ln):
                for t in range(taps):
                    v = sw3[o, c0 + l, t]
                    bflat[row + t * ln + l] = v
                    wtap[0, o, s, t] += v > 0
                    wtap[1, o, s, t] += v < 0
        for j in range(width):
            bflat[base + og * width + j] = 1.0
    return bflat


@njit(cache=True, parallel=True)
def sign_im2col(sp, n0, n1, cg, kh, kw, sh, sw, dh, dw, out_h, out_w, seg_c0, seg_len,
                g_seg0, g_seg1, a_s):
    """im2col of padded NHWC signs ``sp`` for samples ``n0 <= n < n1``, segment-blocked.

    Row ``p = (n - n0)*out_h*out_w + oh*out_w + ow`` of group ``g``; segment ``s`` (local
    channels ``c0 .. c0 + len``) owns columns ``c0*taps .. (c0 + len)*taps``, tap-major:
    ``a_s[g, p, c0*taps + (ki*kw + kj)*len + l] = sp[n, oh*sh + ki*dh, ow*sw + kj*dw,
    g*cg + c0 + l]`` (padded taps read the zero border).
    """
    groups = g_seg0.shape[0]
    taps = kh * kw
    rows = (n1 - n0) * out_h
    for r in prange(rows):
        n = n0 + r // out_h
        oh = r % out_h
        for ow in range(out_w):
            p = r * out_w + ow
            for g in range(groups):
                for s in range(g_seg0[g], g_seg1[g]):
                    c0 = seg_c0[s]
                    ln = seg_len[s]
                    base = c0 * taps
                    cb = g * cg + c0
                    for ki in range(kh):
                        ih = oh * sh + ki * dh
                        for kj in range(kw):
                            iw = ow * sw + kj * dw
                            col = base + (ki * kw + kj) * ln
                            for l in range(ln):
                                a_s[g, p, col + l] = sp[n, ih, iw, cb + l]
    return a_s


@njit(cache=True, inline="always")
def _term(prod, count):
    """``prod * count``, and exactly 0 when no tap has this level pair (never inf * 0)."""
    if count == 0:
        return 0.0
    return prod * count


@njit(cache=True)
def _border_weight_counts(wtap, o, s, oh, ow, h_, w_, kh, kw, sh, sw, ph, pw, dh, dw):
    """Weights of segment ``s`` with sign +1 / -1 over the valid taps of pixel (oh, ow)."""
    wp = 0
    wm = 0
    for ki in range(kh):
        ih = oh * sh - ph + ki * dh
        if ih < 0 or ih >= h_:
            continue
        for kj in range(kw):
            iw = ow * sw - pw + kj * dw
            if iw < 0 or iw >= w_:
                continue
            wp += wtap[0, o, s, ki * kw + kj]
            wm += wtap[1, o, s, ki * kw + kj]
    return wp, wm


@njit(cache=True, parallel=True)
def combine_counts(r, s_first, wtap, seg_len, g_seg0, g_seg1, prods, ties, n0, n1, h_, w_, kh,
                   kw, sh, sw, ph, pw, dh, dw, y):
    """y[n, o, oh, ow] = sum over segments s, level pairs (i, j) of prods[o, s, i, j] * n_ij.

    ``r`` holds the segments ``s_first .. s_first + r.shape[1] - 1`` (a batch; batches are
    passed in ascending order): a batch holding a group's first segment starts that group's
    outputs from 0, later batches add to ``y``, so every output is the same left-to-right
    sum over its group's segments whatever the batching.
    ``r[q, s - s_first, ol, p]``: exact GEMM sums of segment ``s`` for output ``ol`` of its group;
    ``q = 0``: sum s_a s_w, and in row ``ol = O_g`` sum s_a; with ``ties``, ``q = 1, 2, 3``:
    sum s_a|s_w|, |s_a| s_w (row ``O_g``: sum |s_a|), |s_a||s_w|. ``wtap[k, o, s, tap]``:
    number of weights with sign +1 (k = 0) / -1 (k = 1) of segment ``s`` at ``tap``; the
    valid taps' sums give the weight marginals (zero-padding correction at border pixels).
    Level index 0, 1, 2 = sign +1, -1, 0. Per pixel, segments are added in ascending order
    and the terms of a segment in the order (++, +-, -+, --[, +0, -0, 0+, 0-, 00]).

    Counts are exact integers held in float64 (all below 2**53). Interior pixels without ties
    and with finite level products take a branch-free loop (a zero count then contributes
    ``P * 0 = 0``); everywhere else a term with count 0 is skipped, so an overflowing product
    that no tap uses never turns into ``inf * 0``.
    """
    _, o_, out_h, out_w = y.shape
    og = r.shape[2] - 1
    taps = kh * kw
    hw = out_h * out_w
    n_seg = seg_len.shape[0]
    wtot = np.zeros((2, o_, n_seg), dtype=np.int64)
    for o in range(o_):
        for s in range(n_seg):
            for t in range(taps):
                wtot[0, o, s] += wtap[0, o, s, t]
                wtot[1, o, s] += wtap[1, o, s, t]
    finite = np.all(np.isfinite(prods))
    # interior output columns: every tap in bounds
    vw_arr = np.zeros(out_w, dtype=np.int64)
    for ow in range(out_w):
        for kj in range(kw):
            iw = ow * sw - pw + kj * dw
            if 0 <= iw < w_:
                vw_arr[ow] += 1
    ow_lo = out_w
    ow_hi = out_w
    for ow in range(out_w):
        if vw_arr[ow] == kw:
            if ow_lo == out_w:
                ow_lo = ow
            ow_hi = ow + 1
    if ow_lo == out_w:
        ow_hi = ow_lo
    for task in prange((n1 - n0) * o_):
        nl = task // o_
        o = task % o_
        n = n0 + nl
        g = o // og
        ol = o % og
        s_lo = max(g_seg0[g], s_first)
        s_hi = min(g_seg1[g], s_first + r.shape[1])
        if s_lo >= s_hi:
            continue
        fresh = s_first <= g_seg0[g]
        acc = np.zeros(out_w)
        for oh in range(out_h):
            vh = 0
            for ki in range(kh):
                ih = oh * sh - ph + ki * dh
                if 0 <= ih < h_:
                    vh += 1
            p0 = nl * hw + oh * out_w
            for ow in range(out_w):
                acc[ow] = 0.0 if fresh else y[n, o, oh, ow]
            for s in range(s_lo, s_hi):
                pr = prods[o, s]
                sr = s - s_first
                fast = finite and not ties and vh == kh
                if fast:
                    # branch-free loop over the interior columns (all taps in bounds)
                    n_all = float(taps * seg_len[s])
                    s_as = float(wtot[0, o, s] - wtot[1, o, s])
                    p00 = pr[0, 0]
                    p01 = pr[0, 1]
                    p10 = pr[1, 0]
                    p11 = pr[1, 1]
                    for ow in range(ow_lo, ow_hi):
                        s_ss = float(r[0, sr, ol, p0 + ow])
                        s_sa = float(r[0, sr, og, p0 + ow])
                        c_pp = (n_all + s_ss + s_sa + s_as) * 0.25
                        c_pm = (n_all - s_ss + s_sa - s_as) * 0.25
                        c_mp = (n_all - s_ss - s_sa + s_as) * 0.25
                        c_mm = (n_all + s_ss - s_sa - s_as) * 0.25
                        acc[ow] += ((p00 * c_pp + p01 * c_pm) + p10 * c_mp) + p11 * c_mm
                for ow in range(out_w):
                    if fast and ow_lo <= ow < ow_hi:
                        continue
                    p = p0 + ow
                    vw = vw_arr[ow]
                    if vh == kh and vw == kw:
                        wp = wtot[0, o, s]
                        wm = wtot[1, o, s]
                    else:
                        wp, wm = _border_weight_counts(wtap, o, s, oh, ow, h_, w_, kh, kw,
                                                       sh, sw, ph, pw, dh, dw)
                    s_ss = np.int64(r[0, sr, ol, p])
                    s_sa = np.int64(r[0, sr, og, p])           # sum s_a = n+ - n-
                    if ties:
                        s_aa_marg = np.int64(r[2, sr, og, p])  # sum |s_a| = n+ + n-
                        s_sw = np.int64(r[1, sr, ol, p])       # sum s_a |s_w|
                        s_as = np.int64(r[2, sr, ol, p])       # sum |s_a| s_w
                        s_aa = np.int64(r[3, sr, ol, p])       # sum |s_a| |s_w|
                    else:
                        s_aa_marg = np.int64(vh * vw) * seg_len[s]
                        s_sw = s_sa
                        s_as = wp - wm
                        s_aa = s_aa_marg
                    npos = (s_aa_marg + s_sa) // 2
                    nneg = (s_aa_marg - s_sa) // 2
                    c_pp = (s_aa + s_ss + s_sw + s_as) // 4
                    c_pm = (s_aa - s_ss + s_sw - s_as) // 4
                    c_mp = (s_aa - s_ss - s_sw + s_as) // 4
                    c_mm = (s_aa + s_ss - s_sw - s_as) // 4
                    t = _term(pr[0, 0], c_pp) + _term(pr[0, 1], c_pm)
                    t = t + _term(pr[1, 0], c_mp) + _term(pr[1, 1], c_mm)
                    if ties:
                        total = np.int64(vh * vw) * seg_len[s]
                        c_p0 = npos - c_pp - c_pm
                        c_m0 = nneg - c_mp - c_mm
                        c_0p = wp - c_pp - c_mp
                        c_0m = wm - c_pm - c_mm
                        c_00 = total - (c_pp + c_pm + c_mp + c_mm + c_p0 + c_m0 + c_0p + c_0m)
                        t = t + _term(pr[0, 2], c_p0) + _term(pr[1, 2], c_m0)
                        t = t + _term(pr[2, 0], c_0p) + _term(pr[2, 1], c_0m)
                        t = t + _term(pr[2, 2], c_00)
                    acc[ow] += t
            for ow in range(out_w):
                y[n, o, oh, ow] = acc[ow]
    return y


# ----------------------------------------------------------------------------------------------
# backward: float64 im2col / col2im and the fixed-order register-blocked GEMM
# ----------------------------------------------------------------------------------------------

_MB = 4    # rows of C per register block
_NB = 64   # columns of C per tile (the vectorised direction)


@njit(cache=True, parallel=True)
def gemm_acc(a, b, c, accumulate, rb):
    """``c[g] (+)= a[g] @ b[g]`` for a (G, M, K), b (G, K, N), c (G, M, N); float64.

    Each ``c[g, i, j]`` is one accumulator, starting from its current value (``accumulate``)
    or 0, that adds ``a[g, i, k] * b[g, k, j]`` for ``k = 0 .. K-1`` in that order (written
    out four ``k`` at a time as ``(((c + a0 b0) + a1 b1) + a2 b2) + a3 b3``: the same order,
    no FMA contraction). Register block: 4 rows x 4 ``k`` per pass over a 64-column strip,
    vectorised across the columns. Parallel work items: ``4*rb`` rows x 64 columns, whose four
    rows of ``b`` are reused from L1 by all ``rb`` row blocks. The order of the additions
    within an output never depends on ``rb``, the tiling or the number of threads. ``a`` may
    have any strides; ``b`` and ``c`` are C-contiguous.
    """
    g_, m_, k_ = a.shape
    n_ = b.shape[2]
    ms = rb * _MB
    st = (m_ + ms - 1) // ms
    nt = (n_ + _NB - 1) // _NB
    for task in prange(g_ * st * nt):
        g = task // (st * nt)
        rem = task % (st * nt)
        i0 = (rem // nt) * ms
        j0 = (rem % nt) * _NB
        rows = min(ms, m_ - i0)
        jn = min(_NB, n_ - j0)
        full = (rows // _MB) * _MB
        acc = np.zeros((ms, _NB))
        if accumulate:
            for ii in range(rows):
                for j in range(jn):
                    acc[ii, j] = c[g, i0 + ii, j0 + j]
        k = 0
        while k + 3 < k_:
            b0 = b[g, k, j0:j0 + jn]
            b1 = b[g, k + 1, j0:j0 + jn]
            b2 = b[g, k + 2, j0:j0 + jn]
            b3 = b[g, k + 3, j0:j0 + jn]
            for ib in range(0, full, _MB):
                i = i0 + ib
                a0 = a[g, i, k]
                a1 = a[g, i + 1, k]
                a2 = a[g, i + 2, k]
                a3 = a[g, i + 3, k]
                e0 = a[g, i, k + 1]
                e1 = a[g, i + 1, k + 1]
                e2 = a[g, i + 2, k + 1]
                e3 = a[g, i + 3, k + 1]
                f0 = a[g, i, k + 2]
                f1 = a[g, i + 1, k + 2]
                f2 = a[g, i + 2, k + 2]
                f3 = a[g, i + 3, k + 2]
                h0 = a[g, i, k + 3]
                h1 = a[g, i + 1, k + 3]
                h2 = a[g, i + 2, k + 3]
                h3 = a[g, i + 3, k + 3]
                for j in range(jn):
                    x0 = b0[j]
                    x1 = b1[j]
                    x2 = b2[j]
                    x3 = b3[j]
                    acc[ib, j] = (((acc[ib, j] + a0 * x0) + e0 * x1) + f0 * x2) + h0 * x3
                    acc[ib + 1, j] = (((acc[ib + 1, j] + a1 * x0) + e1 * x1) + f1 * x2) + h1 * x3
                    acc[ib + 2, j] = (((acc[ib + 2, j] + a2 * x0) + e2 * x1) + f2 * x2) + h2 * x3
                    acc[ib + 3, j] = (((acc[ib + 3, j] + a3 * x0) + e3 * x1) + f3 * x2) + h3 * x3
            for ii in range(full, rows):
                a0 = a[g, i0 + ii, k]
                e0 = a[g, i0 + ii, k + 1]
                f0 = a[g, i0 + ii, k + 2]
                h0 = a[g, i0 + ii, k + 3]
                for j in range(jn):
                    acc[ii, j] = (((acc[ii, j] + a0 * b0[j]) + e0 * b1[j]) + f0 * b2[j]) \
                        + h0 * b3[j]
            k += 4
        while k < k_:
            b0 = b[g, k, j0:j0 + jn]
            for ii in range(rows):
                av = a[g, i0 + ii, k]
                for j in range(jn):
                    acc[ii, j] += av * b0[j]
            k += 1
        for ii in range(rows):
            for j in range(jn):
                c[g, i0 + ii, j0 + j] = acc[ii, j]
    return c


@njit(cache=True, parallel=True)
def pad_nhwc(x, n0, ph, pw, out):
    """``out[m, ph + h, pw + w, c] = x[n0 + m, c, h, w]`` (the border of ``out`` is kept)."""
    _, c_, h_, w_ = x.shape
    nc = out.shape[0]
    for mh in prange(nc * h_):
        m = mh // h_
        h = mh % h_
        for c in range(c_):
            for w in range(w_):
                out[m, ph + h, pw + w, c] = x[n0 + m, c, h, w]
    return out


@njit(cache=True, parallel=True)
def im2col(xp, cg, kh, kw, sh, sw, dh, dw, out_h, out_w, col):
    """``col[g, m*P + oh*out_w + ow, (ki*kw + kj)*cg + cc] = xp[m, oh*sh + ki*dh,
    ow*sw + kj*dw, g*cg + cc]`` from zero-padded NHWC samples ``xp`` (tap-major)."""
    groups = col.shape[0]
    nc = xp.shape[0]
    pix = out_h * out_w
    for mo in prange(nc * out_h):
        m = mo // out_h
        oh = mo % out_h
        for ow in range(out_w):
            p = m * pix + oh * out_w + ow
            for g in range(groups):
                for ki in range(kh):
                    ih = oh * sh + ki * dh
                    for kj in range(kw):
                        iw = ow * sw + kj * dw
                        base = (ki * kw + kj) * cg
                        for cc in range(cg):
                            col[g, p, base + cc] = xp[m, ih, iw, g * cg + cc]
    return col


@njit(cache=True, parallel=True)
def col2im_add(dcol, cg, kh, kw, sh, sw, dh, dw, out_h, out_w, dxp):
    """``dxp[m, oh*sh + ki*dh, ow*sw + kj*dw, g*cg + cc] += dcol[g, m*P + p, (ki*kw + kj)*cg
    + cc]``.

    ``dxp`` is a zeroed, padded NHWC buffer (what lands on the border is discarded). Work
    items are rows of ``dxp``; every element receives its taps in the fixed order ki
    ascending, then ow ascending (kj descending), never depending on the thread count.
    """
    groups = dcol.shape[0]
    nc, hp = dxp.shape[0], dxp.shape[1]
    pix = out_h * out_w
    for mh in prange(nc * hp):
        m = mh // hp
        ih = mh % hp
        for ki in range(kh):
            t = ih - ki * dh
            if t < 0 or t % sh != 0:
                continue
            oh = t // sh
            if oh >= out_h:
                continue
            for ow in range(out_w):
                p = m * pix + oh * out_w + ow
                for kj in range(kw):
                    iw = ow * sw + kj * dw
                    base = (ki * kw + kj) * cg
                    for g in range(groups):
                        for cc in range(cg):
                            dxp[m, ih, iw, g * cg + cc] += dcol[g, p, base + cc]
    return dxp


@njit(cache=True, parallel=True)
def unpad_nchw(xp, n0, ph, pw, out):
    """``out[n0 + m, c, h, w] = xp[m, ph + h, pw + w, c]``."""
    _, c_, h_, w_ = out.shape
    nc = xp.shape[0]
    for mc in prange(nc * c_):
        m = mc // c_
        c = mc % c_
        for h in range(h_):
            for w in range(w_):
                out[n0 + m, c, h, w] = xp[m, ph + h, pw + w, c]
    return out


# ----------------------------------------------------------------------------------------------
# forward from the bit-packed kernel's exact integer sums (one activation set per group)
# ----------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def combine_packed_counts(sum_aw, sum_a, sum_w, n_valid, prods, og, y):
    """``y[n, o] = ((P++ c++ + P+- c+-) + P-+ c-+) + P-- c--`` from the packed kernel's sums.

    ``sum_aw = sum_P s_a s_w`` (N, O, OH, OW), ``sum_a = sum_P s_a`` (N, groups, OH, OW),
    ``sum_w = sum_P s_w`` (O, OH, OW), ``n_valid`` (OH, OW): exact integers over the valid taps
    (channels x taps in bounds) of each output. The pair counts follow as
    ``c++ = (N + S_aw + S_a + S_w)/4`` etc. (exact: each is an integer held in float64), and
    the four terms are added in the order of :func:`combine_counts` for one segment, with the
    same level products ``prods[o, g]`` (one segment per group ``g``), so the result is bit-identical to that path.
    """
    n_, o_, out_h, out_w = y.shape
    for task in prange(n_ * o_):
        n = task // o_
        o = task % o_
        g = o // og
        pr = prods[o, g]  # segment g: the activation set of group g
        p00 = pr[0, 0]
        p01 = pr[0, 1]
        p10 = pr[1, 0]
        p11 = pr[1, 1]
        for oh in range(out_h):
            for ow in range(out_w):
                nv = float(n_valid[oh, ow])
                s_ss = float(sum_aw[n, o, oh, ow])
                s_sa = float(sum_a[n, g, oh, ow])
                s_as = float(sum_w[o, oh, ow])
                c_pp = (nv + s_ss + s_sa + s_as) * 0.25
                c_pm = (nv - s_ss + s_sa - s_as) * 0.25
                c_mp = (nv - s_ss - s_sa + s_as) * 0.25
                c_mm = (nv + s_ss - s_sa - s_as) * 0.25
                y[n, o, oh, ow] = 0.0 + (((p00 * c_pp + p01 * c_pm) + p10 * c_mp)
                                         + p11 * c_mm)
    return y
