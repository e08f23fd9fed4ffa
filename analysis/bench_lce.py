"""Peer comparison: Larq Compute Engine 0.16 on the ResNet-18 3x3 layers of ``adabin-np bench``.

Not part of the package or of CI: LCE needs its own virtual environment (Python 3.11)::

    python3.11 -m venv /tmp/lce-venv
    /tmp/lce-venv/bin/pip install "tensorflow-cpu==2.16.2" "tf-keras~=2.16.0" larq \\
        "larq-compute-engine==0.16.0"
    /tmp/lce-venv/bin/python analysis/bench_lce.py --threads 2

Per layer (``64ch 56x56`` .. ``512ch 7x7``, C_in = C_out, 3x3, stride 1, ``same`` padding) and
batch (1, 8): a one-layer Keras model, ``larq.layers.QuantConv2D`` with ``ste_sign`` input and
kernel quantizers (float32 NHWC in, float32 out -- LCE's ``Bconv2D`` with float output), is
converted with ``larq_compute_engine.convert_keras_model`` and run by LCE's TFLite interpreter
(``num_threads``) on the **whole batch** in one ``invoke`` (``Interpreter.predict`` would split
the batch into single samples, so the wrapped interpreter is called directly). Warm-up calls,
then min / median / max wall-clock per call. LCE's x86 bconv kernels are its portable C++
ones (its optimized kernels target ARM).

Writes ``analysis/results/bench_lce.json``; when ``analysis/results/bench_packed.json`` exists
(``python analysis/bench_packed.py``, same machine) the torch float32 and packed medians of the
matching rows are copied next to LCE's for the ratios (they come from another process and
another moment: compare on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq needs Keras 2 (tf-keras) on TF 2.16
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _model(c, hw, batch):
    import larq as lq
    import tensorflow as tf

    inp = tf.keras.Input(shape=(hw, hw, c), batch_size=batch)
    out = lq.layers.QuantConv2D(c, 3, padding="same", input_quantizer="ste_sign",
                                kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                                use_bias=False)(inp)
    return tf.keras.Model(inp, out)


def _interpreter(flatbuffer, threads):
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(flatbuffer, num_threads=threads).interpreter


def run(threads, batches, repeats, warmup, clock=time.perf_counter):
    import larq_compute_engine as lce

    rows = []
    for batch in batches:
        for c, hw in LAYERS:
            fb = lce.convert_keras_model(_model(c, hw, batch))
            wrapped = _interpreter(fb, threads)
            x = np.random.default_rng(c).standard_normal((batch, hw, hw, c)).astype(np.float32)

            def call():
                return wrapped.predict([x])[0]  # the whole batch in one invoke

            out = call()
            assert out.shape == (batch, hw, hw, c), out.shape
            for _ in range(warmup):
                call()
            ts = []
            for _ in range(repeats):
                t0 = clock()
                call()
                ts.append(clock() - t0)
            rows.append({"layer": f"{c}ch {hw}x{hw}", "channels": c, "size": hw, "batch": batch,
                         "lce": {"min_s": min(ts), "median_s": statistics.median(ts),
                                 "max_s": max(ts)}})
            print(f"{c}ch {hw}x{hw} batch {batch}: LCE {1e3 * statistics.median(ts):.2f} ms "
                  f"(min {1e3 * min(ts):.2f}, max {1e3 * max(ts):.2f})", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: CPU time of the calling thread (needs --threads 1), as "
                         "`adabin-np bench --clock cpu`")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_lce.json")
    a = ap.parse_args(argv)
    import larq_compute_engine as lce
    import tensorflow as tf

    if a.clock == "cpu" and a.threads != 1:
        ap.error("--clock cpu needs --threads 1")
    rows = run(a.threads, a.batch, a.repeats, a.warmup,
               time.thread_time if a.clock == "cpu" else time.perf_counter)
    packed = HERE / "results" / "bench_packed.json"
    if packed.exists():
        ref = {(r["channels"], r["batch"]): r for r in json.loads(packed.read_text())["rows"]}
        for r in rows:
            p = ref.get((r["channels"], r["batch"]))
            if p and "torch_f32" in p["times"]:
                tm = p["times"]["torch_f32"]["median_s"]
                r["torch_f32_median_s (bench_packed.json)"] = tm
                r["packed_median_s (bench_packed.json)"] = p["times"]["packed"]["median_s"]
                r["lce_speedup_vs_torch"] = tm / r["lce"]["median_s"]
                r["packed_speedup_vs_lce"] = r["lce"]["median_s"] / p["times"]["packed"]["median_s"]
    result = {"machine": {"cpu": _cpu_name(), "threads": a.threads,
                          "load_average": list(os.getloadavg())},
              "versions": {"larq_compute_engine": lce.__version__, "tensorflow": tf.__version__},
              "settings": {"clock": a.clock, "repeats": a.repeats, "warmup": a.warmup,
                           "dtype": "float32 NHWC in, float32 out (QuantConv2D ste_sign)",
                           "call": "wrapped TFLite interpreter, whole batch per invoke"},
              "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
