r"""Figures of the per-layer distribution analysis (:mod:`adabin_np.distributions`).

Every function takes the JSON-ready layer dicts of :func:`adabin_np.distributions.analyze_layers`
(or raw weights for the landscape), draws on a :class:`matplotlib.figure.Figure` with the Agg
canvas (no pyplot, no global backend switch, nothing is shown) and writes a PNG at
:data:`DPI` with 9-10 pt text, meant to be read at 100 %.

* :func:`plot_layers` -- one row per layer (at most :data:`MAX_LAYERS_PER_PAGE` a page), four
  panels per row:

  1. *weights*: histogram of :math:`u = (W_o - \beta_w)/\alpha_w`, each channel normalised to a
     density and averaged over channels, with the standard normal (the Gaussian fit: ``u`` has
     mean 0 and variance 1 in every channel by construction, so the histogram shows the
     *shape*: tails, skew, bimodality). Below it a strip with the threshold (``|``) and levels
     ``b1``/``b2`` (dots) of the layer's set (``u = -1, 0, +1``; it *is* the KL-optimal set,
     the moment match, so KL gets no row of its own) and of the L2 / entropy-optimal sets,
     mapped into each channel's u-space (median over channels, bars span the inter-quartile
     range).
  2. *activations*: log-density histogram of the pre-binarization input ``x`` (``v`` for
     per-channel sets) with the Gaussian fit :math:`N(\mathrm{mean}, \mathrm{std}^2)`, the
     threshold :math:`\beta_a`, the levels and the strip of the layer / KL / L2 / entropy
     sets. The histogram range is fixed by the analysis; values outside it are counted and
     printed at the edge they fall beyond (``◂ n`` / ``n ▸``), never dropped silently.
  3. *weight set per output channel*: the segment :math:`[\beta_w - \alpha_w,\ \beta_w +
     \alpha_w]` of every output channel with its threshold :math:`\beta_w`.
  4. *activations per input channel*: mean :math:`\pm` std of every channel of ``x``, the
     threshold and levels of the activation set, the share of the channel mapped to ``b2``
     (right axis) and, at the top, the channels holding elements at flip risk.

  The flip-risk band :math:`|v| \le tol` (resp. :math:`|u| \le tol`) is drawn on top of the
  histograms, at least :data:`MIN_BAND_FRACTION` of the axis wide so it stays visible; the
  exact count at risk is printed in the panel title.
* :func:`plot_summary` -- across layers (stage separators for ResNets): weight levels (mean
  over channels, +- one std across channels), activation levels and threshold, flip-risk
  fractions, share of activations mapped to ``b2``.
* :func:`plot_landscape` -- the equalization loss landscapes (KL, L2, entropy) of one weight
  channel on the same :math:`(\beta, \alpha)` axes, optima marked, next to that channel's
  histogram.
* :func:`write_figures` -- all of the above into a folder.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .equalization import OBJECTIVES, equalization_search
from .validation import as_float_array

__all__ = [
    "SET_COLORS",
    "MIN_BAND_FRACTION",
    "MAX_LAYERS_PER_PAGE",
    "DPI",
    "plot_layers",
    "plot_layer",
    "plot_summary",
    "plot_landscape",
    "write_figures",
    "layers_figure",
    "summary_figure",
    "landscape_figure",
]

#: Colours of the binary sets in every figure.
SET_COLORS = {"layer": "#d62728", "kl": "#1f77b4", "l2": "#ff7f0e", "entropy": "#2ca02c"}
_SET_LABELS = {"layer": "layer", "kl": "KL", "l2": "L2", "entropy": "entropy"}
_HIST_COLOR = "#b0b8c4"
_FIT_COLOR = "#333333"
_BAND_COLOR = "#9467bd"
_W_COLOR = "#1f77b4"
_A_COLOR = "#d62728"
_SHARE_COLOR = "#8c564b"

#: Smallest drawn width of the flip-risk band, as a fraction of the x-axis span.
MIN_BAND_FRACTION = 0.015
#: Most layers on one ``layers_*.png`` page (one row each).
MAX_LAYERS_PER_PAGE = 4
#: Resolution of every PNG; sizes below are in inches, text in points.
DPI = 100
_RC = {"font.size": 9.5, "axes.titlesize": 9.5, "axes.labelsize": 9.5, "xtick.labelsize": 8.5,
       "ytick.labelsize": 8.5, "legend.fontsize": 9}


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _clean_title(text):
    """``text`` with any filesystem path replaced by its file name (titles show no paths)."""
    def base(m):
        token = m.group(0)
        if not any(ch.isalpha() for ch in token):
            return token  # "1/2", "16/32": not a path
        return os.path.basename(token.rstrip("/\\")) or token
    return re.sub(r"(?:[A-Za-z]:)?(?:\.{0,2}[/\\])?(?:[^\s/\\()]+[/\\])+[^\s/\\()]*", base,
                  str(text))


def _pct(f):
    if f == 0:
        return "0%"
    if f < 1e-4:
        return f"{100 * f:.1e}%"
    return f"{100 * f:.2g}%" if f < 0.1 else f"{100 * f:.1f}%"


def _objectives(entry):
    return [o for o in OBJECTIVES if o in entry.get("equalization", {})]


def _med_iqr(values):
    a = np.atleast_1d(np.asarray(values, dtype=np.float64))
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return med, med - q1, q3 - med


def _normal_pdf(x, mean, std):
    if std <= 0:
        return np.zeros_like(x)
    z = (x - mean) / std
    return np.exp(-0.5 * z * z) / (std * math.sqrt(2.0 * math.pi))


def _arr(v):
    return np.atleast_1d(np.asarray(v, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# histogram panels
# ----------------------------------------------------------------------------------------------


def _strip(ax, rows, xlim):
    """Rows of ``(key, label, b1, threshold, b2)`` (each a list of values): median dots + IQR
    bars. Values beyond ``xlim`` are drawn as arrow heads at the edge with their value."""
    n = len(rows)
    lo_x, hi_x = xlim
    for r, (key, _, b1, thr, b2) in enumerate(rows):
        y = n - 1 - r
        color = SET_COLORS[key]
        ax.axhline(y, color="#e6e6e6", lw=0.8, zorder=0)
        for vals, marker in ((b1, "o"), (b2, "o"), (thr, "|")):
            med, lo, hi = _med_iqr(vals)
            if med < lo_x or med > hi_x:
                edge = lo_x if med < lo_x else hi_x
                ax.plot([edge], [y], marker="<" if med < lo_x else ">", color=color, ms=7,
                        clip_on=False)
                ax.annotate(f"{med:.3g}", (edge, y), xytext=(-6 if med > hi_x else 6, 0),
                            textcoords="offset points", fontsize=8, color=color, va="center",
                            ha="right" if med > hi_x else "left")
                continue
            if lo + hi > 0:
                ax.plot([med - lo, med + hi], [y, y], color=color, lw=1.4, solid_capstyle="butt")
            ax.plot([med], [y], marker=marker, color=color, ms=10 if marker == "|" else 6, mew=2,
                    ls="")
    ax.set_yticks(range(n))
    ax.set_yticklabels([label for _, label, *_ in rows][::-1])
    for tick, (key, *_) in zip(ax.get_yticklabels(), rows[::-1]):
        tick.set_color(SET_COLORS[key])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(*xlim)


def _band(ax, center, half, xlim):
    """The flip-risk band, on top of the histogram (zorder above the bars and lines)."""
    span = xlim[1] - xlim[0]
    half_drawn = max(half, 0.5 * MIN_BAND_FRACTION * span)
    ax.axvspan(center - half_drawn, center + half_drawn, facecolor=_BAND_COLOR, alpha=0.55,
               edgecolor=_BAND_COLOR, lw=0.8, zorder=6)


def _xlim(edges, marks):
    lo, hi = edges[0], edges[-1]
    finite = [m for m in marks if np.isfinite(m)]
    if finite:
        span = hi - lo
        lo = min(lo, min(finite) - 0.03 * span)
        hi = max(hi, max(finite) + 0.03 * span)
    return lo, hi


def _weight_panel(ax, axs, layer):
    w = layer["weight"]
    h = w["histogram"]
    edges = np.asarray(h["edges"])
    dens = np.asarray(h["density"])
    objs = [o for o in _objectives(w) if o != "kl"]  # the layer's set is the KL optimum
    rows = [("layer", "layer = KL", [-1.0], [0.0], [1.0])]
    rows += [(o, _SET_LABELS[o], w["equalization"][o]["u_b1"],
              w["equalization"][o]["u_threshold"], w["equalization"][o]["u_b2"]) for o in objs]
    xlim = (edges[0], edges[-1])
    ax.stairs(dens, edges, fill=True, color=_HIST_COLOR, zorder=2)
    xs = np.linspace(*xlim, 400)
    ax.plot(xs, _normal_pdf(xs, 0.0, 1.0), color=_FIT_COLOR, lw=1.0, ls="--", zorder=3)
    fr = w["flip_risk"]
    ratio = np.abs(_arr(w["beta"])) / np.maximum(_arr(w["alpha"]), 1e-300)
    ax.axvline(0.0, color=SET_COLORS["layer"], lw=1.2, zorder=4)
    for lev in (-1.0, 1.0):
        ax.axvline(lev, color=SET_COLORS["layer"], lw=1.0, ls=":", zorder=4)
    _band(ax, 0.0, fr["tol"] * (1.0 + 2.0 * float(np.median(ratio))), xlim)
    ax.set_xlim(*xlim)
    ax.set_ylim(0, max(dens.max(), 0.4) * 1.08)
    ax.tick_params(labelbottom=False)
    outside = h.get("outside", 0.0)
    ax.set_title(f"weights, {w['channels']} ch x {w['n_per_channel']}: density of u\n"
                 f"at flip risk {fr['count']}/{fr['total']}"
                 + (f"; |u| > 4 (not shown): {_pct(outside)}" if outside else ""), loc="left")
    _strip(axs, rows, xlim)
    axs.set_xlabel("u = (W − β_w)/α_w (per output channel)", labelpad=1)


def _act_rows(a, objs):
    if a["per_channel"]:
        alpha = _arr(a["alpha"]) * np.ones(len(_arr(a["b1"])))
        beta = _arr(a["beta"]) * np.ones(len(_arr(a["b1"])))

        def to_v(vals):
            return list((_arr(vals) - beta) / alpha)

        rows = [("layer", "layer", to_v(a["b1"]), [0.0], to_v(a["b2"]))]
        rows += [(o, _SET_LABELS[o], to_v(a["equalization"][o]["b1"]),
                  to_v(a["equalization"][o]["threshold"]), to_v(a["equalization"][o]["b2"]))
                 for o in objs]
        return rows, alpha, beta
    e = a["equalization"]
    rows = [("layer", "layer", [a["b1"]], [a["threshold"]], [a["b2"]])]
    rows += [(o, _SET_LABELS[o], [e[o]["b1"]], [e[o]["threshold"]], [e[o]["b2"]])
             for o in objs]
    return rows, None, None


def _outside_counts(a):
    """``(below, above)`` element counts outside the histogram's range."""
    h = a["histogram"]
    if "below" in h and "above" in h:
        return int(h["below"]), int(h["above"])
    total = int(a.get("total", 0))
    return None, int(round(float(h.get("outside", 0.0)) * total))


def _act_panel(ax, axs, layer):
    a = layer["activation"]
    h = a["histogram"]
    edges = np.asarray(h["edges"])
    dens = np.asarray(h["density"])
    objs = _objectives(a)
    fr = a["flip_risk"]
    rows, alpha, beta = _act_rows(a, objs)
    if a["per_channel"]:
        thr = 0.0
        half = fr["tol"] * (1.0 + 2.0 * float(np.median(np.abs(beta / alpha))))
        xlabel = "v = (x − β_a)/α_a (per-channel set)"
        fit = None
    else:
        thr = a["threshold"]
        half = fr["tol"] * (2.0 * abs(a["beta"]) + abs(a["alpha"])) / (1.0 - min(fr["tol"], 0.5))
        xlabel = "x (input of the binary layer)"
        fit = (a["gaussian"]["mean"], a["gaussian"]["std"])
    marks = [float(np.median(v)) for v in rows[0][2:]]  # the layer's own set stays in view
    xlim = _xlim(edges, marks)
    ax.stairs(dens, edges, fill=True, color=_HIST_COLOR, zorder=2)
    if fit is not None:
        xs = np.linspace(*xlim, 400)
        ax.plot(xs, _normal_pdf(xs, *fit), color=_FIT_COLOR, lw=1.0, ls="--", zorder=3)
    ax.axvline(thr, color=SET_COLORS["layer"], lw=1.2, zorder=4)
    for lev in (rows[0][2], rows[0][4]):
        ax.axvline(float(np.median(lev)), color=SET_COLORS["layer"], lw=1.0, ls=":", zorder=4)
    _band(ax, thr, half, xlim)
    ax.set_xlim(*xlim)
    positive = dens[dens > 0]
    if positive.size:
        ax.set_yscale("log")
        ax.set_ylim(max(positive.min() * 0.5, positive.max() * 1e-5), positive.max() * 2.0)
    below, above = _outside_counts(a)
    for count, x, ha, text in ((below, 0.01, "left", "◂ {n} below"),
                               (above, 0.99, "right", "{n} above ▸")):
        if count:
            ax.text(x, 0.03, text.format(n=count), transform=ax.transAxes, ha=ha, va="bottom",
                    fontsize=8.5, color="#222222", zorder=8,
                    bbox=dict(fc="white", ec="#999999", lw=0.5, alpha=0.9, pad=1.5))
    ax.tick_params(labelbottom=False)
    if a["per_channel"]:
        set_txt = "per-channel α_a, β_a"
    else:
        set_txt = f"α_a {a['alpha']:.3g}, β_a {a['beta']:.3g}"
    ax.set_title(f"activations ({layer['convention']}), log density; {set_txt}\n"
                 f"at flip risk {fr['count']}/{fr['total']}; mapped to b2: "
                 f"{_pct(a['fraction_b2'])}", loc="left")
    _strip(axs, rows, xlim)
    axs.set_xlabel(xlabel, labelpad=1)


# ----------------------------------------------------------------------------------------------
# per-channel panels
# ----------------------------------------------------------------------------------------------


def _per_channel(layer):
    """``per_channel`` of the layer dict, completed from the weight / activation entries."""
    per = dict(layer.get("per_channel") or {})
    w, a = layer["weight"], layer["activation"]
    per.setdefault("alpha_w", w["alpha"])
    per.setdefault("beta_w", w["beta"])
    if "act_mean" not in per and "channel_mean" in a:
        per["act_mean"] = a["channel_mean"]
        per["act_std"] = a.get("channel_std")
    if "act_fraction_b2" not in per and "channel_fraction_b2" in a:
        per["act_fraction_b2"] = a["channel_fraction_b2"]
    return per


def _channel_axis(ax, n):
    ax.set_xlim(-0.5 - 0.01 * n, n - 0.5 + 0.01 * n)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _weight_channels_panel(ax, layer):
    per = _per_channel(layer)
    alpha, beta = _arr(per["alpha_w"]), _arr(per["beta_w"])
    c = np.arange(alpha.size)
    lw = max(0.6, min(4.0, 220.0 / max(alpha.size, 1)))
    ax.vlines(c, beta - alpha, beta + alpha, color=_W_COLOR, lw=lw, alpha=0.8, zorder=2)
    ax.plot(c, beta, ls="", marker="_", ms=max(3.0, min(9.0, 300.0 / max(alpha.size, 1))),
            mew=1.6, color="k", zorder=3)
    ax.axhline(0.0, color="#999999", lw=0.6, zorder=1)
    _channel_axis(ax, alpha.size)
    ax.set_title(f"weight set per output channel\nα_w {alpha.min():.3g} .. {alpha.max():.3g}, "
                 f"β_w {beta.min():.2g} .. {beta.max():.2g}", loc="left")
    ax.set_xlabel("output channel o: bar b1..b2 = β_w ∓ α_w, tick β_w", labelpad=1)
    ax.grid(True, axis="y", color="#eeeeee", lw=0.6)


def _act_channels_panel(ax, layer):
    per = _per_channel(layer)
    a = layer["activation"]
    if "act_mean" not in per:
        ax.text(0.5, 0.5, "no channel axis in the recorded activations", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    mean = _arr(per["act_mean"])
    std = _arr(per["act_std"]) if per.get("act_std") is not None else np.zeros_like(mean)
    c = np.arange(mean.size)
    lw = max(0.6, min(3.0, 160.0 / max(mean.size, 1)))
    ax.vlines(c, mean - std, mean + std, color="#7f7f7f", lw=lw, zorder=2)
    ax.plot(c, mean, ls="", marker="o", ms=max(1.5, min(4.0, 160.0 / max(mean.size, 1))),
            color="k", zorder=3)
    thr, b1, b2 = _arr(a["threshold"]), _arr(a["b1"]), _arr(a["b2"])
    if thr.size == 1:
        ax.axhline(thr[0], color=SET_COLORS["layer"], lw=1.2, zorder=4)
        for lev in (b1[0], b2[0]):
            ax.axhline(lev, color=SET_COLORS["layer"], lw=1.0, ls=":", zorder=4)
    else:
        ax.plot(c, thr, ls="", marker="_", ms=8, mew=1.6, color=SET_COLORS["layer"], zorder=4)
    risk = per.get("act_flip_risk")
    head = "activations per input channel"
    if risk is not None:
        risky = np.flatnonzero(_arr(risk) > 0)
        if risky.size:
            ax.plot(risky, np.full(risky.size, 0.97), ls="", marker="v", ms=6,
                    color=_BAND_COLOR, transform=ax.get_xaxis_transform(), zorder=5,
                    clip_on=False)
        head += f" (▼ {risky.size} at flip risk)"
    _channel_axis(ax, mean.size)
    ax.set_title(head, loc="left")
    ax.set_xlabel("input channel: mean ± std; red: β_a, dotted: b1, b2", labelpad=1)
    ax.grid(True, axis="y", color="#eeeeee", lw=0.6)
    share = per.get("act_fraction_b2")
    if share is not None:
        share = _arr(share)
        tw = ax.twinx()
        tw.plot(c, share, ls="", marker="^", ms=4, color=_SHARE_COLOR, alpha=0.85, zorder=1)
        tw.set_ylim(-0.02, 1.02)
        tw.set_ylabel("share mapped to b2 (▲)", color=_SHARE_COLOR, labelpad=1)
        tw.tick_params(axis="y", colors=_SHARE_COLOR)
        constant = int(np.sum((share < 0.05) | (share > 0.95)))
        ax.set_title(f"{head}\n{constant}/{share.size} channels >= 95% one level", loc="left")


# ----------------------------------------------------------------------------------------------
# per-layer pages
# ----------------------------------------------------------------------------------------------


def _legend_handles():
    handles = [Patch(color=_HIST_COLOR, label="histogram"),
               Line2D([], [], color=_FIT_COLOR, ls="--", label="Gaussian fit"),
               Line2D([], [], color=SET_COLORS["layer"], lw=1.2, label="layer's threshold"),
               Line2D([], [], color=SET_COLORS["layer"], lw=1.0, ls=":",
                      label="layer's levels b1, b2"),
               Patch(facecolor=_BAND_COLOR, alpha=0.55, edgecolor=_BAND_COLOR,
                     label="flip-risk band (widened to show)"),
               Line2D([], [], color="#555555", marker="|", ls="", ms=10, mew=2,
                      label="strip: threshold"),
               Line2D([], [], color="#555555", marker="o", ls="", ms=6,
                      label="strip: b1, b2 (median, IQR over channels)")]
    handles += [Line2D([], [], color=SET_COLORS[k], marker="o", ls="", ms=6,
                       label="layer's set" if k == "layer" else f"{_SET_LABELS[k]}-optimal set")
                for k in ("layer", *OBJECTIVES)]
    return handles


_ROW_H = 3.6  # inches per layer row
_HEAD_H = 1.3  # inches for the title and the legend


def _layer_row(fig, spec, layer):
    n_strip = max(1 + len([o for o in _objectives(layer["weight"]) if o != "kl"]),
                  1 + len(_objectives(layer["activation"])))
    sub = spec.subgridspec(2, 4, height_ratios=[2.6, 0.32 + 0.24 * n_strip], hspace=0.05,
                           wspace=0.3, width_ratios=[1.0, 1.1, 0.9, 0.9])
    ax_w = fig.add_subplot(sub[0, 0])
    ax_ws = fig.add_subplot(sub[1, 0], sharex=ax_w)
    ax_a = fig.add_subplot(sub[0, 1])
    ax_as = fig.add_subplot(sub[1, 1], sharex=ax_a)
    ax_wc = fig.add_subplot(sub[:, 2])
    ax_ac = fig.add_subplot(sub[:, 3])
    _weight_panel(ax_w, ax_ws, layer)
    _act_panel(ax_a, ax_as, layer)
    _weight_channels_panel(ax_wc, layer)
    _act_channels_panel(ax_ac, layer)
    return ax_w


def plot_layers(layers, path, *, title=None):
    """One row of four panels per layer (see the module docstring); one PNG.

    At most :data:`MAX_LAYERS_PER_PAGE` layers (``ValueError`` beyond: use
    :func:`write_figures`, which pages them).
    """
    return _save(layers_figure(layers, title=title), path)


def layers_figure(layers, *, title=None) -> Figure:
    """The :class:`~matplotlib.figure.Figure` that :func:`plot_layers` saves."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    if len(layers) > MAX_LAYERS_PER_PAGE:
        raise ValueError(f"at most {MAX_LAYERS_PER_PAGE} layers a page, got {len(layers)}; "
                         f"write_figures() splits them into pages")
    with matplotlib.rc_context(_RC):
        n = len(layers)
        height = _ROW_H * n + _HEAD_H
        fig = Figure(figsize=(17.0, height))
        gs = fig.add_gridspec(n, 1, left=0.045, right=0.965, bottom=0.5 / height,
                              top=1.0 - (_HEAD_H + 0.35) / height, hspace=0.55)
        for i, layer in enumerate(layers):
            ax = _layer_row(fig, gs[i, 0], layer)
            ax.annotate(layer["name"], xy=(0, 1), xycoords="axes fraction", xytext=(0, 33),
                        textcoords="offset points", fontsize=11.5, fontweight="bold",
                        va="bottom")
        handles = _legend_handles()
        fig.legend(handles=handles, loc="upper left", ncol=math.ceil(len(handles) / 2),
                   frameon=False, bbox_to_anchor=(0.04, 1.0 - 0.4 / height),
                   columnspacing=1.4, handletextpad=0.5)
        fig.suptitle(_clean_title(title or "binary layers"), x=0.045, ha="left",
                     y=1.0 - 0.08 / height, va="top", fontsize=13, fontweight="bold")
        FigureCanvasAgg(fig)
        return fig


def plot_layer(layer, path, *, title=None):
    """One layer (the same four panels as :func:`plot_layers`)."""
    return plot_layers([layer], path, title=title or layer["name"])


# ----------------------------------------------------------------------------------------------
# summary across layers
# ----------------------------------------------------------------------------------------------


def _mean(v):
    return float(np.mean(_arr(v)))


def _stages(names):
    """``[(stage, first index, last index)]`` of dotted names grouped by their first part, when
    the model has such stages (``layer1.0.conv1`` ...); else ``[]``."""
    heads = [n.split(".")[0] if "." in n else None for n in names]
    if any(h is None for h in heads) or len(set(heads)) < 2:
        return []
    out = []
    for i, h in enumerate(heads):
        if out and out[-1][0] == h:
            out[-1][2] = i
        else:
            out.append([h, i, i])
    return [tuple(s) for s in out]


def plot_summary(layers, path, *, title=None):
    """Binary sets, flip risk and sign balance of every layer (x axis: layers in order)."""
    return _save(summary_figure(layers, title=title), path)


def summary_figure(layers, *, title=None) -> Figure:
    """The :class:`~matplotlib.figure.Figure` that :func:`plot_summary` saves."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    n = len(layers)
    x = np.arange(n)
    names = [la["name"] for la in layers]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(max(10.0, 0.42 * n + 6.5), 11.0), layout="constrained")
        axes = fig.subplots(4, 1, sharex=True, gridspec_kw=dict(height_ratios=[1, 1, 1, 0.8]))

        ax = axes[0]
        for key, marker in (("b1", "v"), ("b2", "^")):
            m = np.array([_mean(la["weight"][key]) for la in layers])
            s = np.array([np.std(_arr(la["weight"][key])) for la in layers])
            ax.fill_between(x, m - s, m + s, color=_W_COLOR, alpha=0.15, lw=0)
            ax.plot(x, m, marker=marker, color=_W_COLOR,
                    label=f"{key} = β_w {'−' if key == 'b1' else '+'} α_w")
        ax.plot(x, [_mean(la["weight"]["beta"]) for la in layers], marker="|", color=_W_COLOR,
                ls=":", label="threshold β_w")
        ax.axhline(0.0, color="#999999", lw=0.6)
        ax.set_ylabel("weight levels\n(mean ± std over channels)")

        ax = axes[1]
        for key, marker in (("b1", "v"), ("b2", "^")):
            ax.plot(x, [_mean(la["activation"][key]) for la in layers], marker=marker,
                    color=_A_COLOR, label=f"learned {key}")
            if "kl" in _objectives(layers[0]["activation"]):
                ax.plot(x, [_mean(la["activation"]["equalization"]["kl"][key]) for la in layers],
                        marker=marker, color=SET_COLORS["kl"], ls="--", mfc="none", lw=0.9,
                        label=f"KL-optimal {key}")
        ax.plot(x, [_mean(la["activation"]["threshold"]) for la in layers], marker="|",
                color=_A_COLOR, ls=":", ms=10, label="learned threshold β_a")
        ax.axhline(0.0, color="#999999", lw=0.6)
        conv = sorted({la["convention"] for la in layers})
        ax.set_ylabel("activation levels\n(" + "/".join(conv) + " convention)")

        ax = axes[2]
        tol = layers[0]["weight"]["flip_risk"]["tol"]
        fw = np.array([la["weight"]["flip_risk"]["fraction"] for la in layers])
        fa = np.array([la["activation"]["flip_risk"]["fraction"] for la in layers])
        ax.plot(x, fw, marker="s", color=_W_COLOR, label="weights")
        ax.plot(x, fa, marker="o", color=_A_COLOR, label="activations")
        fo = [la["activation"]["flip_risk"].get("outputs_at_risk") for la in layers]
        if all(f is not None for f in fo):
            fo = np.array(fo, dtype=np.float64)
            ax.plot(x, fo, marker="D", ms=4, color="#7f7f7f", ls="--",
                    label="conv outputs reading ≥ 1\nat-risk input or weight")
        else:
            fo = np.zeros(0)
        z = np.array([la["activation"]["flip_risk"]["exact_zero"] > 0 for la in layers])
        if z.any():
            ax.plot(x[z], fa[z], ls="", marker="*", ms=11, color="k",
                    label="layers with exact ties v = 0")
        smallest = min([f for f in np.concatenate([fw, fa, fo]) if f > 0], default=1e-6)
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(smallest)))
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"flip-risk fraction\n(relative tol {tol:g})")

        ax = axes[3]
        ax.plot(x, [la["activation"]["fraction_b2"] for la in layers], marker="o",
                color=_A_COLOR, label="activations → b2")
        ax.axhline(0.5, color="#999999", lw=0.8, ls="--", label="balanced (max entropy)")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of b2")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=50 if n > 8 else 30, ha="right")
        stages = _stages(names)
        for ax in axes:
            ax.grid(True, color="#eeeeee", lw=0.6)
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False,
                      borderaxespad=0.0)
            for _, first, _ in stages[1:]:
                ax.axvline(first - 0.5, color="#555555", lw=0.9, ls="--", zorder=0)
        for stage, first, last in stages:
            axes[0].annotate(stage, xy=((first + last) / 2, 1.0),
                             xycoords=("data", "axes fraction"), xytext=(0, 3),
                             textcoords="offset points", ha="center", va="bottom",
                             fontsize=9.5, color="#333333")
        axes[-1].set_xlim(-0.5, n - 0.5)
        fig.suptitle(_clean_title(title or "binary sets per layer"), x=0.01, ha="left",
                     fontsize=13, fontweight="bold")
        FigureCanvasAgg(fig)
        return fig


# ----------------------------------------------------------------------------------------------
# equalization landscape
# ----------------------------------------------------------------------------------------------


_LANDSCAPE_TITLES = {
    "kl": "KL(N(μ,σ²) ‖ N(β,α²)), colour log10",
    "l2": "L2: mean (w − Q(w))²",
    "entropy": "−H(sign(w − β)) [bits]",
}
_LANDSCAPE_NOTES = {
    "kl": "moment match of the channel's\nGaussian fit: β = mean, α = std",
    "l2": "exact 2-means of the weights",
    "entropy": "depends on β only (share of weights\nabove β): vertical bands; its α is\n"
               "then the L2-best mean|w − β|",
}


def plot_landscape(w, path, *, channel=0, name=None, grid=64):
    r"""Equalization loss landscapes of one output channel of ``w`` (shape ``(O, ...)``).

    Panels: the channel's weight histogram with the three optimal sets; then one colour map per
    objective of the loss on the search lattice of :func:`adabin_np.equalization_search` over
    ``(beta, alpha)`` -- all three on the same linear axes, so positions compare across panels
    -- with its optimum (star) and the other objectives' optima (dots). KL is coloured by
    ``log10(KL)`` (it spans decades); the entropy loss does not depend on ``alpha``.
    """
    return _save(landscape_figure(w, channel=channel, name=name, grid=grid), path)


def landscape_figure(w, *, channel=0, name=None, grid=64) -> Figure:
    """The :class:`~matplotlib.figure.Figure` that :func:`plot_landscape` saves."""
    w = as_float_array(w, "w", min_ndim=2)
    w2 = w.reshape(w.shape[0], -1)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"channel must be an int, got {channel!r}")
    if not 0 <= int(channel) < w2.shape[0]:
        raise ValueError(f"channel must lie in [0, {w2.shape[0]}), got {channel}")
    row = w2[int(channel):int(channel) + 1]
    res = {o: equalization_search(row, o, grid=grid) for o in OBJECTIVES}
    # the common part of the three lattices: every map is filled on the same axes
    b_lo = max(float(res[o].landscape.beta[0].min()) for o in OBJECTIVES)
    b_hi = min(float(res[o].landscape.beta[0].max()) for o in OBJECTIVES)
    a_lo = max(float(res[o].landscape.alpha[0].min()) for o in OBJECTIVES)
    a_hi = min(float(res[o].landscape.alpha[0].max()) for o in OBJECTIVES)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(18.0, 5.4), layout="constrained")
        axes = fig.subplots(1, 4, gridspec_kw=dict(width_ratios=[1.0, 1.15, 1.15, 1.15]))
        ax = axes[0]
        vals = row[0]
        ax.hist(vals, bins=max(10, min(40, vals.size // 4)), color=_HIST_COLOR, density=True)
        yl = ax.get_ylim()[1]
        span = max(vals.max() - vals.min(), 1e-300)
        for k, o in enumerate(OBJECTIVES):
            a, b = res[o].alpha[0], res[o].beta[0]
            y = yl * (1.1 + 0.13 * k)
            ax.plot([b - a, b + a], [y, y], color=SET_COLORS[o], marker="o", ms=6, lw=1.2)
            ax.plot([b], [y], marker="|", ms=12, mew=2, color=SET_COLORS[o])
            ax.annotate(_SET_LABELS[o], (max(b + a, vals.max()) + 0.03 * span, y),
                        va="center", color=SET_COLORS[o])
        ax.set_ylim(0, yl * 1.55)
        ax.set_xlim(vals.min() - 0.05 * span, vals.max() + 0.22 * span)
        ax.set_xlabel("w")
        ax.set_ylabel("density")
        ax.set_title("the channel's weights and optimal sets\n(dots b1, b2; bar threshold β)",
                     loc="left")
        for ax, o in zip(axes[1:], OBJECTIVES):
            land = res[o].landscape
            z = land.loss[0]
            if o == "kl":
                with np.errstate(divide="ignore"):
                    z = np.log10(np.maximum(z, 1e-12))
            cs = ax.pcolormesh(land.beta[0], land.alpha[0], z, cmap="viridis", shading="nearest",
                               rasterized=True)
            cb = fig.colorbar(cs, ax=ax, pad=0.01, fraction=0.06)
            cb.set_label("log10 KL" if o == "kl" else "loss", labelpad=2)
            for p in OBJECTIVES:
                a, b = res[p].alpha[0], res[p].beta[0]
                if p == o:
                    ax.plot([b], [a], marker="*", ms=17, color="white", mec="k", zorder=5,
                            label=f"{_SET_LABELS[p]} optimum")
                else:
                    ax.plot([b], [a], marker="o", ms=7, color=SET_COLORS[p], mec="white",
                            zorder=5, label=_SET_LABELS[p])
            ax.set_xlim(b_lo, b_hi)
            ax.set_ylim(a_lo, a_hi)
            ax.set_xlabel("β (threshold)")
            ax.set_ylabel("α (half gap)")
            ax.set_title(f"{_LANDSCAPE_TITLES[o]}\n★ β={res[o].beta[0]:.3g}, "
                         f"α={res[o].alpha[0]:.3g}", loc="left")
            ax.text(0.02, 0.02, _LANDSCAPE_NOTES[o], transform=ax.transAxes, ha="left",
                    va="bottom", fontsize=8.5, color="white", zorder=7,
                    bbox=dict(fc="black", alpha=0.45, ec="none", pad=2))
            ax.legend(loc="upper right", framealpha=0.75, fontsize=8.5)
        label = f"{name}, " if name else ""
        fig.suptitle(f"equalization landscapes: {label}output channel {int(channel)} "
                     f"({row.shape[1]} weights); same (β, α) axes in the three maps",
                     x=0.01, ha="left", fontsize=13, fontweight="bold")
        FigureCanvasAgg(fig)
        return fig


# ----------------------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------------------


def write_figures(layers, out_dir, *, title=None, layers_per_figure=MAX_LAYERS_PER_PAGE,
                  landscape_weight=None, landscape_channel=0, landscape_name=None):
    """Write ``layers_01.png ...`` (``min(layers_per_figure, MAX_LAYERS_PER_PAGE)`` layers
    each), ``summary.png`` and, given ``landscape_weight``, ``landscape.png`` into
    ``out_dir``; returns the paths."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    per = max(1, min(int(layers_per_figure), MAX_LAYERS_PER_PAGE))
    out_dir = Path(out_dir)
    pages = math.ceil(len(layers) / per)
    paths = []
    base = _clean_title(title or "model")
    for p in range(pages):
        chunk = layers[p * per:(p + 1) * per]
        page = f" (page {p + 1}/{pages})" if pages > 1 else ""
        paths.append(plot_layers(chunk, out_dir / f"layers_{p + 1:02d}.png",
                                 title=f"{base}: binary layers{page}"))
    paths.append(plot_summary(layers, out_dir / "summary.png", title=base))
    if landscape_weight is not None:
        paths.append(plot_landscape(landscape_weight, out_dir / "landscape.png",
                                    channel=landscape_channel, name=landscape_name))
    return paths
