"""Bit-packed XNOR/popcount path (adabin_np.packed) against the float path and the spec.

One hypothesis parameter grid (shapes, stride, padding, dilation, groups, convention, scalar or
per-channel activation sets, alpha sign, constant filters) drives every comparison, in the
Larq Compute Engine manner: the packed kernel against

* ``adabin_np.adabin_conv2d`` (the float path; continuous data, so no exact ties),
* ``reference.spec.packed_conv_formula`` (the naive SPEC section 4 formula, ties included),
* ``reference.spec.adabin_conv2d`` (the naive float spec),

and the raw integer sums of the same kernel against a naive integer convolution of the signs.
Exact ties (v == 0, u == 0) get their own test: packed == spec packed formula, and in the
official convention the documented difference from the float path.
"""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adabin_np as ab
from adabin_np import kernels_packed as KP
from adabin_np import packed as P
from reference import spec

RTOL = 1e-9


# ----------------------------------------------------------------------------------------------
# the shared parameter grid
# ----------------------------------------------------------------------------------------------


@st.composite
def grid_case(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.sampled_from([1, 2, 5, 8, 63, 64, 65, 70]))
    if groups > 1:
        cg = min(cg, 8)
    og = draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    lo_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    lo_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(lo_h, lo_h + 4)), draw(st.integers(lo_w, lo_w + 4))
    return dict(n=draw(st.integers(1, 2)), c=cg * groups, cg=cg, o=og * groups, h=h, w=w,
                kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation, groups=groups,
                params=draw(st.sampled_from(["scalar", "per_channel", "few_levels",
                                             "alpha_only"])),
                negative=draw(st.sampled_from(["no", "all", "mixed"])),
                constant=draw(st.booleans()),
                convention=draw(st.sampled_from(["paper", "official"])),
                seed=draw(st.integers(0, 2**31 - 1)))


def build(case, *, ties=False):
    """Arrays for a grid case. ``ties=True``: dyadic data with exact v == 0 and u == 0."""
    rng = np.random.default_rng(case["seed"])
    c = case["c"]
    kind = case["params"]
    if kind == "scalar":
        alpha, beta = np.array(rng.uniform(0.25, 2.5)), np.array(rng.integers(-4, 5) / 8)
    elif kind == "per_channel":
        alpha, beta = rng.uniform(0.25, 2.5, size=c), rng.integers(-4, 5, size=c) / 8
    elif kind == "few_levels":  # repeated (c_a, d_a) pairs: multi-channel segments
        alpha = rng.choice([0.5, 1.0, 3.0], size=c)
        beta = rng.choice([-0.25, 0.25], size=c)
    else:  # per-channel alpha, scalar beta
        alpha, beta = rng.uniform(0.25, 2.5, size=c), np.array(rng.integers(-4, 5) / 8)
    if case["negative"] == "all":
        alpha = -alpha
    elif case["negative"] == "mixed" and alpha.ndim:
        alpha = alpha * rng.choice([-1.0, 1.0], size=c)
    shape_x = (case["n"], c, case["h"], case["w"])
    shape_w = (case["o"], case["cg"], case["kh"], case["kw"])
    if ties:
        x = rng.integers(-8, 9, size=shape_x) / 8.0
        w = rng.integers(-4, 5, size=shape_w) / 4.0
    else:
        x = rng.standard_normal(shape_x)
        w = rng.standard_normal(shape_w)
    if case["constant"]:
        w[0] = 0.375  # a constant filter: alpha_w = 0
    return x, w, alpha, beta


def conv_kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


def scale_of(case, w, alpha, beta):
    """Magnitude of the terms summed into one output (for an absolute tolerance)."""
    a = np.abs(np.asarray(alpha)).max()
    b = np.abs(np.asarray(beta)).max()
    level_a = a * (1 + b) + b
    level_w = 2 * np.abs(w).max() + 1e-300
    return level_a * level_w * case["cg"] * case["kh"] * case["kw"]


def close(actual, expected, scale, what):
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


# ----------------------------------------------------------------------------------------------
# grid comparisons
# ----------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(grid_case())
def test_packed_matches_float_path_and_spec(case):
    x, w, alpha, beta = build(case)
    kw = conv_kwargs(case)
    conv = case["convention"]
    y, info = P.packed_adabin_conv2d(x, w, alpha, beta, convention=conv, return_info=True,
                                     **kw)
    assert y.dtype == np.float64 and y.flags.c_contiguous
    assert info.activation_ties == 0 and info.flips == 0
    s = scale_of(case, w, alpha, beta)
    close(y, ab.adabin_conv2d(x, w, alpha, beta, convention=conv, **kw), s, "float path")
    close(y, spec.packed_conv_formula(x, w, alpha, beta, convention=conv, **kw), s,
          "spec packed formula")
    close(y, spec.adabin_conv2d(x, w, alpha, beta, convention=conv, **kw), s, "spec float")


def naive_counts(x, w, alpha, beta, kw):
    """Integer sums from sign arrays and a float64 convolution of +-1/1 (exact integers)."""
    s_a = np.where(spec.activation_v(x, alpha, beta) >= 0, 1.0, -1.0)
    s_w = np.where(spec.weight_u(w) >= 0, 1.0, -1.0)
    groups = kw["groups"]
    ones_w = np.ones((groups,) + w.shape[1:])
    sum_aw = spec.conv2d(s_a, s_w, **kw)
    sum_a = spec.conv2d(s_a, ones_w, **kw)
    sum_w = spec.conv2d(np.ones((1,) + x.shape[1:]), s_w, **kw)[0]
    n_valid = spec.conv2d(np.ones((1,) + x.shape[1:]), ones_w, **kw)[0, 0]
    return [np.rint(a).astype(np.int64) for a in (sum_aw, sum_a, sum_w, n_valid)]


@settings(max_examples=40, deadline=None)
@given(grid_case(), st.booleans())
def test_raw_popcount_sums_are_exact(case, ties):
    x, w, alpha, beta = build(case, ties=ties)
    kw = conv_kwargs(case)
    counts = P.packed_conv_counts(x, w, alpha, beta, **kw)
    for name, got, want in zip(P.PackedCounts._fields, counts, naive_counts(x, w, alpha, beta,
                                                                            kw)):
        assert got.dtype == np.int64, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(grid_case())
def test_exact_ties_follow_the_packed_rule(case):
    """Dyadic data: v == 0 and u == 0 happen. Packed == spec packed formula always; == float
    path in the paper convention; in the official convention the float path differs exactly
    where a tie touches an output, and the info counts the ties."""
    x, w, alpha, beta = build(case, ties=True)
    kw = conv_kwargs(case)
    conv = case["convention"]
    s = scale_of(case, w, alpha, beta)
    y, info = P.packed_adabin_conv2d(x, w, alpha, beta, convention=conv, return_info=True,
                                     **kw)
    close(y, spec.packed_conv_formula(x, w, alpha, beta, convention=conv, **kw), s,
          "spec packed formula")
    v = spec.activation_v(x, alpha, beta)
    u = spec.weight_u(w)
    alpha_w, _ = spec.weight_binary_set(w)
    weight_ties = int(np.sum((u == 0) & (alpha_w[:, None, None, None] != 0)))
    assert info.activation_ties == int(np.sum(v == 0)) == P.threshold_ties(x, alpha, beta)
    assert info.weight_ties == weight_ties == P.pack_weights(w).ties
    y_float = ab.adabin_conv2d(x, w, alpha, beta, convention=conv, **kw)
    if conv == "paper":
        assert info.flips == 0
        close(y, y_float, s, "paper float path with ties")
        return
    assert info.flips == info.activation_ties + info.weight_ties
    # outputs that see no tie agree with the official float path
    tie_a = (v == 0).astype(np.float64)
    tie_w = ((u == 0) & (alpha_w[:, None, None, None] != 0)).astype(np.float64)
    touched = (spec.conv2d(tie_a, np.ones_like(w), **kw)
               + spec.conv2d(np.ones_like(x), tie_w, **kw)) > 0
    np.testing.assert_allclose(y[~touched], y_float[~touched], rtol=RTOL, atol=RTOL * s)
    # and the official float path with ties nudged to s = +1 is the packed result
    if np.asarray(alpha).ndim == 0 and not tie_w.any():
        nudged = np.where(v == 0, x + np.sign(alpha) * 1e-9, x)  # v = +1e-9/|alpha| > 0
        close(y, ab.adabin_conv2d(nudged, w, alpha, beta, convention=conv, **kw), s, "nudged")


def test_official_tie_difference_worked_example():
    # two input channels, one 1x1 filter w = [+1, -1]: beta_w = 0, alpha_w = 1, s_w = +1, -1
    x = np.array([[[[0.5]], [[0.5]]]])          # beta = 0.5: v == 0 for both channels
    w = np.array([[[[1.0]], [[-1.0]]]])
    y, info = P.packed_adabin_conv2d(x, w, 2.0, 0.5, convention="official", return_info=True)
    # official levels alpha*(s + beta): packed s = +1 -> 2*(1.5) = 3 for both channels
    assert y[0, 0, 0, 0] == pytest.approx(3.0 * 1 + 3.0 * -1)
    assert info == P.PackedInfo(activation_ties=2, weight_ties=0, flips=2)
    # float path: s = 0 -> level alpha*beta = 1 for both channels, 1 - 1 = 0 as well here;
    # the difference shows once only one channel ties
    y_float = ab.adabin_conv2d(x, w, 2.0, 0.5, convention="official")
    assert y_float[0, 0, 0, 0] == pytest.approx(0.0)
    x2 = np.array([[[[0.5]], [[2.0]]]])         # only channel 0 ties
    y2 = P.packed_adabin_conv2d(x2, w, 2.0, 0.5, convention="official")
    y2f = ab.adabin_conv2d(x2, w, 2.0, 0.5, convention="official")
    assert y2[0, 0, 0, 0] == pytest.approx(3.0 - 3.0)   # packed: tie -> level 3
    assert y2f[0, 0, 0, 0] == pytest.approx(1.0 - 3.0)  # float: tie -> level alpha*beta = 1


# ----------------------------------------------------------------------------------------------
# fixed cases: ResNet-like shapes, tails, depthwise, all-padding outputs, linear
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,o,h,k,stride,pad,groups", [
    (64, 64, 9, 3, 1, 1, 1),
    (130, 70, 5, 3, 2, 1, 1),      # two full words + tail, two output blocks
    (256, 132, 4, 3, 1, 1, 1),     # o-blocks of 128 + remainder
    (12, 12, 8, 7, 1, 3, 12),      # depthwise 7x7
    (6, 4, 3, 1, 1, 2, 2),         # 1x1 with padding: border outputs see only padding
])
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_fixed_shapes(c, o, h, k, stride, pad, groups, convention):
    rng = np.random.default_rng(c * 7 + o)
    x = rng.standard_normal((2, c, h, h))
    w = rng.standard_normal((o, c // groups, k, k))
    kw = dict(stride=stride, padding=pad, groups=groups, convention=convention)
    for alpha, beta in ((0.7, -0.1), (-1.3, 0.2), (rng.uniform(0.5, 3, c), rng.normal(0, .2, c))):
        y = P.packed_adabin_conv2d(x, w, alpha, beta, **kw)
        y_float = ab.adabin_conv2d(x, w, alpha, beta, **kw)
        np.testing.assert_allclose(y, y_float, rtol=RTOL, atol=RTOL * c * k * k * 30)
    if pad and k == 1:
        assert np.all(y[:, :, 0, :] == 0.0)  # taps only in the padding: N = 0, y = 0


def test_prepacked_weights_reused_and_layouts_cached():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 20, 6, 6))
    w = rng.standard_normal((10, 10, 3, 3))
    pw = P.pack_weights(w)
    assert pw.words.shape == (10, 3, 3, 1) and pw.words.dtype == np.uint64
    for alpha, beta in ((1.0, 0.0), (np.linspace(0.5, 2, 20), 0.1), (1.0, 0.0)):
        kw = dict(padding=1, groups=2, convention="official")
        y1 = P.packed_adabin_conv2d_prepacked(x, pw, alpha, beta, **kw)
        y2 = P.packed_adabin_conv2d(x, w, alpha, beta, **kw)
        np.testing.assert_array_equal(y1, y2)
    assert len(pw._kernel_cache) == 2  # natural and segmented layout, each built once
    # words = pack_bits of the weight signs over input channels, (O, kh, kw, words)
    s_w = np.where(spec.weight_u(w) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(pw.words, P.pack_bits(s_w.transpose(0, 2, 3, 1)))


def test_any_memory_layout_gives_identical_results():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 6, 5))
    w = rng.standard_normal((3, 7, 3, 3))
    y = P.packed_adabin_conv2d(x, w, 0.9, 0.1, padding=1)
    np.testing.assert_array_equal(P.packed_adabin_conv2d(np.asfortranarray(x), w, 0.9, 0.1,
                                                         padding=1), y)
    xr = x[:, ::-1][:, ::-1]  # negative strides, same values
    np.testing.assert_array_equal(P.packed_adabin_conv2d(xr, w[..., ::-1][..., ::-1], 0.9, 0.1,
                                                         padding=1), y)
    # float32 in -> float32 out: the float64 result of the same (exactly widened) input,
    # rounded once
    y32 = P.packed_adabin_conv2d(x.astype(np.float32), w, 0.9, 0.1, padding=1)
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(
        y32, P.packed_adabin_conv2d(x.astype(np.float32).astype(np.float64), w, 0.9, 0.1,
                                    padding=1).astype(np.float32))
    for dt in (np.float16, np.int32, np.float64):
        assert P.packed_adabin_conv2d(x.astype(dt), w, 0.9, 0.1, padding=1).dtype == np.float64


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_linear(convention):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 130))
    w = rng.standard_normal((9, 130))
    per_channel = (rng.uniform(0.5, 2, 130), rng.normal(0, .1, 130))
    for alpha, beta in ((1.1, 0.2), (-0.8, 0.0), per_channel):
        y = P.packed_linear(x, w, alpha, beta, convention=convention)
        y_float = P.adabin_linear(x, w, alpha, beta, convention=convention)
        y_spec = spec.binarize_activations(x, alpha, beta, convention=convention) @ \
            spec.binarize_weights(w, convention=convention).T
        assert y.shape == (4, 9)
        np.testing.assert_allclose(y, y_float, rtol=RTOL, atol=RTOL * 1e3)
        np.testing.assert_allclose(y_float, y_spec, rtol=RTOL, atol=RTOL * 1e3)
        np.testing.assert_array_equal(
            P.packed_linear(x, P.pack_weights(w), alpha, beta, convention=convention), y)
    with pytest.raises(ValueError, match="features"):
        P.packed_linear(x[:, :5], w, 1.0, 0.0)


# ----------------------------------------------------------------------------------------------
# pack_bits / unpack_bits
# ----------------------------------------------------------------------------------------------


def test_pack_bits_layout_lsb_first_and_tail():
    x = np.array([1.0, -1.0, 0.0, -0.0, -2.0] + [-1.0] * 60 + [3.0])  # 66 values
    p = P.pack_bits(x)
    assert p.dtype == np.uint64 and p.shape == (2,)
    assert int(p[0]) == 0b1101        # bits 0, 2, 3 (0.0 and -0.0 are >= 0)
    assert int(p[1]) == 0b10          # value 65 -> word 1, bit 1; bits 2..63 are tail (0)
    np.testing.assert_array_equal(P.unpack_bits(p, 66), np.where(x >= 0, 1.0, -1.0))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(0, 140), st.integers(-2, 1), st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip(lead, n, axis, seed):
    rng = np.random.default_rng(seed)
    x = np.moveaxis(rng.standard_normal((lead, 2, n)), -1, axis)
    p = P.pack_bits(x, axis=axis)
    assert p.shape[axis] == -(-n // 64)
    np.testing.assert_array_equal(P.unpack_bits(p, n, axis=axis), np.where(x >= 0, 1.0, -1.0))
    if n:
        # popcount of the words = number of non-negative values
        pc = np.vectorize(lambda v: bin(int(v)).count("1"))(p).sum()
        assert pc == np.sum(x >= 0)


def test_pack_unpack_validation():
    with pytest.raises(TypeError):
        P.pack_bits(np.ones(3, dtype=complex))
    with pytest.raises(TypeError):
        P.pack_bits("abc")
    with pytest.raises(ValueError, match="at least 1"):
        P.pack_bits(1.0)
    with pytest.raises(ValueError, match="NaN"):
        P.pack_bits(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="out of bounds"):
        P.pack_bits(np.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match="axis"):
        P.pack_bits(np.ones((2, 3)), axis=1.0)
    p = P.pack_bits(np.ones(70))
    with pytest.raises(TypeError, match="uint64"):
        P.unpack_bits(p.astype(np.int64), 70)
    with pytest.raises(TypeError, match="uint64"):
        P.unpack_bits(list(p), 70)
    with pytest.raises(ValueError, match="words"):
        P.unpack_bits(p, 200)
    with pytest.raises(ValueError, match="tail"):
        P.unpack_bits(p, 65)   # bits 65..69 set: n is wrong
    with pytest.raises(TypeError):
        P.unpack_bits(p, 70.0)


# ----------------------------------------------------------------------------------------------
# validation and devices
# ----------------------------------------------------------------------------------------------


def test_validation_errors():
    x = np.ones((1, 4, 5, 5))
    w = np.ones((2, 4, 3, 3))
    conv = P.packed_adabin_conv2d
    with pytest.raises(ValueError, match="x contains NaN"):
        conv(np.where(np.arange(100).reshape(x.shape) == 7, np.inf, x), w, 1.0, 0.0)
    with pytest.raises(ValueError, match="w contains NaN"):
        conv(x, np.full_like(w, np.nan), 1.0, 0.0)
    with pytest.raises(ValueError, match="alpha must be non-zero"):
        conv(x, w, 0.0, 0.0)
    with pytest.raises(ValueError, match="channel mismatch"):
        conv(x, np.ones((2, 3, 3, 3)), 1.0, 0.0)
    with pytest.raises(ValueError, match="alpha has 3 entries"):
        conv(x, w, np.ones(3), 0.0)
    with pytest.raises(TypeError, match="x must be real"):
        conv(x.astype(complex), w, 1.0, 0.0)
    with pytest.raises(ValueError, match="x must have 4"):
        conv(x[0], w, 1.0, 0.0)
    with pytest.raises(ValueError, match="stride"):
        conv(x, w, 1.0, 0.0, stride=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv(x, np.ones((2, 4, 7, 7)), 1.0, 0.0)
    with pytest.raises(ValueError, match="convention"):
        conv(x, w, 1.0, 0.0, convention="torch")
    with pytest.raises(ValueError, match="device"):
        conv(x, w, 1.0, 0.0, device="tpu")
    with pytest.raises(TypeError, match="device"):
        conv(x, w, 1.0, 0.0, device=0)
    with pytest.raises(TypeError, match="PackedWeights"):
        P.packed_adabin_conv2d_prepacked(x, w, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        conv(np.ones((0, 4, 5, 5)), w, 1.0, 0.0)


def test_cuda_device_import_failure_is_runtime_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "adabin_np.cuda", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match="cuda"):
        P.packed_adabin_conv2d(np.ones((1, 2, 3, 3)), np.ones((1, 2, 1, 1)), 1.0, 0.0,
                               device="cuda")


def test_cuda_device_matches_cpu_when_available():
    from adabin_np import cuda
    if not cuda.is_available() or cuda.is_simulator():
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 70, 6, 6))
    w = rng.standard_normal((8, 70, 3, 3))
    for alpha, beta in ((1.0, 0.1), (rng.uniform(0.5, 2, 70), 0.0)):
        np.testing.assert_allclose(
            P.packed_adabin_conv2d(x, w, alpha, beta, padding=1, device="cuda"),
            P.packed_adabin_conv2d(x, w, alpha, beta, padding=1), rtol=1e-12, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# kernel-level checks
# ----------------------------------------------------------------------------------------------


def test_popcount_intrinsic():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=200, dtype=np.int64).view(np.uint64) * np.uint64(3)
    for v in list(words) + [np.uint64(0), np.uint64(2**64 - 1)]:
        assert KP.popcount64(v) == bin(int(v)).count("1")
