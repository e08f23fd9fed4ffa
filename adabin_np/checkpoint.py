"""Checkpoint IO: read PyTorch checkpoints and ``.npz`` weight files without torch.

``load_checkpoint(path)`` returns a flat ``dict[str, np.ndarray]`` (a state dict) from

* **PyTorch zip checkpoints** (``torch.save`` default since torch 1.6). A zip archive holding
  ``<prefix>/data.pkl`` (the pickled object; tensors refer to their storages through
  *persistent ids* ``('storage', storage_type, key, location, numel)``),
  ``<prefix>/data/<key>`` (the raw bytes of each storage), optionally ``<prefix>/byteorder``
  (``little`` or ``big``; absent means little) and ``<prefix>/version``.
* **PyTorch legacy checkpoints** (``torch.save(..., _use_new_zipfile_serialization=False)``).
  One stream of five pickles followed by raw data: the magic number
  ``0x1950a86a20f9469cfc6c``, the protocol version ``1001``, a ``sys_info`` dict, the object
  (persistent ids ``('storage', storage_type, key, location, numel, view_metadata)``), the list
  of storage keys; then, per key in that order, an 8-byte little-endian element count followed
  by ``count * itemsize`` bytes of little-endian data.
* **NumPy ``.npz``** archives (the project's own weight format, see ``save_npz``): every member
  is ``<key>.npy``; read with the semantics of ``np.load(path, allow_pickle=False)``.

The format is recognised from the file's content, not its suffix. A single ``.npy`` array,
tar-era (torch < 0.4) checkpoints, TorchScript archives and other formats are refused.

Which dict is returned
----------------------
If the unpickled object is a dict holding a dict under ``"state_dict"``,
``"model_state_dict"``, ``"model"`` or ``"net"`` (first match in that order), that inner dict
is the state dict; otherwise the object itself must be a dict and is the state dict. Only its
tensor values are returned; every other value (numbers, strings, ``None``, nested containers)
is metadata and is **dropped** -- PyTorch modules keep even counters such as
``num_batches_tracked`` as tensors, so nothing a model needs is lost. A leading ``"module."``
(left by ``nn.DataParallel``) is stripped from every key, for every format; two keys that
collide after stripping are an error. Keys must be strings. A state dict without any tensor is
an error. For the public AdaBin release (``{"state_dict": ..., "best_prec1": tensor}``) the
result is the 195 entries of ``state_dict``; ``best_prec1`` is dropped.

Dtypes
------
float64, float32, float16, int64, int32, int16, int8, uint8, uint16, uint32, uint64, bool,
complex64 and complex128 keep their dtype (**float16 stays float16**: exact, and the caller
decides when to widen). bfloat16, which NumPy lacks, is widened exactly to **float32** by
shifting its 16 bits into the high half of a float32. Bool storages are normalised (any
non-zero byte is True). Tensors saved with the negative or conjugate bit
(``torch._neg_view``, ``.conj()``) are returned resolved. Returned arrays are C-contiguous,
native-endian, writeable and never share memory with each other or with the file.
float8, quantized, sparse, nested and meta tensors are refused.

The allow-list unpickler
------------------------
Pickle runs code: a global looked up by ``GLOBAL`` and called by ``REDUCE`` can be
``os.system``. Every pickle is therefore first *scanned* with ``pickletools.genops`` (which
decodes opcodes without building anything), refusing any ``GLOBAL``/``INST`` outside the
allow-list, the extension registry (``EXT1/2/4``), out-of-band buffers, and any length field
that points past the end of the data; only then is it loaded by ``_SafeUnpickler``, whose
``find_class`` consults the same allow-list (this also covers ``STACK_GLOBAL``). Allowed:

* ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``,
  ``_rebuild_parameter``, ``_rebuild_parameter_with_state`` -- replaced by local functions
  that validate their arguments and build inert placeholders (no torch involved);
* the storage classes ``torch.{Double,Float,Half,BFloat16,Long,Int,Short,Char,Byte,Bool,
  ComplexFloat,ComplexDouble}Storage`` (also under ``torch.cuda``) and
  ``torch.UntypedStorage`` / ``torch.storage.UntypedStorage``, and dtypes such as
  ``torch.float32`` -- as inert markers, usable only inside persistent ids;
* ``collections.OrderedDict``, ``builtins.set``, ``builtins.frozenset``,
  ``builtins.complex``; ``builtins.bytes`` only with no argument and ``_codecs.encode`` only
  as ``(str, "latin1")`` (how protocol 2 pickles ``bytes``); ``torch.Size`` (-> tuple of
  ints) and ``torch.device`` (-> str).

Anything else -- ``os.system``, ``builtins.eval``/``getattr``/``__import__``, NumPy's
``_reconstruct``, ``torch.nn.Module`` subclasses, ``__torch__`` TorchScript classes -- raises
``CheckpointError`` naming the global before any of the pickle runs.

Robustness
----------
The file is read once, with a read bounded by its size (non-regular files such as FIFOs are
refused). Every storage's byte size is checked against the file before it is read, every
tensor's ``storage_offset``/``size``/``stride`` is checked against its storage before a view is
made with ``np.lib.stride_tricks.as_strided`` (then copied), compressed zip members may not
claim more than deflate's 1032:1 ratio, and the returned arrays may not exceed
``4 * (bytes of the storages they view) + 256 MiB`` (broadcast views and weight tying are
allowed; a few bytes of pickle asking for terabytes are not). Any malformed input raises
``CheckpointError`` (a ``ValueError``); a missing file raises ``FileNotFoundError``.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import stat
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "load_checkpoint", "save_npz"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_STRIP_PREFIX = "module."
_MAX_NDIM = 32
_MAX_SMALL_RECORD = 64  # bytes of the 'byteorder' / 'version' records
_MAX_NPY_HEADER = 10000  # NumPy's own default for max_header_size
_DEFLATE_MAX_RATIO = 1032  # the largest expansion deflate can encode
_EXPANSION_FACTOR = 4
_EXPANSION_SLACK = 256 * 2**20


class CheckpointError(ValueError):
    """A checkpoint file is malformed, unsupported, or asks for something refused."""


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DType:
    """An element type as stored on disk (``raw``) and as returned (``out``)."""

    name: str
    raw: str  # little-endian NumPy type of the stored bytes
    out: np.dtype  # dtype of the returned array

    @property
    def itemsize(self) -> int:
        return np.dtype(self.raw).itemsize


def _make_dtypes() -> dict[str, _DType]:
    table = {
        "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
        "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1",
        "uint16": "<u2", "uint32": "<u4", "uint64": "<u8", "bool": "u1",
        "complex64": "<c8", "complex128": "<c16",
    }
    out = {"bfloat16": np.dtype(np.float32), "bool": np.dtype(np.bool_)}
    return {name: _DType(name, raw, out.get(name, np.dtype(raw).newbyteorder("=")))
            for name, raw in table.items()}


_DTYPES = _make_dtypes()

# torch.<name> -> dtype name, for pickled torch.dtype objects (and their aliases).
_TORCH_DTYPE_NAMES = {name: name for name in _DTYPES} | {
    "double": "float64", "float": "float32", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
}
# Legacy typed storage classes -> dtype name. UntypedStorage holds bytes.
_STORAGE_CLASS_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


# ---------------------------------------------------------------------------------------------
# inert placeholders built by the unpickler
# ---------------------------------------------------------------------------------------------
class _StorageClass:
    """Marker for a pickled ``torch.<X>Storage`` class; only meaningful in a persistent id."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: _DType):
        self.name, self.dtype = name, dtype


class _TorchDType:
    """Marker for a pickled ``torch.<dtype>`` object (argument of ``_rebuild_tensor_v3``)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: _DType):
        self.dtype = dtype


class _Root:
    """One storage record: ``numel`` elements of ``dtype`` stored under ``key``."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: _DType, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: memoryview | bytes | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class _Storage:
    """A (possibly offset, legacy-format view) window of ``numel`` elements of a ``_Root``."""

    __slots__ = ("root", "start", "numel")

    def __init__(self, root: _Root, start: int, numel: int):
        self.root, self.start, self.numel = root, start, numel


class _Tensor:
    """A validated tensor: ``shape``/``stride``/``offset`` in elements of ``dtype``."""

    __slots__ = ("storage", "offset", "shape", "stride", "dtype", "neg", "conj")

    def __init__(self, storage, offset, shape, stride, dtype, neg=False, conj=False):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.dtype, self.neg, self.conj = dtype, neg, conj

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.out.itemsize


# ---------------------------------------------------------------------------------------------
# allowed globals (local stand-ins; nothing from torch is imported)
# ---------------------------------------------------------------------------------------------
def _check_int(value, what: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(f"{what} must be an integer >= {minimum}, got "
                              f"{_describe(value)}")
    return value


def _check_int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"{what} must be a tuple of integers, got {type(value).__name__}")
    if len(value) > _MAX_NDIM:
        raise CheckpointError(f"{what} has {len(value)} dimensions (at most {_MAX_NDIM})")
    return tuple(_check_int(v, what) for v in value)


def _describe(value) -> str:
    if isinstance(value, (int, float)) and abs(value) < 10**30:
        return repr(value)
    return type(value).__name__


def _rebuild_tensor(storage, storage_offset, size, stride, dtype: _DType | None = None):
    """Validate a tensor view of ``storage`` and return a ``_Tensor`` placeholder.

    The largest element index ``offset + sum((size_i - 1) * stride_i)`` must lie inside the
    storage (counted in elements of the tensor's dtype); strides must be non-negative.
    """
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage must come from a persistent id, got "
                              f"{type(storage).__name__}")
    offset = _check_int(storage_offset, "storage_offset")
    shape = _check_int_tuple(size, "tensor size")
    strides = _check_int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor size {shape} and stride {strides} differ in length")
    sdtype = storage.root.dtype
    dtype = sdtype if dtype is None else dtype
    available = storage.numel * sdtype.itemsize // dtype.itemsize
    if math.prod(shape) == 0:
        if offset > available:
            raise CheckpointError(f"storage_offset {offset} is past the end of a storage of "
                                  f"{available} elements")
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= available:
            raise CheckpointError(
                f"tensor (offset {offset}, size {shape}, stride {strides}) reads element "
                f"{last} of a storage of {available} elements (out of bounds)")
    return _Tensor(storage, offset, shape, strides, dtype)


def _apply_metadata(tensor: _Tensor, metadata) -> _Tensor:
    if metadata is None:
        return tensor
    if not isinstance(metadata, dict):
        raise CheckpointError(f"tensor metadata must be a dict, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if key == "neg":
            tensor.neg = bool(value)
        elif key == "conj":
            tensor.conj = bool(value)
        elif value:
            raise CheckpointError(f"unsupported tensor metadata {key!r}")
    return tensor


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _apply_metadata(_rebuild_tensor(storage, storage_offset, size, stride), metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _TorchDType):
        raise CheckpointError(f"_rebuild_tensor_v3 needs a torch dtype, got "
                              f"{type(dtype).__name__}")
    tensor = _rebuild_tensor(storage, storage_offset, size, stride, dtype.dtype)
    return _apply_metadata(tensor, metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _Tensor):
        raise CheckpointError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


def _torch_size(dims=()):
    return _check_int_tuple(dims, "torch.Size")


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise CheckpointError("torch.device takes a string and an optional index")
    return kind if index is None else f"{kind}:{index}"


def _bytes(*args):
    if args:
        raise CheckpointError("builtins.bytes is only allowed without arguments")
    return b""


def _codecs_encode(text, encoding):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin-1")


def _make_allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _codecs_encode,
        ("torch", "Size"): _torch_size,
        ("torch", "device"): _torch_device,
    }
    allowed.update({("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
                    ("builtins", "complex"): complex, ("builtins", "bytes"): _bytes})
    rebuilds = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
                "_rebuild_tensor_v3": _rebuild_tensor_v3,
                "_rebuild_parameter": _rebuild_parameter,
                "_rebuild_parameter_with_state": _rebuild_parameter}
    allowed.update({("torch._utils", name): fn for name, fn in rebuilds.items()})
    for cls, dname in _STORAGE_CLASS_DTYPES.items():
        for module in ("torch", "torch.cuda"):
            allowed[(module, cls)] = _StorageClass(cls, _DTYPES[dname])
    for module in ("torch", "torch.storage"):
        allowed[(module, "UntypedStorage")] = _StorageClass("UntypedStorage", _DTYPES["uint8"])
    for alias, dname in _TORCH_DTYPE_NAMES.items():
        allowed[("torch", alias)] = _TorchDType(_DTYPES[dname])
    return allowed


_ALLOWED_GLOBALS = _make_allowed_globals()


def _lookup_global(module, name):
    if module == "__builtin__":  # how protocol <= 2 pickles name builtins (fix_imports)
        module = "builtins"
    try:
        return _ALLOWED_GLOBALS[(module, name)]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"refused global '{module}.{name}': checkpoints may only contain tensors, "
            "storages, OrderedDict, plain containers and numbers") from None


# ---------------------------------------------------------------------------------------------
# pickle: scan, then load with the allow-list
# ---------------------------------------------------------------------------------------------
_REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}


def _scan_pickle(data: bytes | memoryview, start: int) -> int:
    """Decode one pickle at ``data[start:]`` without running it; return its end offset.

    Refuses globals outside the allow-list and opcodes that reach outside the pickle, and
    guarantees every length field fits in ``data`` (so the real load never sizes a buffer
    from an untrusted count).
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            # The C unpickler sizes (and zero-fills) its memo from this index.
            raise CheckpointError(f"pickle memo index {arg} is out of sequence")
        if opcode.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            _lookup_global(module, name)
        elif opcode.name in _REFUSED_OPCODES:
            raise CheckpointError(f"refused pickle opcode {opcode.name}")
    return stream.tell()


class _SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals and persistent ids from the allow-list."""

    def __init__(self, file, persistent):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module, name):
        return _lookup_global(module, name)

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CheckpointError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def _unpickle(data: bytes, start: int, persistent=None) -> tuple[object, int]:
    """Scan then load the pickle at ``data[start:]``; return (object, end offset)."""
    end = _scan_pickle(data, start)
    stream = io.BytesIO(data)
    stream.seek(start)
    obj = _SafeUnpickler(stream, persistent).load()
    return obj, end


class _PersistentStorages:
    """``persistent_load`` for both torch formats: one ``_Root`` per storage key."""

    def __init__(self, legacy: bool):
        self.legacy = legacy
        self.roots: dict[str, _Root] = {}

    def __call__(self, pid) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            tag = pid[0] if isinstance(pid, tuple) and pid else pid
            raise CheckpointError(f"unsupported persistent id {_describe(tag)!s:.40} "
                                  "(only 'storage' is allowed)")
        if len(pid) != (6 if self.legacy else 5):
            raise CheckpointError(f"malformed storage persistent id of length {len(pid)}")
        storage_class, key, location, numel = pid[1:5]
        if not isinstance(storage_class, _StorageClass):
            raise CheckpointError(f"storage type must be a torch storage class, got "
                                  f"{type(storage_class).__name__}")
        if not isinstance(key, str) or not isinstance(location, str):
            raise CheckpointError("storage key and location must be strings")
        numel = _check_int(numel, "storage size")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Root(key, storage_class.dtype, numel)
        elif root.dtype is not storage_class.dtype or root.numel != numel:
            raise CheckpointError(f"storage {key!r} is declared twice with different "
                                  "types or sizes")
        view = pid[5] if self.legacy else None
        if view is None:
            return _Storage(root, 0, numel)
        # Legacy storage view: (view_key, offset, view_size) into the root storage.
        if not isinstance(view, tuple) or len(view) != 3:
            raise CheckpointError("malformed legacy storage view metadata")
        _, start, size = view
        start, size = _check_int(start, "storage view offset"), _check_int(size, "view size")
        if start + size > numel:
            raise CheckpointError(f"storage view [{start}, {start + size}) is outside a "
                                  f"storage of {numel} elements")
        return _Storage(root, start, size)


# ---------------------------------------------------------------------------------------------
# the three formats
# ---------------------------------------------------------------------------------------------
def _check_member_size(info: zipfile.ZipInfo) -> None:
    if (info.compress_type != zipfile.ZIP_STORED
            and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024):
        raise CheckpointError(f"zip member {info.filename!r} claims an impossible "
                              "compression ratio")


def _read_member(zf: zipfile.ZipFile, name: str, size: int | None = None,
                 limit: int | None = None) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"zip archive lacks the record {name!r}") from None
    _check_member_size(info)
    if size is not None and info.file_size != size:
        raise CheckpointError(f"record {name!r} holds {info.file_size} bytes, "
                              f"expected {size}")
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"record {name!r} is too large ({info.file_size} bytes)")
    data = zf.read(info)
    if len(data) != info.file_size:
        raise CheckpointError(f"record {name!r} is truncated")
    return data


def _load_torch_zip(zf: zipfile.ZipFile, pkl_name: str):
    prefix = pkl_name[: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in zf.namelist():
        raw = _read_member(zf, prefix + "byteorder", limit=_MAX_SMALL_RECORD)
        byteorder = raw.decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"unknown byteorder record {byteorder!r:.40}")
    storages = _PersistentStorages(legacy=False)
    data = _read_member(zf, pkl_name)
    obj, _ = _unpickle(data, 0, storages)

    def fill(root: _Root) -> None:
        root.data = memoryview(_read_member(zf, f"{prefix}data/{root.key}", size=root.nbytes))

    return obj, fill, byteorder


def _load_torch_legacy(data: bytes):
    magic, pos = _unpickle(data, 0)
    if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    version, pos = _unpickle(data, pos)
    if type(version) is not int or version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy protocol version {_describe(version)}")
    _sys_info, pos = _unpickle(data, pos)
    storages = _PersistentStorages(legacy=True)
    obj, pos = _unpickle(data, pos, storages)
    keys, pos = _unpickle(data, pos)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError("legacy storage key list is malformed")
    view = memoryview(data)
    for key in keys:
        root = storages.roots.get(key)
        if root is None:
            raise CheckpointError(f"storage key {key!r} is not referenced by the checkpoint")
        if root.data is not None:
            raise CheckpointError(f"storage {key!r} is stored twice")
        if pos + 8 > len(data):
            raise CheckpointError("legacy checkpoint is truncated (storage header)")
        count = int.from_bytes(data[pos:pos + 8], "little")
        if count != root.numel:
            raise CheckpointError(f"storage {key!r} holds {count} elements, its tensor "
                                  f"header says {root.numel}")
        pos += 8
        if pos + root.nbytes > len(data):
            raise CheckpointError(f"legacy checkpoint is truncated (storage {key!r})")
        root.data = view[pos:pos + root.nbytes]
        pos += root.nbytes

    def fill(root: _Root) -> None:
        if root.data is None:
            raise CheckpointError(f"storage {root.key!r} has no data in the file")

    return obj, fill, "little"


def _load_npz(zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    fmt = np.lib.format
    arrays: dict[str, np.ndarray] = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"npz member {info.filename!r} is not a .npy array")
        _check_member_size(info)
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, _MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, _MAX_NPY_HEADER)
            else:
                raise CheckpointError(f"unsupported .npy version {version}")
            if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype:
                raise CheckpointError(f"npz member {info.filename!r} has unsupported dtype "
                                      f"{dtype} (numeric dtypes only; pickles are refused)")
            shape = _check_int_tuple(shape, "npy shape")
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size - f.tell() != nbytes:
                raise CheckpointError(f"npz member {info.filename!r} holds "
                                      f"{info.file_size - f.tell()} data bytes, its header "
                                      f"says {nbytes}")
            raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointError(f"npz member {info.filename!r} is truncated")
        flat = np.frombuffer(raw, dtype=dtype)
        arr = flat.reshape(shape, order="F" if fortran else "C")
        arrays[info.filename[:-4]] = np.array(arr, dtype=dtype.newbyteorder("="), order="C")
    return arrays


# ---------------------------------------------------------------------------------------------
# tensors -> arrays
# ---------------------------------------------------------------------------------------------
def _materialize(tensor: _Tensor, byteorder: str) -> np.ndarray:
    """Copy a validated tensor out of its storage bytes (already size-checked)."""
    dtype = tensor.dtype
    raw = np.dtype(dtype.raw)
    if byteorder == "big":
        raw = raw.newbyteorder(">")
    storage = tensor.storage
    sbytes = storage.root.dtype.itemsize
    begin = storage.start * sbytes
    stop = begin + storage.numel * sbytes
    buf = storage.root.data[begin:stop]
    count = len(buf) // raw.itemsize
    if math.prod(tensor.shape) == 0:
        out = np.zeros(tensor.shape, dtype=raw)
    else:
        base = np.frombuffer(buf, dtype=raw, count=count)
        # Size-1 dimensions never move the pointer; zero their (arbitrary) strides.
        strides = tuple(0 if n == 1 else s * raw.itemsize
                        for n, s in zip(tensor.shape, tensor.stride))
        view = np.lib.stride_tricks.as_strided(base[tensor.offset:], shape=tensor.shape,
                                               strides=strides, writeable=False)
        out = np.array(view, order="C")
    if dtype.name == "bool":
        out = out != 0
    elif dtype.name == "bfloat16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    else:
        out = out.astype(dtype.out, copy=False)
    if tensor.neg:
        out = np.negative(out)
    if tensor.conj:
        out = np.conj(out)
    return out if out.flags.c_contiguous and out.flags.writeable else np.array(out, order="C")


def _select_state_dict(obj) -> Mapping:
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict "
                              "(a state dict or a wrapper around one)")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict):
            return inner
    return obj


def _strip_prefix(items) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in items:
        if not isinstance(key, str):
            raise CheckpointError(f"state dict keys must be strings, got "
                                  f"{type(key).__name__}")
        name = key[len(_STRIP_PREFIX):] if key.startswith(_STRIP_PREFIX) else key
        if name in out:
            raise CheckpointError(f"keys collide after stripping {_STRIP_PREFIX!r}: {name!r}")
        out[name] = value
    return out


def _tensors_to_arrays(obj, fill, byteorder: str) -> dict[str, np.ndarray]:
    state = _select_state_dict(obj)
    tensors = {k: v for k, v in _strip_prefix(state.items()).items() if isinstance(v, _Tensor)}
    if not tensors:
        keys = ", ".join(repr(k)[:40] for k in list(state)[:8])
        raise CheckpointError(f"no tensors found in the checkpoint (keys: {keys})")
    roots = {id(t.storage.root): t.storage.root for t in tensors.values()}
    budget = _EXPANSION_FACTOR * sum(r.nbytes for r in roots.values()) + _EXPANSION_SLACK
    if sum(t.nbytes for t in tensors.values()) > budget:
        raise CheckpointError("tensors would expand to far more memory than their storages "
                              "hold (refused)")
    for root in roots.values():
        fill(root)
    return {k: _materialize(t, byteorder) for k, t in tensors.items()}


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _read_file(path) -> tuple[str, bytes]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    name = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag.
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as f:  # closes fd
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{name!r} is not a regular file")
        data = f.read(info.st_size)
    return str(name), data


def _parse(data: bytes) -> dict[str, np.ndarray]:
    if not data:
        raise CheckpointError("file is empty")
    if data[:2] == b"PK":
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) == 1:
            return _tensors_to_arrays(*_load_torch_zip(zf, pickles[0]))
        if len(pickles) > 1:
            raise CheckpointError("zip archive holds several data.pkl records")
        if names and all(n.endswith(".npy") for n in names):
            return dict(_strip_prefix(_load_npz(zf).items()))
        raise CheckpointError("zip archive is neither a PyTorch checkpoint (no "
                              "<prefix>/data.pkl) nor an .npz of .npy arrays")
    if data[:1] == b"\x80":
        return _tensors_to_arrays(*_load_torch_legacy(data))
    if data[:6] == b"\x93NUMPY":
        raise CheckpointError("a single .npy array is not a checkpoint; use .npz (save_npz)")
    raise CheckpointError("unrecognised format (expected a PyTorch zip or legacy "
                          "checkpoint, or an .npz archive)")


def load_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a state dict from a PyTorch checkpoint or an ``.npz`` file, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A ``torch.save`` file (zip or legacy format; ``.th``/``.pth``/``.pt``, any suffix)
        or an ``.npz`` archive of numeric arrays.

    Returns
    -------
    dict[str, np.ndarray]
        Parameter and buffer names (leading ``"module."`` stripped) mapped to fresh
        C-contiguous arrays, in file order. See the module docstring for which dict of a
        wrapped checkpoint is returned, dtype rules (bfloat16 -> float32, float16 kept) and
        what is dropped (non-tensor values).

    Raises
    ------
    TypeError
        ``path`` is not a str or os.PathLike.
    FileNotFoundError
        The file does not exist (other ``OSError`` from opening it propagate too).
    CheckpointError
        (a ``ValueError``) The file is empty, truncated, corrupt, of an unsupported format,
        or its pickle names a global outside the allow-list (nothing of it is run).
    """
    name, data = _read_file(path)
    try:
        return _parse(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    except Exception as exc:  # any parser failure on untrusted bytes is a corrupt file
        raise CheckpointError(f"{name}: corrupt or unsupported checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc


def save_npz(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> Path:
    """Write ``state_dict`` as an uncompressed ``.npz`` that ``load_checkpoint`` reads back.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, written exactly as given (unlike ``np.savez``, no ``.npz`` suffix is
        appended). The file is written to a temporary sibling and renamed into place.
    state_dict : Mapping[str, array_like]
        Non-empty string keys; values convertible to arrays of bool, integer, float or complex
        dtype (object, string and structured arrays are refused: they would need pickle).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    TypeError
        ``path`` or ``state_dict`` has the wrong type, or a key is not a string.
    ValueError
        A key is empty or a value is not a numeric array.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {type(key).__name__}")
        if not key or "\0" in key:
            raise ValueError(f"state_dict key {key!r} must be non-empty without NUL")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
            raise ValueError(f"state_dict[{key!r}] has dtype {arr.dtype}; only bool, "
                             "integer, float and complex arrays can be saved")
        arrays[key] = arr
    target = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
