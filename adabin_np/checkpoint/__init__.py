"""Checkpoint IO: read PyTorch, ``.npz`` and safetensors weight files without torch.

``load_checkpoint(path, *, max_bytes=None)`` returns a flat ``dict[str, np.ndarray]`` (a state
dict) from any of four formats, recognised from the file's content (not its suffix), each in
its own module:

==========================  ============================================================
:mod:`.torch_zip`           ``torch.save`` zip archives (torch >= 1.6 default)
:mod:`.torch_legacy`        ``torch.save(..., _use_new_zipfile_serialization=False)``
:mod:`.npz`                 NumPy ``.npz`` of numeric ``.npy`` members (``save_npz``)
:mod:`.safetensors`         the safetensors format (``save_checkpoint(sd, "x.safetensors")``)
==========================  ============================================================

The torch formats' pickles run on :mod:`.pickle_vm`, a pickle VM written in Python that can
only build plain data and immutable tensor descriptions (:mod:`.tensors`); zip members are
read by :mod:`.zip_members`; the limits are in :mod:`.limits`. A single ``.npy``, tar-era
(torch < 0.4) checkpoints, TorchScript archives and other formats are refused.

Which dict is returned
----------------------
If the unpickled object is a dict holding a dict under ``"state_dict"``,
``"model_state_dict"``, ``"model"`` or ``"net"`` (first match in that order), that inner dict
is the state dict; otherwise the object itself must be a dict and is the state dict. Only its
tensor values are returned; every other value (numbers, strings, ``None``, nested containers)
is metadata and is **dropped**. A leading ``"module."`` (left by ``nn.DataParallel``) is
stripped from every key, for every format; two keys that collide after stripping are an
error. Keys must be strings. A state dict without any tensor is an error. For the public
AdaBin release (``{"state_dict": ..., "best_prec1": tensor}``) the result is the 195 entries of
``state_dict``.

Dtypes: see :mod:`.dtypes` (float16 stays float16, bfloat16 is widened exactly to float32,
bool normalised). Tensors saved with the negative or conjugate bit are returned resolved.
Returned arrays are C-contiguous, native-endian, writeable and never share memory with each
other or with the file. float8, quantized, sparse, nested and meta tensors are refused.

Safety
------
A checkpoint is data, never code: see :mod:`.pickle_vm` for what a pickle may do, and
:mod:`.limits` for the bounds (``max_bytes``, opcodes, nesting, hash collisions, archive
members), each checked before the work or memory it bounds is spent, so that any file of at
most 10 MB loads or is refused within about a second (``fuzz/bench_hostile.py`` times the
worst file per attack class). The file is opened with ``O_NONBLOCK`` (a FIFO cannot block
the open), must be a regular file, is read once (a read bounded by its size) and its
descriptor is always closed. Every error names the path.
"""
from __future__ import annotations

import os
import stat

import numpy as np

from . import npz, safetensors, torch_legacy, torch_zip
from .errors import CheckpointError
from .limits import ByteBudget, Limits, default_max_bytes
from .save import save_checkpoint, save_npz
from .torch_legacy import MAGIC_NUMBER as LEGACY_MAGIC_NUMBER
from .zip_members import open_zip

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "save_npz",
           "LEGACY_MAGIC_NUMBER"]


def _read_file(path) -> tuple[str, bytes]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag.
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"{name}: is a directory, not a checkpoint file")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{name}: is not a regular file")
        chunks = []
        left = info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 2**30))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return name, chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse(data: bytes, limits: Limits) -> dict[str, np.ndarray]:
    """Recognise the format of ``data`` and load it (errors do not yet name a path)."""
    budget = ByteBudget(limits.max_bytes)
    if not data:
        raise CheckpointError("file is empty")
    if data[:2] == b"PK":
        zf = open_zip(data, limits.max_members)
        pkl = torch_zip.find_pickle(zf)
        if pkl is not None:
            return torch_zip.load(zf, pkl, limits, budget)
        if npz.is_npz(zf):
            return npz.load(zf, limits, budget)
        raise CheckpointError("zip archive is neither a PyTorch checkpoint (no "
                              "<prefix>/data.pkl) nor an .npz of .npy arrays")
    if data[:1] == b"\x80":
        return torch_legacy.load(data, limits, budget)
    if data[:6] == b"\x93NUMPY":
        raise CheckpointError("a single .npy array is not a checkpoint; use .npz (save_npz)")
    if safetensors.is_safetensors(data):
        return safetensors.load(data, limits, budget)
    raise CheckpointError("unrecognised format (expected a PyTorch zip or legacy "
                          "checkpoint, an .npz archive or a .safetensors file)")


def load_checkpoint(path: str | os.PathLike, *,
                    max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Load a state dict from a PyTorch, ``.npz`` or safetensors file, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A ``torch.save`` file (zip or legacy format; ``.th``/``.pth``/``.pt``, any suffix),
        an ``.npz`` archive of numeric arrays, or a ``.safetensors`` file.
    max_bytes : int, optional
        Limit on the decoded bytes: the returned arrays plus every storage the reader must
        copy or decompress out of the file. Default ``max(128 MiB, 4 * file size)``. Checked
        before the memory is taken.

    Returns
    -------
    dict[str, np.ndarray]
        Parameter and buffer names (leading ``"module."`` stripped) mapped to fresh
        C-contiguous arrays, in file order. See the package docstring for which dict of a
        wrapped checkpoint is returned, dtype rules and what is dropped.

    Raises
    ------
    TypeError
        ``path`` is not a str or os.PathLike, or ``max_bytes`` is not an int.
    FileNotFoundError
        The file does not exist (other ``OSError`` from opening it propagate too).
    CheckpointError
        (a ``ValueError``; its message starts with the path) The path is a directory or not a
        regular file; the file is empty, truncated, corrupt, of an unsupported format, over a
        limit (``max_bytes`` included), or its pickle does something refused (nothing of it
        is run).
    """
    if max_bytes is not None and (not isinstance(max_bytes, int)
                                  or isinstance(max_bytes, bool)):
        raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__}")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    name, data = _read_file(path)
    limits = Limits(max_bytes=default_max_bytes(len(data)) if max_bytes is None
                    else max_bytes)
    try:
        return parse(data, limits)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    except MemoryError:
        raise CheckpointError(f"{name}: out of memory while decoding (lower max_bytes)") \
            from None
    except Exception as exc:  # any other parser failure on untrusted bytes: a corrupt file
        raise CheckpointError(f"{name}: corrupt or unsupported checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
