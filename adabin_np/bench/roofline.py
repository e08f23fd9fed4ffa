r"""Machine limits the packed kernel is measured against.

* **Popcount roofline**: :func:`adabin_np.kernels_packed.popcount_roofline` runs the very
  microkernel the convolution uses (same tile, same taps x words per pixel) on L1-resident
  data on every thread -- no offset building, packing, epilogue or memory traffic. One
  word-op = one 64-bit XOR + popcount + add = 64 binary MACs = 128 binary ops. It is taken as
  the **best** of several calibrated runs (interleaved with the convolution timings by the
  caller), so noise can only lower it, never raise the kernel's reported fraction above what
  it really achieved: a true upper bound for the convolution's popcount stage on this machine.
* **Bandwidth**: a parallel float32 copy (Numba, every thread), best of several runs, bytes
  read + written per second. Per layer the copy moves the layer's own I/O volume (half its
  bytes read, half written, so the same cache footprint): a layer whose input and output fit
  in the caches is bounded by cache bandwidth, not DRAM's, exactly as the benchmark's
  repeated calls on the same arrays see it. (Bounding a cache-resident layer by the DRAM rate
  of a 256 MiB copy, as the benchmark did before, was not an upper bound.) The 256 MiB figure
  is still reported as the machine's memory bandwidth.
* **Bound** of a layer: ``max(word_ops / roofline, (input + output bytes) / bandwidth)``; the
  packed call can be no faster than that.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

__all__ = ["popcount_roofline", "bandwidth", "layer_bound"]


@njit(cache=True, parallel=True)
def _copy(src, dst):
    n = src.shape[0]
    chunk = 1 << 16
    for c in prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            dst[i] = src[i]


def popcount_roofline(threads, taps, wgm, *, seconds=0.1, runs=3, clock=time.perf_counter):
    """Best word-ops/s of the selected microkernel for ``taps`` x ``wgm`` words per pixel."""
    from ..kernels_packed import TILES, popcount_roofline as probe, select_tile

    variant = select_tile()[0]
    _, tp, jb = TILES[variant]
    probe(variant, taps, wgm, 2, threads)
    reps = 64
    while True:
        t0 = time.perf_counter()
        probe(variant, taps, wgm, reps, threads)
        dt = time.perf_counter() - t0
        if dt > seconds / 4 or reps > 1 << 26:
            break
        reps *= 4
    best = float("inf")
    for _ in range(runs):
        t0 = clock()
        probe(variant, taps, wgm, reps, threads)
        best = min(best, clock() - t0)
    return threads * reps * taps * wgm * tp * jb / best


def bandwidth(*, mib=256, nbytes=None, runs=3, clock=time.perf_counter):
    """Best bytes/s (read + write) of a parallel float32 copy of ``mib`` MiB, or of a copy
    that moves ``nbytes`` bytes in all (``nbytes/2`` read, ``nbytes/2`` written; the copy is
    repeated untimed first, so a cache-sized volume is measured cache-resident, and small
    volumes get more runs)."""
    if nbytes is None:
        nbytes = 2 * mib * (1 << 20)
    n = max(1024, int(nbytes) // 8)
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    _copy(src, dst)
    _copy(src, dst)
    runs = max(runs, min(200, int(3 * (256 << 20) // max(1, 8 * n))))
    best = float("inf")
    for _ in range(runs):
        t0 = clock()
        _copy(src, dst)
        best = min(best, clock() - t0)
    return 2 * src.nbytes / best


def layer_bound(word_ops, io_bytes, roof_word_ops, bw):
    """Seconds a layer needs at least: popcounts at the roofline or I/O at the bandwidth."""
    return max(word_ops / roof_word_ops, io_bytes / bw)
