"""A bug zoo: AdaBin conv layers as PyTorch users write them, correct and with realistic bugs.

``user_conv_grads(x, w, alpha, beta, gy, dtype=..., bug=...)`` runs one implementation in
``torch.float32`` or ``torch.float64`` with autograd and returns the forward output and the
gradients ``(dx, dw, dalpha, dbeta)`` as NumPy arrays, ready for
:func:`adabin_np.testing.assert_matches_oracle`. Nothing is borrowed from adabin_np: the
implementation follows the paper's formulas (SPEC sections 1-4) with Bi-Real and IR-Net EDE
straight-through estimators, paper convention, zero padding after binarization.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BUGS = {
    "dw_zero": "dW returned as zeros",
    "dalpha_x0": "dalpha multiplied by 0",
    "dalpha_x1.5": "dalpha multiplied by 1.5",
    "dbeta_x1.3": "dbeta multiplied by 1.3",
    "dalpha_no_Gv": "dalpha without the -sum(G*v) term (alpha detached inside v)",
    "weight_stats_detached": "weight mean and std detached from the graph",
    "plain_ste": "plain clipped STE (F' = 1 on |v| <= 1) instead of Bi-Real",
    "pad_with_b1": "padding with the low level b1 instead of zero",
    "unbiased_std": "unbiased (n - 1) weight standard deviation",
    "swapped_alpha_beta": "alpha and beta swapped",
    "torch_sign_ties": "torch.sign at exact ties in the paper convention (tie -> 0)",
    "off_by_one_stride": "strided window index off by one (reads x[i*stride + k - padding - 1])",
}


def _bireal(v):
    """Bi-Real F(v): derivative max(0, 2 - 2|v|)."""
    return torch.where(v.abs() < 1, 2 * v - v * v.abs(), v.sign())


def user_conv_grads(x, w, alpha, beta, gy, *, padding=1, stride=1, dtype=torch.float32,
                    bug=None, k=10.0, t=0.1):
    """(y, dx, dw, dalpha, dbeta) of one user implementation (NumPy float arrays)."""
    assert bug is None or bug in BUGS, bug
    xt = torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True)
    wt = torch.tensor(np.asarray(w), dtype=dtype, requires_grad=True)
    at = torch.tensor(float(alpha), dtype=dtype, requires_grad=True)
    bt = torch.tensor(float(beta), dtype=dtype, requires_grad=True)
    a, b = (bt, at) if bug == "swapped_alpha_beta" else (at, bt)

    # activations: v = (x - beta)/alpha, s = sign(v) with sign(0) = +1, xb = alpha*s + beta
    v = (xt - b) / (a.detach() if bug == "dalpha_no_Gv" else a)
    hard = torch.sign(v) if bug == "torch_sign_ties" else torch.where(v >= 0, 1.0, -1.0)
    hard = hard.to(dtype)
    soft = v.clamp(-1, 1) if bug == "plain_ste" else _bireal(v)
    s = soft + (hard - soft).detach()
    xb = a * s + b

    # weights: per output channel mean / population std, EDE straight-through estimator
    wf = wt.flatten(1)
    beta_w = wf.mean(1, keepdim=True)
    alpha_w = wf.std(1, correction=1 if bug == "unbiased_std" else 0, keepdim=True)
    if bug == "weight_stats_detached":
        beta_w, alpha_w = beta_w.detach(), alpha_w.detach()
    u = (wf - beta_w) / alpha_w
    ede = k * torch.tanh(t * u)
    su = torch.where(u >= 0, 1.0, -1.0).to(dtype)
    wb = (alpha_w * (ede + (su - ede).detach()) + beta_w).reshape(wt.shape)

    if bug == "pad_with_b1":
        xb = F.pad(xb, (padding,) * 4, value=float(beta) - float(alpha))
        y = F.conv2d(xb, wb, stride=stride)
    elif bug == "off_by_one_stride":
        xb = F.pad(xb, (padding + 1, padding - 1, padding + 1, padding - 1))
        y = F.conv2d(xb, wb, stride=stride)
    else:
        y = F.conv2d(xb, wb, stride=stride, padding=padding)
    y.backward(torch.tensor(np.asarray(gy), dtype=dtype))

    dx, dw = xt.grad.numpy(), wt.grad.numpy()
    dalpha, dbeta = at.grad.numpy(), bt.grad.numpy()
    if bug == "dw_zero":
        dw = np.zeros_like(dw)
    elif bug == "dalpha_x0":
        dalpha = dalpha * 0
    elif bug == "dalpha_x1.5":
        dalpha = dalpha * 1.5
    elif bug == "dbeta_x1.3":
        dbeta = dbeta * 1.3
    return y.detach().numpy(), dx, dw, dalpha, dbeta


def zoo_case(seed, *, plant_near=None, n=8, c=64, o=64, size=16):
    """x (n, c, size, size), w (o, c, 3, 3), alpha, beta, gy for padding 1, stride 1.

    Every case has a few exact ties ``x == beta`` (they decide the sign convention); with
    ``plant_near`` (default: odd seeds) it also has activations a float64 ulp from ``beta``
    and ~1e-7 relative from it (float32 rounds them onto the threshold or across it) and one
    weight at its channel mean -- flip-risk elements.
    """
    rng = np.random.default_rng(seed)
    alpha = float(rng.uniform(0.5, 1.5))
    beta = float(rng.uniform(-0.3, 0.3))
    x = beta + alpha * rng.normal(size=(n, c, size, size))
    w = rng.normal(size=(o, c, 3, 3)) * 0.1 + rng.normal(size=(o, 1, 1, 1)) * 0.02
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=6, replace=False)
    flat[picks[:3]] = beta
    if plant_near if plant_near is not None else seed % 2 == 1:
        flat[picks[3]] = np.nextafter(beta, np.inf)
        flat[picks[4]] = np.nextafter(beta, -np.inf)
        flat[picks[5]] = beta + alpha * 1e-7 * rng.choice([-1.0, 1.0])
        ch = int(rng.integers(o))
        row = w[ch].reshape(-1)
        row[0] = (row.sum() - row[0]) / (row.size - 1)  # the mean of the others: u ~ 0
    gy = rng.normal(size=(n, o, size, size))
    return x, w, alpha, beta, gy
