"""NumPy ``.npz`` archives (the project's own weight format, see ``save_npz``).

Every member must be ``<key>.npy`` holding a numeric (bool, integer, float, complex) array;
object, string and structured dtypes -- which would need pickle -- are refused. Read with the
semantics of ``np.load(path, allow_pickle=False)``: versions 1.0 and 2.0, C or Fortran order,
either byte order (returned native, C-contiguous); bool bytes other than 0/1 are normalised
to True. Each member is charged to the byte budget
(its decompressed bytes, then the returned array) before it is allocated.
"""
from __future__ import annotations

import ast
import math
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from .errors import CheckpointError
from .limits import ByteBudget, Limits
from .tensors import check_int_tuple, describe, strip_prefix
from .zip_members import read_member

_MAX_NPY_HEADER = 10000  # NumPy's own default for max_header_size
_CANONICAL_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<>|=]?[a-z][0-9]{1,2})', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>(?:[0-9]{1,19}, ?)*[0-9]{0,19})\), \} *\n?")
# bool, (u)int8..64, float16/32/64, complex64/128 in either byte order: '<f4', '|b1', '>c16'
_NUMERIC_DESCR = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|c8|c16)")


def is_npz(zf: zipfile.ZipFile) -> bool:
    names = zf.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_header(raw: bytearray, name: str) -> tuple[tuple, bool, np.dtype, int]:
    """Parse a ``.npy`` header: (shape, fortran_order, dtype, offset of the data).

    Format 1.0: ``\\x93NUMPY``, ``1 0``, a 2-byte little-endian header length; 2.0: ``2 0``
    and a 4-byte length; then a latin-1 Python dict literal with exactly the keys ``descr``
    (a dtype string: list descriptions are structured dtypes, refused), ``fortran_order``
    (bool) and ``shape`` (tuple of ints). The header ``np.save`` writes is matched by a regular
    expression; any other spelling is parsed with ``ast.literal_eval`` (no code runs). NumPy's
    own parser tokenizes the header first (to fix Python 2 longs), at ~10x the cost.
    """
    what = f"npz member {name!r:.80}"
    if bytes(raw[:6]) != b"\x93NUMPY" or len(raw) < 10:
        raise CheckpointError(f"{what} is not a .npy array")
    version = (raw[6], raw[7])
    if version == (1, 0):
        length, start = int.from_bytes(raw[8:10], "little"), 10
    elif version == (2, 0) and len(raw) >= 12:
        length, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise CheckpointError(f"{what} has unsupported .npy version {version}")
    if length > _MAX_NPY_HEADER or start + length > len(raw):
        raise CheckpointError(f"{what} has a header of {length} bytes (truncated or over "
                              f"{_MAX_NPY_HEADER})")
    text = bytes(raw[start:start + length]).decode("latin-1")
    canonical = _CANONICAL_HEADER.fullmatch(text)
    if canonical:  # what np.save writes: parsed without the (slower) Python parser
        dims = canonical["shape"].replace(",", " ").split()
        header = {"descr": canonical["descr"], "fortran_order": canonical["fortran"] == "True",
                  "shape": tuple(int(d) for d in dims)}
    else:
        try:
            header = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise CheckpointError(f"{what} has a corrupt header ({type(exc).__name__})") \
                from None
    if type(header) is not dict or set(header) != {"descr", "fortran_order", "shape"}:
        raise CheckpointError(f"{what} header must be a dict of descr, fortran_order, shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if type(descr) is not str or type(fortran) is not bool or type(shape) is not tuple:
        raise CheckpointError(f"{what} has a malformed header (descr {describe(descr)}, "
                              f"fortran_order {describe(fortran)}, shape {describe(shape)})")
    # Only plain numeric type strings reach np.dtype (whose own parser accepts comma lists,
    # subarrays and field specs -- and raised SyntaxError on ',f5', a fuzzer finding).
    if not _NUMERIC_DESCR.fullmatch(descr):
        raise CheckpointError(f"{what} has unsupported dtype {descr!r:.40} (numeric dtypes "
                              "only; pickles are refused)")
    return shape, fortran, np.dtype(descr), start + length


def load(zf: zipfile.ZipFile, limits: Limits, budget: ByteBudget) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for info in zf.infolist():
        name = info.filename
        raw = read_member(zf, name, budget=budget)
        shape, fortran, dtype, start = _read_header(raw, name)
        if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype:
            raise CheckpointError(f"npz member {name!r:.80} has unsupported dtype {dtype} "
                                  "(numeric dtypes only; pickles are refused)")
        shape = check_int_tuple(shape, "npy shape", limits.max_ndim)
        nbytes = math.prod(shape) * dtype.itemsize
        if len(raw) - start != nbytes:
            raise CheckpointError(f"npz member {name!r:.80} holds {len(raw) - start} data "
                                  f"bytes, its header says {nbytes}")
        budget.take(nbytes, f"npz member {name!r:.80}")
        flat = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=start)
        if dtype.kind == "b":  # normalise: a bool byte other than 0/1 is True, as for torch
            flat = flat.view(np.uint8) != 0
        arr = flat.reshape(shape, order="F" if fortran else "C")
        arrays[name[:-4]] = np.array(arr, dtype=flat.dtype.newbyteorder("="), order="C")
        del raw, flat, arr
    return dict(strip_prefix(arrays.items()))


def write(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Write validated ``arrays`` as an uncompressed ``.npz`` to the binary file ``f``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
