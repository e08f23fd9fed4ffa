"""Command line: ``adabin-np train | analyze | bench`` (also ``python -m adabin_np``).

``adabin-np train``
    Train the digits model (:func:`adabin_np.train.train_digits`) and write the embedded
    weights ``adabin_np/data/digits_adabin.npz`` (or ``--out``).
``adabin-np analyze [CHECKPOINT] [--arch resnet20|resnet18|digits] [--convention ...]``
    Without a checkpoint: the embedded digits model on the digits test split. Runs the float
    path (with every binary layer's input recorded) and, when :mod:`adabin_np.packed` is
    available, the bit-packed path, and prints one row per binary layer: weight shape, mean
    weight set ``alpha_w``/``beta_w``, activation set ``alpha_a``/``beta_a``, the fraction of
    activations at flip risk (SPEC section 7, :func:`adabin_np.testing.flip_risk`), exact ties
    ``v == 0``, share binarized to the upper level, and the largest float-vs-packed output
    difference of the layer on its recorded input; then accuracy (digits) and float-vs-packed
    prediction agreement. With a checkpoint (a release ``.th``/``.pth`` or an ``.npz``) the
    model is built with ``--arch`` (default ``resnet20``) and ``--convention`` (default
    ``official``, the release's) and evaluated on crops of scikit-learn's sample photographs
    (or ``--inputs``). ``--out DIR`` also writes the figures and ``summary.json`` of
    :func:`adabin_np.distributions.analyze_model`.
``adabin-np bench ...``
    Delegates to :mod:`adabin_np.bench` (``add_arguments(parser)``, ``run(args)``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "layer_report", "write_distributions"]

ARCHS = ("resnet20", "resnet18", "digits")


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .train import DIGITS_RECIPE

    parser = argparse.ArgumentParser(
        prog="adabin-np",
        description="AdaBin binary neural networks in NumPy/Numba: train, analyze, bench.")
    sub = parser.add_subparsers(dest="command", metavar="{train,analyze,bench}")
    sub.required = True

    tr = sub.add_parser("train", help="train the embedded digits model",
                        description="Train the AdaBin 1w1a digits CNN on scikit-learn's digits "
                                    "(stratified 1437/360 split) and save its weights.")
    tr.add_argument("--epochs", type=int, default=DIGITS_RECIPE["epochs"],
                    help=f"epochs (default {DIGITS_RECIPE['epochs']})")
    tr.add_argument("--seed", type=int, default=DIGITS_RECIPE["seed"],
                    help="seed of the split, the initialisation and the shuffling (default 0)")
    tr.add_argument("--out", type=Path, default=None,
                    help="output .npz (default: the embedded adabin_np/data/digits_adabin.npz)")
    tr.add_argument("--convention", choices=("paper", "official"), default="paper")
    tr.add_argument("--batch-size", type=int, default=DIGITS_RECIPE["batch_size"])
    tr.add_argument("--lr", type=float, default=DIGITS_RECIPE["lr"])
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    an = sub.add_parser("analyze", help="per-layer analysis, float vs packed",
                        description="Per-layer binary-set / flip-risk table of a model, float "
                                    "path vs bit-packed path.")
    an.add_argument("checkpoint", nargs="?", type=Path, default=None,
                    help="weights (.th/.pth/.npz); default: the embedded digits model")
    an.add_argument("--arch", choices=ARCHS, default=None,
                    help="architecture of CHECKPOINT (default resnet20)")
    an.add_argument("--convention", choices=("paper", "official"), default=None,
                    help="binarization convention (default: official for a checkpoint, the "
                         "trained one for the embedded model)")
    an.add_argument("--inputs", type=Path, default=None,
                    help="folder of images or .npy array to run on (default: digits test split "
                         "/ crops of scikit-learn's sample images)")
    an.add_argument("--n-images", type=int, default=None,
                    help="number of sample-image crops (default 128 for resnet20, 2 for "
                         "resnet18)")
    an.add_argument("--batch-size", type=int, default=64)
    an.add_argument("--flip-tol", type=float, default=None,
                    help="relative flip-risk tolerance (default adabin_np.testing.DEFAULT_TOL)")
    an.add_argument("--no-packed", action="store_true", help="skip the bit-packed path")
    an.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device of the packed path")
    an.add_argument("--out", type=Path, default=None,
                    help="write distribution figures and summary.json here")
    an.add_argument("--no-progress", action="store_true")

    sub.add_parser("bench", add_help=False, help="benchmarks (adabin_np.bench; see "
                                                 "`adabin-np bench --help`)")
    return parser


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def _cmd_train(args):
    from .models import DIGITS_WEIGHTS
    from .train import train_digits

    if args.epochs < 1:
        raise SystemExit("adabin-np train: --epochs must be >= 1")
    out = DIGITS_WEIGHTS if args.out is None else args.out
    res = train_digits(epochs=args.epochs, seed=args.seed, out=out, convention=args.convention,
                       batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress)
    last = res.history[-1]
    print(f"digits 1w1a CNN ({args.convention}), {args.epochs} epochs, seed {args.seed}: "
          f"train loss {last['loss']:.4f}, test accuracy {100 * res.test_accuracy:.2f}% "
          f"({res.seconds:.1f} s)")
    print(f"weights written to {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# analyze
# ----------------------------------------------------------------------------------------------


def layer_report(model, x, *, batch_size=64, packed=True, device="cpu", tol=None,
                 progress=False):
    """Per-binary-layer statistics of ``model`` on ``x`` (eval mode), float vs packed.

    Returns ``(rows, logits_float, logits_packed)``; ``logits_packed`` is ``None`` without the
    packed path. Each row: ``name``, ``shape`` (weight), ``alpha_w``/``beta_w`` (means over
    output channels of :func:`adabin_np.weight_binary_set`), ``alpha_a``, ``beta_a``,
    ``flip_risk`` (fraction of inputs with ``|x - beta| <= tol (|x| + |beta| + |alpha|)``),
    ``ties`` (count of ``x == beta`` exactly), ``upper`` (fraction with ``v >= 0``) and
    ``packed_maxdiff`` (max |float - packed| of the layer's output on its recorded input,
    relative to max |float output|; ``None`` without the packed path).
    """
    from .binarize import weight_binary_set
    from .conv import adabin_conv2d
    from .testing import DEFAULT_TOL, flip_risk

    tol = DEFAULT_TOL if tol is None else float(tol)
    layers = model.binary_layers()
    acc = {name: dict(n=0, risk=0, ties=0, upper=0, diff=0.0, scale=0.0) for name, _ in layers}
    logits_f, logits_p = [], []
    was_training = model.training
    model.eval()
    starts = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="analyze", unit="batch", leave=False)
    try:
        for s in starts:
            xb = x[s:s + batch_size]
            logits_f.append(model(xb, record=True))
            for name, layer in layers:
                xin = layer.recorded_input
                a, b = layer.binary_a.params["alpha_a"], layer.binary_a.params["beta_a"]
                st = acc[name]
                st["n"] += xin.size
                st["risk"] += int(flip_risk(xin, a, b, tol=tol).sum())
                st["ties"] += int(np.sum(xin == b))
                st["upper"] += int(np.sum((xin - b) / a >= 0))
                if packed:
                    kw = layer._conv_kwargs()
                    yf = adabin_conv2d(xin, layer.params["weight"], a, b, **kw)
                    yp = layer(xin, packed=True)
                    st["diff"] = max(st["diff"], float(np.max(np.abs(yf - yp))))
                    st["scale"] = max(st["scale"], float(np.max(np.abs(yf))))
            if packed:
                logits_p.append(model(xb, packed=True, device=device))
    finally:
        for _, layer in layers:
            layer.record, layer.recorded_input, layer.packed = False, None, False
        model.train(was_training)
    rows = []
    for name, layer in layers:
        st = acc[name]
        wa, wb = weight_binary_set(layer.params["weight"])
        rows.append(dict(
            name=name, shape=tuple(layer.params["weight"].shape),
            alpha_w=float(wa.mean()), beta_w=float(wb.mean()),
            alpha_a=layer.binary_a.alpha, beta_a=layer.binary_a.beta,
            flip_risk=st["risk"] / st["n"], ties=st["ties"], upper=st["upper"] / st["n"],
            packed_maxdiff=(st["diff"] / max(st["scale"], 1e-300)) if packed else None))
    return (rows, np.concatenate(logits_f), np.concatenate(logits_p) if packed else None)


def _format_table(rows, tol):
    head = (f"{'layer':<18} {'weight shape':<16} {'alpha_w':>8} {'beta_w':>9} {'alpha_a':>8} "
            f"{'beta_a':>8} {'flip risk':>10} {'ties':>5} {'upper':>6} {'packed rel':>10}")
    lines = [f"flip risk: |x - beta_a| <= {tol:g} (|x| + |beta_a| + |alpha_a|); upper: share "
             f"with v >= 0; packed rel: max |float - packed| / max |float| per layer", head,
             "-" * len(head)]
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        packed = "n/a" if r["packed_maxdiff"] is None else f"{r['packed_maxdiff']:.1e}"
        lines.append(f"{r['name']:<18} {shape:<16} {r['alpha_w']:>8.4f} {r['beta_w']:>9.2e} "
                     f"{r['alpha_a']:>8.4f} {r['beta_a']:>8.4f} {100 * r['flip_risk']:>9.4f}% "
                     f"{r['ties']:>5d} {r['upper']:>6.3f} {packed:>10}")
    return "\n".join(lines)


def _analysis_inputs(args, arch):
    """``(x, y or None, description)`` for the model being analysed."""
    from .data import load_digits_split, sample_image_crops
    from .models import CIFAR_MEAN, CIFAR_STD

    size, channels = {"resnet20": (32, 3), "resnet18": (224, 3), "digits": (8, 1)}[arch]
    if args.inputs is not None:
        from .distributions import load_inputs

        mean, std = (None, None) if arch == "digits" else (CIFAR_MEAN, CIFAR_STD)
        x = load_inputs(args.inputs, size=(size, size), channels=channels, mean=mean, std=std,
                        limit=args.n_images)
        return x, None, f"{len(x)} inputs from {args.inputs}"
    if arch == "digits":
        split = load_digits_split()
        return split.x_test, split.y_test, f"digits test split ({len(split.x_test)} images)"
    n = args.n_images or (128 if arch == "resnet20" else 2)
    if n < 1:
        raise SystemExit("adabin-np analyze: --n-images must be >= 1")
    x = sample_image_crops(n, size)
    return x, None, f"{n} {size}x{size} crops of scikit-learn's sample images (no labels)"


def _analysis_model(args):
    from .models import (digits_cnn, load_digits_model, resnet18_1w1a, resnet20_1w1a,
                         split_metadata)

    if args.checkpoint is None:
        if args.arch not in (None, "digits"):
            raise SystemExit(f"adabin-np analyze: --arch {args.arch} needs a CHECKPOINT path")
        model = load_digits_model(convention=args.convention)
        return model, "digits", f"embedded digits model ({model.convention} convention)"
    from .checkpoint import load_checkpoint

    arch = args.arch or "resnet20"
    state, meta = split_metadata(load_checkpoint(args.checkpoint))
    convention = args.convention or meta.get("convention", "official")
    build = {"resnet20": resnet20_1w1a, "resnet18": resnet18_1w1a, "digits": digits_cnn}[arch]
    model = build(convention)
    model.load_state_dict(state)
    model.eval()
    return model, arch, f"{arch} from {args.checkpoint} ({convention} convention)"


def write_distributions(model, x, out_dir, *, name, tol=None, progress=True):
    """Hook to :func:`adabin_np.distributions.analyze_model` (figures + ``summary.json``).

    Returns the summary dict, or ``None`` (with a message) when that module is unavailable.
    """
    try:
        from . import distributions
    except ImportError as exc:
        print(f"--out: adabin_np.distributions is unavailable ({exc}); no figures written")
        return None
    kwargs = {} if tol is None else {"flip_tol": tol}
    return distributions.analyze_model(model, x, out_dir=out_dir, name=name, progress=progress,
                                       **kwargs)


def _cmd_analyze(args):
    from .testing import DEFAULT_TOL

    if args.batch_size < 1:
        raise SystemExit("adabin-np analyze: --batch-size must be >= 1")
    tol = DEFAULT_TOL if args.flip_tol is None else args.flip_tol
    model, arch, model_desc = _analysis_model(args)
    x, y, data_desc = _analysis_inputs(args, arch)
    packed = not args.no_packed
    print(f"model: {model_desc}")
    print(f"inputs: {data_desc}")
    t0 = time.perf_counter()
    rows, lf, lp = layer_report(model, x, batch_size=args.batch_size, packed=packed,
                                device=args.device, tol=tol, progress=not args.no_progress)
    print(_format_table(rows, tol))
    pf = lf.argmax(axis=1)
    if y is not None:
        print(f"accuracy (float path):  {100 * np.mean(pf == y):.2f}% on {len(y)} images")
    if lp is not None:
        pp = lp.argmax(axis=1)
        if y is not None:
            print(f"accuracy (packed path): {100 * np.mean(pp == y):.2f}% on {len(y)} images")
        scale = max(float(np.max(np.abs(lf))), 1e-300)
        print(f"float vs packed: predictions agree on {100 * np.mean(pf == pp):.2f}% "
              f"({int(np.sum(pf != pp))} differ), max |dlogit| {np.max(np.abs(lf - lp)):.2e} "
              f"(relative {np.max(np.abs(lf - lp)) / scale:.1e})")
    else:
        why = "--no-packed" if args.no_packed else "adabin_np.packed unavailable"
        print(f"packed path skipped ({why})")
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.out is not None:
        summary = write_distributions(model, x, args.out, name=model_desc, tol=tol,
                                      progress=not args.no_progress)
        if summary is not None:
            print(f"distribution figures and summary.json written to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------


def _cmd_bench(rest):
    try:
        from . import bench
    except ImportError as exc:
        raise SystemExit(f"adabin-np bench: adabin_np.bench is unavailable ({exc})") from None
    parser = argparse.ArgumentParser(prog="adabin-np bench",
                                     description=(bench.__doc__ or "").split("\n\n")[0] or None)
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args(rest))
    return result if isinstance(result, int) else 0


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def main(argv=None):
    """Entry point of the ``adabin-np`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return _cmd_bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        return _cmd_train(args)
    return _cmd_analyze(args)


if __name__ == "__main__":
    sys.exit(main())
