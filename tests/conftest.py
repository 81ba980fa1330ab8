from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.dataset  # noqa: F401  - before torch: see fitloop.cli.preload_arrow
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # the helpers in tests/ (model_files.py) import as plain modules

# ../shared beside the checkout: real dataset excerpts and mocap clips, never copied into the repo.
SHARED = TESTS.parents[1] / "shared"


def pytest_collection_modifyitems(config, items):
    # Prefect's test server leaves threads in this process; a DataLoader worker forked after that dies (exit 1),
    # so the tests that run flows go last.
    items.sort(key=lambda item: "prefect" in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the real-data fixtures live beside the checkout, not in it")
    return SHARED
