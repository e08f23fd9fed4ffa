"""Write the golden cases of the reference to ``reference/golden/<name>.npz``.

Usage: ``python -m reference.make_golden``

Each file holds one AdaBin convolution case, inputs and outputs, all computed by
:mod:`reference.spec` from fixed seeds:

inputs   ``x, w, alpha, beta, grad_y`` (float64), ``stride, padding, dilation`` (int64, (2,)),
         ``groups`` (int64), ``k, t`` (float64), ``convention`` (str)
outputs  ``alpha_w, beta_w`` (O,), ``xb`` (binarized x), ``wb`` (binarized w),
         ``y`` (:func:`adabin_conv2d`), ``y_packed`` (:func:`packed_conv_formula`),
         ``dx, dw, dalpha, dbeta`` (:func:`adabin_conv2d_grad`)

Cases cover both conventions, stride 2, asymmetric padding, dilation, groups (incl.
depthwise), per-channel activation parameters, a negative alpha, a constant filter, exact zeros
at the activation and weight thresholds (v == 0, u == 0) and a non-default EDE (k, t). In the
official cases with exact zeros ``y_packed`` differs from ``y`` (the packed path has no zero
level), which is the documented behaviour.

:func:`build_cases` is deterministic; ``tests/test_reference_selfcheck.py`` rebuilds the cases
and compares them with the stored files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import spec

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def _case(x, w, alpha, beta, grad_y, *, stride=1, padding=0, dilation=1, groups=1,
          k=10.0, t=0.1, convention="paper"):
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    alpha_w, beta_w = spec.weight_binary_set(w)
    y = spec.adabin_conv2d(x, w, alpha, beta, convention=convention, **opts)
    assert grad_y.shape == y.shape
    grads = spec.adabin_conv2d_grad(x, w, alpha, beta, grad_y, k=k, t=t,
                                    convention=convention, **opts)
    return {
        "x": x, "w": w, "alpha": alpha, "beta": beta, "grad_y": grad_y,
        "stride": np.array(spec._pair(stride), dtype=np.int64),
        "padding": np.array(spec._pair(padding), dtype=np.int64),
        "dilation": np.array(spec._pair(dilation), dtype=np.int64),
        "groups": np.array(groups, dtype=np.int64),
        "k": np.array(k, dtype=np.float64), "t": np.array(t, dtype=np.float64),
        "convention": np.array(convention),
        "alpha_w": alpha_w, "beta_w": beta_w,
        "xb": spec.binarize_activations(x, alpha, beta, convention=convention),
        "wb": spec.binarize_weights(w, convention=convention),
        "y": y,
        "y_packed": spec.packed_conv_formula(x, w, alpha, beta, convention=convention, **opts),
        "dx": grads.dx, "dw": grads.dw,
        "dalpha": np.asarray(grads.dalpha, dtype=np.float64),
        "dbeta": np.asarray(grads.dbeta, dtype=np.float64),
    }


def _random_case(seed, x_shape, w_shape, alpha, beta, **opts):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape) * 0.1 + 0.02
    y_shape = spec.conv_output_shape(x_shape, w_shape, stride=opts.get("stride", 1),
                                     padding=opts.get("padding", 0),
                                     dilation=opts.get("dilation", 1),
                                     groups=opts.get("groups", 1))
    grad_y = rng.standard_normal(y_shape)
    return _case(x, w, alpha, beta, grad_y, **opts)


def _zeros_case(seed, convention):
    """Quantised inputs so that thresholds are hit exactly.

    x on a grid of 1/4 with beta_a = 0.25, alpha_a = 0.5: v = (x - 0.25)/0.5 is exact and
    v == 0 wherever x == 0.25. Weights on a grid of 1/8; filter 0 is constant (27 x -1.265,
    whose floating mean, fsum, pairwise or naive, is not -1.265); filter 1 is [a, -a, 0]
    (mean exactly 0, so u == 0 exactly at its zero entries).
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, size=(2, 3, 6, 6)) / 4.0
    x[0, 0, 0, :3] = 0.25                     # guarantee a few exact v == 0 (border included)
    w = rng.integers(-3, 4, size=(4, 3, 3, 3)) / 8.0
    w[0] = -1.265
    a = rng.integers(-2, 3, size=13) / 8.0
    a[0] = 0.25
    w[1] = np.concatenate([a, -a, [0.0]]).reshape(3, 3, 3)
    grad_y = rng.standard_normal((2, 4, 6, 6))
    return _case(x, w, 0.5, 0.25, grad_y, padding=1, convention=convention)


def build_cases():
    """Return ``{name: {key: ndarray}}`` for every golden case (deterministic)."""
    k30, t30 = spec.ede_schedule(30, 100)
    cases = {
        "paper_basic": _random_case(
            101, (2, 3, 7, 7), (4, 3, 3, 3), 0.8, 0.1, padding=1),
        "official_basic": _random_case(
            102, (2, 3, 7, 7), (4, 3, 3, 3), 0.8, 0.1, padding=1, convention="official"),
        "paper_stride2_dilation": _random_case(
            103, (2, 3, 9, 8), (4, 3, 3, 2), 1.3, -0.2, stride=2, padding=(1, 2),
            dilation=(2, 1), k=k30, t=t30),
        "official_stride2_pad2": _random_case(
            104, (1, 3, 8, 9), (5, 3, 3, 3), 0.6, 0.3, stride=(2, 1), padding=2,
            convention="official"),
        "paper_groups_perchannel": _random_case(
            105, (2, 4, 6, 6), (6, 2, 3, 3), np.array([0.5, 1.0, 1.5, 0.75]),
            np.array([-0.3, 0.0, 0.2, 0.4]), padding=1, groups=2),
        "official_depthwise_perchannel": _random_case(
            106, (2, 4, 7, 6), (4, 1, 3, 3), np.array([0.9, 1.1, 0.4, 2.0]),
            np.array([0.1, -0.5, 0.25, 0.0]), padding=(2, 1), dilation=2, groups=4,
            convention="official"),
        "paper_negative_alpha": _random_case(
            107, (2, 3, 5, 5), (3, 3, 3, 3), -0.7, 0.2, padding=1),
        "paper_zeros_constant": _zeros_case(108, "paper"),
        "official_zeros_constant": _zeros_case(108, "official"),
    }
    return cases


def main():
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, arrays in build_cases().items():
        path = GOLDEN_DIR / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        total += path.stat().st_size
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
