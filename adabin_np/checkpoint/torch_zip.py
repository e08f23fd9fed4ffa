"""PyTorch zip checkpoints (``torch.save`` default since torch 1.6).

A zip archive of ``<prefix>/data.pkl`` (the pickled object; tensors refer to storages through
persistent ids ``('storage', storage_type, key, location, numel)``), ``<prefix>/data/<key>``
(the raw bytes of each storage), optionally ``<prefix>/byteorder`` (``little`` or ``big``;
absent means little) and ``<prefix>/version``. Only the storages of the returned tensors are
read, each after the byte budget was charged for it.
"""
from __future__ import annotations

import zipfile

import numpy as np

from .errors import CheckpointError
from .limits import ByteBudget, Limits
from .pickle_vm import OpCounter, storage_dtype, unpickle
from .tensors import StorageRef, StorageTable, state_dict_arrays
from .zip_members import read_member

_MAX_SMALL_RECORD = 64  # bytes of the 'byteorder' record


def find_pickle(zf: zipfile.ZipFile) -> str | None:
    """The ``<prefix>/data.pkl`` member, or None; several are an error."""
    pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) > 1:
        raise CheckpointError("zip archive holds several data.pkl records")
    return pickles[0] if pickles else None


def load(zf: zipfile.ZipFile, pkl_name: str, limits: Limits,
         budget: ByteBudget) -> dict[str, np.ndarray]:
    prefix = pkl_name[: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in zf.NameToInfo:
        raw = read_member(zf, prefix + "byteorder", limit=_MAX_SMALL_RECORD)
        byteorder = raw.decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"unknown byteorder record {byteorder!r:.40}")
    storages = StorageTable(legacy=False, storage_dtype=storage_dtype)
    # The pickle (read, then copied to bytes once) is charged to max_bytes twice.
    data = read_member(zf, pkl_name, budget=budget)
    budget.take(len(data), f"a copy of {pkl_name!r:.80}")
    data = bytes(data)
    obj, _ = unpickle(data, 0, limits, OpCounter(limits), budget, storages)
    del data

    def fetch(ref: StorageRef) -> bytearray:
        return read_member(zf, f"{prefix}data/{ref.key}", size=ref.nbytes, budget=budget)

    return state_dict_arrays(obj, fetch, byteorder, budget)
