"""Prefect flows: `preprocess` (datasets -> shards), `seed_fits` (shards -> SMPLify -> a fits-table version),
`train` (the SPIN trainer) and `build` (all three).

Flows orchestrate; the work is in plain functions (`pipelines.preprocess`, `fits.seeding`, `training.loop`),
importable and tested without Prefect. Every flow checks all its parameters first (`pipelines.flow_params`), so a
wrong one fails the run before any work with one line that says what to do; a `FitloopError` later on fails it
the same way (one log line, no traceback). Tasks are coarse — a whole stage — and fan their chunks (hundreds of
images each) out to Dask themselves (`pipelines.cluster.dask_client`): a local cluster by default, an existing one
with ``dask_address`` or ``$FITLOOP_DASK_ADDRESS``. Dask workers never talk to Prefect. Only I/O errors are
retried, and a retried preprocess resumes: the chunks the failed attempt finished are kept.

Run without a server (Prefect starts a temporary one), or as deployments: `fitloop serve` (deployments named
`SERVED_DEPLOYMENT`) or `prefect deploy --all` with `prefect.yaml` (named `POOL_DEPLOYMENT`, for a process work
pool). Both import the flows from the installed package (entrypoints ``pipelines.flows.<flow>``).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

# Prefect's temporary server reports usage to a remote host by default; fitloop runs offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Its default 20 s to start is too short on a busy 2-core machine (seen: `fitloop demo` at load 7 gave up).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pyarrow.dataset  # noqa: F401  - before torch: see fitloop.cli.preload_arrow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed

from core.errors import FitloopError
from pipelines import flow_params as params
from pipelines.preprocess import DatasetSpec
from shards.writer import ShardConfig

# Deployment names, one per route, so that `fitloop serve` and `prefect deploy` never overwrite each other:
# 'build/fitloop-served' runs in the `fitloop serve` process, 'build/fitloop-pool' on a process work pool.
SERVED_DEPLOYMENT = "fitloop-served"
POOL_DEPLOYMENT = "fitloop-pool"  # the name every deployment in prefect.yaml has


class ExpectedFaultsInOneLine(logging.Filter):
    """Prefect logs a failed run's exception with its traceback (the engine's "Engine execution exited with
    unexpected exception", a parent flow's "Encountered exception during execution"); for an expected fault, a
    `FitloopError` whose one line `fails_cleanly` has logged already, the traceback is noise: keep the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FitloopError):
            record.msg, record.args = f"{record.getMessage()}: {error}", ()
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):  # the run loggers every such message goes through
    logging.getLogger(_name).addFilter(ExpectedFaultsInOneLine())


def fails_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body whose `FitloopError` (an expected fault: bad input, a folder in the way), its own or raised by
    a task it called, ends the run Failed with that one line in the run's log and no traceback; the caller of the
    flow gets the error back.

    For flows only: a task that returns a Failed state hands that state to the flow as its result (Prefect 3.8),
    which the flow then used as a value (``'State' object is not subscriptable``). A task lets its
    `FitloopError` propagate: Prefect fails the task run (retrying only I/O errors: `_retry_on_io_error`) and
    raises the error in the flow, where this catches it."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FitloopError as err:
            get_run_logger().error(str(err))
            return Failed(message=str(err), data=err)

    return run


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


def _png_artifact(key: str, title: str, path: Path) -> None:
    """A markdown artifact showing the PNG at ``path`` (embedded as a data URI) under its path."""
    import base64

    create_markdown_artifact(key=key, markdown=(
        f"# {title}\n\n`{path}`\n\n![{title.lower()}](data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()})\n"))


# --- preprocess ------------------------------------------------------------------------------------------------
@task(name="write shards", **IO_RETRIES)
def write_shards_task(datasets: list[DatasetSpec], out: str, config: ShardConfig, workers: int | None,
                      dask_address: str | None) -> dict[str, Any]:
    """Write (or, on a retry, finish) the shard set ``out``; the folder was prepared by the flow."""
    from pipelines.cluster import dask_client
    from pipelines.preprocess import preprocess

    logger = get_run_logger()

    def on_chunk(result, kept: bool) -> None:
        rejected = sum(c["rejected"] for splits in result.counts.values() for c in splits.values())
        logger.info(f"chunk {result.shard or '(rejects only)'}: {result.samples} samples, {rejected} rejects"
                    + (" (kept from an earlier attempt)" if kept else ""))

    with dask_client(dask_address, workers) as client:
        info = client.scheduler_info()
        logger.info(f"writing chunks on Dask: {info.get('address', '?')} ({len(info.get('workers', {}))} workers)")
        return preprocess(datasets, Path(out), config, client=client, on_chunk=on_chunk)


def _report_manifest(manifest: dict[str, Any], out: Path) -> None:
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
@fails_cleanly
def preprocess_flow(datasets: list[DatasetSpec], out: str, crop_res: int = 320, crop_margin: float = 1.5,
                    samples_per_shard: int = 1000, workers: int | None = None, dask_address: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Convert datasets (each: adapter name, root, splits, options, label) into the shard set `out`.

    An unfinished set in `out` (a failed run's) is resumed; a finished one is refused unless `overwrite`."""
    from shards.writer import prepare_out_dir, writing_lock

    specs = params.check_datasets(datasets)
    config = params.check_shard_config(crop_res, crop_margin, samples_per_shard)
    out_dir, resuming = params.check_out_dir(out, overwrite)
    address = params.check_cluster(dask_address, workers)
    logger = get_run_logger()
    if resuming:
        logger.info(f"resuming the unfinished shard set in {out_dir}")
    # the folder is this run's until its task is done (a second run into it is refused); prepared here, once:
    # the task's retries then resume what it wrote
    with writing_lock(out_dir):
        prepare_out_dir(out_dir, overwrite)
        manifest = write_shards_task(specs, str(out_dir), config, workers, address)
    _report_manifest(manifest, out_dir)
    c = manifest["counts"]
    logger.info(f"{out_dir}: read {c['read']} = written {c['written']} + rejected {c['rejected']}")
    return manifest


# --- seed fits --------------------------------------------------------------------------------------------------
@task(name="fit seeds", **IO_RETRIES)
def seed_task(shards: str, fits: str, body_model: str, batch_size: int, workers: int | None,
              dask_address: str | None, run_id: str, frame: str = "crop", mode: str = "2d") -> dict[str, Any]:
    from dataclasses import asdict

    from fits.seeding import SeedConfig, seed_fits
    from pipelines.cluster import dask_client

    logger = get_run_logger()
    config = SeedConfig(body_model=body_model, batch_size=batch_size, run_id=run_id, frame=frame, mode=mode)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        logger.info(f"fitted {done} samples")

    # fit_batch is submitted with pure=False and no key: Dask gives each task a fresh uuid key, so seed runs that
    # share a scheduler never share results
    with dask_client(dask_address, workers) as client:
        result = seed_fits(Path(shards), Path(fits), config, client=client, on_batch=on_batch)
    result.check_fitted(shards, fits)  # a run that fitted nothing fails, saying what the samples were
    return asdict(result)


def _fits_picture_artifact(shards: Path, fits: Path, body_model: str, out_png: Path, key: str) -> None:
    """A contact sheet of sample fits, saved next to the run and shown as a markdown artifact (embedded PNG)."""
    from render.sample_picture import fits_sheet

    sheet = fits_sheet(shards, fits, 8, model=body_model, size=160, columns=4)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, optimize=True)
    _png_artifact(key, "Sample fits", out_png)


@flow(name="seed_fits", log_prints=False)
@fails_cleanly
def seed_fits_flow(shards: str, fits: str, body_model: str = "open", batch_size: int = 64,
                   workers: int | None = None, dask_address: str | None = None,
                   run_id: str = "seed", frame: str = "crop", mode: str = "2d") -> dict[str, Any]:
    """Fit every sample of a shard set from the mean pose (batched SMPLify on Dask) and commit the improvements
    to the fits table as one new version.

    frame: "crop" (SPIN's fit frame) or "image" (each sample's own camera); mode: "2d" (SMPLify on the keypoints)
    or "3d" (pseudo-ground truth from the samples' 3D joints, one shape per subject) — as `fitloop fits seed`."""
    shard_dir = params.check_shard_sets([shards])[0]
    fits_path = params.absolute_path(fits, "fits")
    body_model = params.check_body_model(body_model)
    params.check_positive(batch_size, "batch_size")
    from fits.schema import FRAMES
    from fits.seeding import MODES, SeedResult

    params.check_choice(frame, FRAMES, "frame")
    params.check_choice(mode, MODES, "mode")
    address = params.check_cluster(dask_address, workers)
    result = seed_task(str(shard_dir), str(fits_path), body_model, batch_size, workers, address, run_id, frame, mode)
    create_table_artifact(key="seed-fits", table=[result], description=f"Seed fits of {shard_dir} into {fits_path}")
    _fits_picture_artifact(shard_dir, fits_path, body_model, fits_path.parent / "seed_fits.png", "seed-fits-picture")
    get_run_logger().info(f"seeded {result['fitted']} samples, {result['appended']} fits appended, versions "
                          f"{result['versions']}, mean loss {SeedResult.mean_loss_text(result['mean_loss'])}"
                          + (f"; {len(result['unfittable'])} sample(s) that cannot make a fit left out, e.g. "
                             f"{result['unfittable'][0]}" if result["unfittable"] else ""))
    return result


# --- train ------------------------------------------------------------------------------------------------------
@task(name="train")
def train_task(config: dict[str, Any], resume: bool, overwrite: bool = False) -> dict[str, Any]:
    """Run the trainer; its log rows (progress every ``log_every`` steps, every evaluation) go to the run log."""
    from training.config import TrainConfig
    from training.loop import train

    return train(TrainConfig.from_dict(config), resume=resume, overwrite=overwrite,
                 progress=not params.in_deployment(), echo=get_run_logger().info)


def _train_artifacts(summary: dict[str, Any], run_dir: Path) -> None:
    metrics = summary["metrics"]
    if metrics:
        create_table_artifact(key="train-metrics", table=metrics, description=f"Evaluations of {run_dir}")
    curves = run_dir / "curves.png"
    if curves.is_file():
        _png_artifact("train-curves", "Training curves", curves)
    create_markdown_artifact(key="train-summary", markdown=(
        f"# Training run `{run_dir}`\n\n{summary['epochs']} epochs, {summary['step']} steps, fits table version "
        f"{summary['fits_version']}, {summary['wall_s']:.0f} s.\n\nCurves: `{curves}`\n"))


@flow(name="train", log_prints=False)
@fails_cleanly
def train_flow(shards: list[str], fits: str, run_dir: str, settings: dict[str, Any] | None = None,
               resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train SPIN's regressor with fitting in the loop on shard sets; improved fits go back to the fits table.

    settings: any `training.config.TrainConfig` field but shards, fits and run_dir (nested mappings for
    ``smplify``, ``augment``, ``loss``), e.g. ``{"backbone": 18, "epochs": 5, "img_res": 128}``; the defaults are
    SPIN's. Checked by type and value before training starts.
    resume: continue the run in ``run_dir``; overwrite: start a new run in a ``run_dir`` another run has used
    (`training.run_folder`; without it such a folder is refused)."""
    from training.run_folder import check_new_run, resume_point

    shard_dirs = params.check_shard_sets(shards)
    fits_path = params.absolute_path(fits, "fits")
    run_path = params.absolute_path(run_dir, "run_dir")
    config = params.check_train_settings(settings, {"shards": [str(s) for s in shard_dirs], "fits": str(fits_path),
                                                    "run_dir": str(run_path)}, name="settings")
    if resume and overwrite:
        raise params.FlowParameterError("resume continues the run in run_dir, overwrite deletes it: give one of them")
    try:
        if resume:
            resume_point(run_path)
        else:
            check_new_run(run_path, overwrite)
    except FitloopError as err:
        raise params.FlowParameterError(f"{'resume' if resume else 'run_dir'}: {err}") from None
    summary = train_task(config.to_dict(), resume, overwrite)
    _train_artifacts(summary, run_path)
    return summary


# --- build ------------------------------------------------------------------------------------------------------
@flow(name="build", log_prints=False)
@fails_cleanly
def build_flow(datasets: list[DatasetSpec], out: str, train_settings: dict[str, Any] | None = None,
               body_model: str = "open", samples_per_shard: int = 1000, workers: int | None = None,
               dask_address: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """preprocess -> seed_fits -> train, in the folder `out` (`shards/`, `fits/`, `run/`).

    Trains on the `train_splits` (default ``train``) of the datasets, so at least one must give such a split;
    the others (``val``, ``test``) are held out for evaluation."""
    specs = params.check_datasets(datasets)
    root = params.absolute_path(out, "out")
    shards, fits, run_dir = root / "shards", root / "fits", root / "run"
    params.check_out_dir(shards, overwrite, name="out")
    body_model = params.check_body_model(body_model)
    params.check_positive(samples_per_shard, "samples_per_shard")
    config = params.check_train_settings(train_settings, {"shards": [str(shards)], "fits": str(fits),
                                                          "run_dir": str(run_dir), "body_model": body_model})
    _check_training_split(specs, config.train_splits)
    address = params.check_cluster(dask_address, workers)

    manifest = preprocess_flow(specs, str(shards), samples_per_shard=samples_per_shard, workers=workers,
                               dask_address=address, overwrite=overwrite)
    _check_training_samples(manifest, config.train_splits, shards)
    seed = seed_fits_flow(str(shards), str(fits), body_model=body_model, workers=workers, dask_address=address)
    settings = {"body_model": body_model, **(train_settings or {})}
    trained = train_flow([str(shards)], str(fits), str(run_dir), settings, overwrite=overwrite)
    return {"manifest_counts": manifest["counts"], "seed": seed, "train": trained, "shards": str(shards),
            "fits": str(fits), "run_dir": str(run_dir)}


def _check_training_split(specs: list[DatasetSpec], train_splits: tuple[str, ...]) -> None:
    """Before any work: some dataset must be able to give a training split."""
    if not any(set(params.splits_converted(spec)) & set(train_splits) for spec in specs):
        given = ", ".join(f"{s.label or s.dataset}: {'/'.join(params.splits_converted(s))}" for s in specs)
        raise params.FlowParameterError(
            f"datasets: none gives a training split ({'/'.join(train_splits)}); they give {given}. Add a dataset "
            f"with one (e.g. {{\"dataset\": \"lsp-orig\", \"root\": ..., \"splits\": [\"train\"]}}) or set "
            f"train_settings.train_splits")


def _check_training_samples(manifest: dict[str, Any], train_splits: tuple[str, ...], shards: Path) -> None:
    """After preprocess, before fitting: the shards must hold samples of a training split."""
    if any(c["written"] for splits in manifest["by_dataset"].values() for s, c in splits.items()
           if s in train_splits):
        return
    held = ", ".join(f"{d}/{s} {c['written']}" for d, splits in manifest["by_dataset"].items()
                     for s, c in splits.items()) or "nothing"
    raise FitloopError(f"{shards} holds no sample of a training split ({'/'.join(train_splits)}): written "
                       f"{held} (rejects in {shards / 'rejects.parquet'}); add a dataset with training samples")


ALL_FLOWS = [preprocess_flow, seed_fits_flow, train_flow, build_flow]
