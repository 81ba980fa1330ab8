"""Errors that carry a message meant for the user: what went wrong, where, and what to do about it.

Library code raises subclasses of `FitloopError`; the CLI prints their message without a traceback.
"""


class FitloopError(Exception):
    """Base class of fitloop's user-facing errors."""


class ModelFileError(FitloopError):
    """A body-model, regressor or prior file is missing, malformed, or of an unknown kind."""


class UnsafePickleError(ModelFileError):
    """A pickle names a global outside the allow-list, or asks for more than its bytes can justify (shared
    references expanded without bound, nesting too deep, arrays larger than the file); refused before any of it
    is run or expanded (fitting/safe_pickle.py)."""
