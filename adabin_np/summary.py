r"""Model summary in the manner of larq's ``larq.models.summary``: parameters, memory and MACs.

``summary(model, input_shape=(C, H, W))`` runs one float forward of a zero input of shape
``(1, C, H, W)`` in eval mode, records the output shape of every *leaf* layer in the order
the forward calls it (an :class:`~adabin_np.layers.AdaBinConv2d` is one leaf together with its
activation set ``binary_a``; containers such as ``Sequential`` and the blocks are not listed),
and counts per layer, for **one sample**:

``binary_weights``
    Weights stored as 1 bit: the ``O x I/g x kh x kw`` weight signs of an AdaBin convolution.
``float_params``
    Numbers stored as float32 at inference: every parameter of a real layer (``Conv2d``,
    ``Linear`` weight and bias, Maxout slopes), BatchNorm's ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` (larq counts the moving statistics as non-trainable
    32-bit parameters; the integer ``num_batches_tracked`` is not counted), and for an AdaBin
    convolution its activation set (``alpha_a``, ``beta_a``) plus the weight set
    ``alpha_w``, ``beta_w`` of every output channel (``2 O`` numbers: derived from ``W`` during
    training, stored by a deployed binary model).
``memory_bits`` / ``float32_bits``
    :math:`1 \cdot \text{binary} + 32 \cdot \text{float}` and
    :math:`32 (\text{binary} + \text{float})` (the same model with every number in float32).
``binary_macs`` / ``float_macs``
    Multiply-accumulates of convolutions and linear layers, as larq counts them: a convolution
    with output ``(O, Ho, Wo)`` does :math:`Ho \cdot Wo \cdot O \cdot (I/g)\, kh\, kw` (every
    kernel tap, padded ones included), a linear layer ``in x out``. They are binary (XNOR /
    popcount) for an AdaBin convolution, whose inputs and weights are both binarized, and float
    otherwise. BatchNorm, Maxout, pooling, shortcuts: 0 MACs (larq's convention).

Totals add the layers; the compression ratio is ``float32_bits / memory_bits`` (how many times
smaller the binary model is than its float32 equivalent; larq prints the inverse, "Compression
Ratio of Memory"). Registered modules the forward never calls (the release ResNet-18's
``nonlinear2`` and ``bn3``) are listed as unused and left out of the totals. Every count is an
exact Python ``int``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import AdaBinConv2d, BinaryActivation, Conv2d, Linear, Module

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass(frozen=True)
class LayerSummary:
    """Counts of one leaf layer for one sample (see the module docstring)."""

    name: str
    kind: str
    output_shape: tuple | None  # per sample (no batch axis); None: not called by the forward
    input_bits: int  # 1 when the layer binarizes its input, else 32
    binary_weights: int
    float_params: int
    binary_macs: int
    float_macs: int

    @property
    def used(self) -> bool:
        return self.output_shape is not None

    @property
    def memory_bits(self) -> int:
        return self.binary_weights + 32 * self.float_params

    @property
    def float32_bits(self) -> int:
        return 32 * (self.binary_weights + self.float_params)


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals; ``str()`` is the table :func:`summary` prints."""

    model: str
    input_shape: tuple
    layers: tuple

    def _total(self, field):
        return int(sum(getattr(la, field) for la in self.layers if la.used))

    @property
    def binary_weights(self) -> int:
        return self._total("binary_weights")

    @property
    def float_params(self) -> int:
        return self._total("float_params")

    @property
    def memory_bits(self) -> int:
        return self._total("memory_bits")

    @property
    def float32_bits(self) -> int:
        return self._total("float32_bits")

    @property
    def binary_macs(self) -> int:
        return self._total("binary_macs")

    @property
    def float_macs(self) -> int:
        return self._total("float_macs")

    @property
    def compression_ratio(self) -> float:
        """``float32_bits / memory_bits`` (1.0 for a model without binary weights)."""
        return self.float32_bits / self.memory_bits if self.memory_bits else 1.0

    @property
    def binary_mac_fraction(self) -> float:
        total = self.binary_macs + self.float_macs
        return self.binary_macs / total if total else 0.0

    def table(self) -> str:
        def shape(s):
            return "unused" if s is None else "(" + ", ".join(str(d) for d in s) + ")"

        def kib(bits):
            return f"{bits / 8192:.2f}"

        head = ("layer", "type", "output shape", "in bits", "1-bit weights", "32-bit params",
                "memory KiB", "float32 KiB", "1-bit MACs", "32-bit MACs")
        rows = [(la.name, la.kind, shape(la.output_shape), str(la.input_bits),
                 str(la.binary_weights), str(la.float_params), kib(la.memory_bits),
                 kib(la.float32_bits), str(la.binary_macs), str(la.float_macs))
                for la in self.layers]
        total = ("total", "", "", "", str(self.binary_weights), str(self.float_params),
                 kib(self.memory_bits), kib(self.float32_bits), str(self.binary_macs),
                 str(self.float_macs))
        widths = [max(len(r[i]) for r in [head, total, *rows]) for i in range(len(head))]

        def fmt(r):
            cells = [r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i])
                     for i in range(len(r))]
            return "| " + "  ".join(cells) + " |"

        rule = "+" + "-" * (len(fmt(head)) - 2) + "+"
        title = f"+ {self.model} summary, input {shape(self.input_shape)}, one sample "
        lines = [title + "-" * max(0, len(rule) - len(title) - 1) + "+", fmt(head), rule]
        lines += [fmt(r) for r in rows]
        lines += [rule, fmt(total), rule]
        macs = self.binary_macs + self.float_macs
        lines += [
            f"parameters: {self.binary_weights + self.float_params} "
            f"({self.binary_weights} binary, {self.float_params} float)",
            f"model size: {kib(self.memory_bits)} KiB with 1-bit weights "
            f"({self.memory_bits} bits); float32 equivalent {kib(self.float32_bits)} KiB "
            f"({self.float32_bits} bits)",
            f"compression ratio vs float32: {self.compression_ratio:.2f}x "
            f"(float32 size / model size)",
            f"MACs: {macs} ({self.binary_macs} binary, {self.float_macs} float; binary share "
            f"{self.binary_mac_fraction:.4f})",
        ]
        if any(not la.used for la in self.layers):
            lines.append("unused: registered modules the forward does not call (not in totals)")
        return "\n".join(lines)

    __str__ = table


def _is_leaf(mod):
    return isinstance(mod, AdaBinConv2d) or not any(True for _ in mod.named_children())


def _float_count(mod):
    """Float parameters and float buffers of ``mod`` and its children (see module docstring)."""
    n = 0
    for _, sub in mod.named_modules():
        n += sum(int(v.size) for v in sub.params.values())
        n += sum(int(v.size) for v in sub.buffers.values() if np.asarray(v).dtype.kind == "f")
    return n


def _conv_macs(mod, out_shape):
    o, i_g, kh, kw = mod.params["weight"].shape
    return int(out_shape[1]) * int(out_shape[2]) * int(o) * int(i_g) * int(kh) * int(kw)


def _count(name, mod, out_shape):
    kind = type(mod).__name__
    binary = bmacs = fmacs = 0
    bits = 32
    if isinstance(mod, AdaBinConv2d):
        w = mod.params["weight"]
        binary = int(w.size)
        floats = _float_count(mod) - binary + 2 * int(w.shape[0])
        bits = 1
        if out_shape is not None:
            bmacs = _conv_macs(mod, out_shape)
    else:
        floats = _float_count(mod)
        if isinstance(mod, BinaryActivation):
            bits = 1
        if out_shape is not None and isinstance(mod, Conv2d):
            fmacs = _conv_macs(mod, out_shape)
        elif out_shape is not None and isinstance(mod, Linear):
            fmacs = int(mod.params["weight"].size)
    return LayerSummary(name, kind, out_shape, bits, binary, floats, bmacs, fmacs)


def _default_input_shape(model):
    channels = getattr(model, "in_channels", None)
    kind = type(model).__name__
    if kind == "ImageNetResNet":
        return (3, 224, 224)
    if kind in ("DigitsCNN",) or channels == 1:
        return (1, 8, 8)
    if kind == "CifarResNet":
        return (int(channels), 32, 32)
    raise ValueError(f"input_shape is required for a {kind} (e.g. input_shape=(3, 32, 32))")


def summary(model, input_shape=None, *, print_fn=print) -> ModelSummary:
    """Per-layer output shape, 1-bit weights, 32-bit parameters, memory and MACs of ``model``.

    ``input_shape``: one sample's shape ``(C, H, W)`` (no batch axis); default: ``(1, 8, 8)``
    for the digits model, ``(C, 32, 32)`` for a CIFAR ResNet, ``(3, 224, 224)`` for the
    ImageNet ResNet. The model runs one float forward of zeros in eval mode (its train/eval
    mode is restored). ``print_fn`` receives the table (``None``: print nothing). Returns a
    :class:`ModelSummary`; the counts are defined in the module docstring.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an adabin_np Module, got {type(model).__name__}")
    if input_shape is None:
        input_shape = _default_input_shape(model)
    try:
        input_shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be one sample's positive dimensions, e.g. "
                         f"(3, 32, 32), got {input_shape}")
    if any(isinstance(d, bool) for d in input_shape):
        raise TypeError(f"input_shape must hold ints, got {input_shape!r}")
    owned = {f"{n}.{c}" if n else c for n, m in model.named_modules()
             if isinstance(m, AdaBinConv2d) for c, _ in m.named_children()}
    leaves = [(n or type(m).__name__, m) for n, m in model.named_modules()
              if _is_leaf(m) and n not in owned]
    shapes, order = {}, []

    def wrap(name, mod):
        forward = type(mod).forward

        def hooked(x, *args, **kwargs):
            y = forward(mod, x, *args, **kwargs)
            if name not in shapes:
                shapes[name] = tuple(int(d) for d in np.shape(y)[1:])
                order.append(name)
            return y
        return hooked

    was_training = model.training
    try:
        for name, mod in leaves:
            object.__setattr__(mod, "forward", wrap(name, mod))
        model.eval()
        model(np.zeros((1, *input_shape)))
    finally:
        for _, mod in leaves:
            mod.__dict__.pop("forward", None)
        model.train(was_training)
    by_name = dict(leaves)
    rows = [_count(n, by_name[n], shapes[n]) for n in order]
    rows += [_count(n, m, None) for n, m in leaves if n not in shapes]
    result = ModelSummary(type(model).__name__, input_shape, tuple(rows))
    if print_fn is not None:
        print_fn(result.table())
    return result

