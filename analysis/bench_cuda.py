"""Benchmark the bit-packed AdaBin convolution (numba.cuda) against cuDNN float32/float16.

Layers: the 3x3, stride-1, padding-1 convolutions of the four ResNet-18 stages,
``64ch 56x56``, ``128ch 28x28``, ``256ch 14x14``, ``512ch 7x7`` (C in = C out), at batch 1
and 8. Timed with CUDA events, ``--iters`` launches between one pair of events (launch
overhead amortised), median over ``--repeats`` such pairs after ``--warmup`` launches.

Rows written (``--out``, JSON; also printed):

* ``packed_conv_kernel``   -- the popcount convolution only, inputs already packed on the GPU
  (:func:`adabin_np.kernels_cuda.packed_conv_scalar`, scalar activation set);
* ``packed_pipeline``      -- weight sets + packing of x and W + convolution, float64 inputs
  already on the GPU (what a layer of a packed inference engine would run);
* ``packed_end_to_end``    -- :func:`adabin_np.cuda.packed_adabin_conv2d_cuda` from host
  float64 arrays, transfers included (wall clock, ``time.perf_counter``);
* ``cudnn_float32`` / ``cudnn_float16`` -- ``torch.nn.functional.conv2d`` with
  ``torch.backends.cudnn.benchmark = True`` (skipped without a CUDA build of torch).

``--check`` also compares the packed output against the CPU float64 oracle
(``adabin_np.adabin_conv2d``) for batch 1 and records the max relative error.

Usage::

    python analysis/bench_cuda.py --out bench_cuda.json

Needs a real GPU: under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the numbers would be
meaningless (every thread is a Python thread), so the script refuses to run there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]


def _refuse(msg):
    print(f"bench_cuda: {msg}", file=sys.stderr)
    sys.exit(2)


def _events_ms(record_pair, launch, iters, repeats, warmup, sync):
    """Median and min milliseconds per launch, ``iters`` launches per event pair."""
    for _ in range(warmup):
        launch()
    sync()
    per_launch = []
    for _ in range(repeats):
        start, stop = record_pair()
        start.record()
        for _ in range(iters):
            launch()
        stop.record()
        stop.synchronize()
        per_launch.append(start.elapsed(stop) / iters)
    return statistics.median(per_launch), min(per_launch)


class _NumbaEvents:
    def __init__(self, cuda):
        self.cuda = cuda

    def __call__(self):
        cuda = self.cuda

        class _E:
            def __init__(self):
                self.ev = cuda.event()  # timing=True is the default

            def record(self):
                self.ev.record()

            def synchronize(self):
                self.ev.synchronize()

            def elapsed(self, other):
                return self.ev.elapsed_time(other.ev)

        return _E(), _E()


class _TorchEvents:
    def __init__(self, torch):
        self.torch = torch

    def __call__(self):
        torch = self.torch

        class _E:
            def __init__(self):
                self.ev = torch.cuda.Event(enable_timing=True)

            def record(self):
                self.ev.record()

            def synchronize(self):
                self.ev.synchronize()

            def elapsed(self, other):
                return self.ev.elapsed_time(other.ev)

        return _E(), _E()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=20, help="launches per event pair")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the cuDNN rows")
    ap.add_argument("--check", action="store_true", help="compare with the CPU float oracle")
    ap.add_argument("--out", type=Path, default=None, help="JSON output file")
    args = ap.parse_args(argv)

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        _refuse("NUMBA_ENABLE_CUDASIM is set: the CUDA simulator runs every thread in Python, "
                "timings would be meaningless. Unset it and run on a machine with a GPU.")
    from adabin_np import cuda as C

    if C.is_simulator():
        _refuse("numba.cuda is the CUDA simulator; refusing to benchmark it.")
    if not C.is_available():
        _refuse("no CUDA GPU available (numba.cuda.is_available() is False).")

    import adabin_np as ab
    from adabin_np import kernels_cuda as K
    from adabin_np.validation import activation_params, conv_params
    from numba import cuda

    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            if _torch.cuda.is_available():
                torch = _torch
                torch.backends.cudnn.benchmark = True
        except ImportError:
            torch = None

    dev = cuda.get_current_device()
    name = getattr(dev, "name", "unknown")
    meta = {
        "device": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": list(getattr(dev, "compute_capability", ())),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "cudnn": None if torch is None else torch.backends.cudnn.version(),
        "iters": args.iters, "repeats": args.repeats, "warmup": args.warmup,
        "unit": "milliseconds per convolution (median and min over repeats)",
    }
    try:
        import numba_cuda

        meta["numba_cuda"] = getattr(numba_cuda, "__version__", None)
    except ImportError:
        meta["numba_cuda"] = None

    rng = np.random.default_rng(0)
    numba_events = _NumbaEvents(cuda)
    results = []
    for batch in args.batch:
        for ch, hw in LAYERS:
            x = rng.standard_normal((batch, ch, hw, hw))
            w = rng.standard_normal((ch, ch, 3, 3)) * 0.05
            alpha, beta = 0.8, 0.05
            p = conv_params(x.shape, w.shape, 1, 1, 1, 1)
            a_c, b_c, _ = activation_params(alpha, beta, ch)
            flops = 2.0 * batch * ch * p.out_h * p.out_w * ch * 9
            row = {"batch": batch, "channels": ch, "hw": hw, "kernel": 3, "stride": 1,
                   "padding": 1, "macs": flops / 2}

            x_d = cuda.to_device(x)
            w_d = cuda.to_device(w)
            # pre-packed inputs for the kernel-only timing
            o_, cg, kh, kw = w.shape
            aw, bw = C._weight_stats_device(cuda, K, w_d.reshape(o_, cg * kh * kw))
            xbits = C._pack_activations_device(cuda, K, x_d, cuda.to_device(a_c),
                                               cuda.to_device(b_c), 1)
            wbits = C._pack_weights_device(cuda, K, w_d, aw, bw)
            d_a, c_a, _ = C._activation_levels(a_c, b_c, 1, False)
            d_a, c_a = cuda.to_device(d_a), cuda.to_device(c_a)
            y_d = cuda.device_array((batch, ch, p.out_h, p.out_w), dtype=np.float64)

            def conv_only():
                C._conv_launch(cuda, K, xbits, wbits, aw, bw, d_a, c_a, False, cg, kh, kw, p,
                               y_d)

            def pipeline():
                C._packed_conv_device(cuda, K, x_d, w_d, a_c, b_c, p, False)

            med, best = _events_ms(numba_events, conv_only, args.iters, args.repeats,
                                   args.warmup, cuda.synchronize)
            row["packed_conv_kernel"] = {"median_ms": med, "min_ms": best,
                                         "gops_equiv": flops / med / 1e6}
            med, best = _events_ms(numba_events, pipeline, max(1, args.iters // 4),
                                   args.repeats, 2, cuda.synchronize)
            row["packed_pipeline"] = {"median_ms": med, "min_ms": best}
            walls = []
            for _ in range(max(3, args.repeats // 2)):
                t0 = time.perf_counter()
                y = C.packed_adabin_conv2d_cuda(x, w, a_c, b_c, p, False)
                walls.append((time.perf_counter() - t0) * 1e3)
            row["packed_end_to_end"] = {"median_ms": statistics.median(walls),
                                        "min_ms": min(walls)}
            if args.check and batch == 1:
                ref = ab.adabin_conv2d(x, w, alpha, beta, padding=1)
                row["max_rel_err_vs_cpu_float64"] = float(
                    np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-300))

            if torch is not None:
                tev = _TorchEvents(torch)
                for name, dtype in (("cudnn_float32", torch.float32),
                                    ("cudnn_float16", torch.float16)):
                    xt = torch.from_numpy(x).to("cuda", dtype)
                    wt = torch.from_numpy(w).to("cuda", dtype)
                    with torch.no_grad():
                        def tconv(xt=xt, wt=wt):
                            torch.nn.functional.conv2d(xt, wt, padding=1)

                        med, best = _events_ms(tev, tconv, args.iters, args.repeats,
                                               args.warmup, torch.cuda.synchronize)
                    row[name] = {"median_ms": med, "min_ms": best,
                                 "gops": flops / med / 1e6}
                row["speedup_kernel_vs_cudnn_fp16"] = (row["cudnn_float16"]["median_ms"]
                                                       / row["packed_conv_kernel"]["median_ms"])
            results.append(row)
            print(json.dumps(row), flush=True)

    report = {"meta": meta, "results": results}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
