"""`fitloop model …`: inspect, convert and build body models."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fitloop.options import count

MODEL_HELP = ('"open" (default: the open model built from Anny), "open-small" (its 1229-vertex variant for fast '
              'tests), "open-smplx" / "open-smplx-small" (the open whole-body model in SMPL-X\'s layout), or a path '
              'to a real SMPL, SMPL-H or SMPL-X .pkl/.npz')


# --variant -> (builder prefix: "" the SMPL-format build, "smplx-" the SMPL-X-layout one; that builder's variant)
BUILD_VARIANTS = {"full": (("", "full"),), "small": (("", "small"),),
                  "smplx": (("smplx-", "full"), ("smplx-", "small")), "smplx-small": (("smplx-", "small"),)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect, convert and build SMPL-format body models",
                                   description="Inspect, convert and build SMPL-format body models.")
    commands = parser.add_subparsers(title="model commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    info = commands.add_parser("info", help="vertices, faces, joints and betas of a body model",
                               description="Print a summary of a body model: vertex, face, joint and beta counts, "
                                           "and where each of the 49 canonical joints comes from.")
    info.add_argument("--model", default="open", help=MODEL_HELP)
    info.add_argument("--joint-regressor-extra", type=Path, default=None,
                      help="SPIN's J_regressor_extra.npy (9 x 6890) for the dataset joints of a real SMPL")
    info.add_argument("--h36m-regressor", type=Path, default=None,
                      help="SPIN's J_regressor_h36m.npy (17 x 6890), used by evaluation")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)

    convert = commands.add_parser(
        "convert", help="write a chumpy-free .npz copy of an SMPL/SMPL-H/SMPL-X .pkl",
        description="Read a released SMPL-family .pkl without chumpy (a restricted unpickler turns chumpy arrays "
                    "and scipy sparse matrices into numpy, and refuses any other global) and write its arrays to "
                    "a plain .npz that loads with numpy alone. The copy is the same body model: it keeps the "
                    "model's content id, so fits and checkpoints made with the .pkl go on with the .npz (checked "
                    "after writing).")
    convert.add_argument("source", type=Path, help="input .pkl (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl)")
    convert.add_argument("out", type=Path, help="output .npz")
    convert.set_defaults(func=cmd_convert)

    build = commands.add_parser(
        "build-open", help="rebuild the open body model from the anny package",
        description="Rebuild fitloop's open SMPL-format body model from the Anny package (pip install "
                    "'fitloop[open-model]' and anny). The result is committed in fitting/data, so nobody needs "
                    "to run this; it exists so the build is reproducible. The first run parses Anny's assets "
                    "(~1-2 min, ~800 MB cache).")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: fitting/data)")
    build.add_argument("--samples", type=count(100), default=2000,
                       help="bodies sampled for the shape space (default 2000, at least 100)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--cache", type=Path, default=None, help="Anny's asset cache (ANNY_CACHE_DIR)")
    build.add_argument("--variant", choices=list(BUILD_VARIANTS), action="append",
                       help="which file(s) to build: full, small (the SMPL-format open_body*.npz; default: both), "
                            "smplx (both SMPL-X-layout files, open_smplx*.npz), smplx-small (only the small one)")
    build.set_defaults(func=cmd_build_open)

    sampling = commands.add_parser(
        "sampling", help="build GraphCMR's mesh down/upsampling matrices for a body model",
        description="Build the coarse mesh, downsampling D, upsampling U and coarse adjacency A that the graphcmr "
                    "head needs (fitting.mesh_sampling: COMA's quadric half-edge collapse, barycentric upsampling), "
                    "deterministically, and print U·D's reconstruction error on the template and on the body posed "
                    "at the pose prior's component means. Writes only with --out FILE; without it nothing is "
                    "written. The open models' files are committed in fitting/data (graphcmr checkpoints record "
                    "their digest): rebuilding one means naming it, --out fitting/data/open_body_sampling.npz. "
                    "For a real SMPL, GraphCMR's own data/mesh_downsampling.npz is read as is (--mesh-sampling).")
    sampling.add_argument("--model", default="open", help=MODEL_HELP)
    sampling.add_argument("--vertices", type=int, default=None,
                          help="coarse vertices (default: GraphCMR's 1723, or a quarter of a smaller mesh)")
    sampling.add_argument("--out", type=Path, default=None,
                          help="write the matrices to this .npz (default: write nothing, only print the figures; "
                               "the committed file of an open model is rebuilt only when named here)")
    sampling.set_defaults(func=cmd_sampling)


def cmd_info(args: argparse.Namespace) -> int:
    from fitting.body_model import load_body_model

    model = load_body_model(args.model, joint_regressor_extra=args.joint_regressor_extra,
                            h36m_regressor=args.h36m_regressor)
    info = model.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} ({info['family']}), id {info['model_id']}")
    columns, unused = info["file_shape_directions"], info["file_shape_directions"] - info["betas"]
    if info["family"] == "smplx":  # shape directions, then expression ones (smplx reads both from shapedirs)
        shape = (f"betas {info['betas']} (the file's shapedirs have {columns} columns, shape then expression: "
                 f"fitloop fits SPIN's first {info['betas']} shape directions and, in SMPLify-X, 10 expression ones)")
    elif unused > 0:
        shape = (f"betas {info['betas']} (of the file's {columns} shape directions: fitloop fits and stores SPIN's "
                 f"first {info['betas']}; the other {unused} stay at zero)")
    else:
        shape = f"betas {info['betas']}"
    print(f"  vertices {info['vertices']}, faces {info['faces']}, {shape},\n  "
          f"kinematic joints {info['kinematic_joints']} (of its tree's {info['tree_joints']}), canonical joints "
          f"{info['joints']}")
    print(f"  Human3.6M evaluation regressor: {'yes' if info['h36m_regressor'] else 'no'}")
    print("  canonical joints:")
    for joint, source in info["joint_source"].items():
        print(f"    {joint:<20} {source}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import numpy as np

    from core.errors import FitloopError, ModelFileError
    from fitting.body_model import detect_family, load_body_model, read_model_arrays

    if args.out.suffix != ".npz":
        raise FitloopError(f"{args.out}: the copy must be named .npz (it is one: other tools go by the name); "
                           f"choose a name ending in .npz")
    if args.out.is_dir():
        raise FitloopError(f"{args.out}: a folder is in the way of the copy; name a file, e.g. {args.out}/"
                           f"{args.source.stem}.npz")
    arrays, skipped = read_model_arrays(args.source)
    family = detect_family(arrays, args.source, skipped)
    source_id = load_body_model(args.source).model_id
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        copy_id = load_body_model(tmp).model_id
        if copy_id != source_id:  # cannot happen unless reading or writing lost a value: never leave such a copy
            raise ModelFileError(f"{args.out}: the copy's content id {copy_id} differs from {args.source}'s "
                                 f"{source_id}; nothing written")
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk, ...) leaves nothing behind
    print(f"wrote {args.out} ({family}, id {copy_id}, the same as {args.source.name}'s; {len(arrays)} arrays: "
          f"{', '.join(sorted(arrays))})")
    if skipped:
        print(f"skipped non-array entries: {', '.join(sorted(skipped))}")
    return 0


def cmd_build_open(args: argparse.Namespace) -> int:
    from assets import open_model, open_smplx
    from core.errors import FitloopError
    from fitting.body_model import DATA_DIR

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise FitloopError(f"--out {args.out} is a file: give the folder to write the model files into")
    chosen = args.variant or ["full", "small"]
    written = {}
    for build, prefix in ((open_model.build_and_save, ""), (open_smplx.build_and_save, "smplx-")):
        variants = tuple(dict.fromkeys(v for c in chosen for (p, v) in BUILD_VARIANTS[c] if p == prefix))
        if variants:
            written.update({prefix + variant: path for variant, path in build(
                args.out or DATA_DIR, samples=args.samples, seed=args.seed, cache_dir=args.cache,
                variants=variants).items()})
    for variant, path in written.items():
        print(f"{variant}: {path}")
    return 0


def cmd_sampling(args: argparse.Namespace) -> int:
    import torch

    from fitting.body_model import load_body_model
    from fitting.mesh_sampling import (
        build_for_model,
        check_sampling_path,
        committed_path,
        load_sampling,
        reconstruction_error,
        sampling_digest,
        save_sampling,
    )
    from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior

    out = args.out
    if out is not None:
        check_sampling_path(out)  # before the build, which takes a while
    sampling = build_for_model(args.model, args.vertices)
    if out is not None:
        save_sampling(out, sampling)
    body = load_body_model(args.model)
    means = MaxMixturePrior.from_file(DEFAULT_PRIOR).means.detach().float()
    betas = torch.zeros(len(means), body.num_betas)
    with torch.no_grad():
        posed = body(betas, means, torch.zeros(len(means), 3)).vertices.double().numpy()
    template = body.layer.v_template.detach().double().numpy()[None]
    digest = sampling_digest(sampling)
    print(f"{f'wrote {out}' if out is not None else 'built'}: {sampling.num_vertices} -> {sampling.num_coarse} "
          f"vertices, {len(sampling.faces)} faces, matrices' digest {digest[:12]} (a graphcmr checkpoint records "
          f"the one it trained with)")
    for name, meshes in (("template", template), (f"posed at the {len(means)} prior means", posed)):
        mean, worst = reconstruction_error(sampling, meshes)
        print(f"  U·D reconstruction error, {name}: mean {1000 * mean:.2f} mm, max {1000 * worst:.1f} mm")
    if out is None:
        committed = committed_path(args.model)
        same = (f"; it {'matches' if digest == sampling_digest(load_sampling(committed)) else 'differs from'} the "
                f"committed {committed.name}, which is rebuilt only when named: --out {_shown(committed)}"
                if committed is not None and committed.is_file() else "")
        print(f"nothing written (no --out); to write it, pass --out FILE{same}")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working folder where it is inside it (fitting/data/… from the repository)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
