r"""Dataset-scale analysis of a model: chunks of inputs, mergeable statistics, dask scheduling.

:func:`analyze_model` splits the inputs into row chunks of ``chunk_size``. Each chunk is one
task (:func:`run_chunk`): a float64 forward with every binary layer's input recorded, the
layer statistics of :class:`~.stats.ActivationStats` on those inputs, and (``packed=True``) the
bit-packed forward, recorded too, for the float-vs-packed agreement (per layer: binarized
levels that differ, ``max |x_float - x_packed|`` of the layer's input; per model: prediction
agreement, ``max |dlogit|``; with labels: float and packed accuracy). Results are merged as
they arrive; only ``O(chunk)`` inputs and ``O(k)`` samples per layer are alive at a time, so
peak memory does not depend on the number of inputs.

Scheduling (the merged statistics do not depend on it, nor on the chunk size or worker count:
integers are exact, floats agree to rounding):

* ``client=None, scheduler=None``: one process, chunks in order;
* ``scheduler="local"``: a ``dask.distributed.LocalCluster`` of ``n_workers`` processes (default:
  one per CPU) with one thread each, shut down afterwards;
* ``scheduler="tcp://HOST:PORT"``: an existing dask cluster (file inputs must be readable at the
  same path on the workers; arrays are sent chunk by chunk);
* ``client=``: an existing ``dask.distributed.Client``.

At most ``2 x threads + 1`` chunks are in flight at a time. Each task sets its Numba threads
(``numba.set_num_threads``) to its host's CPUs divided by the task threads of all workers on
that host (:func:`numba_threads_per_task`), so workers sharing a machine do not oversubscribe it. A tqdm bar counts finished chunks in
every mode.
"""

from __future__ import annotations

import copy
import os
import platform
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ..equalization import OBJECTIVES
from ..validation import check_convention
from .inputs import LabelReader, as_source
from .records import DEFAULT_FLIP_TOL, _check_int, _check_tol, _layer_set
from .stats import ActivationStats
from .summary import _check_objectives, jsonable, layer_entry, layer_spec, write_summary

__all__ = ["analyze_model", "run_chunk", "ChunkResult", "ModelStats", "make_client"]


class ModelStats:
    """Mergeable model-level counts: ``n`` images, prediction agreement float vs packed,
    ``max |dlogit|`` and ``max |logit|``, and with labels the correct counts of both paths."""

    def __init__(self):
        self.n = 0
        self.agree = 0
        self.max_dlogit = 0.0
        self.max_logit = 0.0
        self.labelled = 0
        self.correct_float = 0
        self.correct_packed = 0

    def merge(self, other):
        out = ModelStats()
        for f in ("n", "agree", "labelled", "correct_float", "correct_packed"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        out.max_dlogit = max(self.max_dlogit, other.max_dlogit)
        out.max_logit = max(self.max_logit, other.max_logit)
        return out


class ChunkResult:
    """Statistics of some chunks: ``layers`` (name -> ActivationStats) and ``model``."""

    def __init__(self, layers, model):
        self.layers = layers
        self.model = model

    def merge(self, other):
        return ChunkResult({k: v.merge(other.layers[k]) for k, v in self.layers.items()},
                           self.model.merge(other.model))


def _reset(model):
    for _, layer in model.binary_layers():
        layer.record, layer.recorded_input, layer.packed = False, None, False


def run_chunk(model, x, y, start, specs, *, packed=True, device="cpu"):
    """Statistics of one chunk ``x`` (float64 ``(n, C, H, W)``, global rows ``start..``).

    ``model`` must already be in eval mode with the wanted convention; ``specs`` are the
    :class:`~.stats.LayerSpec` of its binary layers in order; ``y`` integer labels or ``None``.
    """
    layers = model.binary_layers()
    try:
        logits_f = model(x, record=True)
        stats = {}
        for spec, (name, layer) in zip(specs, layers):
            st = ActivationStats(spec)
            st.update(layer.recorded_input, start)
            stats[name] = st
        ms = ModelStats()
        ms.n = x.shape[0]
        pf = np.argmax(logits_f, axis=1)
        ms.max_logit = float(np.max(np.abs(logits_f)))
        if packed:
            recorded = {name: layer.recorded_input for name, layer in layers}
            logits_p = model(x, packed=True, record=True, device=device)
            for name, layer in layers:
                stats[name].update_packed(recorded[name], layer.recorded_input)
            del recorded
            pp = np.argmax(logits_p, axis=1)
            ms.agree = int(np.count_nonzero(pf == pp))
            ms.max_dlogit = float(np.max(np.abs(logits_f - logits_p)))
        if y is not None:
            if np.any(y < 0) or np.any(y >= logits_f.shape[1]):
                bad = int(y[(y < 0) | (y >= logits_f.shape[1])][0])
                raise ValueError(f"label {bad} in rows {start}..{start + len(y) - 1} is outside "
                                 f"[0, {logits_f.shape[1]}) (the model's classes)")
            ms.labelled = len(y)
            ms.correct_float = int(np.count_nonzero(pf == y))
            if packed:
                ms.correct_packed = int(np.count_nonzero(pp == y))
    finally:
        _reset(model)
    return ChunkResult(stats, ms)


# ----------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------

_local = threading.local()


def _thread_model(model, token):
    """A private copy of ``model`` per worker thread (layers keep per-call state)."""
    cache = getattr(_local, "models", None)
    if cache is None:
        cache = _local.models = {}
    if token not in cache:
        cache.clear()
        cache[token] = copy.deepcopy(model)
    return cache[token]


def _task(model, token, source, raw, y, start, stop, specs, packed, device, numba_threads):
    if numba_threads:  # per calling thread; never through NUMBA_NUM_THREADS (a changed
        import numba   # variable makes Numba's next compile raise)
        from distributed import get_worker

        k = numba_threads.get(get_worker().address)
        if k:
            numba.set_num_threads(max(1, min(k, numba.config.NUMBA_NUM_THREADS)))
    if raw is None:
        raw = source.read(start, stop)
    x = source.prepare(raw, start)
    return run_chunk(_thread_model(model, token), x, y, start, specs, packed=packed,
                     device=device)


class _Preparer:
    """The ``prepare`` half of an in-memory source (no data), shipped with array chunks."""

    def __init__(self, source):
        self.normalizer = source.normalizer
        self.what = source.what

    def prepare(self, raw, start=0):
        return self.normalizer(raw, f"{self.what} rows {start}..{start + len(raw) - 1}")


# ----------------------------------------------------------------------------------------------
# scheduling
# ----------------------------------------------------------------------------------------------


_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_scheduler(scheduler):
    """``None``, ``"local"`` or a ``SCHEME://HOST[:PORT]`` dask scheduler address."""
    if scheduler is None or scheduler == "local":
        return scheduler
    if isinstance(scheduler, str) and "://" in scheduler:
        scheme, _, rest = scheduler.partition("://")
        if scheme in _SCHEMES and rest:
            return scheduler
    raise ValueError(f"scheduler must be None, 'local' or a dask scheduler address such as "
                     f"'tcp://HOST:PORT' (schemes {', '.join(_SCHEMES)}), got {scheduler!r}")


def make_client(scheduler, n_workers=None):
    """``(client, cluster_or_None)`` for ``"local"`` or a ``tcp://HOST:PORT`` address."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise ImportError(f"scheduler={scheduler!r} needs dask.distributed ({exc})") from None
    if scheduler == "local":
        n = n_workers or max(1, os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        return Client(cluster), cluster
    return Client(check_scheduler(scheduler)), None


def _versions():
    import numba

    from .. import __version__

    out = {"adabin_np": __version__, "numpy": np.__version__, "numba": numba.__version__,
           "python": platform.python_version()}
    try:
        import dask
        import distributed

        out.update(dask=dask.__version__, distributed=distributed.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def _chunks(n, chunk_size):
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def _run_local(model, source, labels, bounds, specs, packed, device, bar):
    total = None
    for start, stop in bounds:
        x = source.prepare(source.read(start, stop), start)
        y = None if labels is None else labels.read(start, stop)
        res = run_chunk(model, x, y, start, specs, packed=packed, device=device)
        del x
        total = res if total is None else total.merge(res)
        bar.update(1)
    return total


def numba_threads_per_task(client):
    """``{worker address: Numba threads per task}``: each host's CPUs shared out among the
    task threads of the workers on it (no oversubscription when several workers share a
    machine, as in a LocalCluster)."""
    nthreads = client.nthreads()
    cpus = client.run(os.cpu_count)
    hosts = {}
    for addr, n in nthreads.items():
        host = addr.rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + n
    return {addr: max(1, (cpus.get(addr) or 1) // hosts[addr.rsplit(":", 1)[0]])
            for addr in nthreads}


def _run_dask(client, model, source, labels, bounds, specs, packed, device, bar):
    from dask.distributed import as_completed

    token = uuid.uuid4().hex
    threads = sum(client.nthreads().values()) or 1
    numba_threads = numba_threads_per_task(client)
    window = 2 * threads + 1
    model_f = client.scatter(model, broadcast=True)
    specs_f = client.scatter(specs, broadcast=True)
    is_dask = type(getattr(source, "array", None)).__module__.split(".")[0] == "dask"
    if source.remote:
        src_f = client.scatter(source, broadcast=True)
    else:
        src_f = _Preparer(source)

    def submit(start, stop):
        y = None if labels is None else labels.read(start, stop)
        if source.remote:
            raw = None
        elif is_dask:
            raw = client.compute(source.array[start:stop])
        else:
            raw = source.read(start, stop)
        return client.submit(_task, model_f, token, src_f, raw, y, start, stop, specs_f, packed,
                             device, numba_threads, pure=False)

    pending = list(bounds)
    ac = as_completed()
    for _ in range(min(window, len(pending))):
        ac.add(submit(*pending.pop(0)))
    total = None
    for fut in ac:
        res = fut.result()
        fut.release()
        total = res if total is None else total.merge(res)
        bar.update(1)
        if pending:
            ac.add(submit(*pending.pop(0)))
    return total


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------


def analyze_model(model, inputs, *, labels=None, out_dir=None, name="model", convention=None,
                  progress=True, flip_tol=DEFAULT_FLIP_TOL, objectives=OBJECTIVES,
                  max_samples=65536, seed=0, chunk_size=None, batch_size=64, packed=True,
                  device="cpu", client=None, scheduler=None, n_workers=None, mean=None,
                  std=None, landscape=None, layers_per_figure=9):
    r"""Stream ``inputs`` through ``model`` and analyse every binary layer; optional figures.

    ``inputs``: a NumPy array or memmap ``(N, C, H, W)``, a dask array, an ``.npy`` path, a
    folder of images or a source of :mod:`.inputs` (``uint8`` data are images: ``/255`` then
    ``(x - mean)/std``; other real dtypes are used as is). ``labels``: ``(N,)`` integers (array
    or ``.npy`` path) for the float and packed accuracy. Chunks of ``chunk_size`` rows
    (default ``batch_size``) are analysed one at a time (``client``/``scheduler`` None), on a
    ``LocalCluster`` (``scheduler="local"``, ``n_workers`` processes), on an existing cluster
    (``scheduler="tcp://HOST:PORT"``) or on ``client`` (a ``dask.distributed.Client``); see the
    module docstring. The result does not depend on the scheduling or the chunk size apart
    from the top-level ``"run"`` entry.

    Returns the summary dict (JSON-ready)::

        {"name", "model", "adabin_np_version", "convention", "flip_tol", "n_inputs",
         "input_shape", "objectives", "figures",
         "packed": {"agree", "n", "agreement", "max_abs_dlogit", "max_abs_logit"},
         "accuracy": {"n", "float", "packed", "correct_float", "correct_packed"},  # labels
         "layers": [<layer entry of :func:`~.summary.layer_entry`>, ...],
         "run": {"scheduler", "workers", "threads", "chunk_size", "n_chunks", "seconds",
                 "images_per_s", "versions"}}

    With ``out_dir`` it also writes ``out_dir/summary.json`` and the figures of
    :func:`adabin_np.plots.write_figures` (``landscape = (layer_name, channel)``, default the
    first layer, channel 0). ``convention`` defaults to the model's; the forward runs in eval
    mode (BatchNorm running statistics); the model is left as it was.
    """
    t0 = time.perf_counter()
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not hasattr(model, "binary_layers") or not callable(model.binary_layers):
        raise TypeError(f"model must provide binary_layers() (an adabin_np.models.BinaryNet), "
                        f"got {type(model).__name__}")
    tol = _check_tol(flip_tol, "flip_tol")
    objectives = _check_objectives(objectives)
    max_samples = _check_int(max_samples, "max_samples", 16)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    chunk_size = batch_size if chunk_size is None else _check_int(chunk_size, "chunk_size", 1)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if client is not None and scheduler is not None:
        raise ValueError("give client or scheduler, not both")
    scheduler = check_scheduler(scheduler)
    if n_workers is not None:
        n_workers = _check_int(n_workers, "n_workers", 1)
    layers = list(model.binary_layers())
    if not layers:
        raise ValueError(f"{type(model).__name__} has no binary layers to analyse")
    source = as_source(inputs, channels=getattr(model, "in_channels", None), mean=mean, std=std)
    n = len(source)
    label_reader = None if labels is None else LabelReader(labels, n)
    old_conv = getattr(model, "convention", None)
    conv = old_conv if convention is None else check_convention(convention)
    if conv is None:
        conv = getattr(layers[0][1], "convention", "paper")
    was_training = bool(getattr(model, "training", False))
    weights = []
    specs = []
    for index, (lname, layer) in enumerate(layers):
        w, a, b = _layer_set(layer, lname)
        w = np.array(w, dtype=np.float64, copy=True)
        a = np.array(a, dtype=np.float64, copy=True)
        b = np.array(b, dtype=np.float64, copy=True)
        a = a if a.ndim else float(a)
        b = b if b.ndim else float(b)
        if np.any(np.asarray(a) == 0.0):
            raise ValueError(f"layer {lname!r}: activation alpha must be non-zero")
        geometry = None
        if all(hasattr(layer, k) for k in ("stride", "padding", "dilation", "groups")):
            geometry = {k: getattr(layer, k) for k in ("stride", "padding", "dilation", "groups")}
        weights.append(w)
        specs.append(layer_spec(lname, w, a, b, conv, tol=tol, conv=geometry,
                                max_samples=max_samples, seed=seed, index=index))
    bounds = _chunks(n, chunk_size)
    own_client = cluster = None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(bounds), desc="analyze", unit="chunk", disable=not progress)
    try:
        if convention is not None and old_conv is not None and conv != old_conv:
            model.convention = conv
        model.eval()
        if scheduler is not None:
            client, cluster = make_client(scheduler, n_workers)
            own_client = client
        t1 = time.perf_counter()
        if client is None:
            total = _run_local(model, source, label_reader, bounds, specs, packed, device, bar)
            sched, workers, threads = "none", 1, 1
        else:
            total = _run_dask(client, model, source, label_reader, bounds, specs, packed, device,
                              bar)
            sched = scheduler if scheduler is not None else "client"
            nthreads = client.nthreads()
            workers, threads = len(nthreads), sum(nthreads.values())
        t2 = time.perf_counter()
    finally:
        bar.close()
        _reset(model)
        if old_conv is not None and getattr(model, "convention", old_conv) != old_conv:
            model.convention = old_conv
        model.train(was_training)
        if own_client is not None:
            own_client.close()
            if cluster is not None:
                cluster.close()
    from .. import __version__

    entries = [layer_entry(spec.name, conv, w, total.layers[spec.name], tol, objectives)
               for spec, w in zip(specs, weights)]
    ms = total.model
    summary = {
        "name": name,
        "model": type(model).__name__,
        "adabin_np_version": __version__,
        "convention": conv,
        "flip_tol": tol,
        "n_inputs": n,
        "input_shape": list(source.sample_shape),
        "objectives": list(objectives),
        "figures": [],
    }
    if packed:
        summary["packed"] = {"agree": ms.agree, "n": ms.n, "agreement": ms.agree / ms.n,
                             "max_abs_dlogit": ms.max_dlogit, "max_abs_logit": ms.max_logit}
    if label_reader is not None:
        summary["accuracy"] = {"n": ms.labelled, "correct_float": ms.correct_float,
                               "float": ms.correct_float / ms.labelled}
        if packed:
            summary["accuracy"].update(correct_packed=ms.correct_packed,
                                       packed=ms.correct_packed / ms.labelled)
    summary["layers"] = entries
    if out_dir is not None:
        from ..plots import write_figures

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if landscape is None:
            landscape = (specs[0].name, 0)
        lname, channel = landscape
        names = [s.name for s in specs]
        if lname not in names:
            raise ValueError(f"landscape layer {lname!r} is not a binary layer of the model; "
                             f"choose from {names}")
        paths = write_figures(entries, out_dir, title=name, layers_per_figure=layers_per_figure,
                              landscape_weight=weights[names.index(lname)],
                              landscape_channel=channel, landscape_name=lname)
        summary["figures"] = [p.name for p in paths]
    t3 = time.perf_counter()
    summary["run"] = {"scheduler": sched, "workers": workers, "threads": threads,
                      "chunk_size": chunk_size, "n_chunks": len(bounds),
                      "seconds": {"total": t3 - t0, "chunks": t2 - t1, "finalize": t3 - t2},
                      "images_per_s": n / max(t2 - t1, 1e-12),
                      "cpu_count": os.cpu_count(), "versions": _versions()}
    if out_dir is not None:
        write_summary(summary, out_dir / "summary.json")
    return jsonable(summary)
