"""adabin-np: a framework-free, Numba-accelerated NumPy oracle for AdaBin BNNs.

Tu et al., "AdaBin: Improving Binary Neural Networks with Adaptive Binary Sets", ECCV 2022.
The exact math and both conventions ("paper", "official") are documented in the docstrings of
:mod:`adabin_np.binarize` and :mod:`adabin_np.conv`.
"""

from .binarize import (
    ActivationGrad,
    binarize_activations,
    binarize_activations_grad,
    binarize_weights,
    binarize_weights_grad,
    bireal_grad,
    ede,
    ede_schedule,
    weight_binary_set,
)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_npz
from .conv import ConvGrad, adabin_conv2d, adabin_conv2d_grad, conv2d
from .equalization import (
    EqualizationLandscape,
    EqualizationResult,
    equalization_search,
    kl_divergence_histogram,
    kl_gaussian,
)

from .packed import (
    PackedCounts,
    PackedInfo,
    PackedWeights,
    adabin_linear,
    pack_bits,
    pack_weights,
    packed_adabin_conv2d,
    packed_adabin_conv2d_prepacked,
    packed_conv_counts,
    packed_linear,
    threshold_ties,
    unpack_bits,
)
from . import data, layers, models, train
from .models import digits_cnn, load_digits_model, resnet18_1w1a, resnet20_1w1a
from .summary import summary  # the function; the module is adabin_np.summary too

__version__ = "0.1.0"

__all__ = [
    "ActivationGrad",
    *packed.__all__,
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "save_npz",
    "ConvGrad",
    "adabin_conv2d",
    "adabin_conv2d_grad",
    "binarize_activations",
    "binarize_activations_grad",
    "binarize_weights",
    "binarize_weights_grad",
    "bireal_grad",
    "conv2d",
    "data",
    "digits_cnn",
    "layers",
    "load_digits_model",
    "models",
    "resnet18_1w1a",
    "resnet20_1w1a",
    "summary",
    "train",
    "ede",
    "ede_schedule",
    "EqualizationLandscape",
    "EqualizationResult",
    "equalization_search",
    "kl_divergence_histogram",
    "kl_gaussian",
    "weight_binary_set",
]
