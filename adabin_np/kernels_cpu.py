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


# ----------------------------------------------------------------------------------------------
# --- bit-packed kernels ---
#
# Bit-packed XNOR/popcount path (SPEC section 4), used by :mod:`adabin_np.packed`.
#
# Bit rule (both conventions, the packed path has no zero level): bit = 1 (s = +1) iff
# ``v >= 0`` with ``v = (x - beta)/alpha`` computed exactly as the float path does (a correctly
# rounded division, so ``-0.0`` counts as ``>= 0``), and iff ``u >= 0`` for the weights with
# ``u = (W - beta_w)/alpha_w`` (a constant filter, ``alpha_w = 0``, packs as all ones).
#
# Word layout ("channel layout", built by :mod:`adabin_np.packed`): every pixel holds ``CW``
# uint64 words. Channel ``c`` lives at bit ``chan_bit[c]`` of word ``chan_word[c]``; each word
# belongs to exactly one group and one *segment* (a run of words whose channels share the same
# activation levels ``(c_a, d_a)``); bits of a word not used by a channel are 0 in activations
# and weights alike, so they never count. With scalar ``alpha``/``beta`` there is one segment
# per group and the layout is the natural one: channel ``g*Cg + 64*q + b`` at bit ``b`` of word
# ``g*WG + q`` (LSB-first, ``WG = ceil(Cg/64)``).
#
# Activations are packed NHWC: ``xa[n, h, w, word]``. Weights are packed in blocks of
# ``o_block`` output channels, tap-major with output channels last, so the innermost loop (over
# the output channels of a block) is contiguous and vectorises:
# ``wtb[g*n_blk + j // o_block, (ki*kw + kj)*wgm + word - g_w0[g], j % o_block]`` for output
# channel ``o = g*Og + j`` of group ``g`` (see :func:`pack_weight_layout`).
#
# Popcounts use LLVM's ``llvm.ctpop.i64`` through the ``_popcount`` intrinsic (llvmlite's
# ``IRBuilder.ctpop``, the way numba.cpython.unsafe.numbers builds ``cttz``/``ctlz``): scalar
# ``popcnt`` or, where LLVM vectorises a loop, an AVX2 nibble-lookup (``vpshufb`` + ``vpsadbw``)
# sequence (``vpopcntq`` on AVX-512 VPOPCNTDQ). Integer counts are accumulated in int64 and
# only converted to float64 once per output. ``error_model="numpy"``: no division-by-zero
# branches in the hot loops (``alpha != 0`` is validated before any kernel runs).
# ----------------------------------------------------------------------------------------------

from numba import types as _nb_types  # noqa: E402
from numba.core.extending import intrinsic as _intrinsic  # noqa: E402

_U64_ONE = np.uint64(1)
_U64_ZERO = np.uint64(0)
_F64_MAX = 1.7976931348623157e308


@_intrinsic
def _popcount(typingctx, x):
    """``llvm.ctpop.i64`` on a uint64 word, returned as int64 (0..64)."""
    if not isinstance(x, _nb_types.Integer) or x.bitwidth != 64 or x.signed:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return _nb_types.int64(_nb_types.uint64), codegen


@njit(cache=True, error_model="numpy")
def popcount64(x):
    """Population count of one uint64 word (for tests and small helpers)."""
    return _popcount(x)


@njit(cache=True, parallel=True, error_model="numpy")
def pack_activations(x, alpha, beta, word_ptr, word_chans, xa, h_chunk):
    """Binarize and pack NCHW float64 ``x`` into NHWC ``uint64`` words ``xa``.

    Word ``q`` of a pixel holds channels ``word_chans[word_ptr[q]:word_ptr[q+1]]`` at bits
    ``0, 1, ...`` (LSB-first); bit = 1 iff ``v = (x - beta[c])/alpha[c] >= 0``; unused bits 0.

    The sign of the division is decided without dividing where that is exact: the
    difference ``d = x - beta`` of finite doubles is never rounded across zero (gradual
    underflow), and for ``|alpha| < 2`` the quotient of a non-zero ``d`` cannot underflow to
    ``-0.0`` (``|d| >= 2**-1074`` and ``2**-1075`` rounds to 0), so ``v >= 0`` iff
    ``x >= beta`` (``alpha > 0``) or ``x <= beta`` (``alpha < 0``), and ``v == 0`` iff
    ``x == beta``. Channels with ``|alpha| >= 2`` use the division itself. Either way the bit is
    exactly that of the float path's ``v``.

    Work split: ``prange`` over (n, word, chunk of ``h_chunk`` rows); a task reads each of its
    channels' planes contiguously (one input stream at a time) and ORs the bits into an
    L1/L2-resident buffer of words, then stores them into ``xa``.

    Returns ``(ties, bad)``: the number of elements with ``v == 0`` exactly and the number of
    non-finite elements of ``x`` (the caller raises on ``bad > 0``).
    """
    n_, c_, h_, w_ = x.shape
    n_words = xa.shape[3]
    n_hc = (h_ + h_chunk - 1) // h_chunk
    tasks = n_ * n_words * n_hc
    ties = np.zeros(tasks, dtype=np.int64)
    bad = np.zeros(tasks, dtype=np.int64)
    for task in prange(tasks):
        hc = task % n_hc
        r = task // n_hc
        q = r % n_words
        n = r // n_words
        h0 = hc * h_chunk
        h1 = min(h_, h0 + h_chunk)
        m = (h1 - h0) * w_
        buf = np.zeros(m, dtype=np.uint64)
        t_count = 0
        b_count = 0
        k0 = word_ptr[q]
        for k in range(k0, word_ptr[q + 1]):
            c = word_chans[k]
            one = _U64_ONE << np.uint64(k - k0)
            a = alpha[c]
            b = beta[c]
            xr = x[n, c].reshape(h_ * w_)[h0 * w_:h1 * w_]
            if abs(a) >= 2.0:
                for i in range(m):
                    v = (xr[i] - b) / a
                    buf[i] |= one if v >= 0.0 else _U64_ZERO
                    t_count += 1 if v == 0.0 else 0
            elif a > 0.0:
                for i in range(m):
                    buf[i] |= one if xr[i] >= b else _U64_ZERO
                    t_count += 1 if xr[i] == b else 0
            else:
                for i in range(m):
                    buf[i] |= one if xr[i] <= b else _U64_ZERO
                    t_count += 1 if xr[i] == b else 0
            for i in range(m):
                b_count += 0 if abs(xr[i]) <= _F64_MAX else 1
        xq = xa.reshape(n_, h_ * w_, n_words)
        for i in range(m):
            xq[n, h0 * w_ + i, q] = buf[i]
        ties[task] = t_count
        bad[task] = b_count
    return ties.sum(), bad.sum()


@njit(cache=True, error_model="numpy")
def weight_sign_bits(w2, alpha, beta):
    """Weight sign bits ``u >= 0`` per element of ``w2`` ``(O, n)`` (uint8 0/1).

    ``u = (W - beta_w)/alpha_w`` exactly as :func:`weight_forward` computes it; a row with
    ``alpha_w == 0`` (constant filter) is all ones. Returns ``(bits, ties)`` where ``ties``
    counts ``u == 0`` in rows with ``alpha_w != 0`` (where the official float path's
    ``sign(0) = 0`` differs from the packed ``+1``).
    """
    o_, n_ = w2.shape
    bits = np.empty((o_, n_), dtype=np.uint8)
    ties = np.zeros(o_, dtype=np.int64)
    for o in range(o_):
        a = alpha[o]
        b = beta[o]
        t = 0
        if a == 0.0:
            for j in range(n_):
                bits[o, j] = 1
        else:
            for j in range(n_):
                u = (w2[o, j] - b) / a
                bits[o, j] = 1 if u >= 0.0 else 0
                t += 1 if u == 0.0 else 0
        ties[o] = t
    return bits, ties.sum()


@njit(cache=True, error_model="numpy")
def pack_weight_layout(bits, chan_word, chan_bit, g_w0, wgm, o_block, n_blk):
    """Pack weight sign bits ``(O, Cg, kh, kw)`` (uint8) into output-channel blocks.

    ``wtb[g*n_blk + j // o_block, (ki*kw + kj)*wgm + word - g_w0[g], j % o_block]`` holds
    the bits of output channel ``o = g*Og + j`` at tap ``(ki, kj)``: input channel ``cc`` of
    the group is channel ``c = g*Cg + cc`` of the layout, at bit ``chan_bit[c]`` of word
    ``chan_word[c]`` (``g_w0[g]`` is the group's first word, ``wgm`` the largest number of
    words of a group). Unused bits, rows and block columns are 0. Each block is a C-contiguous
    ``(kh*kw*wgm, o_block)`` matrix, so the convolution's innermost loop (over the block's
    output channels) reads one contiguous row per activation word.
    """
    o_, cg, kh, kw = bits.shape
    groups = g_w0.shape[0]
    og = o_ // groups
    wtb = np.zeros((groups * n_blk, kh * kw * wgm, o_block), dtype=np.uint64)
    for gb in range(groups * n_blk):
        g = gb // n_blk
        blk = gb % n_blk
        for jj in range(o_block):
            j = blk * o_block + jj
            if j >= og:
                break
            o = g * og + j
            for cc in range(cg):
                c = g * cg + cc
                row = chan_word[c] - g_w0[g]
                bit = _U64_ONE << np.uint64(chan_bit[c])
                for ki in range(kh):
                    for kj in range(kw):
                        if bits[o, cc, ki, kj] != 0:
                            wtb[gb, (ki * kw + kj) * wgm + row, jj] |= bit
    return wtb


@njit(cache=True, error_model="numpy")
def weight_tap_popcounts(wtb, seg_w0, seg_w1, seg_group, g_w0, wgm, og, taps):
    """``pcw[s, t, j]``: popcount of output channel ``j`` (of segment ``s``'s group) at tap
    ``t`` over the words of segment ``s`` (the number of ``s_w = +1`` bits there)."""
    o_block = wtb.shape[2]
    n_blk = wtb.shape[0] // g_w0.shape[0]
    n_seg = seg_w0.shape[0]
    pcw = np.zeros((n_seg, taps, og), dtype=np.int64)
    for s in range(n_seg):
        g = seg_group[s]
        for t in range(taps):
            for q in range(seg_w0[s], seg_w1[s]):
                row = t * wgm + q - g_w0[g]
                for j in range(og):
                    pcw[s, t, j] += _popcount(wtb[g * n_blk + j // o_block, row, j % o_block])
    return pcw


@njit(cache=True, error_model="numpy")
def packed_bias(pcw, seg_n, seg_ca, g_seg0, g_seg1, alpha_w, beta_w, r_lo, r_hi, c_lo, c_hi,
                kw):
    """Per border class the output-independent part of SPEC section 4's formula.

    For row class ``r`` (valid kernel rows ``[r_lo[r], r_hi[r])``), column class ``cl`` (valid
    kernel columns ``[c_lo[cl], c_hi[cl])``) and output channel ``o`` of group ``g``, with
    ``T`` the number of valid taps and per segment ``s`` of ``g``: ``N_s = seg_n[s]*T``,
    ``S_w,s = 2*popcount_P(w) - N_s`` (the zero-padding correction: only the valid taps P)::

        bias[r, cl, o] = sum_s c_a[s] * (d_w[o]*S_w,s + c_w[o]*N_s)

    Also returns ``sum_w[r, cl, o] = sum_s S_w,s`` (int64) and ``n_valid[r, cl, g] = sum_s
    N_s`` (int64, the SPEC's N).
    """
    n_seg, taps, og = pcw.shape
    groups = g_seg0.shape[0]
    o_ = og * groups
    nr = r_lo.shape[0]
    nc = c_lo.shape[0]
    bias = np.empty((nr, nc, o_))
    sum_w = np.empty((nr, nc, o_), dtype=np.int64)
    n_valid = np.empty((nr, nc, groups), dtype=np.int64)
    for o in range(o_):
        g = o // og
        j = o % og
        d_w = alpha_w[o]
        c_w = beta_w[o]
        for r in range(nr):
            for cl in range(nc):
                n_taps = (r_hi[r] - r_lo[r]) * (c_hi[cl] - c_lo[cl])
                acc = 0.0
                sw_tot = 0
                nv_tot = 0
                for s in range(g_seg0[g], g_seg1[g]):
                    pw = 0
                    for ki in range(r_lo[r], r_hi[r]):
                        for kj in range(c_lo[cl], c_hi[cl]):
                            pw += pcw[s, ki * kw + kj, j]
                    nv = seg_n[s] * n_taps
                    s_w = 2 * pw - nv
                    acc += seg_ca[s] * (d_w * s_w + c_w * nv)
                    sw_tot += s_w
                    nv_tot += nv
                bias[r, cl, o] = acc
                sum_w[r, cl, o] = sw_tot
                if j == 0:
                    n_valid[r, cl, g] = nv_tot
    return bias, sum_w, n_valid


@njit(cache=True, inline="always", error_model="numpy")
def _xor_popcount_block(wb, col, rows, nk, iacc):
    """``iacc[jj] = sum_k popcount(col[k] XOR wb[rows[k], jj])`` over ``k < nk``.

    Four activation words per pass over the block's output channels (one accumulator
    load/store per four XOR-popcounts); LLVM vectorises the ``jj`` loop (AVX2: ``vpxor``,
    nibble-lookup ``vpshufb`` popcount, ``vpsadbw``, ``vpaddq``). Plain 2-D indexing, no
    array views in the hot loops: a Numba view costs an atomic reference-count update, which
    per pixel was several times the popcount work at small channel counts.
    """
    o_block = iacc.shape[0]
    for jj in range(o_block):
        iacc[jj] = 0
    k = 0
    while k + 4 <= nk:
        a0 = col[k]
        a1 = col[k + 1]
        a2 = col[k + 2]
        a3 = col[k + 3]
        r0 = rows[k]
        r1 = rows[k + 1]
        r2 = rows[k + 2]
        r3 = rows[k + 3]
        for jj in range(o_block):
            iacc[jj] += (_popcount(a0 ^ wb[r0, jj]) + _popcount(a1 ^ wb[r1, jj])
                         + _popcount(a2 ^ wb[r2, jj]) + _popcount(a3 ^ wb[r3, jj]))
        k += 4
    while k < nk:
        a0 = col[k]
        r0 = rows[k]
        for jj in range(o_block):
            iacc[jj] += _popcount(a0 ^ wb[r0, jj])
        k += 1


@njit(cache=True, parallel=True, error_model="numpy")
def packed_conv_forward(xa, wtb, wgm, g_w0, og, seg_w0, seg_w1, seg_n, seg_da, g_seg0, g_seg1,
                        bias, alpha_w, beta_w, row_lo, row_hi, row_cls, col_lo, col_hi, col_cls,
                        kw, sh, sw, ph, pw, dh, dw, raw, raw_aw, raw_a, y):
    r"""Popcount convolution + rescale into float64 ``y`` ``(N, O, OH, OW)`` (allocated by the
    caller: NumPy's large-array allocation avoids most page faults).

    For output ``(n, o, oh, ow)`` of group ``g`` only the valid taps ``P`` are visited
    (``ki`` in ``[row_lo[oh], row_hi[oh])``, ``kj`` in ``[col_lo[ow], col_hi[ow])``; padded
    taps contribute nothing). Per segment ``s`` of ``g`` (levels ``c_a[s] +- d_a[s]``) with
    ``N_s = seg_n[s]*|P|``, ``X_s = sum popcount(a XOR w)``, ``A_s = sum popcount(a)``::

        y = bias[row_cls[oh], col_cls[ow], o]
            + d_w[o] * sum_s d_a[s]*(N_s - 2 X_s) + c_w[o] * sum_s d_a[s]*(2 A_s - N_s)

    i.e. SPEC section 4's ``d_a d_w sum(s_a s_w) + d_a c_w sum(s_a) + [c_a d_w sum_P(s_w) +
    c_a c_w N]`` with the bracket precomputed per border class by :func:`packed_bias`.
    Integer sums are exact int64 and converted to float once per output (and segment).
    ``raw=True`` also writes ``raw_aw[n, o, oh, ow] = sum(s_a s_w)`` and ``raw_a[n, g, oh, ow]
    = sum(s_a)`` over all segments (pass ``(1,1,1,1)`` dummies otherwise).

    Weights come blocked by :func:`pack_weight_layout` (``wtb``, ``o_block`` output channels
    per block). Work split: ``prange`` over (n, oh, g, block); a task walks one output row:
    per pixel it gathers the valid activation words (``col``) with their weight rows
    (``rows``; interior pixels of a single-segment group use precomputed offsets), runs
    :func:`_xor_popcount_block` (each activation word XOR-ed with every filter of the block),
    rescales into a row buffer, and finally writes the block's output rows.
    """
    n_, h_, w_, n_words = xa.shape
    groups = g_seg0.shape[0]
    o_block = wtb.shape[2]
    kmax = wtb.shape[1]
    n_blk = wtb.shape[0] // groups
    out_h = y.shape[2]
    out_w = y.shape[3]
    n_tasks = n_ * out_h * groups * n_blk
    for task in prange(n_tasks):
        blk = task % n_blk
        rest = task // n_blk
        g = rest % groups
        rest = rest // groups
        oh = rest % out_h
        n = rest // out_h
        j0 = blk * o_block
        nj = min(og, j0 + o_block) - j0
        obase = g * og + j0
        wb = wtb[g * n_blk + blk]
        qg = g_w0[g]
        iacc = np.empty(o_block, dtype=np.int64)
        facc = np.empty(nj)
        tacc = np.zeros(nj, dtype=np.int64)
        col = np.empty(kmax, dtype=np.uint64)
        rows = np.empty(kmax, dtype=np.int64)
        ybuf = np.empty((out_w, nj))
        dwo = alpha_w[obase:obase + nj]
        cwo = beta_w[obase:obase + nj]
        ki0 = row_lo[oh]
        ki1 = row_hi[oh]
        rc = row_cls[oh]
        s0 = g_seg0[g]
        s1 = g_seg1[g]
        # interior pixels of a single-segment group: fixed activation offsets and weight rows
        taps = kmax // wgm
        kh = taps // kw
        xa_flat = xa.reshape(xa.size)
        fast = s1 - s0 == 1 and not raw
        nk_full = 0
        off_full = np.empty(kmax, dtype=np.int64)
        rows_full = np.empty(kmax, dtype=np.int64)
        if fast:
            for ki in range(kh):
                for kj in range(kw):
                    for q in range(seg_w0[s0], seg_w1[s0]):
                        off_full[nk_full] = (ki * dh * w_ + kj * dw) * n_words + q
                        rows_full[nk_full] = (ki * kw + kj) * wgm + q - qg
                        nk_full += 1
        for ow in range(out_w):
            kj0 = col_lo[ow]
            kj1 = col_hi[ow]
            n_taps = (ki1 - ki0) * (kj1 - kj0)
            cl = col_cls[ow]
            if fast and ki1 - ki0 == kh and kj1 - kj0 == kw:
                base = ((n * h_ + oh * sh - ph) * w_ + ow * sw - pw) * n_words
                pa = 0
                for k in range(nk_full):
                    a = xa_flat[base + off_full[k]]
                    col[k] = a
                    pa += _popcount(a)
                _xor_popcount_block(wb, col, rows_full, nk_full, iacc)
                nv = seg_n[s0] * n_taps
                da = seg_da[s0]
                qa = da * (2 * pa - nv)
                for jj in range(nj):
                    ybuf[ow, jj] = bias[rc, cl, obase + jj] \
                        + dwo[jj] * (da * np.int32(nv - 2 * iacc[jj])) + cwo[jj] * qa
                continue
            qa = 0.0
            ta = 0
            for s in range(s0, s1):
                q0 = seg_w0[s]
                q1 = seg_w1[s]
                nk = 0
                pa = 0
                for ki in range(ki0, ki1):
                    ih = oh * sh - ph + ki * dh
                    for kj in range(kj0, kj1):
                        iw = ow * sw - pw + kj * dw
                        tb = (ki * kw + kj) * wgm - qg
                        for q in range(q0, q1):
                            a = xa[n, ih, iw, q]
                            pa += _popcount(a)
                            col[nk] = a
                            rows[nk] = tb + q
                            nk += 1
                _xor_popcount_block(wb, col, rows, nk, iacc)
                nv = seg_n[s] * n_taps
                da = seg_da[s]
                qa += da * (2 * pa - nv)
                # |nv - 2*iacc| <= nv < 2**31: int32 -> float64 converts as a vector on AVX2
                if s == s0:
                    for jj in range(nj):
                        facc[jj] = da * np.int32(nv - 2 * iacc[jj])
                else:
                    for jj in range(nj):
                        facc[jj] += da * np.int32(nv - 2 * iacc[jj])
                if raw:
                    for jj in range(nj):
                        tacc[jj] += nv - 2 * iacc[jj]
                    ta += 2 * pa - nv
            for jj in range(nj):
                ybuf[ow, jj] = bias[rc, cl, obase + jj] + dwo[jj] * facc[jj] + cwo[jj] * qa
            if raw:
                for jj in range(nj):
                    raw_aw[n, obase + jj, oh, ow] = tacc[jj]
                    tacc[jj] = 0
                if blk == 0:
                    raw_a[n, g, oh, ow] = ta
        for jj in range(nj):
            o = obase + jj
            for ow in range(out_w):
                y[n, o, oh, ow] = ybuf[ow, jj]
    return y


@njit(cache=True, error_model="numpy")
def pack_lastaxis(x2, n_words):
    """Pack the signs ``x >= 0`` of the rows of ``x2`` ``(R, n)`` into ``(R, n_words)`` uint64,
    LSB-first, tail bits 0. Returns ``(packed, bad)`` with ``bad`` the non-finite count."""
    r_, n_ = x2.shape
    out = np.zeros((r_, n_words), dtype=np.uint64)
    bad = np.zeros(r_, dtype=np.int64)
    for r in range(r_):
        b_count = 0
        for i in range(n_):
            xv = x2[r, i]
            if xv >= 0.0:
                out[r, i >> 6] |= _U64_ONE << np.uint64(i & 63)
            b_count += 0 if abs(xv) <= _F64_MAX else 1
        bad[r] = b_count
    return out, bad.sum()


@njit(cache=True, error_model="numpy")
def unpack_lastaxis(p2, n):
    """Signs ``+1.0`` (bit 1) / ``-1.0`` (bit 0) of the first ``n`` bits of each row of ``p2``."""
    r_ = p2.shape[0]
    out = np.empty((r_, n))
    for r in range(r_):
        for i in range(n):
            bit = (p2[r, i >> 6] >> np.uint64(i & 63)) & _U64_ONE
            out[r, i] = 1.0 if bit != _U64_ZERO else -1.0
    return out


@njit(cache=True, parallel=True, error_model="numpy")
def popcount_roofline(wb, col, reps, n_threads):
    """Throughput probe for the popcount inner loop: each thread runs
    :func:`_xor_popcount_block` ``reps`` times on the cache-resident block ``wb``
    ``(K, o_block)`` with activation words ``col`` ``(K,)`` -- the convolution's inner loop
    without gathering, rescaling or output traffic. One word-op = one 64-bit XOR + popcount +
    accumulate (64 binary multiply-accumulates = 128 binary ops); the probe performs
    ``n_threads * reps * K * o_block`` word-ops (``n_threads`` parallel copies, normally
    ``numba.get_num_threads()``). Returns a checksum per copy."""
    k_, o_block = wb.shape
    res = np.zeros(n_threads, dtype=np.int64)
    for tid in prange(n_threads):
        rows = np.arange(k_)
        c = col.copy()
        iacc = np.empty(o_block, dtype=np.int64)
        tot = 0
        for r in range(reps):
            c[r % k_] ^= np.uint64(r)
            _xor_popcount_block(wb, c, rows, k_, iacc)
            tot += iacc[r % o_block]
        res[tid] = tot
    return res
