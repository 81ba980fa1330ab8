"""What a run measures of its steps between two rows of ``train_log.csv``, without making the steps wait.

* `StepStats`: the step's logged values (loss terms, shares of fits updated, valid, filtered) stay 0-d tensors on
  the training device and are summed there; `StepStats.take` reads all the sums with one transfer
  (`core.host_syncs.to_host`) once per log row (``log_every`` steps), where turning each into a Python float every
  step made one host sync per value per step.
* `StepTimer`: time per step. Per part (data, network, SMPLify, write-back) only with ``parts`` on
  (``TrainConfig.profile_parts``): on CUDA each part then ends with ``torch.cuda.synchronize()`` so that its
  kernels are billed to it (a sync per part per step, which is why it is opt-in). With ``parts`` off the row's
  ``step_ms`` is the host's wall time per step with no sync, and the parts' columns are blank: on a GPU the device
  may still be running a step's last kernels when its span ends (the next read of a device value waits for them),
  so over a row of several steps it is the step's time, not a part's.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch import Tensor

from core.host_syncs import to_host
from training.run_log import PARTS


class StepStats:
    """Means over the steps since the last `take` of each value `add` was given: 0-d tensors summed on their
    device, host numbers summed on the host."""

    def __init__(self) -> None:
        self.device_sums: dict[str, Tensor] = {}
        self.host_sums: dict[str, float] = {}
        self.steps = 0

    def add(self, values: dict[str, Tensor | float]) -> None:
        """One step's values: tensors (0-d, detached) stay on their device; nothing is read here."""
        for name, value in values.items():
            if isinstance(value, Tensor):
                value = value.detach().float()
                self.device_sums[name] = value if name not in self.device_sums else self.device_sums[name] + value
            else:
                self.host_sums[name] = self.host_sums.get(name, 0.0) + float(value)
        self.steps += 1

    def take(self) -> dict[str, float]:
        """The means since the last call, read with one device-to-host transfer (the row's one host sync); resets."""
        n = max(self.steps, 1)
        names = list(self.device_sums)
        read = to_host(torch.stack([self.device_sums[k] for k in names])) if names else []
        out = {k: float(v) / n for k, v in zip(names, read[0] if names else [])}
        out.update({k: v / n for k, v in self.host_sums.items()})
        self.device_sums, self.host_sums, self.steps = {}, {}, 0
        return out


class StepTimer:
    """Wall time per step, and per part of it with ``parts`` (module docstring); ``device``: the training device
    (a CUDA device syncs at the end of each part, and only with ``parts``)."""

    def __init__(self, device: torch.device, parts: bool = False) -> None:
        self.parts = parts
        self.cuda = device.type == "cuda"
        self.totals = {p: 0.0 for p in PARTS}
        self.step_s = 0.0
        self.steps = 0

    def part(self, name: str) -> contextlib.AbstractContextManager:
        """Time the block as part ``name`` of the step (a no-op without ``parts``)."""
        return _Part(self, name) if self.parts else contextlib.nullcontext()

    @contextlib.contextmanager
    def step(self):
        """Time the block as one step (with ``parts``, a step's time is the sum of its parts instead)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.step_s += time.perf_counter() - start
            self.steps += 1

    def take(self) -> dict[str, float | None]:
        """Mean ms per step since the last call: ``step_ms``, and ``<part>_ms`` for each part (None without
        ``parts``: a blank cell in the log); resets."""
        n = max(self.steps, 1)
        if self.parts:
            out: dict[str, float | None] = {f"{p}_ms": 1000 * t / n for p, t in self.totals.items()}
            out["step_ms"] = sum(out.values())
        else:
            out = {f"{p}_ms": None for p in PARTS}
            out["step_ms"] = 1000 * self.step_s / n
        self.totals = {p: 0.0 for p in PARTS}
        self.step_s = 0.0
        self.steps = 0
        return out


class _Part:
    def __init__(self, timer: StepTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self.timer.cuda:
            torch.cuda.synchronize()  # CPU-GPU sync point: otherwise a part's kernels are billed to the next part
        self.timer.totals[self.name] += time.perf_counter() - self.start
