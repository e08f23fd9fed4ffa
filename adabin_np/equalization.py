r"""Weight equalization: choosing the per-channel binary set ``{beta - alpha, beta + alpha}``.

AdaBin (Tu et al., ECCV 2022, section 3.2) binarizes every output channel ``W_o`` of a weight
tensor to ``Q(w) = beta + alpha * sign(w - beta)`` (``sign(0) = +1``, the ``"paper"``
convention). ``SPEC.md`` section 2 fixes the choice used by the layers: the *KL equalization*
``beta = mean(W_o)``, ``alpha = std(W_o)`` (population std). This module is the oracle for that
choice and for two alternatives, so that their loss landscapes can be compared and plotted:

==============  ==================================================  ==========================
``objective``   minimised per channel                               solution
==============  ==================================================  ==========================
``"kl"``        :math:`KL(N(\mu, \sigma^2) \,\|\, N(\beta, \alpha^2))`   grid search + zoom refine
                (moments of ``W_o`` vs the two-point set)           (-> ``mu``, ``sigma``)
``"l2"``        :math:`\frac1n \sum_j (w_j - Q(w_j))^2`               exact: optimal 1-D 2-means
``"entropy"``   :math:`-H(\mathrm{sign}(W_o - \beta))` in bits       ``beta = median(W_o)``,
                                                                    ``alpha = mean|W_o - beta|``
==============  ==================================================  ==========================

Every objective also returns a *landscape*: the loss on a ``grid x grid`` lattice of
``(alpha, beta)`` values around the data range of each channel, for plotting loss surfaces.

The Numba kernels (``@njit(cache=True, parallel=True)``, ``prange`` over output channels) live
in this module because they are used nowhere else.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .binarize import pow2_row_scale
from .validation import as_float_array, to_numpy

__all__ = [
    "OBJECTIVES",
    "EqualizationLandscape",
    "EqualizationResult",
    "kl_gaussian",
    "kl_divergence_histogram",
    "equalization_search",
]

OBJECTIVES = ("kl", "l2", "entropy")

# Zoom refinement of the KL search: stop when the half-width of the search box, in normalised
# coordinates t = log(alpha/sigma) and r = (beta - mu)/sigma, is below _KL_TOL (the loss is then
# at the level of float64 rounding), or after _KL_MAX_ITER boxes.
_KL_TOL = 1e-12
_KL_MAX_ITER = 400


# ----------------------------------------------------------------------------------------------
# divergences
# ----------------------------------------------------------------------------------------------


def kl_gaussian(mu, sigma, beta, alpha):
    r"""KL divergence between two normal distributions, elementwise with broadcasting.

    .. math::

        KL\big(N(\mu, \sigma^2) \,\|\, N(\beta, \alpha^2)\big)
          = \log\frac{|\alpha|}{\sigma} + \frac{\sigma^2 + (\mu - \beta)^2}{2\alpha^2}
            - \frac12 .

    It is evaluated in the cancellation-free form
    :math:`t + \tfrac12\,\mathrm{expm1}(-2t) + \tfrac{(\mu-\beta)^2}{2\alpha^2}` with
    :math:`t = \log(|\alpha|/\sigma)`, so values near the minimum (KL = 0 at
    :math:`\beta = \mu, |\alpha| = \sigma`) keep full relative precision.

    Parameters
    ----------
    mu, sigma : array_like
        Mean and standard deviation of the first distribution; ``sigma >= 0``.
    beta, alpha : array_like
        Mean and scale of the second distribution (the binary set's threshold and half-gap);
        only ``|alpha|`` enters.

    Returns
    -------
    ndarray or float
        The divergence in nats, float64, broadcast shape of the inputs (a float for scalar
        inputs). Degenerate Gaussians (``sigma == 0`` or ``alpha == 0``) give ``+inf``: a point
        mass has no density, and the limit of the formula is ``+inf`` along every path with the
        other scale fixed.

    Raises
    ------
    ValueError
        If any input is non-finite or ``sigma < 0``.
    TypeError
        For non-real dtypes.
    """
    mu = as_float_array(mu, "mu", allow_scalar=True)
    sigma = as_float_array(sigma, "sigma", allow_scalar=True)
    beta = as_float_array(beta, "beta", allow_scalar=True)
    alpha = as_float_array(alpha, "alpha", allow_scalar=True)
    if np.any(sigma < 0):
        raise ValueError("sigma must be >= 0")
    mu, sigma, beta, alpha = np.broadcast_arrays(mu, sigma, beta, alpha)
    a = np.abs(alpha)
    degenerate = (sigma == 0) | (a == 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.log(a) - np.log(sigma)
        out = t + 0.5 * np.expm1(-2.0 * t) + 0.5 * ((mu - beta) / a) ** 2
    out = np.where(degenerate, np.inf, out)
    return float(out) if out.ndim == 0 else out


def kl_divergence_histogram(p, q, *, eps=0.0, axis=-1):
    r"""Discrete KL divergence :math:`\sum_k p_k \log(p_k / q_k)` of two histograms (nats).

    ``p`` and ``q`` are non-negative weights along ``axis``; each is normalised to sum to 1
    (as :func:`scipy.stats.entropy` does). Terms with ``p_k = 0`` contribute 0
    (:math:`0 \log 0 = 0`). Where ``q_k = 0 < p_k`` the divergence is ``+inf`` unless ``eps > 0``,
    in which case ``q`` is smoothed to :math:`(q + \varepsilon)/(1 + K\varepsilon)` (``K`` bins)
    after normalisation; ``p`` is never smoothed.

    Why the equalization uses the Gaussian-moment form instead
    ----------------------------------------------------------
    The binary set is a two-point distribution with mass 1/2 (or ``k/n``) on
    ``beta - alpha`` and ``beta + alpha``. Its histogram occupies at most two bins, so

    * ``KL(hist(W) || hist(Q))`` is ``+inf`` whenever ``W`` has mass outside those two bins
      (always, for real weights), or depends only on ``eps`` once smoothed, and
    * ``KL(hist(Q) || hist(W))`` only looks at the mass of ``W`` in the two bins containing the
      levels: it is piecewise constant in ``(alpha, beta)``, depends on the bin width, and has
      no informative gradient.

    Both landscapes are degenerate. SPEC section 2 therefore replaces both distributions by the
    Gaussians with the same first two moments (the two-point set has mean ``beta`` and variance
    ``alpha^2`` when balanced) and minimises :func:`kl_gaussian`, whose unique minimiser is the
    moment match ``beta = mean(W)``, ``alpha = std(W)``. This function is kept for comparing
    histograms of real-valued weights and for checking :func:`kl_gaussian` against fine
    discretisations.

    Parameters
    ----------
    p, q : array_like
        Non-negative, finite weights, broadcastable; each slice along ``axis`` must have a
        positive sum.
    eps : float, keyword-only
        Additive smoothing of ``q`` (default 0: the exact divergence).
    axis : int, keyword-only
        Axis holding the bins.

    Returns
    -------
    ndarray or float
        KL in nats with ``axis`` removed (a float for 1-D inputs).
    """
    p = as_float_array(p, "p", allow_scalar=False)
    q = as_float_array(q, "q", allow_scalar=False)
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (numbers.Real, np.number)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    for arr, name in ((p, "p"), (q, "q")):
        if np.any(arr < 0):
            raise ValueError(f"{name} must be non-negative")
    p, q = np.broadcast_arrays(p, q)
    ps = p.sum(axis=axis, keepdims=True)
    qs = q.sum(axis=axis, keepdims=True)
    if np.any(ps <= 0) or np.any(qs <= 0):
        raise ValueError("every histogram in p and q must have a positive sum")
    p = p / ps
    q = q / qs
    if eps > 0:
        q = (q + eps) / (1.0 + p.shape[axis] * eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    out = terms.sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------


class EqualizationLandscape(NamedTuple):
    """Loss of every output channel on a ``grid x grid`` lattice of binary sets.

    ``loss[o, i, j]`` is the objective of channel ``o`` at ``(alpha[o, i], beta[o, j])``; plot
    one channel with ``plt.pcolormesh(beta[o], alpha[o], loss[o])``. Memory is
    ``8 * O * grid**2`` bytes (16 MiB for 512 channels at ``grid = 64``).
    """

    alpha: np.ndarray  # (O, grid)
    beta: np.ndarray  # (O, grid)
    loss: np.ndarray  # (O, grid, grid)


class EqualizationResult(NamedTuple):
    """Per-channel binary sets found by :func:`equalization_search`.

    Attributes
    ----------
    alpha, beta : ndarray, shape (O,), float64
        Half-gap (``>= 0``) and threshold; the levels are ``beta -+ alpha``.
    loss : ndarray, shape (O,), float64
        The objective at ``(alpha, beta)`` (see :func:`equalization_search`).
    objective : str
        ``"kl"``, ``"l2"`` or ``"entropy"``.
    landscape : EqualizationLandscape
        The objective on the initial search lattice of each channel.
    """

    alpha: np.ndarray
    beta: np.ndarray
    loss: np.ndarray
    objective: str
    landscape: EqualizationLandscape


# ----------------------------------------------------------------------------------------------
# Numba kernels (prange over output channels)
# ----------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _kl_normalised(t, r):
    """KL in normalised coordinates t = log(alpha/sigma), r = (beta - mu)/sigma."""
    return t + 0.5 * math.expm1(-2.0 * t) + 0.5 * math.exp(-2.0 * t) * r * r


@njit(cache=True, parallel=True)
def _kl_search(t_lo, t_hi, r_lo, r_hi, grid, refine, tol, max_iter, t_out, r_out, loss_out,
               land):
    n_ch = t_lo.shape[0]
    for o in prange(n_ch):
        ct = 0.5 * (t_lo[o] + t_hi[o])
        ht = 0.5 * (t_hi[o] - t_lo[o])
        cr = 0.5 * (r_lo[o] + r_hi[o])
        hr = 0.5 * (r_hi[o] - r_lo[o])
        best_f = np.inf
        best_t = ct
        best_r = cr
        for it in range(max_iter):
            dt = 2.0 * ht / (grid - 1)
            dr = 2.0 * hr / (grid - 1)
            bf = np.inf
            bi = 0
            bj = 0
            for i in range(grid):
                t = ct - ht + i * dt
                for j in range(grid):
                    r = cr - hr + j * dr
                    f = _kl_normalised(t, r)
                    if it == 0:
                        land[o, i, j] = f
                    if f < bf:
                        bf = f
                        bi = i
                        bj = j
            tb = ct - ht + bi * dt
            rb = cr - hr + bj * dr
            if bf < best_f:
                best_f = bf
                best_t = tb
                best_r = rb
            if not refine or (ht <= tol and hr <= tol):
                break
            # Re-centre on the best point; shrink to +-1 cell only when it is interior (the
            # minimiser is then bracketed), otherwise slide the box without shrinking.
            ct = tb
            cr = rb
            if 0 < bi < grid - 1:
                ht = dt
            if 0 < bj < grid - 1:
                hr = dr
        t_out[o] = best_t
        r_out[o] = best_r
        loss_out[o] = max(best_f, 0.0)


@njit(cache=True, inline="always")
def _group_mean(v, start, stop):
    """Mean of v[start:stop] as v[start] + mean(v - v[start]): exact for constant groups."""
    ref = v[start]
    s = 0.0
    for k in range(start, stop):
        s += v[k] - ref
    return ref + s / (stop - start)


@njit(cache=True, inline="always")
def _l2_loss(x, alpha, beta):
    """(1/n) sum (|x - beta| - alpha)^2 == (1/n) sum (x - Q(x))^2 with sign(0) = +1."""
    s = 0.0
    for k in range(x.shape[0]):
        e = abs(x[k] - beta) - alpha
        s += e * e
    return s / x.shape[0]


@njit(cache=True, parallel=True)
def _l2_search(w, alpha_grid, beta_grid, refine, alpha_out, beta_out, loss_out, land):
    n_ch, n = w.shape
    grid = alpha_grid.shape[1]
    for o in prange(n_ch):
        x = w[o]
        # landscape: loss(a, b) = Var(|x - b|) + (a - mean|x - b|)^2, exactly.
        bi = 0
        bj = 0
        bf = np.inf
        for j in range(grid):
            b = beta_grid[o, j]
            m1 = 0.0
            for k in range(n):
                m1 += abs(x[k] - b)
            m1 /= n
            v1 = 0.0
            for k in range(n):
                d = abs(x[k] - b) - m1
                v1 += d * d
            v1 /= n
            for i in range(grid):
                d = alpha_grid[o, i] - m1
                f = v1 + d * d
                land[o, i, j] = f
                if f < bf:
                    bf = f
                    bi = i
                    bj = j
        lo = x[0]
        hi = x[0]
        for k in range(n):
            lo = min(lo, x[k])
            hi = max(hi, x[k])
        if lo == hi:  # constant channel: exact, whatever the lattice
            alpha_out[o] = 0.0
            beta_out[o] = lo
            loss_out[o] = 0.0
            continue
        if not refine:
            alpha_out[o] = alpha_grid[o, bi]
            beta_out[o] = beta_grid[o, bj]
            loss_out[o] = _l2_loss(x, alpha_out[o], beta_out[o])
            continue
        # exact: optimal 1-D 2-means over the sorted values, splits between distinct values.
        v = np.sort(x)
        c = 0.0
        for k in range(n):
            c += v[k]
        c /= n
        total = 0.0
        for k in range(n):
            total += v[k] - c
        s = 0.0
        best_b = -1.0
        best_m = 1
        for m in range(1, n):
            s += v[m - 1] - c
            if v[m - 1] < v[m]:
                su = total - s
                between = s * s / m + su * su / (n - m)
                if between > best_b:
                    best_b = between
                    best_m = m
        b1 = _group_mean(v, 0, best_m)
        b2 = _group_mean(v, best_m, n)
        beta = 0.5 * b1 + 0.5 * b2
        alpha = 0.5 * b2 - 0.5 * b1
        alpha_out[o] = alpha
        beta_out[o] = beta
        loss_out[o] = _l2_loss(x, alpha, beta)


@njit(cache=True, inline="always")
def _neg_entropy_bits(k, n):
    """-H(k/n) in bits for a binary code with k negatives among n."""
    if k == 0 or k == n:
        return 0.0
    p = k / n
    return p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p)


@njit(cache=True, parallel=True)
def _entropy_search(w, beta_grid, grid, alpha_out, beta_out, loss_out, land):
    n_ch, n = w.shape
    for o in prange(n_ch):
        v = np.sort(w[o])
        # landscape: the code depends on beta only (k = #{x < beta} negatives).
        for j in range(grid):
            k = np.searchsorted(v, beta_grid[o, j])  # side="left": #{v < b}
            f = _neg_entropy_bits(k, n)
            for i in range(grid):
                land[o, i, j] = f
        if v[0] == v[n - 1]:
            alpha_out[o] = 0.0
            beta_out[o] = v[0]
            loss_out[o] = 0.0
            continue
        h = n // 2
        if n % 2 == 1:
            med = v[h]
        else:
            med = 0.5 * v[h - 1] + 0.5 * v[h]
        k_med = np.searchsorted(v, med)
        # achievable negative counts: k with v[k-1] < v[k] (a threshold fits in between)
        best_k = k_med
        for k in range(1, n):
            if v[k - 1] < v[k]:
                dk = abs(2 * k - n) - abs(2 * best_k - n)
                if dk < 0 or (dk == 0 and abs(k - k_med) < abs(best_k - k_med)):
                    best_k = k
        if best_k == k_med:
            beta = med
        else:
            beta = 0.5 * v[best_k - 1] + 0.5 * v[best_k]
            if not (v[best_k - 1] < beta <= v[best_k]):
                beta = v[best_k]
        alpha = 0.0
        for k in range(n):
            alpha += abs(v[k] - beta)
        alpha /= n
        alpha_out[o] = alpha
        beta_out[o] = beta
        loss_out[o] = _neg_entropy_bits(best_k, n)


# ----------------------------------------------------------------------------------------------
# public search
# ----------------------------------------------------------------------------------------------


def _check_weights(w):
    if to_numpy(w, "w").dtype.kind == "b":
        raise TypeError("w must have a real floating or integer dtype, got bool")
    w = as_float_array(w, "w", min_ndim=2)
    n = int(np.prod(w.shape[1:]))
    if n == 0:
        raise ValueError(f"w must have at least one element per output channel, got {w.shape}")
    return w.reshape(w.shape[0], n)


def equalization_search(w, objective="kl", *, grid=64, refine=True):
    r"""Search the per-output-channel binary set ``{beta - alpha, beta + alpha}`` of ``w``.

    ``W_o`` (all of ``w[o]``, ``n`` values) is binarized as ``Q(w) = beta + alpha*sign(w - beta)``
    with ``sign(0) = +1``. ``mu``, ``sigma`` are the mean and population std of ``W_o``.

    Objectives
    ----------
    ``"kl"`` (SPEC section 2, the layers' choice)
        Minimise :func:`kl_gaussian` ``(mu, sigma, beta, alpha)`` over ``alpha > 0`` and
        ``beta``. The unique minimiser is ``beta = mu, alpha = sigma`` with KL 0; the search
        finds it numerically (it is the oracle for the closed form). Search lattice: ``beta`` in
        ``linspace(min W_o, max W_o, grid)`` and ``alpha`` in
        ``geomspace(R / (2 sqrt(2n)), R, grid)`` with range ``R = max - min``; the lattice
        brackets the minimiser because ``R/sqrt(2n) <= sigma <= R/2`` (Popoviciu; and
        ``n sigma^2 >= (max - mu)^2 + (min - mu)^2 >= R^2/2``). Refinement zooms: the next
        ``grid x grid`` box is ``+-1`` cell around the best point in each coordinate (which
        brackets the minimiser: the loss is a convex quadratic in ``beta`` whose minimiser
        ``mu`` does not depend on ``alpha``, and convex in ``log alpha``); when the best point
        is on the box edge the box slides instead of shrinking. It stops when the box
        half-width is below 1e-12 in ``log(alpha/sigma)`` and ``(beta - mu)/sigma``; the result
        matches ``(mu, sigma)`` to about 1e-12 relative. The search runs in those normalised
        coordinates so the loss keeps full precision near 0.
    ``"l2"``
        Minimise the mean squared binarization error
        :math:`L(\alpha, \beta) = \frac1n\sum_j (w_j - Q(w_j))^2 = \frac1n\sum_j (|w_j - \beta|
        - \alpha)^2`. *Optimal alpha for fixed beta:* L is a convex quadratic in alpha with
        :math:`\partial L/\partial\alpha = -\frac2n\sum_j(|w_j - \beta| - \alpha)`, zero at
        :math:`\alpha^* = \mathrm{mean}|W_o - \beta|` (``>= 0``), leaving
        :math:`L(\alpha^*, \beta) = \mathrm{Var}(|W_o - \beta|)`. *Exact joint optimum:* the
        levels ``b1 = beta - alpha <= b2 = beta + alpha`` are two free numbers and ``Q`` sends
        ``w`` to the nearer level (threshold at the midpoint ``beta``), so ``min L`` is the
        optimal 1-D 2-means cost: for any ``(b1, b2)``, ``L >= SSE`` of the threshold partition
        it induces (levels = group means are optimal for a fixed partition), and for the best
        threshold partition ``(Lo, Up)`` the levels ``mean(Lo), mean(Up)`` give ``L <=`` its
        SSE (nearest-level assignment is optimal for fixed levels). The search sorts ``W_o``
        (O(n log n)) and scans the ``n - 1`` splits between distinct sorted values, maximising
        the between-group sum of squares ``S_L^2/m + S_U^2/(n - m)`` of the centred values
        (equivalent to minimising SSE, without the cancellation of prefix sums of squares);
        then ``beta = (mean Lo + mean Up)/2``, ``alpha = (mean Up - mean Lo)/2`` and the loss is
        recomputed directly. The result is the global optimum up to float64 rounding; samples
        of a two-point distribution are recovered exactly (loss 0). ``refine=False`` returns
        the best lattice point instead. Lattice: ``beta`` in ``linspace(min, max, grid)``,
        ``alpha`` in ``linspace(0, R/2, grid)``.
    ``"entropy"``
        Maximise the entropy of the binary code ``sign(W_o - beta)``: equal mass on both sides.
        ``beta = median(W_o)`` (for distinct values the counts of ``+1`` and ``-1`` differ by at
        most 1; with ties, if another threshold between distinct values gives a more balanced
        code, the midpoint of that gap is used), then the L2-optimal
        ``alpha = mean|W_o - beta|``. ``loss`` is the negative entropy of the code in bits,
        ``-H(p) = p log2 p + (1-p) log2(1-p)`` with ``p`` the fraction of ``-1`` codes (-1 when
        balanced). The solution is closed-form, so ``refine`` has no effect. The landscape
        depends on ``beta`` only (constant along ``alpha``). Lattice as for ``"l2"``.

    Scale: the search runs on each channel scaled by a power of two (exact), so
    ``equalization_search(s*w)`` returns ``s`` times the sets (and lattices) of ``w`` for any
    finite weights, from subnormal to 1e308. ``"kl"`` and ``"entropy"`` losses are
    scale-free; the ``"l2"`` loss is a squared error and scales with ``s**2`` (beyond the float64
    range, for weights above ~1e154, it is reported as ``inf``, as are lattice points beyond the
    range, e.g. the ``alpha = max - min`` end of a channel spanning more than 1.8e308;
    ``alpha``/``beta`` themselves are always finite and exact).

    Constant channels (all values equal to ``c``) give ``alpha = 0``, ``beta = c``, loss 0 for
    every objective, never NaN. Their lattice is ``c + s*linspace(-1, 1)`` for ``beta`` and
    ``s*linspace(0, 1)`` (``"kl"``: ``s*geomspace(1e-3, 1)``) for ``alpha`` with ``s = |c|`` or 1
    if ``c = 0``; their ``"kl"`` landscape is ``+inf`` (KL from a point mass).

    Parameters
    ----------
    w : array_like, shape (O, ...), ndim >= 2
        Weights with output channels on axis 0: conv ``(O, I/groups, kh, kw)`` or linear
        ``(O, I)``. Integer and float dtypes are converted to float64; any memory layout.
    objective : {"kl", "l2", "entropy"}
    grid : int, keyword-only
        Lattice size per coordinate, ``>= 4`` (default 64).
    refine : bool, keyword-only
        Refine beyond the lattice (default True). ``False`` returns the best lattice point.

    Returns
    -------
    EqualizationResult
        ``alpha``, ``beta``, ``loss`` of shape (O,) float64, ``objective`` and ``landscape``.

    Raises
    ------
    TypeError
        Complex, object, string or bool ``w``; non-integer ``grid``; non-bool ``refine``.
    ValueError
        Non-finite ``w``, ``w.ndim < 2``, empty channels, unknown ``objective`` or
        ``grid < 4``.
    """
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if isinstance(grid, (bool, np.bool_)) or not isinstance(grid, (numbers.Integral, np.integer)):
        raise TypeError(f"grid must be an int, got {grid!r}")
    grid = int(grid)
    if grid < 4:
        raise ValueError(f"grid must be >= 4, got {grid}")
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"refine must be a bool, got {type(refine).__name__}")
    refine = bool(refine)
    # the search runs on rows scaled by a power of two (exact) and its sets are scaled back, so
    # equalization_search(c*w) is c times the result for w for any finite weights
    w2, scale_exp = pow2_row_scale(_check_weights(w))
    n_ch, n = w2.shape

    lo = w2.min(axis=1) if n_ch else np.zeros(0)
    hi = w2.max(axis=1) if n_ch else np.zeros(0)
    const = lo == hi
    rng = hi - lo
    s_const = np.where(lo != 0, np.abs(lo), 1.0)
    unit = np.linspace(0.0, 1.0, grid)
    sym = np.linspace(-1.0, 1.0, grid)
    beta_grid = np.where(const[:, None], lo[:, None] + s_const[:, None] * sym,
                         lo[:, None] + rng[:, None] * unit)
    # keep the end points exact (lo + rng*1.0 can round past hi)
    beta_grid[~const, -1] = hi[~const]
    land = np.empty((n_ch, grid, grid))
    alpha = np.empty(n_ch)
    beta = np.empty(n_ch)
    loss = np.empty(n_ch)

    if objective == "kl":
        mu = w2.mean(axis=1)
        sigma = np.sqrt(np.mean((w2 - mu[:, None]) ** 2, axis=1))
        lo_a = np.where(const, 1e-3 * s_const, rng / (2.0 * math.sqrt(2.0 * n)))
        lo_a = np.maximum(lo_a, np.finfo(np.float64).tiny)
        hi_a = np.where(const, s_const, rng)
        alpha_grid = np.exp(np.log(lo_a)[:, None]
                            + (np.log(hi_a) - np.log(lo_a))[:, None] * unit)
        # sigma can underflow to 0 for subnormal spreads: report the moments themselves
        ok = ~const & (sigma >= np.finfo(np.float64).tiny)
        sig = np.where(ok, sigma, 1.0)
        t_lo = np.log(lo_a) - np.log(sig)
        t_hi = np.log(hi_a) - np.log(sig)
        r_lo = (lo - mu) / sig
        r_hi = (hi - mu) / sig
        t_out = np.empty(n_ch)
        r_out = np.empty(n_ch)
        _kl_search(t_lo, t_hi, r_lo, r_hi, grid, refine, _KL_TOL, _KL_MAX_ITER, t_out, r_out,
                   loss, land)
        alpha = np.where(ok, sig * np.exp(t_out), np.where(const, 0.0, sigma))
        beta = np.where(ok, mu + sig * r_out, np.where(const, lo, mu))
        loss = np.where(ok, loss, 0.0)
        land[const] = np.inf
    else:
        alpha_grid = np.where(const[:, None], s_const[:, None], 0.5 * rng[:, None]) * unit
        alpha_grid = np.ascontiguousarray(alpha_grid)
        beta_grid = np.ascontiguousarray(beta_grid)
        if objective == "l2":
            _l2_search(w2, alpha_grid, beta_grid, refine, alpha, beta, loss, land)
        else:
            _entropy_search(w2, beta_grid, grid, alpha, beta, loss, land)

    e = scale_exp[:, None]
    with np.errstate(over="ignore"):  # lattice points / l2 losses beyond float64 become inf
        if objective == "l2":  # a mean squared error: scales with the square of the weights
            loss = np.ldexp(loss, 2 * scale_exp)
            land = np.ldexp(land, 2 * e[:, :, None])
        landscape = EqualizationLandscape(alpha=np.ldexp(alpha_grid, e),
                                          beta=np.ldexp(beta_grid, e), loss=land)
    return EqualizationResult(alpha=np.ldexp(np.asarray(alpha, dtype=np.float64), scale_exp),
                              beta=np.ldexp(np.asarray(beta, dtype=np.float64), scale_exp),
                              loss=np.asarray(loss, dtype=np.float64),
                              objective=objective, landscape=landscape)
