r"""Models of the public AdaBin release, and the small digits model embedded in the package.

Module trees and ``state_dict`` names follow the public PyTorch release
(huawei-noah/Efficient-Computing, ``BinaryNetworks/AdaBin``), so its checkpoints load with
``m.load_state_dict(adabin_np.load_checkpoint(path))`` (strict by default; errors list
missing/unexpected keys and shape mismatches):

* :func:`resnet20_1w1a` -- CIFAR ResNet-20 (``cifar10/nets/resnet20.py``),
* :func:`resnet18_1w1a` -- ImageNet ResNet-18 (``imagenet/nets/resnet18.py``),
* :func:`digits_cnn` -- a 1w1a ResNet of the same design for 8x8 scikit-learn digits; its
  trained weights ship as ``adabin_np/data/digits_adabin.npz`` (:func:`load_digits_model`).

Every model is a :class:`~adabin_np.layers.Module` with

``m.eval(); m.train(); logits = m(x, packed=False, record=False); dx = m.backward(grad)``

``backward`` returns dL/dx and fills each layer's ``grads``. ``packed=True`` runs every binary
convolution through the bit-packed kernels of :mod:`adabin_np.packed` (inference).
``record=True`` keeps the pre-binarization input of every :class:`AdaBinConv2d`, available from
:meth:`BinaryNet.recorded_inputs` (per-layer distribution / flip-risk analysis).

Block (both ResNets), with :math:`M` = Maxout, :math:`B` = BatchNorm, :math:`C` = AdaBin conv:

.. math::
    h = M_1\big(B_1(C_1(x)) + \mathrm{shortcut}(x)\big), \qquad
    y = M_2\big(B_2(C_2(h)) + h\big)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint
from .layers import (
    AdaBinConv2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Identity,
    Linear,
    Maxout,
    MaxPool2d,
    Module,
    Sequential,
    ShortcutA,
)
from .validation import CONVENTIONS, as_float_array, check_convention, check_finite_scalar

__all__ = [
    "BinaryNet",
    "CifarResNet",
    "DigitsCNN",
    "ImageNetResNet",
    "BasicBlockA",
    "BasicBlockB",
    "resnet20_1w1a",
    "resnet18_1w1a",
    "digits_cnn",
    "load_digits_model",
    "split_metadata",
    "DIGITS_WEIGHTS",
    "CIFAR_MEAN",
    "CIFAR_STD",
]

#: Input normalisation of the release (ImageNet statistics, also used for CIFAR-10).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

#: The embedded digits model written by ``adabin-np train``.
DIGITS_WEIGHTS = Path(__file__).resolve().parent / "data" / "digits_adabin.npz"


class BinaryNet(Module):
    """Base class of the models: input checks, packed/record switches, binary-layer access."""

    in_channels = 3

    def __init__(self, convention="paper"):
        super().__init__()
        self._convention = check_convention(convention)

    # -- binary layers -------------------------------------------------------------------------

    def binary_layers(self) -> list[tuple[str, AdaBinConv2d]]:
        """``(state_dict prefix, layer)`` of every AdaBin convolution, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, AdaBinConv2d)]

    def named_layers(self) -> list[tuple[str, Module]]:
        """``(name, layer)`` of every module except the model itself (pre-order)."""
        return [(n, m) for n, m in self.named_modules() if n]

    def recorded_inputs(self) -> dict[str, np.ndarray]:
        """Pre-binarization inputs kept by the last ``forward(..., record=True)``."""
        return {n: m.recorded_input for n, m in self.binary_layers()
                if m.recorded_input is not None}

    @property
    def convention(self) -> str:
        return self._convention

    @convention.setter
    def convention(self, value):
        self._convention = check_convention(value)
        for _, layer in self.binary_layers():
            layer.convention = value

    def set_ede(self, k, t):
        """Set the EDE estimator ``(k, t)`` of every binary layer (see ``ede_schedule``)."""
        k = check_finite_scalar(k, "k")
        t = check_finite_scalar(t, "t")
        for _, layer in self.binary_layers():
            layer.k, layer.t = k, t

    # -- forward / backward --------------------------------------------------------------------

    def forward(self, x, packed=False, record=False, device="cpu"):
        """Logits for ``x`` of shape ``(N, C, H, W)`` (any real dtype, computed in float64).

        ``packed``: binary convolutions through :mod:`adabin_np.packed` (``device`` "cpu" or
        "cuda"); ``record``: keep every binary layer's input (see :meth:`recorded_inputs`).
        An eval-mode ResNet with ``packed=True`` on the CPU (no recording) runs the compiled
        whole-model plan of :mod:`adabin_np.inference` (BatchNorm folded, fused epilogues,
        real layers on BLAS): float32 input gives float32 logits, any other input float64.
        """
        x_in = x
        x = as_float_array(x, "x", ndim=4)
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample, got shape " + str(x.shape))
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (N, {self.in_channels}, "
                             f"H, W), got shape {x.shape}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if packed and device == "cpu" and not record and not self.training:
            from .inference import packed_forward

            for _, layer in self.binary_layers():
                layer.recorded_input = None
            x_fast = x_in if isinstance(x_in, np.ndarray) and x_in.dtype == np.float32 else x
            out = packed_forward(self, x_fast)
            if out is not None:
                return out
        for _, layer in self.binary_layers():
            layer.packed = bool(packed)
            layer.device = device
            layer.record = bool(record)
            if not record:
                layer.recorded_input = None
        return self._forward(x)

    def backward(self, grad):
        """dL/dx for dL/dlogits ``grad``; fills every layer's ``grads``."""
        return self._backward(grad)

    def _forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------


class _Block(Module):
    """Shared body and forward/backward of the two BasicBlocks (see the module docstring)."""

    def __init__(self, in_planes, planes, stride, convention, rng):
        """conv1 (3x3, stride) -> bn1 -> nonlinear1 -> conv2 (3x3) -> bn2, in state-dict order."""
        super().__init__()
        self.conv1 = AdaBinConv2d(in_planes, planes, 3, stride=stride, padding=1,
                                  convention=convention, rng=rng)
        self.bn1 = BatchNorm2d(planes)
        self.nonlinear1 = Maxout(planes)
        self.conv2 = AdaBinConv2d(planes, planes, 3, stride=1, padding=1, convention=convention,
                                  rng=rng)
        self.bn2 = BatchNorm2d(planes)

    def _shortcut(self) -> Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        out = self.bn1(self.conv1(x)) + self._shortcut()(x)
        h = self.nonlinear1(out)
        return self.nonlinear2(self.bn2(self.conv2(h)) + h)

    def backward(self, grad):
        g_sum2 = self.nonlinear2.backward(grad)
        g_h = g_sum2 + self.conv2.backward(self.bn2.backward(g_sum2))
        g_sum1 = self.nonlinear1.backward(g_h)
        return self.conv1.backward(self.bn1.backward(g_sum1)) + self._shortcut().backward(g_sum1)


class BasicBlockA(_Block):
    """CIFAR block of the release (``BasicBlock_1w1a``) with the option-A shortcut."""

    def __init__(self, in_planes, planes, stride=1, *, convention="paper", rng=None):
        super().__init__(in_planes, planes, stride, convention, rng)
        self.nonlinear2 = Maxout(planes)
        if stride != 1 or in_planes != planes:
            if in_planes + 2 * (planes // 4) != planes:
                raise ValueError(f"option-A shortcut needs planes = in_planes + 2*(planes//4), "
                                 f"got in_planes={in_planes}, planes={planes}")
            self.shortcut = ShortcutA(planes)
        else:
            self.shortcut = Identity()

    def _shortcut(self):
        return self.shortcut


class BasicBlockB(_Block):
    """ImageNet block of the release (``BasicBlock``) with a real-valued ``downsample``.

    ``downsample = AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) ->
    Conv2d 1x1 -> BatchNorm2d`` (the release's ``avg_down=True``), keys ``downsample.1.weight``
    and ``downsample.2.*``; ``Identity`` when the shape does not change.
    """

    def __init__(self, inplanes, planes, stride=1, *, convention="paper", rng=None):
        super().__init__(inplanes, planes, stride, convention, rng)
        if stride != 1 or inplanes != planes:
            self.downsample = Sequential(
                AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                Conv2d(inplanes, planes, 1, rng=rng),
                BatchNorm2d(planes),
            )
        else:
            self.downsample = None
        self.nonlinear2 = Maxout(planes)
        object.__setattr__(self, "_identity", Identity())  # not a child: no state

    def _shortcut(self):
        return self._identity if self.downsample is None else self.downsample


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------


class CifarResNet(BinaryNet):
    """CIFAR-style 1w1a ResNet of the release (ResNet-20 with ``num_blocks=(3, 3, 3)``).

    ``conv1`` (real 3x3) -> ``bn1`` -> ``nonlinear1`` (Maxout) -> ``layer1..`` (BasicBlockA
    stages, stride 2 at every stage start but the first) -> global average pool -> ``bn2``
    (BatchNorm1d) -> ``linear``. Initialisation as the release: Kaiming normal for every conv and
    the linear weight.
    """

    def __init__(self, num_blocks=(3, 3, 3), widths=(16, 32, 64), *, in_channels=3,
                 num_classes=10, convention="paper", seed=0):
        super().__init__(convention)
        if len(num_blocks) != len(widths) or not num_blocks:
            raise ValueError("num_blocks and widths must be non-empty and of equal length")
        rng = np.random.default_rng(seed)
        self.in_channels = int(in_channels)
        self.conv1 = Conv2d(in_channels, widths[0], 3, stride=1, padding=1, rng=rng)
        self.bn1 = BatchNorm2d(widths[0])
        self.nonlinear1 = Maxout(widths[0])
        in_planes = widths[0]
        self._stages = []
        for i, (blocks, planes) in enumerate(zip(num_blocks, widths)):
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage = Sequential(*[BasicBlockA(p_in, planes, s, convention=convention, rng=rng)
                                 for p_in, s in zip([in_planes] + [planes] * (blocks - 1),
                                                    strides)])
            setattr(self, f"layer{i + 1}", stage)
            self._stages.append(stage)
            in_planes = planes
        self.pool = GlobalAvgPool2d()
        self.bn2 = BatchNorm1d(in_planes)
        self.linear = Linear(in_planes, num_classes, rng=rng, init="kaiming_normal")

    def _forward(self, x):
        out = self.nonlinear1(self.bn1(self.conv1(x)))
        for stage in self._stages:
            out = stage(out)
        return self.linear(self.bn2(self.pool(out)))

    def _backward(self, grad):
        g = self.pool.backward(self.bn2.backward(self.linear.backward(grad)))
        for stage in reversed(self._stages):
            g = stage.backward(g)
        return self.conv1.backward(self.bn1.backward(self.nonlinear1.backward(g)))


class ImageNetResNet(BinaryNet):
    """ImageNet 1w1a ResNet of the release (ResNet-18 with ``layers=(2, 2, 2, 2)``).

    ``conv1`` (real 7x7/2) -> ``bn1`` -> ``nonlinear1`` -> ``maxpool`` 3x3/2 -> ``layer1..4``
    (BasicBlockB, 64..512 channels) -> ``avgpool`` (AvgPool2d(7, stride=1)) -> flatten ->
    ``bn2`` (BatchNorm1d) -> ``fc``. Inputs of 224x224 (any size whose last stage is 7x7).

    The release also registers ``nonlinear2`` (Maxout(512)) and ``bn3`` (BatchNorm1d(1000)), so
    they are part of the ``state_dict``, but its ``forward`` never calls them. ``head="release"``
    (default) reproduces that forward; ``head="full"`` applies the registered modules in order:
    ``bn2 -> nonlinear2 -> fc -> bn3``.
    """

    def __init__(self, layers=(2, 2, 2, 2), *, num_classes=1000, convention="paper",
                 head="release", seed=0):
        super().__init__(convention)
        if head not in ("release", "full"):
            raise ValueError(f"head must be 'release' or 'full', got {head!r}")
        self.head = head
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, rng=rng)
        self.bn1 = BatchNorm2d(64)
        self.nonlinear1 = Maxout(64)
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        self._stages = []
        for i, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            mods = [BasicBlockB(inplanes, planes, stride, convention=convention, rng=rng)]
            mods += [BasicBlockB(planes, planes, 1, convention=convention, rng=rng)
                     for _ in range(blocks - 1)]
            stage = Sequential(*mods)
            setattr(self, f"layer{i + 1}", stage)
            self._stages.append(stage)
            inplanes = planes
        self.avgpool = AvgPool2d(7, stride=1)
        self.flatten = Flatten()
        self.bn2 = BatchNorm1d(512)
        self.nonlinear2 = Maxout(512)
        self.fc = Linear(512, num_classes, rng=rng)
        self.bn3 = BatchNorm1d(num_classes)
        # the release's init: N(0, 2/(k*k*out_channels)) for every conv
        for _, mod in self.named_modules():
            if isinstance(mod, (Conv2d, AdaBinConv2d)):
                w = mod.params["weight"]
                n = w.shape[2] * w.shape[3] * w.shape[0]
                mod.params["weight"] = rng.standard_normal(w.shape) * np.sqrt(2.0 / n)

    def _head(self):
        if self.head == "release":
            return [self.flatten, self.bn2, self.fc]
        return [self.flatten, self.bn2, self.nonlinear2, self.fc, self.bn3]

    def _forward(self, x):
        out = self.maxpool(self.nonlinear1(self.bn1(self.conv1(x))))
        for stage in self._stages:
            out = stage(out)
        out = self.avgpool(out)
        if out.shape[2:] != (1, 1):
            raise ValueError(f"the last stage must be 7x7 (input 224x224); the average pool "
                             f"gave {out.shape[2:]} for input {x.shape[2:]}")
        for layer in self._head():
            out = layer(out)
        return out

    def _backward(self, grad):
        g = grad
        for layer in reversed(self._head()):
            g = layer.backward(g)
        g = self.avgpool.backward(g)
        for stage in reversed(self._stages):
            g = stage.backward(g)
        return self.conv1.backward(self.bn1.backward(self.nonlinear1.backward(
            self.maxpool.backward(g))))


def resnet20_1w1a(convention="paper", *, seed=0) -> CifarResNet:
    """CIFAR-10 ResNet-20 1w1a of the public release (SPEC section 6).

    Load the release checkpoint with ``convention="official"`` (it was trained with
    ``alpha*(sign(v) + beta)``)::

        m = resnet20_1w1a("official")
        m.load_state_dict(load_checkpoint("adabin_resnet20_1w1a_cifar10.th")); m.eval()

    Inputs: ``(N, 3, 32, 32)`` normalised with :data:`CIFAR_MEAN` / :data:`CIFAR_STD`.
    """
    return CifarResNet((3, 3, 3), (16, 32, 64), convention=convention, seed=seed)


def resnet18_1w1a(convention="paper", *, head="release", seed=0) -> ImageNetResNet:
    """ImageNet ResNet-18 1w1a of the public release (SPEC section 6); see
    :class:`ImageNetResNet` for ``head``."""
    return ImageNetResNet((2, 2, 2, 2), convention=convention, head=head, seed=seed)


class DigitsCNN(CifarResNet):
    """Small AdaBin 1w1a ResNet for 8x8 digits (inputs ``(N, 1, 8, 8)``, 10 classes).

    Same design as the release's ResNet-20 (:class:`CifarResNet` with one block per stage):
    real-valued 3x3 stem (1 -> 16) with BatchNorm and Maxout, then three stages of one
    BasicBlockA each (16 @ 8x8, 32 @ 4x4, 64 @ 2x2; six binary 3x3 convolutions), global
    average pool, BatchNorm1d and a real linear classifier.
    """

    def __init__(self, *, convention="paper", seed=0):
        super().__init__((1, 1, 1), (16, 32, 64), in_channels=1, num_classes=10,
                         convention=convention, seed=seed)


def digits_cnn(convention="paper", *, seed=0) -> DigitsCNN:
    """The digits model, :class:`DigitsCNN` (inputs ``(N, 1, 8, 8)``, 10 classes)."""
    return DigitsCNN(convention=convention, seed=seed)


def load_digits_model(path=None, *, convention=None) -> DigitsCNN:
    """The embedded, trained digits model (``adabin_np/data/digits_adabin.npz``), in eval mode.

    ``convention`` defaults to the one it was trained with (stored in the file). The file's
    metadata (``meta.*`` entries: accuracy, convention, epochs, seed) is kept in ``m.meta``.
    """
    path = DIGITS_WEIGHTS if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"digits weights not found at {path}; create them with "
                                f"`adabin-np train`")
    data, meta = split_metadata(load_checkpoint(path))
    m = digits_cnn(meta.get("convention", "paper") if convention is None else convention)
    m.load_state_dict(data)
    m.meta = meta
    return m.eval()


def split_metadata(state):
    """Split ``meta.*`` entries (written by :func:`adabin_np.train.save_model`) off a state dict.

    Returns ``(state_dict, meta)``; 0-d metadata become Python scalars and ``convention`` is
    decoded from its index in ``CONVENTIONS`` to the string.
    """
    state = dict(state)
    meta = {k[5:]: state.pop(k) for k in list(state) if k.startswith("meta.")}
    meta = {k: (v.item() if np.ndim(v) == 0 else v) for k, v in meta.items()}
    if "convention" in meta:
        meta["convention"] = CONVENTIONS[int(meta["convention"])]
    return state, meta
