"""Pick the microkernel for the CPU Numba compiles for (LCE's ``select_kernel.h``).

Numba generates code for ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set, else for the
host (and caches per CPU name and feature set), so the choice follows the same settings:

* ``+avx512f`` and ``+avx512vpopcntdq`` -> ``tile_6x32_avx512`` (variant 0);
* anything else (AVX2, or older) -> ``tile_4x8_avx2`` (variant 1).

Both tiles are correct on every x86-64 CPU (they are plain LLVM vector IR); the choice only
matters for speed. ``ADABIN_NP_TILE=avx512|avx2`` overrides it (tests run both).
"""

from __future__ import annotations

import functools
import os

import llvmlite.binding as ll
from numba.core import config

from .microkernel import TILES
from .pack import pack_activations, pack_activations_blocks

__all__ = ["target_cpu", "select_tile", "select_activation_pack"]


def target_cpu():
    """``(cpu_name, isa)`` Numba compiles for; ``isa`` is ``"avx512-vpopcntdq"``, ``"avx2"``
    or ``"x86-64"``."""
    return _target_cpu(config.CPU_NAME, config.CPU_FEATURES)


@functools.lru_cache(maxsize=8)
def _target_cpu(cpu_name, cpu_features):
    # asking LLVM for the host features costs ~0.3 ms: once per (name, features) setting
    name = cpu_name or ll.get_host_cpu_name()
    feats = cpu_features
    if feats is None:
        feats = ll.get_host_cpu_features().flatten()
    fs = set(feats.split(","))
    if "+avx512f" in fs and "+avx512vpopcntdq" in fs:
        return name, "avx512-vpopcntdq"
    if "+avx2" in fs:
        return name, "avx2"
    return name, "x86-64"


def select_tile():
    """``(variant, P, J)`` for :func:`~adabin_np.kernels_packed.conv.bconv_forward`."""
    forced = os.environ.get("ADABIN_NP_TILE", "")
    if forced not in ("", "avx512", "avx2"):
        raise ValueError(f"ADABIN_NP_TILE must be 'avx512' or 'avx2', got {forced!r}")
    if forced:
        variant = 0 if forced == "avx512" else 1
    else:
        variant = 0 if target_cpu()[1] == "avx512-vpopcntdq" else 1
    _, p, j = TILES[variant]
    return variant, p, j


def select_activation_pack():
    """The activation packing kernel for the CPU Numba compiles for: the bit-block form
    (:func:`~adabin_np.kernels_packed.pack.pack_activations_blocks`) on AVX2 and older, the
    per-channel word form (:func:`~adabin_np.kernels_packed.pack.pack_activations`) on
    AVX-512 VPOPCNTDQ. Both give the same words and counts on every CPU."""
    return pack_activations if target_cpu()[1] == "avx512-vpopcntdq" else pack_activations_blocks
