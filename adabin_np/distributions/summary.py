r"""JSON entries of the analysis: weights (data-independent), activations (from streamed
statistics), one entry per layer, and ``summary.json``.

Weights (fixed, computed once): per output channel ``alpha_w``/``beta_w`` (moment matched),
levels, pooled moments, ``u``-space histogram (``u = (W - beta_w)/alpha_w`` in [-4, 4]),
flip risk and the KL/L2/entropy-optimal sets (:func:`adabin_np.equalization_search`).

Activations (merged :class:`~.stats.ActivationStats` of any number of chunks): exact counts
(flip risk, ties, level occupancy, flip-risk curve, conv outputs at risk, histogram bins on
edges fixed by the binary set), Chan/Pébay moments, per-channel mean/std, the equalization
search on the key-ordered bottom-k sample, and float-vs-packed agreement when recorded.

:func:`analyze_layers` is the in-memory entry point: one chunk per :class:`LayerRecord`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..binarize import weight_binary_set
from ..equalization import OBJECTIVES, equalization_search
from .. import testing as _testing
from .records import (DEFAULT_FLIP_TOL, FLIP_RISK_LADDER, LayerRecord, _check_int, _check_tol,
                      activation_levels, relative_distance)
from .stats import ActivationStats, LayerSpec, outputs_at_risk_count, salt

__all__ = ["analyze_layers", "layer_spec", "layer_entry", "activation_entry", "weight_entry",
           "write_summary", "jsonable"]

_HIST_BINS = 80
_U_RANGE = 4.0  # weight histograms cover u in [-4, 4]


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


def weight_entry(weight, tol, objectives):
    """The ``weight`` entry of a layer (see :func:`analyze_layers`); float64 ``(O, ...)``."""
    w2 = weight.reshape(weight.shape[0], -1)
    o, n = w2.shape
    alpha, beta = weight_binary_set(w2)
    safe_a = np.where(alpha == 0.0, 1.0, alpha)
    u = np.where(alpha[:, None] == 0.0, 0.0, (w2 - beta[:, None]) / safe_a[:, None])
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
        "shape": list(weight.shape),
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




def _outputs_at_risk(rx, rw, w_shape, geometry):
    """Fraction of conv outputs reading >= 1 flip-risk input tap or in-bounds weight."""
    count, total = outputs_at_risk_count(rx, rw, w_shape, geometry)
    return count / total


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


def layer_spec(name, weight, alpha, beta, convention, *, tol, conv=None, max_samples=65536,
               seed=0, index=0):
    """The :class:`~.stats.LayerSpec` of a layer: levels, histogram edges, weight flip mask.

    ``index`` (the layer's position) and ``seed`` salt the equalization sample's keys.
    """
    b1, b2 = activation_levels(alpha, beta, convention)
    wmask = _testing.weight_flip_risk(weight, tol=tol) if conv is not None else None
    return LayerSpec(name, alpha, beta, convention, tol, b1=b1, b2=b2, k=max_samples,
                     salt_=salt(seed, index), w_shape=tuple(weight.shape), wmask=wmask,
                     conv=conv)


def activation_entry(st: ActivationStats, objectives):
    """The ``activation`` entry of a layer from its merged statistics."""
    spec = st.spec
    n = st.total
    flip = {"tol": spec.tol, "rule": "relative", "count": st.flip, "total": n,
            "fraction": st.flip / n, "exact_zero": st.ties}
    if st.flip_chan is not None:
        per_elems = n // st.flip_chan.size
        flip["per_channel"] = _floats(st.flip_chan / per_elems)
    if spec.conv is not None and st.out_total:
        flip["outputs_at_risk"] = st.out_risk / st.out_total
        flip["outputs_at_risk_count"] = st.out_risk
        flip["outputs_total"] = st.out_total
    sample = st.sample_matrix()
    eq = {}
    for obj in objectives:
        res = equalization_search(sample, obj)
        if spec.per_channel:
            eq[obj] = _set_entry(res.alpha, res.beta, res.loss)
        else:
            eq[obj] = _set_entry(res.alpha[0], res.beta[0], res.loss[0])
    h = st.hist
    width = np.diff(h.edges)
    out = {
        "shape": [st.n_samples, *st.sample_shape],
        "total": n,
        "samples_for_search": int(sample.size),
        "per_channel": bool(spec.per_channel),
        "alpha": _scalar_or_list(spec.alpha),
        "beta": _scalar_or_list(spec.beta),
        "threshold": _scalar_or_list(spec.beta),
        "b1": _scalar_or_list(spec.b1),
        "b2": _scalar_or_list(spec.b2),
        "fraction_b2": st.n_b2 / n,
        "levels": {"b1": st.n_b1, "b2": st.n_b2, "zero": n - st.n_b1 - st.n_b2},
        "gaussian": st.moments.summary(),
        "equalization": eq,
        "flip_risk": flip,
        "flip_risk_curve": {"tol": list(FLIP_RISK_LADDER),
                            "count": [int(c) for c in st.curve],
                            "fraction": _floats(st.curve / n)},
        "histogram": {"space": "v" if spec.per_channel else "x", "edges": _floats(h.edges),
                      "counts": [int(c) for c in h.counts], "below": h.below, "above": h.above,
                      "density": _floats(h.counts / (n * width)),
                      "outside": (h.below + h.above) / n},
    }
    if st.chan is not None:
        out["channel_mean"] = _floats(st.chan.mean)
        out["channel_std"] = _floats(st.chan.std())
        out["channel_fraction_b2"] = _floats(st.b2_chan / (n // st.b2_chan.size))
    if st.packed_total:
        out["packed"] = {"level_disagree": st.packed_disagree, "total": st.packed_total,
                         "max_abs_diff": st.packed_maxdiff, "max_abs": st.packed_scale,
                         "rel_diff": st.packed_maxdiff / max(st.packed_scale, 1e-300)}
    return out


def layer_entry(name, convention, weight, st, tol, objectives, meta=None):
    """One layer's summary entry: ``name``, ``convention``, ``weight``, ``activation`` and
    ``per_channel`` = ``{"alpha_w", "beta_w"}`` (per output channel) and ``{"act_mean",
    "act_std", "act_flip_risk", "act_fraction_b2"}`` (per input channel; present when the
    activations have a channel axis)."""
    w = weight_entry(weight, tol, objectives)
    a = activation_entry(st, objectives)
    per = {"alpha_w": w["alpha"], "beta_w": w["beta"]}
    if "channel_mean" in a:
        per.update(act_mean=a["channel_mean"], act_std=a["channel_std"],
                   act_flip_risk=a["flip_risk"]["per_channel"],
                   act_fraction_b2=a["channel_fraction_b2"])
    out = {"name": name, "convention": convention, "weight": w, "activation": a,
           "per_channel": per}
    if meta:
        out["meta"] = meta
    return out


def analyze_layers(records: Iterable[LayerRecord], *, flip_tol=DEFAULT_FLIP_TOL,
                   objectives=OBJECTIVES, max_samples=65536, seed=0, progress=False):
    r"""Analyse binary layers; one JSON-ready dict per :class:`LayerRecord`, in order.

    Each dict has ``name``, ``convention``, ``per_channel`` (see :func:`layer_entry`) and

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
        elements binarized to ``b2``: ``v >= 0`` paper, ``v > 0`` official), ``levels``
        (exact counts ``b1``, ``b2``, ``zero``), ``gaussian`` (Chan/Pébay moments),
        ``channel_mean``/``channel_std``/``channel_fraction_b2`` (``ndim >= 2``),
        ``equalization[obj]`` (scalars, or per-channel lists for a per-channel set; levels are
        ``beta -+ alpha`` with threshold ``beta``; searched on a seeded sample of at most
        ``max_samples`` values, see :class:`~.stats.BottomK`), ``flip_risk`` (as for the
        weights, plus ``outputs_at_risk`` when the record has ``conv`` geometry),
        ``flip_risk_curve`` (exact ``count`` and ``fraction``), ``histogram`` (``space``
        ``"x"`` for a scalar set, ``"v"`` for a per-channel one; edges fixed by the set, see
        :func:`~.stats.activation_edges`; exact ``counts``, ``below``, ``above``, ``density``,
        ``outside``) and ``packed`` (float-vs-packed agreement, model runs only).

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
        search (default 65536, >= 16).
    seed : int, keyword-only
        Seed of that sample.
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
    it = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc="analyze", unit="layer")
    out = []
    for index, rec in enumerate(it):
        spec = layer_spec(rec.name, rec.weight, rec.act_alpha, rec.act_beta, rec.convention,
                          tol=tol, conv=rec.conv, max_samples=max_samples, seed=seed,
                          index=index)
        st = ActivationStats(spec)
        st.update(rec.activations, 0)
        out.append(layer_entry(rec.name, rec.convention, rec.weight, st, tol, objectives,
                               rec.meta))
    return out


def jsonable(obj):
    """Recursively convert numpy scalars/arrays; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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
    data = jsonable(summary)
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
