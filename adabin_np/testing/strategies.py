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


def _shape_strategy(st, shape):
    if isinstance(shape, tuple):
        return st.just(tuple(int(s) for s in shape))
    return shape


def _weights_sample(rng, shape, kind):
    o = shape[0]
    inner = shape[1:]
    n = int(np.prod(inner))
    if kind == "gaussian":
        w = rng.normal(0.0, 0.1, size=shape)
    elif kind == "laplace":
        w = rng.laplace(0.0, 0.05, size=shape)
    elif kind == "uniform":
        w = rng.uniform(-0.2, 0.2, size=shape)
    elif kind == "trained":
        # per-channel scales spread over decades, small channel offsets, heavy tails
        scale = 10.0 ** rng.uniform(-3, 0, size=(o,) + (1,) * len(inner))
        shift = rng.normal(0.0, 0.3, size=(o,) + (1,) * len(inner)) * scale
        w = np.where(rng.random(shape) < 0.9, rng.normal(size=shape),
                     rng.laplace(0.0, 3.0, size=shape)) * scale + shift
    elif kind == "constant":
        value = rng.normal(size=(o,) + (1,) * len(inner))
        w = np.broadcast_to(value, shape).copy()
        mixed = rng.random(o) < 0.5  # some ordinary channels next to the constant ones
        w[mixed] = rng.normal(size=(int(mixed.sum()),) + inner)
    elif kind == "zero":
        w = np.zeros(shape)
        if o > 1 and rng.random() < 0.5:
            w[1:] = rng.normal(size=(o - 1,) + inner)
    elif kind == "one_hot":
        w = np.zeros((o, n))
        w[np.arange(o), rng.integers(0, n, size=o)] = rng.normal(size=o) + 2.0
        w = w.reshape(shape)
    elif kind == "ties":
        # dyadic weights whose mean is exact (in float32 too) and hit by weight 1 exactly
        k = rng.integers(-3, 4, size=(o, n)).astype(np.float64)
        if n > 1:
            k[:, 1] = 0.0
        k[:, 0] = -(k.sum(axis=1) - k[:, 0])  # every row sums to exactly 0
        mean = rng.integers(-8, 9, size=(o, 1)) * 0.125
        w = (mean + k * 2.0 ** -int(rng.integers(2, 6))).reshape(shape)
    elif kind in ("huge", "tiny"):
        exps = (6, 12, 30) if kind == "huge" else (-6, -12, -30)
        scale = 10.0 ** exps[int(rng.integers(0, 3))]
        w = (rng.normal(size=shape) + rng.normal()) * scale
    else:
        raise ValueError(f"unknown weight kind {kind!r}")
    return np.ascontiguousarray(w, dtype=np.float64)


def weights(shape, kind=None):
    """Strategy for float64 weight arrays of ``shape`` (a tuple or a strategy of tuples).

    ``kind`` (a name, a list of names, ``"realistic"``, ``"degenerate"`` or None for all):
    realistic ``"gaussian"``, ``"laplace"``, ``"uniform"``, ``"trained"`` (per-channel scales
    over three decades, offsets, heavy tails); degenerate ``"constant"`` (constant filters
    next to ordinary ones), ``"zero"``, ``"one_hot"`` (one non-zero per filter), ``"ties"``
    (dyadic weights exactly at the channel mean, exact in float32 too), ``"huge"``/``"tiny"``
    (scales 1e6..1e30 / 1e-6..1e-30 -- float32 implementations over- or underflow the
    variance at the extremes). Values come from a NumPy generator seeded by hypothesis.
    """
    st = _st()
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

    @st.composite
    def draw_weights(draw):
        shp = draw(_shape_strategy(st, shape))
        if len(shp) < 2:
            raise ValueError(f"weights need >= 2 dimensions (O, ...), got {shp}")
        k = draw(st.sampled_from(kinds))
        seed = draw(st.integers(0, 2**32 - 1))
        return _weights_sample(np.random.default_rng(seed), shp, k)

    return draw_weights()


def _channel_view(value, ndim):
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return value
    return value.reshape((1, -1) + (1,) * (ndim - 2))


def activations(shape, alpha=1.0, beta=0.0, *, kind=None, at_threshold=True):
    """Strategy for float64 activations around the binary set ``(alpha, beta)``.

    ``x = beta + alpha * v`` with ``v`` from ``kind`` (``"gaussian"``, ``"laplace"``,
    ``"uniform"`` on [-3, 3], ``"relu"`` -- post-activation, mostly >= 0 -- or None for any);
    ``alpha``/``beta`` are scalars or ``(C,)`` arrays along axis 1. With ``at_threshold`` a
    fraction of the elements is set exactly to ``beta`` (exact ties), one float64 ulp either
    side of it (flip risk), and to ``beta +- alpha`` (the kinks of the Bi-Real estimator).
    """
    st = _st()
    kinds = ("gaussian", "laplace", "uniform", "relu") if kind is None else (kind,)

    @st.composite
    def draw_x(draw):
        shp = draw(_shape_strategy(st, shape))
        a = _channel_view(alpha, len(shp))
        b = _channel_view(beta, len(shp))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        k = draw(st.sampled_from(kinds))
        if k == "gaussian":
            v = rng.normal(0.0, 1.5, size=shp)
        elif k == "laplace":
            v = rng.laplace(0.0, 1.0, size=shp)
        elif k == "uniform":
            v = rng.uniform(-3.0, 3.0, size=shp)
        elif k == "relu":
            v = np.maximum(rng.normal(0.5, 1.0, size=shp), -0.1)
        else:
            raise ValueError(f"unknown activation kind {k!r}")
        x = np.broadcast_to(b + a * v, shp).copy()
        if at_threshold:
            frac = draw(st.sampled_from((0.0, 0.05, 0.3)))
            special = rng.random(shp) < frac
            choice = rng.integers(0, 5, size=shp)
            bb = np.broadcast_to(b, shp)
            aa = np.broadcast_to(a, shp)
            table = [bb, np.nextafter(bb, np.inf), np.nextafter(bb, -np.inf), bb + aa, bb - aa]
            picked = np.choose(choice, table)
            x = np.where(special, picked, x)
        return np.ascontiguousarray(x)

    return draw_x()


def binary_sets(channels=None, *, negative_alpha=False, per_channel=None, max_abs_alpha=4.0,
                max_abs_beta=2.0):
    """Strategy for activation binary sets ``(alpha, beta)``, ``alpha != 0``.

    ``channels=None`` gives Python floats. With ``channels=C`` each of ``alpha`` and ``beta`` is
    a float or a float64 ``(C,)`` array (``per_channel=True``/``False`` forces arrays/floats).
    ``|alpha|`` is log-uniform in ``[0.05, max_abs_alpha]`` or exactly 1 or 0.5; negative
    ``alpha`` (levels swap) only with ``negative_alpha=True``. ``beta`` is uniform in
    ``[-max_abs_beta, max_abs_beta]`` or exactly 0.
    """
    st = _st()
    lo = np.log10(0.05)
    hi = np.log10(max_abs_alpha)

    def one_alpha(rng):
        mag = rng.choice([1.0, 0.5, 10.0 ** rng.uniform(lo, hi), 10.0 ** rng.uniform(lo, hi)])
        sign = rng.choice([-1.0, 1.0]) if negative_alpha else 1.0
        return float(sign * mag)

    def one_beta(rng):
        return float(rng.choice([0.0, rng.uniform(-max_abs_beta, max_abs_beta),
                                 rng.uniform(-max_abs_beta, max_abs_beta)]))

    @st.composite
    def draw_set(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if channels is None:
            return one_alpha(rng), one_beta(rng)
        out = []
        for gen in (one_alpha, one_beta):
            arr = per_channel if per_channel is not None else draw(st.booleans())
            out.append(np.array([gen(rng) for _ in range(channels)]) if arr else gen(rng))
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
               at_threshold=True, negative_alpha=False, per_channel=None, **shape_options):
    """Strategy for complete AdaBin conv cases, as :class:`ConvCase`.

    ``y = f(*case.args, **case.kwargs)`` runs ``adabin_conv2d`` or your implementation;
    ``case.grad_args`` adds an upstream gradient for ``adabin_conv2d_grad``. ``shape_options``
    go to :func:`conv_shapes` (``min_filter_size`` defaults to 2 for realistic weights, so no
    filter is constant); ``weight_kind`` to :func:`weights` (default realistic only -- pass
    None to add the degenerate kinds); the rest to :func:`activations` and
    :func:`binary_sets`. ``convention=None`` draws both.
    """
    st = _st()
    shape_options.setdefault("min_filter_size", 2 if weight_kind == "realistic" else 1)
    conv_strategy = conventions() if convention is None else st.just(check_convention(convention))

    @st.composite
    def draw_case(draw):
        shape = draw(conv_shapes(**shape_options))
        alpha, beta = draw(binary_sets(shape.c, negative_alpha=negative_alpha,
                                       per_channel=per_channel))
        x = draw(activations(shape.x_shape, alpha, beta, kind=activation_kind,
                             at_threshold=at_threshold))
        w = draw(weights(shape.w_shape, kind=weight_kind))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        gy = rng.normal(size=shape.out_shape)
        return ConvCase(x, w, alpha, beta, gy, shape, draw(conv_strategy))

    return draw_case()
