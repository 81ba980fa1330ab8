"""The training run: setup, then one straight loop over epochs and steps (the step itself: `training.step`).

    check the shards; claim the run folder; seed missing fits; load the fits store (once); evaluate; checkpoint
    for epoch:
        for batch:
            predict -> stored fits -> SMPLify in the loop -> update fits -> supervision -> losses -> Adam
            every checkpoint_every steps: write the fits to the table, save a checkpoint
        write the fits to the table and take in other writers' fits; evaluate (fits and network); save a checkpoint

**Shards, checked up front.** Every shard the run reads (the training splits of ``shards``, the held-out splits of
``eval_shards``) is hashed against its manifest before anything else is built (`shards.reader.check_shards`; one
read of each tar, split over the ranks). A corrupt shard stops the run with one line naming it
(``on_corrupt_shard="raise"``), or is left out of everything the run reads (``"skip"``: training stream, step
count, seed fits, ground truth, held-out set), with a warning and its count in the summary. The reader applies
the same policy to a shard found corrupt while training.

**The fits store, read once.** Each rank loads the fits table's best view once (`fits.store.FitsStore.load`: it
meets every key over the run), and keeps it current from its own writes without reading them back. At every
epoch end it takes in the commits of other writers (the other ranks, other runs on the table), reading only
their new data files (`FitsStore.refresh`). The fits evaluation reads the store (`FitsStore.view`), not the table.

**Write-back.** The run's improved fits are appended to the fits table at every checkpoint and at every epoch end,
before the checkpoint is saved, so a checkpoint names a table version that holds every fit it depends on (SPIN
saved its fits only on a timeout and lost them on a normal finish).

**The run folder** belongs to one run (`training.run_folder`): a new run claims it (``run.json``, its run id)
before it writes anything, and refuses a folder another run has used unless ``overwrite``.

**Resume** (``resume=True``): the latest checkpoint of the run folder, which must be of the folder's run, gives the
model, the optimiser, each rank's RNG, the step, the data position (epoch, batch) and the fits version; the given
config may differ from the checkpoint's only in `training.config.RESUME_SAFE` (anything else is refused, naming
it), and the world size must be the same. The fits are reloaded as of the checkpoint's version, the data stream
restarts at that batch (`training.data.MixedShardStream.set_position`), and log rows past the step are dropped.

**Killed anywhere, a run continues as if it had not been.** A checkpoint is saved at step 0, after the seeding and
the first evaluation and before the first step, so every fits write-back comes after a checkpoint that names the
table version the run had before it. The rows a killed run appended after its last checkpoint stay in the table's
log, and are what the resumed run appends again (the best view is an argmin, so they change nothing). A run
killed before the step-0 checkpoint has written at most its seed fits; resumed, it starts over with the same run
id and config, and its seeding appends only the fits still missing. `tests/faults/test_fault_kills.py` kills it
at each of these places.

**Whole-body runs.** The body model decides the regressor's heads (`training.regressor.heads_for_family`): an
SMPL-X-layout model (``--body-model open-smplx`` or an SMPL-X file) trains body, hands, jaw and expression heads,
fits the samples that carry whole-body keypoints with SMPLify-X in the loop and writes whole-body fits
(`training.step`); every other model trains SPIN's heads as before. A checkpoint records its heads
(``regressor_heads``) and a resume with another refuses.

**Distributed** (``torchrun``): one process per device; shards are split by node (`shards.reader`), the model is
wrapped in DistributedDataParallel, every rank writes its own fits (appends do not conflict), rank 0 seeds missing
fits, evaluates, logs and saves checkpoints. **Seeds**: every rank initialises the model from ``seed`` (DDP also
broadcasts rank 0's weights), then seeds torch with ``seed + rank`` before the first step, so dropout differs
between ranks. The data draws (shuffling, mixing, augmentation) are seeded per consumer, ``rank·workers +
worker`` (`training.data`), from ``seed``; the shard order is the same on every rank, which is what splits the
shards between them.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from deltalake import DeltaTable
from tqdm import tqdm

from core.devices import parse_device
from core.errors import FitloopError
from core.frames import FIT_RES, fit_frame_px
from core.host_syncs import to_device
from core.killpoint import kill_point
from fits.evaluate import FitsGroundTruth, evaluate_fits
from fits.schema import FitProvenance, FitsTableError
from fits.seeding import SeedConfig, fit_config_hash, seed_fits
from fits.store import FitsStore
from fits.table import FitsTable, VacuumedVersionError
from fitting.body_model import BodyModel, load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLify
from fitting.smplifyx import SMPLifyX, SMPLifyXConfig, body_gmm_term
from fitting.wholebody_model import WholeBodyModel
from shards.augment import AugmentConfig
from shards.reader import (
    CorruptShardWarning,
    ReaderConfig,
    ShardCorruptError,
    ShardInfo,
    ShardReader,
    check_shards,
    distributed_rank,
    list_shards,
    shard_problems,
)
from training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    prune_checkpoints,
    rank_rng_state,
    save_checkpoint,
)
from training.config import TrainConfig, absolute_paths, resumed_config
from training.data import MixedShardStream, parse_mix, train_sample_count
from training.evaluate import evaluate_network
from training.graphcmr import SAMPLING_DIGEST_KEY, check_checkpoint_sampling
from training.heads import Head, head_of
from training.mask_loss import MaskConsistency, grid_res
from training.overlays import OVERLAY_SAMPLES, first_items, overlay_grid
from training.regressor import heads_for_family, mean_params_from_npz, mean_params_from_prior
from training.resnet import load_imagenet_weights
from training.run_folder import check_new_run, claim, resume_point
from training.run_log import IMAGE_TERMS, PARTS, RunLog, describe_evaluation
from training.step import (
    Batch,
    autocast_for,
    compute_losses,
    fit_from_mean,
    fit_in_the_loop,
    fit_wholebody_in_the_loop,
    predict,
    stored_fits,
    supervision,
    update_fits,
)
from training.step_stats import StepStats, StepTimer
from training.wholebody import part_weights


# --- setup ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a run holds between steps; built once by `setup`."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    rank: int
    world_size: int
    body: BodyModel                 # on the training device
    smplify: SMPLify                # on config.smplify_device, with its own body model there
    smplify_device: torch.device
    model: torch.nn.Module          # the regressor, DDP-wrapped under torchrun
    raw_model: torch.nn.Module      # the head's network (`training.heads`)
    head: Head
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Any
    stream: MixedShardStream
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    table: FitsTable
    log: RunLog
    fit_config_hash: str
    train_shards: list[ShardInfo]   # the training shards, checked (corrupt ones left out under "skip")
    shards_skipped: list[str]       # the corrupt shards left out, one line each
    eval_reader: ShardReader | None = None
    truth: FitsGroundTruth | None = None
    # whole-body runs (heads "smplx"): the whole-body model on the training device and on SMPLify's, SMPLify-X
    # (None with run_smplify off), the whole-body 2D loss's per-point weights (161,)
    wholebody: WholeBodyModel | None = None
    fit_wholebody: WholeBodyModel | None = None
    smplifyx: SMPLifyX | None = None
    point_weights: torch.Tensor | None = None
    mask_loss: MaskConsistency | None = None   # with an image loss on: the body's picture for mask and DSR losses


@dataclass
class Position:
    """Where training stands: optimiser steps done, the next batch (epoch, batch), the fits version written."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    fits_version: int | None = None
    resumed: bool = False


def init_distributed(preference: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): torchrun's environment joins a process group (NCCL on CUDA, else Gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if preference != "auto":  # a name torch does not know, or a GPU this machine lacks: one line, not a CPU run
        parse_device(preference, "--device")
    cuda = torch.cuda.is_available() and preference in ("auto", "cuda")
    if preference not in ("auto", "cuda", "cpu"):
        device = torch.device(preference)
    elif cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def barrier(run: Run) -> None:
    if run.world_size > 1:
        torch.distributed.barrier()


def resolve(config: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill what the config leaves open: a run id (rank 0's on every rank), the evaluation shards; paths absolute
    (`training.config.absolute_paths`)."""
    run_id = config.run_id or f"{Path(config.run_dir).name or 'run'}-{uuid.uuid4().hex[:8]}"
    if world_size > 1:
        shared = [run_id]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_id = shared[0]
    return absolute_paths(dataclasses.replace(config, run_id=run_id, eval_shards=config.eval_shards or config.shards))


def _worker_context(config: TrainConfig) -> str | None:
    """Start DataLoader workers with forkserver: a forked worker inherits the parent's threads' locks and dies
    when the trainer runs inside a Prefect task (seen: exit code 1, details lost); forkserver and spawn start
    clean. None (no workers) when loading in the main process."""
    return "forkserver" if config.num_workers > 0 else None


def checked_shards(config: TrainConfig, rank: int, world: int) -> tuple[list[ShardInfo], list[ShardInfo], list[str],
                                                                          float]:
    """(training shards, held-out shards, corrupt shards left out, seconds the check took): every shard the run
    reads, checked against its manifest (module docstring); each rank hashes every world-th shard and the ranks
    share what they found, so all of them raise, or leave out the same shards."""
    train = list_shards([Path(s) for s in config.shards], (), config.train_splits)
    held_out = list_shards([Path(s) for s in config.eval_shards], (), config.eval_splits)
    if not held_out and config.eval_splits not in (TrainConfig().eval_splits, ("none",)):
        # splits asked for by name that no held-out set has (a typo) would turn evaluation off without a word;
        # the default's absence is the usual case (sets without val/test) and is said in the run's first line
        held = sorted({s.split or "?" for s in list_shards([Path(s) for s in config.eval_shards])})
        raise FitloopError(f"--eval-splits {' '.join(config.eval_splits)}: the held-out shard sets hold no such "
                           f"split (they hold {', '.join(held) or 'none'}); give splits they hold, or 'none' for no "
                           f"evaluation")
    if not config.verify_shards:
        return train, held_out, [], 0.0
    started = time.perf_counter()
    unique = list({Path(s.path): s for s in train + held_out}.values())
    found = shard_problems(unique[rank::world])
    if world > 1:
        shared: list[Any] = [None] * world
        torch.distributed.all_gather_object(shared, found)
        found = {path: problem for part in shared for path, problem in part.items()}
    with warnings.catch_warnings():
        if rank != 0:  # one warning per run, not per rank
            warnings.simplefilter("ignore", CorruptShardWarning)
        _, skipped = check_shards(unique, config.on_corrupt_shard, problems=found)
    keep = [s for s in train if Path(s.path) not in found], [s for s in held_out if Path(s.path) not in found]
    return keep[0], keep[1], skipped, time.perf_counter() - started


def training_stream(config: TrainConfig, shards: list[ShardInfo], rank: int, world: int) -> MixedShardStream:
    """The run's training data on one rank: ``shards`` mixed by ``config.mix``, ``steps_per_epoch`` batches per
    epoch (default: the training samples over batch size × world size)."""
    reader = ReaderConfig(img_res=config.img_res, augment=config.augment, shuffle_buffer=config.shuffle_buffer,
                          seed=config.seed, splits=config.train_splits, on_corrupt=config.on_corrupt_shard)
    steps = config.steps_per_epoch or max(1, train_sample_count(shards, config.train_splits)
                                          // (config.batch_size * world))
    return MixedShardStream(shards, reader, parse_mix(config.mix), config.batch_size, steps, rank=rank,
                            world_size=world)


def image_evidence(config: TrainConfig, body: BodyModel, device: torch.device) -> MaskConsistency | None:
    """The predicted mesh's picture for the mask and DSR losses (`training.mask_loss.MaskConsistency`), None when
    all three weights are 0; with DSR-MC on, the faces' minimally-clothed groups from the body's skinning weights
    (`FitloopError` for a body model without SMPL's 24 segments)."""
    loss = config.loss
    if max(loss.mask, loss.dsr_mc, loss.dsr_c) <= 0:
        return None
    weights = body.layer.lbs_weights if loss.dsr_mc > 0 else None
    try:
        return MaskConsistency.from_faces(body.faces, grid_res(config.img_res, config.mask_res), device, weights)
    except ValueError as err:
        raise FitloopError(f"--dsr-mc-weight needs a body model with SMPL's 24 segments (body model "
                           f"{config.body_model}): {err}") from None


def setup(config: TrainConfig, echo: Callable[[str], None] | None = None, *, overwrite: bool = False,
          resuming: bool = False) -> Run:
    """Build the run: devices, checked shards, the run folder claimed (`training.run_folder.claim`; with
    ``overwrite`` an earlier run's files there are deleted first), body model, SMPLify, regressor, optimiser, data,
    fits table (made where missing, except when ``resuming`` from a checkpoint: the run's own must be there),
    logs."""
    config.validated()
    rank, world, device = init_distributed(config.device)
    config = resolve(config, world)
    train_shards, eval_shards, skipped, check_s = checked_shards(config, rank, world)
    torch.manual_seed(config.seed)                  # the model's initialisation: the same on every rank
    run_dir = Path(config.run_dir)
    body_args = dict(joint_regressor_extra=config.joint_regressor_extra, h36m_regressor=config.h36m_regressor)
    body = load_body_model(config.body_model, device=device, **body_args)
    smplify_device = device if config.smplify_device == "auto" else parse_device(config.smplify_device,
                                                                                 "--smplify-device")
    fit_body = body if smplify_device == device else load_body_model(config.body_model, device=smplify_device,
                                                                     **body_args)
    prior = MaxMixturePrior.from_file(config.pose_prior).to(smplify_device)
    smplify = SMPLify(fit_body, prior, config.smplify)

    mean = (mean_params_from_npz(config.mean_params) if config.mean_params
            else mean_params_from_prior(prior, body.num_betas))
    heads = heads_for_family(body.family)
    head = head_of(config.head)
    if heads == "smplx" and not head.whole_body:
        raise FitloopError(f"the {head.name} head predicts SMPL's 24 joints; body model {config.body_model} has "
                           f"SMPL-X's layout: train it with --head hmr, or pick an SMPL-family body model")
    wholebody = fit_wholebody = smplifyx = point_weights = None
    if heads == "smplx":
        mean = mean.wholebody()
        wholebody = WholeBodyModel(body)
        fit_wholebody = wholebody if fit_body is body else WholeBodyModel(fit_body)
        point_weights = part_weights(wholebody.provided, config.loss.hands, config.loss.face)
        if config.run_smplify:
            smplifyx = SMPLifyX(fit_wholebody, body_prior=body_gmm_term(config.pose_prior), config=SMPLifyXConfig(
                image_height=FIT_RES, focal_length=config.smplify.focal_length,
                camera_iterations=config.smplifyx_camera_iterations,
                stage_iterations=tuple(config.smplifyx_stage_iterations)))
    if config.loop_start == "mean" and smplifyx is not None:
        raise FitloopError("loop_start 'mean' (fits from the mean start, the ablation's control) fits bodies with "
                           "SMPLify only: train a whole-body model with loop_start 'network'")
    raw_model = head.build(mean, config)
    if config.pretrained:
        load_imagenet_weights(raw_model, config.pretrained)
    raw_model.to(device)
    model: torch.nn.Module = raw_model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(raw_model, device_ids=[device] if device.type == "cuda"
                                                          else None)
    torch.manual_seed(config.seed + rank)           # everything drawn from here on (dropout): per rank
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.amp == "fp16")

    stream = training_stream(config, train_shards, rank, world)
    steps = stream.steps
    # the loader's own generator: creating an iterator must not draw from the global RNG (dropout), or a resumed
    # run would see other dropout masks than the run it continues
    loader = torch.utils.data.DataLoader(stream, batch_size=config.batch_size, num_workers=config.num_workers,
                                         pin_memory=device.type == "cuda",
                                         multiprocessing_context=_worker_context(config),
                                         generator=torch.Generator().manual_seed(config.seed + rank))
    if rank == 0:
        # after every check that can refuse the run (a model file, the head for its family, the data mix, an
        # existing fits table of another schema), so that a refused start leaves no run folder behind, and before
        # anything is written, here or to the fits table; the other ranks wait below
        found = FitsTable.existing_or_free(config.fits)
        if found is None and resuming:
            raise FitloopError(f"{config.fits}: the run's fits table is not there (it writes its fits there, and a "
                               f"resume continues from them): move it back, or start a new run in another run "
                               f"folder with this table")
        claim(run_dir, config, overwrite=overwrite)
        if found is None:
            FitsTable.create(config.fits)
    if world > 1:
        torch.distributed.barrier()
    table = FitsTable.open(config.fits)
    log = RunLog(run_dir, tensorboard=config.tensorboard, enabled=rank == 0, echo=echo, wholebody=heads == "smplx",
                 image_terms=tuple(t for t in IMAGE_TERMS if getattr(config.loss, t) > 0), head_terms=head.terms)
    mask_loss = image_evidence(config, body, device)
    run = Run(config=config, run_dir=run_dir, device=device, rank=rank, world_size=world, body=body,
              smplify=smplify, smplify_device=smplify_device, model=model, raw_model=raw_model, head=head,
              optimizer=optimizer,
              scaler=scaler,
              autocast=autocast_for(device, config.amp), stream=stream, loader=loader, steps_per_epoch=steps,
              table=table, log=log, fit_config_hash=fit_config_hash(config.smplify, config.pose_prior, body.model_id),
              train_shards=train_shards, shards_skipped=skipped, wholebody=wholebody, fit_wholebody=fit_wholebody,
              smplifyx=smplifyx, point_weights=point_weights, mask_loss=mask_loss)
    if rank == 0:
        if eval_shards:
            run.eval_reader = ShardReader(eval_shards, ReaderConfig(
                img_res=config.img_res, augment=AugmentConfig(enabled=False), shuffle_shards=False,
                shuffle_buffer=0, splits=config.eval_splits, on_corrupt=config.on_corrupt_shard),
                rank=0, world_size=1)
        run.truth = FitsGroundTruth.scan(train_shards, config.train_splits, body)
        held_out = ("yes" if run.eval_reader is not None
                    else f"none (no {'/'.join(config.eval_splits)} split)")
        checked = (f"{len(train_shards) + len(eval_shards) + len(skipped)} shards checked in {check_s:.1f} s"
                   + (f", {len(skipped)} corrupt left out" if skipped else "") if config.verify_shards
                   else "shards not checked up front")
        _say(run, f"run {config.run_id}: {stream.total_samples} training samples in {len(stream.mix)} group(s) "
                  f"({', '.join(f'{g.name} {g.share:.0%}' for g in stream.mix)}), {steps} steps/epoch; {checked}; "
                  f"{len(run.truth)} with 3D ground truth for the fits; held-out: {held_out}; "
                  f"TensorBoard: {log.tensorboard_note}")
    return run


def _say(run: Run, text: str, *, echo: bool = True) -> None:
    """A line for the user on rank 0: to the run's ``echo`` when it has one (a flow's run log, which shows on the
    console too; ``echo=False``: the line went there already), else on stderr."""
    if run.rank != 0:
        return
    if run.log.echo is None:
        tqdm.write(text, file=sys.stderr)
    elif echo:
        run.log.echo(text)


# --- checkpoints and the fits table ----------------------------------------------------------------------------
def resumed(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None, Path]:
    """(the config to continue with, the latest checkpoint of ``config.run_dir`` (None: the run stopped before its
    first checkpoint and starts over), its path (or the ``config.json`` it starts over with)). Refused before
    anything is built or written: a checkpoint of another run than the folder's (`training.run_folder.RunFolderError`,
    naming both); with a CheckpointError, a config that differs from the checkpoint's outside
    `training.config.RESUME_SAFE`, fewer epochs than the run has reached, another world size."""
    point = resume_point(Path(config.run_dir))
    path, data = point.path, point.checkpoint
    try:
        config = resumed_config(point.config, config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if data is None:
        return config, None, path
    _, world = distributed_rank()
    saved_world = int(data.get("world_size", world))  # format 1 did not say
    if saved_world != world:
        raise CheckpointError(f"{path}: trained by {saved_world} process(es), this run has {world}: the data split "
                              f"and the steps per epoch depend on it; resume with torchrun --nproc_per_node "
                              f"{saved_world} (or without torchrun for 1), or start a new run in another folder")
    reached = int(data["epoch"]) + 1  # the checkpoint is inside (or at the end of) this epoch
    if config.epochs < reached:
        raise CheckpointError(f"{path}: the run has reached epoch {reached}; epochs={config.epochs} would end it "
                              f"before its checkpoint: pass --epochs {reached} or more")
    return config, data, path


def restore(run: Run, data: dict[str, Any], path: Path) -> Position:
    """Load a checkpoint (`resumed`) into the run; the position to continue from."""
    if data["body_model_id"] != run.body.model_id:
        raise CheckpointError(f"{path}: trained with body model {data['body_model_id']}, this run loads "
                              f"{run.body.model_id}")
    head = data.get("head", "hmr")  # checkpoints before the head registry: the ResNet's
    if head != run.head.name:
        raise CheckpointError(f"{path}: holds a {head} head, this run trains a {run.head.name} head; resume with "
                              f"--head {head}")
    heads = data.get("regressor_heads", "smpl")  # checkpoints before whole-body heads: SPIN's
    if heads != run.raw_model.heads:
        raise CheckpointError(f"{path}: a regressor with {heads} heads, this run's body model "
                              f"({run.body.family}) has {run.raw_model.heads} heads; resume with the body model "
                              f"it was trained with")
    check_checkpoint_sampling(data, run.raw_model, path, run.config)
    epoch, batch = int(data["epoch"]), int(data["batch"])
    if batch >= run.steps_per_epoch:
        epoch, batch = epoch + 1, 0
    run.raw_model.load_state_dict(data["model"])
    run.optimizer.load_state_dict(data["optimizer"])
    if data.get("scaler"):
        run.scaler.load_state_dict(data["scaler"])
    cpu_rng, cuda_rng = rank_rng_state(data, run.rank)
    torch.set_rng_state(cpu_rng)
    if run.device.type == "cuda" and cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, run.device)
    run.log.truncate_after(int(data["step"]))
    _say(run, f"resuming from {path.name}: step {data['step']}, epoch {epoch} batch {batch}, "
              f"fits version {data['fits_version']}")
    return Position(step=int(data["step"]), epoch=epoch, batch=batch, fits_version=data["fits_version"],
                    resumed=True)


def load_store(run: Run, pos: Position, progress: bool) -> FitsStore:
    """The fits store of this rank, read once (module docstring): as of the checkpoint's version on resume; else the
    latest version, after rank 0 has seeded the missing fits. Sets ``pos.fits_version``."""
    cfg = run.config
    if pos.resumed:
        try:
            store = FitsStore.load(run.table, run.body.model_id, version=pos.fits_version)
        except VacuumedVersionError as gone:
            raise FitsTableError(
                f"{gone.path}: the checkpoint being resumed names fits table version {gone.version}, which can no "
                f"longer be read: the vacuum at version {gone.vacuum_version} ({gone.vacuum_time}) deleted its data "
                f"files (versions {gone.readable} can still be read), so this run cannot resume. Start a new run "
                f"instead (`fitloop train` with a new --run-dir and --fits {gone.path}): it reads the table's current "
                f"version {gone.latest} and seeds only the keys without a fit; or restore the table from a backup "
                f"made before the vacuum") from None
        pos.resumed = False
        return store
    if run.rank == 0 and cfg.seed_missing_fits:
        seeding = SeedConfig(body_model=cfg.body_model, joint_regressor_extra=cfg.joint_regressor_extra,
                             pose_prior=cfg.pose_prior, smplify=cfg.smplify, batch_size=cfg.batch_size,
                             run_id=cfg.run_id, device=str(run.smplify_device))
        with tqdm(desc="seed fits", unit="fit", disable=not progress, file=sys.stderr) as bar:
            seeded = seed_fits(run.train_shards, run.table.path, seeding, splits=cfg.train_splits,
                               missing_only=True, on_batch=bar.update)
        _say(run, f"seeded {seeded.appended} missing fits")
    barrier(run)
    store = FitsStore.load(run.table, run.body.model_id)
    pos.fits_version = store.version
    return store


def write_back(run: Run, store: FitsStore, *, refresh: bool) -> int:
    """Append every rank's pending fits to the table; the table's version afterwards. With ``refresh`` (epoch
    ends) every rank then takes in the others' fits (`FitsStore.refresh`), up to that version."""
    store.flush(run.table)
    barrier(run)
    if not refresh:
        return DeltaTable(str(run.table.path)).version()
    version = [DeltaTable(str(run.table.path)).version()] if run.rank == 0 else [None]
    if run.world_size > 1:  # one version for every rank: rank 0's checkpoint and evaluation name it
        torch.distributed.broadcast_object_list(version, src=0)
    store.refresh(run.table, version=version[0])
    return version[0]


class DivergedError(FitloopError):
    """The network's weights are no longer finite: the run stops before it saves them."""


def check_finite(run: Run, pos: Position) -> None:
    """DivergedError when a weight of the network is NaN or infinite (one host sync; every rank holds the same
    weights, so every rank raises): a checkpoint of them would resume into NaN, and predict and eval would print
    NaN results as if they were figures."""
    if bool(torch.stack([torch.isfinite(p).all() for p in run.raw_model.parameters()]).all()):
        return
    bad = [name for name, p in run.raw_model.named_parameters() if not bool(torch.isfinite(p).all())]
    last = latest_checkpoint(run.run_dir)
    # a resume keeps the run's --lr (`RESUME_SAFE`): what helps is a new start with a lower one
    raise DivergedError(f"step {pos.step}: training diverged, {len(bad)} of the network's weight tensors are no "
                        f"longer finite (first: {bad[0]}); not saved"
                        + (f" (the last checkpoint, {last}, holds finite weights)" if last is not None else "")
                        + ". Start again with a lower --lr (--overwrite, or another --run-dir), or check "
                          "--pretrained and --mean-params")


def checkpoint(run: Run, pos: Position) -> None:
    """Save the run at ``pos`` (rank 0, with every rank's RNG state); the fits must be written first
    (`write_back`). Every rank must call it. Weights that are no longer finite are never saved (`check_finite`)."""
    check_finite(run, pos)
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None)
    states = [mine]
    if run.world_size > 1:
        states = [None] * run.world_size
        torch.distributed.all_gather_object(states, mine)
    if run.rank != 0:
        return
    save_checkpoint(run.run_dir, {
        "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "step": pos.step, "epoch": pos.epoch, "batch": pos.batch, "fits_table": str(run.table.path),
        "fits_version": pos.fits_version, "run_id": run.config.run_id, "body_model_id": run.body.model_id,
        "regressor_heads": run.raw_model.heads, "head": run.head.name,
        SAMPLING_DIGEST_KEY: getattr(run.raw_model, "sampling_digest", None),
        "config": run.config.to_dict(), "world_size": run.world_size,
        "rng": {"torch": [cpu for cpu, _ in states],
                "cuda": [cuda for _, cuda in states] if run.device.type == "cuda" else []},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    kill_point("train.checkpoint")
    prune_checkpoints(run.run_dir, run.config.keep_checkpoints)


def evaluate(run: Run, store: FitsStore, pos: Position, epoch: int, started: float) -> dict[str, Any]:
    """Fits (rank 0's store, which holds the table's best view at the version just written) and network against
    ground truth; one metrics row (rank 0)."""
    if run.rank != 0:
        barrier(run)
        return {}
    fits = (evaluate_fits(store.view(), run.body, run.truth, version=pos.fits_version)
            if run.truth else {})
    net = {}
    if run.eval_reader is not None:
        batches = torch.utils.data.DataLoader(run.eval_reader, batch_size=run.config.batch_size,
                                              num_workers=run.config.num_workers,
                                              multiprocessing_context=_worker_context(run.config),
                                              generator=torch.Generator().manual_seed(run.config.seed))
        net = evaluate_network(run.raw_model, run.body, batches, run.device, run.autocast,
                               run.config.eval_max_samples, wholebody=run.wholebody, head=run.head)
        # its own generator: an iterator must not draw from the global RNG (a resumed run's dropout masks)
        shown = first_items(torch.utils.data.DataLoader(run.eval_reader, batch_size=OVERLAY_SAMPLES, num_workers=0,
                                                        generator=torch.Generator().manual_seed(run.config.seed)),
                            OVERLAY_SAMPLES)
        if shown is not None:
            run.log.log_overlays(pos.step, overlay_grid(run.raw_model, run.body, shown, run.device, run.autocast,
                                                        run.head, run.config.img_res, run.wholebody))
    row = run.log.log_evaluation(epoch, pos.step, pos.fits_version, fits, net, time.time() - started)
    _say(run, describe_evaluation(row), echo=False)  # log_evaluation echoed it
    barrier(run)
    return row


# --- the step ---------------------------------------------------------------------------------------------------
def train_step(run: Run, store: FitsStore, items: dict, pos: Position, timer: StepTimer) -> dict[str, Any]:
    """One optimiser step on one batch (`training.step`, in order); returns what the log row averages: the loss terms
    and the shares of fits updated, valid and filtered as 0-d tensors on the training device (read once per log row,
    `training.step_stats.StepStats`), the fits the store kept as an int. The step's host syncs: the fits
    write-back's one transfer (`training.step.update_fits`) and SMPLify's own (`fitting`), none per loss term."""
    cfg = run.config
    with timer.part("data"):
        batch = Batch.from_items(items, run.device, cfg.ignore_3d_datasets, run.head)
    with timer.part("network"):
        pred = predict(run.model, run.body, batch.inputs, run.autocast, run.wholebody)
    with timer.part("smplify"):
        keypoints_px = fit_frame_px(batch.keypoints).to(run.smplify_device)
        stored = stored_fits(store, run.smplify, batch.keys, keypoints_px, batch.rot, batch.flip, run.fit_wholebody)
        new = None
        if cfg.run_smplify and cfg.loop_start == "mean":  # the ablation's control: the network starts no fit
            new = fit_from_mean(run.smplify, keypoints_px)
        elif cfg.run_smplify and run.smplifyx is None:
            new = fit_in_the_loop(run.smplify, pred, keypoints_px)
        elif cfg.run_smplify:   # whole-body run: SMPLify-X fits the whole-body examples, SMPLify the others
            new = fit_wholebody_in_the_loop(run.smplifyx, run.smplify, pred, batch, keypoints_px)
    with timer.part("write_back"):
        provenance = FitProvenance(run_id=cfg.run_id, body_model_id=run.body.model_id,
                                   fit_config_hash=run.fit_config_hash, source="loop", epoch=pos.epoch, step=pos.step)
        if new is not None:
            chosen, updated, kept = update_fits(store, run.smplify, batch, keypoints_px, stored, new, provenance,
                                                run.fit_wholebody)
        else:
            chosen, updated, kept = stored, torch.zeros(len(batch.keys), dtype=torch.bool, device=run.device), 0
    with timer.part("network"):
        targets = supervision(chosen, batch, cfg.smplify_threshold, cfg.fit_filter)
        loss, terms = compute_losses(pred, targets, batch, cfg.loss, run.body, run.point_weights, run.mask_loss)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    row = {**terms, "fits_updated": to_device(updated.float().mean(), run.device), "fits_kept": kept,
           "valid": targets.valid.float().mean(), "fits_filtered": targets.filtered.float().mean()}
    if run.wholebody is not None:  # the share of the step's chosen fits that are whole-body fits
        row["fits_wholebody"] = (to_device(chosen.has_wholebody.float().mean(), run.device)
                                 if chosen.has_wholebody is not None else torch.zeros((), device=run.device))
    return row


# --- the loop ---------------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``config.run_dir``; returns a summary. A new run refuses a
    folder another run has used unless ``overwrite`` (`training.run_folder`). ``echo``: also called with each line
    for the user, each training-log row and each evaluation, as one line (a flow's run logger)."""
    started = time.time()
    if resume and overwrite:
        raise FitloopError("resume continues the run in the run folder, overwrite deletes it: give one of them")
    saved = path = None
    if resume:
        config, saved, path = resumed(config)
    else:
        check_new_run(Path(config.run_dir), overwrite)  # every rank, before any of them writes
    run = setup(config, echo, overwrite=overwrite, resuming=saved is not None)  # no checkpoint: it starts over
    cfg = run.config
    if saved is not None:
        pos = restore(run, saved, path)
    else:
        pos = Position()
        if resume:
            run.log.truncate_after(-1)
            _say(run, f"run {cfg.run_id} stopped before its first checkpoint: starting it over with {path}")
    store = load_store(run, pos, progress)
    if saved is None:
        evaluate(run, store, pos, 0, started)
        checkpoint(run, pos)  # step 0: every fits write-back comes after a checkpoint a resume can start from

    timer = StepTimer(run.device, parts=cfg.profile_parts)
    stats = StepStats()   # the logged values, summed on the device and read once per log row
    for epoch in range(pos.epoch, cfg.epochs):
        start_batch = pos.batch if epoch == pos.epoch else 0
        run.stream.set_position(epoch, start_batch)
        pos.epoch, pos.batch = epoch, start_batch
        bar = tqdm(total=run.steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not progress or run.rank != 0, file=sys.stderr, dynamic_ncols=True)
        batches = iter(run.loader)
        while pos.batch < run.steps_per_epoch:
            with timer.step():
                with timer.part("data"):
                    try:
                        items = next(batches)
                    except ShardCorruptError as err:  # from a DataLoader worker: keep the reader's one line
                        raise ShardCorruptError.unwrapped(err) from None
                stats.add(train_step(run, store, items, pos, timer))
            pos.step += 1
            pos.batch += 1
            bar.update(1)
            kill_point("train.step")
            if pos.step % cfg.log_every == 0 or pos.batch == run.steps_per_epoch:
                row = stats.take()      # the row's one read of device values (a host sync on a GPU)
                times = timer.take()
                row.update(times, epoch=epoch, step=pos.step, loss=row.pop("total"))
                run.log.log_train(row)
                parts = [f"{p.replace('_', '-')} {times[p + '_ms']:.0f}ms" for p in PARTS
                         if times[p + "_ms"] is not None]
                bar.set_postfix_str(" ".join(parts or [f"step {times['step_ms']:.0f}ms"])
                                    + f" loss {row['loss']:.3g} fits+ {row['fits_updated']:.0%}")
            if pos.step % cfg.checkpoint_every == 0 and pos.batch < run.steps_per_epoch:
                with timer.part("write_back"):
                    pos.fits_version = write_back(run, store, refresh=False)
                checkpoint(run, pos)
        bar.close()
        with timer.part("write_back"):
            pos.fits_version = write_back(run, store, refresh=True)
        if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs:
            evaluate(run, store, pos, epoch + 1, started)
        checkpoint(run, pos)
    run.log.close()
    skipped = run.shards_skipped + [line for reader in run.stream.readers for line in reader.skipped]
    return {"run_dir": str(run.run_dir), "run_id": cfg.run_id, "rank": run.rank, "step": pos.step,
            "epochs": cfg.epochs, "fits_version": pos.fits_version,
            "metrics": run.log.metrics.rows(), "wall_s": time.time() - started,
            "shards_skipped": skipped, "fits_rows_read": store.rows_read}
