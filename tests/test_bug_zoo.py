"""Bug zoo (issue 10): realistic user bugs must be caught on every seed, a correct float32
implementation never flagged.

The users are PyTorch AdaBin conv layers (``tests/zoo_users.py``) in float32 and float64 on
the issue's case: x (8, 64, 16, 16), w (64, 64, 3, 3), padding 1. Every seed plants exact ties
``x == beta`` (they decide the sign convention); odd seeds also plant activations one float64
ulp and ~1e-7 from ``beta`` and a weight at its channel mean, so flip-risk elements are
present and the forgiveness model is exercised where it matters. The oracle is computed once
per seed and dtype (``compare_with_oracle`` caches it); every implementation is compared with
``assert_matches_oracle``'s machinery for the forward output and all four gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import adabin_np as ab
import adabin_np.testing as abt

torch = pytest.importorskip("torch")

from zoo_users import BUGS, user_conv_grads, zoo_case  # noqa: E402  (needs torch)

SEEDS = range(10)
GEO = dict(padding=1)


def _reports(case, dtype, bug):
    x, w, a, b, gy = case
    y, dx, dw, da, db = user_conv_grads(x, w, a, b, gy, dtype=dtype, bug=bug)
    fwd = abt.compare_with_oracle(y, "adabin_conv2d", x, w, a, b, **GEO)
    grads = abt.compare_with_oracle(dict(dx=dx, dw=dw, dalpha=da, dbeta=db),
                                    "adabin_conv2d_grad", x, w, a, b, gy, **GEO)
    return fwd, grads


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_bug_caught_and_the_correct_layer_passes(seed):
    case = zoo_case(seed)
    problems = []
    for dtype in (torch.float32, torch.float64):
        fwd, grads = _reports(case, dtype, None)
        if not (fwd.ok and grads.ok):
            problems.append(f"correct {dtype} flagged:\n{fwd}\n{grads}")
        for bug, what in BUGS.items():
            fwd, grads = _reports(case, dtype, bug)
            if fwd.ok and grads.ok:
                problems.append(f"{bug} ({what}) in {dtype} passed")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


def test_the_zoo_has_flip_risk_and_ties():
    """The seeds exercise forgiveness: float32-risky elements that are not ties, and ties."""
    risky_seeds = 0
    for seed in SEEDS:
        x, w, a, b, _ = zoo_case(seed)
        assert (x == b).sum() >= 3
        near = abt.flip_risk(x, a, b) & (x != b)
        risky_seeds += bool(near.any() or abt.weight_flip_risk(w).any())
    assert risky_seeds >= 5


def test_forgiveness_is_bounded_by_the_flip():
    """A risky activation excuses its own receptive field only up to what its flip can do."""
    x, w, a, b, gy = zoo_case(1)
    idx = tuple(int(i) for i in np.argwhere((x == np.nextafter(b, -np.inf)))[0])
    xb = ab.binarize_activations(x, a, b)
    xb[idx] = b + a  # flipped, as float32 rounding onto the threshold does
    wb = ab.binarize_weights(w)
    y_flip = ab.conv2d(xb, wb, padding=1)
    report = abt.assert_matches_oracle(y_flip, "adabin_conv2d", x, w, a, b, **GEO)
    assert report.forgiven > 0
    # twice the possible change is not forgiven
    y0 = ab.adabin_conv2d(x, w, a, b, **GEO)
    report = abt.compare_with_oracle(y0 + 3.0 * (y_flip - y0), "adabin_conv2d", x, w, a, b,
                                     **GEO)
    assert not report.ok


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduction_allowances_stay_below_the_quantity(seed):
    """The class of bug behind issue 10: a reduction's allowance larger than its value.

    For float32 tolerances, the rounding bound of dalpha and dbeta stays below 1% of the value
    and rounding plus flip bound below a third of it, so dalpha = 0, 1.5 dalpha, 1.3 dbeta
    cannot pass.
    """
    from adabin_np.testing import compare, tolerance

    x, w, a, b, gy = zoo_case(seed)
    args = dict(x=x, w=w, alpha=a, beta=b, grad_y=gy, stride=1, padding=1, dilation=1,
                groups=1, k=10.0, t=0.1, convention="paper")
    fields = tolerance._exp_adabin_conv2d_grad(ab.adabin_conv2d_grad, args,
                                               compare._Ctx(1e-5, False))
    for f in fields:
        if f.name in ("dalpha", "dbeta"):
            value = abs(float(f.expected))
            rounding = 1e-5 * float(f.scale)
            assert rounding < 0.01 * value, (f.name, rounding, value)
            assert rounding + float(f.flip) < value / 3, (f.name, float(f.flip), value)
