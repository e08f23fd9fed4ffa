"""One PackedWeights reused across many activation sets must never reuse stale cached data.

Issue 10, section 1: the per-channel-layout cache (kernel weight layout, per-tap popcounts,
border table) was keyed by word positions only, so a 64+128 segmentation followed by 128+64
silently reused the first one's popcounts (max |error| ~ 12 here). The class of bug is "a cache
key that does not identify what it caches"; the test that catches the class drives *one*
PackedWeights through long random sequences of activation sets (scalar, segmented with random
boundaries, fully per-channel, negative alpha, both conventions, several geometries) and
checks every call against a freshly packed PackedWeights (bit-identical) and against the float
path (continuous data: no exact ties, so both conventions agree with it).
"""

import numpy as np
import pytest

import adabin_np as ab

C = 192  # three words: segment boundaries at 64/128 produce identical word positions
RTOL = 1e-9


def _activation_set(rng, kind, c):
    if kind == "scalar":
        return rng.uniform(0.3, 2.0) * rng.choice([-1.0, 1.0]), rng.normal(0, 0.3)
    if kind == "split":  # two or three segments at word-aligned or ragged boundaries
        cuts = np.sort(rng.choice([32, 64, 65, 100, 128, 150], size=rng.integers(1, 3),
                                  replace=False))
        seg = np.searchsorted(cuts, np.arange(c), side="right")
        a_lv = rng.uniform(0.3, 2.0, size=len(cuts) + 1)
        b_lv = rng.normal(0, 0.3, size=len(cuts) + 1)
        return a_lv[seg], b_lv[seg]
    if kind == "swap":  # the reported collision: levels A on 0..k-1, B on the rest
        k = rng.choice([64, 128])
        seg = (np.arange(c) >= k).astype(int)
        return np.array([1.0, 2.0])[seg], np.array([-0.2, 0.1])[seg]
    if kind == "random":
        return rng.uniform(0.3, 2.0, size=c), rng.normal(0, 0.3, size=c)
    # negative / mixed-sign alpha, few levels
    a = rng.choice([0.5, -0.5, 1.5, -1.5], size=c)
    return a, rng.choice([-0.1, 0.2], size=c)


def _scale(x, w, alpha, beta):
    return (np.abs(x).max() + np.abs(beta).max() + np.abs(alpha).max()) \
        * np.abs(w).max() * w[0].size


@pytest.mark.parametrize("seed", [0, 1])
def test_one_packed_weights_through_random_activation_sets_conv(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, C, 3, 3))
    w[2] = 0.7  # a constant filter
    pw = ab.pack_weights(w)
    kinds = ["scalar", "split", "swap", "random", "negative"]
    geoms = [dict(padding=1), dict(padding=0), dict(padding=1, stride=2), dict(padding=2)]
    for step in range(36):
        kind = kinds[rng.integers(len(kinds))]
        alpha, beta = _activation_set(rng, kind, C)
        conv = ["paper", "official"][rng.integers(2)]
        geom = geoms[rng.integers(len(geoms))]
        x = rng.normal(size=(2, C, 5, 5))
        y = ab.packed_adabin_conv2d_prepacked(x, pw, alpha, beta, convention=conv, **geom)
        y_fresh = ab.packed_adabin_conv2d(x, ab.pack_weights(w), alpha, beta, convention=conv,
                                          **geom)
        np.testing.assert_array_equal(y, y_fresh, err_msg=f"step {step} {kind} {conv} {geom}")
        y_float = ab.adabin_conv2d(x, w, alpha, beta, convention=conv, **geom)
        np.testing.assert_allclose(y, y_float, rtol=0, atol=RTOL * _scale(x, w, alpha, beta),
                                   err_msg=f"step {step} {kind} {conv} {geom}")


def test_one_packed_weights_through_random_activation_sets_linear():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(10, C))
    pw = ab.pack_weights(w)
    kinds = ["scalar", "split", "swap", "random", "negative"]
    for step in range(30):
        kind = kinds[rng.integers(len(kinds))]
        alpha, beta = _activation_set(rng, kind, C)
        conv = ["paper", "official"][rng.integers(2)]
        x = rng.normal(size=(3, C))
        y = ab.packed_linear(x, pw, alpha, beta, convention=conv)
        np.testing.assert_array_equal(y, ab.packed_linear(x, w, alpha, beta, convention=conv))
        y_float = ab.adabin_linear(x, w, alpha, beta, convention=conv)
        np.testing.assert_allclose(y, y_float, rtol=0, atol=RTOL * _scale(x, w, alpha, beta),
                                   err_msg=f"step {step} {kind} {conv}")


def test_reported_64_128_collision():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, C, 6, 6))
    w = rng.normal(size=(8, C, 3, 3))
    pw = ab.pack_weights(w)
    for split in (64, 128, 64):
        a = np.where(np.arange(C) < split, 1.0, 2.0)
        b = np.where(np.arange(C) < split, -0.2, 0.1)
        y = ab.packed_adabin_conv2d(x, pw, a, b, padding=1)
        np.testing.assert_allclose(y, ab.adabin_conv2d(x, w, a, b, padding=1), rtol=0,
                                   atol=1e-9 * _scale(x, w, a, b))


@pytest.mark.parametrize("bad, err", [
    (np.zeros((2, 0, 3, 3)), ValueError),
    (np.zeros((0, 2)), ValueError),
    (np.zeros((2, 3, 3)), ValueError),
    (np.zeros(5), ValueError),
    (np.array([[1.0, np.nan]]), ValueError),
    (np.array([[1 + 1j, 2]]), TypeError),
    ("weights", TypeError),
    (None, TypeError),
])
def test_packed_weights_constructor_validates(bad, err):
    """PackedWeights is exported: its constructor validates like pack_weights (an empty axis
    used to reach the kernels and read out of bounds)."""
    with pytest.raises(err):
        ab.PackedWeights(bad)
    with pytest.raises(err):
        ab.pack_weights(bad)


def test_packed_weights_constructor_equals_pack_weights():
    w = np.random.default_rng(3).normal(size=(4, 5, 3, 3)).astype(np.float32)
    a, b = ab.PackedWeights(w), ab.pack_weights(w)
    np.testing.assert_array_equal(a.words, b.words)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    w[0, 0, 0, 0] = 100.0  # the object owns a copy
    np.testing.assert_array_equal(a.words, b.words)


# ----------------------------------------------------------------------------------------------
# the remembered-call fast path of packed_adabin_conv2d_prepacked
# ----------------------------------------------------------------------------------------------


def test_remembered_calls_never_skip_validation_or_serve_stale_results():
    """A call whose arguments were validated before is served from a per-weights cache (only the
    values of ``x`` are new). The class of bug this guards: a cache key that lets an argument
    the validating route would refuse (``True`` for ``1``, ``alpha = 0``, a bad convention) or a
    different argument (other dtype, strides, levels) reuse a remembered entry. Every call is
    compared bit for bit with the same call on a fresh PackedWeights (validating route)."""
    from adabin_np.packed import conv as P

    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 70, 3, 3))
    pw = ab.pack_weights(w)

    def fresh(x, *args, **kw):
        return ab.packed_adabin_conv2d_prepacked(x, ab.pack_weights(w), *args, **kw)

    calls = [((0.8, 0.05), dict(padding=1)), ((0.8, 0.05), dict(padding=1, stride=2)),
             ((1, 0), dict(padding=(1, 0))), ((-1.5, 0.25), dict(padding=1, dilation=2)),
             ((0.8, 0.05), dict(padding=1, convention="official")), ((2.5, -0.1), {})]
    for rnd in range(3):
        for dtype in (np.float32, np.float64):
            for (alpha, beta), kw in calls:
                x = rng.standard_normal((2, 70, 9, 8)).astype(dtype)
                y = ab.packed_adabin_conv2d_prepacked(x, pw, alpha, beta, **kw)
                assert y.dtype == dtype
                np.testing.assert_array_equal(y, fresh(x, alpha, beta, **kw))
    assert len(pw._fast_cache) == len(calls) * 2  # every call above qualified and was remembered
    x = rng.standard_normal((2, 70, 9, 8)).astype(np.float32)
    # arguments the validating route refuses are refused after a remembered equal-valued call
    with pytest.raises(TypeError, match="padding"):
        ab.packed_adabin_conv2d_prepacked(x, pw, 0.8, 0.05, padding=True)
    with pytest.raises(TypeError, match="stride"):
        ab.packed_adabin_conv2d_prepacked(x, pw, 0.8, 0.05, padding=1, stride=(2, True))
    with pytest.raises(ValueError, match="alpha"):
        ab.packed_adabin_conv2d_prepacked(x, pw, 0.0, 0.05, padding=1)
    with pytest.raises(ValueError, match="convention"):
        ab.packed_adabin_conv2d_prepacked(x, pw, 0.8, 0.05, padding=1, convention="Paper")
    with pytest.raises(TypeError):
        ab.packed_adabin_conv2d_prepacked(x, pw, True, 0.05, padding=1)
    bad = x.copy()
    bad[1, 3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ab.packed_adabin_conv2d_prepacked(bad, pw, 0.8, 0.05, padding=1)
    with pytest.raises(ValueError, match="channels"):
        ab.packed_adabin_conv2d_prepacked(x[:, :64].copy(), pw, 0.8, 0.05, padding=1)
    # other memory layouts and types take the validating route and agree with it
    for other in (np.asfortranarray(x), x.astype(">f4"), x[:, :, ::-1], x.astype(np.float16)):
        y = ab.packed_adabin_conv2d_prepacked(other, pw, 0.8, 0.05, padding=1)
        np.testing.assert_array_equal(y, fresh(np.array(other), 0.8, 0.05, padding=1))
    # -0.0 == 0.0 (and hash equal): the keys keep them apart
    k0 = P._fast_key(x, pw, 0.8, 0.0, 1, 1, 1, 1, "paper", "cpu", False)
    assert k0 != P._fast_key(x, pw, 0.8, -0.0, 1, 1, 1, 1, "paper", "cpu", False)
    from adabin_np.packed.arguments import _act_params

    assert np.signbit(_act_params(0.8, -0.0, 3)[1]).all()
    assert not np.signbit(_act_params(0.8, 0.0, 3)[1]).any()
    assert P._fast_key(x, pw, np.float64(0.8), 0.05, 1, 1, 1, 1, "paper", "cpu", False) is None
    assert P._fast_key(x, pw, 0.8, 0.05, 1, 1, 1, 1, "paper", "cpu", True) is None
