"""Benchmark the bit-packed AdaBin convolution (numba.cuda) against cuDNN float32/float16.

Layers: the binary 3x3 convolutions of ResNet-18 at 224x224 (padding 1), one row per distinct
shape -- ``64->64 @56 s1`` (x4 in the network), ``64->128 s2 ->28`` (x1), ``128->128 @28`` (x3),
``128->256 s2 ->14`` (x1), ``256->256 @14`` (x3), ``256->512 s2 ->7`` (x1), ``512->512 @7`` (x3)
-- at batch 1 and 8, plus the **whole ResNet-18 binary stack**: all 16 binary convolutions run
back to back (packed: activation packing + convolution per layer, weights packed once as a
model does; cuDNN: the same 16 convolutions), and, for context, a full torchvision ResNet-18
forward in float32/float16 when torchvision is importable.

Two timings per row, both medians over ``--repeats``:

* ``gpu_ms`` -- device time per call: a spin kernel first backs up the stream, then ``--iters``
  calls are enqueued between two CUDA events, so the GPU never waits for the Python launcher
  (launch overhead excluded; what the kernels cost on the GPU);
* ``wall_ms`` -- ``time.perf_counter`` around ``--iters`` calls plus a synchronize: what a
  Python caller sees, Numba's/torch's launch overhead included.

Rows (``--out`` JSON; also printed): ``packed_conv`` (popcount kernel only, inputs packed),
``packed_layer`` (pack float64 activations + convolution, weights prepacked; both timed rows
launch kernels only, their constants are on the GPU beforehand), ``packed_pipeline`` (weight
sets + packing of x and W + convolution from float64 on the GPU, including the allocations and
small host copies of a one-off call, so its ``gpu_ms`` also holds those waits),
``cudnn_float32`` / ``cudnn_float16`` (``torch.nn.functional.conv2d``,
``cudnn.benchmark = True``), and ``max_rel_err_vs_cpu_float64`` at batch 1 (packed output vs the
CPU float64 oracle ``adabin_np.adabin_conv2d``; the paper convention makes them the same function).

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

#: (C in, C out, input side, stride, count in ResNet-18): its binary 3x3 convolutions
LAYERS = [(64, 64, 56, 1, 4), (64, 128, 56, 2, 1), (128, 128, 28, 1, 3), (128, 256, 28, 2, 1),
          (256, 256, 14, 1, 3), (256, 512, 14, 2, 1), (512, 512, 7, 1, 3)]
ALPHA, BETA = 0.8, 0.05


def _refuse(msg):
    print(f"bench_cuda: {msg}", file=sys.stderr)
    sys.exit(2)


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class _Timer:
    """Device time (backed-up stream, CUDA events) and wall time of ``fn``, per call."""

    def __init__(self, cuda, torch, spin):
        self.cuda, self.torch, self.spin = cuda, torch, spin

    def _backlog(self, use_torch):
        if use_torch:
            self.torch.cuda._sleep(50_000_000)      # ~25 ms at ~2 GHz: the queue backs up
        else:
            self.spin[1, 1](20_000_000)              # 20 ms of nanosleep

    def __call__(self, fn, iters, repeats, warmup, use_torch=False):
        cuda, torch = self.cuda, self.torch
        sync = torch.cuda.synchronize if use_torch else cuda.synchronize
        for _ in range(warmup):
            fn()
        sync()
        gpu, wall = [], []
        for _ in range(repeats):
            if use_torch:
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
            else:
                start, stop = cuda.event(), cuda.event()
            self._backlog(use_torch)
            start.record()
            for _ in range(iters):
                fn()
            stop.record()
            stop.synchronize()
            gpu.append(start.elapsed_time(stop) / iters)
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync()
            wall.append((time.perf_counter() - t0) * 1e3 / iters)
        return {"gpu_ms": _stats(gpu), "wall_ms": _stats(wall)}


def _spin_kernel(cuda):
    @cuda.jit
    def spin(ns):
        t = 0
        while t < ns:
            cuda.nanosleep(1_000_000)
            t += 1_000_000

    return spin


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the cuDNN rows")
    ap.add_argument("--no-check", action="store_true", help="skip the CPU float64 comparison")
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
    from adabin_np.cuda import host as H
    from adabin_np.cuda import kernels as K
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
        "multiprocessors": getattr(dev, "MULTIPROCESSOR_COUNT", None),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "cudnn": None if torch is None else torch.backends.cudnn.version(),
        "iters": args.iters, "repeats": args.repeats, "warmup": args.warmup,
        "unit": "milliseconds per call; gpu_ms = device time with a backed-up stream, "
                "wall_ms = Python wall clock incl. launch overhead; median/min/max over repeats",
    }
    try:
        import numba_cuda

        meta["numba_cuda"] = getattr(numba_cuda, "__version__", None)
    except ImportError:
        meta["numba_cuda"] = None

    timer = _Timer(cuda, torch, _spin_kernel(cuda))
    rng = np.random.default_rng(0)
    results = []
    stacks = {}
    for batch in args.batch:
        stack_packed, stack_f32, stack_f16 = [], [], []
        for cin, cout, hw, stride, count in LAYERS:
            x = rng.standard_normal((batch, cin, hw, hw))
            w = rng.standard_normal((cout, cin, 3, 3)) * 0.05
            p = conv_params(x.shape, w.shape, stride, 1, 1, 1)
            a_c, b_c, _ = activation_params(ALPHA, BETA, cin)
            macs = batch * cout * p.out_h * p.out_w * cin * 9
            row = {"batch": batch, "c_in": cin, "c_out": cout, "hw_in": hw, "stride": stride,
                   "hw_out": p.out_h, "count_in_resnet18": count, "macs": macs}
            geo = H.conv_geometry(batch, p.out_h * p.out_w, cout, 1, 9, (cin + 63) // 64,
                                  False)
            row["geometry"] = {"block": [geo.pix, geo.ot], "otile": geo.otile,
                               "grid": list(geo.grid),
                               "blocks": geo.grid[0] * geo.grid[1] * geo.grid[2],
                               "shared_bytes": geo.shared_bytes}

            x_d = cuda.to_device(x)
            w_d = cuda.to_device(w)
            alpha_d = cuda.to_device(a_c)
            beta_d = cuda.to_device(b_c)
            aw, bw = H._weight_stats_device(cuda, K, w_d.reshape(cout, cin * 9))
            xbits = H._pack_activations_device(cuda, K, x_d, alpha_d, beta_d, 1)
            wbits = H._pack_weights_device(cuda, K, w_d, aw, bw)
            d_a, c_a, _ = H._activation_levels(a_c, b_c, 1, False)
            y_d = cuda.device_array((batch, cout, p.out_h, p.out_w), dtype=np.float64)

            run = H._conv_plan(cuda, K, xbits.shape, wbits, aw, bw, d_a, c_a, False, cin, 3,
                               3, p, y_d)
            cuda.synchronize()

            def conv_only(run=run, xbits=xbits):
                run(xbits)

            def layer(x_d=x_d, alpha_d=alpha_d, beta_d=beta_d, xbits=xbits, run=run):
                H._pack_activations_device(cuda, K, x_d, alpha_d, beta_d, 1, out=xbits)
                run(xbits)

            def pipeline(x_d=x_d, w_d=w_d, a_c=a_c, b_c=b_c, p=p):
                H._packed_conv_device(cuda, K, x_d, w_d, a_c, b_c, p, False)

            row["packed_conv"] = timer(conv_only, args.iters, args.repeats, args.warmup)
            row["packed_layer"] = timer(layer, args.iters, args.repeats, args.warmup)
            row["packed_pipeline"] = timer(pipeline, max(1, args.iters // 4), args.repeats, 1)
            stack_packed += [layer] * count
            if not args.no_check and batch == 1:
                conv_only()
                y = y_d.copy_to_host()
                ref = ab.adabin_conv2d(x, w, ALPHA, BETA, stride=stride, padding=1)
                row["max_rel_err_vs_cpu_float64"] = float(
                    np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-300))

            if torch is not None:
                for key, dtype, stack in (("cudnn_float32", torch.float32, stack_f32),
                                          ("cudnn_float16", torch.float16, stack_f16)):
                    xt = torch.from_numpy(x).to("cuda", dtype)
                    wt = torch.from_numpy(w).to("cuda", dtype)

                    def tconv(xt=xt, wt=wt, stride=stride):
                        with torch.no_grad():
                            torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1)

                    row[key] = timer(tconv, args.iters, args.repeats, args.warmup,
                                     use_torch=True)
                    stack += [tconv] * count
                for key in ("cudnn_float32", "cudnn_float16"):
                    row[f"speedup_packed_conv_vs_{key}"] = (
                        row[key]["gpu_ms"]["median"] / row["packed_conv"]["gpu_ms"]["median"])
                    row[f"speedup_packed_layer_vs_{key}"] = (
                        row[key]["gpu_ms"]["median"] / row["packed_layer"]["gpu_ms"]["median"])
            results.append(row)
            print(json.dumps(row), flush=True)

        # the whole ResNet-18 binary stack: 16 convolutions back to back
        def run_all(fns):
            def call():
                for fn in fns:
                    fn()
            return call

        whole = {"batch": batch, "layers": len(stack_packed),
                 "packed_layers": timer(run_all(stack_packed), 3, args.repeats, 1)}
        if torch is not None:
            whole["cudnn_float32"] = timer(run_all(stack_f32), 3, args.repeats, 1,
                                           use_torch=True)
            whole["cudnn_float16"] = timer(run_all(stack_f16), 3, args.repeats, 1,
                                           use_torch=True)
            for key in ("cudnn_float32", "cudnn_float16"):
                whole[f"speedup_vs_{key}"] = (whole[key]["gpu_ms"]["median"]
                                              / whole["packed_layers"]["gpu_ms"]["median"])
            try:
                import torchvision

                for key, dtype in (("torchvision_resnet18_float32", torch.float32),
                                   ("torchvision_resnet18_float16", torch.float16)):
                    model = torchvision.models.resnet18().to("cuda", dtype).eval()
                    xt = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)

                    def fwd(model=model, xt=xt):
                        with torch.no_grad():
                            model(xt)

                    whole[key] = timer(fwd, 3, args.repeats, 2, use_torch=True)
            except Exception as exc:  # torchvision missing or broken: context row only
                whole["torchvision"] = f"skipped: {type(exc).__name__}: {exc}"
        stacks[f"batch{batch}"] = whole
        print(json.dumps({"resnet18_binary_stack": whole}), flush=True)

    report = {"meta": meta, "layers": results, "resnet18_binary_stack": stacks}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
