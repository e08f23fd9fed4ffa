r"""CUDA target (``numba.cuda``): host wrappers around :mod:`adabin_np.cuda.kernels`.

Same semantics, same validation and same errors as the CPU functions of
:mod:`adabin_np.binarize` (``SPEC.md`` sections 1-4); arrays go in and come out as host NumPy
arrays, transfers happen inside. Float results agree with the CPU kernels to a few ulps (the
reduction order differs and NVVM may contract ``a*b + c`` into FMA); signs, binarized values,
packed bits and popcounts are identical. There are no atomics: every reduction is a fixed
shared-memory tree plus a fixed-order host sum, so results are reproducible run to run.

Availability. :func:`is_available` is true with a usable CUDA GPU, or when Numba's CUDA
simulator was selected by setting ``NUMBA_ENABLE_CUDASIM=1`` *before* :mod:`numba.cuda` is
first imported in the process (the simulator runs every thread in Python: correct but very
slow, for tests on machines without a GPU). Importing this module never imports
:mod:`numba.cuda`; each entry point does so on first use and raises ``RuntimeError`` when
neither a GPU nor the simulator is available.

Entry points:

* :func:`binarize_activations_cuda`, :func:`binarize_activations_grad_cuda`
* :func:`weight_binary_set_cuda`, :func:`binarize_weights_cuda`,
  :func:`binarize_weights_grad_cuda`
* :func:`pack_bits_cuda` (activation signs, NHWC, LSB-first ``uint64``),
  :func:`pack_weight_bits_cuda`
* :func:`packed_adabin_conv2d_cuda` -- the popcount convolution behind
  ``packed_adabin_conv2d(..., device="cuda")``.
"""

from __future__ import annotations

import numbers
import sys
from typing import NamedTuple

import numpy as np

from ..validation import activation_params, as_float_array, check_convention, finite_result

__all__ = [
    "is_available",
    "is_simulator",
    "binarize_activations_cuda",
    "binarize_activations_grad_cuda",
    "weight_binary_set_cuda",
    "binarize_weights_cuda",
    "binarize_weights_grad_cuda",
    "pack_bits_cuda",
    "pack_weight_bits_cuda",
    "packed_adabin_conv2d_cuda",
    "conv_geometry",
    "theoretical_occupancy",
    "TARGET_BLOCKS",
]

_UNAVAILABLE = (
    "adabin_np.cuda: no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set "
    "(numba.cuda.is_available() is False). Use device='cpu', or set NUMBA_ENABLE_CUDASIM=1 "
    "before numba.cuda is first imported to run the kernels in Numba's (slow) CUDA simulator."
)


# ----------------------------------------------------------------------------------------------
# availability and launch helpers
# ----------------------------------------------------------------------------------------------


def _import_cuda():
    if "numba.cuda" not in sys.modules:
        # numba.cuda picks the simulator from numba's config, read when numba was imported;
        # refresh it so NUMBA_ENABLE_CUDASIM set later in os.environ (before this first
        # import of numba.cuda) is honoured. Numba's compiler does the same before compiling.
        try:
            from numba.core import config

            config.reload_config()
        except Exception:  # pragma: no cover - numba missing or reorganised
            pass
    try:
        from numba import cuda
    except Exception as exc:  # numba-cuda / CUDA bindings missing or broken
        return None, exc
    return cuda, None


def is_available():
    """Whether the CUDA kernels can run: a usable GPU, or the CUDA simulator is enabled.

    Imports :mod:`numba.cuda` on first call (never at module import); never raises.
    """
    cuda, _ = _import_cuda()
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def is_simulator():
    """Whether :mod:`numba.cuda` runs as the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` at its
    first import). Imports :mod:`numba.cuda`; never raises."""
    cuda, _ = _import_cuda()
    if cuda is None:
        return False
    try:
        from numba.cuda.core import config
    except Exception:  # pragma: no cover - other numba-cuda layouts
        return hasattr(cuda, "simulator_init")
    return bool(config.ENABLE_CUDASIM)


def _require_cuda():
    """Return ``(numba.cuda, adabin_np.cuda.kernels)`` or raise ``RuntimeError``."""
    cuda, exc = _import_cuda()
    if cuda is None:
        raise RuntimeError(f"adabin_np.cuda: numba.cuda could not be imported ({exc}); "
                           f"install numba-cuda, or use device='cpu'")
    try:
        ok = bool(cuda.is_available())
    except Exception:
        ok = False
    if not ok:
        raise RuntimeError(_UNAVAILABLE)
    from . import kernels

    return cuda, kernels


def _to_device(cuda, a):
    """Copy to the GPU as a C-contiguous array (the layout the kernels are compiled for)."""
    return cuda.to_device(np.ascontiguousarray(a))


def _blocks(count, tpb):
    return max(1, (count + tpb - 1) // tpb)


def _flat_tpb(total, cap):
    """Threads per block of a 1-D launch over ``total`` items (no more threads than items)."""
    return max(1, min(cap, total))


def _reduce_tpb(work, cap):
    """Power-of-two block size for a shared-memory tree over ``work`` items (~4 per thread)."""
    want = max(1, (work + 3) // 4)
    tpb = 1
    while tpb < want and tpb < cap:
        tpb *= 2
    return tpb


def _words(channels):
    """Number of 64-bit words holding ``channels`` sign bits."""
    return (channels + 63) // 64


#: largest grid dimension y/z; bigger extents are covered by grid-stride loops in the kernels
#: (and by batch chunks for the convolutions)
_GRID_YZ = 65535
#: the hardware limit of gridDim.y, for the convolutions' filter-tile axis (no stride loop)
_GRID_Y_LIMIT = 65535


def _check_index_range(**sizes):
    """The kernels split some indices with ``uint32`` division and index in ``int64``:
    refuse sizes of ``2**31`` or more (a clear ``ValueError`` instead of wrong addresses)."""
    for name, value in sizes.items():
        if value >= 2**31:
            raise ValueError(f"adabin_np.cuda: {name} = {value} is too large for the CUDA "
                             f"kernels (must be < 2**31); use device='cpu'")


# ----------------------------------------------------------------------------------------------
# device-resident building blocks (also used by analysis/bench_cuda.py)
# ----------------------------------------------------------------------------------------------


def _weight_stats_device(cuda, k, w2_d):
    """``(alpha_w, beta_w)`` device arrays of the rows of the ``(O, n)`` device array."""
    o_ = w2_d.shape[0]
    alpha_d = cuda.device_array(o_, dtype=np.float64)
    beta_d = cuda.device_array(o_, dtype=np.float64)
    k.weight_stats[min(o_, _GRID_YZ), _reduce_tpb(w2_d.shape[1], k.REDUCE_TPB)](
        w2_d, alpha_d, beta_d)
    return alpha_d, beta_d


def _pack_activations_device(cuda, k, x_d, alpha_d, beta_d, groups, out=None):
    """Packed activation bits ``(N, H, W, groups*WG)`` of the NCHW device array ``x_d`` (into
    the device array ``out`` when given)."""
    n_, c_, h_, w_ = x_d.shape
    _check_index_range(**{"H*W": h_ * w_, "N*groups": n_ * groups})
    wg = _words(c_ // groups)
    if out is None:
        out = cuda.device_array((n_, h_, w_, groups * wg), dtype=np.uint64)
    tpb = _flat_tpb(h_ * w_, k.ELEMENTWISE_TPB)
    grid = (_blocks(h_ * w_, tpb), wg, min(n_ * groups, _GRID_YZ))
    k.pack_activations[grid, tpb](x_d, alpha_d, beta_d, groups, out)
    return out


def _pack_weights_device(cuda, k, w_d, alpha_d, beta_d):
    """Packed weight bits ``(O, kh*kw*WG)`` of the OIHW device array ``w_d``."""
    o_, cg, kh, kw = w_d.shape
    _check_index_range(**{"kh*kw": kh * kw})
    wg = _words(cg)
    out = cuda.device_array((o_, kh * kw * wg), dtype=np.uint64)
    tpb = _flat_tpb(kh * kw, k.ELEMENTWISE_TPB)
    k.pack_weights[(_blocks(kh * kw, tpb), wg, min(o_, _GRID_YZ)), tpb](w_d, alpha_d, beta_d,
                                                                         out)
    return out


#: blocks a convolution launch should have at least: 4 per SM of a 132-SM H100/H200, so that
#: every SM holds several blocks even at batch 1 (ResNet-18's 512-channel 7x7 layer included)
TARGET_BLOCKS = 4 * 132
#: dynamic shared memory a convolution block may request (the default 48 KiB limit)
_MAX_SHARED_BYTES = 48 * 1024
#: registers per thread the convolution kernels are built to stay within (the ptx_report test
#: asserts it): 64 registers let 32 warps (50% of sm_90's 64) be resident
CONV_REGISTER_BUDGET = 64


def theoretical_occupancy(threads, registers, shared_bytes, *, sm=(9, 0)):
    """Resident warps / 64 on an sm_90 SM for a block of ``threads`` threads using
    ``registers`` per thread and ``shared_bytes`` of shared memory (CUDA occupancy rules:
    64 warps, 32 blocks, 65536 registers allocated per warp in units of 256, 228 KiB of shared
    memory with 1 KiB reserved per block, in units of 128 bytes). ``sm`` other than (9, 0)
    is a ``ValueError`` (the only limits encoded here)."""
    if tuple(sm) != (9, 0):
        raise ValueError(f"sm: only (9, 0) limits are encoded, got {sm!r}")
    warps = max(1, -(-int(threads) // 32))
    regs_per_warp = -(-max(1, int(registers)) * 32 // 256) * 256
    by_regs = (65536 // regs_per_warp) // warps
    smem = -(-(int(shared_bytes) + 1024) // 128) * 128
    by_smem = (228 * 1024) // smem
    blocks = min(32, by_regs, by_smem, 64 // warps)
    return blocks * warps / 64


class ConvGeometry(NamedTuple):
    """Launch shape of a packed convolution: block ``(pix, ot)`` threads, ``otile`` filters
    per thread (``slots = ot*otile`` per block), ``tiles`` (first channel, count, group) rows,
    ``grid`` and ``shared_bytes`` (dynamic)."""

    pix: int
    ot: int
    otile: int
    tiles: np.ndarray
    grid: tuple
    shared_bytes: int


def _filter_tiles(og, groups, slots):
    """``int64 (T, 3)``: (first output channel, filters, group) of each tile of ``slots``
    filters; tiles never cross a group."""
    rows = []
    for g in range(groups):
        for start in range(0, og, slots):
            rows.append((g * og + start, min(slots, og - start), g))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def conv_geometry(batch, out_pixels, og, groups, taps, words_per_tap, per_channel):
    """Pick the block shape of a packed convolution (a pure function of the layer).

    Candidates: 64- or 32-thread blocks of ``pix`` pixels x ``ot`` filter rows, ``otile`` in
    4, 2, 1 filters per thread (only 1 for the per-channel kernel). Preferred, in order: at
    least :data:`TARGET_BLOCKS` blocks (parallelism at batch 1), at least 50% theoretical
    occupancy on sm_90 with :data:`CONV_REGISTER_BUDGET` registers, at least 70% of the thread
    slots doing useful work, the larger ``otile`` (each activation word reused by more filters),
    the higher useful fraction, the larger block. Shared memory per block:
    ``slots*taps*(words_per_tap + 1)`` words (scalar kernel: filters + per-tap weight popcounts)
    or ``slots*taps*words_per_tap`` (per-channel); candidates over 48 KiB are dropped.
    """
    row = taps * words_per_tap
    useful_total = batch * out_pixels * og * groups
    z = min(batch, _GRID_YZ)
    best = None
    for otile in ((1,) if per_channel else (4, 2, 1)):
        for threads in (64, 32):
            for pix in (64, 32, 16, 8, 4, 2, 1):
                if pix > threads:
                    continue
                ot = threads // pix
                slots = ot * otile
                words = slots * (row if per_channel else row + taps)
                if words * 8 > _MAX_SHARED_BYTES:
                    continue
                n_tiles = groups * _blocks(og, slots)
                blocks = _blocks(out_pixels, pix) * n_tiles * z
                useful = useful_total / (blocks * threads * otile * (batch / z))
                occ = theoretical_occupancy(threads, CONV_REGISTER_BUDGET, words * 8)
                key = (blocks >= TARGET_BLOCKS, occ >= 0.5, useful >= 0.7, otile, useful,
                       threads)
                if best is None or key > best[0]:
                    best = (key, pix, ot, otile, slots, n_tiles, blocks, words)
    if best is None:
        raise ValueError(
            f"w: one packed filter needs {row * 8} bytes of shared memory (kh*kw*ceil(Cg/64) = "
            f"{row} words), more than the {_MAX_SHARED_BYTES} available to the CUDA kernel")
    _, pix, ot, otile, slots, n_tiles, _, words = best
    if n_tiles > _GRID_Y_LIMIT:
        raise ValueError(f"adabin_np.cuda: {n_tiles} filter tiles exceed the CUDA grid limit "
                         f"{_GRID_Y_LIMIT}; use device='cpu'")
    grid = (_blocks(out_pixels, pix), n_tiles, z)
    return ConvGeometry(pix, ot, otile, _filter_tiles(og, groups, slots), grid, words * 8)


def _segments(d_a, c_a, groups):
    """Per-channel activation levels as segments (runs of equal ``(d_a, c_a)`` inside one
    packed word of one group): ``(g_seg, seg_q, seg_mask, seg_da, seg_ca)`` for
    :func:`~adabin_np.cuda.kernels.packed_conv_perchannel`."""
    cg = d_a.shape[0] // groups
    g_seg = [0]
    seg_q, seg_mask, seg_da, seg_ca = [], [], [], []
    for g in range(groups):
        for q in range(_words(cg)):
            lo = g * cg + 64 * q
            hi = min(lo + 64, (g + 1) * cg)
            start = lo
            for c in range(lo + 1, hi + 1):
                if c == hi or d_a[c] != d_a[start] or c_a[c] != c_a[start]:
                    nb = c - start
                    mask = ((1 << nb) - 1) << (start - lo)
                    seg_q.append(q)
                    seg_mask.append(mask)
                    seg_da.append(d_a[start])
                    seg_ca.append(c_a[start])
                    start = c
        g_seg.append(len(seg_q))
    return (np.asarray(g_seg, dtype=np.int64), np.asarray(seg_q, dtype=np.int64),
            np.asarray(seg_mask, dtype=np.uint64), np.asarray(seg_da, dtype=np.float64),
            np.asarray(seg_ca, dtype=np.float64))


def _conv_plan(cuda, k, xbits_shape, wbits_d, dw_d, cw_d, d_a, c_a, per_channel, cg, kh, kw,
               params, y_d):
    """Prepare the packed convolution into ``y_d`` ``(N, O, OH, OW)`` (device) and return
    ``run(xbits_d)``, which only launches (its small constant arrays -- filter tiles, levels or
    segments -- are copied to the GPU here, once, so ``run`` never waits on a host copy).

    ``xbits_shape``: ``(N, H, W, words)`` of the packed activations ``run`` will get;
    ``d_a``/``c_a``: host ``(groups,)`` arrays (popcount kernel, one set per group) or ``(C,)``
    arrays (``per_channel=True``: segmented kernel).
    """
    n_, o_, out_h, out_w = y_d.shape
    groups = params.groups
    og = o_ // groups
    wg = _words(cg)
    _, h_, w_, words = xbits_shape
    _check_index_range(**{"out_h*out_w": out_h * out_w, "H*W": h_ * w_})
    (sh, sw), (ph, pw), (dh, dw) = params.stride, params.padding, params.dilation
    geo = conv_geometry(n_, out_h * out_w, og, groups, kh * kw, wg, per_channel)
    tiles_d = _to_device(cuda, geo.tiles)
    block = (geo.pix, geo.ot)
    if per_channel:
        consts = [_to_device(cuda, a) for a in _segments(d_a, c_a, groups)]
        kernel, tail = k.packed_conv_perchannel, (h_, w_, words, wg)
    else:
        consts = [_to_device(cuda, d_a), _to_device(cuda, c_a)]
        kernel, tail = k.packed_conv_scalar, (h_, w_, words, wg, cg)
    chunks = []
    for n0 in range(0, n_, _GRID_YZ):  # the grid's z extent is the batch: chunks of 65535
        n1 = min(n_, n0 + _GRID_YZ)
        chunks.append((n0, n1, kernel[(geo.grid[0], geo.grid[1], n1 - n0), block, 0,
                                      geo.shared_bytes], y_d[n0:n1]))
    geom = (kh, kw, sh, sw, ph, pw, dh, dw)
    last = () if per_channel else (geo.otile,)

    def run(xbits_d):
        for n0, n1, launch, y_part in chunks:
            launch(xbits_d[n0:n1].reshape(-1), wbits_d, tiles_d, dw_d, cw_d, *consts, *tail,
                   *geom, *last, y_part)
        return y_d

    return run


def _conv_launch(cuda, k, xbits_d, wbits_d, dw_d, cw_d, d_a, c_a, per_channel, cg, kh, kw,
                 params, y_d):
    """Launch the packed convolution into ``y_d`` (see :func:`_conv_plan`)."""
    return _conv_plan(cuda, k, xbits_d.shape, wbits_d, dw_d, cw_d, d_a, c_a, per_channel, cg,
                      kh, kw, params, y_d)(xbits_d)


def _activation_levels(alpha_c, beta_c, groups, official):
    """Packed-path levels ``c_a +- d_a`` per channel: paper ``(beta, alpha)``, official
    ``(alpha*beta, alpha)``. Returns ``(d_a, c_a, per_group)``: ``(groups,)`` arrays when the
    levels are constant within every group (popcount kernel), else ``(C,)`` arrays and
    ``per_group=False`` (segmented kernel)."""
    d_a = np.ascontiguousarray(alpha_c, dtype=np.float64)
    c_a = np.ascontiguousarray(alpha_c * beta_c if official else beta_c, dtype=np.float64)
    d2 = d_a.reshape(groups, -1)
    c2 = c_a.reshape(groups, -1)
    if np.all(d2 == d2[:, :1]) and np.all(c2 == c2[:, :1]):
        return np.ascontiguousarray(d2[:, 0]), np.ascontiguousarray(c2[:, 0]), True
    return d_a, c_a, False


def _packed_conv_device(cuda, k, x_d, w_d, alpha_c, beta_c, params, official):
    """Whole packed pipeline on device arrays: weight sets, packing, popcount conv -> ``y_d``."""
    n_ = x_d.shape[0]
    o_, cg, kh, kw = w_d.shape
    alpha_w, beta_w = _weight_stats_device(cuda, k, w_d.reshape(o_, cg * kh * kw))
    alpha_d = _to_device(cuda, np.asarray(alpha_c, dtype=np.float64))
    beta_d = _to_device(cuda, np.asarray(beta_c, dtype=np.float64))
    xbits = _pack_activations_device(cuda, k, x_d, alpha_d, beta_d, params.groups)
    wbits = _pack_weights_device(cuda, k, w_d, alpha_w, beta_w)
    d_a, c_a, per_group = _activation_levels(alpha_c, beta_c, params.groups, official)
    y_d = cuda.device_array((n_, o_, params.out_h, params.out_w), dtype=np.float64)
    return _conv_launch(cuda, k, xbits, wbits, alpha_w, beta_w, d_a, c_a, not per_group, cg,
                        kh, kw, params, y_d)


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


def binarize_activations_cuda(x, alpha, beta, *, convention="paper"):
    r"""CUDA :func:`adabin_np.binarize_activations`: :math:`v = (x - \beta)/\alpha`, paper
    :math:`\alpha s + \beta` (``s(0) = +1``), official :math:`\alpha (s + \beta)` (``s(0) = 0``).

    ``alpha``/``beta`` scalars or ``(C,)`` arrays along axis 1. Same validation and errors as
    the CPU function. Kernel: :func:`~adabin_np.cuda.kernels.act_forward` (one thread per
    position ``s``, grid over ``(s, c, n)``). Returns float64 of ``x``'s shape.
    """
    from ..binarize import _activations_3d

    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, _ = _activations_3d(x, alpha, beta)
    cuda, k = _require_cuda()
    if x3.size == 0:
        return np.empty(x.shape)
    n_, c_, s_ = x3.shape
    x_d = _to_device(cuda, x3)
    out_d = cuda.device_array(x3.shape, dtype=np.float64)
    tpb = _flat_tpb(s_, k.ELEMENTWISE_TPB)
    grid = (_blocks(s_, tpb), min(c_, _GRID_YZ), min(n_, _GRID_YZ))
    k.act_forward[grid, tpb](x_d, _to_device(cuda, alpha_c), _to_device(cuda, beta_c), official,
                             out_d)
    return out_d.copy_to_host().reshape(x.shape)


def binarize_activations_grad_cuda(x, alpha, beta, grad, *, convention="paper"):
    r"""CUDA :func:`adabin_np.binarize_activations_grad` (Bi-Real estimator).

    ``G = g*max(0, 2 - 2|v|)``; ``dx = G``; paper ``dalpha = sum(g*s) - sum(G*v)``,
    ``dbeta = sum(g) - sum(G)``; official ``dalpha = sum(g*(s + beta)) - sum(G*v)``,
    ``dbeta = alpha*sum(g) - sum(G)``. Kernel :func:`~adabin_np.cuda.kernels.act_backward`
    produces per-(channel, block) partials, summed here in a fixed order (deterministic, no
    atomics). Scalar parameters get float gradients, ``(C,)`` parameters ``(C,)`` arrays.
    Returns :class:`~adabin_np.binarize.ActivationGrad`.
    """
    from ..binarize import _activations_3d, _combine_activation_grads

    official = check_convention(convention) == "official"
    x, x3, alpha_c, beta_c, per_channel = _activations_3d(x, alpha, beta)
    g = as_float_array(grad, "grad", allow_scalar=True)
    if g.shape != x.shape:
        raise ValueError(f"grad has shape {g.shape} but x has shape {x.shape}")
    cuda, k = _require_cuda()
    n_, c_, s_ = x3.shape
    m = n_ * s_
    if m == 0:
        zeros = np.zeros(c_)
        return _combine_activation_grads(np.zeros(x.shape), alpha_c, zeros, zeros, zeros, zeros,
                                         per_channel, official)
    tpb = _reduce_tpb(s_, k.REDUCE_TPB)
    ks = min(_blocks(s_, 4 * tpb), 1024)
    kn = min(n_, max(1, 1024 // ks))
    x_d = _to_device(cuda, x3)
    g_d = _to_device(cuda, g.reshape(x3.shape))
    dx_d = cuda.device_array(x3.shape, dtype=np.float64)
    part_d = cuda.device_array((4, c_, ks * kn), dtype=np.float64)
    k.act_backward[(ks, kn, min(c_, _GRID_YZ)), tpb](
        x_d, g_d, _to_device(cuda, alpha_c), _to_device(cuda, beta_c), official, dx_d, part_d)
    sums = part_d.copy_to_host().sum(axis=2)
    dx = dx_d.copy_to_host().reshape(x.shape)
    return _combine_activation_grads(dx, alpha_c, sums[0], sums[1], sums[2], sums[3],
                                     per_channel, official)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def weight_binary_set_cuda(w):
    r"""CUDA :func:`adabin_np.weight_binary_set`: per output channel ``beta_w = mean``,
    ``alpha_w = `` population std; an all-equal channel gets ``alpha_w = 0`` and ``beta_w`` =
    its value exactly. Kernel :func:`~adabin_np.cuda.kernels.weight_stats` (one block per
    output channel, shared-memory tree sums). Returns ``(alpha, beta)``, each ``(O,)``.
    """
    from ..binarize import _weights_2d, pow2_row_scale

    _, w2 = _weights_2d(w)
    w2s, e = pow2_row_scale(w2)  # as the CPU path: any finite weights, exact rescale
    cuda, k = _require_cuda()
    alpha_d, beta_d = _weight_stats_device(cuda, k, _to_device(cuda, w2s))
    return finite_result((np.ldexp(alpha_d.copy_to_host(), e), np.ldexp(beta_d.copy_to_host(), e)),
                         "weight_binary_set_cuda")


def binarize_weights_cuda(w, *, convention="paper"):
    r"""CUDA :func:`adabin_np.binarize_weights`: :math:`W_b = \alpha_w \mathrm{sign}(u) + \beta_w`,
    :math:`u = (W - \beta_w)/\alpha_w` per output channel; ``sign(0)`` is +1 (paper) or 0
    (official); a constant filter gives ``W_b = beta_w``. Kernels
    :func:`~adabin_np.cuda.kernels.weight_stats` then
    :func:`~adabin_np.cuda.kernels.weight_forward` (element-wise). Float64, ``w``'s shape.
    """
    from ..binarize import _weights_2d, pow2_row_scale

    official = check_convention(convention) == "official"
    w, w2 = _weights_2d(w)
    w2s, e = pow2_row_scale(w2)  # as the CPU path: any finite weights, exact rescale
    cuda, k = _require_cuda()
    w2_d = _to_device(cuda, w2s)
    alpha_d, beta_d = _weight_stats_device(cuda, k, w2_d)
    out_d = cuda.device_array(w2.shape, dtype=np.float64)
    tpb = _flat_tpb(w2.shape[1], k.ELEMENTWISE_TPB)
    grid = (_blocks(w2.shape[1], tpb), min(w2.shape[0], _GRID_YZ))
    k.weight_forward[grid, tpb](w2_d, alpha_d, beta_d, official, out_d)
    return finite_result(np.ldexp(out_d.copy_to_host(), e[:, None]).reshape(w.shape),
                         "binarize_weights_cuda")


def binarize_weights_grad_cuda(w, grad, *, k=10.0, t=0.1, convention="paper"):
    r"""CUDA :func:`adabin_np.binarize_weights_grad` (EDE estimator, through alpha_w, beta_w).

    Per output channel with ``n`` elements, ``G_u = g*alpha_w*k*t*(1 - tanh(t*u)^2)``,
    ``dalpha = sum(g*s) - sum(G_u*u)/alpha_w``, ``dbeta = sum(g) - sum(G_u)/alpha_w``,
    ``dW_j = G_u_j/alpha_w + dbeta/n + u_j*dalpha/n``; constant filter: ``dW_j = sum(g)/n``.
    Kernel :func:`~adabin_np.cuda.kernels.weight_backward` (one block per output channel).
    """
    from ..binarize import _weights_grad_args, pow2_row_scale

    official = check_convention(convention) == "official"
    w, w2, g, k_, t_ = _weights_grad_args(w, grad, k, t)
    w2s, _ = pow2_row_scale(w2)  # dW is scale-invariant: the scaled rows give it (as on CPU)
    cuda, kern = _require_cuda()
    w2_d = _to_device(cuda, w2s)
    alpha_d, beta_d = _weight_stats_device(cuda, kern, w2_d)
    dw_d = cuda.device_array(w2.shape, dtype=np.float64)
    kern.weight_backward[min(w2.shape[0], _GRID_YZ), _reduce_tpb(w2.shape[1], kern.REDUCE_TPB)](
        w2_d, _to_device(cuda, g.reshape(w2.shape)), alpha_d, beta_d, k_, t_, official, dw_d)
    return dw_d.copy_to_host().reshape(w.shape)


# ----------------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------------


def _check_groups(groups, channels, name):
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (numbers.Integral,
                                                                       np.integer)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if channels % groups:
        raise ValueError(f"{name} has {channels} channels, not divisible by groups={groups}")
    return groups


def pack_bits_cuda(x, alpha=1.0, beta=0.0, *, groups=1):
    r"""Pack the activation signs of NCHW ``x`` into ``uint64`` words, NHWC, LSB-first.

    Bit ``b`` of word ``q`` of group ``g`` at pixel ``(n, h, w)`` is 1 iff ``v >= 0`` for
    channel ``c = g*Cg + 64*q + b``, ``v = (x - beta)/alpha`` (defaults: the sign of ``x``
    itself, ``x >= 0``; ``-0.0`` counts as ``>= 0``). ``v == 0`` gives bit 1 (``s = +1``) in
    both conventions: the packed path has no zero level. Tail bits of each group's last word
    are 0. ``alpha``/``beta`` scalars or ``(C,)`` arrays (``alpha == 0`` is a ``ValueError``).

    Returns ``uint64`` of shape ``(N, H, W, groups*ceil(Cg/64))`` with ``Cg = C/groups``
    (``groups == 1``: ``(N, H, W, ceil(C/64))``). Kernel
    :func:`~adabin_np.cuda.kernels.pack_activations`.
    """
    x = as_float_array(x, "x", ndim=4)
    alpha_c, beta_c, _ = activation_params(alpha, beta, x.shape[1])
    groups = _check_groups(groups, x.shape[1], "x")
    cuda, k = _require_cuda()
    n_, c_, h_, w_ = x.shape
    if x.size == 0:
        return np.zeros((n_, h_, w_, groups * _words(c_ // groups)), dtype=np.uint64)
    out = _pack_activations_device(cuda, k, _to_device(cuda, x), _to_device(cuda, alpha_c),
                                   _to_device(cuda, beta_c), groups)
    return out.copy_to_host()


def pack_weight_bits_cuda(w):
    r"""Pack the signs of ``u = (W - beta_w)/alpha_w`` of OIHW ``w`` (per output channel).

    Bit ``b`` of word ``q`` at ``(o, ki, kj)`` is 1 iff ``u >= 0`` for input channel
    ``64*q + b`` (a constant filter, ``alpha_w = 0``, packs as all ones). Returns ``uint64``
    of shape ``(O, kh, kw, ceil(Cg/64))``, tail bits 0. Kernels
    :func:`~adabin_np.cuda.kernels.weight_stats`, :func:`~adabin_np.cuda.kernels.pack_weights`.
    """
    w = as_float_array(w, "w", ndim=4)
    if 0 in w.shape:
        raise ValueError(f"w must be non-empty, got shape {w.shape}")
    cuda, k = _require_cuda()
    o_, cg, kh, kw = w.shape
    w_d = _to_device(cuda, w)
    alpha_d, beta_d = _weight_stats_device(cuda, k, w_d.reshape(o_, cg * kh * kw))
    out = _pack_weights_device(cuda, k, w_d, alpha_d, beta_d)
    return out.copy_to_host().reshape(o_, kh, kw, _words(cg))


# ----------------------------------------------------------------------------------------------
# packed convolution
# ----------------------------------------------------------------------------------------------


def packed_adabin_conv2d_cuda(x, w, alpha_c, beta_c, params, official):
    r"""Bit-packed AdaBin convolution on the GPU (SPEC section 4); backend of
    ``packed_adabin_conv2d(..., device="cuda")``.

    Inputs are assumed validated by the caller: ``x`` ``(N, C, H, W)`` and ``w``
    ``(O, C/groups, kh, kw)`` finite float64, ``alpha_c``/``beta_c`` float64 ``(C,)`` (a
    scalar set broadcast; no zero in ``alpha_c``), ``params`` a
    :class:`~adabin_np.validation.ConvParams`, ``official`` a bool. Any layout is made
    C-contiguous here.

    Signs have no zero level: ``s_a = +1`` iff ``v >= 0``, ``s_w = +1`` iff ``u >= 0``, in both
    conventions. Levels: activations ``c_a +- d_a`` with ``d_a = alpha``, ``c_a = beta``
    (paper) or ``alpha*beta`` (official); weights ``c_w +- d_w = beta_w +- alpha_w`` per output
    channel. Over the valid taps ``P`` of an output pixel (``N = |P|``):

    .. math::
        y = d_a d_w (N - 2\,\mathrm{popc}(a \oplus w)) + d_a c_w (2\,\mathrm{popc}(a) - N)
          + c_a d_w (2\,\mathrm{popc}_P(w) - N) + c_a c_w N

    Padded taps contribute 0. When ``(d_a, c_a)`` is constant within each group (in particular
    for a scalar ``alpha``, ``beta``) this word-wide popcount form runs
    (:func:`~adabin_np.cuda.kernels.packed_conv_scalar`); otherwise the same expansion is
    summed over *segments* (runs of channels of one packed word with equal levels), each with
    exact popcounts under its bit mask (:func:`~adabin_np.cuda.kernels.packed_conv_perchannel`).
    Launch shape: :func:`conv_geometry` (at least :data:`TARGET_BLOCKS` blocks where the layer
    allows, 50% theoretical occupancy on sm_90). Steps on the device: weight
    sets, packing of activations and weights, convolution; one copy in per input, one copy out.

    Returns float64 ``(N, O, out_h, out_w)`` (NCHW).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    alpha_c = np.ascontiguousarray(alpha_c, dtype=np.float64)
    beta_c = np.ascontiguousarray(beta_c, dtype=np.float64)
    if x.ndim != 4 or w.ndim != 4 or alpha_c.shape != (x.shape[1],) or \
            beta_c.shape != (x.shape[1],) or x.shape[1] != w.shape[1] * params.groups:
        raise ValueError(f"packed_adabin_conv2d_cuda: inconsistent shapes x {x.shape}, "
                         f"w {w.shape}, alpha {alpha_c.shape}, beta {beta_c.shape}, "
                         f"groups {params.groups}")
    cuda, k = _require_cuda()
    y_d = _packed_conv_device(cuda, k, _to_device(cuda, x), _to_device(cuda, w), alpha_c, beta_c,
                              params, bool(official))
    return y_d.copy_to_host()
