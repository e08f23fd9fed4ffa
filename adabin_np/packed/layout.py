"""Channel layouts (segments of equal activation levels, see :mod:`adabin_np.packed`) and the
per-activation-set plan a packed call derives from them (layout, dtype thresholds, level
bound), cached by the exact bytes of ``alpha``/``beta``."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from .. import kernels_packed as _kp
from .arguments import WORD_BITS, _n_words


class _Layout(NamedTuple):
    """A channel layout. ``key`` is derived from *every* other field (:func:`_make_layout`),
    so caches keyed on it (kernel weights, per-tap popcounts, border tables on
    :class:`PackedWeights`) can never hand one layout's data to another: two segmentations
    with the same word positions but different segment boundaries or levels (64+128 vs
    128+64 channels) have different keys."""

    key: tuple
    n_words: int
    word_ptr: np.ndarray    # (n_words + 1,) into word_chans
    word_chans: np.ndarray  # (C,) channels in word order
    chan_word: np.ndarray   # (C,)
    chan_bit: np.ndarray    # (C,)
    seg_w0: np.ndarray      # (S,) first word of the segment
    seg_w1: np.ndarray      # (S,) one past its last word
    seg_n: np.ndarray       # (S,) channels in the segment
    seg_ca: np.ndarray      # (S,) c_a of the segment
    seg_da: np.ndarray      # (S,) d_a of the segment
    seg_group: np.ndarray   # (S,)
    g_seg0: np.ndarray      # (G,) first segment of each group
    g_seg1: np.ndarray      # (G,)
    g_w0: np.ndarray        # (G,) first word of each group
    wgm: int                # largest number of words of a group
    natural: bool           # the natural layout (channel g*Cg + 64q + b at bit b of word g*WG+q)


def _make_layout(*fields):
    """A :class:`_Layout` whose ``key`` is the content (dtype, shape, bytes) of all its fields."""
    parts = []
    for f in fields:
        if isinstance(f, np.ndarray):
            parts.append((f.dtype.str, f.shape, f.tobytes()))
        else:
            parts.append(int(f))
    return _Layout(tuple(parts), *fields)


def _natural_layout(c, groups, seg_ca, seg_da):
    cg = c // groups
    wg = _n_words(cg)
    q = np.arange(groups * wg)
    g_of_q = q // wg
    start = g_of_q * cg + (q % wg) * WORD_BITS
    word_ptr = np.append(start, c).astype(np.int64)
    cc = np.arange(c) % cg
    chan_word = (np.arange(c) // cg) * wg + cc // WORD_BITS
    g = np.arange(groups, dtype=np.int64)
    return _make_layout(groups * wg, word_ptr, np.arange(c, dtype=np.int64),
                        chan_word.astype(np.int64), (cc % WORD_BITS).astype(np.int64),
                        g * wg, (g + 1) * wg, np.full(groups, cg, dtype=np.int64),
                        np.ascontiguousarray(seg_ca, dtype=np.float64),
                        np.ascontiguousarray(seg_da, dtype=np.float64), g, g, g + 1, g * wg, wg,
                        True)


def _segmented_layout(c_a, d_a, groups):
    c = c_a.shape[0]
    cg = c // groups
    chan_word = np.empty(c, dtype=np.int64)
    chan_bit = np.empty(c, dtype=np.int64)
    word_ptr = [0]
    word_chans = []
    seg = {k: [] for k in ("w0", "w1", "n", "ca", "da", "g")}
    g_seg0 = np.empty(groups, dtype=np.int64)
    g_seg1 = np.empty(groups, dtype=np.int64)
    word = 0
    for g in range(groups):
        chans = np.arange(g * cg, (g + 1) * cg)
        pairs = np.stack([c_a[chans], d_a[chans]], axis=1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        g_seg0[g] = len(seg["w0"])
        for k in range(uniq.shape[0]):
            members = chans[inv == k]
            nw = _n_words(members.size)
            idx = np.arange(members.size)
            chan_word[members] = word + idx // WORD_BITS
            chan_bit[members] = idx % WORD_BITS
            for q in range(nw):
                block = members[q * WORD_BITS:(q + 1) * WORD_BITS]
                word_chans.extend(block.tolist())
                word_ptr.append(word_ptr[-1] + block.size)
            seg["w0"].append(word)
            seg["w1"].append(word + nw)
            seg["n"].append(members.size)
            seg["ca"].append(uniq[k, 0])
            seg["da"].append(uniq[k, 1])
            seg["g"].append(g)
            word += nw
        g_seg1[g] = len(seg["w0"])
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    seg_w0 = i64(seg["w0"])
    seg_w1 = i64(seg["w1"])
    g_w0 = seg_w0[g_seg0]
    wgm = int(np.max(seg_w1[g_seg1 - 1] - g_w0))
    return _make_layout(word, i64(word_ptr), i64(word_chans), chan_word, chan_bit,
                   seg_w0, seg_w1, i64(seg["n"]),
                   np.asarray(seg["ca"], dtype=np.float64), np.asarray(seg["da"], dtype=np.float64),
                   i64(seg["g"]), g_seg0, g_seg1, g_w0, wgm, False)


_LAYOUT_CACHE: dict = {}
_LAYOUT_CACHE_SIZE = 32


def _channel_layout(alpha_c, beta_c, groups, official):
    """Segments of equal activation levels ``(c_a, d_a)`` per group (see module docstring)."""
    d_a = alpha_c
    c_a = alpha_c * beta_c if official else beta_c
    c = c_a.shape[0]
    ca2 = c_a.reshape(groups, -1)
    da2 = d_a.reshape(groups, -1)
    natural = bool(np.all(ca2 == ca2[:, :1]) and np.all(da2 == da2[:, :1]))
    if natural:
        key = ("natural", c, groups, ca2[:, 0].tobytes(), da2[:, 0].tobytes())
    else:
        key = ("segmented", groups, c_a.tobytes(), d_a.tobytes())
    layout = _LAYOUT_CACHE.get(key)
    if layout is None:
        layout = (_natural_layout(c, groups, ca2[:, 0], da2[:, 0]) if natural
                  else _segmented_layout(c_a, d_a, groups))
        if len(_LAYOUT_CACHE) >= _LAYOUT_CACHE_SIZE:
            _LAYOUT_CACHE.pop(next(iter(_LAYOUT_CACHE)))
        _LAYOUT_CACHE[key] = layout
    return layout


def _act_bound(alpha_c, beta_c, official):
    with np.errstate(over="ignore"):
        c_a = alpha_c * beta_c if official else beta_c
        return float(np.max(np.abs(c_a) + np.abs(alpha_c)))


class _ActPlan(NamedTuple):
    """Everything a packed call derives from the activation set alone (cached by
    :func:`_act_plan`): the channel layout, the per-channel thresholds of
    :func:`~adabin_np.kernels_packed.activation_thresholds` for the input dtype, and
    ``bound = max_c(|c_a| + |d_a|)``, the largest activation level magnitude (overflow check)."""

    layout: _Layout
    mode: np.ndarray
    thr: np.ndarray
    tie: np.ndarray
    bound: float
    uid: int  # never reused: keys the per-weights call cache (:func:`.cpu._run_cpu`)


_ACT_CACHE: dict = {}
_ACT_CACHE_SIZE = 64
_ACT_UIDS = itertools.count()


def _act_plan(alpha_c, beta_c, groups, official, dtype):
    """The :class:`_ActPlan` of an activation set, keyed on the exact bytes of ``alpha_c`` and
    ``beta_c`` (so two sets share an entry only when they are bit-identical), the groups, the
    convention and the input dtype. Saves ~25 us per call at batch 1 (layout comparison and
    threshold tables)."""
    dtype = np.dtype(dtype)
    key = (alpha_c.tobytes(), beta_c.tobytes(), groups, official, dtype.str)
    plan = _ACT_CACHE.get(key)
    if plan is None:
        layout = _channel_layout(alpha_c, beta_c, groups, official)
        mode, thr, tie = _kp.activation_thresholds(alpha_c, beta_c, dtype)
        bound = _act_bound(alpha_c, beta_c, official)
        for arr in (mode, thr, tie):
            arr.flags.writeable = False
        plan = _ActPlan(layout, mode, thr, tie, bound, next(_ACT_UIDS))
        if len(_ACT_CACHE) >= _ACT_CACHE_SIZE:
            _ACT_CACHE.pop(next(iter(_ACT_CACHE)))
        _ACT_CACHE[key] = plan
    return plan
