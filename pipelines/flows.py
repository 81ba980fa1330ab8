"""Prefect flows: `preprocess` (datasets -> shards), `seed_fits` (shards -> SMPLify -> a fits-table version),
`train` (the SPIN trainer) and `build` (all three).

Flows orchestrate; the work is in plain functions (`pipelines.preprocess`, `pipelines.seed`, `training.loop`),
importable and tested without Prefect. Tasks are coarse — a whole stage — and fan their chunks (hundreds of
images each) out to Dask themselves (`pipelines.cluster.dask_client`): a local cluster by default, an existing one
with ``dask_address`` or ``$FITLOOP_DASK_ADDRESS``. Dask workers never talk to Prefect. Only I/O errors are retried.

Run without a server (Prefect starts a temporary one), or deploy: `prefect.yaml` and `fitloop serve`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset  # noqa: F401  - before torch: see fitloop.cli.preload_arrow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipelines.preprocess import DatasetSpec


def _retry_on_io_error(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry a task only when it failed on I/O (a flaky disk or network filesystem), never on a logic error."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


IO_RETRIES = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_on_io_error)


# --- preprocess ------------------------------------------------------------------------------------------------
@task(name="write shards", **IO_RETRIES)
def write_shards_task(datasets: list[DatasetSpec], out: str, crop_res: int, crop_margin: float,
                      samples_per_shard: int, workers: int | None, dask_address: str | None,
                      overwrite: bool) -> dict[str, Any]:
    from pipelines.cluster import dask_client
    from pipelines.preprocess import preprocess
    from shards.writer import ShardConfig

    logger = get_run_logger()
    config = ShardConfig(crop_res=crop_res, crop_margin=crop_margin, samples_per_shard=samples_per_shard)

    def on_chunk(result) -> None:
        counts = {split: c for dataset in result.counts.values() for split, c in dataset.items()}
        logger.info(f"chunk {result.shard or '(rejects only)'}: {result.samples} samples, "
                    f"{sum(c['rejected'] for c in counts.values())} rejects")

    with dask_client(dask_address, workers) as client:
        logger.info(f"writing chunks on Dask: {client.scheduler_info().get('address', '?')} "
                    f"({len(client.scheduler_info().get('workers', {}))} workers)")
        return preprocess(datasets, Path(out), config, client=client, overwrite=overwrite, on_chunk=on_chunk)


def _report_manifest(manifest: dict[str, Any], out: str) -> None:
    rows = [{"dataset": d, "split": s, **c} for d, splits in manifest["by_dataset"].items() for s, c in splits.items()]
    create_table_artifact(key="shard-counts", table=rows, description=f"Samples per dataset and split in {out}")
    rejects = [{"reason": r, "count": n} for r, n in manifest["rejects_by_reason"].items()]
    if rejects:
        create_table_artifact(key="shard-rejects", table=rejects, description="Rejected records by reason")
    c = manifest["counts"]
    create_markdown_artifact(key="shard-summary", markdown=(
        f"# Shard set `{out}`\n\nread {c['read']} = written {c['written']} + rejected {c['rejected']}; "
        f"{len(manifest['shards'])} shards; schema v{manifest['schema_version']}; config "
        f"`{manifest['config_sha256'][:12]}`.\n"))


@flow(name="preprocess", log_prints=True)
def preprocess_flow(datasets: list[DatasetSpec], out: str, crop_res: int = 320, crop_margin: float = 1.5,
                    samples_per_shard: int = 1000, workers: int | None = None, dask_address: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Convert datasets (each: adapter name, root, splits, options) into the shard set `out`."""
    manifest = write_shards_task(datasets, out, crop_res, crop_margin, samples_per_shard, workers, dask_address,
                                 overwrite)
    _report_manifest(manifest, out)
    c = manifest["counts"]
    get_run_logger().info(f"{out}: read {c['read']} = written {c['written']} + rejected {c['rejected']}")
    return manifest


ALL_FLOWS = [preprocess_flow]
