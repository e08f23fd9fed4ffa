"""Forward and every gradient of the float path against independent torch autograd (issue 2).

Done-criterion: agreement to 1e-9 relative in float64 on random shapes (1x1..5x5 kernels,
stride 1-2, any padding, odd channel counts, groups, dilation) in both conventions.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adabin_np as ab

torch = pytest.importorskip("torch")
import torch_spec as ts  # noqa: E402  (needs torch)

RTOL = 1e-9


def close(actual, expected, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * 1e-2 * scale, err_msg=what)


@st.composite
def conv_case(draw):
    groups = draw(st.integers(1, 3))
    cg = draw(st.sampled_from([1, 3, 5]))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if cg * kh * kw == 1:  # a one-weight filter is constant: torch's sqrt'(0) gives NaN there
        kw = 2
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 9))
    n = draw(st.integers(1, 2))
    per_channel = draw(st.booleans())
    convention = draw(st.sampled_from(["paper", "official"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(n=n, c=cg * groups, h=h, w=w, o=og * groups, cg=cg, kh=kh, kw=kw,
                stride=stride, padding=padding, dilation=dilation, groups=groups,
                per_channel=per_channel, convention=convention, seed=seed)


def make_inputs(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.normal(size=(case["n"], case["c"], case["h"], case["w"]))
    w = rng.normal(size=(case["o"], case["cg"], case["kh"], case["kw"])) * 0.1 + 0.02
    if case["per_channel"]:
        alpha = rng.uniform(0.3, 1.5, size=case["c"]) * rng.choice([-1, 1], size=case["c"])
        beta = rng.normal(scale=0.3, size=case["c"])
    else:
        alpha = np.array(rng.uniform(0.3, 1.5))
        beta = np.array(rng.normal(scale=0.3))
    return x, w, alpha, beta


@settings(max_examples=60, deadline=None)
@given(conv_case(), st.floats(0.05, 3.0), st.floats(1.0, 20.0))
def test_adabin_conv2d_and_grads_match_torch_autograd(case, t, k):
    x, w, alpha, beta = make_inputs(case)
    geo = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
               groups=case["groups"])
    conv = case["convention"]
    y = ab.adabin_conv2d(x, w, alpha, beta, convention=conv, **geo)

    tx, tw, ta, tb = ts.tensors(x, w, alpha, beta)
    ty = ts.adabin_conv2d(tx, tw, ta, tb, convention=conv, k=k, t=t, **geo)
    close(y, ty.detach().numpy(), "forward")

    gy = np.random.default_rng(case["seed"] + 1).normal(size=y.shape)
    ty.backward(torch.tensor(gy))
    grads = ab.adabin_conv2d_grad(x, w, alpha, beta, gy, convention=conv, k=k, t=t, **geo)
    close(grads.dx, tx.grad.numpy(), "dx")
    close(grads.dw, tw.grad.numpy(), "dw")
    close(grads.dalpha, ta.grad.numpy(), "dalpha")
    close(grads.dbeta, tb.grad.numpy(), "dbeta")
    assert np.shape(grads.dalpha) == np.shape(alpha)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["paper", "official"]), st.booleans(), st.integers(0, 2**31 - 1),
       st.sampled_from([(5,), (3, 4), (2, 3, 4, 5), (1, 7, 2)]))
def test_binarize_activations_and_grad_match_torch(convention, per_channel, seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if per_channel and len(shape) >= 2:
        alpha = rng.uniform(-2, 2, size=shape[1])
        alpha[np.abs(alpha) < 0.1] = 0.5
        beta = rng.normal(size=shape[1])
    else:
        alpha, beta = np.array(rng.uniform(0.1, 2)), np.array(rng.normal())
    # plant exact threshold ties: x == beta  =>  v == 0
    flat = x.reshape(-1)
    flat[::3] = np.broadcast_to(beta.reshape((1, -1) + (1,) * (len(shape) - 2)) if beta.ndim
                                else beta, shape).reshape(-1)[::3]
    out = ab.binarize_activations(x, alpha, beta, convention=convention)
    tx, ta, tb = ts.tensors(x, alpha, beta)
    tout = ts.binarize_activations(tx, ta, tb, convention)
    close(out, tout.detach().numpy(), "forward")
    g = rng.normal(size=shape)
    tout.backward(torch.tensor(g))
    dx, da, db = ab.binarize_activations_grad(x, alpha, beta, g, convention=convention)
    close(dx, tx.grad.numpy(), "dx")
    close(da, ta.grad.numpy(), "dalpha")
    close(db, tb.grad.numpy(), "dbeta")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["paper", "official"]), st.integers(0, 2**31 - 1),
       st.sampled_from([(4, 3, 3, 3), (5, 1, 1, 2), (3, 7), (2, 5, 5, 5), (1, 2, 1, 3)]),
       st.floats(0.05, 3.0), st.floats(1.0, 20.0), st.booleans())
def test_binarize_weights_and_grad_match_torch(convention, seed, shape, t, k, tie):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape) * rng.uniform(0.01, 3) + rng.normal()
    if tie and np.prod(shape[1:]) >= 3:
        # channel = (a, 0, -a, 0, ...): the mean is exactly 0, so the zeros sit on u == 0
        flat = np.zeros((shape[0], int(np.prod(shape[1:]))))
        flat[:, 0] = rng.uniform(0.5, 2.0, size=shape[0])
        flat[:, 2] = -flat[:, 0]
        w = flat.reshape(shape)
    out = ab.binarize_weights(w, convention=convention)
    (tw,) = ts.tensors(w)
    tout = ts.binarize_weights(tw, convention, k=k, t=t)
    close(out, tout.detach().numpy(), "forward")
    g = rng.normal(size=shape)
    tout.backward(torch.tensor(g))
    dw = ab.binarize_weights_grad(w, g, k=k, t=t, convention=convention)
    close(dw, tw.grad.numpy(), "dw")


def test_official_ties_really_differ_between_conventions():
    """v == 0 exactly: paper gives b2 = beta + alpha, official gives alpha*(0 + beta)."""
    x = np.array([[0.25, 0.5]])
    paper = ab.binarize_activations(x, 2.0, 0.25)
    official = ab.binarize_activations(x, 2.0, 0.25, convention="official")
    # hand-computed: v = (x - 0.25)/2 = [0, 0.125]
    np.testing.assert_array_equal(paper, [[2.25, 2.25]])          # 2*1 + 0.25
    np.testing.assert_array_equal(official, [[0.5, 2.5]])         # 2*(0 + .25), 2*(1 + .25)
