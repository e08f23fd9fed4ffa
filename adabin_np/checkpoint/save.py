"""Writing state dicts: ``save_checkpoint`` (by suffix) and ``save_npz``.

Both write to a temporary sibling of the target and rename it into place, so a failed write
never leaves a half-written file under the target name.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import npz, safetensors


def _validate(path, state_dict) -> dict[str, np.ndarray]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {type(key).__name__}")
        if not key or "\0" in key:
            raise ValueError(f"state_dict key {key!r} must be non-empty without NUL")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
            raise ValueError(f"state_dict[{key!r}] has dtype {arr.dtype}; only bool, "
                             "integer, float and complex arrays can be saved")
        arrays[key] = arr
    return arrays


def _atomic_write(path, write) -> Path:
    target = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def save_npz(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> Path:
    """Write ``state_dict`` as an uncompressed ``.npz`` that ``load_checkpoint`` reads back.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, written exactly as given (unlike ``np.savez``, no ``.npz`` suffix is
        appended).
    state_dict : Mapping[str, array_like]
        Non-empty string keys; values convertible to arrays of bool, integer, float or complex
        dtype (object, string and structured arrays are refused: they would need pickle).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    TypeError
        ``path`` or ``state_dict`` has the wrong type, or a key is not a string.
    ValueError
        A key is empty or a value is not a numeric array.
    """
    arrays = _validate(path, state_dict)
    return _atomic_write(path, lambda f: npz.write(f, arrays))


def save_checkpoint(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write ``state_dict`` as ``.npz`` or ``.safetensors``, chosen by the suffix of ``path``.

    ``.npz``: as :func:`save_npz`. ``.safetensors``: the safetensors format (little-endian,
    C order, header padded to 8 bytes) readable by the ``safetensors`` package and by
    ``load_checkpoint``; its dtypes are bool, (u)int8..64, float16/32/64 and complex64
    (complex128 has no safetensors dtype and is refused). Either file loads back with
    ``load_checkpoint`` to equal arrays of equal dtype.

    Raises
    ------
    TypeError
        ``path`` or ``state_dict`` has the wrong type, or a key is not a string.
    ValueError
        Unknown suffix, an empty key, a non-numeric array, or a dtype the format lacks.
    """
    arrays = _validate(path, state_dict)
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix == ".npz":
        return _atomic_write(path, lambda f: npz.write(f, arrays))
    if suffix == ".safetensors":
        return _atomic_write(path, lambda f: safetensors.write(f, arrays))
    raise ValueError(f"save_checkpoint writes .npz or .safetensors files, got suffix "
                     f"{suffix!r} in {os.fspath(path)!r}")
