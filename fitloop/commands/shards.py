"""`fitloop shards …`: inspect and check shard sets (stats, ls, verify, show, render)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shards", help="inspect and verify shard sets",
                                   description="Inspect and verify shard sets written by fitloop preprocess.")
    commands = parser.add_subparsers(title="shards commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    stats = commands.add_parser("stats", help="samples per dataset and split, rejects per reason, keypoint "
                                              "visibility per joint, box sizes",
                                description="Counts of a shard set: samples, per dataset and split, rejected "
                                            "records per reason (from rejects.parquet), sizes; from a scan of "
                                            "every sample (images not decoded): keypoint visibility per joint "
                                            "and person box sizes.")
    stats.add_argument("dir", type=Path, metavar="DIR")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--manifest-only", action="store_true",
                       help="only what the manifest and rejects table say: skip the scan of every sample for "
                            "keypoint visibility per joint and person box sizes")
    stats.set_defaults(func=cmd_stats)

    ls = commands.add_parser("ls", help="the shards of a shard set", description="List the shards of a shard set "
                                                                                  "(name, dataset, split, samples, "
                                                                                  "size, sha256).")
    ls.add_argument("dir", type=Path, metavar="DIR")
    ls.add_argument("--keys", action="store_true", help="also list every sample's key (reads the shards)")
    ls.set_defaults(func=cmd_ls)

    verify = commands.add_parser("verify", help="checksums, every sample's schema, every image decodes",
                                 description="Check each shard's size and sha256 against the manifest, the "
                                             "rejects table's sha256, and look for stray or half-written files; "
                                             "then read every sample: its members, json fields and array shapes, "
                                             "the consistency of its crop and keypoints, and decode its JPEG. "
                                             "Exit status 1 when anything is wrong; each problem names its file "
                                             "and, where it can, the sample.")
    verify.add_argument("dir", type=Path, metavar="DIR")
    depth = verify.add_mutually_exclusive_group()
    depth.add_argument("--quick", action="store_true", help="checksums and files only; do not read the samples")
    depth.add_argument("--deep", action="store_true", help="read every sample (the default; kept for scripts)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=cmd_verify)

    show = commands.add_parser("show", help="one sample: metadata, keypoints, fits history",
                               description="Print one sample's metadata (its json member), its 49 keypoints in "
                                           "original-image and stored-crop px, and, with --fits, every fit of it "
                                           "in the fits table, oldest first.")
    show.add_argument("dir", type=Path, metavar="DIR")
    show.add_argument("key", metavar="KEY", help="sample key, e.g. lsp/im1010")
    show.add_argument("--fits", type=Path, metavar="TABLE", help="a fits table (Delta folder) to show the history of")
    show.add_argument("--version", type=int, default=None, help="read the fits table as of this version")
    show.add_argument("--all-joints", action="store_true", help="also list the joints that are not annotated")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    render = commands.add_parser(
        "render", help="pictures of samples with keypoints and fitted meshes (PNG, contact sheet or HTML page)",
        description="Draw samples' stored crops with their 2D keypoints and skeleton and, with --fits, the best "
                    "fit's mesh (software renderer, no OpenGL). With --version, the best fit as of that table "
                    "version is drawn beside the latest one. One sample to a .png gives its picture; several give "
                    "a contact sheet; a .html gives a page of thumbnails linking to one page per sample "
                    "(picture, metadata, keypoints table, fits history), written next to it in <stem>_files/.")
    render.add_argument("dir", type=Path, metavar="DIR")
    pick = render.add_mutually_exclusive_group(required=True)
    pick.add_argument("--keys", nargs="+", metavar="KEY", help="the samples to draw, in this order")
    pick.add_argument("--sample", type=int, metavar="N", help="draw N samples picked at random (see --seed)")
    render.add_argument("--seed", type=int, default=0, help="seed of --sample's pick (default 0)")
    render.add_argument("--fits", type=Path, metavar="TABLE", help="a fits table: draw each sample's best fit")
    render.add_argument("--version", type=int, default=None, metavar="V",
                        help="also draw the best fit as of table version V, beside the latest")
    render.add_argument("--model", default="open",
                        help='body model to pose the fits with, only its own fits are drawn: "open" (default), '
                             '"open-small", "open-smplx", "open-smplx-small" (the open models), or a real SMPL, '
                             'SMPL-H or SMPL-X .pkl/.npz')
    render.add_argument("--joint-regressor-extra", type=Path, default=None,
                        help="SPIN's J_regressor_extra.npy, with a real SMPL model")
    render.add_argument("--frame", choices=("crop", "image"), default=None,
                        help="draw the best fits of this frame (crop: SPIN's fit frame; image: the original image's "
                             "camera); needed when the table holds fits of both")
    render.add_argument("--size", type=int, default=None, metavar="PX",
                        help="side of each panel, px, 1 to 2048 (default: the stored crop's)")
    render.add_argument("--columns", type=int, default=None, help="contact sheet columns (default: a square grid)")
    render.add_argument("--out", type=Path, required=True, metavar="FILE", help="FILE.png or FILE.html")
    render.set_defaults(func=cmd_render)


def _samples_in(shard_dir: Path) -> int | None:
    """The number of samples the manifest lists (a progress bar's total), or None without a readable one."""
    from shards.writer import ShardSetError, load_manifest

    try:
        return sum(int(shard["samples"]) for shard in load_manifest(shard_dir)["shards"])
    except (ShardSetError, KeyError, TypeError, ValueError):
        return None  # the command itself says what is wrong with it


def cmd_stats(args: argparse.Namespace) -> int:
    from fitloop.progress import bar
    from shards.stats import format_stats, shard_stats

    total = None if args.manifest_only else _samples_in(args.dir)
    with bar(total, "scanning samples", "sample") as progress:
        stats = shard_stats(args.dir, scan=not args.manifest_only, progress=progress.update)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    import sys

    from shards.lookup import shard_keys
    from shards.reader import ShardCorruptError
    from shards.writer import load_manifest

    manifest = load_manifest(args.dir)
    damaged = 0
    print(f"{'shard':<32} {'dataset':<10} {'split':<8} {'samples':>8} {'MB':>8}  sha256")
    for shard in manifest["shards"]:  # a shard a flow wrote from several datasets or splits has none of its own
        print(f"{shard['name']:<32} {shard['dataset'] or 'mixed':<10} {shard['split'] or 'mixed':<8} "
              f"{shard['samples']:>8} {shard['bytes'] / 1e6:>8.2f}  {shard['sha256'][:16]}")
        if not args.keys:
            continue
        listed, last = 0, None
        try:
            for key in shard_keys(args.dir / shard["name"]):
                print(f"    {key}")
                listed, last = listed + 1, key
        except ShardCorruptError as err:  # list what can be read, say where the shard breaks, go on with the next
            damaged += 1
            sys.stdout.flush()  # the keys before the line, when both go to a terminal
            where = f"after sample {last} ({listed} listed)" if last else "before its first sample"
            print(f"fitloop: error: {args.dir}: {shard['name']} is damaged {where}: {err}", file=sys.stderr)
    return 1 if damaged else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fitloop.progress import bar
    from shards.verify import report_json, verify_set

    if args.quick:
        report = verify_set(args.dir, samples=False)
    else:
        with bar(_samples_in(args.dir), "checking samples", "sample") as progress:
            report = verify_set(args.dir, samples=True, progress=progress.update)
    if args.json:
        print(report_json(report))
    else:
        for problem in report.problems:
            print(f"{args.dir}: {problem}")
        print(f"{args.dir}: {report.shards_checked} shards checked"
              + ("" if args.quick else f", {report.samples_checked} samples read, {report.images_decoded} images "
                                       f"decoded")
              + (f", bad samples: {', '.join(report.bad_samples[:10])}" if report.bad_samples else "")
              + (": OK" if report.ok else f": {len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def _json_row(row: dict) -> dict:
    """A fits-table row as json-able values."""
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _describe_intrinsics(sample) -> str:
    """One line on the sample's original-image intrinsics and their source (format-1 samples: the guess)."""
    from core.errors import FitloopError
    from shards.sample import SampleFormatError

    try:
        k = sample.intrinsics
    except SampleFormatError as err:
        raise FitloopError(str(err)) from None
    stored = "" if "intrinsics" in sample.meta else " (not stored: shard format 1)"
    return (f"fx {k.fx:.2f} fy {k.fy:.2f} cx {k.cx:.2f} cy {k.cy:.2f} px, {k.source}{stored}: {k.detail}"
            if k.detail else f"fx {k.fx:.2f} fy {k.fy:.2f} cx {k.cx:.2f} cy {k.cy:.2f} px, {k.source}{stored}")


def _describe_wholebody(sample) -> str:
    """One line on the sample's whole-body keypoints: how many of each part are present, or that it has none."""
    from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_PARTS, wholebody_indices

    if sample.wholebody_2d is None:
        return "whole-body keypoints: none (a body-only sample)"
    present = sample.wholebody_2d[:, 2] > 0
    parts = ", ".join(f"{part.replace('_', ' ')} {int(present[wholebody_indices(names)].sum())}/{len(names)}"
                      for part, names in WHOLEBODY_PARTS.items())
    return f"whole-body keypoints: {int(present.sum())} of {NUM_WHOLEBODY} present ({parts})"


def cmd_show(args: argparse.Namespace) -> int:
    from core.joints import JOINT_NAMES
    from shards.lookup import find_samples
    from shards.verify import unusable

    sample = find_samples(args.dir, [args.key], check=unusable)[0]  # a damaged json: one line, not a traceback
    history = None
    if args.fits is not None:
        from fits.lookup import best_in_history, fit_histories, latest_version
        from fits.table import FitsTable

        table = FitsTable.open(args.fits)
        version = args.version if args.version is not None else latest_version(table)
        history = fit_histories(table, [args.key], version)[args.key]
    if args.json:
        _describe_intrinsics(sample)  # a sample without intrinsics or image size: one line, not a traceback
        print(json.dumps({"key": sample.key, "meta": sample.meta, "intrinsics": sample.intrinsics.to_json(),
                          "keypoints_2d": sample.keypoints_2d.tolist(),
                          "keypoints_crop": sample.keypoints_crop.tolist(),
                          "wholebody_2d": None if sample.wholebody_2d is None else sample.wholebody_2d.tolist(),
                          "wholebody_crop": None if sample.wholebody_crop is None else sample.wholebody_crop.tolist(),
                          "history": None if history is None else [_json_row(r) for r in history]}))
        return 0
    meta = sample.meta
    print(f"{sample.key}: {meta['dataset']} / {meta['split']}, record {meta['record']} of {meta['source']}")
    size = "size unknown" if meta["image_size"] is None else f"{'×'.join(map(str, meta['image_size']))} px"
    print(f"  image {meta['image_root']}/{meta['image_path']} ({size}), "
          f"box centre ({meta['center'][0]:.1f}, {meta['center'][1]:.1f}) px, side {meta['box_side_px']:.1f} px "
          f"(scale {meta['scale']:.4g})")
    crop = meta["crop"]
    print(f"  stored crop {crop['res']} px covering {crop['margin']:g} boxes (the box at {crop['box_side']:.1f} px), "
          f"SMPL {meta['has_smpl']}, 3D joints {meta['has_joints_3d']}")
    print(f"  camera {_describe_intrinsics(sample)}")
    if meta["extra"]:
        print(f"  extra {json.dumps(meta['extra'])}")
    present = sample.keypoints_2d[:, 2] > 0
    print(f"keypoints: {int(present.sum())} of {len(JOINT_NAMES)} annotated")
    print(f"  {'joint':<20} {'image x':>9} {'image y':>9} {'crop x':>8} {'crop y':>8} {'conf':>5}")
    for name, image_kp, crop_kp, seen in zip(JOINT_NAMES, sample.keypoints_2d, sample.keypoints_crop, present):
        if seen:
            print(f"  {name:<20} {image_kp[0]:>9.1f} {image_kp[1]:>9.1f} {crop_kp[0]:>8.1f} {crop_kp[1]:>8.1f} "
                  f"{image_kp[2]:>5.2f}")
        elif args.all_joints:
            print(f"  {name:<20} {'—':>9} {'—':>9} {'—':>8} {'—':>8} {image_kp[2]:>5.2f}")
    print(_describe_wholebody(sample))
    if history is None:
        print("fits: no table given (--fits TABLE)")
        return 0
    print(f"fits in {args.fits} as of version {version}: {len(history)} fit(s), oldest first")
    best = best_in_history(history)
    for i, r in enumerate(history):
        loss = "unscored" if r["loss"] is None else f"{r['loss']:.3f}"
        cam = "—" if r["cam_t"] is None else " ".join(f"{v:.3f}" for v in r["cam_t"])
        when = "".join(f" {what} {r[what]}" for what in ("epoch", "step") if r[what] is not None)  # seeds: none
        print(f"  {'*' if i in best else ' '} {r['time'].isoformat(timespec='seconds')}  loss {loss:>9} px²  "
              f"{r['source']:<6} run {r['run_id']}{when}  cam_t {cam} ({r['frame']} frame)  "
              f"model {r['body_model_id'] or '—'}")
    if best:
        print("  (* the best fit of its body model and frame, the one the table serves: lowest loss, then earliest)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    import sys
    from functools import partial

    from core.errors import FitloopError
    from fitloop.progress import bar
    from render.sample_picture import (
        MAX_PANEL_PX,
        FitPanel,
        contact_sheet,
        fits_by_other_models,
        model_option,
        other_models_note,
        render_sample,
    )
    from shards.lookup import find_samples, pick_samples
    from shards.verify import unusable

    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".html"):
        raise FitloopError(f"--out must end in .png or .html, got {args.out}")
    if args.version is not None and args.fits is None:
        raise FitloopError("--version needs --fits TABLE")
    for option, value in (("--size", args.size), ("--columns", args.columns), ("--sample", args.sample)):
        if value is not None and value < 1:
            raise FitloopError(f"{option} must be >= 1, got {value}" + (" (leave it out for the default)"
                                                                        if option != "--sample" else ""))
    if args.size is not None and args.size > MAX_PANEL_PX:  # the rasteriser's memory grows with the panel's pixels
        raise FitloopError(f"--size must be at most {MAX_PANEL_PX} px (each panel's side), got {args.size}")
    # a sample that cannot be drawn stops the command before anything is written, as `show` does
    check = partial(unusable, picture=True)
    samples = (find_samples(args.dir, args.keys, check) if args.keys
               else pick_samples(args.dir, args.sample, args.seed, check))
    if not samples:
        raise FitloopError(f"{args.dir}: no samples to draw")
    keys = [s.key for s in samples]
    model, latest, older, histories, now, others = None, {}, None, None, None, {}
    if args.fits is not None:
        from fits.lookup import best_fits, fit_histories, latest_version
        from fits.table import FitsTable
        from fitting.body_model import load_body_model

        table = FitsTable.open(args.fits)
        now = latest_version(table)
        model = load_body_model(args.model, joint_regressor_extra=args.joint_regressor_extra)
        latest = best_fits(table, keys, now, body_model_id=model.model_id, frame=args.frame)
        older = (best_fits(table, keys, args.version, body_model_id=model.model_id, frame=args.frame)
                 if args.version is not None else None)
        histories = fit_histories(table, keys, now)  # every model's fits: the page's histories, and what to say
        others = fits_by_other_models(histories, model.model_id)  # of a sample with no fit of this model
        if others:
            models = sorted({m for ids in others.values() for m in ids})
            print(f"fitloop: note: {len(others)} of {len(keys)} sample(s) have no fit by {model.model_id} "
                  f"(--model {args.model}) in {args.fits} v{now}, only fits by other body models, drawn without a "
                  f"mesh: draw them with " + " or ".join(f"{model_option(m)} ({m})" for m in models),
                  file=sys.stderr)
    pictures = []
    with bar(len(samples), "drawing", "sample") as progress:
        for sample in samples:
            if args.fits is None:
                panels = [FitPanel("keypoints", None, missing="no fits table given (--fits)")]
            else:
                panels = [FitPanel(f"best, v{now}", latest.get(sample.key),
                                   other_models_note(others[sample.key]) if sample.key in others else "no fit")]
                if older is not None:
                    panels.append(FitPanel(f"best, v{args.version}", older.get(sample.key),
                                           missing=f"no fit at v{args.version}"))
            pictures.append(render_sample(sample, panels, model, args.size))
            progress.update(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        picture = pictures[0] if len(pictures) == 1 else contact_sheet(pictures, args.columns)
        tmp = args.out.with_name(args.out.name + ".tmp")
        picture.save(tmp, format="PNG")
        tmp.replace(args.out)
        print(f"wrote {args.out}: {len(pictures)} sample(s), {picture.size[0]}×{picture.size[1]} px")
        return 0
    from render.html import PageEntry, files_dir, write_page

    entries = [PageEntry(s, p, None if histories is None else histories[s.key]) for s, p in zip(samples, pictures)]
    fits_note = (f"fits: {args.fits} v{now}" + (f" and v{args.version}" if args.version is not None else "")
                 if args.fits is not None else "no fits table")
    write_page(args.out, entries, f"{args.dir}: {len(entries)} sample(s)", fits_note)
    print(f"wrote {args.out} and {len(entries)} sample page(s) in {files_dir(args.out)}")
    return 0
