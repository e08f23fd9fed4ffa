"""Generic sign packing: :func:`pack_bits` / :func:`unpack_bits` (uint64 words, LSB-first)."""

from __future__ import annotations

import numpy as np

from .. import kernels_packed as _kp
from .arguments import WORD_BITS, _as_input_array, _check_axis, _check_int, _n_words

__all__ = ["pack_bits", "unpack_bits"]


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
