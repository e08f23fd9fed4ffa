"""Data shipped with scikit-learn (no downloads): the 8x8 digits and natural-image crops.

* :func:`load_digits_split` -- scikit-learn's 1797 handwritten digits (8x8, grey levels
  0..16), split stratified into 1437 train / 360 test images with a fixed seed, scaled to
  ``[-1, 1]`` as ``x/8 - 1`` and shaped ``(N, 1, 8, 8)`` float64.
* :func:`sample_image_crops` -- random RGB crops of scikit-learn's two sample photographs
  (``china.jpg``, ``flower.jpg``), normalised with the release's mean/std: stand-ins for
  CIFAR/ImageNet images when comparing implementations offline (no labels).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DigitsSplit", "load_digits_split", "sample_image_crops", "DIGITS_TEST_SIZE"]

DIGITS_TEST_SIZE = 360


class DigitsSplit(NamedTuple):
    """Train/test arrays: ``x_*`` float64 ``(N, 1, 8, 8)`` in [-1, 1], ``y_*`` int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(*, seed=0, test_size=DIGITS_TEST_SIZE) -> DigitsSplit:
    """Stratified train/test split of scikit-learn's digits (default 1437/360, ``seed=0``).

    Pixels ``p`` in 0..16 become ``p/8 - 1`` in ``[-1, 1]``. The split is
    ``sklearn.model_selection.train_test_split(..., stratify=y, random_state=seed)``, so it is
    identical on every machine for a given seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float64) / 8.0 - 1.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y,
                                              random_state=seed)
    return DigitsSplit(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te)


def sample_image_crops(n, size=32, *, seed=0, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225)) -> np.ndarray:
    """``n`` random ``size x size`` RGB crops of scikit-learn's sample images, ``(n, 3, s, s)``.

    Pixels are scaled to [0, 1] and normalised per channel, ``(p - mean)/std`` (the release's
    transform). Crops alternate between the two photographs; positions are drawn from
    ``numpy.random.default_rng(seed)``.
    """
    from sklearn.datasets import load_sample_images

    if int(n) < 1 or int(size) < 1:
        raise ValueError(f"n and size must be >= 1, got n={n}, size={size}")
    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = np.empty((int(n), size, size, 3))
    for k in range(int(n)):
        im = images[k % len(images)]
        if im.shape[0] < size or im.shape[1] < size:
            raise ValueError(f"crop size {size} exceeds the sample image shape {im.shape[:2]}")
        i = rng.integers(0, im.shape[0] - size + 1)
        j = rng.integers(0, im.shape[1] - size + 1)
        crops[k] = im[i:i + size, j:j + size] / 255.0
    crops = (crops - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))
