"""The benchmark's timing protocol (``adabin_np.bench.timing.interleaved``) and a smoke run of
``adabin-np bench`` on its smallest layer (numbers are not checked: performance targets live in
the benchmark, never in timed tests)."""

import numpy as np

from adabin_np.bench import run
from adabin_np.bench.timing import interleaved


def _recorder(log, name):
    def fn():
        log.append(name)
    return fn


def test_interleaved_round_robin_order_and_sparse():
    log = []
    fns = {k: _recorder(log, k) for k in ("a", "b", "c")}
    t = interleaved(fns, 1, 3, sparse={"c": 1})
    # warm-up round, then 3 timed rounds; "c" only in the first timed round (and warm-up)
    assert log == ["a", "b", "c", "a", "b", "c", "a", "b", "a", "b"]
    assert set(t) == {"a", "b", "c"}
    for st in t.values():
        assert st["min_s"] <= st["median_s"] <= st["max_s"]


def test_interleaved_prime_repeats_each_call_untimed_first():
    log = []
    ticks = iter(range(1000))
    fns = {k: _recorder(log, k) for k in ("a", "b")}
    t = interleaved(fns, 0, 2, prime=True, clock=lambda: next(ticks))
    assert log == ["a", "a", "b", "b", "a", "a", "b", "b"]
    # one clock reading before and one after each timed call only: the priming call is untimed
    assert t["a"]["median_s"] == 1 and t["b"]["max_s"] == 1


def test_bench_smoke_runs_and_reports_its_machine():
    res = run(["--layers", "512", "--batch", "1", "--repeats", "2", "--warmup", "0",
               "--float-repeats", "0", "--model-batch", "0", "--no-torch", "--quiet",
               "--omp-spin", "default"])
    (row,) = res["rows"]
    assert row["layer"] == "512ch 7x7" and row["output_dtype"] == "float32"
    assert 0 < row["popcount_fraction_of_roofline"] and 0 < row["fraction_of_bound"]
    assert np.isfinite(row["bound_s"]) and row["bound_s"] > 0
    assert res["machine"]["cpu"] and res["machine"]["numba_target"]
    assert "packed" in row["times"] and "packed_again" in row["times"]
