"""`fitloop preprocess DATASET --root PATH --out DIR`: convert a dataset, as its users unpack it, into a shard set."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fitloop.errors import FitloopError

# Splits that are unions of others: converting them as well would write every person twice.
AGGREGATE_SPLITS = ("all", "trainval")
# Options that name one annotation file: one file is one split, so the split must be said.
SINGLE_FILE_OPTIONS = ("annotation_file", "npz_file")
# What --root should be, per dataset, for the one-line error when it is not a folder.
EXPECTED_ROOT = {
    "coco": "the COCO folder (person_keypoints_<split>*.json in it or in annotations/, images in <subset>/)",
    "mpii": "the MPII folder (the release .mat, train.h5/valid.h5 or mpii_<split>.json, and images/)",
    "lsp": "lsp_dataset (joints.mat and images/im0001.jpg ...)",
    "lsp-orig": "lsp_dataset_original (joints.mat and images/im0001.jpg ...)",
    "lspet": "lspet_dataset (joints.mat and images/im00001.jpg ...)",
    "spin-npz": "the image root SPIN's imgname paths are relative to (and --option npz_file=...)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess", help="convert a dataset into webdataset shards (crops, arrays, metadata, rejects, manifest)",
        description="Read a dataset as its users unpack it (docs/datasets.md) and write a shard set to DIR: one "
                    "sample per person (a JPEG crop with margin, .npy arrays, .json metadata with the crop "
                    "transform), rejects.parquet for every record that did not become a sample, and "
                    "manifest.json (docs/shards.md). Without --split, every split the adapter finds files for "
                    "is converted (not the unions 'all' and 'trainval').")
    parser.add_argument("dataset", metavar="DATASET", help="coco, mpii, lsp, lsp-orig, lspet or spin-npz")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder, as unpacked")
    parser.add_argument("--out", type=Path, required=True, help="the shard set's folder")
    parser.add_argument("--split", action="append", default=None, help="a split to convert (repeatable)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an adapter option (repeatable), e.g. annotation_file=test_coco.json, min_joints=8, "
                             "image_dir=/data/images (docs/datasets.md lists them)")
    parser.add_argument("--crop-res", type=int, default=None, help="stored crop side in px (default 320)")
    parser.add_argument("--crop-margin", type=float, default=None,
                        help="stored crop side / person box side (default 1.5)")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="JPEG quality (default 90)")
    parser.add_argument("--samples-per-shard", type=int, default=None, help="samples per shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace a shard set already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the manifest's counts as JSON")
    parser.set_defaults(func=cmd_preprocess)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict; FitloopError on a pair without '=' or a key given twice."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise FitloopError(f"--option {pair!r} is not KEY=VALUE")
        if key.strip() in options:
            raise FitloopError(f"--option {key.strip()} is given twice")
        options[key.strip()] = value.strip()
    return options


def open_splits(dataset: str, root: Path, splits: list[str] | None, options: dict[str, str]) -> list[tuple]:
    """[(split, first output or None, the rest)] for the splits to convert, each already started, so that missing
    files raise here and not halfway through writing. Without ``splits``, every non-union split of the adapter
    whose files exist; one whose files are missing is skipped with a note."""
    from pipelines.adapters import ADAPTERS, DatasetError, iter_dataset

    if dataset not in ADAPTERS:
        raise FitloopError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(ADAPTERS))}")
    if not root.is_dir():
        expected = EXPECTED_ROOT.get(dataset, "the dataset's folder")
        raise FitloopError(f"--root {root} is not a folder; expected {expected}")
    explicit = splits is not None
    candidates = splits if explicit else [s for s in ADAPTERS[dataset].splits if s not in AGGREGATE_SPLITS]
    opened, errors = [], []
    for split in candidates:
        outputs = iter_dataset(dataset, root, split, **options)
        try:
            first = next(outputs, None)
        except DatasetError as err:
            if explicit:
                raise
            errors.append(f"{split}: {err}")
            continue
        opened.append((split, first, outputs))
    if not opened:
        raise FitloopError(f"{dataset}: nothing to convert under {root}: {errors[0] if errors else 'no splits'}")
    file_options = [o for o in SINGLE_FILE_OPTIONS if o in options]
    if not explicit and file_options and len(opened) > 1:
        raise FitloopError(f"--option {file_options[0]} names one file; say which split it holds with --split "
                           f"({', '.join(s for s, _, _ in opened)})")
    for error in errors:
        print(f"fitloop preprocess: skipping split {error}", file=sys.stderr)
    return opened


def cmd_preprocess(args: argparse.Namespace) -> int:
    import itertools

    from tqdm import tqdm

    from shards.writer import ShardConfig, existing_shard_set, write_shards

    overrides = {"crop_res": args.crop_res, "crop_margin": args.crop_margin, "jpeg_quality": args.jpeg_quality,
                 "samples_per_shard": args.samples_per_shard}
    config = ShardConfig(**{k: v for k, v in overrides.items() if v is not None})
    options = parse_options(args.option)
    if existing_shard_set(args.out) and not args.overwrite:  # say so before reading anything
        raise FitloopError(f"{args.out} already holds a shard set; choose another --out, or pass --overwrite")
    root = args.root.resolve()  # absolute, so the lineage in every sample and the manifest points at the files
    opened = open_splits(args.dataset, root, args.split, options)
    inputs = [{"dataset": args.dataset, "split": split, "root": str(root), "options": options}
              for split, _, _ in opened]
    records = itertools.chain.from_iterable(
        itertools.chain([] if first is None else [first], rest) for _, first, rest in opened)
    with tqdm(desc=f"{args.dataset} ({', '.join(s for s, _, _ in opened)})", unit=" records", file=sys.stderr,
              disable=args.no_progress) as bar:
        manifest = write_shards(records, args.out, config, inputs=inputs, overwrite=args.overwrite,
                                on_item=lambda _: bar.update())
    counts = manifest["counts"]
    if args.json:
        print(json.dumps({k: manifest[k] for k in ("counts", "by_dataset", "rejects_by_reason")}
                         | {"out": str(args.out), "shards": len(manifest["shards"])}))
        return 0
    print(f"wrote {args.out}: {counts['written']} samples in {len(manifest['shards'])} shards; read {counts['read']} "
          f"= written {counts['written']} + rejected {counts['rejected']}")
    for dataset, splits in manifest["by_dataset"].items():
        for split, c in splits.items():
            print(f"  {dataset}/{split}: read {c['read']}, written {c['written']}, rejected {c['rejected']}")
    if manifest["rejects_by_reason"]:
        print("  rejects: " + ", ".join(f"{r} {n}" for r, n in manifest["rejects_by_reason"].items())
              + f" (rows in {args.out / manifest['rejects']['file']})")
    return 0
