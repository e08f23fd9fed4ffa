"""Whole-model packed inference (adabin_np.inference): ``model(x, packed=True)`` of an eval-mode
ResNet runs a compiled plan (BatchNorm folded into the packed kernel, residual + Maxout fused,
real layers on BLAS). It must equal the float path: float64 input to ~1e-12 of the logit
scale, float32 input to float32 rounding with the float path's predictions; and it must never
serve a stale plan after an in-place weight edit.
"""

import numpy as np
import pytest

from adabin_np import inference, models


def _randomize_bn(model, rng):
    """Non-trivial BatchNorm statistics and Maxout slopes, so that folding is exercised."""
    for _, mod in model.named_modules():
        if "running_var" in mod.buffers:
            c = mod.num_features
            mod.buffers["running_mean"] = rng.normal(0, 0.2, c)
            mod.buffers["running_var"] = rng.uniform(0.5, 2.0, c)
            mod.params["weight"] = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
            mod.params["bias"] = rng.normal(0, 0.2, c)
        if "pos_scale" in mod.params:
            c = mod.channels
            mod.params["pos_scale"] = rng.uniform(0.5, 1.5, c)
            mod.params["neg_scale"] = rng.uniform(-0.3, 0.5, c)
        if "alpha_a" in mod.params:
            mod.params["alpha_a"] = np.array(rng.uniform(0.5, 1.5))
            mod.params["beta_a"] = np.array(rng.normal(0, 0.1))


@pytest.fixture(scope="module")
def resnet20():
    rng = np.random.default_rng(0)
    m = models.resnet20_1w1a(seed=3)
    _randomize_bn(m, rng)
    m.eval()
    return m


def _scale(logits):
    return float(np.abs(logits).max()) + 1.0


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_float64_plan_equals_float_path(resnet20, convention):
    m = resnet20
    m.convention = convention
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32))
    f = m(x)
    p = m(x, packed=True)
    assert isinstance(m.__dict__.get("_packed_plan"), inference.PackedPlan)  # the fast route ran
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, f, rtol=0, atol=1e-11 * _scale(f))
    m.convention = "paper"


def test_float32_plan_is_float32_and_agrees(resnet20):
    x = np.random.default_rng(2).normal(size=(8, 3, 32, 32)).astype(np.float32)
    f = resnet20(x.astype(np.float64))  # the float path on the same (widened) input
    p = resnet20(x, packed=True)
    assert p.dtype == np.float32
    assert np.array_equal(p.argmax(1), f.argmax(1))
    assert np.median(np.abs(p - f)) <= 1e-4 * _scale(f)


def test_in_place_weight_edit_is_never_served_stale(resnet20):
    m = resnet20
    x = np.random.default_rng(4).normal(size=(2, 3, 32, 32))
    m(x, packed=True)
    w = m.layer2[1].conv1.params["weight"]
    w[:3] *= -1.0  # in place: same array object
    try:
        np.testing.assert_allclose(m(x, packed=True), m(x), rtol=0, atol=1e-11 * _scale(m(x)))
        m.bn1.buffers["running_mean"][0] += 0.5  # a buffer, in place
        np.testing.assert_allclose(m(x, packed=True), m(x), rtol=0, atol=1e-11 * _scale(m(x)))
    finally:
        w[:3] *= -1.0
        m.bn1.buffers["running_mean"][0] -= 0.5


def test_training_mode_and_recording_use_the_layer_route():
    m = models.digits_cnn(seed=1)
    x = np.random.default_rng(5).normal(size=(4, 1, 8, 8))
    m.train()
    assert not inference.supports(m)
    y = m(x, packed=True)  # batch statistics: per-layer packed route
    assert y.shape == (4, 10)
    m.eval()
    y_rec = m(x, packed=True, record=True)
    assert set(m.recorded_inputs()) == {n for n, _ in m.binary_layers()}
    np.testing.assert_allclose(m(x, packed=True), y_rec, rtol=0, atol=1e-11 * _scale(y_rec))


def test_resnet18_plan_float32_and_float64():
    rng = np.random.default_rng(6)
    m = models.resnet18_1w1a(seed=2, num_classes=10) if "num_classes" in \
        models.resnet18_1w1a.__code__.co_varnames else models.resnet18_1w1a(seed=2)
    _randomize_bn(m, rng)
    m.eval()
    x = rng.normal(size=(1, 3, 224, 224))
    f = m(x)
    np.testing.assert_allclose(m(x, packed=True), f, rtol=0, atol=1e-11 * _scale(f))
    x32 = x.astype(np.float32)
    f32 = m(x32.astype(np.float64))
    p32 = m(x32, packed=True)
    assert p32.dtype == np.float32
    assert p32.argmax() == f32.argmax()
    assert np.median(np.abs(p32 - f32)) <= 1e-4 * _scale(f32)


def test_embedded_digits_model_packed_predictions_equal_float():
    from adabin_np.data import load_digits_split

    m = models.load_digits_model()
    split = load_digits_split(seed=int(m.meta["seed"]))
    x = split.x_test
    f = m(x)
    np.testing.assert_allclose(m(x, packed=True), f, rtol=0, atol=1e-11 * _scale(f))
    assert np.array_equal(m(x.astype(np.float32), packed=True).argmax(1),
                          m(x.astype(np.float32).astype(np.float64)).argmax(1))


@pytest.mark.parametrize("h, w, k, s, pad", [(112, 112, 3, 2, 1), (7, 9, 3, 2, 1), (5, 5, 2, 2, 0),
                                             (8, 8, 3, 1, 1), (6, 7, 3, 3, 1), (10, 11, 5, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_maxpool_equals_a_direct_window_max(h, w, k, s, pad, dtype):
    """The separable max pool of the plans against the definition (every window, padded taps
    excluded), bit for bit."""
    from adabin_np.inference import _maxpool

    x = np.random.default_rng(h * w + k).normal(size=(2, 3, h, w)).astype(dtype)
    oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    want = np.empty((2, 3, oh, ow), dtype=dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - pad, j * s - pad
            win = x[:, :, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            want[:, :, i, j] = win.max(axis=(2, 3))
    got = np.empty_like(want)
    _maxpool(x, k, s, pad, got)
    np.testing.assert_array_equal(got, want)
