"""`TrainConfig`: every setting of a training run, one typed config with SPIN's defaults (SPIN_REFERENCE §7.1).

The resolved config is written to the run folder (``config.json``) and into every checkpoint; ``--resume`` reads
it back from the checkpoint (`from_dict`), so a resumed run is the run that was killed. Defaults live here;
overrides come from `fitloop train` flags.

**Resume.** A resumed run may change only `RESUME_SAFE`: how long it trains, where it runs, how often it
checkpoints, logs and evaluates, and how it checks its shards; nothing that changes what it computes.
`resumed_config` compares the checkpoint's config with the requested one and refuses anything else, naming every
changed setting in one line.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fits.quality import FitFilter
from fitting import priors
from fitting.smplify import SMPLifyConfig
from fitting.smplifyx import SMPLIFYX_STAGES, SMPLifyXConfig
from shards.augment import AugmentConfig
from shards.reader import ON_CORRUPT
from training.data import parse_mix
from training.graphcmr import GRAPH_CHANNELS, GRAPH_LAYERS
from training.heads import DEFAULT_HEAD, HEADS
from training.mask_loss import MASK_RES
from training.resnet import ARCHITECTURES

DEFAULT_PRIOR = str(priors.DEFAULT_PRIOR)
# SPIN's MixedDataset: 30% H36M, 60% in-the-wild (split by size), 10% MPI-INF-3DHP. "*" takes every dataset no
# other group names (so a new in-the-wild set needs no entry).
SPIN_MIX = "h36m=0.3;lsp-orig,mpii,lspet,coco,*=0.6;mpi-inf-3dhp=0.1"
# Where the loop's fits start: the network's estimate (SPIN), or the mean start (the ablation's control)
LOOP_STARTS = ("network", "mean")
# What a resumed run may change (docs/training.md): epochs (to extend; the loop refuses fewer than it has trained),
# where it runs (device, smplify_device: the same computation up to float rounding), how often it writes fits and
# checkpoints, logs, times and evaluates (none of these changes a step), and how it checks its shards (on_corrupt_shard
# changes the data only when a shard is corrupt, and then the run says so). run_dir is where the run lives now.
# mesh_sampling: where the graphcmr head's matrices are read now; the checkpoint's digest of them must match
# (`training.graphcmr.check_checkpoint_sampling`), so the network computes the same. Not num_workers: the data
# layout of an epoch depends on it (training.data), so the rest of the epoch would repeat some samples and miss
# others.
RESUME_SAFE = frozenset({"epochs", "device", "smplify_device", "checkpoint_every", "keep_checkpoints", "log_every",
                         "eval_every_epochs", "tensorboard", "profile_parts", "verify_shards", "on_corrupt_shard",
                         "run_dir", "mesh_sampling"})


class InvalidConfigError(ValueError):
    """A `TrainConfig` setting out of range (`TrainConfig.validated`), every one named in one line."""


@dataclass(frozen=True)
class LossWeights:
    """SPIN's loss weights (`utils/train_options.py`); the total is ``scale`` × the weighted sum.

    Attributes:
        keypoint: 2D and 3D keypoint losses (SPIN uses one weight for both), 5.
        pose: rotation-matrix MSE against the fit's (or ground-truth) pose, 1.
        betas: MSE against the fit's betas, 0.001.
        shape: per-vertex L1 against the fit's mesh, 0 (off in SPIN).
        graph_shape: the graphcmr head only: per-vertex L1 of its graph's mesh against the fit's mesh, 1
            (GraphCMR's ``loss_shape``, weight 1 in its ``train/trainer.py``); that mesh's joints' 2D and 3D
            losses are weighted by ``keypoint`` as the body's.
        openpose: confidence factor of the OpenPose joints (0–24) in the 2D loss, 0.
        gt: confidence factor of the dataset joints (25–48) in the 2D loss, 1.
        camera: weight of the camera regulariser mean(exp(−10 s)²), 1.
        scale: the global factor SPIN's code multiplies the total by, 60.
        mask: mask consistency of the predicted mesh (`training.mask_loss`: 1 − weighted Jaccard of its rendered
            silhouette and the person mask, over the samples that carry a mask; Pavlakos et al. 2018), 0 (off; not
            in SPIN; fitloop's).
        dsr_mc, dsr_c: DSR's semantic losses of the predicted mesh (`training.dsr_loss`; Dwivedi et al. 2021):
            DSR-MC, 1 − weighted Jaccard of its rendered head, hands and feet and the samples' part labels of them
            (samples with SMPL-segment part labels); DSR-C, its rendered mass outside the clothed person (the
            parsing's person region, else the person mask), over the region's area. 0 each (off; DSR uses 0.2).
    Whole-body heads only (an SMPL-X-layout body model; SPIN has none of these, the values are fitloop's):
        hands, face: per-point factors of the hands' and the face's points in the whole-body 2D keypoint loss
            (weighted by ``keypoint`` as the body's 2D loss), 1 each: a whole-body point counts as a body joint.
        hand_pose, jaw_pose: rotation-matrix MSE of the hands' 30 and the jaw's joints against the fit's, 1 (as
            ``pose``).
        expression: MSE of the expression against the fit's, 0.001 (as ``betas``: coefficients in standard
            deviations, weakly observed).
    """

    keypoint: float = 5.0
    pose: float = 1.0
    betas: float = 0.001
    shape: float = 0.0
    graph_shape: float = 1.0
    openpose: float = 0.0
    gt: float = 1.0
    camera: float = 1.0
    scale: float = 60.0
    mask: float = 0.0
    dsr_mc: float = 0.0
    dsr_c: float = 0.0
    hands: float = 1.0
    face: float = 1.0
    hand_pose: float = 1.0
    jaw_pose: float = 1.0
    expression: float = 0.001


@dataclass(frozen=True)
class TrainConfig:
    """One training run (SPIN's values unless said otherwise).

    Data:
        shards: shard sets to train on (their ``train_splits``); eval_shards: held-out sets with 3D ground truth
            (default: the same sets, their ``eval_splits``).
        mix: dataset groups and their shares, ``"a,b=0.6;c=0.4"`` (`training.data.parse_mix`); SPIN's 30/60/10.
        ignore_3d_datasets: datasets whose 3D joints and SMPL are not used for training (SPIN's ``ignore_3d``,
            per dataset); evaluation still compares with them.
        img_res: network input, px (SPIN 224; smaller for CPU runs; the fit frame stays SPIN's 224 px crop).
        steps_per_epoch: None: the training samples over batch size × world size.
        eval_max_samples: evaluate on at most this many held-out samples (None: all).
    Fits:
        fits: the fits table (`fits.table.FitsTable`); created when missing.
        seed_missing_fits: fit the training samples that have no fit yet from the mean pose before training
            (SPIN's static fits), ``source="seed"``.
    Model:
        head: the regressor design (`training.heads.HEADS`): "hmr" (SPIN's ResNet, default), "keypoints"
            (Pavlakos 2018: keypoints and mask in, no image), "graphcmr" (Kolotouros 2019: a graph CNN on the
            image's features regresses a coarse mesh, the parameters follow from it) or "volumetric" (Pavlakos
            2017 / Sun 2018: 3D joint volumes beside HMR's regressor; img_res a multiple of 32).
        mesh_sampling: the graphcmr head's down/upsampling matrices (`fitting.mesh_sampling`: fitloop's .npz, or
            GraphCMR's ``mesh_downsampling.npz`` for a real SMPL); None: the committed file of an open model.
            graph_layers, graph_channels: its graph CNN's residual blocks and width (GraphCMR's 5 and 256).
        mask_res: px, the mask and DSR losses' grid over the training crop (`training.mask_loss`): the largest
            divisor of img_res up to it (56 for 224).
        backbone: ResNet depth (50 as SPIN; 18 or 34 for CPU runs). pretrained: torchvision ImageNet weights file.
        mean_params: SPIN's ``smpl_mean_params.npz`` (real SMPL); None: computed from the pose prior.
        body_model: ``"open"``, ``"open-small"`` or a model file; joint_regressor_extra, h36m_regressor: SPIN's
            regressor files for a real SMPL; pose_prior: SMPLify's prior file.
    Optimisation: SPIN's Adam, lr 5e-5, no weight decay, no schedule, batch 64, 50 epochs; ``loss`` weights.
    SMPLify: run_smplify (fitting in the loop); loop_start: where the loop's fits start, "network" (SPIN: the
        network's estimate) or "mean" (SPIN's mean start, `fitting.smplify.mean_pose_start`, as the seed fits: the
        network never starts a fit; the control arm of SPIN's ablation, `bench.loop`); smplify_threshold: a fit supervises only when its loss (px²) is
        below it; fit_filter: and only when its quality record meets these bars (`fits.quality.FitFilter`; none by
        default, as SPIN); smplify: SMPLify's settings; smplify_device: where SMPLify runs ("auto", the default:
        the training device, so a GPU run fits on the GPU and a CPU run on the CPU; "cpu"; or a device name).
        With an SMPL-X-layout body model the examples that have whole-body keypoints are fitted with
        SMPLify-X's fast mode instead (`fitting.smplifyx`, from the network's estimate: its camera stage and last
        stage, in the 224 px fit frame), with ``smplifyx_camera_iterations`` and ``smplifyx_stage_iterations``
        (one count per stage; from an estimate only the last one runs) LM iterations (default:
        `fitting.smplifyx.SMPLifyXConfig`'s).
    Shards: verify_shards: check every shard read against its manifest's sha256 before training (one read of each
        tar); on_corrupt_shard: "raise" (stop with an error naming the shard) or "skip" (leave it out, warn and
        count) for a corrupt shard, found up front or while reading (`shards.reader`).
    Runtime: device ("auto": CUDA when present); amp ("auto": bfloat16 autocast of the network on CUDA, off on
        CPU; "bf16", "fp16" with a gradient scaler, "off"; the body model, the losses and SMPLify stay float32,
        `training.step.autocast_for`); seed (the model's initialisation; dropout and the data draws per rank,
        `training.loop`); checkpoint_every (steps; fits are written at each checkpoint and at each epoch end);
        keep_checkpoints (the newest this many stay in the run folder, older ones are deleted after each save;
        0 keeps every one);
        log_every (steps per row of train_log.csv: the logged values are read from the device once per row,
        `training.step_stats`); profile_parts (time each part of the step, with a CUDA sync after each part; off:
        only the step's time, no sync, the parts' columns blank); eval_every_epochs;
        run_dir; run_id (stored on every fit row); tensorboard (when the package is installed).
    """

    shards: tuple[str, ...] = ()
    eval_shards: tuple[str, ...] = ()
    train_splits: tuple[str, ...] = ("train",)
    eval_splits: tuple[str, ...] = ("val", "test")
    mix: str = SPIN_MIX
    ignore_3d_datasets: tuple[str, ...] = ()
    img_res: int = 224
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shuffle_buffer: int = 1000
    num_workers: int = 4
    steps_per_epoch: int | None = None
    eval_max_samples: int | None = None

    fits: str = ""
    seed_missing_fits: bool = True

    head: str = DEFAULT_HEAD
    mesh_sampling: str | None = None
    graph_layers: int = GRAPH_LAYERS
    graph_channels: int = GRAPH_CHANNELS
    mask_res: int = MASK_RES
    backbone: int = 50
    pretrained: str | None = None
    mean_params: str | None = None
    ief_iterations: int = 3
    body_model: str = "open"
    joint_regressor_extra: str | None = None
    h36m_regressor: str | None = None
    pose_prior: str = DEFAULT_PRIOR

    epochs: int = 50
    batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.0
    loss: LossWeights = field(default_factory=LossWeights)

    run_smplify: bool = True
    loop_start: str = "network"
    smplify_threshold: float = 100.0
    fit_filter: FitFilter = field(default_factory=FitFilter)
    smplify: SMPLifyConfig = field(default_factory=SMPLifyConfig)
    smplify_device: str = "auto"
    smplifyx_camera_iterations: int = SMPLifyXConfig().camera_iterations
    smplifyx_stage_iterations: tuple[int, ...] = SMPLifyXConfig().stage_iterations

    verify_shards: bool = True
    on_corrupt_shard: str = "raise"

    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_every: int = 10
    profile_parts: bool = False
    eval_every_epochs: int = 1
    run_dir: str = ""
    run_id: str = ""
    tensorboard: bool = True

    def validated(self) -> "TrainConfig":
        """Check values that would fail late; returns self."""
        problems = []
        if not self.shards:
            problems.append("no training shards (--shards)")
        if not self.fits:
            problems.append("no fits table (--fits)")
        if self.head not in HEADS:
            problems.append(f"head must be one of {'/'.join(HEADS)}, got {self.head!r}")
        elif self.pretrained and self.head not in ("hmr", "graphcmr", "volumetric"):
            problems.append(f"pretrained ImageNet weights are for a ResNet trunk (heads hmr, graphcmr, volumetric), "
                            f"not the {self.head} head")
        elif self.head == "volumetric" and self.img_res % 32:
            problems.append(f"the volumetric head needs --img-res a multiple of 32 (its volume is img_res/4 "
                            f"voxels a side), got {self.img_res}")
        if self.graph_layers < 0 or self.graph_channels < 16 or self.graph_channels % 16:
            problems.append(f"graph_layers must be >= 0 and graph_channels a multiple of 16 (GroupNorm of c/8 "
                            f"groups over c/2 channels), got {self.graph_layers} and {self.graph_channels}")
        if self.mask_res < 8 or min(self.loss.mask, self.loss.dsr_mc, self.loss.dsr_c) < 0:
            problems.append(f"mask_res must be >= 8 px and loss.mask, loss.dsr_mc, loss.dsr_c >= 0, got "
                            f"{self.mask_res}, {self.loss.mask}, {self.loss.dsr_mc} and {self.loss.dsr_c}")
        if self.backbone not in ARCHITECTURES:
            problems.append(f"backbone must be a ResNet depth {'/'.join(map(str, ARCHITECTURES))}, got "
                            f"{self.backbone}")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            problems.append(f"batch_size and epochs must be >= 1 and lr > 0, got batch_size {self.batch_size}, "
                            f"epochs {self.epochs} and lr {self.lr:g}")
        try:
            parse_mix(self.mix)
        except ValueError as err:
            problems.append(f"mix {self.mix!r}: {err}")
        for name in ("steps_per_epoch", "eval_max_samples"):  # None: all of them
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (or left out: all), got {getattr(self, name)}")
        if self.img_res < 32:
            problems.append(f"img_res must be >= 32 px, got {self.img_res}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            problems.append(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.smplify.focal_length != 5000.0:
            problems.append("SMPLify fits in SPIN's crop camera: smplify.focal_length must be 5000")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.eval_every_epochs < 1:
            problems.append("checkpoint_every, log_every and eval_every_epochs must be >= 1")
        if self.keep_checkpoints < 0:
            problems.append(f"keep_checkpoints must be >= 0 (0 keeps every checkpoint), got {self.keep_checkpoints}")
        if len(self.smplifyx_stage_iterations) != len(SMPLIFYX_STAGES) or min(self.smplifyx_stage_iterations) < 0 \
                or self.smplifyx_camera_iterations < 0:
            problems.append(f"smplifyx_stage_iterations must be {len(SMPLIFYX_STAGES)} counts >= 0 (one per "
                            f"SMPLify-X stage), got {list(self.smplifyx_stage_iterations)}, and "
                            f"smplifyx_camera_iterations >= 0")
        if self.loop_start not in LOOP_STARTS:
            problems.append(f"loop_start must be one of {'/'.join(LOOP_STARTS)}, got {self.loop_start!r}")
        if self.on_corrupt_shard not in ON_CORRUPT:
            problems.append(f"on_corrupt_shard must be one of {'/'.join(ON_CORRUPT)}, got {self.on_corrupt_shard!r}")
        if problems:
            raise InvalidConfigError("invalid training config: " + "; ".join(problems))
        self.smplify.validated()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config back from `to_dict` (a checkpoint's or ``config.json``); unknown keys are an error."""
        return _build(cls, data)


def config_changes(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """The settings that differ between two configs of one dataclass type: dotted name -> (old, new), nested
    configs (smplify, augment, loss) field by field."""
    changes = {}
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            changes.update(config_changes(a, b, f"{prefix}{f.name}."))
        elif a != b:
            changes[prefix + f.name] = (a, b)
    return changes


# Settings that are always paths, and settings that are paths unless they name something shipped ("open", "gmm"):
# a run stores them absolute, so that a resume from another working folder reads the run's own table and shards
# (relative, it made a new empty table beside it and wrote the run's fits there)
PATH_SETTINGS = ("shards", "eval_shards", "fits")
FILE_SETTINGS = ("body_model", "joint_regressor_extra", "h36m_regressor", "pose_prior", "mean_params",
                 "mesh_sampling", "pretrained")


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its paths absolute (`PATH_SETTINGS`; `FILE_SETTINGS` where the value is an existing file or
    folder, so a shipped model's or prior's name stays a name), against the current working folder."""
    def absolute(value: str) -> str:
        return str(Path(value).absolute())

    values: dict[str, Any] = {"fits": absolute(config.fits) if config.fits else config.fits,
                              "shards": tuple(absolute(s) for s in config.shards),
                              "eval_shards": tuple(absolute(s) for s in config.eval_shards)}
    for name in FILE_SETTINGS:
        value = getattr(config, name)
        if value and Path(value).exists():
            values[name] = absolute(value)
    return dataclasses.replace(config, **values)


def _moved(saved: str | tuple[str, ...], given: str | tuple[str, ...]) -> bool:
    """Whether a path setting changed because the project moved (another disk, another node's mount): every path
    the run saved is gone and every one given is there. The data are checked where they are read: the shard sets
    against their manifests, the table's stored fits against the samples' keypoints (`fits.store.stale_fits`)."""
    saved, given = ((v,) if isinstance(v, str) else tuple(v) for v in (saved, given))
    return (len(saved) == len(given) and not any(Path(p).exists() for p in saved)
            and all(Path(p).exists() for p in given))


def resumed_config(saved: TrainConfig, requested: TrainConfig,
                   name: typing.Callable[[str], str] = lambda setting: setting) -> TrainConfig:
    """The config a resumed run continues with: ``requested``, which may differ from the checkpoint's ``saved``
    only in `RESUME_SAFE`. A ``requested`` run_id "" or eval_shards () (left open) means the saved ones.

    Paths compare absolute (`absolute_paths`: a run stores them so; an older run's relative ones are taken from the
    current working folder, as that run took them). Shards and the fits table may be given anew where the run's
    own are gone and the given ones exist (the project moved: `_moved`).

    Raises ValueError in one line naming every other changed setting (``name`` spells a setting for the user,
    e.g. as its command-line flag) and what to do."""
    saved = absolute_paths(saved)
    requested = absolute_paths(dataclasses.replace(requested, run_id=requested.run_id or saved.run_id,
                                                   eval_shards=requested.eval_shards or saved.eval_shards))
    changed = {k: v for k, v in config_changes(saved, requested).items() if k not in RESUME_SAFE
               and not (k in PATH_SETTINGS and _moved(getattr(saved, k), getattr(requested, k)))}
    if changed:
        listed = ", ".join(f"{name(k)} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"a resumed run keeps the settings of its checkpoint, and these would change what it "
                         f"computes: {listed}; drop them to resume (only {', '.join(sorted(RESUME_SAFE))} may "
                         f"change), or start a new run in another run folder")
    return requested


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
