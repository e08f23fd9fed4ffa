"""adabin_np.testing (issue 10 point 3): failure messages explain, cases re-run, strategies
shrink in value and come in float16/float32/float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings

import adabin_np as ab
import adabin_np.testing as abt

from test_testing import user_adabin_conv2d


def _case(seed=0):
    rng = np.random.default_rng(seed)
    x = 0.1 + 0.8 * rng.normal(size=(2, 3, 6, 6))
    w = rng.normal(size=(4, 3, 3, 3)) * 0.1
    return x, w


def _fail(fn, *args, **kwargs):
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_tie_message_names_the_tie_and_the_convention(tmp_path, monkeypatch):
    monkeypatch.setenv("ADABIN_NP_CASE_DIR", str(tmp_path))
    x, w = _case()
    x[1, 2, 3, 4] = 0.1  # exact tie, far from any border
    y = user_adabin_conv2d(x, w, 0.8, 0.1, padding=1, bug="torch_sign")
    msg = _fail(abt.assert_matches_oracle, y, "adabin_conv2d", x, w, 0.8, 0.1, padding=1)
    assert "reads x == beta at [1, 2, 3, 4]" in msg
    assert "the paper convention maps ties to +1" in msg
    assert "border output" not in msg.split("note:")[1]


def test_border_message_for_padding_with_a_level(tmp_path, monkeypatch):
    monkeypatch.setenv("ADABIN_NP_CASE_DIR", str(tmp_path))
    x, w = _case(1)
    y = user_adabin_conv2d(x, w, 0.8, 0.1, padding=1, bug="pad_with_b1")
    msg = _fail(abt.assert_matches_oracle, y, "adabin_conv2d", x, w, 0.8, 0.1, padding=1)
    assert "border output, reads zero padding" in msg
    assert "a padded tap contributes 0, not b1 or b2" in msg


def test_failing_case_is_saved_and_reruns_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("ADABIN_NP_CASE_DIR", str(tmp_path))
    x, w = _case(2)
    alpha, beta = 0.8123456789012345, 0.1
    y = user_adabin_conv2d(x, w, alpha, beta, stride=(2, 1), padding=1, bug="unbiased_std")
    msg = _fail(abt.assert_matches_oracle, y, "adabin_conv2d", x, w, alpha, beta,
                stride=(2, 1), padding=1)
    assert "alpha=0.8123456789012345" in msg  # full precision repr
    saved = list(tmp_path.glob("adabin_conv2d-*.npz"))
    assert len(saved) == 1 and str(saved[0]) in msg
    actual, op, kwargs = abt.load_case(str(saved[0]))
    assert op == "adabin_conv2d" and kwargs["stride"] == (2, 1) and kwargs["alpha"] == alpha
    np.testing.assert_array_equal(kwargs["x"], x)
    np.testing.assert_array_equal(actual["output"], y)
    again = _fail(abt.assert_matches_oracle, actual, op, **kwargs)
    assert again.split("  case:")[0] == msg.split("  case:")[0]
    # the correct answer passes with the saved arguments
    kwargs.pop("rtol"), kwargs.pop("atol"), kwargs.pop("tol"), kwargs.pop("forgive_ties")
    abt.assert_matches_oracle(ab.adabin_conv2d(**kwargs), op, **kwargs)


def test_compare_with_oracle_names_the_case_without_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("ADABIN_NP_CASE_DIR", str(tmp_path))
    x, w = _case(3)
    report = abt.compare_with_oracle(np.zeros((2, 4, 4, 4)), "adabin_conv2d", x, w, 0.8, 0.1)
    assert not report.ok and "case: adabin_conv2d(x=<float64 (2, 3, 6, 6)>" in str(report)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# strategies: values shrink, dtypes
# ----------------------------------------------------------------------------------------------

FIND = settings(database=None, derandomize=True, max_examples=2000,
                suppress_health_check=list(HealthCheck))


def test_weights_shrink_in_value():
    w = find(abt.weights((3, 2, 2, 2), kind="uniform"), lambda w: np.abs(w).max() > 0.15,
             settings=FIND)
    ramp = 0.2 * 0.1 * ((np.arange(8) + 1.0) / 8) ** 2
    differs = np.abs(w.reshape(3, 8) - ramp) > 1e-15
    assert differs.sum() == 1  # one element carries the failure, the rest shrank to 0


def test_activations_shrink_in_value():
    x = find(abt.activations((1, 2, 3, 3), 0.8, 0.1, kind="uniform", at_threshold=False),
             lambda x: (x < 0.1).any(), settings=FIND)
    plain = 0.1 + 0.8 * 0.37
    assert (np.abs(x - plain) > 1e-15).sum() == 1


def test_specials_shrink_away():
    x = find(abt.activations((1, 2, 3, 3), 0.8, 0.1), lambda x: (x == 0.1).any(),
             settings=FIND)
    assert (x == 0.1).sum() == 1 and (np.abs(x - (0.1 + 0.8 * 0.37)) > 1e-15).sum() == 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=__import__("hypothesis").strategies.data())
def test_conv_cases_in_every_dtype(dtype, data):
    case = data.draw(abt.conv_cases(dtype=dtype, weight_kind=None))
    for a in (case.x, case.w, case.grad_y):
        assert a.dtype == dtype and np.isfinite(a).all()
    for p in (case.alpha, case.beta):
        np.testing.assert_array_equal(np.asarray(p, dtype=dtype).astype(np.float64), p)
    ab.adabin_conv2d_grad(*case.grad_args, **case.kwargs)  # the oracle accepts it


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(abt.conv_cases(dtype=np.float16, weight_kind="realistic"))
def test_a_float16_implementation_passes_float16_cases(case):
    y = user_adabin_conv2d(*case.args, dtype=np.float16, **case.kwargs)
    abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        abt.weights((2, 3), dtype=np.int32)
