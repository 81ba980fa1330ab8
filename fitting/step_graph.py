"""One solver iteration captured as a CUDA graph and replayed (issue 17: a GPU fit is launch-bound, ~50-370 kernels
per LM iteration at a few microseconds of work each).

A CUDA graph records the kernels of one call once and replays them with one launch; what it cannot do is take new
inputs or make new outputs: it reads and writes the same device memory every time. So `StepGraph` keeps *static*
copies of everything the iteration reads — the carry (what one iteration turns into the next: damping, the
evaluation it accepted, ...), the fixed data (keypoints, camera, the prior's matrices) and the schedule's factor as a
0-d tensor — and captures ``carry = step(carry, factor, fixed)`` with the new carry copied over the old inside the
graph. A fit then is: `load` (copy the stage's inputs in), `replay` once per iteration (one launch, the factor
filled in by a kernel), `carry` (clones out). No host sync anywhere: the iteration must have none to be captured
(`fitting.smplify`'s LM loop has none: tests/test_smplify.py counts them).

A graph holds one set of shapes; `StepGraphs` keeps one per shape signature (batch, observed points, dtype), the
least recently used dropped beyond ``capacity``.

On a CPU the same static buffers run without capture (``capture=False``: the step called on them): the plumbing —
what is copied in, fed back and cloned out — is the same code, and is what the CPU tests check against the eager
loop; only the capture itself needs a GPU (the `gpu` tests).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

WARMUP = 2  # iterations run on a side stream before the capture (lazy initialisation of cuBLAS/cuSOLVER handles)


def _fields(tree: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(tree) if f.init]


def leaves(tree: Any) -> list[Tensor]:
    """The tensors of ``tree`` (tensors, None, tuples, lists, dicts and dataclasses of them), in a fixed order."""
    if isinstance(tree, Tensor):
        return [tree]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return []
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in leaves(tree[key])]
    if dataclasses.is_dataclass(tree):
        return [leaf for name in _fields(tree) for leaf in leaves(getattr(tree, name))]
    raise TypeError(f"StepGraph cannot hold a {type(tree).__name__}")


def rebuild(tree: Any, tensors: list[Tensor]) -> Any:
    """``tree`` with its tensors replaced by ``tensors``, in `leaves` order."""
    new = iter(tensors)

    def build(node: Any) -> Any:
        if isinstance(node, Tensor):
            return next(new)
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, (tuple, list)):
            return type(node)(build(item) for item in node)
        if isinstance(node, dict):
            return {key: build(node[key]) for key in sorted(node)}
        return dataclasses.replace(node, **{name: build(getattr(node, name)) for name in _fields(node)})

    return build(tree)


def signature(*trees: Any) -> tuple:
    """What a graph is specific to: every tensor's shape, dtype and device, and where the Nones are."""
    def shape(tree: Any) -> Any:
        if isinstance(tree, Tensor):
            return tuple(tree.shape), tree.dtype, tree.device
        if isinstance(tree, (tuple, list)):
            return tuple(shape(item) for item in tree)
        if isinstance(tree, dict):
            return tuple((key, shape(tree[key])) for key in sorted(tree))
        if dataclasses.is_dataclass(tree):
            return tuple(shape(getattr(tree, name)) for name in _fields(tree))
        return tree
    return tuple(shape(tree) for tree in trees)


class StepGraph:
    """``step(carry, factor, fixed) -> carry`` on static buffers, captured as a CUDA graph when ``capture`` (module
    docstring). ``carry`` and ``fixed`` are examples of the shapes it will run (their values are not kept); ``factor``
    is a 0-d tensor of ``dtype`` when the step runs here (a Python float in the eager loop: float64 makes the
    products with it round as the float's do)."""

    def __init__(self, step: Callable[[Any, Tensor, Any], Any], carry: Any, fixed: Any, dtype: torch.dtype,
                 capture: bool) -> None:
        self._step = step
        self._carry_tree, self._fixed_tree = carry, fixed
        self._carry = [t.clone() for t in leaves(carry)]
        self._fixed = [t.clone() for t in leaves(fixed)]
        device = self._carry[0].device
        self.factor = torch.ones((), dtype=dtype, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture()

    def _run(self) -> None:
        """One iteration on the static buffers: the new carry copied over the old (inside the graph when captured)."""
        carry = rebuild(self._carry_tree, self._carry)
        fixed = rebuild(self._fixed_tree, self._fixed)
        new = leaves(self._step(carry, self.factor, fixed))
        if len(new) != len(self._carry):
            raise RuntimeError(f"the step returned {len(new)} tensors for a carry of {len(self._carry)}")
        for old, value in zip(self._carry, new):
            old.copy_(value)

    def _capture(self) -> None:
        saved = [t.clone() for t in self._carry]      # the warm-up moves the carry: what was loaded comes back
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()
        for buffer, value in zip(self._carry, saved):
            buffer.copy_(value)

    def load(self, carry: Any, fixed: Any) -> None:
        """Copy a stage's carry and fixed data into the static buffers (same shapes as at construction)."""
        for buffer, value in zip(self._carry, leaves(carry), strict=True):
            buffer.copy_(value)
        for buffer, value in zip(self._fixed, leaves(fixed), strict=True):
            buffer.copy_(value)

    def replay(self, factor: float) -> None:
        """One iteration with the schedule's ``factor``: one graph launch (or the step on the buffers, uncaptured)."""
        self.factor.fill_(factor)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()

    def carry(self) -> Any:
        """The carry now, cloned out of the static buffers (the next `load` overwrites them)."""
        return rebuild(self._carry_tree, [t.clone() for t in self._carry])


class StepGraphs:
    """`StepGraph`s by shape signature (`signature` of carry and fixed), made on first use, at most ``capacity``
    kept (least recently used dropped: each holds its own device memory pool)."""

    def __init__(self, step: Callable[[Any, Tensor, Any], Any], capture: bool, capacity: int = 8) -> None:
        self._step, self._capture, self._capacity = step, capture, capacity
        self._graphs: OrderedDict[tuple, StepGraph] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, carry: Any, fixed: Any, factors: list[float], dtype: torch.dtype) -> Any:
        """``carry`` after one step per factor of ``factors``, replayed from the graph of these shapes."""
        key = signature(carry, fixed)
        graph = self._graphs.pop(key, None)
        if graph is None:
            graph = StepGraph(self._step, carry, fixed, dtype, self._capture)
        self._graphs[key] = graph
        while len(self._graphs) > self._capacity:
            self._graphs.popitem(last=False)
        graph.load(carry, fixed)
        for factor in factors:
            graph.replay(factor)
        return graph.carry()
