"""Time (and peak memory of) the worst files of at most 10 MB we know, per attack class.

The target of issue 11: any file of at most 10 MB is loaded or refused within 2 s on a 2-core
machine. Each file below is built to maximise the loader's work for its class (opcode mixes
at the opcode limit, hash floods, nesting, decompression up to the default ``max_bytes``,
zip/npz/safetensors archives with the most members that fit in 10 MB, a legitimate pickle
with as many tensors as ``max_ops`` admits). Every file is loaded ``--repeat`` times in this
process, one after the other; the table gives min / median / max seconds, the outcome, and
the growth of the peak RSS (``ru_maxrss``) over the whole benchmark so far.

    python fuzz/bench_hostile.py [--repeat 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from adabin_np.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from test_checkpoint import make_legacy, make_zip, push, tensor_ops  # noqa: E402
from test_checkpoint_attacks import (  # noqa: E402
    equal_hash_complex_keys,
    glob,
    npz_bomb,
    pid_ops,
    torch_bomb,
)

MB = 2**20


def pickle_zip(body: bytes, storages=None) -> bytes:
    return make_zip(b"\x80\x02" + body + b".", storages or {})


def many_tensors(n: int) -> bytes:
    """A genuine-looking state dict of ``n`` one-element tensors, one storage each."""
    body = b"}(" + b"".join(push(f"layer{i}.weight") + tensor_ops(str(i), 1, 0, (1,), (1,))
                            for i in range(n)) + b"u"
    return pickle_zip(body, {str(i): np.float32(i).tobytes() for i in range(n)})


def many_zip_members(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}(" + push("x") + tensor_ops(
            "0", 1, 0, (1,), (1,)) + b"u.")
        zf.writestr("archive/data/0", np.float32(1).tobytes())
        for i in range(n):
            zf.writestr(f"a/{i}", b"")
    return buf.getvalue()


def many_npz_members(n: int, canonical: bool = True) -> bytes:
    """``n`` scalar float32 members; ``canonical=False`` spells each header unlike np.save
    (double quotes), so that every one goes through the slower ``ast.literal_eval`` path."""
    buf = io.BytesIO()
    if canonical:
        np.savez(buf, **{f"a{i}": np.float32(i) for i in range(n)})
        return buf.getvalue()
    body = b'{"shape": (), "fortran_order": False, "descr": "<f4"}\n'
    npy = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"a{i}.npy", npy + np.float32(i).tobytes())
    return buf.getvalue()


def big_safetensors_header(n: int) -> bytes:
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw


def cases() -> dict[str, bytes]:
    rebuild = (glob("torch._utils", "_rebuild_tensor_v2") + b"q\x020(" + pid_ops() + push(0)
               + push((3,)) + push((1,)) + b"\x89" + glob("collections", "OrderedDict")
               + b")Rtq\x030")
    out = {
        "opcode flood (NONE/POP), zip": pickle_zip(b"}" + b"NN0" * 3_400_000),
        "opcode flood, legacy": make_legacy(b"\x80\x02}" + b"NN0" * 3_400_000 + b".", []),
        "empty lists kept on the stack": pickle_zip(b"]" * 3_000_000),
        "empty sets kept on the stack": pickle_zip(b"\x8f" * 3_000_000),
        "TUPLE2 of two NONEs": pickle_zip(b"NN\x86" * 3_000_000),
        "nested TUPLE1 (depth limit)": pickle_zip(b")" + b"\x85" * 5_000_000),
        "deep list via memo": pickle_zip(b"]q\x00" + b"]q\x01a0h\x01" * 1_400_000),
        "deep dict via memo": pickle_zip(b"}q\x00" + (push("k") + b"}q\x01s0h\x01")
                                         * 650_000),
        "REDUCE flood (_rebuild_tensor_v2)": pickle_zip(b"}" + rebuild + b"h\x02h\x03R0"
                                                        * 1_600_000, {"0": bytes(48)}),
        "set(list) amplification": pickle_zip(b"}" + push(list(range(50_000))) + b"q\x01"
                                              + (glob("builtins", "set") + b"h\x01\x85R0")
                                              * 10_000),
        "dict of 160k distinct int keys": pickle_zip(b"}(" + b"".join(
            push(i * 7919) + b"N" for i in range(160_000)) + b"u"),
        "equal-hash complex keys": pickle_zip(b"}(" + equal_hash_complex_keys(30_000) + b"u"),
        "legit: 7,000 tensors": many_tensors(7_000),
        "deflate bomb 512 MiB (over default)": torch_bomb(512 * MB),
        "npz bomb 300 MiB (over default)": npz_bomb(300 * MB),
        "deflate 60 MiB tensor (loads)": torch_bomb(60 * MB),
        "zip, 9,900 members (loads)": many_zip_members(9_900),
        "zip, 105k members (refused)": many_zip_members(105_000),
        "npz, 10,000 arrays (loads)": many_npz_members(10_000),
        "npz, 10,000 arrays, literal_eval headers": many_npz_members(10_000, canonical=False),
        "safetensors, 10,000 entries (loads)": big_safetensors_header(10_000),
        "safetensors, 10 MB header (refused)": big_safetensors_header(150_000),
        "safetensors JSON nesting": (1_000_000 + 10).to_bytes(8, "little") + b'{"x":'
        + b"[" * 1_000_000 + b"]",
    }
    for name, data in out.items():
        assert len(data) <= 10 * MB, (name, len(data))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    family = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("cpu family")), "?")
    avx512 = "avx512f" in open("/proc/cpuinfo").read()
    print(f"CPU: {cpu} (family {family}, AVX-512: {avx512}), {os.cpu_count()} logical cores; "
          f"Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in cases().items():
            path = Path(tmp) / "case.bin"
            path.write_bytes(data)
            times, outcome = [], ""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                try:
                    sd = load_checkpoint(path)
                    outcome = f"loaded {len(sd)} arrays"
                except CheckpointError as exc:
                    outcome = str(exc)[len(str(path)) + 2:][:70]
                times.append(time.perf_counter() - t0)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append({"case": name, "bytes": len(data), "min_s": min(times),
                         "median_s": statistics.median(times), "max_s": max(times),
                         "peak_rss_mib": rss, "outcome": outcome})
            print(f"{name:38s} {len(data) / MB:5.2f} MB  {min(times):6.3f} "
                  f"{statistics.median(times):6.3f} {max(times):6.3f} s  "
                  f"rss {rss:6.0f} MiB  {outcome}", flush=True)
    worst = max(r["max_s"] for r in rows)
    print(f"slowest single load: {worst:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
