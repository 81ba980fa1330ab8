"""`fitloop demo`: the whole pipeline on the embedded open model, ending with DIR/report.md (what `make demo` runs).

1. generate synthetic people in every dataset's native layout (`fitloop synth`), with 3D ground truth, and a
   few whole-body people (open SMPL-X model: hands posed, faces with expressions) as COCO-WholeBody and OpenPose
   JSON;
2. add the real excerpts in ../shared/fixtures when that folder exists (COCO, LSP, LSPET, MPII);
3. run the `build` flow: preprocess (Dask) -> seed fits (batched SMPLify on Dask) -> train (the keypoints head,
   fitting in the loop, fits written back);
4. fit the whole-body samples with SMPLify-X's fast mode (`fitting.smplifyx`, batched LM) in the fit frame and
   append them to the fits table as whole-body fits of the open SMPL-X model (`fits.schema.WholeBodyFit`);
5. run SPIN's ablation at a demo size (`bench.loop.DEMO`: static fits / fits in the loop / a mean-start control,
   the keypoints network on CMU-posed synthetic people);
6. write the report: counts, rejects, fit errors per fits-table version, training curves, the ablation's table,
   plot and outcome, the whole-body fits' errors against the truth (body, hands, face), pictures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fitloop.options import count

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
# A CPU-sized run: SPIN's step, losses and fitting in the loop, with the network that learns on a CPU in minutes:
# the keypoints head (Pavlakos 2018: keypoints and mask in, no image). A ResNet from scratch does not learn pose in
# the demo's budget (ResNet-18, 144 steps: network PA-MPJPE 169 -> 176 mm). Measured in `fitloop demo` itself
# (docs/training.md, "The demo's network"): lr 3e-4, batch 32, 48 epochs of 6 steps, network PA-MPJPE
# 164.8 -> 122.9 mm (-25.4 %; its last 8 evaluations 120.6-125.0 mm: the 25 % holds with little margin; after
# SMPLify's early exit 164.8 -> 119.3 mm, -27.6 %, last 8 evaluations 117.5-122.3 mm), MPJPE
# 329.5 -> 168.4 mm, training 207 s of a 251 s demo. Smaller batches or larger rates diverge later; augmentation
# on ends higher (145 mm at 144 steps).
DEMO_TRAIN = {"head": "keypoints", "img_res": 64, "batch_size": 32, "epochs": 48, "lr": 3e-4, "num_workers": 1,
              "augment": {"enabled": False}, "checkpoint_every": 50, "log_every": 6, "eval_max_samples": 112,
              "tensorboard": False}
WHOLEBODY_PEOPLE = 12  # per whole-body dataset: a few, to show them (SMPLify-X's fast mode fits them in seconds)
WHOLEBODY_BATCH = 64   # whole-body fits per SMPLify-X call
WHOLEBODY_PICTURES = 6
# torch threads of the whole-body fits: one, as each seeding Dask worker has. On this shared 2-core machine (load
# ~8) two threads made the batched LM 7x slower (24 fits: 70 s against 9.6 s), their spin-waits fighting.
WHOLEBODY_THREADS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on synthetic data (+ the real fixtures) and write a report",
        description="Generate synthetic people in the native layouts of COCO, MPII, LSP, LSPET and Human3.6M, add "
                    "the real excerpts from ../shared/fixtures when present, run the build flow (preprocess on "
                    "Dask, seed fits with batched SMPLify, train the keypoints head (Pavlakos 2018) with SPIN's "
                    "fitting in the loop) and write DIR/report.md with counts, rejects, fit errors per fits-table "
                    "version and training curves. A few whole-body people (COCO-WholeBody and OpenPose layouts) are also fitted with "
                    "SMPLify-X's fast mode and shown. About 5-10 minutes on 2 CPU cores.")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    parser.add_argument("--people", type=int, default=40, help="synthetic people per dataset (default 40)")
    parser.add_argument("--wholebody-people", type=int, default=WHOLEBODY_PEOPLE,
                        help=f"whole-body people per whole-body dataset, COCO-WholeBody and OpenPose (default "
                             f"{WHOLEBODY_PEOPLE}; 0 leaves them out)")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAIN["epochs"], help=f"training epochs (default {DEMO_TRAIN['epochs']})")
    parser.add_argument("--ablation-epochs", type=int, default=None,
                        help="epochs of SPIN's ablation (fitloop bench loop at the demo's size: 160 training and 60 "
                             "held-out people; default 24; 0 leaves it out)")
    parser.add_argument("--workers", type=count(1), default=None, help="Dask workers (default: one per core)")
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
    from pipelines.synthetic.config import BODY_DATASETS, WHOLEBODY_DATASETS

    out: Path = args.out.resolve()
    if (out / "shards" / "manifest.json").exists() or (out / "fits").exists():
        raise FitloopError(f"{out} holds a previous demo; remove it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    if args.wholebody_people < 0:
        raise FitloopError(f"--wholebody-people must be 0 or more, got {args.wholebody_people}")
    if args.ablation_epochs is not None and args.ablation_epochs < 0:
        raise FitloopError(f"--ablation-epochs must be 0 (leave the ablation out) or more, got {args.ablation_epochs}")
    start = _step(f"generating synthetic datasets ({args.people} people per dataset, {args.wholebody_people} "
                  f"whole-body people per whole-body dataset) in {out / 'data'}")
    wanted = BODY_DATASETS + (WHOLEBODY_DATASETS if args.wholebody_people else ())
    # Human3.6M as the release ships it: MP4 videos per subject, action and camera, decoded by the shard writer
    roots = generate(out / "data", SynthConfig.with_people(args.people, datasets=wanted, h36m_image_layout="video")
                     .with_wholebody_people(args.wholebody_people))
    timings["synthetic data"] = time.perf_counter() - start
    # the whole-body sets get their own small shard set after the build (`wholebody_fits`): in the build's they
    # would lengthen every training epoch
    specs = [DatasetSpec(name, str(root)) for name, root in roots.items() if name in BODY_DATASETS]
    body_roots = [root for name, root in roots.items() if name in BODY_DATASETS]
    wholebody_roots = [root for name, root in roots.items() if name in WHOLEBODY_DATASETS]
    # the real excerpts share layouts (and some file names) with the synthetic sets: they go in as <dataset>-real
    fixtures = [] if args.no_fixtures else fixture_specs()
    notes = [f"Synthetic people from the open model in {', '.join(n for n in roots if n in BODY_DATASETS)} layouts, "
             f"and whole-body people from the open SMPL-X model in "
             f"{', '.join(n for n in roots if n in WHOLEBODY_DATASETS) or 'no'} layouts (`{out / 'data'}`)."]
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
    errors = fit_errors_by_version(Path(summary["fits"]), synthetic_truth(body_roots, body), body)
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
    wholebody = None
    if wholebody_roots:
        start = _step("fitting the whole-body people with SMPLify-X (fast mode) and appending them to the fits table")
        wholebody = wholebody_fits(out / "shards_wholebody", Path(summary["fits"]), wholebody_roots, out)
        for row in wholebody["rows"]:
            print(f"[demo]   {row['dataset']}: {row['fits']} whole-body fits, body PA-MPJPE "
                  f"{row['body_pa_mpjpe_mm']:.1f} mm, hands {row['left_hand_pa_mpjpe_mm']:.1f} / "
                  f"{row['right_hand_pa_mpjpe_mm']:.1f} mm, face {row['face_reprojection_px']:.1f} px", flush=True)
        if wholebody.get("picture"):
            pictures["wholebody"] = wholebody["picture"]
        timings["whole-body fits"] = time.perf_counter() - start
    ablation = None
    if args.ablation_epochs != 0:
        start = _step("SPIN's ablation: static fits / fits in the loop / a mean-start control (fitloop bench loop)")
        ablation = run_ablation(out / "ablation", args.ablation_epochs)
        for line in ablation["conclusion"]:
            print(f"[demo]   {line.removeprefix('- ')}", flush=True)
        ablation["picture"] = str(Path(ablation["picture"]).relative_to(out))
        timings["ablation"] = time.perf_counter() - start
    manifest = json.loads((Path(summary["shards"]) / "manifest.json").read_text())
    report = write_report(out, manifest=manifest, seed=summary["seed"], train=summary["train"], fit_errors=errors,
                          pictures=pictures, timings=timings, notes=notes, wholebody=wholebody, ablation=ablation)
    print(f"[demo] done in {sum(timings.values()):.0f} s: {report}", flush=True)
    return 0


def run_ablation(out: Path, epochs: int | None = None) -> dict[str, Any]:
    """SPIN's ablation at the demo's size (`bench.loop.DEMO`, ``epochs`` overriding its own) in ``out``: the
    report's ``ablation`` (conclusion lines, markdown table, the plot's path, CPU s)."""
    import dataclasses

    import torch

    import bench.loop as bench_loop

    threads = torch.get_num_threads()
    size = bench_loop.DEMO if epochs is None else dataclasses.replace(bench_loop.DEMO, epochs=epochs)
    try:
        record = bench_loop.run(out, size)
    finally:
        torch.set_num_threads(threads)  # the bench runs on one thread
    return {"conclusion": bench_loop.conclusion(record), "table": bench_loop.table(record),
            "picture": str(out / "loop.png"), "cpu_s": sum(r["cpu_s"] for r in record["arms"].values())
            + sum(record["cpu_s"].values()), "verdict": record["verdict"]}


WHOLEBODY_SPLITS = {"coco_wholebody": ("train", "val"), "openpose": ("train",)}  # what the generator writes


def wholebody_fits(shards: Path, fits_path: Path, roots: list[Path], out: Path) -> dict[str, Any]:
    """Preprocess the whole-body datasets at ``roots`` into the shard set ``shards`` (unless it holds one already),
    fit every whole-body sample of it with SMPLify-X's fast mode, in the fit frame (SPIN's crop
    camera, `core.frames`), append the fits to the fits table as whole-body fits of the model the people were
    drawn with, measure them against the truth beside the datasets (`bench.smplifyx_cases.fit_errors`: body
    PA-MPJPE on the 14 LSP joints, each hand's wrist-aligned PA-MPJPE, face landmark reprojection in fit-frame
    px) and draw a few. Returns {"rows": per-dataset errors, "fits": n, "seconds": fitting time, "fits_per_s",
    "model_id", "version": the table version written, "picture": file name under ``out``, "shards": the shard
    set's path and counts}."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bench.smplifyx_cases import People, fit_errors
    from core.errors import FitloopError
    from core.frames import FIT_CENTER, FIT_FOCAL, keypoints_in_fit_frame, stored_to_fit_frame
    from core.threads import torch_threads
    from fits.schema import FitProvenance, WholeBodyFit, config_hash, fits_batch
    from fits.table import FitsTable
    from fitting.body_model import load_body_model
    from fitting.smplifyx import SMPLifyX, SMPLifyXConfig
    from fitting.wholebody_model import POSE_SLICES, WholeBodyModel
    from pipelines.synthetic import load_truth
    from render.wholebody_picture import wholebody_sheet
    from shards.crop import transform_points
    from shards.lookup import iter_samples

    truths = [load_truth(root) for root in roots]
    body = load_body_model("open-smplx")
    drawn_with = sorted({t.metadata["body_model"]["model_id"] for t in truths})
    if drawn_with != [body.model_id]:
        raise FitloopError(f"the whole-body people in {', '.join(map(str, roots))} were drawn with {drawn_with}, "
                           f"not the open SMPL-X model {body.model_id}; generate them again")
    model = WholeBodyModel(body)
    rows = {key: (t, t.row[key]) for t in truths for key in t.row}
    if not (shards / "manifest.json").is_file():
        from pipelines.preprocess import DatasetSpec, preprocess

        specs = [DatasetSpec(Path(root).name, str(root), WHOLEBODY_SPLITS.get(Path(root).name)) for root in roots]
        preprocess(specs, shards)
    counts = json.loads((shards / "manifest.json").read_text())["counts"]
    samples = [s for s in iter_samples(shards) if s.meta.get("has_wholebody") and s.key in rows]
    if not samples:
        return {"rows": [], "fits": 0}
    # a COCO-WholeBody sample's body is COCO's 17 points in the dataset slots; SMPLify-X reads its torso there
    # where the OpenPose one is missing (`fitting.smplifyx.OPENPOSE_STAND_INS`)
    keypoints = torch.as_tensor(np.stack([keypoints_in_fit_frame(s.wholebody_crop, s.meta["crop"])
                                          for s in samples]))
    count = len(samples)
    center = torch.full((count, 2), FIT_CENTER)
    focal = torch.full((count, 2), FIT_FOCAL)
    config = SMPLifyXConfig()
    smplifyx = SMPLifyX(model, config=config)
    with torch_threads(WHOLEBODY_THREADS):
        start = time.perf_counter()
        parts = [smplifyx(keypoints[i:i + WHOLEBODY_BATCH], center[i:i + WHOLEBODY_BATCH],
                          focal_length=focal[i:i + WHOLEBODY_BATCH]) for i in range(0, count, WHOLEBODY_BATCH)]
        seconds = time.perf_counter() - start
    fit = {k: torch.cat([getattr(p, k) for p in parts]).detach() for k in ("full_pose", "betas", "expression",
                                                                            "cam_t", "points")}
    fit_points = fit["points"]

    # the table: pose = global orientation + 21 body joints (+ SMPL's two hand joints, zero), the rest whole-body
    from core.camera import project
    from core.wholebody import WHOLEBODY_PARTS, wholebody_indices

    projected = project(fit_points, fit["cam_t"], focal, center)
    squared = ((projected - keypoints[..., :2]) ** 2).sum(-1) * (keypoints[..., 2] > 0)
    part_px = []
    for part in ("left_hand", "right_hand", "face"):
        idx = torch.as_tensor(wholebody_indices(WHOLEBODY_PARTS[part]))
        seen = (keypoints[:, idx, 2] > 0) & torch.as_tensor(model.provided)[idx]
        dist = squared[:, idx].sqrt() * seen
        part_px.append(torch.where(seen.any(1), dist.sum(1) / seen.sum(1).clamp_min(1), torch.nan))
    full = fit["full_pose"]
    pose = torch.cat([full[:, :66], torch.zeros(count, 6)], dim=1)
    provenance = FitProvenance(run_id=f"demo-smplifyx-{int(time.time())}", body_model_id=body.model_id,
                               fit_config_hash=config_hash(config), source="seed", frame="crop")
    batch = fits_batch(
        [s.key for s in samples], pose, fit["betas"], provenance, reprojection_loss=squared[:, :49], cam_t=fit["cam_t"],
        wholebody=WholeBodyFit(
            hand_pose=torch.cat([full[:, POSE_SLICES["left_hand_pose"]], full[:, POSE_SLICES["right_hand_pose"]]], 1),
            jaw_pose=full[:, POSE_SLICES["jaw_pose"]],
            eye_pose=torch.cat([full[:, POSE_SLICES["leye_pose"]], full[:, POSE_SLICES["reye_pose"]]], 1),
            expression=fit["expression"], part_reprojection=torch.stack(part_px, 1)))
    appended = FitsTable.open(fits_path).append(batch)

    # errors against the truth, per dataset
    true_points = torch.as_tensor(np.stack([rows[s.key][0].arrays["wholebody_3d"][rows[s.key][1]] for s in samples]))
    clean = []
    for s in samples:
        truth, i = rows[s.key]
        in_crop = transform_points(s.image_to_crop, truth.arrays["wholebody_2d"][i])
        clean.append(transform_points(stored_to_fit_frame(s.meta["crop"]), in_crop))
    people = People(full_pose=full, betas=fit["betas"], expression=fit["expression"], cam_t=fit["cam_t"],
                    points=true_points.float(), clean=torch.as_tensor(np.stack(clean)).float(), keypoints=keypoints,
                    center=center, focal=focal)
    errors = {k: v.numpy() for k, v in fit_errors(SimpleNamespace(points=fit_points, cam_t=fit["cam_t"]),
                                                   people).items()}
    datasets = np.array([s.key.split("/", 1)[0] for s in samples])
    table_rows = []
    for name in sorted(set(datasets)):
        mine = datasets == name
        table_rows.append({"dataset": str(name), "fits": int(mine.sum()),
                           **{k: float(np.median(v[mine])) for k, v in errors.items()}})
    picture = "sample_wholebody_fits.png"
    wholebody_sheet(samples[:WHOLEBODY_PICTURES], model, fit["full_pose"][:WHOLEBODY_PICTURES],
                    fit["betas"][:WHOLEBODY_PICTURES], fit["expression"][:WHOLEBODY_PICTURES],
                    fit["cam_t"][:WHOLEBODY_PICTURES]).save(out / picture)
    return {"rows": table_rows, "fits": count, "seconds": seconds, "fits_per_s": count / seconds,
            "start": "mean" if smplifyx.lifter is None else "lifted", "model_id": body.model_id,
            "version": appended.version, "picture": picture,
            "shards": {"path": str(shards), **counts}}
