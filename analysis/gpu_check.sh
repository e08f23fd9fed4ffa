#!/usr/bin/env bash
# One prepared check of the CUDA path on a machine with an NVIDIA GPU (no network needed).
#
#   bash analysis/gpu_check.sh            # results in $OUT, else analysis/results/gpu_check_<UTC>/
#
# Steps, each under its own time limit (all together well under 8 minutes on an H100/H200):
#   1. environment: GPU, driver, Python packages          -> env.txt
#   2. ptx_report with this machine's NVVM + ptxas          -> ptx_report_cuda.json
#   3. analysis/bench_cuda.py: packed conv vs cuDNN fp32/fp16, ResNet-18 layers at batch 1 and 8
#      and the whole ResNet-18 binary stack                 -> bench_cuda.json
#   4. tests/test_cuda.py on the GPU (no simulator)         -> tests_cuda.xml (+ the log)
# Everything is also logged to gpu_check.log in the same folder. Nothing is installed from the
# network: the package runs from this checkout (PYTHONPATH); numba-cuda, numpy, pytest and
# hypothesis must be importable (torch with CUDA for the cuDNN rows, optional). A failing step
# does not stop the later ones; the exit status is that of the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-analysis/results/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
PY="${PYTHON:-python3}"
# Compatibility shim, for this check only: numba-cuda 0.30.4 registers an overload of
# np.row_stack, which NumPy 2.5 removed, so with NumPy >= 2.5 every real-GPU compile fails with
# "module 'numpy' has no attribute 'row_stack'" (numba 0.68 itself guards it). row_stack was an
# alias of vstack; a sitecustomize restores the alias in every Python process of this script
# (the tests' subprocesses included) and then runs any sitecustomize it shadows.
SHIM="$(mktemp -d)"
cat > "$SHIM/sitecustomize.py" <<'EOF'
import os as _os
import sys as _sys

import numpy as _np

if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack
_here = _os.path.dirname(_os.path.abspath(__file__))
for _p in _sys.path:
    _f = _os.path.join(_p or ".", "sitecustomize.py")
    if _os.path.abspath(_p or ".") != _here and _os.path.isfile(_f):
        exec(compile(open(_f).read(), _f, "exec"), {"__name__": "sitecustomize", "__file__": _f})
        break
EOF
export PYTHONPATH="$PWD:$SHIM${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset NUMBA_ENABLE_CUDASIM
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0   # tiny test grids would flood the log

step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

{
  step "1. environment"
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "numba", "numba_cuda", "torch", "torchvision", "pytest", "hypothesis",
             "cuda", "cuda.bindings"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
from numba import cuda
print("numba.cuda.is_available", cuda.is_available())
dev = cuda.get_current_device()
print("device", dev.name, "cc", dev.compute_capability, "SMs", dev.MULTIPROCESSOR_COUNT)
from adabin_np.cuda.report import find_ptxas
print("ptxas", find_ptxas())
EOF
  } | tee "$DEST/env.txt"

  step "2. ptx_report (sm_90, this machine's NVVM and ptxas)"
  timeout 60 "$PY" - "$DEST/ptx_report_cuda.json" <<'EOF'
import json, sys
from adabin_np.cuda import ptx_report
rows = ptx_report(cc=(9, 0))
for r in rows:
    print(json.dumps(r))
open(sys.argv[1], "w").write(json.dumps(rows, indent=2))
EOF
  echo "ptx_report exit $?"

  step "3. benchmark: packed conv vs cuDNN"
  timeout 170 "$PY" analysis/bench_cuda.py --out "$DEST/bench_cuda.json"
  echo "bench exit $?"
  step "4. CUDA tests on the GPU (ADABIN_CUDA_TESTS_ON_GPU=1, no simulator)"
  ADABIN_CUDA_TESTS_ON_GPU=1 timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs \
      --junitxml="$DEST/tests_cuda.xml" tests/test_cuda.py
  TESTS_RC=$?
  echo "tests exit $TESTS_RC"
  echo "$TESTS_RC" > "$DEST/.tests_rc"

  step "done"
} 2>&1 | tee "$LOG"

RC=$(cat "$DEST/.tests_rc" 2>/dev/null || echo 1)
rm -f "$DEST/.tests_rc"
rm -rf "$SHIM"
echo "results in $DEST"
exit "$RC"
