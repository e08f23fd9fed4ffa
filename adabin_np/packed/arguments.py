"""Argument validation of the packed entry points (the Numba kernels do not bounds-check).

Conversions of ``x``/``w`` for the kernels (float32 stays float32), device and integer checks,
and two remembered validations for the hot path: the convolution geometry for plain-int
arguments and the activation set for plain Python numbers (a ``bool`` or a NumPy scalar always
takes the validating route, so a remembered entry never stands in for a refused argument).
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from ..validation import activation_params, as_float_array, check_choice, conv_params

WORD_BITS = 64
DEVICES = ("cpu", "cuda")


def _check_device(device):
    return check_choice(device, "device", DEVICES)


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


_SCALAR_TYPES = (float, int)


@functools.lru_cache(maxsize=64)
def _scalar_activation_params(alpha, beta, channels, signs):
    # ``signs`` (of alpha and beta) keeps -0.0 and 0.0 apart: they compare and hash equal
    a, b, _ = activation_params(alpha, beta, channels)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def _signs(*values):
    """The sign bits of plain numbers (``-0.0`` and ``0.0`` are equal keys otherwise)."""
    return tuple(math.copysign(1.0, v) < 0 for v in values)


def _act_params(alpha, beta, channels):
    """``(alpha_c, beta_c)`` as :func:`~adabin_np.validation.activation_params` (same errors);
    a pair of plain Python numbers is validated once and its read-only arrays are reused."""
    if type(alpha) in _SCALAR_TYPES and type(beta) in _SCALAR_TYPES:
        return _scalar_activation_params(alpha, beta, channels, _signs(alpha, beta))
    a, b, _ = activation_params(alpha, beta, channels)
    return a, b
