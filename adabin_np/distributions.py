r"""Per-layer distribution analysis of AdaBin binary layers: binary sets, equalization, flip risk.

For every binary layer the analysis looks at the two tensors that get binarized, the real
weights ``W`` of shape ``(O, ...)`` and the layer's pre-binarization input ``x`` (channels on
axis 1), and at the binary sets the layer applies to them:

Weights (SPEC section 2), per output channel ``o`` with ``n`` elements:
    :math:`\beta_w = \mathrm{mean}(W_o)`, :math:`\alpha_w = \mathrm{std}(W_o)` (population),
    :math:`u = (W_o - \beta_w)/\alpha_w` and levels
    :math:`b_1 = \beta_w - \alpha_w`, :math:`b_2 = \beta_w + \alpha_w` in both conventions.
    A constant filter (``alpha_w = 0``) gets ``u = 0`` (as ``reference.spec.weight_u``).

Activations (SPEC section 1), scalar or per-channel ``(alpha_a, beta_a)``:
    :math:`v = (x - \beta_a)/\alpha_a`, threshold ``x = beta_a`` in both conventions, levels

    =============  ==============================  ==============================
                   ``b1`` (``s = -1``)              ``b2`` (``s = +1``)
    =============  ==============================  ==============================
    ``"paper"``    :math:`\beta_a - \alpha_a`       :math:`\beta_a + \alpha_a`
    ``"official"`` :math:`\alpha_a(\beta_a - 1)`    :math:`\alpha_a(\beta_a + 1)`
    =============  ==============================  ==============================

    ``b1`` is always the level of ``s = -1`` (for ``alpha_a < 0`` it is the larger one). In the
    official convention the midpoint of the levels, :math:`\alpha_a\beta_a`, is not the
    threshold :math:`\beta_a` unless ``alpha_a = 1``.

Flip risk (SPEC section 7; the definition of :mod:`adabin_np.testing`)
    An element is *at flip risk* at tolerance ``tol`` when it lies within ``tol`` of the
    threshold relative to its operands:

    .. math::
        |x - \beta_a| \le tol\,(|x| + |\beta_a| + |\alpha_a|)
        \;\Longleftrightarrow\; |v| \le tol\,\Bigl(1 + \frac{|x| + |\beta_a|}{|\alpha_a|}\Bigr)
        \qquad\text{(activations)}

    and :math:`|W - \beta_w| \le tol\,(|W| + |\beta_w| + \alpha_w)` (weights; constant
    filters, ``alpha_w = 0``, are never at risk). For ``|x|, |beta| << |alpha|`` this is simply
    :math:`|v| \le tol` (:math:`|u| \le tol`). Such an element's sign, hence its binary level,
    may change under a different rounding order (float32 vs float64), so two correct
    implementations may disagree there and only there. ``fraction = #{at risk} / #elements``
    (:func:`adabin_np.testing.flip_risk` / :func:`~adabin_np.testing.weight_flip_risk` masks).
    Exact ties ``v == 0`` are included and also counted separately (``exact_zero``): the
    conventions map them differently (paper ``+1``, official ``0``) and the bit-packed path
    maps them to ``+1``. ``flip_risk_curve`` gives the fraction over a ladder of tolerances
    (the distribution of the relative distance
    :math:`r = |x - \beta_a| / (|x| + |\beta_a| + |\alpha_a|)`), so any tolerance can be
    read off. With ``conv`` geometry on a record, ``outputs_at_risk`` is the fraction of the
    convolution's outputs that read at least one element at risk
    (:func:`adabin_np.testing.conv_flip_risk`).

Equalization
    :func:`adabin_np.equalization_search` finds the KL / L2 / entropy-optimal set
    ``{beta - alpha, beta + alpha}`` (threshold ``beta``) per weight channel, and for the
    activations on the flattened sample (one "channel"; per channel when the layer's activation
    set is per-channel). Activation searches use at most ``max_samples`` values drawn without
    replacement (seeded); moments, flip risk and histograms use every value.

Model-independent core: :class:`LayerRecord` and :func:`analyze_layers`. Model adapter:
:func:`analyze_model` (runs a float forward with ``record=True`` on a
:class:`adabin_np.models.BinaryNet`, writes figures and ``summary.json``). :func:`load_inputs`
reads a folder of images or an ``.npy`` array as model inputs.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .binarize import weight_binary_set
from .conv import conv2d
from .equalization import OBJECTIVES, equalization_search
from . import testing as _testing
from .validation import as_float_array, check_convention, conv_params

__all__ = [
    "DEFAULT_FLIP_TOL",
    "FLIP_RISK_LADDER",
    "LayerRecord",
    "activation_levels",
    "weight_levels",
    "relative_distance",
    "analyze_layers",
    "records_from_model",
    "analyze_model",
    "write_summary",
    "load_inputs",
]

#: Default flip-risk tolerance (relative, see the module docstring), the float32 tolerance of
#: :mod:`adabin_np.testing` (about 100 float32 ulps).
DEFAULT_FLIP_TOL = _testing.DEFAULT_TOL

#: Tolerances of ``flip_risk_curve``: 1e-9, 1e-8.5, ..., 1e-1.
FLIP_RISK_LADDER = tuple(float(t) for t in np.logspace(-9.0, -1.0, 17))

_HIST_BINS = 80
_U_RANGE = 4.0  # weight histograms cover u in [-4, 4]


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


def _flip_stats(mask, zero, tol, channel_axes):
    """JSON entry of a flip-risk mask (and its exact ties ``zero``)."""
    total = int(mask.size)
    count = int(np.count_nonzero(mask))
    out = {"tol": tol, "rule": "relative", "count": count, "total": total,
           "fraction": count / total, "exact_zero": int(np.count_nonzero(zero))}
    if channel_axes is not None:
        out["per_channel"] = _floats(np.mean(mask, axis=channel_axes))
    return out


def _curve(r):
    """Fractions of ``r <= t`` for every ``t`` of :data:`FLIP_RISK_LADDER`."""
    s = np.sort(r.ravel())
    n = max(s.size, 1)
    return {"tol": list(FLIP_RISK_LADDER),
            "fraction": [float(np.searchsorted(s, t, side="right") / n) for t in FLIP_RISK_LADDER]}


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


# ----------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------


def _floats(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _scalar_or_list(a):
    return float(a) if np.ndim(a) == 0 else _floats(a)


def _set_entry(alpha, beta, loss=None):
    """JSON entry of a midpoint-threshold set ``{beta - alpha, beta + alpha}``."""
    out = {"alpha": _scalar_or_list(alpha), "beta": _scalar_or_list(beta),
           "b1": _scalar_or_list(np.asarray(beta) - np.asarray(alpha)),
           "b2": _scalar_or_list(np.asarray(beta) + np.asarray(alpha)),
           "threshold": _scalar_or_list(beta)}
    if loss is not None:
        out["loss"] = _scalar_or_list(loss)
    return out


def _moments(x):
    """mean, population std, skewness and excess kurtosis of a flat sample (float64)."""
    x = x.ravel()
    mean = float(np.mean(x))
    d = x - mean
    var = float(np.mean(d * d))
    std = math.sqrt(var)
    if std == 0.0:
        return {"mean": mean, "std": 0.0, "skew": 0.0, "excess_kurtosis": 0.0}
    z = d / std
    return {"mean": mean, "std": std, "skew": float(np.mean(z ** 3)),
            "excess_kurtosis": float(np.mean(z ** 4) - 3.0)}


def _weight_r(w2, alpha, beta):
    """Relative distance of weights (O, n) to their channel threshold; inf for alpha_w = 0."""
    r = relative_distance(w2, alpha[:, None], beta[:, None])
    return np.where(alpha[:, None] > 0, r, np.inf)


def _weight_analysis(rec, tol, objectives):
    w2 = rec.weight.reshape(rec.weight.shape[0], -1)
    o, n = w2.shape
    alpha, beta = weight_binary_set(w2)
    u = rec.weight_u()
    # per-channel normalised histogram of u, averaged over channels (a density in u)
    edges = np.linspace(-_U_RANGE, _U_RANGE, _HIST_BINS + 1)
    width = edges[1] - edges[0]
    dens = np.zeros(_HIST_BINS)
    for row in u:
        c, _ = np.histogram(row, bins=edges)
        dens += c / (n * width)
    dens /= o
    mask = _testing.weight_flip_risk(w2, tol=tol)
    fr = _flip_stats(mask, (w2 == beta[:, None]) & (alpha[:, None] > 0), tol, 1)
    r = _weight_r(w2, alpha, beta)
    eq = {}
    for obj in objectives:
        res = equalization_search(w2, obj)
        entry = _set_entry(res.alpha, res.beta, res.loss)
        # the same set in u-space of each channel (KL: about (-1, 0, 1))
        safe = np.where(alpha == 0.0, 1.0, alpha)
        entry["u_b1"] = _floats((res.beta - res.alpha - beta) / safe)
        entry["u_b2"] = _floats((res.beta + res.alpha - beta) / safe)
        entry["u_threshold"] = _floats((res.beta - beta) / safe)
        eq[obj] = entry
    out = {
        "shape": list(rec.weight.shape),
        "channels": int(o),
        "n_per_channel": int(n),
        "alpha": _floats(alpha),
        "beta": _floats(beta),
        "b1": _floats(beta - alpha),
        "b2": _floats(beta + alpha),
        "gaussian": _moments(w2),
        "u_moments": _moments(u),
        "equalization": eq,
        "flip_risk": fr,
        "flip_risk_curve": _curve(r),
        "histogram": {"space": "u", "edges": _floats(edges), "density": _floats(dens),
                      "outside": float(np.mean(np.abs(u) > _U_RANGE))},
    }
    return out


def _subsample(flat, max_samples, rng):
    if flat.shape[-1] <= max_samples:
        return flat
    idx = np.sort(rng.choice(flat.shape[-1], size=max_samples, replace=False))
    return flat[..., idx]


def _outputs_at_risk(rx, rw, w_shape, geometry):
    """Fraction of conv outputs reading >= 1 flip-risk input tap or in-bounds weight.

    Same dependency rule as :func:`adabin_np.testing.conv_flip_risk`, computed with two small
    convolutions: the activation mask summed over each group's channels against a ones kernel,
    and (only when some weight is at risk) the ones input against the weight mask.
    """
    kw = {k: geometry.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                             ("groups", 1))}
    g = int(kw["groups"])
    n, c, h, w = rx.shape
    o, _, kh, kwd = w_shape
    per_group = rx.reshape(n, g, c // g, h, w).sum(axis=2, dtype=np.float64)
    dep = conv2d(per_group, np.ones((g, 1, kh, kwd)), **{**kw, "groups": g})
    dep = np.repeat(dep, o // g, axis=1)  # output channel o belongs to group o // (O/g)
    if rw.any():
        dep = dep + conv2d(np.ones((1, c, h, w)), rw.astype(np.float64), **kw)
    return float(np.mean(dep > 0.5))


def _activation_analysis(rec, tol, objectives, max_samples, rng, wmask):
    x = rec.activations
    v = rec.activation_v()
    b1, b2 = activation_levels(rec.act_alpha, rec.act_beta, rec.convention)
    official = rec.convention == "official"
    per_channel = rec.per_channel
    if per_channel:
        c = x.shape[1]
        chan = np.moveaxis(x, 1, 0).reshape(c, -1)
    else:
        chan = x.reshape(1, -1)
    sample = _subsample(chan, max_samples, rng)
    eq = {}
    for obj in objectives:
        res = equalization_search(sample, obj)
        if per_channel:
            eq[obj] = _set_entry(res.alpha, res.beta, res.loss)
        else:
            eq[obj] = _set_entry(res.alpha[0], res.beta[0], res.loss[0])
    axes = (0,) + tuple(range(2, x.ndim)) if x.ndim >= 2 else None
    mask = _testing.flip_risk(x, rec.act_alpha, rec.act_beta, tol=tol)
    fr = _flip_stats(mask, v == 0.0, tol, axes)
    a_b, b_b = rec.broadcast_set()
    r = relative_distance(x, a_b, b_b)
    if rec.conv is not None and x.ndim == 4:
        fr["outputs_at_risk"] = _outputs_at_risk(mask, wmask, rec.weight.shape, rec.conv)
    if axes is not None:
        ch_mean = x.mean(axis=axes)
        ch_std = x.std(axis=axes)
    else:
        ch_mean = ch_std = None
    # histogram: x-space for a scalar set, v-space (one threshold at 0) for a per-channel set
    data = v if per_channel else x
    space = "v" if per_channel else "x"
    lo, hi = np.quantile(data, [0.005, 0.995])
    marks = [0.0] if per_channel else [rec.act_beta, float(b1), float(b2)]
    lo, hi = min(lo, *marks), max(hi, *marks)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.05 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, _HIST_BINS + 1)
    counts, _ = np.histogram(data, bins=edges)
    dens = counts / (data.size * (edges[1] - edges[0]))
    pos = np.count_nonzero(v > 0) + (0 if official else np.count_nonzero(v == 0))
    out = {
        "shape": list(x.shape),
        "total": int(x.size),
        "samples_for_search": int(sample.shape[-1] * sample.shape[0]),
        "per_channel": bool(per_channel),
        "alpha": _scalar_or_list(rec.act_alpha),
        "beta": _scalar_or_list(rec.act_beta),
        "threshold": _scalar_or_list(rec.act_beta),
        "b1": _scalar_or_list(b1),
        "b2": _scalar_or_list(b2),
        "fraction_b2": float(pos / v.size),
        "gaussian": _moments(x),
        "equalization": eq,
        "flip_risk": fr,
        "flip_risk_curve": _curve(r),
        "histogram": {"space": space, "edges": _floats(edges), "density": _floats(dens),
                      "outside": float(np.mean((data < edges[0]) | (data > edges[-1])))},
    }
    if ch_mean is not None:
        out["channel_mean"] = _floats(ch_mean)
        out["channel_std"] = _floats(ch_std)
    return out


def _check_objectives(objectives):
    if isinstance(objectives, str):
        objectives = (objectives,)
    objectives = tuple(objectives)
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise ValueError(f"objectives must be drawn from {OBJECTIVES}, got {obj!r}")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives has duplicates: {objectives}")
    return objectives


def _check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def analyze_layers(records: Iterable[LayerRecord], *, flip_tol=DEFAULT_FLIP_TOL,
                   objectives=OBJECTIVES, max_samples=65536, seed=0, progress=False):
    r"""Analyse binary layers; one JSON-ready dict per :class:`LayerRecord`, in order.

    Each dict has ``name``, ``convention`` and

    ``weight``
        ``shape``, ``channels``, ``n_per_channel``; per channel ``alpha``, ``beta`` (moment
        matched, = :func:`adabin_np.weight_binary_set`), ``b1 = beta - alpha``,
        ``b2 = beta + alpha``; ``gaussian`` (pooled raw ``mean``, ``std``, ``skew``,
        ``excess_kurtosis``), ``u_moments``; ``equalization[obj]`` with per-channel ``alpha``,
        ``beta``, ``b1``, ``b2``, ``threshold``, ``loss`` and the same set in each channel's
        u-space (``u_b1``, ``u_b2``, ``u_threshold``); ``flip_risk`` (``tol``, ``rule``,
        ``count``, ``total``, ``fraction``, ``exact_zero``, ``per_channel``),
        ``flip_risk_curve`` (``tol``, ``fraction`` over :data:`FLIP_RISK_LADDER`),
        ``histogram`` (``space="u"``, ``edges``, ``density`` = per-channel densities of ``u``
        averaged over channels, ``outside`` = fraction with ``|u| > 4``).
    ``activation``
        ``shape``, ``total``, ``samples_for_search``, ``per_channel``, ``alpha``, ``beta``,
        ``threshold`` (= beta), ``b1``, ``b2`` (per the convention), ``fraction_b2`` (share of
        elements binarized to ``b2``: ``v >= 0`` paper, ``v > 0`` official), ``gaussian``,
        ``channel_mean``/``channel_std`` (``ndim >= 2``), ``equalization[obj]`` (scalars, or
        per-channel lists for a per-channel set; levels are ``beta -+ alpha`` with threshold
        ``beta``), ``flip_risk`` (as for the weights, plus ``outputs_at_risk`` when the record
        has ``conv`` geometry), ``flip_risk_curve``, ``histogram`` (``space`` ``"x"`` for a
        scalar set, ``"v"`` for a per-channel one).

    Parameters
    ----------
    records : iterable of LayerRecord
        Layer names must be unique.
    flip_tol : float, keyword-only
        Relative flip-risk tolerance (default :data:`DEFAULT_FLIP_TOL` = 1e-5, the float32
        tolerance of :mod:`adabin_np.testing`; roughly ``|v| <= tol``).
    objectives : sequence of {"kl", "l2", "entropy"}, keyword-only
        Equalization objectives to run (default all three).
    max_samples : int, keyword-only
        Most activation values (per channel for a per-channel set) given to the equalization
        search; a seeded subsample without replacement beyond that (default 65536, >= 16).
    seed : int, keyword-only
        Seed of that subsample.
    progress : bool, keyword-only
        Show a tqdm progress bar over layers.
    """
    tol = _check_tol(flip_tol, "flip_tol")
    objectives = _check_objectives(objectives)
    max_samples = _check_int(max_samples, "max_samples", 16)
    seed = _check_int(seed, "seed", 0)
    if isinstance(records, LayerRecord):
        raise TypeError("records must be an iterable of LayerRecord, got a single LayerRecord")
    records = list(records)
    names = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, LayerRecord):
            raise TypeError(f"records[{i}] must be a LayerRecord, got {type(rec).__name__}")
        if rec.name in names:
            raise ValueError(f"duplicate layer name {rec.name!r} in records")
        names.add(rec.name)
    rng = np.random.default_rng(seed)
    it = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc="analyze", unit="layer")
    out = []
    for rec in it:
        out.append({
            "name": rec.name,
            "convention": rec.convention,
            "weight": _weight_analysis(rec, tol, objectives),
            "activation": _activation_analysis(rec, tol, objectives, max_samples, rng,
                                               _testing.weight_flip_risk(rec.weight, tol=tol)),
            **({"meta": rec.meta} if rec.meta else {}),
        })
    return out


# ----------------------------------------------------------------------------------------------
# model adapter
# ----------------------------------------------------------------------------------------------


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


def _jsonable(obj):
    """Recursively convert numpy scalars/arrays; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_summary(summary, path):
    """Write ``summary`` as strict JSON (non-finite numbers become ``null``); returns the path.

    One line per top-level field and one line per entry of ``layers``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _jsonable(summary)
    if not isinstance(data, dict):
        raise TypeError(f"summary must be a dict, got {type(summary).__name__}")

    def dump(v):
        return json.dumps(v, allow_nan=False, separators=(",", ":"), ensure_ascii=False)

    lines = []
    for key, value in data.items():
        if key == "layers" and isinstance(value, list):
            body = ",\n".join("  " + dump(la) for la in value)
            lines.append(f" {dump(key)}: [\n{body}\n ]" if value else f" {dump(key)}: []")
        else:
            lines.append(f" {dump(key)}: {dump(value)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


def analyze_model(model, x, *, out_dir=None, name="model", convention=None, progress=True,
                  flip_tol=DEFAULT_FLIP_TOL, objectives=OBJECTIVES, max_samples=65536,
                  batch_size=64, landscape=None, layers_per_figure=9):
    r"""Record every binary layer of ``model`` on ``x``, analyse it, optionally write figures.

    Returns the summary dict (JSON-ready)::

        {"name": name, "convention": ..., "flip_tol": ..., "n_inputs": N,
         "input_shape": [...], "objectives": [...], "figures": [...],
         "layers": [{"name": "layer1.0.conv1",
                     "weight": {"alpha": [...O], "beta": [...O], ...},
                     "activation": {"alpha": a, "beta": b, ...}, ...}, ...]}

    with the per-layer fields of :func:`analyze_layers`. With ``out_dir`` it writes
    ``out_dir/summary.json`` and the figures of :func:`adabin_np.plots.write_figures`
    (``layers_*.png`` pages of ``layers_per_figure`` layers, ``summary.png`` and
    ``landscape.png``; their names are listed in ``figures``). ``landscape`` is
    ``(layer_name, channel)`` for the loss-landscape figure (default: the first layer,
    channel 0).

    ``convention`` defaults to the model's; see :func:`records_from_model` for how the forward
    runs (eval mode, chunks of ``batch_size``; the model is left as it was).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    from . import __version__  # late: the package may import this module while initialising

    x = as_float_array(x, "x", min_ndim=2)
    records = records_from_model(model, x, convention=convention, batch_size=batch_size)
    layers = analyze_layers(records, flip_tol=flip_tol, objectives=objectives,
                            max_samples=max_samples, progress=progress)
    summary = {
        "name": name,
        "model": type(model).__name__,
        "adabin_np_version": __version__,
        "convention": records[0].convention,
        "flip_tol": float(flip_tol),
        "n_inputs": int(x.shape[0]),
        "input_shape": list(x.shape[1:]),
        "objectives": list(_check_objectives(objectives)),
        "figures": [],
        "layers": layers,
    }
    if out_dir is not None:
        from .plots import write_figures

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if landscape is None:
            landscape = (records[0].name, 0)
        lname, channel = landscape
        rec = {r.name: r for r in records}.get(lname)
        if rec is None:
            raise ValueError(f"landscape layer {lname!r} is not a binary layer of the model; "
                             f"choose from {[r.name for r in records]}")
        paths = write_figures(layers, out_dir, title=name, layers_per_figure=layers_per_figure,
                              landscape_weight=rec.weight, landscape_channel=channel,
                              landscape_name=lname)
        summary["figures"] = [p.name for p in paths]
        write_summary(summary, out_dir / "summary.json")
    return _jsonable(summary)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _read_image(path, size, channels):
    """Read an image, resize its shorter side to ``max(size)`` and centre-crop to ``size``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        h, w = size
        scale = max(h / im.height, w / im.width)
        nh, nw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - h) // 2, (nw - w) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.float64) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_inputs(path, *, size=(32, 32), channels=3, mean=None, std=None, limit=None):
    r"""Model inputs ``(N, channels, H, W)`` float64 from a folder of images or an ``.npy`` file.

    Folder: every ``*.png|jpg|jpeg|bmp|gif|tif|tiff|webp`` file (sorted by name), converted to
    RGB (``channels=3``) or grey (``channels=1``), scaled to ``[0, 1]``, resized so that it
    covers ``size = (H, W)`` (bilinear) and centre-cropped. ``.npy``: an array of shape
    ``(N, C, H, W)``, ``(N, H, W, C)`` (converted when ``C`` matches ``channels`` on the last
    axis only) or ``(N, H, W)`` for ``channels=1``; it is used as is (no rescaling, no
    resizing: ``H, W`` must equal ``size``). ``mean``/``std`` (scalars or one per channel)
    normalise as ``(x - mean)/std`` afterwards, for both sources. ``limit`` keeps the first
    ``limit`` inputs.
    """
    path = Path(path)
    channels = _check_int(channels, "channels", 1)
    if isinstance(size, (numbers.Integral, np.integer)):
        size = (int(size), int(size))
    if len(tuple(size)) != 2:
        raise ValueError(f"size must be an int or a pair (H, W), got {size!r}")
    size = tuple(_check_int(s, "size", 1) for s in size)
    if limit is not None:
        limit = _check_int(limit, "limit", 1)
    if not path.exists():
        raise FileNotFoundError(f"inputs not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files ({', '.join(_IMAGE_SUFFIXES)}) in {path}")
        if limit is not None:
            files = files[:limit]
        x = np.stack([_read_image(p, size, channels) for p in files])
    elif path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        x = as_float_array(arr, f"array in {path.name}")
        if x.ndim == 3 and channels == 1:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[1] != channels and x.shape[3] == channels:
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{path.name} must hold (N, {channels}, H, W) inputs, got shape "
                             f"{arr.shape}")
        if tuple(x.shape[2:]) != size:
            raise ValueError(f"{path.name} holds {x.shape[2]}x{x.shape[3]} inputs but the "
                             f"model expects {size[0]}x{size[1]} (.npy inputs are not resized)")
        if x.shape[0] == 0:
            raise ValueError(f"{path.name} holds no inputs")
        if limit is not None:
            x = x[:limit]
    else:
        raise ValueError(f"inputs must be a folder of images or an .npy file, got {path}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    for val, nm in ((mean, "mean"), (std, "std")):
        if val is None:
            continue
        arr = as_float_array(val, nm, allow_scalar=True)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, channels)):
            raise ValueError(f"{nm} must be a scalar or have {channels} entries, got {arr.shape}")
        if nm == "std" and np.any(arr <= 0):
            raise ValueError("std must be > 0")
        arr = arr.reshape(1, -1, 1, 1) if arr.ndim else arr
        x = x - arr if nm == "mean" else x / arr
    return x
