"""Models (issue 3): module tree / state_dict names of the public release, the ResNet-20
checkpoint against an independent torch float64 ResNet-20 written from the SPEC, whole-model
backward against torch autograd (SPEC estimators) and against exact finite differences, the
record hook, the packed switch and the embedded digits model."""

from pathlib import Path

import numpy as np
import pytest

from adabin_np import models
from adabin_np.layers import AvgPool2d, StateDictError, _BatchNorm

CHECKPOINT = (Path(__file__).resolve().parents[2] / "shared" / "data"
              / "adabin_resnet20_1w1a_cifar10.th")


# ----------------------------------------------------------------------------------------------
# an independent torch implementation of the release's networks, from SPEC sections 1-2 and 6
# ----------------------------------------------------------------------------------------------


def torch_params(model, requires_grad=False):
    import torch

    out = {}
    params = {name for name, _, _ in model.named_parameters()}
    for k, v in model.state_dict().items():
        t = torch.tensor(v)
        if requires_grad and k in params:
            t.requires_grad_(True)
        out[k] = t
    return out


def t_bn(x, P, name, training):
    import torch.nn.functional as F

    return F.batch_norm(x, P[name + ".running_mean"], P[name + ".running_var"],
                        P[name + ".weight"], P[name + ".bias"], training=training, momentum=0.1,
                        eps=1e-5)


def t_maxout(x, P, name):
    import torch.nn.functional as F

    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (P[name + ".pos_scale"].reshape(shape) * F.relu(x)
            - P[name + ".neg_scale"].reshape(shape) * F.relu(-x))


def t_adabin(x, P, name, stride, convention, k, t):
    import torch_spec as ts  # independent SPEC formulas with STE autograd (tests/torch_spec.py)

    return ts.adabin_conv2d(x, P[name + ".weight"], P[name + ".binary_a.alpha_a"],
                            P[name + ".binary_a.beta_a"], stride=stride, padding=1, dilation=1,
                            groups=1, convention=convention, k=k, t=t)


def torch_block(out, P, pre, stride, shortcut, convention, training, k, t):
    o = t_bn(t_adabin(out, P, pre + "conv1", stride, convention, k, t), P, pre + "bn1", training)
    h = t_maxout(o + shortcut(out), P, pre + "nonlinear1")
    o2 = t_bn(t_adabin(h, P, pre + "conv2", 1, convention, k, t), P, pre + "bn2", training)
    return t_maxout(o2 + h, P, pre + "nonlinear2")


def torch_cifar_resnet(P, x, num_blocks, widths, convention, training=False, k=10.0, t=0.1):
    import torch.nn.functional as F

    out = F.conv2d(x, P["conv1.weight"], padding=1)
    out = t_maxout(t_bn(out, P, "bn1", training), P, "nonlinear1")
    in_planes = widths[0]
    for i, (blocks, planes) in enumerate(zip(num_blocks, widths)):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            if stride != 1 or in_planes != planes:
                def shortcut(v, p=planes):  # option A
                    return F.pad(v[:, :, ::2, ::2], (0, 0, 0, 0, p // 4, p // 4), "constant", 0)
            else:
                def shortcut(v):
                    return v
            out = torch_block(out, P, f"layer{i + 1}.{j}.", stride, shortcut, convention,
                              training, k, t)
            in_planes = planes
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    out = t_bn(out, P, "bn2", training)
    return F.linear(out, P["linear.weight"], P["linear.bias"])


def torch_imagenet_resnet(P, x, convention, head="release", training=False, pool=7, k=10.0,
                          t=0.1):
    import torch.nn.functional as F

    out = F.conv2d(x, P["conv1.weight"], stride=2, padding=3)
    out = F.max_pool2d(t_maxout(t_bn(out, P, "bn1", training), P, "nonlinear1"), 3, 2, 1)
    for i in range(4):
        for j in range(2):
            pre = f"layer{i + 1}.{j}."
            stride = 2 if i > 0 and j == 0 else 1
            if pre + "downsample.1.weight" in P:
                def shortcut(v, pre=pre, s=stride):
                    v = F.avg_pool2d(v, s, s, ceil_mode=True, count_include_pad=False)
                    return t_bn(F.conv2d(v, P[pre + "downsample.1.weight"]), P,
                                pre + "downsample.2", training)
            else:
                def shortcut(v):
                    return v
            out = torch_block(out, P, pre, stride, shortcut, convention, training, k, t)
    out = F.avg_pool2d(out, pool, stride=1).flatten(1)
    out = t_bn(out, P, "bn2", training)
    if head == "full":
        out = t_maxout(out, P, "nonlinear2")
    out = F.linear(out, P["fc.weight"], P["fc.bias"])
    if head == "full":
        out = t_bn(out, P, "bn3", training)
    return out


def randomize(model, seed, alpha=(0.5, 1.5), beta=(-0.3, 0.3)):
    """Non-trivial BN / Maxout / activation-set values (inits are 1, 0, 0.25 ...)."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "2.weight", "pos_scale")):
            sd[k] = rng.uniform(0.6, 1.4, v.shape)
        elif k.endswith(("bias", "running_mean")):
            sd[k] = rng.normal(scale=0.2, size=v.shape)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 2.0, v.shape)
        elif k.endswith("neg_scale"):
            sd[k] = rng.uniform(0.1, 0.5, v.shape)
        elif k.endswith("alpha_a"):
            sd[k] = np.array(rng.uniform(*alpha))
        elif k.endswith("beta_a"):
            sd[k] = np.array(rng.uniform(*beta))
    model.load_state_dict(sd)
    return model


def close(actual, expected, what, rtol=1e-9):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-2 * scale,
                               err_msg=what)


# ----------------------------------------------------------------------------------------------
# module trees and state dicts
# ----------------------------------------------------------------------------------------------


def release_resnet18_keys():
    """State-dict keys of the release's imagenet/nets/resnet18.py, written out by hand."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn] + ["nonlinear1.neg_scale",
                                                          "nonlinear1.pos_scale"]
    for i in range(1, 5):
        for j in range(2):
            p = f"layer{i}.{j}."
            keys += [p + "conv1.weight", p + "conv1.binary_a.alpha_a",
                     p + "conv1.binary_a.beta_a"]
            keys += [p + f"bn1.{b}" for b in bn]
            keys += [p + "nonlinear1.neg_scale", p + "nonlinear1.pos_scale"]
            keys += [p + "conv2.weight", p + "conv2.binary_a.alpha_a",
                     p + "conv2.binary_a.beta_a"]
            keys += [p + f"bn2.{b}" for b in bn]
            if i > 1 and j == 0:
                keys += [p + "downsample.1.weight"] + [p + f"downsample.2.{b}" for b in bn]
            keys += [p + "nonlinear2.neg_scale", p + "nonlinear2.pos_scale"]
    keys += [f"bn2.{b}" for b in bn] + ["nonlinear2.neg_scale", "nonlinear2.pos_scale",
                                        "fc.weight", "fc.bias"] + [f"bn3.{b}" for b in bn]
    return keys


def test_resnet18_state_dict_matches_the_release():
    m = models.resnet18_1w1a()
    sd = m.state_dict()
    assert list(sd) == release_resnet18_keys()
    assert sd["layer2.0.downsample.1.weight"].shape == (128, 64, 1, 1)
    assert sd["fc.weight"].shape == (1000, 512) and sd["bn3.weight"].shape == (1000,)
    assert len(m.binary_layers()) == 16


def test_resnet20_structure():
    m = models.resnet20_1w1a()
    names = [n for n, _ in m.binary_layers()]
    assert names[0] == "layer1.0.conv1" and names[-1] == "layer3.2.conv2" and len(names) == 18
    sd = m.state_dict()
    assert len(sd) == 195
    assert sd["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert sd["bn2.weight"].shape == (64,) and sd["linear.weight"].shape == (10, 64)
    m2 = models.resnet20_1w1a(seed=0)
    assert all(np.array_equal(sd[k], v) for k, v in m2.state_dict().items())  # seeded init


def test_load_state_dict_reports_missing_unexpected_and_shapes():
    m = models.resnet20_1w1a()
    sd = m.state_dict()
    sd.pop("layer1.0.conv1.binary_a.alpha_a")
    sd["layer1.0.conv1.binary_a.gamma"] = np.array(1.0)
    sd["linear.weight"] = np.zeros((100, 64))
    with pytest.raises(StateDictError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys (1): layer1.0.conv1.binary_a.alpha_a" in msg
    assert "unexpected keys (1): layer1.0.conv1.binary_a.gamma" in msg
    assert "linear.weight: shape (100, 64) in state_dict, model expects (10, 64)" in msg


def test_input_validation():
    m = models.digits_cnn()
    with pytest.raises(ValueError, match="x must have 1 channels"):
        m(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        m(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        m(np.full((2, 1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="convention"):
        models.resnet20_1w1a("papper")


def test_convention_and_ede_propagate():
    m = models.digits_cnn("paper")
    m.convention = "official"
    assert all(layer.convention == "official" for _, layer in m.binary_layers())
    m.set_ede(3.0, 0.5)
    assert all((layer.k, layer.t) == (3.0, 0.5) for _, layer in m.binary_layers())


# ----------------------------------------------------------------------------------------------
# the public ResNet-20 checkpoint vs torch
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_model():
    if not CHECKPOINT.exists():
        pytest.skip(f"release checkpoint not found at {CHECKPOINT}")
    from adabin_np.checkpoint import load_checkpoint

    m = models.resnet20_1w1a("official")
    m.load_state_dict(load_checkpoint(CHECKPOINT))  # strict
    return m.eval()


@pytest.fixture(scope="module")
def crops():
    from adabin_np.data import sample_image_crops

    return sample_image_crops(192, 32, seed=0)


@pytest.mark.slow
def test_resnet20_checkpoint_matches_torch_float64(checkpoint_model, crops):
    torch = pytest.importorskip("torch")
    logits = checkpoint_model(crops)
    with torch.no_grad():
        ref = torch_cifar_resnet(torch_params(checkpoint_model), torch.tensor(crops),
                                 (3, 3, 3), (16, 32, 64), "official").numpy()
    d = np.abs(logits - ref)
    agree = np.mean(logits.argmax(1) == ref.argmax(1))
    print(f"ResNet-20 checkpoint, {len(crops)} crops: median |dlogit| {np.median(d):.2e}, "
          f"max {d.max():.2e}, prediction agreement {100 * agree:.2f}%")
    assert np.median(d) <= 1e-6
    assert agree >= 0.998
    assert len(np.unique(ref.argmax(1))) >= 3  # a non-degenerate batch


def test_resnet20_checkpoint_packed_path(checkpoint_model, crops):
    pytest.importorskip("adabin_np.packed")
    x = crops[:64]
    f = checkpoint_model(x)
    p = checkpoint_model(x, packed=True)
    assert np.mean(f.argmax(1) == p.argmax(1)) >= 0.98
    assert np.median(np.abs(f - p)) <= 1e-6


def test_record_hook_returns_each_binary_input(checkpoint_model, crops):
    x = crops[:4]
    m = checkpoint_model
    m(x, record=True)
    rec = m.recorded_inputs()
    assert list(rec) == [n for n, _ in m.binary_layers()]
    stem = m.nonlinear1(m.bn1(m.conv1(x)))
    np.testing.assert_array_equal(rec["layer1.0.conv1"], stem)
    assert rec["layer3.2.conv2"].shape == (4, 64, 8, 8)
    m(x)
    assert m.recorded_inputs() == {}


# ----------------------------------------------------------------------------------------------
# whole-model backward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_cifar_resnet_backward_matches_torch_autograd(convention):
    torch = pytest.importorskip("torch")
    blocks, widths = (2, 2), (4, 8)
    m = randomize(models.CifarResNet(blocks, widths, num_classes=5, convention=convention,
                                     seed=1), seed=2)
    m.set_ede(3.0, 0.4)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 3, 8, 8))
    P = torch_params(m, requires_grad=True)
    logits = m(x)  # train mode: batch statistics
    tx = torch.tensor(x, requires_grad=True)
    tlogits = torch_cifar_resnet(P, tx, blocks, widths, convention, training=True, k=3.0, t=0.4)
    close(logits, tlogits.detach().numpy(), "logits")
    g = rng.normal(size=logits.shape)
    dx = m.backward(g)
    tlogits.backward(torch.tensor(g))
    close(dx, tx.grad.numpy(), "dx")
    for name, mod, key in m.named_parameters():
        close(mod.grads[key], P[name].grad.numpy(), name)
    for k, v in m.state_dict().items():  # running statistics were updated like torch's
        if "running" in k:
            close(v, P[k].numpy(), k)


def test_imagenet_resnet_backward_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    # the release's ResNet-18 on 32x32 inputs: its last stage is 1x1, so pool with kernel 1
    m = randomize(models.resnet18_1w1a("official", seed=4), seed=5)
    m.avgpool = AvgPool2d(1, stride=1)
    m.head = "full"
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 32, 32))
    P = torch_params(m, requires_grad=True)
    logits = m(x)
    tx = torch.tensor(x, requires_grad=True)
    tl = torch_imagenet_resnet(P, tx, "official", head="full", training=True, pool=1)
    close(logits, tl.detach().numpy(), "logits")
    g = rng.normal(size=logits.shape)
    dx = m.backward(g)
    tl.backward(torch.tensor(g))
    close(dx, tx.grad.numpy(), "dx")
    for name, mod, key in m.named_parameters():
        close(mod.grads[key], P[name].grad.numpy(), name)


@pytest.mark.slow
def test_resnet18_forward_224_matches_torch():
    torch = pytest.importorskip("torch")
    m = randomize(models.resnet18_1w1a("paper", seed=7), seed=8).eval()
    x = np.random.default_rng(9).normal(size=(1, 3, 224, 224))
    logits = m(x)
    with torch.no_grad():
        ref = torch_imagenet_resnet(torch_params(m), torch.tensor(x), "paper").numpy()
    assert logits.shape == (1, 1000)
    close(logits, ref, "logits", rtol=1e-7)


@pytest.mark.parametrize("convention", ["paper", "official"])
@pytest.mark.parametrize("training", [True, False])
def test_model_backward_is_the_exact_derivative_away_from_thresholds(convention, training):
    """Finite differences of the whole model, every parameter and the input.

    Each binary layer's beta_a is put in a wide gap of its input values and alpha_a is set to a
    quarter of the gap, so every |v| >= 2: the Bi-Real estimator is exactly 0 there and no
    sign can flip under a 1e-7 step; with EDE k = 0 the weight gradient keeps only its exact
    part (through alpha_w(W), beta_w(W) at fixed signs). Then the STE backward *is* the
    derivative of the network, and central differences must agree to ~1e-5. In eval mode the
    running statistics are first set to the batch statistics so values stay normalised.
    """
    m = randomize(models.CifarResNet((2, 1), (4, 8), num_classes=5, convention=convention,
                                     seed=10), seed=11)
    m.set_ede(0.0, 1.0)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 3, 6, 6))
    for name, layer in m.binary_layers():  # in forward order: later inputs depend on earlier
        m(x, record=True)
        # beta_a in the widest gap between the central 20-80% of the input values
        vals = np.sort(m.recorded_inputs()[name].ravel())
        vals = vals[int(0.2 * vals.size):int(0.8 * vals.size)]
        i = int(np.argmax(np.diff(vals)))
        gap = vals[i + 1] - vals[i]
        assert gap > 1e-4
        layer.binary_a.params["beta_a"] = np.array((vals[i] + vals[i + 1]) / 2)
        layer.binary_a.params["alpha_a"] = np.array(gap / 4)
    if not training:
        # running statistics = this batch's statistics, so that eval-mode values stay
        # normalised (and equal the train-mode ones the gaps were chosen on)
        bns = [mod for _, mod in m.named_modules() if isinstance(mod, _BatchNorm)]
        for bn in bns:
            bn.momentum = 1.0
        m(x)
        for bn in bns:
            n = bn._cache[0].size // bn.num_features
            bn.buffers["running_var"] *= (n - 1) / n
            bn.momentum = 0.1
        m.eval()
    m(x, record=True)
    for name, layer in m.binary_layers():
        v = (m.recorded_inputs()[name] - layer.binary_a.beta) / layer.binary_a.alpha
        assert np.min(np.abs(v)) >= 2 - 1e-9, name

    r = rng.normal(size=(3, 5))

    def loss(xx):
        return float(np.sum(m(xx) * r))

    loss(x)
    dx = m.backward(r)
    grads = {name: mod.grads[key].copy() for name, mod, key in m.named_parameters()}
    h = 1e-7
    checks = [("x", x, dx)] + [(n, mod.params[k], grads[n]) for n, mod, k in m.named_parameters()]
    for name, arr, g in checks:
        for _ in range(2):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            old = arr[idx]
            arr[idx] = old + h
            lp = loss(x)
            arr[idx] = old - h
            lm = loss(x)
            arr[idx] = old
            num = (lp - lm) / (2 * h)
            assert abs(g[idx] - num) <= 1e-5 * max(1.0, abs(num)), (name, idx, g[idx], num)


# ----------------------------------------------------------------------------------------------
# the embedded digits model
# ----------------------------------------------------------------------------------------------


def test_embedded_digits_model():
    from adabin_np.data import load_digits_split
    from adabin_np.train import evaluate

    assert models.DIGITS_WEIGHTS.exists(), "run `adabin-np train` to create the embedded model"
    m = models.load_digits_model()
    assert not m.training and m.meta["convention"] == m.convention
    split = load_digits_split(seed=int(m.meta["seed"]))
    acc = evaluate(m, split.x_test, split.y_test)
    assert acc >= 0.95
    # the stored accuracy is reproduced (one prediction of slack for another machine's
    # rounding in NumPy's reductions / BLAS; on the training machine it is exact)
    assert abs(acc - m.meta["accuracy"]) <= 1 / len(split.y_test) + 1e-12
    assert evaluate(m, split.x_test, split.y_test, packed=True) >= 0.95
