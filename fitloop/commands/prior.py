"""`fitloop prior …`: train a pose prior (a Gaussian mixture, or with --vae a VPoser-architecture VAE) or with
--lifter the keypoint-to-pose lifter of SMPLify's mean starts, and inspect
one (fitloop .npz of either kind, or SMPLify's gmm_08.pkl)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fitloop.options import count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prior", help="train and inspect pose priors (Gaussian mixture or VAE)",
                                   description="Train and inspect pose priors: SMPLify-style Gaussian mixtures and "
                                               "VPoser-architecture VAEs.")
    commands = parser.add_subparsers(title="prior commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    train = commands.add_parser(
        "train", help="fit a pose prior to BVH clips or AMASS poses",
        description="Fit a Gaussian mixture (full covariances, weighted EM, deterministic for a seed) to body "
                    "poses: BVH clips converted to the body model's joint rotations relative to its T-pose "
                    "(frame 0 of each clip dropped, glitched frames rejected, walking capped at a share of the "
                    "weight, mirrored left/right), or AMASS-style .npz files (poses of SMPL, SMPL-H or SMPL-X: "
                    "SMPL's 21 body joints; SMPL's hand slots are unobserved unless the file is SMPL's). "
                    "Writes fitloop's .npz prior with its provenance: the folder and clips read, and CMU's "
                    "acknowledgment where the clips are CMU's (a CREDITS.md naming mocap.cs.cmu.edu above them, as "
                    "in ../shared/mocap/cmu).")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--bvh", type=Path, metavar="DIR",
                        help="folder of .bvh clips (e.g. ../shared/mocap/cmu; its CLIPS.tsv gives categories)")
    source.add_argument("--amass", type=Path, nargs="+", metavar="FILE",
                        help="AMASS-style .npz files: `poses` (F, 72) SMPL, (F, 156) SMPL-H or (F, 165) SMPL-X, "
                             "relative to SMPL's T-pose (used as they are: not converted to the open model's)")
    train.add_argument("--out", type=Path, required=True, help="output prior (a new .npz file)")
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument("--components", type=count(1), default=8, help="mixture components (default 8, as SMPLify)")
    train.add_argument("--seed", type=count(0), default=0)
    train.add_argument("--model", type=Path, default=None,
                       help="body-model .npz whose T-pose BVH rotations are relative to (default: the open model, "
                            "fitting/data/open_body.npz)")
    train.add_argument("--fps", type=float, default=10.0, help="subsample frames to about this rate (default 10)")
    train.add_argument("--walk-share", type=float, default=0.10,
                       help="most weight walking clips may carry (default 0.10)")
    train.add_argument("--no-mirror", action="store_true", help="do not add left/right mirrored poses")
    train.add_argument("--cov-floor-deg", type=float, default=5.0,
                       help="covariance floor: (this many degrees, in radians)² is added to every covariance "
                            "diagonal (default 5, at least 0.5: SMPLify's float32 fit needs well-conditioned "
                            "covariances)")
    train.add_argument("--hold-out", default=None, metavar="SUBJECTS",
                       help="CMU subject numbers whose BVH clips are not used, comma-separated, or 'none' (default "
                            "for --bvh: 2,9,14,94, the subjects `fitloop bench smplify` evaluates on)")
    train.add_argument("--vae", action="store_true",
                       help="train a VAE prior (VPoser's V02_05 architecture) on the same poses instead of a mixture "
                            "(fitting/vposer.py; --components and --cov-floor-deg do not apply)")
    train.add_argument("--lifter", action="store_true",
                       help="train the keypoint-to-pose lifter that starts SMPLify's fits without an estimate "
                            "(fitting/lifter.py; views, keypoints and noise drawn afresh per batch) on the same poses "
                            "instead of a prior; about 7 min on one CPU thread")
    train.add_argument("--epochs", type=count(1), default=None, help="--vae: training epochs (default 30)")
    train.add_argument("--steps", type=count(2), default=None,
                       help="--lifter: training steps of 512 views (default 5000)")
    train.add_argument("--threads", type=count(1), default=1, help="--vae, --lifter: torch CPU threads (default 1)")
    train.add_argument("--json", action="store_true", help="print the training report as JSON")
    train.set_defaults(func=cmd_train)

    info = commands.add_parser("info", help="components, dimensions and provenance of a prior (or a lifter)",
                               description="Print a pose prior's components, dimensions, weights and provenance. "
                                           "Reads fitloop .npz priors and SMPLify's gmm_08.pkl (safely), and "
                                           "fitloop's keypoint-to-pose lifter files (their training settings "
                                           "and poses).")
    info.add_argument("file", type=Path, help="prior file (.npz or .pkl)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)


def cmd_train(args: argparse.Namespace) -> int:
    from assets.prior_train import FLOOR_WHY, MIN_COV_FLOOR_DEG, summarize, train_prior
    from core.errors import FitloopError

    if not (math.isfinite(args.fps) and args.fps > 0):
        raise FitloopError(f"--fps must be a positive number of frames per second, got {args.fps:g}")
    if not MIN_COV_FLOOR_DEG <= args.cov_floor_deg <= 180.0:
        raise FitloopError(f"--cov-floor-deg must be an angle from {MIN_COV_FLOOR_DEG:g} to 180 (degrees), got "
                           f"{args.cov_floor_deg:g}; {FLOOR_WHY}")
    if not 0.0 < args.walk_share <= 1.0:
        raise FitloopError(f"--walk-share must be in (0, 1], got {args.walk_share:g}")
    if (args.vae or args.lifter) and args.seed >= 2**64:
        raise FitloopError(f"--seed must be below 2**64 for --vae and --lifter (torch's seeds), got {args.seed}")
    if args.out.is_dir():
        raise FitloopError(f"--out {args.out} is a folder; give the file to write, e.g. {args.out / 'prior.npz'}")
    if args.out.suffix != ".npz":
        raise FitloopError(f"--out {args.out}: a prior is an .npz file; name it so, e.g. "
                           f"{args.out.with_suffix('.npz')}")
    if args.out.exists() and not args.overwrite:
        raise FitloopError(f"--out {args.out} exists; pass --overwrite to replace it, or choose a new file")
    kind, sources = ("bvh", [args.bvh]) if args.bvh is not None else ("amass", list(args.amass))
    held_out = None
    if args.hold_out is not None:
        words = [w.strip() for w in args.hold_out.split(",") if w.strip()]
        if words == ["none"]:
            held_out = ()
        elif words and all(w.isdigit() for w in words):
            held_out = tuple(int(w) for w in words)
        else:
            raise FitloopError(f"--hold-out takes CMU subject numbers like 2,9,14,94 or 'none', got {args.hold_out!r}")
    if args.vae and args.lifter:
        raise FitloopError("--vae and --lifter train different things; give one")
    if args.steps is not None and not args.lifter:
        raise FitloopError("--steps is for --lifter (--vae trains for --epochs; a mixture by EM to convergence)")
    if args.epochs is not None and args.lifter:
        raise FitloopError("--epochs is for --vae; the lifter trains for --steps batches of fresh views")
    if args.vae:
        return _train_vae(args, kind, sources, held_out)
    if args.lifter:
        return _train_lifter(args, kind, sources, held_out)
    if args.epochs is not None:
        raise FitloopError("--epochs is for --vae (a Gaussian mixture is fitted by EM to convergence)")
    report = train_prior(sources, args.out, kind=kind, components=args.components, seed=args.seed,
                         model=args.model, fps=args.fps, walk_share=args.walk_share, mirror=not args.no_mirror,
                         cov_floor_deg=args.cov_floor_deg, held_out_subjects=held_out)
    print(json.dumps(report, indent=2) if args.json else summarize(report))
    _notes(report, kind)
    return 0


def _notes(report: dict, kind: str, shown: int = 10) -> None:
    """One note on stderr per clip left out as unreadable (the first ``shown``): which, why, what to do; and for
    AMASS poses, one warning that they were not converted to the open model's T-pose."""
    from assets.prior_train import AMASS_REST_WARNING

    if kind == "amass":
        print(f"fitloop: warning: {AMASS_REST_WARNING}", file=sys.stderr)
    failed = report.get("clip_errors", [])
    for c in failed[:shown]:
        print(f"fitloop: note: left out unreadable clip {c['file']}: {c['reason']}; fix or remove it",
              file=sys.stderr)
    if len(failed) > shown:
        print(f"fitloop: note: and {len(failed) - shown} more unreadable clips (--json lists them all)",
              file=sys.stderr)


def _train_vae(args: argparse.Namespace, kind: str, sources: list[Path], held_out: tuple[int, ...] | None) -> int:
    from assets.vae_train import VAETrainConfig, summarize_vae, train_vae_prior

    config = VAETrainConfig(seed=args.seed, threads=args.threads,
                            **({"epochs": args.epochs} if args.epochs is not None else {}))
    report = train_vae_prior(sources, args.out, kind=kind, model=args.model, fps=args.fps,
                             walk_share=args.walk_share, mirror=not args.no_mirror, held_out_subjects=held_out,
                             config=config)
    print(json.dumps(report, indent=2) if args.json else summarize_vae(report))
    _notes(report, kind)
    return 0


def _info_vae(args: argparse.Namespace) -> int:
    from fitting.vposer import load_vae_prior

    f = load_vae_prior(args.file)
    meta = f.metadata
    summary = {"file": str(args.file), "kind": "vae", "dims": meta.get("dims"), "latent_dim": meta.get("latent_dim"),
               "rec_sigma_deg": meta.get("rec_sigma_deg"), "free_joints": list(f.free_joints), "free_sigma_deg":
               round(math.degrees(f.free_sigma), 6),
               "metadata": meta}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.file}: VAE pose prior (VPoser V02_05 architecture) over SMPL joints 1-21, "
          f"{meta.get('latent_dim', '?')}-dim latent; SMPL's hand slots and {len(f.free_joints)} free joint(s) "
          f"{meta.get('free_joints', list(f.free_joints))} N(0, ({math.degrees(f.free_sigma):.1f} deg)^2)")
    for key in ("source", "rest_pose", "clips", "subjects_used", "held_out_subjects", "frames_used",
                "round_trip_train", "rec_sigma_deg", "acknowledgment", "bvh_conversion_credit", "license", "config"):
        if key in meta:
            value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
            print(f"  {key}: {value}")
    return 0


def _info_lifter(args: argparse.Namespace, meta: dict) -> int:
    if args.json:
        print(json.dumps({"file": str(args.file), "kind": "lifter", "metadata": meta}, indent=2))
        return 0
    poses, history = meta.get("poses", {}), meta.get("training", {}).get("history", [{}])
    print(f"{args.file}: keypoint-to-pose lifter (fitting/lifter.py), {meta.get('blocks')} residual blocks of width "
          f"{meta.get('hidden')}; last training loss (noisy views): rotation {history[-1].get('rot')}, root-relative "
          f"joint RMS {history[-1].get('joint_mm', float('nan')):.0f} mm")
    for key, value in (("subjects_used", poses.get("subjects_used")),
                       ("held_out_subjects", poses.get("held_out_subjects")), ("frames_used", poses.get("frames_used")),
                       ("train_config", meta.get("train_config")), ("acknowledgment", poses.get("acknowledgment"))):
        if value is not None:
            print(f"  {key}: {value if isinstance(value, str) else json.dumps(value)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from core.errors import ModelFileError
    from fitting.lifter import lifter_metadata
    from fitting.priors import load_gmm, pose_prior_kind

    try:
        lifter = lifter_metadata(args.file)
    except ModelFileError:   # no .npz, or a damaged one: the prior readers below say which
        lifter = None
    if lifter is not None:
        return _info_lifter(args, lifter)
    if pose_prior_kind(args.file) == "vae":
        return _info_vae(args)

    gmm = load_gmm(args.file)
    summary = {"file": str(args.file), "components": gmm.num_components, "dims": gmm.dim,
               "weights": [round(float(w), 6) for w in gmm.weights], "metadata": gmm.metadata}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    meta = gmm.metadata
    print(f"{args.file}: {gmm.num_components} components over {gmm.dim} dims "
          f"({'SMPL body pose, 23 joints x axis-angle' if gmm.dim == 69 else 'not a 69-dim SMPL body pose'})")
    print(f"  weights: {', '.join(f'{w:.3f}' for w in gmm.weights)}")
    for key in ("format", "source", "rest_pose", "clips", "subjects_used", "held_out_subjects", "frames_used",
                "frames_rejected_implausible", "walk_share_after", "unobserved_joints", "layouts", "acknowledgment",
                "bvh_conversion_credit", "license"):
        if key in meta:
            value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
            print(f"  {key}: {value}")
    if "config" in meta:
        print(f"  config: {json.dumps(meta['config'])}")
    return 0


def _train_lifter(args: argparse.Namespace, kind: str, sources: list[Path], held_out: tuple[int, ...] | None) -> int:
    from assets.lift_train import LiftTrainConfig, train_lifter
    from fitloop.progress import bar as progress_bar

    config = LiftTrainConfig(seed=args.seed, threads=args.threads,
                             **({"steps": args.steps} if args.steps is not None else {}))
    with progress_bar(config.steps, "training the lifter", "step") as shown:
        def progress(step: int, row: dict) -> None:
            shown.update(step - shown.n)
            shown.set_postfix(joint_mm=row["joint_mm"])
        report = train_lifter(sources, args.out, kind=kind, model=args.model, fps=args.fps,
                              walk_share=args.walk_share, mirror=not args.no_mirror, held_out_subjects=held_out,
                              config=config, progress=progress)
    last = report["history"][-1]
    print(json.dumps(report, indent=2) if args.json else
          f"lifter written to {report['out']}: {report['samples']} training poses, {config.steps} steps of "
          f"{config.batch_size} views in {report['time_train_s']:.0f} s; last {last['step'] % 500 or 500} steps: "
          f"rotation loss {last['rot']:.3f}, root-relative joint RMS {last['joint_mm']:.0f} mm")
    _notes(report, kind)
    return 0
