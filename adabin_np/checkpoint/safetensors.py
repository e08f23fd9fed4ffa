"""The safetensors format (https://github.com/huggingface/safetensors), read and written here.

Layout: an 8-byte little-endian unsigned header length ``N``; ``N`` bytes of UTF-8 JSON (an
object, possibly padded with trailing spaces); then the byte buffer. The JSON maps each tensor
name to ``{"dtype": D, "shape": [d0, ...], "data_offsets": [begin, end]}`` (offsets relative
to the buffer), plus an optional ``"__metadata__"`` object of string values.

Validation, all before any tensor is made (the reference implementation's rules):
``N <= 100,000,000`` and ``8 + N <= file size``; the header starts with ``{``, is valid UTF-8
JSON without duplicate names, lists at most ``max_members`` tensors (this reader's own limit),
and each entry has exactly those three fields; ``D`` is a known
dtype (``BOOL U8 I8 U16 I16 U32 I32 U64 I64 F16 BF16 F32 F64 C64``; float8/float4 are
refused); ``shape`` is a list of at most ``max_ndim`` integers ``>= 0``;
``end - begin == prod(shape) * itemsize``; sorted by offset, the tensors tile the buffer
exactly -- the first begins at 0, each begins where the previous ended (no overlap, no gap)
and the last ends at the end of the file. Data is little-endian and C-ordered; BF16 is
widened to float32 like every other reader here.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from .dtypes import DTYPES, decode
from .errors import CheckpointError
from .limits import ByteBudget, Limits
from .tensors import check_int, describe, strip_prefix

DTYPE_CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
               "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64",
               "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
               "C64": "complex64"}
_CODE_OF_OUT = {np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
                np.dtype(np.uint16): "U16", np.dtype(np.int16): "I16",
                np.dtype(np.uint32): "U32", np.dtype(np.int32): "I32",
                np.dtype(np.uint64): "U64", np.dtype(np.int64): "I64",
                np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
                np.dtype(np.float64): "F64", np.dtype(np.complex64): "C64"}
_FIELDS = {"dtype", "shape", "data_offsets"}
METADATA_KEY = "__metadata__"


def is_safetensors(data: bytes) -> bool:
    """An 8-byte length followed by ``{``: how the format is recognised (after the others)."""
    return len(data) >= 9 and data[8:9] == b"{"


def _no_duplicates(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise CheckpointError("safetensors header names a key twice")
    return out


def _refuse_constant(name):
    raise CheckpointError(f"safetensors header holds the non-JSON constant {name}")


def parse_header(data: bytes, limits: Limits) -> tuple[dict, int]:
    """Validate the header; return ({name: (dtype, shape, begin, end)}, buffer start)."""
    if len(data) < 8:
        raise CheckpointError("safetensors file is shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > limits.max_safetensors_header:
        raise CheckpointError(f"safetensors header of {n} bytes is over the limit of "
                              f"{limits.max_safetensors_header}")
    if 8 + n > len(data):
        raise CheckpointError(f"safetensors header length {n} runs past the end of the file")
    raw = bytes(data[8:8 + n])
    if not raw.startswith(b"{"):
        raise CheckpointError("safetensors header does not start with '{'")
    # Each JSON object starts with a '{' byte (escapes cannot make one): counting them at C
    # speed bounds the entries before the parser calls back into Python once per object.
    if raw.count(b"{") > limits.max_members + 2:
        raise CheckpointError(f"safetensors header lists more than {limits.max_members} "
                              "tensors (max_members)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_refuse_constant)
    except CheckpointError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"safetensors header is not valid JSON "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if type(header) is not dict:
        raise CheckpointError("safetensors header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None)
    if metadata is not None and (type(metadata) is not dict
                                 or not all(type(v) is str for v in metadata.values())):
        raise CheckpointError("safetensors __metadata__ must map strings to strings")
    if len(header) > limits.max_members:
        raise CheckpointError(f"safetensors header lists more than {limits.max_members} "
                              "tensors (max_members)")
    entries: dict[str, tuple] = {}
    for name, info in header.items():
        if type(info) is not dict or set(info) != _FIELDS:
            raise CheckpointError(f"safetensors entry {name!r:.60} must have exactly the "
                                  "fields dtype, shape and data_offsets")
        code = info["dtype"]
        if type(code) is not str or code not in DTYPE_CODES:
            raise CheckpointError(f"safetensors entry {name!r:.60} has unsupported dtype "
                                  f"{describe(code)}")
        dtype = DTYPES[DTYPE_CODES[code]]
        shape = info["shape"]
        if type(shape) is not list or len(shape) > limits.max_ndim:
            raise CheckpointError(f"safetensors entry {name!r:.60} has a malformed shape")
        shape = tuple(check_int(d, "safetensors shape") for d in shape)
        offsets = info["data_offsets"]
        if type(offsets) is not list or len(offsets) != 2:
            raise CheckpointError(f"safetensors entry {name!r:.60} has malformed "
                                  "data_offsets")
        begin, end = (check_int(o, "safetensors data offset") for o in offsets)
        if end < begin or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(
                f"safetensors entry {name!r:.60}: data_offsets [{begin}, {end}) do not hold "
                f"shape {shape} of {code}")
        entries[name] = (dtype, shape, begin, end)
    buffer_size = len(data) - 8 - n
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if begin != position:
            raise CheckpointError(
                f"safetensors entry {name!r:.60} begins at {begin}, expected {position} "
                "(tensors overlap or leave a gap)")
        position = end
    if position != buffer_size:
        raise CheckpointError(f"safetensors tensors cover {position} bytes of a "
                              f"{buffer_size}-byte buffer")
    return entries, 8 + n


def load(data: bytes, limits: Limits, budget: ByteBudget) -> dict[str, np.ndarray]:
    entries, start = parse_header(data, limits)
    if not entries:
        raise CheckpointError("no tensors found in the safetensors file")
    budget.take(sum(math.prod(s) * d.out.itemsize for d, s, _, _ in entries.values()),
                "the returned arrays")
    view = memoryview(data)
    arrays = {}
    for name, (dtype, shape, begin, end) in entries.items():
        raw = np.frombuffer(view[start + begin:start + end], dtype=np.dtype(dtype.raw))
        out = decode(raw.reshape(shape), dtype)
        arrays[name] = np.array(out, order="C", dtype=out.dtype.newbyteorder("="))
    return strip_prefix(arrays.items())


def write(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Write validated ``arrays`` to the binary file ``f`` (header padded to 8 bytes)."""
    header: dict[str, object] = {}
    position = 0
    payloads = []
    for key, arr in arrays.items():
        if key == METADATA_KEY:
            raise ValueError(f"{METADATA_KEY!r} is reserved in safetensors files")
        code = _CODE_OF_OUT.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"state_dict[{key!r}] has dtype {arr.dtype}, which safetensors "
                             "cannot store (complex128 has no safetensors dtype)")
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        header[key] = {"dtype": code, "shape": list(arr.shape),
                       "data_offsets": [position, position + le.nbytes]}
        position += le.nbytes
        payloads.append(le)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for le in payloads:
        f.write(le.tobytes())
