"""`fitloop shards …`: inspect and check shard sets (stats, ls, verify)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shards", help="inspect and verify shard sets",
                                   description="Inspect and verify shard sets written by fitloop preprocess.")
    commands = parser.add_subparsers(title="shards commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    stats = commands.add_parser("stats", help="samples per dataset and split, rejects per reason",
                                description="Counts of a shard set: samples, per dataset and split, rejected "
                                            "records per reason (from rejects.parquet), sizes.")
    stats.add_argument("dir", type=Path, metavar="DIR")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_stats)

    ls = commands.add_parser("ls", help="the shards of a shard set", description="List the shards of a shard set "
                                                                                  "(name, dataset, split, samples, "
                                                                                  "size, sha256).")
    ls.add_argument("dir", type=Path, metavar="DIR")
    ls.add_argument("--keys", action="store_true", help="also list every sample's key (reads the shards)")
    ls.set_defaults(func=cmd_ls)

    verify = commands.add_parser("verify", help="check every shard against the manifest's sha256",
                                 description="Check each shard's size and sha256 against the manifest, the "
                                             "rejects table's sha256, and look for stray or half-written files. "
                                             "Exit status 1 when anything is wrong; each problem names its file.")
    verify.add_argument("dir", type=Path, metavar="DIR")
    verify.add_argument("--deep", action="store_true", help="also parse every sample and count them")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=cmd_verify)


def cmd_stats(args: argparse.Namespace) -> int:
    from shards.stats import format_stats, shard_stats

    stats = shard_stats(args.dir)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from shards.writer import load_manifest

    manifest = load_manifest(args.dir)
    print(f"{'shard':<32} {'dataset':<10} {'split':<8} {'samples':>8} {'MB':>8}  sha256")
    for shard in manifest["shards"]:
        print(f"{shard['name']:<32} {str(shard['dataset']):<10} {str(shard['split']):<8} {shard['samples']:>8} "
              f"{shard['bytes'] / 1e6:>8.2f}  {shard['sha256'][:16]}")
        if args.keys:
            from shards.reader import iter_shard

            for sample in iter_shard(args.dir / shard["name"], verify=False):
                print(f"    {sample.key}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from shards.reader import verify

    report = verify(args.dir, deep=args.deep)
    if args.json:
        print(json.dumps(asdict(report) | {"ok": report.ok}, indent=2))
    else:
        for problem in report.problems:
            print(f"{args.dir}: {problem}")
        print(f"{args.dir}: {report.shards_checked} shards checked"
              + (f", {report.samples_checked} samples parsed" if args.deep else "")
              + (": OK" if report.ok else f": {len(report.problems)} problem(s)"))
    return 0 if report.ok else 1
