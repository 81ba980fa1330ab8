"""`fitloop train`: SPIN training with SMPLify in the loop, fits written back to the fits table, evaluation."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fitloop.commands.fits import add_fit_filter_options, fit_filter_from
from fitloop.options import count

# flag -> TrainConfig field, for the plain (scalar) options; None defaults mean "not given"
_SCALARS = {
    "img_res": int, "num_workers": int, "steps_per_epoch": int, "eval_max_samples": int, "backbone": int,
    "pretrained": str, "mean_params": str, "body_model": str, "joint_regressor_extra": str, "h36m_regressor": str,
    "pose_prior": str, "epochs": int, "batch_size": int, "lr": float, "smplify_threshold": float,
    "smplify_device": str, "device": str, "amp": str, "seed": int, "checkpoint_every": int, "keep_checkpoints": int,
    "log_every": int, "eval_every_epochs": int, "shuffle_buffer": int, "mix": str, "run_id": str, "head": str,
    "mask_res": int, "mesh_sampling": str, "graph_layers": int, "graph_channels": int, "loop_start": str,
}
# TrainConfig field -> its flag, where the name differs (for messages)
_FLAGS = {"shards": "--shards", "fits": "--fits", "eval_shards": "--eval-shards", "train_splits": "--train-splits",
          "eval_splits": "--eval-splits", "ignore_3d_datasets": "--ignore-3d", "run_smplify": "--no-smplify",
          "seed_missing_fits": "--no-seed-fits", "tensorboard": "--no-tensorboard", "augment.enabled": "--no-augment",
          "smplify.mode": "--smplify-mode", "smplify.iterations": "--smplify-iters",
          "smplify.body_iterations": "--smplify-iters", "verify_shards": "--no-verify-shards",
          "fit_filter.max_reprojection_px": "--max-reprojection", "fit_filter.require_facing": "--require-facing",
          "fit_filter.max_pose_prior": "--max-pose-prior",
          "fit_filter.max_candidate_spread_mm": "--max-candidate-spread",
          "smplifyx_stage_iterations": "--smplifyx-iters", "smplifyx_camera_iterations": "--smplifyx-camera-iters",
          "loss.mask": "--mask-weight", "loss.dsr_mc": "--dsr-mc-weight", "loss.dsr_c": "--dsr-c-weight",
          "loss.graph_shape": "--graph-shape-weight"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train SPIN's regressor with SMPLify in the loop; fits go to the fits table",
        description="Train SPIN's regressor (ResNet + HMR iterative regression) on shard sets mixed by dataset "
                    "shares, with SMPLify in the loop: each step fits the batch from the network's prediction, "
                    "keeps the better of that fit and the stored best fit, and supervises with it. Improved fits "
                    "are appended to the fits table at every checkpoint and epoch end; every epoch the fits table "
                    "and the network are evaluated (MPJPE, PA-MPJPE) into RUN/metrics.csv and RUN/curves.png. "
                    "Defaults are SPIN's (docs/training.md). --head keypoints trains Pavlakos 2018's network "
                    "(2D keypoints and mask in) instead of the ResNet, --head graphcmr GraphCMR's graph CNN on a "
                    "coarse mesh (Kolotouros 2019); --mask-weight adds a mask consistency loss of "
                    "the predicted mesh, --dsr-mc-weight and --dsr-c-weight DSR's semantic losses. Works under torchrun (shards split by node).")
    parser.add_argument("--shards", type=Path, nargs="+", help="training shard sets")
    parser.add_argument("--fits", type=Path, help="the fits table (created when missing)")
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="run folder: config, logs, checkpoints; it holds one run (run.json names it): a new run "
                             "refuses a folder another run has used")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its latest checkpoint, with its saved config (a run "
                            "killed before its first checkpoint starts over); flags may change only --epochs (to "
                            "extend), --device, --smplify-device, --checkpoint-every, --keep-checkpoints, --log-every, "
                            "--profile-parts, --mesh-sampling (the same matrices elsewhere), "
                            "--eval-every-epochs, --no-tensorboard, --no-verify-shards and --on-corrupt-shard (any "
                            "other change is refused)")
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in a --run-dir another run has used: that run's checkpoints, logs and "
                            "config are deleted first (its fits stay in the fits table)")
    parser.add_argument("--eval-shards", type=Path, nargs="+", help="held-out shard sets (default: --shards)")
    parser.add_argument("--train-splits", nargs="+", help="splits to train on (default: train)")
    parser.add_argument("--eval-splits", nargs="+", help="held-out splits (default: val test)")
    parser.add_argument("--ignore-3d", nargs="+", metavar="DATASET",
                        help="datasets whose 3D joints and SMPL are not trained on (still evaluated against)")
    parser.add_argument("--mix", help='dataset groups and shares, e.g. "h36m=0.3;lsp-orig,mpii,lspet,coco,*=0.6;'
                                      'mpi-inf-3dhp=0.1" (SPIN\'s, the default)')
    parser.add_argument("--head",
                        help="the regressor (training.heads): hmr (SPIN's ResNet on the image, default), keypoints (Pavlakos 2018: "
                             "2D keypoints -> pose and camera, mask -> shape; learns on CPU), graphcmr (Kolotouros "
                             "2019: a graph CNN regresses a coarse mesh from the image's features, the parameters "
                             "follow from the mesh) or volumetric (Pavlakos 2017 / Sun 2018: per-joint 3D volumes by "
                             "soft-argmax beside HMR's regressor; --img-res a multiple of 32)")
    parser.add_argument("--mesh-sampling",
                        help="graphcmr: down/upsampling matrices (fitloop model sampling's .npz, or GraphCMR's "
                             "data/mesh_downsampling.npz for a real SMPL; default: the open models' committed files)")
    parser.add_argument("--graph-layers", type=int, help="graphcmr: residual graph blocks (default 5, GraphCMR's)")
    parser.add_argument("--graph-channels", type=int, help="graphcmr: graph width (default 256, GraphCMR's)")
    parser.add_argument("--graph-shape-weight", type=float,
                        help="graphcmr: weight of the per-vertex L1 of the graph's mesh against the fit's (default 1)")
    parser.add_argument("--mask-weight", type=float,
                        help="weight of the mask consistency loss of the predicted mesh against the samples' person "
                             "masks (Pavlakos 2018; default 0: off)")
    parser.add_argument("--dsr-mc-weight", type=float,
                        help="weight of DSR-MC: the predicted mesh's rendered head, hands and feet against the "
                             "samples' SMPL-segment part labels (Dwivedi 2021; default 0: off)")
    parser.add_argument("--dsr-c-weight", type=float,
                        help="weight of DSR-C: the predicted mesh's rendered mass outside the clothed person (the "
                             "parsing's person region, else the person mask) (Dwivedi 2021; default 0: off)")
    parser.add_argument("--mask-res", type=int,
                        help="px of the mask and DSR losses' grid over the crop (default 56)")
    parser.add_argument("--backbone", type=int, help="ResNet depth: 50 (default), 18 or 34 for CPU runs")
    parser.add_argument("--pretrained", help="torchvision ImageNet weights file for the backbone")
    parser.add_argument("--mean-params", help="SPIN's smpl_mean_params.npz (real SMPL); default: from the prior")
    parser.add_argument("--body-model", help='"open" (default), "open-small", "open-smplx", "open-smplx-small" or a '
                                             'model file; an SMPL-X-layout model trains whole-body heads (hands, '
                                             'jaw, expression) and fits whole-body samples with SMPLify-X')
    parser.add_argument("--joint-regressor-extra", help="SPIN's J_regressor_extra.npy (real SMPL)")
    parser.add_argument("--h36m-regressor", help="SPIN's J_regressor_h36m.npy (real SMPL, evaluation)")
    parser.add_argument("--pose-prior", help="SMPLify's pose prior (default: the open prior)")
    parser.add_argument("--img-res", type=int, help="network input px (default 224)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int, help="default: training samples / (batch x nodes)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--no-smplify", action="store_true", help="train on the stored fits only (SPIN without "
                                                                  "--run_smplify)")
    parser.add_argument("--loop-start", choices=("network", "mean"),
                        help="where the loop's fits start: network (SPIN's, default) or mean (the mean start, as "
                             "the seed fits: the control arm of SPIN's ablation, `fitloop bench loop`)")
    parser.add_argument("--smplify-mode", choices=("fast", "reference"), help="SMPLify solver (default fast)")
    parser.add_argument("--smplify-iters", type=int,
                        help="reference mode: Adam steps per stage (SPIN's num_smplify_iters, 100); fast mode: "
                             "Levenberg-Marquardt body iterations (25)")
    parser.add_argument("--smplifyx-iters", type=int, nargs="+", metavar="N",
                        help="SMPL-X models: SMPLify-X's fast-mode LM iterations per stage, one number per stage "
                             "(default: SMPLify-X fast mode's, docs/smplifyx.md)")
    parser.add_argument("--smplifyx-camera-iters", type=int, help="SMPL-X models: SMPLify-X's camera-stage LM "
                                                                  "iterations (default: its fast mode's)")
    parser.add_argument("--smplify-threshold", type=float, help="fits with a loss above it do not supervise (100)")
    add_fit_filter_options(parser, "only the fits that meet every bar given supervise (besides SPIN's "
                                   "--smplify-threshold; none by default, as SPIN); a new loop fit is judged by its "
                                   "own record")
    parser.add_argument("--smplify-device", help="where SMPLify runs: auto (default: the training device) or cpu")
    parser.add_argument("--no-seed-fits", action="store_true",
                        help="do not fit training samples that have no fit yet before training")
    parser.add_argument("--num-workers", type=count(0), help="DataLoader workers (default 4)")
    parser.add_argument("--no-verify-shards", action="store_true",
                        help="do not check every shard's sha256 against its manifest before training (one read of "
                             "each tar); the reader still hashes each shard as it streams")
    parser.add_argument("--on-corrupt-shard", choices=("raise", "skip"),
                        help="a corrupt shard (found up front or while reading): raise (default: stop, naming it) "
                             "or skip (leave it out, warn, count it in the summary)")
    parser.add_argument("--shuffle-buffer", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda")
    parser.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), help="mixed precision on CUDA")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (and fits writes)")
    parser.add_argument("--keep-checkpoints", type=int, metavar="N",
                        help="keep the newest N checkpoints in RUN/checkpoints, deleting older ones after each save "
                             "(default 3; 0 keeps every one: a ResNet-50 run's is ~320 MB)")
    parser.add_argument("--log-every", type=int,
                        help="steps per row of RUN/train_log.csv (10); the logged values are read from the device "
                             "once per row")
    parser.add_argument("--profile-parts", action="store_true",
                        help="time each part of the step (data, network, SMPLify, write-back) in train_log.csv; on "
                             "CUDA this syncs after every part, so it is off by default (then only the step's time)")
    parser.add_argument("--eval-every-epochs", type=int)
    parser.add_argument("--eval-max-samples", type=int)
    parser.add_argument("--run-id", help="the run id on every fit row (default: run folder name + random)")
    parser.add_argument("--no-augment", action="store_true", help="train without SPIN's augmentation")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=cmd_train)


def build_config(args: argparse.Namespace):
    """The `TrainConfig` of the flags given (defaults: SPIN's); with ``--resume``, the run's saved config (its latest
    checkpoint's, `training.run_folder.resume_point`) with the flags given, which may change only
    `training.config.RESUME_SAFE` (else ValueError naming each changed flag)."""
    from training.config import TrainConfig, resumed_config
    from training.run_folder import resume_point

    if not args.resume:
        return _with_flags(TrainConfig(), args)
    saved = resume_point(args.run_dir).config
    return resumed_config(saved, _with_flags(saved, args), name=_flag_of)


def _flag_of(setting: str) -> str:
    """How the user spells a setting: its flag (and the setting, where the flag names it otherwise)."""
    if setting in _FLAGS:
        return f"{_FLAGS[setting]} ({setting})"
    return "--" + setting.replace("_", "-") if setting in _SCALARS else setting


def _with_flags(base, args: argparse.Namespace):
    """``base`` with the settings of the flags given (a flag not given keeps ``base``'s value)."""
    values = {name: getattr(args, name) for name in _SCALARS if getattr(args, name, None) is not None}
    values["run_dir"] = str(args.run_dir)
    for flag, name in (("shards", "shards"), ("eval_shards", "eval_shards"), ("train_splits", "train_splits"),
                       ("eval_splits", "eval_splits"), ("ignore_3d", "ignore_3d_datasets")):
        if getattr(args, flag):
            values[name] = tuple(str(v) for v in getattr(args, flag))
    if args.fits:
        values["fits"] = str(args.fits)
    if args.smplifyx_iters:
        values["smplifyx_stage_iterations"] = tuple(args.smplifyx_iters)
    if args.smplifyx_camera_iters:
        values["smplifyx_camera_iterations"] = args.smplifyx_camera_iters
    if args.on_corrupt_shard:
        values["on_corrupt_shard"] = args.on_corrupt_shard
    for flag, name in (("no_smplify", "run_smplify"), ("no_seed_fits", "seed_missing_fits"),
                       ("no_tensorboard", "tensorboard"), ("no_verify_shards", "verify_shards")):
        if getattr(args, flag):
            values[name] = False
    if args.profile_parts:
        values["profile_parts"] = True
    if args.no_augment:
        values["augment"] = dataclasses.replace(base.augment, enabled=False)
    smplify = base.smplify
    if args.smplify_mode:
        smplify = dataclasses.replace(smplify, mode=args.smplify_mode)
    if args.smplify_iters is not None:
        field = "iterations" if smplify.mode == "reference" else "body_iterations"
        smplify = dataclasses.replace(smplify, **{field: args.smplify_iters})
    weights = {"mask": args.mask_weight, "dsr_mc": args.dsr_mc_weight, "dsr_c": args.dsr_c_weight,
               "graph_shape": args.graph_shape_weight}
    loss = dataclasses.replace(base.loss, **{name: w for name, w in weights.items() if w is not None})
    return dataclasses.replace(base, smplify=smplify, loss=loss, fit_filter=fit_filter_from(args, base.fit_filter),
                               **values)


def cmd_train(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from training.loop import resolve, train

    try:
        config = build_config(args)
        config.validated()                 # --print-config too: it prints the config a run would start with
        if args.print_config:
            print((config if args.resume else resolve(config)).to_json())
            return 0
    except ValueError as err:
        raise FitloopError(str(err)) from None
    summary = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if summary["rank"] != 0:
        return 0
    last = summary["metrics"][-1] if summary["metrics"] else {}
    print(json.dumps({k: summary[k] for k in ("run_dir", "run_id", "step", "fits_version", "wall_s")} |
                     {"shards_skipped": len(summary["shards_skipped"]), "last_metrics": last}))
    return 0
