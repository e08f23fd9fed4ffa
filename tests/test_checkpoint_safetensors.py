"""safetensors: our reader and writer against the ``safetensors`` package (test-only).

The package's NumPy API (``safetensors.numpy``) imports no torch; it is used here only to
write reference files and to read ours back. Header attacks are in test_checkpoint_attacks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from adabin_np.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from test_checkpoint import PUBLIC, assert_same

safetensors_numpy = pytest.importorskip("safetensors.numpy")
ROOT = Path(__file__).resolve().parents[1]


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
           "f64": rng.standard_normal((3, 5)), "f16": np.array([1, -2.5], np.float16),
           "i64": np.array([-7, 2**40], np.int64), "i32": np.arange(6, dtype=np.int32),
           "i16": np.array([-3], np.int16), "i8": np.array([-128, 127], np.int8),
           "u8": np.array([0, 255], np.uint8), "u16": np.array([65535], np.uint16),
           "u32": np.array([2**32 - 1], np.uint32), "u64": np.array([2**64 - 1], np.uint64),
           "mask": np.array([[True, False]]), "scalar": np.array(2.5),
           "empty": np.zeros((0, 3), np.float32), "c64": np.array([1 + 2j], np.complex64),
           "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
           "big_endian": np.arange(4, dtype=">f8")}
    return out


def expected(src: dict) -> dict:
    return {k: np.array(v, dtype=v.dtype.newbyteorder("="), order="C") for k, v in src.items()}


def test_no_torch_and_no_safetensors_at_run_time(tmp_path):
    """Loading and saving every format imports neither torch nor the safetensors package,
    and the package's NumPy API (used by these tests) imports no torch either."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from adabin_np.checkpoint import load_checkpoint, save_checkpoint
        for suffix in (".npz", ".safetensors"):
            path = save_checkpoint({{"a": np.ones(3)}}, {str(tmp_path)!r} + "/x" + suffix)
            assert list(load_checkpoint(path)) == ["a"]
        assert "torch" not in sys.modules and "safetensors" not in sys.modules
        import safetensors.numpy
        assert "torch" not in sys.modules
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_reads_files_the_package_writes(tmp_path):
    # the package writes a Fortran-ordered array's memory as if it were C-ordered (0.8.0):
    # hand it C-ordered arrays only
    src = {k: np.array(v, order="C") for k, v in arrays().items() if k != "big_endian"}
    safetensors_numpy.save_file(src, tmp_path / "ref.safetensors",
                                metadata={"format": "np", "note": "x"})
    got = load_checkpoint(tmp_path / "ref.safetensors")  # in the file's (the writer's) order
    assert_same(got, {k: expected(src)[k] for k in got})
    assert set(got) == set(src)


def test_package_reads_files_we_write(tmp_path):
    src = arrays()
    path = save_checkpoint(src, tmp_path / "ours.safetensors")
    assert path == tmp_path / "ours.safetensors"
    ref = safetensors_numpy.load_file(path)
    assert set(ref) == set(src)
    for key, value in expected(src).items():
        assert ref[key].dtype == value.dtype and ref[key].shape == value.shape, key
        np.testing.assert_array_equal(ref[key], value, err_msg=key)
    assert_same(load_checkpoint(path), expected(src))
    n = int.from_bytes(path.read_bytes()[:8], "little")
    assert n % 8 == 0  # header padded so the buffer is 8-byte aligned


def test_bf16_is_widened_exactly(tmp_path):
    bits = np.array([0x3FC0, 0xC040, 0x7F80, 0x0001], "<u2")  # 1.5, -3, inf, tiny subnormal
    header = json.dumps({"b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}})
    raw = header.encode()
    (tmp_path / "b.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw
                                             + bits.tobytes())
    got = load_checkpoint(tmp_path / "b.safetensors")["b"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)


def test_prefix_stripped_and_npz_round_trip(tmp_path):
    src = {"module.w": np.ones(3, np.float32)}
    save_checkpoint(src, tmp_path / "w.safetensors")
    assert list(load_checkpoint(tmp_path / "w.safetensors")) == ["w"]
    save_checkpoint(arrays(), tmp_path / "w.npz")
    assert_same(load_checkpoint(tmp_path / "w.npz"), expected(arrays()))


def test_save_checkpoint_validation(tmp_path):
    with pytest.raises(ValueError, match="suffix '.pt'"):
        save_checkpoint({"a": np.ones(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="complex128"):
        save_checkpoint({"a": np.ones(1, np.complex128)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint({"__metadata__": np.ones(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint({"a": np.array(["s"])}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="mapping"):
        save_checkpoint([np.ones(1)], tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="path"):
        save_checkpoint({"a": np.ones(1)}, 3)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_public_checkpoint_survives_safetensors(tmp_path):
    if not PUBLIC.exists():
        pytest.skip(f"{PUBLIC} not present")
    sd = load_checkpoint(PUBLIC)
    path = save_checkpoint(sd, tmp_path / "r20.safetensors")
    assert_same(load_checkpoint(path), sd)
    assert set(safetensors_numpy.load_file(path)) == set(sd)


def test_recognised_by_content_not_suffix(tmp_path):
    path = save_checkpoint({"a": np.arange(3.0)}, tmp_path / "x.safetensors")
    other = tmp_path / "weights.bin"
    other.write_bytes(path.read_bytes())
    assert_same(load_checkpoint(other), {"a": np.arange(3.0)})
    with pytest.raises(CheckpointError, match="no tensors"):
        save_checkpoint({}, tmp_path / "e.safetensors")
        load_checkpoint(tmp_path / "e.safetensors")
