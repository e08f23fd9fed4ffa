"""Reference (specification) implementation of AdaBin in plain NumPy float64.

This package is the executable form of ``SPEC.md``: slow, naive and meant to be read. The fast
Numba kernels of :mod:`adabin_np` are tested against it, in the manner of Larq Compute Engine's
``reference`` bconv2d kernel. It deliberately imports nothing from ``adabin_np`` and uses no
Numba and no torch, so that a bug in the product cannot leak into the oracle it is checked
against.

Contents (all in :mod:`reference.spec`):

* signs: :func:`sign_paper` (s(0) = +1), :func:`sign_official` (``np.sign``, s(0) = 0);
* weights: :func:`weight_binary_set` (beta_w = mean, alpha_w = population std per output
  channel; a constant filter gives exactly (0, value)), :func:`weight_u`,
  :func:`binarize_weights`, :func:`binarize_weights_grad` (IR-Net EDE through u, alpha_w and
  beta_w), :func:`ede`, :func:`ede_schedule`;
* activations: :func:`activation_v`, :func:`binarize_activations`,
  :func:`binarize_activations_grad` (Bi-Real F'(v) = max(0, 2 - 2|v|)), :func:`bireal_grad`;
* convolution: :func:`conv2d`, :func:`conv2d_grad_input`, :func:`conv2d_grad_weight`
  (cross-correlation, NCHW, zero padding, stride/dilation/groups), :func:`adabin_conv2d`,
  :func:`adabin_conv2d_grad`, :func:`packed_conv_formula` (the bit-packed formula of SPEC
  section 4 with explicit sign arrays), :func:`flip_risk_mask`.

``python -m reference.make_golden`` regenerates the golden cases in ``reference/golden/``.
"""

from . import spec
from .spec import *  # noqa: F401,F403  (the names listed in spec.__all__)

__all__ = list(spec.__all__)
