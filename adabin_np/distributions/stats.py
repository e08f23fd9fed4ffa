r"""Mergeable (streaming) statistics of one binary layer's activations.

Every accumulator here has ``update(chunk)`` and ``merge(other)`` with the property that
accumulating any split of the data, in any order and merge tree, gives the statistics of the
whole data: integers exactly, floats up to rounding (``merge`` is associative and commutative
up to rounding). Peak memory is independent of the number of samples.

Counts (exact integers)
    elements, flip risk :math:`|x - \beta| \le tol(|x| + |\beta| + |\alpha|)` (the mask of
    :func:`adabin_np.testing.flip_risk`), exact ties ``x == beta`` (``v == 0``), level
    occupancy (``b1``: ``v < 0``; ``b2``: ``v > 0``, plus ``v == 0`` in the paper convention;
    the official convention maps ties to the level 0), the flip-risk curve
    ``#{r <= t}`` over :data:`FLIP_RISK_LADDER` with
    :math:`r = |x - \beta|/(|x| + |\beta| + |\alpha|)`, conv outputs reading an element at risk,
    histogram counts.
Moments
    :class:`Moments` keeps ``n``, the mean and the central sums :math:`M_p = \sum (x - \bar x)^p`
    (``p = 2, 3, 4``) per chunk (two-pass) and merges them with the pairwise formulas of Chan,
    Golub & LeVeque (1979) extended by Pébay (2008), with :math:`\delta = \bar x_b - \bar x_a`,
    :math:`n = n_a + n_b`:

    .. math::
        \bar x = \bar x_a + \delta n_b/n,\quad
        M_2 = M_{2a} + M_{2b} + \delta^2 n_a n_b/n,

        M_3 = M_{3a} + M_{3b} + \delta^3 n_a n_b (n_a - n_b)/n^2
              + 3\delta (n_a M_{2b} - n_b M_{2a})/n,

        M_4 = M_{4a} + M_{4b} + \delta^4 n_a n_b (n_a^2 - n_a n_b + n_b^2)/n^3
              + 6\delta^2 (n_a^2 M_{2b} + n_b^2 M_{2a})/n^2 + 4\delta (n_a M_{3b} - n_b M_{3a})/n.

    std = :math:`\sqrt{M_2/n}` (population), skew = :math:`\sqrt n M_3 / M_2^{3/2}`, excess
    kurtosis = :math:`n M_4 / M_2^2 - 3`. A sample with std <= 1e-12 |mean| is constant up to
    the rounding of its mean (any split changes such a std): it reports std, skew and excess
    kurtosis 0. :class:`ChannelMoments` does ``n``, mean, ``M_2`` per
    channel.
Histograms
    :class:`Histogram` has bin edges fixed before any data is seen, from the layer's binary set
    (:func:`activation_edges`), and counts values below the first / above the last edge.
Equalization sample
    :class:`BottomK` keeps, of all values, the ``k`` with the smallest keys
    ``splitmix64(global_index XOR salt)``; splitmix64 is a bijection of uint64, so keys are
    distinct and the kept set (sorted by key) is a function of the data and ``salt`` only: a
    seeded uniform sample without replacement that any split of the data reproduces exactly.
"""

from __future__ import annotations

import math

import numpy as np

from .. import testing as _testing
from ..conv import conv2d
from .records import FLIP_RISK_LADDER

__all__ = ["splitmix64", "Moments", "ChannelMoments", "Histogram", "BottomK", "activation_edges",
           "ActivationStats", "LayerSpec", "outputs_at_risk_count", "V_RANGE", "HIST_BINS"]

#: Activation histograms cover v = (x - beta)/alpha in [-V_RANGE, V_RANGE] (and the levels).
V_RANGE = 8.0
#: Relative std below which a sample counts as constant (rounding level of its mean).
CONSTANT_RTOL = 1e-12
#: Number of histogram bins.
HIST_BINS = 160

_NO_SCALE = -1100  # below every float64 exponent (the smallest subnormal is 2**-1074)


def splitmix64(x):
    """splitmix64 finaliser of uint64 ``x`` (elementwise, wrapping): a bijection of uint64."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def salt(*ints):
    """A uint64 salt from non-negative integers (chained splitmix64)."""
    s = np.uint64(0)
    for i in ints:
        with np.errstate(over="ignore"):
            s = splitmix64(np.uint64(s) ^ np.uint64(int(i) & 0xFFFFFFFFFFFFFFFF))
    return np.uint64(s)


# ----------------------------------------------------------------------------------------------
# moments
# ----------------------------------------------------------------------------------------------


class Moments:
    """Pooled ``n``, mean and central sums ``M2, M3, M4`` (merge: Chan / Pébay, see module).

    Stored for the data scaled by ``2**-e`` (``e`` the binary exponent of the largest
    magnitude seen), so that ``M4`` neither overflows for huge values nor underflows for tiny
    ones; the scaling is exact (powers of two) and the reported statistics are unscaled.
    """

    __slots__ = ("n", "mean", "m2", "m3", "m4", "e")

    def __init__(self, n=0, mean=0.0, m2=0.0, m3=0.0, m4=0.0, e=-1100):
        self.n, self.mean, self.m2, self.m3, self.m4 = int(n), float(mean), float(m2), \
            float(m3), float(m4)
        self.e = int(e)

    @classmethod
    def of(cls, x):
        """Moments of the flat sample ``x`` (two passes, float64)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return cls()
        top = float(np.max(np.abs(x)))
        e = math.frexp(top)[1] if top > 0 else _NO_SCALE  # zeros: any other scale wins
        y = np.ldexp(x, -e)
        mean = float(np.mean(y))
        d = y - mean
        d2 = d * d
        return cls(x.size, mean, float(np.sum(d2)), float(np.sum(d2 * d)), float(np.sum(d2 * d2)),
                   e)

    def _at(self, e):
        """The same moments stored at scale exponent ``e >= self.e``."""
        k = self.e - e
        return Moments(self.n, math.ldexp(self.mean, k), math.ldexp(self.m2, 2 * k),
                       math.ldexp(self.m3, 3 * k), math.ldexp(self.m4, 4 * k), e)

    def merge(self, other):
        """The moments of both samples together (a new object)."""
        na, nb = self.n, other.n
        if nb == 0:
            return self._at(self.e)
        if na == 0:
            return other._at(other.e)
        e = max(self.e, other.e)
        a, b = self._at(e), other._at(e)
        n = na + nb
        d = b.mean - a.mean
        fa, fb = na / n, nb / n  # fractions keep the products of counts in range
        mean = a.mean + d * fb
        m2 = a.m2 + b.m2 + d * d * na * fb
        m3 = (a.m3 + b.m3 + d ** 3 * na * fb * (fa - fb)
              + 3.0 * d * (fa * b.m2 - fb * a.m2))
        m4 = (a.m4 + b.m4 + d ** 4 * na * fb * (fa * fa - fa * fb + fb * fb)
              + 6.0 * d * d * (fa * fa * b.m2 + fb * fb * a.m2)
              + 4.0 * d * (fa * b.m3 - fb * a.m3))
        return Moments(n, mean, m2, m3, m4, e)

    def summary(self):
        """``{"mean", "std", "skew", "excess_kurtosis"}`` (population; 0 for a constant)."""
        if self.n == 0:
            return {"mean": float("nan"), "std": float("nan"), "skew": float("nan"),
                    "excess_kurtosis": float("nan")}
        mean = math.ldexp(self.mean, self.e)
        std_scaled = math.sqrt(max(self.m2, 0.0) / self.n)
        if std_scaled <= CONSTANT_RTOL * abs(self.mean) or self.m2 <= 0.0:
            return {"mean": mean, "std": 0.0, "skew": 0.0, "excess_kurtosis": 0.0}
        return {"mean": mean, "std": math.ldexp(std_scaled, self.e),
                "skew": math.sqrt(self.n) * self.m3 / self.m2 ** 1.5,
                "excess_kurtosis": self.n * self.m4 / (self.m2 * self.m2) - 3.0}


class ChannelMoments:
    """Per-channel ``n``, mean and ``M2`` (Chan's merge), channels on axis 1."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, channels):
        self.n = np.zeros(channels, dtype=np.int64)
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    @classmethod
    def of(cls, x):
        """From ``x`` of shape ``(N, C, ...)``."""
        c = x.shape[1]
        flat = np.moveaxis(x, 1, 0).reshape(c, -1)
        out = cls(c)
        out.n[:] = flat.shape[1]
        if flat.shape[1]:
            out.mean = flat.mean(axis=1)
            d = flat - out.mean[:, None]
            out.m2 = np.einsum("ij,ij->i", d, d)
        return out

    def merge(self, other):
        out = ChannelMoments(self.n.size)
        n = self.n + other.n
        safe = np.where(n > 0, n, 1).astype(np.float64)
        d = other.mean - self.mean
        out.n = n
        out.mean = np.where(n > 0, self.mean + d * (other.n / safe), 0.0)
        out.m2 = self.m2 + other.m2 + d * d * (self.n * (other.n / safe))
        return out

    def std(self):
        return np.sqrt(np.maximum(self.m2, 0.0) / np.where(self.n > 0, self.n, 1))


# ----------------------------------------------------------------------------------------------
# histogram and sample
# ----------------------------------------------------------------------------------------------


class Histogram:
    """Integer counts on fixed ``edges`` (``np.histogram`` bins) plus ``below``/``above``."""

    __slots__ = ("edges", "counts", "below", "above")

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.zeros(self.edges.size - 1, dtype=np.int64)
        self.below = 0
        self.above = 0

    def update(self, values):
        values = values.ravel()
        # equal bins (linspace edges): NumPy's uniform fast path, which corrects every index
        # against these same edges, so the counts equal ``np.histogram(values, self.edges)``
        c, _ = np.histogram(values, bins=self.edges.size - 1,
                            range=(self.edges[0], self.edges[-1]))
        self.counts += c
        self.below += int(np.count_nonzero(values < self.edges[0]))
        self.above += int(np.count_nonzero(values > self.edges[-1]))

    def merge(self, other):
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge histograms with different edges")
        out = Histogram(self.edges)
        out.counts = self.counts + other.counts
        out.below, out.above = self.below + other.below, self.above + other.above
        return out

    @property
    def total(self):
        return int(self.counts.sum()) + self.below + self.above


class BottomK:
    """The ``k`` values with the smallest keys ``splitmix64(index ^ salt)`` (see module)."""

    __slots__ = ("k", "keys", "values")

    def __init__(self, k, keys=None, values=None):
        self.k = int(k)
        self.keys = np.zeros(0, np.uint64) if keys is None else keys
        self.values = np.zeros(0, np.float64) if values is None else values

    @classmethod
    def of(cls, k, values, indices, salt_):
        """Keep the ``k`` smallest-keyed of ``values`` (flat) with global ``indices``."""
        keys = splitmix64(np.asarray(indices, dtype=np.uint64) ^ np.uint64(salt_))
        return cls(k, keys, np.asarray(values, dtype=np.float64).ravel()).trimmed()

    def trimmed(self):
        """At most ``k`` entries (unordered; :meth:`ordered` sorts them by key)."""
        keys, values = self.keys, self.values
        if keys.size > self.k:
            idx = np.argpartition(keys, self.k - 1)[:self.k]
            keys, values = keys[idx], values[idx]
        return BottomK(self.k, keys, values)

    def ordered(self):
        """The kept values sorted by key: the same array for any split of the data."""
        return self.values[np.argsort(self.keys, kind="stable")]

    def merge(self, other):
        return BottomK(self.k, np.concatenate([self.keys, other.keys]),
                       np.concatenate([self.values, other.values])).trimmed()


# ----------------------------------------------------------------------------------------------
# per-layer accumulator
# ----------------------------------------------------------------------------------------------


def activation_edges(alpha, beta, b1, b2, per_channel):
    r"""Histogram edges fixed by the binary set, before any data is seen.

    Per-channel set: ``v``-space, ``linspace(-V_RANGE, V_RANGE, HIST_BINS + 1)``. Scalar set:
    ``x``-space covering :math:`\beta \pm V_{range}|\alpha|` and both levels ``b1``, ``b2``
    (the official levels :math:`\alpha(\beta \mp 1)` can lie outside), ``HIST_BINS`` equal bins.
    """
    if per_channel:
        return np.linspace(-V_RANGE, V_RANGE, HIST_BINS + 1)
    a, b = abs(float(alpha)), float(beta)
    lo = min(b - V_RANGE * a, float(b1), float(b2))
    hi = max(b + V_RANGE * a, float(b1), float(b2))
    return np.linspace(lo, hi, HIST_BINS + 1)


def weight_dependence(rw, w_shape, geometry, in_shape):
    """Outputs ``(1, O, Ho, Wo)`` (bool) reading an in-bounds weight at flip risk: the ones
    input of ``in_shape = (C, H, W)`` convolved with the weight mask; ``None`` if none is."""
    if rw is None or not rw.any():
        return None
    kw = {k: geometry.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                             ("groups", 1))}
    return conv2d(np.ones((1,) + tuple(in_shape)), rw.astype(np.float64), **kw) > 0.5


def outputs_at_risk_count(rx, rw, w_shape, geometry, wdep=False):
    """``(count, total)`` of conv outputs reading >= 1 flip-risk input tap or in-bounds weight.

    Same dependency rule as :func:`adabin_np.testing.conv_flip_risk`, computed with two small
    convolutions: the activation mask summed over each group's channels against a ones kernel,
    and (only when some weight is at risk) the ones input against the weight mask; that second
    term does not depend on the data and may be passed precomputed as ``wdep``
    (:func:`weight_dependence`).
    """
    kw = {k: geometry.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                             ("groups", 1))}
    g = int(kw["groups"])
    n, c, h, w = rx.shape
    o, _, kh, kwd = w_shape
    per_group = rx.reshape(n, g, c // g, h, w).sum(axis=2, dtype=np.float64)
    dep = conv2d(per_group, np.ones((g, 1, kh, kwd)), **{**kw, "groups": g})
    dep = np.repeat(dep > 0.5, o // g, axis=1)  # output channel o is in group o // (O/g)
    if wdep is False:
        wdep = weight_dependence(rw, w_shape, geometry, (c, h, w))
    if wdep is not None:
        dep = dep | wdep
    return int(np.count_nonzero(dep)), int(dep.size)


class LayerSpec:
    """Everything fixed about one layer before data is seen (picklable, shipped to workers).

    ``alpha``/``beta`` scalars or ``(C,)``; ``b1``/``b2`` its levels (per the convention);
    ``edges`` the histogram edges; ``wmask`` the weight flip-risk mask and ``w_shape``/``conv``
    the geometry for ``outputs_at_risk`` (``conv=None``: not computed); ``k`` the equalization
    sample size (per channel for a per-channel set) and ``salt`` its key salt.
    """

    def __init__(self, name, alpha, beta, convention, tol, *, b1, b2, k, salt_, w_shape=None,
                 wmask=None, conv=None):
        self.name = name
        self.alpha = alpha
        self.beta = beta
        self.per_channel = np.ndim(alpha) > 0 or np.ndim(beta) > 0
        self.convention = convention
        self.tol = float(tol)
        self.b1, self.b2 = b1, b2
        self.edges = activation_edges(alpha, beta, b1, b2, self.per_channel)
        self.k = int(k)
        self.salt = np.uint64(salt_)
        self.w_shape = w_shape
        self.wmask = wmask
        self.conv = conv

    def weight_dependence(self, in_shape):
        """:func:`weight_dependence` for inputs ``(C, H, W)``, computed once per shape."""
        cache = self.__dict__.setdefault("_wdep", {})
        key = tuple(in_shape)
        if key not in cache:
            cache[key] = weight_dependence(self.wmask, self.w_shape, self.conv, key)
        return cache[key]

    def __getstate__(self):  # the cache is not shipped to workers
        return {k: v for k, v in self.__dict__.items() if k != "_wdep"}

    def broadcast(self, ndim, channels):
        """``(alpha, beta)`` shaped to broadcast against ``(N, C, ...)`` data."""
        if not self.per_channel:
            return np.float64(self.alpha), np.float64(self.beta)
        shape = (1, -1) + (1,) * (ndim - 2)
        return (np.broadcast_to(np.asarray(self.alpha, np.float64), (channels,)).reshape(shape),
                np.broadcast_to(np.asarray(self.beta, np.float64), (channels,)).reshape(shape))


class ActivationStats:
    """Mergeable statistics of one layer's activations ``x`` of shape ``(n, ...)``.

    ``update(x, first)`` adds samples ``first .. first + n - 1`` (global sample indices: they
    key the equalization sample); ``merge`` combines two accumulators of the same layer.
    Optional float-vs-packed agreement: ``update_packed(x_float, x_packed)`` counts elements
    whose binarized level differs and tracks ``max |x_float - x_packed|`` and ``max |x_float|``.
    """

    def __init__(self, spec):
        self.spec = spec
        self.sample_shape = None
        self.n_samples = 0
        self.total = 0
        self.moments = Moments()
        self.chan = None
        self.flip = 0
        self.flip_chan = None
        self.ties = 0
        self.n_b1 = 0
        self.n_b2 = 0
        self.b2_chan = None
        self.curve = np.zeros(len(FLIP_RISK_LADDER), dtype=np.int64)
        self.hist = Histogram(spec.edges)
        self.out_risk = 0
        self.out_total = 0
        self.samples = None
        self.packed_disagree = 0
        self.packed_total = 0
        self.packed_maxdiff = 0.0
        self.packed_scale = 0.0

    # -- update ----------------------------------------------------------------------------------

    def _channels(self, x):
        return x.shape[1] if x.ndim >= 2 else 1

    def update(self, x, first):
        spec = self.spec
        if self.sample_shape is None:
            self.sample_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"layer {spec.name!r}: activation shape {x.shape[1:]} differs from "
                             f"the earlier chunks' {self.sample_shape}")
        n = x.shape[0]
        c = self._channels(x)
        a, b = spec.broadcast(x.ndim, c)
        v = (x - b) / a
        zero = v == 0.0
        neg = v < 0.0
        pos = v > 0.0
        mask = _testing.flip_risk(x, spec.alpha, spec.beta, tol=spec.tol)
        upper = pos if spec.convention == "official" else pos | zero
        self.n_samples += n
        self.total += x.size
        self.moments = self.moments.merge(Moments.of(x))
        self.flip += int(np.count_nonzero(mask))
        self.ties += int(np.count_nonzero(zero))
        self.n_b1 += int(np.count_nonzero(neg))
        self.n_b2 += int(np.count_nonzero(upper))
        if x.ndim >= 2:
            axes = (0,) + tuple(range(2, x.ndim))
            cm = ChannelMoments.of(x)
            self.chan = cm if self.chan is None else self.chan.merge(cm)
            fc = np.count_nonzero(mask, axis=axes).astype(np.int64)
            bc = np.count_nonzero(upper, axis=axes).astype(np.int64)
            self.flip_chan = fc if self.flip_chan is None else self.flip_chan + fc
            self.b2_chan = bc if self.b2_chan is None else self.b2_chan + bc
        # flip-risk curve: #{r <= t} for every ladder tolerance t
        den = np.abs(x) + np.abs(b) + np.abs(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(den > 0, np.abs(x - b) / den, np.inf)
        slot = np.searchsorted(np.asarray(FLIP_RISK_LADDER), r.ravel(), side="left")
        self.curve += np.cumsum(np.bincount(slot, minlength=len(FLIP_RISK_LADDER) + 1))[:-1]
        self.hist.update(v if spec.per_channel else x)
        if spec.conv is not None and x.ndim == 4:
            cnt, tot = outputs_at_risk_count(mask, spec.wmask, spec.w_shape, spec.conv,
                                             spec.weight_dependence(x.shape[1:]))
            self.out_risk += cnt
            self.out_total += tot
        self._sample(x, first, c)

    def _sample(self, x, first, c):
        spec = self.spec
        n = x.shape[0]
        if spec.per_channel:
            flat = np.moveaxis(x, 1, 0).reshape(c, n, -1)
            per = flat.shape[2]
            idx = (np.arange(first, first + n, dtype=np.uint64)[:, None] * np.uint64(per)
                   + np.arange(per, dtype=np.uint64)[None, :]).ravel()
            new = [BottomK.of(spec.k, flat[ch].ravel(), idx, salt(int(spec.salt), ch))
                   for ch in range(c)]
            self.samples = new if self.samples is None else [
                s.merge(t) for s, t in zip(self.samples, new)]
        else:
            per = int(np.prod(x.shape[1:], dtype=np.int64))
            idx = np.arange(first * per, (first + n) * per, dtype=np.uint64)
            new = BottomK.of(spec.k, x.ravel(), idx, spec.salt)
            self.samples = new if self.samples is None else self.samples.merge(new)

    def update_packed(self, x_float, x_packed):
        """Float-vs-packed agreement of this layer's input (both paths' recorded inputs)."""
        spec = self.spec
        a, b = spec.broadcast(x_float.ndim, self._channels(x_float))
        sf = (x_float - b) / a >= 0.0  # the level (packed: v == 0 -> +1; ties counted apart)
        sp = (x_packed - b) / a >= 0.0
        self.packed_disagree += int(np.count_nonzero(sf != sp))
        self.packed_total += int(x_float.size)
        self.packed_maxdiff = max(self.packed_maxdiff, float(np.max(np.abs(x_float - x_packed))))
        self.packed_scale = max(self.packed_scale, float(np.max(np.abs(x_float))))

    # -- merge -----------------------------------------------------------------------------------

    def merge(self, other):
        """Statistics of both accumulators' data (a new object; neither input is changed)."""
        if other.spec.name != self.spec.name:
            raise ValueError(f"cannot merge statistics of layers {self.spec.name!r} and "
                             f"{other.spec.name!r}")
        if self.sample_shape is None:
            return other._copy()
        if other.sample_shape is None:
            return self._copy()
        if self.sample_shape != other.sample_shape:
            raise ValueError(f"layer {self.spec.name!r}: cannot merge activation shapes "
                             f"{self.sample_shape} and {other.sample_shape}")
        out = ActivationStats(self.spec)
        out.sample_shape = self.sample_shape
        for f in ("n_samples", "total", "flip", "ties", "n_b1", "n_b2", "out_risk", "out_total",
                  "packed_disagree", "packed_total"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        out.packed_maxdiff = max(self.packed_maxdiff, other.packed_maxdiff)
        out.packed_scale = max(self.packed_scale, other.packed_scale)
        out.moments = self.moments.merge(other.moments)
        out.chan = None if self.chan is None else self.chan.merge(other.chan)
        out.flip_chan = None if self.flip_chan is None else self.flip_chan + other.flip_chan
        out.b2_chan = None if self.b2_chan is None else self.b2_chan + other.b2_chan
        out.curve = self.curve + other.curve
        out.hist = self.hist.merge(other.hist)
        if isinstance(self.samples, list):
            out.samples = [s.merge(t) for s, t in zip(self.samples, other.samples)]
        else:
            out.samples = self.samples.merge(other.samples)
        return out

    def _copy(self):
        out = ActivationStats(self.spec)
        out.__dict__.update(self.__dict__)
        return out

    def sample_matrix(self):
        """The equalization sample, ``(1, k)`` or ``(C, k)`` (sorted by key)."""
        if isinstance(self.samples, list):
            m = min(s.values.size for s in self.samples)
            return np.stack([s.ordered()[:m] for s in self.samples])
        return self.samples.ordered()[None, :]
