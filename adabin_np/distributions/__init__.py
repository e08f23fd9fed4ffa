r"""Per-layer distribution analysis of AdaBin binary layers, streamed over datasets.

For every binary layer the analysis looks at the real weights ``W`` ``(O, ...)`` and the
layer's pre-binarization input ``x`` (channels on axis 1), and at the binary sets applied to
them (SPEC sections 1, 2): weights per output channel
:math:`\beta_w = \mathrm{mean}(W_o)`, :math:`\alpha_w = \mathrm{std}(W_o)`, levels
:math:`\beta_w \mp \alpha_w`; activations :math:`v = (x - \beta_a)/\alpha_a`, levels
``paper`` :math:`\beta_a \mp \alpha_a`, ``official`` :math:`\alpha_a(\beta_a \mp 1)`.

Flip risk (SPEC section 7): an element is at risk at ``tol`` when
:math:`|x - \beta| \le tol\,(|x| + |\beta| + |\alpha|)` (weights: with ``alpha_w``, constant
filters never); exact ties ``v == 0`` are counted apart (the conventions map them differently,
the packed path maps them to ``+1``). The flip-risk curve counts
:math:`r = |x - \beta|/(|x| + |\beta| + |\alpha|) \le t` over :data:`FLIP_RISK_LADDER`.

Layout (one job per module):

* :mod:`.records` -- :class:`LayerRecord`, level formulas, :func:`records_from_model`;
* :mod:`.stats` -- mergeable accumulators (exact counts, Chan/Pébay moments, fixed-edge
  histograms, a split-independent bottom-k sample for the equalization search);
* :mod:`.summary` -- JSON entries, :func:`analyze_layers` (in memory), :func:`write_summary`;
* :mod:`.inputs` -- :func:`load_inputs` and chunked input sources (arrays, memmaps, ``.npy``
  files, image folders, dask arrays);
* :mod:`.stream` -- :func:`analyze_model`: chunks as tasks, one process or dask.distributed.
"""

from .inputs import load_inputs
from .records import (DEFAULT_FLIP_TOL, FLIP_RISK_LADDER, LayerRecord, activation_levels,
                      records_from_model, relative_distance, weight_levels)
from .stream import analyze_model
from .summary import _outputs_at_risk, analyze_layers, write_summary  # noqa: F401 (tests)

__all__ = [
    "DEFAULT_FLIP_TOL",
    "FLIP_RISK_LADDER",
    "LayerRecord",
    "activation_levels",
    "weight_levels",
    "relative_distance",
    "analyze_layers",
    "records_from_model",
    "analyze_model",
    "write_summary",
    "load_inputs",
]
