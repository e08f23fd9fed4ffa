r"""Test your own AdaBin implementation against the oracle (SPEC section 7).

A binary neural network amplifies rounding: an activation or weight that sits next to its
threshold can binarize to the other level in another precision or summation order, and one
flipped sign changes every output that reads it. (The same ResNet-20 in float32 and float64
disagrees on about 0.1% of CIFAR-10 predictions.) So an exact comparison is too strict and a
loose ``allclose`` hides real bugs. This module compares *values* with a tolerance scaled to
the magnitude of the terms that make them up, and forgives *sign flips* only where an input is
within ``tol`` of a threshold (a **flip risk**)::

    import adabin_np.testing as abt

    y = my_adabin_conv(x, w, alpha, beta, stride=2)        # your code: torch, JAX, C, ...
    abt.assert_matches_oracle(y, "adabin_conv2d", x, w, alpha, beta, stride=2)

    @given(abt.conv_cases())                               # hypothesis grid of valid cases
    def test_my_conv(case):
        y = my_adabin_conv(*case.args, **case.kwargs)
        abt.assert_matches_oracle(y, "adabin_conv2d", *case.args, **case.kwargs)

Contents
--------
* :func:`assert_matches_oracle`, :func:`compare_with_oracle`, :func:`assert_grads_match` --
  compare an output (array, torch tensor, tuple of gradients, or a callable) with the oracle.
* :func:`flip_risk`, :func:`weight_flip_risk`, :func:`conv_flip_risk` -- where signs may flip.
* hypothesis strategies :func:`conv_shapes`, :func:`weights`, :func:`activations`,
  :func:`binary_sets`, :func:`conventions`, :func:`conv_cases` (hypothesis is imported only
  when a strategy is built; ``import adabin_np`` never imports this module).

Flip risk
---------
An activation ``x`` with ``v = (x - beta)/alpha`` is at flip risk when

.. math:: |x - \beta| \le \mathrm{tol}\,(|x| + |\beta| + |\alpha|)
          \quad\Longleftrightarrow\quad
          |v| \le \mathrm{tol}\,\Bigl(1 + \frac{|x| + |\beta|}{|\alpha|}\Bigr),

i.e. ``v`` lies within ``tol`` of the threshold 0, measured relative to the operands: rounding
``x`` or ``beta`` to a working precision moves ``x - beta`` by about ``eps*(|x| + |beta|)``,
whatever ``alpha`` is. For ``|x|, |beta| << |alpha|`` this is simply ``|v| <= tol``. A weight
is at risk when ``|W - beta_w| <= tol*(|W| + |beta_w| + alpha_w)`` (``u`` within ``tol`` of 0;
the extra terms bound the rounding of a float32 mean). Constant filters (``alpha_w = 0``)
binarize to ``beta_w`` whatever the sign, so they are never at risk.

:data:`DEFAULT_TOL` ``= 1e-5`` is about 100 float32 ulps: wide enough for float32 rounding of
the inputs and a differently ordered float32 mean over ~10^4 weights, narrow enough that
random data almost never has a risky element (so real bugs cannot hide behind it).
:func:`assert_matches_oracle` picks ``tol`` from the dtype of your output (float64 ``1e-9``,
float32 ``1e-5``, float16 ``1e-2``, bfloat16 ``5e-2``).

Exact ties (``x == beta`` or ``W == beta_w`` exactly) are in the flip-risk masks, but they are
not a rounding ambiguity: every precision computes ``x - beta == 0`` there (and ``W - mean(W)
== 0`` whenever the mean is exact, e.g. for dyadic weights), and the convention decides the
sign (paper +1, official 0). :func:`assert_matches_oracle` therefore does **not** forgive
mismatches at exact ties unless ``forgive_ties=True`` (needed for the bit-packed path, which
maps 0 to +1 in both conventions, or for weight ties whose mean your code cannot compute
exactly). This is what catches ``torch.sign`` used with the paper convention.

Values
------
An element passes when ``|actual - expected| <= atol + rtol*scale``, where ``scale`` bounds the
rounding error of the expected value: the sum of the absolute values of the terms that make it
up, each term's operands counted at their own magnitude (a binarized activation at
``|alpha| + |beta|``, a binarized weight at ``alpha_w + |beta_w|``, so a level that nearly
cancels, ``beta - alpha ~ 0``, is not held to a relative accuracy it cannot have), and ``v``/``u``
at ``|v| + (|x| + |beta|)/|alpha|`` where an estimator's slope reads them. Cancellation never
makes a correct float32 result fail; the largest error seen for float32 PyTorch is ~2e-7 of
``scale``, so the float32 default ``rtol = 1e-5`` leaves a 50x margin and still catches an
unbiased (n - 1) standard deviation.
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
