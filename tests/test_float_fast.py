"""The fast float path (issue 15) against independent computations.

* forward through exact integer counts (:mod:`adabin_np.kernels_float`): compared with the
  exact (``math.fsum``) sum of the elementwise path's own tap products, with the documented
  bound ``T u sum|x_b w_b|`` (``T = 9 * segments``, ``u = 2**-53``) -- one wrong count would
  miss by a whole level product, far above the bound -- and with ``reference/`` and the
  golden vectors at the bound ``(K + T) u sum|x_b w_b|``;
* edge cases: exact ties in both conventions, constant filters, alpha < 0, per-channel sets
  (segments that must split at group boundaries), zero levels giving exact 0, forced float64
  GEMM and forced chunking (bit-identical), overflow;
* the blocked fixed-order GEMM bit-for-bit against a plain sequential accumulation;
* the backward kernels against ``reference/`` for the real-valued conv (layers' backward).
"""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adabin_np as ab
from adabin_np import conv as conv_mod
from adabin_np import kernels_float as kf
from adabin_np.layers import Conv2d
from reference import spec

U = 2.0 ** -53
GOLDEN = sorted((Path(__file__).resolve().parents[1] / "reference" / "golden").glob("*.npz"))


# ----------------------------------------------------------------------------------------------
# helpers: the elementwise path's tap products, summed exactly
# ----------------------------------------------------------------------------------------------


def tap_products(xb, wb, stride, padding, dilation, groups):
    """(N, O, OH, OW, K) products x_b * w_b over the valid taps (0 at padded ones)."""
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    n, c, h, w = xb.shape
    o, cg, kh, kw = wb.shape
    oh_ = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow_ = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + w] = xb
    og = o // groups
    out = np.zeros((n, o, oh_, ow_, cg * kh * kw))
    for oo in range(o):
        g = oo // og
        for ki in range(kh):
            for kj in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, ki * dh:ki * dh + sh * (oh_ - 1) + 1:sh,
                           kj * dw:kj * dw + sw * (ow_ - 1) + 1:sw]       # (n, cg, oh, ow)
                prod = patch * wb[oo, :, ki, kj][None, :, None, None]
                cols = np.arange(cg) * kh * kw + ki * kw + kj
                out[:, oo, :, :, cols] = prod.transpose(1, 0, 2, 3)
    return out


def exact_sum(products):
    return np.apply_along_axis(math.fsum, -1, products)


def n_segments(alpha, beta, c, groups):
    a = np.broadcast_to(alpha, (c,))
    b = np.broadcast_to(beta, (c,))
    cg = c // groups
    segs = 0
    for ch in range(c):
        if ch % cg == 0 or a[ch] != a[ch - 1] or b[ch] != b[ch - 1]:
            segs += 1
    return segs


def check_forward(x, w, alpha, beta, convention, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1):
    """Fast forward vs the exact sum of the elementwise products, and vs reference/."""
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = ab.adabin_conv2d(x, w, alpha, beta, convention=convention, **geo)
    xb = ab.binarize_activations(x, alpha, beta, convention=convention)
    wb = ab.binarize_weights(w, convention=convention)
    prods = tap_products(xb, wb, stride, padding, dilation, groups)
    mag = np.abs(prods).sum(axis=-1)
    t = 9 * n_segments(alpha, beta, x.shape[1], groups)
    exact = exact_sum(prods)
    err = np.abs(y - exact)
    assert np.all(err <= t * U * mag), (
        f"{np.sum(err > t * U * mag)} outputs beyond T u sum|xb wb| (T = {t}); max excess "
        f"{np.max(err - t * U * mag):.3g}")
    # zero products everywhere -> exactly zero
    assert np.all(y[mag == 0] == 0.0)
    # reference/ computes its levels independently (its own mean/std and level formulas), so
    # its products may differ by a few ulps of the levels' parts (|alpha| + |beta| + ...),
    # which matters where a level nearly cancels (beta_w - alpha_w ~ 0): add that slack.
    k = prods.shape[-1]
    a_c = np.broadcast_to(np.abs(alpha), (x.shape[1],))
    b_c = np.broadcast_to(np.abs(beta), (x.shape[1],))
    a_w, b_w = ab.weight_binary_set(w)
    la = np.broadcast_to((a_c + b_c + a_c * b_c)[None, :, None, None], x.shape)
    lw = np.broadcast_to((np.abs(a_w) + np.abs(b_w))[:, None, None, None], w.shape)
    slack = 8 * U * tap_products(la, lw, stride, padding, dilation, groups).sum(axis=-1)
    ref = spec.adabin_conv2d(x, w, alpha, beta, convention=convention, **geo)
    err_ref = np.abs(y - ref)
    tol = (k + t) * U * mag + slack
    assert np.all(err_ref <= tol), (
        f"vs reference: {np.sum(err_ref > tol)} outputs beyond (K + T) u sum|xb wb| + slack")
    return y


# ----------------------------------------------------------------------------------------------
# forward grid
# ----------------------------------------------------------------------------------------------


@st.composite
def cases(draw):
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 5))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    lo_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    lo_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(lo_h, lo_h + 5)), draw(st.integers(lo_w, lo_w + 5))
    return dict(n=draw(st.integers(1, 2)), c=cg * groups, cg=cg, o=og * groups, h=h, w=w,
                kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation, groups=groups,
                sets=draw(st.sampled_from(["scalar", "per_channel", "repeated", "mixed"])),
                negative=draw(st.booleans()), ties=draw(st.booleans()),
                constant=draw(st.booleans()), zero_level=draw(st.booleans()),
                convention=draw(st.sampled_from(["paper", "official"])),
                seed=draw(st.integers(0, 2**31 - 1)))


def build(case):
    rng = np.random.default_rng(case["seed"])
    c = case["c"]
    if case["sets"] == "scalar":
        alpha, beta = np.array(rng.uniform(0.25, 2.0)), np.array(rng.integers(-4, 5) / 8)
    elif case["sets"] == "per_channel":
        alpha, beta = rng.uniform(0.25, 2.0, size=c), rng.integers(-4, 5, size=c) / 8
    elif case["sets"] == "repeated":  # runs of equal values, across group boundaries too
        alpha = np.repeat(rng.choice([0.5, 1.25], size=c)[:1], c)
        alpha[c // 2:] = 0.75
        beta = np.full(c, 0.125)
    else:
        alpha, beta = np.array(0.625), rng.integers(-2, 3, size=c) / 4
    if case["zero_level"]:  # paper: b1 = beta - alpha = 0; official: alpha*(beta - 1) = 0
        if case["convention"] == "paper":
            beta = np.array(alpha, dtype=float).copy()
        else:
            beta = np.ones_like(np.asarray(beta, dtype=float))
    if case["negative"]:
        alpha = -np.asarray(alpha)
    shape_x = (case["n"], c, case["h"], case["w"])
    shape_w = (case["o"], case["cg"], case["kh"], case["kw"])
    if case["ties"]:  # dyadic data so that x == beta and W == mean happen exactly
        x = rng.integers(-8, 9, size=shape_x) / 8.0
        w = rng.integers(-4, 5, size=shape_w) / 4.0
    else:
        x = rng.normal(size=shape_x)
        w = rng.normal(size=shape_w)
    if case["constant"]:
        w[0] = -1.265
    geo = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
               groups=case["groups"])
    return x, w, alpha, beta, geo


@settings(max_examples=100, deadline=None)
@given(cases())
def test_forward_exact_counts_grid(case):
    x, w, alpha, beta, geo = build(case)
    check_forward(x, w, alpha, beta, case["convention"], **geo)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_vectors_within_bound(path):
    d = np.load(path)
    geo = {key: tuple(int(v) for v in np.broadcast_to(d[key], (2,)))
           for key in ("stride", "padding", "dilation")}
    geo["groups"] = int(d["groups"])
    y = check_forward(d["x"], d["w"], d["alpha"], d["beta"], str(d["convention"]), **geo)
    mag = np.abs(tap_products(d["xb"], d["wb"], geo["stride"], geo["padding"], geo["dilation"],
                              geo["groups"])).sum(axis=-1)
    k = d["w"][0].size
    assert np.all(np.abs(y - d["y"]) <= (k + 9 * 8) * U * mag + 1e-300)


# ----------------------------------------------------------------------------------------------
# named edge cases
# ----------------------------------------------------------------------------------------------


def test_official_ties_everywhere():
    """x == beta and W == beta_w exactly: the zero levels alpha*beta and beta_w appear."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(2, 4, 6, 5)) / 2.0
    x[0, :, :3] = 0.5  # a block exactly at the threshold
    w = rng.integers(-1, 2, size=(6, 4, 3, 3)).astype(float)
    w[1] = 0.0
    w[2, :, 1, 1] = w[2].mean()  # cannot be hit in general; force a u == 0 via symmetric data
    w[3] = np.array([-1.0, 0.0, 1.0] * 12).reshape(4, 3, 3)  # mean 0: the zeros tie
    y = check_forward(x, w, 0.75, 0.5, "official", padding=(1, 2), stride=(1, 2))
    # constant filter (w[1] == 0): y = sum over taps of xb * 0 = 0
    assert np.all(y[:, 1] == 0.0)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_zero_level_gives_exact_zero(convention):
    """alpha == beta (paper) / beta == 1 (official): the lower level is exactly 0, so outputs
    whose taps are all at that level are exactly 0, as in the elementwise path."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 8, 8))
    x[:, :, :4, :] = -5.0  # well below the threshold
    alpha, beta = (0.7, 0.7) if convention == "paper" else (0.7, 1.0)
    w = rng.normal(size=(4, 3, 3, 3))
    y = check_forward(x, w, alpha, beta, convention, padding=(1, 1))
    assert np.all(y[:, :, :3, :] == 0.0)
    old = conv_mod._conv(ab.binarize_activations(x, alpha, beta, convention=convention),
                         ab.binarize_weights(w, convention=convention),
                         conv_mod.conv_params(x.shape, w.shape, 1, 1, 1, 1))
    assert np.array_equal(y == 0.0, old == 0.0)


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_negative_alpha_and_per_channel(convention):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 6, 7, 6))
    w = rng.normal(size=(6, 2, 3, 2))
    alpha = np.array([-0.5, -0.5, 0.8, 0.8, 0.8, -1.1])  # runs cross the group boundary 2|4
    beta = np.array([0.1, 0.1, 0.1, -0.2, -0.2, 0.0])
    check_forward(x, w, alpha, beta, convention, groups=3, padding=(2, 1), dilation=(2, 1))
    check_forward(x, w, -0.9, 0.3, convention, groups=3, stride=(2, 3))


def test_segments_split_at_group_boundaries():
    seg_of_chan, c0, ln, g0, g1, grp = conv_mod._segments(np.ones(6), np.zeros(6), 2, 3)
    assert list(c0) == [0, 0, 0] and list(ln) == [2, 2, 2] and list(grp) == [0, 1, 2]
    assert list(g0) == [0, 1, 2] and list(g1) == [1, 2, 3]
    assert list(seg_of_chan) == [0, 0, 1, 1, 2, 2]
    _, c0, ln, _, _, _ = conv_mod._segments(np.array([1.0, 2.0, 2.0, 2.0]), np.zeros(4), 4, 1)
    assert list(c0) == [0, 1] and list(ln) == [1, 3]


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_float64_gemm_and_chunking_bit_identical(convention, monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.integers(-4, 5, size=(5, 4, 6, 7)) / 4.0
    w = rng.normal(size=(6, 2, 3, 3))
    kw = dict(padding=1, groups=2, convention=convention)
    base = ab.adabin_conv2d(x, w, 0.5, 0.25, **kw)
    monkeypatch.setattr(conv_mod, "_F32_EXACT", 1)          # float64 GEMM
    f64 = ab.adabin_conv2d(x, w, 0.5, 0.25, **kw)
    monkeypatch.setattr(conv_mod, "_CHUNK_ELEMENTS", 100)   # one sample per chunk
    chunked = ab.adabin_conv2d(x, w, 0.5, 0.25, **kw)
    assert np.array_equal(base, f64) and np.array_equal(base, chunked)
    # per-channel sets: one segment per GEMM batch vs all segments at once
    alpha = np.array([0.5, 0.75, 0.75, -1.0])
    beta = np.array([0.25, 0.0, 0.0, 0.5])
    one_batch = ab.adabin_conv2d(x, w, alpha, beta, **kw)
    monkeypatch.setattr(conv_mod, "_CHUNK_ELEMENTS", 2 ** 24)
    all_batch = ab.adabin_conv2d(x, w, alpha, beta, **kw)
    assert np.array_equal(one_batch, all_batch)
    check_forward(x, w, alpha, beta, convention, padding=(1, 1), groups=2)
    g0 = ab.adabin_conv2d_grad(x, w, 0.5, 0.25, np.ones_like(base), **kw)
    monkeypatch.setattr(conv_mod, "_BWD_CHUNK_ELEMENTS", 100)
    g1 = ab.adabin_conv2d_grad(x, w, 0.5, 0.25, np.ones_like(base), **kw)
    for a, b in zip(g0, g1):
        assert np.array_equal(a, b)


def test_overflowing_products_raise():
    x = np.full((1, 1, 3, 3), 1e300)
    w = np.array([[[[1e300, -1e300, 2e300]]]]).reshape(1, 1, 1, 3)
    with pytest.raises(ValueError, match="overflow"):
        ab.adabin_conv2d(x, w, 1e300, 0.0)


def test_adabin_linear_matches_reference():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(7, 33))
    w = rng.normal(size=(5, 33))
    for conv in ("paper", "official"):
        y = ab.adabin_linear(x, w, 0.9, -0.1, convention=conv)
        xb = spec.binarize_activations(x, 0.9, -0.1, convention=conv)
        wb = spec.binarize_weights(w, convention=conv)
        prods = xb[:, None, :] * wb[None, :, :]
        exact = exact_sum(prods)
        assert np.all(np.abs(y - exact) <= 9 * U * np.abs(prods).sum(-1))


# ----------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 130), st.integers(1, 3),
       st.booleans(), st.booleans(), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_gemm_bitwise_equals_sequential_sum(m, k, n, g, accumulate, transposed, rb, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(g, k, m)).transpose(0, 2, 1) if transposed else rng.normal(size=(g, m, k))
    b = rng.normal(size=(g, k, n))
    c0 = rng.normal(size=(g, m, n))
    c = c0.copy()
    kf.gemm_acc(a, b, c, accumulate, rb)
    want = c0.copy() if accumulate else np.zeros((g, m, n))
    for kk in range(k):
        want = want + a[:, :, kk, None] * b[:, None, kk, :]
    assert np.array_equal(c, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
       st.integers(1, 2), st.integers(1, 3))
def test_plain_conv_backward_matches_reference(seed, stride, dilation, padding, groups, kh):
    rng = np.random.default_rng(seed)
    cg, og = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h = max(dilation * (kh - 1) + 1 - 2 * padding, 1) + int(rng.integers(0, 5))
    x = rng.normal(size=(2, cg * groups, h, h + 1))
    w = rng.normal(size=(og * groups, cg, kh, kh))
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    p = conv_mod.conv_params(x.shape, w.shape, stride, padding, dilation, groups)
    gy = rng.normal(size=(2, og * groups, p.out_h, p.out_w))
    dx, dw = conv_mod._conv_backward(x, w, gy, p)
    rdx = spec.conv2d_grad_input(gy, w, x.shape, **geo)
    rdw = spec.conv2d_grad_weight(x, gy, w.shape, **geo)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12 * np.abs(rdx).max())
    np.testing.assert_allclose(dw, rdw, rtol=1e-12, atol=1e-12 * np.abs(rdw).max())
    layer = Conv2d(cg * groups, og * groups, kh, stride=stride, padding=padding,
                   dilation=dilation, groups=groups, rng=0)
    layer.params["weight"] = w
    layer.forward(x)
    ldx = layer.backward(gy)
    assert np.array_equal(ldx, dx) and np.array_equal(layer.grads["weight"], dw)


def test_bench_float_smoke():
    """bench_float.run returns its documented structure; format_table renders every row."""
    from adabin_np import bench_float

    result = bench_float.run(["--shapes", "0", "--repeats", "1", "--warmup", "0", "--no-torch"])
    (row,) = result["rows"]
    assert row["shape"] == [8, 64, 16, 16]
    for key in ("oracle_fwd", "oracle_grad"):
        assert 0 < row[key]["min_s"] <= row[key]["median_s"] <= row[key]["max_s"]
    table = bench_float.format_table(result)
    assert "8x64x16x16" in table and result["machine"]["cpu"] in table


# ----------------------------------------------------------------------------------------------
# the two routes of the forward: integer sums from the bit-packed kernel vs the sign GEMMs
# ----------------------------------------------------------------------------------------------


def test_packed_count_route_is_bit_identical_to_the_gemm_route(monkeypatch):
    """The common case takes its integer sums from the packed XOR/popcount kernel; every
    result (sign of zero included) equals the sign-GEMM route's bit for bit, and the packed
    route is really taken in most of these cases (ties and constant filters fall back)."""
    import adabin_np.conv as conv_mod

    rng = np.random.default_rng(20261129)
    taken = []
    original = conv_mod._forward_from_packed_counts

    def spy(*args):
        y = original(*args)
        taken.append(y is not None)
        return y

    monkeypatch.setattr(conv_mod, "_forward_from_packed_counts", spy)
    for trial in range(120):
        groups = int(rng.choice([1, 2]))
        cg, og, k = (int(v) for v in rng.integers(1, [5, 4, 4]))
        h = int(rng.integers(k, 8))
        stride, pad, dil = int(rng.integers(1, 3)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
        if dil * (k - 1) + 1 > h + 2 * pad:
            continue
        x = rng.normal(size=(int(rng.integers(1, 3)), cg * groups, h, h))
        w = rng.normal(size=(og * groups, cg, k, k))
        if trial % 4 == 0:
            x = np.round(2 * x) / 2          # exact ties x == beta for beta in {0, 0.5}
        alpha = float(rng.choice([0.7, -0.5, 1.3]))
        beta = float(rng.choice([0.0, 0.5, -0.25]))
        if trial % 3 == 1:  # one set per group, different across groups: still one route
            alpha = np.repeat(rng.choice([0.7, -0.5, 1.3], size=groups), cg)
            beta = np.repeat(rng.choice([0.0, 0.5, -0.25], size=groups), cg)
        for convention in ("paper", "official"):
            kw = dict(stride=stride, padding=pad, dilation=dil, groups=groups,
                      convention=convention)
            monkeypatch.setattr(conv_mod, "USE_PACKED_COUNTS", True)
            y_packed = ab.adabin_conv2d(x, w, alpha, beta, **kw)
            monkeypatch.setattr(conv_mod, "USE_PACKED_COUNTS", False)
            y_gemm = ab.adabin_conv2d(x, w, alpha, beta, **kw)
            np.testing.assert_array_equal(y_packed, y_gemm)
            np.testing.assert_array_equal(np.signbit(y_packed), np.signbit(y_gemm))
    assert sum(taken) > len(taken) // 2
