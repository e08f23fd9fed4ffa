r"""Numba CUDA kernels (``@cuda.jit``): the GPU target with the semantics of :mod:`kernels_cpu`.

This module imports :mod:`numba.cuda` at import time, so it is only ever imported lazily by
:mod:`adabin_np.cuda.host` after the availability check (a real GPU, or the CUDA simulator
selected with ``NUMBA_ENABLE_CUDASIM=1`` before :mod:`numba.cuda` is first imported), and by
:mod:`adabin_np.cuda.report` to compile PTX. Like the CPU kernels, nothing here validates its
arguments: the host wrappers in :mod:`adabin_np.cuda.host` do (shapes, and every size that a
kernel indexes with 32-bit arithmetic below ``2**31``).

Conventions and math are those of ``SPEC.md`` (sections 1-4) and of the CPU kernels:

* activations, viewed as ``(N, C, S)``: ``v = (x - beta_c)/alpha_c``; paper
  ``alpha*s + beta`` with ``s(0) = +1``; official ``alpha*(s + beta)`` with ``s(0) = 0``;
* weights, viewed as ``(O, n)``: ``beta_w`` = row mean, ``alpha_w`` = population std, an
  all-equal row gets ``alpha_w = 0`` and ``beta_w`` = its value exactly;
* packed path: bit = 1 iff ``v >= 0`` (``u >= 0`` for weights; ``u = 0``, bit 1, for a
  constant filter) in **both** conventions, NHWC, channels LSB-first in ``uint64`` words,
  tail bits 0 (the packers guarantee it; the convolutions rely on it).

Determinism: there are no atomics. Every reduction is a fixed-shape shared-memory tree inside
one block (a power of two, at most ``REDUCE_TPB`` threads) followed, where a reduction spans
several blocks, by a fixed-order host sum over the per-block partials; popcounts are exact
integers. Results are therefore bit-reproducible on a given device for a given shape. They are
not bit-identical to the CPU kernels (different summation order; NVVM also contracts
``a*b + c`` into FMA by default), but agree to a few ulps; the signs -- hence every binarized
value and every popcount -- are identical, because ``v`` and ``u`` are correctly rounded IEEE
divisions on both targets.

Code-generation rules (checked by :func:`adabin_np.cuda.ptx_report` and its test): no
``cuda.local.array`` (counters are named scalars, so they live in registers), no 64-bit integer
division or modulo (grid dimensions carry the indices, loops carry strides, and the few
per-thread index splits divide ``uint32`` values), popcounts are ``popc.b64`` on whole words
(per-channel activation sets use one popcount per *segment mask*, a run of channels of a word
with equal levels, as the CPU path uses segments).

Launch geometry is described in each kernel's docstring; :mod:`adabin_np.cuda.host` picks it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda
from numba.cuda import types as _nbtypes

__all__ = [
    "ELEMENTWISE_TPB",
    "REDUCE_TPB",
    "CONV_OTILE",
    "CONV_MAX_REGISTERS",
    "act_forward",
    "act_backward",
    "weight_stats",
    "weight_forward",
    "weight_backward",
    "pack_activations",
    "pack_weights",
    "packed_conv_scalar",
    "packed_conv_perchannel",
]

#: most threads per block of the element-wise kernels
ELEMENTWISE_TPB = 128
#: most threads per block of the reduction kernels (their shared buffers' size); the host
#: launches a power of two <= this, about a quarter of the work per block
REDUCE_TPB = 128
#: most output channels per thread of the scalar-set packed convolution (the host picks
#: 1, 2 or 4 per launch; the counters are 4 named registers)
CONV_OTILE = 4
#: register cap of the convolution kernels: 64 per thread lets 32 warps (50% of an sm_90 SM's
#: 64) be resident; ``ptx_report`` checks that the cap causes no spills
CONV_MAX_REGISTERS = 64



def _conv_jit_options():
    """``max_registers`` for the real target; the CUDA simulator's ``jit`` has no such option
    (and no registers)."""
    try:
        cuda.jit(max_registers=CONV_MAX_REGISTERS)
    except TypeError:
        return {}
    return {"max_registers": CONV_MAX_REGISTERS}


_CONV_JIT = _conv_jit_options()
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_U32_0 = np.uint32(0)
# a Numba type (not np.uint64) for the dynamic shared arrays: the simulator needs a dtype it
# can take the itemsize of
_U64 = _nbtypes.uint64


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def _sign(v, official):
    """sign with the convention's value at zero: paper +1, official (torch.sign) 0."""
    if v > 0.0:
        return 1.0
    if v < 0.0:
        return -1.0
    if official:
        return 0.0
    return 1.0


@cuda.jit(device=True, inline=True)
def _block_sum(buf, tid):
    """In-place tree sum of ``buf[0:blockDim.x]`` (shared); every thread gets the total.

    ``blockDim.x`` is a power of two <= ``REDUCE_TPB``. Fixed pairing (the stride halves from
    ``blockDim.x/2`` to 1), hence deterministic for a given block size.
    """
    cuda.syncthreads()
    stride = cuda.blockDim.x >> 1
    while stride > 0:
        if tid < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride >>= 1
    total = buf[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def _valid_range(o_pos, stride, pad, dil, k, size):
    """``[lo, hi)``: the kernel offsets ``t`` whose input index ``o_pos*stride - pad + t*dil``
    lies in ``[0, size)`` (a contiguous range; at most ``k`` steps, no division)."""
    base = o_pos * stride - pad
    lo = 0
    while lo < k and base + lo * dil < 0:
        lo += 1
    hi = k
    while hi > lo and base + (hi - 1) * dil >= size:
        hi -= 1
    return lo, hi


@cuda.jit(device=True, inline=True)
def _popc(word):
    """``popc.b64`` of a ``uint64`` word as a ``uint32`` count (Numba keeps ``uint32``
    arithmetic in 32 bits, while ``int32`` would be widened to ``int64``)."""
    return np.uint32(cuda.popc(word))


# ----------------------------------------------------------------------------------------------
# activations, x viewed as (N, C, S)
# ----------------------------------------------------------------------------------------------


@cuda.jit(cache=True)
def act_forward(x, alpha, beta, official, out):
    """Element-wise binarization of ``x`` ``(N, C, S)`` into ``out`` (same shape).

    ``v = (x - beta[c]) / alpha[c]``; paper ``out = alpha*s + beta``, official
    ``out = alpha*(s + beta)``. Geometry: grid ``(ceil(S/TPB), min(C, 65535), min(N, 65535))``,
    ``TPB <= ELEMENTWISE_TPB``; thread ``s`` of block ``(., c, n)`` walks channels and images
    with grid strides (no index division); loads and stores are coalesced along ``s``.
    """
    s = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n_, c_, s_len = x.shape
    if s >= s_len:
        return
    c = cuda.blockIdx.y
    while c < c_:
        a = alpha[c]
        b = beta[c]
        n = cuda.blockIdx.z
        while n < n_:
            sg = _sign((x[n, c, s] - b) / a, official)
            if official:
                out[n, c, s] = a * (sg + b)
            else:
                out[n, c, s] = a * sg + b
            n += cuda.gridDim.z
        c += cuda.gridDim.y


@cuda.jit(cache=True)
def act_backward(x, g, alpha, beta, official, dx, partials):
    r"""Bi-Real backward: ``dx = G = g*max(0, 2 - 2|v|)`` and per-(channel, block) partial sums.

    ``x``, ``g``, ``dx`` have shape ``(N, C, S)``. Geometry: grid ``(KS, KN, min(C, 65535))``,
    ``TPB`` threads (a power of two <= ``REDUCE_TPB``). Block ``(ks, kn, c)`` covers images
    ``n = kn, kn + KN, ...`` and, of each, positions ``s = ks*TPB + tid, s += KS*TPB`` (coalesced
    along ``s``; nested loops, no index division); it writes ``dx`` and accumulates

    ``sum(g*s_term)``, ``sum(G*v)``, ``sum(g)``, ``sum(G)``

    (``s_term = s`` paper, ``s + beta`` official), tree-reduced in shared memory into
    ``partials[q, c, kn*KS + ks]`` (``q = 0..3``); the host sums over blocks in a fixed order.
    As on the CPU, elements with ``F'(v) = 0`` add nothing to ``sum(G*v)``.
    """
    buf = cuda.shared.array((4, REDUCE_TPB), dtype=np.float64)
    tid = cuda.threadIdx.x
    tpb = cuda.blockDim.x
    n_, c_, s_len = x.shape
    step = cuda.gridDim.x * tpb
    blk = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
    c = cuda.blockIdx.z
    while c < c_:
        a = alpha[c]
        b = beta[c]
        acc_gs = 0.0
        acc_gv = 0.0
        acc_g = 0.0
        acc_gg = 0.0
        n = cuda.blockIdx.y
        while n < n_:
            i = cuda.blockIdx.x * tpb + tid
            while i < s_len:
                v = (x[n, c, i] - b) / a
                s = _sign(v, official)
                gi = g[n, c, i]
                fp = 2.0 - 2.0 * abs(v)
                big_g = 0.0
                if fp > 0.0:
                    big_g = gi * fp
                    acc_gv += big_g * v
                dx[n, c, i] = big_g
                if official:
                    acc_gs += gi * (s + b)
                else:
                    acc_gs += gi * s
                acc_g += gi
                acc_gg += big_g
                i += step
            n += cuda.gridDim.y
        buf[0, tid] = acc_gs
        buf[1, tid] = acc_gv
        buf[2, tid] = acc_g
        buf[3, tid] = acc_gg
        cuda.syncthreads()
        stride = tpb >> 1
        while stride > 0:
            if tid < stride:
                for q in range(4):
                    buf[q, tid] += buf[q, tid + stride]
            cuda.syncthreads()
            stride >>= 1
        if tid == 0:
            for q in range(4):
                partials[q, c, blk] = buf[q, 0]
        cuda.syncthreads()
        c += cuda.gridDim.z


# ----------------------------------------------------------------------------------------------
# weights, w viewed as (O, n)
# ----------------------------------------------------------------------------------------------


@cuda.jit(cache=True)
def weight_stats(w, alpha, beta):
    """Per-row mean ``beta`` and population std ``alpha`` of ``w`` ``(O, n)``.

    Geometry: grid ``min(O, 65535)`` blocks of ``TPB`` threads (a power of two <=
    ``REDUCE_TPB``); block ``o`` (then ``o + gridDim``, ...) strides over row ``o``
    (coalesced), tree-reduces ``sum(w)`` and an "any element differs from ``w[o, 0]``" flag,
    then ``sum((w - mean)^2)`` (two-pass, like the CPU kernel). Constant row:
    ``beta = w[o, 0]`` exactly and ``alpha = 0``.
    """
    buf = cuda.shared.array(REDUCE_TPB, dtype=np.float64)
    tid = cuda.threadIdx.x
    n_ = w.shape[1]
    o = cuda.blockIdx.x
    while o < w.shape[0]:
        first = w[o, 0]
        acc = 0.0
        differs = 0.0
        j = tid
        while j < n_:
            acc += w[o, j]
            if w[o, j] != first:
                differs = 1.0
            j += cuda.blockDim.x
        buf[tid] = acc
        total = _block_sum(buf, tid)
        buf[tid] = differs
        n_diff = _block_sum(buf, tid)
        if n_diff == 0.0:
            if tid == 0:
                beta[o] = first
                alpha[o] = 0.0
        else:
            m = total / n_
            ss = 0.0
            j = tid
            while j < n_:
                d = w[o, j] - m
                ss += d * d
                j += cuda.blockDim.x
            buf[tid] = ss
            total_ss = _block_sum(buf, tid)
            if tid == 0:
                beta[o] = m
                alpha[o] = math.sqrt(total_ss / n_)
        o += cuda.gridDim.x


@cuda.jit(cache=True)
def weight_forward(w, alpha, beta, official, out):
    """``Wb = alpha*sign(u) + beta``, ``u = (W - beta)/alpha`` on ``w`` ``(O, n)``; rows with
    ``alpha == 0`` give ``beta``.

    Geometry: grid ``(ceil(n/TPB), min(O, 65535))``, ``TPB <= ELEMENTWISE_TPB``; one element
    per thread and row (grid stride over rows), coalesced.
    """
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j >= w.shape[1]:
        return
    o = cuda.blockIdx.y
    while o < w.shape[0]:
        a = alpha[o]
        b = beta[o]
        if a == 0.0:
            out[o, j] = b
        else:
            out[o, j] = a * _sign((w[o, j] - b) / a, official) + b
        o += cuda.gridDim.y


@cuda.jit(cache=True)
def weight_backward(w, g, alpha, beta, k, t, official, dw):
    r"""dW through the EDE estimator and through ``alpha_w(W)``, ``beta_w(W)`` (SPEC 2).

    Per row ``o`` (``n`` elements), ``G_u = g*alpha*k*t*(1 - tanh(t*u)^2)``,
    ``dalpha = sum(g*s) - sum(G_u*u)/alpha``, ``dbeta = sum(g) - sum(G_u)/alpha``,
    ``dW_j = G_u_j/alpha + dbeta/n + u_j*dalpha/n``; a constant row (``alpha == 0``) gets
    ``dW_j = sum(g)/n``. Geometry: ``min(O, 65535)`` blocks of ``TPB`` threads (power of
    two); block ``o`` makes one strided pass for the four sums (tree-reduced in shared memory)
    and a second pass writing ``dW`` (all coalesced).
    """
    buf = cuda.shared.array(REDUCE_TPB, dtype=np.float64)
    tid = cuda.threadIdx.x
    n_ = w.shape[1]
    o = cuda.blockIdx.x
    while o < w.shape[0]:
        a = alpha[o]
        b = beta[o]
        acc_g = 0.0
        acc_gs = 0.0
        acc_gu = 0.0
        acc_guu = 0.0
        j = tid
        while j < n_:
            gj = g[o, j]
            acc_g += gj
            if a != 0.0:
                u = (w[o, j] - b) / a
                th = math.tanh(t * u)
                gu = gj * a * (k * t * (1.0 - th * th))
                acc_gs += gj * _sign(u, official)
                acc_gu += gu
                acc_guu += gu * u
            j += cuda.blockDim.x
        buf[tid] = acc_g
        sum_g = _block_sum(buf, tid)
        if a == 0.0:
            j = tid
            while j < n_:
                dw[o, j] = sum_g / n_
                j += cuda.blockDim.x
        else:
            buf[tid] = acc_gs
            sum_gs = _block_sum(buf, tid)
            buf[tid] = acc_gu
            sum_gu = _block_sum(buf, tid)
            buf[tid] = acc_guu
            sum_guu = _block_sum(buf, tid)
            dalpha = sum_gs - sum_guu / a
            dbeta = sum_g - sum_gu / a
            j = tid
            while j < n_:
                u = (w[o, j] - b) / a
                th = math.tanh(t * u)
                gu = g[o, j] * a * (k * t * (1.0 - th * th))
                dw[o, j] = gu / a + dbeta / n_ + u * dalpha / n_
                j += cuda.blockDim.x
        o += cuda.gridDim.x


# ----------------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------------


@cuda.jit(cache=True)
def pack_activations(x, alpha, beta, groups, out):
    r"""Pack activation signs: ``out[n, h, w, g*WG + q]`` bit ``b`` = ``[v >= 0]`` of channel
    ``c = g*Cg + 64*q + b`` (LSB-first), ``v = (x - beta[c])/alpha[c]``; tail bits are 0.

    ``x`` is NCHW float64 ``(N, C, H, W)``, ``out`` is ``uint64`` ``(N, H, W, groups*WG)``
    with ``Cg = C/groups``, ``WG = ceil(Cg/64)``; each group starts a fresh word, so for
    ``groups == 1`` this is the plain NHWC layout with ``ceil(C/64)`` words per pixel.
    ``v == 0`` (and ``-0.0``) gives bit 1 (``s = +1``) in both conventions.

    Geometry: grid ``(ceil(H*W/TPB), WG, min(N*groups, 65535))``, one output word per thread;
    the pixel index varies fastest across threads, so the up to 64 reads of each thread are
    coalesced across the warp. Index splits (pixel -> ``(h, w)``, ``z`` -> ``(n, g)``) are
    ``uint32`` divisions, once per thread (the host checks the sizes are below ``2**31``).
    """
    n_, c_, h_, w_ = x.shape
    wg = cuda.gridDim.y
    cg = np.int64(np.uint32(c_) // np.uint32(groups))
    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if p >= h_ * w_:
        return
    ih = np.int64(np.uint32(p) // np.uint32(w_))
    iw = p - ih * w_
    q = cuda.blockIdx.y
    nb = cg - 64 * q
    if nb > 64:
        nb = 64
    z = cuda.blockIdx.z
    while z < n_ * groups:
        n = np.int64(np.uint32(z) // np.uint32(groups))
        g = z - n * groups
        c0 = g * cg + 64 * q
        word = _ZERO
        for b in range(nb):
            c = c0 + b
            v = (x[n, c, ih, iw] - beta[c]) / alpha[c]
            if v >= 0.0:
                word |= _ONE << np.uint64(b)
        out[n, ih, iw, g * wg + q] = word
        z += cuda.gridDim.z


@cuda.jit(cache=True)
def pack_weights(w, alpha, beta, out):
    r"""Pack weight signs: ``out[o, (ki*kw + kj)*WG + q]`` bit ``b`` = ``[u >= 0]`` of input
    channel ``cc = 64*q + b``, ``u = (W - beta_w[o])/alpha_w[o]``; constant filter
    (``alpha_w == 0``): bit 1 (``u = 0``). Tail bits are 0.

    ``w`` is OIHW float64 ``(O, Cg, kh, kw)``; ``out`` is ``uint64`` ``(O, kh*kw*WG)``, i.e.
    ``(O, kh, kw, WG)`` flattened so one filter is one contiguous row (staged in shared memory
    by the convolutions). Geometry: grid ``(ceil(kh*kw/TPB), WG, min(O, 65535))``, one output
    word per thread (grid stride over ``o``); ``tap -> (ki, kj)`` is one ``uint32`` division.
    """
    o_, cg, kh, kw = w.shape
    wg = cuda.gridDim.y
    tap = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if tap >= kh * kw:
        return
    ki = np.int64(np.uint32(tap) // np.uint32(kw))
    kj = tap - ki * kw
    q = cuda.blockIdx.y
    nb = cg - 64 * q
    if nb > 64:
        nb = 64
    o = cuda.blockIdx.z
    while o < o_:
        a = alpha[o]
        b_ = beta[o]
        word = _ZERO
        for b in range(nb):
            if a == 0.0:
                bit = True
            else:
                bit = (w[o, 64 * q + b, ki, kj] - b_) / a >= 0.0
            if bit:
                word |= _ONE << np.uint64(b)
        out[o, tap * wg + q] = word
        o += cuda.gridDim.z


# ----------------------------------------------------------------------------------------------
# packed (popcount) convolution
# ----------------------------------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def _stage_filters(buf, wbits, o0, nf, slots, row):
    """Copy filter rows ``o0 .. o0+nf-1`` into ``buf[slot*row + r]``; slots ``nf..slots-1``
    get zeros. Threads ``(x, y)`` of the block stride over ``(r, slot)``: coalesced."""
    f = cuda.threadIdx.y
    while f < slots:
        r = cuda.threadIdx.x
        while r < row:
            if f < nf:
                buf[f * row + r] = wbits[o0 + f, r]
            else:
                buf[f * row + r] = _ZERO
            r += cuda.blockDim.x
        f += cuda.blockDim.y


@cuda.jit(device=True, inline=True)
def _popcount_output(da, ca, d_w, c_w, xor_cnt, w_cnt, s_a, big_n):
    """``y = d_a d_w (N - 2 X) + d_a c_w S_a + c_a d_w (2 W - N) + c_a c_w N`` (SPEC 4)."""
    s_aw = big_n - 2 * xor_cnt
    s_w = 2 * w_cnt - big_n
    return da * d_w * s_aw + da * c_w * s_a + ca * d_w * s_w + ca * c_w * big_n


@cuda.jit(cache=True, **_CONV_JIT)
def packed_conv_scalar(xbits, wbits, tiles, dw_, cw_, d_a, c_a, h_, w_, words, wg, cg, kh, kw,
                       sh, sw, ph, pw, dh, dwl, otile, y):
    r"""Bit-packed AdaBin convolution with one activation binary set per group (SPEC 4).

    For output ``(n, o, i, j)`` with valid (in-bounds) kernel taps ``P``, ``N = |P| * Cg``:

    .. math::
        y = d_a d_w \sum s_a s_w + d_a c_w \sum s_a + c_a d_w \sum_P s_w + c_a c_w N,\\
        \sum s_a s_w = N - 2\,\mathrm{popc}(a \oplus w),\quad
        \sum s_a = 2\,\mathrm{popc}(a) - N,\quad \sum_P s_w = 2\,\mathrm{popc}_P(w) - N

    with ``d_w = dw_[o]``, ``c_w = cw_[o]`` and ``d_a = d_a[g]``, ``c_a = c_a[g]`` for the
    group ``g`` of ``o`` (a scalar set, or per-channel sets constant within each group). The
    popcounts and ``N`` are exact integers; padded taps are skipped (they contribute 0), so a
    border pixel has its own ``N`` and ``sum_P s_w`` (zero-padding correction). Tail bits of
    the last word are 0 in activations and weights alike (the packers' invariant).

    ``xbits``: the flat ``(N*H*W*words,)`` view of the ``(N, H, W, words)`` output of
    :func:`pack_activations` (``words = groups*WG``; flat, so the hot loop indexes with one
    offset instead of four strides), ``h_, w_, words`` its extents; ``wbits``:
    ``(O, kh*kw*WG)`` from :func:`pack_weights`; ``y``: ``(N, O, OH, OW)`` float64;
    ``tiles``: ``int64 (T, 3)``, row ``t`` = (first output channel, filter count, group) of
    filter tile ``t`` (a tile never crosses a group).

    Geometry: grid ``(ceil(OH*OW/PIX), T, N)`` (the host launches batches of at most 65535
    images), block ``(PIX, OT)``; a tile has
    ``OT*otile`` filter slots (``otile`` in 1, 2, 4). Thread ``(x, y)`` computes output pixel
    ``blockIdx.x*PIX + x`` for the ``otile`` filters ``y*otile ..`` of the tile. The block first
    stages the tile's packed rows in dynamic shared memory (``slots*kh*kw*WG`` words) and the
    per-(filter, tap) weight popcounts after them (``slots*kh*kw`` words), so a tap costs one
    activation load and ``1 + otile`` popcounts per word and the weight count one add per
    tap. Counters are scalar registers (no local memory); the valid tap rectangle is computed
    once per pixel (no bounds tests in the loop); the only division is one ``uint32`` pixel
    split per thread.
    """
    buf = cuda.shared.array(0, dtype=_U64)
    out_h = y.shape[2]
    out_w = y.shape[3]
    row = wbits.shape[1]
    taps = kh * kw
    slots = cuda.blockDim.y * otile
    o0 = tiles[cuda.blockIdx.y, 0]
    nf = tiles[cuda.blockIdx.y, 1]
    g = tiles[cuda.blockIdx.y, 2]
    _stage_filters(buf, wbits, o0, nf, slots, row)
    pc0 = slots * row
    f = cuda.threadIdx.y
    while f < slots:
        tp = cuda.threadIdx.x
        while tp < taps:
            cnt = _U32_0
            if f < nf:
                for q in range(wg):
                    cnt += _popc(wbits[o0 + f, tp * wg + q])
            buf[pc0 + f * taps + tp] = np.uint64(cnt)
            tp += cuda.blockDim.x
        f += cuda.blockDim.y
    cuda.syncthreads()

    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if p >= out_h * out_w:
        return
    oi = np.int64(np.uint32(p) // np.uint32(out_w))
    oj = p - oi * out_w
    ki0, ki1 = _valid_range(oi, sh, ph, dh, kh, h_)
    kj0, kj1 = _valid_range(oj, sw, pw, dwl, kw, w_)
    big_n = (ki1 - ki0) * (kj1 - kj0) * cg
    f0 = cuda.threadIdx.y * otile
    nki = ki1 - ki0
    nkj = kj1 - kj0
    # weight popcounts over the valid tap rectangle: from the per-tap table, once per thread
    pb = pc0 + f0 * taps + ki0 * kw + kj0
    w0 = _U32_0
    w1 = _U32_0
    w2 = _U32_0
    w3 = _U32_0
    for ki in range(nki):
        for kj in range(nkj):
            t = pb + ki * kw + kj
            w0 = np.uint32(w0 + np.uint32(buf[t]))
            if otile > 1:
                w1 = np.uint32(w1 + np.uint32(buf[t + taps]))
                if otile > 2:
                    w2 = np.uint32(w2 + np.uint32(buf[t + 2 * taps]))
                    w3 = np.uint32(w3 + np.uint32(buf[t + 3 * taps]))
    # running offsets (unsigned: no negative-index wraparound in the address math)
    a_pix = np.uint64(((oi * sh - ph + ki0 * dh) * w_ + oj * sw - pw + kj0 * dwl) * words
                      + g * wg)
    a_img = np.uint64(h_ * w_ * words)
    a_ki = np.uint64(dh * w_ * words)
    a_kj = np.uint64(dwl * words)
    w_first = np.uint64(f0 * row + (ki0 * kw + kj0) * wg)
    w_ki = np.uint64(kw * wg)
    uwg = np.uint64(wg)
    urow = np.uint64(row)
    da = d_a[g]
    ca = c_a[g]
    n = cuda.blockIdx.z
    if n < y.shape[0]:
        a_cnt = _U32_0
        x0 = _U32_0
        x1 = _U32_0
        x2 = _U32_0
        x3 = _U32_0
        a_row = a_pix + np.uint64(n) * a_img
        w_row = w_first
        for _ki in range(nki):
            ai = a_row
            wi = w_row
            for _kj in range(nkj):
                for q in range(wg):
                    uq = np.uint64(q)
                    a = xbits[ai + uq]
                    wq = wi + uq
                    a_cnt = np.uint32(a_cnt + _popc(a))
                    x0 = np.uint32(x0 + _popc(a ^ buf[wq]))
                    if otile > 1:
                        x1 = np.uint32(x1 + _popc(a ^ buf[wq + urow]))
                        if otile > 2:
                            x2 = np.uint32(x2 + _popc(a ^ buf[wq + 2 * urow]))
                            x3 = np.uint32(x3 + _popc(a ^ buf[wq + 3 * urow]))
                ai += a_kj
                wi += uwg
            a_row += a_ki
            w_row += w_ki
        s_a = 2 * np.int64(a_cnt) - big_n
        if f0 < nf:
            o = o0 + f0
            y[n, o, oi, oj] = _popcount_output(da, ca, dw_[o], cw_[o], np.int64(x0), np.int64(w0), s_a, big_n)
        if otile > 1 and f0 + 1 < nf:
            o = o0 + f0 + 1
            y[n, o, oi, oj] = _popcount_output(da, ca, dw_[o], cw_[o], np.int64(x1), np.int64(w1), s_a, big_n)
        if otile > 2 and f0 + 2 < nf:
            o = o0 + f0 + 2
            y[n, o, oi, oj] = _popcount_output(da, ca, dw_[o], cw_[o], np.int64(x2), np.int64(w2), s_a, big_n)
        if otile > 2 and f0 + 3 < nf:
            o = o0 + f0 + 3
            y[n, o, oi, oj] = _popcount_output(da, ca, dw_[o], cw_[o], np.int64(x3), np.int64(w3), s_a, big_n)


@cuda.jit(cache=True, **_CONV_JIT)
def packed_conv_perchannel(xbits, wbits, tiles, dw_, cw_, g_seg, seg_q, seg_mask, seg_da,
                           seg_ca, h_, w_, words, wg, kh, kw, sh, sw, ph, pw, dh, dwl, y):
    r"""Bit-packed AdaBin convolution with per-channel activation sets, by *segments*.

    A segment ``s`` is a run of channels of one packed word (word ``q_s`` of its group,
    bit mask ``m_s``) that share the levels ``c_a[s] +- d_a[s]``; the host splits every word
    of every group into such runs (a scalar-per-group set is one segment per word; fully
    distinct sets are one per channel). Per segment, with ``|P|`` valid taps,
    ``N_s = popc(m_s) |P|`` and exact counts ``X_s = sum_P popc((a xor w) & m_s)``,
    ``A_s = sum_P popc(a & m_s)``, ``W_s = sum_P popc(w & m_s)``:

    .. math::
        y = d_w \sum_s d_a[s] (N_s - 2 X_s) + c_w \sum_s d_a[s] (2 A_s - N_s)
          + d_w \sum_s c_a[s] (2 W_s - N_s) + c_w \sum_s c_a[s] N_s

    (``reference.spec.packed_conv_formula`` summed by channel runs). ``g_seg``: ``int64
    (groups + 1,)``, the segments of group ``g`` are ``g_seg[g] .. g_seg[g+1]-1``; ``seg_q``
    ``int64 (S,)``; ``seg_mask`` ``uint64 (S,)``; ``seg_da``, ``seg_ca`` float64 ``(S,)``; ``tiles`` as for :func:`packed_conv_scalar` (one filter per thread).

    Geometry: grid ``(ceil(OH*OW/PIX), T, N)`` (batches of at most 65535 images), block
    ``(PIX, OT)``: thread
    ``(x, y)`` computes pixel ``blockIdx.x*PIX + x`` for filter ``y`` of the tile, whose rows the
    block stages in dynamic shared memory (``OT*kh*kw*WG`` words). Counters are registers.
    """
    buf = cuda.shared.array(0, dtype=_U64)
    out_h = y.shape[2]
    out_w = y.shape[3]
    row = wbits.shape[1]
    o0 = tiles[cuda.blockIdx.y, 0]
    nf = tiles[cuda.blockIdx.y, 1]
    g = tiles[cuda.blockIdx.y, 2]
    _stage_filters(buf, wbits, o0, nf, cuda.blockDim.y, row)
    cuda.syncthreads()

    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    f = cuda.threadIdx.y
    if p >= out_h * out_w or f >= nf:
        return
    oi = np.int64(np.uint32(p) // np.uint32(out_w))
    oj = p - oi * out_w
    ki0, ki1 = _valid_range(oi, sh, ph, dh, kh, h_)
    kj0, kj1 = _valid_range(oj, sw, pw, dwl, kw, w_)
    n_taps = (ki1 - ki0) * (kj1 - kj0)
    wrow = f * row
    xoff = g * wg
    ukj = np.uint64(dwl * words)
    uwg = np.uint64(wg)
    o = o0 + f
    s_first = g_seg[g]
    s_last = g_seg[g + 1]
    n = cuda.blockIdx.z
    if n < y.shape[0]:
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        t4 = 0.0
        for s in range(s_first, s_last):
            q = seg_q[s]
            m = seg_mask[s]
            xq = xoff + q
            wq = wrow + q
            xc = _U32_0
            ac = _U32_0
            wc = _U32_0
            for ki in range(ki0, ki1):
                ai = np.uint64(((n * h_ + oi * sh - ph + ki * dh) * w_ + oj * sw - pw
                                + kj0 * dwl) * words + xq)
                wi = np.uint64(wq + (ki * kw + kj0) * wg)
                for _kj in range(kj0, kj1):
                    a = xbits[ai] & m
                    b = buf[wi] & m
                    xc = np.uint32(xc + _popc(a ^ b))
                    ac = np.uint32(ac + _popc(a))
                    wc = np.uint32(wc + _popc(b))
                    ai += ukj
                    wi += uwg
            nv = np.int64(_popc(m)) * n_taps
            xc_ = np.int64(xc)
            ac_ = np.int64(ac)
            wc_ = np.int64(wc)
            da = seg_da[s]
            ca = seg_ca[s]
            t1 += da * (nv - 2 * xc_)
            t2 += da * (2 * ac_ - nv)
            t3 += ca * (2 * wc_ - nv)
            t4 += ca * nv
        y[n, o, oi, oj] = dw_[o] * t1 + cw_[o] * t2 + dw_[o] * t3 + cw_[o] * t4
