r"""Bit-packed XNOR/popcount inference for AdaBin (``SPEC.md`` section 4), CPU (and CUDA).

The float path (:func:`adabin_np.adabin_conv2d`) multiplies binarized float64 tensors. Here the
signs are packed into ``uint64`` words and the convolution becomes XOR + popcount on integers,
rescaled once per output. With activation levels ``c_a +- d_a`` and weight levels
``c_w +- d_w``, over the valid (in-bounds) taps ``P`` of one output pixel, ``N = |P|``:

.. math::
    y = d_a d_w \textstyle\sum s_a s_w + d_a c_w \sum s_a + c_a d_w \sum_P s_w + c_a c_w N,
    \qquad \sum s_a s_w = N - 2\,\mathrm{popc}(a \oplus w), \quad
    \sum s_a = 2\,\mathrm{popc}(a) - N

which is :math:`\sum_P (c_a + d_a s_a)(c_w + d_w s_w)` expanded. Levels:

* activations, ``paper``: ``c_a = beta``, ``d_a = alpha``; ``official`` (levels
  ``alpha*(beta -+ 1)``): ``c_a = alpha*beta``, ``d_a = alpha``;
* weights, per output channel (both conventions): ``c_w = beta_w``, ``d_w = alpha_w`` from
  :func:`~adabin_np.binarize.weight_binary_set`.

Padding is a real zero after binarization, so padded taps are *skipped*: a border pixel has
its own ``N`` and ``sum_P(s_w)`` (Larq Compute Engine's zero-padding correction). Both are
precomputed per border class (distinct valid kernel-row range x valid kernel-column range).
Negative ``alpha`` needs no special case: ``s_a`` is the sign of ``v = (x - beta)/alpha`` (so
``s_a = +1`` means ``x <= beta`` there) and the level ``c_a + d_a s_a`` is exactly the float
path's. A constant filter (``alpha_w = 0``) has ``d_w = 0``: its output is ``beta_w`` times
the sum of the activation levels.

**Tie rule.** Bit = 1 (``s = +1``) iff ``v >= 0`` (activations, ``v = (x - beta)/alpha``
computed exactly as the float path computes it) and iff ``u >= 0`` (weights,
``u = (W - beta_w)/alpha_w``; a constant filter packs as all ones). The packed path has no zero
level, so it maps ``v == 0`` to ``+1`` in **both** conventions. In the ``paper`` convention
that is exactly the float path; in the ``official`` convention the float path uses
``torch.sign(0) = 0`` (level ``alpha*beta``, weight level ``beta_w``), so every exact tie is a
place where the two paths differ. :func:`threshold_ties` and ``return_info=True`` count them
(SPEC section 7, flip risk). With continuous data ties have probability ~0.

**Per-channel activation sets.** With ``alpha``/``beta`` of shape ``(C,)`` the levels vary over
input channels and the formula does not factor over a whole word. Channels of a group are
therefore sorted into *segments* of equal ``(c_a, d_a)``; each segment starts on a fresh word
and gets its own popcounts (exact), and ``y`` sums the formula over segments. A scalar set (or
per-channel arrays that are constant within each group) is one segment per group: the fast,
natural layout. Fully distinct per-channel sets cost up to one word per channel (up to 64x
slower than the scalar path, still exact).

**Layout.** Activations NHWC: ``(N, H, W, words)`` ``uint64``, channels LSB-first, tail bits 0
(:func:`pack_bits` with ``axis=1`` then moved last gives the natural layout for ``groups=1``).
Weights: see :class:`PackedWeights`. Kernels: :mod:`adabin_np.kernels_packed` (register-blocked
XOR+popcount microkernels per ISA, chosen for the CPU Numba compiles for).

**dtypes.** float32 input stays float32 (binarized against float32-exact thresholds, no
float64 copy) and gives float32 output; every other real dtype is converted to float64 and
gives float64 output. Either way the output is the float64 value of the formula below rounded
once, so float32 output equals ``packed(float64(x)).astype(float32)`` exactly.

Public entry points: :func:`pack_bits`, :func:`unpack_bits`, :func:`pack_weights`
(:class:`PackedWeights`), :func:`packed_adabin_conv2d`,
:func:`packed_adabin_conv2d_prepacked`, :func:`packed_conv_counts` (the raw integer sums),
:func:`threshold_ties`, :func:`packed_linear`, :func:`adabin_linear` (float counterpart).
"""

from __future__ import annotations

import functools
import itertools
import numbers
import time
from typing import NamedTuple

import numba
import numpy as np

from . import kernels_packed as _kp
from .binarize import _activations_3d
from .conv import adabin_conv2d
from .validation import (
    ConvParams,
    activation_params,
    as_float_array,
    check_convention,
    conv_params,
    finite_result,
)

__all__ = [
    "PackedCounts",
    "PackedInfo",
    "PackedWeights",
    "adabin_linear",
    "pack_bits",
    "pack_weights",
    "packed_adabin_conv2d",
    "packed_adabin_conv2d_prepacked",
    "packed_conv_counts",
    "packed_linear",
    "threshold_ties",
    "unpack_bits",
]

WORD_BITS = 64
_PIXEL_TABLE_WIDTH = 32  # output rows shorter than this get per-pixel rescale tables
DEVICES = ("cpu", "cuda")


class PackedInfo(NamedTuple):
    """Tie report of a packed call (flip risk, SPEC section 7).

    ``activation_ties``: elements of ``x`` with ``v == 0`` exactly; ``weight_ties``: weights
    with ``u == 0`` exactly in non-constant filters. Both pack as ``+1``. ``flips``: how many of
    those binarize differently from the float path -- their sum in the ``official`` convention
    (float ``sign(0) = 0``), 0 in the ``paper`` convention (float ``sign(0) = +1`` as well).
    """

    activation_ties: int
    weight_ties: int
    flips: int


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


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _check_device(device):
    if not isinstance(device, str):
        raise TypeError(f"device must be a string, got {type(device).__name__}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def _as_input_array(a, name, ndim=None, *, min_ndim=None, allow_empty=False):
    """``as_float_array`` without its finiteness pass (the packing kernel checks finiteness on
    the fly, saving one full read of the input); same dtype and ndim errors."""
    arr = as_float_array(a, name, ndim=ndim, min_ndim=min_ndim, check_finite=False)
    if not allow_empty and 0 in arr.shape:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    return arr


def _as_kernel_input(a, name, ndim=None, *, min_ndim=None, allow_empty=False):
    """Like :func:`_as_input_array`, but a float32 array stays float32 (C-contiguous, writable;
    the packed path computes float32 in -> float32 out). Every other real dtype becomes
    float64. Finiteness is checked by the packing kernels."""
    if (isinstance(a, np.ndarray) and not isinstance(a, np.ma.MaskedArray)
            and a.dtype == np.float32):
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
        if min_ndim is not None and a.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape "
                             f"{a.shape}")
        arr = np.ascontiguousarray(a)
        if not arr.flags.writeable:
            arr = arr.copy()
        if not allow_empty and 0 in arr.shape:
            raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
        return arr
    return _as_input_array(a, name, ndim, min_ndim=min_ndim, allow_empty=allow_empty)


def _check_int(value, name, *, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_axis(axis, ndim):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (numbers.Integral, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of {ndim} dimensions")
    return axis % ndim


def _n_words(n):
    return (n + WORD_BITS - 1) // WORD_BITS


# ----------------------------------------------------------------------------------------------
# generic packing
# ----------------------------------------------------------------------------------------------


def pack_bits(x, *, axis=-1):
    r"""Pack the signs of ``x`` along ``axis`` into ``uint64`` words, LSB-first.

    Bit ``b`` of word ``q`` is 1 iff ``x[..., 64*q + b, ...] >= 0`` (``s = +1``; ``-0.0``
    counts as ``>= 0``), 0 otherwise; bits past the axis length (tail bits) are 0. The axis of
    length ``n`` becomes ``ceil(n/64)`` words; other axes are unchanged. For AdaBin activations
    pack ``v = (x - beta)/alpha`` (or use :func:`packed_adabin_conv2d`, which packs NCHW input
    to NHWC words internally with exactly this rule). Any real dtype; non-finite values are a
    ``ValueError``. Inverse: :func:`unpack_bits`.
    """
    arr = _as_input_array(x, "x", min_ndim=1, allow_empty=True)
    ax = _check_axis(axis, arr.ndim)
    moved = np.moveaxis(arr, ax, -1)
    n = moved.shape[-1]
    lead = moved.shape[:-1]
    x2 = np.ascontiguousarray(moved).reshape(-1, n) if moved.size else np.zeros((0, n))
    packed, bad = _kp.pack_lastaxis(x2, _n_words(n))
    if bad:
        raise ValueError("x contains NaN or infinity")
    return np.moveaxis(packed.reshape(lead + (_n_words(n),)), -1, ax)


def unpack_bits(packed, n, *, axis=-1):
    r"""Signs of :func:`pack_bits` words: float64 ``+1.0`` for bit 1, ``-1.0`` for bit 0.

    ``packed`` must have dtype ``uint64`` (``TypeError`` otherwise) and ``ceil(n/64)`` words
    along ``axis``; bits past ``n`` must be 0 (``ValueError``: a wrong ``n``). Returns an
    array with ``axis`` of length ``n``: ``unpack_bits(pack_bits(x), x.shape[-1])`` equals
    ``np.where(x >= 0, 1.0, -1.0)``.
    """
    if not isinstance(packed, np.ndarray):
        raise TypeError(f"packed must be a numpy.ndarray of uint64, got {type(packed).__name__}")
    if packed.dtype != np.uint64:
        raise TypeError(f"packed must have dtype uint64, got {packed.dtype}")
    if packed.ndim < 1:
        raise ValueError("packed must have at least 1 dimension, got a scalar")
    n = _check_int(n, "n", minimum=0)
    ax = _check_axis(axis, packed.ndim)
    if packed.shape[ax] != _n_words(n):
        raise ValueError(f"packed has {packed.shape[ax]} words along axis {ax}, but n={n} bits "
                         f"need {_n_words(n)}")
    moved = np.ascontiguousarray(np.moveaxis(packed, ax, -1))
    lead = moved.shape[:-1]
    p2 = moved.reshape(int(np.prod(lead)), moved.shape[-1])
    if n % WORD_BITS and p2.size:
        tail = ~np.uint64((1 << (n % WORD_BITS)) - 1)
        if np.any(p2[:, -1] & tail):
            raise ValueError(f"packed has nonzero bits past n={n} (tail bits must be 0)")
    out = _kp.unpack_lastaxis(p2, n)
    return np.moveaxis(out.reshape(lead + (n,)), -1, ax)


# ----------------------------------------------------------------------------------------------
# channel layout (segments of equal activation levels)
# ----------------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    """A channel layout. ``key`` is derived from *every* other field (:func:`_make_layout`),
    so caches keyed on it (kernel weights, per-tap popcounts, border tables on
    :class:`PackedWeights`) can never hand one layout's data to another: two segmentations
    with the same word positions but different segment boundaries or levels (64+128 vs
    128+64 channels) have different keys."""

    key: tuple
    n_words: int
    word_ptr: np.ndarray    # (n_words + 1,) into word_chans
    word_chans: np.ndarray  # (C,) channels in word order
    chan_word: np.ndarray   # (C,)
    chan_bit: np.ndarray    # (C,)
    seg_w0: np.ndarray      # (S,) first word of the segment
    seg_w1: np.ndarray      # (S,) one past its last word
    seg_n: np.ndarray       # (S,) channels in the segment
    seg_ca: np.ndarray      # (S,) c_a of the segment
    seg_da: np.ndarray      # (S,) d_a of the segment
    seg_group: np.ndarray   # (S,)
    g_seg0: np.ndarray      # (G,) first segment of each group
    g_seg1: np.ndarray      # (G,)
    g_w0: np.ndarray        # (G,) first word of each group
    wgm: int                # largest number of words of a group
    natural: bool           # the natural layout (channel g*Cg + 64q + b at bit b of word g*WG+q)


def _make_layout(*fields):
    """A :class:`_Layout` whose ``key`` is the content (dtype, shape, bytes) of all its fields."""
    parts = []
    for f in fields:
        if isinstance(f, np.ndarray):
            parts.append((f.dtype.str, f.shape, f.tobytes()))
        else:
            parts.append(int(f))
    return _Layout(tuple(parts), *fields)


def _natural_layout(c, groups, seg_ca, seg_da):
    cg = c // groups
    wg = _n_words(cg)
    q = np.arange(groups * wg)
    g_of_q = q // wg
    start = g_of_q * cg + (q % wg) * WORD_BITS
    word_ptr = np.append(start, c).astype(np.int64)
    cc = np.arange(c) % cg
    chan_word = (np.arange(c) // cg) * wg + cc // WORD_BITS
    g = np.arange(groups, dtype=np.int64)
    return _make_layout(groups * wg, word_ptr, np.arange(c, dtype=np.int64),
                        chan_word.astype(np.int64), (cc % WORD_BITS).astype(np.int64),
                        g * wg, (g + 1) * wg, np.full(groups, cg, dtype=np.int64),
                        np.ascontiguousarray(seg_ca, dtype=np.float64),
                        np.ascontiguousarray(seg_da, dtype=np.float64), g, g, g + 1, g * wg, wg,
                        True)


def _segmented_layout(c_a, d_a, groups):
    c = c_a.shape[0]
    cg = c // groups
    chan_word = np.empty(c, dtype=np.int64)
    chan_bit = np.empty(c, dtype=np.int64)
    word_ptr = [0]
    word_chans = []
    seg = {k: [] for k in ("w0", "w1", "n", "ca", "da", "g")}
    g_seg0 = np.empty(groups, dtype=np.int64)
    g_seg1 = np.empty(groups, dtype=np.int64)
    word = 0
    for g in range(groups):
        chans = np.arange(g * cg, (g + 1) * cg)
        pairs = np.stack([c_a[chans], d_a[chans]], axis=1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        g_seg0[g] = len(seg["w0"])
        for k in range(uniq.shape[0]):
            members = chans[inv == k]
            nw = _n_words(members.size)
            idx = np.arange(members.size)
            chan_word[members] = word + idx // WORD_BITS
            chan_bit[members] = idx % WORD_BITS
            for q in range(nw):
                block = members[q * WORD_BITS:(q + 1) * WORD_BITS]
                word_chans.extend(block.tolist())
                word_ptr.append(word_ptr[-1] + block.size)
            seg["w0"].append(word)
            seg["w1"].append(word + nw)
            seg["n"].append(members.size)
            seg["ca"].append(uniq[k, 0])
            seg["da"].append(uniq[k, 1])
            seg["g"].append(g)
            word += nw
        g_seg1[g] = len(seg["w0"])
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    seg_w0 = i64(seg["w0"])
    seg_w1 = i64(seg["w1"])
    g_w0 = seg_w0[g_seg0]
    wgm = int(np.max(seg_w1[g_seg1 - 1] - g_w0))
    return _make_layout(word, i64(word_ptr), i64(word_chans), chan_word, chan_bit,
                   seg_w0, seg_w1, i64(seg["n"]),
                   np.asarray(seg["ca"], dtype=np.float64), np.asarray(seg["da"], dtype=np.float64),
                   i64(seg["g"]), g_seg0, g_seg1, g_w0, wgm, False)


_LAYOUT_CACHE: dict = {}
_LAYOUT_CACHE_SIZE = 32


def _channel_layout(alpha_c, beta_c, groups, official):
    """Segments of equal activation levels ``(c_a, d_a)`` per group (see module docstring)."""
    d_a = alpha_c
    c_a = alpha_c * beta_c if official else beta_c
    c = c_a.shape[0]
    ca2 = c_a.reshape(groups, -1)
    da2 = d_a.reshape(groups, -1)
    natural = bool(np.all(ca2 == ca2[:, :1]) and np.all(da2 == da2[:, :1]))
    if natural:
        key = ("natural", c, groups, ca2[:, 0].tobytes(), da2[:, 0].tobytes())
    else:
        key = ("segmented", groups, c_a.tobytes(), d_a.tobytes())
    layout = _LAYOUT_CACHE.get(key)
    if layout is None:
        layout = (_natural_layout(c, groups, ca2[:, 0], da2[:, 0]) if natural
                  else _segmented_layout(c_a, d_a, groups))
        if len(_LAYOUT_CACHE) >= _LAYOUT_CACHE_SIZE:
            _LAYOUT_CACHE.pop(next(iter(_LAYOUT_CACHE)))
        _LAYOUT_CACHE[key] = layout
    return layout


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


class PackedWeights:
    r"""Pre-binarized, pre-packed AdaBin weights, reusable across many packed calls.

    ``PackedWeights(w)`` (or :func:`pack_weights`) with ``w`` ``(O, Cg, kh, kw)`` or linear
    ``(O, I)``, any real dtype (validated: ``TypeError``/``ValueError`` naming ``w``). One
    parallel kernel call binarizes and packs (:func:`adabin_np.kernels_packed.weight_pack`).
    Attributes:

    * ``shape``: ``(O, Cg, kh, kw)`` of the float weights (a linear ``(O, I)`` is ``(O, I, 1, 1)``);
    * ``alpha``, ``beta``: the weight binary set ``d_w = alpha_w``, ``c_w = beta_w`` per output
      channel, ``(O,)`` float64, bit-identical to :func:`~adabin_np.binarize.weight_binary_set`;
    * ``words``: ``(O, kh, kw, ceil(Cg/64))`` ``uint64``, bit ``b`` of word ``q`` at
      ``(o, ki, kj)`` is 1 iff ``u >= 0`` for input channel ``64*q + b``, tail bits 0 (a
      constant filter is all ones) -- the same layout as ``adabin_np.cuda.pack_weight_bits_cuda``;
    * ``bits``: the same signs unpacked, ``(O, Cg, kh, kw)`` uint8 (computed on access);
    * ``ties``: number of weights with ``u == 0`` exactly in non-constant filters (they pack as
      ``+1``; the official float path gives them ``sign = 0``);
    * ``w``: the float64 weights (a copy of the input is owned by the object; kept for the
      CUDA path).

    The kernel layout (``J``-channel weight blocks for the microkernel, in the channel order of
    the activation segments), the per-tap popcounts and the border tables are derived on first
    use and cached on the object under keys made of everything they depend on (the full channel
    layout including the activation levels, the block size, the geometry).
    """

    def __init__(self, w, *, _own_copy=True):
        # a public constructor: validated like pack_weights (Numba kernels do not bounds-check)
        w = _as_kernel_input(w, "w", min_ndim=2, allow_empty=True)
        if _own_copy:
            # PackedWeights owns its float weights (kept for the CUDA path); the one-shot CPU
            # calls build a throw-away object that never outlives the call and skip the copy
            # (512x512x3x3 float32: ~0.4 ms of a one-shot call)
            w = w.copy()
        if w.ndim == 2:
            w = w.reshape(w.shape + (1, 1))
        if w.ndim != 4:
            raise ValueError(f"w must have 4 (conv) or 2 (linear) dimensions, got shape {w.shape}")
        if 0 in w.shape:
            raise ValueError(f"w must be non-empty, got shape {w.shape}")
        o_, cg, kh, kw = w.shape
        w2 = w.reshape(o_, -1)
        self.alpha, self.beta, self.words, ties = _kp.weight_pack(w2, cg, kh * kw, _n_words(cg))
        if not (np.isfinite(self.alpha).all() and np.isfinite(self.beta).all()):
            raise ValueError("w contains NaN or infinity")
        self.words = self.words.reshape(o_, kh, kw, -1)
        self._w = w
        self.shape = w.shape
        self.ties = int(ties)
        self.shift = None
        self._level_bound = self._weight_level_bound()
        self._kernel_cache = {}
        self._bias_cache = {}
        self._call_cache = {}
        self._fast_cache = {}

    def with_affine(self, scale, shift):
        """These weights followed by a per-output-channel affine map ``y -> scale*y + shift``
        (a folded inference BatchNorm): a new object sharing ``words`` with ``alpha``, ``beta``
        multiplied by ``scale`` and ``shift`` added to every output. The formula is linear in
        ``(d_w, c_w)``, so the packed kernel computes ``scale*y + shift`` with no extra pass."""
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        shift = np.asarray(shift, dtype=np.float64).reshape(-1)
        if scale.shape != (self.shape[0],) or shift.shape != (self.shape[0],):
            raise ValueError(f"scale and shift must have shape ({self.shape[0]},)")
        if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
            raise ValueError("scale and shift must be finite")
        new = object.__new__(PackedWeights)
        new.__dict__.update(self.__dict__)
        new.alpha = self.alpha * scale
        new.beta = self.beta * scale
        new.shift = shift if self.shift is None else self.shift * scale + shift
        new._level_bound = new._weight_level_bound()
        new._kernel_cache = self._kernel_cache  # weight layout does not depend on the levels
        new._bias_cache = {}
        new._call_cache = {}
        new._fast_cache = {}
        return new

    def _weight_level_bound(self):
        """``Cg*kh*kw * max_o(|c_w| + |d_w|)``: with the activation factor of
        :class:`_ActPlan`, a bound on ``|y|`` (:func:`_check_overflow`)."""
        with np.errstate(over="ignore"):
            return float(np.prod(self.shape[1:])) * float(np.max(np.abs(self.beta)
                                                                 + np.abs(self.alpha)))

    @property
    def w(self):
        return self._w if self._w.dtype == np.float64 else self._w.astype(np.float64)

    @property
    def bits(self):
        o_, cg, kh, kw = self.shape
        return (unpack_bits(self.words, cg) > 0).astype(np.uint8).transpose(0, 3, 1, 2)

    def __repr__(self):
        o_, cg, kh, kw = self.shape
        return f"PackedWeights(O={o_}, Cg={cg}, kh={kh}, kw={kw}, ties={self.ties})"

    def _kernel_weights(self, layout, groups, j_block):
        """``(wtb, pcw)`` for a channel layout: the ``J``-channel weight blocks
        ``wtb[g*n_blk + b, t*wgm + word, jj]`` and the per-segment per-tap weight popcounts
        ``pcw[s, t, j]`` (cached per layout and block size)."""
        key = (layout.key, groups, j_block)
        entry = self._kernel_cache.get(key)
        if entry is None:
            o_, cg, kh, kw = self.shape
            og = o_ // groups
            n_blk = -(-og // j_block)
            words = self.words.reshape(o_, kh * kw, -1)
            if layout.natural:
                wtb = _kp.natural_kernel_weights(words, groups, j_block, n_blk)
            else:
                wtb = _kp.pack_weight_layout(words, cg, layout.chan_word, layout.chan_bit,
                                             layout.g_w0, layout.wgm, j_block, n_blk)
            pcw = _kp.weight_tap_popcounts(wtb, layout.seg_w0, layout.seg_w1, layout.seg_group,
                                           layout.g_w0, layout.wgm, og, kh * kw)
            entry = (wtb, pcw)
            if len(self._kernel_cache) >= 8:
                self._kernel_cache.pop(next(iter(self._kernel_cache)))
            self._kernel_cache[key] = entry
        return entry

    def _tables(self, layout, pcw, geometry, r_lo, r_hi, c_lo, c_hi, col_cls, row_cls):
        """Border tables of :func:`~adabin_np.kernels_packed.border_tables` (cached per
        layout -- which includes the activation levels -- and geometry: a model layer reuses
        them on every call). For output rows shorter than ``_PIXEL_TABLE_WIDTH`` the rescale
        tables ``brow``/``krow`` are expanded to one entry per output pixel, ``(1, O, OH*OW)``,
        so the kernel's epilogue is one long vectorised loop per task instead of rows of a few
        pixels (512ch 7x7, batch 8, one thread: 277 -> ~60 us)."""
        key = (layout.key, geometry)
        entry = self._bias_cache.get(key)
        if entry is None:
            shift = self.shift if self.shift is not None else np.zeros(self.shape[0])
            entry = _kp.border_tables(pcw, layout.seg_n, layout.seg_ca, layout.g_seg0,
                                      layout.g_seg1, self.alpha, self.beta, shift,
                                      r_lo, r_hi, c_lo, c_hi, self.shape[3], col_cls,
                                      row_cls, col_cls.shape[0] < _PIXEL_TABLE_WIDTH)
            if len(self._bias_cache) >= 16:
                self._bias_cache.pop(next(iter(self._bias_cache)))
            self._bias_cache[key] = entry
        return entry


def pack_weights(w, *, convention="paper"):
    r"""Binarize and pack conv weights ``(O, C/groups, kh, kw)`` (or linear ``(O, I)``) once.

    Returns a :class:`PackedWeights` for :func:`packed_adabin_conv2d_prepacked`,
    :func:`packed_linear` and :func:`packed_conv_counts`. Weight binary set per output channel
    ``(alpha_w, beta_w) = weight_binary_set(w)``; bit = 1 iff ``u = (W - beta_w)/alpha_w >= 0``.
    ``convention`` is validated but does not change the result: both conventions have weight
    levels ``beta_w +- alpha_w`` and the packed path maps ``u == 0`` to ``+1`` in both.
    """
    check_convention(convention)
    return PackedWeights(w)


def _as_packed_weights(w, *, transient=False):
    """``w`` itself if it is a :class:`PackedWeights`, else ``pack_weights(w)``; with
    ``transient=True`` (the caller drops the object before returning) the float weights are
    not copied."""
    if isinstance(w, PackedWeights):
        return w
    return PackedWeights(w, _own_copy=not transient)


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------


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


def _plain_geometry(v):
    return type(v) is int or (type(v) is tuple and len(v) == 2 and type(v[0]) is int
                              and type(v[1]) is int)


_GEOMETRY_CACHE: dict = {}


def _conv_params(x_shape, w_shape, stride, padding, dilation, groups):
    """:func:`~adabin_np.validation.conv_params` (same errors), remembered for geometries given
    as plain ints / pairs of ints (``bool`` or NumPy integers always go the validating way,
    so a cached entry can never stand in for an argument that would be refused)."""
    if not (_plain_geometry(stride) and _plain_geometry(padding) and _plain_geometry(dilation)
            and type(groups) is int):
        return conv_params(x_shape, w_shape, stride, padding, dilation, groups, w_name="w")
    key = (x_shape, w_shape, stride, padding, dilation, groups)
    p = _GEOMETRY_CACHE.get(key)
    if p is None:
        p = conv_params(x_shape, w_shape, stride, padding, dilation, groups, w_name="w")
        if len(_GEOMETRY_CACHE) >= 256:
            _GEOMETRY_CACHE.pop(next(iter(_GEOMETRY_CACHE)))
        _GEOMETRY_CACHE[key] = p
    return p


def _output_dtype(x):
    """float32 in -> float32 out; every other input (converted to float64) -> float64."""
    return np.float32 if x.dtype == np.float32 else np.float64


class _ActPlan(NamedTuple):
    """Everything a packed call derives from the activation set alone (cached by
    :func:`_act_plan`): the channel layout, the per-channel thresholds of
    :func:`~adabin_np.kernels_packed.activation_thresholds` for the input dtype, and
    ``bound = max_c(|c_a| + |d_a|)``, the largest activation level magnitude (overflow check)."""

    layout: _Layout
    mode: np.ndarray
    thr: np.ndarray
    tie: np.ndarray
    bound: float
    uid: int  # never reused: keys the per-weights call cache (:func:`_run_cpu`)


_ACT_CACHE: dict = {}
_ACT_CACHE_SIZE = 64
_ACT_UIDS = itertools.count()


def _act_plan(alpha_c, beta_c, groups, official, dtype):
    """The :class:`_ActPlan` of an activation set, keyed on the exact bytes of ``alpha_c`` and
    ``beta_c`` (so two sets share an entry only when they are bit-identical), the groups, the
    convention and the input dtype. Saves ~25 us per call at batch 1 (layout comparison and
    threshold tables)."""
    dtype = np.dtype(dtype)
    key = (alpha_c.tobytes(), beta_c.tobytes(), groups, official, dtype.str)
    plan = _ACT_CACHE.get(key)
    if plan is None:
        layout = _channel_layout(alpha_c, beta_c, groups, official)
        mode, thr, tie = _kp.activation_thresholds(alpha_c, beta_c, dtype)
        bound = _act_bound(alpha_c, beta_c, official)
        for arr in (mode, thr, tie):
            arr.flags.writeable = False
        plan = _ActPlan(layout, mode, thr, tie, bound, next(_ACT_UIDS))
        if len(_ACT_CACHE) >= _ACT_CACHE_SIZE:
            _ACT_CACHE.pop(next(iter(_ACT_CACHE)))
        _ACT_CACHE[key] = plan
    return plan


_SCALAR_TYPES = (float, int)


@functools.lru_cache(maxsize=64)
def _scalar_activation_params(alpha, beta, channels):
    a, b, _ = activation_params(alpha, beta, channels)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def _act_params(alpha, beta, channels):
    """``(alpha_c, beta_c)`` as :func:`~adabin_np.validation.activation_params` (same errors);
    a pair of plain Python numbers is validated once and its read-only arrays are reused."""
    if type(alpha) in _SCALAR_TYPES and type(beta) in _SCALAR_TYPES:
        return _scalar_activation_params(alpha, beta, channels)
    a, b, _ = activation_params(alpha, beta, channels)
    return a, b


def _pack_input(x, alpha_c, beta_c, act):
    """Binarize + pack ``x`` into NHWC words (plus the zero pixel); returns ``(xa, ties)``."""
    n_, c_, h_, w_ = x.shape
    layout = act.layout
    xa = np.empty((n_ * h_ * w_ + 1, layout.n_words), dtype=np.uint64)
    ties, bad = _kp.pack_activations(x, act.mode, act.thr, act.tie, alpha_c, beta_c,
                                     layout.word_ptr, layout.word_chans, xa,
                                     _h_chunk(h_, n_ * layout.n_words))
    if bad:
        raise ValueError("x contains NaN or infinity")
    return xa, ties


_NO_F64 = np.zeros(0)
_STAGE_CLOCK = [time.perf_counter]  # the benchmark may switch the stage clock to thread_time


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
    mid = (h_, w_, p.out_h, wtb, variant, tp, layout.wgm, layout.g_w0, og,
           layout.seg_w0, layout.seg_w1, layout.seg_da, layout.g_seg0, layout.g_seg1,
           layout.seg_n, brow, krow, pinv, r_lo, r_hi, c_lo, c_hi, pw.alpha, pw.beta,
           row_cls, col_cls, kh, kw, p.stride[0], p.stride[1], p.padding[0],
           p.padding[1], p.dilation[0], p.dilation[1], rows, bpt)
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


def _info(act_ties, weight_ties, official):
    flips = act_ties + weight_ties if official else 0
    return PackedInfo(int(act_ties), int(weight_ties), int(flips))


# ----------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------


_F32_SAFE = 1e-8 * float(np.finfo(np.float32).max)
_F64_SAFE = 1e-8 * float(np.finfo(np.float64).max)


def _check_overflow(y, pw, act_bound):
    """Refuse a float64 overflow without scanning y when a bound proves there is none.

    Every output is a sum over at most ``Cg*kh*kw`` taps of (activation level) x (weight level),
    so ``|y| <= Cg*kh*kw * max(|c_a| + |d_a|) * max(|c_w| + |d_w|)`` (``act_bound`` is the
    activation factor, :class:`_ActPlan`; the weight factor is cached on the
    :class:`PackedWeights`); only when that bound is not far below the float range is ``y``
    itself checked.
    """
    bound = pw._level_bound * act_bound  # Python floats: overflow gives inf, no warning
    if bound < (_F32_SAFE if y.dtype == np.float32 else _F64_SAFE):
        return y
    if y.dtype == np.float32 and not np.isfinite(y).all():
        raise ValueError("packed_adabin_conv2d: the result overflows float32 for these (finite) "
                         "float32 inputs; pass float64 input for a float64 result")
    return finite_result(y, "packed_adabin_conv2d")


def _act_bound(alpha_c, beta_c, official):
    with np.errstate(over="ignore"):
        c_a = alpha_c * beta_c if official else beta_c
        return float(np.max(np.abs(c_a) + np.abs(alpha_c)))


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fast_key(x, pw, alpha, beta, stride, padding, dilation, groups, convention, device,
              return_info):
    """The key under which a CPU call's validated arguments are remembered on its
    :class:`PackedWeights` (``None``: this call always takes the validating route).

    Only calls whose every argument is of an exact plain type qualify -- an ``ndarray`` (not a
    subclass) of native float32/float64 that the kernels take as is (4-D, C-contiguous,
    aligned, writeable), plain ``float``/``int`` activation parameters, plain-int geometry,
    ``str`` convention, ``device="cpu"``, ``return_info=False`` -- so equal keys mean equal
    validation outcomes (``True`` never stands in for ``1``: a ``bool`` does not qualify)."""
    if (type(x) is not np.ndarray or type(pw) is not PackedWeights
            or type(alpha) not in _SCALAR_TYPES or type(beta) not in _SCALAR_TYPES
            or type(device) is not str or device != "cpu" or return_info is not False
            or type(convention) is not str or type(groups) is not int
            or not (_plain_geometry(stride) and _plain_geometry(padding)
                    and _plain_geometry(dilation))):
        return None
    dt = x.dtype
    fl = x.flags
    if (x.ndim != 4 or dt not in _KERNEL_DTYPES or not fl.c_contiguous or not fl.aligned
            or not fl.writeable):
        return None
    return (x.shape, dt.char, alpha, beta, stride, padding, dilation, groups, convention)


def packed_adabin_conv2d_prepacked(x, packed_weights, alpha, beta, *, stride=1, padding=0,
                                   dilation=1, groups=1, convention="paper", device="cpu",
                                   return_info=False):
    r""":func:`packed_adabin_conv2d` with weights packed once by :func:`pack_weights`.

    A model layer calls this many times with the same :class:`PackedWeights`; per call only
    the activations are binarized and packed (fused with the finiteness check) and the popcount
    kernel runs: the kernel weight layout, the per-tap weight popcounts and the border-class
    table (``sum_P(s_w)``, ``N``) are cached on the :class:`PackedWeights` per channel layout,
    activation levels and geometry. A call whose arguments are all of exact plain types (an
    ``ndarray`` of native float32/float64 that the kernels take as is, ``float``/``int``
    ``alpha``/``beta``, int geometry, ``device="cpu"``, ``return_info=False``) is validated
    once and then remembered on the :class:`PackedWeights` (:func:`_fast_key`): repeating it
    costs one dictionary lookup before the kernels (which still check ``x`` for NaN/inf).
    """
    key = _fast_key(x, packed_weights, alpha, beta, stride, padding, dilation, groups,
                    convention, device, return_info)
    if key is not None:
        hit = packed_weights._fast_cache.get(key)
        if hit is not None:  # this exact call was validated before: only x's values are new
            p, alpha_c, beta_c, official = hit
            act = _act_plan(alpha_c, beta_c, p.groups, official, x.dtype)
            y, _ = _run_cpu(x, packed_weights, alpha_c, beta_c, p, official, act=act)
            return _check_overflow(y, packed_weights, act.bound)
    if not isinstance(packed_weights, PackedWeights):
        raise TypeError("packed_weights must be a PackedWeights (from pack_weights), got "
                        f"{type(packed_weights).__name__}")
    official = check_convention(convention) == "official"
    device = _check_device(device)
    if isinstance(return_info, (bool, np.bool_)) is False:
        raise TypeError(f"return_info must be a bool, got {type(return_info).__name__}")
    pw = packed_weights
    if device == "cuda":
        x = as_float_array(x, "x", ndim=4)
        if 0 in x.shape:
            raise ValueError(f"x must be non-empty, got shape {x.shape}")
    else:
        x = _as_kernel_input(x, "x", 4)
    p = _conv_params(x.shape, pw.shape, stride, padding, dilation, groups)
    alpha_c, beta_c = _act_params(alpha, beta, x.shape[1])
    if device == "cuda":
        try:
            from .cuda import packed_adabin_conv2d_cuda
        except ImportError as exc:
            raise RuntimeError(f"device='cuda' needs adabin_np.cuda (numba-cuda): {exc}") from exc
        y = _check_overflow(packed_adabin_conv2d_cuda(x, pw.w, alpha_c, beta_c, p, official),
                            pw, _act_bound(alpha_c, beta_c, official))
        if return_info:
            return y, _info(_count_ties(x, alpha_c, beta_c), pw.ties, official)
        return y
    act = _act_plan(alpha_c, beta_c, p.groups, official, x.dtype)
    y, act_ties = _run_cpu(x, pw, alpha_c, beta_c, p, official, act=act)
    y = _check_overflow(y, pw, act.bound)
    if key is not None:
        if len(pw._fast_cache) >= 16:
            pw._fast_cache.pop(next(iter(pw._fast_cache)))
        pw._fast_cache[key] = (p, alpha_c, beta_c, official)
    if return_info:
        return y, _info(act_ties, pw.ties, official)
    return y


def packed_adabin_conv2d(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                         convention="paper", device="cpu", return_info=False):
    r"""AdaBin convolution on bit-packed signs (XNOR/popcount), same API as
    :func:`adabin_np.adabin_conv2d`.

    ``x`` ``(N, C, H, W)`` (any real dtype), ``w`` ``(O, C/groups, kh, kw)`` (or a
    :class:`PackedWeights`), ``alpha``/``beta`` the activation set (scalars or ``(C,)``).
    Returns ``(N, O, H_out, W_out)`` -- **float32 for float32 ``x``, float64 for any other
    dtype** (computed in float64 and rounded once) -- equal to the float path up to rounding
    (both are
    ``sum_P (c_a + d_a s_a)(c_w + d_w s_w)``; the integer parts here are exact), except at
    exact threshold ties in the ``official`` convention (module docstring, tie rule).

    Steps: ``v = (x - beta)/alpha``, bit = ``v >= 0``, packed NHWC ``uint64`` (channels
    LSB-first, tail bits 0); weights packed per output channel (``u >= 0``); for every output
    pixel the valid taps ``P`` are visited and

    .. math::
        y = d_a d_w (N - 2\,\mathrm{popc}(a \oplus w)) + d_a c_w (2\,\mathrm{popc}(a) - N)
          + c_a d_w \textstyle\sum_P s_w + c_a c_w N

    with per-border-class ``sum_P(s_w)`` and ``N`` (zero-padding correction); per-channel sets
    sum this over segments of equal levels. Levels: paper ``c_a = beta, d_a = alpha``;
    official ``c_a = alpha*beta, d_a = alpha``; weights ``c_w = beta_w, d_w = alpha_w``.

    ``device="cuda"`` runs ``adabin_np.cuda.packed_adabin_conv2d_cuda`` (``RuntimeError`` if
    it cannot be imported or no GPU is usable). ``return_info=True`` returns
    ``(y, PackedInfo)`` with the tie counts (flip risk). Validation as in the float path
    (``TypeError``/``ValueError`` naming the argument); ``device`` other than ``"cpu"`` or
    ``"cuda"`` is a ``ValueError``.
    """
    check_convention(convention)
    _check_device(device)
    pw = _as_packed_weights(w, transient=True)
    return packed_adabin_conv2d_prepacked(x, pw, alpha, beta, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups,
                                          convention=convention, device=device,
                                          return_info=return_info)


def packed_conv_counts(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1):
    r"""Raw integer sums of the packed convolution, from the same kernel
    (:func:`~adabin_np.kernels_packed.bconv_forward` with ``raw=True``).

    Returns :class:`PackedCounts` ``(sum_aw, sum_a, sum_w, n_valid)`` with
    ``sum_aw = sum_P s_a s_w`` ``(N, O, OH, OW)``, ``sum_a = sum_P s_a`` ``(N, groups, OH, OW)``,
    ``sum_w = sum_P s_w`` ``(O, OH, OW)`` and ``n_valid = N`` ``(OH, OW)``, all int64, where
    ``s_a = +1`` iff ``(x - beta)/alpha >= 0`` and ``s_w = +1`` iff ``u >= 0``. They do not
    depend on the convention.
    """
    pw = _as_packed_weights(w, transient=True)
    x = _as_kernel_input(x, "x", 4)
    p = _conv_params(x.shape, pw.shape, stride, padding, dilation, groups)
    alpha_c, beta_c = _act_params(alpha, beta, x.shape[1])
    return _run_cpu(x, pw, alpha_c, beta_c, p, False, raw=True)


def _count_ties(x4, alpha_c, beta_c):
    v = (x4 - beta_c[None, :, None, None]) / alpha_c[None, :, None, None]
    return int(np.count_nonzero(v == 0.0))


def threshold_ties(x, alpha, beta):
    r"""Number of activations exactly at the threshold, ``v = (x - beta)/alpha == 0``.

    These are the elements where the ``official`` float path (``torch.sign(0) = 0``, level
    ``alpha*beta``) and the packed path (``s = +1``, level ``alpha*(beta + 1)``) binarize
    differently; in the ``paper`` convention both give ``+1``. ``x`` of any shape with
    channels on axis 1 for per-channel ``alpha``/``beta`` (as in
    :func:`~adabin_np.binarize.binarize_activations`). Returns an int. Weight ties are
    counted by :func:`pack_weights` (``PackedWeights.ties``).
    """
    _, x3, alpha_c, beta_c, _ = _activations_3d(x, alpha, beta)
    v = (x3 - beta_c[None, :, None]) / alpha_c[None, :, None]
    return int(np.count_nonzero(v == 0.0))


# ----------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------


def _linear_args(x, w):
    x = _as_kernel_input(x, "x", 2)
    if isinstance(w, PackedWeights):
        if w.shape[2:] != (1, 1):
            raise ValueError(f"w must be linear weights (O, I), got PackedWeights of shape "
                             f"{w.shape}")
        i_ = w.shape[1]
    else:
        w = as_float_array(w, "w", ndim=2)
        if 0 in w.shape:
            raise ValueError(f"w must be non-empty, got shape {w.shape}")
        i_ = w.shape[1]
    if x.shape[1] != i_:
        raise ValueError(f"x has {x.shape[1]} features but w expects {i_} (shape (O, I))")
    return x, w


def packed_linear(x, w, alpha, beta, *, convention="paper", return_info=False):
    r"""Bit-packed AdaBin linear layer: ``x`` ``(N, I)``, ``w`` ``(O, I)`` (or
    :class:`PackedWeights` from ``pack_weights(w)``) -> ``(N, O)``, float32 for float32 ``x``,
    float64 otherwise.

    A 1x1 convolution on 1x1 spatial input, so the same formula with ``N = I`` for every
    output: ``y = d_a d_w (I - 2 popc(a XOR w)) + d_a c_w (2 popc(a) - I) + c_a d_w sum(s_w)
    + c_a c_w I``. ``alpha``/``beta`` scalars or ``(I,)``. Tie rule as in
    :func:`packed_adabin_conv2d`.
    """
    x, w = _linear_args(x, w)
    out = packed_adabin_conv2d(x[:, :, None, None], w if isinstance(w, PackedWeights)
                               else w[:, :, None, None], alpha, beta, convention=convention,
                               return_info=return_info)
    if return_info:
        return out[0][:, :, 0, 0], out[1]
    return out[:, :, 0, 0]


def adabin_linear(x, w, alpha, beta, *, convention="paper"):
    r"""Float AdaBin linear layer: ``binarize_activations(x) @ binarize_weights(w).T``.

    ``x`` ``(N, I)``, ``w`` ``(O, I)``, ``alpha``/``beta`` scalars or ``(I,)``; computed as
    :func:`adabin_np.adabin_conv2d` on 1x1 spatial input (same conventions, float64).
    """
    x = as_float_array(x, "x", ndim=2)
    w = as_float_array(w, "w", ndim=2)
    if 0 in x.shape or 0 in w.shape:
        raise ValueError(f"x and w must be non-empty, got shapes {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[1]} "
                         f"(shape (O, I))")
    return adabin_conv2d(x[:, :, None, None], w[:, :, None, None], alpha, beta,
                         convention=convention)[:, :, 0, 0]
