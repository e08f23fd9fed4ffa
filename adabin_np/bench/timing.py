"""Machine description and interleaved timing for the benchmarks."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

__all__ = ["cpu_name", "cpu_flags", "isa", "interleaved", "parse_options", "stats"]


def cpu_name():
    """The CPU model string (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's vector-ISA flags (``avx*`` and ``popcnt``) from ``/proc/cpuinfo``, sorted."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    return " ".join(sorted(f for f in fl if f.startswith("avx") or f == "popcnt"))
    except OSError:
        pass
    return ""


def isa():
    """``{"cpu_flags": ..., "numba_target": (name, isa), "tile": name}``: what the CPU offers
    and what Numba compiles the packed kernels for."""
    from ..kernels_packed import TILES, select_tile, target_cpu

    return {"cpu_flags": cpu_flags(), "numba_target": list(target_cpu()),
            "tile": TILES[select_tile()[0]][0]}


def parse_options(args, add_arguments, prog):
    """A benchmark's options as an ``argparse.Namespace``: ``args`` itself if it is one, else
    the command-line strings ``args`` (``None``: the defaults) parsed by a parser that
    ``add_arguments`` fills."""
    if isinstance(args, argparse.Namespace):
        return args
    parser = add_arguments(argparse.ArgumentParser(prog=prog))
    return parser.parse_args([] if args is None else list(args))


def stats(times):
    """``{"min_s", "median_s", "max_s"}`` of per-call seconds."""
    return {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}


def interleaved(fns, warmup, repeats, *, sparse=None, prime=False, clock=time.perf_counter):
    """Round-robin timing of ``fns`` (a dict name -> callable): ``warmup`` untimed rounds,
    then ``repeats`` timed rounds, so that load from other processes hits every contender
    alike. ``sparse`` = {name: k}: that one runs only in the first ``k`` rounds (slow ones).
    ``prime=True``: every timed call comes right after an untimed call of the same callable
    (a repeated call, as in a loop, instead of one right after the other contender).
    ``clock``: ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU time of the calling
    thread: with one thread per contender it is insensitive to other processes' load).
    Returns {name: stats}."""
    sparse = sparse or {}
    for _ in range(warmup):
        for name, fn in fns.items():
            if sparse.get(name, 1) > 0:
                fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if r >= sparse.get(name, repeats):
                continue
            if prime:
                fn()
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: stats(t) for name, t in times.items() if t}
