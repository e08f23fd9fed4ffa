r"""Test your own AdaBin implementation against the oracle (SPEC section 7; docs/testing.md).

A binary neural network amplifies rounding: an activation or weight that sits next to its
threshold can binarize to the other level in another precision or summation order, and one
flipped sign changes every output that reads it. (The same ResNet-20 in float32 and float64
disagrees on about 0.1% of CIFAR-10 predictions.) So an exact comparison is too strict and a
loose ``allclose`` hides real bugs. This package compares *values* with a rounding bound
derived from your dtype, and forgives *sign flips* of inputs within ``tol`` of a threshold (a
**flip risk**) only where such an input is read, and only by as much as its flip can change
the value::

    import adabin_np.testing as abt

    y = my_adabin_conv(x, w, alpha, beta, stride=2)        # your code: torch, JAX, C, ...
    abt.assert_matches_oracle(y, "adabin_conv2d", x, w, alpha, beta, stride=2)

    @given(abt.conv_cases(dtype=np.float32))               # hypothesis grid of valid cases
    def test_my_conv(case):
        y = my_adabin_conv(*case.args, **case.kwargs)
        abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)

Modules (one job each)
----------------------
* :mod:`~adabin_np.testing.flip_masks` -- :func:`flip_risk`, :func:`weight_flip_risk`,
  :func:`conv_flip_risk`: where signs may flip.
* :mod:`~adabin_np.testing.tolerance` -- what the oracle expects of every output: value,
  rounding bound, flip bound (the forgiveness model).
* :mod:`~adabin_np.testing.compare` -- :func:`assert_matches_oracle`,
  :func:`compare_with_oracle`, :func:`assert_grads_match`, :func:`load_case`: reports whose
  messages explain ties and padded borders and re-run the failing case.
* :mod:`~adabin_np.testing.layers` -- :func:`compare_layers`, :func:`assert_layers_match`:
  a whole model layer by layer, first diverging layer named.
* :mod:`~adabin_np.testing.strategies` -- hypothesis strategies :func:`conv_shapes`,
  :func:`weights`, :func:`activations`, :func:`binary_sets`, :func:`conventions`,
  :func:`conv_cases` (values drawn by ``hypothesis.extra.numpy``, so failures shrink in value;
  ``dtype`` float16/float32/float64). hypothesis is imported only when a strategy is built.
* :mod:`~adabin_np.testing.correlate` -- plain NumPy correlation and its transposes used for
  the bounds.

``import adabin_np`` never imports this package.

Flip risk
---------
An activation ``x`` with ``v = (x - beta)/alpha`` is at flip risk when

.. math:: |x - \beta| \le \mathrm{tol}\,(|x| + |\beta| + |\alpha|)
          \quad\Longleftrightarrow\quad
          |v| \le \mathrm{tol}\,\Bigl(1 + \frac{|x| + |\beta|}{|\alpha|}\Bigr),

i.e. ``v`` lies within ``tol`` of the threshold 0, measured relative to the operands. A weight
is at risk when ``|W - beta_w| <= tol*(|W| + |beta_w| + alpha_w)``; constant filters
(``alpha_w = 0``) never are. :data:`DEFAULT_TOL` ``= 1e-5`` is about 100 float32 ulps;
:func:`assert_matches_oracle` picks ``tol`` from the dtype of your output (float64 ``1e-9``,
float32 ``1e-5``, float16 ``1e-2``, bfloat16 ``5e-2``). Random data does have risky
elements: about ``2 tol p(0) N`` of ``N`` activations (``p(0)`` the density of ``v`` at 0),
e.g. ~1-3 of the 131072 of an (8, 64, 16, 16) float32 case -- harmless, because a risky
element excuses only what its own flip can change.

Exact ties (``x == beta``, ``W == beta_w``) are computed exactly in every precision, so the
convention decides them (paper +1, official 0) and they are **not** forgiven unless
``forgive_ties=True`` (the bit-packed path maps 0 to +1 in both conventions). This is what
catches ``torch.sign`` used with the paper convention.

Values
------
An element passes when ``|actual - expected| <= atol + rtol*scale + flip`` (see
:mod:`~adabin_np.testing.tolerance` and docs/testing.md for the derivation): ``scale`` is the
sum of |terms| of an elementwise value or short sum, and a probabilistic bound
``0.1 sqrt(n) (|q| + ||t||_2) + ...`` for a reduction over ``n`` terms (``dalpha``, ``dbeta``
and the channel sums of ``dW``); ``flip`` is 0 unless the value reads a risky input.
"""

from __future__ import annotations

from .compare import (FieldReport, OracleReport, assert_grads_match, assert_matches_oracle,
                      compare_with_oracle, load_case)
from .correlate import _corr, _corr_t_input, _corr_t_weight  # noqa: F401 (used by tests)
from .flip_masks import DEFAULT_TOL, conv_flip_risk, flip_risk, weight_flip_risk
from .layers import LayerReport, LayerRow, assert_layers_match, compare_layers
from .strategies import (DEGENERATE_WEIGHTS, DTYPES, REALISTIC_WEIGHTS, ConvCase, ConvShape,
                         activations, binary_sets, conv_cases, conv_shapes, conventions, weights)

__all__ = [
    "DEFAULT_TOL",
    "DEGENERATE_WEIGHTS",
    "DTYPES",
    "REALISTIC_WEIGHTS",
    "ConvCase",
    "ConvShape",
    "FieldReport",
    "LayerReport",
    "LayerRow",
    "OracleReport",
    "activations",
    "assert_grads_match",
    "assert_layers_match",
    "assert_matches_oracle",
    "binary_sets",
    "compare_layers",
    "compare_with_oracle",
    "conv_cases",
    "conv_flip_risk",
    "conv_shapes",
    "conventions",
    "flip_risk",
    "load_case",
    "weight_flip_risk",
    "weights",
]
