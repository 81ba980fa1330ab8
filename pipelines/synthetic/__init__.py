"""Synthetic people rendered from the open body model, written in every dataset's native layout with the truth.

    from pipelines.synthetic import SynthConfig, generate, load_truth
    roots = generate(Path("synth"), SynthConfig(seed=0))   # {"coco": synth/coco, "mpii": ..., "h36m": ...}
    generate(Path("synth"), SynthConfig(datasets=("coco_wholebody", "openpose")))  # whole-body people

docs/synthetic.md describes the layouts, the truth files and the choices. The names below are imported on first
use, so that the render workers (which import `pipelines.synthetic.paint`) never load torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "SynthConfig", "SynthError", "generate", "load_truth", "Truth", "TRUTH_FILE"]

_HOMES = {"DATASETS": "config", "SynthConfig": "config", "SynthError": "config", "generate": "generator",
          "load_truth": "truth", "Truth": "truth", "TRUTH_FILE": "truth"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'pipelines.synthetic' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"pipelines.synthetic.{_HOMES[name]}"), name)
