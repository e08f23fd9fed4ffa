"""An independent torch-autograd implementation of the SPEC formulas (test-only).

Nothing here calls adabin_np: every forward is written from ../shared/SPEC.md with torch ops,
and every gradient comes from torch autograd through straight-through estimators:

* activations: sign in the forward, Bi-Real polynomial F(v) (F'(v) = max(0, 2 - 2|v|)) in the
  backward: ``s_ste = F(v) + (sign(v) - F(v)).detach()``;
* weights: sign forward, IR-Net EDE ``F(u) = k tanh(t u)`` backward, with alpha_w = std(W) and
  beta_w = mean(W) left inside the graph so autograd differentiates through them.
"""

import torch
import torch.nn.functional as F


def bireal(v):
    """Bi-Real surrogate: -1 | 2v + v^2 | 2v - v^2 | 1 on (<-1 | [-1,0) | [0,1) | >=1)."""
    return torch.where(v < -1, -torch.ones_like(v),
                       torch.where(v < 0, 2 * v + v * v,
                                   torch.where(v < 1, 2 * v - v * v, torch.ones_like(v))))


def sign(v, convention):
    if convention == "paper":
        return torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v))
    return torch.sign(v)


def binarize_activations(x, alpha, beta, convention):
    """alpha, beta: 0-d tensors or (C,) tensors broadcast on axis 1."""
    if alpha.ndim == 1:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        alpha = alpha.reshape(shape)
        beta = beta.reshape(shape)
    v = (x - beta) / alpha
    s = bireal(v) + (sign(v, convention) - bireal(v)).detach()
    if convention == "paper":
        return alpha * s + beta
    return alpha * (s + beta)


def binarize_weights(w, convention, k=10.0, t=0.1):
    flat = w.reshape(w.shape[0], -1)
    beta = flat.mean(dim=1, keepdim=True)
    alpha = ((flat - beta) ** 2).mean(dim=1, keepdim=True).sqrt()
    u = (flat - beta) / alpha
    sur = k * torch.tanh(t * u)
    s = sur + (sign(u, convention) - sur).detach()
    return (alpha * s + beta).reshape(w.shape)


def adabin_conv2d(x, w, alpha, beta, *, stride, padding, dilation, groups, convention,
                  k=10.0, t=0.1):
    xb = binarize_activations(x, alpha, beta, convention)
    wb = binarize_weights(w, convention, k, t)
    return F.conv2d(xb, wb, stride=stride, padding=padding, dilation=dilation, groups=groups)


def tensors(*arrays):
    """float64 leaf tensors requiring grad."""
    return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
