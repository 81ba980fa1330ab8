"""argparse types the commands share: a count is checked where it is parsed, before any work starts (a negative
``--workers`` once reached a local Dask cluster, which waited for its workers forever)."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def count(minimum: int = 0) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (argparse's usage error otherwise, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"count >= {minimum}"  # argparse names the type in some messages
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a finite number above 0 (a rate, a weight that must act)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def share(text: str) -> float:
    """An argparse ``type``: a share, a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


def device(text: str) -> str:
    """An argparse ``type`` for ``--device``: a device this torch and this machine can compute on
    (`core.devices.parse_device`), kept as its text: ``cuda`` on a machine without CUDA is a usage error, not a
    traceback half-way through a run."""
    return _checked_device(text, "--device")


def auto_or_device(text: str) -> str:
    """An argparse ``type`` for ``--smplify-device``: ``auto`` (the training device) or a device, as `device`
    checks one."""
    return text if text == "auto" else _checked_device(text, "--smplify-device")


def _checked_device(text: str, option: str) -> str:
    from core.devices import parse_device
    from core.errors import FitloopError

    try:
        parse_device(text, option)
    except FitloopError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
