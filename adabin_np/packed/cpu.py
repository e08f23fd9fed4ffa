"""The CPU driver of the packed convolution: geometry classes, the work split, activation
packing, the per-weights call plan and the kernel launch (:func:`_run_cpu`)."""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import numba
import numpy as np

from .. import kernels_packed as _kp
from ..validation import ConvParams
from .layout import _act_plan


class PackedCounts(NamedTuple):
    """Raw integer sums of the packed convolution (SPEC section 4), all ``int64``.

    ``sum_aw[n, o, i, j] = sum_P s_a s_w = N - 2 popc(a XOR w)``;
    ``sum_a[n, g, i, j] = sum_P s_a = 2 popc(a) - N`` (per group ``g``);
    ``sum_w[o, i, j] = sum_P s_w`` (zero-padding correction); ``n_valid[i, j] = N``
    (``C/groups`` times the number of in-bounds kernel taps).
    """

    sum_aw: np.ndarray
    sum_a: np.ndarray
    sum_w: np.ndarray
    n_valid: np.ndarray


@functools.lru_cache(maxsize=256)
def _tap_ranges(size, k, stride, pad, dil, out):
    """Valid kernel index range ``[lo, hi)`` per output index and its border class
    (cached per geometry; the arrays are only read)."""
    base = np.arange(out, dtype=np.int64) * stride - pad
    lo = np.minimum(np.maximum(0, -(base // dil)), k)
    hi = np.minimum(k, (size - 1 - base) // dil + 1)
    hi = np.maximum(hi, lo)
    uniq, cls = np.unique(lo * (k + 1) + hi, return_inverse=True)
    return (lo, hi, cls.reshape(-1).astype(np.int64), (uniq // (k + 1)).astype(np.int64),
            (uniq % (k + 1)).astype(np.int64))


def _h_chunk(h_, other_tasks, *, min_tasks=8):
    """Rows per packing task: whole planes unless that leaves fewer than ``min_tasks`` tasks."""
    chunks = max(1, min(h_, -(-min_tasks // other_tasks)))
    return -(-h_ // chunks)


def _work_split(out_h, out_w, n_blk, other_tasks, *, threads=None, max_pixels=448):
    """``(rows_per_task, blocks_per_task)`` of the convolution (measured at batch 1, 2 threads,
    Zen 5; kernel times):

    * a task covers at most ``max_pixels`` output pixels (its buffers stay in L2) and all
      output blocks when there are at least ``2*threads`` tasks anyway (``threads``: the
      Numba thread count by default; its activation offsets and popcounts are then built
      once for every block);
    * otherwise the blocks are split first and then the rows: a task that keeps its whole
      pixel range fills every microkernel tile (a 7-pixel row leaves 5 of 12 tile slots
      empty) and builds its offsets once for more work (512ch 7x7 88 -> 59 us, 256ch 14x14
      86 -> 67 us);
    * with few tasks (< 8 per thread), the row count (down to half) whose task count divides
      best among the threads (64ch 56x56: 8 rows = 7 tasks leave a thread idle for 1/8 of
      the time; 7 rows = 8 tasks).
    """
    if threads is None:
        threads = numba.get_num_threads()
    min_tasks = 2 * threads
    rows = max(1, min(out_h, max_pixels // out_w))
    bpt = n_blk

    def tasks(r, b):
        return other_tasks * -(-out_h // r) * -(-n_blk // b)

    while bpt > 1 and tasks(rows, bpt) < min_tasks:
        bpt = -(-bpt // 2)
    while rows > 1 and tasks(rows, bpt) < min_tasks:
        rows = -(-rows // 2)
    if tasks(rows, bpt) < 8 * threads:
        def waste(r):
            t = tasks(r, bpt)
            return -(-t // threads) * threads / t
        rows = min(range(rows, max(1, rows // 2) - 1, -1), key=lambda r: (waste(r), -r))
    return rows, bpt


def _output_dtype(x):
    """float32 in -> float32 out; every other input (converted to float64) -> float64."""
    return np.float32 if x.dtype == np.float32 else np.float64


def _pack_input(x, alpha_c, beta_c, act):
    """Binarize + pack ``x`` into NHWC words (plus a zero pixel per image); returns
    ``(xa, ties)``."""
    n_, c_, h_, w_ = x.shape
    layout = act.layout
    xa = np.empty((n_ * (h_ * w_ + 1), layout.n_words), dtype=np.uint64)
    ties, bad = _kp.select_activation_pack()(x, act.mode, act.thr, act.tie, alpha_c, beta_c,
                                             layout.word_ptr, layout.word_chans, xa,
                                             _h_chunk(h_, n_ * layout.n_words))
    if bad:
        raise ValueError("x contains NaN or infinity")
    return xa, ties


_NO_F64 = np.zeros(0)
_STAGE_CLOCK = [time.perf_counter]  # the benchmark may switch the stage clock to thread_time


#: largest per-tap offset table (:func:`~adabin_np.kernels_packed.tap_offsets`, 8 bytes per
#: output pixel and kernel tap) a call plan keeps; larger geometries build offsets per task
#: (the border-patch table, 16 bytes per output pixel, has the same limit; without it the
#: epilogue runs row by row)
_OFFSET_TABLE_BYTES = 8 << 20
_NO_OFFSETS = (np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.int64))
_NO_PATCHES = (np.zeros((0, 0), dtype=np.uint64), np.zeros((0, 0), dtype=np.uint64),
               np.zeros(0, dtype=np.int64))
_BORDER_PATCH = [True]  # tests switch the kernel's border-patch epilogue off to compare


def _interior(r_lo, r_hi, c_lo, c_hi, col_cls, kh, kw):
    """``(int_rc, int_col)`` for the kernel's border-patch epilogue: the row class whose kernel
    rows are all in bounds and an output column whose column class has all kernel columns in
    bounds (``(-1, 0)`` when either is missing, or when the patch epilogue is switched off)."""
    rows = np.flatnonzero((r_lo == 0) & (r_hi == kh))
    cols = np.flatnonzero((c_lo[col_cls] == 0) & (c_hi[col_cls] == kw))
    if not _BORDER_PATCH[0] or rows.size == 0 or cols.size == 0:
        return -1, 0
    return int(rows[0]), int(cols[0])


def _call_plan(pw, act, p, n_, h_, w_, variant, tp, jb):
    """The arguments of :func:`~adabin_np.kernels_packed.bconv_forward` between the packed
    activations and the run-time flags, plus the tables the raw-count route needs."""
    o_, cg, kh, kw = pw.shape
    groups = p.groups
    layout = act.layout
    if 3 * 64 * layout.wgm * kh * kw >= 2**31:
        # the kernel's counts and its rescale table N + 2I are int32 (a count is at most
        # N <= 64 * words * taps, and N + 2I <= 3N)
        raise ValueError(f"packed convolution: {cg} input channels per group x {kh}x{kw} taps "
                         f"exceed the kernel's int32 counts; use adabin_conv2d")
    og = o_ // groups
    wtb, pcw = pw._kernel_weights(layout, groups, jb)
    _, _, row_cls, r_lo, r_hi = _tap_ranges(h_, kh, p.stride[0], p.padding[0], p.dilation[0],
                                            p.out_h)
    _, _, col_cls, c_lo, c_hi = _tap_ranges(w_, kw, p.stride[1], p.padding[1], p.dilation[1],
                                            p.out_w)
    brow, krow, pinv, sum_w, n_valid = pw._tables(layout, pcw, (h_, w_, p), r_lo, r_hi, c_lo,
                                                  c_hi, col_cls, row_cls)
    n_blk = wtb.shape[0] // groups
    rows, bpt = _work_split(p.out_h, p.out_w, n_blk, n_ * groups)
    int_rc, int_col = _interior(r_lo, r_hi, c_lo, c_hi, col_cls, kh, kw)
    n_chunks = -(-p.out_h // rows)
    npx_max = min(rows, p.out_h) * p.out_w  # output pixels of the largest chunk
    if 8 * kh * kw * n_chunks * (-(-npx_max // tp) * tp) <= _OFFSET_TABLE_BYTES:
        offs_tab, ntap_tab = _kp.tap_offsets(
            h_, w_, p.out_h, row_cls, col_cls, r_lo, r_hi, c_lo, c_hi, kh, kw, p.stride[0],
            p.stride[1], p.padding[0], p.padding[1], p.dilation[0], p.dilation[1],
            layout.n_words, tp, rows)
    else:  # the kernel's tasks build their offsets themselves
        offs_tab, ntap_tab = _NO_OFFSETS
    # border pixels per chunk for the kernel's patch epilogue (row tables only)
    if (int_rc >= 0 and brow.shape[2] == p.out_w
            and 16 * n_chunks * npx_max <= _OFFSET_TABLE_BYTES):
        patches = _kp.border_patches(p.out_h, row_cls, col_cls, int_rc, int_col, rows,
                                     brow.shape[1] * p.out_w)
    else:
        patches = _NO_PATCHES
    mid = (h_, w_, p.out_h, wtb, variant, tp, layout.wgm, layout.g_w0, og,
           layout.seg_w0, layout.seg_w1, layout.seg_da, layout.g_seg0, layout.g_seg1,
           layout.seg_n, brow, krow, pinv, r_lo, r_hi, c_lo, c_hi, pw.alpha, pw.beta,
           row_cls, col_cls, kh, kw, p.stride[0], p.stride[1], p.padding[0],
           p.padding[1], p.dilation[0], p.dilation[1], int_rc, int_col, offs_tab,
           ntap_tab) + patches + (numba.get_num_threads(), rows, bpt)
    return mid, row_cls, col_cls, sum_w, n_valid


def _run_cpu(x, pw, alpha_c, beta_c, p: ConvParams, official, raw=False, out=None,
             residual=None, maxout=None, stages=None, act=None):
    """Pack activations, build (or reuse) the border tables and run the tiled kernel.
    ``stages`` (benchmark only): a dict that receives the seconds of ``pack``, ``tables``
    (layout, kernel weights, border tables), ``kernel`` and ``tiles`` (the kernel's
    microkernel part alone, from a second ``tiles_only`` run)."""
    clock = _STAGE_CLOCK[0]
    t0 = clock()
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = pw.shape
    groups = p.groups
    if act is None:
        act = _act_plan(alpha_c, beta_c, groups, official, x.dtype)
    t1 = clock()
    xa, ties = _pack_input(x, alpha_c, beta_c, act)
    t2 = clock()
    variant, tp, jb = _kp.select_tile()
    # everything between the packed activations and the outputs depends only on the weights,
    # the activation set, the geometry, the tile and the thread count: built once per
    # combination (the kernel layout, per-tap popcounts and border tables are cached on the
    # PackedWeights as well) and reused -- ~10-40 us of Python per call at batch 1
    key = (act.uid, groups, n_, h_, w_, p, variant, numba.get_num_threads())
    static = pw._call_cache.get(key)
    if static is None:
        static = _call_plan(pw, act, p, n_, h_, w_, variant, tp, jb)
        if len(pw._call_cache) >= 16:
            pw._call_cache.pop(next(iter(pw._call_cache)))
        pw._call_cache[key] = static
    mid, row_cls, col_cls, sum_w, n_valid = static
    hw = p.out_h * p.out_w
    if raw:
        raw_x = np.zeros((n_, o_, hw), dtype=np.int64)
        raw_a = np.zeros((n_, groups, hw), dtype=np.int64)
        y = np.empty((n_, o_, 1))
    else:
        raw_x = np.zeros((1, 1, 1), dtype=np.int64)
        raw_a = raw_x
        y = out if out is not None else np.empty((n_, o_, hw), dtype=_output_dtype(x))
    args = (xa,) + mid + (
        raw, raw_x, raw_a,
        (np.zeros((0, 0, 0), dtype=y.dtype) if residual is None
         else residual.reshape(n_, o_, hw)),
        _NO_F64 if maxout is None else maxout[0],
        _NO_F64 if maxout is None else maxout[1])
    t3 = clock()
    _kp.bconv_forward(*args, False, y.reshape(y.shape[0], y.shape[1], -1))
    if stages is not None:
        t4 = clock()
        _kp.bconv_forward(*args, True, y.reshape(y.shape[0], y.shape[1], -1))
        stages.update(layout=t1 - t0, pack=t2 - t1, tables=t3 - t2, kernel=t4 - t3,
                      tiles=clock() - t4)
    if raw:
        cls = (row_cls[:, None], col_cls[None, :])
        sw = sum_w[cls]                                   # (OH, OW, O)
        nv = n_valid[cls][:, :, 0]                        # (OH, OW)
        sum_aw = nv[None, None] - 2 * raw_x.reshape(n_, o_, p.out_h, p.out_w)
        sum_a = 2 * raw_a.reshape(n_, groups, p.out_h, p.out_w) - nv[None, None]
        return PackedCounts(sum_aw, sum_a, np.ascontiguousarray(sw.transpose(2, 0, 1)),
                            np.ascontiguousarray(nv))
    return y.reshape(n_, o_, p.out_h, p.out_w), int(ties)

