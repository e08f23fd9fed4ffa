"""Compare a user's result with the oracle: reports and assertions."""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from typing import NamedTuple

import numpy as np

from .flip_masks import _check_tol
from .tolerance import _OPS, _PRECISION

class FieldReport(NamedTuple):
    """Comparison of one output (``"output"``, ``"dx"``, ``"dw"``, ``"dalpha"``, ``"dbeta"``)."""

    name: str
    shape: tuple
    size: int
    mismatched: int  # elements outside atol + rtol*scale (the rounding bound)
    forgiven: int  # ... of which are within the flip bound on top of it
    worst: dict | None  # worst unforgiven element: index, actual, expected, diff, allowed
    table: str  # a few rows: worst unforgiven first, then forgiven ones
    error: str | None = None  # shape problem, if any
    notes: tuple = ()  # why the worst unforgiven element may differ: exact ties, padding

    @property
    def unforgiven(self):
        return self.mismatched - self.forgiven

    @property
    def ok(self):
        return self.error is None and self.unforgiven == 0


class OracleReport(NamedTuple):
    """Result of :func:`compare_with_oracle`; ``str(report)`` is the assertion message."""

    op: str
    fields: tuple
    rtol: float
    atol: float
    tol: float
    case: str = ""  # how to re-run the case: saved .npz path (set by the assertions)

    @property
    def ok(self):
        return all(f.ok for f in self.fields)

    @property
    def mismatched(self):
        return sum(f.mismatched for f in self.fields)

    @property
    def forgiven(self):
        return sum(f.forgiven for f in self.fields)

    def __str__(self):
        head = "matches" if self.ok else "does not match"
        lines = [f"{self.op} {head} the oracle (allowed |diff| = atol + rtol*scale + flip; "
                 f"rtol={self.rtol:g}, atol={self.atol:g}, flip-risk tol={self.tol:g})"]
        for f in self.fields:
            if f.error is not None:
                lines.append(f"  {f.name}: {f.error}")
                continue
            lines.append(f"  {f.name}: {f.mismatched} of {f.size} elements outside the rounding "
                         f"bound, {f.forgiven} within a possible flip of risky inputs, "
                         f"{f.unforgiven} not")
            if f.worst is not None:
                wst = f.worst
                lines.append(f"    worst unforgiven: {f.name}{_fmt_index(wst['index'])} = "
                             f"{wst['actual']!r}, oracle {wst['expected']!r} "
                             f"(|diff| {wst['diff']:.3g} > allowed {wst['allowed']:.3g})")
            for note in f.notes:
                lines.append(f"    note: {note}")
            if f.table:
                lines.append(f.table)
        if self.case:
            lines.append(self.case)
        return "\n".join(lines)


def _fmt_index(index):
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _table(idx_rows, actual, expected, diff, rounding, flip, forgiven_mask):
    header = (f"    {'index':<16} {'actual':>14} {'oracle':>14} {'|diff|':>10} {'rounding':>10}"
              f" {'flip bound':>10}")
    lines = [header]
    for i in idx_rows:
        mark = "  (forgiven: flip)" if forgiven_mask[i] else ""
        lines.append(f"    {_fmt_index(i):<16} {actual[i]:>14.7g} {expected[i]:>14.7g} "
                     f"{diff[i]:>10.3g} {rounding[i]:>10.3g} {flip[i]:>10.3g}{mark}")
    return "\n".join(lines)


def _compare_field(field, actual, rtol, atol, max_rows):
    exp = field.expected
    name = field.name
    if actual.shape != exp.shape:
        if field.squeeze_ok and actual.size == exp.size and \
                np.squeeze(actual).shape == np.squeeze(exp).shape:
            actual = actual.reshape(exp.shape)
        else:
            return FieldReport(name, exp.shape, exp.size, exp.size, 0, None, "",
                               f"shape {actual.shape} differs from the oracle's {exp.shape}")
    rounding = atol + rtol * field.scale
    allowed = rounding + field.flip
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(actual - exp)
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = ~(diff <= rounding)
    forgiven = bad & (diff <= allowed) & np.isfinite(actual)
    unforgiven = bad & ~forgiven
    worst = None
    notes = ()
    rows = []
    if unforgiven.any():
        order = np.argsort(-np.where(unforgiven, diff, -1.0), axis=None, kind="stable")
        rows = [np.unravel_index(j, exp.shape) for j in order[:int(min(max_rows,
                                                                         unforgiven.sum()))]]
        i = rows[0]
        worst = dict(index=tuple(int(k) for k in i), actual=float(actual[i]),
                     expected=float(exp[i]), diff=float(diff[i]), allowed=float(allowed[i]))
        if field.explain is not None:
            notes = tuple(field.explain(worst["index"]))
    n_forgiven = int(forgiven.sum())
    if n_forgiven:
        extra = np.argwhere(forgiven)[:3]
        rows += [tuple(int(k) for k in r) for r in extra]
    table = (_table(rows, actual, exp, diff, rounding, field.flip, forgiven) if rows else "")
    return FieldReport(name, exp.shape, exp.size, int(bad.sum()), n_forgiven, worst, table,
                       None, notes)


# ==============================================================================================
# comparing
# ==============================================================================================


class _Ctx(NamedTuple):
    tol: float
    ties: bool


def _to_numpy(value, what):
    """array-like, torch tensor, CuPy / numba.cuda array -> (float64 ndarray, dtype name)."""
    if hasattr(value, "detach") and callable(value.detach):  # torch, without importing it
        t = value.detach()
        if hasattr(t, "cpu"):
            t = t.cpu()
        name = str(getattr(t, "dtype", "")).replace("torch.", "")
        if name == "bfloat16":
            t = t.float()
        return _real(np.asarray(t.numpy()), what), name
    if hasattr(value, "copy_to_host"):  # numba.cuda device array
        value = value.copy_to_host()
    elif type(value).__module__.split(".")[0] == "cupy":
        value = value.get()
    arr = _real(np.asarray(value), what)
    return arr, arr.dtype.name


def _real(arr, what):
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _unwrap_arg(value):
    if hasattr(value, "detach") and callable(value.detach):
        return _to_numpy(value, "argument")[0]
    return value


def _resolve_op(op):
    if callable(op):
        op = getattr(op, "__name__", op)
    if not isinstance(op, str):
        raise TypeError(f"op must be an oracle function or its name, got {op!r}")
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
    return op


def _split_actual(actual, names):
    """Match ``actual`` to the oracle's outputs: {name: value} (None = not checked)."""
    names = list(names)
    if isinstance(actual, dict):
        unknown = set(actual) - set(names)
        if unknown:
            raise ValueError(f"actual has unknown gradient names {sorted(unknown)}; "
                             f"expected a subset of {names}")
        return {n: actual.get(n) for n in names}
    if len(names) == 1:
        if isinstance(actual, (tuple, list)) and len(actual) == 1:
            actual = actual[0]
        return {names[0]: actual}
    if hasattr(actual, "_asdict"):
        return _split_actual(dict(actual._asdict()), names)
    if isinstance(actual, (tuple, list)):
        if len(actual) != len(names):
            raise ValueError(f"actual has {len(actual)} entries but the oracle returns "
                             f"{len(names)} ({', '.join(names)}); pass a dict to check a subset")
        return dict(zip(names, actual))
    raise TypeError(f"actual must be a tuple ({', '.join(names)}) or a dict of them, "
                    f"got {type(actual).__name__}")


def compare_with_oracle(actual, op, *args, rtol=None, atol=None, tol=None, forgive_ties=False,
                        max_rows=8, _save=False, **kwargs):
    """Like :func:`assert_matches_oracle` but return the :class:`OracleReport`, never raise it.

    A failing report names the case (``report.case``: arrays by dtype and shape, scalars in full
    precision); :func:`assert_matches_oracle` also saves it as an ``.npz`` to re-run.
    """
    name = _resolve_op(op)
    oracle, expect, names = _OPS[name]
    if callable(actual) and not hasattr(actual, "shape"):
        actual = actual(*args, **kwargs)  # your function gets the arguments as given
    args = tuple(_unwrap_arg(a) for a in args)
    kwargs = {k: _unwrap_arg(v) for k, v in kwargs.items()}
    bound = inspect.signature(oracle).bind(*args, **kwargs)
    bound.apply_defaults()
    if actual is None:
        raise TypeError("actual is None (did your implementation return nothing?)")

    values = {}
    precision = None
    for fname, value in _split_actual(actual, names).items():
        if value is None:
            continue
        arr, dtype_name = _to_numpy(value, f"actual {fname}")
        values[fname] = arr
        precision = precision or dtype_name
    if not values:
        raise ValueError("actual contains nothing to compare (all entries are None)")
    d_rtol, d_tol = _PRECISION.get(precision, _PRECISION["float64"])
    rtol = d_rtol if rtol is None else _nonneg(rtol, "rtol")
    atol = 0.0 if atol is None else _nonneg(atol, "atol")
    tol = d_tol if tol is None else _check_tol(tol)
    fields = _expectation(name, expect, oracle, dict(bound.arguments),
                          _Ctx(tol, bool(forgive_ties)))
    reports = tuple(_compare_field(f, values[f.name].astype(np.float64), rtol, atol, max_rows)
                    for f in fields if f.name in values)
    report = OracleReport(name, reports, rtol, atol, tol)
    if not report.ok:
        report = report._replace(case=_describe_case(name, dict(bound.arguments)))
    if not report.ok and _save:
        settings = dict(rtol=rtol, atol=atol, tol=tol, forgive_ties=bool(forgive_ties))
        path = _save_case(name, dict(bound.arguments), values, settings)
        report = report._replace(case=report.case + (
            f"\n  re-run: actual, op, kwargs = adabin_np.testing.load_case({path!r}); "
            "adabin_np.testing.assert_matches_oracle(actual, op, **kwargs)" if path else ""))
    return report


def _describe_case(op, arguments):
    """One line naming every argument: arrays by dtype and shape, scalars in full precision."""
    parts = []
    for key, value in arguments.items():
        arr = np.asarray(value) if not isinstance(value, str) else None
        if arr is not None and arr.ndim > 0 and arr.size > 8:
            parts.append(f"{key}=<{arr.dtype} {arr.shape}>")
        elif arr is not None and arr.ndim > 0:
            parts.append(f"{key}={[float(v) for v in arr.ravel()]!r}")
        else:
            parts.append(f"{key}={value!r}")
    return f"  case: {op}({', '.join(parts)})"


def _case_dir():
    return os.environ.get("ADABIN_NP_CASE_DIR") or os.path.join(tempfile.gettempdir(),
                                                                "adabin_np_cases")


def _save_case(op, arguments, values, settings):
    """Save a failing case as ``<dir>/<op>-<digest>.npz`` (no pickles); return its path."""
    data = {"__op__": np.array(op)}
    for key, value in arguments.items():
        data["arg_" + key] = np.asarray(value)
    for key, value in values.items():
        data["actual_" + key] = np.asarray(value)
    for key, value in settings.items():
        data["set_" + key] = np.asarray(value)
    try:
        directory = _case_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{op}-{_digest(data)[:16]}.npz")
        np.savez(path, **data)
    except OSError:
        return ""
    return path


def _from_saved(a):
    if a.dtype.kind == "U":
        return str(a)
    if a.ndim == 0:
        return a.item()
    if a.dtype.kind in "iu" and a.ndim == 1:
        return tuple(int(v) for v in a)
    return a


def load_case(path):
    """Load a case saved by a failing :func:`assert_matches_oracle`: ``(actual, op, kwargs)``.

    ``assert_matches_oracle(actual, op, **kwargs)`` re-runs the comparison exactly (the
    oracle's arguments, your values and the tolerances are all in the ``.npz``; no pickles).
    """
    with np.load(path, allow_pickle=False) as f:
        op = str(f["__op__"])
        kwargs = {k[4:]: _from_saved(f[k]) for k in f.files if k.startswith("arg_")}
        kwargs.update({k[4:]: _from_saved(f[k]) for k in f.files if k.startswith("set_")})
        actual = {k[7:]: np.array(f[k]) for k in f.files if k.startswith("actual_")}
    return actual, op, kwargs


_CACHE = {}  # the last few expectations: comparing several implementations on one case
_CACHE_SIZE = 4


def _digest(arguments):
    h = hashlib.blake2b(digest_size=16)
    for key, value in sorted(arguments.items()):
        h.update(key.encode())
        if isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype")):
            a = np.ascontiguousarray(value)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _expectation(name, expect, oracle, arguments, ctx):
    """The oracle's fields for these arguments, cached by a digest of their bytes."""
    try:
        key = (name, _digest(arguments), ctx)
    except (TypeError, ValueError):  # an argument that cannot be hashed: no caching
        return expect(oracle, arguments, ctx)
    if key not in _CACHE:
        fields = expect(oracle, arguments, ctx)
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = fields
    return _CACHE[key]


def _nonneg(value, name):
    value = float(value)
    if not (np.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def assert_matches_oracle(actual, op, *args, rtol=None, atol=None, tol=None, forgive_ties=False,
                          max_rows=8, **kwargs):
    r"""Assert that ``actual`` equals the oracle's ``op(*args, **kwargs)`` up to rounding.

    Parameters
    ----------
    actual : array_like, torch tensor, tuple, dict or callable
        Your implementation's result: an array (NumPy, torch -- detached and moved to the CPU
        automatically -- CuPy, numba.cuda) for a forward op; for a ``*_grad`` op a tuple in the
        oracle's order (``(dx, dalpha, dbeta)``, ``dw``, ``(dx, dw, dalpha, dbeta)``) or a dict
        with any subset of those names (``None`` entries are skipped). Parameter gradients may
        carry extra length-1 axes (``(1, C, 1, 1)`` for ``(C,)``). If callable, it is called
        as ``actual(*args, **kwargs)``.
    op : str or function
        ``"binarize_activations"``, ``"binarize_weights"``, ``"adabin_conv2d"``, ``"conv2d"``,
        their ``"*_grad"`` versions (not ``conv2d``), or the oracle function itself.
    *args, **kwargs
        Exactly the oracle's arguments (torch tensors are accepted and converted).
    rtol, atol : float, optional
        An element passes when ``|actual - expected| <= atol + rtol * scale``, where ``scale``
        is the sum of the absolute values of the terms that make up the expected value (for a
        convolution output ``conv2d(|x_b|, |W_b|)``; for gradients propagated likewise). This
        is a forward-error bound, so cancellation never makes it fail spuriously. Default
        ``rtol`` from the dtype of ``actual``: float64 1e-9, float32 1e-5, float16 1e-2,
        bfloat16 5e-2; default ``atol`` 0.
    tol : float, optional
        Flip-risk tolerance (see :func:`flip_risk`); default by dtype like ``rtol``.
    forgive_ties : bool
        Also forgive mismatches caused by exact ties (``x == beta``, ``W == beta_w``), where
        the convention decides the sign. Keep False to test the convention; set True for the
        bit-packed path (it maps 0 to +1 in both conventions).
    max_rows : int
        Rows of the failure table.

    Mismatches beyond the rounding bound are **forgiven** only up to what flipping the
    flip-risk inputs an element reads can change it (docs/testing.md derives each bound): a
    risky activation moves its binarized value by at most ``2|alpha|`` and a risky weight by
    ``2 alpha_w``; a conv output reads the taps of its receptive field (stride, padding,
    dilation and groups honoured) and the weights of its filter; ``dalpha`` reads every sign
    of its reduction (each flip moves it by ``2|dL/dxb|`` there, each risky weight by its
    exact first-order effect); ``dW`` reads the signs of its channel through ``alpha_w`` and
    ``beta_w``. ``dbeta`` and the ``dx`` of a binarization never depend on a sign. The ``dw``
    of a constant filter is allowed the difference between the spec's ``sum(g)/n`` and what
    an implementation whose float mean of equal weights is inexact computes (``u = +-1``).
    Non-finite values in ``actual`` are never forgiven.

    Returns the :class:`OracleReport` (``.forgiven`` tells how many were forgiven). Raises
    ``AssertionError`` whose message gives, per output, the number of mismatches, how many were
    forgiven, the worst unforgiven index with its value and the oracle's (full precision), notes
    when it reads an exact tie (``x == beta at ...; the paper convention maps ties to +1``) or
    zero padding (``border output, reads zero padding``), a short table, the case's arguments
    and the path of an ``.npz`` that :func:`load_case` re-runs (directory
    ``$ADABIN_NP_CASE_DIR``, default ``<tempdir>/adabin_np_cases``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(4, 3, 3, 3))
    >>> y = my_conv(x, w, 0.8, 0.1, stride=2, padding=1)             # doctest: +SKIP
    >>> assert_matches_oracle(y, "adabin_conv2d", x, w, 0.8, 0.1,
    ...                       stride=2, padding=1)                      # doctest: +SKIP
    >>> grads = my_conv_backward(x, w, 0.8, 0.1, gy)                  # doctest: +SKIP
    >>> assert_matches_oracle({"dx": grads[0], "dw": grads[1]}, "adabin_conv2d_grad",
    ...                       x, w, 0.8, 0.1, gy)                     # doctest: +SKIP
    """
    report = compare_with_oracle(actual, op, *args, rtol=rtol, atol=atol, tol=tol,
                                 forgive_ties=forgive_ties, max_rows=max_rows, _save=True,
                                 **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report


def assert_grads_match(grads, op, *args, **kwargs):
    """:func:`assert_matches_oracle` for the gradient of ``op`` (``"_grad"`` appended if missing).

    >>> assert_grads_match((dx, dalpha, dbeta), "binarize_activations",
    ...                    x, alpha, beta, g)                               # doctest: +SKIP
    """
    name = op if isinstance(op, str) else _resolve_op(op)
    if not name.endswith("_grad"):
        name += "_grad"
    return assert_matches_oracle(grads, name, *args, **kwargs)
