"""Hypothesis strategies for AdaBin test cases (hypothesis is imported only when one is built)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..validation import CONVENTIONS, check_convention, conv_params

def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError("adabin_np.testing strategies need hypothesis "
                          "(pip install 'adabin-np[test]')") from exc
    return st


class ConvShape(NamedTuple):
    """A valid AdaBin conv geometry drawn by :func:`conv_shapes`."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: int | tuple
    padding: int | tuple
    dilation: int | tuple
    groups: int

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self):
        return (self.o, self.c // self.groups, self.kh, self.kw)

    @property
    def kwargs(self):
        """``dict(stride=..., padding=..., dilation=..., groups=...)``."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    @property
    def out_shape(self):
        p = conv_params(self.x_shape, self.w_shape, **self.kwargs)
        return (self.n, self.o, p.out_h, p.out_w)


def _maybe_pair(a, b):
    return a if a == b else (a, b)


def conv_shapes(*, max_batch=2, max_channels_per_group=4, max_out_per_group=3, max_groups=3,
                max_size=8, max_kernel=4, max_stride=3, max_padding=2, max_dilation=2,
                min_filter_size=1):
    """Strategy for valid conv geometries, as :class:`ConvShape`.

    Channels are multiples of ``groups``; every filter has at least ``min_filter_size``
    weights (``(C/groups)*kh*kw``; a one-weight filter is always constant);
    ``stride``/``padding``/``dilation`` come as ints or (h, w) pairs; the input is never
    smaller than the dilated kernel minus the padding (it may be smaller than the kernel itself
    when padded, and the padding may exceed the kernel: some outputs then read padding only).
    ``shape.x_shape``, ``shape.w_shape``, ``shape.kwargs`` and ``shape.out_shape`` feed the
    oracle directly.
    """
    st = _st()

    @st.composite
    def draw_shape(draw):
        groups = draw(st.integers(1, max_groups))
        cg = draw(st.integers(1, max_channels_per_group))
        og = draw(st.integers(1, max_out_per_group))
        kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
        while cg * kh * kw < min_filter_size:
            kw += 1
        sh, sw = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
        dh, dw = draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation))
        ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
        h_lo = max(1, dh * (kh - 1) + 1 - 2 * ph)
        w_lo = max(1, dw * (kw - 1) + 1 - 2 * pw)
        h = draw(st.integers(h_lo, max(h_lo, max_size)))
        w = draw(st.integers(w_lo, max(w_lo, max_size)))
        n = draw(st.integers(1, max_batch))
        return ConvShape(n, cg * groups, h, w, og * groups, kh, kw, _maybe_pair(sh, sw),
                         _maybe_pair(ph, pw), _maybe_pair(dh, dw), groups)

    return draw_shape()


REALISTIC_WEIGHTS = ("gaussian", "laplace", "uniform", "trained")
DEGENERATE_WEIGHTS = ("constant", "zero", "one_hot", "ties", "huge", "tiny")
DTYPES = ("float64", "float32", "float16")

# magnitudes of the "huge"/"tiny" kinds per dtype (float16 overflows past 65504)
_EXTREME_EXPONENTS = {"float64": ((6, 12, 30), (-6, -12, -30)),
                      "float32": ((6, 12, 30), (-6, -12, -30)),
                      "float16": ((2, 3, 4), (-2, -3, -4))}


def _shape_strategy(st, shape):
    if isinstance(shape, tuple):
        return st.just(tuple(int(s) for s in shape))
    return shape


def _check_dtype(dtype):
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype(name)


def _hnp():
    _st()
    from hypothesis.extra import numpy as hnp
    return hnp


def _unit_arrays(st, shape):
    """Strategy for float64 arrays of ``shape`` in [-1, 1], every element drawn by hypothesis
    (so a failing case shrinks element by element towards 0); magnitudes below 2**-20 are 0."""
    return _hnp().arrays(np.float64, shape, fill=st.nothing(),
                         elements=st.floats(-1.0, 1.0, allow_subnormal=False).map(_flush))


def _flush(v):
    """|v| < 2**-20 -> 0: no values that float16/float32 copies would underflow."""
    return 0.0 if abs(v) < 2.0 ** -20 else v


def _tail(z, scale, kind):
    """Map z in [-1, 1] onto a distribution's tail shape (0 stays 0, sign kept)."""
    a = np.abs(z)
    if kind == "gaussian":  # sqrt(-2 log(1 - |z|)): a Gaussian-like tail, max ~3.4 scale
        m = np.sqrt(-2.0 * np.log1p(-0.997 * a))
    elif kind == "laplace":  # -log(1 - |z|): exponential tail, max ~6.9 scale
        m = -np.log1p(-0.999 * a)
    else:
        m = a
    return np.sign(z) * m * scale


def _ramp(o, inner):
    """0.1 ((j + 1)/n)^2 along each filter: realistic kinds never shrink to a constant filter
    (nor to a weight exactly at its channel mean)."""
    n = int(np.prod(inner))
    r = 0.1 * ((np.arange(n) + 1.0) / n) ** 2
    return np.broadcast_to(r, (o, n)).reshape((o,) + tuple(inner))


def _as_dtype(a, dtype):
    """``a`` rounded to ``dtype``, returned as a contiguous array of that dtype."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(np.asarray(a, dtype=np.float64).astype(dtype))


def weights(shape, kind=None, *, dtype=np.float64):
    """Strategy for weight arrays of ``shape`` (a tuple or a strategy of tuples).

    Every value is drawn by hypothesis (``hypothesis.extra.numpy``), so a failing case
    shrinks to small shapes *and* simple values. ``kind`` (a name, a list of names,
    ``"realistic"``, ``"degenerate"`` or None for all): realistic ``"gaussian"``,
    ``"laplace"``, ``"uniform"`` (scale ~0.1), ``"trained"`` (per-channel scales over three
    decades -- one for float16 --, offsets, heavy tails); degenerate ``"constant"`` (constant filters next to
    ordinary ones), ``"zero"``, ``"one_hot"`` (one non-zero per filter), ``"ties"`` (dyadic
    weights exactly at the channel mean, exact in every dtype), ``"huge"``/``"tiny"``
    (scales 1e6..1e30 / 1e-6..1e-30; 1e2..1e4 / 1e-2..1e-4 for float16). ``dtype``
    (``float64``, ``float32`` or ``float16``): the array's dtype -- values are exactly
    representable, so your low-precision kernel and the float64 oracle see the same input.
    """
    st = _st()
    dtype = _check_dtype(dtype)
    if kind is None:
        kinds = REALISTIC_WEIGHTS + DEGENERATE_WEIGHTS
    elif kind == "realistic":
        kinds = REALISTIC_WEIGHTS
    elif kind == "degenerate":
        kinds = DEGENERATE_WEIGHTS
    elif isinstance(kind, str):
        kinds = (kind,)
    else:
        kinds = tuple(kind)
    for k in kinds:
        if k not in REALISTIC_WEIGHTS + DEGENERATE_WEIGHTS:
            raise ValueError(f"unknown weight kind {k!r}")
    hnp = _hnp()

    @st.composite
    def draw_weights(draw):
        shp = draw(_shape_strategy(st, shape))
        if len(shp) < 2:
            raise ValueError(f"weights need >= 2 dimensions (O, ...), got {shp}")
        k = draw(st.sampled_from(kinds))
        o, inner = shp[0], shp[1:]
        n = int(np.prod(inner))
        chan = (o,) + (1,) * len(inner)
        if k in ("gaussian", "laplace", "uniform"):
            scale = {"gaussian": 0.1, "laplace": 0.05, "uniform": 0.2}[k]
            w = _tail(draw(_unit_arrays(st, shp)), scale, k) + scale * _ramp(o, inner)
        elif k == "trained":
            # per-channel scales over three decades (one for float16, whose squares of 1e-3
            # weights underflow to subnormals), small offsets, heavy (Laplace) tails
            decades = 1.0 if dtype == "float16" else 3.0
            scale = 10.0 ** (-decades * np.abs(draw(_unit_arrays(st, (o,)))))
            shift = 0.3 * draw(_unit_arrays(st, (o,)))
            w = (_tail(draw(_unit_arrays(st, shp)), 1.0, "laplace") + _ramp(o, inner)
                 + shift.reshape(chan)) * scale.reshape(chan)
        elif k == "constant":
            value = draw(_unit_arrays(st, (o,))).reshape(chan)
            mixed = draw(hnp.arrays(bool, (o,), elements=st.booleans(), fill=st.nothing()))
            w = np.where(mixed.reshape(chan), _tail(draw(_unit_arrays(st, shp)), 1.0,
                                                    "gaussian"), value)
        elif k == "zero":
            w = np.zeros(shp)
            if o > 1 and draw(st.booleans()):
                w[1:] = _tail(draw(_unit_arrays(st, (o - 1,) + inner)), 1.0, "gaussian")
        elif k == "one_hot":
            pos = draw(hnp.arrays(np.int64, (o,), elements=st.integers(0, n - 1),
                                  fill=st.nothing()))
            val = draw(_unit_arrays(st, (o,))) + 2.0
            w = np.zeros((o, n))
            w[np.arange(o), pos] = val
            w = w.reshape(shp)
        elif k == "ties":
            # dyadic weights whose mean is exact and hit by weight 1 exactly
            kk = draw(hnp.arrays(np.int64, (o, n), elements=st.integers(-3, 3),
                                 fill=st.nothing())).astype(np.float64)
            if n > 1:
                kk[:, 1] = 0.0
            kk[:, 0] = -(kk.sum(axis=1) - kk[:, 0])  # every row sums to exactly 0
            mean = draw(hnp.arrays(np.int64, (o, 1), elements=st.integers(-8, 8),
                                   fill=st.nothing())) * 0.125
            w = (mean + kk * 2.0 ** -draw(st.integers(2, 5))).reshape(shp)
        else:  # huge / tiny
            exps = _EXTREME_EXPONENTS[dtype.name][0 if k == "huge" else 1]
            scale = 10.0 ** draw(st.sampled_from(exps))
            w = (_tail(draw(_unit_arrays(st, shp)), 1.0, "gaussian")
                 + draw(st.floats(-1.0, 1.0))) * scale
        return _as_dtype(w, dtype)

    return draw_weights()


def _channel_view(value, ndim):
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return value
    return value.reshape((1, -1) + (1,) * (ndim - 2))


_SPECIALS = ("tie", "ulp_up", "ulp_down", "kink_up", "kink_down")


def activations(shape, alpha=1.0, beta=0.0, *, kind=None, at_threshold=True,
                dtype=np.float64):
    """Strategy for activations around the binary set ``(alpha, beta)``.

    ``x = beta + alpha * v`` with ``v`` drawn by hypothesis (``hypothesis.extra.numpy``,
    shrinking towards ``v = 0``) and shaped by ``kind`` (``"gaussian"``, ``"laplace"``,
    ``"uniform"`` on [-3, 3], ``"relu"`` -- post-activation, mostly >= 0 -- or None for
    any); ``alpha``/``beta`` are scalars or ``(C,)`` arrays along axis 1. With
    ``at_threshold`` a drawn list of elements (shrinking to none) is set exactly to ``beta``
    (exact ties), one ulp of ``dtype`` either side of it (flip risk), or to ``beta +- alpha``
    (the kinks of the Bi-Real estimator). ``dtype`` (``float64``, ``float32``, ``float16``):
    the array's dtype; pass ``alpha``/``beta`` representable in it (:func:`binary_sets` with
    the same ``dtype`` draws such sets) for exact ties in that precision.
    """
    st = _st()
    dtype = _check_dtype(dtype)
    kinds = ("gaussian", "laplace", "uniform", "relu") if kind is None else (kind,)

    @st.composite
    def draw_x(draw):
        shp = draw(_shape_strategy(st, shape))
        a = _channel_view(alpha, len(shp))
        b = _channel_view(beta, len(shp))
        k = draw(st.sampled_from(kinds))
        # z = 0 (where shrinking goes) maps to v = 0.37: a plain +1, not a tie
        z = draw(_unit_arrays(st, shp))
        shift = 0.37 * (1.0 - np.abs(z))
        if k == "gaussian":
            v = _tail(z, 1.0, "gaussian") + shift
        elif k == "laplace":
            v = _tail(z, 1.0, "laplace") + shift
        elif k == "uniform":
            v = 3.0 * z + shift
        elif k == "relu":
            v = np.maximum(0.5 + _tail(z, 1.0, "gaussian"), -0.1)
        else:
            raise ValueError(f"unknown activation kind {k!r}")
        x = _as_dtype(np.broadcast_to(b + a * v, shp), dtype)
        if at_threshold and x.size:
            size = x.size
            picks = draw(st.lists(st.tuples(st.integers(0, size - 1),
                                            st.sampled_from(_SPECIALS)),
                                  max_size=max(1, int(0.3 * size))))
            bb = _as_dtype(np.broadcast_to(b, shp), dtype).reshape(-1)
            aa = np.broadcast_to(a, shp).reshape(-1)
            flat = x.reshape(-1)
            for i, what in picks:
                if what == "tie":
                    flat[i] = bb[i]
                elif what == "ulp_up":
                    flat[i] = np.nextafter(bb[i], dtype.type(np.inf))
                elif what == "ulp_down":
                    flat[i] = np.nextafter(bb[i], dtype.type(-np.inf))
                else:
                    flat[i] = bb[i] + (1.0 if what == "kink_up" else -1.0) * aa[i]
            x = flat.reshape(shp)
        return np.ascontiguousarray(x)

    return draw_x()


def binary_sets(channels=None, *, negative_alpha=False, per_channel=None, max_abs_alpha=4.0,
                max_abs_beta=2.0, dtype=np.float64):
    """Strategy for activation binary sets ``(alpha, beta)``, ``alpha != 0``.

    ``channels=None`` gives Python floats. With ``channels=C`` each of ``alpha`` and ``beta`` is
    a float or a float64 ``(C,)`` array (``per_channel=True``/``False`` forces arrays/floats).
    ``|alpha|`` is log-uniform in ``[0.05, max_abs_alpha]`` or exactly 1 or 0.5; negative
    ``alpha`` (levels swap) only with ``negative_alpha=True``. ``beta`` is uniform in
    ``[-max_abs_beta, max_abs_beta]`` or exactly 0. Values are drawn by hypothesis (they
    shrink to ``alpha = 1``, ``beta = 0``) and are representable in ``dtype``.
    """
    st = _st()
    dtype = _check_dtype(dtype)
    lo = float(np.log10(0.05))
    hi = float(np.log10(max_abs_alpha))

    def rounded(value):
        return float(np.asarray(value).astype(dtype))

    one_alpha = st.builds(
        lambda mag, sign: rounded(sign * mag),
        st.one_of(st.sampled_from([1.0, 0.5]), st.floats(lo, hi).map(lambda e: 10.0 ** e)),
        st.sampled_from([1.0, -1.0]) if negative_alpha else st.just(1.0))
    one_beta = st.one_of(st.just(0.0),
                         st.floats(-max_abs_beta, max_abs_beta).map(rounded))

    @st.composite
    def draw_set(draw):
        if channels is None:
            return draw(one_alpha), draw(one_beta)
        out = []
        for gen in (one_alpha, one_beta):
            arr = per_channel if per_channel is not None else draw(st.booleans())
            out.append(np.array(draw(st.lists(gen, min_size=channels, max_size=channels)))
                       if arr else draw(gen))
        return tuple(out)

    return draw_set()


def conventions():
    """Strategy for ``"paper"`` and ``"official"``."""
    return _st().sampled_from(CONVENTIONS)


class ConvCase(NamedTuple):
    """A complete ``adabin_conv2d`` case drawn by :func:`conv_cases`."""

    x: np.ndarray
    w: np.ndarray
    alpha: float | np.ndarray
    beta: float | np.ndarray
    grad_y: np.ndarray
    shape: ConvShape
    convention: str

    @property
    def args(self):
        """``(x, w, alpha, beta)``."""
        return (self.x, self.w, self.alpha, self.beta)

    @property
    def grad_args(self):
        """``(x, w, alpha, beta, grad_y)`` for ``adabin_conv2d_grad``."""
        return (self.x, self.w, self.alpha, self.beta, self.grad_y)

    @property
    def kwargs(self):
        """Geometry and ``convention`` keywords."""
        return dict(self.shape.kwargs, convention=self.convention)


def conv_cases(*, convention=None, weight_kind="realistic", activation_kind=None,
               at_threshold=True, negative_alpha=False, per_channel=None, dtype=np.float64,
               **shape_options):
    """Strategy for complete AdaBin conv cases, as :class:`ConvCase`.

    ``y = f(*case.args, **case.kwargs)`` runs ``adabin_conv2d`` or your implementation;
    ``case.grad_args`` adds an upstream gradient for ``adabin_conv2d_grad``. ``shape_options``
    go to :func:`conv_shapes` (``min_filter_size`` defaults to 2 for realistic weights, so no
    filter is constant); ``weight_kind`` to :func:`weights` (default realistic only -- pass
    None to add the degenerate kinds); the rest to :func:`activations` and
    :func:`binary_sets`. ``convention=None`` draws both. ``dtype`` (``float64``, ``float32``,
    ``float16``): every array of the case (and ``alpha``, ``beta``) is representable in it and
    arrays have that dtype. All values are drawn by hypothesis, so failures shrink in value.
    """
    st = _st()
    shape_options.setdefault("min_filter_size", 2 if weight_kind == "realistic" else 1)
    conv_strategy = conventions() if convention is None else st.just(check_convention(convention))

    @st.composite
    def draw_case(draw):
        shape = draw(conv_shapes(**shape_options))
        alpha, beta = draw(binary_sets(shape.c, negative_alpha=negative_alpha,
                                       per_channel=per_channel, dtype=dtype))
        x = draw(activations(shape.x_shape, alpha, beta, kind=activation_kind,
                             at_threshold=at_threshold, dtype=dtype))
        w = draw(weights(shape.w_shape, kind=weight_kind, dtype=dtype))
        gy = _as_dtype(_tail(draw(_unit_arrays(st, shape.out_shape)), 1.0, "gaussian"), dtype)
        return ConvCase(x, w, alpha, beta, gy, shape, draw(conv_strategy))

    return draw_case()
