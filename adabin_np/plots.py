r"""Figures of the per-layer distribution analysis (:mod:`adabin_np.distributions`).

Every function takes the JSON-ready layer dicts of :func:`adabin_np.distributions.analyze_layers`
(or raw weights for the landscape), draws on a :class:`matplotlib.figure.Figure` with the Agg
canvas (no pyplot, no global backend switch, nothing is shown) and writes a PNG.

* :func:`plot_layers` -- a grid of layers; per layer two panels:
  *weights* (left): histogram of :math:`u = (W_o - \beta_w)/\alpha_w`, each channel normalised
  to a density and averaged over channels, with the standard normal (the Gaussian fit: ``u``
  has mean 0 and variance 1 in every channel by construction, so the histogram shows the
  *shape*: tails, skew, bimodality); below it a strip with the threshold (``|``) and levels
  ``b1``/``b2`` (dots) of the layer's set (``u = -1, 0, +1``) and of the KL / L2 /
  entropy-optimal sets, mapped into each channel's u-space (median over channels, bars span the
  inter-quartile range).
  *activations* (right): histogram of the pre-binarization input ``x`` (``v`` for per-channel
  sets), the Gaussian fit :math:`N(\mathrm{mean}, \mathrm{std}^2)`, the threshold
  :math:`\beta_a`, the flip-risk band :math:`|v| \le tol` (shaded; drawn at least
  :data:`MIN_BAND_FRACTION` of the axis wide so it stays visible, the exact fraction is printed)
  and the same strip of sets (the layer's levels follow its convention).
* :func:`plot_summary` -- across layers: weight levels (mean over channels, +- one std across
  channels), activation levels and threshold, flip-risk fractions, share of activations mapped
  to ``b2``.
* :func:`plot_landscape` -- the equalization loss landscapes (KL, L2, entropy) of one weight
  channel over ``(beta, alpha)``, optima marked, next to that channel's histogram.
* :func:`write_figures` -- all of the above into a folder.
"""

from __future__ import annotations

import math
from pathlib import Path

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
    "plot_layers",
    "plot_layer",
    "plot_summary",
    "plot_landscape",
    "write_figures",
]

#: Colours of the binary sets in every figure.
SET_COLORS = {"layer": "#d62728", "kl": "#1f77b4", "l2": "#ff7f0e", "entropy": "#2ca02c"}
_SET_LABELS = {"layer": "layer", "kl": "KL", "l2": "L2", "entropy": "entropy"}
_HIST_COLOR = "#b0b8c4"
_FIT_COLOR = "#333333"
_BAND_COLOR = "#9467bd"

#: Smallest drawn width of the flip-risk band, as a fraction of the x-axis span.
MIN_BAND_FRACTION = 0.015

_DPI = 110


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI)
    return path


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


# ----------------------------------------------------------------------------------------------
# panels
# ----------------------------------------------------------------------------------------------


def _strip(ax, rows, xlim):
    """Rows of ``(key, b1, threshold, b2)`` (each a list of values): median dots + IQR bars.

    Values beyond ``xlim`` are drawn as arrow heads at the edge.
    """
    n = len(rows)
    lo_x, hi_x = xlim
    for r, (key, b1, thr, b2) in enumerate(rows):
        y = n - 1 - r
        color = SET_COLORS[key]
        ax.axhline(y, color="#e6e6e6", lw=0.8, zorder=0)
        for vals, marker in ((b1, "o"), (b2, "o"), (thr, "|")):
            med, lo, hi = _med_iqr(vals)
            if med < lo_x or med > hi_x:
                edge = lo_x if med < lo_x else hi_x
                ax.plot([edge], [y], marker="<" if med < lo_x else ">", color=color, ms=6,
                        clip_on=False)
                ax.annotate(f"{med:.3g}", (edge, y), xytext=(-4 if med > hi_x else 4, 5),
                            textcoords="offset points", fontsize=6, color=color,
                            ha="right" if med > hi_x else "left")
                continue
            if lo + hi > 0:
                ax.plot([med - lo, med + hi], [y, y], color=color, lw=1.2, solid_capstyle="butt")
            ax.plot([med], [y], marker=marker, color=color, ms=9 if marker == "|" else 5, mew=2,
                    ls="")
    ax.set_yticks(range(n))
    ax.set_yticklabels([_SET_LABELS[k] for k, *_ in rows][::-1], fontsize=7)
    for tick, (key, *_) in zip(ax.get_yticklabels(), rows[::-1]):
        tick.set_color(SET_COLORS[key])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(*xlim)
    ax.tick_params(axis="x", labelsize=7)


def _band(ax, center, half, xlim):
    span = xlim[1] - xlim[0]
    half_drawn = max(half, 0.5 * MIN_BAND_FRACTION * span)
    ax.axvspan(center - half_drawn, center + half_drawn, color=_BAND_COLOR, alpha=0.35, lw=0,
               zorder=1)


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
    objs = _objectives(w)
    rows = [("layer", [-1.0], [0.0], [1.0])]
    rows += [(o, w["equalization"][o]["u_b1"], w["equalization"][o]["u_threshold"],
              w["equalization"][o]["u_b2"]) for o in objs]
    xlim = (edges[0], edges[-1])
    ax.stairs(dens, edges, fill=True, color=_HIST_COLOR, zorder=2)
    xs = np.linspace(*xlim, 400)
    ax.plot(xs, _normal_pdf(xs, 0.0, 1.0), color=_FIT_COLOR, lw=1.0, ls="--", zorder=3)
    fr = w["flip_risk"]
    ratio = np.abs(np.asarray(w["beta"])) / np.maximum(np.asarray(w["alpha"]), 1e-300)
    _band(ax, 0.0, fr["tol"] * (1.0 + 2.0 * float(np.median(ratio))), xlim)
    ax.axvline(0.0, color=SET_COLORS["layer"], lw=1.0, zorder=4)
    for lev in (-1.0, 1.0):
        ax.axvline(lev, color=SET_COLORS["layer"], lw=0.8, ls=":", zorder=4)
    ax.set_xlim(*xlim)
    ax.set_ylim(0, max(dens.max(), 0.4) * 1.22)
    ax.tick_params(labelbottom=False, labelsize=7)
    ax.set_title(f"weights  {w['channels']} ch x {w['n_per_channel']}", fontsize=8, loc="left")
    txt = (f"u = (W-β_w)/α_w\nα_w {np.mean(w['alpha']):.3g}±{np.std(w['alpha']):.2g}\n"
           f"at risk (tol {fr['tol']:g}): {fr['count']}/{fr['total']}")
    ax.text(0.98, 0.97, txt, transform=ax.transAxes, ha="right", va="top", fontsize=6.5,
            bbox=dict(fc="white", ec="none", alpha=0.8))
    _strip(axs, rows, xlim)
    axs.set_xlabel("u", fontsize=7, labelpad=1)


def _act_panel(ax, axs, layer):
    a = layer["activation"]
    h = a["histogram"]
    edges = np.asarray(h["edges"])
    dens = np.asarray(h["density"])
    objs = _objectives(a)
    per_channel = a["per_channel"]
    fr = a["flip_risk"]
    if per_channel:
        # v-space: threshold 0; levels and searched sets mapped per channel
        alpha = np.asarray(a["alpha"], dtype=np.float64) * np.ones(len(a["channel_mean"]))
        beta = np.asarray(a["beta"], dtype=np.float64) * np.ones(len(a["channel_mean"]))

        def to_v(vals):
            return list((np.asarray(vals, dtype=np.float64) - beta) / alpha)

        rows = [("layer", to_v(a["b1"]), [0.0], to_v(a["b2"]))]
        rows += [(o, to_v(a["equalization"][o]["b1"]), to_v(a["equalization"][o]["threshold"]),
                  to_v(a["equalization"][o]["b2"])) for o in objs]
        thr = 0.0
        half = fr["tol"] * (1.0 + 2.0 * float(np.median(np.abs(beta / alpha))))
        mean = np.mean((np.asarray(a["channel_mean"]) - beta) / alpha)
        std = a["gaussian"]["std"] / float(np.median(np.abs(alpha)))
        xlabel = "v = (x-β_a)/α_a"
        fit = False
    else:
        e = a["equalization"]
        rows = [("layer", [a["b1"]], [a["threshold"]], [a["b2"]])]
        rows += [(o, [e[o]["b1"]], [e[o]["threshold"]], [e[o]["b2"]]) for o in objs]
        thr = a["threshold"]
        half = fr["tol"] * (2.0 * abs(a["beta"]) + abs(a["alpha"])) / (1.0 - min(fr["tol"], 0.5))
        mean, std = a["gaussian"]["mean"], a["gaussian"]["std"]
        xlabel = "x (input of the binary layer)"
        fit = True
    marks = [float(np.median(v)) for v in rows[0][1:]]  # the layer's own set stays in view
    xlim = _xlim(edges, marks)
    ax.stairs(dens, edges, fill=True, color=_HIST_COLOR, zorder=2)
    if fit:
        xs = np.linspace(*xlim, 400)
        ax.plot(xs, _normal_pdf(xs, mean, std), color=_FIT_COLOR, lw=1.0, ls="--", zorder=3)
    _band(ax, thr, half, xlim)
    ax.axvline(thr, color=SET_COLORS["layer"], lw=1.0, zorder=4)
    for lev in (rows[0][1], rows[0][3]):
        ax.axvline(float(np.median(lev)), color=SET_COLORS["layer"], lw=0.8, ls=":", zorder=4)
    ax.set_xlim(*xlim)
    positive = dens[dens > 0]
    if positive.size:
        ax.set_yscale("log")
        ax.set_ylim(max(positive.min() * 0.5, positive.max() * 1e-5), positive.max() * 4.0)
    ax.tick_params(labelbottom=False, labelsize=7)
    ax.set_title(f"activations ({layer['convention']} convention), log density", fontsize=8,
                 loc="left")
    if per_channel:
        set_txt = "per-channel α_a, β_a"
    else:
        set_txt = f"α_a {a['alpha']:.3g}, β_a {a['beta']:.3g}"
    txt = (f"{set_txt}\nat risk (tol {fr['tol']:g}): {fr['count']}/{fr['total']}\n"
           f"mapped to b2: {_pct(a['fraction_b2'])}")
    ax.text(0.98, 0.97, txt, transform=ax.transAxes, ha="right", va="top", fontsize=6.5,
            bbox=dict(fc="white", ec="none", alpha=0.8))
    _strip(axs, rows, xlim)
    axs.set_xlabel(xlabel, fontsize=7, labelpad=1)


def _legend_handles(objectives):
    handles = [Patch(color=_HIST_COLOR, label="histogram (density)"),
               Line2D([], [], color=_FIT_COLOR, ls="--", label="Gaussian fit"),
               Line2D([], [], color=SET_COLORS["layer"], lw=1.0, label="layer's threshold"),
               Line2D([], [], color=SET_COLORS["layer"], lw=0.8, ls=":",
                      label="layer's levels b1, b2"),
               Patch(color=_BAND_COLOR, alpha=0.35, label="flip-risk band (widened to show)"),
               Line2D([], [], color="#555555", marker="|", ls="", ms=9, mew=2,
                      label="strip: threshold"),
               Line2D([], [], color="#555555", marker="o", ls="", ms=5,
                      label="strip: b1, b2 (median, IQR over channels)")]
    handles += [Line2D([], [], color=SET_COLORS[k], marker="o", ls="", ms=5,
                       label="layer's set" if k == "layer" else f"{_SET_LABELS[k]}-optimal set")
                for k in ("layer", *objectives)]
    return handles


def _layer_cell(fig, spec, layer):
    sub = spec.subgridspec(2, 2, height_ratios=[3.0, 0.25 + 0.3 * (1 + len(_objectives(
        layer["weight"])))], hspace=0.06, wspace=0.22)
    ax_w = fig.add_subplot(sub[0, 0])
    ax_ws = fig.add_subplot(sub[1, 0], sharex=ax_w)
    ax_a = fig.add_subplot(sub[0, 1])
    ax_as = fig.add_subplot(sub[1, 1], sharex=ax_a)
    _weight_panel(ax_w, ax_ws, layer)
    _act_panel(ax_a, ax_as, layer)
    return ax_w


def plot_layers(layers, path, *, title=None, ncols=3):
    """Grid of per-layer panels (weights | activations), ``ncols`` layers per row; one PNG."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    ncols = max(1, min(int(ncols), len(layers)))
    nrows = math.ceil(len(layers) / ncols)
    cell_h, head = 3.6, 1.25  # inches per layer row, inches for title + legend
    height = cell_h * nrows + head
    fig = Figure(figsize=(6.4 * ncols, height))
    gs = fig.add_gridspec(nrows, ncols, left=0.035 * 3 / ncols, right=0.99,
                          bottom=0.45 / height, top=1.0 - head / height, hspace=0.45,
                          wspace=0.16)
    for i, layer in enumerate(layers):
        ax = _layer_cell(fig, gs[i // ncols, i % ncols], layer)
        ax.annotate(layer["name"], xy=(0, 1), xycoords="axes fraction", xytext=(0, 15),
                    textcoords="offset points", fontsize=10, fontweight="bold", va="bottom")
    handles = _legend_handles(_objectives(layers[0]["weight"]))
    fig.legend(handles=handles, loc="upper left", ncol=math.ceil(len(handles) / 2),
               fontsize=8, frameon=False, bbox_to_anchor=(0.005, 1.0 - 0.38 / height))
    fig.suptitle(title or "binary layers", x=0.008, ha="left", y=1.0 - 0.08 / height, va="top",
                 fontsize=12, fontweight="bold")
    return _save(fig, path)


def plot_layer(layer, path, *, title=None):
    """One layer, larger (same panels as :func:`plot_layers`)."""
    fig = Figure(figsize=(10, 5.0))
    gs = fig.add_gridspec(1, 1, left=0.07, right=0.99, bottom=0.09, top=0.75)
    _layer_cell(fig, gs[0, 0], layer)
    handles = _legend_handles(_objectives(layer["weight"]))
    fig.legend(handles=handles, loc="upper left", ncol=math.ceil(len(handles) / 3),
               fontsize=8, frameon=False, bbox_to_anchor=(0.005, 0.935))
    fig.suptitle(title or layer["name"], x=0.01, ha="left", y=0.995, va="top", fontsize=11,
                 fontweight="bold")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# summary across layers
# ----------------------------------------------------------------------------------------------


def _mean(v):
    return float(np.mean(np.asarray(v, dtype=np.float64)))


def plot_summary(layers, path, *, title=None):
    """Binary sets, flip risk and sign balance of every layer (x axis: layers in order)."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    n = len(layers)
    x = np.arange(n)
    names = [la["name"] for la in layers]
    fig = Figure(figsize=(max(7.0, 0.48 * n + 3.0), 10.5))
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw=dict(hspace=0.12, left=0.1, right=0.77,
                                                            top=0.95, bottom=0.14))
    c_w, c_a = "#1f77b4", "#d62728"

    ax = axes[0]
    for key, marker in (("b1", "v"), ("b2", "^")):
        m = np.array([_mean(la["weight"][key]) for la in layers])
        s = np.array([np.std(la["weight"][key]) for la in layers])
        ax.fill_between(x, m - s, m + s, color=c_w, alpha=0.15, lw=0)
        ax.plot(x, m, marker=marker, color=c_w,
                label=f"{key} = β_w {'−' if key == 'b1' else '+'} α_w")
    ax.plot(x, [_mean(la["weight"]["beta"]) for la in layers], marker="|", color=c_w, ls=":",
            label="threshold β_w (mean)")
    ax.axhline(0.0, color="#999999", lw=0.6)
    ax.set_ylabel("weight levels\n(mean ± std over channels)")

    ax = axes[1]
    for key, marker in (("b1", "v"), ("b2", "^")):
        ax.plot(x, [_mean(la["activation"][key]) for la in layers], marker=marker, color=c_a,
                label=f"learned {key}")
        if "kl" in _objectives(layers[0]["activation"]):
            ax.plot(x, [_mean(la["activation"]["equalization"]["kl"][key]) for la in layers],
                    marker=marker, color=SET_COLORS["kl"], ls="--", mfc="none", lw=0.8,
                    label=f"KL-optimal {key}")
    ax.plot(x, [_mean(la["activation"]["threshold"]) for la in layers], marker="|", color=c_a,
            ls=":", ms=10, label="learned threshold β_a")
    ax.axhline(0.0, color="#999999", lw=0.6)
    conv = {la["convention"] for la in layers}
    ax.set_ylabel("activation levels\n(" + "/".join(sorted(conv)) + " convention)")

    ax = axes[2]
    tol_w = layers[0]["weight"]["flip_risk"]["tol"]
    fw = np.array([la["weight"]["flip_risk"]["fraction"] for la in layers])
    fa = np.array([la["activation"]["flip_risk"]["fraction"] for la in layers])
    ax.plot(x, fw, marker="s", color=c_w, label="weights")
    ax.plot(x, fa, marker="o", color=c_a, label="activations")
    fo = [la["activation"]["flip_risk"].get("outputs_at_risk") for la in layers]
    if all(f is not None for f in fo):
        fo = np.array(fo, dtype=np.float64)
        ax.plot(x, fo, marker="D", ms=4, color="#7f7f7f", ls="--",
                label="conv outputs reading ≥ 1\nat-risk input or weight")
    else:
        fo = np.zeros(0)
    z = np.array([la["activation"]["flip_risk"]["exact_zero"] > 0 for la in layers])
    if z.any():
        ax.plot(x[z], fa[z], ls="", marker="*", ms=10, color="k", label="activations with v = 0")
    smallest = min([f for f in np.concatenate([fw, fa, fo]) if f > 0], default=1e-6)
    ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(smallest)))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"flip-risk fraction\n(relative tol {tol_w:g})")

    ax = axes[3]
    ax.plot(x, [la["activation"]["fraction_b2"] for la in layers], marker="o", color=c_a,
            label="activations → b2")
    ax.axhline(0.5, color="#999999", lw=0.8, ls="--", label="balanced (max entropy)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of b2")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    for ax in axes:
        ax.grid(True, color="#eeeeee", lw=0.6)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[0].set_title(title or "binary sets per layer", loc="left", fontsize=11,
                      fontweight="bold")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# equalization landscape
# ----------------------------------------------------------------------------------------------


def plot_landscape(w, path, *, channel=0, name=None, grid=64):
    r"""Equalization loss landscapes of one output channel of ``w`` (shape ``(O, ...)``).

    Panels: the channel's weight histogram with the three optimal sets; then one contour plot
    per objective of the loss on the search lattice of :func:`adabin_np.equalization_search`
    over ``(beta, alpha)`` (KL as ``log10(KL)`` on a log ``alpha`` axis: its lattice is
    geometric), with its optimum (star) and the other objectives' optima (dots).
    """
    w = as_float_array(w, "w", min_ndim=2)
    w2 = w.reshape(w.shape[0], -1)
    if not 0 <= int(channel) < w2.shape[0]:
        raise ValueError(f"channel must lie in [0, {w2.shape[0]}), got {channel}")
    row = w2[int(channel):int(channel) + 1]
    res = {o: equalization_search(row, o, grid=grid) for o in OBJECTIVES}
    fig = Figure(figsize=(17, 4.2))
    axes = fig.subplots(1, 4, gridspec_kw=dict(left=0.045, right=0.985, bottom=0.15, top=0.84,
                                               wspace=0.32))
    ax = axes[0]
    vals = row[0]
    ax.hist(vals, bins=max(10, min(40, vals.size // 4)), color=_HIST_COLOR, density=True)
    yl = ax.get_ylim()[1]
    span = vals.max() - vals.min()
    for k, o in enumerate(OBJECTIVES):
        a, b = res[o].alpha[0], res[o].beta[0]
        y = yl * (1.08 + 0.1 * k)
        ax.plot([b - a, b + a], [y, y], color=SET_COLORS[o], marker="o", ms=5, lw=1.0)
        ax.plot([b], [y], marker="|", ms=10, mew=2, color=SET_COLORS[o])
        ax.annotate(_SET_LABELS[o], (max(b + a, vals.max()) + 0.02 * span, y), fontsize=8,
                    va="center", color=SET_COLORS[o])
    ax.set_ylim(0, yl * 1.42)
    ax.set_xlim(vals.min() - 0.05 * span, vals.max() + 0.16 * span)
    ax.set_xlabel("w")
    ax.set_ylabel("density")
    ax.set_title("the channel's weights; optimal sets\n(dots b1, b2; bar threshold β)",
                 fontsize=8.5, loc="left")
    titles = {"kl": "log10 KL(N(μ,σ²) ‖ N(β,α²))", "l2": "L2: mean (w - Q(w))²",
              "entropy": "−H(sign(w − β)) [bits]"}
    for ax, o in zip(axes[1:], OBJECTIVES):
        land = res[o].landscape
        z = land.loss[0]
        if o == "kl":
            with np.errstate(divide="ignore"):
                z = np.log10(np.maximum(z, 1e-12))
        cs = ax.contourf(land.beta[0], land.alpha[0], z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, pad=0.02)
        if o == "kl":
            ax.set_yscale("log")
        for p in OBJECTIVES:
            a, b = res[p].alpha[0], res[p].beta[0]
            if p == o:
                ax.plot([b], [a], marker="*", ms=15, color="white", mec="k", zorder=5)
            else:
                ax.plot([b], [a], marker="o", ms=6, color=SET_COLORS[p], mec="white", zorder=5,
                        label=_SET_LABELS[p])
        ax.set_xlabel("β (threshold)")
        ax.set_ylabel("α (half gap)")
        ax.set_title(f"{titles[o]}\n★ optimum: β={res[o].beta[0]:.3g}, α={res[o].alpha[0]:.3g}",
                     fontsize=8.5, loc="left")
        ax.legend(fontsize=7, loc="upper right", framealpha=0.7, title="other optima",
                  title_fontsize=7)
    label = f"{name} " if name else ""
    fig.suptitle(f"equalization landscapes, {label}channel {int(channel)} "
                 f"({row.shape[1]} weights)", x=0.01, ha="left", fontsize=11, fontweight="bold")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------------------


def write_figures(layers, out_dir, *, title=None, layers_per_figure=9, ncols=3,
                  landscape_weight=None, landscape_channel=0, landscape_name=None):
    """Write ``layers_01.png ...`` (``layers_per_figure`` layers each), ``summary.png`` and,
    given ``landscape_weight``, ``landscape.png`` into ``out_dir``; returns the paths."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    per = max(1, int(layers_per_figure))
    out_dir = Path(out_dir)
    pages = math.ceil(len(layers) / per)
    paths = []
    for p in range(pages):
        chunk = layers[p * per:(p + 1) * per]
        page = f" ({p + 1}/{pages})" if pages > 1 else ""
        paths.append(plot_layers(chunk, out_dir / f"layers_{p + 1:02d}.png",
                                 title=f"{title or 'model'}: binary layers{page}", ncols=ncols))
    paths.append(plot_summary(layers, out_dir / "summary.png", title=title))
    if landscape_weight is not None:
        paths.append(plot_landscape(landscape_weight, out_dir / "landscape.png",
                                    channel=landscape_channel, name=landscape_name))
    return paths
