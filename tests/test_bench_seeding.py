"""`fitloop bench seeding` (bench/seeding.py) runs tiny with every arm, and refuses arms that did different work."""
from __future__ import annotations

import pytest

import bench.seeding as bench_seeding

TINY = dict(people=8, batch_size=4, workers=(1,), threads=(1,), repeats=1, body_model="open-small", progress=False)


def test_every_arm_seeds_the_same_fits_and_is_compared_to_one_thread_here():
    result = bench_seeding.run(**TINY)
    assert result["samples"] == 8 and set(result["fits_per_s"]) == {"in-process/1", "dask/1"}
    assert result["ratio_vs_in_process_1"]["in-process/1"] == 1.0
    assert all(rate > 0 for rate in result["fits_per_s"].values())
    assert result["mean_loss"] > 0


def test_an_arm_that_fits_less_is_refused(monkeypatch):
    seed_fits = bench_seeding.seed_fits

    def lazy(shards, table, config, client=None):
        result = seed_fits(shards, table, config, client=client)
        if client is not None:
            result.appended -= 1
        return result

    monkeypatch.setattr(bench_seeding, "seed_fits", lazy)
    with pytest.raises(RuntimeError, match="did not do the same work"):
        bench_seeding.run(**TINY)
