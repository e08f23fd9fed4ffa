"""Hostile checkpoints: one test per attack class, each run in a subprocess.

Every attack file is built here (pure Python, no torch) and loaded by a fresh interpreter that
runs under ``RLIMIT_AS`` (its address space after imports plus a small allowance) and a
wall-clock timeout, so a crash, hang or unbounded allocation fails the test instead of the
test run. Each case must be refused with a ``CheckpointError`` naming the path and matching
the expected reason, or load to exactly the expected arrays, each within a 10 s hang guard
(the 2 s target for files up to 10 MB is measured by ``fuzz/bench_hostile.py``, not by a
timed test). After the attacks,
the *same* process loads genuine ``torch.save`` files (zip and legacy) and compares them bit
for bit with ``torch.load(weights_only=True)`` -- proof that no hostile file changed
process-wide state (the old loader, after a refused BUILD on an allow-listed global, loaded
genuine checkpoints with negated values). Without torch that part is skipped.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_checkpoint import (
    STORAGE0,
    dict_pickle,
    glob,
    make_legacy,
    make_zip,
    push,
    tensor_ops,
)

from adabin_np.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 10.0  # per case; the 2 s target is a benchmark (fuzz/bench_hostile.py)
S0 = STORAGE0.tobytes()

RUNNER = textwrap.dedent(r'''
    import hashlib, json, resource, sys, time
    import numpy as np
    from adabin_np.checkpoint import CheckpointError, load_checkpoint
    try:
        import torch
    except ImportError:
        torch = None

    def digest(sd):
        return {k: [list(v.shape), v.dtype.str, hashlib.sha256(v.tobytes()).hexdigest()]
                for k, v in sd.items()}

    spec = json.loads(sys.argv[1])
    vmsize = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vmsize + spec["mem_mib"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = {}
    for case in spec["cases"]:
        t0 = time.perf_counter()
        try:
            out = {"loaded": digest(load_checkpoint(case["path"],
                                                    max_bytes=case["max_bytes"]))}
        except CheckpointError as exc:
            out = {"error": str(exc)}
        out["seconds"] = time.perf_counter() - t0
        results[case["name"]] = out
    genuine = None
    if torch is not None:
        genuine = {}
        for path in spec["genuine"]:
            ref = torch.load(path, weights_only=True)
            ref = {k: v.detach().resolve_neg().resolve_conj().contiguous()
                   for k, v in ref.items()}
            ref = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
                   for k, v in ref.items()}
            genuine[path] = digest(load_checkpoint(path)) == digest(ref)
    print(json.dumps({"results": results, "genuine": genuine}))
''')


def digest(sd: dict) -> dict:
    return {k: [list(v.shape), v.dtype.str, hashlib.sha256(v.tobytes()).hexdigest()]
            for k, v in sd.items()}


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> list[str]:
    """torch.save files (zip and legacy) of a small state dict with several dtypes and views."""
    try:
        import torch
    except ImportError:
        return []
    folder = tmp_path_factory.mktemp("genuine")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    sd = {"f32": base, "f64": base.double() * 3, "f16": base.half(), "bf16": base.bfloat16(),
          "i64": (base * 100).long(), "u8": (base.abs() * 50).to(torch.uint8),
          "mask": base > 0, "t": base.t(), "row": base[2], "neg": torch._neg_view(base[:2]),
          "param": torch.nn.Parameter(base[3:5])}
    paths = []
    for legacy in (False, True):
        path = folder / f"genuine_{'legacy' if legacy else 'zip'}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        paths.append(str(path))
    return paths


def run_cases(tmp_path: Path, cases: dict, genuine: list[str], *, mem_mib: int = 384,
              timeout: float = 90) -> dict:
    """Load each ``{name: bytes or (bytes, max_bytes)}`` in one limited subprocess."""
    spec = {"cases": [], "genuine": genuine, "mem_mib": mem_mib}
    for name, data in cases.items():
        data, max_bytes = data if isinstance(data, tuple) else (data, None)
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        spec["cases"].append({"name": name, "path": str(path), "max_bytes": max_bytes})
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"runner died with {proc.returncode}:\n"
                                  f"{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["genuine"] is not None:
        assert out["genuine"] and all(out["genuine"].values()), out["genuine"]
    for name, result in out["results"].items():
        assert result["seconds"] < HANG_GUARD_S, (name, result)
        if "error" in result:
            assert result["error"].startswith(str(tmp_path / f"{name}.bin") + ": "), result
    return out["results"]


def assert_refused(results: dict, expected: dict[str, str]) -> None:
    for name, pattern in expected.items():
        assert "error" in results[name], f"{name} was not refused: {results[name]}"
        assert re.search(pattern, results[name]["error"]), (name, results[name]["error"])


def pid_ops(key="0", numel=12, storage="FloatStorage") -> bytes:
    """``BINPERSID`` of ``('storage', torch.<storage>, key, 'cpu', numel)``."""
    return (b"(" + push("storage") + glob("torch", storage) + push(key) + push("cpu")
            + push(numel) + b"tQ")


def tensor(key="0", numel=12, offset=0, size=(3,), stride=(1,), **kw) -> bytes:
    return tensor_ops(key, numel, offset, size, stride, **kw)


def one_tensor_zip(ops: bytes, key: str = "x") -> bytes:
    return make_zip(b"\x80\x02}(" + push(key) + ops + b"u.", {"0": S0})


def one_tensor_legacy(ops: bytes, key: str = "x") -> bytes:
    return make_legacy(b"\x80\x02}(" + push(key) + ops + b"u.", [("0", 12, S0)])


EXPECTED_X3 = {"x": STORAGE0[:3]}


# ---------------------------------------------------------------------------------------------
# 1. BUILD (and other mutating opcodes) after validation
# ---------------------------------------------------------------------------------------------
def test_nothing_mutates_a_tensor_after_its_rebuild(tmp_path, genuine):
    huge_state = b"}(" + push("_size") + push((4096,)) + push("_stride") + push((2**40,)) \
        + b"u"
    legacy_kw = {"legacy": True, "view": None}
    # size passed as a memoized list that the pickle appends to after the rebuild call
    late_list = (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid_ops() + push(0)
                 + b"]q\x07" + push(3) + b"a" + push((1,)) + b"\x89"
                 + glob("collections", "OrderedDict") + b")RtR")
    cases = {
        "build_on_tensor_zip": one_tensor_zip(tensor() + huge_state + b"b"),
        "build_on_tensor_legacy": one_tensor_legacy(tensor(**legacy_kw) + huge_state + b"b"),
        "setitem_on_tensor": one_tensor_zip(tensor() + push("_size") + push(4096) + b"s"),
        "append_on_tensor": one_tensor_zip(tensor() + push(4096) + b"a"),
        "build_on_storage": one_tensor_zip(
            glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid_ops()
            + b"}" + push("size") + push(2**40) + b"sb" + push(0) + push((3,)) + push((1,))
            + b"\x89" + glob("collections", "OrderedDict") + b")RtR"),
        "build_on_metadata_dict_later": make_zip(
            b"\x80\x02}(" + push("x") + tensor(extra=b"}q\x05") + b"u" + b"h\x05"
            + push("neg") + b"\x88s0.", {"0": S0}),
        "late_list_append": make_zip(b"\x80\x02}(" + push("x") + late_list + b"u"
                                     + b"h\x07" + push(16) + b"a0.", {"0": S0}),
    }
    results = run_cases(tmp_path, cases, genuine)
    assert_refused(results, {
        "build_on_tensor_zip": "BUILD on a TensorDesc",
        "build_on_tensor_legacy": "BUILD on a TensorDesc",
        "setitem_on_tensor": "SETITEM on a TensorDesc",
        "append_on_tensor": "APPEND on a TensorDesc",
        "build_on_storage": "BUILD on a StorageRef",
    })
    # mutating the containers a rebuild read from changes nothing already described
    assert results["build_on_metadata_dict_later"]["loaded"] == digest(EXPECTED_X3)
    assert results["late_list_append"]["loaded"] == digest(EXPECTED_X3)


# ---------------------------------------------------------------------------------------------
# 2. BUILD on process-wide (allow-listed) objects
# ---------------------------------------------------------------------------------------------
def test_nothing_mutates_allowlisted_globals(tmp_path, genuine):
    def then_tensor(prefix: bytes) -> bytes:
        return b"\x80\x02}(" + prefix + b"0" + push("x") + tensor() + b"u."

    neg = b"}" + push("neg") + b"\x88s"
    cases = {
        "build_on_rebuild_v2": then_tensor(glob("torch._utils", "_rebuild_tensor_v2") + neg
                                           + b"b"),
        "build_on_float_storage": then_tensor(glob("torch", "FloatStorage") + b"}"
                                              + push("dtype") + push("float64") + b"sb"),
        "build_on_dtype": then_tensor(glob("torch", "float32") + b"}" + push("itemsize")
                                      + push(8) + b"sb"),
        "setitem_on_global": then_tensor(glob("collections", "OrderedDict") + push("a")
                                         + push(1) + b"s"),
        "build_on_plain_dict": then_tensor(b"}" + push("a") + b"b"),
        "stack_global_build": then_tensor(push("torch._utils") + push("_rebuild_tensor")
                                          + b"\x93" + neg + b"b"),
    }
    zips = {f"{k}_zip": make_zip(v, {"0": S0}) for k, v in cases.items()}
    legacy = {f"{k}_legacy": make_legacy(v.replace(tensor(), tensor(legacy=True, view=None)),
                                         [("0", 12, S0)]) for k, v in cases.items()}
    # after every refusal, plain float32 files (the old bug stopped them loading) still load
    after = {"plain_float32_after": make_zip(dict_pickle({"x": tensor()}), {"0": S0})}
    results = run_cases(tmp_path, zips | legacy | after, genuine)
    for fmt in ("zip", "legacy"):
        assert_refused(results, {
            f"build_on_rebuild_v2_{fmt}": "BUILD on a Global",
            f"build_on_float_storage_{fmt}": "BUILD on a Global",
            f"build_on_dtype_{fmt}": "BUILD on a Global",
            f"setitem_on_global_{fmt}": "SETITEM on a Global",
            f"build_on_plain_dict_{fmt}": "BUILD on a dict",
            f"stack_global_build_{fmt}": "BUILD on a Global",
        })
    assert results["plain_float32_after"]["loaded"] == digest(EXPECTED_X3)


# ---------------------------------------------------------------------------------------------
# 3. recursion: deep nesting (hashing nested tuples/frozensets recursed in C and segfaulted)
# ---------------------------------------------------------------------------------------------
def test_deep_nesting(tmp_path, genuine):
    n = 150_000
    tuple_key = b")" + b"\x85" * n  # ((((),),),)... as a dict key
    frozen = b"(\x91"
    for _ in range(n // 2):
        frozen = b"(" + frozen + b"\x91"
    # list in list (dict in dict) via the memo with a constant stack; memo 0 keeps the root
    deep_list = b"]q\x00" + b"]q\x01a0h\x01" * 80_000 + b"0h\x00"
    deep_dict = b"}q\x00" + (push("k") + b"}q\x01s0h\x01") * 60_000 + b"0h\x00"
    ok_tail = push("x") + tensor()

    def zip_and_legacy(name, body):
        pkl = b"\x80\x04}(" + body + b"u."
        legacy_pkl = pkl.replace(tensor(), tensor(legacy=True, view=None))
        return {f"{name}_zip": make_zip(pkl, {"0": S0}),
                f"{name}_legacy": make_legacy(legacy_pkl, [("0", 12, S0)])}

    cases = {}
    cases |= zip_and_legacy("tuple_key", tuple_key + push(1) + ok_tail)
    cases |= zip_and_legacy("frozenset_key", frozen + push(1) + ok_tail)
    cases |= zip_and_legacy("set_of_frozensets", b"\x8f(" + b"(\x91" + b"\x90" + push(1)
                            + ok_tail)
    cases |= zip_and_legacy("tuple_in_key_tuple", b")\x85\x85" + push(1) + ok_tail)
    cases |= zip_and_legacy("marks", b"(" * n + ok_tail)
    cases |= zip_and_legacy("deep_list_value", push("deep") + deep_list + ok_tail)
    cases |= zip_and_legacy("deep_dict_value", push("deep") + deep_dict + ok_tail)
    cases |= zip_and_legacy("deep_tuple_value", push("deep") + tuple_key + ok_tail)
    results = run_cases(tmp_path, cases, genuine)
    for fmt in ("zip", "legacy"):
        assert_refused(results, {
            f"tuple_key_{fmt}": "nested deeper than 1000",
            f"frozenset_key_{fmt}": "nested deeper than 1000",
            f"set_of_frozensets_{fmt}": "refused dict key or set element frozenset",
            f"tuple_in_key_tuple_{fmt}": "refused dict key or set element tuple",
            f"marks_{fmt}": "MARKs nested deeper than 1000",
            f"deep_tuple_value_{fmt}": "nested deeper than 1000",
        })
        # deep *mutable* nesting is harmless (never hashed, walked or recursed into): the
        # value is dropped and the tensor loads
        assert results[f"deep_list_value_{fmt}"]["loaded"] == digest(EXPECTED_X3)
        assert results[f"deep_dict_value_{fmt}"]["loaded"] == digest(EXPECTED_X3)


# ---------------------------------------------------------------------------------------------
# 4. algorithmic complexity: equal hashes, opcode floods, amplification
# ---------------------------------------------------------------------------------------------
def equal_hash_complex_keys(count: int) -> bytes:
    """``complex(C - 1000003 i, i)`` all hash to C (CPython's complex hash): no str needed."""
    c = 12345
    keys = [complex(c - 1000003 * i, i) for i in range(count)]
    assert len({hash(k) for k in keys}) == 1
    return b"".join(glob("builtins", "complex") + push((k.real, k.imag)) + b"RN" for k in keys)


def test_hash_flooding_and_work_bounds(tmp_path, genuine):
    p = 2**61 - 1
    big_int = 1 << 8_000_000  # 1 MB of int: its hash is not cached
    body_ops = b"NN0" * 3_400_000  # 10 MB, 10M opcodes
    strings = b"".join(push(f"k{i}") + b"N" for i in range(40))
    cases = {
        "equal_hash_complex_1MB": make_zip(b"\x80\x02}(" + equal_hash_complex_keys(20_000)
                                           + b"u.", {}),
        "32_equal_hashes_load": make_zip(
            b"\x80\x02}(" + push("meta") + b"}(" + strings + equal_hash_complex_keys(32)
            + b"u" + push("x") + tensor() + b"u.", {"0": S0}),
        "33_equal_hashes_refused": make_zip(
            b"\x80\x02}(" + push("meta") + b"}(" + strings + equal_hash_complex_keys(33)
            + b"u" + push("x") + tensor() + b"u.", {"0": S0}),
        "equal_hash_set": make_zip(b"\x80\x02}(" + push("s") + glob("builtins", "set")
                                   + push(([complex(5 - 1000003 * i, i)
                                            for i in range(200)],)) + b"Ru.", {}),
        "equal_hash_ints_below_2_63": make_zip(b"\x80\x02}(" + push("meta") + b"}(" + strings
            + b"".join(push(k) + b"N" for k in (p, 2 * p, 3 * p, 4 * p, -p, -2 * p, -3 * p,
                                                 -4 * p, -1, -2))
            + b"u" + push("x") + tensor() + b"u.", {"0": S0}),
        "huge_int_key": make_zip(b"\x80\x02}" + push(big_int) + b"Ns.", {}),
        "huge_int_in_tuple_key": make_zip(b"\x80\x02}" + push(big_int) + b"\x85Ns.", {}),
        "opcode_flood_zip": make_zip(b"\x80\x02}" + body_ops + b".", {}),
        "opcode_flood_legacy": make_legacy(b"\x80\x02}" + body_ops + b".", []),
        "set_amplification": make_zip(
            b"\x80\x02}" + push(list(range(50_000))) + b"q\x01"
            + (glob("builtins", "set") + b"h\x01\x85R0") * 10_000 + b".", {}),
        "bytes_amplification": make_zip(
            b"\x80\x02}" + push("a" * 4_000_000) + b"q\x01"
            + (glob("_codecs", "encode") + b"h\x01" + push("latin1") + b"\x86R0") * 20_000
            + b".", {}),
        "device_amplification": make_zip(
            b"\x80\x02}" + push("a" * 1_000_000) + b"q\x01"
            + (glob("torch", "device") + b"h\x01\x85R0") * 10_000 + b".", {}),
        "rebuild_flood": make_zip(
            b"\x80\x02}" + glob("torch._utils", "_rebuild_tensor_v2") + b"q\x020(" + pid_ops()
            + push(0) + push((3,)) + push((1,)) + b"\x89" + glob("collections", "OrderedDict")
            + b")Rtq\x030" + b"h\x02h\x03R0" * 250_000 + b".", {"0": S0}),
    }
    assert all(len(v) <= 10 * 2**20 for v in cases.values())
    results = run_cases(tmp_path, cases, genuine)
    assert_refused(results, {
        "equal_hash_complex_1MB": "share a hash value",
        "equal_hash_set": "share a hash value",
        "33_equal_hashes_refused": "share a hash value",
        "huge_int_key": "refused dict key",
        "huge_int_in_tuple_key": "refused dict key",
        "opcode_flood_zip": "max_ops",
        "opcode_flood_legacy": "max_ops",
        "set_amplification": "max_ops",
        "bytes_amplification": "max_bytes",
        "device_amplification": "torch.device takes a short string",
    })
    assert results["32_equal_hashes_load"]["loaded"] == digest(EXPECTED_X3)
    assert results["equal_hash_ints_below_2_63"]["loaded"] == digest(EXPECTED_X3)
    assert_refused(results, {"rebuild_flood": "max_ops"})


# ---------------------------------------------------------------------------------------------
# 5. resources: decompression bombs, max_bytes, zip structure
# ---------------------------------------------------------------------------------------------
def deflated_zip(members: dict[str, bytes | int], method=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip whose int-valued members are that many zero bytes, compressed with ``method``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compresslevel=1) as zf:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method if isinstance(content, int) else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as member:
                if isinstance(content, int):
                    chunk = bytes(2**20)
                    for _ in range(content // 2**20):
                        member.write(chunk)
                    member.write(bytes(content % 2**20))
                else:
                    member.write(content)
    return buf.getvalue()


def torch_bomb(nbytes: int, method=zipfile.ZIP_DEFLATED) -> bytes:
    n = nbytes // 4
    return deflated_zip({"archive/data.pkl": dict_pickle({"x": tensor_ops("0", n, 0, (n,),
                                                                           (1,))}),
                         "archive/data/0": nbytes}, method)


def npz_bomb(nbytes: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (nbytes // 4,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(2**20)
            for _ in range(nbytes // 2**20):
                member.write(chunk)
    return buf.getvalue()


def raw_zip(members: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """A zip written field by field: (name, method, declared size, CRC, payload) per member."""
    out, cd = b"", b""
    for name, method, size, crc, payload in members:
        raw = name.encode()
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                          len(payload), size, len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                           len(payload), size, len(raw), 0) + raw + payload
    return out + cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members),
                                  len(members), len(cd), len(out), 0)


def understated_member() -> bytes:
    """A torch zip whose storage member declares 48 bytes but its deflate stream holds 64 MiB."""
    pkl = dict_pickle({"x": tensor_ops("0", 12, 0, (12,), (1,))})
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    stream = b"".join(c.compress(bytes(2**20)) for _ in range(64)) + c.flush()
    return raw_zip([("archive/data.pkl", 0, len(pkl), zlib.crc32(pkl), pkl),
                    ("archive/data/0", 8, 48, zlib.crc32(bytes(48)), stream)])


def test_decompression_bombs_and_max_bytes(tmp_path, genuine):
    mib = 2**20
    broadcast = dict_pickle({"x": tensor_ops("0", 12, 0, (2**27,), (0,))})  # 512 MiB view
    cases = {
        "torch_bomb_512MiB": torch_bomb(512 * mib),
        "npz_bomb_300MiB": npz_bomb(300 * mib),
        "torch_bomb_over_explicit_limit": (torch_bomb(16 * mib), 16 * mib),
        "torch_bomb_within_explicit_limit": (torch_bomb(16 * mib), 40 * mib),
        "broadcast_view_512MiB": make_zip(broadcast, {"0": S0}),
        "broadcast_view_allowed": (make_zip(dict_pickle({"x": tensor_ops(
            "0", 12, 0, (4 * mib,), (0,))}), {"0": S0}), 17 * mib),
        "bzip2_member": torch_bomb(mib, zipfile.ZIP_BZIP2),
        "lzma_member": torch_bomb(mib, zipfile.ZIP_LZMA),
        "deflated_pickle_bomb": deflated_zip({"archive/data.pkl": 260 * mib}),
        "stream_longer_than_declared": understated_member(),
    }
    assert all(len(v if isinstance(v, bytes) else v[0]) <= 10 * mib for v in cases.values())
    # 384 MiB of address space on top of the imports: a 512 MiB allocation cannot happen
    results = run_cases(tmp_path, cases, genuine, mem_mib=384)
    assert_refused(results, {
        "torch_bomb_512MiB": r"over max_bytes=134217728",
        "npz_bomb_300MiB": r"over max_bytes=134217728",
        "torch_bomb_over_explicit_limit": r"over max_bytes=16777216",
        "broadcast_view_512MiB": "over max_bytes",
        "bzip2_member": "compression method 12",
        "lzma_member": "compression method 14",
        "deflated_pickle_bomb": "over max_bytes",
    })
    # decompression stops at the declared size: 48 bytes are produced, not 64 MiB
    assert results["stream_longer_than_declared"]["loaded"] == digest({"x": np.zeros(12, "f4")})
    zeros = np.zeros(4 * mib, np.float32)
    assert results["torch_bomb_within_explicit_limit"]["loaded"] == digest({"x": zeros})
    expected = {"x": np.full(4 * mib, STORAGE0[0], np.float32)}
    assert results["broadcast_view_allowed"]["loaded"] == digest(expected)


def test_max_bytes_accounting_is_exact(tmp_path):
    """safetensors storages are views of the file: decoded bytes = returned array bytes."""
    path = save_checkpoint({"a": np.arange(12, dtype=np.float32),
                            "b": np.ones((2, 3), np.float64)}, tmp_path / "x.safetensors")
    assert list(load_checkpoint(path, max_bytes=48 + 48)) == ["a", "b"]
    with pytest.raises(CheckpointError, match="over max_bytes=95"):
        load_checkpoint(path, max_bytes=95)
    with pytest.raises(TypeError, match="max_bytes"):
        load_checkpoint(path, max_bytes=1.5)
    with pytest.raises(ValueError, match="max_bytes"):
        load_checkpoint(path, max_bytes=-1)


def test_archive_structure_attacks(tmp_path, genuine):
    good = one_tensor_zip(tensor())
    pkl = b"\x80\x02}(" + push("x") + tensor() + b"u."
    dup = io.BytesIO()
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", S0)
        with pytest.warns(UserWarning, match="Duplicate"):
            zf.writestr("archive/data/0", np.zeros(12, "<f4").tobytes())
    crc = bytearray(good)
    crc[crc.index(S0) + 5] ^= 0x40  # storage bytes changed, CRC left alone
    encrypted = bytearray(good)
    encrypted[6] |= 1  # general purpose flag of the first local header
    cd = good.index(b"PK\x01\x02")
    encrypted[cd + 8] |= 1  # and of its central directory entry
    def many_members(n):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/data/0", S0)
            for i in range(n):
                zf.writestr(f"archive/x/{i}", b"")
        return buf.getvalue()

    npz_many = io.BytesIO()
    np.savez(npz_many, **{f"a{i}": np.float32(i) for i in range(10_001)})
    st_many = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
               for i in range(10_001)}
    cases = {"duplicate_member": dup.getvalue(), "crc_mismatch": bytes(crc),
             "encrypted": bytes(encrypted), "many_members": many_members(9_000),
             "too_many_members": many_members(10_000), "npz_too_many": npz_many.getvalue(),
             "safetensors_too_many": safetensors_file(st_many),
             "two_pickles": deflated_zip({"a/data.pkl": pkl, "b/data.pkl": pkl})}
    results = run_cases(tmp_path, cases, genuine)
    assert_refused(results, {"duplicate_member": "same name", "crc_mismatch": "CRC",
                             "encrypted": "encrypted", "two_pickles": "several data.pkl",
                             "too_many_members": "more than 10000 members",
                             "npz_too_many": "more than 10000 members",
                             "safetensors_too_many": "more than 10000 tensors"})
    assert results["many_members"]["loaded"] == digest(EXPECTED_X3)


# ---------------------------------------------------------------------------------------------
# 6. safetensors headers
# ---------------------------------------------------------------------------------------------
def safetensors_file(header: dict | bytes, buffer: bytes = b"", *, length=None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + buffer


def test_safetensors_header_attacks(tmp_path, genuine):
    f32 = {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    buf = STORAGE0[:3].tobytes()
    cases = {
        "length_past_eof": safetensors_file({"x": f32}, buf, length=1000),
        "length_huge": safetensors_file({"x": f32}, buf, length=2**64 - 1),
        "length_over_limit": safetensors_file({"x": f32}, buf, length=100_000_001),
        "not_json": safetensors_file(b"{not json}", buf),
        "not_utf8": safetensors_file(b'{"\xff": 1}', buf),
        "deep_json": safetensors_file(b'{"x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                                      buf),
        "duplicate_name": safetensors_file(b'{"x": ' + json.dumps(f32).encode() + b', "x": '
                                           + json.dumps(f32).encode() + b"}", buf),
        "unknown_dtype": safetensors_file({"x": f32 | {"dtype": "F8_E4M3"}}, buf),
        "negative_shape": safetensors_file({"x": f32 | {"shape": [-3]}}, buf),
        "float_shape": safetensors_file({"x": f32 | {"shape": [3.0]}}, buf),
        "huge_shape": safetensors_file({"x": f32 | {"shape": [2**40, 2**40]}}, buf),
        "size_mismatch": safetensors_file({"x": f32 | {"data_offsets": [0, 8]}}, buf),
        "past_buffer": safetensors_file({"x": f32 | {"data_offsets": [4, 16]}}, buf),
        "overlap": safetensors_file({"x": f32, "y": f32 | {"data_offsets": [8, 20]}},
                                    buf + buf),
        "gap": safetensors_file({"x": f32, "y": f32 | {"data_offsets": [16, 28]}},
                                buf + bytes(4) + buf),
        "trailing_bytes": safetensors_file({"x": f32}, buf + b"junk"),
        "extra_field": safetensors_file({"x": f32 | {"offset": 0}}, buf),
        "metadata_not_str": safetensors_file({"__metadata__": {"a": 1}, "x": f32}, buf),
        "nan_constant": safetensors_file(b'{"x": NaN}', buf),
        "entry_not_object": safetensors_file({"x": [1, 2]}, buf),
        "valid": safetensors_file({"__metadata__": {"format": "pt"}, "x": f32}, buf),
    }
    results = run_cases(tmp_path, cases, genuine)
    assert_refused(results, {
        "length_past_eof": "runs past the end of the file",
        "length_huge": "over the limit",
        "length_over_limit": "over the limit",
        "not_json": "not valid JSON", "not_utf8": "not valid JSON",
        "deep_json": "not valid JSON", "duplicate_name": "twice",
        "unknown_dtype": "unsupported dtype", "negative_shape": "shape",
        "float_shape": "shape", "huge_shape": "do not hold", "size_mismatch": "do not hold",
        "past_buffer": "begins at 4", "overlap": "overlap", "gap": "gap",
        "trailing_bytes": "cover 12 bytes of a 16-byte buffer",
        "extra_field": "exactly the fields", "metadata_not_str": "__metadata__",
        "nan_constant": "non-JSON constant", "entry_not_object": "exactly the fields",
    })
    assert results["valid"]["loaded"] == digest(EXPECTED_X3)


# ---------------------------------------------------------------------------------------------
# 7. paths: directories, special files, descriptors
# ---------------------------------------------------------------------------------------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc/self/fd")
def test_errors_name_the_path_and_leak_no_descriptor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.th").write_bytes(b"hello")
    (tmp_path / "good.th").write_bytes(one_tensor_zip(tensor()))
    os.mkfifo(tmp_path / "fifo")
    before = open_fds()
    for _ in range(20):
        with pytest.raises(CheckpointError, match=r"^\.: is a directory"):
            load_checkpoint(".")
        with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: is a directory")):
            load_checkpoint(tmp_path)
        with pytest.raises(CheckpointError, match=r"^fifo: is not a regular file"):
            load_checkpoint("fifo")
        with pytest.raises(CheckpointError, match=r"^garbage\.th: unrecognised"):
            load_checkpoint("garbage.th")
        with pytest.raises(FileNotFoundError, match="missing.th"):
            load_checkpoint("missing.th")
        assert list(load_checkpoint("good.th")) == ["x"]
    assert open_fds() == before
