"""`fitloop demo`: the whole pipeline on the embedded open model, ending with DIR/report.md (what `make demo` runs).

1. generate synthetic people in every dataset's native layout (`fitloop synth`), with 3D ground truth;
2. add the real excerpts in ../shared/fixtures when that folder exists (COCO, LSP, LSPET, MPII);
3. run the `build` flow: preprocess (Dask) -> seed fits (batched SMPLify on Dask) -> train (ResNet-18, small crops,
   fitting in the loop, fits written back);
4. write the report: counts, rejects, fit errors per fits-table version, training curves, pictures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
# A CPU-sized run: SPIN's step and losses, a small backbone and input, a few epochs.
# Augmentation is off: from scratch (no ImageNet weights here) and with a few hundred steps, SPIN's augmentation
# keeps a ResNet-18 from learning pose at all (docs/training.md).
DEMO_TRAIN = {"backbone": 18, "img_res": 64, "batch_size": 16, "epochs": 12, "lr": 1e-4, "num_workers": 1,
              "augment": {"enabled": False}, "checkpoint_every": 50, "log_every": 6, "eval_max_samples": 112,
              "tensorboard": False}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on synthetic data (+ the real fixtures) and write a report",
        description="Generate synthetic people in the native layouts of COCO, MPII, LSP, LSPET and Human3.6M, add "
                    "the real excerpts from ../shared/fixtures when present, run the build flow (preprocess on "
                    "Dask, seed fits with batched SMPLify, train SPIN's regressor with fitting in the loop) and "
                    "write DIR/report.md with counts, rejects, fit errors per fits-table version and training "
                    "curves. About 5-10 minutes on 2 CPU cores.")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--people", type=int, default=40, help="synthetic people per dataset (default 40)")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAIN["epochs"], help="training epochs (default 12)")
    parser.add_argument("--workers", type=int, default=None, help="Dask workers (default: one per core)")
    parser.add_argument("--dask-address", default=None, metavar="tcp://HOST:PORT",
                        help="run the chunk work on an existing Dask cluster")
    parser.add_argument("--no-fixtures", action="store_true", help="leave out ../shared/fixtures")
    parser.set_defaults(func=cmd_demo)


def _step(message: str) -> float:
    print(f"[demo] {message}", flush=True)
    return time.perf_counter()


def fixture_specs() -> list:
    """The real excerpts, as DatasetSpecs, when ../shared/fixtures exists."""
    from pipelines.preprocess import DatasetSpec

    if not FIXTURES.is_dir():
        return []
    return [
        DatasetSpec("coco", str(FIXTURES / "coco"), ("val",), {"annotation_file": "test_coco.json"}, "coco-real"),
        DatasetSpec("lsp", str(FIXTURES / "lsp" / "lsp_dataset"), ("test",), label="lsp-real"),
        DatasetSpec("lspet", str(FIXTURES / "lspet" / "lspet_dataset"), ("train",), label="lspet-real"),
        DatasetSpec("mpii", str(FIXTURES / "mpii"), ("val",), {"annotation_file": "mmpose_json/test_mpii.json",
                    "image_dir": str(FIXTURES / "mpii" / "mmpose_json")}, "mpii-real"),
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from pipelines.preprocess import DatasetSpec
    from pipelines.synthetic import SynthConfig, generate

    out: Path = args.out.resolve()
    if (out / "shards" / "manifest.json").exists() or (out / "fits").exists():
        raise FitloopError(f"{out} holds a previous demo; remove it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = _step(f"generating synthetic datasets ({args.people} people per dataset) in {out / 'data'}")
    roots = generate(out / "data", SynthConfig.with_people(args.people))
    timings["synthetic data"] = time.perf_counter() - start
    specs = [DatasetSpec(name, str(root)) for name, root in roots.items()]
    # the real excerpts share layouts (and some file names) with the synthetic sets: they go in as <dataset>-real
    fixtures = [] if args.no_fixtures else fixture_specs()
    notes = [f"Synthetic people from the open model in {', '.join(roots)} layouts (`{out / 'data'}`)."]
    if fixtures:
        notes.append(f"Real excerpts from `{FIXTURES}`: {', '.join(s.dataset for s in fixtures)}.")
    else:
        notes.append("No real excerpts: ../shared/fixtures is absent (or --no-fixtures).")
    print(f"[demo] {len(specs)} synthetic datasets, {len(fixtures)} fixture datasets", flush=True)

    from pipelines.flows import build_flow

    start = _step("running the build flow: preprocess -> seed_fits -> train (Prefect, Dask)")
    settings = {**DEMO_TRAIN, "epochs": args.epochs}
    summary = build_flow(specs + fixtures, str(out), settings, workers=args.workers, dask_address=args.dask_address)
    timings["build flow"] = time.perf_counter() - start

    start = _step("measuring every fits-table version against the synthetic ground truth")
    from fitting.body_model import load_body_model
    from pipelines.report import fit_errors_by_version, synthetic_truth, write_report

    body = load_body_model("open")
    errors = fit_errors_by_version(Path(summary["fits"]), synthetic_truth(list(roots.values()), body), body)
    (out / "fit_errors.json").write_text(json.dumps(errors, indent=1))
    for row in errors:
        error = f"{row['pa_mpjpe_mm']:.1f} mm" if row["with_truth"] else "– (no fit with truth yet)"
        print(f"[demo]   fits v{row['version']}: {row['fits']} fits, PA-MPJPE {error} ({row['with_truth']} with truth)",
              flush=True)
    pictures = {}
    from render.sample_picture import fits_sheet

    fits_sheet(Path(summary["shards"]), Path(summary["fits"]), 12, model=body, size=180, columns=6) \
        .save(out / "sample_fits.png")
    pictures["fits"] = "sample_fits.png"
    from render.model_pictures import shape_space_sheet

    shape_space_sheet(body, components=3).save(out / "shape_space.png")
    pictures["shape"] = "shape_space.png"
    curves = Path(summary["run_dir"]) / "curves.png"
    if curves.is_file():
        pictures["curves"] = str(curves.relative_to(out))
    timings["report"] = time.perf_counter() - start
    manifest = json.loads((Path(summary["shards"]) / "manifest.json").read_text())
    report = write_report(out, manifest=manifest, seed=summary["seed"], train=summary["train"], fit_errors=errors,
                          pictures=pictures, timings=timings, notes=notes)
    print(f"[demo] done in {sum(timings.values()):.0f} s: {report}", flush=True)
    return 0
