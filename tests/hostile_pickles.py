"""Hostile pickles written by hand, opcode by opcode (`pickletools` names), for the restricted unpickler's bounds.

Each builder returns the bytes of a protocol-2 pickle of a dict ``{"v_template": PAYLOAD}`` (so that a body-model
loader gets as far as the payload), PAYLOAD being the hostile part. None of them names a refused global: every
one passes the allow-list and attacks with structure or declared sizes alone (fitting/safe_pickle.py docstring).
"""
from __future__ import annotations

import pickle
import struct

PROTO2 = b"\x80\x02"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
MARK, LIST, TUPLE1, TUPLE2, TUPLE3 = b"(", b"l", b"\x85", b"\x86", b"\x87"
APPEND, SETITEM, DICT_SETITEMS, BUILD, REDUCE, NEWOBJ = b"a", b"s", b"u", b"b", b"R", b"\x81"
POP, NONE, NEWFALSE, NEWTRUE, STOP = b"0", b"N", b"\x89", b"\x88", b"."
BYTES_PER_NESTED_LIST = 2  # MARK + LIST


def text(value: str) -> bytes:
    """BINUNICODE: a str."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """BININT1 / LONG1: an int of any size."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    data = pickle.encode_long(value)
    return b"\x8a" + bytes([len(data)]) + data


def put(index: int) -> bytes:
    """BINPUT (1-byte index) or LONG_BINPUT (4-byte index)."""
    return b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    """BINGET (1-byte index)."""
    return b"h" + bytes([index])


def glob(module: str, name: str) -> bytes:
    """GLOBAL module.name."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def model_dict(payload: bytes) -> bytes:
    """A pickle of {"v_template": payload}: EMPTY_DICT, the key, the payload, SETITEM, STOP."""
    return PROTO2 + EMPTY_DICT + text("v_template") + payload + SETITEM + STOP


def billion_laughs(levels: int = 31) -> bytes:
    """Level 0 is an empty list (memo 0); level i+1 is LIST(GET i, GET i) (memo i+1): 2**levels lists when every
    shared reference is followed, from 9 bytes a level (305 bytes for 31 levels). Each level is popped
    off the stack once memoized; the top one is fetched again as the value."""
    body = EMPTY_LIST + put(0) + POP
    for i in range(levels):
        body += MARK + get(i) + get(i) + LIST + put(i + 1) + POP
    return model_dict(body + get(levels))


def late_filled_laughs(levels: int = 35) -> bytes:
    """The same expansion, built so that no object is large when it is shared: ``levels + 1`` empty lists are
    memoized first, then list i gets list i+1 appended twice, from the top down. A pass over the opcodes sees only
    empty lists being shared; the expansion shows on the objects built."""
    body = b"".join(EMPTY_LIST + put(i) + POP for i in range(levels + 1))
    for i in range(levels):
        body += get(i) + get(i + 1) + APPEND + get(i + 1) + APPEND + POP
    return model_dict(body + get(0))


def self_containing_list() -> bytes:
    """A list appended to itself (EMPTY_LIST, BINPUT 0, BINGET 0, APPEND): a cycle."""
    return model_dict(EMPTY_LIST + put(0) + get(0) + APPEND)


def deep_lists(depth: int = 100_000) -> bytes:
    """``depth`` lists, each inside the next: ``depth`` MARKs, then ``depth`` LISTs (2 bytes a level)."""
    return model_dict(MARK * depth + LIST * depth)


def deep_tuple_key(depth: int = 1_000_000) -> bytes:
    """A dict whose key is ``depth`` nested 1-tuples (NONE, then TUPLE1 ``depth`` times: 1 byte a level); storing
    it hashes the key, which recurses once per level in C."""
    return model_dict(EMPTY_DICT + NONE + TUPLE1 * depth + NONE + SETITEM)


def reconstruct_call(shape: int, dtype: bytes = b"b") -> bytes:
    """numpy.core.multiarray._reconstruct(numpy.ndarray, (shape,), dtype), as numpy pickles every array (numpy's
    own pickles declare shape (0,) and fill the array by BUILD)."""
    return (glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + integer(shape) + TUPLE1
            + b"U" + bytes([len(dtype)]) + dtype + TUPLE3 + REDUCE)


def dtype_call(code: str) -> bytes:
    """numpy.dtype(code, False, True), as numpy pickles a dtype."""
    return glob("numpy", "dtype") + text(code) + NEWFALSE + NEWTRUE + TUPLE3 + REDUCE


def huge_reconstruct(elements: int = 10**12) -> bytes:
    """An ndarray declared by ``_reconstruct`` with ``elements`` float64 elements (8 TB for 10**12)."""
    return model_dict(reconstruct_call(elements, b"d"))


def huge_object_setstate(elements: int = 10**12) -> bytes:
    """A numpy-style array, shape (0,) from ``_reconstruct``, whose ``__setstate__`` declares ``elements`` object
    elements with an empty list of data: (1, (elements,), dtype('O'), False, [])."""
    state = MARK + integer(1) + integer(elements) + TUPLE1 + dtype_call("O8") + NEWFALSE + EMPTY_LIST + b"t"
    return model_dict(reconstruct_call(0) + state + BUILD)


def direct_ndarray_call(elements: int = 10**12) -> bytes:
    """numpy.ndarray((elements,), 'f8') called by REDUCE: allocates the declared shape."""
    return model_dict(glob("numpy", "ndarray") + integer(elements) + TUPLE1 + text("f8") + TUPLE2 + REDUCE)


def huge_sparse(side: int = 10**6) -> bytes:
    """A scipy COO matrix with no entries and shape (side, side): 8 TB once made dense, from about 200 bytes."""
    state = (EMPTY_DICT + MARK + text("_shape") + integer(side) + integer(side) + TUPLE2 + text("format")
             + text("coo") + text("data") + EMPTY_LIST + text("row") + EMPTY_LIST + text("col") + EMPTY_LIST
             + DICT_SETITEMS)
    return model_dict(glob("scipy.sparse._coo", "coo_matrix") + EMPTY_TUPLE + NEWOBJ + state + BUILD)


def huge_memo_index(index: int = 2**31 - 1) -> bytes:
    """A LONG_BINPUT at memo index 2**31 - 1 (the C unpickler sizes its memo table by the index: 16 GiB)."""
    return model_dict(NONE + put(index))
