"""Linear layers: :func:`packed_linear` (bit-packed) and :func:`adabin_linear` (float)."""

from __future__ import annotations

from ..conv import adabin_conv2d
from ..validation import as_float_array
from .arguments import _as_kernel_input
from .conv import packed_adabin_conv2d
from .weights import PackedWeights

__all__ = ["adabin_linear", "packed_linear"]


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
