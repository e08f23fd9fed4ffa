r"""What the CUDA kernels compile to on a real GPU, without one: :func:`ptx_report`.

Every kernel of :mod:`adabin_np.cuda.kernels` is compiled to PTX by ``numba.cuda.compile_ptx``
(NVVM) with exactly the argument types the launchers of :mod:`adabin_np.cuda.host` pass
(:func:`kernel_signatures`), then assembled by ``ptxas -arch=sm_XY -v``, whose report gives the
registers per thread, the stack frame, spill stores/loads and static shared memory. From the PTX
itself: ``local_ops`` (``ld.local`` + ``st.local`` instructions: per-thread arrays or spilled
counters living in slow local memory), ``popc`` (``popc`` instructions), ``popc64`` (those on
64-bit words) and ``div64`` (64-bit integer ``div``/``rem``, which ``ptxas`` expands into a long
emulation sequence).

Requirements (no GPU): ``numba-cuda`` finds libNVVM in the ``nvidia-cuda-nvcc-cu12`` wheel (or
a CUDA toolkit), and ``ptxas`` is taken from that wheel (``nvidia/cuda_nvcc/bin/ptxas``), from
``$CUDA_HOME/bin`` or from ``PATH``. Without them :func:`ptx_report` raises ``RuntimeError``
naming what to install::

    pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) NVVM is not reachable in-process, so the
report is computed in a fresh interpreter without the variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["ptx_report", "kernel_signatures", "find_ptxas"]

_INSTALL = "pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12"


def find_ptxas():
    """Path of ``ptxas``: the ``nvidia-cuda-nvcc`` wheel's, ``$CUDA_HOME/bin``'s or ``PATH``'s;
    ``None`` when there is none."""
    candidates = []
    try:
        import nvidia  # namespace package of the NVIDIA wheels

        for root in getattr(nvidia, "__path__", []):
            candidates.append(Path(root) / "cuda_nvcc" / "bin" / "ptxas")
    except ImportError:
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "ptxas")
    candidates.append(Path("/usr/local/cuda/bin/ptxas"))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("ptxas")


def kernel_signatures():
    """``{kernel name: tuple of Numba argument types}`` -- the types the launchers of
    :mod:`adabin_np.cuda.host` pass: C-contiguous device arrays, Python ints as ``int64``,
    floats as ``float64``, bools as ``boolean``. Needs :mod:`numba` only (not a GPU)."""
    from numba.core import types as t

    def a(dt, nd):
        return t.Array(dt, nd, "C")

    f8, i8, b1, u8 = t.float64, t.int64, t.boolean, t.uint64
    geom = (i8,) * 8  # kh, kw, sh, sw, ph, pw, dh, dw
    return {
        "act_forward": (a(f8, 3), a(f8, 1), a(f8, 1), b1, a(f8, 3)),
        "act_backward": (a(f8, 3), a(f8, 3), a(f8, 1), a(f8, 1), b1, a(f8, 3), a(f8, 3)),
        "weight_stats": (a(f8, 2), a(f8, 1), a(f8, 1)),
        "weight_forward": (a(f8, 2), a(f8, 1), a(f8, 1), b1, a(f8, 2)),
        "weight_backward": (a(f8, 2), a(f8, 2), a(f8, 1), a(f8, 1), f8, f8, b1, a(f8, 2)),
        "pack_activations": (a(f8, 4), a(f8, 1), a(f8, 1), i8, a(u8, 4)),
        "pack_weights": (a(f8, 4), a(f8, 1), a(f8, 1), a(u8, 2)),
        "packed_conv_scalar": (a(u8, 1), a(u8, 2), a(i8, 2)) + (a(f8, 1),) * 4
        + (i8,) * 5 + geom + (i8, a(f8, 4)),
        "packed_conv_perchannel": (a(u8, 1), a(u8, 2), a(i8, 2), a(f8, 1), a(f8, 1), a(i8, 1),
                                   a(i8, 1), a(u8, 1), a(f8, 1), a(f8, 1)) + (i8,) * 4 + geom
        + (a(f8, 4),),
    }


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_INT = r"(\d+)"
_PRED = re.compile(r"^@!?%\w+\s+")


def _parse_ptxas(text):
    """Numbers of ``ptxas -v`` for the (single) entry function in ``text``."""
    out = {"registers": None, "stack_bytes": 0, "spill_stores": 0, "spill_loads": 0,
           "shared_bytes": 0, "barriers": 0}
    m = re.search(rf"Used {_INT} registers", text)
    if m:
        out["registers"] = int(m.group(1))
    m = re.search(rf"{_INT} bytes stack frame, {_INT} bytes spill stores, {_INT} bytes spill "
                  r"loads", text)
    if m:
        out["stack_bytes"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    m = re.search(rf"{_INT} bytes smem", text)
    if m:
        out["shared_bytes"] = int(m.group(1))
    m = re.search(rf"used {_INT} barriers", text)
    if m:
        out["barriers"] = int(m.group(1))
    return out


def _ptx_counts(ptx):
    """Instruction counts read off the PTX text (comments and labels ignored)."""
    lines = [ln.split("//", 1)[0].strip() for ln in ptx.splitlines()]
    ins = [ln for ln in lines if ln and not ln.endswith(":")]

    def count(pattern):
        rx = re.compile(pattern)
        return sum(1 for ln in ins if rx.match(_PRED.sub("", ln)))

    return {
        "local_ops": count(r"(ld|st)\.local\b"),
        "popc": count(r"popc\."),
        "popc64": count(r"popc\.b64\b"),
        "div64": count(r"(div|rem)(\.approx|\.full|\.rn|\.rz|\.rm|\.rp)?\.(s64|u64)\b"),
        "ptx_instructions": len(ins),
    }


def _report_in_process(cc, names):
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba-cuda missing
        raise RuntimeError(f"ptx_report needs numba-cuda ({exc}); pip install numba-cuda "
                           f"and {_INSTALL}") from exc
    ptxas = find_ptxas()
    if ptxas is None:
        raise RuntimeError(f"ptx_report: ptxas not found (looked in the nvidia-cuda-nvcc wheel, "
                           f"$CUDA_HOME/bin and PATH); install it with: {_INSTALL}")
    # numba-cuda asks the driver for the current device while compiling some kernels (to pick
    # the target of device functions); with no GPU, answer with the requested architecture.
    import types as _types

    patched = []
    try:
        import numba.cuda.dispatcher as _disp

        if hasattr(_disp, "get_current_device"):
            try:
                ok = bool(cuda.is_available())
            except Exception:
                ok = False
            if not ok:
                patched.append((_disp, "get_current_device", _disp.get_current_device))
                _disp.get_current_device = lambda: _types.SimpleNamespace(
                    compute_capability=tuple(cc))
    except Exception:  # pragma: no cover - other numba-cuda layouts
        pass
    try:
        from . import kernels as K

        sigs = kernel_signatures()
        report = []
        with tempfile.TemporaryDirectory(prefix="adabin_ptx_") as tmp:
            for name in names:
                kernel = getattr(K, name)
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sigs[name], cc=tuple(cc))
                except Exception as exc:
                    msg = str(exc)
                    if "NVVM" in msg or "libnvvm" in msg.lower() or "nvvm" in type(exc).__name__.lower():
                        raise RuntimeError(f"ptx_report: NVVM (libnvvm) not found ({msg}); "
                                           f"install it with: {_INSTALL}") from exc
                    raise
                path = Path(tmp) / f"{name}.ptx"
                path.write_text(ptx)
                arch = f"sm_{cc[0]}{cc[1]}"
                # the kernel's own register cap, as numba-cuda passes it when it links
                cap = (getattr(kernel, "targetoptions", {}) or {}).get("max_registers")
                extra = [f"-maxrregcount={int(cap)}"] if cap else []
                proc = subprocess.run([ptxas, f"-arch={arch}", "-v", *extra, str(path), "-o",
                                       str(Path(tmp) / f"{name}.cubin")],
                                      capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"ptx_report: ptxas failed on {name} for {arch}:\n"
                                       f"{proc.stderr[-3000:]}")
                row = {"name": name, "arch": arch, "max_registers": cap}
                row.update(_parse_ptxas(proc.stdout + proc.stderr))
                row.update(_ptx_counts(ptx))
                report.append(row)
        return report
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)


def ptx_report(cc=(9, 0), *, kernels=None):
    """Compile and assemble every CUDA kernel for compute capability ``cc``; no GPU needed.

    Returns one dict per kernel (in :func:`kernel_signatures` order, or the names in
    ``kernels``) with ``name``, ``arch``, ``registers`` (per thread), ``stack_bytes``,
    ``spill_stores``, ``spill_loads``, ``shared_bytes`` (static), ``barriers`` -- from
    ``ptxas -v`` -- and ``local_ops``, ``popc``, ``popc64``, ``div64``, ``ptx_instructions``
    counted in the PTX. Raises ``RuntimeError`` naming the packages to install when libNVVM or
    ``ptxas`` is missing, ``ValueError`` for a malformed ``cc`` or an unknown kernel name.
    """
    if (not isinstance(cc, (tuple, list)) or len(cc) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 100
                       for v in cc)):
        raise ValueError(f"cc must be a (major, minor) pair of ints, got {cc!r}")
    cc = (int(cc[0]), int(cc[1]))
    _ALL = list(kernel_signatures())
    names = list(_ALL if kernels is None else kernels)
    unknown = [n for n in names if n not in _ALL]
    if unknown:
        raise ValueError(f"kernels: unknown kernel names {unknown}; known: {list(_ALL)}")
    from .host import is_simulator

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") or (
            "numba.cuda" in sys.modules and is_simulator()):
        return _report_in_subprocess(cc, names)
    return _report_in_process(cc, names)


def _report_in_subprocess(cc, names):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = ("import json, sys; from adabin_np.cuda.report import _report_in_process as r; "
            f"print('@@' + json.dumps(r({tuple(cc)!r}, {list(names)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if "RuntimeError: " in tail:
            raise RuntimeError(tail.split("RuntimeError: ", 1)[1])
        raise RuntimeError(f"ptx_report subprocess failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"ptx_report subprocess printed no report:\n{proc.stdout[-2000:]}")
