"""`fitloop synth --out DIR`: synthetic people in every dataset's native layout, with the 3D truth beside them."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fitloop.options import count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="render synthetic people and write COCO, MPII, LSP, LSPET and Human3.6M layouts with truth "
                      "(and whole-body people as COCO-WholeBody and OpenPose JSON)",
        description="Render people with the open body model (poses from the CMU clips in ../shared/mocap/cmu when "
                    "present, else from the shipped pose prior; varied shapes, outfits, cameras and procedural "
                    "backgrounds) and write each dataset in its native layout under DIR (coco/, mpii/, lsp/, "
                    "lspet/, h36m/), each with fitloop_truth.npz (true SMPL pose, shape, camera and 3D joints "
                    "per sample key) and fitloop_synth.json (the resolved config). --datasets coco_wholebody,openpose "
                    "writes whole-body people of the open SMPL-X model (hands posed, faces with expressions) in "
                    "COCO-WholeBody's annotation layout and as OpenPose --write_json --hand --face files, with the "
                    "truth of every whole-body point. --datasets mpi_inf_3dhp writes MPI-INF-3DHP's release "
                    "layout (annot.mat, camera.calibration and AVI videos per sequence, and its test set). "
                    "docs/synthetic.md has the details.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--people", type=count(1), default=None,
                        help="people per dataset (default: 80 COCO, 80 MPII, 60 LSP, 60 LSPET, 112 Human3.6M, 40 "
                             "COCO-WholeBody, 40 OpenPose); "
                             "Human3.6M gets at least this many (frames x 4 cameras x sequences); LSP takes at most "
                             "1000 (its train split is images 1-1000)")
    parser.add_argument("--seed", type=count(0), default=0, help="random seed, a whole number >= 0 (default 0)")
    parser.add_argument("--datasets", default=None, metavar="LIST",
                        help="comma-separated datasets among coco,mpii,lsp,lspet,h36m,coco_wholebody,openpose,"
                             "mpi_inf_3dhp (default: the five body datasets coco,mpii,lsp,lspet,h36m)")
    parser.add_argument("--poses", choices=("auto", "cmu", "prior"), default="auto",
                        help="pose source: CMU clips, the pose prior, or auto (CMU when its folder exists)")
    parser.add_argument("--mocap-dir", type=Path, default=None, help="CMU BVH folder (default ../shared/mocap/cmu)")
    parser.add_argument("--h36m-layout", choices=("video", "spin", "folders"), default="video",
                        help="Human3.6M's frames: the release's MP4 videos S1/Videos/<Action>.<camera>.mp4 (default), "
                             "SPIN's extracted images/ or per-sequence image folders (docs/datasets.md)")
    parser.add_argument("--workers", type=count(1), default=2, help="render processes (default 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace dataset folders fitloop synth wrote in --out (only the files it wrote: a folder "
                             "holding others is refused)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from core.errors import FitloopError
    from fitloop.progress import bar
    from pipelines.synthetic import DATASETS, SynthConfig, generate
    from pipelines.synthetic.config import LSP_MAX_PEOPLE

    options = {"seed": args.seed, "poses": args.poses, "mocap_dir": args.mocap_dir, "workers": args.workers,
               "h36m_image_layout": args.h36m_layout}
    if args.datasets is not None:  # an empty list is no way to ask for the default datasets
        options["datasets"] = tuple(dict.fromkeys(d.strip() for d in args.datasets.split(",") if d.strip()))
        if not options["datasets"]:
            raise FitloopError(f"--datasets {args.datasets!r} names no dataset; give some of {', '.join(DATASETS)}, "
                               f"comma-separated, or leave --datasets out for the five body datasets")
    config = SynthConfig.with_people(args.people, **options) if args.people else SynthConfig(**options)
    if args.people is not None and args.people > LSP_MAX_PEOPLE and "lsp" in config.datasets:
        given = "" if args.datasets is not None else " (one of the default datasets)"
        raise FitloopError(f"--people {args.people}: LSP{given} holds at most {LSP_MAX_PEOPLE} people, as its train "
                           f"split is images 1-{LSP_MAX_PEOPLE} (the rest are its test split); give --people "
                           f"{LSP_MAX_PEOPLE} or fewer, or leave lsp out of --datasets")
    wanted = [name for name in DATASETS if name in config.datasets]
    start = time.perf_counter()
    with bar(sum(config.people(name) for name in wanted), "painting", "person") as progress:
        roots = generate(args.out, config, overwrite=args.overwrite, progress=progress.update)
    seconds = time.perf_counter() - start
    people = {name: config.people(name) for name in roots}
    summary = {"out": str(args.out), "datasets": {name: {"path": str(path), "people": people[name]}
                                                  for name, path in roots.items()},
               "people": sum(people.values()), "seconds": round(seconds, 2),
               "people_per_second": round(sum(people.values()) / seconds, 1), "seed": config.seed,
               "skipped": [d for d in DATASETS if d in config.datasets and d not in roots]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for name, path in roots.items():
        print(f"{name:14s} {people[name]:5d} people  {path}")
    print(f"{summary['people']} people in {seconds:.1f} s ({summary['people_per_second']} people/s), "
          f"seed {config.seed}")
    return 0
