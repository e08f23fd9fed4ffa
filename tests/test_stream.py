"""Dataset-scale analysis (adabin_np.distributions.analyze_model): the summary does not depend
on chunk size, input kind or scheduler (dask LocalCluster with 2 processes), peak memory does
not grow with the number of inputs, bad inputs are refused, and the CLI runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from adabin_np.distributions import analyze_model

from test_stream_stats import _close

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    from adabin_np.data import load_digits_split
    from adabin_np.models import load_digits_model

    split = load_digits_split()
    return load_digits_model(), split.x_test[:48], split.y_test[:48]


def _strip(summary):
    return {k: v for k, v in summary.items() if k != "run"}


def _run(model, x, **kw):
    kw.setdefault("objectives", ("kl",))
    kw.setdefault("max_samples", 2000)
    return analyze_model(model, x, progress=False, **kw)


def test_summary_independent_of_chunk_size(digits):
    model, x, y = digits
    ref = _run(model, x, labels=y, chunk_size=48)
    assert ref["run"]["n_chunks"] == 1 and ref["run"]["scheduler"] == "none"
    for chunk in (1, 19):
        got = _run(model, x, labels=y, chunk_size=chunk)
        assert got["run"]["n_chunks"] == -(-48 // chunk)
        _close(_strip(got), _strip(ref))
    # the analysis is not trivially constant: other inputs give other numbers
    other = _run(model, x[::-1].copy() * 0.5, labels=y, chunk_size=48)
    assert other["layers"][0]["activation"]["gaussian"] != ref["layers"][0]["activation"][
        "gaussian"]
    acc = ref["accuracy"]
    pf = model(x).argmax(axis=1)
    assert acc["correct_float"] == int(np.sum(pf == y)) and acc["n"] == 48
    assert acc["correct_packed"] == int(np.sum(model(x, packed=True).argmax(axis=1) == y))
    assert ref["packed"]["agree"] == int(np.sum(pf == model(x, packed=True).argmax(axis=1)))


def test_matches_in_memory_records(digits):
    """The streamed counts equal those of the recorded whole activations."""
    from adabin_np import testing as abt
    from adabin_np.distributions import records_from_model

    model, x, _ = digits
    s = _run(model, x, chunk_size=10, packed=False)
    recs = records_from_model(model, x)
    for la, rec in zip(s["layers"], recs):
        a = la["activation"]
        assert a["shape"] == list(rec.activations.shape)
        mask = abt.flip_risk(rec.activations, rec.act_alpha, rec.act_beta, tol=s["flip_tol"])
        assert a["flip_risk"]["count"] == int(mask.sum())
        assert a["levels"]["b2"] == int(np.sum((rec.activations - rec.act_beta) / rec.act_alpha
                                               >= 0))
        np.testing.assert_allclose(a["gaussian"]["mean"], rec.activations.mean(), rtol=1e-10)
        np.testing.assert_allclose(la["per_channel"]["act_std"],
                                   rec.activations.std(axis=(0, 2, 3)), rtol=1e-9)
        per = la["per_channel"]
        assert len(per["alpha_w"]) == len(per["beta_w"]) == rec.weight.shape[0]
        assert len(per["act_mean"]) == len(per["act_flip_risk"]) == rec.activations.shape[1]
        assert "packed" not in a


def test_input_kinds_give_the_same_summary(digits, tmp_path):
    da = pytest.importorskip("dask.array")
    model, x, y = digits
    x32 = x.astype(np.float32)
    ref = _run(model, x32, labels=y, chunk_size=16)
    np.save(tmp_path / "x.npy", x32)
    np.save(tmp_path / "y.npy", y)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for inputs, labels in ((tmp_path / "x.npy", tmp_path / "y.npy"), (str(tmp_path / "x.npy"), y),
                           (mm, y), (da.from_array(x32, chunks=(5, 1, 8, 8)), y)):
        got = _run(model, inputs, labels=labels, chunk_size=16)
        _close(_strip(got), _strip(ref))
    # uint8 images: /255 then (x - mean)/std, the same as normalising by hand
    img = np.random.default_rng(0).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", img)
    by_hand = _run(model, (img / 255.0 - 0.5) / 0.25, chunk_size=4)
    got = _run(model, tmp_path / "u8.npy", mean=0.5, std=0.25, chunk_size=3)
    _close(_strip(got), _strip(by_hand))


def test_bad_inputs_are_refused(digits, tmp_path):
    model, x, y = digits
    bad = x.copy()
    bad[30, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="rows 28..41.*NaN|NaN.*rows 28..41"):
        _run(model, bad, chunk_size=14)
    np.save(tmp_path / "x.npy", x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="truncated"):
        _run(model, tmp_path / "trunc.npy")
    # a header promising an absurd shape (row size overflows int64) over a tiny file
    hdr = np.lib.format.header_data_from_array_1_0(x)
    hdr["shape"] = (2, 1, 2**40, 2**40)
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, hdr)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match="truncated"):
        _run(model, tmp_path / "huge.npy")
    (tmp_path / "garbage.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="not a valid .npy"):
        _run(model, tmp_path / "garbage.npy")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match="objects"):
        _run(model, tmp_path / "obj.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran"):
        _run(model, tmp_path / "f.npy")
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1)[..., :1].repeat(3, axis=3))
    with pytest.raises(ValueError, match="channels"):
        _run(model, tmp_path / "nhwc.npy")
    np.save(tmp_path / "c.npy", x.astype(np.complex128))
    with pytest.raises(TypeError, match="dtype"):
        _run(model, tmp_path / "c.npy")
    with pytest.raises(ValueError, match=r"shape \(48,\)"):
        _run(model, x, labels=y[:10])
    with pytest.raises(TypeError, match="integers"):
        _run(model, x, labels=y.astype(np.float64))
    with pytest.raises(ValueError, match="label 10 .*outside"):
        _run(model, x, labels=np.where(np.arange(48) == 40, 10, y))
    with pytest.raises(ValueError, match="chunk_size"):
        _run(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="scheduler"):
        _run(model, x, scheduler="udp://nowhere")
    with pytest.raises(ValueError, match="not both"):
        _run(model, x, scheduler="local", client=object())
    with pytest.raises(FileNotFoundError):
        _run(model, tmp_path / "missing.npy")
    with pytest.raises(TypeError, match="inputs"):
        _run(model, {"a": 1})
    assert model.training is False  # the fixture's eval mode is restored after each error


def test_local_cluster_equals_one_process(digits, tmp_path):
    """LocalCluster(processes=True, n_workers=2): the same summary as one process."""
    distributed = pytest.importorskip("dask.distributed")
    model, x, y = digits
    x, y = x[:24], y[:24]
    np.save(tmp_path / "x.npy", x)
    ref = _run(model, x, labels=y, chunk_size=24)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        from adabin_np.distributions.stream import numba_threads_per_task

        # two workers on this host share its CPUs (no Numba oversubscription)
        share = max(1, (os.cpu_count() or 1) // 2)
        assert numba_threads_per_task(client) == {a: share for a in client.nthreads()}
        got = _run(model, x, labels=y, chunk_size=5, client=client)  # arrays: sent per chunk
        assert got["run"]["workers"] == 2
        _close(_strip(got), _strip(ref))
        got = _run(model, tmp_path / "x.npy", labels=y, chunk_size=7,
                   scheduler=cluster.scheduler_address)  # files: read by the workers
        assert got["run"]["scheduler"].startswith("tcp://")
        _close(_strip(got), _strip(ref))
        da = pytest.importorskip("dask.array")
        got = _run(model, da.from_array(x, chunks=(10, 1, 8, 8)), labels=y, chunk_size=9,
                   client=client)  # dask array: chunks computed on the cluster
        _close(_strip(got), _strip(ref))


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from adabin_np.models import CifarResNet
    from adabin_np.distributions import analyze_model

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    path, chunk = sys.argv[1], int(sys.argv[2])
    model = CifarResNet((1,), (16,), in_channels=1, seed=0)  # two binary 16-channel 8x8 convs
    warm = np.load(path, mmap_mode="r")[:2 * chunk]
    analyze_model(model, np.array(warm), chunk_size=chunk, progress=False, objectives=())
    before = hwm()
    s = analyze_model(model, path, chunk_size=chunk, progress=False, objectives=())
    print(json.dumps({"before": before, "after": hwm(), "n": s["n_inputs"]}))
""")


def test_peak_memory_independent_of_n(tmp_path):
    """Peak RSS at 4000 images exceeds that at 500 by less than one chunk's working set."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    from adabin_np.models import CifarResNet

    chunk = 50
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(4000, 1, 8, 8), dtype=np.uint8)
    peaks = {}
    for n in (500, 4000):
        np.save(tmp_path / f"x{n}.npy", img[:n])
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / f"x{n}.npy"),
                              str(chunk)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                             env={**os.environ, "NUMBA_NUM_THREADS": "1"})  # fast when busy
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
        assert peaks[n]["n"] == n
    # one chunk's working set: every binary layer's recorded input (float and packed path) and
    # the per-element temporaries of the statistics (v, masks, r, keys: ~8 arrays of it)
    model = CifarResNet((1,), (16,), in_channels=1, seed=0)
    model.eval()
    model(np.zeros((1, 1, 8, 8)), record=True)
    per_image = sum(rec.nbytes for rec in model.recorded_inputs().values())
    working_set = chunk * per_image * 10
    growth = peaks[4000]["after"] - peaks[500]["after"]
    print(f"peak RSS growth 500 -> 4000 images: {growth / 2**20:.2f} MiB; one chunk's working "
          f"set {working_set / 2**20:.2f} MiB")
    assert growth <= working_set, (peaks, working_set)
    # the test can fail: holding the activations of every image would exceed it many times
    assert (4000 - 500) * per_image > 5 * working_set


def test_cli_streamed_analyze(tmp_path, capsys):
    from adabin_np.cli import main
    from adabin_np.data import load_digits_split

    split = load_digits_split()
    np.save(tmp_path / "x.npy", split.x_test[:40].astype(np.float32))
    np.save(tmp_path / "y.npy", split.y_test[:40])
    out = tmp_path / "out"
    rc = main(["analyze", "--inputs", str(tmp_path / "x.npy"), "--labels",
               str(tmp_path / "y.npy"), "--chunk-size", "15", "--no-progress", "--out",
               str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "accuracy (float path)" in text and "chunks of 15" in text
    data = json.loads((out / "summary.json").read_text())
    assert data["n_inputs"] == 40 and data["accuracy"]["n"] == 40
    assert data["run"]["n_chunks"] == 3 and data["run"]["scheduler"] == "none"
    assert [la["name"] for la in data["layers"]][0] == "layer1.0.conv1"
    with pytest.raises(SystemExit):
        main(["analyze", "--chunk-size", "0"])
    with pytest.raises(SystemExit):
        main(["analyze", "--scheduler", "somewhere"])


def _compile_fresh_kernel():
    import numba

    return numba.njit(lambda a: a + 1)(41)  # a kernel that no cache holds: Numba compiles


def test_scheduler_local_workers_can_compile(digits):
    """scheduler="local": same summary; its workers may compile kernels after their Numba
    threads started (a changed NUMBA_NUM_THREADS in the worker environment made that raise)."""
    pytest.importorskip("dask.distributed")
    from adabin_np.distributions.stream import make_client

    model, x, y = digits
    x, y = x[:12], y[:12]
    ref = _run(model, x, labels=y, chunk_size=12)
    got = _run(model, x, labels=y, chunk_size=4, scheduler="local", n_workers=2)
    assert got["run"]["scheduler"] == "local" and got["run"]["workers"] == 2
    _close(_strip(got), _strip(ref))
    client, cluster = make_client("local", 2)
    try:
        import numba

        client.run(numba.set_num_threads, 1)  # threads launched, as after a first task
        assert client.submit(_compile_fresh_kernel, pure=False).result() == 42
    finally:
        client.close()
        cluster.close()
