"""Element types: how each is stored on disk and which NumPy dtype it is returned as.

float64, float32, float16, int64, int32, int16, int8, uint8, uint16, uint32, uint64, bool,
complex64 and complex128 keep their dtype (float16 stays float16). bfloat16, which NumPy
lacks, is widened exactly to float32 (its 16 bits become the high half of a float32). Bool
storages are normalised: any non-zero byte is True.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type as stored on disk (``raw``, little-endian) and as returned (``out``)."""

    name: str
    raw: str
    out: np.dtype

    @property
    def itemsize(self) -> int:
        return np.dtype(self.raw).itemsize


def _make_dtypes() -> dict[str, DType]:
    table = {
        "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
        "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1",
        "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "u1",
        "complex64": "<c8", "complex128": "<c16",
    }
    out = {"bfloat16": np.dtype(np.float32), "bool": np.dtype(np.bool_)}
    return {name: DType(name, raw, out.get(name, np.dtype(raw).newbyteorder("=")))
            for name, raw in table.items()}


DTYPES = _make_dtypes()


def decode(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Convert an array of stored elements (``dtype.raw``, any byte order) to ``dtype.out``."""
    if dtype.name == "bool":
        return raw != 0
    if dtype.name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(dtype.out, copy=False)
