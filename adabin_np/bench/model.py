r"""Whole-network row: AdaBin ResNet-18 (224x224) through ``model(x, packed=True)`` (float32)
against the same network in torch float32.

The torch network is written from the float path's math (SPEC sections 2-6), eval mode:
activations binarized with ``torch.where(x >= beta, beta + alpha, beta - alpha)`` (paper
convention), weights pre-binarized once (``alpha_w*sign(u) + beta_w``, as a deployed float
model would hold them), ``conv2d``, ``batch_norm`` with running statistics, Maxout as
``where(x > 0, p*x, q*x)``, max pool, the avg-pool + 1x1 + BatchNorm downsample, average pool
and the ``bn2 -> fc`` head. Its logits are compared with ours (prediction agreement is
reported next to the times).
"""

from __future__ import annotations

import numpy as np

__all__ = ["build", "torch_network"]


def _randomize(model, rng):
    for _, mod in model.named_modules():
        if "running_var" in mod.buffers:
            c = mod.num_features
            mod.buffers["running_mean"] = rng.normal(0, 0.1, c)
            mod.buffers["running_var"] = rng.uniform(0.5, 1.5, c)
            mod.params["weight"] = rng.uniform(0.5, 1.5, c)
            mod.params["bias"] = rng.normal(0, 0.1, c)
        if "alpha_a" in mod.params:
            mod.params["alpha_a"] = np.array(rng.uniform(0.5, 1.5))
            mod.params["beta_a"] = np.array(rng.normal(0, 0.05))


def build(seed=0):
    """An eval-mode ``resnet18_1w1a`` with random weights and BatchNorm statistics."""
    from ..models import resnet18_1w1a

    m = resnet18_1w1a(seed=seed)
    _randomize(m, np.random.default_rng(seed))
    m.eval()
    return m


def torch_network(model, torch):
    """A callable ``f(x_tensor) -> logits`` computing ``model``'s float path in torch fp32."""
    from ..binarize import binarize_weights

    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731

    def bn(mod):
        return (t(mod.buffers["running_mean"]), t(mod.buffers["running_var"]),
                t(mod.params["weight"]), t(mod.params["bias"]), mod.eps)

    def maxout(mod):
        return t(mod.params["pos_scale"]).view(1, -1, 1, 1), \
            t(mod.params["neg_scale"]).view(1, -1, 1, 1)

    def apply_bn(x, p):
        return F.batch_norm(x, p[0], p[1], p[2], p[3], False, 0.0, p[4])

    def apply_mo(x, pq):
        return torch.where(x > 0, pq[0] * x, pq[1] * x)

    def binconv(conv):
        a = float(conv.binary_a.params["alpha_a"])
        b = float(conv.binary_a.params["beta_a"])
        wb = t(binarize_weights(conv.params["weight"]))
        s, p = conv.stride, conv.padding

        def f(x):
            xb = torch.where(x >= b, b + a, b - a)
            return F.conv2d(xb, wb, stride=s, padding=p)
        return f

    m = model
    stem_w, stem_bn, stem_mo = t(m.conv1.params["weight"]), bn(m.bn1), maxout(m.nonlinear1)
    blocks = []
    for stage in m._stages:
        for blk in stage:
            d = None
            if blk.downsample is not None:
                pool, conv, bnd = list(blk.downsample)
                d = (pool.kernel_size[0], t(conv.params["weight"]), bn(bnd))
            blocks.append((binconv(blk.conv1), bn(blk.bn1), maxout(blk.nonlinear1),
                           binconv(blk.conv2), bn(blk.bn2), maxout(blk.nonlinear2), d))
    head_bn = bn(m.bn2)
    fc_w, fc_b = t(m.fc.params["weight"]), t(m.fc.params["bias"])

    def forward(x):
        y = apply_mo(apply_bn(F.conv2d(x, stem_w, stride=2, padding=3), stem_bn), stem_mo)
        y = F.max_pool2d(y, 3, 2, 1)
        for c1, b1, m1, c2, b2, m2, d in blocks:
            if d is None:
                sc = y
            else:
                k, wd, bd = d
                sc = apply_bn(F.conv2d(F.avg_pool2d(y, k, k, ceil_mode=True,
                                                    count_include_pad=False), wd), bd)
            h = apply_mo(apply_bn(c1(y), b1) + sc, m1)
            y = apply_mo(apply_bn(c2(h), b2) + h, m2)
        y = F.avg_pool2d(y, 7, 1).flatten(1)
        y = F.batch_norm(y, head_bn[0], head_bn[1], head_bn[2], head_bn[3], False, 0.0,
                         head_bn[4])
        return F.linear(y, fc_w, fc_b)

    return forward
