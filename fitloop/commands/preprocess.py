"""`fitloop preprocess DATASET --root PATH --out DIR`: convert a dataset, as its users unpack it, into a shard set."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fitloop.options import count


class AdapterNames:
    """The registered adapters' names (`pipelines.adapters.ADAPTERS`), read when argparse first needs them (a help
    text or a value to check), so that other commands do not pay for importing every adapter."""

    def __iter__(self):
        from pipelines.adapters import ADAPTERS

        return iter(sorted(ADAPTERS))

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess", help="convert a dataset into webdataset shards (crops, arrays, metadata, rejects, manifest)",
        description="Read a dataset as its users unpack it (docs/datasets.md) and write a shard set to DIR: one "
                    "sample per person (a JPEG crop with margin, .npy arrays, .json metadata with the crop "
                    "transform), rejects.parquet for every record that did not become a sample, and "
                    "manifest.json (docs/shards.md). Without --split, every split the adapter finds files for "
                    "is converted (not the unions 'all' and 'trainval'). DIR is new, empty, or holds a shard set: "
                    "fitloop removes only files it wrote and refuses a folder with others. A run that failed or "
                    "was killed resumes when started again with the same --out: the shards it finished are kept. "
                    "An annotation file that cannot be read, or a conversion in which no record became a sample, "
                    "is an error (exit 1).")
    parser.add_argument("dataset", metavar="DATASET", choices=AdapterNames(),
                        help="the dataset's format: %(choices)s")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder, as unpacked")
    parser.add_argument("--out", type=Path, required=True, help="the shard set's folder")
    parser.add_argument("--split", action="append", default=None, help="a split to convert (repeatable)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an adapter option (repeatable), e.g. annotation_file=test_coco.json, min_joints=8, "
                             "image_dir=/data/images (docs/datasets.md lists them)")
    # 8: shards.writer.MIN_CROP_RES, not imported here (`fitloop --help` imports no numpy)
    parser.add_argument("--crop-res", type=count(8), default=None, help="stored crop side in px (default 320)")
    parser.add_argument("--crop-margin", type=float, default=None,
                        help="stored crop side / person box side (default 1.5)")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="JPEG quality (default 90)")
    parser.add_argument("--samples-per-shard", type=count(1), default=None, help="samples per shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a shard set already in --out (finished or not) instead of refusing or resuming; "
                             "files fitloop did not write are never removed (such a folder is refused)")
    parser.add_argument("--workers", type=count(1), default=None,
                        help="write chunks on a local Dask cluster of this many worker processes (not with "
                             "--dask-address or $FITLOOP_DASK_ADDRESS)")
    parser.add_argument("--dask-address", default=None, metavar="tcp://HOST:PORT",
                        help="write chunks on an existing Dask cluster (default: $FITLOOP_DASK_ADDRESS if set); "
                             "it must have a worker within 60 s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the manifest's counts as JSON")
    parser.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from tqdm import tqdm

    from pipelines.cluster import check_scheduler, choose_cluster, dask_client
    from pipelines.preprocess import DatasetSpec, open_datasets, parse_options, write_shard_set
    from shards.writer import ShardConfig, check_out_dir

    overrides = {"crop_res": args.crop_res, "crop_margin": args.crop_margin, "jpeg_quality": args.jpeg_quality,
                 "samples_per_shard": args.samples_per_shard}
    config = ShardConfig(**{k: v for k, v in overrides.items() if v is not None})
    spec = DatasetSpec(args.dataset, str(args.root), tuple(args.split) if args.split else None,
                       parse_options(args.option))
    out = args.out.resolve()  # absolute before it goes to Dask workers, whose working folder is not this one
    if check_out_dir(out, args.overwrite):  # a finished set in the way fails here, before anything is read
        print(f"fitloop preprocess: resuming the unfinished shard set in {out}", file=sys.stderr)
    address = choose_cluster(args.dask_address, args.workers)  # --workers with an address: refused, not ignored
    if address:
        check_scheduler(address)  # an address where no scheduler answers fails here, within seconds
    records, inputs = open_datasets([spec])  # a bad root or missing files fail here, before any output
    parallel = args.workers is not None or address
    cluster = dask_client(args.dask_address, args.workers) if parallel else nullcontext(None)
    with cluster as client, tqdm(desc=args.dataset, unit=" records", file=sys.stderr,
                                 disable=args.no_progress) as bar:
        manifest = write_shard_set(records, inputs, out, config, client=client, overwrite=args.overwrite,
                                   on_item=lambda _: bar.update())
    counts = manifest["counts"]
    if args.json:
        print(json.dumps({k: manifest[k] for k in ("counts", "by_dataset", "rejects_by_reason")}
                         | {"out": str(out), "shards": len(manifest["shards"])}))
        return 0
    print(f"wrote {out}: {counts['written']} samples in {len(manifest['shards'])} shards; read {counts['read']} "
          f"= written {counts['written']} + rejected {counts['rejected']}")
    for dataset, splits in manifest["by_dataset"].items():
        for split, c in splits.items():
            print(f"  {dataset}/{split}: read {c['read']}, written {c['written']}, rejected {c['rejected']}")
    if manifest["rejects_by_reason"]:
        print("  rejects: " + ", ".join(f"{r} {n}" for r, n in manifest["rejects_by_reason"].items())
              + f" (rows in {out / manifest['rejects']['file']})")
    return 0
