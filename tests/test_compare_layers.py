"""Layer-by-layer comparison (issue 13 point 5) against a torch ResNet-20 of the release.

The torch model is written here as the public release structures it (module names
``conv1``, ``bn1``, ``nonlinear1``, ``layer{1,2,3}.{0,1,2}.{conv1,bn1,nonlinear1,conv2,bn2,
nonlinear2,shortcut}``, ``bn2``, ``linear``; AdaBin convs own ``binary_a.alpha_a/beta_a``),
loads the oracle model's state_dict strictly (so the names are the release's prefixes) and is
compared through forward hooks -- the recipe of docs/testing.md.
"""

from __future__ import annotations

import numpy as np
import pytest

import adabin_np as ab
import adabin_np.testing as abt

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class BinaryActivation(nn.Module):
    def __init__(self, convention):
        super().__init__()
        self.alpha_a = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.beta_a = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.convention = convention

    def forward(self, x):
        v = (x - self.beta_a) / self.alpha_a
        if self.convention == "official":
            return self.alpha_a * (torch.sign(v) + self.beta_a)
        return self.alpha_a * torch.where(v >= 0, 1.0, -1.0).to(x.dtype) + self.beta_a


class AdaBinConv2d(nn.Conv2d):
    def __init__(self, cin, cout, stride, convention, pad_value=0.0):
        super().__init__(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.binary_a = BinaryActivation(convention)
        self.convention = convention
        self.pad_value = pad_value  # != 0: a deliberately broken layer (pads with a level)

    def forward(self, x):
        xb = self.binary_a(x)
        wf = self.weight.flatten(1)
        beta_w = wf.mean(1, keepdim=True)
        alpha_w = wf.std(1, correction=0, keepdim=True)
        u = (wf - beta_w) / alpha_w
        s = torch.sign(u) if self.convention == "official" else torch.where(u >= 0, 1.0, -1.0)
        wb = (alpha_w * s.to(wf.dtype) + beta_w).reshape(self.weight.shape)
        if self.pad_value:
            return F.conv2d(F.pad(xb, (1, 1, 1, 1), value=self.pad_value), wb,
                            stride=self.stride)
        return F.conv2d(xb, wb, stride=self.stride, padding=1)


class Maxout(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.neg_scale = nn.Parameter(torch.full((c,), 0.25, dtype=torch.float64))
        self.pos_scale = nn.Parameter(torch.ones(c, dtype=torch.float64))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (self.pos_scale.reshape(shape) * F.relu(x)
                - self.neg_scale.reshape(shape) * F.relu(-x))


class ShortcutA(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride, convention):
        super().__init__()
        self.conv1 = AdaBinConv2d(cin, planes, stride, convention)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = Maxout(planes)
        self.conv2 = AdaBinConv2d(planes, planes, 1, convention)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = Maxout(planes)
        self.shortcut = ShortcutA(planes) if stride != 1 or cin != planes else nn.Identity()

    def forward(self, x):
        h = self.nonlinear1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.nonlinear2(self.bn2(self.conv2(h)) + h)


class ResNet20(nn.Module):
    def __init__(self, convention="official"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.nonlinear1 = Maxout(16)
        cin = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = [BasicBlock(cin if j == 0 else planes, planes, 2 if i and not j else 1,
                                 convention) for j in range(3)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes
        self.bn2 = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = self.nonlinear1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.shape[3]).flatten(1)
        return self.linear(self.bn2(out))


def oracle_model(convention="official", seed=0):
    """A ResNet-20 with every parameter and statistic randomised (not the init values)."""
    m = ab.models.resnet20_1w1a(convention=convention, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sd = m.state_dict()
    for k, v in sd.items():
        if k.endswith("alpha_a"):
            sd[k] = np.array(rng.uniform(0.5, 1.5))
        elif k.endswith("beta_a"):
            sd[k] = np.array(rng.uniform(-0.2, 0.2))
        elif k.endswith(("running_var", "bn1.weight", "bn2.weight", "pos_scale")):
            sd[k] = rng.uniform(0.5, 1.5, size=v.shape)
        elif k.endswith(("running_mean", "bias", "neg_scale")):
            sd[k] = rng.normal(0.0, 0.2, size=v.shape)
    m.load_state_dict(sd)
    return m.eval()


def torch_twin(model, dtype=torch.float64, convention="official"):
    net = ResNet20(convention).to(torch.float64)  # before loading: no float32 round trip
    sd = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    net.load_state_dict(sd, strict=True)  # the release's names, all of them
    return net.to(dtype).eval()


def run_with_hooks(net, x, names):
    """The docs/testing.md recipe: capture each named module's input and output."""
    outputs, inputs = {}, {}

    def hook(name):
        def fn(module, args, out):
            inputs[name], outputs[name] = args[0].detach(), out.detach()
        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in net.named_modules()
               if name in names]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return outputs, inputs


ALL = None


def _names(net):
    return [n for n, _ in net.named_modules() if n]


@pytest.fixture(scope="module")
def setup():
    model = oracle_model()
    x = np.random.default_rng(5).normal(size=(2, 3, 32, 32))
    return model, x


def test_a_correct_float64_twin_matches_every_layer(setup):
    model, x = setup
    net = torch_twin(model)
    names = _names(net)
    outputs, _ = run_with_hooks(net, torch.tensor(x), names)
    report = abt.assert_layers_match(model, x, outputs)
    assert report.first_divergence is None
    # forward order: the order in which layers finish, as torch's forward hooks fire
    assert [r.name for r in report.rows] == list(outputs) and len(outputs) == len(names)
    assert report.rows[0].name == "conv1" and report.rows[-1].name == "linear"
    assert {r.status for r in report.rows} <= {"ok", "flips forgiven"}
    assert "no layer diverges" in str(report)


def test_a_broken_layer_is_named_first(setup):
    model, x = setup
    net = torch_twin(model)
    broken = "layer2.1.conv2"
    net.get_submodule(broken).pad_value = -1.0  # pads with a level instead of zero
    outputs, _ = run_with_hooks(net, torch.tensor(x), _names(net))
    report = abt.compare_layers(model, x, outputs)
    assert report.first_divergence == broken
    statuses = {r.name: r.status for r in report.rows}
    assert statuses["layer2.1.conv1"] in ("ok", "flips forgiven")
    with pytest.raises(AssertionError, match=f"first diverging layer: {broken}"):
        abt.assert_layers_match(model, x, outputs)
    msg = str(report)
    assert "border output, reads zero padding" in msg  # the conv's own explanation


def test_a_broken_bn_is_named_with_a_subset_of_names(setup):
    model, x = setup
    net = torch_twin(model)
    net.layer3[0].bn2.eps = 1e-2  # a wrong epsilon
    subset = ["layer1.0.conv1", "layer3.0.bn1", "layer3.0.bn2", "layer3.0.nonlinear2",
              "linear"]
    outputs, _ = run_with_hooks(net, torch.tensor(x), subset)
    report = abt.compare_layers(model, x, outputs)
    assert [r.name for r in report.rows] == subset
    assert report.first_divergence == "layer3.0.bn2"


def test_the_docs_recipe_loads_the_oracle_from_the_torch_state_dict(setup):
    model, x = setup
    net = torch_twin(model)
    oracle = ab.models.resnet20_1w1a(convention="official")
    oracle.load_state_dict({k: v.detach().cpu().numpy() for k, v in net.state_dict().items()})
    oracle.eval()
    outputs, inputs = run_with_hooks(net, torch.tensor(x), _names(net))
    report = abt.assert_layers_match(oracle, x, outputs, inputs=inputs)
    assert "layer1.0.conv1.binary_a" in [r.name for r in report.rows]


def test_float32_twin_with_inputs_is_judged_layer_by_layer(setup):
    model, x = setup
    net = torch_twin(model, torch.float32)
    names = _names(net)
    outputs, inputs = run_with_hooks(net, torch.tensor(x, dtype=torch.float32), names)
    report = abt.assert_layers_match(model, x, outputs, inputs=inputs)
    assert report.first_divergence is None
    # and a bug is still caught on the user's own inputs
    outputs["layer3.2.bn1"] = outputs["layer3.2.bn1"] * 1.01
    with pytest.raises(AssertionError, match="first diverging layer: layer3.2.bn1"):
        abt.assert_layers_match(model, x, outputs, inputs=inputs)


def test_bad_names_and_types_are_refused(setup):
    model, x = setup
    with pytest.raises(ValueError, match="unknown layer names"):
        abt.compare_layers(model, x, {"layer9.conv1": np.zeros(1)})
    with pytest.raises(TypeError, match="mapping"):
        abt.compare_layers(model, x, [np.zeros(1)])
    with pytest.raises(TypeError, match="adabin_np model"):
        abt.compare_layers(object(), x, {})
