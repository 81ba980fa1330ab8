"""Host syncs: counting a piece of code's reads of tensor values (where, on a GPU, the host waits for the device),
making several reads one (`to_host`), and copies to the device that do not wait (`to_device`).

On CUDA every read of a tensor's value by Python (``t.item()``, ``float(t)``, ``bool(t)`` in an ``if``, ``t.tolist()``,
``t.numpy()`` after ``.cpu()``) and every op whose output shape depends on the values (``torch.nonzero``, indexing
with a boolean mask) makes the host wait until the device has computed that value: a host sync, which stalls the
launch queue. On a CPU run nothing waits, but the same calls are made, so they can be counted there:
`count_host_syncs` sees them for the duration of a ``with`` block and records each call with the first stack
frame outside torch (the line of project code responsible).

Counted (`READS`, `SHAPE_OPS`), seen through a `torch.overrides.TorchFunctionMode` (no patching: every torch
function and Tensor method passes through it while the block runs): ``Tensor.item``, ``tolist``, ``numpy``,
``__array__``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``; ``nonzero``, ``argwhere``,
``masked_select``, one-argument ``torch.where``, and ``__getitem__`` / ``__setitem__`` with a boolean tensor index
("mask_index"). A read nested in another (``np.asarray(t)``: ``__array__`` then ``numpy``) counts once.

Not counted, by design: reads made directly by torch's own Python code are recorded apart (`HostSyncs.torch_own`),
because the common one is Adam's per-parameter ``step`` counter, which torch keeps on the host (a CPU tensor even on
CUDA unless ``capturable``) and which is no sync. Host-to-device copies (``t.to("cuda")`` from pageable memory
without ``non_blocking``) do sync on CUDA but are invisible on a CPU run; on a GPU `count_cuda_syncs` counts every
kind, from CUDA's side (``torch.cuda.set_sync_debug_mode("warn")``: a warning per synchronizing call).
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

READS = ("item", "tolist", "numpy", "__array__", "__bool__", "__float__", "__int__", "__index__")
SHAPE_OPS = ("nonzero", "argwhere", "masked_select")   # torch functions (and Tensor methods) with data-dependent shapes
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
# torch's Python wrappers of Tensor methods and of the override machinery: a call through them is the caller's
_WRAPPERS = tuple(str(Path(_TORCH_DIR) / name) for name in ("_tensor.py", "overrides.py"))
# torch dtype -> numpy dtype for `to_host` (bfloat16 has none)
_NUMPY_DTYPES = {t: torch.empty((), dtype=t).numpy().dtype for t in (
    torch.float16, torch.float32, torch.float64, torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.complex64, torch.complex128)}


@dataclass
class HostSyncs:
    """What `count_host_syncs` saw. sites: (kind, "path:line") -> calls, the line the first frame outside torch;
    torch_own: the same for reads torch's own Python code made (module docstring), not in `total`."""

    sites: Counter = field(default_factory=Counter)
    torch_own: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def by_kind(self) -> dict[str, int]:
        out: Counter = Counter()
        for (kind, _), n in self.sites.items():
            out[kind] += n
        return dict(out)

    def under(self, *folders: str) -> int:
        """Calls whose responsible line is in a file under one of ``folders`` (repository-relative, e.g. "training")."""
        return sum(n for (_, where), n in self.sites.items() if where.split(":")[0].split("/")[0] in folders)

    def describe(self) -> str:
        """One line per site, most calls first."""
        return "\n".join(f"{n:4d}  {kind:<14} {where}" for (kind, where), n in self.sites.most_common())


def _is_bool_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _kind(func: Callable, args: tuple) -> str | None:
    """The kind of host sync a torch function call is (`READS`, `SHAPE_OPS`, "mask_index"), or None."""
    name = getattr(func, "__name__", "")
    if name in READS or name in SHAPE_OPS:
        return name
    if name == "where" and len(args) == 1:
        return "nonzero"
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_bool_index(args[1]):
        return "mask_index"
    return None


class _Counter(TorchFunctionMode):
    """Files each host-sync call (`_kind`) under the first line outside torch and this module that made it."""

    def __init__(self, root: Path, seen: HostSyncs) -> None:
        super().__init__()
        self.root, self.seen = root, seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = _kind(func, args)
        if kind is not None:     # the mode is off inside this call, so nested calls are not seen again
            where, direct = self._site()
            (self.seen.torch_own if direct else self.seen.sites)[(kind, where)] += 1
        return func(*args, **(kwargs or {}))

    def _site(self) -> tuple[str, bool]:
        """("path:line" of the first frame outside torch and this module, whether torch's own code made the call)."""
        frame = sys._getframe(2)
        while frame is not None and (frame.f_code.co_filename == __file__
                                     or frame.f_code.co_filename in _WRAPPERS):
            frame = frame.f_back
        direct = frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR)
        while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                     or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        if frame is None:
            return "?", direct
        path = Path(frame.f_code.co_filename)
        try:
            path = path.resolve().relative_to(self.root)
        except ValueError:
            pass
        return f"{path}:{frame.f_lineno}", direct


@contextmanager
def count_host_syncs(root: Path | str = ".") -> Iterator[HostSyncs]:
    """Count the host reads of tensor values (module docstring) made inside the block by this thread; sites are
    given relative to ``root`` (the repository). DataLoader workers are other processes and are not seen."""
    seen = HostSyncs()
    with _Counter(Path(root).resolve(), seen):
        yield seen


@contextmanager
def count_cuda_syncs(root: Path | str = ".") -> Iterator[HostSyncs]:
    """On a CUDA machine: count every call inside the block that synchronizes the host with the device, as CUDA's
    sync debug mode reports them (one warning per call: reads, data-dependent shapes, blocking copies either way,
    ``torch.cuda.synchronize``), by the line that made it (kind "cuda_sync"; "path:line" relative to ``root``).
    Only the calling thread's CUDA work is seen; the debug mode is restored afterwards."""
    root = Path(root).resolve()
    seen = HostSyncs()
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode(before)
    for w in caught:
        if "synchronizing" not in str(w.message):
            continue
        path = Path(w.filename)
        try:
            path = path.resolve().relative_to(root)
        except ValueError:
            pass
        seen.sites[("cuda_sync", f"{path}:{w.lineno}")] += 1


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors as numpy arrays, read with one device-to-host transfer (one host sync on a GPU, where a
    ``.cpu().numpy()`` each would make one per tensor): their bytes are concatenated on their device, copied once
    and split on the host. Exact (bytes, not a cast) for every dtype numpy has (not bfloat16); the tensors must
    share a device; detached."""
    if not tensors:
        return []
    flat = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    data = torch.cat(flat).cpu().numpy()
    out, at = [], 0
    for t, f in zip(tensors, flat):
        size = f.numel()
        out.append(data[at:at + size].copy().view(_NUMPY_DTYPES[t.dtype]).reshape(tuple(t.shape)))
        at += size
    return out


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without a host sync where that is safe: ``non_blocking`` unless the copy goes to the
    CPU (the host must not read a device-to-host copy before it lands). A plain upload (``non_blocking=False``)
    syncs the CUDA stream; a non-blocking one from pageable memory is staged by the driver at once, so the source may
    be freed or changed afterwards."""
    device = torch.device(device)
    return tensor.to(device, non_blocking=device.type != "cpu")
