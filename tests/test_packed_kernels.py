"""The packed kernels one by one (Larq Compute Engine style: every microkernel over the same
grid, bit-exact against a plain NumPy reference and against each other).

* each register-blocked tile (``tile_6x32_avx512``, ``tile_4x8_avx2``) against a NumPy
  XOR/popcount sum, over taps, word ranges and offsets;
* whole convolutions with each tile forced (``ADABIN_NP_TILE``) are bit-identical;
* the AVX2 code path compiled for an AVX2-only CPU (``NUMBA_CPU_NAME=haswell`` with AVX-512
  features off, in a subprocess) selects the AVX2 tile, emits no ``zmm``/``vpopcntq`` and
  matches the float path;
* ``weight_pack`` (one-pass weight set + signs) is bit-identical to ``weight_binary_set`` and
  the float path's signs, for float32/float64 and scales 1e-310 .. 1e300;
* float32 activations: the dtype-exact thresholds give the float path's bits right at
  ``beta`` and its float32 neighbours, for both signs of alpha and ``|alpha| >= 2``;
* the two activation packs (per-channel word form, bit-block form) give the same words and
  counts.
"""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import adabin_np as ab
from adabin_np import kernels_packed as KP
from adabin_np import packed as P
from adabin_np.packed import arguments as PA
from adabin_np.packed import cpu as PC
from adabin_np.packed import layout as PL
from adabin_np.binarize import pow2_row_scale
from adabin_np.kernels_cpu import weight_stats
from adabin_np.kernels_packed import microkernel as MK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _popc(a):
    a = np.asarray(a, dtype=np.uint64)
    return np.unpackbits(a.view(np.uint8)).reshape(a.shape + (64,)).sum(-1).astype(np.int64)


@pytest.mark.parametrize("variant,single", [(v, s) for v in sorted(MK.TILES)
                                            for s in (False, True)])
@pytest.mark.parametrize("taps,wgm,q0,nq", [(1, 1, 0, 1), (9, 1, 0, 1), (9, 3, 1, 2),
                                            (4, 8, 0, 8), (2, 5, 4, 1), (9, 3, 2, 1)])
def test_tile_matches_numpy(variant, single, taps, wgm, q0, nq):
    """Every tile, and its one-word (``nq == 1``) variant where that applies."""
    name, tp, jb = MK.TILES[variant]
    if single and nq != 1:
        pytest.skip("the one-word variant serves nq == 1 only")
    tile = getattr(MK, name + "_w1" if single else name)
    rng = np.random.default_rng(taps * 31 + wgm)
    xa = rng.integers(0, 2**63, size=200, dtype=np.int64).view(np.uint64) * np.uint64(3)
    offs = rng.integers(0, 200 - wgm, size=taps * tp).astype(np.int64)
    wb = rng.integers(0, 2**63, size=7 + taps * wgm * jb, dtype=np.int64).view(np.uint64)
    stride = 13 + tp  # channel-major rows; the tile writes 8 - tp lanes past its pixels
    xout = np.full(5 + jb * stride, -1, dtype=np.int32)
    aout = np.full(3 + tp, -1, dtype=np.int64)

    from numba import njit

    @njit
    def call(xa, offs, wb, xout, aout):
        tile(xa, offs, 0, tp, wb, 7, taps, wgm, q0, nq, xout, 5, stride, aout, 3)

    call(xa, offs, wb, xout, aout)
    want = np.zeros((tp, jb), dtype=np.int64)
    want_a = np.zeros(tp, dtype=np.int64)
    for t in range(taps):
        for p in range(tp):
            for q in range(q0, q0 + nq):
                row = wb[7 + (t * wgm + q) * jb:7 + (t * wgm + q + 1) * jb]
                want[p] += _popc(xa[offs[t * tp + p] + q] ^ row)
                want_a[p] += bin(int(xa[offs[t * tp + p] + q])).count("1")
    rows = xout[5:].reshape(jb, stride)
    np.testing.assert_array_equal(rows[:, :tp].T, want)
    np.testing.assert_array_equal(aout[3:], want_a)
    assert np.all(xout[:5] == -1) and np.all(aout[:3] == -1)  # nothing before the bases
    # padding lanes (zeros) go only into the next tile's first entries, never further
    lanes = 8 if variant == 0 else 4
    assert np.all(rows[:, tp:lanes] == 0) and np.all(rows[:, max(tp, lanes):] == -1)


@pytest.mark.parametrize("case", [
    dict(c=64, o=40, h=9, k=3, stride=1, pad=1, groups=1, per_channel=False),
    dict(c=130, o=9, h=6, k=3, stride=2, pad=1, groups=1, per_channel=True),
    dict(c=12, o=6, h=7, k=5, stride=1, pad=2, groups=3, per_channel=False),
    dict(c=70, o=33, h=5, k=1, stride=1, pad=0, groups=1, per_channel=True),
])
def test_every_tile_gives_identical_convolutions(case, monkeypatch):
    rng = np.random.default_rng(case["c"])
    c, g = case["c"], case["groups"]
    x = rng.standard_normal((2, c, case["h"], case["h"])).astype(np.float32)
    w = rng.standard_normal((case["o"], c // g, case["k"], case["k"]))
    if case["per_channel"]:
        alpha, beta = rng.choice([0.5, -1.5, 3.0], c), rng.choice([-0.1, 0.2], c)
    else:
        alpha, beta = 0.8, 0.05
    kw = dict(stride=case["stride"], padding=case["pad"], groups=g)
    ys = []
    for tile in ("avx512", "avx2"):
        monkeypatch.setenv("ADABIN_NP_TILE", tile)
        ys.append(P.packed_adabin_conv2d(x, w, alpha, beta, **kw))
        ys.append(P.packed_conv_counts(x, w, alpha, beta, **kw))
    np.testing.assert_array_equal(ys[0], ys[2])
    for a, b in zip(ys[1], ys[3]):
        np.testing.assert_array_equal(a, b)
    y_float = ab.adabin_conv2d(x, w, alpha, beta, **kw)
    np.testing.assert_allclose(ys[0], y_float, rtol=2e-6, atol=1e-5 * np.abs(y_float).max())


def test_bad_tile_override_is_refused(monkeypatch):
    monkeypatch.setenv("ADABIN_NP_TILE", "avx9000")
    with pytest.raises(ValueError, match="ADABIN_NP_TILE"):
        P.packed_adabin_conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), 1.0, 0.0)


_AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
                  "+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f,"
                  "-avx512bw,-avx512cd,-avx512dq,-avx512vl,-avx512vpopcntdq,-avx512bitalg")


def test_avx2_only_cpu_path_in_a_subprocess():
    """Numba compiles for NUMBA_CPU_NAME/NUMBA_CPU_FEATURES (and caches per CPU): an AVX2-only
    target must pick the AVX2 tile, contain no AVX-512 instruction and be exact."""
    script = textwrap.dedent("""
        import numpy as np, adabin_np as ab
        from adabin_np import packed as P, kernels_packed as KP
        assert KP.target_cpu() == ("haswell", "avx2"), KP.target_cpu()
        assert KP.select_tile()[0] == 1
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 70, 6, 6))
        w = rng.standard_normal((20, 70, 3, 3))
        for a, b in ((0.7, 0.1), (rng.uniform(0.5, 2, 70), rng.normal(0, .1, 70))):
            y = P.packed_adabin_conv2d(x, w, a, b, padding=1)
            yf = ab.adabin_conv2d(x, w, a, b, padding=1)
            assert np.allclose(y, yf, rtol=1e-9, atol=1e-9 * np.abs(yf).max()), "mismatch"
        # all microkernels, compiled fresh (uncached) for this target: no AVX-512 in them
        from numba import njit
        from adabin_np.kernels_packed import microkernel as MK

        @njit
        def both(xa, offs, wb, xout, aout):
            MK.tile_6x32_avx512(xa, offs, 0, 6, wb, 0, 9, 2, 0, 2, xout, 0, 14, aout, 600)
            MK.tile_4x8_avx2(xa, offs, 0, 6, wb, 0, 9, 2, 0, 2, xout, 0, 14, aout, 600)
            MK.tile_6x32_avx512_w1(xa, offs, 0, 6, wb, 0, 9, 2, 0, 1, xout, 0, 14, aout, 600)
            MK.tile_4x8_avx2_w1(xa, offs, 0, 6, wb, 0, 9, 2, 0, 1, xout, 0, 14, aout, 600)

        u8, i8, i4 = np.zeros(4096, np.uint64), np.zeros(4096, np.int64), np.zeros(4096, np.int32)
        both(u8, i8, u8, i4, i8)
        asm = "".join(both.inspect_asm().values())
        assert "zmm" not in asm and "vpopcntq" not in asm, "AVX-512 code for an AVX2 CPU"
        assert "vpshufb" in asm and "ymm" in asm, "no AVX2 vector popcount"
        print("AVX2-OK")
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=_AVX2_FEATURES)
    env.pop("ADABIN_NP_TILE", None)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "AVX2-OK" in res.stdout, res.stdout + res.stderr[-3000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e300, 1e-310, 3.0e38])
def test_weight_pack_is_bit_identical_to_the_float_path(dtype, scale):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((9, 70, 3, 3))
    w[1] = 0.25                    # constant filter
    w[2, :, 1, 1] = w[2].mean()    # not a tie in general; exercise the u >= 0 rule anyway
    w[3] = rng.integers(-2, 3, size=w[3].shape) / 4.0  # dyadic: exact ties u == 0 happen
    with np.errstate(over="ignore"):
        w = (w * scale).astype(dtype)
    if not np.isfinite(w).all() or (dtype == np.float32 and scale < 1e-30):
        pytest.skip("not representable in this dtype")
    w2 = w.reshape(9, -1)
    alpha, beta, words, ties = KP.weight_pack(w2, 70, 9, 2)
    ra, rb = ab.weight_binary_set(w)
    np.testing.assert_array_equal(alpha, ra)
    np.testing.assert_array_equal(beta, rb)
    w2s, _ = pow2_row_scale(w2.astype(np.float64))
    a_s, b_s = weight_stats(w2s)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (w2s - b_s[:, None]) / a_s[:, None]
    s = np.where(a_s[:, None] == 0, True, u >= 0).reshape(w.shape)
    np.testing.assert_array_equal(
        words.reshape(9, 3, 3, 2), P.pack_bits(np.where(s, 1.0, -1.0).transpose(0, 2, 3, 1)))
    assert ties == int(np.sum((u == 0) & (a_s[:, None] != 0)))


@pytest.mark.parametrize("alpha", [0.7, -0.7, 2.5, -3.0])
@pytest.mark.parametrize("beta", [0.1, 0.25, -1e-40, 3.5e38, -1e300, 0.0])
def test_float32_thresholds_match_the_float64_rule(alpha, beta):
    b32 = np.float32(beta) if abs(beta) < 3e38 else np.float32(3e38)
    cands = [b32, np.nextafter(b32, np.float32(np.inf)), np.nextafter(b32, np.float32(-np.inf)),
             np.float32(0.0), np.float32(-0.0), np.float32(1.0), np.float32(-1.0),
             np.float32(3.4e38), np.float32(-3.4e38), np.float32(1e-45), np.float32(-1e-45)]
    x = np.array(cands, dtype=np.float32).reshape(1, 1, 1, -1)
    v = (x.astype(np.float64) - beta) / alpha
    want = v >= 0
    xa, ties = PC._pack_input(x, np.array([alpha]), np.array([beta]),
                             PL._act_plan(np.array([alpha]), np.array([beta]), 1, False, x.dtype))
    got = (xa[:-1, 0] & np.uint64(1)).astype(bool)
    np.testing.assert_array_equal(got, want.reshape(-1))
    assert ties == int(np.sum(v == 0))
    assert xa[-1, 0] == 0  # the zero pixel for padded taps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c,h,w,groups,levels", [
    (1, 3, 1, 1, 1, "one"), (2, 64, 8, 8, 1, "one"), (1, 70, 9, 7, 1, "per-channel"),
    (2, 130, 5, 40, 2, "per-channel"), (1, 64, 56, 56, 1, "one"), (3, 33, 7, 7, 1, "modes"),
    (1, 128, 13, 11, 2, "modes"),
])
def test_both_activation_packs_give_the_same_words(dtype, n, c, h, w, groups, levels):
    """``pack_activations`` (per-channel word read-modify-write, chosen on AVX-512) and
    ``pack_activations_blocks`` (64-pixel bit blocks + a 64 x 64 bit transpose, chosen on AVX2)
    must give the same words, zero pixels, tie count and non-finite count on any input:
    planes shorter than a block, tails that would read into the next plane or past the end of
    ``x``, several words and channel layouts, both comparison directions, the dividing mode of
    ``|alpha| >= 2``, exact ties and NaN/inf."""
    rng = np.random.default_rng(c * h + w + groups)
    if levels == "one":
        alpha_c, beta_c = np.full(c, 0.8), np.full(c, 0.25)
    elif levels == "per-channel":
        alpha_c, beta_c = rng.choice([0.5, -0.75, 1.25], c), rng.choice([-0.5, 0.0, 0.25], c)
    else:
        alpha_c, beta_c = rng.choice([0.5, -0.75, 2.5, -3.0], c), rng.choice([0.125, -1e-3], c)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    flat = x.reshape(n, c, -1)
    ties_at = rng.random(flat.shape) < 0.05
    ties_at[:, :, 0] = True  # right after the previous plane's tail block
    flat[ties_at] = np.broadcast_to(beta_c[None, :, None], flat.shape)[ties_at].astype(dtype)
    act = PL._act_plan(alpha_c, beta_c, groups, False, x.dtype)
    layout = act.layout
    chunk = PC._h_chunk(h, n * layout.n_words)
    for bad_values in ([], [np.nan], [np.inf, -np.inf, np.nan]):
        xb = x.copy()
        # at plane starts where there are (a tail block of the previous plane reads them)
        starts = np.arange(1, n * c) * h * w
        at = (starts[:len(bad_values)] if starts.size >= len(bad_values)
              else rng.choice(xb.size, len(bad_values), replace=False))
        xb.reshape(-1)[at] = bad_values
        out = []
        for kern in (KP.pack_activations, KP.pack_activations_blocks):
            xa = np.full((n * (h * w + 1), layout.n_words), 0xDEAD, dtype=np.uint64)
            ties, bad = kern(xb, act.mode, act.thr, act.tie, alpha_c, beta_c, layout.word_ptr,
                             layout.word_chans, xa, chunk)
            out.append((xa, ties, bad))
        (xa1, t1, b1), (xa2, t2, b2) = out
        np.testing.assert_array_equal(xa1, xa2)
        assert (t1, b1) == (t2, b2)
        assert b1 == len(bad_values)
        if not bad_values:
            assert t1 == int(ties_at.sum()) or levels != "one"
        zero_rows = np.arange(1, n + 1) * (h * w + 1) - 1
        assert not xa1[zero_rows].any()


def test_roofline_probe_runs_every_tile():
    for variant in MK.TILES:
        res = KP.popcount_roofline(variant, 9, 2, 5, 2)
        assert res.shape == (2,) and np.all(res > 0)
        np.testing.assert_array_equal(res, KP.popcount_roofline(variant, 9, 2, 5, 2))


# ----------------------------------------------------------------------------------------------
# work split and epilogue forms: every task shape gives the same bits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", ["avx512", "avx2"])
@pytest.mark.parametrize("case", [
    # (N, C, H, W, O, kernel, stride, pad, per-channel levels); output widths below and above
    # the per-pixel-table width (32), several weight blocks, segments
    (2, 70, 9, 7, 70, 3, 1, 1, False),
    (2, 64, 5, 40, 40, 3, 1, 1, False),
    (1, 70, 8, 9, 33, 3, 2, 1, True),
    (3, 130, 6, 35, 65, 1, 1, 0, False),
    (1, 40, 9, 70, 20, 3, 2, 1, False),
    (1, 33, 7, 40, 24, 5, 1, 2, False),
])
def test_every_work_split_and_fused_epilogue_give_the_same_bits(tile, case, monkeypatch):
    """The kernel's task split (output rows per task x weight blocks per task, chosen from the
    thread count) and the rescale-table form (per pixel for short rows, per row class else)
    must not change a single bit: tiles store whole vectors past their pixels (overwritten by
    the next tile or landing in row padding), so a split that lets one task's tile write into
    another's pixels, or a table indexed with the wrong run offset, shows up here. The fused
    residual + Maxout epilogue is checked against the unfused output composed in float64. With
    row tables the epilogue writes a task's pixels with the interior class's table entries and
    then patches the border pixels (``PC._BORDER_PATCH``): switched off, every bit is the
    same; so is it when the tasks build their tap offsets themselves instead of reading the
    call plan's image-relative table (``PC._OFFSET_TABLE_BYTES = 0``)."""
    monkeypatch.setenv("ADABIN_NP_TILE", tile)
    n, c, h, w_, o, k, s, pad, per_channel = case
    rng = np.random.default_rng(c + o + h)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((o, c, k, k))
    if per_channel:
        alpha, beta = rng.choice([0.5, -1.5, 3.0], c), rng.choice([-0.1, 0.2], c)
    else:
        alpha, beta = 0.8, 0.05
    pw = P.pack_weights(w)
    ref = P.packed_adabin_conv2d_prepacked(x, pw, alpha, beta, stride=s, padding=pad)
    alpha_c, beta_c = PA._act_params(alpha, beta, c)
    p = PA._conv_params(x.shape, pw.shape, s, pad, 1, 1)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    mo = (rng.uniform(0.5, 2, o), rng.uniform(-0.5, 0.5, o))
    v = ref.astype(np.float64) + res
    fused_ref = np.where(v > 0, mo[0][None, :, None, None] * v, mo[1][None, :, None, None] * v)
    counts_ref = P.packed_conv_counts(x, w, alpha, beta, stride=s, padding=pad)
    n_blk = -(-o // KP.select_tile()[2])
    splits = {(r, b) for r in range(1, p.out_h + 1) for b in range(1, n_blk + 1)}
    for rows, bpt in sorted(splits):
        monkeypatch.setattr(PC, "_work_split", lambda *a, _r=rows, _b=bpt, **k: (_r, _b))
        pw._call_cache.clear()  # the split is part of the cached call plan
        y, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False)
        assert next(iter(pw._call_cache.values()))[0][-2:] == (rows, bpt)
        np.testing.assert_array_equal(y, ref, err_msg=f"split {rows} rows x {bpt} blocks")
        monkeypatch.setattr(PC, "_BORDER_PATCH", [False])
        pw._call_cache.clear()
        y0, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False)
        y0f, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False, residual=res, maxout=mo)
        monkeypatch.setattr(PC, "_BORDER_PATCH", [True])
        pw._call_cache.clear()
        np.testing.assert_array_equal(y0, ref, err_msg=f"no border patch, split {rows} x {bpt}")
        monkeypatch.setattr(PC, "_OFFSET_TABLE_BYTES", 0)  # offsets built per task instead
        y1, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False)
        monkeypatch.setattr(PC, "_OFFSET_TABLE_BYTES", 8 << 20)
        pw._call_cache.clear()
        np.testing.assert_array_equal(y1, ref, err_msg=f"per-task offsets, split {rows} x {bpt}")
        y2, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False, residual=res, maxout=mo)
        # fused: computed in float64, rounded once; the composition above rounds ref first,
        # so compare at float32 resolution
        np.testing.assert_allclose(y2, fused_ref, rtol=2e-6, atol=1e-5 * np.abs(v).max(),
                                   err_msg=f"fused, split {rows} x {bpt}")
        np.testing.assert_array_equal(y2, y0f,
                                      err_msg=f"fused, border patch, split {rows} x {bpt}")
        counts = PC._run_cpu(x, pw, alpha_c, beta_c, p, False, raw=True)
        for a, b in zip(counts, counts_ref):
            np.testing.assert_array_equal(a, b, err_msg=f"raw counts, split {rows} x {bpt}")
    # the tasks run in one contiguous run per thread, each reusing its scratch buffers: any
    # thread count gives the same bits
    monkeypatch.undo()
    monkeypatch.setenv("ADABIN_NP_TILE", tile)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(3, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            pw._call_cache.clear()
            y, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False)
            np.testing.assert_array_equal(y, ref, err_msg=f"{threads} thread(s)")
            y2, _ = PC._run_cpu(x, pw, alpha_c, beta_c, p, False, residual=res, maxout=mo)
            np.testing.assert_allclose(y2, fused_ref, rtol=2e-6, atol=1e-5 * np.abs(v).max())
    finally:
        numba.set_num_threads(before)
        pw._call_cache.clear()
