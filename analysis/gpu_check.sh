#!/usr/bin/env bash
# One prepared check of the CUDA path on a machine with an NVIDIA GPU (no network needed).
#
#   bash analysis/gpu_check.sh            # results in $OUT, else analysis/results/gpu_check_<UTC>/
#
# Steps, each under its own time limit (all together well under 8 minutes on an H100/H200):
#   1. environment: GPU, driver, Python packages          -> env.txt
#   2. ptx_report with this machine's NVVM + ptxas          -> ptx_report_cuda.json
#   3. tests/test_cuda.py on the GPU (no simulator)         -> tests_cuda.xml (+ the log)
#   4. analysis/bench_cuda.py: packed conv vs cuDNN fp32/fp16, ResNet-18 layers at batch 1 and 8
#      and the whole ResNet-18 binary stack                 -> bench_cuda.json
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset NUMBA_ENABLE_CUDASIM

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
  timeout 90 "$PY" - "$DEST/ptx_report_cuda.json" <<'EOF'
import json, sys
from adabin_np.cuda import ptx_report
rows = ptx_report(cc=(9, 0))
for r in rows:
    print(json.dumps(r))
open(sys.argv[1], "w").write(json.dumps(rows, indent=2))
EOF
  echo "ptx_report exit $?"

  step "3. CUDA tests on the GPU (ADABIN_CUDA_TESTS_ON_GPU=1, no simulator)"
  ADABIN_CUDA_TESTS_ON_GPU=1 timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs \
      --junitxml="$DEST/tests_cuda.xml" tests/test_cuda.py
  TESTS_RC=$?
  echo "tests exit $TESTS_RC"
  echo "$TESTS_RC" > "$DEST/.tests_rc"

  step "4. benchmark: packed conv vs cuDNN"
  timeout 200 "$PY" analysis/bench_cuda.py --out "$DEST/bench_cuda.json"
  echo "bench exit $?"
  step "done"
} 2>&1 | tee "$LOG"

RC=$(cat "$DEST/.tests_rc" 2>/dev/null || echo 1)
rm -f "$DEST/.tests_rc"
echo "results in $DEST"
exit "$RC"
