"""What the fuzzer feeds the checkpoint readers (no atheris needed: also used by tests).

An input's first byte selects how the rest reaches the parsers (``parse`` recognises the
format from the content, as ``load_checkpoint`` does):

* ``0``: the bytes are a whole file -- torch zip, torch legacy, ``.npz`` or safetensors.
  Legacy and safetensors files carry no checksum, so mutations reach every parser stage.
* ``1``: the bytes are a ``data.pkl``, wrapped into a torch zip archive (CRCs computed here)
  whose storages ``"0"``, ``"1"``, ... hold the tensors of :func:`genuine_state` -- so that
  mutations reach the pickle VM instead of dying on a CRC mismatch.
* ``2``: the bytes are one ``.npy`` member, wrapped into an ``.npz`` archive.

``one_input`` raises only on a bug: any exception other than ``CheckpointError``.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np

from adabin_np.checkpoint import CheckpointError, parse
from adabin_np.checkpoint.limits import Limits

LIMITS = Limits(max_bytes=64 * 2**20)


def genuine_state() -> dict[str, np.ndarray]:
    """A small state dict with one storage per tensor, in torch.save's storage-key order."""
    return {"conv.weight": (np.arange(2 * 3 * 3 * 3, dtype=np.float32) / 7 - 3).reshape(2, 3, 3, 3),
            "bn.running_mean": np.array([0.5, -0.25], np.float32),
            "bn.num_batches_tracked": np.array(7, np.int64),
            "fc.weight": np.linspace(-1, 1, 10).reshape(5, 2),
            "mask": np.array([True, False, True])}


_STORAGES = {str(i): arr.tobytes() for i, arr in enumerate(genuine_state().values())}


def wrap(data: bytes) -> bytes:
    """Turn a fuzzer input into file bytes (see the module docstring)."""
    mode, body = (data[0] % 3, data[1:]) if data else (0, b"")
    if mode == 0:
        return body
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        if mode == 1:
            zf.writestr("archive/data.pkl", body)
            for key, raw in _STORAGES.items():
                zf.writestr(f"archive/data/{key}", raw)
            zf.writestr("archive/version", "3\n")
        else:
            zf.writestr("x.npy", body)
    return buf.getvalue()


def one_input(data: bytes) -> None:
    try:
        out = parse(wrap(data), LIMITS)
    except CheckpointError:
        return
    assert isinstance(out, dict) and all(type(k) is str for k in out)
    assert all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in out.values())
