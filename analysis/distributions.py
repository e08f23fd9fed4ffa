"""Reproduce the per-layer distribution figures (issue 6).

    python analysis/distributions.py --out analysis/out

writes, for each model, ``<out>/<model>/layers_*.png``, ``summary.png``, ``landscape.png`` and
``summary.json`` (see :func:`adabin_np.distributions.analyze_model`):

* ``resnet20`` -- the public ResNet-20 1w1a CIFAR-10 checkpoint of the AdaBin release
  (``../shared/data/adabin_resnet20_1w1a_cifar10.th`` by default; skipped with a message when
  missing), ``convention="official"``, on ``--n`` 32x32 crops of scikit-learn's two sample
  photographs normalised with the release's mean/std (stand-ins for CIFAR-10 images: no
  download).
* ``digits`` -- the embedded digits model (``adabin_np/data/digits_adabin.npz``; skipped when
  missing) on the scikit-learn digits test split (360 images).

``--readme`` additionally copies the README figure to ``docs/figures/``.

``--throughput N`` instead measures the streamed analysis (issue 14) of the public ResNet-20
on ``N`` crops saved as an ``.npy`` file: images/s in one process vs ``scheduler="local"``
(a dask LocalCluster, one worker per CPU), whether both summaries agree (apart from ``run``),
and the per-image cost model (float64 oracle forward, packed forward, streamed statistics;
ResNet-20 at 32x32 and ResNet-18 at 224x224) from which to size a cluster. Results go to
``analysis/results/stream_throughput.json`` (``..._1thread.json`` under
``NUMBA_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adabin_np.distributions import DEFAULT_FLIP_TOL, analyze_model  # noqa: E402

DEFAULT_CHECKPOINT = ROOT.parent / "shared" / "data" / "adabin_resnet20_1w1a_cifar10.th"
README_FIGURE = ROOT / "docs" / "figures" / "resnet20_distributions.png"


def run_resnet20(out, checkpoint, n, tol, progress):
    from adabin_np.checkpoint import load_checkpoint
    from adabin_np.data import sample_image_crops
    from adabin_np.models import resnet20_1w1a

    if not Path(checkpoint).exists():
        print(f"[resnet20] checkpoint not found at {checkpoint}: skipped")
        return None
    model = resnet20_1w1a("official")
    model.load_state_dict(load_checkpoint(checkpoint))
    model.eval()
    x = sample_image_crops(n, 32)
    t = time.perf_counter()
    summary = analyze_model(model, x, out_dir=out / "resnet20",
                            name=f"ResNet-20 1w1a, public checkpoint ({n} image crops)",
                            progress=progress, flip_tol=tol)
    print(f"[resnet20] {len(summary['layers'])} binary layers, {n} inputs, "
          f"{time.perf_counter() - t:.1f} s -> {out / 'resnet20'}")
    return summary


def run_digits(out, tol, progress):
    from adabin_np.data import load_digits_split
    from adabin_np.models import DIGITS_WEIGHTS, load_digits_model

    if not DIGITS_WEIGHTS.exists():
        print(f"[digits] embedded weights not found at {DIGITS_WEIGHTS}: skipped "
              f"(create them with `adabin-np train`)")
        return None
    model = load_digits_model()
    x = load_digits_split().x_test
    t = time.perf_counter()
    summary = analyze_model(model, x, out_dir=out / "digits",
                            name=f"digits 1w1a CNN, embedded model ({len(x)} test images)",
                            progress=progress, flip_tol=tol)
    print(f"[digits] {len(summary['layers'])} binary layers, {len(x)} inputs, "
          f"{time.perf_counter() - t:.1f} s -> {out / 'digits'}")
    return summary


def readme_figure(out, resnet_summary):
    """Copy the ResNet-20 summary figure to docs/figures/ (must stay under 300 KB)."""
    if resnet_summary is None:
        print("[readme] no ResNet-20 figures: docs/figures/ left unchanged")
        return
    src = out / "resnet20" / "summary.png"
    README_FIGURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, README_FIGURE)
    size = README_FIGURE.stat().st_size
    print(f"[readme] {src} -> {README_FIGURE} ({size / 1024:.0f} KB)")
    if size > 300 * 1024:
        print("[readme] warning: the figure exceeds 300 KB")


def _timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def _compare(a, b):
    """``{"exact": non-floats equal, "max_rel_diff": largest float difference}`` of two
    summaries (the issue's criterion: integers exactly, floats to 1e-9 relative)."""
    worst = 0.0
    exact = True

    def walk(u, v):
        nonlocal worst, exact
        if isinstance(u, dict) and isinstance(v, dict) and set(u) == set(v):
            for k in u:
                walk(u[k], v[k])
        elif isinstance(u, list) and isinstance(v, list) and len(u) == len(v):
            for p, q in zip(u, v):
                walk(p, q)
        elif isinstance(u, float) and isinstance(v, float):
            if u != v:
                worst = max(worst, abs(u - v) / max(abs(u), abs(v)))
        else:
            exact = exact and u == v

    walk(a, b)
    return {"exact": exact, "max_rel_diff": worst}


def _per_image_costs(model, x, repeat):
    """Seconds per image (min/median/max over ``repeat``) of the three parts of a chunk."""
    from adabin_np.distributions.stats import ActivationStats
    from adabin_np.distributions.summary import layer_spec

    model.eval()
    n = len(x)
    specs = []
    for i, (name, layer) in enumerate(model.binary_layers()):
        specs.append(layer_spec(name, layer.params["weight"], float(layer.binary_a.alpha),
                                float(layer.binary_a.beta), model.convention, tol=DEFAULT_FLIP_TOL,
                                conv={k: getattr(layer, k) for k in ("stride", "padding",
                                                                     "dilation", "groups")},
                                index=i))
    model(x, record=True)
    recorded = [layer.recorded_input for _, layer in model.binary_layers()]

    def stats():
        for spec, rec in zip(specs, recorded):
            ActivationStats(spec).update(rec, 0)

    stats()  # the weight part of outputs_at_risk is computed once per layer: not timed

    out = {"float64_forward": _timed(lambda: model(x, record=True), repeat),
           "packed_forward": _timed(lambda: model(x, packed=True), repeat),
           "statistics": _timed(stats, repeat)}
    return {k: {q: v / n for q, v in d.items()} for k, d in out.items()}


def run_throughput(checkpoint, n, chunk, workers, repeat, results):
    """images/s one process vs LocalCluster, and the per-image cost model."""
    import json
    import os
    import platform
    import tempfile

    import numpy as np

    from adabin_np.checkpoint import load_checkpoint
    from adabin_np.data import sample_image_crops
    from adabin_np.models import resnet18_1w1a, resnet20_1w1a

    if not Path(checkpoint).exists():
        print(f"[throughput] checkpoint not found at {checkpoint}: skipped")
        return None
    model = resnet20_1w1a("official")
    model.load_state_dict(load_checkpoint(checkpoint))
    model.eval()
    x = sample_image_crops(n, 32).astype(np.float32)
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = {"cpu": cpu, "cpu_count": os.cpu_count(), "load_average_before": load,
           "n_images": n, "chunk_size": chunk}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crops.npy"
        np.save(path, x)
        analyze_model(model, x[:chunk], chunk_size=chunk, progress=False)  # compile / warm up
        from adabin_np.distributions.stream import make_client

        client = cluster = None
        runs = {}
        try:
            for label, kw in (("one_process", {}),
                              ("local", {"scheduler": "local", "n_workers": workers}),
                              ("local_warm", {})):
                if label == "local_warm":  # a long-lived cluster: workers already warm
                    client, cluster = make_client("local", workers)
                    kw = {"client": client}
                    nw = len(client.nthreads())
                    analyze_model(model, x[:2 * nw * chunk], chunk_size=chunk, progress=False,
                                  client=client)
                t = time.perf_counter()
                s = analyze_model(model, path, chunk_size=chunk, progress=False, **kw)
                wall = time.perf_counter() - t
                runs[label] = s
                res[label] = {"images_per_s": s["run"]["images_per_s"], "wall_s": wall,
                              "workers": s["run"]["workers"], "threads": s["run"]["threads"],
                              "seconds": s["run"]["seconds"]}
                print(f"[throughput] {label}: {s['run']['images_per_s']:.2f} images/s over the "
                      f"chunks ({wall:.1f} s wall incl. start-up and finalize)")
        finally:
            if client is not None:
                client.close()
                cluster.close()
        a = {k: v for k, v in runs["one_process"].items() if k != "run"}
        for label in ("local", "local_warm"):
            b = {k: v for k, v in runs[label].items() if k != "run"}
            res[f"summary_{label}_vs_one_process"] = _compare(a, b)
    res["cost_per_image_s"] = {"resnet20_32x32": _per_image_costs(model, x[:chunk].astype(
        np.float64), repeat)}
    r18 = resnet18_1w1a("official")
    x18 = np.random.default_rng(0).standard_normal((2, 3, 224, 224))
    r18.eval()
    r18(x18[:1])  # warm up
    res["cost_per_image_s"]["resnet18_224x224"] = _per_image_costs(r18, x18, repeat)
    res["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for arch, c in res["cost_per_image_s"].items():
        print(f"[throughput] {arch} per image (median): float64 "
              f"{c['float64_forward']['median']:.4f} s, packed {c['packed_forward']['median']:.4f}"
              f" s, statistics {c['statistics']['median']:.4f} s")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(res, indent=1) + "\n")
    print(f"[throughput] -> {results}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "analysis" / "out",
                   help="output folder (default analysis/out)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="ResNet-20 checkpoint of the release (.th)")
    p.add_argument("--n", type=int, default=64, help="number of image crops for ResNet-20")
    p.add_argument("--tol", type=float, default=DEFAULT_FLIP_TOL,
                   help=f"relative flip-risk tolerance (default {DEFAULT_FLIP_TOL:g})")
    p.add_argument("--models", nargs="+", choices=("resnet20", "digits"),
                   default=["resnet20", "digits"])
    p.add_argument("--readme", action="store_true",
                   help="copy the README figure to docs/figures/")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--throughput", type=int, default=None, metavar="N",
                   help="measure the streamed analysis on N crops instead (see above)")
    p.add_argument("--chunk-size", type=int, default=32, help="chunk size of --throughput")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster workers of --throughput (default: one per CPU)")
    p.add_argument("--repeat", type=int, default=3, help="repeats of each cost measurement")
    args = p.parse_args(argv)
    if args.throughput is not None:
        run_throughput(args.checkpoint, args.throughput, args.chunk_size, args.workers,
                       args.repeat, ROOT / "analysis" / "results" / (
                           "stream_throughput" + (f"_{os.environ['NUMBA_NUM_THREADS']}thread"
                                                  if "NUMBA_NUM_THREADS" in os.environ else "")
                           + ".json"))
        return 0
    if args.n < 1:
        p.error("--n must be >= 1")
    progress = not args.no_progress
    resnet = None
    if "resnet20" in args.models:
        resnet = run_resnet20(args.out, args.checkpoint, args.n, args.tol, progress)
    if "digits" in args.models:
        run_digits(args.out, args.tol, progress)
    if args.readme:
        readme_figure(args.out, resnet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
