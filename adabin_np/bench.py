r"""Benchmark the bit-packed CPU convolution against torch float32 and the float64 path.

Layers: the 3x3, stride-1, padding-1 convolutions of the four ResNet-18 (ImageNet) stages,
``64ch 56x56``, ``128ch 28x28``, ``256ch 14x14``, ``512ch 7x7`` (C_in = C_out), at batch 1
and 8 by default. Every implementation runs on the same number of threads
(``numba.set_num_threads`` and ``torch.set_num_threads``; default 2).

Rows per layer and batch:

* ``packed``: :func:`adabin_np.packed.packed_adabin_conv2d_prepacked`, float64 NCHW input to
  float64 NCHW output with everything per call counted -- validation, binarization and packing
  of the activations (fused with the finiteness check), the border tables, the popcount
  convolution and the rescale. The weights are packed once beforehand
  (:func:`~adabin_np.packed.pack_weights`), as a model does once per weight update; that step
  is timed separately as ``pack_weights_ms``.
* ``torch_f32``: ``torch.nn.functional.conv2d`` on float32 tensors under ``no_grad`` (skipped
  when torch is not installed; torch is never needed by the package itself).
* ``float64``: :func:`adabin_np.adabin_conv2d`, the float oracle (binarize x and W in float64,
  direct convolution); fewer repeats since it is slow.

Timing: ``--warmup`` untimed calls, then the median (and min) of ``--repeats`` wall-clock
calls (``time.perf_counter``). Throughput is given in binary operations per second,
``2*N*O*OH*OW*C*kh*kw`` per call (one multiply and one add per binary MAC, as for FLOP/s).
``speedup_bound_at_roofline`` = roofline / torch's achieved FLOP/s: the speedup over torch a
packed kernel running its whole convolution at the popcount roofline (no packing, no output
traffic) would reach on this machine.

Roofline: :func:`adabin_np.kernels_cpu.popcount_roofline` runs the convolution's inner loop
(:func:`~adabin_np.kernels_cpu._xor_popcount_block`: a broadcast activation word XOR-ed with
a contiguous row of packed weights, popcount, int64 accumulate, four words per pass) on a
16 x 128-word block that stays in L1, on every thread, with no gathering, rescaling or memory
traffic. One word-op = one 64-bit XOR + popcount + add = 64 binary MACs = 128 binary ops; the
roofline is its measured word-ops/s x 128. ``--asm`` also compiles an uncached copy of the
convolution kernel and counts ``popcnt`` / ``vpshufb`` / ``vpsadbw`` in its assembly (LLVM
lowers ``llvm.ctpop.i64`` to ``popcnt`` in scalar code and to a nibble-lookup ``vpshufb``
sequence summed by ``vpsadbw`` when it vectorises over output channels on AVX2; ``vpopcntq``
would appear on AVX-512 VPOPCNTDQ machines).

Numbers are only as good as the machine is quiet: on a shared machine run it again.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import time

import numpy as np

__all__ = ["LAYERS", "add_arguments", "run", "popcount_asm_counts", "roofline"]

#: (channels, spatial size) of the ResNet-18 3x3 stage convolutions
LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]


def add_arguments(parser):
    """Add the benchmark's options to an ``argparse`` parser (used by ``adabin-np bench``)."""
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8],
                        help="batch sizes (default: 1 8)")
    parser.add_argument("--threads", type=int, default=2,
                        help="numba and torch threads (default: 2)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, metavar="C",
                        help="subset of layers by channel count (default: 64 128 256 512)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls (default: 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls (default: 2)")
    parser.add_argument("--float-repeats", type=int, default=3,
                        help="timed calls of the float64 path (default: 3; 0 skips it)")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    parser.add_argument("--asm", action=argparse.BooleanOptionalAction, default=True,
                        help="count popcount instructions in the kernel's assembly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the result dict as JSON")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    return parser


def _namespace(args):
    if isinstance(args, argparse.Namespace):
        return args
    parser = add_arguments(argparse.ArgumentParser(prog="adabin-np bench"))
    return parser.parse_args([] if args is None else list(args))


def _time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def roofline(threads, *, rows=16, o_block=128, seconds=0.3, seed=0):
    """Measured peak of the popcount inner loop: ``(word_ops_per_s, binary_ops_per_s)``."""
    from . import kernels_cpu as _k

    rng = np.random.default_rng(seed)
    wb = rng.integers(0, 2**63, size=(rows, o_block), dtype=np.int64).view(np.uint64)
    col = rng.integers(0, 2**63, size=rows, dtype=np.int64).view(np.uint64)
    _k.popcount_roofline(wb, col, 10, threads)
    reps = 1000
    while True:
        t0 = time.perf_counter()
        _k.popcount_roofline(wb, col, reps, threads)
        dt = time.perf_counter() - t0
        if dt > seconds / 3 or reps > 10**8:
            break
        reps *= 4
    best = min(_time(lambda: _k.popcount_roofline(wb, col, reps, threads), 0, 3))
    word_ops = threads * reps * rows * o_block / best
    return word_ops, 128.0 * word_ops


def popcount_asm_counts():
    """Compile an uncached copy of the packed convolution kernel and count popcount-related
    instructions in its x86 assembly (``{}`` on other architectures' mnemonics)."""
    from numba import njit

    from . import kernels_cpu as _k
    from . import packed as _p

    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4))
    w = np.random.default_rng(1).standard_normal((8, 8, 3, 3))
    _p.packed_adabin_conv2d(x, w, 1.0, 0.0, padding=1)  # makes sure a signature exists
    sig = _k.packed_conv_forward.signatures[0]
    fresh = njit(parallel=True, error_model="numpy")(_k.packed_conv_forward.py_func)
    fresh.compile(sig)
    asm = fresh.inspect_asm(sig)
    counts = {}
    for mnemonic in ("popcnt", "vpopcntq", "vpshufb", "vpsadbw", "vpxor"):
        counts[mnemonic] = len(re.findall(rf"\b{mnemonic}\w*\b", asm))
    return counts


def _torch_conv(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args=None):
    """Run the benchmark; ``args`` is an ``argparse.Namespace`` from :func:`add_arguments`,
    a list of command-line strings, or ``None`` for the defaults. Returns a JSON-ready dict
    (also printed as a table unless ``--quiet``, and written to ``--json`` if given)."""
    import numba

    from . import packed as _p
    from .conv import adabin_conv2d

    a = _namespace(args)
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0 or a.float_repeats < 0:
        raise ValueError("threads and repeats must be >= 1, warmup and float-repeats >= 0")
    layers = [layer for layer in LAYERS if a.layers is None or layer[0] in a.layers]
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    threads = numba.get_num_threads()
    torch = None if a.no_torch else _torch_conv(threads)
    rng = np.random.default_rng(a.seed)

    word_ops, roof_ops = roofline(threads, seed=a.seed)
    result = {
        "machine": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": threads,
                    "numba": numba.__version__, "numpy": np.__version__,
                    "torch": None if torch is None else torch.__version__,
                    "threading_layer": None},
        "settings": {"repeats": a.repeats, "warmup": a.warmup,
                     "float_repeats": a.float_repeats, "batches": list(a.batch),
                     "statistic": "median wall-clock seconds per call (min also given)",
                     "weights": "pre-packed once per layer (pack_weights_ms), not in packed_s"},
        "roofline": {"word_ops_per_s": word_ops, "binary_ops_per_s": roof_ops,
                     "definition": "L1-resident XOR+popcount+accumulate inner loop on every "
                                   "thread; 1 word-op = 64 binary MACs = 128 binary ops"},
        "asm": popcount_asm_counts() if a.asm else None,
        "rows": [],
        "geomean_speedup_vs_torch": {},
        "caveat": "wall-clock on a possibly shared machine; re-run on a quiet one",
    }
    try:
        result["machine"]["threading_layer"] = numba.threading_layer()
    except ValueError:
        pass

    cases = []
    for batch in a.batch:
        for c, hw in layers:
            x = rng.standard_normal((batch, c, hw, hw))
            w = rng.standard_normal((c, c, 3, 3))
            t0 = time.perf_counter()
            pw = _p.pack_weights(w)
            pack_w = time.perf_counter() - t0
            ops = 2.0 * batch * c * hw * hw * c * 9
            cases.append((x, w, pw))
            result["rows"].append({"layer": f"{c}ch {hw}x{hw}", "channels": c, "size": hw,
                                   "batch": batch, "binary_ops": ops,
                                   "pack_weights_ms": 1e3 * pack_w})
    alpha, beta = 0.8, 0.05
    # one implementation at a time, with a pause in between: OpenMP runtimes keep their
    # threads spinning for a while after a parallel region, which would steal the cores from
    # the next implementation's threads
    for (x, w, pw), row in zip(cases, result["rows"]):
        med, best = _time(lambda: _p.packed_adabin_conv2d_prepacked(x, pw, alpha, beta,
                                                                     padding=1),
                          a.warmup, a.repeats)
        row.update(packed_s=med, packed_min_s=best,
                   packed_binary_ops_per_s=row["binary_ops"] / med,
                   fraction_of_roofline=row["binary_ops"] / med / roof_ops)
    if torch is not None:
        time.sleep(0.5)
        for (x, w, _), row in zip(cases, result["rows"]):
            xt = torch.from_numpy(x.astype(np.float32))
            wt = torch.from_numpy(w.astype(np.float32))
            with torch.no_grad():
                med, best = _time(lambda: torch.nn.functional.conv2d(xt, wt, padding=1),
                                  a.warmup, a.repeats)
            ops = row["binary_ops"]
            row.update(torch_f32_s=med, torch_f32_min_s=best, torch_flops_per_s=ops / med,
                       speedup_vs_torch=med / row["packed_s"],
                       speedup_bound_at_roofline=roof_ops * med / ops)
    if a.float_repeats:
        time.sleep(0.5)
        for (x, w, _), row in zip(cases, result["rows"]):
            med, best = _time(lambda: adabin_conv2d(x, w, alpha, beta, padding=1), 1,
                              a.float_repeats)
            row.update(float64_s=med, float64_min_s=best,
                       speedup_vs_float64=med / row["packed_s"])
    for batch in a.batch:
        speedups = [r["speedup_vs_torch"] for r in result["rows"]
                    if r["batch"] == batch and "speedup_vs_torch" in r]
        if speedups:
            result["geomean_speedup_vs_torch"][str(batch)] = math.exp(
                sum(math.log(s) for s in speedups) / len(speedups))

    if not a.quiet:
        print(format_table(result))
    if a.json:
        import json

        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def format_table(result):
    """The benchmark result as a plain-text table."""
    m = result["machine"]
    lines = [f"packed AdaBin conv (CPU): {m['cpu']}, {m['threads']} thread(s), "
             f"numba {m['numba']} ({m['threading_layer']}), torch {m['torch']}",
             f"popcount roofline: {result['roofline']['binary_ops_per_s'] / 1e9:.0f} Gop/s "
             f"({result['roofline']['word_ops_per_s'] / 1e9:.2f} G word-ops/s)"]
    if result.get("asm"):
        lines.append("kernel asm: " + ", ".join(f"{k} x{v}" for k, v in result["asm"].items()))
    head = (f"{'layer':>14} {'N':>2} {'packed ms':>10} {'Gop/s':>7} {'roof':>5} "
            f"{'torch32 ms':>10} {'x torch':>7} {'bound':>6} {'float64 ms':>10} {'x f64':>7}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        t = (f"{1e3 * r['torch_f32_s']:10.2f} {r['speedup_vs_torch']:7.1f} "
             f"{r['speedup_bound_at_roofline']:6.1f}") \
            if "torch_f32_s" in r else f"{'-':>10} {'-':>7} {'-':>6}"
        f = f"{1e3 * r['float64_s']:10.1f} {r['speedup_vs_float64']:7.0f}" \
            if "float64_s" in r else f"{'-':>10} {'-':>7}"
        lines.append(f"{r['layer']:>14} {r['batch']:>2} {1e3 * r['packed_s']:10.2f} "
                     f"{r['packed_binary_ops_per_s'] / 1e9:7.0f} "
                     f"{100 * r['fraction_of_roofline']:4.0f}% {t} {f}")
    for batch, g in result["geomean_speedup_vs_torch"].items():
        lines.append(f"geometric-mean speedup over torch float32 at batch {batch}: {g:.1f}x")
    lines.append("(bound: speedup over torch at 100% of the popcount roofline; "
                 f"{result['caveat']})")
    return "\n".join(lines)
