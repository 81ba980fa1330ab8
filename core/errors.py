"""Errors that carry a message meant for the user: what went wrong, where, and what to do about it.

Library code raises subclasses of `FitloopError`; the CLI prints their message without a traceback.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


class FitloopError(Exception):
    """Base class of fitloop's user-facing errors."""


class ModelFileError(FitloopError):
    """A body-model, regressor or prior file is missing, malformed, or of an unknown kind."""


class UnsafePickleError(ModelFileError):
    """A pickle names a global outside the allow-list, or asks for more than its bytes can justify (shared
    references expanded without bound, nesting too deep, arrays larger than the file); refused before any of it
    is run or expanded (fitting/safe_pickle.py)."""


@contextlib.contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Give an `OSError` raised inside without a file name (a write that fails on a full disk says only "No space
    left on device") ``path`` as its file, so the one line the CLI prints for it says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), os.fspath(path)) from err
