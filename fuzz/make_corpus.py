"""Write the seed corpus fuzz/corpus/ from genuine files (needs torch and safetensors).

Seeds, each prefixed by its mode byte (see fuzz/targets.py): a ``torch.save`` zip and legacy
file of ``targets.genuine_state()``, its ``data.pkl`` alone (mode 1), an ``.npz`` written by
NumPy, one of its ``.npy`` members (mode 2), and a safetensors file written by the
``safetensors`` package. Run from the repository root: ``python fuzz/make_corpus.py``.
"""
from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import safetensors.numpy  # noqa: E402
import torch  # noqa: E402

import targets  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    state = targets.genuine_state()
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    seeds: dict[str, bytes] = {}
    for legacy in (False, True):
        buf = io.BytesIO()
        torch.save(tensors, buf, _use_new_zipfile_serialization=not legacy)
        seeds["torch_legacy" if legacy else "torch_zip"] = b"\x00" + buf.getvalue()
        if not legacy:
            with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
                pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                seeds["data_pkl"] = b"\x01" + zf.read(pkl)
    buf = io.BytesIO()
    np.savez(buf, **state)
    seeds["npz"] = b"\x00" + buf.getvalue()
    npy = io.BytesIO()
    np.save(npy, state["fc.weight"])
    seeds["npy_member"] = b"\x02" + npy.getvalue()
    seeds["safetensors"] = b"\x00" + safetensors.numpy.save(state)
    for name, data in seeds.items():
        assert targets.parse(targets.wrap(data), targets.LIMITS)  # every seed loads
        (CORPUS / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
