"""Immutable tensor descriptions, and turning them into arrays once the whole file is read.

The pickle VM (:mod:`.pickle_vm`) never builds an array: ``_rebuild_tensor*`` calls produce a
frozen :class:`TensorDesc` (storage reference, ``storage_offset``, ``size``, ``stride``, dtype,
neg/conj bits) copied out of the call's arguments. Nothing later in the pickle can change it
(BUILD/SETITEM on it are refused, and its fields are immutable). Only after the whole pickle
has been read does :func:`state_dict_arrays` select the state dict, check the byte budget,
fetch the storages it needs and validate every description against its storage *at that
moment*: with ``n`` = elements of the tensor's dtype that fit in the (view of the) storage,
``size_i >= 0``, ``stride_i >= 0``, ``offset >= 0`` and, for a non-empty tensor,
``offset + sum((size_i - 1) * stride_i) < n`` (for an empty one ``offset <= n``). The array
is then a copy of ``as_strided`` over exactly those bytes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .dtypes import DType, decode
from .errors import CheckpointError
from .limits import ByteBudget

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
STRIP_PREFIX = "module."
_MAX_INDEX = 2**62  # bound for sizes, strides, offsets and element counts


@dataclass(frozen=True)
class StorageRef:
    """``size`` elements of ``dtype`` starting at element ``start`` of the storage ``key``
    (declared with ``numel`` elements). Zip files always view the whole storage."""

    key: str
    dtype: DType
    numel: int
    start: int
    size: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class TensorDesc:
    """A tensor as the pickle described it; validated only when materialized."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType
    neg: bool = False
    conj: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.out.itemsize


def describe(value) -> str:
    """A short, safe description of an untrusted value for an error message."""
    if type(value) in (int, float, bool) and abs(value) < 10**30:
        return repr(value)
    if type(value) is str:
        return repr(value[:40])
    return type(value).__name__


def check_int(value, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value < _MAX_INDEX:
        raise CheckpointError(f"{what} must be an integer in [{minimum}, 2**62), got "
                              f"{describe(value)}")
    return value


def check_int_tuple(value, what: str, max_ndim: int) -> tuple[int, ...]:
    if type(value) not in (tuple, list):
        raise CheckpointError(f"{what} must be a tuple of integers, got "
                              f"{type(value).__name__}")
    if len(value) > max_ndim:
        raise CheckpointError(f"{what} has {len(value)} dimensions (at most {max_ndim})")
    return tuple(check_int(v, what) for v in value)


# ---------------------------------------------------------------------------------------------
# storage declarations (persistent ids of both torch formats)
# ---------------------------------------------------------------------------------------------
class StorageTable:
    """The storages a torch pickle declared, from its persistent ids.

    Zip format: ``('storage', storage_type, key, location, numel)``; legacy format: the same
    plus ``view_metadata``, ``None`` or ``(view_key, offset, size)`` (a window of the root
    storage). A key declared twice must agree on dtype and size. ``storage_type`` must be one
    of the pickle VM's storage markers (``torch.FloatStorage``, ``torch.UntypedStorage``...).
    """

    def __init__(self, legacy: bool, storage_dtype: Callable[[object], DType | None]):
        self.legacy = legacy
        self._storage_dtype = storage_dtype
        self.roots: dict[str, tuple[DType, int]] = {}

    def __call__(self, pid) -> StorageRef:
        if type(pid) is not tuple or not pid or pid[0] != "storage":
            tag = pid[0] if type(pid) is tuple and pid else pid
            raise CheckpointError(f"unsupported persistent id {describe(tag)} (only "
                                  "'storage' is allowed)")
        if len(pid) != (6 if self.legacy else 5):
            raise CheckpointError(f"malformed storage persistent id of length {len(pid)}")
        storage_type, key, location, numel = pid[1:5]
        dtype = self._storage_dtype(storage_type)
        if dtype is None:
            raise CheckpointError(f"storage type must be a torch storage class, got "
                                  f"{describe(storage_type)}")
        if type(key) is not str or type(location) is not str:
            raise CheckpointError("storage key and location must be strings")
        numel = check_int(numel, "storage size")
        declared = self.roots.setdefault(key, (dtype, numel))
        if declared != (dtype, numel):
            raise CheckpointError(f"storage {key!r:.40} is declared twice with different "
                                  "types or sizes")
        view = pid[5] if self.legacy else None
        if view is None:
            return StorageRef(key, dtype, numel, 0, numel)
        if type(view) is not tuple or len(view) != 3:
            raise CheckpointError("malformed legacy storage view metadata")
        start = check_int(view[1], "storage view offset")
        size = check_int(view[2], "storage view size")
        if start + size > numel:
            raise CheckpointError(f"storage view [{start}, {start + size}) is outside a "
                                  f"storage of {numel} elements")
        return StorageRef(key, dtype, numel, start, size)


# ---------------------------------------------------------------------------------------------
# materialization
# ---------------------------------------------------------------------------------------------
def check_bounds(t: TensorDesc) -> None:
    """Validate ``t`` against its storage view (see the module docstring for the rule).

    The fields' types and ranges were checked when the description was made (it is frozen);
    this is the bounds arithmetic, done before the byte budget is charged and again, against
    the storage's actual bytes, when the array is made.
    """
    shape, stride, offset = t.shape, t.stride, t.offset
    if len(shape) != len(stride):
        raise CheckpointError(f"tensor size {shape} and stride {stride} differ in length")
    s = t.storage
    if s.start + s.size > s.numel:
        raise CheckpointError("storage view is outside its storage")
    available = s.size * s.dtype.itemsize // t.dtype.itemsize
    if 0 in shape:
        if offset > available:
            raise CheckpointError(f"storage_offset {offset} is past the end of a storage of "
                                  f"{available} elements")
        return
    last = offset + sum((n - 1) * st for n, st in zip(shape, stride))
    if last >= available:
        raise CheckpointError(
            f"tensor (offset {offset}, size {shape}, stride {stride}) reads element {last} "
            f"of a storage of {available} elements (out of bounds)")


def materialize(t: TensorDesc, root: bytes | bytearray | memoryview,
                byteorder: str) -> np.ndarray:
    """Validate ``t`` against ``root`` (its storage's bytes) and copy it into a fresh array."""
    s = t.storage
    if len(root) != s.nbytes:
        raise CheckpointError(f"storage {s.key!r:.40} holds {len(root)} bytes, expected "
                              f"{s.nbytes}")
    check_bounds(t)
    raw = np.dtype(t.dtype.raw).newbyteorder(">" if byteorder == "big" else "<")
    begin = s.start * s.dtype.itemsize
    window = memoryview(root)[begin:begin + s.size * s.dtype.itemsize]
    if 0 in t.shape:
        out = np.zeros(t.shape, dtype=raw)
    else:
        base = np.frombuffer(window, dtype=raw, count=len(window) // raw.itemsize)
        # Size-1 dimensions never move the pointer; zero their (arbitrary) strides.
        strides = tuple(0 if n == 1 else st * raw.itemsize for n, st in zip(t.shape, t.stride))
        view = np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.shape,
                                               strides=strides, writeable=False)
        out = np.array(view, order="C")
    out = decode(out, t.dtype)
    if t.neg:
        out = np.negative(out)
    if t.conj:
        out = np.conj(out)
    return out if out.flags.c_contiguous and out.flags.writeable else np.array(out, order="C")


# ---------------------------------------------------------------------------------------------
# which dict is the state dict
# ---------------------------------------------------------------------------------------------
def select_state_dict(obj) -> Mapping:
    if type(obj) is not dict:
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict "
                              "(a state dict or a wrapper around one)")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if type(inner) is dict:
            return inner
    return obj


def strip_prefix(items) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in items:
        if type(key) is not str:
            raise CheckpointError(f"state dict keys must be strings, got "
                                  f"{type(key).__name__}")
        name = key[len(STRIP_PREFIX):] if key.startswith(STRIP_PREFIX) else key
        if name in out:
            raise CheckpointError(f"keys collide after stripping {STRIP_PREFIX!r}: "
                                  f"{name!r:.60}")
        out[name] = value
    return out


def state_dict_arrays(obj, fetch: Callable[[StorageRef], bytes | bytearray | memoryview],
                      byteorder: str, budget: ByteBudget) -> dict[str, np.ndarray]:
    """Select the state dict of ``obj`` and materialize its tensors.

    ``fetch(ref)`` returns the bytes of ``ref``'s whole root storage (charging the budget
    itself if it must copy or decompress them); it is called once per root, after the budget
    was charged for every returned array.
    """
    state = select_state_dict(obj)
    tensors = {k: v for k, v in strip_prefix(state.items()).items() if type(v) is TensorDesc}
    if not tensors:
        keys = ", ".join(repr(k)[:40] for k in list(state)[:8])
        raise CheckpointError(f"no tensors found in the checkpoint (keys: {keys})")
    roots: dict[str, StorageRef] = {}
    for t in tensors.values():
        check_bounds(t)  # against the declared storage size, before anything is allocated
        roots.setdefault(t.storage.key, t.storage)
    budget.take(sum(t.nbytes for t in tensors.values()), "the returned arrays")
    data = {key: fetch(ref) for key, ref in roots.items()}
    return {k: materialize(t, data[t.storage.key], byteorder)
            for k, t in tensors.items()}
