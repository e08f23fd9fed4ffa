r"""Training in NumPy: cross-entropy, SGD with momentum, cosine LR, the EDE schedule.

The recipe is the public release's (``cifar10/main.py`` with ``--progressive``):

* loss: softmax cross-entropy averaged over the batch;
* ``torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)``: weight decay
  on **every** parameter, BatchNorm affine parameters, Maxout slopes and the activation sets
  ``alpha_a``/``beta_a`` included (the release passes ``model.parameters()`` unfiltered), with
  PyTorch's momentum form :math:`b \leftarrow \mu b + (g + \lambda p)`,
  :math:`p \leftarrow p - \eta b` (first step :math:`b = g + \lambda p`);
* cosine annealing per epoch, :math:`\eta_e = \tfrac{\eta_0}{2}(1 + \cos(\pi e/E))`;
* EDE per epoch, ``(k, t) = ede_schedule(e, E)``: :math:`t = 10^{-3 + 4e/E}`,
  :math:`k = \max(1/t, 1)`, set on every binary layer before the epoch.

:func:`train_digits` trains :func:`adabin_np.models.digits_cnn` on the scikit-learn digits and
writes the embedded weights file; ``adabin-np train`` calls it. Everything is seeded
(initialisation, shuffling, augmentation) and the float kernels are deterministic, so a run is
reproducible on a given machine.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .binarize import ede_schedule
from .validation import CONVENTIONS, as_float_array, check_convention, check_finite_scalar

__all__ = [
    "cross_entropy",
    "SGD",
    "cosine_lr",
    "random_shift",
    "evaluate",
    "predict",
    "train_model",
    "train_digits",
    "save_model",
    "TrainResult",
]


def cross_entropy(logits, labels):
    r"""Mean softmax cross-entropy and its gradient w.r.t. the logits.

    :math:`L = -\frac1N \sum_n \log \mathrm{softmax}(z_n)_{y_n}`,
    :math:`\partial L/\partial z_n = (\mathrm{softmax}(z_n) - e_{y_n})/N`.
    Returns ``(loss: float, dlogits: ndarray)``.
    """
    z = as_float_array(logits, "logits", ndim=2)
    y = np.asarray(labels)
    if y.dtype.kind not in "iu" or y.shape != (z.shape[0],):
        raise ValueError(f"labels must be integers of shape ({z.shape[0]},), got {y.dtype} "
                         f"{y.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), got range "
                         f"[{y.min()}, {y.max()}]")
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = z.shape[0]
    loss = -float(logp[np.arange(n), y].mean())
    grad = np.exp(logp)
    grad[np.arange(n), y] -= 1.0
    return loss, grad / n


class SGD:
    r"""SGD with momentum and L2 weight decay, exactly ``torch.optim.SGD``'s update.

    :math:`d = g + \lambda p`; :math:`b = d` on the first step, else :math:`b = \mu b + d`;
    :math:`p \leftarrow p - \eta\, b`. Applies to every parameter of ``model`` (in place).
    """

    def __init__(self, model, lr=0.1, momentum=0.9, weight_decay=1e-4):
        self.model = model
        self.lr = check_finite_scalar(lr, "lr", positive=True)
        self.momentum = check_finite_scalar(momentum, "momentum")
        self.weight_decay = check_finite_scalar(weight_decay, "weight_decay")
        self.state: dict[str, np.ndarray] = {}

    def step(self):
        for name, mod, key in self.model.named_parameters():
            p = mod.params[key]
            g = mod.grads.get(key)
            if g is None:
                continue
            d = g + self.weight_decay * p if self.weight_decay else np.array(g, copy=True)
            buf = self.state.get(name)
            if buf is None or self.momentum == 0.0:
                buf = d
            else:
                buf = self.momentum * buf + d
            self.state[name] = buf
            p -= self.lr * buf


def cosine_lr(epoch, epochs, lr0):
    r"""Cosine annealing to 0 (``CosineAnnealingLR(T_max=E, eta_min=0)`` stepped per epoch)."""
    return 0.5 * lr0 * (1.0 + math.cos(math.pi * epoch / epochs))


def random_shift(x, rng, max_shift=1, fill=-1.0):
    """Translate each image by a random integer offset in ``[-max_shift, max_shift]^2``.

    Vacated pixels take ``fill`` (the digits' background, -1). ``x`` is ``(N, C, H, W)``.
    """
    n, _, h, w = x.shape
    out = np.full_like(x, fill)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def predict(model, x, *, batch_size=256, packed=False, device="cpu"):
    """Logits of ``model`` on ``x`` in eval mode, computed in batches (mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size], packed=packed, device=device)
               for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def evaluate(model, x, y, *, batch_size=256, packed=False, device="cpu"):
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``(x, y)`` in eval mode."""
    logits = predict(model, x, batch_size=batch_size, packed=packed, device=device)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(y)))


class TrainResult(NamedTuple):
    """What :func:`train_model` returns: the trained model (eval mode) and its history."""

    model: object
    history: list
    test_accuracy: float | None
    seconds: float


def train_model(model, x_train, y_train, *, epochs, batch_size=32, lr=0.1, momentum=0.9,
                weight_decay=1e-4, seed=0, x_test=None, y_test=None, augment=None,
                progress=True):
    """Train ``model`` with the release's recipe (see the module docstring).

    ``augment``: optional ``f(x_batch, rng) -> x_batch`` applied to each training batch.
    Per epoch: EDE ``(k, t)``, cosine learning rate, a seeded shuffle, mini-batch
    forward/backward/SGD steps (the last partial batch is dropped, as the release's
    ``drop_last=True``), then test accuracy if a test set is given. A tqdm bar shows progress.
    Returns a :class:`TrainResult`; the model is left in eval mode.
    """
    from tqdm.auto import tqdm

    x_train = as_float_array(x_train, "x_train", ndim=4)
    y_train = np.asarray(y_train)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not 1 < batch_size <= len(x_train):
        raise ValueError(f"batch_size must be in [2, {len(x_train)}], got {batch_size}")
    rng = np.random.default_rng(seed)
    opt = SGD(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = []
    steps = len(x_train) // batch_size
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps, desc="train", unit="batch", disable=not progress,
               leave=False)
    test_acc = None
    try:
        for epoch in range(epochs):
            k, t = ede_schedule(epoch, epochs)
            model.set_ede(k, t)
            opt.lr = cosine_lr(epoch, epochs, lr)
            model.train()
            order = rng.permutation(len(x_train))
            losses, correct = [], 0
            for s in range(steps):
                idx = order[s * batch_size:(s + 1) * batch_size]
                xb = x_train[idx]
                if augment is not None:
                    xb = augment(xb, rng)
                logits = model(xb)
                loss, dlogits = cross_entropy(logits, y_train[idx])
                model.backward(dlogits)
                opt.step()
                losses.append(loss)
                correct += int(np.sum(logits.argmax(axis=1) == y_train[idx]))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}")
            record = dict(epoch=epoch + 1, lr=opt.lr, k=k, t=t, loss=float(np.mean(losses)),
                          train_acc=correct / (steps * batch_size))
            if x_test is not None:
                test_acc = evaluate(model, x_test, y_test)
                record["test_acc"] = test_acc
                bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.3f}",
                                test=f"{test_acc:.3f}")
            history.append(record)
    finally:
        bar.close()
    model.eval()
    return TrainResult(model, history, test_acc, time.perf_counter() - start)


def save_model(path, model, **meta):
    """``np.savez`` of ``model.state_dict()`` plus ``meta.<name>`` entries (small arrays).

    Metadata must be numeric (the file stays readable by :func:`adabin_np.load_checkpoint`,
    which refuses strings); ``convention`` is stored as its index in
    ``adabin_np.validation.CONVENTIONS`` (0 = "paper", 1 = "official").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(model.state_dict())
    for key, value in meta.items():
        if key == "convention":  # numeric only, so that load_checkpoint can read the file
            value = CONVENTIONS.index(check_convention(value))
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"metadata {key!r} must be numeric, got {value.dtype}")
        arrays[f"meta.{key}"] = value
    with open(path, "wb") as f:  # np.savez would append ".npz" to other suffixes
        np.savez(f, **arrays)
    return path


#: Hyper-parameters of the embedded digits model (``adabin-np train`` defaults).
DIGITS_RECIPE = dict(epochs=20, batch_size=32, lr=0.1, momentum=0.9, weight_decay=1e-4, seed=0)


def train_digits(*, epochs=DIGITS_RECIPE["epochs"], seed=DIGITS_RECIPE["seed"], out=None,
                 convention="paper", batch_size=DIGITS_RECIPE["batch_size"],
                 lr=DIGITS_RECIPE["lr"], progress=True) -> TrainResult:
    """Train :func:`~adabin_np.models.digits_cnn` on the digits split; optionally save it.

    The split is :func:`~adabin_np.data.load_digits_split` with the same ``seed``; training
    batches are randomly shifted by up to one pixel. With ``out`` the weights and metadata
    (``accuracy``, ``convention``, ``epochs``, ``seed``, ``batch_size``, ``lr``, ``seconds``)
    are written with :func:`save_model` (the default embedded file is
    :data:`adabin_np.models.DIGITS_WEIGHTS`).
    """
    from .data import load_digits_split
    from .models import digits_cnn

    check_convention(convention)
    split = load_digits_split(seed=seed)
    model = digits_cnn(convention, seed=seed)
    result = train_model(model, split.x_train, split.y_train, epochs=epochs,
                         batch_size=batch_size, lr=lr, momentum=DIGITS_RECIPE["momentum"],
                         weight_decay=DIGITS_RECIPE["weight_decay"], seed=seed,
                         x_test=split.x_test, y_test=split.y_test,
                         augment=lambda xb, rng: random_shift(xb, rng, 1), progress=progress)
    if out is not None:
        save_model(out, result.model, accuracy=result.test_accuracy, convention=convention,
                   epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                   seconds=round(result.seconds, 1))
    return result
