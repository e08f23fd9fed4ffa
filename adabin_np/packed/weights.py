""":class:`PackedWeights` (:func:`pack_weights`): pre-binarized, pre-packed AdaBin weights with
their per-layout kernel blocks, border tables and call plans cached on the object."""

from __future__ import annotations

import numpy as np

from .. import kernels_packed as _kp
from ..validation import check_convention
from .arguments import _as_kernel_input, _n_words
from .bits import unpack_bits

__all__ = ["PackedWeights", "pack_weights"]

_PIXEL_TABLE_WIDTH = 32  # output rows shorter than this get per-pixel rescale tables


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
        :class:`.layout._ActPlan`, a bound on ``|y|`` (:func:`.conv._check_overflow`)."""
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
