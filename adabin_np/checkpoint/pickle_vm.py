"""A pickle virtual machine for checkpoints, written in Python over ``pickletools.genops``.

Pickle is a program: ``GLOBAL`` looks up any callable, ``REDUCE`` calls it, ``BUILD`` sets
attributes on anything on the stack. This VM executes the opcode stream itself instead of
handing it to ``pickle.Unpickler``, so safety is a property of the code below rather than of a
filter in front of CPython's unpickler:

* **No code runs.** ``GLOBAL``/``STACK_GLOBAL`` push a frozen :class:`Global` marker from the
  allow-list (never a real function or class; anything else is refused by name). ``REDUCE``
  accepts only a marker and dispatches on its ``kind`` to the local handlers below, which
  validate their arguments. ``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``, the extension
  registry (``EXT1/2/4``), ``PERSID`` (text) and out-of-band buffers are refused.
* **Nothing is mutated that the file should not mutate.** ``APPEND(S)`` only on lists,
  ``SETITEM(S)`` only on dicts, ``ADDITEMS`` only on sets, all created by this load.
  ``BUILD`` only on a dict made by ``collections.OrderedDict`` (how ``state_dict()``'s
  ``_metadata`` attribute is pickled; the state is discarded). Markers and tensor
  descriptions are frozen dataclasses that no opcode can reach into; tensors are described by
  :class:`~.tensors.TensorDesc` and validated only after the whole pickle was read.
* **Bounded work, no recursion.** The VM is a loop (no C or Python recursion); opcodes are
  counted against ``max_ops``; MARK nesting and tuple nesting against ``max_depth``. Dict keys
  and set elements must be ``str``/``bytes``/``int``/``float``/``complex``/``bool``/``None`` or
  a flat tuple of at most ``max_key_items`` of those, so hashing and comparing them cannot
  recurse; and at most ``max_equal_hashes`` keys of one container may share a hash value, so
  building a dict cannot go quadratic.

Allowed globals (``__builtin__`` is read as ``builtins``):
``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` / ``_rebuild_tensor_v3`` /
``_rebuild_parameter`` / ``_rebuild_parameter_with_state``; the storage classes
``torch.{Double,Float,Half,BFloat16,Long,Int,Short,Char,Byte,Bool,ComplexFloat,
ComplexDouble}Storage`` (also under ``torch.cuda``), ``torch.UntypedStorage`` and
``torch.storage.UntypedStorage`` (only inside persistent ids); dtypes such as
``torch.float32`` (only as ``_rebuild_tensor_v3``'s argument); ``collections.OrderedDict``
(-> ``dict``), ``builtins.set``/``frozenset``/``complex``; ``builtins.bytes`` without
arguments and ``_codecs.encode(str, "latin1")`` (protocol 2's ``bytes``); ``torch.Size``
(-> tuple of ints) and ``torch.device`` (-> str).
"""
from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from dataclasses import dataclass

from .dtypes import DTYPES, DType
from .errors import CheckpointError
from .limits import Limits
from .tensors import StorageRef, TensorDesc, check_int, check_int_tuple, describe


# ---------------------------------------------------------------------------------------------
# the allow-list: immutable markers, never real objects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Global:
    """An allow-listed global as the VM sees it: ``kind`` selects its REDUCE handler."""

    module: str
    name: str
    kind: str
    dtype: DType | None = None


_TORCH_DTYPE_NAMES = {name: name for name in DTYPES} | {
    "double": "float64", "float": "float32", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
}
_STORAGE_CLASS_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


def _make_allowed() -> dict[tuple[str, str], Global]:
    kinds = {("collections", "OrderedDict"): "ordered_dict", ("builtins", "set"): "set",
             ("builtins", "frozenset"): "frozenset", ("builtins", "complex"): "complex",
             ("builtins", "bytes"): "bytes", ("_codecs", "encode"): "codecs_encode",
             ("torch", "Size"): "torch_size", ("torch", "device"): "torch_device"}
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                 "_rebuild_parameter", "_rebuild_parameter_with_state"):
        kinds[("torch._utils", name)] = name
    allowed = {key: Global(key[0], key[1], kind) for key, kind in kinds.items()}
    for cls, dname in _STORAGE_CLASS_DTYPES.items():
        for module in ("torch", "torch.cuda"):
            allowed[(module, cls)] = Global(module, cls, "storage", DTYPES[dname])
    for module in ("torch", "torch.storage"):
        allowed[(module, "UntypedStorage")] = Global(module, "UntypedStorage", "storage",
                                                     DTYPES["uint8"])
    for alias, dname in _TORCH_DTYPE_NAMES.items():
        allowed[("torch", alias)] = Global("torch", alias, "dtype", DTYPES[dname])
    return allowed


ALLOWED_GLOBALS = _make_allowed()


def lookup_global(module, name) -> Global:
    if module == "__builtin__":  # how protocol <= 2 pickles name builtins
        module = "builtins"
    marker = (ALLOWED_GLOBALS.get((module, name))
              if type(module) is str and type(name) is str else None)
    if marker is None:
        raise CheckpointError(
            f"refused global '{str(module)[:60]}.{str(name)[:60]}': checkpoints may only "
            "contain tensors, storages, OrderedDict, plain containers and numbers")
    return marker


def storage_dtype(obj) -> DType | None:
    """The dtype of a storage-class marker, or None for anything else."""
    return obj.dtype if type(obj) is Global and obj.kind == "storage" else None


# ---------------------------------------------------------------------------------------------
# REDUCE handlers (each validates its untrusted arguments; none keeps a reference to them)
# ---------------------------------------------------------------------------------------------
def _args(args: tuple, name: str, low: int, high: int) -> tuple:
    if not low <= len(args) <= high:
        raise CheckpointError(f"{name} takes {low}..{high} arguments, got {len(args)}")
    return args + (None,) * (high - len(args))


def _tensor(args, name: str, limits: Limits, *, v3: bool = False) -> TensorDesc:
    storage, offset, size, stride = args[:4]
    if type(storage) is not StorageRef:
        raise CheckpointError(f"{name}: the storage must come from a persistent id, got "
                              f"{type(storage).__name__}")
    dtype = storage.dtype
    if v3:
        marker = args[6]
        if type(marker) is not Global or marker.kind != "dtype":
            raise CheckpointError(f"{name} needs a torch dtype, got {describe(marker)}")
        dtype = marker.dtype
    metadata = args[6 if not v3 else 7]
    neg = conj = False
    if metadata is not None:
        if type(metadata) is not dict:
            raise CheckpointError(f"tensor metadata must be a dict, got "
                                  f"{type(metadata).__name__}")
        for key, value in metadata.items():
            if key == "neg" and type(value) is bool:
                neg = value
            elif key == "conj" and type(value) is bool:
                conj = value
            elif value:
                raise CheckpointError(f"unsupported tensor metadata {describe(key)}")
    return TensorDesc(storage, check_int(offset, "storage_offset"),
                      check_int_tuple(size, "tensor size", limits.max_ndim),
                      check_int_tuple(stride, "tensor stride", limits.max_ndim),
                      dtype, neg, conj)


def _reduce(marker: Global, args: tuple, limits: Limits, vm: "PickleVM"):
    kind = marker.kind
    if kind == "_rebuild_tensor":
        return _tensor(_args(args, kind, 4, 4) + (None,) * 3, kind, limits)
    if kind == "_rebuild_tensor_v2":
        return _tensor(_args(args, kind, 4, 7), kind, limits)
    if kind == "_rebuild_tensor_v3":
        return _tensor(_args(args, kind, 7, 8), kind, limits, v3=True)
    if kind in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        data = _args(args, kind, 1, 4)[0]
        if type(data) is not TensorDesc:
            raise CheckpointError(f"parameter data must be a tensor, got "
                                  f"{type(data).__name__}")
        return data
    if kind == "ordered_dict":
        if args:
            raise CheckpointError("collections.OrderedDict is only allowed without arguments")
        return vm.new_dict()
    if kind in ("set", "frozenset"):
        items = _args(args, kind, 0, 1)[0]
        items = () if items is None else items
        if type(items) not in (list, tuple):
            raise CheckpointError(f"builtins.{kind} takes a list, got {describe(items)}")
        return vm.new_set(items, frozen=kind == "frozenset")
    if kind == "complex":
        real, imag = _args(args, kind, 0, 2)
        parts = [0.0 if p is None else p for p in (real, imag)]
        if not all(type(p) in (int, float) for p in parts):
            raise CheckpointError("builtins.complex takes two real numbers")
        try:
            return complex(*parts)
        except OverflowError as exc:
            raise CheckpointError(f"builtins.complex: {exc}") from None
    if kind == "bytes":
        if args:
            raise CheckpointError("builtins.bytes is only allowed without arguments")
        return b""
    if kind == "codecs_encode":
        text, encoding = _args(args, kind, 2, 2)
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise CheckpointError("_codecs.encode is only allowed as (str, 'latin1')")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise CheckpointError("_codecs.encode: text is not latin-1") from None
    if kind == "torch_size":
        dims = _args(args, kind, 0, 1)[0]
        return check_int_tuple(() if dims is None else dims, "torch.Size", limits.max_ndim)
    if kind == "torch_device":
        dev, index = _args(args, kind, 1, 2)
        if type(dev) is not str or not (index is None or type(index) is int):
            raise CheckpointError("torch.device takes a string and an optional index")
        return dev if index is None else f"{dev}:{index}"
    raise CheckpointError(f"'{marker.module}.{marker.name}' cannot be called")


# ---------------------------------------------------------------------------------------------
# the VM
# ---------------------------------------------------------------------------------------------
_SCALARS = frozenset({str, bytes, int, float, complex, bool, type(None)})
_REFUSED = {"INST": "instantiates arbitrary classes", "OBJ": "instantiates arbitrary classes",
            "NEWOBJ": "instantiates arbitrary classes",
            "NEWOBJ_EX": "instantiates arbitrary classes",
            "EXT1": "uses the extension registry", "EXT2": "uses the extension registry",
            "EXT4": "uses the extension registry",
            "PERSID": "uses a text persistent id",
            "NEXT_BUFFER": "uses out-of-band buffers",
            "READONLY_BUFFER": "uses out-of-band buffers"}


class OpCounter:
    """Opcodes left for the whole file (shared by the pickles of a legacy file)."""

    def __init__(self, limits: Limits):
        self.left = limits.max_ops


class PickleVM:
    """Executes one pickle; see the module docstring for what it allows."""

    def __init__(self, limits: Limits, counter: OpCounter,
                 persistent: Callable[[object], StorageRef] | None = None):
        self.limits = limits
        self.counter = counter
        self.persistent = persistent
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        # id -> (container, {hash: count}) for dicts/sets of this load; id -> (tuple, depth)
        self._hashes: dict[int, tuple[object, dict[int, int]]] = {}
        self._depth: dict[int, tuple[tuple, int]] = {}
        self._ordered_dicts: dict[int, dict] = {}

    # -- containers ---------------------------------------------------------------------------
    def _check_key(self, container, key) -> None:
        t = type(key)
        if t not in _SCALARS:
            if (t is not tuple or len(key) > self.limits.max_key_items
                    or not all(type(e) in _SCALARS for e in key)):
                raise CheckpointError(
                    f"refused dict key or set element of type {t.__name__} (allowed: str, "
                    "bytes, numbers, None and flat tuples of at most "
                    f"{self.limits.max_key_items} of them)")
        entry = self._hashes.get(id(container))
        if entry is None:
            entry = self._hashes[id(container)] = (container, {})
        counts = entry[1]
        h = hash(key)
        n = counts.get(h, 0) + 1
        if n > self.limits.max_equal_hashes:
            raise CheckpointError(f"more than {self.limits.max_equal_hashes} keys of one "
                                  "container share a hash value (hash flooding refused)")
        counts[h] = n

    def new_dict(self) -> dict:
        d: dict = {}
        self._ordered_dicts[id(d)] = d
        return d

    def new_set(self, items, *, frozen: bool):
        s = set()
        for item in items:
            self._check_key(s, item)
            s.add(item)
        return frozenset(s) if frozen else s

    def _setitems(self, target, items: list) -> None:
        if type(target) is not dict:
            raise CheckpointError(f"refused SETITEM on a {type(target).__name__}")
        if len(items) % 2:
            raise CheckpointError("odd number of items for SETITEMS")
        for i in range(0, len(items), 2):
            key = items[i]
            self._check_key(target, key)
            target[key] = items[i + 1]

    def _tuple(self, items) -> tuple:
        t = tuple(items)
        depth = 1
        for e in t:
            if type(e) is tuple:
                entry = self._depth.get(id(e))
                if entry is not None and entry[0] is e:
                    depth = max(depth, entry[1] + 1)
        if depth > self.limits.max_depth:
            raise CheckpointError(f"tuples nested deeper than {self.limits.max_depth}")
        if t:
            self._depth[id(t)] = (t, depth)
        return t

    # -- the stack ----------------------------------------------------------------------------
    def _pop(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise CheckpointError("pickle stack underflow")
        return self.stack.pop()

    def _top(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise CheckpointError("pickle stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.marks:
            raise CheckpointError("pickle MARK missing")
        k = self.marks.pop()
        items = self.stack[k:]
        del self.stack[k:]
        return items

    # -- run ----------------------------------------------------------------------------------
    def run(self, stream: io.BytesIO):
        stack = self.stack
        counter = self.counter
        for opcode, arg, _ in pickletools.genops(stream):
            counter.left -= 1
            if counter.left < 0:
                raise CheckpointError(f"pickle has more than {self.limits.max_ops} opcodes "
                                      "(max_ops)")
            name = opcode.name
            handler = _SIMPLE_PUSH.get(name)
            if handler is not None:
                stack.append(handler(arg))
                continue
            if name == "STOP":
                value = self._pop()
                if stack or self.marks:
                    raise CheckpointError("pickle ends with items left on its stack")
                return value
            if name in _REFUSED:
                raise CheckpointError(f"refused pickle opcode {name} (it {_REFUSED[name]})")
            getattr(self, "op_" + name)(arg)
        raise CheckpointError("pickle ends without STOP")  # genops raises first, in practice

    # protocol / framing
    def op_PROTO(self, arg):
        if not 0 <= arg <= 5:
            raise CheckpointError(f"unsupported pickle protocol {arg}")

    def op_FRAME(self, arg):
        pass

    # stack manipulation
    def op_MARK(self, arg):
        if len(self.marks) >= self.limits.max_depth:
            raise CheckpointError(f"pickle MARKs nested deeper than {self.limits.max_depth}")
        self.marks.append(len(self.stack))

    def op_POP(self, arg):
        if len(self.stack) > (self.marks[-1] if self.marks else 0):
            self.stack.pop()
        else:  # POP on an empty frame discards the MARK, as CPython's unpickler does
            self._pop_mark()

    def op_POP_MARK(self, arg):
        self._pop_mark()

    def op_DUP(self, arg):
        self.stack.append(self._top())

    # memo
    def _get(self, index):
        try:
            self.stack.append(self.memo[index])
        except KeyError:
            raise CheckpointError(f"pickle memo index {describe(index)} is not set") from None

    op_GET = op_BINGET = op_LONG_BINGET = _get

    def _put(self, index):
        if type(index) is not int or index < 0:
            raise CheckpointError("negative pickle memo index")
        self.memo[index] = self._top()

    op_PUT = op_BINPUT = op_LONG_BINPUT = _put

    def op_MEMOIZE(self, arg):
        self.memo[len(self.memo)] = self._top()

    # strings from protocol 0/1 (Python 2 str): decoded as UTF-8
    def _py2_string(self, arg):
        if type(arg) is bytes:
            try:
                arg = arg.decode("utf-8")
            except UnicodeDecodeError:
                raise CheckpointError("pickled string is not UTF-8") from None
        self.stack.append(arg)

    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = _py2_string

    # containers
    def op_EMPTY_TUPLE(self, arg):
        self.stack.append(())

    def op_TUPLE(self, arg):
        self.stack.append(self._tuple(self._pop_mark()))

    def op_TUPLE1(self, arg):
        self.stack.append(self._tuple((self._pop(),)))

    def op_TUPLE2(self, arg):
        b = self._pop()
        self.stack.append(self._tuple((self._pop(), b)))

    def op_TUPLE3(self, arg):
        c = self._pop()
        b = self._pop()
        self.stack.append(self._tuple((self._pop(), b, c)))

    def op_EMPTY_LIST(self, arg):
        self.stack.append([])

    def op_LIST(self, arg):
        self.stack.append(self._pop_mark())

    def op_APPEND(self, arg):
        value = self._pop()
        target = self._top()
        if type(target) is not list:
            raise CheckpointError(f"refused APPEND on a {type(target).__name__}")
        target.append(value)

    def op_APPENDS(self, arg):
        items = self._pop_mark()
        target = self._top()
        if type(target) is not list:
            raise CheckpointError(f"refused APPENDS on a {type(target).__name__}")
        target.extend(items)

    def op_EMPTY_DICT(self, arg):
        self.stack.append({})

    def op_DICT(self, arg):
        d: dict = {}
        self._setitems(d, self._pop_mark())
        self.stack.append(d)

    def op_SETITEM(self, arg):
        value = self._pop()
        key = self._pop()
        self._setitems(self._top(), [key, value])

    def op_SETITEMS(self, arg):
        items = self._pop_mark()
        self._setitems(self._top(), items)

    def op_EMPTY_SET(self, arg):
        self.stack.append(set())

    def op_ADDITEMS(self, arg):
        items = self._pop_mark()
        target = self._top()
        if type(target) is not set:
            raise CheckpointError(f"refused ADDITEMS on a {type(target).__name__}")
        for item in items:
            self._check_key(target, item)
            target.add(item)

    def op_FROZENSET(self, arg):
        self.stack.append(self.new_set(self._pop_mark(), frozen=True))

    # globals, calls, persistent ids
    def op_GLOBAL(self, arg):
        module, _, name = arg.partition(" ")
        self.stack.append(lookup_global(module, name))

    def op_STACK_GLOBAL(self, arg):
        name = self._pop()
        module = self._pop()
        if type(module) is not str or type(name) is not str:
            raise CheckpointError("STACK_GLOBAL needs two strings")
        self.stack.append(lookup_global(module, name))

    def op_REDUCE(self, arg):
        args = self._pop()
        func = self._pop()
        if type(func) is not Global:
            raise CheckpointError(f"refused call of a {type(func).__name__} (only "
                                  "allow-listed globals can be called)")
        if type(args) is not tuple:
            raise CheckpointError("REDUCE arguments must be a tuple")
        self.stack.append(_reduce(func, args, self.limits, self))

    def op_BUILD(self, arg):
        state = self._pop()
        target = self._top()
        if type(target) is not dict or self._ordered_dicts.get(id(target)) is not target:
            raise CheckpointError(f"refused BUILD on a {type(target).__name__} (only an "
                                  "OrderedDict's attributes may be set, and they are dropped)")
        if not (state is None or type(state) is dict
                or (type(state) is tuple and len(state) == 2
                    and all(s is None or type(s) is dict for s in state))):
            raise CheckpointError("malformed BUILD state for an OrderedDict")

    def op_BINPERSID(self, arg):
        pid = self._pop()
        if self.persistent is None:
            raise CheckpointError("unexpected persistent id in a plain pickle")
        self.stack.append(self.persistent(pid))


def _same(arg):
    return arg  # genops already decoded the argument (protocol 0's I00/I01 -> False/True)


_SIMPLE_PUSH: dict[str, Callable] = {
    "NONE": lambda a: None, "NEWTRUE": lambda a: True, "NEWFALSE": lambda a: False,
    "INT": _same, "BININT": _same, "BININT1": _same,
    "BININT2": _same, "LONG": _same, "LONG1": _same,
    "LONG4": _same, "FLOAT": _same, "BINFLOAT": _same,
    "UNICODE": _same, "SHORT_BINUNICODE": _same, "BINUNICODE": _same,
    "BINUNICODE8": _same, "BINBYTES": bytes, "SHORT_BINBYTES": bytes,
    "BINBYTES8": bytes, "BYTEARRAY8": bytes,
}


def unpickle(data, start: int, limits: Limits, counter: OpCounter,
             persistent: Callable[[object], StorageRef] | None = None) -> tuple[object, int]:
    """Run the pickle at ``data[start:]``; return (object, offset just past its STOP)."""
    stream = io.BytesIO(data)
    stream.seek(start)
    vm = PickleVM(limits, counter, persistent)
    try:
        obj = vm.run(stream)
    except CheckpointError:
        raise
    except (ValueError, OverflowError, UnicodeDecodeError, EOFError) as exc:
        # genops: unknown opcode, truncated argument, malformed text number
        raise CheckpointError(f"corrupt pickle: {str(exc)[:200]}") from None
    return obj, stream.tell()
