r"""Benchmark the float64 oracle path against torch float64 (forward and autograd backward).

Shapes (issue 15): ``x`` of shape ``(N, C, H, W)``, weights ``(C, C, 3, 3)``, stride 1,
padding 1, paper convention, scalar activation set ``alpha = 0.8, beta = 0.1``:
``8x64x16x16``, ``8x64x56x56``, ``1x256x14x14``, ``32x16x32x32``.

Per shape, all in one process on the same number of threads (``numba.set_num_threads``,
``torch.set_num_threads`` and NumPy's BLAS through ``threadpoolctl`` when available; default 2):

* ``oracle_fwd``: :func:`adabin_np.adabin_conv2d` (validation, binarization, exact integer
  counts, combination);
* ``torch_fwd``: the same binarize + ``conv2d`` in torch float64 under ``no_grad``
  (``sign`` via ``torch.where(v >= 0, 1, -1)``, weights' std/mean per output channel);
* ``oracle_grad``: :func:`adabin_np.adabin_conv2d_grad` (all four gradients);
* ``torch_fwd_bwd``: torch float64 forward with straight-through estimators (Bi-Real for the
  activations, EDE through std/mean for the weights) and ``backward`` -- what a user's torch
  test would run to get the same four gradients.

Timing: the calls of a shape are interleaved round-robin (oracle, torch, oracle, torch, ...)
so that load from other processes hits both sides alike; ``--warmup`` untimed rounds, then
``--repeats`` timed rounds; min / median / max of ``time.perf_counter`` wall clock per call.
Ratios are ``torch median / oracle median`` (> 1: the oracle is faster). Geometric means run
over the shapes.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .bench.timing import cpu_flags, cpu_name, interleaved, parse_options

__all__ = ["SHAPES", "add_arguments", "run", "format_table", "plot", "main"]

#: (N, C, H, W) of the issue's table; weights (C, C, 3, 3), padding 1
SHAPES = [(8, 64, 16, 16), (8, 64, 56, 56), (1, 256, 14, 14), (32, 16, 32, 32)]

_ALPHA, _BETA = 0.8, 0.1


def add_arguments(parser):
    """Add the float benchmark's options to an ``argparse`` parser."""
    parser.add_argument("--threads", type=int, default=2,
                        help="numba, BLAS and torch threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (default: 2)")
    parser.add_argument("--shapes", type=int, nargs="+", default=None, metavar="I",
                        help="subset of the shapes by index 0..3 (default: all)")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the result dict as JSON")
    parser.add_argument("--png", default=None, metavar="PATH", help="also write a bar chart")
    return parser


def _loadavg():
    """1-minute load average (a shared machine's other load shows up here), or None."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _torch_fns(torch, x, w, gy):
    """torch float64 forward (no_grad) and forward+backward with straight-through estimators."""
    f = torch.nn.functional
    xt = torch.from_numpy(x)
    wt = torch.from_numpy(w)
    gt = torch.from_numpy(gy)
    one = torch.ones((), dtype=torch.float64)

    def sign(v):
        return torch.where(v >= 0, one, -one)

    def bireal(v):
        return torch.where(v < -1, -one, torch.where(v < 0, 2 * v + v * v,
                                                     torch.where(v < 1, 2 * v - v * v, one)))

    def binarize(xx, ww, ste):
        v = (xx - _BETA) / _ALPHA
        s = bireal(v) + (sign(v) - bireal(v)).detach() if ste else sign(v)
        xb = _ALPHA * s + _BETA
        flat = ww.reshape(ww.shape[0], -1)
        bw = flat.mean(dim=1, keepdim=True)
        aw = ((flat - bw) ** 2).mean(dim=1, keepdim=True).sqrt()
        u = (flat - bw) / aw
        if ste:
            sur = 10.0 * torch.tanh(0.1 * u)
            su = sur + (sign(u) - sur).detach()
        else:
            su = sign(u)
        return xb, (aw * su + bw).reshape(ww.shape)

    def fwd():
        with torch.no_grad():
            xb, wb = binarize(xt, wt, False)
            return f.conv2d(xb, wb, padding=1)

    def fwd_bwd():
        xr = xt.detach().clone().requires_grad_(True)
        wr = wt.detach().clone().requires_grad_(True)
        a = torch.tensor(_ALPHA, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(_BETA, dtype=torch.float64, requires_grad=True)
        v = (xr - b) / a
        s = bireal(v) + (sign(v) - bireal(v)).detach()
        xb = a * s + b
        _, wb = binarize(xr, wr, True)
        y = f.conv2d(xb, wb, padding=1)
        y.backward(gt)
        return xr.grad, wr.grad, a.grad, b.grad

    return fwd, fwd_bwd


def _set_threads(threads, torch):
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    blas = None
    try:
        import threadpoolctl

        blas = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        pass
    if torch is not None:
        torch.set_num_threads(threads)
    return numba.get_num_threads(), blas


def run(args=None):
    """Run the float-path benchmark; ``args``: an ``argparse.Namespace`` from
    :func:`add_arguments`, a list of command-line strings, or ``None`` for the defaults.
    Returns a JSON-ready dict (written to ``--json`` and plotted to ``--png`` if given)."""
    import numba

    from .conv import adabin_conv2d, adabin_conv2d_grad

    a = parse_options(args, add_arguments, "adabin-np bench --float")
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0:
        raise ValueError("threads and repeats must be >= 1, warmup >= 0")
    shapes = [SHAPES[i] for i in (range(len(SHAPES)) if a.shapes is None else a.shapes)]
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    threads, blas_limit = _set_threads(a.threads, torch)
    result = {
        "machine": {"cpu": cpu_name(), "isa": cpu_flags(), "cpu_count": os.cpu_count(),
                    "threads": threads, "numba": numba.__version__, "numpy": np.__version__,
                    "torch": None if torch is None else torch.__version__},
        "settings": {"repeats": a.repeats, "warmup": a.warmup, "alpha": _ALPHA, "beta": _BETA,
                     "convention": "paper", "kernel": "3x3", "padding": 1,
                     "timing": "interleaved rounds; min/median/max wall-clock s per call"},
        "rows": [],
        "caveat": "wall-clock on a possibly shared machine; ratios are measured side by side",
    }
    result["machine"]["loadavg_before"] = _loadavg()
    rng = np.random.default_rng(a.seed)
    try:
        for shape in shapes:
            n, c, h, wd = shape
            x = rng.standard_normal(shape)
            w = rng.standard_normal((c, c, 3, 3))
            gy = rng.standard_normal((n, c, h, wd))
            fns = {"oracle_fwd": lambda: adabin_conv2d(x, w, _ALPHA, _BETA, padding=1),
                   "oracle_grad": lambda: adabin_conv2d_grad(x, w, _ALPHA, _BETA, gy, padding=1)}
            if torch is not None:
                fns["torch_fwd"], fns["torch_fwd_bwd"] = _torch_fns(torch, x, w, gy)
            row = {"shape": list(shape), "w_shape": [c, c, 3, 3],
                   "macs": n * c * h * wd * c * 9}
            row.update(interleaved(fns, a.warmup, a.repeats))
            if torch is not None:
                row["fwd_speedup"] = row["torch_fwd"]["median_s"] / row["oracle_fwd"]["median_s"]
                row["grad_ratio"] = (row["oracle_grad"]["median_s"]
                                     / row["torch_fwd_bwd"]["median_s"])
            result["rows"].append(row)
    finally:
        if blas_limit is not None:
            blas_limit.unregister()
    result["machine"]["loadavg_after"] = _loadavg()
    if torch is not None and result["rows"]:
        def geo(key):
            vals = [r[key] for r in result["rows"]]
            return math.exp(sum(math.log(v) for v in vals) / len(vals))
        result["geomean_fwd_speedup_vs_torch"] = geo("fwd_speedup")
        result["geomean_grad_time_ratio_vs_torch"] = geo("grad_ratio")
        result["targets"] = {
            "forward: geomean speedup >= 1": result["geomean_fwd_speedup_vs_torch"] >= 1.0,
            "gradients: geomean time ratio <= 1.5": result["geomean_grad_time_ratio_vs_torch"]
            <= 1.5,
        }
    if a.json:
        import json

        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)
    if a.png:
        plot(result, a.png)
    return result


def _ms(stat):
    return (f"{1e3 * stat['median_s']:.1f} ({1e3 * stat['min_s']:.1f}-"
            f"{1e3 * stat['max_s']:.1f})")


def format_table(result):
    """Markdown table of a :func:`run` result: median (min-max) milliseconds per call."""
    m = result["machine"]
    lines = [f"float64 path, {m['threads']} threads, {m['cpu']} ({m['isa']}); numba "
             f"{m['numba']}, numpy {m['numpy']}, torch {m['torch']}",
             f"ms per call, median (min-max) of interleaved rounds; 1-min load average "
             f"{m.get('loadavg_before')} before, {m.get('loadavg_after')} after "
             f"({m['cpu_count']} CPUs)",
             "",
             "| x shape, w (C, C, 3, 3), pad 1 | `adabin_conv2d` | torch f64 fwd | fwd speedup "
             "| `adabin_conv2d_grad` | torch f64 fwd+bwd | grad time ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        shape = "x".join(str(v) for v in r["shape"])
        has_t = "torch_fwd" in r
        tf = _ms(r["torch_fwd"]) if has_t else "-"
        tb = _ms(r["torch_fwd_bwd"]) if has_t else "-"
        sp = f"{r['fwd_speedup']:.2f}x" if has_t else "-"
        gr = f"{r['grad_ratio']:.2f}x" if has_t else "-"
        lines.append(f"| {shape} | {_ms(r['oracle_fwd'])} | {tf} | {sp} | "
                     f"{_ms(r['oracle_grad'])} | {tb} | {gr} |")
    if "geomean_fwd_speedup_vs_torch" in result:
        rows = result["rows"]

        def geo_min(num, den):
            vals = [r[num]["min_s"] / r[den]["min_s"] for r in rows]
            return math.exp(sum(math.log(v) for v in vals) / len(vals))

        lines.append("")
        fwd_min = geo_min("torch_fwd", "oracle_fwd")
        grad_min = geo_min("oracle_grad", "torch_fwd_bwd")
        lines.append(f"from the fastest call of each (min): forward {fwd_min:.2f}x the speed of "
                     f"torch, gradients {grad_min:.2f}x its time")
        lines.append(f"geometric mean: forward {result['geomean_fwd_speedup_vs_torch']:.2f}x "
                     f"the speed of torch float64 (target >= 1); gradients take "
                     f"{result['geomean_grad_time_ratio_vs_torch']:.2f}x torch float64 "
                     f"autograd's time (target <= 1.5)")
    return "\n".join(lines)


def plot(result, path):
    """Small bar chart of the medians (log scale), oracle vs torch, forward and gradients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = ["x".join(str(v) for v in r["shape"]) for r in rows]
    keys = [("oracle_fwd", "adabin_conv2d"), ("torch_fwd", "torch f64 fwd"),
            ("oracle_grad", "adabin_conv2d_grad"), ("torch_fwd_bwd", "torch f64 fwd+bwd")]
    keys = [k for k in keys if rows and k[0] in rows[0]]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    width = 0.8 / max(1, len(keys))
    for i, (key, label) in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))]
        med = [1e3 * r[key]["median_s"] for r in rows]
        lo = [1e3 * (r[key]["median_s"] - r[key]["min_s"]) for r in rows]
        hi = [1e3 * (r[key]["max_s"] - r[key]["median_s"]) for r in rows]
        ax.bar(xs, med, width, yerr=[lo, hi], label=label, capsize=2)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (median, min-max)")
    m = result["machine"]
    ax.set_title(f"float64 path vs torch float64, {m['threads']} threads", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    """Command-line entry: parse ``argv`` (the float benchmark's options), run, print the table.

    ``adabin-np bench`` can hand its float-path arguments here; returns the result dict.
    """
    result = run(list(argv) if argv is not None else None)
    print(format_table(result))
    return result


if __name__ == "__main__":  # python -m adabin_np.bench_float --json ... --png ...
    import sys

    main(sys.argv[1:])
