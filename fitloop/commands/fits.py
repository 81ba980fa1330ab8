"""`fitloop fits …`: the versioned fits table: versions, the best fits with their quality (and filters on it), one
key's best fit and history, diffs, seeding, SPIN interchange, maintenance. A best fit is per body model and per
frame (crop or image): where a table holds several, name one with ``--model`` / ``--frame``."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# `fitloop fits export`: the --format values each target takes, the first the default.
EXPORT_FORMATS = {"smplifyx": ("npz", "json"), "shards": ("spin-npz", "wds", "humandata"), "meshes": ("obj", "ply")}
MODEL_HELP = ('the body model: "open", "open-small", a model file (.pkl/.npz), or its content id '
              '(<family>:<16 hex>, as `fitloop model info` prints)')


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fits", help="the versioned fits table (Delta Lake): versions, diff, seed, import, "
                                                "export",
                                   description="Inspect and maintain a fits table: a Delta Lake table holding one "
                                               "row per fit improvement; the best fit of a key is its lowest loss "
                                               "among the fits of one body model.")
    commands = parser.add_subparsers(title="fits commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    def table_command(name: str, help_: str, func) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        command.add_argument("table", type=Path, help="the fits table (a Delta table folder)")
        command.set_defaults(func=func)
        return command

    versions = table_command("versions", "list the table's versions with their row counts per body model and times",
                             cmd_versions)
    versions.add_argument("--json", action="store_true",
                          help='print a JSON list of {"version", "rows", "timestamp", "body_models"}')

    list_ = table_command("list", "the best fits with their quality record (worst body part, facing, pose prior, "
                                  "candidate spread), optionally only those that meet bars on it", cmd_list)
    _model_options(list_, "whose fits to list (needed when the table holds several)")
    _frame_option(list_, "whose fits to list (needed when the table holds both)")
    list_.add_argument("--dataset", default=None, help="only this dataset's fits (key prefix)")
    add_fit_filter_options(list_, "list only the fits that meet every bar given")
    list_.add_argument("--limit", type=int, default=50, help="print at most this many fits (default 50; 0: all)")
    _at_options(list_)
    list_.add_argument("--json", action="store_true",
                       help='print {"fits": [...], "total", "kept", "failed": {bar: rows}} (arrays left out)')

    show = table_command("show", "the best fit of one key and every fit of it in the log", cmd_show)
    show.add_argument("key", help="sample key, e.g. lsp/im1001")
    _model_options(show, "whose best fit to show (needed when the key has fits of several)")
    _frame_option(show, "whose best fit to show (needed when the key has fits of both)")
    _at_options(show)
    show.add_argument("--json", action="store_true", help="print JSON (pose and betas included)")

    diff = table_command("diff", "how the best fits of one body model changed between two versions", cmd_diff)
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)
    _model_options(diff, "whose fits to compare (needed when the versions hold several)")
    _frame_option(diff, "whose fits to compare (needed when the versions hold both)")
    diff.add_argument("--json", action="store_true")

    seed = commands.add_parser(
        "seed", help="fit every sample of a shard set from the mean pose (SMPLify on Dask) into a fits table",
        description="Seed fits without training: SMPLify from SPIN's mean pose on every sample (or --keys) of a "
                    "shard set, batches fitted on Dask (a local cluster, or --dask-address), and the improvements "
                    "on the body model's best fits appended in one commit (a new table version). The same path "
                    "as the seed_fits flow and the trainer's seeding (fits.seeding). With an SMPL-X-layout body model, "
                    "samples with whole-body keypoints are fitted by SMPLify-X's fast mode into whole-body rows.")
    seed.add_argument("shards", type=Path, help="the shard set folder (with manifest.json)")
    seed.add_argument("table", type=Path, help="the fits table (created when missing)")
    seed.add_argument("--body-model", default="open", help='"open" (default), "open-small" or a model file')
    seed.add_argument("--joint-regressor-extra", default=None, help="SPIN's J_regressor_extra.npy (real SMPL)")
    seed.add_argument("--pose-prior", default=None,
                      help="SMPLify's Gaussian-mixture pose prior: a file (.npz, SMPLify's gmm_08.pkl) or gmm, the "
                           "shipped one (default)")
    seed.add_argument("--batch-size", type=int, default=64, help="samples per SMPLify call and Dask task")
    seed.add_argument("--keys", nargs="+", default=None, help="fit only these sample keys")
    seed.add_argument("--run-id", default="seed", help="the run id every row names (default: seed)")
    seed.add_argument("--frame", choices=("crop", "image"), default="crop",
                      help="the camera to fit with: crop (default): SPIN's fit frame, the 224 px crop with focal "
                           "5000 px; image: each sample's original image camera (its stored intrinsics: the "
                           "dataset's, EXIF, or the field-of-view guess). Fits of each frame are kept apart")
    seed.add_argument("--mode", choices=("2d", "3d"), default="2d",
                      help="2d (default): SMPLify on the keypoints from the mean pose; 3d: pseudo-ground-truth fits "
                           "to the samples' 3D joints (Human3.6M), one shape per subject, scored by the same "
                           "fitting loss (source fit3d; samples without 3D joints are left out)")
    seed.add_argument("--temporal-weight", type=float, default=0.0,
                      help="mode 3d: smoothness of consecutive frames' body poses (1/rad; 0: off; the benchmark "
                           "uses 300)")
    seed.add_argument("--shape-frames", type=int, default=64,
                      help="mode 3d: samples per subject its one shape is fitted on (default 64)")
    seed.add_argument("--h36m-regressor", default=None,
                      help="mode 3d with a real SMPL-family file: SPIN's J_regressor_h36m.npy, the model points "
                           "that stand for Human3.6M's joints (the open models carry their own)")
    seed.add_argument("--correspondence", choices=("h36m", "canonical"), default="h36m",
                      help="mode 3d: which model points stand for Human3.6M's joints: h36m (default) the body "
                           "model's Human3.6M regressor; canonical: its canonical joints (kinematic hips, no "
                           "regressor needed, less exact)")
    seed.add_argument("--workers", type=int, default=None,
                      help="worker processes of the local Dask cluster (default: one per core; 0: fit in this "
                           "process, no Dask)")
    seed.add_argument("--dask-address", default=None,
                      help="an existing Dask scheduler, e.g. tcp://host:8786 (default: $FITLOOP_DASK_ADDRESS, else "
                           "a local cluster)")
    seed.add_argument("--json", action="store_true", help="print the result as JSON")
    seed.set_defaults(func=cmd_seed)

    import_ = table_command("import", "append SPIN's static fits (N x 82 .npy, row-aligned with its .npz) as fits "
                                      "of a body model; creates the table if needed", cmd_import)
    import_.add_argument("--spin-npz", type=Path, required=True, help="SPIN's .npz whose imgname gives the keys")
    import_.add_argument("--spin-fits", type=Path, required=True, help="SPIN's <dataset>_fits.npy")
    import_.add_argument("--model", required=True,
                         help='the body model the fits belong to (SPIN: the neutral SMPL): "open", "open-small" or '
                              'a model file, loaded to get its content id')
    import_.add_argument("--joint-regressor-extra", type=Path, default=None,
                         help="SPIN's J_regressor_extra.npy, when the trainer loads the model with it")
    import_.add_argument("--dataset", default=None, help="key prefix (default: from the .npz file name)")
    import_.add_argument("--rows-match", action="store_true",
                         help="import a fits file that nothing checks against the .npz (neither SPIN's "
                              "<name>_fits.npy nor with the .keys file `fitloop fits export` writes): you vouch that "
                              "its rows are the .npz's images, in order")
    import_.add_argument("--json", action="store_true")

    export = table_command("export", "write one body model's best fits as SPIN's N x 82 .npy, as one parquet "
                                     "file, as SMPLify-X-layout files of SMPL-X parameters, with a shard set as "
                                     "SPIN's dataset .npz files, or as posed meshes", cmd_export)
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--spin-npz", type=Path, help="SPIN's .npz the .npy is row-aligned with (with --out)")
    target.add_argument("--parquet", type=Path, help="write the best view of every key to this parquet file")
    target.add_argument("--smplifyx", type=Path, metavar="DIR",
                        help="write each best whole-body fit as DIR/<dataset>/<id>.npz (or .json): SMPLify-X's "
                             "result arrays (betas, global_orient, body_pose, hand, jaw, eye poses, expression, "
                             "camera) without pickles, hand poses full axis-angle (docs/fits_table.md)")
    target.add_argument("--shards", type=Path, metavar="DIR",
                        help="a shard set: write its samples with the best fits, in the folder --out, as SPIN's "
                             "dataset .npz files, one per dataset and split (--format spin-npz, default), or as "
                             "webdataset tars, each shard with fit_*.npy and fit.json members added (--format wds), "
                             "or as mmhuman3d's HumanData .npz files (--format humandata --allow-pickle) "
                             "(docs/fits_table.md, Exports)")
    target.add_argument("--meshes", type=Path, metavar="DIR",
                        help="write the posed mesh of each best fit of --model as DIR/<dataset>/<id>.obj or .ply "
                             "(--format), metres in the fit's camera")
    export.add_argument("--format", choices=EXPORT_FORMATS["smplifyx"] + EXPORT_FORMATS["shards"]
                        + EXPORT_FORMATS["meshes"], default=None,
                        help="file format: npz (default) or json with --smplifyx; spin-npz (default), wds or "
                             "humandata with --shards; obj (default) or ply with --meshes")
    export.add_argument("--allow-pickle", action="store_true",
                        help="with --format humandata: write it although it pickles its smpl dict (HumanData.dump "
                             "saves dicts as object arrays; mmhuman3d loads them with allow_pickle=True)")
    export.add_argument("--out", type=Path, help="the .npy to write (with --spin-npz); the folder (with --shards)")
    export.add_argument("--extract-frames", type=Path, metavar="DIR", default=None,
                        help="with --shards: write the video frames the .npz files name, as DIR/<imgname> (SPIN's "
                             "names: Human3.6M images/<name>.jpg, MPI-INF-3DHP <seq>/imageFrames/video_<k>/"
                             "frame_<n>.jpg)")
    export.add_argument("--pixel-offset", type=float, default=None,
                        help="with --shards: px added to part and center (default: SPIN's for the dataset: 1 for "
                             "LSP, HR-LSPET, MPII; else 0)")
    export.add_argument("--dataset", default=None, help="key prefix (default: from the .npz file name)")
    export.add_argument("--fill-missing", action="store_true",
                        help="with --spin-npz: write zeros for rows without a fit, marked as filled in the <out>.keys "
                             "file, so that `fitloop fits import` skips them (SPIN reads the .npy as ever)")
    add_fit_filter_options(export, "write only the best fits that meet every bar given (with --spin-npz, a fit "
                                   "below a bar counts as no fit)")
    _model_options(export, "whose fits to write (needed when the table holds several)")
    _frame_option(export, "whose fits to write with --parquet (SPIN's .npy takes crop-frame fits only)")
    _at_options(export)
    export.add_argument("--overwrite", action="store_true",
                        help="write over an existing output: replace the file (--parquet, --spin-npz --out), or "
                             "replace the files this export writes in the folder (--smplifyx, --shards --out, "
                             "--meshes, --extract-frames; other files there are kept). Without it an existing "
                             "file or non-empty folder is refused")

    compact = table_command("compact", "rewrite the table to its best fits, one row per key and body model "
                                       "(a new version)", cmd_compact)
    compact.add_argument("--json", action="store_true")
    compact.add_argument("--drop-diverged", action="store_true",
                         help="leave out fits with a NaN or infinite pose, betas, cam_t or loss (written before "
                              "fits were checked); the versions before keep them")

    vacuum = table_command("vacuum", "delete files no recent version needs (never the latest version's)",
                           cmd_vacuum)
    vacuum.add_argument("--retention-hours", type=int, default=168,
                        help="versions younger than this stay readable (default 168, a week)")
    vacuum.add_argument("--dry-run", action="store_true", help="only list the files")

    upgrade = table_command("upgrade", "bring a table of fits schema version 2, 3 or 4 to version 5 (a new "
                                       "version): its fits are body-only fits (no hand, jaw, eye poses or "
                                       "expression: null), those of 2 or 3 get no quality record (null), and a "
                                       "version-2 table's say they are crop-frame fits, which all of them are",
                            cmd_upgrade)
    upgrade.add_argument("--json", action="store_true")
    upgrade.add_argument("--drop-diverged", action="store_true",
                         help="leave out fits with a NaN or infinite pose, betas, cam_t or loss (written before "
                              "fits were checked); the versions before keep them")

    relabel = table_command("relabel", "name the body models of a table written before fits named them by content "
                                       "(schema version 1): list its ids, or map each to its model", cmd_relabel)
    relabel.add_argument("--map", action="append", default=[], metavar="OLD_ID=MODEL",
                         help="relabel the fits of OLD_ID as fits of MODEL (open, open-small, a model file, or a "
                              "content id); repeat for each old id")
    relabel.add_argument("--drop-diverged", action="store_true",
                         help="leave out fits with a NaN or infinite pose, betas, cam_t or loss (written before "
                              "fits were checked); the versions before keep them")


def add_fit_filter_options(command: argparse.ArgumentParser, what: str) -> None:
    """The bars of `fits.quality.FitFilter` as options (`fit_filter_from` reads them): ``fitloop fits list /
    export`` and ``fitloop train``."""
    group = command.add_argument_group(
        "fit filter", f"Bars on each fit's quality record (fits.quality; docs/fits_table.md, Quality record): "
                      f"{what}. A fit without a record (imported SPIN fits, tables before schema 4) fails every "
                      f"bar given.")
    group.add_argument("--max-reprojection", type=float, metavar="PX",
                       help="the worst body part (torso, head, arms, legs) at most PX px from its keypoints, in the "
                            "224 px fit frame (a fit with no part measured fails)")
    group.add_argument("--require-facing", action="store_true",
                       help="the fit must not face the other way than its keypoints say (facing >= -0.2; side "
                            "views, where 2D keypoints cannot tell, pass; a fit without torso keypoints fails)")
    group.add_argument("--max-pose-prior", type=float, metavar="E",
                       help="the pose prior's energy (the GMM prior's value, unweighted, as the pose_prior column) "
                            "at most E")
    group.add_argument("--max-candidate-spread", type=float, metavar="MM",
                       help="the candidates the fit was chosen among agree within MM mm PA-MPJPE (a fit of one "
                            "candidate passes)")


def fit_filter_from(args: argparse.Namespace, base=None):
    """The `fits.quality.FitFilter` of the options `add_fit_filter_options` added: ``base`` (default: no bar) with
    the bars given; FitloopError for a bad value."""
    from dataclasses import replace

    from core.errors import FitloopError
    from fits.quality import FitFilter

    values = {name: getattr(args, flag) for flag, name in (
        ("max_reprojection", "max_reprojection_px"), ("max_pose_prior", "max_pose_prior"),
        ("max_candidate_spread", "max_candidate_spread_mm")) if getattr(args, flag) is not None}
    if args.require_facing:
        values["require_facing"] = True
    try:
        return replace(base or FitFilter(), **values)
    except ValueError as err:
        raise FitloopError(f"fit filter: {err}") from None


def _model_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--model", default=None, help=f"{MODEL_HELP}: {what}")
    command.add_argument("--joint-regressor-extra", type=Path, default=None,
                         help="SPIN's J_regressor_extra.npy the model file is loaded with (it changes the id)")


def _frame_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--frame", choices=("crop", "image"), default=None,
                         help=f"the camera frame of the fits (crop: SPIN's fit frame; image: the original image's "
                              f"camera): {what}")


def _at_options(command: argparse.ArgumentParser) -> None:
    at = command.add_mutually_exclusive_group()
    at.add_argument("--version", type=int, default=None, help="read this version (default: the latest)")
    at.add_argument("--timestamp", default=None, help="read the version current at this ISO 8601 time (UTC)")


def _at(args: argparse.Namespace) -> dict:
    from fits.table import parse_timestamp

    return {"version": args.version, "timestamp": parse_timestamp(args.timestamp) if args.timestamp else None}


def model_id(model: str | None, joint_regressor_extra: Path | None = None, *, ids: bool = True) -> str | None:
    """The content id of ``model``: loaded ("open", "open-small", a file), or taken as written when it is a content
    id (``ids``); None when no model is named."""
    from core.errors import FitloopError
    from fitting.body_model import MODEL_ID_PATTERN, load_body_model

    if model is None:
        if joint_regressor_extra is not None:
            raise FitloopError("--joint-regressor-extra goes with --model (a model file)")
        return None
    if ids and MODEL_ID_PATTERN.match(model):
        if joint_regressor_extra is not None:
            raise FitloopError(f"--joint-regressor-extra goes with a model file, not with an id ({model})")
        return model
    return load_body_model(model, joint_regressor_extra=joint_regressor_extra).model_id


@contextmanager
def stages(desc: str, names: tuple[str, ...]) -> Iterator[Callable[[str], None]]:
    """A progress bar over named stages (stderr, off when stderr is not a terminal); yields ``on_stage(name)``."""
    from tqdm import tqdm

    with tqdm(total=len(names), desc=desc, unit="stage", file=sys.stderr, disable=None, leave=False) as bar:
        begun: list[str] = []

        def on_stage(name: str) -> None:
            if begun:
                bar.update(1)
            begun.append(name)
            bar.set_postfix_str(name)

        yield on_stage
        if begun:
            bar.update(1)


def _row(row: dict, full: bool) -> dict:
    """A fit row as json-able values; without ``full``, the arrays are left out."""
    arrays = ("pose", "betas", "cam_t", "intrinsics", "reprojection_loss")
    out = {name: value for name, value in row.items() if full or name not in arrays}
    if out.get("time") is not None:
        out["time"] = out["time"].isoformat()
    return out


def _models_text(models: dict[str, int] | None) -> str:
    if models is None:
        return "(files removed by a vacuum)"
    return ", ".join(f"{model} {rows}" for model, rows in models.items())


def empty_note(table, args: argparse.Namespace, model: str | None, frame: str | None, dataset: str | None,
               lead: str = "no best fit of") -> str:
    """Why a read of ``table`` selected no fit: what was asked (body model, frame, dataset, at the version read)
    against what the table holds there (rows per body model, frame and dataset), so that a mismatch shows."""
    from fits.table import contents_text

    held = table.contents(**_at(args))
    named = args.model if args.model not in (None, model) else None
    asked = ", ".join([(f"body model {named} ({model})" if named else f"body model {model}") if model
                       else "any body model", f"the {frame} frame" if frame else "any frame"]
                      + ([f"dataset {dataset}"] if dataset else []))
    at = (f"{args.timestamp}, " if args.timestamp else "") + f"version {held['version']}" + (
        f" (its latest is {held['latest']})" if held["version"] != held["latest"] else "")
    return f"{lead} {asked}: {args.table} at {at} holds {contents_text(held)}"


def _note(text: str) -> None:
    print(f"fitloop: note: {text}", file=sys.stderr)


def check_export_out(path: Path | None, option: str, overwrite: bool, *, folder: bool) -> None:
    """Refuse to write an export over an existing ``path`` (a file, or a folder the export fills) unless
    ``overwrite``; a folder where a file goes, or a file where a folder goes, is refused even then (nothing is
    removed to make room)."""
    from core.errors import FitloopError

    if path is None or not (path.exists() or path.is_symlink()):
        return
    if folder and not path.is_dir():
        raise FitloopError(f"{option} {path}: a file is there, where this export writes a folder; give a new or "
                           f"empty folder")
    if not folder and path.is_dir():
        raise FitloopError(f"{option} {path}: a folder is there, where this export writes a file; give a file path")
    if overwrite:
        return
    if not folder:
        raise FitloopError(f"{option} {path}: the file exists; give a new file, or pass --overwrite to replace it")
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = repr(entries[0]) + (f" and {len(entries) - 1} more" if len(entries) > 1 else "")
        raise FitloopError(f"{option} {path}: the folder holds {shown}; give a new or empty folder, or pass "
                           f"--overwrite to write over the files this export writes there (others are kept)")


def _write_parquet(rows, path: Path) -> None:
    """``rows`` as the parquet file ``path``, written to a temporary name and renamed (removed on failure)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(rows, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_versions(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    versions = FitsTable.open(args.table).versions()
    if args.json:
        print(json.dumps([{k: v[k] for k in ("version", "rows", "timestamp", "body_models", "readable",
                                             "vacuumed_at")} for v in versions]))
        return 0
    for v in versions:
        models = _models_text(v["body_models"]) if v["readable"] or v["body_models"] else ""
        gone = ("" if v["readable"] else "  [cannot be read: its files were deleted by the vacuum at version "
                f"{v['vacuumed_at']}]" if v["vacuumed_at"] is not None else "  [cannot be read: a data file is "
                "missing, with no vacuum after it]")
        print(f"{v['version']:>6}  {v['timestamp']}  {v['rows']:>10} rows  {v['operation']:<8}"
              + (f"  {models}" if models else "") + gone)
    unreadable = [v["version"] for v in versions if not v["readable"]]
    if unreadable:
        print(f"{len(unreadable)} version(s) can no longer be read (their row counts are the log's); "
              f"the others can")
    return 0


def _number(value: float | None, spec: str, unit: str = "") -> str:
    """A value for a line of text: formatted, or a dash where it is null (never 'None')."""
    return "-" if value is None else f"{value:{spec}}{unit}"


def quality_text(row: dict) -> str:
    """A fit row's quality record in words (one line), or that it has none."""
    from fits.schema import PART_COLUMNS

    if row.get("candidates") is None:
        return "no quality record (imported, or made before fits schema 4)"
    parts = ", ".join(f"{name[len('reprojection_'):-len('_px')].replace('_', ' ')} {_number(row[name], '.1f')}"
                      for name in PART_COLUMNS)
    spread = ("one candidate" if row["candidates"] == 1 else
              f"{row['candidates']} candidates within {_number(row['candidate_spread_mm'], '.1f')} mm")
    return (f"reprojection px: {parts}; facing {_number(row['facing'], '+.2f')}; pose prior "
            f"{_number(row['pose_prior'], '.2f')}; {spread}")


def cmd_list(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.quality import filter_rows
    from fits.schema import PART_COLUMNS
    from fits.table import FitsTable

    if args.limit < 0:
        raise FitloopError(f"--limit must be >= 0, got {args.limit}")
    table = FitsTable.open(args.table)
    fit_filter = fit_filter_from(args)
    model = model_id(args.model, args.joint_regressor_extra)
    best = table.best(**_at(args), dataset=args.dataset, body_model_id=model, frame=args.frame)
    kept, failed = filter_rows(best, fit_filter)
    shown = kept if args.limit == 0 else kept.slice(0, args.limit)
    if args.json:
        print(json.dumps({"total": best.num_rows, "kept": kept.num_rows, "failed": failed,
                          "fits": [_row(r, False) for r in shown.to_pylist()]}))
        return 0
    if best.num_rows == 0:
        print(f"{args.table}: 0 best fits: {empty_note(table, args, model, args.frame, args.dataset)}")
        return 0
    dropped = ", ".join(f"{rows} {bar}" for bar, rows in failed.items())
    print(f"{args.table}: {best.num_rows} best fits of body model {best['body_model_id'][0].as_py()}, "
          f"{best['frame'][0].as_py()} frame"
          + (f"; {kept.num_rows} meet {fit_filter.describe()} (failing: {dropped})" if fit_filter.active else ""))
    print(f"{'key':<40} {'loss px²':>9} {'source':<6} {'worst part':>16} {'facing':>6} {'prior':>7} {'spread mm':>9}")
    for row in shown.to_pylist():
        parts = {name: row[name] for name in PART_COLUMNS if row[name] is not None}
        worst = max(parts, key=parts.get, default=None)
        worst_text = ("-" if worst is None else
                      f"{worst[len('reprojection_'):-len('_px')]} {parts[worst]:.1f}")
        print(f"{row['key']:<40} {_number(row['loss'], '9.2f'):>9} {row['source']:<6} {worst_text:>16} "
              f"{_number(row['facing'], '+.2f'):>6} {_number(row['pose_prior'], '7.2f'):>7} "
              f"{_number(row['candidate_spread_mm'], '9.1f'):>9}")
    if shown.num_rows < kept.num_rows:
        print(f"... and {kept.num_rows - shown.num_rows} more (--limit 0 lists all)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.table import FitsTable, best_of, body_model_counts

    table = FitsTable.open(args.table)
    model = model_id(args.model, args.joint_regressor_extra)
    history = table.history(args.key, **_at(args))
    if history.num_rows == 0:
        raise FitloopError(f"{args.table} has no fit for {args.key!r}")
    best = best_of(history, model, frame=args.frame, where=f"{args.table}, key {args.key}").to_pylist()
    if not best:
        raise FitloopError(f"{args.table} has no fit of body model {model or 'any'} in frame {args.frame or 'any'} "
                           f"for {args.key!r}; its fits are of {', '.join(body_model_counts(history))}, in frames "
                           f"{', '.join(sorted(set(history['frame'].to_pylist())))}")
    best = best[0]
    rows = history.to_pylist()
    if args.json:
        print(json.dumps({"key": args.key, "best": _row(best, True), "history": [_row(r, True) for r in rows]}))
        return 0
    loss = "unscored" if best["loss"] is None else f"{best['loss']:.3f} px²"
    print(f"{args.key}: best loss {loss}, {best['source']} fit of run {best['run_id']}{_when(best, ' (', ')')}, "
          f"{best['time'].isoformat()}")
    print(f"  valid {best['valid']}, betas beyond ±3σ {best['betas_extreme']}, body model {best['body_model_id']}, "
          f"fit config {best['fit_config_hash']}")
    print(f"  betas {' '.join(f'{b:.3f}' for b in best['betas'])}")
    print(f"  global orientation {' '.join(f'{p:.3f}' for p in best['pose'][:3])} (axis-angle, rad)")
    cam_t = "none" if best["cam_t"] is None else " ".join(f"{v:.3f}" for v in best["cam_t"])
    camera = ("SPIN's crop frame (224 px, focal 5000 px)" if best["frame"] == "crop" else
              "the image's camera fx {:.1f} fy {:.1f} cx {:.1f} cy {:.1f} px".format(*best["intrinsics"]))
    print(f"  cam_t {cam_t} m, in {camera}")
    print(f"  quality: {quality_text(best)}")
    print(f"history ({len(rows)} fit(s), oldest first):")
    for r in rows:
        loss = "unscored" if r["loss"] is None else f"{r['loss']:.3f}"
        print(f"  {r['time'].isoformat()}  loss {loss:>10}  {r['source']:<6} run {r['run_id']}{_when(r, ' ')}  "
              f"model {r['body_model_id']}  {r['frame']} frame")
    return 0


def _when(row: dict, before: str = "", after: str = "") -> str:
    """'epoch E, step S' of a training fit; nothing for seed and imported fits, which have neither."""
    if row["epoch"] is None and row["step"] is None:
        return ""
    return f"{before}epoch {row['epoch']}, step {row['step']}{after}"


def cmd_diff(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    diff = FitsTable.open(args.table).diff(args.v1, args.v2,
                                           body_model_id=model_id(args.model, args.joint_regressor_extra),
                                           frame=args.frame)
    if args.json:
        print(json.dumps(diff))
        return 0
    drop = diff["loss_decrease"]
    print(f"version {diff['from_version']} -> {diff['to_version']}: {diff['keys_before']} -> {diff['keys_after']} keys"
          + (f" of body model {diff['body_model_id']}" if diff["body_model_id"] else "")
          + (f", {diff['frame']} frame" if diff["frame"] else ""))
    print(f"  improved {diff['improved']} (of which newly scored {diff['newly_scored']}), added {diff['added']}, "
          f"unchanged {diff['unchanged']}, worse {diff['worse']}, removed {diff['removed']}")
    print(f"  loss decrease (px²): mean {drop['mean']:.3f}, median {drop['median']:.3f}, max {drop['max']:.3f}, "
          f"total {drop['total']:.1f}, mean relative {100 * drop['mean_relative']:.1f}%")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from core.errors import FitloopError
    from fits.seeding import SeedConfig, SeedResult, seed_fits
    from shards.reader import list_shards

    if args.batch_size < 1:
        raise FitloopError(f"--batch-size must be >= 1, got {args.batch_size}")
    from fitting.fit3d import Fit3DConfig
    from fitting.priors import resolve_pose_prior

    if args.mode != "3d" and (args.h36m_regressor is not None or args.correspondence != "h36m"):
        raise FitloopError("--h36m-regressor and --correspondence go with --mode 3d (fits to 3D joints)")
    config = SeedConfig(body_model=args.body_model, batch_size=args.batch_size, run_id=args.run_id,
                        joint_regressor_extra=args.joint_regressor_extra, frame=args.frame, mode=args.mode,
                        fit3d=Fit3DConfig(temporal_weight=args.temporal_weight, correspondence=args.correspondence),
                        shape_frames=args.shape_frames, h36m_regressor=args.h36m_regressor,
                        pose_prior=str(resolve_pose_prior(args.pose_prior)))
    total = len(set(args.keys)) if args.keys else sum(s.samples for s in list_shards(args.shards))
    from pipelines.cluster import choose_cluster, dask_client

    # --workers 0: this process, no Dask; other counts size a local cluster, refused beside a scheduler's address
    address = choose_cluster(args.dask_address, args.workers) if args.workers != 0 or args.dask_address else None
    with tqdm(total=total, desc="seed fits", unit="fit", file=sys.stderr, disable=None) as bar:
        if args.workers == 0 and address is None:
            result = seed_fits(args.shards, args.table, config, keys=args.keys, on_batch=bar.update)
        else:
            with dask_client(address, args.workers) as client:
                result = seed_fits(args.shards, args.table, config, keys=args.keys, client=client,
                                   on_batch=bar.update)
    if result.unfittable:
        _note(f"{len(result.unfittable)} sample(s) cannot make a fit and were left out, e.g. "
              f"{'; '.join(result.unfittable[:3])} (`fitloop shards verify {args.shards}` checks a set; a "
              f"conversion with the default checks rejects such people)")
    result.check_fitted(args.shards, args.table)
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    version = f"version {result.versions[0]}" if result.versions else "no new version"
    left_out = f" ({result.without_3d} without 3D joints left out)" if args.mode == "3d" else ""
    print(f"{args.table}: {result.fitted} samples fitted{left_out} with {result.body_model_id} in the {args.frame} "
          f"frame from {'3D joints' if args.mode == '3d' else 'keypoints'} (fit config {result.fit_config_hash}), "
          f"{result.appended} fits appended ({version}), mean loss "
          f"{SeedResult.mean_loss_text(result.mean_loss)}"
          + (f"; {result.diverged} diverged fit(s) (NaN or inf) left out" if result.diverged else ""))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.interchange import import_spin
    from fits.table import FitsTable

    model = model_id(args.model, args.joint_regressor_extra, ids=False)
    new = not args.table.exists()
    table = FitsTable.create(args.table, exist_ok=True)
    try:
        with stages("import", ("keys", "fits", "write")) as on_stage:
            summary = import_spin(table, args.spin_npz, args.spin_fits, body_model_id=model, dataset=args.dataset,
                                  on_stage=on_stage, rows_match=args.rows_match)
    except FitloopError:
        if new:  # refused: no empty table left behind where there was nothing (only what this command made)
            shutil.rmtree(args.table, ignore_errors=True)
        raise
    if args.json:
        print(json.dumps(summary))
        return 0
    version = f"version {summary['version']}" if summary["version"] is not None else "no new version"
    print(f"{args.spin_fits.name}: {summary['rows']} rows of {summary['dataset']} for body model {model}, "
          f"{summary['appended']} appended ({version}), largest float32 rounding "
          f"{summary['max_float32_rounding']:g}"
          + (f"; {summary['skipped_filled']} row(s) the export filled with zeros (marked in "
             f"{args.spin_fits.name}.keys) skipped: no fit" if summary["skipped_filled"] else "")
          + (f"; {summary['skipped_zero']} all-zero row(s) (pose and betas exactly 0) skipped: no fit"
             if summary["skipped_zero"] else "")
          + ("; rows not checked against the .npz's images (neither SPIN's <name>_fits.npy nor with a .keys file "
             "from `fitloop fits export`): only the row count matched" if summary["rows_checked_by"] == "unchecked"
             else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.interchange import export_spin
    from fits.quality import filter_rows
    from fits.table import FitsTable

    fit_filter = fit_filter_from(args)
    target = next((name for name in EXPORT_FORMATS if getattr(args, name) is not None), None)
    if args.format is not None and (target is None or args.format not in EXPORT_FORMATS[target]):
        raise FitloopError(f"--format {args.format} does not go with " + (f"--{target} (it takes "
                           f"{', '.join(EXPORT_FORMATS[target])})" if target else "--spin-npz or --parquet"))
    fmt = args.format or (EXPORT_FORMATS[target][0] if target else None)
    if args.allow_pickle and fmt != "humandata":
        raise FitloopError("--allow-pickle goes with --format humandata only (no other export writes pickles)")
    if fmt == "humandata" and not args.allow_pickle:
        from fits.humandata_export import PICKLE_REFUSAL

        raise FitloopError(PICKLE_REFUSAL)
    if (args.extract_frames is not None or args.pixel_offset is not None) and args.shards is None:
        raise FitloopError("--extract-frames and --pixel-offset go with --shards")
    if args.spin_npz is not None and args.out is None:
        raise FitloopError("--spin-npz needs --out, the .npy to write")
    out = args.out if args.spin_npz is not None or args.shards is not None else None  # else --out is unused
    for option, path, folder in (("--parquet", args.parquet, False), ("--smplifyx", args.smplifyx, True),
                                 ("--meshes", args.meshes, True), ("--out", out, args.shards is not None),
                                 ("--extract-frames", args.extract_frames, True)):
        check_export_out(path, option, args.overwrite, folder=folder)
    table = FitsTable.open(args.table)
    model = model_id(args.model, args.joint_regressor_extra)
    if args.parquet is not None:
        with stages("export", ("best", "write")) as on_stage:
            on_stage("best")
            best = table.best(**_at(args), dataset=args.dataset, body_model_id=model, frame=args.frame)
            kept, failed = filter_rows(best, fit_filter)
            on_stage("write")
            _write_parquet(kept, args.parquet)
        print(f"wrote {kept.num_rows} best fits to {args.parquet}"
              + (f" ({best.num_rows - kept.num_rows} of {best.num_rows} below the bars "
                 f"{fit_filter.describe()}: {', '.join(f'{n} {bar}' for bar, n in failed.items())})"
                 if fit_filter.active else ""))
        if best.num_rows == 0:
            _note(empty_note(table, args, model, args.frame, args.dataset))
        return 0
    if args.smplifyx is not None:
        from fits.smplifyx_export import export_smplifyx

        with stages("export", ("best", "write")) as on_stage:
            summary = export_smplifyx(table, args.smplifyx, fmt=fmt, dataset=args.dataset,
                                      body_model_id=model, frame=args.frame, fit_filter=fit_filter,
                                      on_stage=on_stage, **_at(args))
        print(f"wrote {summary['written']} whole-body fits of body model {summary['body_model_id'] or '(none)'} "
              f"({summary['frame'] or 'no'} frame) under {summary['out']}"
              + (f"; {summary['body_only']} body-only fit(s) left out" if summary["body_only"] else "")
              + (f"; {summary['filtered']} below the bars {fit_filter.describe()}" if summary["filtered"] else ""))
        if summary["written"] + summary["body_only"] + summary["filtered"] == 0:
            _note(empty_note(table, args, model, args.frame, args.dataset))
        return 0
    if args.shards is not None and fmt == "wds":
        return _export_fit_tars(args, table, model, fit_filter)
    if args.shards is not None and fmt == "humandata":
        return _export_humandata(args, table, model, fit_filter)
    if args.shards is not None:
        return _export_spin_datasets(args, table, model, fit_filter)
    if args.meshes is not None:
        return _export_meshes(args, table, fmt, fit_filter)
    if args.frame == "image":
        raise FitloopError("SPIN's fits file holds crop-frame fits only (its camera is the 224 px crop's); export "
                           "image-frame fits with --parquet")
    with stages("export", ("keys", "best", "write")) as on_stage:
        summary = export_spin(table, args.spin_npz, args.out, dataset=args.dataset, fill_missing=args.fill_missing,
                              body_model_id=model, fit_filter=fit_filter, on_stage=on_stage, **_at(args))
    print(f"wrote {summary['out']}: {summary['rows']} rows of {summary['dataset']}, {summary['exported']} fits of "
          f"body model {summary['body_model_id'] or '(none)'}, {summary['filled']} filled with zeros"
          + (f" (marked in {summary['out']}.keys: an import skips them)" if summary["filled"] else "")
          + (f" ({summary['filtered']} best fits below the bars {fit_filter.describe()})" if fit_filter.active
             else ""))
    if summary["exported"] + summary["filtered"] == 0:
        _note(empty_note(table, args, model, "crop", summary["dataset"]))
    return 0


def _smpl_text(file: dict) -> str:
    """What a shard-set export file's SMPL rows hold (`fits.exports.SmplColumns.counts`), for its summary line."""
    under = file["fits_under_ground_truth"]
    return (f"{file['rows']} rows, {file['fits']} with a fit"
            + (f", {file['ground_truth']} with ground-truth SMPL (has_fit 0)" if file["ground_truth"] else "")
            + (f" kept over {under} fit(s) of the table" if under else ""))


def _shards_note(args: argparse.Namespace, table, model: str | None, fits: int, filtered: int) -> None:
    """Say why a shard-set export wrote no fit: none of the set's samples has one of the body model and frame."""
    if fits + filtered == 0:
        lead = f"no sample of {args.shards} has a best fit of"
        _note(empty_note(table, args, model, args.frame or "crop", None, lead=lead))


def _export_spin_datasets(args: argparse.Namespace, table, model: str | None, fit_filter) -> int:
    from core.errors import FitloopError
    from fits.exports import export_spin_datasets

    if args.out is None:
        raise FitloopError("--shards needs --out, the folder to write SPIN's .npz files to")
    with stages("export", ("best", "read", "write")) as on_stage:
        summary = export_spin_datasets(table, args.shards, args.out, body_model_id=model,
                                       frame=args.frame or "crop", fit_filter=fit_filter,
                                       pixel_offset=args.pixel_offset, extract_frames=args.extract_frames,
                                       on_stage=on_stage, **_at(args))
    for file in summary["files"]:
        print(f"wrote {file['path']}: {_smpl_text(file)}" + (", 3D joints (S)" if file["joints_3d"] else ""))
    print(f"fits of body model {summary['body_model_id'] or '(none)'}, {summary['frame']} frame"
          + (f"; {summary['filtered']} best fits below the bars {fit_filter.describe()}" if fit_filter.active
             else "") + (f"; {summary['frames']} video frames under {args.extract_frames}" if summary["frames"]
                         else ""))
    _shards_note(args, table, model, sum(f["fits"] + f["fits_under_ground_truth"] for f in summary["files"]),
                 summary["filtered"])
    return 0


def _export_fit_tars(args: argparse.Namespace, table, model: str | None, fit_filter) -> int:
    from core.errors import FitloopError
    from fits.exports import export_fit_tars

    if args.out is None:
        raise FitloopError("--shards needs --out, the folder to write the tars to")
    if args.extract_frames is not None or args.pixel_offset is not None:
        raise FitloopError("--extract-frames and --pixel-offset go with --format spin-npz")
    with stages("export", ("best", "write")) as on_stage:
        summary = export_fit_tars(table, args.shards, args.out, body_model_id=model, frame=args.frame or "crop",
                                  fit_filter=fit_filter, on_stage=on_stage, **_at(args))
    print(f"wrote {summary['shards']} tars under {args.out}: {summary['samples']} samples, {summary['fits']} with a "
          f"fit of body model {summary['body_model_id'] or '(none)'} ({summary['frame']} frame)"
          + (f"; {summary['filtered']} best fits below the bars {fit_filter.describe()}" if fit_filter.active
             else ""))
    _shards_note(args, table, model, summary["fits"], summary["filtered"])
    return 0


def _export_humandata(args: argparse.Namespace, table, model: str | None, fit_filter) -> int:
    from core.errors import FitloopError
    from fits.humandata_export import export_humandata

    if args.out is None:
        raise FitloopError("--shards needs --out, the folder to write the HumanData .npz files to")
    if args.extract_frames is not None or args.pixel_offset is not None:
        raise FitloopError("--extract-frames and --pixel-offset go with --format spin-npz")
    with stages("export", ("best", "read", "write")) as on_stage:
        summary = export_humandata(table, args.shards, args.out, allow_pickle=True, body_model_id=model,
                                   frame=args.frame or "crop", fit_filter=fit_filter, on_stage=on_stage,
                                   **_at(args))
    for file in summary["files"]:
        print(f"wrote {file['path']}: {_smpl_text(file)}" + (", 3D keypoints" if file["joints_3d"] else ""))
    print(f"HumanData (smpl dict pickled, as mmhuman3d writes it); fits of body model "
          f"{summary['body_model_id'] or '(none)'}, {summary['frame']} frame"
          + (f"; {summary['filtered']} best fits below the bars {fit_filter.describe()}" if fit_filter.active
             else ""))
    _shards_note(args, table, model, sum(f["fits"] + f["fits_under_ground_truth"] for f in summary["files"]),
                 summary["filtered"])
    return 0


def _export_meshes(args: argparse.Namespace, table, fmt: str, fit_filter) -> int:
    from core.errors import FitloopError
    from fits.exports import export_meshes
    from fitting.body_model import MODEL_ID_PATTERN, load_body_model

    if args.model is None or MODEL_ID_PATTERN.match(args.model):
        raise FitloopError("--meshes needs --model, the body model to pose (open, open-small or a model file; "
                           "not only its id)")
    body = load_body_model(args.model, joint_regressor_extra=args.joint_regressor_extra)
    with stages("export", ("best", "write")) as on_stage:
        summary = export_meshes(table, body, args.meshes, fmt=fmt, dataset=args.dataset, frame=args.frame,
                                fit_filter=fit_filter, on_stage=on_stage, **_at(args))
    print(f"wrote {summary['written']} {fmt} meshes of body model {body.model_id} under {summary['out']}"
          + (f"; {summary['wholebody']} whole-body fit(s) left out" if summary["wholebody"] else "")
          + (f"; {summary['filtered']} below the bars {fit_filter.describe()}" if summary["filtered"] else ""))
    if summary["written"] + summary["wholebody"] + summary["filtered"] == 0:
        _note(empty_note(table, args, body.model_id, args.frame, args.dataset))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    table = FitsTable.open(args.table)
    with stages("compact", ("read", "best", "write")) as on_stage:
        version = table.compact(on_stage=on_stage, drop_diverged=args.drop_diverged)
    rows = next(v["rows"] for v in table.versions() if v["version"] == version)
    print(json.dumps({"version": version, "rows": rows}) if args.json else
          f"compacted to version {version}: {rows} rows, one per key, body model and frame")
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    table = FitsTable.open(args.table)
    removed = table.vacuum(retention_hours=args.retention_hours, dry_run=args.dry_run)
    print(f"{'would delete' if args.dry_run else 'deleted'} {len(removed)} file(s)")
    for path in removed:
        print(f"  {path}")
    if removed and not args.dry_run:
        from fits.table import version_ranges

        versions = table.versions()
        gone = version_ranges([v["version"] for v in versions if not v["readable"]])
        kept = version_ranges([v["version"] for v in versions if v["readable"]])
        print(f"version(s) that can no longer be read: {gone}; that can: {kept} (fitloop fits versions {args.table})")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from fits.schema import FITS_SCHEMA_VERSION
    from fits.table import upgrade_table

    result = upgrade_table(args.table, drop_diverged=args.drop_diverged)
    if args.json:
        print(json.dumps(result))
    elif result["version"] is None:
        print(f"{args.table}: already fits schema version {FITS_SCHEMA_VERSION}, nothing to do")
    else:
        frame = " say they are crop-frame fits," if result["from_version"] < 3 else ""
        record = " have no quality record and" if result["from_version"] < 4 else ""
        print(f"{args.table}: version {result['version']}, {result['rows']} rows of schema version "
              f"{result['from_version']} now{frame}{record} are body-only fits (schema version "
              f"{FITS_SCHEMA_VERSION})"
              + (f"; {result['dropped']} diverged fit(s) left out" if result["dropped"] else ""))
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.table import relabel_body_models, stored_body_models
    from fitting.body_model import MODEL_ID_PATTERN

    if not args.map:
        models = stored_body_models(args.table)
        old = [m for m in models if not MODEL_ID_PATTERN.match(m)]
        print(f"{args.table}: {sum(models.values())} rows")
        for m, rows in models.items():
            print(f"  {m:<40} {rows:>10} rows" + ("  old id: map it with --map" if m in old else ""))
        if old:
            print(f"relabel with: fitloop fits relabel {args.table} " + " ".join(f"--map '{m}=MODEL'" for m in old))
        return 0
    mapping = {}
    for item in args.map:
        old, sep, model = item.partition("=")
        if not sep or not old or not model:
            raise FitloopError(f"--map takes OLD_ID=MODEL, got {item!r}")
        mapping[old] = model_id(model)
    result = relabel_body_models(args.table, mapping, drop_diverged=args.drop_diverged)
    print(f"{args.table}: version {result['version']}, {result['rows']} rows"
          + (f" ({result['dropped']} diverged fit(s) left out)" if result["dropped"] else ""))
    for old, (new, rows) in result["relabelled"].items():
        print(f"  {old} -> {new}: {rows} rows")
    return 0
