"""A device named on the command line (``--device cpu``, ``cuda``, ``cuda:1``, ``mps``) as a `torch.device`, checked
before any work: a name torch does not know, an accelerator this torch was built without, or one this machine does
not have is a `FitloopError` naming the option, not torch's RuntimeError or AssertionError from deep in a run.

``auto`` is the caller's to resolve (the trainer's ``--device auto``): `parse_device` takes a device's name.
"""
from __future__ import annotations

import torch

from core.errors import FitloopError

ACCELERATORS = ("cuda", "mps", "xpu")  # device types fitloop computes on besides cpu; each has torch.<type>


def parse_device(text: str, option: str = "--device") -> torch.device:
    """``text`` as a `torch.device` this torch and this machine can run on; `FitloopError` naming ``option`` and
    what to pass instead otherwise."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise FitloopError(f"{option} {text!r}: not a device torch knows; pass cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type not in ACCELERATORS:
        raise FitloopError(f"{option} {text}: fitloop computes on cpu, cuda, mps or xpu, not on {device.type!r} "
                           f"devices; pass one of those")
    if device.type == "cuda" and not torch.backends.cuda.is_built():
        raise FitloopError(f"{option} {text}: this torch ({torch.__version__}) is built without CUDA; pass "
                           f"{option} cpu, or install a CUDA build of torch")
    backend = getattr(torch, device.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        why = ("no GPU, no driver, or none visible: CUDA_VISIBLE_DEVICES" if device.type == "cuda"
               else f"torch.{device.type}.is_available() is False")
        raise FitloopError(f"{option} {text}: this machine has no {device.type} device torch can use ({why}); "
                           f"pass {option} cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise FitloopError(f"{option} {text}: this machine has {count} {device.type} device(s), "
                           f"{device.type}:0 to {device.type}:{count - 1}; pass one of those")
    return device
