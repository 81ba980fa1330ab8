"""Prefect flows: `preprocess` (datasets -> shards), `seed_fits` (shards -> SMPLify -> a fits-table version),
`train` (the SPIN trainer) and `build` (all three).

Flows orchestrate; the work is in plain functions (`pipelines.preprocess`, `fits.seeding`, `training.loop`),
importable and tested without Prefect. Tasks are coarse — a whole stage — and fan their chunks (hundreds of
images each) out to Dask themselves (`pipelines.cluster.dask_client`): a local cluster by default, an existing one
with ``dask_address`` or ``$FITLOOP_DASK_ADDRESS``. Dask workers never talk to Prefect. Only I/O errors are retried.

Run without a server (Prefect starts a temporary one), or deploy: `prefect.yaml` and `fitloop serve`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Prefect's temporary server reports usage to a remote host by default; fitloop runs offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

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


@flow(name="preprocess", log_prints=False)
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


# --- seed fits --------------------------------------------------------------------------------------------------
@task(name="fit seeds", **IO_RETRIES)
def seed_task(shards: str, fits: str, body_model: str, batch_size: int, workers: int | None,
              dask_address: str | None, run_id: str) -> dict[str, Any]:
    from dataclasses import asdict

    from fits.seeding import SeedConfig, seed_fits
    from pipelines.cluster import dask_client

    logger = get_run_logger()
    config = SeedConfig(body_model=body_model, batch_size=batch_size, run_id=run_id)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        logger.info(f"fitted {done} samples")

    with dask_client(dask_address, workers) as client:
        return asdict(seed_fits(Path(shards), Path(fits), config, client=client, on_batch=on_batch))


def _fits_picture_artifact(shards: str, fits: str, body_model: str, out_png: Path, key: str) -> None:
    """A contact sheet of sample fits, saved next to the run and shown as a markdown artifact (embedded PNG)."""
    import base64
    import io

    from render.sample_picture import fits_sheet

    sheet = fits_sheet(Path(shards), Path(fits), 8, model=body_model, size=160, columns=4)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    create_markdown_artifact(key=key, markdown=(
        f"# Sample fits\n\n`{out_png}`\n\n![sample fits](data:image/png;base64,"
        f"{base64.b64encode(buffer.getvalue()).decode()})\n"))


@flow(name="seed_fits", log_prints=False)
def seed_fits_flow(shards: str, fits: str, body_model: str = "open", batch_size: int = 64,
                   workers: int | None = None, dask_address: str | None = None,
                   run_id: str = "seed") -> dict[str, Any]:
    """Fit every sample of a shard set from the mean pose (batched SMPLify on Dask) and commit the improvements
    to the fits table as one new version."""
    result = seed_task(shards, fits, body_model, batch_size, workers, dask_address, run_id)
    create_table_artifact(key="seed-fits", table=[result], description=f"Seed fits of {shards} into {fits}")
    _fits_picture_artifact(shards, fits, body_model, Path(fits).parent / "seed_fits.png", "seed-fits-picture")
    get_run_logger().info(f"seeded {result['fitted']} samples, {result['appended']} fits appended, "
                          f"versions {result['versions']}, mean loss {result['mean_loss']:.2f}")
    return result


# --- train ------------------------------------------------------------------------------------------------------
@task(name="train")
def train_task(settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    from training.config import TrainConfig
    from training.loop import train

    return train(TrainConfig.from_dict(settings), resume=resume, progress=True)


@flow(name="train", log_prints=False)
def train_flow(shards: list[str], fits: str, run_dir: str, settings: dict[str, Any] | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Train SPIN's regressor with fitting in the loop on shard sets; improved fits go back to the fits table.

    settings: any `training.config.TrainConfig` field (nested dicts for ``smplify``, ``augment``, ``loss``),
    e.g. ``{"backbone": 18, "epochs": 5, "img_res": 128}``; the defaults are SPIN's."""
    config = {**(settings or {}), "shards": list(shards), "fits": fits, "run_dir": run_dir}
    summary = train_task(config, resume)
    metrics = summary.get("metrics") or []
    if metrics:
        create_table_artifact(key="train-metrics", table=metrics, description=f"Evaluations of {run_dir}")
    curves = Path(run_dir) / "curves.png"
    create_markdown_artifact(key="train-summary", markdown=(
        f"# Training run `{run_dir}`\n\n{summary['epochs']} epochs, {summary['step']} steps, fits table version "
        f"{summary['fits_version']}, {summary['wall_s']:.0f} s.\n\nCurves: `{curves}`\n"))
    return {k: v for k, v in summary.items() if k != "metrics"} | {"metrics": metrics}


# --- build ------------------------------------------------------------------------------------------------------
@flow(name="build", log_prints=False)
def build_flow(datasets: list[DatasetSpec], out: str, train_settings: dict[str, Any] | None = None,
               body_model: str = "open", samples_per_shard: int = 1000, workers: int | None = None,
               dask_address: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """preprocess -> seed_fits -> train, in the folder `out` (`shards/`, `fits/`, `run/`)."""
    root = Path(out)
    shards, fits, run_dir = str(root / "shards"), str(root / "fits"), str(root / "run")
    manifest = preprocess_flow(datasets, shards, samples_per_shard=samples_per_shard, workers=workers,
                               dask_address=dask_address, overwrite=overwrite)
    seed = seed_fits_flow(shards, fits, body_model=body_model, workers=workers, dask_address=dask_address)
    settings = {"body_model": body_model, **(train_settings or {})}
    trained = train_flow([shards], fits, run_dir, settings)
    return {"manifest_counts": manifest["counts"], "seed": seed, "train": trained, "shards": shards, "fits": fits,
            "run_dir": run_dir}


ALL_FLOWS = [preprocess_flow, seed_fits_flow, train_flow, build_flow]
