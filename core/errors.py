"""Errors that carry a message meant for the user: what went wrong, where, and what to do about it.

Library code raises subclasses of `FitloopError`; the CLI prints their message without a traceback.
"""


class FitloopError(Exception):
    """Base class of fitloop's user-facing errors."""


class ModelFileError(FitloopError):
    """A body-model, regressor or prior file is missing, malformed, or of an unknown kind."""


class UnsafePickleError(ModelFileError):
    """A pickle names a global outside the allow-list; nothing from it was run."""
