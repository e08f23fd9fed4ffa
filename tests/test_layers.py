"""Layers (issue 3): every backward vs central finite differences (plain NumPy), PyTorch
semantics of BatchNorm/pooling vs torch (when installed), AdaBinConv2d vs the functional oracle,
the packed switch and its weight cache, state_dict loading and validation errors."""

import numpy as np
import pytest

import adabin_np as ab
from adabin_np import layers as L

H = 1e-6


def loss_and_grad(layer, x, r):
    """L = sum(layer(x) * r), so dL/dy = r."""
    y = layer(x)
    return float(np.sum(y * r)), layer.backward(r)


def fd_check(layer, x, *, n_checks=12, seed=0, rtol=1e-6):
    """Central differences of L = sum(layer(x) * r) w.r.t. x and every parameter."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=layer(x).shape)
    _, dx = loss_and_grad(layer, x, r)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def total(xx):
        return float(np.sum(layer(xx) * r))

    targets = [("x", x, dx)] + [(k, layer.params[k], grads[k]) for k in layer.params]
    for name, arr, g in targets:
        for _ in range(min(n_checks, arr.size)):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            old = arr[idx]
            arr[idx] = old + H
            lp = total(x)
            arr[idx] = old - H
            lm = total(x)
            arr[idx] = old
            num = (lp - lm) / (2 * H)
            scale = max(1.0, abs(num))
            assert abs(g[idx] - num) <= rtol * scale, (type(layer).__name__, name, idx,
                                                       g[idx], num)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_fd(training):
    rng = np.random.default_rng(1)
    bn = L.BatchNorm2d(3)
    bn.params["weight"] = rng.uniform(0.5, 1.5, 3)
    bn.params["bias"] = rng.normal(size=3)
    bn.buffers["running_mean"] = rng.normal(size=3)
    bn.buffers["running_var"] = rng.uniform(0.5, 2, 3)
    bn.train(training)
    fd_check(bn, rng.normal(size=(4, 3, 3, 2)) * 2 + 1)


def test_batchnorm1d_fd():
    rng = np.random.default_rng(2)
    bn = L.BatchNorm1d(5)
    bn.params["weight"] = rng.uniform(0.5, 1.5, 5)
    fd_check(bn, rng.normal(size=(6, 5)))


def test_maxout_fd():
    rng = np.random.default_rng(3)
    m = L.Maxout(4)
    m.params["pos_scale"] = rng.uniform(0.5, 1.5, 4)
    m.params["neg_scale"] = rng.uniform(0.1, 0.5, 4)
    x = rng.normal(size=(3, 4, 2, 3))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    fd_check(m, x)
    fd_check(m, x[:, :, 0, 0].copy())  # (N, C) input


def test_maxout_formula_and_init():
    m = L.Maxout(2)
    assert np.all(m.params["pos_scale"] == 1.0) and np.all(m.params["neg_scale"] == 0.25)
    x = np.array([[[[2.0]], [[-4.0]]]])
    np.testing.assert_array_equal(m(x), [[[[2.0]], [[-1.0]]]])
    assert list(m.state_dict()) == ["neg_scale", "pos_scale"]


def test_linear_fd():
    rng = np.random.default_rng(4)
    fd_check(L.Linear(5, 3, rng=rng), rng.normal(size=(4, 5)))


@pytest.mark.parametrize("kw", [dict(stride=1, padding=1, bias=True), dict(stride=2, padding=0),
                                dict(stride=2, padding=3)])
def test_conv2d_fd(kw):
    rng = np.random.default_rng(5)
    k = 7 if kw["padding"] == 3 else 3
    conv = L.Conv2d(3, 4, k, rng=rng, **kw)
    fd_check(conv, rng.normal(size=(2, 3, 6, 5)))


def test_conv2d_forward_is_oracle_conv2d():
    rng = np.random.default_rng(6)
    conv = L.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng)
    x = rng.normal(size=(2, 3, 7, 7))
    np.testing.assert_array_equal(conv(x), ab.conv2d(x, conv.params["weight"], stride=2,
                                                     padding=1))


@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=2, ceil_mode=True,
                                     count_include_pad=False),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                     count_include_pad=True),
                                dict(kernel_size=3, stride=2, padding=1,
                                     count_include_pad=False),
                                dict(kernel_size=7, stride=1)])
def test_avgpool_fd(kw):
    rng = np.random.default_rng(7)
    size = 7 if kw["kernel_size"] == 7 else 5
    fd_check(L.AvgPool2d(**kw), rng.normal(size=(2, 3, size, size)))


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, stride=2, ceil_mode=True)])
def test_maxpool_fd(kw):
    rng = np.random.default_rng(8)
    fd_check(L.MaxPool2d(**kw), rng.normal(size=(2, 3, 7, 5)))


def test_reshaping_layers_fd():
    rng = np.random.default_rng(9)
    fd_check(L.GlobalAvgPool2d(), rng.normal(size=(2, 3, 4, 4)))
    fd_check(L.Flatten(), rng.normal(size=(2, 3, 2, 2)))
    fd_check(L.ShortcutA(8), rng.normal(size=(2, 4, 5, 5)))
    fd_check(L.Identity(), rng.normal(size=(2, 3)))


def test_shortcut_a_layout():
    x = np.arange(2 * 4 * 4 * 4, dtype=float).reshape(2, 4, 4, 4)
    y = L.ShortcutA(8)(x)
    assert y.shape == (2, 8, 2, 2)
    assert np.all(y[:, :2] == 0) and np.all(y[:, 6:] == 0)
    np.testing.assert_array_equal(y[:, 2:6], x[:, :, ::2, ::2])


def test_batchnorm_running_stats_update():
    rng = np.random.default_rng(10)
    bn = L.BatchNorm2d(2)
    x = rng.normal(size=(3, 2, 2, 2)) * 3 + 1
    bn(x)
    n = 3 * 2 * 2
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * mean, rtol=1e-14)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * var_unbiased, rtol=1e-14)
    assert int(bn.buffers["num_batches_tracked"]) == 1
    bn.eval()
    before = bn.state_dict()
    bn(x)
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_batchnorm_single_value_per_channel_is_an_error():
    bn = L.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.ones((1, 3)))
    bn.eval()
    assert bn(np.ones((1, 3))).shape == (1, 3)


# ----------------------------------------------------------------------------------------------
# AdaBinConv2d
# ----------------------------------------------------------------------------------------------


def make_adabin(convention="paper", seed=11, **kw):
    rng = np.random.default_rng(seed)
    layer = L.AdaBinConv2d(4, 6, 3, padding=1, convention=convention, rng=rng, **kw)
    layer.binary_a.params["alpha_a"] = np.array(0.8)
    layer.binary_a.params["beta_a"] = np.array(0.1)
    return layer, rng.normal(size=(2, 4, 5, 5))


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_adabin_layer_is_the_functional_oracle(convention):
    layer, x = make_adabin(convention, stride=2)
    layer.k, layer.t = 3.0, 0.4
    kw = dict(stride=2, padding=1, convention=convention)
    y = layer(x)
    np.testing.assert_array_equal(y, ab.adabin_conv2d(x, layer.params["weight"], 0.8, 0.1, **kw))
    g = np.random.default_rng(0).normal(size=y.shape)
    dx = layer.backward(g)
    ref = ab.adabin_conv2d_grad(x, layer.params["weight"], 0.8, 0.1, g, k=3.0, t=0.4, **kw)
    np.testing.assert_array_equal(dx, ref.dx)
    np.testing.assert_array_equal(layer.grads["weight"], ref.dw)
    assert layer.binary_a.grads["alpha_a"] == ref.dalpha
    assert layer.binary_a.grads["beta_a"] == ref.dbeta
    assert layer.binary_a.grads["alpha_a"].shape == ()


def test_adabin_layer_state_dict_names():
    layer, _ = make_adabin()
    assert list(layer.state_dict()) == ["weight", "binary_a.alpha_a", "binary_a.beta_a"]
    assert layer.state_dict()["binary_a.alpha_a"].shape == ()


def test_binary_activation_layer():
    act = L.BinaryActivation(convention="official")
    act.params["alpha_a"] = np.array(2.0)
    act.params["beta_a"] = np.array(0.25)
    x = np.array([[0.25, 0.5, -1.0]])
    np.testing.assert_array_equal(act(x), [[0.5, 2.5, -1.5]])
    g = np.ones_like(x)
    dx = act.backward(g)
    ref = ab.binarize_activations_grad(x, 2.0, 0.25, g, convention="official")
    np.testing.assert_array_equal(dx, ref.dx)
    assert act.grads["alpha_a"] == ref.dalpha and act.grads["beta_a"] == ref.dbeta


def test_packed_switch_and_weight_cache():
    pytest.importorskip("adabin_np.packed")
    layer, x = make_adabin("paper")
    layer.eval()
    y_float = layer(x)
    y_packed = layer(x, packed=True)
    np.testing.assert_allclose(y_packed, y_float, rtol=1e-12, atol=1e-12)
    cached = layer._packed_cache
    assert cached is not None
    layer(x, packed=True)
    assert layer._packed_cache is cached  # reused
    layer.params["weight"] *= -1.0  # in-place change (as an optimizer step does)
    np.testing.assert_allclose(layer(x, packed=True), layer(x), rtol=1e-12, atol=1e-12)
    assert layer._packed_cache is not cached
    sd = layer.state_dict()
    sd["weight"] = np.random.default_rng(1).normal(size=sd["weight"].shape)
    layer.load_state_dict(sd)
    assert layer._packed_cache is None
    np.testing.assert_allclose(layer(x, packed=True), layer(x), rtol=1e-12, atol=1e-12)
    layer(x, packed=True)
    with pytest.raises(RuntimeError, match="packed path is inference-only"):
        layer.backward(np.ones((2, 6, 5, 5)))


def test_record_keeps_the_pre_binarization_input():
    layer, x = make_adabin()
    layer.record = True
    layer(x)
    np.testing.assert_array_equal(layer.recorded_input, x)
    layer.record = False
    layer(x)
    assert layer.recorded_input is None


# ----------------------------------------------------------------------------------------------
# state dict and validation
# ----------------------------------------------------------------------------------------------


def small_net():
    return L.Sequential(L.Conv2d(1, 2, 3, rng=0), L.BatchNorm2d(2), L.Maxout(2))


def test_state_dict_roundtrip_and_order():
    net = small_net()
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "2.neg_scale", "2.pos_scale"]
    assert sd["1.num_batches_tracked"].dtype == np.int64
    sd["0.weight"] = sd["0.weight"].astype(np.float32) + 1
    net2 = small_net()
    net2.load_state_dict(sd)
    assert net2.state_dict()["0.weight"].dtype == np.float64
    np.testing.assert_array_equal(net2.state_dict()["0.weight"], sd["0.weight"])


def test_load_state_dict_errors_list_everything_and_change_nothing():
    net = small_net()
    before = net.state_dict()
    sd = net.state_dict()
    del sd["1.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["0.weight"] = np.zeros((2, 1, 2, 2))
    sd["1.weight"] = np.zeros(2) + 2.0
    with pytest.raises(L.StateDictError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    assert "1.bias" in msg and "extra.weight" in msg and "0.weight" in msg
    assert "(2, 1, 2, 2)" in msg and "(2, 1, 3, 3)" in msg
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    del sd["0.weight"]
    sd["0.weight"] = before["0.weight"]
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["1.bias"] and unexpected == ["extra.weight"]
    np.testing.assert_array_equal(net.state_dict()["1.weight"], [2.0, 2.0])
    sd["1.weight"] = np.array([np.nan, 1.0])
    with pytest.raises(L.StateDictError, match="NaN"):
        net.load_state_dict(sd, strict=False)


def test_validation_errors_name_the_layer():
    with pytest.raises(ValueError, match="Maxout expects 3 channels"):
        L.Maxout(3)(np.ones((2, 4)))
    with pytest.raises(ValueError, match="AdaBinConv2d expects a 4-d input"):
        make_adabin()[0](np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        L.Linear(2, 2, rng=0)(np.array([[np.nan, 1.0]]))
    with pytest.raises(RuntimeError, match="before forward"):
        L.Linear(2, 2, rng=0).backward(np.ones((1, 2)))
    lin = L.Linear(2, 3, rng=0)
    lin(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"grad has shape \(4, 2\), expected \(4, 3\)"):
        lin.backward(np.ones((4, 2)))
    with pytest.raises(TypeError, match="complex"):
        L.BatchNorm1d(2)(np.ones((3, 2), dtype=complex))


# ----------------------------------------------------------------------------------------------
# PyTorch semantics (skipped without torch)
# ----------------------------------------------------------------------------------------------


def test_batchnorm_and_pooling_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 4, 7, 6))
    g = None

    def compare(layer, tfun):
        nonlocal g
        y = layer(x)
        tx = torch.tensor(x, requires_grad=True)
        ty = tfun(tx)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        g = rng.normal(size=y.shape)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-12, atol=1e-12)

    compare(L.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
            lambda t: F.avg_pool2d(t, 2, 2, ceil_mode=True, count_include_pad=False))
    compare(L.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True),
            lambda t: F.avg_pool2d(t, 3, 2, padding=1, ceil_mode=True, count_include_pad=True))
    compare(L.AvgPool2d(3, 2, padding=1, ceil_mode=False, count_include_pad=False),
            lambda t: F.avg_pool2d(t, 3, 2, padding=1, count_include_pad=False))
    compare(L.MaxPool2d(3, 2, padding=1), lambda t: F.max_pool2d(t, 3, 2, padding=1))
    compare(L.MaxPool2d(2, 2, ceil_mode=True), lambda t: F.max_pool2d(t, 2, 2, ceil_mode=True))

    bn = L.BatchNorm2d(4)
    bn.params["weight"] = rng.uniform(0.5, 2, 4)
    bn.params["bias"] = rng.normal(size=4)
    tm = torch.zeros(4, dtype=torch.float64)
    tv = torch.ones(4, dtype=torch.float64)
    tw = torch.tensor(bn.params["weight"], requires_grad=True)
    tb = torch.tensor(bn.params["bias"], requires_grad=True)
    compare(bn, lambda t: F.batch_norm(t, tm, tv, tw, tb, training=True, momentum=0.1,
                                       eps=1e-5))
    np.testing.assert_allclose(bn.grads["weight"], tw.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.grads["bias"], tb.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], tm.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bn.buffers["running_var"], tv.numpy(), rtol=1e-12)
