"""Per-layer distribution analysis (adabin_np.distributions) and its figures (adabin_np.plots)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adabin_np import testing as abt
from adabin_np import weight_binary_set
from adabin_np.distributions import (
    FLIP_RISK_LADDER,
    LayerRecord,
    _outputs_at_risk,
    activation_levels,
    analyze_layers,
    analyze_model,
    load_inputs,
    relative_distance,
    weight_levels,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gaussian_record(name="g", *, convention="paper", n_act=200_000, seed=0):
    rng = np.random.default_rng(seed)
    mu_w = np.array([0.1, -0.2, 0.0, 0.05])
    sd_w = np.array([0.5, 1.0, 2.0, 0.1])
    w = mu_w[:, None] + sd_w[:, None] * rng.standard_normal((4, 40_000))
    x = 0.3 + 1.7 * rng.standard_normal((n_act // 100, 4, 25))
    return LayerRecord(name, w, x, 0.9, 0.2, convention), mu_w, sd_w


@pytest.fixture(scope="module")
def gaussian_analysis():
    rec, mu_w, sd_w = _gaussian_record()
    (la,) = analyze_layers([rec], max_samples=50_000)
    return rec, mu_w, sd_w, la


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def test_weight_sets_are_moment_matched(gaussian_analysis):
    rec, mu_w, sd_w, la = gaussian_analysis
    w = la["weight"]
    alpha, beta = weight_binary_set(rec.weight)
    np.testing.assert_array_equal(w["alpha"], alpha)
    np.testing.assert_array_equal(w["beta"], beta)
    np.testing.assert_allclose(w["b1"], beta - alpha, rtol=0, atol=0)
    np.testing.assert_allclose(w["b2"], beta + alpha, rtol=0, atol=0)
    # recovered Gaussian parameters (n = 40000 per channel: SE of the std is sd/283)
    np.testing.assert_allclose(w["beta"], mu_w, atol=4 * sd_w.max() / 200)
    np.testing.assert_allclose(np.asarray(w["alpha"]) / sd_w, 1.0, atol=0.02)
    assert w["channels"] == 4 and w["n_per_channel"] == 40_000
    # KL equalization is the moment match; L2 of a Gaussian: levels mu +- sigma*sqrt(2/pi)
    kl = w["equalization"]["kl"]
    np.testing.assert_allclose(kl["alpha"], alpha, rtol=1e-9)
    np.testing.assert_allclose(kl["beta"], beta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(kl["u_b1"], -1.0, atol=1e-9)
    np.testing.assert_allclose(kl["u_b2"], 1.0, atol=1e-9)
    l2 = w["equalization"]["l2"]
    np.testing.assert_allclose(np.asarray(l2["alpha"]) / sd_w, math.sqrt(2 / math.pi), atol=0.02)
    ent = w["equalization"]["entropy"]
    np.testing.assert_allclose(ent["beta"], np.median(rec.weight, axis=1), rtol=0, atol=1e-12)
    # u has mean 0 / variance 1 in every channel; the pooled density integrates to ~1
    assert abs(w["u_moments"]["mean"]) < 1e-12 and abs(w["u_moments"]["std"] - 1) < 1e-12
    h = w["histogram"]
    assert h["space"] == "u" and len(h["edges"]) == len(h["density"]) + 1
    area = np.sum(np.diff(h["edges"]) * np.asarray(h["density"]))
    assert abs(area + h["outside"] - 1.0) < 1e-9


def test_activation_gaussian_recovered(gaussian_analysis):
    rec, _, _, la = gaussian_analysis
    a = la["activation"]
    assert abs(a["gaussian"]["mean"] - 0.3) < 0.02
    assert abs(a["gaussian"]["std"] / 1.7 - 1) < 0.01
    assert abs(a["gaussian"]["excess_kurtosis"]) < 0.05
    assert a["alpha"] == 0.9 and a["beta"] == 0.2 and a["threshold"] == 0.2
    assert a["b1"] == pytest.approx(0.2 - 0.9) and a["b2"] == pytest.approx(0.2 + 0.9)
    assert a["total"] == rec.activations.size and a["samples_for_search"] == 50_000
    eq = a["equalization"]
    assert eq["kl"]["beta"] == pytest.approx(0.3, abs=0.03)
    assert eq["kl"]["alpha"] == pytest.approx(1.7, rel=0.02)
    assert eq["l2"]["alpha"] == pytest.approx(1.7 * math.sqrt(2 / math.pi), rel=0.03)
    assert eq["entropy"]["beta"] == pytest.approx(0.3, abs=0.03)
    assert len(a["channel_mean"]) == 4
    # share mapped to b2 = P(x >= 0.2) for N(0.3, 1.7^2)
    p = 0.5 * math.erfc((0.2 - 0.3) / (1.7 * math.sqrt(2)))
    assert a["fraction_b2"] == pytest.approx(p, abs=0.01)


def test_flip_risk_hand_count():
    # alpha = 1, beta = 0, tol = 1e-3: at risk iff |x| <= tol*(|x| + 1)
    x = np.array([0.0, 5e-4, -9e-4, 2e-3, -0.5, 1.0, 1.5e-3, -1e-6])
    # weights: channel 0 = [1, 2, 3] (beta 2: the middle one is at risk), channel 1 constant
    # (never at risk), channel 2 = [0, 1, 2, 3 + 4e-3] (beta 1.501, nothing within 1e-3)
    w = np.array([[1.0, 2.0, 3.0, 2.0], [0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 2.0, 3.004]])
    rec = LayerRecord("hand", w, x, 1.0, 0.0)
    (la,) = analyze_layers([rec], flip_tol=1e-3, objectives=())
    fa = la["activation"]["flip_risk"]
    assert (fa["count"], fa["total"], fa["exact_zero"]) == (4, 8, 1)  # 0, 5e-4, -9e-4, -1e-6
    assert fa["fraction"] == 0.5 and fa["rule"] == "relative" and fa["tol"] == 1e-3
    fw = la["weight"]["flip_risk"]
    assert (fw["count"], fw["total"], fw["exact_zero"]) == (2, 12, 2)
    assert fw["per_channel"] == [0.5, 0.0, 0.0]
    assert la["weight"]["equalization"] == {} and la["activation"]["equalization"] == {}


def test_flip_risk_is_relative_to_the_operands():
    # beta = 2, alpha = 0.5: x = 2.004 has |v| = 0.008 > tol but |x - beta| = 0.004 <=
    # tol*(|x| + |beta| + |alpha|) = 0.0045 (rounding of x and beta scales with |x| + |beta|)
    rec = LayerRecord("rel", [[0.0, 1.0]], [2.004, 2.006, 3.0], 0.5, 2.0)
    (la,) = analyze_layers([rec], flip_tol=1e-3, objectives=())
    assert la["activation"]["flip_risk"]["count"] == 1
    r = relative_distance([2.004, 2.006], 0.5, 2.0)
    assert r[0] <= 1e-3 < r[1]


def test_flip_risk_matches_testing_masks_and_curve():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 5, 5)) * 1e-3
    alpha = np.array([1.0, -0.5, 2.0])
    beta = np.array([0.0, 1e-4, -2e-4])
    w = rng.standard_normal((4, 3, 3, 3))
    rec = LayerRecord("c", w, x, alpha, beta)
    (la,) = analyze_layers([rec], flip_tol=2e-4, objectives=("kl",))
    mask = abt.flip_risk(x, alpha, beta, tol=2e-4)
    assert la["activation"]["flip_risk"]["count"] == int(mask.sum())
    np.testing.assert_allclose(la["activation"]["flip_risk"]["per_channel"],
                               mask.mean(axis=(0, 2, 3)))
    wmask = abt.weight_flip_risk(w, tol=2e-4)
    assert la["weight"]["flip_risk"]["count"] == int(wmask.sum())
    curve = la["activation"]["flip_risk_curve"]
    assert curve["tol"] == list(FLIP_RISK_LADDER)
    assert np.all(np.diff(curve["fraction"]) >= 0)
    for t, f in zip(curve["tol"], curve["fraction"]):
        assert f == pytest.approx(abt.flip_risk(x, alpha, beta, tol=t).mean(), abs=2 / x.size)
    # per-channel set: v-space histogram and per-channel searched sets
    a = la["activation"]
    assert a["per_channel"] and a["histogram"]["space"] == "v"
    assert len(a["equalization"]["kl"]["alpha"]) == 3 and len(a["b1"]) == 3


def test_per_channel_layer_figure(tmp_path):
    from adabin_np import plots

    rng = np.random.default_rng(4)
    rec = LayerRecord("pc", rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((6, 3, 5, 5)),
                      np.array([1.0, 0.5, 2.0]), np.array([0.0, 0.2, -0.1]), "official")
    (la,) = analyze_layers([rec], objectives=("kl", "l2"))
    raw = plots.plot_layer(la, tmp_path / "pc.png").read_bytes()
    assert raw[:8] == PNG_MAGIC and len(raw) > 20_000


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 1), (2, 2, 1), (4, 1, 0)])
def test_outputs_at_risk_matches_conv_flip_risk(groups, stride, padding):
    rng = np.random.default_rng(groups)
    x = rng.standard_normal((2, 4, 6, 6))
    x[0, 1, 2, 3] = x[1, 3, 0, 0] = 0.25  # == beta: at risk
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    w[5, 0, 1, 1] = w[5].mean() + (w[5, 0, 1, 1] - w[5].mean()) * 1e-9  # weight near beta_w
    rx = abt.flip_risk(x, 1.3, 0.25, tol=1e-5)
    rw = abt.weight_flip_risk(w, tol=1e-5)
    assert rx.sum() == 2
    ref = abt.conv_flip_risk(x, w, 1.3, 0.25, stride=stride, padding=padding, groups=groups,
                             tol=1e-5)
    geometry = dict(stride=stride, padding=padding, dilation=1, groups=groups)
    got = _outputs_at_risk(rx, rw, w.shape, geometry)
    assert got == pytest.approx(np.mean(ref > 0), abs=1e-12)
    assert 0 < got < 1


# ----------------------------------------------------------------------------------------------
# conventions
# ----------------------------------------------------------------------------------------------


def test_level_formulas_per_convention():
    b1, b2 = activation_levels(0.8, 0.25, "paper")
    assert (b1, b2) == (pytest.approx(-0.55), pytest.approx(1.05))
    b1, b2 = activation_levels(0.8, 0.25, "official")
    assert (b1, b2) == (pytest.approx(0.8 * -0.75), pytest.approx(0.8 * 1.25))
    b1, b2 = activation_levels(np.array([1.0, -2.0]), np.array([0.5, 0.5]), "official")
    np.testing.assert_allclose(b1, [-0.5, 1.0])  # alpha < 0: b1 (s = -1) is the larger one
    np.testing.assert_allclose(b2, [1.5, -3.0])
    w = np.array([[1.0, 3.0], [2.0, 2.0]])
    wb1, wb2 = weight_levels(w)
    np.testing.assert_allclose(wb1, [1.0, 2.0])
    np.testing.assert_allclose(wb2, [3.0, 2.0])
    with pytest.raises(ValueError, match="convention"):
        activation_levels(1.0, 0.0, "torch")


def test_official_levels_and_ties_in_analysis():
    x = np.array([-1.0, 0.5, 0.5, 2.0])  # two exact ties at beta = 0.5
    w = np.array([[1.0, -1.0]])
    out = {}
    for conv in ("paper", "official"):
        (la,) = analyze_layers([LayerRecord(conv, w, x, 2.0, 0.5, conv)], objectives=())
        out[conv] = la["activation"]
    assert (out["paper"]["b1"], out["paper"]["b2"]) == (-1.5, 2.5)
    assert (out["official"]["b1"], out["official"]["b2"]) == (-1.0, 3.0)
    # ties map to b2 in the paper convention, to 0 (neither level) in the official one
    assert out["paper"]["fraction_b2"] == 0.75 and out["official"]["fraction_b2"] == 0.25
    assert out["paper"]["flip_risk"]["exact_zero"] == 2
    assert out["official"]["threshold"] == 0.5


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def test_record_validation():
    w = np.ones((2, 3))
    x = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="act_alpha.*non-zero"):
        LayerRecord("a", w, x, 0.0, 0.0)
    with pytest.raises(ValueError, match="3 entries.*2 channels"):
        LayerRecord("a", w, x, np.ones(3), 0.0)
    with pytest.raises(ValueError, match="channel axis"):
        LayerRecord("a", w, np.zeros(5), np.ones(1), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        LayerRecord("a", w, np.array([np.nan, 1.0]), 1.0, 0.0)
    with pytest.raises(ValueError, match="weight.*dimensions"):
        LayerRecord("a", np.ones(3), x, 1.0, 0.0)
    with pytest.raises(ValueError, match="convention"):
        LayerRecord("a", w, x, 1.0, 0.0, "torch")
    with pytest.raises(TypeError, match="name"):
        LayerRecord("", w, x, 1.0, 0.0)
    with pytest.raises(TypeError, match="activations"):
        LayerRecord("a", w, np.array(["a"]), 1.0, 0.0)
    with pytest.raises(ValueError, match="conv.*4-d"):
        LayerRecord("a", w, x, 1.0, 0.0, conv={"stride": 1})
    rec = LayerRecord("a", w, x, 1.0, 0.0)
    with pytest.raises(ValueError, match="duplicate"):
        analyze_layers([rec, rec])
    with pytest.raises(ValueError, match="objectives"):
        analyze_layers([rec], objectives=("kl", "hinge"))
    with pytest.raises(ValueError, match="flip_tol"):
        analyze_layers([rec], flip_tol=-1.0)
    with pytest.raises(TypeError, match="LayerRecord"):
        analyze_layers([object()])
    with pytest.raises(TypeError, match="iterable"):
        analyze_layers(rec)
    with pytest.raises(TypeError, match="binary_layers"):
        analyze_model(object(), np.zeros((1, 1, 8, 8)))


# ----------------------------------------------------------------------------------------------
# summary.json and figures
# ----------------------------------------------------------------------------------------------


def _check_schema(summary, channels):
    assert isinstance(summary["layers"], list) and len(summary["layers"]) == len(channels)
    for la, c in zip(summary["layers"], channels):
        assert isinstance(la["name"], str) and la["name"]
        assert len(la["weight"]["alpha"]) == c and len(la["weight"]["beta"]) == c
        assert all(isinstance(v, float) for v in la["weight"]["alpha"])
        for obj in ("kl", "l2", "entropy"):
            assert len(la["weight"]["equalization"][obj]["beta"]) == c
        assert isinstance(la["activation"]["alpha"], float)
        assert isinstance(la["activation"]["beta"], float)
        for key in ("b1", "b2", "threshold", "flip_risk", "gaussian", "histogram"):
            assert key in la["activation"]
        assert 0.0 <= la["activation"]["flip_risk"]["fraction"] <= 1.0


def test_write_summary_schema_and_figures(tmp_path):
    from adabin_np import plots

    recs = [_gaussian_record(f"layer{i}", n_act=2000, seed=i)[0] for i in range(2)]
    layers = analyze_layers(recs)
    path = write_summary({"name": "synthetic", "layers": layers}, tmp_path / "summary.json")
    data = json.loads(path.read_text())
    assert data["name"] == "synthetic"
    _check_schema(data, [4, 4])
    assert data["layers"] == json.loads(json.dumps(layers))  # lossless round trip
    paths = plots.write_figures(data["layers"], tmp_path, title="synthetic",
                                landscape_weight=recs[0].weight, landscape_name="layer0")
    paths.append(plots.plot_layer(data["layers"][1], tmp_path / "one.png"))
    assert [p.name for p in paths] == ["layers_01.png", "summary.png", "landscape.png",
                                       "one.png"]
    for p in paths:
        raw = p.read_bytes()
        assert raw[:8] == PNG_MAGIC and len(raw) > 20_000, p


def test_analyze_model_on_tiny_model(tmp_path):
    models = pytest.importorskip("adabin_np.models")
    m = models.digits_cnn("paper", seed=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 1, 8, 8))
    m.train()
    before = m.state_dict()
    summary = analyze_model(m, x, out_dir=tmp_path, name="tiny", progress=False, batch_size=2,
                            convention="official")
    # the model is left as it was: mode, convention, statistics, no recorded inputs
    assert m.training and m.convention == "paper"
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(layer.recorded_input is None for _, layer in m.binary_layers())
    names = [n for n, _ in m.binary_layers()]
    assert [la["name"] for la in summary["layers"]] == names
    assert summary["convention"] == "official" and summary["n_inputs"] == 5
    data = json.loads((tmp_path / "summary.json").read_text())
    _check_schema(data, [layer.out_channels for _, layer in m.binary_layers()])
    for la, (_, layer) in zip(data["layers"], m.binary_layers()):
        assert la["activation"]["alpha"] == float(layer.binary_a.params["alpha_a"])
        assert la["convention"] == "official"
        np.testing.assert_allclose(la["weight"]["alpha"],
                                   weight_binary_set(layer.params["weight"])[0])
        assert 0.0 <= la["activation"]["flip_risk"]["outputs_at_risk"] <= 1.0
    # recorded input of the first binary layer: 5 samples, 16 channels of 8x8
    assert data["layers"][0]["activation"]["shape"] == [5, 16, 8, 8]
    for fig in data["figures"]:
        assert (tmp_path / fig).read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def test_load_inputs(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((20, 40, 3), 255, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("ignored")
    x = load_inputs(folder, size=8, channels=3, mean=(0.5, 0.5, 0.5), std=0.5)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float64
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1], -1.0, atol=0.02)
    assert load_inputs(folder, size=(4, 6), channels=1, limit=1).shape == (1, 1, 4, 6)
    arr = np.random.default_rng(0).standard_normal((3, 8, 8, 3))
    np.save(tmp_path / "x.npy", arr)
    np.testing.assert_array_equal(load_inputs(tmp_path / "x.npy", size=8),
                                  arr.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="not resized"):
        load_inputs(tmp_path / "x.npy", size=32)
    with pytest.raises(FileNotFoundError):
        load_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_inputs(tmp_path / "empty")
    with pytest.raises(ValueError, match="folder of images or an .npy"):
        load_inputs(folder / "notes.txt")
