r"""Model inputs: whole arrays (:func:`load_inputs`) and chunked sources for streaming.

A *source* yields ``(N, C, H, W)`` model inputs in row chunks without holding all of them:

* :class:`ArraySource` -- a NumPy array or ``np.memmap`` (only the chunk is read),
* :class:`NpyFileSource` -- an ``.npy`` file read chunk by chunk with plain file reads (no
  memory map, so resident memory does not grow with the rows read; the header is validated and
  the file size checked against it before any row is read),
* :class:`ImageFolderSource` -- a folder of images (resize + centre crop as :func:`load_inputs`),
* :class:`DaskSource` -- a dask array (chunks computed where they are needed).

Value rule (every source): ``uint8`` data are images, scaled to ``[0, 1]`` (``/ 255``) and then
normalised ``(x - mean) / std`` when ``mean``/``std`` are given; any other real dtype is taken
as already-normalised model input (used as is, in float64). Images from a folder are scaled and
normalised like ``uint8`` data. NaN/inf, complex, object or bool data raise.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from ..validation import as_float_array
from .records import _check_int

__all__ = ["load_inputs", "Normalizer", "ArraySource", "NpyFileSource", "ImageFolderSource",
           "DaskSource", "Head", "as_source", "LabelReader"]


class Normalizer:
    """``uint8`` -> ``x / 255``, then ``(x - mean) / std`` (scalars or one per channel)."""

    def __init__(self, mean=None, std=None, channels=None):
        self.mean = self.std = None
        for val, nm in ((mean, "mean"), (std, "std")):
            if val is None:
                continue
            arr = as_float_array(val, nm, allow_scalar=True)
            if arr.ndim > 1 or (arr.ndim == 1 and channels is not None
                                and arr.shape[0] not in (1, channels)):
                raise ValueError(f"{nm} must be a scalar or have {channels} entries, got "
                                 f"{arr.shape}")
            if nm == "std" and np.any(arr <= 0):
                raise ValueError("std must be > 0")
            setattr(self, nm, arr.reshape(1, -1, 1, 1) if arr.ndim else arr)

    def images(self, x):
        """Scale images in [0, 1] (float64) by mean/std."""
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def __call__(self, raw, what="inputs"):
        if raw.dtype == np.uint8:
            return self.images(raw.astype(np.float64) / 255.0)
        return np.ascontiguousarray(as_float_array(raw, what), dtype=np.float64)


def _check_dtype(dtype, what):
    if dtype == np.uint8 or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)):
        return
    raise TypeError(f"{what} must be uint8 images or real floats, got dtype {dtype}")


def _check_shape(shape, what, channels=None):
    if len(shape) != 4:
        raise ValueError(f"{what} must have shape (N, C, H, W), got {tuple(shape)}")
    if shape[0] < 1:
        raise ValueError(f"{what} holds no inputs (shape {tuple(shape)})")
    if channels is not None and shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels on axis 1 (N, {channels}, H, "
                         f"W), got shape {tuple(shape)}")


class ArraySource:
    """Chunks of an in-memory array or memmap ``(N, C, H, W)``."""

    remote = False  # workers cannot read it: the driver sends each chunk

    def __init__(self, array, normalizer=None, channels=None, what="inputs"):
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        _check_dtype(array.dtype, what)
        _check_shape(array.shape, what, channels)
        self.array = array
        self.what = what
        self.normalizer = normalizer or Normalizer()

    def __len__(self):
        return self.array.shape[0]

    @property
    def sample_shape(self):
        return tuple(self.array.shape[1:])

    def read(self, start, stop):
        return np.array(self.array[start:stop])

    def prepare(self, raw, start=0):
        return self.normalizer(raw, f"{self.what} rows {start}..{start + len(raw) - 1}")


class DaskSource(ArraySource):
    """Chunks of a dask array ``(N, C, H, W)``: ``array[start:stop]`` computed per chunk."""

    def __init__(self, array, normalizer=None, channels=None, what="inputs"):
        _check_dtype(np.dtype(array.dtype), what)
        _check_shape(array.shape, what, channels)
        if any(isinstance(d, float) and d != d for d in array.shape):
            raise ValueError(f"{what}: dask array has unknown shape {array.shape}")
        self.array = array
        self.what = what
        self.normalizer = normalizer or Normalizer()

    def read(self, start, stop):
        return np.asarray(self.array[start:stop].compute(scheduler="sync"))


class NpyFileSource:
    """Chunks of an ``.npy`` file ``(N, C, H, W)`` (uint8 or float), read with file reads."""

    remote = True  # workers read their rows themselves (the path must be visible to them)

    def __init__(self, path, normalizer=None, channels=None):
        self.path = str(Path(path))
        self.what = Path(path).name
        self.normalizer = normalizer or Normalizer()
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, SyntaxError, TypeError, OSError) as exc:
                raise ValueError(f"{self.what} is not a valid .npy file: {exc}") from None
            self.offset = f.tell()
        if dtype.hasobject:
            raise TypeError(f"{self.what} holds Python objects; only numeric arrays are read")
        _check_dtype(dtype, f"array in {self.what}")
        if fortran and len(shape) > 1:
            raise ValueError(f"{self.what} is stored in Fortran order; save it C-contiguous "
                             f"(np.save(path, np.ascontiguousarray(x)))")
        _check_shape(shape, f"array in {self.what}", channels)
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self.row = math.prod(self.shape[1:])  # Python ints: no overflow on hostile shapes
        need = self.offset + self.shape[0] * self.row * dtype.itemsize
        size = os.path.getsize(self.path)
        if size < need:
            raise ValueError(f"{self.what} is truncated: the header promises {need} bytes, the "
                             f"file has {size}")

    def __len__(self):
        return self.shape[0]

    @property
    def sample_shape(self):
        return self.shape[1:]

    def read(self, start, stop):
        count = (stop - start) * self.row
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row * self.dtype.itemsize)
            data = np.fromfile(f, dtype=self.dtype, count=count)
        if data.size != count:
            raise ValueError(f"{self.what}: short read at rows {start}..{stop - 1} (file changed?)")
        return data.reshape((stop - start,) + self.shape[1:])

    def prepare(self, raw, start=0):
        return self.normalizer(raw, f"{self.what} rows {start}..{start + len(raw) - 1}")


class ImageFolderSource:
    """Chunks of a folder of images (sorted by name), resized and centre-cropped to ``size``."""

    remote = True

    def __init__(self, path, size, channels, normalizer=None, limit=None):
        path = Path(path)
        self.files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no image files ({', '.join(_IMAGE_SUFFIXES)}) in {path}")
        if limit is not None:
            self.files = self.files[:limit]
        self.size = size
        self.channels = channels
        self.normalizer = normalizer or Normalizer()

    def __len__(self):
        return len(self.files)

    @property
    def sample_shape(self):
        return (self.channels,) + tuple(self.size)

    def read(self, start, stop):
        return np.stack([_read_image(p, self.size, self.channels) for p in self.files[start:stop]])

    def prepare(self, raw, start=0):
        return self.normalizer.images(raw)


class Head:
    """The first ``n`` rows of another source."""

    def __init__(self, source, n):
        self.source = source
        self.n = min(int(n), len(source))
        self.remote = source.remote

    def __len__(self):
        return self.n

    def __getattr__(self, name):  # normalizer, what, sample_shape ... of the wrapped source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def read(self, start, stop):
        return self.source.read(start, min(stop, self.n))

    def prepare(self, raw, start=0):
        return self.source.prepare(raw, start)


def as_source(inputs, *, channels=None, mean=None, std=None, size=None, limit=None):
    """A chunk source for ``inputs``: an array / memmap / dask array / source object, an
    ``.npy`` path or a folder of images (``size`` = (H, W) needed for a folder)."""
    if hasattr(inputs, "read") and hasattr(inputs, "prepare"):
        return inputs
    norm = Normalizer(mean, std, channels)
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.exists():
            raise FileNotFoundError(f"inputs not found: {path}")
        if path.is_dir():
            if size is None:
                raise ValueError("a folder of images needs size=(H, W)")
            return ImageFolderSource(path, size, channels or 3, norm, limit)
        if path.suffix.lower() == ".npy":
            return NpyFileSource(path, norm, channels)
        raise ValueError(f"inputs must be a folder of images or an .npy file, got {path}")
    if type(inputs).__module__.split(".")[0] == "dask":
        return DaskSource(inputs, norm, channels)
    if isinstance(inputs, np.ndarray) or hasattr(inputs, "__array__"):
        arr = np.asarray(inputs) if not isinstance(inputs, np.ndarray) else inputs
        if arr.dtype.kind in "biu" and arr.dtype != np.uint8:
            arr = as_float_array(arr, "inputs")  # integer values other than uint8 images
        return ArraySource(arr, norm, channels)
    raise TypeError(f"inputs must be a NumPy array, memmap, dask array, .npy path or image "
                    f"folder, got {type(inputs).__name__}")


class LabelReader:
    """Integer class labels ``(N,)`` from an array or an ``.npy`` file, sliced per chunk."""

    def __init__(self, labels, n):
        if isinstance(labels, (str, os.PathLike)):
            path = Path(labels)
            if not path.exists():
                raise FileNotFoundError(f"labels not found: {path}")
            try:
                labels = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ValueError(f"{path.name} is not a valid .npy label file: {exc}") from None
        elif type(labels).__module__.split(".")[0] == "dask":
            labels = np.asarray(labels.compute())
        labels = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must have shape ({n},) (one per input), got "
                             f"{labels.shape}")
        self.labels = labels

    def read(self, start, stop):
        return np.array(self.labels[start:stop], dtype=np.int64)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _read_image(path, size, channels):
    """Read an image, resize its shorter side to ``max(size)`` and centre-crop to ``size``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        h, w = size
        scale = max(h / im.height, w / im.width)
        nh, nw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - h) // 2, (nw - w) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.float64) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_inputs(path, *, size=(32, 32), channels=3, mean=None, std=None, limit=None):
    r"""Model inputs ``(N, channels, H, W)`` float64 from a folder of images or an ``.npy`` file.

    Folder: every ``*.png|jpg|jpeg|bmp|gif|tif|tiff|webp`` file (sorted by name), converted to
    RGB (``channels=3``) or grey (``channels=1``), scaled to ``[0, 1]``, resized so that it
    covers ``size = (H, W)`` (bilinear) and centre-cropped. ``.npy``: an array of shape
    ``(N, C, H, W)``, ``(N, H, W, C)`` (converted when ``C`` matches ``channels`` on the last
    axis only) or ``(N, H, W)`` for ``channels=1``; it is used as is (no rescaling, no
    resizing: ``H, W`` must equal ``size``). ``mean``/``std`` (scalars or one per channel)
    normalise as ``(x - mean)/std`` afterwards, for both sources. ``limit`` keeps the first
    ``limit`` inputs.
    """
    path = Path(path)
    channels = _check_int(channels, "channels", 1)
    if isinstance(size, (numbers.Integral, np.integer)):
        size = (int(size), int(size))
    if len(tuple(size)) != 2:
        raise ValueError(f"size must be an int or a pair (H, W), got {size!r}")
    size = tuple(_check_int(s, "size", 1) for s in size)
    if limit is not None:
        limit = _check_int(limit, "limit", 1)
    if not path.exists():
        raise FileNotFoundError(f"inputs not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files ({', '.join(_IMAGE_SUFFIXES)}) in {path}")
        if limit is not None:
            files = files[:limit]
        x = np.stack([_read_image(p, size, channels) for p in files])
    elif path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        x = as_float_array(arr, f"array in {path.name}")
        if x.ndim == 3 and channels == 1:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[1] != channels and x.shape[3] == channels:
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{path.name} must hold (N, {channels}, H, W) inputs, got shape "
                             f"{arr.shape}")
        if tuple(x.shape[2:]) != size:
            raise ValueError(f"{path.name} holds {x.shape[2]}x{x.shape[3]} inputs but the "
                             f"model expects {size[0]}x{size[1]} (.npy inputs are not resized)")
        if x.shape[0] == 0:
            raise ValueError(f"{path.name} holds no inputs")
        if limit is not None:
            x = x[:limit]
    else:
        raise ValueError(f"inputs must be a folder of images or an .npy file, got {path}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    for val, nm in ((mean, "mean"), (std, "std")):
        if val is None:
            continue
        arr = as_float_array(val, nm, allow_scalar=True)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, channels)):
            raise ValueError(f"{nm} must be a scalar or have {channels} entries, got {arr.shape}")
        if nm == "std" and np.any(arr <= 0):
            raise ValueError("std must be > 0")
        arr = arr.reshape(1, -1, 1, 1) if arr.ndim else arr
        x = x - arr if nm == "mean" else x / arr
    return x
