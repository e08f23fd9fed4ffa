r"""Whole-model packed inference: ``model(x, packed=True)`` for the ResNets of :mod:`.models`.

An eval-mode model is compiled once into a :class:`PackedPlan` (cached on the model and rebuilt
whenever any parameter or buffer changes) that runs

* every AdaBin convolution through the bit-packed kernels (:mod:`adabin_np.kernels_packed`)
  with its BatchNorm **folded** into the weight levels (``y -> s*y + t`` with
  ``s = gamma/sqrt(var + eps)``, ``t = beta - mean*s``: exact algebra, the packed formula is
  linear in ``(d_w, c_w)``) and the residual add and Maxout **fused** into the kernel's
  epilogue, so a block is two kernel calls and no elementwise passes;
* the real-valued layers on BLAS: the stem and the 1x1 downsample convolutions as
  ``W @ im2col(x)`` per image (NumPy ``matmul``, ``sgemm``/``dgemm``) with their BatchNorm
  folded into ``W`` and a bias, the classifier head as one ``matmul`` with the BatchNorm1d
  folded in;
* max/average pooling and Maxout as small Numba kernels;
* float32 throughout for float32 input, float64 throughout for any other input (float64 keeps
  the oracle's precision: the logits then match the float path to ~1e-13). Intermediate
  activation buffers are allocated once per input shape and reused across calls.

The math of every step is the float path's (SPEC sections 3-6); only rounding differs
(float32: ~1e-6 relative on the logits; predictions are the float path's except where a
binarization sits within rounding of its threshold -- flip risk, SPEC section 7).

Freshness: before every call the plan compares every parameter and buffer of the model with
the snapshot it was built from (a bit comparison at memory speed) and every module's settings
(``extra_repr``: conventions, strides, ...) and rebuilds on any difference, so in-place edits
of weights or a changed convention can never be served from a stale plan.
"""

from __future__ import annotations

import concurrent.futures

import numba
import numpy as np
from numba import njit, prange

from . import packed as _P
from .packed.cpu import _run_cpu
from .conv import _blas_threads
from .layers import (
    AdaBinConv2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Identity,
    Linear,
    Maxout,
    Sequential,
    ShortcutA,
)
from .validation import activation_params, conv_params

__all__ = ["PackedPlan", "packed_forward", "supports"]


# ----------------------------------------------------------------------------------------------
# small kernels
# ----------------------------------------------------------------------------------------------


@njit(cache=True)
def _same_bits(a, b):
    """True iff the uint64 arrays ``a`` and ``b`` are equal (one streaming pass)."""
    diff = np.uint64(0)
    for i in range(a.shape[0]):
        diff |= a[i] ^ b[i]
    return diff == 0


@njit(cache=True, parallel=True)
def _maxout_bias(x, bias, p, q):
    """In place: ``v = x + bias[c]`` then ``p[c]*v`` (``v > 0``) or ``q[c]*v`` (Maxout)."""
    n_, c_, hw = x.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        b = bias[c]
        pc = p[c]
        qc = q[c]
        for i in range(hw):
            v = x[n, c, i] + b
            x[n, c, i] = pc * v if v > 0 else qc * v


@njit(cache=True, parallel=True)
def _maxpool(x, k, s, pad, out):
    """Max pooling ``k x k``, stride ``s``, padding ``pad`` (padded taps never win).

    Separable and exact (a max of maxes): per plane, first the horizontal window maxima of
    every input row, then the vertical maxima of those, whose inner loop over the output
    columns is branch-free. Every window holds at least one input (``pad < k``)."""
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        hm = np.empty((h_, ow_), dtype=x.dtype)
        for r in range(h_):
            for j in range(ow_):
                lo = j * s - pad
                m = x[n, c, r, max(lo, 0)]
                for kj in range(k):
                    iw = lo + kj
                    if 0 <= iw < w_:
                        m = max(m, x[n, c, r, iw])
                hm[r, j] = m
        for i in range(oh_):
            lo = i * s - pad
            r0 = max(lo, 0)
            for j in range(ow_):
                out[n, c, i, j] = hm[r0, j]
            for ki in range(k):
                ih = lo + ki
                if ih > r0 and ih < h_:
                    for j in range(ow_):
                        out[n, c, i, j] = max(out[n, c, i, j], hm[ih, j])


@njit(cache=True, parallel=True)
def _avgpool_ceil(x, k, s, out):
    """Average pooling ``k x k``, stride ``s``, no padding, ``ceil_mode=True``,
    ``count_include_pad=False``: the mean over the in-bounds part of each window."""
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    for t in prange(n_ * c_):
        n = t // c_
        c = t % c_
        for i in range(oh_):
            h1 = min(h_, i * s + k)
            for j in range(ow_):
                w1 = min(w_, j * s + k)
                acc = 0.0
                for ih in range(i * s, h1):
                    for iw in range(j * s, w1):
                        acc += x[n, c, ih, iw]
                out[n, c, i, j] = acc / ((h1 - i * s) * (w1 - j * s))


# ----------------------------------------------------------------------------------------------
# folding
# ----------------------------------------------------------------------------------------------


def _bn_affine(bn):
    """``(s, t)`` of an eval-mode BatchNorm: ``bn(y) = s*y + t`` per channel."""
    s = bn.params["weight"] / np.sqrt(bn.buffers["running_var"] + bn.eps)
    return s, bn.params["bias"] - bn.buffers["running_mean"] * s


def _maxout(m):
    return m.params["pos_scale"].astype(np.float64), m.params["neg_scale"].astype(np.float64)


class _RealConv:
    """Real conv (+ folded BatchNorm) as ``W' @ im2col(x) + b'`` per image on BLAS."""

    def __init__(self, conv: Conv2d, bn, dtype):
        w = conv.params["weight"]
        b = conv.params.get("bias", np.zeros(w.shape[0]))
        if conv.groups != 1:
            raise NotImplementedError("grouped real convolutions")
        if bn is not None:
            s, t = _bn_affine(bn)
            w = w * s[:, None, None, None]
            b = b * s + t
        self.w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=dtype)
        self.b = np.ascontiguousarray(b, dtype=dtype)
        self.k = w.shape[2:]
        pair = lambda v: (int(v), int(v)) if np.isscalar(v) else tuple(map(int, v))  # noqa: E731
        self.stride, self.padding, self.dilation = (pair(conv.stride), pair(conv.padding),
                                                    pair(conv.dilation))

    def __call__(self, x, bufs, key, add_bias=True):
        """``W' x`` (+ ``b'`` unless ``add_bias=False``: the caller fuses it)."""
        n_, c_, h_, w_ = x.shape
        kh, kw = self.k
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh = (h_ + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w_ + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        o_ = self.w2.shape[0]
        y = bufs.get(key, (n_, o_, oh, ow), x.dtype)
        if kh == kw == 1 and ph == pw == 0:
            xs = x[:, :, ::sh, ::sw][:, :, :oh, :ow]

            def images(worker, lo, hi):
                for n in range(lo, hi):
                    np.matmul(self.w2, xs[n].reshape(c_, -1), out=y[n].reshape(o_, -1))
        else:
            xp = bufs.get(key + "/pad", (n_, c_, h_ + 2 * ph, w_ + 2 * pw), x.dtype, zero=True)
            xp[:, :, ph:ph + h_, pw:pw + w_] = x
            st = xp.strides
            cols = np.lib.stride_tricks.as_strided(
                xp, (n_, c_, kh, kw, oh, ow),
                (st[0], st[1], st[2] * dh, st[3] * dw, st[2] * sh, st[3] * sw), writeable=False)

            def images(worker, lo, hi):
                col_buf = bufs.get(f"{key}/cols{worker}", (c_, kh, kw, oh, ow), x.dtype)
                for n in range(lo, hi):
                    col_buf[...] = cols[n]
                    np.matmul(self.w2, col_buf.reshape(c_ * kh * kw, -1),
                              out=y[n].reshape(o_, -1))
        _over_images(images, n_)
        if add_bias:
            y += self.b[None, :, None, None]
        return y


def _over_images(fn, n_):
    """``fn(worker, lo, hi)`` over contiguous image ranges, one per Numba thread, in Python
    threads: NumPy releases the GIL in the copies and the (one-thread, see
    :meth:`PackedPlan.__call__`) BLAS calls, so the images run in parallel without OpenBLAS's
    spinning workers. Each worker writes only its own images and its own buffers."""
    workers = min(n_, numba.get_num_threads())
    bounds = [n_ * i // workers for i in range(workers + 1)]
    if workers <= 1:
        fn(0, 0, n_)
        return
    pool = _image_pool(workers)
    futures = [pool.submit(fn, i, bounds[i], bounds[i + 1]) for i in range(workers)]
    for f in futures:
        f.result()


_POOLS = {}


def _image_pool(workers):
    """A process-wide thread pool of ``workers`` threads (created once per size)."""
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="adabin-np-images")
    return pool


class _Buffers:
    """Activation buffers by name and shape, allocated once and reused across calls."""

    def __init__(self):
        self._d = {}

    def get(self, key, shape, dtype, zero=False):
        k = (key, tuple(shape), np.dtype(dtype).str)
        buf = self._d.get(k)
        if buf is None:
            buf = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
            self._d[k] = buf
        return buf


class _PackedConv:
    """AdaBin conv with its BatchNorm folded; residual add and Maxout fused in the kernel."""

    def __init__(self, conv: AdaBinConv2d, bn: BatchNorm2d, maxout: Maxout | None):
        s, t = _bn_affine(bn)
        self.pw = _P.pack_weights(conv.params["weight"]).with_affine(s, t)
        self.conv = conv
        self.maxout = _maxout(maxout) if maxout is not None else None
        self.official = conv.convention == "official"
        self.alpha = conv.binary_a.params["alpha_a"]
        self.beta = conv.binary_a.params["beta_a"]

    def __call__(self, x, bufs, key, residual=None):
        c = self.conv
        p = conv_params(x.shape, self.pw.shape, c.stride, c.padding, c.dilation, c.groups)
        alpha_c, beta_c, _ = activation_params(self.alpha, self.beta, x.shape[1])
        out = bufs.get(key, (x.shape[0], self.pw.shape[0], p.out_h * p.out_w), x.dtype)
        y, _ = _run_cpu(x, self.pw, alpha_c, beta_c, p, self.official, out=out,
                           residual=residual, maxout=self.maxout)
        return y


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------


def supports(model) -> bool:
    """Whether :class:`PackedPlan` can compile ``model`` (the ResNets of :mod:`.models`)."""
    from .models import CifarResNet, ImageNetResNet

    return isinstance(model, (CifarResNet, ImageNetResNet)) and not model.training


def _words(a):
    """The bytes of ``a`` as uint64 words (zero-padded to a multiple of 8 bytes)."""
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if b.size % 8:
        b = np.concatenate([b, np.zeros(8 - b.size % 8, dtype=np.uint8)])
    return b.view(np.uint64)


def _config(model):
    """Everything besides arrays that the plan depends on: module types and their settings
    (``extra_repr``: kernel sizes, strides, padding, conventions, ...), the head variant."""
    return (getattr(model, "head", None), model.training,
            tuple((n, type(m).__name__, m.extra_repr()) for n, m in model.named_modules()))


def _state_arrays(model):
    out = []
    for name, mod in model.named_modules():
        for store in (mod.params, mod.buffers):
            for key in sorted(store):
                out.append((f"{name}.{key}", np.asarray(store[key])))
    return out


class PackedPlan:
    """A compiled eval-mode ResNet for packed inference (see the module docstring)."""

    def __init__(self, model):
        from .models import ImageNetResNet

        if not supports(model):
            raise TypeError(f"no packed plan for {type(model).__name__} "
                            f"(training={model.training})")
        self._snapshot = [(k, a.copy()) for k, a in _state_arrays(model)]
        self._config = _config(model)
        self.model = model
        self.imagenet = isinstance(model, ImageNetResNet)
        self._bufs = _Buffers()
        self._real = {}
        self._blocks = []
        m = model
        self._stem_mo = _maxout(m.nonlinear1)
        for dt in (np.float32, np.float64):
            self._real[("stem", dt)] = _RealConv(m.conv1, m.bn1, dt)
        for stage in m._stages:
            for blk in stage:
                sc = blk._shortcut()
                entry = dict(conv1=_PackedConv(blk.conv1, blk.bn1, blk.nonlinear1),
                             conv2=_PackedConv(blk.conv2, blk.bn2, blk.nonlinear2), sc=sc)
                if isinstance(sc, Sequential):  # BasicBlockB downsample: avgpool, 1x1, bn
                    pool, conv, bn = list(sc)
                    if not (isinstance(pool, AvgPool2d) and isinstance(conv, Conv2d)
                            and isinstance(bn, BatchNorm2d) and pool.padding == (0, 0)
                            and pool.ceil_mode and not pool.count_include_pad
                            and pool.kernel_size[0] == pool.kernel_size[1]
                            and pool.stride[0] == pool.stride[1]):
                        raise TypeError("unsupported downsample")
                    entry["pool"] = pool
                    for dt in (np.float32, np.float64):
                        entry[("down", dt)] = _RealConv(conv, bn, dt)
                elif not isinstance(sc, (Identity, ShortcutA)):
                    raise TypeError(f"unsupported shortcut {type(sc).__name__}")
                self._blocks.append(entry)
        # head: a chain of affine (BatchNorm1d), Maxout and Linear, folded into (W, b) pairs
        if self.imagenet:
            mp = m.maxpool
            if mp.ceil_mode or len(set(mp.kernel_size)) > 1 or len(set(mp.stride)) > 1 \
                    or len(set(mp.padding)) > 1:
                raise TypeError("unsupported max pool")
        head = (m._head() if self.imagenet else [m.bn2, m.linear])
        self._head = head

    def fresh(self) -> bool:
        """Every parameter and buffer still equals the snapshot (bit for bit)."""
        if _config(self.model) != self._config:
            return False
        now = _state_arrays(self.model)
        if len(now) != len(self._snapshot):
            return False
        for (k0, a0), (k1, a1) in zip(self._snapshot, now):
            if k0 != k1 or a0.shape != a1.shape or a0.dtype != a1.dtype:
                return False
            if a0.size and not _same_bits(_words(a0), _words(a1)):
                return False
        return True

    def _head_forward(self, h):
        x = h
        for layer in self._head:
            if isinstance(layer, Flatten):
                x = x.reshape(x.shape[0], -1)
            elif isinstance(layer, BatchNorm1d):
                s, t = _bn_affine(layer)
                x = x * s.astype(x.dtype) + t.astype(x.dtype)
            elif isinstance(layer, Maxout):
                p, q = _maxout(layer)
                x = np.where(x > 0, x * p.astype(x.dtype), x * q.astype(x.dtype))
            elif isinstance(layer, Linear):
                x = x @ layer.params["weight"].T.astype(x.dtype)
                if "bias" in layer.params:
                    x = x + layer.params["bias"].astype(x.dtype)
            else:
                raise TypeError(f"unsupported head layer {type(layer).__name__}")
        return x

    def __call__(self, x):
        """Logits for validated NCHW ``x`` (float32 -> float32, anything else -> float64).

        NumPy's BLAS runs on one thread inside the plan: OpenBLAS workers spin after each
        call, and on a 2-core machine they took the cores from the parallel Numba kernels
        that follow (ResNet-18 batch 8 at 2 threads: 192 ms with a 2-thread BLAS, 77 ms with
        a 1-thread one; the BLAS layers are a small share of the work)."""
        with _blas_threads(0):
            return self._forward(x)

    def _forward(self, x):
        dt = np.float32 if x.dtype == np.float32 else np.float64
        x = np.ascontiguousarray(x, dtype=dt)
        bufs = self._bufs
        stem = self._real[("stem", dt)]
        y = stem(x, bufs, "stem", add_bias=False)
        p, q = self._stem_mo
        n_, c_ = y.shape[:2]
        _maxout_bias(y.reshape(n_, c_, -1), stem.b, p.astype(dt), q.astype(dt))
        if self.imagenet:
            mp = self.model.maxpool
            k, s, pad = mp.kernel_size[0], mp.stride[0], mp.padding[0]
            oh = (y.shape[2] + 2 * pad - k) // s + 1
            ow = (y.shape[3] + 2 * pad - k) // s + 1
            out = bufs.get("maxpool", (n_, c_, oh, ow), dt)
            _maxpool(y, k, s, pad, out)
            y = out
        for i, blk in enumerate(self._blocks):
            sc = blk["sc"]
            if isinstance(sc, Identity):
                res = y
            elif isinstance(sc, ShortcutA):
                sub = y[:, :, ::2, ::2]
                res = bufs.get(f"b{i}/sc", (n_, y.shape[1] + 2 * sc.pad) + sub.shape[2:], dt,
                               zero=True)
                res[:, sc.pad:sc.pad + y.shape[1]] = sub
            else:
                pool = blk["pool"]
                k, s = pool.kernel_size[0], pool.stride[0]
                oh, ow = -(-(y.shape[2] - k) // s) + 1, -(-(y.shape[3] - k) // s) + 1
                pooled = bufs.get(f"b{i}/pool", (n_, y.shape[1], oh, ow), dt)
                _avgpool_ceil(y, k, s, pooled)
                res = blk[("down", dt)](pooled, bufs, f"b{i}/down")
            h = blk["conv1"](y, bufs, f"b{i}/c1", residual=res)
            h = h.reshape(res.shape)
            y = blk["conv2"](h, bufs, f"b{i}/c2", residual=h).reshape(res.shape)
        if self.imagenet:
            ap = self.model.avgpool
            if y.shape[2:] != (ap.kernel_size[0], ap.kernel_size[1]):
                raise ValueError(f"the last stage must be 7x7 (input 224x224); the average pool "
                                 f"gave a different size for input {x.shape[2:]}")
        feat = y.mean(axis=(2, 3), dtype=np.float64).astype(dt)
        return np.ascontiguousarray(self._head_forward(feat), dtype=dt)


def packed_forward(model, x):
    """Logits of ``model`` for ``x`` through its (cached, freshness-checked) :class:`PackedPlan`;
    ``None`` when the model is not supported (the caller falls back to the per-layer route)."""
    if not supports(model):
        return None
    plan = model.__dict__.get("_packed_plan")
    if plan is None or not plan.fresh():
        try:
            plan = PackedPlan(model)
        except (TypeError, NotImplementedError):
            return None
        object.__setattr__(model, "_packed_plan", plan)
    return plan(x)
