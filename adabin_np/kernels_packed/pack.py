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
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .microkernel import _popcount

__all__ = ["activation_thresholds", "pack_activations", "pack_activations_blocks",
           "weight_pack", "natural_kernel_weights", "pack_weight_layout", "weight_tap_popcounts",
           "pack_lastaxis", "unpack_lastaxis"]

_U64_ONE = np.uint64(1)
_U64_ZERO = np.uint64(0)
_I32_ONE = np.int32(1)
_I32_ZERO = np.int32(0)
_COUNT_SPAN = 1 << 30  # elements per int32 tie/finiteness count


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


_BLK = 64  # pixels per bit block of pack_activations_blocks (one uint64 mask per channel)
_SUB = 8  # elements per vector compare of _cmp_block


@intrinsic
def _cmp_block(typingctx, xf, off, th, te, md):
    """Masks of ``_BLK`` consecutive elements ``xf[off:off + _BLK]`` (float32 or float64; the
    caller guarantees they are in bounds): ``(bits, ties, bad)`` as uint64, bit ``i`` for
    element ``off + i`` -- ``bits``: ``x >= th`` (``md == 0``) or ``x <= th`` (``md == 1``),
    ordered comparisons (NaN -> 0); ``ties``: ``x == te``; ``bad``: ``x - x != 0`` (NaN or
    infinity). ``<8 x T>`` compares bitcast to ``i8``: LLVM's movemask (``vmovmskps`` on
    AVX2, mask registers on AVX-512), the bit-per-element form the block transpose of
    :func:`pack_activations_blocks` takes."""
    if not (isinstance(xf, types.Array) and xf.ndim == 1 and isinstance(xf.dtype, types.Float)
            and th == xf.dtype and te == xf.dtype and isinstance(off, types.Integer)
            and isinstance(md, types.Integer)):
        return None
    ret = types.UniTuple(types.uint64, 3)
    sig = ret(xf, off, th, te, md)

    def codegen(context, builder, signature, args):
        xf_, off_, th_, te_, md_ = args
        fty = context.get_value_type(signature.args[0].dtype)
        vty = ir.VectorType(fty, _SUB)
        data = _data(context, builder, signature.args[0], xf_)
        undef = ir.Constant(vty, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(_I32, _SUB), [0] * _SUB)

        def splat(val):
            return builder.shuffle_vector(builder.insert_element(undef, val, _I32(0)), undef,
                                          zeros)

        ths = splat(th_)
        tes = splat(te_)
        fzero = ir.Constant(vty, [0.0] * _SUB)
        is_ge = builder.icmp_signed("==", md_, ir.Constant(md_.type, 0))
        out = [_k64(0), _k64(0), _k64(0)]
        # _SUB elements per compare: an <_SUB x i1> -> i_SUB bitcast is one vmovmskps on AVX2
        # (a whole <64 x i1> bitcast is not: LLVM extracts its bits one by one there)
        for part in range(_BLK // _SUB):
            idx = builder.add(off_, ir.Constant(off_.type, part * _SUB))
            v = builder.load(builder.bitcast(builder.gep(data, [idx]), vty.as_pointer()))
            v.align = 8 if fty == _F64 else 4
            ge = builder.fcmp_ordered(">=", v, ths)
            le = builder.fcmp_ordered("<=", v, ths)
            masks = (builder.select(is_ge, ge, le), builder.fcmp_ordered("==", v, tes),
                     builder.fcmp_unordered("!=", builder.fsub(v, v), fzero))
            for i, mk in enumerate(masks):
                word = builder.zext(builder.bitcast(mk, ir.IntType(_SUB)), _I64)
                out[i] = builder.or_(out[i], builder.shl(word, _k64(part * _SUB)))
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen


@njit(cache=True, inline="always", error_model="numpy")
def _pack_tasks(n_, n_words, h_, h_chunk):
    """``(row chunks per plane, per-task tie counts, per-task non-finite counts)`` of the
    activation packs' tasks (image, word, chunk of ``h_chunk`` rows)."""
    n_hc = (h_ + h_chunk - 1) // h_chunk
    tasks = n_ * n_words * n_hc
    return n_hc, np.zeros(tasks, dtype=np.int64), np.zeros(tasks, dtype=np.int64)


@njit(cache=True, inline="always", error_model="numpy")
def _zero_pixels(xa, n_, hw):
    """Zero each image's extra pixel (row ``n*(hw + 1) + hw``) of the packed activations."""
    for n in range(n_):
        for q in range(xa.shape[1]):
            xa[n * (hw + 1) + hw, q] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _pack_task(task, n_hc, n_words, h_chunk, h_, w_):
    """Task ``task`` of the activation packs: ``(n, word q, first row h0, elements m)`` of its
    (image, word, chunk of ``h_chunk`` rows)."""
    hc = task % n_hc
    r = task // n_hc
    h0 = hc * h_chunk
    return r // n_words, r % n_words, h0, (min(h_, h0 + h_chunk) - h0) * w_


@njit(cache=True, parallel=True, error_model="numpy")
def pack_activations(x, mode, thr, tie, alpha, beta, word_ptr, word_chans, xa, h_chunk):
    """Binarize and pack NCHW ``x`` (float32 or float64) into NHWC words ``xa``
    ``(N*(H*W + 1), CW)``: image ``n``'s pixels at rows ``n*(H*W + 1) + h*W + w``, followed by
    one all-zero pixel (the microkernel's target for that image's padded taps, so the tap
    offsets are the same for every image).

    Word ``q`` of a pixel holds channels ``word_chans[word_ptr[q]:word_ptr[q+1]]`` at bits
    ``0, 1, ...`` (LSB-first); unused bits 0. Bit rule per channel from
    :func:`activation_thresholds`. ``prange`` over (n, word, chunk of ``h_chunk`` rows): a task
    streams each of its channels' planes once, ORs the bits into a cache-resident buffer and
    stores the words. Returns ``(ties, bad)``: elements with ``v == 0`` exactly, and non-finite
    elements (the caller raises on ``bad > 0``).
    """
    n_, c_, h_, w_ = x.shape
    n_words = xa.shape[1]
    n_hc, ties, bad = _pack_tasks(n_, n_words, h_, h_chunk)
    tasks = ties.shape[0]
    # one flat view, indexed with unsigned offsets: a per-channel plane view (x[n, c] reshaped
    # and sliced) cost ~60 ns of Numba's reshape helper and reference counting per channel,
    # which dominated small planes (512ch 7x7: 49 elements per channel); unsigned indices have
    # no negative-index wraparound, so the plane loops vectorise
    xf = x.reshape(x.size)
    for task in prange(tasks):
        n, q, h0, m = _pack_task(task, n_hc, n_words, h_chunk, h_, w_)
        buf = np.zeros(m, dtype=np.uint64)
        t_count = 0
        b_count = 0
        k0 = word_ptr[q]
        for k in range(k0, word_ptr[q + 1]):
            c = word_chans[k]
            one = _U64_ONE << np.uint64(k - k0)
            xb = np.uint64(((n * c_ + c) * h_ + h0) * w_)
            th = thr[c]
            te = tie[c]
            md = mode[c]
            # bits, ties and the finiteness count in one pass over the plane, counted in
            # int32 lanes (a plane chunk of up to 2**30 elements at a time; int64 counters cost
            # 512ch 7x7 a third of its packing time on AVX-512)
            for s0 in range(0, m, _COUNT_SPAN):
                sb = xb + np.uint64(s0)
                su = np.uint64(s0)
                sn = np.uint64(min(m - s0, _COUNT_SPAN))
                t32 = np.int32(0)
                b32 = np.int32(0)
                if md == 0:
                    for i in range(sn):
                        xv = xf[sb + i]
                        buf[su + i] |= one if xv >= th else _U64_ZERO
                        t32 += _I32_ONE if xv == te else _I32_ZERO
                        b32 += _I32_ZERO if xv - xv == 0 else _I32_ONE
                elif md == 1:
                    for i in range(sn):
                        xv = xf[sb + i]
                        buf[su + i] |= one if xv <= th else _U64_ZERO
                        t32 += _I32_ONE if xv == te else _I32_ZERO
                        b32 += _I32_ZERO if xv - xv == 0 else _I32_ONE
                else:
                    a = alpha[c]
                    b = beta[c]
                    for i in range(sn):
                        xv = xf[sb + i]
                        v = (np.float64(xv) - b) / a
                        buf[su + i] |= one if v >= 0.0 else _U64_ZERO
                        t32 += _I32_ONE if v == 0.0 else _I32_ZERO
                        b32 += _I32_ZERO if xv - xv == 0 else _I32_ONE
                t_count += t32
                b_count += b32
        base = n * (h_ * w_ + 1) + h0 * w_
        for i in range(m):
            xa[base + i, q] = buf[i]
        ties[task] = t_count
        bad[task] = b_count
    _zero_pixels(xa, n_, h_ * w_)
    return ties.sum(), bad.sum()


@njit(cache=True, parallel=True, error_model="numpy")
def pack_activations_blocks(x, mode, thr, tie, alpha, beta, word_ptr, word_chans, xa, h_chunk):
    """:func:`pack_activations` (same arguments, same result) in bit blocks, for AVX2 targets:
    ``prange`` over (n, word, chunk of ``h_chunk`` rows); a task streams each of its channels'
    planes once, turning every ``_BLK`` elements into one
    bit mask per channel (:func:`_cmp_block`: bit ``i`` = pixel ``i``, ties and non-finite
    elements counted from masks of the same compare), then transposes each ``64 x _BLK``
    bit block (channel-major masks -> one word per pixel, channel ``k`` at bit ``k``) and
    stores the words. Elements past the plane's last full block that would read past the end
    of ``x``, and channels that divide in float64 (mode 2), take a scalar loop. Returns
    ``(ties, bad)`` like :func:`pack_activations`. Measured on Zen 5, 64ch 56x56 batch 8, 2
    threads: compiled for AVX2 0.20 -> 0.14 ms (the per-channel read-modify-write of a 64-bit
    word per element is what AVX2 pays for), compiled for AVX-512 0.085 -> 0.10-0.14 ms
    (there the read-modify-write loop vectorises into mask registers and wins), hence
    :func:`select_activation_pack`.
    """
    n_, c_, h_, w_ = x.shape
    n_words = xa.shape[1]
    n_hc, ties, bad = _pack_tasks(n_, n_words, h_, h_chunk)
    tasks = ties.shape[0]
    xf = x.reshape(x.size)
    size = x.size
    for task in prange(tasks):
        n, q, h0, m = _pack_task(task, n_hc, n_words, h_chunk, h_, w_)
        nblk = (m + _BLK - 1) // _BLK
        masks = np.zeros((64, nblk), dtype=np.uint64)  # masks[k, b]: bit i = pixel b*_BLK + i
        t_count = 0
        b_count = 0
        k0 = word_ptr[q]
        for k in range(k0, word_ptr[q + 1]):
            c = word_chans[k]
            kk = k - k0
            xb = ((n * c_ + c) * h_ + h0) * w_
            th = thr[c]
            te = tie[c]
            md = mode[c]
            for b in range(nblk):
                p0 = b * _BLK
                nb = min(_BLK, m - p0)
                if md != 2 and xb + p0 + _BLK <= size:
                    bits, tm, bm = _cmp_block(xf, xb + p0, th, te, md)
                    if nb < _BLK:  # the block read into the next plane: count this one's
                        # elements only (bits past nb belong to pixels that are never stored)
                        keep = (_U64_ONE << np.uint64(nb)) - _U64_ONE
                        tm &= keep
                        bm &= keep
                    masks[kk, b] = bits
                    t_count += _popcount(tm)
                    b_count += _popcount(bm)
                    continue
                bits = _U64_ZERO
                for i in range(nb):
                    xv = xf[xb + p0 + i]
                    if md == 0:
                        bit = xv >= th
                        tv = xv == te
                    elif md == 1:
                        bit = xv <= th
                        tv = xv == te
                    else:
                        v = (np.float64(xv) - beta[c]) / alpha[c]
                        bit = v >= 0.0
                        tv = v == 0.0
                    bits |= (_U64_ONE if bit else _U64_ZERO) << np.uint64(i)
                    t_count += 1 if tv else 0
                    b_count += 0 if xv - xv == 0 else 1
                masks[kk, b] = bits
        # 64 x 64 bit transpose per block (recursive halving: swap the off-diagonal j x j
        # sub-blocks for j = 32, 16, ..., 1), then one word per pixel
        a = np.empty(64, dtype=np.uint64)
        base = n * (h_ * w_ + 1) + h0 * w_
        for b in range(nblk):
            for k in range(64):
                a[k] = masks[k, b]
            j = 32
            sel = np.uint64(0x00000000FFFFFFFF)
            while j != 0:
                ju = np.uint64(j)
                k = 0
                while k < 64:
                    t = ((a[k] >> ju) ^ a[k + j]) & sel
                    a[k + j] ^= t
                    a[k] ^= t << ju
                    k = (k + j + 1) & ~j
                j >>= 1
                sel ^= sel << np.uint64(j)
            p0 = b * _BLK
            for i in range(min(_BLK, m - p0)):
                xa[base + p0 + i, q] = a[i]
        ties[task] = t_count
        bad[task] = b_count
    _zero_pixels(xa, n_, h_ * w_)
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


# ----------------------------------------------------------------------------------------------
# weight_pack: rows in SIMD lanes
# ----------------------------------------------------------------------------------------------
#
# A block of _LANES output channels (rows of w2) is processed together, one row per lane of an
# LLVM ``<_LANES x double>`` vector, so each lane's sum is still the sequential float64 sum in
# index order of its own row (IEEE arithmetic is lane-wise; no fast-math flag is set on any
# floating-point instruction, so LLVM neither reassociates nor contracts to FMA). The IR is
# plain target-independent vector IR (LLVM legalises it to zmm, ymm or xmm registers), like
# :mod:`.microkernel`.

_LANES = 8  # rows per block = lanes per vector; also the bit width of one mask byte
_TK = 8  # columns transposed per step of _lane_load

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F64 = ir.DoubleType()
_VF64 = ir.VectorType(_F64, _LANES)
_VI64 = ir.VectorType(_I64, _LANES)
_MASK = ir.IntType(_LANES)


def _k64(v):
    return ir.Constant(_I64, v)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _align(vty):
    """Alignment of a vector access: that of one element."""
    el = vty.element
    return 8 if el == _F64 else 4 if isinstance(el, ir.FloatType) else max(1, el.width // 8)


def _vload(builder, ptr, idx, vty):
    ld = builder.load(builder.bitcast(builder.gep(ptr, [idx]), vty.as_pointer()))
    ld.align = _align(vty)
    return ld


def _vstore(builder, val, ptr, idx):
    st = builder.store(val, builder.bitcast(builder.gep(ptr, [idx]), val.type.as_pointer()))
    st.align = _align(val.type)


def _lane_vec(context, builder, ty, val):
    """The ``<_LANES x double>`` held by a 1-D float64 lane array."""
    return _vload(builder, _data(context, builder, ty, val), _k64(0), _VF64)


def _scaled(builder, v, f1, f2):
    """``(float64(v) * f1) * f2`` lane-wise: the power-of-two row scaling."""
    if v.type.element != _F64:
        v = builder.fpext(v, _VF64)
    return builder.fmul(builder.fmul(v, f1), f2)


def _is_float_array(t, ndim):
    return (isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C"
            and t.dtype in (types.float32, types.float64))


def _is_lane_array(t, dtype=types.float64):
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype


@intrinsic
def _lane_load(typingctx, w2, o0, wt, lo, hi, s):
    """Transpose rows ``o0 .. o0+_LANES-1`` of ``w2`` ``(O, n)`` (rows past ``O-1`` repeat row
    ``O-1``) into ``wt[j*_LANES + r]`` (``w2``'s dtype); ``lo``/``hi``: each lane's minimum and
    maximum (float64; order-independent). For float32 ``w2`` also ``s``: each lane's sequential
    float64 sum of the unscaled row, and returns True; float64: returns False, ``s`` untouched."""
    if not (_is_float_array(w2, 2) and _is_lane_array(wt, w2.dtype)
            and all(_is_lane_array(t) for t in (lo, hi, s))):
        return None
    sig = types.boolean(w2, types.int64, wt, lo, hi, s)

    def codegen(context, builder, signature, args):
        w2_, o0_, wt_, lo_, hi_, s_ = args
        ty = signature.args
        et = context.get_value_type(ty[0].dtype)
        fused = et != _F64
        arr = context.make_array(ty[0])(context, builder, w2_)
        o_ = builder.extract_value(arr.shape, 0)
        n = builder.extract_value(arr.shape, 1)
        dp = _data(context, builder, ty[2], wt_)
        evt = ir.VectorType(et, _LANES)
        lacc = cgutils.alloca_once(builder, evt)
        hacc = cgutils.alloca_once(builder, evt)
        sacc = cgutils.alloca_once(builder, _VF64)
        builder.store(ir.Constant(evt, [math.inf] * _LANES), lacc)
        builder.store(ir.Constant(evt, [-math.inf] * _LANES), hacc)
        builder.store(ir.Constant(_VF64, [0.0] * _LANES), sacc)
        last = builder.sub(o_, _k64(1))
        rows = []
        for r in range(_LANES):
            rr = builder.add(o0_, _k64(r))
            rr = builder.select(builder.icmp_signed("<", rr, last), rr, last)
            rows.append(builder.gep(arr.data, [builder.mul(rr, n)]))

        def column(v):  # v: the _LANES rows' elements at one column j, in j order
            a = builder.load(lacc)
            builder.store(builder.select(builder.fcmp_ordered("<", v, a), v, a), lacc)
            b = builder.load(hacc)
            builder.store(builder.select(builder.fcmp_ordered(">", v, b), v, b), hacc)
            if fused:
                builder.store(builder.fadd(builder.load(sacc), builder.fpext(v, _VF64)), sacc)

        nk = builder.sdiv(n, _k64(_TK))
        with cgutils.for_range(builder, nk) as loop:
            j = builder.mul(loop.index, _k64(_TK))
            vecs = [_vload(builder, rows[r], j, ir.VectorType(et, _TK)) for r in range(_LANES)]
            # log2(_LANES) interleave stages: [a0 b0 a1 b1 ..], then pairs, quads, ...
            width, group = _TK, 1
            while len(vecs) > 1:
                mask = []
                for k in range(_TK):
                    mask += [k * group + g for g in range(group)]
                    mask += [width + k * group + g for g in range(group)]
                mask = ir.Constant(ir.VectorType(_I32, 2 * width), mask)
                vecs = [builder.shuffle_vector(vecs[p], vecs[p + 1], mask)
                        for p in range(0, len(vecs), 2)]
                width, group = 2 * width, 2 * group
            out = vecs[0]  # columns j .. j+_TK-1, each _LANES rows
            _vstore(builder, out, dp, builder.mul(j, _k64(_LANES)))
            for k in range(_TK):
                column(builder.shuffle_vector(out, out, ir.Constant(
                    ir.VectorType(_I32, _LANES), list(range(k * _LANES, (k + 1) * _LANES)))))
        j0 = builder.mul(nk, _k64(_TK))
        with cgutils.for_range(builder, builder.sub(n, j0)) as loop:
            j = builder.add(j0, loop.index)
            v = ir.Constant(evt, ir.Undefined)
            for r in range(_LANES):
                v = builder.insert_element(v, builder.load(builder.gep(rows[r], [j])),
                                           ir.Constant(_I32, r))
            _vstore(builder, v, dp, builder.mul(j, _k64(_LANES)))
            column(v)
        lv = builder.load(lacc)
        hv = builder.load(hacc)
        if fused:
            lv = builder.fpext(lv, _VF64)
            hv = builder.fpext(hv, _VF64)
        _vstore(builder, lv, _data(context, builder, ty[3], lo_), _k64(0))
        _vstore(builder, hv, _data(context, builder, ty[4], hi_), _k64(0))
        if fused:
            _vstore(builder, builder.load(sacc), _data(context, builder, ty[5], s_), _k64(0))
        return ir.Constant(_I1, 1 if fused else 0)

    return sig, codegen


@intrinsic
def _lane_sum(typingctx, wt, f1, f2, s):
    """``s``: each lane's sequential float64 sum of its scaled column values
    ``(wt[j*_LANES + r] * f1[r]) * f2[r]``, ``j = 0, 1, ...`` (float64 ``w2``)."""
    if not (_is_float_array(wt, 1) and all(_is_lane_array(t) for t in (f1, f2, s))):
        return None
    sig = types.void(wt, f1, f2, s)

    def codegen(context, builder, signature, args):
        wt_, f1_, f2_, s_ = args
        ty = signature.args
        evt = ir.VectorType(context.get_value_type(ty[0].dtype), _LANES)
        wa = context.make_array(ty[0])(context, builder, wt_)
        n = builder.sdiv(builder.extract_value(wa.shape, 0), _k64(_LANES))
        f1v = _lane_vec(context, builder, ty[1], f1_)
        f2v = _lane_vec(context, builder, ty[2], f2_)
        acc = cgutils.alloca_once(builder, _VF64)
        builder.store(ir.Constant(_VF64, [0.0] * _LANES), acc)
        with cgutils.for_range(builder, n) as loop:
            v = _scaled(builder, _vload(builder, wa.data, builder.mul(loop.index, _k64(_LANES)),
                                        evt), f1v, f2v)
            builder.store(builder.fadd(builder.load(acc), v), acc)
        _vstore(builder, builder.load(acc), _data(context, builder, ty[3], s_), _k64(0))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lane_squares_signs(typingctx, wt, cg, taps, f1, f2, m, cr, msk, ss, ties):
    """One pass over the scaled columns ``v`` (``j = c*taps + t`` in order): ``ss``: each lane's
    sequential sum of ``((v - m)/cr)**2``; ``msk[t*CP + c]`` (``CP = len(msk) // taps``): byte
    whose bit ``r`` is ``v >= m[r]``; ``ties``: each lane's count of ``v == m``."""
    if not (_is_float_array(wt, 1) and all(_is_lane_array(t) for t in (f1, f2, m, cr, ss))
            and _is_lane_array(msk, types.uint8) and _is_lane_array(ties, types.int64)):
        return None
    sig = types.void(wt, types.int64, types.int64, f1, f2, m, cr, msk, ss, ties)

    def codegen(context, builder, signature, args):
        wt_, cg_, taps_, f1_, f2_, m_, cr_, msk_, ss_, ties_ = args
        ty = signature.args
        evt = ir.VectorType(context.get_value_type(ty[0].dtype), _LANES)
        wp = _data(context, builder, ty[0], wt_)
        f1v = _lane_vec(context, builder, ty[3], f1_)
        f2v = _lane_vec(context, builder, ty[4], f2_)
        mv = _lane_vec(context, builder, ty[5], m_)
        cv = _lane_vec(context, builder, ty[6], cr_)
        ma = context.make_array(ty[7])(context, builder, msk_)
        cp = builder.sdiv(builder.extract_value(ma.shape, 0), taps_)
        mp = builder.bitcast(ma.data, _MASK.as_pointer())
        sacc = cgutils.alloca_once(builder, _VF64)
        tacc = cgutils.alloca_once(builder, _VI64)
        builder.store(ir.Constant(_VF64, [0.0] * _LANES), sacc)
        builder.store(ir.Constant(_VI64, [0] * _LANES), tacc)
        with cgutils.for_range(builder, cg_) as lc:
            c = lc.index
            j0 = builder.mul(c, taps_)
            with cgutils.for_range(builder, taps_) as lt:
                t = lt.index
                j = builder.add(j0, t)
                v = _scaled(builder, _vload(builder, wp, builder.mul(j, _k64(_LANES)), evt),
                            f1v, f2v)
                d = builder.fdiv(builder.fsub(v, mv), cv)
                builder.store(builder.fadd(builder.load(sacc), builder.fmul(d, d)), sacc)
                ge = builder.bitcast(builder.fcmp_ordered(">=", v, mv), _MASK)
                builder.store(ge, builder.gep(mp, [builder.add(builder.mul(t, cp), c)]))
                eq = builder.zext(builder.fcmp_ordered("==", v, mv), _VI64)
                builder.store(builder.add(builder.load(tacc), eq), tacc)
        _vstore(builder, builder.load(sacc), _data(context, builder, ty[8], ss_), _k64(0))
        _vstore(builder, builder.load(tacc), _data(context, builder, ty[9], ties_), _k64(0))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lane_words(typingctx, msk, r, words, o):
    """``words[o, t, q]`` (all ``t``, ``q``) = bit ``r`` of the 64 mask bytes
    ``msk[t*CP + 64*q ..]`` (``CP = 64 * words.shape[2]``), bit ``b`` from byte ``b``."""
    if not (_is_lane_array(msk, types.uint8) and isinstance(words, types.Array)
            and words.ndim == 3 and words.layout == "C" and words.dtype == types.uint64):
        return None
    sig = types.void(msk, types.int64, words, types.int64)

    def codegen(context, builder, signature, args):
        msk_, r_, words_, o_ = args
        ty = signature.args
        mp = _data(context, builder, ty[0], msk_)
        wa = context.make_array(ty[2])(context, builder, words_)
        taps = builder.extract_value(wa.shape, 1)
        nw = builder.extract_value(wa.shape, 2)
        vt = ir.VectorType(_MASK, 64)
        bit = builder.shl(ir.Constant(_MASK, 1), builder.trunc(r_, _MASK))
        sel = builder.insert_element(ir.Constant(vt, ir.Undefined), bit, ir.Constant(_I32, 0))
        sel = builder.shuffle_vector(sel, ir.Constant(vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(_I32, 64), [0] * 64))
        zero = ir.Constant(vt, [0] * 64)
        base = builder.mul(builder.mul(o_, taps), nw)
        with cgutils.for_range(builder, builder.mul(taps, nw)) as loop:
            k = loop.index  # = t*nw + q, and the mask bytes start at t*CP + 64*q = 64*k
            v = _vload(builder, mp, builder.mul(k, _k64(64)), vt)
            bits = builder.icmp_unsigned("!=", builder.and_(v, sel), zero)
            builder.store(builder.bitcast(bits, _I64), builder.gep(wa.data, [builder.add(base, k)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, parallel=True, error_model="numpy")
def weight_pack(w2, cg, taps, n_words):
    r"""Weight binary set and packed signs of ``w2`` ``(O, Cg*taps)``, bit-identical to
    :func:`adabin_np.binarize.weight_binary_set` and the float path's signs.

    The float path: each row is scaled by the power of two ``2**-e`` that brings its largest
    magnitude into ``[0.5, 1)`` (:func:`~adabin_np.binarize.pow2_row_scale`:
    ``W_s = ldexp(W, -e)``, rounded only where an element underflows), then
    :func:`adabin_np.kernels_cpu.weight_stats` computes on ``W_s``: ``m`` = sequential float64
    sum in index order ``/ n``; constant row: ``beta_s = W_s[0]``, ``alpha_s = 0``; else
    ``beta_s = m``, ``scale = max|W_s - m|``, ``ss`` = sequential sum of
    ``((W_s - m)/scale)**2``, ``alpha_s = scale*sqrt(ss/n)``; returned scaled back by ``2**e``.

    Here ``_LANES`` = 8 rows at a time (``prange`` over groups of such blocks), one row per lane
    of LLVM vector IR, each lane's sums sequential in index order as above:

    1. :func:`_lane_load` transposes the block to ``wt[j, r]`` (``w2``'s dtype) and takes each
       row's min and max (order-independent). ``e`` from ``max(hi, -lo)`` (``= max|W|``).
       float32 ``w2``: the same pass sums the unscaled row in float64 sequentially; this is
       exactly ``2**e`` times the sum of ``W_s``: float32 inputs are multiples of ``2**-149``
       and ``-148 <= e <= 128``, so the scaled elements and every exact partial sum
       ``2**-e*(P + w)`` are zero or normal doubles (``>= 2**-277``) and nothing overflows --
       rounding commutes with the power-of-two scale at every step. float64 ``w2``: no such
       guarantee (1e300 rows overflow, 1e-300 elements of a 1e300 row underflow), so
       :func:`_lane_sum` sums the scaled ``W_s`` in a separate pass.
    2. Per row: the scaled min/max ``lo_s``/``hi_s`` (scaling is monotone, so they are the
       min/max of ``W_s``); constant iff ``lo_s == hi_s`` and the sum is not NaN (a NaN
       escapes min/max but not the sum; -0.0 == 0.0 as in ``weight_stats``'s ``!=`` test);
       ``scale = max(hi_s - m, m - lo_s)``: ``W_s -> fl(W_s - m)`` is monotone, so
       ``max |fl(W_s - m)|`` is attained at ``lo_s`` or ``hi_s`` (``fl(m - lo_s) =
       -fl(lo_s - m)``), whatever side of the range ``m`` falls on.
    3. :func:`_lane_squares_signs`: one pass over the scaled columns computing ``ss``
       (division, square, sequential add: the float path's operations), the sign bytes
       ``W_s >= beta_s`` (bit ``r`` of byte ``(t, c)``; on a scaled row ``0 < alpha_s < 2``,
       so a non-zero difference never divides to zero and ``u >= 0`` iff ``W_s >= beta_s``,
       ``u == 0`` iff ``W_s == beta_s``: no division needed) and the tie counts.
    4. :func:`_lane_words`: word ``(t, q)`` of row ``r`` is bit ``r`` of 64 sign bytes, one
       vector ``and`` + compare to a 64-bit mask. A row with ``alpha_s == 0`` packs all ones.

    Packed as ``words[o, t, q]`` (bit ``b`` = input channel ``64*q + b`` at tap ``t``; tail
    bits 0). Returns ``(alpha, beta, words, ties)``; ``ties`` counts ``u == 0`` in non-constant
    rows. ``w2`` float32 or float64. Non-finite input gives a non-finite ``beta`` (NaN or an
    infinity reaches the sum); the caller checks for that.
    """
    w2 = np.ascontiguousarray(w2)
    o_, n_ = w2.shape
    if cg < 1 or taps < 1 or n_ != cg * taps or n_words * 64 < cg:
        raise ValueError("weight_pack: w2 must have cg*taps columns and n_words*64 >= cg >= 1")
    L = _LANES
    alpha = np.empty(o_)
    beta = np.empty(o_)
    words = np.empty((o_, taps, n_words), dtype=np.uint64)
    nb = (o_ + L - 1) // L
    # up to 64 tasks (get_num_threads() would make the function uncacheable); a task reuses
    # its buffers over its run of blocks
    n_tasks = min(nb, 64)
    ties = np.zeros(max(n_tasks, 1), dtype=np.int64)
    for task in prange(n_tasks):
        wt = np.empty(n_ * L, dtype=w2.dtype)
        msk = np.zeros(taps * n_words * 64, dtype=np.uint8)  # bytes past cg stay 0 (tail bits)
        lane = np.empty((8, L))
        lo, hi, s, f1, f2, m, cr, ss = lane[0], lane[1], lane[2], lane[3], lane[4], lane[5], \
            lane[6], lane[7]
        ex = np.empty(L, dtype=np.int64)
        tl = np.empty(L, dtype=np.int64)
        const = np.empty(L, dtype=np.bool_)
        t_count = 0
        for blk in range(task * nb // n_tasks, (task + 1) * nb // n_tasks):
            o0 = blk * L
            fused = _lane_load(w2, o0, wt, lo, hi, s)
            for r in range(L):
                e = math.frexp(max(hi[r], -lo[r]))[1]
                ex[r] = e
                f1[r], f2[r] = _pow2_factors(-e)
            if fused:
                for r in range(L):
                    s[r] = (s[r] * f1[r]) * f2[r]
            else:
                _lane_sum(wt, f1, f2, s)
            for r in range(L):
                m[r] = s[r] / n_
                lo_s = (lo[r] * f1[r]) * f2[r]
                hi_s = (hi[r] * f1[r]) * f2[r]
                const[r] = lo_s == hi_s and s[r] == s[r]
                sc = max(hi_s - m[r], m[r] - lo_s)
                cr[r] = sc if sc > 0.0 else 1.0
            _lane_squares_signs(wt, cg, taps, f1, f2, m, cr, msk, ss, tl)
            for r in range(min(L, o_ - o0)):
                o = o0 + r
                if const[r]:
                    a_s = 0.0
                    b_s = (np.float64(wt[r]) * f1[r]) * f2[r]
                else:
                    b_s = m[r]
                    a_s = cr[r] * math.sqrt(ss[r] / n_)
                g1, g2 = _pow2_factors(ex[r])
                alpha[o] = (a_s * g1) * g2
                beta[o] = (b_s * g1) * g2
                if a_s == 0.0:
                    for q in range(n_words):
                        k = min(64, max(0, cg - q * 64))
                        word = ~_U64_ZERO if k == 64 else (_U64_ONE << np.uint64(k)) - _U64_ONE
                        for t in range(taps):
                            words[o, t, q] = word
                else:
                    t_count += tl[r]
                    _lane_words(msk, r, words, o)
        ties[task] = t_count
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


@njit(cache=True, parallel=True, error_model="numpy")
def weight_tap_popcounts(wtb, seg_w0, seg_w1, seg_group, g_w0, wgm, og, taps):
    """``pcw[s, t, j]``: popcount of output channel ``j`` (of segment ``s``'s group) at tap
    ``t`` over the words of segment ``s`` (the number of ``s_w = +1`` bits there). Parallel
    over (segment, tap); each reads its weight rows block by block, contiguously."""
    j_block = wtb.shape[2]
    n_blk = wtb.shape[0] // g_w0.shape[0]
    n_seg = seg_w0.shape[0]
    pcw = np.zeros((n_seg, taps, og), dtype=np.int64)
    for st in prange(n_seg * taps):
        s = st // taps
        t = st % taps
        g = seg_group[s]
        for q in range(seg_w0[s], seg_w1[s]):
            row = t * wgm + q - g_w0[g]
            for b in range(n_blk):
                j0 = b * j_block
                for jj in range(min(j_block, og - j0)):
                    pcw[s, t, j0 + jj] += _popcount(wtb[g * n_blk + b, row, jj])
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
