r"""``adabin-np bench``: the bit-packed CPU path against torch float32 and the float64 oracle.

Layers: the 3x3, stride-1, padding-1 convolutions of the four ResNet-18 stages (``64ch 56x56``,
``128ch 28x28``, ``256ch 14x14``, ``512ch 7x7``, C_in = C_out), batch 1 and 8, **float32 NCHW
in, float32 NCHW out**, on ``--threads`` threads for every contender (``numba.set_num_threads``,
``torch.set_num_threads``). Contenders, timed **interleaved** round-robin after ``--warmup``
untimed rounds (so load from other processes hits all alike), min / median / max reported:

* ``packed``: :func:`adabin_np.packed_adabin_conv2d_prepacked` with weights packed once
  (everything else per call: validation, binarize + pack, popcount kernel, rescale);
* ``oneshot``: :func:`adabin_np.packed_adabin_conv2d` with the raw float32 weights (what a
  user's test calls: includes :func:`~adabin_np.pack_weights`);
* ``torch_f32``: ``torch.nn.functional.conv2d`` under ``no_grad`` (skipped without torch);
* ``float64``: :func:`adabin_np.adabin_conv2d`, the oracle (first ``--float-repeats`` rounds).

Round order: ``packed``, ``oneshot``, ``pack_weights``, ``torch_f32``, ``float64``. So
``packed`` and ``torch_f32`` -- the headline ratio -- each run right after the other's
family, with caches holding the other's data (torch's call streams its float weights and
im2col buffers through the caches; the packed call then refetches its own working set from
memory). A second interleaved pass times ``packed`` and ``torch_f32`` each right after an
untimed call of its own (``packed_again``, ``torch_f32_again``): a repeated call, as a layer
inside a loop sees it -- the "on a repeat" ratio.

Per layer also: the **stage breakdown** of one packed call (layout lookup, binarize+pack,
tables, popcount microkernels, epilogue = kernel - microkernels, Python rest), the
**roofline** (:mod:`.roofline`: the same microkernel on L1-resident data, best of several
runs, a true upper bound), the popcount stage's fraction of it, and the **bound** =
``max(popcounts at the roofline, float32 I/O at the measured bandwidth)`` with the packed
call's fraction of it and the speedup over torch it would give. Then the **whole ResNet-18**
row (:mod:`.model`): ``model(x, packed=True)`` in float32 against the same network in torch
float32, batch 8 (``--model-batch``). Binary ops: ``2*N*O*OH*OW*C*kh*kw`` per conv.

``adabin-np bench --float ...`` runs the float64-path benchmark of :mod:`adabin_np.bench_float`
instead (its own options). Numbers are only as good as the machine is quiet.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .roofline import bandwidth, layer_bound, popcount_roofline
from .timing import cpu_name, interleaved, isa, parse_options

__all__ = ["LAYERS", "add_arguments", "run", "format_table"]

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
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds (default: 3)")
    parser.add_argument("--float-repeats", type=int, default=2,
                        help="rounds that include the float64 path (default: 2; 0 skips it)")
    parser.add_argument("--model-batch", type=int, default=8,
                        help="batch of the whole-ResNet-18 row (default: 8; 0 skips it)")
    parser.add_argument("--model-repeats", type=int, default=5,
                        help="timed rounds of the whole-model row (default: 5)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: wall-clock (default); cpu: CPU time of the calling thread, "
                             "needs --threads 1 -- robust on a machine loaded by others")
    parser.add_argument("--omp-spin", default="10000", metavar="N|default",
                        help="GOMP_SPINCOUNT for both OpenMP runtimes in the process (numba's "
                             "and torch's bundled libgomp; default: 10000; 'default' keeps "
                             "libgomp's own). Takes effect only if set before either is loaded "
                             "and GOMP_SPINCOUNT is not set already; the result records what "
                             "was in effect")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the result dict as JSON")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    return parser


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _geomean(vals):
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def _clock(a):
    return time.thread_time if a.clock == "cpu" else time.perf_counter


def _stage_breakdown(x, pw, alpha, beta, repeats, clock=time.perf_counter):
    """Median seconds per stage of one packed call, along the route a repeated call takes
    (see the module docstring): ``validation`` is the remembered-call lookup of
    :func:`~adabin_np.packed_adabin_conv2d_prepacked` (the call was made before)."""
    from .. import packed as P
    from ..packed import conv as PC
    from ..packed import cpu as PU

    P.packed_adabin_conv2d_prepacked(x, pw, alpha, beta, padding=1)  # remembered from here on
    acc = {}
    for _ in range(repeats):
        t0 = clock()
        key = PC._fast_key(x, pw, alpha, beta, 1, 1, 1, 1, "paper", "cpu", False)
        p, a_c, b_c, official, act = pw._fast_cache[key]
        t1 = clock()
        st = {}
        PU._STAGE_CLOCK[0] = clock
        try:
            PU._run_cpu(x, pw, a_c, b_c, p, official, stages=st, act=act)
        finally:
            PU._STAGE_CLOCK[0] = time.perf_counter
        st["validation"] = t1 - t0
        for k, v in st.items():
            acc.setdefault(k, []).append(v)
    med = {k: float(np.median(v)) for k, v in acc.items()}
    return {"validation_s": med["validation"], "layout_s": med["layout"],
            "binarize_pack_s": med["pack"], "tables_s": med["tables"],
            "popcount_s": med["tiles"], "epilogue_s": max(0.0, med["kernel"] - med["tiles"])}


def _layers(a, threads, torch, rng, bw):
    from .. import packed as P
    from ..conv import adabin_conv2d

    alpha, beta = 0.8, 0.05
    rows = []
    roofs = {}
    layers = [lay for lay in LAYERS if a.layers is None or lay[0] in a.layers]
    for batch in a.batch:
        for c, hw in layers:
            x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
            w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
            pw = P.pack_weights(w)
            fns = {"packed": lambda: P.packed_adabin_conv2d_prepacked(x, pw, alpha, beta,
                                                                       padding=1),
                   "oneshot": lambda: P.packed_adabin_conv2d(x, w, alpha, beta, padding=1),
                   "pack_weights": lambda: P.pack_weights(w)}
            sparse = {}
            if torch is not None:
                xt, wt = torch.from_numpy(x), torch.from_numpy(w)

                def tconv(xt=xt, wt=wt):
                    with torch.no_grad():
                        return torch.nn.functional.conv2d(xt, wt, padding=1)
                fns["torch_f32"] = tconv
            if a.float_repeats:
                x64, w64 = x.astype(np.float64), w.astype(np.float64)
                fns["float64"] = lambda: adabin_conv2d(x64, w64, alpha, beta, padding=1)
                sparse["float64"] = a.float_repeats
            y_p = fns["packed"]()
            t = interleaved(fns, a.warmup, a.repeats, sparse=sparse, clock=_clock(a))
            # the same two on a repeated call (each timed right after an untimed one of its own)
            again = interleaved({k: fns[k] for k in ("packed", "torch_f32") if k in fns}, 1,
                                a.repeats, prime=True, clock=_clock(a))
            t.update({f"{k}_again": v for k, v in again.items()})
            word_ops = batch * c * hw * hw * 9 * (-(-c // 64))  # N*O*OH*OW*taps*words
            binops = 2.0 * batch * c * hw * hw * c * 9
            key = (9, -(-c // 64))
            if key not in roofs:
                roofs[key] = popcount_roofline(threads, *key, clock=_clock(a))
            roof = roofs[key]
            io = x.nbytes + y_p.nbytes
            bw_layer = bandwidth(nbytes=io, clock=_clock(a))
            st = _stage_breakdown(x, pw, alpha, beta, max(3, a.repeats // 3), _clock(a))
            # best of both probes (before and after the timings): noise only lowers a probe
            roof = roofs[key] = max(roof, popcount_roofline(threads, *key, clock=_clock(a)))
            bw_layer = max(bw_layer, bandwidth(nbytes=io, clock=_clock(a)))
            bound = layer_bound(word_ops, io, roof, bw_layer)
            med = t["packed"]["median_s"]
            row = {"layer": f"{c}ch {hw}x{hw}", "channels": c, "size": hw, "batch": batch,
                   "binary_ops": binops, "word_ops": word_ops, "io_bytes": io,
                   "times": t, "stages": st,
                   "roofline_word_ops_per_s": roof,
                   "popcount_fraction_of_roofline": word_ops / st["popcount_s"] / roof,
                   "bound_s": bound, "bandwidth_bytes_per_s": bw_layer,
                   "fraction_of_bound": bound / med,
                   "packed_binary_ops_per_s": binops / med,
                   "output_dtype": str(y_p.dtype)}
            if "torch_f32" in t:
                tm = t["torch_f32"]["median_s"]
                row.update(speedup_vs_torch=tm / med,
                           oneshot_speedup_vs_torch=tm / t["oneshot"]["median_s"],
                           speedup_bound=tm / bound,
                           speedup_vs_torch_again=(t["torch_f32_again"]["median_s"]
                                                   / t["packed_again"]["median_s"]))
            if "float64" in t:
                row["speedup_vs_float64"] = t["float64"]["median_s"] / med
            rows.append(row)
    return rows


def _model_row(a, torch):
    from .model import build, torch_network

    m = build(a.seed)
    x = np.random.default_rng(a.seed + 1).standard_normal(
        (a.model_batch, 3, 224, 224)).astype(np.float32)
    fns = {"packed": lambda: m(x, packed=True)}
    logits = fns["packed"]()
    row = {"network": "AdaBin ResNet-18 224x224", "batch": a.model_batch,
           "dtype": str(logits.dtype)}
    if torch is not None:
        net = torch_network(m, torch)
        xt = torch.from_numpy(x)

        def tnet():
            with torch.no_grad():
                return net(xt)
        fns["torch_f32"] = tnet
        ref = tnet().numpy()
        row["prediction_agreement"] = float(np.mean(ref.argmax(1) == logits.argmax(1)))
        row["max_abs_logit_diff"] = float(np.abs(ref - logits).max())
    t = interleaved(fns, 1, a.model_repeats, clock=_clock(a))
    row["times"] = t
    if "torch_f32" in t:
        row["speedup_vs_torch"] = t["torch_f32"]["median_s"] / t["packed"]["median_s"]
    return row


def run(args=None):
    """Run the benchmark; ``args`` is an ``argparse.Namespace`` from :func:`add_arguments`,
    a list of command-line strings, or ``None`` for the defaults. Returns a JSON-ready dict
    (also printed as a table unless ``--quiet``, and written to ``--json`` if given)."""
    if isinstance(args, (list, tuple)) and args and args[0] == "--float":
        from .. import bench_float

        res = bench_float.run(list(args[1:]))
        print(bench_float.format_table(res))
        return res
    a = parse_options(args, add_arguments, "adabin-np bench")
    omp_spin = _set_omp_spin(a.omp_spin)
    import numba

    if a.threads < 1 or a.repeats < 1 or a.warmup < 0 or a.float_repeats < 0:
        raise ValueError("threads and repeats must be >= 1, warmup and float-repeats >= 0")
    if a.clock == "cpu" and a.threads != 1:
        raise ValueError("--clock cpu measures the calling thread only: use --threads 1")
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    threads = numba.get_num_threads()
    torch = None if a.no_torch else _torch(threads)
    rng = np.random.default_rng(a.seed)
    try:  # NumPy's BLAS (the whole-model row's real layers) on the same number of threads
        import threadpoolctl

        blas_limit = threadpoolctl.threadpool_limits(threads, user_api="blas")
    except ImportError:
        blas_limit = None
    try:
        return _run(a, threads, torch, rng, omp_spin)
    finally:
        if blas_limit is not None:
            blas_limit.unregister()


def _libgomp_loaded():
    try:
        with open("/proc/self/maps") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return None


def _set_omp_spin(value):
    """Limit how long idle OpenMP workers spin (``GOMP_SPINCOUNT``) for this process.

    Interleaving the contenders puts two OpenMP runtimes in one process -- Numba's ``omp``
    threading layer (the system libgomp) and torch's bundled libgomp -- each with its own
    worker pool. libgomp's default lets a pool's workers spin for a while after every
    parallel region, so on a 2-core machine whichever contender runs next shares its cores
    with the other's spinning workers (measured on the Zen 5 VM: packed 512ch 7x7 batch 8
    0.41 ms alone, 0.63 ms right after a torch call; torch 4.53 ms alone, 4.65 ms after
    packed). A short spin removes this cross-contender interference for both (0.46 and 4.23
    ms). The setting is recorded in the result; nothing is changed when the variable is set
    already, when ``value == "default"``, or when a libgomp is already loaded (then it
    would not take effect)."""
    if value == "default":
        return {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"), "set_by_bench": False}
    if not str(value).isdigit():
        raise ValueError(f"--omp-spin must be a non-negative integer or 'default', got {value!r}")
    if "GOMP_SPINCOUNT" in os.environ:
        return {"GOMP_SPINCOUNT": os.environ["GOMP_SPINCOUNT"], "set_by_bench": False}
    if _libgomp_loaded() is not False:
        return {"GOMP_SPINCOUNT": None, "set_by_bench": False,
                "note": "libgomp was already loaded (or unknown): libgomp's default spin"}
    os.environ["GOMP_SPINCOUNT"] = str(value)
    return {"GOMP_SPINCOUNT": str(value), "set_by_bench": True}


def _run(a, threads, torch, rng, omp_spin):
    import numba

    bw = bandwidth(clock=_clock(a))
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads,
                    **isa(), "numba": numba.__version__, "numpy": np.__version__,
                    "torch": None if torch is None else torch.__version__,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg")
                    else None, "omp_spin": omp_spin},
        "settings": {"clock": a.clock, "repeats": a.repeats, "warmup": a.warmup,
                     "float_repeats": a.float_repeats,
                     "batches": list(a.batch), "dtype": "float32 in, float32 out",
                     "timing": "interleaved round-robin; min/median/max seconds per call of the "
                               "clock"},
        "bandwidth_bytes_per_s": bw,
        "rows": _layers(a, threads, torch, rng, bw),
    }
    for batch in a.batch:
        rs = [r for r in result["rows"] if r["batch"] == batch]
        result.setdefault("geomean", {})[str(batch)] = {
            "speedup_vs_torch": _geomean([r.get("speedup_vs_torch") for r in rs]),
            "oneshot_speedup_vs_torch": _geomean([r.get("oneshot_speedup_vs_torch")
                                                  for r in rs]),
            "speedup_vs_torch_again": _geomean([r.get("speedup_vs_torch_again") for r in rs]),
            "fraction_of_bound": _geomean([r["fraction_of_bound"] for r in rs]),
            "popcount_fraction_of_roofline": _geomean([r["popcount_fraction_of_roofline"]
                                                       for r in rs])}
    if a.model_batch:
        result["model"] = _model_row(a, torch)
    result["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if not a.quiet:
        print(format_table(result))
    if a.json:
        import json

        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def _ms(st):
    return f"{1e3 * st['median_s']:.2f} ({1e3 * st['min_s']:.2f}-{1e3 * st['max_s']:.2f})"


def format_table(result):
    """The benchmark result as plain text (median (min-max) milliseconds)."""
    m = result["machine"]
    lines = [f"packed AdaBin conv, float32 in/out: {m['cpu']} ({m['cpu_flags']}); numba target "
             f"{m['numba_target'][0]}/{m['numba_target'][1]}, tile {m['tile']}; "
             f"{m['threads']} thread(s); torch {m['torch']}; load {m.get('load_average')}; "
             f"GOMP_SPINCOUNT {(m.get('omp_spin') or {}).get('GOMP_SPINCOUNT') or 'default'}",
             f"clock: {result['settings']['clock']}; bandwidth "
             f"{result['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (copy, read+write)"]
    head = (f"{'layer':>13} {'N':>2} {'packed ms':>22} {'torch32 ms':>22} {'x torch':>7} "
            f"{'one-shot ms':>22} {'x':>5} {'pop%roof':>8} {'%bound':>6} {'x@bound':>7} "
            f"{'float64 ms':>10}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        t = r["times"]
        tor = _ms(t["torch_f32"]) if "torch_f32" in t else "-"
        lines.append(
            f"{r['layer']:>13} {r['batch']:>2} {_ms(t['packed']):>22} {tor:>22} "
            f"{r.get('speedup_vs_torch', float('nan')):7.1f} {_ms(t['oneshot']):>22} "
            f"{r.get('oneshot_speedup_vs_torch', float('nan')):5.1f} "
            f"{100 * r['popcount_fraction_of_roofline']:7.0f}% "
            f"{100 * r['fraction_of_bound']:5.0f}% {r.get('speedup_bound', float('nan')):7.1f} "
            + (f"{1e3 * t['float64']['median_s']:10.1f}" if "float64" in t else f"{'-':>10}"))
    lines.append("stages (median ms): validation / layout / binarize+pack / tables / popcount / "
                 "epilogue")
    for r in result["rows"]:
        s = r["stages"]
        lines.append(f"{r['layer']:>13} {r['batch']:>2}  " + " / ".join(
            f"{1e3 * s[k]:.3f}" for k in ("validation_s", "layout_s", "binarize_pack_s",
                                         "tables_s", "popcount_s", "epilogue_s")))
    for b, g in result.get("geomean", {}).items():
        lines.append(f"batch {b} geomean: x torch {g['speedup_vs_torch'] or float('nan'):.2f} "
                     f"(each right after the other; "
                     f"{g.get('speedup_vs_torch_again') or float('nan'):.2f} on a repeat), "
                     f"one-shot x torch {g['oneshot_speedup_vs_torch'] or float('nan'):.2f}, "
                     f"{100 * g['fraction_of_bound']:.0f}% of bound, popcount "
                     f"{100 * g['popcount_fraction_of_roofline']:.0f}% of roofline")
    mo = result.get("model")
    if mo:
        t = mo["times"]
        lines.append(f"{mo['network']} batch {mo['batch']} ({mo['dtype']}): packed "
                     f"{_ms(t['packed'])} ms" + (
                         f", torch f32 {_ms(t['torch_f32'])} ms, x torch "
                         f"{mo['speedup_vs_torch']:.2f}, predictions agree "
                         f"{100 * mo['prediction_agreement']:.0f}%" if "torch_f32" in t else ""))
    lines.append("pop%roof: popcount stage vs the microkernel roofline; %bound: bound / packed "
                 "time; x@bound: speedup over torch at the bound")
    return "\n".join(lines)
