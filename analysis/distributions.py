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
"""

from __future__ import annotations

import argparse
import shutil
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
    args = p.parse_args(argv)
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
