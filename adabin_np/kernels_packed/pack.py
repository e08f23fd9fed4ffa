r"""Binarize + pack kernels: activations (NCHW float32/float64 -> NHWC uint64 words) and weights.

Bit rule (both conventions; the packed path has no zero level): bit = 1 (``s = +1``) iff
``v = (x - beta)/alpha >= 0`` (activations) and iff ``u = (W - beta_w)/alpha_w >= 0``
(weights; a constant filter, ``alpha_w = 0``, packs as all ones), with ``v``/``u`` exactly as
the float64 float path computes them.

**Activations without dividing.** For finite doubles ``d = x - beta`` is zero only when
``x == beta`` and never has the wrong sign (gradual underflow); for ``|alpha| < 2`` a non-zero
``d/alpha`` cannot round to zero either (``|d| >= 2^-1074``). So ``v >= 0`` iff ``x >= beta``
(``alpha > 0``) or ``x <= beta`` (``alpha < 0``), and ``v == 0`` iff ``x == beta``. For float32
``x`` (converted to float64 exactly by the float path) the comparison with the double ``beta``
equals the comparison with a float32 threshold: ``x >= beta`` iff ``x >= ceil32(beta)`` and
``x <= beta`` iff ``x <= floor32(beta)`` (the nearest float32 at or above / below ``beta``), and
``x == beta`` only if ``beta`` is itself a float32. The kernel therefore compares in the input's
own dtype (mode 0/1 of :func:`pack_activations`); channels with ``|alpha| >= 2`` divide in
float64 (mode 2). :func:`activation_thresholds` builds the per-channel tables.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .microkernel import _popcount

__all__ = ["activation_thresholds", "pack_activations", "weight_pack", "natural_kernel_weights",
           "pack_weight_layout", "weight_tap_popcounts", "pack_lastaxis", "unpack_lastaxis"]

_U64_ONE = np.uint64(1)
_U64_ZERO = np.uint64(0)


def activation_thresholds(alpha_c, beta_c, dtype):
    """Per-channel ``(mode, thr, tie)`` for :func:`pack_activations` (see module docstring).

    ``mode`` int64: 0 ``bit = x >= thr``, 1 ``bit = x <= thr``, 2 ``bit = (x - beta)/alpha
    >= 0`` in float64. ``thr``/``tie`` in ``dtype``: ``x == tie`` iff ``v == 0`` (NaN where no
    element of that dtype can equal ``beta``).
    """
    dtype = np.dtype(dtype)
    mode = np.where(np.abs(alpha_c) >= 2.0, 2, np.where(alpha_c > 0, 0, 1)).astype(np.int64)
    with np.errstate(over="ignore"):
        b = beta_c.astype(dtype)
    b64 = b.astype(np.float64)
    up = np.where(b64 < beta_c, np.nextafter(b, np.asarray(np.inf, dtype)), b)
    down = np.where(b64 > beta_c, np.nextafter(b, np.asarray(-np.inf, dtype)), b)
    thr = np.where(mode == 1, down, up).astype(dtype)
    tie = np.where(b64 == beta_c, b, np.asarray(np.nan, dtype)).astype(dtype)
    return mode, thr, tie


@njit(cache=True, parallel=True, error_model="numpy")
def pack_activations(x, mode, thr, tie, alpha, beta, word_ptr, word_chans, xa, h_chunk):
    """Binarize and pack NCHW ``x`` (float32 or float64) into NHWC words ``xa``
    ``(N*H*W + 1, CW)``; the extra last pixel is all zero words (the microkernel's target for
    padded taps).

    Word ``q`` of a pixel holds channels ``word_chans[word_ptr[q]:word_ptr[q+1]]`` at bits
    ``0, 1, ...`` (LSB-first); unused bits 0. Bit rule per channel from
    :func:`activation_thresholds`. ``prange`` over (n, word, chunk of ``h_chunk`` rows): a task
    streams each of its channels' planes once, ORs the bits into a cache-resident buffer and
    stores the words. Returns ``(ties, bad)``: elements with ``v == 0`` exactly, and non-finite
    elements (the caller raises on ``bad > 0``).
    """
    n_, c_, h_, w_ = x.shape
    n_words = xa.shape[1]
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
            xr = x[n, c].reshape(h_ * w_)[h0 * w_:h1 * w_]
            th = thr[c]
            te = tie[c]
            md = mode[c]
            if md == 0:
                for i in range(m):
                    buf[i] |= one if xr[i] >= th else _U64_ZERO
                    t_count += 1 if xr[i] == te else 0
            elif md == 1:
                for i in range(m):
                    buf[i] |= one if xr[i] <= th else _U64_ZERO
                    t_count += 1 if xr[i] == te else 0
            else:
                a = alpha[c]
                b = beta[c]
                for i in range(m):
                    v = (np.float64(xr[i]) - b) / a
                    buf[i] |= one if v >= 0.0 else _U64_ZERO
                    t_count += 1 if v == 0.0 else 0
            for i in range(m):
                xv = xr[i]
                b_count += 0 if xv - xv == 0 else 1
        base = (n * h_ + h0) * w_
        for i in range(m):
            xa[base + i, q] = buf[i]
        ties[task] = t_count
        bad[task] = b_count
    last = xa.shape[0] - 1
    for q in range(n_words):
        xa[last, q] = 0
    return ties.sum(), bad.sum()


@njit(cache=True, inline="always", error_model="numpy")
def _pow2_factors(k):
    """``(f1, f2)`` with ``(v * f1) * f2 == ldexp(v, k)`` for every double ``v`` (each factor a
    power of two that is a double; two factors where ``2**k`` itself is not one)."""
    if k > 1023:
        return math.ldexp(1.0, np.int32(k - 600)), math.ldexp(1.0, np.int32(600))
    if k < -1074:
        return math.ldexp(1.0, np.int32(k + 600)), math.ldexp(1.0, np.int32(-600))
    return math.ldexp(1.0, np.int32(k)), 1.0


@njit(cache=True, fastmath={"nnan", "ninf", "nsz"}, error_model="numpy")
def _max_abs_dev(row, m):
    """``max |row - m|`` (any summation order gives the same maximum, so it may vectorise;
    finite inputs)."""
    best = 0.0
    for j in range(row.shape[0]):
        best = max(best, abs(row[j] - m))
    return best


@njit(cache=True, parallel=True, error_model="numpy")
def weight_pack(w2, cg, taps, n_words):
    """Weight binary set and packed signs of ``w2`` ``(O, Cg*taps)``, one row block at a time.

    Mirrors :func:`adabin_np.binarize.weight_binary_set` bit for bit: each row is scaled by the
    power of two ``2**-e`` that brings its largest magnitude into ``[0.5, 1)``
    (:func:`~adabin_np.binarize.pow2_row_scale`; exact), the set of the scaled row is computed
    with the operations of :func:`adabin_np.kernels_cpu.weight_stats` in the same order: the
    sum and the sum of squares ``((W - m)/max|W - m|)**2`` are the same sequential float64
    sums (four rows interleaved for instruction-level parallelism, the element-wise quotients
    and squares computed vectorised beforehand: neither changes any rounding), the maxima are
    order-independent; then scaled back by ``2**e``. Bits: ``u = (W_s - beta_s)/alpha_s >= 0``
    as :func:`~adabin_np.kernels_cpu.weight_forward` on the scaled rows; since
    ``0 < alpha_s < 2`` on a scaled row, a non-zero difference never divides to zero and the
    sign of ``u`` is that of ``W_s - beta_s`` (``u == 0`` iff ``W_s == beta_s``), so no division
    is needed (``alpha == 0``: all ones). Packed as ``words[o, t, q]`` (bit ``b`` = input
    channel ``64*q + b`` at tap ``t``; tail bits 0). Returns ``(alpha, beta, words, ties)``;
    ``ties`` counts ``u == 0`` in non-constant rows. ``w2`` float32 or float64 (promoted
    exactly per element). The caller checks the result for non-finite values (NaN input).
    """
    o_, n_ = w2.shape
    alpha = np.empty(o_)
    beta = np.empty(o_)
    words = np.zeros((o_, taps, n_words), dtype=np.uint64)
    R = 4
    nb = (o_ + R - 1) // R
    ties = np.zeros(nb, dtype=np.int64)
    for blk in prange(nb):
        o0 = blk * R
        nr = min(R, o_ - o0)
        ws = np.zeros((R, n_))
        sq = np.zeros((R, n_))
        ex = np.zeros(R, dtype=np.int64)
        for r in range(nr):
            peak = 0.0
            for j in range(n_):
                v = abs(np.float64(w2[o0 + r, j]))
                peak = v if v > peak else peak
            e = math.frexp(peak)[1]
            ex[r] = e
            f1, f2 = _pow2_factors(-e)
            for j in range(n_):
                ws[r, j] = (np.float64(w2[o0 + r, j]) * f1) * f2
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for j in range(n_):
            s0 += ws[0, j]
            s1 += ws[1, j]
            s2 += ws[2, j]
            s3 += ws[3, j]
        m = np.array([s0 / n_, s1 / n_, s2 / n_, s3 / n_])
        const = np.zeros(R, dtype=np.bool_)
        sc = np.zeros(R)
        for r in range(R):
            diff = 0
            f = ws[r, 0]
            for j in range(n_):
                diff += ws[r, j] != f
            const[r] = diff == 0
            sc[r] = _max_abs_dev(ws[r], m[r])
            mr = m[r]
            cr = sc[r] if sc[r] > 0.0 else 1.0
            for j in range(n_):
                d = (ws[r, j] - mr) / cr
                sq[r, j] = d * d
        q0 = 0.0
        q1 = 0.0
        q2 = 0.0
        q3 = 0.0
        for j in range(n_):
            q0 += sq[0, j]
            q1 += sq[1, j]
            q2 += sq[2, j]
            q3 += sq[3, j]
        sss = (q0, q1, q2, q3)
        t_count = 0
        for r in range(nr):
            o = o0 + r
            if const[r]:
                a_s = 0.0
                b_s = ws[r, 0]
            else:
                b_s = m[r]
                a_s = sc[r] * math.sqrt(sss[r] / n_) if sc[r] > 0.0 else 0.0
            f1, f2 = _pow2_factors(ex[r])
            alpha[o] = (a_s * f1) * f2
            beta[o] = (b_s * f1) * f2
            if a_s == 0.0:
                for cc in range(cg):
                    bit = _U64_ONE << np.uint64(cc & 63)
                    for t in range(taps):
                        words[o, t, cc >> 6] |= bit
            else:
                for t in range(taps):
                    for q in range(n_words):
                        word = _U64_ZERO
                        for b in range(min(64, cg - q * 64)):
                            wv = ws[r, (q * 64 + b) * taps + t]
                            word |= (_U64_ONE << np.uint64(b)) if wv >= b_s else _U64_ZERO
                            t_count += 1 if wv == b_s else 0
                        words[o, t, q] = word
        ties[blk] = t_count
    return alpha, beta, words, ties.sum()


@njit(cache=True, parallel=True, error_model="numpy")
def natural_kernel_weights(words, groups, j_block, n_blk):
    """Kernel weight blocks for the natural channel layout, from ``words`` ``(O, T, WG)``:
    ``wtb[g*n_blk + b, t*WG + q, jj] = words[g*Og + b*J + jj, t, q]`` (0 past ``Og``)."""
    o_, taps, wg = words.shape
    og = o_ // groups
    wtb = np.zeros((groups * n_blk, taps * wg, j_block), dtype=np.uint64)
    for gb in prange(groups * n_blk):
        g = gb // n_blk
        b = gb % n_blk
        for jj in range(j_block):
            j = b * j_block + jj
            if j >= og:
                break
            o = g * og + j
            for t in range(taps):
                for q in range(wg):
                    wtb[gb, t * wg + q, jj] = words[o, t, q]
    return wtb


@njit(cache=True, error_model="numpy")
def pack_weight_layout(words, cg, chan_word, chan_bit, g_w0, wgm, j_block, n_blk):
    """Kernel weight blocks for a segmented channel layout (see :mod:`adabin_np.packed`).

    Input channel ``cc`` of group ``g`` (natural bit ``cc % 64`` of word ``cc // 64`` in
    ``words`` ``(O, T, WG)``) moves to bit ``chan_bit[c]`` of word ``chan_word[c] - g_w0[g]``
    (``c = g*Cg + cc``): ``wtb[g*n_blk + j // J, t*wgm + word, j % J]``. Unused bits 0.
    """
    o_, taps, wg = words.shape
    groups = g_w0.shape[0]
    og = o_ // groups
    wtb = np.zeros((groups * n_blk, taps * wgm, j_block), dtype=np.uint64)
    for gb in range(groups * n_blk):
        g = gb // n_blk
        blk = gb % n_blk
        for jj in range(j_block):
            j = blk * j_block + jj
            if j >= og:
                break
            o = g * og + j
            for cc in range(cg):
                c = g * cg + cc
                row = chan_word[c] - g_w0[g]
                bit = _U64_ONE << np.uint64(chan_bit[c])
                src = _U64_ONE << np.uint64(cc & 63)
                for t in range(taps):
                    if words[o, t, cc >> 6] & src:
                        wtb[gb, t * wgm + row, jj] |= bit
    return wtb


@njit(cache=True, error_model="numpy")
def weight_tap_popcounts(wtb, seg_w0, seg_w1, seg_group, g_w0, wgm, og, taps):
    """``pcw[s, t, j]``: popcount of output channel ``j`` (of segment ``s``'s group) at tap
    ``t`` over the words of segment ``s`` (the number of ``s_w = +1`` bits there)."""
    j_block = wtb.shape[2]
    n_blk = wtb.shape[0] // g_w0.shape[0]
    n_seg = seg_w0.shape[0]
    pcw = np.zeros((n_seg, taps, og), dtype=np.int64)
    for s in range(n_seg):
        g = seg_group[s]
        for t in range(taps):
            for q in range(seg_w0[s], seg_w1[s]):
                row = t * wgm + q - g_w0[g]
                for j in range(og):
                    pcw[s, t, j] += _popcount(wtb[g * n_blk + j // j_block, row, j % j_block])
    return pcw


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
            b_count += 0 if xv - xv == 0.0 else 1
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
