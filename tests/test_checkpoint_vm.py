"""The pickle VM against CPython's own unpickler, on plain data, for every protocol.

The VM (``adabin_np.checkpoint.pickle_vm``) re-implements pickle's opcode semantics; for data
built only from allowed types (None, bool, int, float, complex, str, bytes, list, tuple, dict,
set, frozenset, with shared references) it must return exactly what ``pickle.loads`` returns.
"""
from __future__ import annotations

import math
import pickle
import pickletools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adabin_np.checkpoint import CheckpointError
from adabin_np.checkpoint.limits import ByteBudget, Limits
from adabin_np.checkpoint.pickle_vm import ALLOWED_GLOBALS, OpCounter, unpickle

LIMITS = Limits(max_bytes=2**30)

keys = st.one_of(st.text(max_size=8), st.integers(-2**63 + 1, 2**63 - 1), st.booleans(),
                 st.none(), st.tuples(st.integers(-5, 5), st.text(max_size=3)))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(), st.binary(max_size=40),
                    st.complex_numbers(allow_nan=False))
data = st.recursive(
    scalars | st.frozensets(keys, max_size=4),
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(keys, inner, max_size=5) | st.sets(keys, max_size=5)),
    max_leaves=30)


def vm_loads(raw: bytes):
    obj, end = unpickle(raw, 0, LIMITS, OpCounter(LIMITS), ByteBudget(LIMITS.max_bytes))
    assert end == len(raw)
    return obj


def same(a, b) -> bool:
    """Equal, with equal types all the way down (1 == 1.0 == True would hide bugs)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=150, deadline=None)
@given(obj=data, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_vm_matches_pickle_loads(obj, protocol):
    raw = pickle.dumps(obj, protocol=protocol)
    assert same(vm_loads(raw), pickle.loads(raw))
    assert same(vm_loads(pickletools.optimize(raw)), obj)


def test_shared_references_stay_shared():
    inner = [1, 2]
    got = vm_loads(pickle.dumps({"a": inner, "b": inner}, protocol=2))
    assert got["a"] is got["b"]


@pytest.mark.parametrize("raw, match", [
    (b"", "truncated"),
    (b"\x80\x02", "truncated"),
    (b"\x80\x02X\xff\xff\xff\x7f", "truncated"),
    (b"\x80\x02\x8d" + (2**63).to_bytes(8, "little"), "truncated"),
    (b"\x80\x02T\xff\xff\xff\xff", "truncated"),
    (b"\x80\x02\x8b\xff\xff\xff\xff", "truncated"),
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "corrupt pickle"),
    (b"\x80\x02Lnot a number\n.", "corrupt pickle"),
    (b"\x80\x02L" + b"9" * 5000 + b"L\n.", "corrupt pickle"),  # int_max_str_digits
    (b"\x80\x02\xff.", r"0xff \(it is not a pickle opcode\)"),
    (b"\x80\x09N.", "protocol 9"),
    (b"\x80\x02NN.", "items left"),
    (b"\x80\x020.", "MARK missing"),
    (b"\x80\x02(Nt1.", "MARK missing"),
    (b"\x80\x02h\x05.", "memo index 5 is not set"),
    (b"\x80\x02NN(N\x86.", "underflow"),
    (b"\x80\x02]Ns.", "underflow"),
    (b"\x80\x02}(NNNu.", "odd number"),
    (b"\x80\x02(N\x91.", "ok"),
    (b"\x80\x02\x8f(]\x90.", "refused dict key or set element list"),
    (b"\x80\x02N\x82\x01.", "EXT1"),
    (b"\x80\x05\x97.", "NEXT_BUFFER"),
    (b"\x80\x02Pabc\n.", "PERSID"),
    (b"\x80\x02N)\x81.", "NEWOBJ"),
    (b"\x80\x02}N\x85b.", "BUILD on a dict"),
    (b"\x80\x02ccollections\nOrderedDict\n)RN\x85b.", "malformed BUILD state"),
    (b"\x80\x02ccollections\nOrderedDict\n)R}b.", "ok"),
])
def test_malformed_pickles(raw, match):
    if match == "ok":
        assert vm_loads(raw) in (frozenset({None}), {})
        return
    with pytest.raises(CheckpointError, match=match):
        vm_loads(raw)


def test_allowlist_holds_only_immutable_markers():
    """``find_class`` results are frozen markers, never functions or classes."""
    import dataclasses
    for marker in ALLOWED_GLOBALS.values():
        assert dataclasses.is_dataclass(marker) and type(marker).__dataclass_params__.frozen
        with pytest.raises(dataclasses.FrozenInstanceError):
            marker.kind = "x"
