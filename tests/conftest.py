from __future__ import annotations

import shutil
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


# The folders a module-, class- or session-scoped fixture makes (tmp_path_factory.mktemp: shard sets, model files,
# training runs) go when the fixture is torn down, as a passing test's tmp_path does (pyproject's
# tmp_path_retention_policy): pytest would keep them to the session's end, ~5 GB at once over the suite. After a
# failed test they stay for a look.
_FIXTURE_FOLDERS: dict[object, set[Path]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.scope == "function":
        return (yield)
    base = request.config._tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    try:
        return (yield)
    finally:
        made = set(base.iterdir()) - before
        if made:
            _FIXTURE_FOLDERS.setdefault(fixturedef, set()).update(made)


def pytest_fixture_post_finalizer(fixturedef, request):
    folders = _FIXTURE_FOLDERS.pop(fixturedef, ())
    if request.session.testsfailed:
        return
    for folder in folders:
        if folder.is_symlink():          # pytest's "<name>current" link beside a numbered folder
            folder.unlink(missing_ok=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the real-data fixtures live beside the checkout, not in it")
    return SHARED
