"""`fitloop bench …`: benchmarks that print their figures against a baseline run in the same process.

Every benchmark is a pair of functions here: one runs it and returns its record (a JSON-able dict), the other
turns the record into the text printed (`_benchmark` registers the pair). The options they share: `--json` (print
the record instead), `--out FILE` (also write it; checked before the run, which may take hours, not after it;
`bench loop`'s --out is instead the folder of its runs, where it writes its record), and for those that run torch
on this process's CPU `--threads N` (torch's thread count for the run, default 1: set explicitly, since torch's
default oversubscribes cores that other processes use) and `--seed`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fitloop.options import auto_or_device, count, device, positive, share

Record = dict[str, Any]



def _benchmark(commands: argparse._SubParsersAction, name: str, measure: Callable[[argparse.Namespace], Record],
               table: Callable[[Record], str], *, threads: bool = True, seed: bool = True, out: bool = True,
               **parser_options: Any) -> argparse.ArgumentParser:
    """Add benchmark ``name``: ``measure(args)`` runs it, ``table(record)`` is what it prints; the shared options
    (module docstring) are added here, the benchmark's own by the caller on the parser returned."""
    parser = commands.add_parser(name, **parser_options)
    shared = parser.add_argument_group("shared options (fitloop bench --help)")
    if threads:
        shared.add_argument("--threads", type=count(1), default=1,
                            help="torch CPU threads for the run (default 1: set explicitly, reported in the record)")
    if seed:
        shared.add_argument("--seed", type=count(0), default=0, help="random seed of the benchmark's data (default 0)")
    if out:
        shared.add_argument("--out", type=Path, default=None, dest="record_file", metavar="FILE",
                            help="also write the record (JSON) to FILE")
    shared.add_argument("--json", action="store_true", help="print the record as one JSON object instead of the text")
    parser.set_defaults(func=functools.partial(_run, measure=measure, table=table, threads=threads))
    return parser


def _run(args: argparse.Namespace, *, measure: Callable[[argparse.Namespace], Record],
         table: Callable[[Record], str], threads: bool) -> int:
    """Run one benchmark on its thread count, write its record where --out says, print it or its text."""
    path = getattr(args, "record_file", None)
    if path is not None:
        _check_record_file(path)
    with _torch_threads(args.threads) if threads else contextlib.nullcontext():
        record = measure(args)
    if path is not None:
        tmp = _tmp_name(path)  # a killed run leaves no half-written record under the name
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
    print(json.dumps(record) if args.json else table(record))
    return 0


def _tmp_name(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _check_record_file(path: Path) -> None:
    """Make sure --out FILE can take the record before the benchmark runs (minutes to hours), not after: a folder
    in its place (or in its .tmp's) and a parent that is not a folder or cannot be written are FitloopError (or the
    OSError of making the parent folders, which the CLI reports in one line); the parent folders are made here."""
    from core.errors import FitloopError

    for target in (path, _tmp_name(path)):
        if target.is_dir():
            raise FitloopError(f"--out {path}: {target} is a folder; --out names the file the record (JSON) is "
                               f"written to: give a file name, e.g. --out {path / 'record.json'}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise FitloopError(f"--out {path}: {parent} is a file, not a folder; choose another path for the record")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FitloopError(f"--out {path}: cannot write in {parent}; choose a folder you can write, or change its "
                           f"permissions")


def _torch_threads(threads: int) -> contextlib.AbstractContextManager:
    from core.threads import torch_threads  # torch loads here, not at `fitloop --help`

    return torch_threads(threads)


def _counts(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type``: comma-separated whole numbers, each at least ``minimum`` (`fitloop.options.count`),
    repeats dropped (each is an arm of a comparison: a repeated one ran twice)."""
    one = count(minimum)

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(dict.fromkeys(one(item) for item in _names(text)))
        if not values:
            raise argparse.ArgumentTypeError(f"takes comma-separated whole numbers, got {text!r}")
        return values

    parse.__name__ = f"counts >= {minimum}"
    return parse


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option's items, blanks dropped."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _kinds(text: str) -> tuple[str, ...]:
    """A comma-separated option's names of kinds (cameras, starts, ...), blanks and repeats dropped, in their order:
    ``crop,crop`` ran and recorded its cells twice."""
    return tuple(dict.fromkeys(_names(text)))


def _sources(text: str, known: tuple[str, ...], option: str = "--sources") -> tuple[str, ...]:
    """An option's comma-separated names, each one of ``known`` (FitloopError naming the others)."""
    from core.errors import FitloopError

    names = _kinds(text)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise FitloopError(f"{option} takes some of {', '.join(known)}; got {text!r}"
                           + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return names


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (each with its baseline, timed in the same run)",
                                   description="Benchmarks. Each one times fitloop's way and a baseline in the "
                                               "same process and prints both and their ratio; every one takes "
                                               "--json, every one but loop --out FILE for its record (loop: --out "
                                               "DIR, the folder of its runs, where it writes loop.json), and those "
                                               "that run torch here --threads (default 1).")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="benchmarks", metavar="BENCHMARK")

    body = _benchmark(
        commands, "body-model", measure_body_model, table_body_model,
        help="forward pass of a body model vs. the bare smplx layer",
        description="Time the 49-joint forward pass (and forward+backward) of a body model against the smplx layer "
                    "it wraps, at one batch size.")
    body.add_argument("--model", default="open", help='"open", "open-small" or a model file')
    body.add_argument("--batch", type=count(1), default=64, help="bodies per forward pass (default 64)")
    body.add_argument("--repeats", type=count(1), default=20, help="timed passes; the median counts (default 20)")
    body.add_argument("--device", default="cpu", type=device, help="cpu (default), cuda, cuda:N or mps")

    shards = _benchmark(
        commands, "shards", measure_shards, table_shards, threads=False,
        help="crops written/s and reader samples/s vs. SPIN-style loading of full JPEGs",
        description="Convert the real fixture images (../shared/fixtures, copied COPIES times into a temporary "
                    "dataset) to shards and time: crops written per second per core; training samples per "
                    "second from the shard reader, against SPIN's loader (full JPEG read and decoded per sample, "
                    "SPIN's crop code) and against full decoding with fitloop's crop code, same augmentation, "
                    "same process. Rates are per CPU second (per core) and per wall second.")
    shards.add_argument("--copies", type=count(1), default=12, help="copies of each fixture person (default 12)")
    shards.add_argument("--datasets", default="coco,mpii",
                        help="fixture datasets to use, comma-separated, of coco, mpii, lsp, lspet (default "
                             "coco,mpii: the training-size images; lsp/lspet fixtures are small test images)")
    shards.add_argument("--repeats", type=count(1), default=3, help="alternating runs per loader; the best counts")

    fits = _benchmark(
        commands, "fits-table", measure_fits_table, table_fits_table, threads=False,
        help="one epoch's fits-table update vs. rewriting a parquet snapshot",
        description="Seed a fits table and a parquet snapshot with synthetic fits, then time each epoch's update (a "
                    "new fit for every key, a share of them lower): fitloop appends the improvements to the Delta "
                    "table, the baseline rewrites the whole snapshot. Prints time and disk growth of both.")
    fits.add_argument("--rows", type=count(1), default=1_000_000, help="keys in the table (default 1,000,000)")
    fits.add_argument("--improved", type=share, default=0.3,
                      help="share of fits that improve each epoch, from 0 to 1 (default 0.3)")
    fits.add_argument("--epochs", type=count(1), default=2, help="updates timed (default 2)")
    fits.add_argument("--workdir", type=Path, default=None, help="where the temporary tables go (default: /tmp)")

    pre = _benchmark(
        commands, "preprocess", measure_preprocess, table_preprocess, threads=False, seed=False,
        help="shard-writing throughput on a local Dask cluster of 1 and 2 workers",
        description="Write the same shard set (fixture images replicated into a few hundred persons) with a local "
                    "Dask cluster of 1 and of 2 worker processes, and print samples/s and their ratio.")
    pre.add_argument("--copies", type=count(1), default=48, help="copies of the 17 fixture persons")

    # its --threads is a list of in-process thread counts, each one an arm of the comparison
    seeding = _benchmark(
        commands, "seeding", measure_seeding, table_seeding, threads=False,
        help="seeding fits/s: this process (1, 2 torch threads) vs. a local Dask cluster of 1, 2 workers",
        description="Seed the same rendered people (CMU held-out subjects and SPIN's LSP poses, mean-pose starts) "
                    "into a fresh fits table with batched SMPLify, in this process with 1 and 2 torch threads and "
                    "on a local Dask cluster of 1 and 2 single-thread worker processes; print fits/s per arm and "
                    "each arm's ratio to this process on 1 thread. Every arm must append the same fits at the "
                    "same mean loss. Wall time, best of --repeats; cluster start-up not timed.")
    seeding.add_argument("--people", type=count(2), default=512, help="people seeded per run (default 512)")
    seeding.add_argument("--batch", type=count(1), default=64, help="SMPLify batch = one Dask task (default 64)")
    seeding.add_argument("--workers", type=_counts(1), default="1,2",
                         help="Dask worker counts, comma-separated (default 1,2)")
    seeding.add_argument("--threads", type=_counts(1), default="1,2",
                         help="in-process torch thread counts, comma-separated (default 1,2)")
    seeding.add_argument("--repeats", type=count(1), default=2, help="alternating runs per arm; the best counts")
    seeding.add_argument("--model", default="open", help='"open" (default), "open-small" or a model file')

    renderer = _benchmark(
        commands, "renderer", measure_renderer, table_renderer,
        help="silhouette + part renderer (fitting.silhouette) forward+backward vs. DEODR, per sample",
        description="Render the open model's silhouette and 24 part maps for a batch of posed people (synthetic, "
                    "CMU and LSP poses where present; betas in ±2.5 σ; SPIN's crop camera) with fitloop's "
                    "renderer and with DEODR (when it imports: pip install deodr==0.2.3), back-propagate to the "
                    "vertices, and print CPU ms per sample, their ratio, and each one's IoU with the z-buffer.")
    renderer.add_argument("--model", default="open", help='"open" (default), "open-small" or a model file')
    renderer.add_argument("--batch", type=count(1), default=64, help="people per render (default 64)")
    renderer.add_argument("--resolutions", default="128,224", help="picture sides in px, comma-separated")
    renderer.add_argument("--sources", default="synthetic,cmu,lsp", help="pose sources (bench smplify's)")
    renderer.add_argument("--repeats", type=count(1), default=3, help="timed runs after one warm-up; the median counts")

    masks = _benchmark(
        commands, "masks", measure_masks, table_masks,
        help="SMPLify from keypoints alone vs. with the silhouette term, same people, one run",
        description="Fit held-out synthetic people (bench smplify's pose sources, betas uniform in ±2.5 σ, 5 px "
                    "keypoint noise, their exact masks) from SPIN's mean start by the fast SMPLify without and "
                    "with the silhouette term (fitting.silhouette_term), side by side: per-vertex error after "
                    "Procrustes on the mesh, betas error, PA-MPJPE, silhouette IoU, CPU s per fit. The same "
                    "people dressed in synthetic loose clothing (head, hands, feet exact) are fitted with the "
                    "silhouette term on the clothed mask and with DSR-MC + DSR-C (fitting.dsr); IoU is always "
                    "against the body's own silhouette. "
                    "docs/smplify.md#silhouette-term-issue-15 has the protocol and the latest figures.")
    masks.add_argument("--split", default="test", choices=("dev", "test"),
                       help="test (default) for reporting, dev for choosing weights")
    masks.add_argument("--sources", default="synthetic,cmu,lsp", help="pose sources (bench smplify's)")
    masks.add_argument("--cases", type=count(1), default=32, help="people per source (default 32)")
    masks.add_argument("--weights", default="5,10", help="silhouette weights fitted beside 0 (default 5,10)")
    masks.add_argument("--dsr", default="0,10,10",
                       help="the clothed_dsr arm's silhouette, DSR-MC and DSR-C weights (default 0,10,10)")
    masks.add_argument("--no-clothing", action="store_true", help="leave out the clothed people and their arms")
    masks.add_argument("--mask-scale", type=count(1), default=1, metavar="S",
                       help="masks of S·224 px over the 224 px fit frame's crop (default 1: the fit frame's own)")
    masks.add_argument("--model", default="open-small", help='"open-small" (default), "open" or a model file')
    masks.add_argument("--no-coco", dest="coco", action="store_false",
                       help="leave out the COCO section (fits of the real COCO fixture people, IoU with their masks)")
    masks.add_argument("--pictures", default=None, metavar="DIR",
                       help="write the COCO section's pictures (one PNG per person and a contact sheet) into DIR")

    smplify = _benchmark(
        commands, "smplify", measure_smplify, table_smplify,
        help="fast SMPLify vs. SPIN's reference procedure, on held-out poses, three cameras, four starts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Fit the same cases with fitloop's default SMPLify and with SPIN's reference procedure, in one run, and print
errors per source x camera x keypoints x start level, pooled per start level, speed and their ratios.

People: CMU motion capture of subjects the shipped pose prior never saw (dev: 9, 14; test: 2, 94), SPIN's LSP
fits (dev: rows 0-499; test: 500-999), samples of the pose prior (different streams for dev and test), and
--poses FILE; each turned to a random heading over the full circle, betas ~ N(0, 1).
Cameras: "real" (focal ~1150 px, 1000 px image, person 3-7 m away and off-centre; keypoints cropped into the
224 px fit frame by SPIN's box x 1.2, where SMPLify assumes f = 5000 px), "image" (the same people and keypoints
fitted with the real camera's true focal length and principal point, per example) and "crop" (SPIN's crop
camera: the person framed by the crop, f = 5000 px is the truth).
Keypoints: the 24 dataset joints, clean, or with 5 px noise per coordinate and 10% dropped.
Starts: "mean" (SMPLify's mean-pose start) and network-like "net60", "net90", "net120" (the true pose with
per-joint rotation noise calibrated on the dev split to that median start PA-MPJPE in mm, mean shape, the
translation estimated from the torso; start="estimate").
The reference fits the first --reference-cases people of every cell; the fast mode all --cases of them, and
its figures on the reference's cases are shown beside the reference's. Speed: CPU time per fit, start level by
start level with every variant in turn (a ratio compares rates measured minutes apart; the machine's rate drifts).

--poses FILE.npz: `poses` (N, 72) SMPL axis-angle (global orientation, 23 body joints relative to the
T-pose; SMPL-H's (N, 156) as AMASS ships them and SMPL-X's (N, 165) give their body joints), optional `betas`
(N, NB) of the body model used (default N(0, 1)), optional `name` (a string) and `up` ("y": Y-up world as the
body model, default; "-y": a camera frame as SPIN's fits; "z": AMASS's Z-up).
docs/smplify.md#the-benchmark has the protocol and the latest figures.""")
    smplify.add_argument("--split", default="test", choices=("dev", "test"),
                         help="dev: for tuning SMPLify; test: for reporting (default)")
    smplify.add_argument("--sources", default="cmu,lsp,synthetic",
                         help="pose sources, comma-separated, of cmu, lsp, synthetic; '' for --poses only "
                              "(default all three; one whose data is absent is skipped with a note)")
    smplify.add_argument("--poses", type=Path, default=None, metavar="FILE.npz",
                         help="also fit these poses (a NumPy .npz: format above)")
    smplify.add_argument("--cases", type=count(1), default=None, help="people per source (default 64; --quick: 3)")
    smplify.add_argument("--reference-cases", type=count(0), default=None,
                         help="the first this many people of each cell are also fitted by the reference (default 8; "
                              "--quick: 1)")
    smplify.add_argument("--cameras", default="real,image,crop", help="of real, image, crop (default all three)")
    smplify.add_argument("--keypoints", default="clean,noisy", help="of clean, noisy (default both)")
    smplify.add_argument("--starts", default="mean,net60,net90,net120", help="of mean, net60, net90, net120")
    smplify.add_argument("--calibration-people", type=count(8), default=None,
                         help="dev people per source the start noise is calibrated on (default 128; --quick: 16)")
    smplify.add_argument("--quick", action="store_true",
                         help="a smoke run for tests: smaller defaults for the sizes above, and the reference runs 5 "
                              "iterations per stage instead of 100 (its figures mean nothing)")
    smplify.add_argument("--skip-reference", action="store_true", help="fit with fitloop's default only")
    smplify.add_argument("--reference-mesh", default="smpl-sized",
                         help="the mesh(es) SPIN's procedure runs on, comma-separated, of smpl-sized (the open model "
                              "decimated to SMPL's 6,890 vertices; default) and full (its 13,492); the first is "
                              "the reference, the others are reported beside it")
    smplify.add_argument("--fixed-baseline", action="store_true",
                         help="also fit every case with the fast mode's fixed iteration budget (no early exit)")
    smplify.add_argument("--profile", action="store_true",
                         help="instead of the benchmark: kernel launches and host syncs per LM iteration and per "
                              "call of the fast mode (torch profiler; bench/smplify_profile.py)")
    smplify.add_argument("--batch", type=count(1), default=None,
                         help="add a throughput row: the fast mode on one call of this many examples per start level")
    smplify.add_argument("--compile", action="store_true",
                         help="the fast variants with SMPLifyConfig(compile=True) (torch.compile of one LM "
                              "iteration); compiled in a warm-up before timing, its CPU time reported")
    smplify.add_argument("--cuda-graph", action="store_true",
                         help="also the fast mode with SMPLifyConfig(cuda_graph=True), as fast-graphed: stage 2's LM "
                              "iteration replayed from a CUDA graph per batch shape (on a GPU; uncaptured on a CPU), "
                              "every example the whole budget (no early exit)")
    smplify.add_argument("--workers", type=count(1), default=1,
                         help="also run the throughput row in this many single-thread processes at once, and report "
                              "their fits/s together (needs --batch; default 1: not run)")
    smplify.add_argument("--model", default="open", help='"open", "open-small" or a model file')
    smplify.add_argument("--prior", default=None,
                         help="pose prior: a file (Gaussian-mixture or VAE .npz, SMPLify's gmm_08.pkl), or gmm / vae "
                              "for the shipped ones (default: the shipped default, docs/pose_prior.md)")
    smplify.add_argument("--device", default="cpu", type=device,
                         help="where both modes fit: cpu (default), cuda, cuda:N or mps")

    fit3d = _benchmark(
        commands, "fit3d", measure_fit3d, table_fit3d,
        help="fits to 3D joints and calibrated views (fitting.fit3d) on synthetic subjects",
        description="Fit synthetic subjects of the open model (CMU mocap sequences and SPIN's LSP fits when "
                    "../shared is present, else pose-prior sequences; random betas; Human3.6M-like ring cameras) "
                    "from their 17 Human3.6M joints (clean and with 10 mm noise), from 4 views' and from 1 view's "
                    "2D keypoints, with one shape per subject against a shape per frame, with the temporal term, "
                    "and with the dense solver as the Schur complement's baseline. Prints one table: joint, "
                    "vertex and rest-shape errors in mm, betas error, jitter and fits/s (see bench/fit3d.py).")
    fit3d.add_argument("--subjects", type=count(1), default=4, help="synthetic subjects per pose source (default 4)")
    fit3d.add_argument("--frames", type=count(3), default=32, help="frames per subject (default 32; at least 3)")
    fit3d.add_argument("--model", default="open", help='"open", "open-small" or a model file')
    fit3d.add_argument("--h36m-regressor", default=None,
                       help="with a real SMPL-family model file: SPIN's J_regressor_h36m.npy (the subjects' "
                            "Human3.6M joints and the fit's; the open models carry their own)")
    fit3d.add_argument("--sources", default="cmu,lsp", help="pose sources, comma-separated: cmu, lsp, prior")

    wb = _benchmark(
        commands, "smplifyx", measure_smplifyx, table_smplifyx,
        help="batched SMPLify-X (fast) vs SMPLify-X's own procedure on synthetic whole-body people",
        description="Fit the same synthetic whole-body people (open SMPL-X model by default: body poses of held-out "
                    "sources as `fitloop bench smplify` splits them: CMU subjects the prior never saw, SPIN's LSP "
                    "fits, pose-prior samples; facing the camera, hands curled, jaw opened, expressions N(0, 1); "
                    "keypoints with 5 px noise and 10% missing) with the fast mode at --batch and with the "
                    "reference procedure (SMPLify-X's L-BFGS stages, one person at a time) on the first "
                    "--reference-people (sources interleaved): body PA-MPJPE (14 LSP joints), each hand's PA-MPJPE "
                    "after aligning it at its wrist, face landmark reprojection, fits/s and their ratio, per-person "
                    "wins, and the share of fits whose mesh interpenetrates (see bench/smplifyx.py).")
    wb.add_argument("--split", default="test", choices=("dev", "test"),
                    help="dev: for tuning the fast mode; test: for reporting (default)")
    wb.add_argument("--sources", default="cmu,lsp,synthetic",
                    help="pose sources, comma-separated, of cmu, lsp, synthetic (default all three; one whose data "
                         "is absent is skipped with a note)")
    wb.add_argument("--model", default="open-smplx", help='"open-smplx", "open-smplx-small" or an SMPL-X file')
    wb.add_argument("--people", type=count(1), default=64, help="people per source (default 64)")
    wb.add_argument("--reference-people", type=count(1), default=9,
                    help="people the reference fits, the first of the interleaved sources (~1 min each; default 9)")
    wb.add_argument("--batch", type=count(1), default=64, help="people per fast-mode fit (default 64)")
    wb.add_argument("--throughput-threads", type=count(1), default=2,
                    help="torch threads of the throughput row (the fast mode alone at --batch; default 2: the "
                         "issue's '2 CPU cores')")
    # the choices are fitting.pose_terms' BodyPrior and HandPrior (not imported here: torch loads lazily)
    wb.add_argument("--prior", default=None, choices=("gmm", "vae"),
                    help="body pose prior: the GMM or the VAE, fitloop's open ones (default: fitting.pose_terms' "
                         "DEFAULT_BODY_PRIOR, docs/smplifyx.md)")
    wb.add_argument("--hand-prior", default=None, choices=("l2", "limits", "pca"),
                    help="hand pose prior: SMPLify-X's L2, the anatomical joint limits, or a PCA (--hand-pca) with "
                         "the limits (default: fitting.pose_terms' DEFAULT_HAND_PRIOR)")
    wb.add_argument("--hand-pca", type=Path, default=None, metavar="FILE",
                    help="SMPL-X/MANO .npz with hands_components{l,r} and hands_mean{l,r} (with --hand-prior pca)")

    step = _benchmark(
        commands, "train-step", measure_train_step, table_train_step,
        help="time per training step and its parts (data, network, SMPLify, write-back)",
        description="Time `fitloop train`'s step on synthetic shards (rendered open-model bodies, seed fits for "
                    "all): the median step and its parts (data, network forward/backward/Adam, SMPLify with the "
                    "stored fits re-scored, write-back to the fits store), one write to the fits table, against "
                    "the same step with SPIN's SMPLify procedure (Adam, 100 iterations per stage, full mesh).")
    step.add_argument("--batch", type=count(1), default=16, help="samples per step (default 16)")
    step.add_argument("--steps", type=count(1), default=5, help="timed steps (after one warm-up step)")
    step.add_argument("--backbone", type=int, default=50, metavar="DEPTH",
                      help="ResNet depth, one of 18, 34, 50, 101, 152 (default 50, as SPIN)")
    step.add_argument("--img-res", type=count(1), default=224, help="network input, px (default 224; at least 32)")
    step.add_argument("--model", default="open", help='body model: "open", "open-small" or a model file')
    step.add_argument("--device", default="cpu", type=device, help="cpu (default), cuda, cuda:N or mps")
    step.add_argument("--smplify-device", default="auto", type=auto_or_device,
                      help="auto (the training device) or cpu")
    step.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    step.add_argument("--num-workers", type=count(0), default=1, help="DataLoader workers (default 1)")
    step.add_argument("--skip-baseline", action="store_true", help="time only fitloop's step")
    step.add_argument("--workdir", type=Path, default=None, help="where the temporary shards go (default: /tmp)")
    step.add_argument("--count-syncs", action="store_true",
                      help="instead of timing: count the host syncs of one step (reads of tensor values, "
                           "core.host_syncs) for the hmr and keypoints heads, with and without SMPLify, by where they "
                           "are made (ResNet-18 at 64 px, open-small, batch 8 unless given)")

    # one torch thread, set by bench.loop; its record goes into the --out folder with the runs
    loop = _benchmark(
        commands, "loop", measure_loop, table_loop, threads=False, seed=False, out=False,
        help="SPIN's ablation: static fits vs. fits in the loop vs. refits from the mean (keypoints head)",
        description="Train the keypoints head three ways on the same synthetic people (CMU poses of subjects the "
                    "pose prior never saw; their 3D truth ignored by training), from the same seed, for the same "
                    "steps: 'static' on the seed fits only, 'loop' with SMPLify in the loop from the network's "
                    "estimate (SPIN), 'control' with SMPLify in the loop from the mean start (no network start). "
                    "Per epoch and arm: the fits table's error against the truth and the network's on held-out "
                    "people (CMU test subjects). Writes loop.json, loop.md and loop.png into --out (docs/training.md, "
                    "\"SPIN's ablation\"). One torch thread.")
    loop.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="an empty or new folder for the data, the runs and the record (loop.json, loop.md, "
                           "loop.png): a folder, not the record's file as other benchmarks' --out")
    # defaults: bench.loop.LoopBench's (320 people, 100 held out, 24 epochs, batch 16, lr 3e-4, open-small)
    loop.add_argument("--people", type=count(1), dest="people", help="training people (default 320)")
    loop.add_argument("--held-out", type=count(1), dest="held_out",
                      help="held-out people for the network (default 100)")
    loop.add_argument("--epochs", type=count(1), dest="epochs", help="default 24")
    loop.add_argument("--batch", type=count(1), dest="batch_size", help="default 16")
    loop.add_argument("--lr", type=positive, dest="lr", help="default 3e-4")
    loop.add_argument("--steps-per-epoch", type=count(1), dest="steps_per_epoch", help="default: people / batch")
    loop.add_argument("--smplify-iters", type=count(1), dest="smplify_iterations",
                      help="SMPLify's body iterations, seed fits and loop alike (default: SMPLify's)")
    loop.add_argument("--body-model", dest="body_model", help='"open-small" (default), "open" or a model file')
    loop.add_argument("--seed", type=count(0), dest="seed", help="default 0")



def measure_body_model(args: argparse.Namespace) -> Record:
    from bench.body_model import run

    return run(args.model, batch=args.batch, repeats=args.repeats, device=args.device, seed=args.seed)


def table_body_model(result: Record) -> str:
    return "\n".join([
        (f"{result['model']} ({result['vertices']} vertices), batch {result['batch']}, {result['device']}, "
         f"{result['threads']} threads"),
        f"  fitloop forward (mesh + 49 joints) {result['forward_ms']:8.2f} ms",
        (f"  smplx layer forward (baseline)     {result['smplx_layer_forward_ms']:8.2f} ms"
         f"   ratio {result['ratio_forward_vs_smplx_layer']:.2f}x"),
        f"  fitloop forward + backward         {result['forward_backward_ms']:8.2f} ms"])


def measure_shards(args: argparse.Namespace) -> Record:
    from bench.shards import DATASETS, run

    datasets = _sources(args.datasets, DATASETS, "--datasets")
    return run(copies=args.copies, datasets=datasets, repeats=args.repeats, seed=args.seed)


def table_shards(result: Record) -> str:
    lines = [(f"shards benchmark: {result['samples']} samples ({', '.join(result['datasets'])} fixtures x "
              f"{result['copies']}), {result['shard_bytes_per_sample'] / 1e3:.1f} kB/sample, load average "
              f"{result['load_average'][0]:.1f} on {result['cpus']} cores"),
             (f"  write     {result['write_crops_per_cpu_s']:8.1f} crops/s per core   "
              f"({result['write_crops_per_s']:.1f}/s wall)"),
             (f"  reader    {result['reader_samples_per_cpu_s']:8.1f} samples/s per core "
              f"({result['reader_samples_per_s']:.1f}/s wall)"),
             (f"  SPIN's loader (full JPEG + SPIN crop)  {result['spin_loader_samples_per_cpu_s']:8.1f} samples/s per "
              f"core   reader is {result['ratio_reader_vs_spin_loader_per_core']:.2f}x"),
             (f"  full JPEG + fitloop crop               {result['full_decode_samples_per_cpu_s']:8.1f} samples/s per "
              f"core   reader is {result['ratio_reader_vs_full_decode_per_core']:.2f}x")]
    for name, d in result["per_dataset"].items():
        lines.append(f"    {name:<6} {d['image_size'][0]}x{d['image_size'][1]}: reader {d['reader_per_cpu_s']:.0f}/s, "
                     f"SPIN's loader {d['spin_loader_per_cpu_s']:.0f}/s ({d['ratio_vs_spin_loader']:.2f}x), "
                     f"full decode {d['full_decode_per_cpu_s']:.0f}/s ({d['ratio_vs_full_decode']:.2f}x)")
    return "\n".join(lines)


def measure_fits_table(args: argparse.Namespace) -> Record:
    from bench.fits_table import run

    return run(args.rows, improved=args.improved, epochs=args.epochs, workdir=args.workdir, seed=args.seed)


def table_fits_table(result: Record) -> str:
    mb = 1e-6
    lines = [(f"fits table: {result['rows']:,} keys, {100 * result['improved']:.0f}% improved per epoch "
              f"(seed: table {result['seed_table_s']:.2f} s, snapshot {result['seed_snapshot_s']:.2f} s)")]
    for e in result["epochs"]:
        lines += [(f"  epoch {e['epoch']}: fitloop update {e['update_s']:.2f} s (read best losses "
                   f"{e['read_best_losses_s']:.2f} s, filter + append {e['filter_and_append_s']:.2f} s), "
                   f"{e['appended']:,} rows, +{e['table_growth_bytes'] * mb:.0f} MB"),
                  (f"           snapshot rewrite {e['snapshot_rewrite_s']:.2f} s, "
                   f"{e['snapshot_bytes_written'] * mb:.0f} MB written")]
    lines += [(f"  median update {result['update_s_median']:.2f} s vs snapshot rewrite "
               f"{result['snapshot_rewrite_s_median']:.2f} s: {result['speedup_vs_snapshot']:.2f}x"),
              (f"  best view {result['best_view_s']:.2f} s ({result['best_view_rows']:,} rows, equals snapshot: "
               f"{result['best_view_equals_snapshot']}), history of one key {1e3 * result['history_one_key_s']:.0f} "
               f"ms, a 64-row append {result['small_append_64_rows_ms']:.0f} ms"),
              (f"  on disk: table {result['table_bytes'] * mb:.0f} MB (every version), "
               f"snapshot {result['snapshot_bytes'] * mb:.0f} MB (latest only); load average "
               f"{result['load_average'][0]:.1f} on {result['cpus']} cores at the end")]
    return "\n".join(lines)


def measure_preprocess(args: argparse.Namespace) -> Record:
    from bench.preprocess import run

    return run(copies=args.copies, progress=not args.json)


def table_preprocess(result: Record) -> str:
    return (f"{result['samples']} samples in {result['chunks']} chunks; 2 workers vs 1: "
            f"{result.get('ratio_2_vs_1', float('nan')):.2f}x")


def measure_seeding(args: argparse.Namespace) -> Record:
    from bench.seeding import run
    from core.errors import FitloopError

    try:  # the counts are checked where argparse reads them
        return run(people=args.people, batch_size=args.batch, workers=args.workers, threads=args.threads,
                   repeats=args.repeats, body_model=args.model, seed=args.seed, progress=not args.json)
    except ValueError as err:
        raise FitloopError(f"bench seeding: {err}") from None


def table_seeding(result: Record) -> str:
    lines = [(f"{result['samples']} people ({', '.join(result['sources'])}), batch {result['batch_size']}, "
              f"{result['body_model']} model, load {result['load_average'][0]:.1f} on {result['cores']} cores:")]
    for name, rate in result["fits_per_s"].items():
        lines.append(f"  {name:<14} {rate:7.1f} fits/s  "
                     f"{result['ratio_vs_in_process_1'].get(name, float('nan')):.2f}x")
    return "\n".join(lines)


def measure_renderer(args: argparse.Namespace) -> Record:
    from bench.renderer import SOURCES, run
    from core.errors import FitloopError

    try:
        resolutions = tuple(int(r) for r in _names(args.resolutions))
    except ValueError:
        resolutions = ()
    if not resolutions or min(resolutions) < 8:
        raise FitloopError(f"--resolutions takes picture sides of at least 8 px, comma-separated; got "
                           f"{args.resolutions!r}")
    return run(args.model, batch=args.batch, resolutions=resolutions, repeats=args.repeats, threads=args.threads,
               seed=args.seed, sources=_sources(args.sources, SOURCES))


def table_renderer(result: Record) -> str:
    lines = [(f"{result['model']} ({result['vertices']} vertices, {result['faces']} faces), batch {result['batch']}, "
              f"{result['threads']} torch threads, CPU ms per sample (forward + backward), median of "
              f"{result['repeats']}; alternative: {result['alternative']}")]
    lines += [f"  {source} skipped: {why}" for source, why in result["sources_skipped"].items()]
    for row in result["rows"]:
        line = (f"  {row['resolution']:>4} px {row['kind']:<10} {row['source']:<9} fitloop "
                f"{row['fitloop_ms_per_sample']:7.2f} ms (IoU {row['fitloop_iou_vs_zbuffer']:.3f})")
        if "deodr_ms_per_sample" in row:
            line += (f"   deodr {row['deodr_ms_per_sample']:7.2f} ms (IoU {row['deodr_iou_vs_zbuffer']:.3f})"
                     f"   ratio deodr/fitloop {row['ratio_deodr_over_fitloop']:.2f}x")
        lines.append(line)
    return "\n".join(lines)


def measure_masks(args: argparse.Namespace) -> Record:
    from bench.masks import SOURCES, MasksBenchConfig, run
    from core.errors import FitloopError

    numbers = {}
    for flag in ("weights", "dsr"):
        try:
            numbers[flag] = tuple(float(w) for w in _names(getattr(args, flag)))
        except ValueError:
            raise FitloopError(f"bench masks: --{flag} takes numbers separated by commas, got "
                               f"{getattr(args, flag)!r}") from None
    return run(MasksBenchConfig(split=args.split, sources=_sources(args.sources, SOURCES), cases=args.cases,
                                weights=numbers["weights"], model=args.model, threads=args.threads, seed=args.seed,
                                coco=args.coco, pictures=args.pictures, clothing=not args.no_clothing,
                                dsr=numbers["dsr"], mask_scale=args.mask_scale))


def table_masks(result: Record) -> str:
    config = result["config"]
    lines = [(f"{config['model']}, {config['split']} split, {result['torch_threads']} torch threads; mean start, "
              f"5 px noise; masks at {config['mask_scale']}×224 px")]
    lines += [f"  {source} skipped: {why}" for source, why in result["sources_missing"].items()]
    for arm, row in result["results"].items():
        a = row["all"]
        line = (f"  {arm:<22} PVE-PA {a['pve_pa_mm']:6.1f} mm  betas err {a['betas_error']:5.2f} (size removed "
                f"{a['betas_error_scale_removed']:5.2f}; shape PA {a['shape_pa_mm']:4.1f} mm)  PA-MPJPE "
                f"{a['pa_mpjpe_mm']:6.1f} mm  IoU {a['iou']:.3f}  {a['cpu_s_per_fit']:.3f} CPU s/fit")
        if "ratio_to_keypoints" in row:
            change = row["change_from_keypoints"]["betas_error"]
            line += (f"  (PVE-PA x{row['ratio_to_keypoints']['pve_pa_mm']:.2f}; betas err "
                     f"{change['mean']:+.2f} ± {change['se'] or 0:.2f} per person)")
        beta = a["per_beta"]
        r = " ".join("  — " if v is None else f"{v:+.2f}" for v in beta["correlation"])
        lines += [line, f"  {'':<22} per beta rms {' '.join(f'{v:4.2f}' for v in beta['rms'])}  r {r}"]
    return "\n".join(lines + [table_masks_coco(result["coco"])])


def table_masks_coco(coco: Record | str) -> str:
    """The COCO section of ``bench masks`` (`bench.masks_coco.run_coco`'s record, or why it was skipped)."""
    if isinstance(coco, str):
        return f"COCO section skipped: {coco}"
    skipped = ", ".join(f"{n} {why}" for why, n in coco["skipped"].items()) or "none"
    lines = [(f"COCO fixtures: {coco['people']} people (skipped: {skipped}); IoU of the fit's silhouette with the "
              f"annotated mask")]
    for arm, row in coco["arms"].items():
        line = (f"  {arm:<15} IoU {row['iou']:.3f}  reprojection {row['reprojection_px']:5.2f} px  "
                f"{row['cpu_s_per_fit']:.3f} CPU s/fit")
        if "ratio_to_keypoints" in row:
            line += (f"  (IoU x{row['ratio_to_keypoints']['iou']:.2f}, better for {row['people_better']} of "
                     f"{coco['people']})")
        lines.append(line)
    lines += [f"  pictures: {path} and one per person beside it" for path in coco.get("pictures", [])[:1]]
    return "\n".join(lines)


def measure_smplify(args: argparse.Namespace) -> Record:
    from bench.smplify import QUICK, BenchConfig, run

    if args.profile:
        from bench import smplify_profile

        return smplify_profile.run(args.model)
    sizes = dict(QUICK) if args.quick else {}  # --quick changes defaults; sizes given explicitly still count
    for name in ("cases", "reference_cases", "calibration_people"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    if args.skip_reference:
        sizes["reference_cases"] = 0
    config = BenchConfig(split=args.split, sources=_kinds(args.sources), poses_file=args.poses,
                         cameras=_kinds(args.cameras), noise=_kinds(args.keypoints), starts=_kinds(args.starts),
                         modes=("fast",) if args.skip_reference else ("fast", "reference"), model=args.model,
                         prior=args.prior, device=args.device, threads=args.threads, seed=args.seed,
                         reference_meshes=_kinds(args.reference_mesh), fixed_baseline=args.fixed_baseline,
                         batch=args.batch, workers=args.workers, compile=args.compile, cuda_graph=args.cuda_graph,
                         **sizes)
    return run(config, progress=None if args.json else _progress)


def table_smplify(result: Record) -> str:
    from bench import smplify_profile
    from bench.smplify_table import format_tables

    if result.get("benchmark") == smplify_profile.PROFILE:
        return smplify_profile.table(result)
    return format_tables(result)


def measure_fit3d(args: argparse.Namespace) -> Record:
    from bench.fit3d import run
    from core.errors import FitloopError

    kinds = _names(args.sources)
    unknown = sorted(set(kinds) - {"cmu", "lsp", "prior"})
    if unknown or not kinds:
        raise FitloopError(f"--sources takes cmu, lsp and prior, got {args.sources!r}")
    return run(subjects=args.subjects, frames=args.frames, model=args.model, kinds=kinds, seed=args.seed,
               progress=None if args.json else _progress, h36m_regressor=args.h36m_regressor)


def table_fit3d(result: Record) -> str:
    from bench.fit3d import table

    return table(result)


def measure_smplifyx(args: argparse.Namespace) -> Record:
    from bench.smplifyx import run
    from bench.smplifyx_cases import SOURCES
    from core.errors import FitloopError
    from fitting.body_model import load_body_model
    from fitting.pose_terms import DEFAULT_BODY_PRIOR, DEFAULT_HAND_PRIOR
    from fitting.wholebody_model import WholeBodyModel

    sources = _names(args.sources)
    if not sources or set(sources) - set(SOURCES):
        raise FitloopError(f"--sources takes {', '.join(SOURCES)}, got {args.sources!r}")
    model = WholeBodyModel(load_body_model(args.model))
    return run(model, people=args.people, reference_people=args.reference_people, batch=args.batch,
               seed=args.seed, threads=args.threads, split=args.split, sources=sources,
               body_prior=args.prior or DEFAULT_BODY_PRIOR, hand_prior=args.hand_prior or DEFAULT_HAND_PRIOR,
               hand_pca=args.hand_pca, throughput_threads=args.throughput_threads)


def table_smplifyx(result: Record) -> str:
    from bench.smplifyx import table

    return table(result)


def measure_train_step(args: argparse.Namespace) -> Record:
    from bench.train_step import count_syncs, run
    from core.errors import FitloopError
    from training.config import InvalidConfigError

    if args.count_syncs:
        return count_syncs(workdir=args.workdir, seed=args.seed)
    try:
        return run(batch=args.batch, steps=args.steps, backbone=args.backbone, img_res=args.img_res,
                   body_model=args.model, device=args.device, smplify_device=args.smplify_device, amp=args.amp,
                   baseline=not args.skip_baseline, workdir=args.workdir, num_workers=args.num_workers,
                   seed=args.seed)
    except InvalidConfigError as err:
        raise FitloopError(f"bench train-step: {err}") from None


def table_train_step(result: Record) -> str:
    from bench.train_step import SYNC_COUNT

    if result.get("benchmark") == SYNC_COUNT:
        lines = [(f"host syncs per training step (batch {result['batch']}, {result['body_model']}): "
                  f"{result['counted']}")]
        for name, r in result.items():
            if isinstance(r, dict):  # one per head, with and without SMPLify
                where = ", ".join(f"{folder}/ {n}" for folder, n in r["by_folder"].items())
                lines.append(f"  {name:<22} {r['total']:4d}  ({where}; the rest in dependencies; torch's own "
                             f"{r['torch_own']})")
        return "\n".join(lines)
    lines = [(f"training step: batch {result['batch']}, {result['backbone']} at {result['img_res']} px, "
              f"{result['body_model']} body, {result['device']} (SMPLify on {result['smplify_device']}), "
              f"{result['threads']} threads, load average {result['load_average'][0]:.1f}")]
    for name in ("fitloop", "spin_smplify"):
        if name in result:
            r = result[name]
            parts = ", ".join(f"{p} {ms:.0f} ms" for p, ms in r["parts_ms"].items())
            lines.append(f"  {name:<12} {r['step_ms']:8.0f} ms/step ({r['samples_per_s']:.1f} samples/s): {parts} "
                         f"(SMPLify {100 * r['smplify_share']:.0f} % of the step); fits table write "
                         f"{r['flush_ms']:.0f} ms for {r['flush_rows']} rows")
    if "speedup_vs_spin_smplify" in result:
        lines.append(f"  step speedup vs SPIN's SMPLify in the step: {result['speedup_vs_spin_smplify']:.2f}x")
    return "\n".join(lines)


def measure_loop(args: argparse.Namespace) -> Record:
    from bench.loop import LoopBench, run
    from core.errors import FitloopError

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(LoopBench) if getattr(args, f.name) is not None}
    try:
        return {**run(args.out, LoopBench(**given)), "out": str(args.out)}
    except FileExistsError as err:
        raise FitloopError(str(err)) from None


def table_loop(result: Record) -> str:
    out = Path(result["out"])
    lines = [(out / "loop.md").read_text().rstrip("\n")]
    for other, diff in result["verdict"].items():
        if other.startswith("loop_minus_"):
            lines.append(f"loop - {other.removeprefix('loop_minus_').removesuffix('_mm')} after the last epoch: "
                         f"fits PA-MPJPE {diff['fits_pa_mpjpe_mm']:+.1f} mm, network PA-MPJPE "
                         f"{diff['net_pa_mpjpe_mm']:+.1f} mm")
    lines.append(f"written: {out / 'loop.json'}, {out / 'loop.md'}, {out / 'loop.png'}")
    return "\n".join(lines)
