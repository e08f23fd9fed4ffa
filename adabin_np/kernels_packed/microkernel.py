r"""Register-blocked XOR+popcount microkernels, emitted as LLVM vector IR.

One tile computes, for ``P`` output pixels and ``J`` output channels (one weight block),

.. math::
    X[p, j] = \sum_{t < T} \sum_{q_0 \le q < q_0 + n_q}
              \mathrm{popc}\big(a[\mathrm{off}[t P + p] + q] \oplus w[(t\,W_g + q) J + j]\big)

(``T`` taps, ``W_g`` words per tap in the weight block). The ``P x J/V`` accumulators are
``<V x i64>`` values that stay in vector registers over the whole reduction (LLVM's mem2reg
turns their entry-block allocas into SSA values); per word, ``J/V`` weight vectors are loaded
once and each of the ``P`` activation words is broadcast once, so one load feeds ``P`` (weights)
or ``J/V`` (activations) XOR+popcount+add vector operations -- the register blocking of
Larq Compute Engine's / daBNN's bgemm kernels. ``llvm.ctpop.v<V>i64`` becomes ``vpopcntq`` on
AVX-512 VPOPCNTDQ and LLVM's ``vpshufb`` nibble-lookup + ``vpsadbw`` sequence on AVX2; the IR
is valid for any x86-64 target (LLVM legalises the vector width), so every tile is correct on
every CPU and :mod:`.select_kernel` only picks the fastest for the target.

Tiles (file-level names state the register block, as in LCE's ``kernel_4x2_portable.h``):

* :func:`tile_6x32_avx512`: ``P = 6`` pixels x ``J = 32`` channels = 24 ``zmm`` accumulators
  (``<8 x i64>``), 4 weight vectors and a broadcast: 29 of 32 ``zmm`` registers.
* :func:`tile_4x8_avx2`: ``P = 4`` x ``J = 8`` = 8 ``ymm`` accumulators (``<4 x i64>``), 2
  weight vectors, and the popcount lookup constants within 16 ``ymm`` registers.

Call signature (all int64 scalars; arrays are 1-D C-contiguous, no bounds checks: the caller,
:func:`adabin_np.kernels_packed.conv.bconv_forward`, guarantees every index is in range)::

    tile(xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase, xstride, aout,
         abase)
        xa   uint64 activations, offs int64: offs[obase + t*ostride + p] = word offset of
             pixel p at tap t (tap-major rows of pixels: the caller fills them with
             contiguous, vectorised stores)
        wb   uint64 weights, block starting at wbase, laid out [t][wgm][J]
        xout int32, X[p, j] written to xout[xbase + j*xstride + p] (channel-major: the
             epilogue reads contiguous pixel runs per channel); xout[xbase + j*xstride + p]
             for P <= p < V is overwritten too (V = vector lanes), so rows need V - P
             entries of padding past the last tile and tiles run in increasing pixel order
        aout int64, A[p] = sum popc(a) over the same words written to aout[abase + p]
             (the activation popcount of SPEC section 4, one scalar popcnt per word)
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

__all__ = ["TILES", "popcount64", "tile_6x32_avx512", "tile_4x8_avx2", "tile_6x32_avx512_w1",
           "tile_4x8_avx2_w1"]


def _make_tile(P, n_vec, lanes, single_word=False):
    """Build the intrinsic for a ``P x (n_vec*lanes)`` register block of ``<lanes x i64>``;
    ``single_word=True``: a variant for ``nq == 1`` (one word per tap, <= 64 channels per
    segment) without the word loop, whose per-tap overhead is then a third of the work."""
    J = n_vec * lanes
    if P > lanes:
        raise ValueError("the channel-major store transposes P x lanes blocks: P <= lanes")

    @intrinsic
    def tile(typingctx, xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase,
             xstride, aout, abase):
        for arr, dt in ((xa, types.uint64), (offs, types.int64), (wb, types.uint64),
                        (xout, types.int32), (aout, types.int64)):
            if not isinstance(arr, types.Array) or arr.dtype != dt or arr.ndim != 1:
                return None
        i64t = types.int64
        sig = types.void(xa, offs, i64t, i64t, wb, i64t, i64t, i64t, i64t, i64t, xout, i64t, i64t,
                         aout, i64t)

        def codegen(context, builder, signature, args):
            (xa_, offs_, obase_, ostride_, wb_, wbase_, taps_, wgm_, q0_, nq_, xout_, xbase_,
             xstride_, aout_, abase_) = args
            ty = signature.args
            xp = context.make_array(ty[0])(context, builder, xa_).data
            op = context.make_array(ty[1])(context, builder, offs_).data
            wp = context.make_array(ty[4])(context, builder, wb_).data
            outp = context.make_array(ty[10])(context, builder, xout_).data
            aoutp = context.make_array(ty[13])(context, builder, aout_).data
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            vty = ir.VectorType(i64, lanes)
            vptr = vty.as_pointer()
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                                   f"llvm.ctpop.v{lanes}i64")
            c = lambda v: ir.Constant(i64, v)  # noqa: E731
            accs = [[cgutils.alloca_once(builder, vty) for _ in range(n_vec)] for _ in range(P)]
            aacc = [cgutils.alloca_once(builder, i64) for _ in range(P)]
            for acc in aacc:
                builder.store(c(0), acc)
            zero = ir.Constant(vty, [0] * lanes)
            for row in accs:
                for acc in row:
                    builder.store(zero, acc)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            undef = ir.Constant(vty, ir.Undefined)
            with cgutils.for_range(builder, taps_) as lt:
                t = lt.index
                bases = []
                for p in range(P):
                    idx = builder.add(obase_, builder.add(builder.mul(t, ostride_), c(p)))
                    bases.append(builder.add(builder.load(builder.gep(op, [idx])), q0_))
                wrow0 = builder.add(builder.mul(t, wgm_), q0_)
                def word(q):
                    wo = builder.add(wbase_, builder.mul(builder.add(wrow0, q), c(J)))
                    ws = []
                    for v in range(n_vec):
                        ptr = builder.bitcast(builder.gep(wp, [builder.add(wo, c(v * lanes))]),
                                              vptr)
                        ld = builder.load(ptr)
                        ld.align = 8
                        ws.append(ld)
                    for p in range(P):
                        a = builder.load(builder.gep(xp, [builder.add(bases[p], q)]))
                        builder.store(builder.add(builder.load(aacc[p]), builder.ctpop(a)),
                                      aacc[p])
                        av = builder.insert_element(undef, a, ir.Constant(i32, 0))
                        av = builder.shuffle_vector(av, undef, splat)
                        for v in range(n_vec):
                            pc = builder.call(ctpop, [builder.xor(av, ws[v])])
                            builder.store(builder.add(builder.load(accs[p][v]), pc), accs[p][v])

                if single_word:  # nq == 1: no word loop at all
                    word(c(0))
                else:
                    with cgutils.for_range(builder, nq_) as lq:
                        word(lq.index)
            for p in range(P):
                builder.store(builder.load(aacc[p]),
                              builder.gep(aoutp, [builder.add(abase_, c(p))]))
            # channel-major int32 store: narrow the counts (< 2**31, the caller checks), transpose
            # each P x lanes block in registers (pixels padded to ``lanes`` with zeros;
            # log2(lanes) butterfly stages, each swapping one bit of the pixel index with the
            # same bit of the lane index), then one vector store of ``lanes`` pixels per
            # channel at xout[xbase + j*xstride + p]. Lanes past P land on the next tile's
            # first pixels (overwritten by it) or in the row padding.
            v32 = ir.VectorType(i32, lanes)
            zero32 = ir.Constant(v32, [0] * lanes)
            for v in range(n_vec):
                rows = ([builder.trunc(builder.load(accs[p][v]), v32) for p in range(P)]
                        + [zero32] * (lanes - P))
                bit = 1
                while bit < lanes:
                    new = list(rows)
                    for i in range(lanes):
                        if i & bit:
                            continue
                        j = i | bit
                        lo = [cc if not cc & bit else lanes + (cc ^ bit) for cc in range(lanes)]
                        hi = [cc | bit if not cc & bit else lanes + cc for cc in range(lanes)]
                        new[i] = builder.shuffle_vector(rows[i], rows[j], ir.Constant(
                            ir.VectorType(i32, lanes), lo))
                        new[j] = builder.shuffle_vector(rows[i], rows[j], ir.Constant(
                            ir.VectorType(i32, lanes), hi))
                    rows = new
                    bit <<= 1
                for cc in range(lanes):
                    idx = builder.add(xbase_, builder.mul(c(v * lanes + cc), xstride_))
                    ptr = builder.bitcast(builder.gep(outp, [idx]), v32.as_pointer())
                    st = builder.store(rows[cc], ptr)
                    st.align = 4
            return context.get_dummy_value()

        return sig, codegen

    tile.P = P
    tile.J = J
    return tile


tile_6x32_avx512 = _make_tile(6, 4, 8)
tile_4x8_avx2 = _make_tile(4, 2, 4)
tile_6x32_avx512_w1 = _make_tile(6, 4, 8, single_word=True)
tile_4x8_avx2_w1 = _make_tile(4, 2, 4, single_word=True)

#: variant id -> (name, P, J); the id is what :func:`~.conv.bconv_forward` dispatches on
TILES = {0: ("tile_6x32_avx512", 6, 32), 1: ("tile_4x8_avx2", 4, 8)}


@intrinsic
def _popcount(typingctx, x):
    """``llvm.ctpop.i64`` on a uint64 word, returned as int64 (0..64)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64 or x.signed:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@njit(cache=True, error_model="numpy")
def popcount64(x):
    """Population count of one uint64 word (for tests and small helpers)."""
    return _popcount(x)
