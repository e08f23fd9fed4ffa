r"""Layer-by-layer comparison of a user's model with the oracle's (issue 13, point 5).

``compare_layers(model, x, outputs)`` runs the oracle ``model`` (an :mod:`adabin_np.models`
network with the user's weights loaded) on ``x`` and compares every layer named in ``outputs``
-- module names as the PyTorch release names them, the ``state_dict`` prefixes (``"conv1"``,
``"layer2.1.conv2"``, ``"layer2.1.bn2"``, ``"layer2.1.nonlinear2"``, ``"linear"``, ...) -- with
the arrays the user captured (e.g. with torch forward hooks). The report is a table in forward
order and names the **first** diverging layer; :func:`assert_layers_match` raises
``AssertionError`` naming it.

Per layer, with ``e`` the oracle's output and ``a`` the user's:

* an AdaBin convolution is compared with :func:`~adabin_np.testing.compare_with_oracle` on
  the layer's input (rounding bound plus the bounded flip forgiveness of docs/testing.md);
  ``flip risk`` counts its risky input activations and weights;
* any other layer passes when ``max|a - e| <= rtol * max|e|`` (``rtol`` by the dtype of the
  user's array: float64 1e-9, float32 1e-4, float16/bfloat16 1e-2: errors accumulate over
  layers, so this is looser than a single op's bound).

Without ``inputs`` every layer sees the oracle's own activations, so a sign that legitimately
flipped upstream (a forgiven flip) moves everything after it; such layers are marked
``after flips`` and not called diverging. Pass ``inputs`` (the layer inputs captured by the
same hooks) to check every layer on the user's own input: each layer is then judged alone.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .compare import _to_numpy, compare_with_oracle
from .flip_masks import _check_tol, flip_risk, weight_flip_risk

_LAYER_RTOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}


class LayerRow(NamedTuple):
    """One compared layer."""

    name: str
    kind: str  # the oracle module's class name
    shape: tuple
    max_abs_diff: float
    max_rel_diff: float  # max|a - e| / max|e|
    mismatched: int  # elements outside the rounding bound
    forgiven: int  # ... within a possible flip of risky inputs (AdaBin convolutions)
    flip_risk: int  # risky input activations and weights (AdaBin convolutions), else 0
    status: str  # "ok", "flips forgiven", "after flips", "DIVERGES", "shape differs"
    detail: str = ""


class LayerReport(NamedTuple):
    """Result of :func:`compare_layers`; ``str(report)`` is the table."""

    rows: tuple
    first_divergence: str | None
    not_found: tuple = ()  # names in ``outputs`` that the model never ran

    @property
    def ok(self):
        return self.first_divergence is None and not self.not_found

    def __str__(self):
        head = (f"{'layer':<24} {'kind':<16} {'shape':<18} {'max|diff|':>10} {'rel':>9} "
                f"{'mismatch':>9} {'forgiven':>8} {'flip risk':>9}  status")
        lines = [head]
        for r in self.rows:
            lines.append(f"{r.name:<24} {r.kind:<16} {str(r.shape):<18} {r.max_abs_diff:>10.3g} "
                         f"{r.max_rel_diff:>9.2g} {r.mismatched:>9d} {r.forgiven:>8d} "
                         f"{r.flip_risk:>9d}  {r.status}")
        if self.first_divergence is not None:
            lines.append(f"first diverging layer: {self.first_divergence}")
            detail = next(r.detail for r in self.rows if r.name == self.first_divergence)
            if detail:
                lines.append(detail)
        else:
            lines.append("no layer diverges")
        if self.not_found:
            lines.append(f"not run by the model (check the names): {', '.join(self.not_found)}")
        return "\n".join(lines)


def _capture(model, x):
    """Run the oracle ``model`` on ``x``; {name: (input, output)} of every module in the order
    the modules finish (the order torch's forward hooks fire: a block after its layers)."""
    seen = {}
    wrapped = []

    def wrap(name, mod, orig):
        def forward(inp, *args, **kwargs):
            out = orig(inp, *args, **kwargs)
            if name not in seen:
                seen[name] = (inp, out)
            return out
        return forward

    try:
        for name, mod in model.named_modules():
            if not name:
                continue
            if "forward" in mod.__dict__:
                continue
            object.__setattr__(mod, "forward", wrap(name, mod, mod.forward))
            wrapped.append(mod)
        model.forward(x, packed=False)
    finally:
        for mod in wrapped:
            object.__delattr__(mod, "forward")
    return seen


def _binary_activations(seen, modules, wanted):
    """Add ``<conv>.binary_a`` entries (the oracle's conv binarizes inside one kernel call, so
    its activation module never runs): input and binarized output, just before the conv."""
    out = {}
    for name, value in seen.items():
        sub = name + ".binary_a"
        mod = modules[name]
        if sub in wanted and _is_adabin_conv(mod):
            from ..binarize import binarize_activations
            inp = value[0]
            out[sub] = (inp, binarize_activations(inp, mod.binary_a.params["alpha_a"],
                                                  mod.binary_a.params["beta_a"],
                                                  convention=mod.convention))
        out[name] = value
    return out


def _is_binary_activation(mod):
    return type(mod).__name__ == "BinaryActivation" and "alpha_a" in mod.params


def _is_adabin_conv(mod):
    return type(mod).__name__ == "AdaBinConv2d" and hasattr(mod, "binary_a")


def compare_layers(model, x, outputs, *, inputs=None, rtol=None, tol=None):
    """Compare the user's per-layer ``outputs`` with the oracle ``model`` on input ``x``.

    Parameters
    ----------
    model : adabin_np model
        E.g. ``adabin_np.models.resnet20_1w1a(convention="official")`` with the user's weights
        loaded (``model.load_state_dict(...)``) and in the user's mode (``model.eval()``).
    x : array_like or torch tensor
        The model input both sides ran on.
    outputs : mapping
        ``{name: array}`` for any subset of the model's module names (the release's
        ``state_dict`` prefixes); arrays may be torch tensors (detached and moved to the CPU).
    inputs : mapping, optional
        ``{name: array}``: the input each of those layers received on the user's side; the
        oracle layer then runs on it, so every layer is judged on its own.
    rtol, tol : float, optional
        Relative bound of non-binary layers and flip-risk tolerance of binary ones; defaults
        by the dtype of each user array.

    Returns a :class:`LayerReport` (table in forward order, ``first_divergence``).
    """
    if not hasattr(model, "named_modules"):
        raise TypeError("model must be an adabin_np model (e.g. adabin_np.models."
                        "resnet20_1w1a()), got " + type(model).__name__)
    if not hasattr(outputs, "items"):
        raise TypeError("outputs must be a mapping {layer name: array}")
    inputs = {} if inputs is None else dict(inputs)
    if tol is not None:
        tol = _check_tol(tol)
    x = _to_numpy(x, "x")[0].astype(np.float64)
    modules = dict(model.named_modules())
    unknown = [n for n in list(outputs) + list(inputs) if n not in modules or not n]
    if unknown:
        raise ValueError(f"unknown layer names {unknown}; the model's names are its "
                         f"state_dict prefixes, e.g. {[n for n in modules if n][:6]}")
    seen = _binary_activations(_capture(model, x), modules, outputs)
    order = [n for n in seen if n in outputs]
    not_found = tuple(n for n in outputs if n not in seen)
    rows = []
    first = None
    flipped_upstream = None
    for name in order:
        mod = modules[name]
        actual, dtype_name = _to_numpy(outputs[name], f"outputs[{name!r}]")
        if name in inputs:
            layer_in = _to_numpy(inputs[name], f"inputs[{name!r}]")[0].astype(np.float64)
            expected = np.asarray(mod.forward(layer_in), dtype=np.float64)
        else:
            layer_in, expected = seen[name]
            expected = np.asarray(expected, dtype=np.float64)
        row = _compare_layer(name, mod, layer_in, expected, actual, dtype_name, rtol, tol,
                             local=name in inputs, flipped_upstream=flipped_upstream)
        if row.status == "flips forgiven" and flipped_upstream is None and name not in inputs:
            flipped_upstream = name
        if row.status in ("DIVERGES", "shape differs") and first is None:
            first = name
        rows.append(row)
    return LayerReport(tuple(rows), first, not_found)


def _compare_layer(name, mod, layer_in, expected, actual, dtype_name, rtol, tol, *, local,
                   flipped_upstream):
    kind = type(mod).__name__
    user = actual  # the user's dtype picks the conv's rounding bound
    actual = actual.astype(np.float64)
    if actual.shape != expected.shape:
        if actual.size == expected.size and np.squeeze(actual).shape == np.squeeze(
                expected).shape:
            actual = actual.reshape(expected.shape)
        else:
            return LayerRow(name, kind, expected.shape, np.inf, np.inf, expected.size, 0, 0,
                            "shape differs",
                            f"  {name}: shape {actual.shape}, oracle {expected.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(actual - expected)
    diff = np.where(np.isnan(diff), np.inf, diff)
    peak = float(np.abs(expected).max()) if expected.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else np.inf)
    if _is_adabin_conv(mod):
        w = mod.params["weight"]
        alpha = mod.binary_a.params["alpha_a"]
        beta = mod.binary_a.params["beta_a"]
        kw = mod._conv_kwargs()
        report = compare_with_oracle(user.reshape(expected.shape), "adabin_conv2d", layer_in, w,
                                     alpha, beta, tol=tol, **kw)
        # risky input activations and weights (validated by the comparison above)
        risk = int(flip_risk(layer_in, alpha, beta, tol=report.tol).sum()
                   + weight_flip_risk(w, tol=report.tol).sum())
        f = report.fields[0]
        if f.unforgiven:
            status = "DIVERGES"
        elif f.forgiven:
            status = "flips forgiven"
        else:
            status = "ok"
        if status == "DIVERGES" and flipped_upstream is not None and not local:
            status = "after flips"
        return LayerRow(name, kind, expected.shape, max_abs, max_rel, f.mismatched, f.forgiven,
                        risk, status, str(report) if status == "DIVERGES" else "")
    if _is_binary_activation(mod):
        report = compare_with_oracle(user.reshape(expected.shape), "binarize_activations",
                                     layer_in, mod.params["alpha_a"], mod.params["beta_a"],
                                     tol=tol, convention=mod.convention)
        f = report.fields[0]
        risk = int(flip_risk(layer_in, mod.params["alpha_a"], mod.params["beta_a"],
                             tol=report.tol).sum())
        status = "DIVERGES" if f.unforgiven else ("flips forgiven" if f.forgiven else "ok")
        if status == "DIVERGES" and flipped_upstream is not None and not local:
            status = "after flips"
        return LayerRow(name, kind, expected.shape, max_abs, max_rel, f.mismatched, f.forgiven,
                        risk, status, str(report) if status == "DIVERGES" else "")
    bound = rtol if rtol is not None else _LAYER_RTOL.get(dtype_name, 1e-9)
    bad = diff > bound * peak
    mismatched = int(bad.sum())
    if not mismatched:
        status = "ok"
    elif flipped_upstream is not None and not local:
        status = "after flips"
    else:
        status = "DIVERGES"
    detail = ""
    if status == "DIVERGES":
        i = np.unravel_index(int(np.argmax(diff)), diff.shape)
        detail = (f"  {name}{list(int(k) for k in i)} = {float(actual[i])!r}, oracle "
                  f"{float(expected[i])!r} (|diff| {float(diff[i]):.3g} > rtol {bound:g} x "
                  f"max|oracle| {peak:.3g}); {mismatched} of {diff.size} elements differ")
    return LayerRow(name, kind, expected.shape, max_abs, max_rel, mismatched, 0, 0, status,
                    detail)


def assert_layers_match(model, x, outputs, **kwargs):
    """:func:`compare_layers`, raising ``AssertionError`` that names the first diverging layer.

    Returns the :class:`LayerReport` when no layer diverges.
    """
    report = compare_layers(model, x, outputs, **kwargs)
    if not report.ok:
        where = (f"first diverging layer: {report.first_divergence}"
                 if report.first_divergence else "layers not run by the model")
        raise AssertionError(f"{where}\n{report}")
    return report
