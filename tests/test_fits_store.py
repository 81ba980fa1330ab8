"""The trainer's fits store (`fits.store.FitsStore`): read from the table once, then kept current by version
numbers: its own commits are never read back, other writers' commits are read file by file, a compaction changes
nothing, and the store always equals a fresh load of the table's best view (of its body model)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fits.schema import FitProvenance, FitsTableError, fits_batch
from fits.store import FitsStore
from fits.table import FitsTable, best_of

KEYS = [f"a/{i}" for i in range(1, 7)]
M, OTHER = "open:000000000000000a", "open:000000000000000b"  # two body models' content ids


def _rows(keys: list[str], loss: list[float] | None, body: str = M, source: str = "loop") -> pa.Table:
    """Fits of ``keys`` whose pose holds the loss (to tell rows apart); loss None: unscored (imported)."""
    prov = FitProvenance(run_id="r", body_model_id=body, fit_config_hash="h", source=source)
    marks = np.asarray(loss if loss is not None else [-1.0] * len(keys), np.float32)
    return fits_batch(keys, np.repeat(marks[:, None], 72, 1), np.zeros((len(keys), 10)), prov,
                      loss=None if loss is None else marks)


def _state(store: FitsStore) -> list[tuple]:
    """(known, the pose's mark, loss or None: unscored or unknown) of every key."""
    pose, _, loss, known = store.lookup(KEYS)
    return [(k, p, None if np.isnan(v) else v) for k, p, v in zip(known.tolist(), pose[:, 0].tolist(),
                                                                    loss.tolist())]


def test_a_store_reads_the_table_once_then_only_other_writers_commits(tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    table.append(_rows(["a/1", "a/2", "a/3"], [5.0, 5.0, 5.0]))
    table.append(_rows(["a/6"], [1.0], body=OTHER))                  # another body model: never in the store
    store = FitsStore.load(table, M)
    assert (store.rows_read, store.version, len(store)) == (3, 2, 3)

    assert store.offer(_rows(["a/1", "a/4"], [4.0, 6.0])) == 2
    store.flush(table)                                                  # its own commit: held, not read back
    assert store.version == 3 and store.refresh(table) == 0 and store.rows_read == 3

    other = FitsStore.load(table, M)                                  # another rank, another run
    other.offer(_rows(["a/2", "a/5"], [3.0, 7.0]))
    other.flush(table)                                                  # version 4
    store.offer(_rows(["a/3"], [2.0]))
    store.flush(table)                                                  # version 5, after another's commit
    assert store.version == 3                                           # not current until it reads version 4
    assert store.refresh(table) == 2 and store.version == 5 and store.rows_read == 5
    assert _state(store) == _state(FitsStore.load(table, M))
    assert _state(store)[:5] == [(True, 4.0, 4.0), (True, 3.0, 3.0), (True, 2.0, 2.0), (True, 6.0, 6.0),
                                 (True, 7.0, 7.0)]

    table.compact()                                                     # best rows rewritten: read once
    assert store.refresh(table) == 5 and _state(store) == _state(FitsStore.load(table, M))
    assert store.refresh(table) == 0


def test_refresh_follows_the_tables_rule_for_unscored_fits_and_stops_at_a_version(tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    table.append(_rows(["a/1"], [5.0]))
    store = FitsStore.load(table, M)
    table.append(_rows(["a/1", "a/2"], None, source="import"))         # version 2: unscored fits
    table.append(_rows(["a/2"], [9.0]))                                 # version 3: a scored one beats unscored
    assert store.refresh(table, version=2) == 2 and store.version == 2
    assert _state(store)[:2] == [(True, 5.0, 5.0), (True, -1.0, None)]   # a/1 keeps its scored fit
    store.refresh(table)
    assert _state(store)[:2] == [(True, 5.0, 5.0), (True, 9.0, 9.0)]
    assert _state(store) == _state(FitsStore.load(table, M))


def test_the_store_view_reads_as_the_tables_best_view(tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    table.append(_rows(["a/1", "a/2", "a/3"], [5.0, 4.0, 3.0]))
    table.append(_rows(["a/1", "a/2"], [2.0, 6.0]))
    table.append(_rows(["a/3"], [1.0], body=OTHER))
    store = FitsStore.load(table, M)
    where = (pa.compute.field("body_model_id") == M) & pa.compute.field("key").isin(["a/1", "a/3"])
    view = store.view().log(version=store.version, columns=["key", "pose", "loss"], where=where)
    best = best_of(table.log(columns=["key", "pose", "loss", "time", "run_id", "epoch", "step"], where=where))
    assert view.to_pylist() == best.select(["key", "pose", "loss"]).to_pylist()
    store.offer(_rows(["a/3"], [0.5]))
    with pytest.raises(FitsTableError, match="1 pending rows"):        # it answers for one version only
        store.view().log()
