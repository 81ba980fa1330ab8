"""`fitloop fits …`: the versioned fits table: versions, one key's best fit and history, diffs, SPIN interchange."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fits", help="the versioned fits table (Delta Lake): versions, diff, import, export",
                                   description="Inspect and maintain a fits table: a Delta Lake table holding one "
                                               "row per fit improvement; the best fit of a key is its lowest loss.")
    commands = parser.add_subparsers(title="fits commands", metavar="COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    def table_command(name: str, help_: str, func) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        command.add_argument("table", type=Path, help="the fits table (a Delta table folder)")
        command.set_defaults(func=func)
        return command

    versions = table_command("versions", "list the table's versions with their row counts and times", cmd_versions)
    versions.add_argument("--json", action="store_true",
                          help='print a JSON list of {"version", "rows", "timestamp"}')

    show = table_command("show", "the best fit of one key and every fit of it in the log", cmd_show)
    show.add_argument("key", help="sample key, e.g. lsp/im1001")
    _at_options(show)
    show.add_argument("--json", action="store_true", help="print JSON (pose and betas included)")

    diff = table_command("diff", "how the best fits changed between two versions", cmd_diff)
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)
    diff.add_argument("--json", action="store_true")

    import_ = table_command("import", "append SPIN's static fits (N x 82 .npy, row-aligned with its .npz); "
                                      "creates the table if needed", cmd_import)
    import_.add_argument("--spin-npz", type=Path, required=True, help="SPIN's .npz whose imgname gives the keys")
    import_.add_argument("--spin-fits", type=Path, required=True, help="SPIN's <dataset>_fits.npy")
    import_.add_argument("--dataset", default=None, help="key prefix (default: from the .npz file name)")
    import_.add_argument("--body-model-id", default=None, help="body model of the fits (default: smpl-neutral-10)")
    import_.add_argument("--json", action="store_true")

    export = table_command("export", "write the best fits as SPIN's N x 82 .npy, or as one parquet file", cmd_export)
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--spin-npz", type=Path, help="SPIN's .npz the .npy is row-aligned with (with --out)")
    target.add_argument("--parquet", type=Path, help="write the best view of every key to this parquet file")
    export.add_argument("--out", type=Path, help="the .npy to write (with --spin-npz)")
    export.add_argument("--dataset", default=None, help="key prefix (default: from the .npz file name)")
    export.add_argument("--fill-missing", action="store_true", help="write zeros for rows without a fit")
    _at_options(export)

    compact = table_command("compact", "rewrite the table to its best fits, one row per key (a new version)",
                            cmd_compact)
    compact.add_argument("--json", action="store_true")

    vacuum = table_command("vacuum", "delete files no recent version needs (never the latest version's)",
                           cmd_vacuum)
    vacuum.add_argument("--retention-hours", type=int, default=168,
                        help="versions younger than this stay readable (default 168, a week)")
    vacuum.add_argument("--dry-run", action="store_true", help="only list the files")


def _at_options(command: argparse.ArgumentParser) -> None:
    at = command.add_mutually_exclusive_group()
    at.add_argument("--version", type=int, default=None, help="read this version (default: the latest)")
    at.add_argument("--timestamp", default=None, help="read the version current at this ISO 8601 time (UTC)")


def _at(args: argparse.Namespace) -> dict:
    from fits.table import parse_timestamp

    return {"version": args.version, "timestamp": parse_timestamp(args.timestamp) if args.timestamp else None}


def _row(row: dict, full: bool) -> dict:
    """A fit row as json-able values; without ``full``, the arrays are left out."""
    arrays = ("pose", "betas", "cam_t", "reprojection_loss")
    out = {name: value for name, value in row.items() if full or name not in arrays}
    if out.get("time") is not None:
        out["time"] = out["time"].isoformat()
    return out


def cmd_versions(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    versions = FitsTable.open(args.table).versions()
    if args.json:
        print(json.dumps([{k: v[k] for k in ("version", "rows", "timestamp")} for v in versions]))
        return 0
    for v in versions:
        print(f"{v['version']:>6}  {v['timestamp']}  {v['rows']:>10} rows  {v['operation']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fits.table import FitsTable, best_of

    table = FitsTable.open(args.table)
    history = _history(table, args)
    if history.num_rows == 0:
        raise FitloopError(f"{args.table} has no fit for {args.key!r}")
    best = best_of(history).to_pylist()[0]
    rows = history.to_pylist()
    if args.json:
        print(json.dumps({"key": args.key, "best": _row(best, True), "history": [_row(r, True) for r in rows]}))
        return 0
    loss = "unscored" if best["loss"] is None else f"{best['loss']:.3f} px²"
    print(f"{args.key}: best loss {loss}, {best['source']} fit of run {best['run_id']} (epoch {best['epoch']}, "
          f"step {best['step']}), {best['time'].isoformat()}")
    print(f"  valid {best['valid']}, betas beyond ±3σ {best['betas_extreme']}, body model {best['body_model_id']}, "
          f"fit config {best['fit_config_hash']}")
    print(f"  betas {' '.join(f'{b:.3f}' for b in best['betas'])}")
    print(f"  global orientation {' '.join(f'{p:.3f}' for p in best['pose'][:3])} (axis-angle, rad)")
    print(f"history ({len(rows)} fit(s), oldest first):")
    for r in rows:
        loss = "unscored" if r["loss"] is None else f"{r['loss']:.3f}"
        print(f"  {r['time'].isoformat()}  loss {loss:>10}  {r['source']:<6} run {r['run_id']} epoch {r['epoch']} "
              f"step {r['step']}")
    return 0


def _history(table, args: argparse.Namespace):
    """Every row of the key as of --version or --timestamp, oldest first."""
    return table.history(args.key, **_at(args))


def cmd_diff(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    diff = FitsTable.open(args.table).diff(args.v1, args.v2)
    if args.json:
        print(json.dumps(diff))
        return 0
    drop = diff["loss_decrease"]
    print(f"version {diff['from_version']} -> {diff['to_version']}: {diff['keys_before']} -> {diff['keys_after']} keys")
    print(f"  improved {diff['improved']} (of which newly scored {diff['newly_scored']}), added {diff['added']}, "
          f"unchanged {diff['unchanged']}, worse {diff['worse']}, removed {diff['removed']}")
    print(f"  loss decrease (px²): mean {drop['mean']:.3f}, median {drop['median']:.3f}, max {drop['max']:.3f}, "
          f"total {drop['total']:.1f}, mean relative {100 * drop['mean_relative']:.1f}%")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from fits.interchange import SPIN_BODY_MODEL_ID, import_spin
    from fits.table import FitsTable

    table = FitsTable.create(args.table, exist_ok=True)
    summary = import_spin(table, args.spin_npz, args.spin_fits, dataset=args.dataset,
                          body_model_id=args.body_model_id or SPIN_BODY_MODEL_ID)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.spin_fits.name}: {summary['rows']} fits of {summary['dataset']}, {summary['appended']} appended "
          f"(version {summary['version']}), largest float32 rounding {summary['max_float32_rounding']:g}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from core.errors import FitloopError
    from fits.interchange import export_spin
    from fits.table import FitsTable

    table = FitsTable.open(args.table)
    if args.parquet is not None:
        best = table.best(**_at(args), dataset=args.dataset)
        args.parquet.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.parquet.with_name(f".{args.parquet.name}.tmp")
        pq.write_table(best, tmp)
        tmp.replace(args.parquet)
        print(f"wrote {best.num_rows} best fits to {args.parquet}")
        return 0
    if args.out is None:
        raise FitloopError("--spin-npz needs --out, the .npy to write")
    summary = export_spin(table, args.spin_npz, args.out, dataset=args.dataset, fill_missing=args.fill_missing,
                          **_at(args))
    print(f"wrote {summary['out']}: {summary['rows']} rows of {summary['dataset']}, {summary['exported']} fits, "
          f"{summary['filled']} filled with zeros")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    table = FitsTable.open(args.table)
    version = table.compact()
    rows = next(v["rows"] for v in table.versions() if v["version"] == version)
    print(json.dumps({"version": version, "rows": rows}) if args.json else
          f"compacted to version {version}: {rows} rows, one per key")
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    from fits.table import FitsTable

    removed = FitsTable.open(args.table).vacuum(retention_hours=args.retention_hours, dry_run=args.dry_run)
    print(f"{'would delete' if args.dry_run else 'deleted'} {len(removed)} file(s)")
    for path in removed:
        print(f"  {path}")
    return 0
