"""Input validation at the Python boundary.

Numba kernels do not bounds-check, so every public function funnels its arguments through
these helpers before any kernel runs. Errors name the offending argument:

* ``TypeError``  -- wrong kind of object (complex, object, string or datetime dtypes,
  non-integer hyper-parameters, unknown types).
* ``ValueError`` -- right kind, wrong value (NaN/inf, wrong ndim or shape, channel mismatch,
  ``alpha == 0``, stride <= 0, negative padding, kernel larger than the padded input, ...).

Dtype rule: every real numeric dtype (bool, integer, float16/32/64, longdouble) is accepted and
converted to a C-contiguous float64 copy; any memory layout (Fortran order, negative strides,
views) therefore gives bit-identical results to a contiguous copy.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

__all__ = [
    "CONVENTIONS",
    "ConvParams",
    "as_float_array",
    "to_numpy",
    "check_convention",
    "check_finite_scalar",
    "activation_params",
    "conv_params",
    "conv_output_size",
    "finite_result",
]

CONVENTIONS = ("paper", "official")


def to_numpy(a, name):
    """Convert a user argument to a NumPy array, refusing what must not be converted silently.

    Every public entry point reaches user data through this function (directly or via
    :func:`as_float_array`), so the refusals below hold everywhere:

    * ``str``/``bytes``/``None``: ``TypeError``;
    * masked arrays: ``TypeError`` (a masked value would otherwise be used silently);
    * framework tensors that track gradients (``requires_grad=True``) or live on an accelerator:
      ``TypeError`` telling the caller to pass ``t.detach().cpu().numpy()``, instead of the
      framework's own ``RuntimeError``;
    * anything NumPy cannot convert (ragged lists, ...): ``TypeError``.
    """
    if isinstance(a, (str, bytes)) or a is None:
        raise TypeError(f"{name} must be a real numeric array, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; fill it first (np.ma.filled) so that no "
                        "masked value is used silently")
    if getattr(a, "requires_grad", False) is True:
        raise TypeError(f"{name} is a {type(a).__name__} that requires grad; pass "
                        f"{name}.detach().cpu().numpy() (the oracle takes plain arrays)")
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists, tensors on a GPU and the like
        raise TypeError(f"{name} could not be converted to an array: {exc} (framework tensors: "
                        f"pass {name}.detach().cpu().numpy())") from None


def as_float_array(a, name, *, ndim=None, min_ndim=None, allow_scalar=False, check_finite=True):
    """Return ``a`` as a C-contiguous, finite float64 array.

    Parameters
    ----------
    a : array_like
        Input data. Real numeric dtypes only.
    name : str
        Argument name used in error messages.
    ndim, min_ndim : int, optional
        Required exact / minimum number of dimensions.
    allow_scalar : bool
        Whether a 0-d input is acceptable when ``ndim``/``min_ndim`` are not given.
    check_finite : bool
        Whether to scan for NaN/inf here (``False`` for callers whose kernel checks in the same
        pass as its real work, like the bit-packing kernel).
    """
    arr = to_numpy(a, name)
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape}")
    if ndim is None and min_ndim is None and arr.ndim == 0 and not allow_scalar:
        raise ValueError(f"{name} must be an array, got a scalar")
    out = np.asarray(arr, dtype=np.float64, order="C")
    if not out.flags.writeable:  # one kernel specialisation: read-only inputs get a copy
        out = out.copy()
    if check_finite and out.size and not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def finite_result(result, what):
    """Return ``result`` (an array, float or tuple of them) after checking it is finite.

    Finite inputs can still overflow float64 (|x| ~ 1e200 times |w| ~ 1e110 summed over taps);
    the oracle then raises a ``ValueError`` instead of returning inf or NaN.
    """
    parts = result if isinstance(result, tuple) else (result,)
    for part in parts:
        if not np.isfinite(part).all():
            raise ValueError(f"{what}: the result overflows float64 for these (finite) inputs; "
                             "rescale x, w or the binary set")
    return result


def check_choice(value, name, choices):
    """``value`` if it is a string among ``choices``; ``TypeError`` for a non-string,
    ``ValueError`` naming the choices otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_convention(convention):
    """Validate the ``convention`` argument ("paper" or "official")."""
    return check_choice(convention, "convention", CONVENTIONS)


def check_finite_scalar(value, name, *, positive=False):
    """Validate a real finite Python/NumPy scalar and return it as float."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large to be represented as a float") from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def activation_params(alpha, beta, channels):
    """Validate activation binary-set parameters.

    ``alpha`` and ``beta`` are each a scalar or an array of shape ``(channels,)``. Returns
    ``(alpha_c, beta_c, per_channel)`` where ``alpha_c``/``beta_c`` are float64 arrays of shape
    ``(channels,)`` and ``per_channel`` tells whether either argument was an array (which
    decides whether gradients come back as scalars or per-channel arrays).

    ``alpha == 0`` anywhere is a ``ValueError`` (the normalisation v = (x - beta)/alpha is
    undefined). Negative alpha is allowed and follows the formulas.
    """
    per_channel = False
    out = []
    for value, name in ((alpha, "alpha"), (beta, "beta")):
        if to_numpy(value, name).dtype.kind == "b":
            raise TypeError(f"{name} must be a real number or array, got a boolean")
        arr = as_float_array(value, name, allow_scalar=True)
        if arr.ndim == 0:
            arr = np.full(channels, float(arr))
        elif arr.ndim == 1:
            if arr.shape[0] != channels:
                raise ValueError(
                    f"{name} has {arr.shape[0]} entries but the input has {channels} channels"
                )
            per_channel = True
        else:
            raise ValueError(f"{name} must be a scalar or have shape ({channels},), got {arr.shape}")
        out.append(np.asarray(arr, order="C"))
    if np.any(out[0] == 0.0):
        raise ValueError("alpha must be non-zero (the binary set {beta - alpha, beta + alpha} "
                         "collapses and v = (x - beta) / alpha is undefined)")
    return out[0], out[1], per_channel


_MAX_GEOMETRY = 2**31 - 1  # kernels index with int64; geometry stays far below overflow
_MAX_OUTPUT_ELEMENTS = 2**31  # 16 GiB of float64: larger outputs are refused, not attempted


def _pair(value, name, *, minimum):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got bool")
    if isinstance(value, (numbers.Integral, np.integer)):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if not all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
                   for v in value):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        cmp = "> 0" if minimum == 1 else ">= 0"
        raise ValueError(f"{name} must be {cmp}, got {value!r}")
    if max(pair) > _MAX_GEOMETRY:
        raise ValueError(f"{name} must be <= {_MAX_GEOMETRY}, got {value!r}")
    return pair


class ConvParams(NamedTuple):
    """Validated convolution geometry (all pairs are (height, width))."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_h: int
    out_w: int


def conv_output_size(size, k, stride, padding, dilation):
    """Output length of a convolution: floor((size + 2p - d(k-1) - 1)/s) + 1."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv_params(x_shape, w_shape, stride, padding, dilation, groups, *, x_name="x", w_name="w"):
    """Validate conv geometry for NCHW input ``x_shape`` and OIHW weights ``w_shape``."""
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (numbers.Integral, np.integer)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    stride = _pair(stride, "stride", minimum=1)
    padding = _pair(padding, "padding", minimum=0)
    dilation = _pair(dilation, "dilation", minimum=1)
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    if min(kh, kw, o, cg) < 1:
        raise ValueError(f"{w_name} must have non-empty dimensions, got shape {tuple(w_shape)}")
    if c % groups:
        raise ValueError(f"{x_name} has {c} channels, not divisible by groups={groups}")
    if o % groups:
        raise ValueError(f"{w_name} has {o} output channels, not divisible by groups={groups}")
    if c // groups != cg:
        raise ValueError(
            f"channel mismatch: {x_name} has {c} channels = {groups} groups x {c // groups}, "
            f"but {w_name} expects {cg} input channels per group (shape {tuple(w_shape)})"
        )
    eff_h = dilation[0] * (kh - 1) + 1
    eff_w = dilation[1] * (kw - 1) + 1
    if eff_h > h + 2 * padding[0] or eff_w > w + 2 * padding[1]:
        raise ValueError(
            f"{w_name} kernel (dilated {eff_h}x{eff_w}, dilation={dilation}) is larger than the "
            f"padded input {x_name} ({h + 2 * padding[0]}x{w + 2 * padding[1]}, padding={padding})"
        )
    out_h = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    padded = (h + 2 * padding[0]) * (w + 2 * padding[1])
    if n * o * out_h * out_w > _MAX_OUTPUT_ELEMENTS or padded > _MAX_OUTPUT_ELEMENTS:
        raise ValueError(
            f"output of shape ({n}, {o}, {out_h}, {out_w}) is too large; check padding={padding} "
            f"and the shape of {x_name}"
        )
    return ConvParams(stride, padding, dilation, groups, out_h, out_w)
