"""Generate synthetic people and write every dataset's native layout, with the ground truth beside it.

``generate(out_root, config)`` writes ``out_root/<dataset>`` for each dataset of the config (coco, mpii, lsp,
lspet, h36m; whole-body people as coco_wholebody and openpose; layouts in docs/synthetic.md) and returns their
paths. Each dataset is planned in this process
(poses, shapes, cameras, framing; the body model posed in batches), painted by ``config.workers`` forked
processes (`paint.paint_batch`) while the next dataset is planned, then written by its format's writer with
``fitloop_truth.npz`` (`truth`) and
``fitloop_synth.json`` (the resolved config and the pose source). A dataset is built in a hidden folder beside
its target and renamed into place when complete, so a crash leaves no half-written dataset; it lists the files
written (`written.WRITTEN_LIST`), and ``overwrite`` removes those alone: a folder with others is refused.

Determinism: every draw comes from numpy generators seeded by ``config.seed`` (one stream per dataset, one for
the clip choice); painting is a pure function of the plan. The same seed gives the same images, annotations and
truth, whatever the number of workers (byte for byte, except the write stamps in .mat and .cdf headers).
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from collections import Counter, deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from core.errors import FitloopError
from core.joints import NUM_JOINTS
from core.pinhole import pinhole
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_PARTS, wholebody_indices
from fitting.body_model import OPEN_MODELS, BodyModel, load_body_model, read_model_arrays
from pipelines.adapters.h36m import CAMERA_NAMES, RAW_INDEX, VIDEO_LAYOUT, Camera, image_pattern
from pipelines.adapters.openpose import openpose_key
from pipelines.synthetic import formats, h36m_files, mpi_inf_3dhp
from pipelines.synthetic.bodies import move_parameters, pose_bodies, pose_wholebody, rotate_orient
from pipelines.synthetic.config import DATASETS, WHOLEBODY_DATASETS, SynthConfig, SynthError
from pipelines.synthetic.hands_face import sample_faces, sample_hands
from pipelines.synthetic.paint import PARTS, Body, Mesh, Picture, Silhouette, mesh_of, paint_batch, set_meshes
from pipelines.synthetic.poses import PoseSource, pose_source
from pipelines.synthetic.scene import (
    MODEL_TO_H36M_WORLD,
    Person,
    focal_for,
    h36m_rig,
    place,
    sample_betas,
    sample_outfit,
    view_rotation,
)
from pipelines.synthetic.truth import write_truth
from pipelines.synthetic.written import (
    WRITTEN_LIST,
    foreign_entries,
    record_written,
    remove_written,
    written_files,
)
from shards.schema import make_key

GENERATOR_VERSION = 3        # 2: COCO and MPII images carry their focal length in EXIF; 3: whole-body datasets
EXIF_DATASETS = ("coco", "mpii")  # their JPEGs carry the true focal length in EXIF (`paint.camera_exif`), as a
                                  # camera writes it; LSP's and LSPET's (resized crops) and Human3.6M's (video
                                  # frames, cameras in their own files) carry none
SYNTH_FILE = "fitloop_synth.json"
H36M_FPS = 50.0              # Human3.6M's cameras and pose files run at 50 Hz
VIDEO_FRAMES = ".frames"     # where the video layout's frames are painted before they are encoded (then removed)
FILL = (0.55, 0.92)          # a body's height as a share of its image (slot) height
PITCH_DEG, ROLL_DEG = 12.0, 5.0
PEOPLE_PER_IMAGE_WEIGHTS = (0.6, 0.3, 0.07, 0.03)  # of 1, 2, 3, 4 people in a multi-person image
_MIN_PARALLEL = 6            # fewer pictures than this are painted in this process
PAINT_BATCH = 8              # pictures per task sent to a render worker
SCORES = (0.35, 1.0)         # a whole-body person's labelled points get confidences U(SCORES) (OpenPose's c)
MULTI_PERSON = ("coco", "mpii", "coco_wholebody", "openpose")  # datasets whose images may hold several people
# Whole-body points whose visibility painting decides (the hands', the face's and the pupils'), and the mesh
# part (`paint.PARTS`) each must be drawn on.
PROBED = np.concatenate([wholebody_indices(WHOLEBODY_PARTS[part]) for part in ("left_hand", "right_hand", "face")])
PROBE_PARTS = np.concatenate([np.full(len(WHOLEBODY_PARTS[part]), PARTS.index(part))
                              for part in ("left_hand", "right_hand", "face")])


def generate(out_root: Path, config: SynthConfig | None = None, *, overwrite: bool = False,
             progress: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Write the config's datasets under ``out_root``; return {dataset: its folder}.

    ``progress`` (e.g. a progress bar's ``update``) is called with the number of people in each batch of pictures
    once it is painted: ``config.people(name)`` summed over the datasets in all.

    Raises SynthError when a dataset folder exists already (unless ``overwrite``; never when fitloop synth did not
    write it: no ``SYNTH_FILE`` in it, nor when it holds files fitloop synth did not write: `_check_replaceable`)
    or the pose source is unusable; an ``out_root`` made here is removed again when nothing is written into it.
    """
    config = config or SynthConfig()
    out_root = Path(out_root)
    targets = {name: out_root / name for name in DATASETS if name in config.datasets and config.people(name) > 0}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise SynthError(f"{', '.join(existing)} exist already; pass overwrite (--overwrite) to replace them")
    foreign = [str(p) for p in targets.values() if p.exists() and not (p / SYNTH_FILE).is_file()]
    if foreign:  # a real dataset in the layout's folder name: overwrite replaces only what fitloop synth wrote
        raise SynthError(f"{', '.join(foreign)} exist{'s' if len(foreign) == 1 else ''} and fitloop synth did not "
                         f"write {'it' if len(foreign) == 1 else 'them'} (no {SYNTH_FILE}); --overwrite replaces only "
                         f"synthetic datasets: move {'it' if len(foreign) == 1 else 'them'} away or choose another "
                         f"--out")
    for target in targets.values():
        if target.exists():
            _check_replaceable(target)
    made = not out_root.exists()
    out_root.mkdir(parents=True, exist_ok=True)
    try:
        return _generate(out_root, targets, config, progress)
    except BaseException:
        if made and not any(out_root.iterdir()):  # e.g. an unusable pose source: leave no empty folder behind
            out_root.rmdir()
        raise


def _check_replaceable(target: Path) -> set[str]:
    """The files fitloop synth wrote into the dataset folder ``target`` (`written.WRITTEN_LIST`); SynthError when it
    holds others (a user's, put there since) or has no list (written by a fitloop synth before the list)."""
    written = written_files(target)
    if written is None:
        raise SynthError(f"{target} was written by an older fitloop synth, which kept no list of its files "
                         f"(no {target / WRITTEN_LIST}), so --overwrite cannot tell them from yours: remove the folder "
                         f"yourself or choose another --out")
    others = foreign_entries(target, written)
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise SynthError(f"{target} holds {others[0]!r}{more}, which fitloop synth did not write; --overwrite removes "
                         f"only the files it wrote ({WRITTEN_LIST}): move {'it' if not more else 'them'} out of "
                         f"{target}, or choose another --out")
    return written


def _generate(out_root: Path, targets: dict[str, Path], config: SynthConfig,
              progress: Callable[[int], None] | None) -> dict[str, Path]:
    """`generate`'s work, once its targets are checked and ``out_root`` exists."""
    whole = any(name in WHOLEBODY_DATASETS for name in targets)
    meshes = {"body": _mesh(config.body_model, 24, "body_model")}
    if whole:
        meshes["wholebody"] = _mesh(config.wholebody_model, 55, "wholebody_model")
    pool = _start_pool(meshes, config.workers) if sum(config.people(n) for n in targets) >= _MIN_PARALLEL else None
    try:
        model = load_body_model(config.body_model)
        with torch.no_grad():
            rest = model(torch.zeros(1, model.num_betas), torch.zeros(1, 69), torch.zeros(1, 3))
        poses = pose_source(config, rest.kinematic_joints[0].double().numpy(),
                            np.random.default_rng([config.seed, 99]))
        wholebody = _wholebody_model(config.wholebody_model) if whole else None
        metadata = {"generator": "fitloop synth", "generator_version": GENERATOR_VERSION, "config": config.to_json(),
                    "poses": poses.describe(), "body_model": {"name": model.name, "model_id": model.model_id}}
        in_flight: deque[_Planned] = deque()  # planned and being painted: the next dataset is planned meanwhile
        for name, target in targets.items():
            in_flight.append(_plan(name, target, config, model, poses, meshes, pool, wholebody))
            if len(in_flight) > 1:
                _finish(in_flight.popleft(), metadata, progress)
        while in_flight:
            _finish(in_flight.popleft(), metadata, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return targets


def _mesh(body_model: str, joints: int, field: str) -> Mesh:
    """The painter's mesh of a body model (faces, their colour regions and whole-body parts), read from its file
    (no torch); SynthError unless its skinning has ``joints`` joints (24: SMPL's tree, for the body datasets; 55:
    SMPL-X's, for the whole-body ones), naming the config ``field``."""
    arrays, _ = read_model_arrays(OPEN_MODELS.get(body_model, Path(body_model)))
    faces, weights = np.asarray(arrays["f"], dtype=np.int64), np.asarray(arrays["weights"])
    if weights.shape[1] != joints:
        raise SynthError(f"{field} {body_model}: the generator draws {'SMPL' if joints == 24 else 'SMPL-X'}-tree "
                         f"bodies here ({joints} skinning joints), this model has {weights.shape[1]}")
    try:
        return mesh_of(faces, weights)
    except ValueError as err:
        raise SynthError(f"{body_model}: {err}") from None


def _wholebody_model(name: str):
    """The whole-body model of ``name`` (an SMPL-X-layout model: `fitting.wholebody_model`)."""
    from fitting.wholebody_model import WholeBodyModel

    body = load_body_model(name)
    try:
        return WholeBodyModel(body)
    except FitloopError as err:
        raise SynthError(f"wholebody_model {name}: {err}") from None


def _start_pool(meshes: dict[str, Mesh], workers: int) -> Executor | None:
    """Render workers, forked now: before the body model has run, so no torch thread pool is copied half-way
    (and, unlike spawn, without re-importing the caller's main script, which need not guard itself)."""
    if workers <= 1:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=set_meshes,
                               initargs=(meshes,))
    pool.submit(int).result()  # a fork pool starts every worker at its first task
    return pool


@dataclass
class _Planned:
    """A dataset planned and handed to the painters: where it is built, what it holds, how its files are
    written (``write(root, pictures, people)``), and the painting in progress (one future per batch)."""

    name: str
    target: Path
    work: Path
    pictures: list[Picture]
    people: list[Person]
    write: Callable[[Path, list[Picture], list[Person]], Any]
    painting: list[Future | list[Silhouette]]
    body_model: dict[str, str] | None = None  # the model its people were drawn with, when not the config's body model


def _plan(name: str, target: Path, config: SynthConfig, model: BodyModel, poses: PoseSource,
          meshes: dict[str, Mesh], pool: Executor | None, wholebody=None) -> _Planned:
    """Plan one dataset in its hidden work folder and start painting it (in the pool, or here without one);
    ``wholebody`` is the whole-body model (`fitting.wholebody_model.WholeBodyModel`) of whole-body datasets."""
    rng = np.random.default_rng([config.seed, DATASETS.index(name)])
    work = target.with_name(f".{name}.partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    if name == "h36m":
        pictures, people, write = _plan_h36m(work, config, model, poses, rng)
    elif name == "mpi_inf_3dhp":
        pictures, people, write = mpi_inf_3dhp.plan(work, config, model, poses, rng)
    else:
        pictures, people = _plan_single(name, work, config, model, poses, rng,
                                        wholebody if name in WHOLEBODY_DATASETS else None)
        write = {"coco": formats.write_coco, "mpii": formats.write_mpii,
                 "lsp": lambda root, pics, ppl: formats.write_lsp(root, pics, ppl, extended=False),
                 "lspet": lambda root, pics, ppl: formats.write_lsp(root, pics, ppl, extended=True),
                 "coco_wholebody": formats.write_coco_wholebody, "openpose": formats.write_openpose}[name]
    batches = [pictures[i:i + PAINT_BATCH] for i in range(0, len(pictures), PAINT_BATCH)]
    if pool is None or len(pictures) < _MIN_PARALLEL:
        set_meshes(meshes)
        painting: list[Future | list[Silhouette]] = [paint_batch(batch) for batch in batches]
    else:
        painting = [pool.submit(paint_batch, batch) for batch in batches]
    drawn_with = None
    if name in WHOLEBODY_DATASETS:
        drawn_with = {"name": wholebody.body.name, "model_id": wholebody.body.model_id}
    return _Planned(name, target, work, pictures, people, write, painting, drawn_with)


def _finish(planned: _Planned, metadata: dict[str, Any], progress: Callable[[int], None] | None = None) -> None:
    """Wait for a dataset's pictures, write its files and truth, and move it into place; ``progress`` hears of
    the people of each painted batch."""
    silhouettes = []
    people_in = Counter(person.picture for person in planned.people)  # a video's frames between samples hold none
    for done in planned.painting:
        batch = done.result() if isinstance(done, Future) else done
        if progress is not None:
            progress(sum(people_in[i] for i in range(len(silhouettes), len(silhouettes) + len(batch))))
        silhouettes += batch
    for person in planned.people:
        person.silhouette = silhouettes[person.picture][person.ids["body"]]
        if person.probes is not None:
            person.shown = np.zeros(NUM_WHOLEBODY, dtype=bool)
            person.shown[np.flatnonzero(person.probes)] = person.silhouette.visible
    for picture in planned.pictures:
        picture.bodies = []  # painted: the vertices are no longer needed
    planned.write(planned.work, planned.pictures, planned.people)
    formats.write_part_labels(planned.work, planned.people)
    info = {**metadata, "dataset": planned.name, "people": len(planned.people), "images": len(planned.pictures)}
    if planned.body_model is not None:
        info["body_model"] = planned.body_model
    write_truth(planned.work, planned.people, planned.pictures, info)
    record_written(planned.work, also=(SYNTH_FILE,))
    (planned.work / SYNTH_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if planned.target.exists():  # checked by `generate`; again here, for what may have been put there since
        remove_written(planned.target, _check_replaceable(planned.target))
    planned.work.rename(planned.target)


# --- Single-image datasets (COCO, MPII, LSP, LSPET) -----------------------------------------------------------------

def _plan_single(name: str, root: Path, config: SynthConfig, model: BodyModel, poses: PoseSource,
                 rng: np.random.Generator, wholebody=None) -> tuple[list[Picture], list[Person]]:
    """Pictures and people of one single-image dataset: who stands in which image, seen how, framed where.
    With ``wholebody`` (a `fitting.wholebody_model.WholeBodyModel`) the people are whole-body: its bodies with
    hands (`hands_face.sample_hands`) and faces (`hands_face.sample_faces`)."""
    total = config.people(name)
    multi = name in MULTI_PERSON and config.max_people_per_image > 1
    counts: list[int] = []
    while sum(counts) < total:
        most = min(config.max_people_per_image, total - sum(counts)) if multi else 1
        weights = np.array(PEOPLE_PER_IMAGE_WEIGHTS[:most])
        counts.append(int(rng.choice(np.arange(1, most + 1), p=weights / weights.sum())))

    body_poses = poses.sample(total, rng)
    betas = sample_betas(rng, total, (wholebody or model).num_betas, config.betas_clip)
    views = [view_rotation(rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(-PITCH_DEG, PITCH_DEG)),
                           np.radians(rng.uniform(-ROLL_DEG, ROLL_DEG))) for _ in range(total)]
    body_poses[:, :3] = rotate_orient(np.stack(views), body_poses[:, :3])
    if wholebody is None:
        posed = pose_bodies(model, betas, body_poses)
        vertices_of, joints_of = posed.vertices, posed.joints
    else:
        full_pose, expression = _wholebody_parameters(body_poses, rng, wholebody.num_expression)
        posed_whole = pose_wholebody(wholebody, betas, full_pose, expression)
        vertices_of, joints_of = posed_whole.vertices, posed_whole.points[:, :NUM_JOINTS]
        body_poses = np.concatenate([full_pose[:, :66], np.zeros((total, 6))], axis=1)  # the fits table's SMPL-X pose

    pictures, people = [], []
    low, high = config.wholebody_image_size if wholebody is not None else config.image_size
    # COCO's val2014 (COCO-WholeBody's val2017) and MPII's pose-hg valid.h5 get the last 20% / 10% of the images
    # (at least one of two or more); the other datasets have no held-out part
    held_out = max(1, round(len(counts) * (0.1 if name == "mpii" else 0.2))) if len(counts) > 1 else 0
    val_from = len(counts) - held_out
    annotation_id = 0
    for i, k in enumerate(counts):
        height = int(rng.integers(low, high + 1))
        if k == 1:
            width = int(rng.integers(low, high + 1))
        else:  # side by side: wide enough for k upright people
            width = int(height * rng.uniform(0.55 * k + 0.25, 0.7 * k + 0.4))
        size = (width, height)
        focal = focal_for(size, rng.uniform(*config.fov_deg))
        principal = ((width - 1) / 2.0, (height - 1) / 2.0)
        truncate = k == 1 and name in MULTI_PERSON and rng.random() < config.truncated_share
        path, ids = _single_ids(name, root, i, i >= val_from)
        picture = Picture(path=path, size=size, focal=(focal, focal), principal=principal,
                          background_seed=int(rng.integers(2 ** 31)), jpeg_quality=config.jpeg_quality,
                          exif=name in EXIF_DATASETS)
        for r in range(k):
            n = len(people)
            slot = (r * width / k, (r + 1) * width / k)
            offset = place(vertices_of[n].astype(np.float64), focal, principal, size, slot,
                           rng.uniform(*FILL), truncate, rng)
            vertices = vertices_of[n] + offset.astype(np.float32)
            pixels = pinhole(vertices, focal, principal)
            joints = joints_of[n] + offset
            annotation_id += 1
            key, person_ids = _person_ids(name, path, ids, r, annotation_id)
            outfit, regions = sample_outfit(rng)
            person = Person(
                key=key, picture=i, pose=body_poses[n], betas=betas[n], transl=offset, joints=joints,
                keypoints=pinhole(joints, focal, principal), outfit=outfit,
                vertex_box=(*pixels.min(axis=0), *pixels.max(axis=0)), ids={**person_ids, "body": r})
            body = Body(vertices=vertices, colours=regions)
            if wholebody is not None:
                _dress_wholebody(person, body, posed_whole, n, full_pose[n], expression[n], offset, focal,
                                 principal, rng)
            people.append(person)
            picture.bodies.append(body)
        pictures.append(picture)
    return pictures, people


def _wholebody_parameters(body_poses: np.ndarray, rng: np.random.Generator,
                          num_expression: int) -> tuple[np.ndarray, np.ndarray]:
    """SMPL-X full poses (N, 165) and expressions (N, NE) of whole-body people whose global orientation and 21
    body joints are ``body_poses`` (N, 72)[:, :66] (SMPL's and SMPL-X's first 22 joints are the same), with
    hands, jaw and expression drawn (`hands_face`) and the eyes straight."""
    from fitting.wholebody_model import POSE_SLICES

    count = len(body_poses)
    left, right = sample_hands(rng, count)
    jaw, expression = sample_faces(rng, count, num_expression)
    full_pose = np.zeros((count, 165))
    full_pose[:, :66] = body_poses[:, :66]
    full_pose[:, POSE_SLICES["left_hand_pose"]] = left
    full_pose[:, POSE_SLICES["right_hand_pose"]] = right
    full_pose[:, POSE_SLICES["jaw_pose"]] = jaw
    return full_pose, expression


def _dress_wholebody(person: Person, body: Body, posed, n: int, full_pose: np.ndarray, expression: np.ndarray,
                     offset: np.ndarray, focal: float, principal: tuple[float, float],
                     rng: np.random.Generator) -> None:
    """Give a whole-body person (``posed`` row ``n``, moved by ``offset``) its whole-body truth, its probes (the
    provided hand, face and pupil points, to be tested for visibility by painting) and the scores of its
    points; the body is drawn with the whole-body mesh."""
    points = np.where(posed.provided[:, None], posed.points[n] + offset, 0.0)
    projected = np.where(posed.provided[:, None], pinhole(np.where(posed.provided[:, None], points, 1.0), focal,
                                                          principal), 0.0)
    probed = np.zeros(NUM_WHOLEBODY, dtype=bool)
    probed[PROBED] = True
    probed &= posed.provided
    person.full_pose, person.expression = full_pose, expression
    person.wholebody, person.wholebody_keypoints, person.provided = points, projected, posed.provided.copy()
    person.probes = probed
    person.scores = np.round(rng.uniform(*SCORES, NUM_WHOLEBODY), 3)
    body.mesh = "wholebody"
    body.probes = np.column_stack([projected[probed], points[probed, 2]])
    body.probe_parts = PROBE_PARTS[probed[PROBED]]


def _single_ids(name: str, root: Path, index: int, held_out: bool) -> tuple[Path, dict[str, Any]]:
    """Image path and format ids of picture ``index`` (0-based); ``held_out``: COCO val / MPII pose-hg valid."""
    if name == "coco":
        subset = "val2014" if held_out else "train2014"
        return root / subset / f"COCO_{subset}_{index + 1:012d}.jpg", {"subset": subset, "image_id": index + 1}
    if name == "mpii":
        return root / "images" / f"{index + 1:09d}.jpg", {"image_index": index, "split": "val" if held_out else "train"}
    if name == "coco_wholebody":  # COCO 2017's image names, in its train2017 / val2017 folders
        subset = "val2017" if held_out else "train2017"
        return root / subset / f"{index + 1:012d}.jpg", {"subset": subset, "image_id": index + 1}
    if name == "openpose":  # the flat layout OpenPose's users have: images/, keypoints/
        return root / "images" / f"{index + 1:06d}.jpg", {"image_index": index}
    digits = 4 if name == "lsp" else 5
    return root / "images" / f"im{index + 1:0{digits}d}.jpg", {"image_index": index}


def _person_ids(name: str, path: Path, ids: dict[str, Any], rect: int, annotation_id: int) -> tuple[str, dict]:
    """The sample key the dataset's adapter gives this person, and its format ids."""
    if name in ("coco", "coco_wholebody"):
        return (make_key(name, f"{ids['image_id']:012d}", f"a{annotation_id}"),
                {**ids, "annotation_id": annotation_id})
    if name == "openpose":
        return openpose_key(path.stem, rect), {**ids, "person": rect}  # the adapter's key, whatever the stem
    if name == "mpii":
        return make_key("mpii", path.stem, f"p{rect}"), {**ids, "person": rect}
    return make_key(name, path.stem), dict(ids)


# --- Human3.6M --------------------------------------------------------------------------------------------------------

def _plan_h36m(root: Path, config: SynthConfig, model: BodyModel, poses: PoseSource, rng: np.random.Generator):
    """Pictures and people of the Human3.6M set, and a function that writes its pose, camera and mask files.

    Per subject one shape and colour; per (subject, action) one motion (``h36m_frames`` frames) walked across
    the capture area with its feet on the floor (z = 0), filmed by the subject's four cameras. Every frame goes
    into the pose files; frames 0, step, 2·step … get images and truth. With the ``video`` layout every frame is
    painted (one background per camera and sequence) and the frames become the release's MP4 videos
    (`VIDEO_LAYOUT`, 50 fps) once painted; the people (and the truth's ``image``) name the video.
    """
    size = tuple(config.h36m_image_size)
    rig = h36m_rig(size, rng)
    video = config.h36m_image_layout == "video"
    pattern = VIDEO_LAYOUT if video else image_pattern(config.h36m_image_layout)
    videos: list[tuple[Path, list[int]]] = []  # (video file, its frames' pictures)
    frames, step = config.h36m_frames, config.h36m_frame_step
    pictures: list[Picture] = []
    people: list[Person] = []
    pose_files: list[tuple[Path, np.ndarray]] = []
    mask_files: list[tuple[Path, np.ndarray]] = []
    foreground_files: list[tuple[Path, dict[int, int]]] = []  # (file, frame -> index into people)
    sequences = []  # (subject, action, betas (F, NB), motion (F, 72) world frame, outfit, region colours)
    for subject in config.h36m_subjects:
        betas = np.repeat(sample_betas(rng, 1, model.num_betas, config.betas_clip), frames, axis=0)
        outfit, regions = sample_outfit(rng)
        for action in config.h36m_actions:
            motion = poses.sequence(frames, rng)
            heading = Rotation.from_euler("z", rng.uniform(0, 2 * np.pi)).as_matrix()
            motion[:, :3] = rotate_orient(heading @ MODEL_TO_H36M_WORLD, motion[:, :3])
            sequences.append((subject, action, betas, motion, outfit, regions))
    # every frame of every sequence in one batched pass (a forward pass costs the same for 10 bodies as for 100)
    everyone = pose_bodies(model, np.concatenate([seq[2] for seq in sequences]),
                           np.concatenate([seq[3] for seq in sequences]), with_h36m=True)
    for n, (subject, action, betas, motion, outfit, regions) in enumerate(sequences):
        features = root / subject / "MyPoseFeatures"
        span = slice(n * frames, (n + 1) * frames)
        vertices, kinematic = everyone.vertices[span], everyone.kinematic[span]
        start = rng.uniform(-0.6, 0.6, 2)
        path_xy = start + np.linspace(0, 1, frames)[:, None] * rng.uniform(-0.8, 0.8, 2)
        offset = np.column_stack([path_xy - kinematic[:, 0, :2], -vertices[:, :, 2].min(axis=1)])  # feet on z = 0
        world = {"vertices": vertices + offset[:, None].astype(np.float32),
                 "joints": everyone.joints[span] + offset[:, None], "kinematic": kinematic + offset[:, None],
                 "h36m": everyone.h36m[span] + offset[:, None]}
        raw_world = h36m_files.raw_joints(world["h36m"], world["joints"], world["kinematic"])
        pose_files.append((features / "D3_Positions" / f"{action}.cdf", raw_world * 1000.0))
        for serial in CAMERA_NAMES:
            cam = rig[(subject, serial)]
            stem = f"{action}.{serial}"
            raw_cam = _to_camera(cam, raw_world)
            pose_files.append((features / "D3_Positions_mono" / f"{stem}.cdf", raw_cam * 1000.0))
            pose_files.append((features / "D2_Positions" / f"{stem}.cdf", cam.project(raw_cam)))
            vertices_cam = _to_camera(cam, world["vertices"])
            pixels = cam.project(vertices_cam.astype(np.float64))
            boxes = np.concatenate([pixels.min(axis=1), pixels.max(axis=1)], axis=1)
            mask_files.append((root / subject / "MySegmentsMat" / "ground_truth_bb" / f"{stem}.mat",
                               h36m_files.mesh_boxes(boxes, size)))
            drawn: dict[int, int] = {}
            foreground_files.append((root / subject / "MySegmentsMat" / "ground_truth_bs" / f"{stem}.mat", drawn))
            orient, transl = move_parameters(motion[:, :3], offset, everyone.root_rest[span], cam.R,
                                             -cam.R @ cam.T / 1000.0)
            background = int(rng.integers(2 ** 31))
            if video:
                videos.append((root / pattern.format(subject=subject, action=action, camera=serial), []))
            for frame in range(0, frames, 1 if video else step):
                image = root / pattern.format(subject=subject, action=action, action_us=action.replace(" ", "_"),
                                              camera=serial, frame=frame, frame1=frame + 1)
                if video:  # painted here, then encoded into the video and removed
                    image = root / VIDEO_FRAMES / f"{len(pictures):07d}.jpg"
                    videos[-1][1].append(len(pictures))
                    if frame % step:  # a frame the adapter skips: painted for the video, no person
                        pictures.append(Picture(
                            path=image, size=size, focal=(float(cam.f[0]), float(cam.f[1])),
                            principal=(float(cam.c[0]), float(cam.c[1])), background_seed=background,
                            bodies=[Body(vertices=vertices_cam[frame].astype(np.float32), colours=regions)],
                            jpeg_quality=config.jpeg_quality))
                        continue
                drawn[frame] = len(people)
                joints = _to_camera(cam, world["joints"][frame])
                h36m = _to_camera(cam, world["h36m"][frame])
                people.append(Person(
                    key=make_key("h36m", f"{subject}_{action}.{serial}_{frame + 1:06d}"), picture=len(pictures),
                    pose=np.concatenate([orient[frame], motion[frame, 3:]]), betas=betas[frame],
                    transl=transl[frame], joints=joints, keypoints=cam.project(joints), outfit=outfit,
                    vertex_box=tuple(boxes[frame]), ids={"body": 0}, h36m_joints=h36m,
                    h36m_keypoints=cam.project(raw_cam[frame][RAW_INDEX])))
                pictures.append(Picture(
                    path=image, size=size, focal=(float(cam.f[0]), float(cam.f[1])),
                    principal=(float(cam.c[0]), float(cam.c[1])),
                    background_seed=background if video else int(rng.integers(2 ** 31)),
                    bodies=[Body(vertices=vertices_cam[frame].astype(np.float32), colours=regions)],
                    jpeg_quality=config.jpeg_quality))

    def write_files(_root: Path, _pictures: list[Picture], _people: list[Person]) -> None:
        mpi_inf_3dhp.encode_videos(videos, _pictures, H36M_FPS)  # the painted frames become the videos
        if videos:
            shutil.rmtree(root / VIDEO_FRAMES)
        for path, values in pose_files:
            h36m_files.write_pose_cdf(path, values)
        for path, boxes in mask_files:
            h36m_files.write_box_masks(path, boxes, size)
        empty = np.zeros(size[::-1], dtype=np.uint8)
        for path, drawn in foreground_files:
            silhouettes = {frame: _people[i].silhouette for frame, i in drawn.items()}
            h36m_files.write_masks(path, [
                (silhouettes[f].labels.array() > 0).astype(np.uint8)
                if f in silhouettes and silhouettes[f] is not None and silhouettes[f].labels is not None else empty
                for f in range(frames)])
        h36m_files.write_cameras_h5(root / "cameras.h5", rig)
        h36m_files.write_metadata_xml(root / "metadata.xml", rig)

    return pictures, people, write_files


def _to_camera(cam: Camera, points: np.ndarray) -> np.ndarray:
    """World points (..., 3) m -> the camera's frame, m (the camera's T is mm, as in the files)."""
    return cam.to_camera(np.asarray(points, dtype=np.float64) * 1000.0) / 1000.0
