"""Benchmark the bit-packed CPU path and save the result as JSON and a bar chart.

Runs :func:`adabin_np.bench.run` (ResNet-18 3x3 layers, batch 1 and 8, float32 in/out; packed
with weights packed once, one-shot, torch float32 and the float64 oracle timed interleaved;
stage breakdown, microkernel roofline, bandwidth bound; whole ResNet-18 row; see that package
for the definitions) and writes

* ``analysis/results/bench_packed.json`` -- the full result dict (``--name`` changes the stem);
* ``analysis/results/bench_packed.txt``  -- the printed table;
* ``analysis/results/bench_packed.png``  -- per batch size, median milliseconds per call (log
  scale, whiskers min-max) of each contender per layer, speedup over torch above the packed
  bar, and the bound as a black tick.

Usage (all options of ``adabin-np bench`` are accepted)::

    python analysis/bench_packed.py --threads 2 --batch 1 8
    python analysis/bench_packed.py --float-repeats 0 --out-dir /tmp/bench
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=... python analysis/bench_packed.py --name bench_packed_avx2

Timings are wall-clock: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adabin_np import bench  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"

SERIES = [("packed", "packed (weights packed once)", "#1f77b4"),
          ("oneshot", "packed one-shot (packs w)", "#9ecae1"),
          ("torch_f32", "torch float32 conv2d", "#ff7f0e"),
          ("float64", "adabin_conv2d (float64 oracle)", "#7f7f7f")]


def plot(result, path):
    """Bar chart of ``result`` (from :func:`adabin_np.bench.run`) into ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batches = sorted({r["batch"] for r in result["rows"]})
    fig = Figure(figsize=(6.5 * len(batches), 5.0))
    FigureCanvasAgg(fig)
    for i, batch in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), i + 1)
        rows = [r for r in result["rows"] if r["batch"] == batch]
        series = [s for s in SERIES if any(s[0] in r["times"] for r in rows)]
        width = 0.8 / len(series)
        for k, (key, label, color) in enumerate(series):
            xs = [j + (k - (len(series) - 1) / 2) * width for j in range(len(rows))]
            st = [r["times"].get(key) for r in rows]
            ms = [1e3 * t["median_s"] if t else float("nan") for t in st]
            lo = [m - 1e3 * t["min_s"] if t else 0 for m, t in zip(ms, st)]
            hi = [1e3 * t["max_s"] - m if t else 0 for m, t in zip(ms, st)]
            ax.bar(xs, ms, width, label=label, color=color, yerr=[lo, hi], capsize=2,
                   error_kw={"elinewidth": 0.6})
            if key == "packed":
                for x, m, r in zip(xs, ms, rows):
                    ax.hlines(1e3 * r["bound_s"], x - width / 2, x + width / 2, color="k")
                    if "speedup_vs_torch" in r:
                        ax.annotate(f"{r['speedup_vs_torch']:.1f}x", (x, m), ha="center",
                                    va="bottom", fontsize=8, xytext=(0, 2),
                                    textcoords="offset points")
        ax.set_xticks(range(len(rows)), [r["layer"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (median, min-max)")
        g = result["geomean"].get(str(batch), {}).get("speedup_vs_torch")
        title = f"batch {batch}"
        if g is not None:
            title += f"  (geo-mean {g:.1f}x over torch f32)"
        ax.set_title(title)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3,
                  frameon=False)
    m = result["machine"]
    fig.suptitle(f"AdaBin 3x3 convs of ResNet-18, float32, {m['threads']} thread(s), {m['cpu']} "
                 f"({m['numba_target'][1]}, {m['tile']}); black tick: bound", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.add_arguments(parser)
    parser.add_argument("--out-dir", type=Path, default=OUT,
                        help=f"output folder (default: {OUT})")
    parser.add_argument("--name", default="bench_packed",
                        help="file name stem of the JSON and PNG (default: bench_packed)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = bench.run(args)
    out_json = args.out_dir / f"{args.name}.json"
    out_png = args.out_dir / f"{args.name}.png"
    out_json.write_text(json.dumps(result, indent=2))
    (args.out_dir / f"{args.name}.txt").write_text(bench.format_table(result) + "\n")
    plot(result, out_png)
    print(f"wrote {out_json}, {out_png} and the table as .txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
