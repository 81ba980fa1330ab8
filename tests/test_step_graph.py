"""`fitting.step_graph`: a solver iteration on static buffers, replayed (captured as a CUDA graph on a GPU). The
plumbing is checked here on the CPU with a toy iteration whose every result is exact: what is copied in, fed back
from one replay to the next, cloned out, and which graph serves which shapes. SMPLify's use of it:
tests/test_smplify.py (`test_the_graphed_iteration_fits_as_the_eager_loop`)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fitting.step_graph import StepGraph, StepGraphs, leaves, rebuild, signature


@dataclass
class State:
    x: torch.Tensor
    hint: torch.Tensor | None
    label: str = "state"


@dataclass
class Fixed:
    shift: torch.Tensor
    gain: tuple[torch.Tensor, torch.Tensor]


def step(carry, factor, fixed):
    """x <- gain0 * x + factor * shift; count += 1; the state's hint stays None."""
    count, state = carry
    return count + 1, State(x=fixed.gain[0] * state.x + factor * fixed.shift, hint=None, label=state.label)


def eager(carry, fixed, factors):
    for factor in factors:
        carry = step(carry, factor, fixed)
    return carry


def _inputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    carry = (torch.zeros(n, dtype=torch.long), State(x=torch.randn(n, 3, generator=gen), hint=None))
    fixed = Fixed(shift=torch.randn(n, 3, generator=gen), gain=(torch.tensor(0.5), torch.ones(2)))
    return carry, fixed


def test_leaves_and_rebuild_keep_the_structure():
    carry, fixed = _inputs(2)
    assert len(leaves(carry)) == 2 and len(leaves(fixed)) == 3          # None and the str are not tensors
    doubled = rebuild(carry, [2 * t for t in leaves(carry)])
    assert isinstance(doubled[1], State) and doubled[1].hint is None and doubled[1].label == "state"
    torch.testing.assert_close(doubled[1].x, 2 * carry[1].x)
    assert signature(carry, fixed) == signature(*_inputs(2, seed=3))       # values do not matter
    assert signature(carry, fixed) != signature(*_inputs(3))               # shapes do
    with pytest.raises(TypeError, match="cannot hold a set"):
        leaves({1, 2})


def test_replays_feed_each_result_to_the_next_and_equal_the_loop():
    carry, fixed = _inputs(4)
    factors = [100.0, 10.0, 1.0, 1.0]                 # a schedule: the factor changes between replays
    graph = StepGraph(step, carry, fixed, torch.float64, capture=False)
    graph.load(carry, fixed)
    for factor in factors:
        graph.replay(factor)
    out = graph.carry()
    want = eager(carry, fixed, factors)
    assert torch.equal(out[0], torch.full((4,), 4))                  # four iterations, each from the last
    torch.testing.assert_close(out[1].x, want[1].x)
    # the carry comes out as clones: another load and replay leave it as it was
    other_carry, other_fixed = _inputs(4, seed=1)
    graph.load(other_carry, other_fixed)
    graph.replay(1.0)
    torch.testing.assert_close(out[1].x, want[1].x)
    # and the load replaced every input, the fixed data too: one step from the other inputs
    torch.testing.assert_close(graph.carry()[1].x, eager(other_carry, other_fixed, [1.0])[1].x)
    assert carry[0].eq(0).all()                          # the caller's tensors were never written


def test_one_graph_per_shape_reused_and_the_oldest_dropped():
    graphs = StepGraphs(step, capture=False, capacity=2)
    for n in (4, 4, 5, 4):
        carry, fixed = _inputs(n, seed=n)
        out = graphs.run(carry, fixed, [2.0, 1.0], torch.float64)
        torch.testing.assert_close(out[1].x, eager(carry, fixed, [2.0, 1.0])[1].x)
    assert len(graphs) == 2
    graphs.run(*_inputs(6), [1.0], torch.float64)       # a third shape: the least recently used (5) goes
    assert len(graphs) == 2


@pytest.mark.gpu
def test_a_captured_graph_replays_the_loop_on_cuda():
    carry, fixed = _inputs(64)
    carry, fixed = rebuild(carry, [t.cuda() for t in leaves(carry)]), rebuild(fixed, [t.cuda() for t in leaves(fixed)])
    factors = [100.0, 10.0, 1.0]
    graph = StepGraph(step, carry, fixed, torch.float64, capture=True)
    assert graph.graph is not None
    graph.load(carry, fixed)
    for factor in factors:
        graph.replay(factor)
    out = graph.carry()
    want = eager(carry, fixed, factors)
    assert torch.equal(out[0].cpu(), torch.full((64,), 3))         # the warm-up's iterations were undone
    torch.testing.assert_close(out[1].x, want[1].x)
