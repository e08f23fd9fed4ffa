r"""Packed convolution: border tables, the tiled popcount driver and the fused rescale epilogue.

For output ``(n, o, oh, ow)`` of group ``g`` with activation segments ``s`` (levels
``c_a[s] +- d_a[s]``, ``seg_n[s]`` channels), valid taps ``P`` (``|P| = T``), SPEC section 4
gives

.. math::
    y = \underbrace{\textstyle\sum_s c_a (d_w S^P_{w,s} + c_w N_s)}_{B}
        + d_w \sum_s d_a (N_s - 2 X^P_s) + c_w \sum_s d_a (2 A_s - N_s),
    \qquad N_s = n_s T

with ``X^P_s = sum_P popc(a XOR w)``, ``A_s = sum_P popc(a)``, ``S^P_{w,s} = 2 popc_P(w) - N_s``.
The microkernel runs every tap of every pixel (``K = kh*kw`` taps, a fixed trip count); a
padded tap points at an all-zero activation pixel, so it adds ``popc(0 XOR w) = popc(w)`` to
the count and 0 to ``A``: the kernel returns ``X_s = X^P_s + I_s`` with ``I_s`` the weight
popcount over the padded taps, a per-border-class integer that the epilogue subtracts
(exactly, in int64) before converting. ``B``, ``I_s`` and ``N`` are tabulated once per
geometry (:func:`border_tables`; a model layer reuses them on every call). The float
arithmetic is the same as before the tiling, term for term, so results are unchanged; an
output whose taps are all padding is exactly 0. The result is rounded once into the output
dtype (float32 or float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .microkernel import (tile_4x8_avx2, tile_4x8_avx2_w1, tile_6x32_avx512,
                          tile_6x32_avx512_w1)

__all__ = ["border_tables", "border_patches", "tap_offsets", "bconv_forward",
           "popcount_roofline"]


@njit(cache=True, parallel=True, error_model="numpy")
def border_tables(pcw, seg_n, seg_ca, g_seg0, g_seg1, alpha_w, beta_w, shift, r_lo, r_hi, c_lo,
                  c_hi, kw, col_cls, row_cls, per_pixel):
    """Per border class the output-independent terms of the module docstring's formula.

    ``pcw[s, t, j]``: weight popcount of output channel ``j`` of segment ``s``'s group at tap
    ``t``. Row class ``r``: valid kernel rows ``[r_lo[r], r_hi[r])``; column class ``cl``: valid
    kernel columns ``[c_lo[cl], c_hi[cl])``; ``col_cls[ow]`` the column class of output column
    ``ow``. Returns

    * ``brow[r, o, ow] = B + shift[o]`` (float64, ``B = sum_s c_a[s] (d_w S^P_{w,s} + c_w N_s)``;
      ``shift`` is a folded BatchNorm's shift, zeros otherwise),
    * ``krow[r, o, ow] = N + 2 I`` summed over segments (int32: ``0 <= I <= N`` and the
      caller guarantees ``3 N < 2**31``; the single-segment epilogue computes
      ``N - 2 X^P = krow - 2 X`` exactly in 32-bit integers),
    * with ``per_pixel=True`` both expanded to one entry per output pixel instead,
      ``brow[0, o, oh*OW + ow]`` (row class ``row_cls[oh]``), for short output rows,
    * ``pinv[s, r, cl, j] = I_s`` (int64, per segment),
    * ``sum_w[r, cl, o] = sum_s S^P_{w,s}`` and ``n_valid[r, cl, g] = sum_s N_s`` (int64; the
      raw counts of :func:`adabin_np.packed_conv_counts`).
    """
    n_seg, taps, og = pcw.shape
    groups = g_seg0.shape[0]
    o_ = og * groups
    nr = r_lo.shape[0]
    nc = c_lo.shape[0]
    kh = taps // kw
    bias = np.empty((nr, nc, o_))
    ktab = np.empty((nr, nc, o_), dtype=np.int64)
    sum_w = np.empty((nr, nc, o_), dtype=np.int64)
    pinv = np.empty((n_seg, nr, nc, og), dtype=np.int64)
    n_valid = np.empty((nr, nc, groups), dtype=np.int64)
    for o in prange(o_):
        g = o // og
        j = o % og
        d_w = alpha_w[o]
        c_w = beta_w[o]
        for r in range(nr):
            for cl in range(nc):
                n_taps = (r_hi[r] - r_lo[r]) * (c_hi[cl] - c_lo[cl])
                acc = 0.0
                sw_tot = 0
                nv_tot = 0
                k_tot = 0
                for s in range(g_seg0[g], g_seg1[g]):
                    pv = 0
                    pall = 0
                    for ki in range(kh):
                        for kj in range(kw):
                            pc = pcw[s, ki * kw + kj, j]
                            pall += pc
                            if r_lo[r] <= ki < r_hi[r] and c_lo[cl] <= kj < c_hi[cl]:
                                pv += pc
                    nv = seg_n[s] * n_taps
                    s_w = 2 * pv - nv
                    acc += seg_ca[s] * (d_w * s_w + c_w * nv)
                    sw_tot += s_w
                    nv_tot += nv
                    pinv[s, r, cl, j] = pall - pv
                    k_tot += nv + 2 * (pall - pv)
                bias[r, cl, o] = acc + shift[o]
                ktab[r, cl, o] = k_tot
                sum_w[r, cl, o] = sw_tot
                if j == 0:
                    n_valid[r, cl, g] = nv_tot
    out_w = col_cls.shape[0]
    if per_pixel:
        out_h = row_cls.shape[0]
        brow = np.empty((1, o_, out_h * out_w))
        krow = np.empty((1, o_, out_h * out_w), dtype=np.int32)
        for o in prange(o_):
            for oh in range(out_h):
                r = row_cls[oh]
                for ow in range(out_w):
                    brow[0, o, oh * out_w + ow] = bias[r, col_cls[ow], o]
                    krow[0, o, oh * out_w + ow] = ktab[r, col_cls[ow], o]
    else:
        brow = np.empty((nr, o_, out_w))
        krow = np.empty((nr, o_, out_w), dtype=np.int32)
        for o in prange(o_):
            for r in range(nr):
                for ow in range(out_w):
                    brow[r, o, ow] = bias[r, col_cls[ow], o]
                    krow[r, o, ow] = ktab[r, col_cls[ow], o]
    return brow, krow, pinv, sum_w, n_valid


@njit(cache=True, inline="always", error_model="numpy")
def _chunk_offsets(offs, ntap, oh0, oh1, h_, w_, row_cls, col_cls, r_lo, r_hi, c_lo, c_hi, kh,
                   kw, sh, sw, ph, pw, dh, dw, cw, tp):
    """Fill ``offs[t*npad + pix]`` and ``ntap[pix]`` for output rows ``[oh0, oh1)`` (see
    :func:`tap_offsets`)."""
    out_w = col_cls.shape[0]
    npx = (oh1 - oh0) * out_w
    npad = (npx + tp - 1) // tp * tp
    ohs = np.empty(npad, dtype=np.int64)
    ows = np.empty(npad, dtype=np.int64)
    oh = oh0
    ow = 0
    for pix in range(npx):
        ohs[pix] = oh
        ows[pix] = ow
        rc = row_cls[oh]
        cl = col_cls[ow]
        ntap[pix] = (r_hi[rc] - r_lo[rc]) * (c_hi[cl] - c_lo[cl])
        ow += 1
        if ow == out_w:
            ow = 0
            oh += 1
    for pix in range(npx, npad):
        ohs[pix] = -1 - (kh - 1) * dh - ph  # no tap of it is in bounds
        ows[pix] = 0
    zoff = h_ * w_ * cw
    # one tap at a time over contiguous pixels, so the loop vectorises
    for ki in range(kh):
        for kj in range(kw):
            tb = (ki * kw + kj) * npad
            dih = ki * dh - ph
            diw = kj * dw - pw
            for pix in range(npad):
                ih = ohs[pix] * sh + dih
                iw = ows[pix] * sw + diw
                ok = (ih >= 0) & (ih < h_) & (iw >= 0) & (iw < w_)
                offs[tb + pix] = ((ih * w_ + iw) * cw) if ok else zoff


@njit(cache=True, parallel=True, error_model="numpy")
def tap_offsets(h_, w_, out_h, row_cls, col_cls, r_lo, r_hi, c_lo, c_hi, kh, kw, sh, sw, ph, pw,
                dh, dw, cw, tp, rows_per_task):
    """Per-tap activation word offsets of every output pixel, per chunk of
    ``rows_per_task`` output rows, relative to an image's first word: ``offs[chunk, t*npad +
    pix]`` (tap-major; ``npad`` = the chunk's pixels rounded up to whole tiles of ``tp``) is
    ``(ih*W + iw)*cw`` for an in-bounds tap and ``H*W*cw`` -- the image's zero pixel, see
    :func:`~.pack.pack_activations` -- for a padded tap or a pixel past the chunk's end.
    ``ntap[chunk, pix]``: valid taps per pixel. They depend only on the geometry and the work
    split, so a call plan builds them once and every image and call reuses them (building
    them per task cost 64ch 56x56 batch 8 about a tenth of its popcount stage)."""
    out_w = col_cls.shape[0]
    taps = kh * kw
    n_chunks = (out_h + rows_per_task - 1) // rows_per_task
    npx_max = min(out_h, rows_per_task) * out_w
    npad_max = (npx_max + tp - 1) // tp * tp
    offs = np.empty((n_chunks, taps * npad_max), dtype=np.int64)
    ntap = np.zeros((n_chunks, npad_max), dtype=np.int64)
    for chunk in prange(n_chunks):
        oh0 = chunk * rows_per_task
        _chunk_offsets(offs[chunk], ntap[chunk], oh0, min(out_h, oh0 + rows_per_task), h_, w_,
                       row_cls, col_cls, r_lo, r_hi, c_lo, c_hi, kh, kw, sh, sw, ph, pw, dh, dw,
                       cw, tp)
    return offs, ntap


@njit(cache=True, error_model="numpy")
def border_patches(out_h, row_cls, col_cls, int_rc, int_col, rows_per_task, row_stride):
    """Per chunk of ``rows_per_task`` output rows, the pixels whose border class differs from
    the interior one (row class ``int_rc``, the column class of output column ``int_col``):
    ``patch[chunk, i]`` (chunk-relative pixel), ``ptab[chunk, i] = r * row_stride + ow`` (its
    entry in a row table ``(classes, O, OW)`` flattened, channel 0; ``row_stride = O*OW``) for
    ``i < n_patch[chunk]``. Built once per call plan for the kernel's border-patch epilogue."""
    out_w = col_cls.shape[0]
    n_chunks = (out_h + rows_per_task - 1) // rows_per_task
    npx_max = min(out_h, rows_per_task) * out_w
    patch = np.empty((n_chunks, npx_max), dtype=np.uint64)
    ptab = np.empty((n_chunks, npx_max), dtype=np.uint64)
    n_patch = np.zeros(n_chunks, dtype=np.int64)
    c_int = col_cls[int_col]
    for chunk in range(n_chunks):
        oh0 = chunk * rows_per_task
        k = 0
        for oh in range(oh0, min(out_h, oh0 + rows_per_task)):
            r = row_cls[oh]
            for ow in range(out_w):
                if r != int_rc or col_cls[ow] != c_int:
                    patch[chunk, k] = (oh - oh0) * out_w + ow
                    ptab[chunk, k] = r * row_stride + ow
                    k += 1
        n_patch[chunk] = k
    return patch, ptab, n_patch


@njit(cache=True, inline="always", error_model="numpy")
def _tile(variant, xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase, xstride,
          aout, abase):
    if variant == 0:
        if nq == 1:
            tile_6x32_avx512_w1(xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout,
                                xbase, xstride, aout, abase)
        else:
            tile_6x32_avx512(xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase,
                             xstride, aout, abase)
    elif nq == 1:
        tile_4x8_avx2_w1(xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase,
                         xstride, aout, abase)
    else:
        tile_4x8_avx2(xa, offs, obase, ostride, wb, wbase, taps, wgm, q0, nq, xout, xbase,
                      xstride, aout, abase)


@njit(cache=True, parallel=True, error_model="numpy")
def bconv_forward(xa, h_, w_, out_h, wtb, variant, tp, wgm, g_w0, og, seg_w0, seg_w1, seg_da,
                  g_seg0, g_seg1, seg_n, brow, krow, pinv, r_lo, r_hi, c_lo, c_hi, alpha_w,
                  beta_w, row_cls, col_cls, kh, kw, sh, sw, ph, pw, dh, dw, int_rc, int_col,
                  offs_tab, ntap_tab, patch_tab, ptab_tab, npatch_tab, n_workers,
                  rows_per_task, blocks_per_task, raw, raw_x, raw_a, res,
                  mo_p, mo_q, tiles_only, y):
    """Tiled popcount convolution with the fused rescale into ``y`` ``(N, O, OH*OW)``.

    ``xa`` ``(N*(H*W + 1), CW)`` from :func:`~.pack.pack_activations` (each image followed by
    a zero pixel), ``wtb`` ``(groups*n_blk, K*wgm, J)`` weight blocks of ``J`` output
    channels. Tasks: (n, group, run of ``blocks_per_task`` blocks, chunk of
    ``rows_per_task`` output rows), in ``n_workers`` contiguous runs (one ``prange`` iteration
    each, a thread's share; a run allocates its scratch buffers once). A task reads its
    chunk's per-tap activation offsets from ``offs_tab``/``ntap_tab`` (:func:`tap_offsets`,
    image-relative; padded taps -> the image's zero pixel), then for each of its blocks and
    each segment of its group walks the pixels in tiles of ``tp`` through the microkernel of
    ``variant`` (:mod:`.microkernel`), and the epilogue writes each output channel's chunk as
    one contiguous run of ``y``.
    ``brow``/``krow`` are the border tables of :func:`border_tables`, ``(classes, O, OW)``
    indexed by the row class of an output row, or expanded per pixel ``(1, O, OH*OW)`` (when
    ``OW`` is short: the epilogue then runs over a task's whole pixel range in one vectorised
    loop instead of rows of a few pixels). With row tables, one activation segment and an
    interior border class (row class ``int_rc`` with all kernel rows in bounds, output column
    ``int_col`` of a column class with all kernel columns in bounds; ``int_rc = -1``: none)
    the epilogue writes each channel's whole pixel range in one loop with the interior
    entries and then recomputes the task's border pixels from their own table entries (same
    expression, same bits; 64ch 56x56 batch 8, one thread: epilogue 0.38 -> 0.28 ms); the
    border pixels of each chunk come from ``patch_tab``/``ptab_tab``/``npatch_tab``
    (:func:`border_patches`; no rows: row by row instead).
    ``raw=True`` writes ``raw_x[n, o, pix] = sum_s X^P_s`` and ``raw_a[n, g, pix] = sum_s A_s``
    instead of ``y`` (int64; dummies otherwise). The microkernels store their counts
    channel-major as int32 into a per-task buffer; the activation offsets are tap-major
    (``offs[t*npad + pix]``).

    Fused inference epilogue (a model's ``conv -> BatchNorm -> + residual -> Maxout``; the
    BatchNorm is folded into ``alpha_w``/``beta_w``/``brow`` by the caller): when ``res`` has
    the shape of ``y`` it is added, and when ``mo_p`` has ``O`` entries the result ``v``
    becomes ``mo_p[o]*v`` (``v > 0``) or ``mo_q[o]*v`` (otherwise); pass empty dummies
    to skip either. Everything is computed in float64 and rounded once into ``y``.

    When ``offs_tab`` has no rows (a call plan does not keep tables of more than
    ``_OFFSET_TABLE_BYTES``), every task builds its chunk's offsets itself.

    ``tiles_only=True`` (benchmark stage split only) runs the microkernels but skips the
    activation-popcount pass and the epilogue (``y`` unwritten).
    """
    n_ = xa.shape[0] // (h_ * w_ + 1)
    out_w = col_cls.shape[0]
    groups = g_seg0.shape[0]
    n_blk = wtb.shape[0] // groups
    jb = wtb.shape[2]
    taps = kh * kw
    blk_size = wtb.shape[1] * jb
    cw = xa.shape[1]
    img_words = (h_ * w_ + 1) * cw  # an image's pixels and its zero pixel
    xa_flat = xa.reshape(xa.size)
    offs_flat = offs_tab.reshape(offs_tab.size)
    orow = offs_tab.shape[1]
    cached_offs = offs_tab.shape[0] == (out_h + rows_per_task - 1) // rows_per_task
    brow_flat = brow.reshape(brow.size)
    krow_flat = krow.reshape(krow.size)
    wtb_flat = wtb.reshape(wtb.size)
    n_chunks = (out_h + rows_per_task - 1) // rows_per_task
    n_bg = (n_blk + blocks_per_task - 1) // blocks_per_task
    n_tasks = n_ * groups * n_bg * n_chunks
    has_res = res.shape[0] == n_ and res.shape[1] == y.shape[1] and res.shape[2] == y.shape[2]
    has_mo = mo_p.shape[0] == y.shape[1]
    pix_tab = brow.shape[2] != out_w  # per-pixel tables (1, O, OH*OW), see docstring
    fused = has_res or has_mo
    patch_ok = patch_tab.shape[0] == n_chunks and not pix_tab and int_rc >= 0
    # the tasks run in n_workers contiguous runs, one per thread (Numba's static schedule of
    # a prange over the tasks, made explicit), so that a run allocates its scratch once
    # instead of once per task (~1.5 us a task; 64ch 56x56 has 56 tasks at batch 8)
    npx_max = min(out_h, rows_per_task) * out_w
    npad_max = (npx_max + tp - 1) // tp * tp
    n_workers = max(1, n_workers)
    any_multi = raw or np.max(g_seg1 - g_seg0) > 1
    per_worker = (n_tasks + n_workers - 1) // n_workers
    for wk in prange(n_workers):
        xt_flat = np.empty(jb * (npad_max + 8), dtype=np.int32)
        apc = np.empty(npad_max, dtype=np.int64)
        qa = np.empty(npx_max)
        atot = np.empty(npx_max, dtype=np.int64)
        vbuf = np.empty(npx_max)
        # float sums over several segments / raw counts (zeroed per block where used)
        facc = np.zeros((npx_max, jb)) if any_multi else np.zeros((1, 1))
        xtot = np.zeros((npx_max, jb), dtype=np.int64) if raw else np.zeros((1, 1), dtype=np.int64)
        for task in range(wk * per_worker, min(n_tasks, (wk + 1) * per_worker)):
            chunk = task % n_chunks
            rest = task // n_chunks
            bg = rest % n_bg
            rest = rest // n_bg
            g = rest % groups
            n = rest // groups
            oh0 = chunk * rows_per_task
            oh1 = min(out_h, oh0 + rows_per_task)
            npx = (oh1 - oh0) * out_w
            n_tiles = (npx + tp - 1) // tp
            qg = g_w0[g]
            s0 = g_seg0[g]
            s1 = g_seg1[g]
            multi = s1 - s0 > 1 or raw
            # the chunk's per-tap word offsets (tap-major, offs_flat[chunk*orow + t*npad + pix],
            # built once per call plan by tap_offsets) are relative to an image's first word: the
            # microkernels read this image's words through a view that starts there
            npad = n_tiles * tp
            xa_img = xa_flat[n * img_words + qg:]
            if cached_offs:
                ntap = ntap_tab[chunk]
                obase0 = chunk * orow
                offs = offs_flat
            else:  # tables too large to keep: this task builds its chunk's offsets
                ntap = np.zeros(npad, dtype=np.int64)
                offs = np.empty(taps * npad, dtype=np.int64)
                _chunk_offsets(offs, ntap, oh0, oh1, h_, w_, row_cls, col_cls, r_lo, r_hi, c_lo,
                               c_hi, kh, kw, sh, sw, ph, pw, dh, dw, cw, tp)
                obase0 = 0
            # border-patch epilogue (row tables, one segment, not raw; the chunk's border pixels
            # from border_patches), used when at most a quarter of the task's pixels need patching
            use_patch = patch_ok and not multi and 4 * npatch_tab[chunk] <= npx
            n_patch = npatch_tab[chunk] if use_patch else 0
            # microkernel counts, channel-major (xt[jj, pix]), 8 entries of padding per row (the
            # tiles store whole vectors of pixels); activation terms per pixel, qa = sum_s d_a
            # (2 A_s - N_s), from the microkernel's activation popcounts during the first block
            xstride = n_tiles * tp + 8
            xt = xt_flat[:jb * xstride].reshape((jb, xstride))
            qa[:npx] = 0.0
            atot[:npx] = 0
            for blk in range(bg * blocks_per_task, min(n_blk, (bg + 1) * blocks_per_task)):
                j0 = blk * jb
                nj = min(og, j0 + jb) - j0
                obase = g * og + j0
                wbase = (g * n_blk + blk) * blk_size
                if multi:
                    facc[:, :] = 0.0
                if raw:
                    xtot[:, :] = 0
                for s in range(s0, s1):
                    q0 = seg_w0[s] - qg
                    nq = seg_w1[s] - seg_w0[s]
                    for it in range(n_tiles):
                        _tile(variant, xa_img, offs, obase0 + it * tp, npad, wtb_flat, wbase,
                              taps, wgm, q0, nq, xt_flat, it * tp, xstride, apc, it * tp)
                    if tiles_only:
                        continue
                    if blk == bg * blocks_per_task:
                        da = seg_da[s]
                        nseg = seg_n[s]
                        for pix in range(npx):
                            qa[pix] += da * (2 * apc[pix] - nseg * ntap[pix])
                            atot[pix] += apc[pix]
                    if multi:
                        da = seg_da[s]
                        for pix in range(npx):
                            rc = row_cls[oh0 + pix // out_w]
                            cl = col_cls[pix % out_w]
                            nv = seg_n[s] * ntap[pix]
                            for jj in range(nj):
                                xp = xt[jj, pix] - pinv[s, rc, cl, j0 + jj]
                                if raw:
                                    xtot[pix, jj] += xp
                                else:
                                    facc[pix, jj] += da * np.int32(nv - 2 * xp)
                if tiles_only:
                    continue
                if raw and bg == 0 and blk == 0:
                    for pix in range(npx):
                        raw_a[n, g, oh0 * out_w + pix] = atot[pix]
                if raw:
                    for jj in range(nj):
                        for pix in range(npx):
                            raw_x[n, obase + jj, oh0 * out_w + pix] = xtot[pix, jj]
                    continue
                da0 = seg_da[s0]
                ub0 = np.uint64(oh0 * out_w)
                for jj in range(nj):
                    o = obase + jj
                    d_w = alpha_w[o]
                    c_w = beta_w[o]
                    if use_patch:
                        # one vectorised run over the task's whole pixel range with the interior
                        # class's table entries, then the border pixels again with their own (the
                        # same expression per pixel as below, so the same bits): rows of a few
                        # dozen pixels cost ~2x per output in loop overhead
                        bi = brow[int_rc, o, int_col]
                        ki = krow[int_rc, o, int_col]
                        if not fused:
                            for uo in range(np.uint64(npx)):
                                y[n, o, ub0 + uo] = bi + d_w * (da0 * np.int32(
                                    ki - 2 * xt[jj, uo])) + c_w * qa[uo]
                            for i in range(n_patch):
                                u = patch_tab[chunk, i]
                                tq = ptab_tab[chunk, i] + np.uint64(o * out_w)
                                y[n, o, ub0 + u] = brow_flat[tq] + d_w * (da0 * np.int32(
                                    krow_flat[tq] - 2 * xt[jj, u])) + c_w * qa[u]
                            continue
                        for uo in range(np.uint64(npx)):
                            vbuf[uo] = bi + d_w * (da0 * np.int32(
                                ki - 2 * xt[jj, uo])) + c_w * qa[uo]
                        for i in range(n_patch):
                            u = patch_tab[chunk, i]
                            tq = ptab_tab[chunk, i] + np.uint64(o * out_w)
                            vbuf[u] = brow_flat[tq] + d_w * (da0 * np.int32(
                                krow_flat[tq] - 2 * xt[jj, u])) + c_w * qa[u]
                    else:
                        # runs of output pixels that read one table row: the whole chunk with
                        # per-pixel tables, else one output row (its row class picks the table row)
                        n_runs = 1 if pix_tab else oh1 - oh0
                        run_len = npx if pix_tab else out_w
                        for run in range(n_runs):
                            if pix_tab:
                                rc = 0
                                tb = np.uint64(oh0 * out_w)
                            else:
                                rc = row_cls[oh0 + run]
                                tb = np.uint64(0)
                            up = np.uint64(run * out_w)
                            ub = np.uint64((oh0 + run) * out_w)
                            if multi:
                                for u in range(run_len):
                                    vbuf[up + np.uint64(u)] = (brow[rc, o, tb + np.uint64(u)]
                                                               + d_w * facc[up + np.uint64(u), jj]
                                                               + c_w * qa[up + np.uint64(u)])
                            elif not fused:
                                # one expression per element, plain indexing (a Numba view would
                                # cost an atomic reference count per row), unsigned indices (no
                                # negative-index wraparound code, so the loop vectorises);
                                # |krow - 2X| = |N - 2 X^P| <= N < 2**31: exact in int32 (krow and
                                # X are int32 and the wrapped difference is the exact one, so LLVM
                                # keeps the arithmetic in 32-bit lanes)
                                for uo in range(np.uint64(run_len)):
                                    y[n, o, ub + uo] = brow[rc, o, tb + uo] + d_w * (
                                        da0 * np.int32(krow[rc, o, tb + uo]
                                                       - 2 * xt[jj, up + uo])) + c_w * qa[
                                        up + uo]
                            else:
                                for uo in range(np.uint64(run_len)):
                                    vbuf[up + uo] = brow[rc, o, tb + uo] + d_w * (da0 * np.int32(
                                        krow[rc, o, tb + uo] - 2 * xt[jj, up + uo])) + c_w * qa[
                                        up + uo]
                        if not (multi or fused):
                            continue
                    # vbuf holds the task's pixels of channel o: residual, Maxout, one store
                    if has_res:
                        for uo in range(np.uint64(npx)):
                            vbuf[uo] += res[n, o, ub0 + uo]
                    if has_mo:
                        mp = mo_p[o]
                        mq = mo_q[o]
                        for uo in range(np.uint64(npx)):
                            v = vbuf[uo]
                            vbuf[uo] = mp * v if v > 0.0 else mq * v
                    for uo in range(np.uint64(npx)):
                        y[n, o, ub0 + uo] = vbuf[uo]
    return y


@njit(cache=True, parallel=True, error_model="numpy")
def popcount_roofline(variant, taps, wgm, reps, n_threads):
    """Throughput probe: each of ``n_threads`` parallel copies runs the microkernel of
    ``variant`` ``reps`` times on L1-resident data (``taps*wgm`` words per pixel, one weight
    block, four fixed offset sets taken in turn): the convolution's popcount work with no
    offset building, packing, epilogue or memory traffic. Word-ops per copy:
    ``reps * taps * wgm * P * J`` (one 64-bit XOR + popcount + add = 64 binary MACs = 128
    binary ops). Returns one checksum per copy."""
    res = np.zeros(n_threads, dtype=np.int64)
    for tid in prange(n_threads):
        tp = 6 if variant == 0 else 4
        jb = 32 if variant == 0 else 8
        xa = np.empty((tp + 1) * wgm * 2, dtype=np.uint64)
        for i in range(xa.shape[0]):
            xa[i] = np.uint64(i * 0x9E3779B97F4A7C15 + tid)
        wb = np.empty(taps * wgm * jb, dtype=np.uint64)
        for i in range(wb.shape[0]):
            wb[i] = np.uint64(i * 0xC2B2AE3D27D4EB4F + 7)
        # four offset sets, one per call in turn: the calls differ (nothing to hoist out of
        # the loop) without a store into the activations the next call loads
        offs = np.empty(4 * taps * tp, dtype=np.int64)
        for v in range(4):
            for t in range(taps):
                for p in range(tp):
                    offs[(v * taps + t) * tp + p] = ((t + p + v) % (tp + 1)) * wgm
        xout = np.zeros((tp + 8) * jb, dtype=np.int32)
        aout = np.zeros(tp, dtype=np.int64)
        tot = 0
        for r in range(reps):
            _tile(variant, xa, offs, (r & 3) * taps * tp, tp, wb, 0, taps, wgm, 0, wgm, xout, 0,
                  tp + 8, aout, 0)
            tot += xout[r % (tp * jb)]
        res[tid] = tot
    return res
