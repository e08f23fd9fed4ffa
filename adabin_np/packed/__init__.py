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

from .bits import pack_bits, unpack_bits
from .conv import (
    PackedCounts,
    PackedInfo,
    packed_adabin_conv2d,
    packed_adabin_conv2d_prepacked,
    packed_conv_counts,
    threshold_ties,
)
from .linear import adabin_linear, packed_linear
from .weights import PackedWeights, pack_weights

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
