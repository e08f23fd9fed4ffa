"""PyTorch legacy checkpoints (``torch.save(..., _use_new_zipfile_serialization=False)``).

One stream of five pickles followed by raw data: the magic number ``0x1950a86a20f9469cfc6c``,
the protocol version ``1001``, a ``sys_info`` dict, the object (persistent ids
``('storage', storage_type, key, location, numel, view_metadata)``), the list of storage
keys; then, per key in that order, an 8-byte little-endian element count followed by
``count * itemsize`` bytes of little-endian data. The storages are windows of the file's
bytes (nothing is copied until the arrays are made).
"""
from __future__ import annotations

import numpy as np

from .errors import CheckpointError
from .limits import ByteBudget, Limits
from .pickle_vm import OpCounter, storage_dtype, unpickle
from .tensors import StorageRef, StorageTable, describe, state_dict_arrays

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def load(data: bytes, limits: Limits, budget: ByteBudget) -> dict[str, np.ndarray]:
    counter = OpCounter(limits)
    magic, pos = unpickle(data, 0, limits, counter, budget)
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    version, pos = unpickle(data, pos, limits, counter, budget)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy protocol version {describe(version)}")
    _sys_info, pos = unpickle(data, pos, limits, counter, budget)
    storages = StorageTable(legacy=True, storage_dtype=storage_dtype)
    obj, pos = unpickle(data, pos, limits, counter, budget, storages)
    keys, pos = unpickle(data, pos, limits, counter, budget)
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise CheckpointError("legacy storage key list is malformed")
    view = memoryview(data)
    found: dict[str, memoryview] = {}
    for key in keys:
        declared = storages.roots.get(key)
        if declared is None:
            raise CheckpointError(f"storage key {key!r:.40} is not referenced by the "
                                  "checkpoint")
        if key in found:
            raise CheckpointError(f"storage {key!r:.40} is stored twice")
        dtype, numel = declared
        if pos + 8 > len(data):
            raise CheckpointError("legacy checkpoint is truncated (storage header)")
        count = int.from_bytes(data[pos:pos + 8], "little")
        if count != numel:
            raise CheckpointError(f"storage {key!r:.40} holds {count} elements, its tensor "
                                  f"header says {numel}")
        pos += 8
        nbytes = numel * dtype.itemsize
        if pos + nbytes > len(data):
            raise CheckpointError(f"legacy checkpoint is truncated (storage {key!r:.40})")
        found[key] = view[pos:pos + nbytes]
        pos += nbytes

    def fetch(ref: StorageRef) -> memoryview:
        try:
            return found[ref.key]
        except KeyError:
            raise CheckpointError(f"storage {ref.key!r:.40} has no data in the file") \
                from None

    return state_dict_arrays(obj, fetch, "little", budget)
