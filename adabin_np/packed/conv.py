"""Public packed convolution: :func:`packed_adabin_conv2d`, its prepacked and raw-count forms,
the tie report, the overflow refusal and the remembered-call fast path."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..binarize import _activations_3d
from ..validation import as_float_array, check_convention, finite_result
from .arguments import (
    _SCALAR_TYPES,
    _act_params,
    _as_kernel_input,
    _check_device,
    _conv_params,
    _plain_geometry,
    _signs,
)
from .cpu import PackedCounts, _run_cpu
from .layout import _act_bound, _act_plan
from .weights import PackedWeights, _as_packed_weights

__all__ = ["PackedCounts", "PackedInfo", "packed_adabin_conv2d",
           "packed_adabin_conv2d_prepacked", "packed_conv_counts", "threshold_ties"]


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


def _info(act_ties, weight_ties, official):
    flips = act_ties + weight_ties if official else 0
    return PackedInfo(int(act_ties), int(weight_ties), int(flips))


_F32_SAFE = 1e-8 * float(np.finfo(np.float32).max)
_F64_SAFE = 1e-8 * float(np.finfo(np.float64).max)


def _check_overflow(y, pw, act_bound):
    """Refuse a float64 overflow without scanning y when a bound proves there is none.

    Every output is a sum over at most ``Cg*kh*kw`` taps of (activation level) x (weight level),
    so ``|y| <= Cg*kh*kw * max(|c_a| + |d_a|) * max(|c_w| + |d_w|)`` (``act_bound`` is the
    activation factor, :class:`.layout._ActPlan`; the weight factor is cached on the
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
    return (x.shape, dt.char, alpha, beta, _signs(alpha, beta), stride, padding, dilation,
            groups, convention)


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
            p, alpha_c, beta_c, official, act = hit
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
            from ..cuda import packed_adabin_conv2d_cuda
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
        pw._fast_cache[key] = (p, alpha_c, beta_c, official, act)  # act: x's dtype is in key
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
