"""``weight_pack`` (the kernel behind ``PackedWeights``) is bit-identical to the float path.

``weight_pack`` computes the weight binary set of 8 rows at once in SIMD lanes, takes the
maximum deviation from each row's min/max and, for float32 input, sums the unscaled row while
transposing it (see its docstring for why each of these is exact). Everything it returns must
equal what the float path computes:

* ``alpha``, ``beta``: bit for bit (compared as float64 bit patterns) with
  ``weight_binary_set`` (``pow2_row_scale`` + ``kernels_cpu.weight_stats``);
* ``words``: with an independent plain-NumPy packing (no ``np.packbits``, no kernel) of
  ``s = u >= 0``, ``u = (W_s - beta_s)/alpha_s`` computed as ``weight_forward`` does on the
  scaled rows, all ones where ``alpha_s == 0``;
* ``ties``: with the count of ``u == 0`` in rows with ``alpha_s != 0``.

The property test draws shapes ``O`` 1..40 (not multiples of the 8-row block, ``O = 1``),
``Cg`` 1..150 (word tails), taps 1/4/9, float32/float64, and rows of several kinds: values from
a hypothesis-drawn pool (repeated values), Gaussian noise, dyadic values, planted ties (pairs
symmetric about a dyadic centre plus copies of it: the sequential mean is exactly the centre,
so those elements are exact ``u == 0`` ties), constant rows (including mixed +-0); each of
these rows then gets its own power-of-two scale over the whole exponent range (1e300 rows,
1e-300 rows, subnormal rows). Three kinds sit at the ends of the range as drawn: rows mixing
magnitudes 2^-1100 .. 2^1000 (the scaled small elements underflow and round), rows +M, +M, -M,
-M, .. with M ~ 1.5*2^1023 (the unscaled float64 partial sums overflow) and rows B, -B, small
values (scaled, the small values are subnormal and round). The last two are where summing the
unscaled float64 row, as ``weight_pack`` may do for float32, would not be exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adabin_np as ab
from adabin_np import kernels_packed as KP
from adabin_np.binarize import pow2_row_scale
from adabin_np.kernels_cpu import weight_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = settings(max_examples=150, deadline=None)

_KINDS = ("pool", "normal", "dyadic", "ties", "const", "zero", "spread", "huge_pairs",
          "cancel_tiny")
_UNSHIFTED = ("spread", "huge_pairs", "cancel_tiny")  # already at the ends of the range
# per-row power-of-two shift: keeps every element finite in the dtype (|values| < 2^3)
_EXP = {"float64": (-1080, 1020), "float32": (-160, 124)}
_SPREAD = {"float64": (-1100, 1000), "float32": (-160, 120)}


def _n_words(cg):
    return (cg + 63) // 64


def _bits64(a):
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _float_path_signs(w2):
    """``(s, ties)`` as the float path computes them: ``u`` on the power-of-two scaled rows."""
    w2s, _ = pow2_row_scale(np.asarray(w2, dtype=np.float64))
    a_s, b_s = weight_stats(w2s)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (w2s - b_s[:, None]) / a_s[:, None]
    degenerate = a_s[:, None] == 0.0
    return degenerate | (u >= 0), int(np.sum((u == 0) & ~degenerate))


def _pack_reference(s, cg, taps, n_words):
    """``words[o, t, q]``: bit ``b`` = ``s`` of input channel ``64*q + b`` at tap ``t``, tail 0
    (distinct powers of two summed = OR)."""
    o_ = s.shape[0]
    padded = np.zeros((o_, taps, n_words * 64), dtype=np.uint64)
    padded[:, :, :cg] = s.reshape(o_, cg, taps).transpose(0, 2, 1)
    shifts = np.arange(64, dtype=np.uint64)
    return (padded.reshape(o_, taps, n_words, 64) << shifts).sum(axis=-1, dtype=np.uint64)


def _check(w2, cg, taps, n_words=None):
    n_words = _n_words(cg) if n_words is None else n_words
    alpha, beta, words, ties = KP.weight_pack(w2, cg, taps, n_words)
    ra, rb = ab.weight_binary_set(w2.reshape(w2.shape[0], cg, taps))
    assert np.array_equal(_bits64(alpha), _bits64(ra)), (alpha, ra)
    assert np.array_equal(_bits64(beta), _bits64(rb)), (beta, rb)
    s, rties = _float_path_signs(w2)
    ref = _pack_reference(s, cg, taps, n_words)
    assert words.shape == ref.shape and words.dtype == np.uint64
    bad = np.argwhere(words != ref)
    assert bad.size == 0, f"{len(bad)} words differ, first at (o, t, q) = {bad[0]}"
    assert ties == rties
    return ties


def _row(kind, rng, n, pool, dtype):
    if kind == "pool":
        return pool[rng.integers(0, pool.size, size=n)]
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "dyadic":
        return rng.integers(-3, 4, size=n) / 4.0
    if kind == "ties":
        # pairs c +- d (dyadic) and copies of c in random order: every partial sum is a small
        # dyadic number (exact), so the mean is exactly c and the copies are u == 0 ties
        c = rng.integers(-16, 17) / 8.0
        k = int(rng.integers(0, n // 2 + 1))
        d = rng.integers(1, 17, size=k) / 8.0
        row = np.full(n, c)
        row[:k] += d
        row[k:2 * k] -= d
        return rng.permutation(row)
    if kind == "const":
        return np.full(n, pool[0])
    if kind == "zero":
        return np.where(rng.random(n) < 0.5, -0.0, 0.0)
    top = 1023 if dtype == "float64" else 127
    if kind == "huge_pairs":
        # +M, +M, -M, -M, ...: the unscaled float64 partial sums of float64 rows overflow
        signs = np.resize([1.0, 1.0, -1.0, -1.0], n)
        return np.ldexp(signs * (1.5 - rng.integers(0, 8, size=n) / 64.0), top)
    if kind == "cancel_tiny":
        # B, -B, then small values: the partial sum cancels to 0, the rest is the small values'
        # sum; scaled by 2^-e (e = top) they are subnormal and round (float64 rows). Copies of
        # 33/64 * 2^(top - 1074) each round up to 2^-1074 once scaled, so the float path's
        # mean of a short row is 2^-1074 where rescaling the unscaled sum would give 0.
        if rng.random() < 0.5:
            q = top - 1074 if dtype == "float64" else -149
            row = np.full(n, rng.choice([-1.0, 1.0]) * np.ldexp(33 / 64 if dtype == "float64"
                                                                else 3.0, q))
        else:
            lo, hi = (top - 1090, top - 1040) if dtype == "float64" else (-160, -120)
            row = np.ldexp(rng.standard_normal(n), rng.integers(lo, hi, size=n))
        row[:2] = [np.ldexp(1.0, top - 1), -np.ldexp(1.0, top - 1)][:n]
        return row
    lo, hi = _SPREAD[dtype]  # "spread": one row mixing 2^lo .. 2^hi magnitudes
    return np.ldexp(rng.standard_normal(n), rng.integers(lo, hi, size=n))


@st.composite
def _cases(draw):
    o_ = draw(st.integers(1, 40))
    cg = draw(st.integers(1, 150))
    taps = draw(st.sampled_from([1, 4, 9]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    pool = draw(hnp.arrays(np.float64, st.integers(1, 12),
                           elements=st.floats(-7.5, 7.5, allow_nan=False, allow_infinity=False)))
    kinds = draw(st.lists(st.sampled_from(_KINDS), min_size=o_, max_size=o_))
    exps = draw(hnp.arrays(np.int64, o_, elements=st.integers(*_EXP[dtype])))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = cg * taps
    w = np.empty((o_, n))
    for r, kind in enumerate(kinds):
        row = _row(kind, rng, n, pool, dtype)
        w[r] = row if kind in _UNSHIFTED else np.ldexp(row, exps[r])
    with np.errstate(over="ignore", under="ignore"):
        w = w.astype(dtype)
    w[~np.isfinite(w)] = 0.0
    return w, cg, taps


@SETTINGS
@given(case=_cases())
def test_weight_pack_matches_the_float_path(case):
    w2, cg, taps = case
    _check(w2, cg, taps)


def test_planted_ties_are_found():
    """The tie construction of the property test does produce exact ties (so the test above
    exercises ``u == 0``), in both dtypes and in rows that are not in the first block."""
    rng = np.random.default_rng(5)
    for dtype in ("float32", "float64"):
        w = np.stack([_row("ties", rng, 9 * 70, None, dtype) for _ in range(11)]).astype(dtype)
        assert _check(w, 70, 9) > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("o_", [1, 7, 8, 9, 17])
@pytest.mark.parametrize("cg,taps", [(1, 1), (1, 9), (63, 1), (64, 9), (65, 4), (129, 9)])
def test_block_and_word_edges(dtype, o_, cg, taps):
    rng = np.random.default_rng(o_ * 1000 + cg * 10 + taps)
    w = rng.integers(-3, 4, size=(o_, cg * taps)) / 4.0  # dyadic: exact ties
    w[o_ // 2] = 0.5  # a constant row
    w[-1, ::3] = rng.standard_normal(w[-1, ::3].shape)
    _check(w.astype(dtype), cg, taps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e300, 1e-310, 3e38, 1e-44])
def test_extreme_scales(dtype, scale):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((13, 3 * 9)) * scale
    w[2] = scale  # constant
    w[4, 5:] = -0.0  # zeros and -0 with a few values
    w[5] = np.ldexp(rng.standard_normal(27), rng.integers(*_SPREAD[dtype], size=27))
    with np.errstate(over="ignore", under="ignore"):
        w = w.astype(dtype)
    if not np.isfinite(w).all():
        pytest.skip("not representable in this dtype")
    _check(w, 3, 9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["huge_pairs", "cancel_tiny", "spread"])
def test_rows_at_the_ends_of_the_range(dtype, kind):
    """Rows whose unscaled float64 sum overflows or rounds differently from the scaled one
    (float64), and their float32 counterparts (where the fused unscaled sum is exact)."""
    rng = np.random.default_rng(8)
    for cg, taps in ((70, 1), (23, 9), (6, 1), (2, 4)):
        w = np.stack([_row(kind, rng, cg * taps, None, dtype) for _ in range(11)])
        with np.errstate(over="ignore", under="ignore"):
            w = w.astype(dtype)
        assert np.isfinite(w).all()
        _check(w, cg, taps)


def _sequential_mean(row):
    acc = 0.0
    for v in row.tolist():
        acc += v
    return acc / row.size


@pytest.mark.parametrize("n", [6, 9, 18])
def test_rounded_mean_outside_the_row_range(n):
    """Copies of ``x`` with one or two elements 1-3 ulps lower: for some ``x`` the rounded
    sequential mean lands above the row's maximum (negated rows: below the minimum).
    ``max|W - m|`` must then come from the far end of the range, as the float path's
    ``max(|W - m|)`` has it; with two distinct lower values ``alpha`` depends on getting it
    right. (float64 only: float32 rows near 1 sum exactly in float64, their mean stays in
    range.)"""
    eps = np.finfo(np.float64).eps
    rows = []
    for j in range(1, 300):
        x = 1.0 + j * eps
        for low in (None, x - 2 * eps, x - 3 * eps):
            row = np.full(n, x)
            row[j % n] = np.nextafter(x, -np.inf)
            if low is not None:
                row[(7 * j) % n] = low
            if _sequential_mean(row) > row.max():
                rows += [row, -row]
    assert len(rows) >= 20, "too few rows with their rounded mean outside their range"
    w = np.stack(rows)
    _check(w, n, 1)
    _check(w, n // 3, 3)


def test_extra_words_are_zero():
    """``n_words`` beyond ``ceil(Cg/64)``: the extra words are 0, also for a constant row."""
    w = np.random.default_rng(2).standard_normal((9, 70 * 4))
    w[3] = 1.5
    _check(w, 70, 4, n_words=3)


def test_non_contiguous_input():
    w = np.random.default_rng(4).standard_normal((10, 2 * 30 * 4))[:, ::2]
    alpha, beta, words, ties = KP.weight_pack(w, 30, 4, 1)
    ref = KP.weight_pack(np.ascontiguousarray(w), 30, 4, 1)
    for a, b in zip((alpha, beta, words, ties), ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "middle", "last", "whole_row", "constant_row"])
def test_non_finite_weights_are_refused(dtype, bad, where):
    """NaN/inf anywhere gives a non-finite beta (it reaches the sum even though min/max skip
    NaN), so ``PackedWeights`` raises instead of packing garbage."""
    w = np.random.default_rng(6).standard_normal((10, 5, 3, 3)).astype(dtype)
    row = w[9].reshape(-1)
    if where == "whole_row":
        row[:] = bad
    elif where == "constant_row":  # min == max over the other elements: still not constant
        row[:] = 0.75
        row[30] = bad
    else:
        row[{"first": 0, "middle": 22, "last": -1}[where]] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        ab.pack_weights(w)


def test_inconsistent_arguments_are_refused():
    w = np.zeros((3, 18))
    for cg, taps, n_words in ((2, 8, 1), (0, 9, 1), (130, 1, 2)):
        with pytest.raises(ValueError, match="weight_pack"):
            KP.weight_pack(w, cg, taps, n_words)


_BASELINE_FEATURES = "+64bit,+sse,+sse2,+cmov,+cx8,+fxsr,+mmx"


def test_baseline_x86_64_build_in_a_subprocess():
    """The lane kernels are plain LLVM vector IR: compiled for a bare x86-64 (SSE2) they give
    the same results as the float path."""
    script = textwrap.dedent("""
        import numpy as np
        import tests.test_weight_pack_exact as T
        rng = np.random.default_rng(0)
        for dtype in ("float32", "float64"):
            for o_, cg, taps in ((1, 1, 1), (9, 65, 9), (20, 70, 4)):
                w = np.stack([T._row(k, rng, cg * taps, np.array([0.25, -1.0]), dtype)
                              for k in (T._KINDS * 3)[:o_]])
                with np.errstate(over="ignore", under="ignore"):
                    w = w.astype(dtype)
                w[~np.isfinite(w)] = 0.0
                T._check(w, cg, taps)
        print("BASELINE-OK")
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES=_BASELINE_FEATURES)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "BASELINE-OK" in res.stdout, res.stdout + res.stderr[-3000:]
