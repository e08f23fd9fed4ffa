"""The Numba float kernels against the naive float64 specification in reference/.

One hypothesis parameter grid drives every comparison (the Larq Compute Engine habit: all
kernels over the same grid). Inputs include exact threshold ties (v == 0, u == 0), constant
filters, negative alpha and mixed scalar / per-channel activation sets.
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adabin_np as ab
from reference import spec

GOLDEN = sorted((Path(__file__).resolve().parents[1] / "reference" / "golden").glob("*.npz"))
RTOL = 1e-11


def close(actual, expected, what):
    expected = np.asarray(expected, dtype=np.float64)
    assert np.shape(actual) == expected.shape, f"{what}: shape {np.shape(actual)} vs {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


@st.composite
def grid_case(draw):
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 4))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    lo_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    lo_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(lo_h, lo_h + 6)), draw(st.integers(lo_w, lo_w + 6))
    return dict(n=draw(st.integers(1, 2)), c=cg * groups, cg=cg, o=og * groups, h=h, w=w,
                kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation, groups=groups,
                alpha_pc=draw(st.booleans()), beta_pc=draw(st.booleans()),
                negative=draw(st.booleans()), ties=draw(st.booleans()),
                constant=draw(st.booleans()),
                convention=draw(st.sampled_from(["paper", "official"])),
                seed=draw(st.integers(0, 2**31 - 1)))


def build(case):
    rng = np.random.default_rng(case["seed"])
    c = case["c"]
    alpha = rng.uniform(0.25, 2.0, size=c) if case["alpha_pc"] else np.array(rng.uniform(0.25, 2))
    if case["negative"]:
        alpha = -alpha
    beta = (rng.integers(-4, 5, size=c) / 8.0) if case["beta_pc"] else np.array(rng.integers(-4, 5) / 8)
    if case["ties"]:  # dyadic data so that x == beta happens exactly
        x = rng.integers(-8, 9, size=(case["n"], c, case["h"], case["w"])) / 8.0
        w = rng.integers(-4, 5, size=(case["o"], case["cg"], case["kh"], case["kw"])) / 4.0
    else:
        x = rng.normal(size=(case["n"], c, case["h"], case["w"]))
        w = rng.normal(size=(case["o"], case["cg"], case["kh"], case["kw"]))
    if case["constant"]:
        w[0] = -1.265  # an awkward constant: its floating mean is not exactly -1.265
    geo = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
               groups=case["groups"])
    return x, w, alpha, beta, geo


@settings(max_examples=120, deadline=None)
@given(grid_case(), st.floats(0.01, 5.0), st.floats(0.5, 50.0))
def test_float_kernels_match_reference(case, t, k):
    x, w, alpha, beta, geo = build(case)
    conv = case["convention"]
    a_k, b_k = ab.weight_binary_set(w)
    a_r, b_r = spec.weight_binary_set(w)
    close(a_k, a_r, "alpha_w")
    close(b_k, b_r, "beta_w")
    close(ab.binarize_weights(w, convention=conv), spec.binarize_weights(w, convention=conv), "wb")
    close(ab.binarize_activations(x, alpha, beta, convention=conv),
          spec.binarize_activations(x, alpha, beta, convention=conv), "xb")
    y = ab.adabin_conv2d(x, w, alpha, beta, convention=conv, **geo)
    close(y, spec.adabin_conv2d(x, w, alpha, beta, convention=conv, **geo), "y")
    gy = np.random.default_rng(case["seed"] ^ 1).normal(size=y.shape)
    got = ab.adabin_conv2d_grad(x, w, alpha, beta, gy, convention=conv, k=k, t=t, **geo)
    want = spec.adabin_conv2d_grad(x, w, alpha, beta, gy, convention=conv, k=k, t=t, **geo)
    for name in ("dx", "dw", "dalpha", "dbeta"):
        close(getattr(got, name), getattr(want, name), name)
    assert isinstance(got.dalpha, float) == (np.ndim(alpha) == 0)
    assert isinstance(got.dbeta, float) == (np.ndim(beta) == 0)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_vectors(path):
    d = np.load(path)
    conv = str(d["convention"])
    geo = {key: tuple(int(v) for v in np.broadcast_to(d[key], (2,)))
           for key in ("stride", "padding", "dilation")}
    geo["groups"] = int(d["groups"])
    a_w, b_w = ab.weight_binary_set(d["w"])
    close(a_w, d["alpha_w"], "alpha_w")
    close(b_w, d["beta_w"], "beta_w")
    close(ab.binarize_weights(d["w"], convention=conv), d["wb"], "wb")
    close(ab.binarize_activations(d["x"], d["alpha"], d["beta"], convention=conv), d["xb"], "xb")
    close(ab.adabin_conv2d(d["x"], d["w"], d["alpha"], d["beta"], convention=conv, **geo), d["y"], "y")
    got = ab.adabin_conv2d_grad(d["x"], d["w"], d["alpha"], d["beta"], d["grad_y"], convention=conv,
                                k=float(d["k"]), t=float(d["t"]), **geo)
    for name in ("dx", "dw", "dalpha", "dbeta"):
        close(getattr(got, name), d[name], name)


def test_golden_files_exist():
    assert len(GOLDEN) >= 8
