"""Command line: ``adabin-np train | analyze | summary | warmup | bench`` (``python -m adabin_np``).

``adabin-np train [--out PATH]``
    Train the digits model (:func:`adabin_np.train.train_digits`) and write its weights to
    ``--out`` (default ``digits_adabin.npz`` in the current directory). It never writes into the
    installed package; ``adabin-np analyze --model PATH`` runs the result.
``adabin-np analyze [CHECKPOINT | --model PATH] [--arch resnet20|resnet18|digits] ...``
    Without a checkpoint: the embedded digits model on the digits test split. Runs the float
    path (with every binary layer's input recorded) and the bit-packed path, and prints one row
    per binary layer: weight shape, mean weight set ``alpha_w``/``beta_w``, activation set
    ``alpha_a``/``beta_a``, the fraction of activations at flip risk (SPEC section 7,
    :func:`adabin_np.testing.flip_risk`), exact ties ``v == 0``, share binarized to the upper
    level, and the largest float-vs-packed output difference of the layer on its recorded
    input; then accuracy (digits) and float-vs-packed prediction agreement. With a checkpoint
    (a release ``.th``/``.pth`` or an ``.npz``) the architecture is detected from its keys
    (:func:`detect_arch`; ``--arch`` overrides) and the convention defaults to ``official``
    (the release's) or the one stored in the file; inputs are crops of scikit-learn's sample
    photographs (or ``--inputs``). ``--out DIR`` also writes the figures and ``summary.json``
    of :func:`adabin_np.distributions.analyze_model`.
``adabin-np summary [CHECKPOINT | --model PATH] [--input-size H W]``
    Per-layer table of :func:`adabin_np.summary.summary` (larq's ``models.summary``).
``adabin-np warmup``
    Compile the Numba kernels the CLI uses and write them to Numba's on-disk cache, so the first
    real run does not pay the one-time compilation.
``adabin-np bench ...``
    Delegates to :mod:`adabin_np.bench` (``add_arguments(parser)``, ``run(args)``).

Errors: a user error (missing or unreadable file, a checkpoint that does not fit ``--arch``,
bad option values, ``--device cuda`` without a GPU) prints one line
``adabin-np CMD: error: WHAT; HOW TO FIX`` on stderr and exits with status 2; an unexpected
internal error prints one line and exits with status 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "layer_report", "write_distributions", "detect_arch",
           "UsageError", "warmup"]

ARCHS = ("resnet20", "resnet18", "digits")
#: input size (H, W) and channels of each architecture
ARCH_INPUT = {"resnet20": ((32, 32), 3), "resnet18": ((224, 224), 3), "digits": ((8, 8), 1)}
#: default file written by ``adabin-np train`` (relative to the current directory)
TRAIN_DEFAULT_OUT = Path("digits_adabin.npz")
_PACKAGE_DIR = Path(__file__).resolve().parent


class UsageError(Exception):
    """A user error: printed as one line ``adabin-np CMD: error: ...`` on stderr, exit 2."""


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``PROG: error: MSG; see PROG --help``)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}; see `{self.prog} --help`\n")
        raise SystemExit(2)


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _version_text():
    import numba

    from . import __version__
    return (f"adabin-np {__version__} (numpy {np.__version__}, numba {numba.__version__}, "
            f"python {sys.version.split()[0]})")


def _add_debug(p, default):
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error")


def _add_model_source(p, what):
    p.add_argument("checkpoint", nargs="?", type=Path, default=None,
                   help=f"weights to {what} (.th/.pth/.npz/.safetensors); default: the embedded digits model")
    p.add_argument("--model", type=Path, default=None, metavar="PATH",
                   help="digits weights written by `adabin-np train` (instead of CHECKPOINT)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="architecture of CHECKPOINT (default: detected from its keys)")


def build_parser() -> argparse.ArgumentParser:
    from .train import DIGITS_RECIPE

    parser = _Parser(
        prog="adabin-np",
        description="AdaBin binary neural networks in NumPy/Numba: train, analyze, summary, "
                    "warmup, bench.",
        epilog="The first run compiles the Numba kernels (one-time, cached on disk); "
               "`adabin-np warmup` does it ahead.")
    parser.add_argument("--version", action="version", version=_version_text())
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="{train,analyze,summary,warmup,bench}",
                                parser_class=_Parser)
    sub.required = True

    tr = sub.add_parser("train", help="train the digits model (writes ./digits_adabin.npz)",
                        description="Train the AdaBin 1w1a digits CNN on scikit-learn's digits "
                                    "(stratified 1437/360 split) and save its weights. Never "
                                    "writes into the installed package.")
    tr.add_argument("--epochs", type=_int_at_least(1), default=DIGITS_RECIPE["epochs"],
                    help=f"epochs (default {DIGITS_RECIPE['epochs']})")
    tr.add_argument("--seed", type=_int_at_least(0), default=DIGITS_RECIPE["seed"],
                    help="seed of the split, the initialisation and the shuffling (default 0)")
    tr.add_argument("--out", type=Path, default=None, metavar="PATH",
                    help=f"output .npz (default: {TRAIN_DEFAULT_OUT} in the current directory); "
                         f"run it with `adabin-np analyze --model PATH`")
    tr.add_argument("--convention", choices=("paper", "official"), default="paper",
                    help="binarization convention to train with: paper (ECCV paper, default) "
                         "or official (the public PyTorch release); stored in the file")
    tr.add_argument("--batch-size", type=_int_at_least(2), default=DIGITS_RECIPE["batch_size"],
                    help=f"mini-batch size (default {DIGITS_RECIPE['batch_size']})")
    tr.add_argument("--lr", type=_positive_float, default=DIGITS_RECIPE["lr"],
                    help=f"initial SGD learning rate, annealed to 0 with a cosine schedule "
                         f"(default {DIGITS_RECIPE['lr']})")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_debug(tr, argparse.SUPPRESS)

    an = sub.add_parser("analyze", help="per-layer analysis, float vs packed",
                        description="Per-layer binary-set / flip-risk table of a model, float "
                                    "path vs bit-packed path.")
    _add_model_source(an, "analyse")
    an.add_argument("--convention", choices=("paper", "official"), default=None,
                    help="binarization convention (default: the one stored in the file, else "
                         "official for a checkpoint)")
    an.add_argument("--inputs", type=Path, default=None,
                    help="folder of images or .npy array to run on (default: digits test split "
                         "/ crops of scikit-learn's sample images)")
    an.add_argument("--n-images", type=_int_at_least(1), default=None,
                    help="number of sample-image crops, or the most inputs read from --inputs "
                         "(default 128 for resnet20, 2 for resnet18)")
    an.add_argument("--batch-size", type=_int_at_least(1), default=64,
                    help="images per forward pass (default 64); bounds the memory used")
    an.add_argument("--flip-tol", type=_positive_float, default=None,
                    help="relative flip-risk tolerance (default adabin_np.testing.DEFAULT_TOL)")
    an.add_argument("--no-packed", action="store_true", help="skip the bit-packed path")
    an.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device of the packed path (cuda needs a GPU and numba-cuda)")
    an.add_argument("--out", type=Path, default=None,
                    help="write distribution figures and summary.json here")
    an.add_argument("--layer", default=None,
                    help="binary layer of the landscape figure (with --out; default: the first)")
    an.add_argument("--channel", type=_int_at_least(0), default=0,
                    help="output channel of the landscape figure (with --out; default 0)")
    an.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .distributions.command import add_arguments as _add_stream_arguments

    _add_stream_arguments(an)  # --labels, --chunk-size, --scheduler, --workers
    _add_debug(an, argparse.SUPPRESS)

    sm = sub.add_parser("summary", help="per-layer parameters, memory and MACs (like larq)",
                        description="Per-layer output shape, binary weights, float parameters, "
                                    "memory at 1 and 32 bits, binary and float MACs, totals and "
                                    "the compression ratio against float32.")
    _add_model_source(sm, "summarise")
    sm.add_argument("--input-size", type=_int_at_least(1), nargs=2, default=None,
                    metavar=("H", "W"),
                    help="input height and width (default: 8x8 digits, 32x32 resnet20, 224x224 "
                         "resnet18)")
    _add_debug(sm, argparse.SUPPRESS)

    wu = sub.add_parser("warmup", help="compile and cache the Numba kernels ahead (one-time)",
                        description="Compile the Numba kernels that train/analyze use and write "
                                    "them to Numba's on-disk cache, so that the first real run "
                                    "starts at once.")
    _add_debug(wu, argparse.SUPPRESS)

    be = sub.add_parser("bench", add_help=False, help="benchmarks (adabin_np.bench; see "
                                                      "`adabin-np bench --help`)")
    _add_debug(be, argparse.SUPPRESS)
    parser.subcommands = sub.choices  # name -> subparser (one-line errors under its prog)
    return parser


# ----------------------------------------------------------------------------------------------
# models: architecture detection and loading
# ----------------------------------------------------------------------------------------------

_ARCH_KEYS: dict = {}


def _arch_keys(arch):
    """``{state_dict key: shape}`` of a freshly built ``arch`` (cached)."""
    if arch not in _ARCH_KEYS:
        from .models import digits_cnn, resnet18_1w1a, resnet20_1w1a

        build = {"resnet20": resnet20_1w1a, "resnet18": resnet18_1w1a, "digits": digits_cnn}[arch]
        _ARCH_KEYS[arch] = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    return _ARCH_KEYS[arch]


def _fit(state, arch):
    """``(missing, unexpected, wrong_shape)`` key lists of ``state`` against ``arch``."""
    ref = _arch_keys(arch)
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    wrong = [k for k in state if k in ref and tuple(np.shape(state[k])) != ref[k]]
    return missing, unexpected, wrong


def detect_arch(state):
    """The architecture in :data:`ARCHS` whose ``state_dict`` keys and shapes ``state`` has.

    Returns ``(arch, exact)``: the best match by the share of keys present with the right
    shape (of the union of both key sets), ``exact`` when every key and shape matches; ``arch``
    is ``None`` when no architecture shares at least half of the keys.
    """
    best, best_score = None, 0.0
    for arch in ARCHS:
        missing, unexpected, wrong = _fit(state, arch)
        if not (missing or unexpected or wrong):
            return arch, True
        ref = _arch_keys(arch)
        good = len([k for k in state if k in ref]) - len(wrong)
        score = good / len(set(ref) | set(state))
        if score > best_score:
            best, best_score = arch, score
    return (best if best_score >= 0.5 else None), False


def _examples(keys, n=2):
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _read_checkpoint(path):
    """``(state, meta)`` of a checkpoint file; user errors as :class:`UsageError`."""
    from .checkpoint import load_checkpoint
    from .models import split_metadata

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file; pass the path of a checkpoint (.th/.pth/.npz/.safetensors)")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass a checkpoint file (.th/.pth/.npz/.safetensors)")
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        first = _first_line(exc)
        if str(path) not in first:
            first = f"{path}: {first}"
        raise UsageError(f"{first}; pass a PyTorch .th/.pth checkpoint, a .safetensors file "
                         f"or an .npz of arrays") from exc
    return split_metadata(state)


def _load_model(args):
    """``(model, arch, description)`` for CHECKPOINT / ``--model`` / the embedded model."""
    from .models import digits_cnn, load_digits_model, resnet18_1w1a, resnet20_1w1a

    convention = getattr(args, "convention", None)
    if args.checkpoint is not None and args.model is not None:
        raise UsageError("give either CHECKPOINT or --model, not both")
    if args.checkpoint is None and args.model is None:
        if args.arch not in (None, "digits"):
            raise UsageError(f"--arch {args.arch} needs a CHECKPOINT path (without one the "
                             f"embedded digits model is used)")
        model = load_digits_model(convention=convention)
        return model, "digits", f"embedded digits model ({model.convention} convention)"
    path = args.checkpoint if args.checkpoint is not None else args.model
    state, meta = _read_checkpoint(path)
    detected, exact = detect_arch(state)
    if args.model is not None and args.arch is None:
        arch = "digits"
    else:
        arch = args.arch or detected
    if arch is None:
        raise UsageError(f"{path.name}: the keys match none of {', '.join(ARCHS)} (e.g. "
                         f"{_examples(list(state))}); this tool runs the AdaBin release "
                         f"ResNet-20/ResNet-18 and the digits model")
    missing, unexpected, wrong = _fit(state, arch)
    if missing or unexpected or wrong:
        if exact and detected != arch:
            raise UsageError(f"{path.name} is a {detected} checkpoint (every key and shape "
                             f"matches {detected}), not {arch}: use --arch {detected}, or omit "
                             f"--arch (it is detected from the keys)")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches ({_examples(wrong)})")
        hint = (f"the closest architecture is {detected}: try --arch {detected}"
                if detected and detected != arch else "is it an AdaBin release checkpoint?")
        raise UsageError(f"{path.name} does not fit {arch}: {'; '.join(parts)}; {hint}")
    convention = convention or meta.get("convention", "official")
    build = {"resnet20": resnet20_1w1a, "resnet18": resnet18_1w1a, "digits": digits_cnn}[arch]
    model = build(convention)
    model.load_state_dict(state)
    model.meta = meta
    model.eval()
    how = " (detected from its keys)" if args.arch is None else ""
    return model, arch, f"{arch}{how} from {path.name} ({convention} convention)"


# ----------------------------------------------------------------------------------------------
# Numba compilation: note and warmup
# ----------------------------------------------------------------------------------------------


class _CompileWatch:
    """Numba ``numba:compile`` event listener: counts compilations of this package's kernels
    (cache misses: a kernel loaded from Numba's on-disk cache fires no event) and says once,
    on the first, that this is a one-time compilation."""

    NOTE = ("note: compiling Numba kernels (one-time: they are cached on disk, so later runs "
            "start at once; `adabin-np warmup` does this ahead)")

    def __init__(self, announce):
        from numba.core import event

        class Listener(event.Listener):
            def on_start(listener, ev):
                func = getattr(ev.data.get("dispatcher"), "py_func", None)
                if not getattr(func, "__module__", "").startswith("adabin_np"):
                    return  # numba's own helpers compiled along with a kernel
                self.count += 1
                self.names.append(f"{func.__module__}.{func.__name__}")
                if self.announce and self.count == 1:
                    from tqdm.auto import tqdm

                    tqdm.write(self.NOTE, file=sys.stderr)

            def on_end(listener, ev):
                pass

        self.count = 0
        self.names = []
        self.announce = announce
        self._listener = Listener()
        self._event = event

    def __enter__(self):
        self._event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        self._event.unregister("numba:compile", self._listener)
        return False


def warmup(*, verbose=True):
    """Compile (or load from Numba's cache) every CPU kernel path the CLI uses.

    Runs the digits model's float forward with recording, its packed forward and a training
    step (forward + backward) on four images, and the three equalization searches. Returns the
    number of seconds taken (a few seconds when every kernel is already in Numba's on-disk
    cache).
    """
    from .data import load_digits_split
    from .equalization import OBJECTIVES, equalization_search
    from .models import digits_cnn
    from .packed import pack_bits, unpack_bits
    from .train import cross_entropy

    t0 = time.perf_counter()
    x = load_digits_split().x_test[:4]
    steps = []
    for convention in ("paper", "official"):
        m = digits_cnn(convention).eval()
        m(x, record=True)
        m(x, packed=True)
        m.train()
        _, g = cross_entropy(m(x), np.arange(4))
        m.backward(g)
        steps.append(convention)
    w = np.random.default_rng(0).normal(size=(2, 27))
    for objective in OBJECTIVES:
        equalization_search(w, objective)
    unpack_bits(pack_bits(np.ones((2, 70))), 70)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def _inside_package(path):
    try:
        Path(path).resolve().relative_to(_PACKAGE_DIR)
    except ValueError:
        return False
    return True


def _cmd_train(args):
    from .train import train_digits

    out = TRAIN_DEFAULT_OUT if args.out is None else args.out
    if _inside_package(out):
        raise UsageError(f"--out {out} lies inside the installed package ({_PACKAGE_DIR}); "
                         f"training never overwrites the embedded model: choose a path outside "
                         f"it")
    if Path(out).is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as "
                         f"{Path(out) / TRAIN_DEFAULT_OUT}")
    where = "" if args.out is not None else " (default: the current directory; --out to change)"
    print(f"weights will be written to {Path(out).resolve()}{where}")
    res = train_digits(epochs=args.epochs, seed=args.seed, out=out, convention=args.convention,
                       batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress)
    last = res.history[-1]
    print(f"digits 1w1a CNN ({args.convention}), {args.epochs} epochs, seed {args.seed}: "
          f"train loss {last['loss']:.4f}, test accuracy {100 * res.test_accuracy:.2f}% "
          f"({res.seconds:.1f} s)")
    print(f"weights written to {out}; run them with: adabin-np analyze --model {out}")
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

        desc = "forward (float + packed)" if packed else "forward (float)"
        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
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

    (size, _), channels = ARCH_INPUT[arch][0], ARCH_INPUT[arch][1]
    if args.inputs is not None:
        from .distributions import load_inputs

        if not Path(args.inputs).exists():
            raise UsageError(f"--inputs {args.inputs}: no such file or folder; pass a folder of "
                             f"images or an .npy array of shape (N, {channels}, H, W)")
        mean, std = (None, None) if arch == "digits" else (CIFAR_MEAN, CIFAR_STD)
        try:
            x = load_inputs(args.inputs, size=(size, size), channels=channels, mean=mean,
                            std=std, limit=args.n_images)
        except (ValueError, TypeError, OSError) as exc:
            raise UsageError(f"--inputs {args.inputs}: {_first_line(exc)}; pass a folder of "
                             f"images or an .npy array of shape (N, {channels}, H, W)") from exc
        return x, None, f"{len(x)} inputs from {args.inputs}"
    if arch == "digits":
        split = load_digits_split()
        x, y = split.x_test, split.y_test
        if args.n_images is not None:
            x, y = x[:args.n_images], y[:args.n_images]
        return x, y, f"digits test split ({len(x)} images)"
    n = args.n_images or (128 if arch == "resnet20" else 2)
    x = sample_image_crops(n, size)
    return x, None, f"{n} {size}x{size} crops of scikit-learn's sample images (no labels)"


def _cuda_available():
    try:
        from . import cuda as _cuda

        return bool(_cuda.is_available())
    except ImportError:
        return False


def _check_device(device):
    if device != "cuda":
        return
    if not _cuda_available():
        raise UsageError("--device cuda: no usable CUDA GPU (numba.cuda.is_available() is "
                         "False); use --device cpu, or install the cuda extra "
                         "(pip install -e \".[cuda]\") on a machine with a GPU")


def write_distributions(model, x, out_dir, *, name, tol=None, progress=True, landscape=None):
    """Hook to :func:`adabin_np.distributions.analyze_model` (figures + ``summary.json``).

    ``landscape``: ``(layer_name, channel)`` of the loss-landscape figure (default: the first
    binary layer, channel 0). Returns the summary dict, or ``None`` (with a message) when that
    module is unavailable.
    """
    try:
        from . import distributions
    except ImportError as exc:
        print(f"--out: adabin_np.distributions is unavailable ({exc}); no figures written")
        return None
    kwargs = {} if tol is None else {"flip_tol": tol}
    if landscape is not None:
        kwargs["landscape"] = landscape
    return distributions.analyze_model(model, x, out_dir=out_dir, name=name, progress=progress,
                                       **kwargs)


def _landscape_choice(args, model):
    if args.layer is None and args.channel == 0:
        return None
    names = [n for n, _ in model.binary_layers()]
    layer = names[0] if args.layer is None else args.layer
    if layer not in names:
        raise UsageError(f"--layer {layer!r} is not a binary layer of the model; choose one of "
                         f"{', '.join(names)}")
    channels = dict(model.binary_layers())[layer].params["weight"].shape[0]
    if args.channel >= channels:
        raise UsageError(f"--channel {args.channel}: layer {layer} has {channels} output "
                         f"channels (0..{channels - 1})")
    return layer, args.channel


def _figure_title(arch, args, model):
    """Plot title: the model and the file *name* (never a raw path)."""
    src = args.checkpoint if args.checkpoint is not None else args.model
    nice = {"resnet20": "ResNet-20 1w1a", "resnet18": "ResNet-18 1w1a",
            "digits": "digits 1w1a CNN"}[arch]
    where = "embedded model" if src is None else Path(src).name
    return f"{nice}, {where} ({model.convention} convention)"


def _cmd_analyze(args):
    from .testing import DEFAULT_TOL

    t_start = time.perf_counter()
    tol = DEFAULT_TOL if args.flip_tol is None else args.flip_tol
    if args.out is None and (args.layer is not None or args.channel != 0):
        raise UsageError("--layer/--channel choose the landscape figure: they need --out DIR")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder for the figures")
    _check_device(args.device if not args.no_packed else "cpu")
    model, arch, model_desc = _load_model(args)
    landscape = _landscape_choice(args, model) if args.out is not None else None
    from .distributions import command as _stream

    if _stream.wants_streaming(args):  # --inputs/--labels/--chunk-size/--scheduler: chunked
        return _stream.run(args, model, arch, model_desc, tol=tol, landscape=landscape,
                           title=_figure_title(arch, args, model), usage_error=UsageError)
    x, y, data_desc = _analysis_inputs(args, arch)
    packed = not args.no_packed
    print(f"model: {model_desc}")
    print(f"inputs: {data_desc}")
    t0 = time.perf_counter()
    rows, lf, lp = layer_report(model, x, batch_size=args.batch_size, packed=packed,
                                device=args.device, tol=tol, progress=not args.no_progress)
    t_forward = time.perf_counter() - t0
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
        print("packed path skipped (--no-packed)")
    times = f"forward {t_forward:.1f} s"
    if args.out is not None:
        t1 = time.perf_counter()
        summary = write_distributions(model, x, args.out, name=_figure_title(arch, args, model),
                                      tol=tol, progress=not args.no_progress,
                                      landscape=landscape)
        times += f", distributions and figures {time.perf_counter() - t1:.1f} s"
        if summary is not None:
            print(f"distribution figures and summary.json written to {args.out}")
    print(f"({times}; total {time.perf_counter() - t_start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# summary, warmup
# ----------------------------------------------------------------------------------------------


def _cmd_summary(args):
    from .summary import summary

    model, arch, desc = _load_model(args)
    (h, w), channels = ARCH_INPUT[arch]
    if args.input_size is not None:
        h, w = args.input_size
    print(f"model: {desc}")
    summary(model, input_shape=(channels, h, w))
    return 0


def _cmd_warmup(args):
    with _CompileWatch(announce=False) as watch:
        seconds = warmup()
    names = sorted(set(watch.names))
    state = (f"{watch.count} compiled now and written to Numba's on-disk cache "
             f"({', '.join(n.rpartition('.')[2] for n in names)})"
             if watch.count else "all loaded from Numba's on-disk cache, nothing to compile")
    print(f"Numba kernels: {state} ({seconds:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------


def _cmd_bench(rest):
    try:
        from . import bench
    except ImportError as exc:
        raise UsageError(f"adabin_np.bench is unavailable ({exc})") from None
    if rest and rest[0] == "--float":  # the float64-path benchmark (adabin_np.bench_float)
        result = bench.run(list(rest))
        return result if isinstance(result, int) else 0
    parser = _Parser(prog="adabin-np bench",
                     description=(bench.__doc__ or "").split("\n\n")[0] or None)
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args(rest))
    return result if isinstance(result, int) else 0


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def _first_line(exc):
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    more = f" (+{len(lines) - 1} more lines; --debug shows them)" if len(lines) > 1 else ""
    return lines[0].rstrip(":") + more


def _run(args, rest):
    if args.command == "bench":
        return _cmd_bench(rest)
    return {"train": _cmd_train, "analyze": _cmd_analyze, "summary": _cmd_summary,
            "warmup": _cmd_warmup}[args.command](args)


def main(argv=None):
    """Entry point of the ``adabin-np`` console script; returns the exit status.

    User errors (:class:`UsageError`, ``ValueError``, ``TypeError``, ``OSError``) print one line
    on stderr and return 2; any other exception prints one line and returns 1; ``--debug``
    re-raises instead (full traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    prog = f"adabin-np {args.command}"
    try:
        with _CompileWatch(announce=args.command != "warmup"):
            return _run(args, rest)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except (UsageError, ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"{prog}: error: {_first_line(exc)}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - an internal error: one line, traceback on --debug
        if args.debug:
            raise
        sys.stderr.write(f"{prog}: internal error: {type(exc).__name__}: {_first_line(exc)} "
                         f"(rerun with --debug for the traceback and please report it)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
