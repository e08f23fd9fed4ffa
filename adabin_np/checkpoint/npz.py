"""NumPy ``.npz`` archives (the project's own weight format, see ``save_npz``).

Every member must be ``<key>.npy`` holding a numeric (bool, integer, float, complex) array;
object, string and structured dtypes -- which would need pickle -- are refused. Read with the
semantics of ``np.load(path, allow_pickle=False)``: versions 1.0 and 2.0, C or Fortran order,
either byte order (returned native, C-contiguous). Each member is charged to the byte budget
(its decompressed bytes, then the returned array) before it is allocated.
"""
from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping

import numpy as np

from .errors import CheckpointError
from .limits import ByteBudget, Limits
from .tensors import check_int_tuple, strip_prefix
from .zip_members import read_member

_MAX_NPY_HEADER = 10000  # NumPy's own default for max_header_size


def is_npz(zf: zipfile.ZipFile) -> bool:
    names = zf.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_header(raw: bytearray, name: str):
    fmt = np.lib.format
    f = io.BytesIO(memoryview(raw)[: _MAX_NPY_HEADER + 16])
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            header = fmt.read_array_header_1_0(f, _MAX_NPY_HEADER)
        elif version == (2, 0):
            header = fmt.read_array_header_2_0(f, _MAX_NPY_HEADER)
        else:
            raise CheckpointError(f"npz member {name!r:.80} has unsupported .npy version "
                                  f"{version}")
    except CheckpointError:
        raise
    except Exception as exc:  # NumPy's header parser raises ValueError, SyntaxError,
        # tokenize.TokenError, ... on garbage; the header is at most 10000 characters
        raise CheckpointError(f"npz member {name!r:.80} has a corrupt header "
                              f"({str(exc)[:200]})") from None
    return header, f.tell()


def load(zf: zipfile.ZipFile, limits: Limits, budget: ByteBudget) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for info in zf.infolist():
        name = info.filename
        raw = read_member(zf, name, budget=budget)
        (shape, fortran, dtype), start = _read_header(raw, name)
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
        arr = flat.reshape(shape, order="F" if fortran else "C")
        arrays[name[:-4]] = np.array(arr, dtype=dtype.newbyteorder("="), order="C")
        del raw, flat, arr
    return dict(strip_prefix(arrays.items()))


def write(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Write validated ``arrays`` as an uncompressed ``.npz`` to the binary file ``f``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
