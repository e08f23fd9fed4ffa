"""The README example: check a PyTorch AdaBin layer against the oracle (skipped without torch).

``my_adabin_conv2d`` is written the way a PyTorch user would write it -- float32, nothing
borrowed from adabin_np -- and :func:`adabin_np.testing.assert_matches_oracle` compares it with
the float64 oracle over a hypothesis grid of geometries, binary sets and both conventions,
forgiving only sign flips of elements within rounding distance of a threshold.
"""

import pytest
from hypothesis import given, settings

import adabin_np.testing as abt

torch = pytest.importorskip("torch")
F = torch.nn.functional


def my_adabin_conv2d(x, w, alpha, beta, *, stride=1, padding=0, dilation=1, groups=1,
                     convention="paper", k=10.0, t=0.1):
    """AdaBin conv in float32 PyTorch; straight-through estimators make autograd work."""
    official = convention == "official"

    def sign(v):  # paper: sign(0) = +1; official: torch.sign, sign(0) = 0
        return torch.sign(v) if official else torch.where(v >= 0, 1.0, -1.0)

    a, b = alpha.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)  # scalar or per channel
    v = (x - b) / a
    bireal = torch.where(v.abs() < 1, 2 * v - v * v.abs(), v.sign())  # F(v), F' = 2 - 2|v|
    s = bireal + (sign(v) - bireal).detach()
    xb = a * (s + b) if official else a * s + b

    wf = w.flatten(1)
    beta_w = wf.mean(1, keepdim=True)
    alpha_w = wf.std(1, correction=0, keepdim=True)
    u = (wf - beta_w) / alpha_w
    ede = k * torch.tanh(t * u)  # IR-Net error-decay estimator
    wb = alpha_w * (ede + (sign(u) - ede).detach()) + beta_w
    return F.conv2d(xb, wb.reshape(w.shape), stride=stride, padding=padding,
                    dilation=dilation, groups=groups)


def f32(*arrays):
    return [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in arrays]


@settings(max_examples=40, deadline=None)
@given(abt.conv_cases())
def test_forward_matches_oracle(case):
    y = my_adabin_conv2d(*f32(*case.args), **case.kwargs)
    abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)


@settings(max_examples=25, deadline=None)
@given(abt.conv_cases())
def test_autograd_matches_oracle(case):
    x, w, alpha, beta = f32(*case.args)
    y = my_adabin_conv2d(x, w, alpha, beta, **case.kwargs)
    y.backward(torch.tensor(case.grad_y, dtype=torch.float32))
    grads = dict(dx=x.grad, dw=w.grad, dalpha=alpha.grad, dbeta=beta.grad)
    abt.assert_grads_match(grads, "adabin_conv2d", *case.grad_args, **case.kwargs)
