"""Opening the files a user names for body models, joint regressors and pose priors.

Every such file is checked the same way before it is read: it must exist, be a regular file (not a folder) and
not be empty; numpy files are read with ``allow_pickle=False``. Every way a numpy file can be damaged (a ``.npz``
cut short, a member whose bytes are corrupt, a text file under a ``.npz`` name, an ``.npz`` where one array is
expected, an object array that would need pickle) is one `ModelFileError` naming the file, what it looks like, and
what to do, never a traceback. Pickles are read by `fitting.safe_pickle`, which uses `require_file` and
`looks_like` from here.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from core.errors import ModelFileError

# What a file's first bytes say it is (magic numbers of the formats a model, regressor or prior may come in).
_MAGIC = ((b"PK\x03\x04", "a zip archive (as an .npz is)"), (b"PK\x05\x06", "an empty zip archive"),
          (b"\x93NUMPY", "a single numpy array (.npy)"), (b"\x89HDF", "an HDF5 file"),
          (b"\x80", "a pickle (.pkl)"), (b"\x1f\x8b", "a gzip file"))
# Errors numpy, zipfile and zlib raise on a damaged or foreign file (np.load: ValueError for a pickle or a bad
# header, EOFError for an array cut short; zipfile: BadZipFile for a bad directory or CRC; zlib: a bad stream).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)
DAMAGED = "the file is damaged, cut short or not what it is named; get a fresh copy from its source"


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` as a Path after checking that it names a non-empty regular file; else a one-line `ModelFileError`.

    what: the kind of file, for the message ("body-model file", "pose-prior file", ...); hint: what to do when
    the file is missing (appended after a semicolon)."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder, not a {what}; pass the file itself")
    if not path.exists():
        raise ModelFileError(f"{path}: no such {what}" + (f"; {hint}" if hint else ""))
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file (a device, pipe or socket); pass a {what}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the {what} is empty (0 bytes); {DAMAGED}")
    return path


def looks_like(head: bytes) -> str:
    """What a file whose first bytes are ``head`` looks like, in words ("a zip archive (as an .npz is)", "text",
    "binary data of an unknown kind")."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:256]):
        return "text"
    return "binary data of an unknown kind"


def read_head(path: Path) -> bytes:
    """The first 256 bytes of the file at ``path``: enough for `looks_like`."""
    with open(path, "rb") as fh:
        return fh.read(256)


def read_npz(path: str | Path, what: str, hint: str = "") -> tuple[dict[str, np.ndarray], list[str]]:
    """All arrays of the ``.npz`` at ``path`` (read with ``allow_pickle=False``), and the names of object entries
    that were skipped (they would need pickle; no model, regressor or prior array is one).

    Raises `ModelFileError` (one line: the file, what it looks like, what to do) for a missing, empty, truncated,
    corrupt or foreign file."""
    path = require_file(path, what, hint)
    if not zipfile.is_zipfile(path):
        kind = looks_like(read_head(path))
        found = ("a zip archive without the directory a zip ends with: cut short" if kind.startswith("a zip")
                 else f"{kind}, not a zip archive (an .npz is one)")
        raise ModelFileError(f"{path}: not a readable .npz {what}: it is {found}; {DAMAGED}")
    arrays: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as err:
                    if "allow_pickle" not in str(err):
                        raise
                    skipped.append(key)
    except _READ_ERRORS as err:
        raise ModelFileError(f"{path}: not a readable .npz {what} ({type(err).__name__}: {err}); {DAMAGED}") from None
    return arrays, skipped


def read_npy(path: str | Path, what: str, hint: str = "") -> np.ndarray:
    """The one array of the ``.npy`` at ``path`` (``allow_pickle=False``); `ModelFileError` for anything else (an
    ``.npz``, a pickle, text, a file cut short, an object array)."""
    path = require_file(path, what, hint)
    kind = looks_like(read_head(path))
    if not kind.startswith("a single numpy array"):
        raise ModelFileError(f"{path}: not a .npy {what}: it is {kind}; pass the .npy file itself ({DAMAGED})")
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ModelFileError(f"{path}: not a readable .npy {what} ({type(err).__name__}: {err}); {DAMAGED}") from None
