r"""Layer records and binary-set formulas: what the analysis needs from one binary layer.

Activation levels (SPEC section 1), scalar or per-channel ``(alpha_a, beta_a)``:
    :math:`v = (x - \beta_a)/\alpha_a`, threshold ``x = beta_a`` in both conventions, levels
    ``paper`` :math:`(\beta_a - \alpha_a, \beta_a + \alpha_a)`, ``official``
    :math:`(\alpha_a(\beta_a - 1), \alpha_a(\beta_a + 1))`; ``b1`` is the level of ``s = -1``.
Weight levels (SPEC section 2), per output channel: ``beta_w = mean(W_o)``,
    ``alpha_w = std(W_o)`` (population), levels ``beta_w -+ alpha_w``.
Flip-risk ratio: :math:`r = |x - \beta| / (|x| + |\beta| + |\alpha|)`; at risk iff ``r <= tol``.

:class:`LayerRecord` holds one layer's weights, recorded activations and set (validated);
:func:`records_from_model` builds them from a model's recorded float forward (memory: every
binary layer's whole input; the streaming path of :mod:`.stream` does not need it).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..binarize import weight_binary_set
from .. import testing as _testing
from ..validation import as_float_array, check_convention, conv_params

__all__ = ["DEFAULT_FLIP_TOL", "FLIP_RISK_LADDER", "LayerRecord", "activation_levels",
           "weight_levels", "relative_distance", "records_from_model"]

#: Default flip-risk tolerance (relative, see the module docstring), the float32 tolerance of
#: :mod:`adabin_np.testing` (about 100 float32 ulps).
DEFAULT_FLIP_TOL = _testing.DEFAULT_TOL

#: Tolerances of ``flip_risk_curve``: 1e-9, 1e-8.5, ..., 1e-1.
FLIP_RISK_LADDER = tuple(float(t) for t in np.logspace(-9.0, -1.0, 17))

# ----------------------------------------------------------------------------------------------
# binary-set formulas
# ----------------------------------------------------------------------------------------------


def activation_levels(alpha, beta, convention="paper"):
    r"""Activation levels ``(b1, b2)`` of the set ``(alpha, beta)`` under ``convention``.

    ``paper``: :math:`(\beta - \alpha, \beta + \alpha)`; ``official``:
    :math:`(\alpha(\beta - 1), \alpha(\beta + 1))`. ``b1`` is the level of ``s = -1``
    (``x < beta`` for ``alpha > 0``). Scalars or arrays (broadcast); returns float64.
    """
    official = check_convention(convention) == "official"
    a = as_float_array(alpha, "alpha", allow_scalar=True)
    b = as_float_array(beta, "beta", allow_scalar=True)
    if official:
        return a * (b - 1.0), a * (b + 1.0)
    return b - a, b + a


def weight_levels(w):
    r"""Per-output-channel weight levels ``(b1, b2) = (beta_w - alpha_w, beta_w + alpha_w)``.

    The same in both conventions; ``(alpha_w, beta_w) = weight_binary_set(w)``.
    """
    alpha, beta = weight_binary_set(w)
    return beta - alpha, beta + alpha


def relative_distance(x, alpha, beta):
    r"""Relative distance of each value to its threshold, the flip-risk ratio.

    :math:`r = |x - \beta| / (|x| + |\beta| + |\alpha|)` elementwise with broadcasting
    (``inf`` where the denominator is 0). An element is at flip risk at ``tol`` iff
    ``r <= tol`` (up to the rounding of the division). For weights pass
    ``weight_binary_set``'s ``alpha_w, beta_w`` per channel; ``alpha_w = 0`` rows are never at
    risk and get ``inf``.
    """
    x = as_float_array(x, "x", allow_scalar=True)
    alpha = as_float_array(alpha, "alpha", allow_scalar=True)
    beta = as_float_array(beta, "beta", allow_scalar=True)
    den = np.abs(x) + np.abs(beta) + np.abs(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(x - beta) / den
    return np.where(den > 0, r, np.inf)


def _check_tol(tol, name):
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (numbers.Real, np.number)):
        raise TypeError(f"{name} must be a real number, got {type(tol).__name__}")
    tol = float(tol)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {tol}")
    return tol


def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerRecord:
    """What the analysis needs from one binary layer.

    Attributes
    ----------
    name : str
        Layer name (``state_dict`` prefix, e.g. ``"layer1.0.conv1"``).
    weight : array_like, shape (O, ...), ndim >= 2
        Real-valued weights, output channels on axis 0.
    activations : array_like, ndim >= 1
        Pre-binarization inputs of the layer (any number of samples); channels on axis 1 when
        the activation set is per-channel (then ``ndim >= 2``).
    act_alpha, act_beta : float or array_like of shape (C,)
        The layer's activation binary set. ``act_alpha`` must be non-zero everywhere.
    convention : {"paper", "official"}
        Decides the activation levels (see the module docstring).
    conv : dict, optional
        Convolution geometry ``{"stride", "padding", "dilation", "groups"}`` of the layer when
        ``weight`` is ``(O, C/groups, kh, kw)`` and ``activations`` its ``(N, C, H, W)`` input;
        enables ``activation.flip_risk.outputs_at_risk``.
    meta : dict, optional
        Free-form JSON-able metadata, copied into the layer's analysis.

    All arrays are validated (real, finite) and converted to float64 on construction.
    """

    name: str
    weight: np.ndarray
    activations: np.ndarray
    act_alpha: float | np.ndarray
    act_beta: float | np.ndarray
    convention: str = "paper"
    conv: dict | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, got {self.name!r}")
        where = f" (layer {self.name!r})"
        self.convention = check_convention(self.convention)
        self.weight = as_float_array(self.weight, "weight" + where, min_ndim=2)
        if 0 in self.weight.shape:
            raise ValueError(f"weight{where} must be non-empty, got shape {self.weight.shape}")
        self.activations = as_float_array(self.activations, "activations" + where, min_ndim=1)
        if self.activations.size == 0:
            raise ValueError(f"activations{where} must be non-empty, got shape "
                             f"{self.activations.shape}")
        a = as_float_array(self.act_alpha, "act_alpha" + where, allow_scalar=True)
        b = as_float_array(self.act_beta, "act_beta" + where, allow_scalar=True)
        for arr, nm in ((a, "act_alpha"), (b, "act_beta")):
            if arr.ndim > 1:
                raise ValueError(f"{nm}{where} must be a scalar or of shape (C,), got {arr.shape}")
        if a.ndim or b.ndim:
            if self.activations.ndim < 2:
                raise ValueError(f"per-channel act_alpha/act_beta{where} need activations with "
                                 f"a channel axis 1, got shape {self.activations.shape}")
            c = self.activations.shape[1]
            for arr, nm in ((a, "act_alpha"), (b, "act_beta")):
                if arr.ndim and arr.shape[0] != c:
                    raise ValueError(f"{nm}{where} has {arr.shape[0]} entries but the "
                                     f"activations have {c} channels (axis 1)")
        if np.any(a == 0.0):
            raise ValueError(f"act_alpha{where} must be non-zero (v = (x - beta)/alpha)")
        self.act_alpha = a if a.ndim else float(a)
        self.act_beta = b if b.ndim else float(b)
        if self.conv is not None:
            if not isinstance(self.conv, dict):
                raise TypeError(f"conv{where} must be a dict, got {type(self.conv).__name__}")
            unknown = set(self.conv) - {"stride", "padding", "dilation", "groups"}
            if unknown:
                raise ValueError(f"conv{where} has unknown keys {sorted(unknown)}")
            if self.activations.ndim != 4 or self.weight.ndim != 4:
                raise ValueError(f"conv{where} needs 4-d activations and weight, got shapes "
                                 f"{self.activations.shape} and {self.weight.shape}")
            conv_params(self.activations.shape, self.weight.shape,
                        self.conv.get("stride", 1), self.conv.get("padding", 0),
                        self.conv.get("dilation", 1), self.conv.get("groups", 1),
                        x_name="activations" + where, w_name="weight" + where)
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta{where} must be a dict, got {type(self.meta).__name__}")

    @property
    def per_channel(self) -> bool:
        """Whether the activation set is per-channel."""
        return np.ndim(self.act_alpha) > 0 or np.ndim(self.act_beta) > 0

    def broadcast_set(self):
        """``(alpha_a, beta_a)`` shaped to broadcast against ``activations``."""
        if not self.per_channel:
            return np.float64(self.act_alpha), np.float64(self.act_beta)
        x = self.activations
        shape = (1, -1) + (1,) * (x.ndim - 2)
        c = x.shape[1]
        return (np.broadcast_to(np.asarray(self.act_alpha, np.float64), (c,)).reshape(shape),
                np.broadcast_to(np.asarray(self.act_beta, np.float64), (c,)).reshape(shape))

    def activation_v(self) -> np.ndarray:
        """:math:`v = (x - \\beta_a)/\\alpha_a`, same shape as ``activations``."""
        a, b = self.broadcast_set()
        return (self.activations - b) / a

    def weight_u(self) -> np.ndarray:
        """:math:`u = (W_o - \\beta_w)/\\alpha_w` per channel, ``(O, n)``; 0 where alpha_w = 0."""
        w2 = self.weight.reshape(self.weight.shape[0], -1)
        alpha, beta = weight_binary_set(w2)
        safe = np.where(alpha == 0.0, 1.0, alpha)
        return np.where(alpha[:, None] == 0.0, 0.0, (w2 - beta[:, None]) / safe[:, None])


def _layer_set(layer, name):
    """``(weight, alpha_a, beta_a)`` of an AdaBin layer (duck-typed)."""
    try:
        w = layer.params["weight"]
        act = layer.binary_a.params
        return w, act["alpha_a"], act["beta_a"]
    except (AttributeError, KeyError, TypeError):
        raise TypeError(f"binary layer {name!r} ({type(layer).__name__}) must expose "
                        f"params['weight'] and binary_a.params['alpha_a'/'beta_a']") from None


def records_from_model(model, x, *, convention=None, batch_size=64):
    r"""Run a float forward of ``model`` on ``x`` with recording and build :class:`LayerRecord`\ s.

    ``model`` is a :class:`adabin_np.models.BinaryNet` (anything with ``binary_layers()`` and
    ``forward(x, record=True)`` storing each binary layer's input in ``recorded_input``).
    ``convention`` (default: the model's) is applied to the model for the forward and restored
    afterwards. The forward runs in eval mode (BatchNorm running statistics, which are not
    updated); the model's train/eval mode is restored afterwards. ``x`` is processed in chunks
    of ``batch_size`` and the recorded inputs are concatenated (memory: every binary layer's
    full input, in float64).
    """
    if not hasattr(model, "binary_layers") or not callable(model.binary_layers):
        raise TypeError(f"model must provide binary_layers() (an adabin_np.models.BinaryNet), "
                        f"got {type(model).__name__}")
    x = as_float_array(x, "x", min_ndim=2)
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample, got shape {x.shape}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    layers = list(model.binary_layers())
    if not layers:
        raise ValueError(f"{type(model).__name__} has no binary layers to analyse")
    old_conv = getattr(model, "convention", None)
    conv = old_conv if convention is None else check_convention(convention)
    if conv is None:
        conv = getattr(layers[0][1], "convention", "paper")
    was_training = bool(getattr(model, "training", False))
    chunks = {name: [] for name, _ in layers}
    try:
        if convention is not None and old_conv is not None and conv != old_conv:
            model.convention = conv
        model.eval()
        for start in range(0, x.shape[0], batch_size):
            model(x[start:start + batch_size], record=True)
            for name, layer in layers:
                rec = getattr(layer, "recorded_input", None)
                if rec is None:
                    raise RuntimeError(f"binary layer {name!r} recorded no input; the model's "
                                       f"forward(x, record=True) must set recorded_input")
                chunks[name].append(np.array(rec, dtype=np.float64, copy=True))
    finally:
        for _, layer in layers:
            if hasattr(layer, "recorded_input"):
                layer.recorded_input = None
            if hasattr(layer, "record"):
                layer.record = False
        if old_conv is not None and getattr(model, "convention", old_conv) != old_conv:
            model.convention = old_conv
        model.train(was_training)
    records = []
    for name, layer in layers:
        w, a, b = _layer_set(layer, name)
        geometry = None
        if all(hasattr(layer, k) for k in ("stride", "padding", "dilation", "groups")):
            geometry = {k: getattr(layer, k) for k in ("stride", "padding", "dilation", "groups")}
        records.append(LayerRecord(name, np.array(w, dtype=np.float64, copy=True),
                                   np.concatenate(chunks.pop(name), axis=0),
                                   np.array(a, dtype=np.float64, copy=True),
                                   np.array(b, dtype=np.float64, copy=True), conv,
                                   conv=geometry))
    return records
