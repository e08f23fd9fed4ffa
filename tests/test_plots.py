"""Figures (adabin_np.plots, issue 13 point 6): readable text, the flip-risk band on top, values
outside the histogram range counted, no duplicate KL strip in u-space, per-channel panels,
nothing cut off the summary page, stage separators, no paths in titles, landscapes on common
axes. Each property is checked on the matplotlib artists, not by looking at pixels."""

import matplotlib.text
import numpy as np
import pytest

from adabin_np import plots
from adabin_np.distributions import LayerRecord, analyze_layers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(name, seed=0, channels=4, per_channel=False, convention="paper"):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, channels, 3, 3)) * 0.1
    x = 0.3 + 1.7 * rng.standard_normal((6, channels, 7, 7))
    x[0, 0, 0, :3] = [40.0, 55.0, -60.0]  # far tails, beyond the histogram range
    alpha = np.linspace(0.8, 1.2, channels) if per_channel else 0.9
    beta = np.linspace(-0.1, 0.1, channels) if per_channel else 0.2
    return LayerRecord(name, w, x, alpha, beta, convention)


@pytest.fixture(scope="module")
def layers():
    recs = [_record(f"layer{1 + i // 2}.{i % 2}.conv1", seed=i) for i in range(5)]
    return analyze_layers(recs, max_samples=2000)


def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def test_layer_pages_have_readable_text(layers):
    fig = plots.layers_figure(layers[:4], title="m")
    sizes = [t.get_fontsize() for t in _texts(fig)]
    assert min(sizes) >= 8.0, min(sizes)
    # one row of four main panels per layer (plus strips and twin axes)
    assert fig.get_size_inches()[0] * plots.DPI <= 1800
    with pytest.raises(ValueError, match="at most"):
        plots.layers_figure(layers + layers, title="too many")


def test_flip_risk_band_is_drawn_on_top(layers):
    fig = plots.layers_figure(layers[:1])
    checked = 0
    for ax in fig.axes:
        bands = [p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx(
            tuple(int(plots._BAND_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)))]
        others = [a for a in (*ax.patches, *ax.lines) if a not in bands]
        if bands and others:
            assert min(b.get_zorder() for b in bands) > max(o.get_zorder() for o in others)
            checked += 1
    assert checked == 2  # the weight and the activation histogram


def test_values_outside_the_histogram_are_counted(layers):
    la = layers[0]
    h = la["activation"]["histogram"]
    assert h["below"] + h["above"] >= 3
    fig = plots.layers_figure([la])
    text = " ".join(t.get_text() for t in _texts(fig))
    if h["above"]:
        assert f"{h['above']} above" in text
    if h["below"]:
        assert f"{h['below']} below" in text


def test_u_space_strip_has_no_duplicate_kl_row(layers):
    fig = plots.layers_figure(layers[:1])
    # tick labels top-down (matplotlib lists them bottom-up)
    labels = [[t.get_text() for t in ax.get_yticklabels()][::-1] for ax in fig.axes]
    weight_strip = [lab for lab in labels if lab and lab[0] == "layer = KL"]
    assert weight_strip == [["layer = KL", "L2", "entropy"]]
    act_strip = [lab for lab in labels if lab and lab[0] == "layer"]
    assert act_strip == [["layer", "KL", "L2", "entropy"]]


def test_per_channel_panels_from_summary_or_weights(layers):
    la = dict(layers[0])
    assert "per_channel" in la  # written by adabin_np.distributions
    fig = plots.layers_figure([la])
    titles = " ".join(t.get_text() for t in _texts(fig))
    assert "weight set per output channel" in titles and "activations per input channel" in titles
    risky = int(np.sum(np.array(la["per_channel"]["act_flip_risk"]) > 0))
    assert f"▼ {risky} at flip risk" in titles
    # without the per_channel entry the panels are computed from the weight/activation entries
    la.pop("per_channel")
    fig2 = plots.layers_figure([la])
    wc = [ax for ax in fig2.axes if ax.get_title(loc="left").startswith("weight set per")]
    (segments,) = [c for c in wc[0].collections]
    assert len(segments.get_segments()) == la["weight"]["channels"]
    alpha, beta = np.array(la["weight"]["alpha"]), np.array(la["weight"]["beta"])
    lows = np.array([s[0][1] for s in segments.get_segments()])
    np.testing.assert_allclose(lows, beta - alpha)


def test_per_channel_activation_set_layer(tmp_path):
    (la,) = analyze_layers([_record("pc", per_channel=True, convention="official")],
                           max_samples=2000)
    raw = plots.plot_layer(la, tmp_path / "pc.png").read_bytes()
    assert raw[:8] == PNG_MAGIC


def test_summary_page_nothing_cut_and_stage_separators(layers):
    fig = plots.summary_figure(layers, title="../shared/data/model.th")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        tight = ax.get_tightbbox(renderer)
        assert tight.x0 >= box.x0 - 1 and tight.x1 <= box.x1 + 1, ax.get_ylabel()
        assert tight.y0 >= box.y0 - 1 and tight.y1 <= box.y1 + 1, ax.get_ylabel()
        legend = ax.get_legend()
        lb = legend.get_window_extent(renderer)
        assert lb.x1 <= box.x1 + 1
        # stages layer1 | layer2 | layer3 of the names: two dashed separators per panel
        seps = [ln for ln in ax.lines if ln.get_linestyle() == "--"
                and len(set(ln.get_xdata())) == 1]
        assert sorted(float(ln.get_xdata()[0]) for ln in seps) == [1.5, 3.5]
    # the blank band: the lowest axes reaches down to its tick labels, not far above
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)
    assert lowest < 0.08 * box.height
    assert fig._suptitle.get_text() == "model.th"


def test_clean_title():
    assert plots._clean_title("resnet20 from ../shared/data/x.th (official)") == \
        "resnet20 from x.th (official)"
    assert plots._clean_title("/abs/dir/model.npz") == "model.npz"
    assert plots._clean_title("binary layers (page 1/2)") == "binary layers (page 1/2)"
    assert plots._clean_title("digits 1w1a CNN") == "digits 1w1a CNN"


def test_landscape_common_axes_and_entropy_independent_of_alpha():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 3, 3))
    fig = plots.landscape_figure(w, channel=1, name="conv")
    maps = fig.axes[1:]
    maps = [ax for ax in maps if ax.get_xlabel().startswith("β")]
    assert len(maps) == 3
    assert len({ax.get_xlim() for ax in maps}) == 1 and len({ax.get_ylim() for ax in maps}) == 1
    assert all(ax.get_yscale() == "linear" for ax in maps)
    text = " ".join(t.get_text() for t in _texts(fig))
    assert "depends on β only" in text
    from adabin_np import equalization_search

    land = equalization_search(w.reshape(3, -1)[1:2], "entropy").landscape
    assert np.all(land.loss[0] == land.loss[0][:1, :])  # constant along alpha
    with pytest.raises(ValueError, match="channel"):
        plots.landscape_figure(w, channel=3)


def test_write_figures_pages(layers, tmp_path):
    # 5 layers, 9 asked for a page: capped at MAX_LAYERS_PER_PAGE = 4, so two pages
    paths = plots.write_figures(layers, tmp_path, title="m", layers_per_figure=9)
    assert plots.MAX_LAYERS_PER_PAGE == 4
    assert [p.name for p in paths] == ["layers_01.png", "layers_02.png", "summary.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
