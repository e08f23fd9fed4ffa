"""The float path gives bit-for-bit identical results for 1, 2, 3 and 4 threads.

Each thread count runs in its own interpreter (``NUMBA_NUM_THREADS`` is read once, at import),
computing the forward, the four gradients, the plain conv backward of the layers, a layer's
backward and ``adabin_linear`` on shapes chosen so that the blocked kernels have many tiles and
ragged edges (rows not a multiple of 4, columns not a multiple of 64, reductions not a
multiple of 4, several chunks), with the small-problem single-thread shortcut disabled. The
results are compared as SHA-256 digests of their bytes, and the digests against the
in-process result (whatever its thread count).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import numba
import adabin_np as ab
from adabin_np import conv as conv_mod
from adabin_np.layers import AdaBinConv2d

def compute():
    rng = np.random.default_rng(2026)
    out = {}
    conv_mod._PARALLEL_MIN_MACS = 0         # small shapes, yet every kernel on all threads
    conv_mod._BWD_CHUNK_ELEMENTS = 3000     # several backward chunks
    conv_mod._CHUNK_ELEMENTS = 3000         # several forward chunks
    for conv in ("paper", "official"):
        x = rng.normal(size=(5, 18, 11, 13))
        x[0, :, :2] = 0.25                  # exact ties (official zero level)
        w = rng.normal(size=(30, 6, 3, 2))
        w[4] = 1.5                          # constant filter
        alpha = rng.uniform(0.5, 1.5, size=18)
        kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3, convention=conv)
        y = ab.adabin_conv2d(x, w, alpha, 0.25, **kw)
        gy = rng.normal(size=y.shape)
        g = ab.adabin_conv2d_grad(x, w, alpha, 0.25, gy, k=3.0, t=0.3, **kw)
        out[conv + "/y"] = y
        for name in ("dx", "dw", "dalpha", "dbeta"):
            out[conv + "/" + name] = np.asarray(getattr(g, name))
        xl = rng.normal(size=(9, 70))
        wl = rng.normal(size=(67, 70))
        out[conv + "/linear"] = ab.adabin_linear(xl, wl, 0.7, -0.1, convention=conv)
    x = rng.normal(size=(3, 10, 17, 9))
    w = rng.normal(size=(70, 10, 3, 3))
    p = conv_mod.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    gy = rng.normal(size=(3, 70, p.out_h, p.out_w))
    dx, dw = conv_mod._conv_backward(x, w, gy, p)
    out["plain/dx"], out["plain/dw"] = dx, dw
    layer = AdaBinConv2d(10, 70, 3, padding=1, rng=0)
    layer.forward(x)
    out["layer/dx"] = layer.backward(gy)
    out["layer/dw"] = layer.grads["weight"]
    return out

def digests(out):
    return {k: hashlib.sha256(np.ascontiguousarray(v, dtype=np.float64).tobytes()).hexdigest()
            for k, v in sorted(out.items())}

if __name__ == "__main__":
    print(json.dumps({"threads": numba.get_num_threads(), "digests": digests(compute())}))
"""


def _run(threads, tmp_path):
    script = tmp_path / "determinism_probe.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["threads"] == threads
    return result["digests"]


def test_bitwise_identical_for_1_2_3_4_threads(tmp_path):
    runs = {t: _run(t, tmp_path) for t in (1, 2, 3, 4)}
    keys = set(runs[1])
    assert len(keys) == 16
    for t in (2, 3, 4):
        differing = sorted(k for k in keys if runs[t][k] != runs[1][k])
        assert not differing, f"{t} threads differ from 1 thread in {differing}"
    # and the same as this process (any thread count)
    namespace = {"__name__": "probe"}
    exec(compile(SCRIPT, "determinism_probe", "exec"), namespace)
    here = namespace["digests"](namespace["compute"]())
    assert here == runs[1]


def test_probe_detects_a_difference():
    """The digest comparison is sensitive to a one-ulp change (guards the test itself)."""
    a = np.linspace(0.1, 1.0, 7)
    b = a.copy()
    b[3] = np.nextafter(b[3], 2.0)
    h = [hashlib.sha256(v.tobytes()).hexdigest() for v in (a, b)]
    assert h[0] != h[1]
