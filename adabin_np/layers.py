r"""Layers with explicit forward and backward (micrograd style), float64 throughout.

Every layer is one class whose ``forward`` and ``backward`` sit side by side; ``forward``
caches what ``backward`` needs. Conventions shared by all layers:

* ``params`` / ``grads``: dicts of the layer's **own** learnable arrays and their gradients
  under the PyTorch ``state_dict`` names (``weight``, ``bias``, ``alpha_a``, ``pos_scale`` ...);
  ``buffers``: non-learnable state (BatchNorm running statistics). Children are registered by
  assigning them as attributes (``self.bn1 = BatchNorm2d(16)``), so the full ``state_dict``
  key of a tensor is the dotted attribute path, exactly as in PyTorch.
* ``backward(grad)`` takes dL/d(output of the last ``forward``), **sets** (does not
  accumulate) ``grads`` and returns dL/d(input). Each layer instance is used once per forward.
* ``train()`` / ``eval()`` switch BatchNorm between batch statistics and running statistics.
* Inputs are validated at the layer boundary (finite, real, right ndim and channel count) with
  errors that name the layer; computation is float64.

The binary layer is :class:`AdaBinConv2d` (the public release's ``AdaBin_Conv2d``): activation
binary set ``binary_a.alpha_a``, ``binary_a.beta_a`` (learnable scalars, Bi-Real estimator) and
per-output-channel weight set from the real weights (EDE estimator), see
:func:`adabin_np.adabin_conv2d` and :func:`adabin_np.adabin_conv2d_grad`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from .binarize import binarize_activations, binarize_activations_grad
from .conv import _conv, _conv_backward, _geometry, adabin_conv2d, adabin_conv2d_grad
from .validation import as_float_array, check_convention, check_finite_scalar

__all__ = [
    "Module",
    "Sequential",
    "Conv2d",
    "AdaBinConv2d",
    "BinaryActivation",
    "BatchNorm1d",
    "BatchNorm2d",
    "Maxout",
    "Linear",
    "AvgPool2d",
    "MaxPool2d",
    "GlobalAvgPool2d",
    "Flatten",
    "ShortcutA",
    "Identity",
    "StateDictError",
]


class StateDictError(ValueError):
    """A state dict does not fit a model: missing/unexpected keys or shape mismatches."""


# ----------------------------------------------------------------------------------------------
# base classes
# ----------------------------------------------------------------------------------------------


class Module:
    """Base class: parameter/buffer bookkeeping, children, ``state_dict``, train/eval.

    Subclasses implement ``forward(x)`` and ``backward(grad)``. Calling the module calls
    ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "_children", {})
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._cache = None

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._children[name] = value
        elif name in getattr(self, "_children", {}):
            del self._children[name]
        object.__setattr__(self, name, value)

    def __call__(self, x, **kwargs):
        return self.forward(x, **kwargs)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- tree ----------------------------------------------------------------------------------

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._children.items()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Pre-order walk: ``("", self)`` first, then every descendant under its dotted name."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self) -> Iterator[tuple[str, Module, str]]:
        """``(full_name, owning_module, key)`` for every learnable array."""
        for mname, mod in self.named_modules():
            for key in mod.params:
                yield (f"{mname}.{key}" if mname else key), mod, key

    def train(self, mode: bool = True):
        """Training mode (BatchNorm uses batch statistics and updates running ones)."""
        for _, mod in self.named_modules():
            mod.training = bool(mode)
        return self

    def eval(self):
        """Inference mode (BatchNorm uses running statistics)."""
        return self.train(False)

    def zero_grad(self):
        for _, mod, key in self.named_parameters():
            mod.grads[key] = np.zeros_like(mod.params[key])

    def num_parameters(self) -> int:
        return int(sum(mod.params[key].size for _, mod, key in self.named_parameters()))

    # -- state dict ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers under PyTorch's names and order."""
        out = {}
        for mname, mod in self.named_modules():
            pre = f"{mname}." if mname else ""
            for key, arr in mod.params.items():
                out[pre + key] = arr.copy()
            for key, arr in mod.buffers.items():
                out[pre + key] = arr.copy()
        return out

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray], *, strict: bool = True):
        """Load parameters and buffers by name.

        Values are converted to float64 (``num_batches_tracked`` stays int64) and must be
        finite and of the expected shape. With ``strict=True`` (default) any missing or
        unexpected key is an error; with ``strict=False`` they are ignored and returned.
        Shape mismatches are always an error. Nothing is modified unless everything fits.

        Returns ``(missing_keys, unexpected_keys)``. Raises :class:`StateDictError` listing
        every problem at once.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        slots = {}
        for mname, mod in self.named_modules():
            pre = f"{mname}." if mname else ""
            for store in (mod.params, mod.buffers):
                for key in store:
                    slots[pre + key] = (mod, store, key)
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        problems = []
        staged = []
        for name, (mod, store, key) in slots.items():
            if name not in state_dict:
                continue
            cur = store[key]
            try:
                arr = np.asarray(state_dict[name])
                if arr.dtype.kind not in "biuf":
                    raise TypeError(f"non-real dtype {arr.dtype}")
            except Exception as exc:  # noqa: BLE001 - reported below with the key
                problems.append(f"  {name}: cannot convert ({exc})")
                continue
            if arr.shape != cur.shape:
                problems.append(f"  {name}: shape {arr.shape} in state_dict, model expects "
                                f"{cur.shape}")
                continue
            arr = np.array(arr, dtype=cur.dtype, order="C", copy=True)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                problems.append(f"  {name}: contains NaN or infinity")
                continue
            staged.append((mod, store, key, arr))
        if strict and (missing or unexpected):
            if missing:
                problems.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                problems.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if problems:
            raise StateDictError(f"cannot load state_dict into {type(self).__name__}:\n"
                                 + "\n".join(problems))
        for mod, store, key, arr in staged:
            store[key] = arr
        for _, mod in self.named_modules():
            mod._params_changed()
        return missing, unexpected

    def _params_changed(self):
        """Hook: parameters were replaced (drop derived caches such as packed weights)."""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._children.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache


class Sequential(Module):
    """Children ``"0", "1", ...`` applied in order; backward in reverse order."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __iter__(self):
        return iter(self._children.values())

    def __len__(self):
        return len(self._children)

    def __getitem__(self, i):
        return list(self._children.values())[i]

    def forward(self, x):
        for layer in self._children.values():
            x = layer(x)
        return x

    def backward(self, grad):
        for layer in reversed(list(self._children.values())):
            grad = layer.backward(grad)
        return grad


class Identity(Module):
    """y = x (the release's empty ``nn.Sequential()`` shortcut)."""

    def forward(self, x):
        return x

    def backward(self, grad):
        return grad


def _input(x, layer, ndim=None, channels=None, ndims=None, min_ndim=1):
    """Validate a layer input: real finite float64, given ndim and channel count on axis 1."""
    x = as_float_array(x, f"x (input of {layer})", min_ndim=min_ndim)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer} expects a {ndim}-d input, got shape {x.shape}")
    if ndims is not None and x.ndim not in ndims:
        raise ValueError(f"{layer} expects an input with ndim in {ndims}, got shape {x.shape}")
    if channels is not None and (x.ndim < 2 or x.shape[1] != channels):
        raise ValueError(f"{layer} expects {channels} channels on axis 1, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{layer} got an empty input of shape {x.shape}")
    return x


def _grad(grad, shape, layer):
    g = as_float_array(grad, f"grad (of {layer})", min_ndim=1)
    if g.shape != tuple(shape):
        raise ValueError(f"{layer}.backward: grad has shape {g.shape}, expected {tuple(shape)}")
    return g


def _kaiming_normal(rng, shape, fan_in):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------
# convolutions
# ----------------------------------------------------------------------------------------------


def _init_conv(layer, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               rng):
    """Shared constructor part of Conv2d and AdaBinConv2d: geometry + Kaiming-normal weight."""
    ks = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
    if len(ks) != 2 or min(ks) < 1:
        raise ValueError(f"kernel_size must be a positive int or pair, got {kernel_size!r}")
    ks = tuple(int(k) for k in ks)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must "
                         f"be divisible by groups={groups}")
    layer.stride, layer.padding, layer.dilation = stride, padding, dilation
    layer.in_channels, layer.out_channels, layer.kernel_size = in_channels, out_channels, ks
    layer.groups = groups
    fan_in = in_channels // groups * ks[0] * ks[1]
    layer.params["weight"] = _kaiming_normal(_rng(rng), (out_channels, in_channels // groups,
                                                         *ks), fan_in)
    return fan_in


class Conv2d(Module):
    r"""Real-valued convolution ``y = conv2d(x, W) (+ b)`` (the models' stem / downsample).

    Backward: :math:`dx = \mathrm{conv2d}^\top_x(g, W)`, :math:`dW = \mathrm{conv2d}^\top_W(x, g)`,
    :math:`db = \sum_{n,i,j} g`. Initialisation: Kaiming normal, std = sqrt(2/fan_in).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, *, rng=None):
        super().__init__()
        fan_in = _init_conv(self, in_channels, out_channels, kernel_size, stride, padding,
                            dilation, groups, rng)
        if bias:
            bound = 1.0 / math.sqrt(fan_in)
            self.params["bias"] = _rng(rng).uniform(-bound, bound, out_channels)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def forward(self, x):
        name = type(self).__name__
        x = _input(x, name, ndim=4, channels=self.in_channels)
        x, w, p = _geometry(x, self.params["weight"], self.stride, self.padding, self.dilation,
                            self.groups)
        y = _conv(x, w, p)
        if "bias" in self.params:
            y += self.params["bias"][None, :, None, None]
        self._cache = (x, p)
        return y

    def backward(self, grad):
        x, p = self._need_cache()
        w = self.params["weight"]
        g = _grad(grad, (x.shape[0], w.shape[0], p.out_h, p.out_w), type(self).__name__)
        dx, dw = _conv_backward(x, w, g, p)
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = g.sum(axis=(0, 2, 3))
        return dx


class BinaryActivation(Module):
    r"""Learnable activation binary set of the release (``binary_a``: ``alpha_a``, ``beta_a``).

    ``paper``: :math:`\alpha s + \beta`; ``official``: :math:`\alpha (s + \beta)`, with
    :math:`s = \mathrm{sign}((x - \beta)/\alpha)`. Backward: Bi-Real estimator, see
    :func:`adabin_np.binarize_activations_grad`. Init ``alpha_a = 1``, ``beta_a = 0`` (0-d).
    """

    def __init__(self, *, convention="paper"):
        super().__init__()
        self.convention = check_convention(convention)
        self.params["alpha_a"] = np.array(1.0)
        self.params["beta_a"] = np.array(0.0)

    @property
    def alpha(self) -> float:
        return float(self.params["alpha_a"])

    @property
    def beta(self) -> float:
        return float(self.params["beta_a"])

    def extra_repr(self):
        return f"alpha_a={self.alpha:.4g}, beta_a={self.beta:.4g}, convention={self.convention!r}"

    def forward(self, x):
        x = as_float_array(x, "x (input of BinaryActivation)", allow_scalar=True)
        self._cache = x
        return binarize_activations(x, self.params["alpha_a"], self.params["beta_a"],
                                    convention=self.convention)

    def backward(self, grad):
        x = self._need_cache()
        g = binarize_activations_grad(x, self.params["alpha_a"], self.params["beta_a"], grad,
                                      convention=self.convention)
        self.grads["alpha_a"] = np.array(g.dalpha, dtype=np.float64)
        self.grads["beta_a"] = np.array(g.dbeta, dtype=np.float64)
        return g.dx


class AdaBinConv2d(Module):
    r"""AdaBin 1w1a convolution (the release's ``AdaBin_Conv2d``; no bias).

    .. math:: y = \mathrm{conv2d}\big(B_a(x;\ \alpha_a, \beta_a),\ B_w(W)\big)

    with the activation set ``binary_a.alpha_a``, ``binary_a.beta_a`` (scalars) and the weight
    set ``beta_w = mean(W_o)``, ``alpha_w = std(W_o)`` per output channel; padding is a real
    zero after binarization. Backward: :func:`adabin_np.adabin_conv2d_grad` with this layer's
    EDE parameters ``k``, ``t`` (set per epoch by the trainer).

    ``forward(x, packed=True)`` runs the bit-packed XNOR/popcount kernel of
    :mod:`adabin_np.packed` instead (inference only; the packed weights are cached and rebuilt
    when ``weight`` changes or a state dict is loaded). ``record=True`` keeps the layer's
    pre-binarization input in ``recorded_input`` (for distribution analysis).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, *, convention="paper", rng=None):
        super().__init__()
        _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                   rng)
        self.binary_a = BinaryActivation(convention=convention)
        self.k = 10.0
        self.t = 0.1
        self.packed = False
        self.device = "cpu"
        self.record = False
        self.recorded_input = None
        self._packed_cache = None

    @property
    def convention(self) -> str:
        return self.binary_a.convention

    @convention.setter
    def convention(self, value):
        self.binary_a.convention = check_convention(value)
        self._packed_cache = None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, convention={self.convention!r}")

    def _params_changed(self):
        self._packed_cache = None

    def _conv_kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, convention=self.convention)

    def forward(self, x, packed=None):
        """``packed=None`` uses the layer attribute ``packed`` (set by the model's ``forward``)."""
        x = _input(x, "AdaBinConv2d", ndim=4, channels=self.in_channels)
        packed = self.packed if packed is None else bool(packed)
        alpha = self.binary_a.params["alpha_a"]
        beta = self.binary_a.params["beta_a"]
        self.recorded_input = x if self.record else None
        if packed:
            self._cache = None  # the packed path has no backward
            return self._packed_forward(x, alpha, beta)
        self._cache = x
        return adabin_conv2d(x, self.params["weight"], alpha, beta, **self._conv_kwargs())

    def backward(self, grad):
        x = self._cache
        if x is None:
            raise RuntimeError("AdaBinConv2d.backward needs a float forward first (the packed "
                               "path is inference-only)")
        g = adabin_conv2d_grad(x, self.params["weight"], self.binary_a.params["alpha_a"],
                               self.binary_a.params["beta_a"], grad, k=self.k, t=self.t,
                               **self._conv_kwargs())
        self.grads["weight"] = g.dw
        self.binary_a.grads["alpha_a"] = np.array(g.dalpha, dtype=np.float64)
        self.binary_a.grads["beta_a"] = np.array(g.dbeta, dtype=np.float64)
        return g.dx

    def _packed_forward(self, x, alpha, beta):
        """Packed XNOR/popcount path; weights are binarized and packed once and cached."""
        from . import packed as _packed  # imported on first use (its kernels compile lazily)

        w = self.params["weight"]
        cache = self._packed_cache
        if cache is None or not np.array_equal(cache[0], w):
            cache = (w.copy(), _packed.pack_weights(w, convention=self.convention))
            self._packed_cache = cache
        return _packed.packed_adabin_conv2d_prepacked(x, cache[1], alpha, beta,
                                                      device=self.device, **self._conv_kwargs())


# ----------------------------------------------------------------------------------------------
# normalisation and non-linearity
# ----------------------------------------------------------------------------------------------


class _BatchNorm(Module):
    r"""Batch normalisation over every axis except 1 (PyTorch semantics, float64).

    Train: :math:`\mu, \sigma^2` are the batch mean and biased variance,
    :math:`\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}`, :math:`y = \gamma \hat x + \beta`;
    running statistics are updated as ``r = (1 - m) r + m * stat`` with momentum ``m = 0.1``
    and the **unbiased** variance ``sigma^2 * n/(n-1)`` (n elements per channel);
    ``num_batches_tracked`` counts the updates. Eval: running statistics instead of batch ones.

    Backward (train): :math:`dx = \frac{\gamma}{n\sqrt{\sigma^2+\epsilon}}\big(n g - \sum g -
    \hat x \sum g \hat x\big)`; eval: :math:`dx = \gamma g / \sqrt{r_{\sigma^2} + \epsilon}`.
    :math:`d\gamma = \sum g \hat x`, :math:`d\beta = \sum g`.
    """

    _ndims: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = int(num_features)
        self.eps = check_finite_scalar(eps, "eps", positive=True)
        self.momentum = check_finite_scalar(momentum, "momentum")
        self.params["weight"] = np.ones(num_features)
        self.params["bias"] = np.zeros(num_features)
        self.buffers["running_mean"] = np.zeros(num_features)
        self.buffers["running_var"] = np.ones(num_features)
        self.buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _shape(self, x):
        return (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x):
        name = type(self).__name__
        x = _input(x, name, ndims=self._ndims, channels=self.num_features)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = self._shape(x)
        if self.training:
            n = x.size // x.shape[1]
            if n < 2:
                raise ValueError(f"{name} in training mode needs more than one value per "
                                 f"channel, got input shape {x.shape}")
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"]
                                           + m * var * (n / (n - 1)))
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        else:
            mean = self.buffers["running_mean"]
            var = self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self._cache = (xhat, inv_std, self.training, axes, shape)
        return xhat * self.params["weight"].reshape(shape) + self.params["bias"].reshape(shape)

    def backward(self, grad):
        xhat, inv_std, training, axes, shape = self._need_cache()
        g = _grad(grad, xhat.shape, type(self).__name__)
        gamma = self.params["weight"]
        sum_g = g.sum(axis=axes)
        sum_gx = (g * xhat).sum(axis=axes)
        self.grads["weight"] = sum_gx
        self.grads["bias"] = sum_g
        scale = (gamma * inv_std).reshape(shape)
        if not training:
            return g * scale
        n = xhat.size // xhat.shape[1]
        return scale * (g - sum_g.reshape(shape) / n - xhat * (sum_gx.reshape(shape) / n))


class BatchNorm2d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__ + "\n    Input ``(N, C, H, W)``.\n"
    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__ + "\n    Input ``(N, C)`` or ``(N, C, L)``.\n"
    _ndims = (2, 3)


class Maxout(Module):
    r"""Per-channel two-slope non-linearity of the release (``Maxout``).

    .. math:: y = p_c\,\mathrm{relu}(x) - q_c\,\mathrm{relu}(-x)

    with learnable ``pos_scale`` :math:`p` (init 1.0) and ``neg_scale`` :math:`q` (init 0.25),
    channels on axis 1. Backward: :math:`dx = g\,(p [x > 0] + q [x < 0])` (0 at x = 0, as
    autograd through ``relu``), :math:`dp = \sum g\,\mathrm{relu}(x)`,
    :math:`dq = -\sum g\,\mathrm{relu}(-x)`.
    """

    def __init__(self, channels, neg_init=0.25, pos_init=1.0):
        super().__init__()
        self.channels = int(channels)
        self.params["neg_scale"] = np.full(channels, float(neg_init))
        self.params["pos_scale"] = np.full(channels, float(pos_init))

    def extra_repr(self):
        return str(self.channels)

    def forward(self, x):
        x = _input(x, "Maxout", min_ndim=2, channels=self.channels)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        pos = np.maximum(x, 0.0)
        neg = np.maximum(-x, 0.0)
        self._cache = (x, pos, neg, shape)
        return (self.params["pos_scale"].reshape(shape) * pos
                - self.params["neg_scale"].reshape(shape) * neg)

    def backward(self, grad):
        x, pos, neg, shape = self._need_cache()
        g = _grad(grad, x.shape, "Maxout")
        axes = (0,) + tuple(range(2, x.ndim))
        self.grads["pos_scale"] = (g * pos).sum(axis=axes)
        self.grads["neg_scale"] = -(g * neg).sum(axis=axes)
        slope = np.where(x > 0, self.params["pos_scale"].reshape(shape),
                         np.where(x < 0, self.params["neg_scale"].reshape(shape), 0.0))
        return g * slope


# ----------------------------------------------------------------------------------------------
# dense, pooling, reshaping
# ----------------------------------------------------------------------------------------------


class Linear(Module):
    r"""Real-valued fully connected layer :math:`y = x W^\top + b`.

    Backward: :math:`dx = g W`, :math:`dW = g^\top x`, :math:`db = \sum_n g`. Init as PyTorch:
    ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and bias (``init="kaiming_normal"`` gives the
    ResNet-20 release's Kaiming normal weights).
    """

    def __init__(self, in_features, out_features, bias=True, *, rng=None, init="uniform"):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        if init == "kaiming_normal":
            self.params["weight"] = _kaiming_normal(rng, (out_features, in_features), in_features)
        elif init == "uniform":
            self.params["weight"] = rng.uniform(-bound, bound, (out_features, in_features))
        else:
            raise ValueError(f"init must be 'uniform' or 'kaiming_normal', got {init!r}")
        if bias:
            self.params["bias"] = rng.uniform(-bound, bound, out_features)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"

    def forward(self, x):
        x = _input(x, "Linear", ndim=2, channels=self.in_features)
        self._cache = x
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, grad):
        x = self._need_cache()
        g = _grad(grad, (x.shape[0], self.out_features), "Linear")
        self.grads["weight"] = g.T @ x
        if "bias" in self.params:
            self.grads["bias"] = g.sum(axis=0)
        return g @ self.params["weight"]


def _pool_out(size, k, s, p, ceil_mode):
    """PyTorch's pooling output length (a last window must start inside input + left pad)."""
    span = size + 2 * p - k
    if span < 0:
        raise ValueError(f"pooling window {k} is larger than the padded input {size + 2 * p}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window_views(xpad, k, s, oh, ow):
    """Yield ((ki, kj), strided view) of every window offset, each of shape (N, C, oh, ow)."""
    for ki in range(k[0]):
        for kj in range(k[1]):
            yield (ki, kj), xpad[:, :, ki:ki + s[0] * (oh - 1) + 1:s[0],
                                 kj:kj + s[1] * (ow - 1) + 1:s[1]]


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        k = (kernel_size, kernel_size) if np.isscalar(kernel_size) else tuple(kernel_size)
        s = k if stride is None else ((stride, stride) if np.isscalar(stride) else tuple(stride))
        p = (padding, padding) if np.isscalar(padding) else tuple(padding)
        if min(k) < 1 or min(s) < 1 or min(p) < 0:
            raise ValueError(f"bad pooling geometry kernel={k} stride={s} padding={p}")
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"padding {p} must be at most half the kernel {k}")
        self.kernel_size, self.stride, self.padding = tuple(map(int, k)), tuple(map(int, s)), \
            tuple(map(int, p))
        self.ceil_mode = bool(ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")

    def _geometry(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        oh = _pool_out(x.shape[2], k[0], s[0], p[0], self.ceil_mode)
        ow = _pool_out(x.shape[3], k[1], s[1], p[1], self.ceil_mode)
        # padded canvas: left/top padding p, right/bottom enough for the last (ceil) window
        hp = max((oh - 1) * s[0] + k[0], x.shape[2] + 2 * p[0])
        wp = max((ow - 1) * s[1] + k[1], x.shape[3] + 2 * p[1])
        return oh, ow, hp, wp

    def _pad(self, x, hp, wp, fill):
        n, c, h, w = x.shape
        ph, pw = self.padding
        out = np.full((n, c, hp, wp), fill)
        out[:, :, ph:ph + h, pw:pw + w] = x
        return out


class AvgPool2d(_Pool2d):
    r"""Average pooling (PyTorch semantics incl. ``ceil_mode`` and ``count_include_pad``).

    :math:`y = \frac{1}{|P|}\sum_{(i,j)\in P} x_{ij}` where ``P`` is the window clipped to the
    input (``count_include_pad=False``) or to the zero-padded input (``True``); windows that
    overhang past the padding because of ``ceil_mode`` never count the overhang. Backward
    spreads ``g/|P|`` back over the window.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        x = _input(x, "AvgPool2d", ndim=4)
        oh, ow, hp, wp = self._geometry(x)
        xpad = self._pad(x, hp, wp, 0.0)
        ones = np.zeros((1, 1, hp, wp))
        ph, pw = self.padding
        if self.count_include_pad:
            ones[:, :, :x.shape[2] + 2 * ph, :x.shape[3] + 2 * pw] = 1.0
        else:
            ones[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = 1.0
        y = np.zeros(x.shape[:2] + (oh, ow))
        count = np.zeros((1, 1, oh, ow))
        for (_, _), view in _window_views(xpad, self.kernel_size, self.stride, oh, ow):
            y += view
        for (_, _), view in _window_views(ones, self.kernel_size, self.stride, oh, ow):
            count += view
        self._cache = (x.shape, count, oh, ow, hp, wp)
        return y / count

    def backward(self, grad):
        shape, count, oh, ow, hp, wp = self._need_cache()
        g = _grad(grad, shape[:2] + (oh, ow), "AvgPool2d") / count
        dpad = np.zeros(shape[:2] + (hp, wp))
        for (_, _), view in _window_views(dpad, self.kernel_size, self.stride, oh, ow):
            view += g
        ph, pw = self.padding
        return dpad[:, :, ph:ph + shape[2], pw:pw + shape[3]].copy()


class MaxPool2d(_Pool2d):
    r"""Max pooling with ``-inf`` padding (PyTorch semantics).

    Backward routes ``g`` to the arg-max of each window; ties go to the first maximum in
    row-major window order, as PyTorch's CPU kernel does.
    """

    def forward(self, x):
        x = _input(x, "MaxPool2d", ndim=4)
        oh, ow, hp, wp = self._geometry(x)
        xpad = self._pad(x, hp, wp, -np.inf)
        y = np.full(x.shape[:2] + (oh, ow), -np.inf)
        arg = np.zeros(y.shape, dtype=np.int64)
        for idx, ((_, _), view) in enumerate(_window_views(xpad, self.kernel_size, self.stride,
                                                           oh, ow)):
            better = view > y
            y = np.where(better, view, y)
            arg = np.where(better, idx, arg)
        self._cache = (x.shape, arg, oh, ow, hp, wp)
        return y

    def backward(self, grad):
        shape, arg, oh, ow, hp, wp = self._need_cache()
        g = _grad(grad, shape[:2] + (oh, ow), "MaxPool2d")
        dpad = np.zeros(shape[:2] + (hp, wp))
        for idx, ((_, _), view) in enumerate(_window_views(dpad, self.kernel_size, self.stride,
                                                           oh, ow)):
            view += np.where(arg == idx, g, 0.0)
        ph, pw = self.padding
        return dpad[:, :, ph:ph + shape[2], pw:pw + shape[3]].copy()


class GlobalAvgPool2d(Module):
    r"""Mean over the spatial axes, ``(N, C, H, W) -> (N, C)``; backward ``g/(H W)``.

    Equals the release's ``F.avg_pool2d(out, out.size()[3])`` + ``view`` on square maps.
    """

    def forward(self, x):
        x = _input(x, "GlobalAvgPool2d", ndim=4)
        self._cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad):
        shape = self._need_cache()
        g = _grad(grad, shape[:2], "GlobalAvgPool2d")
        return np.broadcast_to((g / (shape[2] * shape[3]))[:, :, None, None], shape).copy()


class Flatten(Module):
    """``(N, ...) -> (N, prod(...))``; backward reshapes back."""

    def forward(self, x):
        x = _input(x, "Flatten", min_ndim=2)
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        shape = self._need_cache()
        g = _grad(grad, (shape[0], int(np.prod(shape[1:]))), "Flatten")
        return g.reshape(shape)


class ShortcutA(Module):
    r"""Option-A (parameter-free) ResNet shortcut of the CIFAR release.

    ``y = pad(x[:, :, ::2, ::2], planes//4 zero channels on each side)``, so ``C`` input channels
    become ``C + 2*(planes//4)``. Backward: the gradient of the middle channels is scattered back
    onto the even pixels; every other input pixel gets 0.
    """

    def __init__(self, planes):
        super().__init__()
        self.pad = int(planes) // 4

    def extra_repr(self):
        return f"pad_channels={self.pad}"

    def forward(self, x):
        x = _input(x, "ShortcutA", ndim=4)
        sub = x[:, :, ::2, ::2]
        y = np.zeros((x.shape[0], x.shape[1] + 2 * self.pad) + sub.shape[2:])
        y[:, self.pad:self.pad + x.shape[1]] = sub
        self._cache = x.shape
        return y

    def backward(self, grad):
        shape = self._need_cache()
        oh, ow = (shape[2] + 1) // 2, (shape[3] + 1) // 2
        g = _grad(grad, (shape[0], shape[1] + 2 * self.pad, oh, ow), "ShortcutA")
        dx = np.zeros(shape)
        dx[:, :, ::2, ::2] = g[:, self.pad:self.pad + shape[1]]
        return dx
