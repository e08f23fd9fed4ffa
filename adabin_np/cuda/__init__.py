r"""CUDA target of adabin-np (``numba.cuda``), in three files by job:

* :mod:`adabin_np.cuda.host` -- the public entry points (validation, transfers, launch
  geometry): same semantics, validation and errors as the CPU functions;
* :mod:`adabin_np.cuda.kernels` -- the ``@cuda.jit`` kernels (imported lazily: importing
  :mod:`adabin_np.cuda` never imports :mod:`numba.cuda`);
* :mod:`adabin_np.cuda.report` -- :func:`ptx_report`: compiles every kernel for a real GPU
  (``sm_90`` by default) with the signatures the launchers use and reads ``ptxas -v``
  (registers, stack, spills, local-memory ops, ``popc`` count), no GPU needed.

Entry points: :func:`is_available`, :func:`is_simulator`, :func:`binarize_activations_cuda`,
:func:`binarize_activations_grad_cuda`, :func:`weight_binary_set_cuda`,
:func:`binarize_weights_cuda`, :func:`binarize_weights_grad_cuda`, :func:`pack_bits_cuda`,
:func:`pack_weight_bits_cuda`, :func:`packed_adabin_conv2d_cuda` (behind
``packed_adabin_conv2d(..., device="cuda")``), :func:`ptx_report`.

Checked on real hardware with ``analysis/gpu_check.sh`` (NVIDIA H200: the CUDA tests pass
without the simulator; figures in ``analysis/results/bench_cuda.json``). Known environment
issue: numba-cuda 0.30.4 with NumPy >= 2.5 fails at the first real-GPU compile
(``module 'numpy' has no attribute 'row_stack'``); the script restores that alias for its own
processes, a user must upgrade numba-cuda or use NumPy < 2.5.
"""

from __future__ import annotations

from . import host
from .host import (  # noqa: F401  -- re-exported: host.__all__
    TARGET_BLOCKS,
    binarize_activations_cuda,
    binarize_activations_grad_cuda,
    binarize_weights_cuda,
    binarize_weights_grad_cuda,
    conv_geometry,
    is_available,
    is_simulator,
    pack_bits_cuda,
    pack_weight_bits_cuda,
    packed_adabin_conv2d_cuda,
    theoretical_occupancy,
    weight_binary_set_cuda,
)
from .report import kernel_signatures, ptx_report

__all__ = [*host.__all__, "ptx_report", "kernel_signatures"]
