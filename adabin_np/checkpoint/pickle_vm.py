"""A pickle virtual machine for checkpoints, written in Python, opcode by opcode.

Pickle is a program: ``GLOBAL`` looks up any callable, ``REDUCE`` calls it, ``BUILD`` sets
attributes on anything on the stack. This VM executes the opcode stream itself instead of
handing it to ``pickle.Unpickler``, so safety is a property of the code below rather than of a
filter in front of CPython's unpickler. It also decodes the opcodes itself (binary arguments
inline, protocol 0's text arguments with ``pickletools``' readers): every length is checked
against the data before it is used, and decoding is 2.5x faster than ``pickletools.genops``.

* **No code runs.** ``GLOBAL``/``STACK_GLOBAL`` push a frozen :class:`Global` marker from the
  allow-list (never a real function or class; anything else is refused by name). ``REDUCE``
  accepts only a marker and dispatches on its ``kind`` to the local handlers below, which
  validate their arguments. ``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``, the extension
  registry (``EXT1/2/4``), ``PERSID`` (text) and out-of-band buffers are refused.
* **Nothing is mutated that the file should not mutate.** ``APPEND(S)`` only on lists,
  ``SETITEM(S)`` only on dicts, ``ADDITEMS`` only on sets, all created by this load.
  ``BUILD`` only on a dict made by ``collections.OrderedDict`` (how ``state_dict()``'s
  ``_metadata`` attribute is pickled; the state is discarded). Markers and tensor
  descriptions are frozen dataclasses that no opcode can reach into; a tensor is a
  :class:`~.tensors.TensorDesc` whose arguments are copied (lists become tuples) when its
  rebuild call runs, and whose bounds are checked only after the whole pickle was read.
* **Bounded work, no recursion.** The VM is a loop (no C or Python recursion); opcodes are
  counted against ``max_ops`` (a ``REDUCE``, which validates a whole argument tuple, counts
  as ``REDUCE_COST`` = 8); MARK nesting and tuple nesting against ``max_depth``. Dict keys
  and set elements must be ``str``/``bytes``/``int``/``float``/``complex``/``bool``/``None`` or
  a flat tuple of at most ``max_key_items`` of those, with integers below 2**63 in magnitude
  (an int's hash is not cached and costs time linear in its size), so hashing and comparing
  them cannot recurse; and at most ``max_equal_hashes`` keys of one container may share a
  hash value, so building a dict cannot go quadratic. The cyclic garbage collector is paused
  while a pickle runs (it would rescan every container built so far, over and over).
* **No amplification.** A handler that builds something from a referenced object pays for
  it: a new set costs ``SET_COST`` = 4 opcodes (its memory is 4 times a list's), and
  ``set(list)``/``frozenset(list)`` ``SET_ELEMENT_COST`` = 3 more per element, ``_codecs.encode``
  charges the bytes it creates to ``max_bytes``, ``torch.device`` names are at most 64
  characters. Everything else an opcode creates is at most one reference.

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

import codecs
import gc
import io
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .dtypes import DTYPES, DType
from .errors import CheckpointError
from .limits import ByteBudget, Limits
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
        vm.budget.take(len(text), "bytes objects built by the pickle")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise CheckpointError("_codecs.encode: text is not latin-1") from None
    if kind == "torch_size":
        dims = _args(args, kind, 0, 1)[0]
        return check_int_tuple(() if dims is None else dims, "torch.Size", limits.max_ndim)
    if kind == "torch_device":
        dev, index = _args(args, kind, 1, 2)
        if (type(dev) is not str or len(dev) > 64
                or not (index is None or (type(index) is int and 0 <= index < 2**31))):
            raise CheckpointError("torch.device takes a short string and an optional index")
        return dev if index is None else f"{dev}:{index}"
    raise CheckpointError(f"'{marker.module}.{marker.name}' cannot be called")


# ---------------------------------------------------------------------------------------------
# the VM
# ---------------------------------------------------------------------------------------------
_SCALARS = frozenset({str, bytes, int, float, complex, bool, type(None)})
_MAX_KEY_INT = 2**63
_REFUSED = {"INST": "instantiates arbitrary classes", "OBJ": "instantiates arbitrary classes",
            "NEWOBJ": "instantiates arbitrary classes",
            "NEWOBJ_EX": "instantiates arbitrary classes",
            "EXT1": "uses the extension registry", "EXT2": "uses the extension registry",
            "EXT4": "uses the extension registry",
            "PERSID": "uses a text persistent id",
            "NEXT_BUFFER": "uses out-of-band buffers",
            "READONLY_BUFFER": "uses out-of-band buffers"}


REDUCE_COST = 8  # opcodes a REDUCE counts as against max_ops
SET_ELEMENT_COST = 3  # opcodes each element of set(list)/frozenset(list) counts as
SET_COST = 4  # opcodes a new set counts as (an empty set takes 216 bytes, a list 56)


class OpCounter:
    """Opcodes left for the whole file (shared by the pickles of a legacy file)."""

    def __init__(self, limits: Limits):
        self.left = limits.max_ops


class PickleVM:
    """Executes one pickle; see the module docstring for what it allows."""

    def __init__(self, limits: Limits, counter: OpCounter, budget: ByteBudget,
                 persistent: Callable[[object], StorageRef] | None = None):
        self.limits = limits
        self.counter = counter
        self.budget = budget
        self.persistent = persistent
        self.stack: list = []
        self.marks: list[int] = []
        self.floor = 0
        self.memo: dict[int, object] = {}
        # id -> (container, {hash: count}) for dicts/sets of this load; id -> (tuple, depth)
        self._hashes: dict[int, tuple[object, dict[int, int]]] = {}
        self._depth: dict[int, tuple[tuple, int]] = {}
        self._ordered_dicts: dict[int, dict] = {}

    # -- containers ---------------------------------------------------------------------------
    def _check_key(self, container, key) -> None:
        t = type(key)
        if t is int:
            ok = -_MAX_KEY_INT < key < _MAX_KEY_INT
        elif t in _SCALARS:
            ok = True
        else:
            ok = (t is tuple and len(key) <= self.limits.max_key_items
                  and all(type(e) in _SCALARS and (type(e) is not int
                                                    or -_MAX_KEY_INT < e < _MAX_KEY_INT)
                          for e in key))
        if not ok:
            raise CheckpointError(
                f"refused dict key or set element {describe(key)} (allowed: str, bytes, "
                "numbers (integers below 2**63), None and flat tuples of at most "
                f"{self.limits.max_key_items} of them)")
        if len(container) < self.limits.max_equal_hashes or key in container:
            return  # too few keys to exceed the limit, or no new key
        entry = self._hashes.get(id(container))
        if entry is None or entry[0] is not container:
            counts: dict[int, int] = {}
            for k in container:
                counts[hash(k)] = counts.get(hash(k), 0) + 1
            entry = self._hashes[id(container)] = (container, counts)
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
        self.counter.left -= SET_COST - 1 + SET_ELEMENT_COST * len(items)
        if self.counter.left < 0:
            raise CheckpointError(f"pickle needs more than {self.limits.max_ops} steps "
                                  "(max_ops)")
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
        """A tuple; its nesting depth is recorded when it holds tuples (others have depth 1)."""
        t = tuple(items)
        depth = 1
        for e in t:
            if type(e) is tuple:
                entry = self._depth.get(id(e))
                child = entry[1] if entry is not None and entry[0] is e else 1
                if child >= depth:
                    depth = child + 1
        if depth > 1:
            if depth > self.limits.max_depth:
                raise CheckpointError(f"tuples nested deeper than {self.limits.max_depth}")
            self._depth[id(t)] = (t, depth)
        return t

    # -- the stack (``floor``: the stack length at the innermost MARK) -------------------------
    def _pop(self):
        if len(self.stack) <= self.floor:
            raise CheckpointError("pickle stack underflow")
        return self.stack.pop()

    def _top(self):
        if len(self.stack) <= self.floor:
            raise CheckpointError("pickle stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.marks:
            raise CheckpointError("pickle MARK missing")
        k = self.marks.pop()
        self.floor = self.marks[-1] if self.marks else 0
        items = self.stack[k:]
        del self.stack[k:]
        return items

    # -- run ----------------------------------------------------------------------------------
    def run(self, data: bytes, pos: int) -> tuple[object, int]:
        """Execute the pickle at ``data[pos:]``; return (object, offset just past STOP)."""
        stack = self.stack
        counter = self.counter
        end = len(data)
        handlers = [stack.append if name in _PUSH_ARG else getattr(self, f"op_{name}", None)
                    for name in _NAMES]
        while True:
            if pos >= end:
                raise CheckpointError("pickle is truncated (no STOP)")
            code = data[pos]
            pos += 1
            counter.left -= 1
            if counter.left < 0:
                raise CheckpointError(f"pickle has more than {self.limits.max_ops} opcodes "
                                      "(max_ops)")
            kind = _ARG_KIND[code]
            # -- decode the argument (fixed widths little-endian unless said otherwise) --------
            if kind == _NO_ARG:
                arg = None
            elif kind <= _U8:  # unsigned fixed width: 1, 2, 4 or 8 bytes
                width = _WIDTH[kind]
                arg = int.from_bytes(data[pos:pos + width], "little")
                pos += width
            elif kind == _CONST:
                arg = _CONSTANTS[code]
            elif kind == _I4:
                arg = int.from_bytes(data[pos:pos + 4], "little", signed=True)
                pos += 4
            elif kind == _F8:
                arg = struct.unpack_from(">d", data, pos)[0] if pos + 8 <= end else None
                pos += 8
            elif kind <= _LONG4:  # counted: bytes, UTF-8 text, two's-complement integers
                width = _COUNT_WIDTH[kind]
                n = int.from_bytes(data[pos:pos + width], "little",
                                   signed=kind in (_BINSTRING, _LONG4))
                pos += width
                if n < 0 or pos + n > end:
                    raise CheckpointError(f"pickle is truncated ({_NAMES[code]} of {n} "
                                          "bytes)")
                arg = data[pos:pos + n]
                pos += n
                if kind in _UTF8_KINDS:
                    arg = arg.decode("utf-8", "surrogatepass")
                elif kind in _LONG_KINDS:
                    arg = int.from_bytes(arg, "little", signed=True)
            elif kind == _TWO_LINES:  # GLOBAL's "module\nname\n" (INST refused below)
                first = data.find(b"\n", pos)
                second = data.find(b"\n", first + 1) if first >= 0 else -1
                if second < 0:
                    raise CheckpointError(f"pickle is truncated ({_NAMES[code]})")
                arg = (data[pos:first].decode("utf-8") + " "
                       + data[first + 1:second].decode("utf-8"))
                pos = second + 1
            else:  # protocol 0 text argument: pickletools' own readers
                stream = io.BytesIO(data)
                stream.seek(pos)
                arg = _TEXT_READERS[code](stream)
                pos = stream.tell()
            if pos > end:
                raise CheckpointError(f"pickle is truncated ({_NAMES[code]})")
            # -- execute --------------------------------------------------------------------------
            handler = handlers[code]
            if handler is not None:
                handler(arg)
            elif _NAMES[code] == "STOP":
                value = self._pop()
                if stack or self.marks:
                    raise CheckpointError("pickle ends with items left on its stack")
                return value, pos
            else:
                name = _NAMES[code] or f"0x{code:02x}"
                raise CheckpointError(f"refused pickle opcode {name} (it "
                                      f"{_REFUSED.get(name, 'is not a pickle opcode')})")

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
        self.floor = len(self.stack)
        self.marks.append(self.floor)

    def op_POP(self, arg):
        if len(self.stack) > self.floor:
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
        self.counter.left -= SET_COST - 1
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
        self.counter.left -= REDUCE_COST - 1  # a call validates a whole argument tuple
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


# opcode byte -> name (None: not an opcode); its argument's kind; protocol 0 text readers
_NO_ARG, _U1, _U2, _U4, _U8, _CONST, _I4, _F8 = range(8)
_BYTES1, _BYTES4, _BYTES8, _BINSTRING, _UTF8_1, _UTF8_4, _UTF8_8, _LONG1, _LONG4 = range(8, 17)
_TEXT, _TWO_LINES = 17, 18
_WIDTH = {_U1: 1, _U2: 2, _U4: 4, _U8: 8}
_COUNT_WIDTH = {_BYTES1: 1, _BYTES4: 4, _BYTES8: 8, _BINSTRING: 4, _UTF8_1: 1, _UTF8_4: 4,
                _UTF8_8: 8, _LONG1: 1, _LONG4: 4}
_UTF8_KINDS = frozenset({_UTF8_1, _UTF8_4, _UTF8_8})
_LONG_KINDS = frozenset({_LONG1, _LONG4})
_OPCODES = {  # name: (byte, argument kind); the argument kinds of pickletools.opcodes
    "MARK": (b"(", _NO_ARG), "STOP": (b".", _NO_ARG), "POP": (b"0", _NO_ARG),
    "POP_MARK": (b"1", _NO_ARG), "DUP": (b"2", _NO_ARG), "FLOAT": (b"F", _TEXT),
    "INT": (b"I", _TEXT), "BININT": (b"J", _I4), "BININT1": (b"K", _U1),
    "LONG": (b"L", _TEXT), "BININT2": (b"M", _U2), "NONE": (b"N", _CONST),
    "PERSID": (b"P", _TEXT), "BINPERSID": (b"Q", _NO_ARG), "REDUCE": (b"R", _NO_ARG),
    "STRING": (b"S", _TEXT), "BINSTRING": (b"T", _BINSTRING),
    "SHORT_BINSTRING": (b"U", _BYTES1), "UNICODE": (b"V", _TEXT),
    "BINUNICODE": (b"X", _UTF8_4), "APPEND": (b"a", _NO_ARG), "BUILD": (b"b", _NO_ARG),
    "GLOBAL": (b"c", _TWO_LINES), "DICT": (b"d", _NO_ARG), "EMPTY_DICT": (b"}", _NO_ARG),
    "APPENDS": (b"e", _NO_ARG), "GET": (b"g", _TEXT), "BINGET": (b"h", _U1),
    "INST": (b"i", _TEXT), "LONG_BINGET": (b"j", _U4), "LIST": (b"l", _NO_ARG),
    "EMPTY_LIST": (b"]", _NO_ARG), "OBJ": (b"o", _NO_ARG), "PUT": (b"p", _TEXT),
    "BINPUT": (b"q", _U1), "LONG_BINPUT": (b"r", _U4), "SETITEM": (b"s", _NO_ARG),
    "TUPLE": (b"t", _NO_ARG), "EMPTY_TUPLE": (b")", _NO_ARG), "SETITEMS": (b"u", _NO_ARG),
    "BINFLOAT": (b"G", _F8), "PROTO": (b"\x80", _U1), "NEWOBJ": (b"\x81", _NO_ARG),
    "EXT1": (b"\x82", _U1), "EXT2": (b"\x83", _U2), "EXT4": (b"\x84", _I4),
    "TUPLE1": (b"\x85", _NO_ARG), "TUPLE2": (b"\x86", _NO_ARG), "TUPLE3": (b"\x87", _NO_ARG),
    "NEWTRUE": (b"\x88", _CONST), "NEWFALSE": (b"\x89", _CONST), "LONG1": (b"\x8a", _LONG1),
    "LONG4": (b"\x8b", _LONG4), "BINBYTES": (b"B", _BYTES4), "SHORT_BINBYTES": (b"C", _BYTES1),
    "SHORT_BINUNICODE": (b"\x8c", _UTF8_1), "BINUNICODE8": (b"\x8d", _UTF8_8),
    "BINBYTES8": (b"\x8e", _BYTES8), "EMPTY_SET": (b"\x8f", _NO_ARG),
    "ADDITEMS": (b"\x90", _NO_ARG), "FROZENSET": (b"\x91", _NO_ARG),
    "NEWOBJ_EX": (b"\x92", _NO_ARG), "STACK_GLOBAL": (b"\x93", _NO_ARG),
    "MEMOIZE": (b"\x94", _NO_ARG), "FRAME": (b"\x95", _U8), "BYTEARRAY8": (b"\x96", _BYTES8),
    "NEXT_BUFFER": (b"\x97", _NO_ARG), "READONLY_BUFFER": (b"\x98", _NO_ARG),
}
_NAMES: list[str | None] = [None] * 256
_ARG_KIND: list[int] = [_NO_ARG] * 256
for _name, (_byte, _kind) in _OPCODES.items():
    _NAMES[_byte[0]], _ARG_KIND[_byte[0]] = _name, _kind
_CONSTANTS = {ord("N"): None, 0x88: True, 0x89: False}
_PUSH_ARG = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                       "FLOAT", "BINFLOAT", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                       "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
                       "NONE", "NEWTRUE", "NEWFALSE"})


def _read_py2_string(stream) -> bytes:
    return codecs.escape_decode(pickletools.read_stringnl(stream, decode=False))[0]


_TEXT_READERS = {
    ord("F"): pickletools.read_floatnl, ord("I"): pickletools.read_decimalnl_short,
    ord("L"): pickletools.read_decimalnl_long, ord("S"): _read_py2_string,
    ord("V"): pickletools.read_unicodestringnl, ord("g"): pickletools.read_decimalnl_short,
    ord("p"): pickletools.read_decimalnl_short,
    ord("i"): pickletools.read_stringnl_noescape_pair, ord("P"): pickletools.read_stringnl_noescape,
}
assert all(_NAMES[code] is not None for code in _TEXT_READERS)
assert set(_PUSH_ARG) | set(_REFUSED) | {"STOP"} | set(
    name[3:] for name in vars(PickleVM) if name.startswith("op_")) >= set(_OPCODES)


def unpickle(data: bytes, start: int, limits: Limits, counter: OpCounter, budget: ByteBudget,
             persistent: Callable[[object], StorageRef] | None = None) -> tuple[object, int]:
    """Run the pickle at ``data[start:]``; return (object, offset just past its STOP)."""
    vm = PickleVM(limits, counter, budget, persistent)
    # The cyclic GC would rescan every container built so far, again and again, as a pickle
    # creates up to max_ops of them (quadratic: 1M empty lists took 3.7 s instead of 0.4 s).
    # The VM builds no reference cycles of its own; cycles a pickle makes are collected later.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return vm.run(bytes(data) if type(data) is not bytes else data, start)
    except CheckpointError:
        raise
    except (ValueError, OverflowError, UnicodeDecodeError, struct.error) as exc:
        # malformed argument: bad UTF-8, a text number that does not parse, ...
        raise CheckpointError(f"corrupt pickle: {str(exc)[:200]}") from None
    finally:
        if gc_was_enabled:
            gc.enable()
