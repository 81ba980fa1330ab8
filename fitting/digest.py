"""Content digests: a model (or prior) known by the values that define it, not by the file that holds them.

`content_digest(entries)` hashes named values in a canonical form, so that the same model stored as a Python-2
``.pkl`` with chumpy arrays, as a ``.npz``, under another file name or re-saved by numpy gets the same digest,
and a model with any value changed gets another one.

Canonical form of one entry, hashed in the caller's order (the order is part of the digest):

* **floating point** (float16, float32, float64): rounded to float32, little-endian, with ``-0.0`` written as
  ``+0.0``. Every body model and prior is evaluated in float32 (`fitting.body_model.load_body_model`'s default
  dtype, SMPLify's and the trainer's): smplx casts each array to float32 once, so a float64 file and its float32
  re-save give bit-identical bodies and are the same model. A difference that survives the rounding to float32 is a
  different model. (Evaluated in float64, two copies with one digest differ by at most float32's rounding, a
  relative 6e-8: ~0.1 µm on a body; no fit can tell.) A float16 re-save loses values and is a different model.
* **integers and booleans** (any width, signed or not): int64, little-endian (face indices are uint32 in the SMPL
  release, int64 after most conversions: the same faces).
* **strings** (a str, or a sequence or array of them): the JSON list of the strings, UTF-8.
* **None**: "absent", distinct from every array.

The shape is part of the entry: a reshaped array is another array. Digests are `DIGEST_HEX` hex digits of SHA-256
(64 bits: a collision among the models one table ever holds is out of reach).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np

DIGEST_HEX = 16


def canonical_array(value: Any) -> np.ndarray:
    """``value`` as the array that is hashed: float32 (no negative zero) or int64, little-endian, C order."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array.astype("<f4") + np.float32(0.0))  # + 0.0: -0.0 becomes +0.0
    if array.dtype.kind in "iub":
        return np.ascontiguousarray(array.astype("<i8"))
    raise TypeError(f"cannot hash an array of dtype {array.dtype} (numbers or strings only)")


def _is_strings(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "US"
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and len(value) > 0


def content_digest(entries: Iterable[tuple[str, Any]]) -> str:
    """`DIGEST_HEX` hex digits of the SHA-256 of named values in canonical form (module docstring).

    entries: (name, value) pairs; a value is an array-like of numbers, a string or sequence of strings, or None.
    """
    digest = hashlib.sha256()
    for name, value in entries:
        if value is None:
            header = {"name": name, "kind": "absent"}
            payload = b""
        elif _is_strings(value):
            strings = [value] if isinstance(value, str) else [str(v) for v in np.asarray(value).reshape(-1)]
            header = {"name": name, "kind": "strings"}
            payload = json.dumps(strings, ensure_ascii=False).encode()
        else:
            array = canonical_array(value)
            header = {"name": name, "kind": array.dtype.str, "shape": list(array.shape)}
            payload = array.tobytes()
        head = json.dumps(header, sort_keys=True).encode()
        digest.update(len(head).to_bytes(8, "little") + head + len(payload).to_bytes(8, "little"))
        digest.update(payload)
    return digest.hexdigest()[:DIGEST_HEX]
