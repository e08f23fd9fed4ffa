"""``adabin-np analyze`` options for dataset-scale runs, and the streamed run itself.

``--inputs X.npy|DIR [--labels Y.npy] [--chunk-size N] [--scheduler local|tcp://HOST:PORT]
[--workers N]``: the inputs are read chunk by chunk (an ``.npy`` file of shape ``(N, C, H, W)``,
``uint8`` images scaled ``/255`` and normalised with the architecture's mean/std, or
already-normalised floats used as is; or a folder of images), every chunk is one task of
:func:`adabin_np.distributions.analyze_model`, and the merged statistics are printed (one row
per binary layer) and, with ``--out DIR``, written to ``DIR/summary.json`` with the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_arguments", "wants_streaming", "run", "format_table"]


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _scheduler(text):
    from .stream import check_scheduler

    try:
        return check_scheduler(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser):
    """Add ``--labels``, ``--chunk-size``, ``--scheduler``, ``--workers`` to ``parser``."""
    parser.add_argument("--labels", type=Path, default=None,
                        help=".npy of (N,) integer labels for --inputs: float and packed "
                             "accuracy")
    parser.add_argument("--chunk-size", type=_positive_int, default=None,
                        help="images per chunk (one task) of the streamed analysis (default: "
                             "--batch-size); bounds the memory used")
    parser.add_argument("--scheduler", type=_scheduler, default=None,
                        help="'local' (a dask LocalCluster on this machine) or tcp://HOST:PORT "
                             "(an existing dask cluster); default: one process")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="worker processes of --scheduler local (default: one per CPU)")


def wants_streaming(args):
    """Whether the options ask for the streamed (chunked, mergeable) analysis."""
    return any(getattr(args, k, None) is not None
               for k in ("inputs", "labels", "chunk_size", "scheduler"))


def format_table(summary):
    """One row per binary layer of a streamed summary."""
    head = (f"{'layer':<18} {'alpha_a':>8} {'beta_a':>8} {'flip risk':>10} {'ties':>6} "
            f"{'b2 share':>8} {'out@risk':>8} {'lvl diff':>9} {'input rel':>9}")
    tol = summary["flip_tol"]
    lines = [f"flip risk: |x - beta_a| <= {tol:g} (|x| + |beta_a| + |alpha_a|); out@risk: conv "
             f"outputs reading one; lvl diff: binarized inputs whose level differs between "
             f"the float and the packed path; input rel: max |x_float - x_packed| / max "
             f"|x_float| of the layer's input", head, "-" * len(head)]

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for la in summary["layers"]:
        a = la["activation"]
        fr = a["flip_risk"]
        pk = a.get("packed")
        alpha = a["alpha"] if isinstance(a["alpha"], float) else float("nan")
        beta = a["beta"] if isinstance(a["beta"], float) else float("nan")
        lines.append(
            f"{la['name']:<18} {alpha:>8.4f} {beta:>8.4f} {100 * fr['fraction']:>9.4f}% "
            f"{fr['exact_zero']:>6d} {a['fraction_b2']:>8.4f} "
            f"{num(fr.get('outputs_at_risk'), '8.4f'):>8} "
            f"{'n/a' if pk is None else pk['level_disagree']:>9} "
            f"{'n/a' if pk is None else format(pk['rel_diff'], '.1e'):>9}")
    return "\n".join(lines)


def run(args, model, arch, model_desc, *, tol, title, landscape=None, arch_input=None,
        usage_error=ValueError):
    """The streamed ``adabin-np analyze``: prints the table, returns the exit status 0."""
    from ..models import CIFAR_MEAN, CIFAR_STD
    from . import analyze_model
    from .inputs import ArraySource, Head, as_source

    (size, channels) = arch_input[arch] if arch_input else (
        {"resnet20": (32, 32), "resnet18": (224, 224), "digits": (8, 8)}[arch],
        {"resnet20": 3, "resnet18": 3, "digits": 1}[arch])
    mean, std = (None, None) if arch == "digits" else (CIFAR_MEAN, CIFAR_STD)
    labels = args.labels
    if args.inputs is not None:
        try:
            source = as_source(args.inputs, channels=channels, mean=mean, std=std,
                               size=tuple(size), limit=args.n_images)
        except (ValueError, TypeError, OSError) as exc:
            raise usage_error(f"--inputs {args.inputs}: {exc}") from exc
        if tuple(source.sample_shape[1:]) != tuple(size):
            raise usage_error(f"--inputs {args.inputs}: inputs are "
                              f"{source.sample_shape[1]}x{source.sample_shape[2]}, {arch} "
                              f"expects {size[0]}x{size[1]} (.npy inputs are not resized)")
        if args.n_images is not None:
            source = Head(source, args.n_images)
        desc = f"{len(source)} inputs from {args.inputs} (chunks of "
    else:
        if labels is not None:
            raise usage_error("--labels needs --inputs (the labels of those inputs)")
        from ..data import load_digits_split, sample_image_crops

        if arch == "digits":
            split = load_digits_split()
            x, labels = split.x_test, split.y_test
            if args.n_images is not None:
                x, labels = x[:args.n_images], labels[:args.n_images]
            desc = f"digits test split ({len(x)} images, chunks of "
        else:
            n = args.n_images or (128 if arch == "resnet20" else 2)
            x = sample_image_crops(n, size[0])
            desc = f"{n} {size[0]}x{size[1]} crops of scikit-learn's sample images (chunks of "
        source = ArraySource(x)
    chunk = args.chunk_size or args.batch_size
    sched = args.scheduler or "one process"
    print(f"model: {model_desc}")
    print(f"inputs: {desc}{chunk}; scheduler: {sched})")
    t0 = time.perf_counter()
    try:
        summary = analyze_model(model, source, labels=labels, out_dir=args.out, name=title,
                                progress=not args.no_progress, flip_tol=tol, chunk_size=chunk,
                                packed=not args.no_packed, device=args.device,
                                scheduler=args.scheduler, n_workers=args.workers,
                                **({} if landscape is None else {"landscape": landscape}))
    except FileNotFoundError as exc:
        raise usage_error(str(exc)) from exc
    print(format_table(summary))
    acc = summary.get("accuracy")
    if acc is not None:
        print(f"accuracy (float path):  {100 * acc['float']:.2f}% on {acc['n']} images")
        if "packed" in acc:
            print(f"accuracy (packed path): {100 * acc['packed']:.2f}% on {acc['n']} images")
    pk = summary.get("packed")
    if pk is not None:
        print(f"float vs packed: predictions agree on {100 * pk['agreement']:.2f}% "
              f"({pk['n'] - pk['agree']} differ), max |dlogit| {pk['max_abs_dlogit']:.2e}")
    else:
        print("packed path skipped (--no-packed)")
    run_ = summary["run"]
    print(f"({run_['n_chunks']} chunks on {run_['workers']} worker(s): "
          f"{run_['images_per_s']:.1f} images/s; total {time.perf_counter() - t0:.1f} s)")
    if args.out is not None:
        print(f"distribution figures and summary.json written to {args.out}")
    return 0
