"""Bit-packed XNOR/popcount kernels (SPEC section 4), CPU, laid out like Larq Compute Engine's
``core/``: one module per job, the per-ISA microkernels named by their register block.

* :mod:`.microkernel` -- ``tile_6x32_avx512`` / ``tile_4x8_avx2``: register-blocked XOR +
  popcount tiles emitted as LLVM vector IR (``llvm.ctpop.v8i64`` / ``v4i64``);
* :mod:`.select_kernel` -- picks the tile for the CPU Numba compiles for;
* :mod:`.pack` -- binarize + pack activations (float32/float64, fused finiteness and tie
  counts) and weights (binary set + signs in one kernel call, eight rows per SIMD block),
  kernel weight layouts;
* :mod:`.conv` -- border tables, the tiled convolution driver with the fused rescale epilogue
  (contiguous NCHW stores), the roofline probe.

The plain NumPy float64 spec these kernels are tested against is ``reference/spec.py``
(``packed_conv_formula``); the Python entry points with validation are in
:mod:`adabin_np.packed`.
"""

from .conv import bconv_forward, border_patches, border_tables, popcount_roofline, tap_offsets
from .microkernel import TILES, popcount64
from .pack import (
    activation_thresholds,
    natural_kernel_weights,
    pack_activations,
    pack_activations_blocks,
    pack_lastaxis,
    pack_weight_layout,
    unpack_lastaxis,
    weight_pack,
    weight_tap_popcounts,
)
from .select_kernel import select_activation_pack, select_tile, target_cpu

__all__ = ["TILES", "activation_thresholds", "bconv_forward", "border_patches", "border_tables",
           "natural_kernel_weights", "pack_activations", "pack_activations_blocks",
           "pack_lastaxis", "pack_weight_layout", "popcount64", "popcount_roofline",
           "select_activation_pack", "select_tile", "tap_offsets", "target_cpu",
           "unpack_lastaxis", "weight_pack", "weight_tap_popcounts"]
