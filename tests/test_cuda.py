"""CUDA target (:mod:`adabin_np.cuda`) against the CPU kernels and the naive reference.

How the CUDA simulator is selected (read this before touching the module header)
--------------------------------------------------------------------------------
Numba picks the real CUDA target or its simulator once per process, when :mod:`numba.cuda` is
first imported, from ``numba.core.config.ENABLE_CUDASIM``. That config value is read from
``NUMBA_ENABLE_CUDASIM`` when *numba* (not numba.cuda) is imported -- which every other test
module does through ``adabin_np`` -- and re-read by ``reload_config()`` whenever the
environment's ``NUMBA_*`` variables change (Numba's compiler calls it before every compile).
Hence, at collection time, this module:

1. if :mod:`numba.cuda` has not been imported yet (the normal case: no other module of the
   package or the test-suite imports it at import time), sets ``NUMBA_ENABLE_CUDASIM=1``,
   calls ``numba.core.config.reload_config()`` and imports :mod:`numba.cuda` right away, so
   the simulator is locked in for the rest of the session. The variable is deliberately left
   set: un-setting it would make the next ``reload_config()`` flip ``ENABLE_CUDASIM`` back to 0
   while :mod:`numba.cuda` is already the simulator, and later ``cuda.jit`` calls would then
   mix the two targets. Other test modules are unaffected (nothing else uses numba.cuda;
   ``device="cuda"`` calls elsewhere would simply run in the simulator too);
2. if :mod:`numba.cuda` was already imported as the real target (some plugin or earlier module
   imported it) and there is no GPU, the in-process tests are skipped and
   :func:`test_simulator_suite_in_subprocess` re-runs this file in a fresh interpreter with
   ``NUMBA_ENABLE_CUDASIM=1`` (so the file is robust in any full ``pytest`` run).

Set ``ADABIN_CUDA_TESTS_ON_GPU=1`` to run the same tests on a real GPU instead (nothing is
forced then). The simulator executes every CUDA thread as a Python thread, so shapes here are
tiny and the launches few; the whole file runs in well under 90 s on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

_ON_GPU = os.environ.get("ADABIN_CUDA_TESTS_ON_GPU") == "1"
if importlib.util.find_spec("numba_cuda") is None:  # numba's own numba.cuda cannot run them
    import pytest

    pytest.skip("numba-cuda is not installed (pip install numba-cuda; .ci/run installs it)",
                allow_module_level=True)
if not _ON_GPU and "numba.cuda" not in sys.modules:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # kept for the whole session (see docstring)
    import numba.core.config

    numba.core.config.reload_config()
    import numba.cuda  # noqa: F401  -- locks in the simulator now, at collection time

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import adabin_np as ab  # noqa: E402
from adabin_np import cuda as C  # noqa: E402
from adabin_np.validation import activation_params, conv_params  # noqa: E402
from reference import spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IN_PROCESS = C.is_available() and (C.is_simulator() or _ON_GPU)
needs_cuda = pytest.mark.skipif(not IN_PROCESS, reason="numba.cuda was imported before this "
                                "module without a GPU; see test_simulator_suite_in_subprocess")

try:  # CPU bit-packed path (adabin_np/packed.py); compared against when present
    from adabin_np import packed as cpu_packed
except ImportError:  # pragma: no cover - depends on the state of the package
    cpu_packed = None

CONVENTIONS = ("paper", "official")
RTOL = 1e-12


def _env_without_sim():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------


def test_simulator_suite_in_subprocess():
    """Fallback: when this process cannot use the simulator, run the file in a fresh one."""
    if IN_PROCESS:
        pytest.skip("the CUDA tests run in this process")
    env = _env_without_sim()
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    env.pop("ADABIN_CUDA_TESTS_ON_GPU", None)     # the simulator run, not a GPU run
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__).resolve())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


_UNAVAILABLE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import adabin_np
    from adabin_np.validation import activation_params, conv_params
    t0 = time.perf_counter()
    import adabin_np.cuda as C
    import_s = time.perf_counter() - t0
    imported_numba_cuda = "numba.cuda" in sys.modules
    out = {"import_s": import_s, "imported_numba_cuda": imported_numba_cuda,
           "available": C.is_available(), "errors": {}}
    if not out["available"]:
        x = np.ones((1, 2, 3, 3)); w = np.ones((2, 2, 1, 1))
        a, b, _ = activation_params(1.0, 0.0, 2)
        calls = {
            "binarize_activations_cuda": lambda: C.binarize_activations_cuda(x, 1.0, 0.0),
            "binarize_activations_grad_cuda":
                lambda: C.binarize_activations_grad_cuda(x, 1.0, 0.0, x),
            "weight_binary_set_cuda": lambda: C.weight_binary_set_cuda(w),
            "binarize_weights_cuda": lambda: C.binarize_weights_cuda(w),
            "binarize_weights_grad_cuda": lambda: C.binarize_weights_grad_cuda(w, w),
            "pack_bits_cuda": lambda: C.pack_bits_cuda(x),
            "pack_weight_bits_cuda": lambda: C.pack_weight_bits_cuda(w),
            "packed_adabin_conv2d_cuda": lambda: C.packed_adabin_conv2d_cuda(
                x, w, a, b, conv_params(x.shape, w.shape, 1, 0, 1, 1), False),
        }
        for name, call in calls.items():
            try:
                call()
                out["errors"][name] = None
            except Exception as exc:
                out["errors"][name] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
""")


def test_unavailable_raises_cleanly():
    """Without a GPU and without NUMBA_ENABLE_CUDASIM: cheap import, False, RuntimeError."""
    proc = subprocess.run([sys.executable, "-c", _UNAVAILABLE_SCRIPT], cwd=ROOT,
                          env=_env_without_sim(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["imported_numba_cuda"], "importing adabin_np.cuda must not import numba.cuda"
    assert out["import_s"] < 0.5
    if out["available"]:
        pytest.skip("a real CUDA GPU is present: nothing to refuse")
    assert len(out["errors"]) == 8
    for name, err in out["errors"].items():
        assert err is not None, f"{name} did not raise"
        kind, msg = err
        assert kind == "RuntimeError", (name, err)
        assert "no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set" in msg, (name, msg)


def test_ptx_report_properties():
    """Compiled for sm_90 (no GPU needed): what ``ptx_report`` reads off NVVM + ``ptxas -v``.

    Both convolutions: no stack, no local-memory instructions, no spills, ``popc.b64`` on
    whole words, registers within the cap that gives 50% theoretical occupancy; no kernel has
    a 64-bit integer division. Skips when the nvcc/nvrtc wheels (libNVVM, ptxas) are absent.
    """
    try:
        report = C.ptx_report(cc=(9, 0))
    except RuntimeError as exc:
        if "install" in str(exc):
            pytest.skip(f"CUDA compiler wheels absent: {exc}")
        raise
    by_name = {r["name"]: r for r in report}
    assert set(by_name) == set(C.kernel_signatures())
    for r in report:
        assert r["arch"] == "sm_90" and r["registers"] is not None, r
        assert r["stack_bytes"] == 0 and r["local_ops"] == 0, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["div64"] == 0, r
    for name in ("packed_conv_scalar", "packed_conv_perchannel"):
        r = by_name[name]
        assert r["popc64"] > 0 and r["popc64"] == r["popc"], r
        assert r["registers"] <= 64, r
        # 32- and 64-thread blocks (what conv_geometry launches) with a typical tile
        assert C.theoretical_occupancy(64, r["registers"], 8192) >= 0.5, r
        assert C.theoretical_occupancy(32, r["registers"], 4096) >= 0.5, r


def test_ptx_report_errors(monkeypatch):
    from adabin_np.cuda import report

    with pytest.raises(ValueError, match="cc"):
        C.ptx_report(cc=9)
    with pytest.raises(ValueError, match="unknown kernel"):
        C.ptx_report(kernels=["nope"])
    monkeypatch.setattr(report, "find_ptxas", lambda: None)
    with pytest.raises(RuntimeError, match="pip install nvidia-cuda-nvcc-cu12"):
        report._report_in_process((9, 0), ["act_forward"])

    # libNVVM missing: numba-cuda's compile raises; the report names the wheels instead
    import numba.cuda

    class NvvmSupportError(Exception):
        pass

    def no_nvvm(*args, **kwargs):
        raise NvvmSupportError("libNVVM cannot be found. Do `conda install cudatoolkit`")

    monkeypatch.setattr(report, "find_ptxas", lambda: "/bin/true")
    monkeypatch.setattr(numba.cuda, "compile_ptx", no_nvvm, raising=False)
    with pytest.raises(RuntimeError, match="NVVM.*pip install nvidia-cuda-nvcc-cu12"):
        report._report_in_process((9, 0), ["act_forward"])


def test_every_kernel_has_a_signature():
    """ptx_report compiles every @cuda.jit kernel of the module (none forgotten)."""
    src = (ROOT / "adabin_np" / "cuda" / "kernels.py").read_text()
    import re

    jitted = set(re.findall(r"@cuda\.jit\((?:cache=True[^)]*)\)\ndef (\w+)", src))
    assert jitted == set(C.kernel_signatures())


#: (batch, C in, C out, output side, kernel) of ResNet-18's binary convolutions at 224x224
RESNET18_CONVS = [(b, ci, co, hw, k) for b in (1, 8) for ci, co, hw, k in [
    (64, 64, 56, 3), (64, 128, 28, 3), (128, 128, 28, 3), (128, 256, 14, 3),
    (256, 256, 14, 3), (256, 512, 7, 3), (512, 512, 7, 3), (64, 128, 28, 1),
    (128, 256, 14, 1), (256, 512, 7, 1)]]


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_geometry_fills_132_sms(per_channel):
    """Every ResNet-18 layer launches >= 4 blocks per SM of a 132-SM GPU, even at batch 1,
    with >= 50% theoretical occupancy at the register cap; tiles cover every channel once."""
    for b, ci, co, hw, k in RESNET18_CONVS:
        geo = C.conv_geometry(b, hw * hw, co, 1, k * k, (ci + 63) // 64, per_channel)
        blocks = geo.grid[0] * geo.grid[1] * geo.grid[2]
        assert blocks >= C.TARGET_BLOCKS == 4 * 132, (b, ci, co, hw, k, geo)
        assert C.theoretical_occupancy(geo.pix * geo.ot, 64, geo.shared_bytes) >= 0.5
        assert geo.pix * geo.ot in (32, 64) and geo.otile in (1, 2, 4)
        assert geo.grid[0] * geo.pix >= hw * hw
        covered = np.concatenate([np.arange(o0, o0 + nf) for o0, nf, _ in geo.tiles])
        np.testing.assert_array_equal(np.sort(covered), np.arange(co))
        assert np.all(geo.tiles[:, 1] <= geo.ot * geo.otile)


def test_theoretical_occupancy_rules():
    assert C.theoretical_occupancy(64, 32, 0) == 1.0
    assert C.theoretical_occupancy(32, 32, 0) == 0.5       # 32 blocks per SM at most
    assert C.theoretical_occupancy(64, 64, 0) == 0.5       # 65536 / (64*32) = 32 warps
    assert C.theoretical_occupancy(64, 65, 0) == 0.4375    # allocation unit 256: 28 warps
    assert C.theoretical_occupancy(64, 32, 100 * 1024) == 4 / 64    # 2 blocks of 101 KiB
    with pytest.raises(ValueError):
        C.theoretical_occupancy(64, 32, 0, sm=(8, 0))


def test_numba_cuda_missing_raises(monkeypatch):
    from adabin_np.cuda import host

    monkeypatch.setattr(host, "_import_cuda",
                        lambda: (None, ImportError("simulated: no numba-cuda")))
    assert C.is_available() is False
    assert C.is_simulator() is False
    with pytest.raises(RuntimeError, match="numba.cuda could not be imported"):
        C.binarize_weights_cuda(np.ones((2, 3)))


@needs_cuda
def test_is_available():
    assert C.is_available() is True
    assert C.is_simulator() is (not _ON_GPU)


# ----------------------------------------------------------------------------------------------
# validation: same errors as the CPU functions, raised before any kernel work
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, exc, match", [
    (lambda: C.binarize_activations_cuda(np.ones((1, 2, 2)), 0.0, 0.0), ValueError, "alpha"),
    (lambda: C.binarize_activations_cuda(np.ones((1, 2, 2)), 1.0, [0.0] * 3), ValueError, "beta"),
    (lambda: C.binarize_activations_cuda(np.ones(2) + 1j, 1.0, 0.0), TypeError, "x"),
    (lambda: C.binarize_activations_cuda([np.nan], 1.0, 0.0), ValueError, "x"),
    (lambda: C.binarize_activations_cuda(np.ones(2), 1.0, 0.0, convention="torch"),
     ValueError, "convention"),
    (lambda: C.binarize_activations_grad_cuda(np.ones((1, 2)), 1.0, 0.0, np.ones(3)),
     ValueError, "grad"),
    (lambda: C.binarize_weights_cuda(np.ones(3)), ValueError, "w"),
    (lambda: C.binarize_weights_grad_cuda(np.ones((2, 2)), np.ones((2, 3))), ValueError, "grad"),
    (lambda: C.binarize_weights_grad_cuda(np.ones((2, 2)), np.ones((2, 2)), k=np.inf),
     ValueError, "k"),
    (lambda: C.pack_bits_cuda(np.ones((1, 3, 2, 2)), groups=2), ValueError, "groups"),
    (lambda: C.pack_bits_cuda(np.ones((3, 2, 2))), ValueError, "x"),
])
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


def _act_params(kind, c, rng):
    alpha = rng.uniform(0.4, 1.3, c) * np.where(np.arange(c) % 3 == 1, -1.0, 1.0)
    beta = rng.uniform(-0.5, 0.5, c)
    if kind == "scalar":
        return -0.75, 0.25
    if kind == "per_channel":
        return alpha, beta
    return 0.75, beta  # mixed: scalar alpha, per-channel beta


def _with_ties(x, beta):
    """Put some elements exactly on the threshold (v == 0)."""
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), (x.shape[1],))
    x = x.copy()
    for c in range(x.shape[1]):
        x[0, c].flat[c % x[0, c].size] = b[c]
    return x


@needs_cuda
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("kind", ["scalar", "per_channel", "mixed"])
def test_activations_forward_backward(convention, kind):
    rng = np.random.default_rng(10 + len(kind) + (convention == "official"))
    alpha, beta = _act_params(kind, 3, rng)
    x = _with_ties(rng.standard_normal((2, 3, 3, 2)), beta)
    g = rng.standard_normal(x.shape)

    y = C.binarize_activations_cuda(x, alpha, beta, convention=convention)
    np.testing.assert_array_equal(y, ab.binarize_activations(x, alpha, beta,
                                                             convention=convention))
    np.testing.assert_allclose(y, spec.binarize_activations(x, alpha, beta,
                                                            convention=convention), rtol=RTOL)

    got = C.binarize_activations_grad_cuda(x, alpha, beta, g, convention=convention)
    cpu = ab.binarize_activations_grad(x, alpha, beta, g, convention=convention)
    ref = spec.binarize_activations_grad(x, alpha, beta, g, convention=convention)
    np.testing.assert_array_equal(got.dx, cpu.dx)
    for name in ("dalpha", "dbeta"):
        a, c_, r = getattr(got, name), getattr(cpu, name), getattr(ref, name)
        assert np.shape(a) == np.shape(c_)
        assert isinstance(a, float) == isinstance(c_, float)
        np.testing.assert_allclose(a, c_, rtol=RTOL, atol=1e-13)
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=1e-13)


@needs_cuda
def test_activation_grad_deterministic_and_multiblock():
    """N*S larger than 4*REDUCE_TPB on one channel -> several blocks; bitwise repeatable."""
    from adabin_np.cuda import kernels as K

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 4 * K.REDUCE_TPB + 5)) * 0.6
    g = rng.standard_normal(x.shape)
    first = C.binarize_activations_grad_cuda(x, 0.9, 0.1, g)
    second = C.binarize_activations_grad_cuda(x, 0.9, 0.1, g)
    assert first.dalpha == second.dalpha and first.dbeta == second.dbeta
    cpu = ab.binarize_activations_grad(x, 0.9, 0.1, g)
    np.testing.assert_allclose([first.dalpha, first.dbeta], [cpu.dalpha, cpu.dbeta], rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _tie_filter(rng, n):
    """Integers whose mean is exactly their first element (u == 0 there: a sign tie)."""
    z = rng.integers(-3, 4, n).astype(np.float64)
    z[-1] = n * z[0] - z[:-1].sum()
    return z


def _weights(rng, shape):
    w = rng.standard_normal(shape)
    w[1] = 0.1                               # constant filter: beta = 0.1 exactly, alpha = 0
    w[2] = _tie_filter(rng, w[2].size).reshape(w[2].shape)
    return w


@needs_cuda
@pytest.mark.parametrize("c", [1e-300, 2.0 ** -900, 3.7, 2.0 ** 900, 1e300])
def test_weight_functions_are_scale_equivariant_like_the_cpu(c):
    """The CUDA weight set, binarization and gradient follow the CPU's scale contract (rows
    scaled by a power of two before the kernels): f(c w) = c f(w), dW(c w) = dW(w)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2, 3, 3))
    w = np.where(np.abs(w) < 1e-3, 1e-3, w)
    g = rng.standard_normal(w.shape)
    alpha, beta = C.weight_binary_set_cuda(c * w)
    ca, cb = ab.weight_binary_set(w)
    np.testing.assert_allclose(alpha / c, ca, rtol=1e-13)
    np.testing.assert_allclose(beta / c, cb, rtol=0, atol=1e-13 * np.max(ca))
    np.testing.assert_allclose(C.binarize_weights_cuda(c * w) / c, ab.binarize_weights(w),
                               rtol=1e-13, atol=1e-13 * np.max(np.abs(w)))
    ref = ab.binarize_weights_grad(w, g)
    np.testing.assert_allclose(C.binarize_weights_grad_cuda(c * w, g), ref, rtol=0,
                               atol=1e-12 * np.max(np.abs(ref)))
    big = np.array([[1e308, 1e308, -1e308, -1e308]])
    a_big, b_big = C.weight_binary_set_cuda(big)
    assert a_big[0] == 1e308 and b_big[0] == 0.0


@needs_cuda
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (3, 7)])
def test_weights_forward_backward(convention, shape):
    rng = np.random.default_rng(len(shape) + (convention == "official"))
    w = _weights(rng, shape)
    g = rng.standard_normal(shape)

    alpha, beta = C.weight_binary_set_cuda(w)
    ca, cb = ab.weight_binary_set(w)
    assert alpha[1] == 0.0 and beta[1] == 0.1          # the constant-filter rule, exactly
    np.testing.assert_allclose(alpha, ca, rtol=1e-14)
    np.testing.assert_allclose(beta, cb, rtol=1e-14, atol=1e-16)

    wb = C.binarize_weights_cuda(w, convention=convention)
    np.testing.assert_allclose(wb, ab.binarize_weights(w, convention=convention), rtol=1e-14,
                               atol=1e-16)
    np.testing.assert_allclose(wb, spec.binarize_weights(w, convention=convention),
                               rtol=1e-14, atol=1e-16)
    assert np.all(wb[1] == 0.1)

    k, t = 3.0, 0.4
    dw = C.binarize_weights_grad_cuda(w, g, k=k, t=t, convention=convention)
    np.testing.assert_allclose(dw, ab.binarize_weights_grad(w, g, k=k, t=t,
                                                            convention=convention),
                               rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dw, spec.binarize_weights_grad(w, g, k=k, t=t,
                                                              convention=convention),
                               rtol=1e-11, atol=1e-13)
    assert np.all(np.isfinite(dw))
    np.testing.assert_allclose(dw[1], g[1].sum() / g[1].size, rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------------


def _np_pack(bits):
    """Pack the last axis of a boolean array LSB-first into uint64 words (tail bits 0)."""
    n = bits.shape[-1]
    nw = (n + 63) // 64
    padded = np.zeros(bits.shape[:-1] + (nw * 64,), dtype=np.uint64)
    padded[..., :n] = bits
    shifts = np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(padded.reshape(bits.shape[:-1] + (nw, 64)) << shifts, axis=-1)


@needs_cuda
@pytest.mark.parametrize("groups", [1, 2])
def test_pack_bits(groups):
    rng = np.random.default_rng(groups)
    c = 70 * groups                                       # Cg = 70: crosses a word boundary
    x = rng.standard_normal((1, c, 2, 3))
    alpha = rng.uniform(0.5, 1.0, c) * np.where(np.arange(c) % 2, -1.0, 1.0)
    beta = rng.uniform(-0.3, 0.3, c)
    x = _with_ties(x, beta)                               # v == 0 -> bit 1 in both conventions
    got = C.pack_bits_cuda(x, alpha, beta, groups=groups)
    v = (x - beta[:, None, None]) / alpha[:, None, None]
    bits = np.moveaxis(v >= 0, 1, -1).reshape(1, 2, 3, groups, c // groups)
    expected = _np_pack(bits).reshape(1, 2, 3, -1)
    assert got.dtype == np.uint64 and got.shape == (1, 2, 3, groups * 2)
    np.testing.assert_array_equal(got, expected)
    assert np.all(got[..., 1::2] >> np.uint64(6) == 0)   # tail bits (70 - 64 = 6 used) are 0
    if cpu_packed is not None and groups == 1:
        np.testing.assert_array_equal(np.moveaxis(cpu_packed.pack_bits(v, axis=1), 1, -1), got)


@needs_cuda
def test_pack_bits_signed_zero_and_weights():
    x = np.array([0.0, -0.0, -1e-300, 1e-300, -2.0]).reshape(1, 5, 1, 1)
    got = C.pack_bits_cuda(x)
    assert got.shape == (1, 1, 1, 1) and int(got[0, 0, 0, 0]) == 0b01011

    rng = np.random.default_rng(7)
    w = _weights(rng, (3, 66, 1, 2))
    bits = C.pack_weight_bits_cuda(w)
    u = spec.weight_u(w)
    expected = _np_pack(np.moveaxis(u >= 0, 1, -1))
    assert bits.shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(bits, expected)
    if cpu_packed is not None:  # same layouts as the CPU packed path
        np.testing.assert_array_equal(np.moveaxis(cpu_packed.pack_bits(x, axis=1), 1, -1), got)
        np.testing.assert_array_equal(cpu_packed.pack_weights(w).words, bits)


# ----------------------------------------------------------------------------------------------
# packed convolution
# ----------------------------------------------------------------------------------------------

#: (N, C, H, W, O, k, stride, padding, dilation, groups, convention, params, ties)
CONV_CASES = [
    (1, 70, 4, 4, 2, 3, 1, 1, 1, 1, "paper", "scalar", True),
    (1, 70, 4, 4, 2, 3, 1, 1, 1, 1, "official", "per_channel", False),
    (2, 6, 5, 5, 4, 3, 2, 2, 2, 2, "paper", "per_channel", True),
    (2, 6, 5, 6, 4, 1, 1, 0, 1, 2, "official", "scalar", False),
    (1, 4, 6, 6, 2, 3, (2, 1), (0, 2), (1, 2), 1, "official", "scalar", True),
    (1, 128, 3, 3, 2, 1, 1, 0, 1, 2, "paper", "per_group", False),    # Cg = 64: no tail bits
    (1, 3, 4, 3, 5, 3, 1, 1, 1, 1, "paper", "uniform", False),        # partial filter tile
    (1, 4, 4, 4, 2, 3, 2, 1, 2, 2, "official", "mixed", True),
]


def _conv_inputs(case, rng):
    n, c, h, wd, o, k, stride, pad, dil, groups, convention, kind, ties = case
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c // groups, k, k))
    if kind == "uniform":      # per-channel arrays, all equal: the popcount kernel
        alpha, beta = np.full(c, -0.6), np.full(c, 0.3)
    elif kind == "per_group":  # constant within each group: the popcount kernel too
        alpha, beta = np.repeat([0.7, -0.9], c // 2), np.repeat([0.1, -0.2], c // 2)
    else:
        alpha, beta = _act_params(kind, c, rng)
    if ties:
        x = _with_ties(x, beta)
        if w[0].size > 1:
            w[0] = _tie_filter(rng, w[0].size).reshape(w[0].shape)
    return x, w, alpha, beta


def _conv_scale(x, w, alpha, beta, convention):
    a = np.abs(np.asarray(alpha, dtype=np.float64))
    b = np.asarray(beta, dtype=np.float64)
    c_a = np.abs(b) if convention == "paper" else a * np.abs(b)
    wa, wbeta = ab.weight_binary_set(w)
    return w[0].size * np.max(a + c_a) * np.max(wa + np.abs(wbeta))


@needs_cuda
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_packed_conv(case):
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    _, c, _, _, _, _, stride, pad, dil, groups, convention, kind, ties = case
    x, w, alpha, beta = _conv_inputs(case, rng)
    opts = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    p = conv_params(x.shape, w.shape, stride, pad, dil, groups)
    a_c, b_c, _ = activation_params(alpha, beta, c)

    y = C.packed_adabin_conv2d_cuda(x, w, a_c, b_c, p, convention == "official")
    ref = spec.packed_conv_formula(x, w, alpha, beta, convention=convention, **opts)
    atol = RTOL * _conv_scale(x, w, alpha, beta, convention)
    assert y.shape == ref.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=atol)
    if convention == "paper" or not ties:
        # no zero level involved: the float path is the same function
        flt = ab.adabin_conv2d(x, w, alpha, beta, convention=convention, **opts)
        np.testing.assert_allclose(y, flt, rtol=RTOL, atol=atol)
    if cpu_packed is not None and hasattr(cpu_packed, "packed_adabin_conv2d"):
        cpu = cpu_packed.packed_adabin_conv2d(x, w, alpha, beta, convention=convention, **opts)
        np.testing.assert_allclose(y, cpu, rtol=RTOL, atol=atol)
        via_api = cpu_packed.packed_adabin_conv2d(x, w, alpha, beta, convention=convention,
                                                  device="cuda", **opts)
        np.testing.assert_allclose(via_api, y, rtol=RTOL, atol=atol)


@needs_cuda
def test_packed_conv_integer_exact():
    """Levels +-1 for activations and weights: y is an integer count, bit-exact everywhere."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 70, 4, 3))
    w = np.where(rng.permuted(np.arange(2 * 630).reshape(2, 630) % 2, axis=1) == 1, 1.0, -1.0)
    w = w.reshape(2, 70, 3, 3)                          # mean 0, std 1 exactly per filter
    p = conv_params(x.shape, w.shape, 2, 2, 1, 1)
    a_c, b_c, _ = activation_params(1.0, 0.0, 70)
    y = C.packed_adabin_conv2d_cuda(x, w, a_c, b_c, p, False)
    flt = ab.adabin_conv2d(x, w, 1.0, 0.0, stride=2, padding=2)
    np.testing.assert_array_equal(y, flt)
    np.testing.assert_array_equal(y, np.round(y))
    assert y.min() < 0 < y.max()


@needs_cuda
@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.data())
def test_packed_conv_random_geometry(data):
    groups = data.draw(st.sampled_from([1, 2]))
    cg = data.draw(st.integers(1, 4))
    og = data.draw(st.integers(1, 2))
    k = data.draw(st.sampled_from([1, 2, 3]))
    dil = data.draw(st.integers(1, 2))
    pad = data.draw(st.integers(0, 2))
    stride = data.draw(st.integers(1, 2))
    eff = dil * (k - 1) + 1
    h = data.draw(st.integers(max(1, eff - 2 * pad), 5))
    wd = data.draw(st.integers(max(1, eff - 2 * pad), 5))
    convention = data.draw(st.sampled_from(CONVENTIONS))
    kind = data.draw(st.sampled_from(["scalar", "per_channel"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    c = cg * groups
    x = rng.standard_normal((1, c, h, wd))
    w = rng.standard_normal((og * groups, cg, k, k))
    alpha, beta = _act_params(kind, c, rng)
    opts = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    a_c, b_c, _ = activation_params(alpha, beta, c)
    y = C.packed_adabin_conv2d_cuda(x, w, a_c, b_c, conv_params(x.shape, w.shape, **opts),
                                    convention == "official")
    ref = spec.packed_conv_formula(x, w, alpha, beta, convention=convention, **opts)
    np.testing.assert_allclose(y, ref, rtol=RTOL,
                               atol=RTOL * _conv_scale(x, w, alpha, beta, convention))



def test_segments_cover_each_channel_once():
    """Per-channel levels -> runs of equal (d_a, c_a) inside each word of each group."""
    from adabin_np.cuda import host

    d_a = np.array([1.0] * 5 + [2.0] * 62 + [1.0] * 3 + [3.0] * 4 + [3.0] * 6)   # C = 80
    c_a = np.zeros(80)
    c_a[70:] = 0.5
    for groups in (1, 2):
        g_seg, seg_q, seg_mask, seg_da, seg_ca = host._segments(d_a, c_a, groups)
        cg = 80 // groups
        assert g_seg[0] == 0 and g_seg[-1] == seg_q.size and np.all(np.diff(g_seg) > 0)
        for g in range(groups):
            seen = np.zeros(cg, dtype=int)
            for s in range(g_seg[g], g_seg[g + 1]):
                bits = [b for b in range(64) if (int(seg_mask[s]) >> b) & 1]
                assert bits == list(range(bits[0], bits[-1] + 1))    # one contiguous run
                chans = g * cg + 64 * int(seg_q[s]) + np.array(bits)
                assert np.all(d_a[chans] == seg_da[s]) and np.all(c_a[chans] == seg_ca[s])
                seen[chans - g * cg] += 1
            np.testing.assert_array_equal(seen, 1)
    # a scalar-per-group set is one segment per word
    g_seg, seg_q, seg_mask, _, _ = host._segments(np.ones(130), np.zeros(130), 1)
    assert seg_q.tolist() == [0, 1, 2]
    assert [int(m) for m in seg_mask] == [2**64 - 1, 2**64 - 1, 3]


@needs_cuda
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_packed_conv_segment_runs(convention):
    """Per-channel sets with runs of equal levels (segments of several channels, one run
    crossing the 64-bit word boundary) and a tile of 5 filters: exact formula, float path."""
    rng = np.random.default_rng(17)
    c = 70
    x = _with_ties(rng.standard_normal((2, c, 4, 3)), 0.0)
    w = rng.standard_normal((5, c, 3, 3))
    run = np.repeat(np.arange(7), 10)                      # runs of 10: 60..69 crosses 64
    alpha = np.array([0.7, -0.9, 1.1, 0.5, -0.6, 0.8, 1.3])[run]
    beta = np.array([0.0, 0.1, -0.2, 0.3, 0.0, -0.1, 0.05])[run]
    opts = dict(stride=1, padding=1)
    a_c, b_c, _ = activation_params(alpha, beta, c)
    y = C.packed_adabin_conv2d_cuda(x, w, a_c, b_c, conv_params(x.shape, w.shape, 1, 1, 1, 1),
                                    convention == "official")
    ref = spec.packed_conv_formula(x, w, alpha, beta, convention=convention, **opts)
    atol = RTOL * _conv_scale(x, w, alpha, beta, convention)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=atol)


@needs_cuda
def test_grid_limits_by_strides_and_chunks(monkeypatch):
    """Grid extents capped at 1 (as 65535 caps them on a GPU): every kernel's grid-stride
    loop and the convolution's batch chunks must still cover everything."""
    from adabin_np.cuda import host

    monkeypatch.setattr(host, "_GRID_YZ", 1)
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 3, 2, 3))
    g = rng.standard_normal(x.shape)
    alpha, beta = np.array([0.8, -0.7, 1.2]), np.array([0.1, 0.0, -0.3])
    for conv in CONVENTIONS:
        np.testing.assert_array_equal(C.binarize_activations_cuda(x, alpha, beta,
                                                                  convention=conv),
                                      ab.binarize_activations(x, alpha, beta, convention=conv))
        got = C.binarize_activations_grad_cuda(x, alpha, beta, g, convention=conv)
        cpu = ab.binarize_activations_grad(x, alpha, beta, g, convention=conv)
        np.testing.assert_array_equal(got.dx, cpu.dx)
        np.testing.assert_allclose(got.dalpha, cpu.dalpha, rtol=RTOL, atol=1e-13)
        np.testing.assert_allclose(got.dbeta, cpu.dbeta, rtol=RTOL, atol=1e-13)
    w = _weights(rng, (3, 2, 2, 2))
    gw = rng.standard_normal(w.shape)
    np.testing.assert_allclose(C.weight_binary_set_cuda(w), ab.weight_binary_set(w),
                               rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(C.binarize_weights_cuda(w), ab.binarize_weights(w), rtol=1e-14,
                               atol=1e-16)
    np.testing.assert_allclose(C.binarize_weights_grad_cuda(w, gw),
                               ab.binarize_weights_grad(w, gw), rtol=1e-11, atol=1e-13)
    assert C.pack_weight_bits_cuda(w).shape == (3, 2, 2, 1)
    xb = rng.standard_normal((2, 4, 2, 2))
    bits = C.pack_bits_cuda(xb, groups=2)
    expected = _np_pack(np.moveaxis(xb >= 0, 1, -1).reshape(2, 2, 2, 2, 2)).reshape(2, 2, 2, 2)
    np.testing.assert_array_equal(bits, expected)
    for kind in ("scalar", "per_channel"):
        xa = rng.standard_normal((3, 4, 3, 3))
        wa = rng.standard_normal((4, 2, 3, 3))
        al, be = _act_params(kind, 4, rng)
        a_c, b_c, _ = activation_params(al, be, 4)
        p = conv_params(xa.shape, wa.shape, 1, 1, 1, 2)
        y = C.packed_adabin_conv2d_cuda(xa, wa, a_c, b_c, p, False)
        ref = spec.packed_conv_formula(xa, wa, al, be, padding=1, groups=2)
        np.testing.assert_allclose(y, ref, rtol=RTOL,
                                   atol=RTOL * _conv_scale(xa, wa, al, be, "paper"))


def test_too_large_sizes_refused():
    from adabin_np.cuda import host

    with pytest.raises(ValueError, match="too large"):
        host._check_index_range(**{"H*W": 2**31})
    host._check_index_range(**{"H*W": 2**31 - 1})


# ----------------------------------------------------------------------------------------------
# the same cases on a real GPU
# ----------------------------------------------------------------------------------------------


def _real_gpu_present():
    code = ("from numba import cuda\ntry:\n    print(bool(cuda.is_available()))\n"
            "except Exception:\n    print(False)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env_without_sim(),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode == 0 and proc.stdout.strip().endswith("True")


def test_same_cases_on_real_gpu():
    """When a CUDA GPU is present, run this whole file again on it (no simulator):
    ``ADABIN_CUDA_TESTS_ON_GPU=1`` in a fresh interpreter."""
    if _ON_GPU:
        pytest.skip("this process already runs the cases on the GPU")
    if not _real_gpu_present():
        pytest.skip("no CUDA GPU: the simulator run above is the correctness gate")
    env = _env_without_sim()
    env["ADABIN_CUDA_TESTS_ON_GPU"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__).resolve())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.skipif(not (_ON_GPU and IN_PROCESS and not C.is_simulator()),
                    reason="needs ADABIN_CUDA_TESTS_ON_GPU=1 and a CUDA GPU")
def test_launched_signatures_are_the_reported_ones():
    """On a GPU, after the cases above ran: every signature the launchers compiled is the one
    ptx_report compiles (so the report describes the code that actually runs)."""
    from adabin_np.cuda import kernels as K

    run_all = [test_packed_conv_segment_runs, test_packed_conv_integer_exact]
    for fn in run_all:
        fn("paper") if fn is test_packed_conv_segment_runs else fn()
    expected = C.kernel_signatures()
    for name, sig in expected.items():
        compiled = [tuple(s) for s in getattr(K, name).overloads]
        for s in compiled:
            assert s == tuple(sig), (name, s, sig)
    assert getattr(K, "packed_conv_scalar").overloads
    assert getattr(K, "packed_conv_perchannel").overloads
