"""adabin_np.summary (issue 13, point 4): every count is an exact integer computed by hand here,
output shapes agree with a real forward, totals agree with the state_dict."""

import numpy as np
import pytest

import adabin_np as ab
from adabin_np import models
from adabin_np.layers import (AdaBinConv2d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d,
                              Linear, Maxout, Sequential)
from adabin_np.summary import ModelSummary, summary


def _small():
    rng = np.random.default_rng(0)
    return Sequential(Conv2d(1, 4, 3, padding=1, rng=rng), BatchNorm2d(4), Maxout(4),
                      AdaBinConv2d(4, 6, 3, stride=2, padding=1, rng=rng), BatchNorm2d(6),
                      AdaBinConv2d(6, 6, (1, 3), groups=2, rng=rng),
                      GlobalAvgPool2d(), Linear(6, 3, rng=rng))


def test_small_model_by_hand():
    s = summary(_small(), input_shape=(1, 5, 5), print_fn=None)
    rows = {la.name: la for la in s.layers}
    assert [la.name for la in s.layers] == ["0", "1", "2", "3", "4", "5", "6", "7"]
    # 0: real 3x3 conv 1 -> 4, pad 1: 36 weights; 5*5 outputs x 4 channels x 9 taps
    assert rows["0"].output_shape == (4, 5, 5)
    assert (rows["0"].float_params, rows["0"].float_macs, rows["0"].binary_macs) == (36, 900, 0)
    # 1: BatchNorm: weight, bias, running mean, running var (4 each)
    assert rows["1"].float_params == 16 and rows["1"].float_macs == 0
    # 2: Maxout: two slopes per channel
    assert rows["2"].float_params == 8
    # 3: AdaBin 3x3/2 conv 4 -> 6, pad 1 on 5x5: out 3x3; 6*4*9 = 216 sign bits;
    #    alpha_a, beta_a + (alpha_w, beta_w) x 6 channels = 14 floats; 3*3*6*4*9 = 1944 MACs
    r = rows["3"]
    assert r.output_shape == (6, 3, 3) and r.input_bits == 1
    assert (r.binary_weights, r.float_params, r.binary_macs, r.float_macs) == (216, 14, 1944, 0)
    assert r.memory_bits == 216 + 32 * 14 and r.float32_bits == 32 * (216 + 14)
    # 4: BatchNorm(6)
    assert rows["4"].float_params == 24
    # 5: AdaBin 1x3 conv, groups 2 (3 in-channels per group): out 3x1; 6*3*3 = 54 sign bits;
    #    2 + 12 floats; 3*1*6*3*3 = 162 MACs
    r = rows["5"]
    assert r.output_shape == (6, 3, 1)
    assert (r.binary_weights, r.float_params, r.binary_macs) == (54, 14, 162)
    # 6: global average pool; 7: linear 6 -> 3 with bias: 21 params, 18 MACs
    assert rows["6"].output_shape == (6,) and rows["6"].float_params == 0
    assert rows["7"].output_shape == (3,)
    assert (rows["7"].float_params, rows["7"].float_macs) == (21, 18)
    # totals
    assert s.binary_weights == 216 + 54
    assert s.float_params == 36 + 16 + 8 + 14 + 24 + 14 + 21
    assert s.binary_macs == 1944 + 162 and s.float_macs == 900 + 18
    assert s.memory_bits == 270 + 32 * 133 and s.float32_bits == 32 * (270 + 133)
    assert s.compression_ratio == (32 * 403) / (270 + 32 * 133)
    assert s.binary_mac_fraction == 2106 / (2106 + 918)
    for v in (s.binary_weights, s.float_params, s.memory_bits, s.binary_macs, s.float_macs):
        assert type(v) is int


def test_resnet20_by_hand():
    s = summary(models.resnet20_1w1a(), print_fn=None)
    assert s.input_shape == (3, 32, 32)
    # 18 binary 3x3 convs: stage 1 six of 16x16x9 at 32x32; stage 2 one 16->32 and five
    # 32->32 at 16x16; stage 3 one 32->64 and five 64->64 at 8x8
    b1, b2, b3 = 6 * 16 * 16 * 9, 32 * 16 * 9 + 5 * 32 * 32 * 9, 64 * 32 * 9 + 5 * 64 * 64 * 9
    assert s.binary_weights == b1 + b2 + b3 == 267264
    assert s.binary_macs == b1 * 32 * 32 + b2 * 16 * 16 + b3 * 8 * 8 == 40108032
    # float MACs: the 3x3 stem 3 -> 16 at 32x32 and the 64 -> 10 classifier
    assert s.float_macs == 16 * 3 * 9 * 32 * 32 + 64 * 10
    assert "267264" in s.table() and "40108032" in s.table()


def test_counts_agree_with_the_state_dict():
    for m in (models.digits_cnn(), models.resnet20_1w1a()):
        s = summary(m, print_fn=None)
        stored = sum(v.size for k, v in m.state_dict().items()
                     if not k.endswith("num_batches_tracked"))
        # plus alpha_w, beta_w per output channel of every binary conv (derived, deployed)
        derived = sum(2 * layer.params["weight"].shape[0] for _, layer in m.binary_layers())
        assert s.binary_weights + s.float_params == stored + derived


@pytest.mark.parametrize("build, shape", [(models.digits_cnn, (1, 8, 8)),
                                          (models.resnet20_1w1a, (3, 12, 20))])
def test_output_shapes_match_a_real_forward(build, shape):
    m = build().eval()
    s = summary(m, input_shape=shape, print_fn=None)
    rows = {la.name: la for la in s.layers}
    x = np.random.default_rng(1).normal(size=(1, *shape))
    logits = m(x, record=True)
    assert s.layers[-1].output_shape == logits.shape[1:]
    for name, layer in m.binary_layers():
        y = layer(layer.recorded_input)
        assert rows[name].output_shape == y.shape[1:], name


def test_resnet18_unused_head_is_listed_not_counted():
    s = summary(models.resnet18_1w1a(), print_fn=None)
    unused = [la.name for la in s.layers if not la.used]
    assert unused == ["nonlinear2", "bn3"]
    assert s.layers[-1].name == "bn3" and "unused" in s.table()
    assert s.float_macs == 64 * 3 * 49 * 112 * 112 + sum(
        o * i * 112 // (2 ** k) * 112 // (2 ** k)
        for k, (i, o) in enumerate([(64, 128), (128, 256), (256, 512)], start=2)) + 512 * 1000


def test_printing_and_mode():
    m = models.digits_cnn().train()
    printed = []
    s = summary(m, print_fn=printed.append)
    assert isinstance(s, ModelSummary) and printed == [str(s)]
    assert m.training  # mode restored
    assert "forward" not in m.conv1.__dict__  # hooks removed
    assert "DigitsCNN summary, input (1, 8, 8)" in printed[0]
    assert ab.summary is summary


def test_bad_input():
    with pytest.raises(TypeError, match="Module"):
        summary(object())
    with pytest.raises(ValueError, match="input_shape"):
        summary(models.digits_cnn(), input_shape=(1, 0, 8), print_fn=None)
    with pytest.raises(ValueError, match="channels"):
        summary(models.digits_cnn(), input_shape=(3, 8, 8), print_fn=None)
    with pytest.raises(ValueError, match="input_shape is required"):
        summary(Sequential(Flatten()), print_fn=None)
