"""The cases of `fitloop bench smplify`: who is fitted, seen by which camera, from which keypoints and start.

**People** come from pose sources with fixed roles, each split by a rule no fit can move (`People`):

* ``cmu``: CMU motion capture of subjects the shipped pose prior never saw (`assets.prior_train`
  CMU_DEV_SUBJECTS for ``dev``, CMU_TEST_SUBJECTS for ``test``): the BVH clips of ../shared/mocap/cmu converted to
  the body model's joint rotations (`assets.bvh`), frame 0 dropped, glitched frames rejected
  (`assets.prior_train.plausible_frames`), every third frame (10 fps).
* ``lsp``: SPIN's fits of the 1000 LSP training images (../shared/fixtures/lsp/spin_npz/lsp-orig_fits.npy), real
  SMPL poses from a network and SMPLify; ``dev`` = rows 0–499, ``test`` = rows 500–999.
* ``synthetic``: body poses drawn from the shipped pose prior by the synthetic generator's source
  (`pipelines.synthetic.poses.PriorPoses`: upright, within the rotation limits); in the prior's own distribution
  by construction, the easy case. ``dev`` and ``test`` are different random streams.
* ``file``: anyone's poses, `load_pose_file` (format in its docstring); no split, all of it is used.

Every person gets a heading drawn uniformly over the full circle about the vertical and, unless the file gives
them, betas ~ N(0, 1). Poses are (N, 72) axis-angle radians, body pose relative to the body model's T-pose; a
person's *world* frame is the body model's (Y up).

**Cameras** (`View`, `CAMERAS`): the camera that took the keypoints, and the one SMPLify fits with.

* ``real``: a Human3.6M/MPI-INF-3DHP-like camera (focal 1150 px ± 5 %, 1000 px image, pitch −5°…20° down, roll
  ±3°), the person's pelvis 3–7 m away anywhere in the image that keeps every joint 20 px inside; the keypoints
  are those of that image, then SPIN's crop (the keypoints' box × 1.2, `pipelines.adapters.base.keypoint_box`)
  into the 224 px fit frame, where SMPLify assumes SPIN's crop camera (f = 5000 px, principal point 112 px): the
  mismatch of real SPIN usage (fits in the ``crop`` frame of the fits table).
* ``image``: the same people, the same keypoints (same draws), fitted with the real camera's true intrinsics
  (fits in the ``image`` frame): its focal length and principal point written in fit-frame px by the exact map of
  SPIN's crop (`core.frames.camera_through` of the map `keypoints_in_fit_frame` applies), given to SMPLify per
  example. It is the original image's camera, so a fit's pose and translation are in that camera's frame, as if
  fitted in the original image's px; keeping the fit frame's px keeps the robust term's σ, the noise and the
  prior weights in the same px as ``real``, so that the camera is the only difference between the two.
* ``crop``: SPIN's crop camera itself (f = 5000 px, principal point 112 px, level), the person placed so that
  its keypoints' box × 1.2 is the crop: SMPLify's camera is exactly right (both frames are one here).

**Keypoints** (`observe`): the 24 dataset joints (`core.joints.J24_NAMES`) in the fit frame; ``clean``, or
``noisy``: Gaussian noise of 5 px per coordinate in the fit frame and each joint dropped with probability 0.1.

**Starts** (`mean_start`, `network_start`): ``mean`` is SMPLify's `mean_pose_start` (start="mean");
``net<L>`` is network-like (start="estimate"): the true pose with every joint rotation (global orientation
included) turned by a random rotation ε·σ_L, ε ~ N(0, I₃) per joint, the mean shape, and the translation that
puts that body's torso on the keypoints' torso (`core.camera.translation_from_torso`, with the camera SMPLify
fits with) — never the true one.
σ_L is calibrated (`calibrate_noise`) so that the median start PA-MPJPE of the dev split is L mm.

Every random draw comes from its own stream, ``numpy.random.default_rng([seed, source, split, purpose])``, so
the first k people of a run of n > k cases are the people of a run of k cases; everything is deterministic.
"""
from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from assets import bvh
from assets.prior_train import (
    CMU_DEV_SUBJECTS,
    CMU_TEST_SUBJECTS,
    POSE_WIDTHS,
    clip_table,
    plausible_frames,
    smpl_full_pose,
)
from core.camera import translation_from_torso
from core.errors import FitloopError
from core.frames import (
    FIT_CENTER,
    FIT_FOCAL,
    FIT_RES,
    PixelCamera,
    camera_through,
    keypoints_in_fit_frame,
    stored_to_fit_frame,
)
from core.joints import J24_NAMES, JOINT_INDEX, NUM_JOINTS, indices
from core.metrics import pa_mpjpe
from core.pinhole import pinhole
from fits.evaluate import posed_eval_joints
from fitting.body_model import BodyModel
from fitting.priors import DEFAULT_PRIOR
from fitting.smplify import TORSO_PAIR_INDEX, mean_pose_start
from pipelines.adapters.base import keypoint_box
from pipelines.synthetic.poses import PriorPoses
from shards.crop import box_side

SHARED = Path(__file__).resolve().parents[2] / "shared"
CMU_DIR = SHARED / "mocap" / "cmu"
SPIN_LSP_FITS = SHARED / "fixtures" / "lsp" / "spin_npz" / "lsp-orig_fits.npy"

SPLITS = ("dev", "test")
SOURCES = ("cmu", "lsp", "synthetic")
CMU_SUBJECTS = {"dev": CMU_DEV_SUBJECTS, "test": CMU_TEST_SUBJECTS}
CMU_FPS = 10.0                                   # frames kept per second of mocap (the prior's rate)
LSP_ROWS = {"dev": range(0, 500), "test": range(500, 1000)}
CAMERAS = ("real", "image", "crop")               # the arms: the camera that took the keypoints, the frame fitted
VIEW_CAMERA = {"real": "real", "image": "real", "crop": "crop"}
FIT_FRAME = {"real": "crop", "image": "image", "crop": "crop"}  # as the fits table's frame column names them
NOISE = ("clean", "noisy")
NOISE_PX = 5.0                                   # per coordinate, fit-frame px
DROP_SHARE = 0.10
START_TARGETS_MM = (60.0, 90.0, 120.0)           # median start PA-MPJPE of the network-like starts on dev
STARTS = ("mean",) + tuple(f"net{int(t)}" for t in START_TARGETS_MM)

# The real camera (Human3.6M: 1000 px images, focal ~1145 px, people 3-7 m away; MPI-INF-3DHP is alike).
REAL_IMAGE_PX = 1000
REAL_FOCAL_PX = 1150.0
REAL_FOCAL_SPREAD = 0.05                         # focal ~ REAL_FOCAL_PX * U(1 - s, 1 + s)
REAL_CENTER_SPREAD_PX = 10.0                     # principal point ~ image centre + U(-s, s)
REAL_DEPTH_M = (3.0, 7.0)                        # pelvis depth
REAL_PITCH_DEG = (-5.0, 20.0)                    # camera looking down (positive) or up
REAL_ROLL_DEG = 3.0
REAL_MARGIN_PX = 20.0                            # every joint at least this far inside the image
SPIN_BOX_EXPAND = 1.2                            # SPIN's box: the keypoints' tight box x 1.2
CROP_PERSON_PX = FIT_RES / SPIN_BOX_EXPAND       # the crop camera's keypoint box side in the fit frame

_J24 = indices(J24_NAMES)
_PELVIS = JOINT_INDEX["Pelvis (MPII)"]
_STREAMS = {name: i for i, name in enumerate(("people", "heading", "betas", "real", "noise", "drop", "start",
                                               "synthetic", "clothing"))}
_SOURCE_IDS = {"cmu": 1, "lsp": 2, "synthetic": 3, "file": 4}
_LEVEL = Rotation.from_euler("x", np.pi)         # world (Y up) -> a level camera (y down, z forward)


class BenchCaseError(FitloopError):
    """A pose source of the benchmark is missing or malformed."""


def rng_for(seed: int, source: str, split: str, purpose: str) -> np.random.Generator:
    """The random stream of one purpose (module docstring)."""
    return np.random.default_rng([seed, _SOURCE_IDS[source], SPLITS.index(split) if split in SPLITS else 2,
                                  _STREAMS[purpose]])


# --- People --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class People:
    """N people of one source and split: world-frame poses (N, 72) axis-angle (Y up, heading applied), betas
    (N, NB), where each came from (N strings), and a json-able description of the source."""

    source: str
    split: str
    pose: np.ndarray
    betas: np.ndarray
    origin: list[str]
    about: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pose)


@dataclass(frozen=True)
class PosePool:
    """The poses a source draws people from: (M, 72) axis-angle, world frame (Y up, any heading)."""

    poses: np.ndarray
    origin: list[str]
    betas: np.ndarray | None
    about: dict[str, Any]


def available_sources(sources: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The sources whose data is here, and a note for each one left out (its data is absent)."""
    keep, notes = [], {}
    for name in sources:
        if name == "cmu" and not CMU_DIR.is_dir():
            notes[name] = f"{CMU_DIR} is absent (the CMU clips live in ../shared beside the checkout)"
        elif name == "lsp" and not SPIN_LSP_FITS.is_file():
            notes[name] = f"{SPIN_LSP_FITS} is absent (SPIN's LSP fits live in ../shared beside the checkout)"
        else:
            keep.append(name)
    return tuple(keep), notes


def rest_joints(body: BodyModel) -> np.ndarray:
    """The body model's rest kinematic joints (24, 3) metres, which BVH rotations are made relative to."""
    device = next(body.buffers()).device
    with torch.no_grad():
        rest = body(torch.zeros(1, body.num_betas, device=device), torch.zeros(1, 69, device=device),
                    torch.zeros(1, 3, device=device))
    return rest.kinematic_joints[0].double().cpu().numpy()


def cmu_pool(split: str, rest: np.ndarray, directory: Path = CMU_DIR) -> PosePool:
    """The converted frames of the CMU subjects of ``split`` (module docstring)."""
    poses, origin, clips = _cmu_frames(str(directory), CMU_SUBJECTS[split], rest.tobytes())
    if not len(poses):
        raise BenchCaseError(f"{directory}: no clip of CMU subjects {list(CMU_SUBJECTS[split])} ({split} split) "
                             f"could be read; the benchmark needs ../shared/mocap/cmu as shipped")
    return PosePool(poses, origin, None, {
        "what": f"CMU motion capture, subjects {list(CMU_SUBJECTS[split])} (held out of the shipped pose prior)",
        "subjects": list(CMU_SUBJECTS[split]), "clips": clips, "frames": len(poses),
        "acknowledgment": "The data used in this project was obtained from mocap.cs.cmu.edu. The database was "
                          "created with funding from NSF EIA-0196217. BVH conversion by Bruce Hahne."})


@functools.lru_cache(maxsize=4)
def _cmu_frames(directory: str, subjects: tuple[int, ...],
                rest_bytes: bytes) -> tuple[np.ndarray, list[str], list[str]]:
    rest = np.frombuffer(rest_bytes, dtype=np.float64).reshape(-1, 3)
    poses, origin, clips = [], [], []
    for entry in clip_table(Path(directory)):
        if entry.subject not in subjects:
            continue
        clip = bvh.parse_bvh(Path(directory) / entry.file)
        converted = bvh.convert_clip(clip, rest, drop_first=True).poses
        keep, _ = plausible_frames(converted)
        step = max(1, round(1.0 / (clip.frame_time * CMU_FPS)))
        frames = np.flatnonzero(keep)[::step]
        poses.append(converted[frames])
        origin += [f"{entry.file}:{f + 1}" for f in frames]  # frame numbers of the BVH file (0 = its T-pose)
        clips.append(entry.file)
    stacked = np.concatenate(poses) if poses else np.zeros((0, 72))
    stacked.setflags(write=False)
    return stacked, origin, clips


def lsp_pool(split: str, path: Path = SPIN_LSP_FITS) -> PosePool:
    """SPIN's LSP fits, rows of ``split`` (module docstring); their camera-frame orientation turned into the world."""
    fits = np.load(path)
    rows = np.asarray(LSP_ROWS[split])
    pose = fits[rows, :72].astype(np.float64)
    pose[:, :3] = (_LEVEL.inv() * Rotation.from_rotvec(pose[:, :3])).as_rotvec()  # SPIN's camera: y down
    return PosePool(pose, [f"lsp-orig_fits:{r}" for r in rows], None, {
        "what": f"SPIN's fits of the LSP training images, rows {rows[0]}-{rows[-1]}", "file": path.name,
        "rows": [int(rows[0]), int(rows[-1])]})


UP_AXES = {"y": Rotation.identity(), "-y": _LEVEL.inv(), "z": Rotation.from_euler("x", -np.pi / 2)}


def load_pose_file(path: Path) -> PosePool:
    """Outsiders' poses: a ``.npz`` with ``poses`` (N, 72) SMPL-format axis-angle radians (global orientation,
    then 23 body joints relative to the T-pose), optional ``betas`` (N, NB) of the body model the benchmark runs,
    optional ``name`` (a string naming the set) and optional ``up`` (the world's up axis of the global
    orientations: "y", as the body model and AMASS-to-SMPL exports; "-y", a camera frame as SPIN's fits and
    3DPW's camera-frame poses; "z", AMASS's raw Z-up world). Read without pickles. SMPL-H (N, 156: AMASS) and
    SMPL-X (N, 165) full poses are taken too (`POSE_WIDTHS`): their global orientation and 21 body joints, which
    are SMPL's first 22, with SMPL's two hand joints at rest (the fingers, jaw and eyes have no SMPL joint)."""
    def unreadable(why: str) -> BenchCaseError:
        return BenchCaseError(f"{path}: not a readable .npz of poses ({why}); the file must be a NumPy .npz "
                              f"(np.savez) holding `poses` (N, W) axis-angle, W = 72 (SMPL), 156 (SMPL-H) or 165 "
                              f"(SMPL-X), and optionally `betas` (N, NB), `name` and `up`; see `fitloop bench "
                              f"smplify --help`")

    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError:  # numpy unpickles what is neither .npz nor .npy (JSON, text, a pickle), which is refused
        raise unreadable("it is neither a .npz nor a .npy file") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise unreadable(f"{type(err).__name__}: {err}") from None
    if isinstance(loaded, np.ndarray):
        raise unreadable(f"a .npy file holds one bare array, here of shape {loaded.shape}: save it as `poses` in "
                         f"a .npz, np.savez(FILE, poses=array)")
    try:
        with loaded as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as err:  # numpy's "Object arrays cannot be loaded when allow_pickle=False", or a bad header
        raise unreadable("an array in it holds Python objects, which are never unpickled" if "pickle" in str(err)
                         else f"ValueError: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # a damaged member
        raise unreadable(f"{type(err).__name__}: {err}") from None
    if "poses" not in arrays:
        raise BenchCaseError(f"{path}: no `poses` array; the file needs poses (N, 72) SMPL axis-angle")
    pose = np.asarray(arrays["poses"], dtype=np.float64)
    if pose.ndim != 2 or pose.shape[1] not in POSE_WIDTHS or len(pose) == 0:
        raise BenchCaseError(f"{path}: `poses` has shape {pose.shape}; expected (N, W), N >= 1, axis-angle of "
                             + ", ".join(f"W = {w} {layout}" for w, layout in POSE_WIDTHS.items()))
    layout = POSE_WIDTHS[pose.shape[1]]
    pose = smpl_full_pose(pose)   # the widths `fitloop prior train --amass` reads too
    if not np.isfinite(pose).all():
        raise BenchCaseError(f"{path}: `poses` has non-finite values in rows "
                             f"{np.flatnonzero(~np.isfinite(pose).all(1))[:5].tolist()}")
    betas = None
    if "betas" in arrays:
        betas = np.asarray(arrays["betas"], dtype=np.float64)
        if betas.ndim != 2 or len(betas) != len(pose) or not np.isfinite(betas).all():
            raise BenchCaseError(f"{path}: `betas` has shape {betas.shape}; expected ({len(pose)}, NB), finite")
    up = str(arrays["up"]) if "up" in arrays else "y"
    if up not in UP_AXES:
        raise BenchCaseError(f"{path}: `up` is {up!r}; use one of {sorted(UP_AXES)}")
    pose[:, :3] = (UP_AXES[up] * Rotation.from_rotvec(pose[:, :3])).as_rotvec()
    name = str(arrays["name"]) if "name" in arrays else path.stem
    return PosePool(pose, [f"{path.name}:{i}" for i in range(len(pose))], betas,
                    {"what": f"poses from {path.name}", "name": name, "file": str(path), "poses": len(pose),
                     "layout": layout, "up": up, "betas": "from the file" if betas is not None else "N(0, 1)"})


def draw_indices(pool_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into a pool: a random permutation, then further ones once it is used up (any count)."""
    rounds = -(-count // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(rounds)])[:count]


def make_people(source: str, split: str, count: int, body: BodyModel, seed: int,
                pool: PosePool | None = None) -> People:
    """``count`` people of a source and split (module docstring). ``pool``: a pose file's (`load_pose_file`),
    required for ``source="file"``."""
    nb = body.num_betas
    if source == "synthetic":
        poses = PriorPoses(DEFAULT_PRIOR).sample(count, rng_for(seed, source, split, "synthetic"))
        pool = PosePool(poses, [f"prior-sample:{i}" for i in range(count)], None, {
            "what": "body poses sampled from the shipped pose prior (the synthetic generator's PriorPoses), "
                    "upright; in the prior's own distribution", "file": DEFAULT_PRIOR.name})
        picked = np.arange(count)
    else:
        if pool is None:
            pool = {"cmu": lambda: cmu_pool(split, rest_joints(body)), "lsp": lambda: lsp_pool(split)}[source]()
        picked = draw_indices(len(pool.poses), count, rng_for(seed, source, split, "people"))
    pose = pool.poses[picked].copy()
    heading = rng_for(seed, source, split, "heading").uniform(0.0, 2 * np.pi, count)
    pose[:, :3] = (Rotation.from_euler("y", heading[:, None]) * Rotation.from_rotvec(pose[:, :3])).as_rotvec()
    if pool.betas is not None:
        betas = np.zeros((count, nb))
        given = pool.betas[picked, :nb]
        betas[:, :given.shape[1]] = given
    else:
        betas = rng_for(seed, source, split, "betas").standard_normal((count, nb))
    return People(source, split, pose, betas, [pool.origin[i] for i in picked],
                  {**pool.about, "pool_size": len(pool.poses)})


# --- Cameras --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """People seen by one camera. pose (N, 72): the truth, global orientation in this camera's frame (x right,
    y down, z forward); cam_t (N, 3) m: the true translation (camera point = body-model point + cam_t); up (N, 3):
    the world's up direction in the camera frame; points (N, 24, 2) px: the 24 dataset joints in the camera's
    image (``real``: the 1000 px image, pixel centres at integers; ``crop``: the fit frame); focal (N,) px, center
    (N, 2) px, image_px: that image's intrinsics and side."""

    camera: str
    pose: np.ndarray
    betas: np.ndarray
    cam_t: np.ndarray
    up: np.ndarray
    points: np.ndarray
    focal: np.ndarray
    center: np.ndarray
    image_px: float


def posed_joints(body: BodyModel, pose: np.ndarray, betas: np.ndarray, batch: int = 512) -> np.ndarray:
    """The 49 canonical joints (N, 49, 3) metres of bodies (pose (N, 72), betas (N, NB)), model frame, float64."""
    device = next(body.buffers()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(pose), batch):
            p = torch.as_tensor(pose[s:s + batch], dtype=torch.float32, device=device)
            b = torch.as_tensor(betas[s:s + batch], dtype=torch.float32, device=device)
            out.append(body(b, p[:, 3:], p[:, :3]).joints.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_JOINTS, 3))


def _project(points: np.ndarray, focal: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Camera-frame points (N, J, 3) -> px (N, J, 2) with per-person focal (N,) and centre (N, 2) (`pinhole`)."""
    return pinhole(points, focal[:, None, None], center[:, None, :])


def view(people: People, camera: str, body: BodyModel, seed: int) -> View:
    """The people seen by ``camera`` ("real" or "crop", `VIEW_CAMERA`; module docstring)."""
    n = len(people)
    if camera == "crop":
        rot = _LEVEL * Rotation.identity(n)
        focal, center, image = np.full(n, FIT_FOCAL), np.full((n, 2), FIT_CENTER), float(FIT_RES)
    elif camera == "real":
        # one row of uniforms per person, so the first k people of a larger run are those of a run of k
        u = rng_for(seed, people.source, people.split, "real").uniform(0.0, 1.0, (n, 8))
        focal = REAL_FOCAL_PX * (1 + REAL_FOCAL_SPREAD * (2 * u[:, 0] - 1))
        center = (REAL_IMAGE_PX - 1) / 2.0 + REAL_CENTER_SPREAD_PX * (2 * u[:, 1:3] - 1)
        pitch = np.radians(REAL_PITCH_DEG[0] + (REAL_PITCH_DEG[1] - REAL_PITCH_DEG[0]) * u[:, 3])
        roll = np.radians(REAL_ROLL_DEG * (2 * u[:, 4] - 1))
        depth = REAL_DEPTH_M[0] + (REAL_DEPTH_M[1] - REAL_DEPTH_M[0]) * u[:, 5]
        where = u[:, 6:8]
        image = float(REAL_IMAGE_PX)
        # pitch about the camera's x axis: positive turns the optical axis down (the world's -Y)
        rot = Rotation.from_euler("z", roll[:, None]) * Rotation.from_euler("x", pitch[:, None]) * _LEVEL
    else:
        raise ValueError(f"camera must be one of {sorted(set(VIEW_CAMERA.values()))}, not {camera!r}")
    pose = people.pose.copy()
    pose[:, :3] = (rot * Rotation.from_rotvec(people.pose[:, :3])).as_rotvec()
    joints = posed_joints(body, pose, people.betas)
    pelvis = joints[:, _PELVIS]
    if camera == "crop":
        cam_t = _frame_in_crop(joints, pelvis)
    else:
        cam_t = _place_in_image(joints, pelvis, depth, where, focal, center)
    points = _project(joints[:, _J24] + cam_t[:, None], focal, center)
    up = rot.apply(np.array([0.0, 1.0, 0.0]))
    return View(camera, pose, people.betas, cam_t, up.reshape(n, 3), points, focal, center, image)


def _frame_in_crop(joints: np.ndarray, pelvis: np.ndarray) -> np.ndarray:
    """Translations (N, 3) that make the 24 joints' box, seen by the crop camera, CROP_PERSON_PX wide or tall
    and centred on the crop: SPIN's box × 1.2 is then exactly the crop."""
    n = len(joints)
    cam_t = np.zeros((n, 3))
    cam_t[:, 2] = 40.0
    cam_t[:, :2] = -pelvis[:, :2]
    focal, center = np.full(n, FIT_FOCAL), np.full((n, 2), FIT_CENTER)
    for _ in range(4):  # f = 5000 px is nearly weak perspective: each round is ~exact
        px = _project(joints[:, _J24] + cam_t[:, None], focal, center)
        low, high = px.min(1), px.max(1)
        side = (high - low).max(1)
        cam_t[:, 2] = (cam_t[:, 2] + pelvis[:, 2]) * side / CROP_PERSON_PX - pelvis[:, 2]
        px = _project(joints[:, _J24] + cam_t[:, None], focal, center)
        mid = (px.min(1) + px.max(1)) / 2.0
        cam_t[:, :2] -= (mid - FIT_CENTER) * (cam_t[:, 2:3] + pelvis[:, 2:3]) / FIT_FOCAL
    return cam_t


def _place_in_image(joints: np.ndarray, pelvis: np.ndarray, depth: np.ndarray, where: np.ndarray,
                    focal: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Translations (N, 3): the pelvis at ``depth`` m, its pixel at a uniform place (``where`` in [0, 1]²) of the
    range that keeps every joint REAL_MARGIN_PX inside the image; pulled towards the centre if perspective
    pushes a joint out anyway."""
    ray_t = np.stack([np.zeros_like(depth), np.zeros_like(depth), depth], 1) - pelvis  # pelvis on the axis
    px = _project(joints[:, _J24] + ray_t[:, None], focal, center)
    rel_low, rel_high = px.min(1) - center, px.max(1) - center
    low = REAL_MARGIN_PX - 0.5 - rel_low
    high = REAL_IMAGE_PX - 0.5 - REAL_MARGIN_PX - rel_high
    target = np.where(low <= high, low + where * (high - low), (low + high) / 2.0)
    offset = target - center
    for _ in range(8):
        cam_t = np.concatenate([offset * depth[:, None] / focal[:, None], depth[:, None]], 1) - pelvis
        px = _project(joints[:, _J24] + cam_t[:, None], focal, center)
        inside = ((px >= REAL_MARGIN_PX / 2) & (px <= REAL_IMAGE_PX - REAL_MARGIN_PX / 2)).all((1, 2))
        if inside.all():
            break
        offset = np.where(inside[:, None], offset, offset * 0.7)
    return cam_t


# --- Keypoints --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draws:
    """A source's random draws, shared by its cameras and starts (common random numbers): pixel noise (N, 24, 2)
    and drops (N, 24) bool of the noisy keypoints, rotation directions (N, 24, 3) of the network-like starts."""

    noise: np.ndarray
    drop: np.ndarray
    start: np.ndarray


def draws(people: People, seed: int) -> Draws:
    n = len(people)
    return Draws(rng_for(seed, people.source, people.split, "noise").standard_normal((n, len(_J24), 2)),
                 rng_for(seed, people.source, people.split, "drop").uniform(0, 1, (n, len(_J24))) < DROP_SHARE,
                 rng_for(seed, people.source, people.split, "start").standard_normal((n, 24, 3)))


@dataclass(frozen=True)
class Observation:
    """What SMPLify is given: keypoints (N, 49, 3) fit-frame px + confidence (the 24 dataset joints; absent ones all
    zeros), and the camera to fit with, in fit-frame px: focal (N, 2) (fx, fy) and center (N, 2); frame: "crop"
    (SPIN's crop camera) or "image" (the true camera). box_center (N, 2), box_side (N,): SPIN's crop that took the
    keypoints into the fit frame, in the camera's image px."""

    keypoints: np.ndarray
    focal: np.ndarray
    center: np.ndarray
    frame: str
    box_center: np.ndarray
    box_side: np.ndarray


def observe(v: View, noise: str, d: Draws, frame: str = "crop") -> Observation:
    """The fit-frame keypoints of a view, ``clean`` or ``noisy``, and the camera of ``frame`` ("crop" or "image")
    in fit-frame px (module docstring)."""
    n = len(v.pose)
    visible = ~d.drop if noise == "noisy" else np.ones((n, len(_J24)), dtype=bool)
    image_kp = np.zeros((n, NUM_JOINTS, 3))
    image_kp[:, _J24, :2] = v.points
    image_kp[:, _J24, 2] = visible
    if v.camera == "crop":
        kp, centers, sides = image_kp, np.full((n, 2), FIT_CENTER), np.full(n, float(FIT_RES))
    else:
        kp, centers, sides = np.zeros_like(image_kp), np.zeros((n, 2)), np.zeros(n)
        for i in range(n):
            center, scale = keypoint_box(image_kp[i], SPIN_BOX_EXPAND)
            centers[i], sides[i] = center, box_side(scale)
            kp[i] = keypoints_in_fit_frame(image_kp[i], {"box_center": center, "box_side": sides[i],
                                                         "res": REAL_IMAGE_PX})
    kp = kp.copy()
    if noise == "noisy":
        kp[:, _J24, :2] += NOISE_PX * d.noise
    elif noise != "clean":
        raise ValueError(f"noise must be one of {NOISE}, not {noise!r}")
    kp[..., :2] *= kp[..., 2:] > 0  # absent joints carry no coordinates, as in the datasets
    if frame == "crop":
        focal, center = np.full((n, 2), FIT_FOCAL), np.full((n, 2), FIT_CENTER)
    elif frame == "image":  # the true camera through the crop's pixel map (for the crop view, the identity)
        cams = [camera_through(stored_to_fit_frame({"box_center": centers[i], "box_side": sides[i]}),
                               PixelCamera((v.focal[i], v.focal[i]), (v.center[i, 0], v.center[i, 1])))
                for i in range(n)]
        focal, center = np.array([c.focal for c in cams]), np.array([c.center for c in cams])
    else:
        raise ValueError(f"frame must be crop or image, not {frame!r}")
    return Observation(kp.astype(np.float32), focal, center, frame, centers, sides)


# --- Starts ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Where fits start: pose (N, 72), betas (N, NB), cam_t (N, 3) fit frame, and SMPLify's start kind."""

    pose: np.ndarray
    betas: np.ndarray
    cam_t: np.ndarray
    kind: str


def mean_start(body: BodyModel, obs: Observation) -> Start:
    """SMPLify's mean-pose start (`fitting.smplify.mean_pose_start`) for an observation's fit-frame keypoints
    (N, 49, 3), placed with its camera."""
    device = next(body.buffers()).device
    kp = torch.as_tensor(obs.keypoints, dtype=torch.float32, device=device)
    pose, betas, cam_t = mean_pose_start(body, kp, torch.as_tensor(obs.focal, dtype=torch.float32, device=device),
                                         torch.as_tensor(obs.center, dtype=torch.float32, device=device))
    return Start(pose.double().cpu().numpy(), betas.double().cpu().numpy(), cam_t.double().cpu().numpy(), "mean")


def perturb(pose: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Each joint rotation (pose (N, 72) axis-angle) followed by a turn (N, 24, 3) axis-angle about the joint's own
    axes: R_j ← R_j · exp(turn_j)."""
    n = len(pose)
    rot = Rotation.from_rotvec(pose.reshape(-1, 3)) * Rotation.from_rotvec(turns.reshape(-1, 3))
    return rot.as_rotvec().reshape(n, 72)


def network_start(body: BodyModel, true_pose: np.ndarray, obs: Observation, sigma: float,
                  directions: np.ndarray) -> Start:
    """A network-like start: the true pose (N, 72) turned by ``sigma`` × ``directions`` (N, 24, 3) rad, the mean
    shape, and the translation that puts that body's torso on the observation's keypoints' torso, with its camera
    (`core.camera.translation_from_torso`, as `mean_pose_start` places the mean body). The true translation is not
    an argument: it cannot leak into the start."""
    pose = perturb(true_pose, sigma * directions)
    betas = np.zeros((len(pose), body.num_betas))
    joints = torch.as_tensor(posed_joints(body, pose, betas))
    kp = torch.as_tensor(obs.keypoints, dtype=torch.float64)
    cam_t = translation_from_torso(joints, kp, torch.as_tensor(obs.focal), torch.as_tensor(obs.center),
                                   TORSO_PAIR_INDEX)
    return Start(pose, betas, cam_t.numpy(), "estimate")


def start_pa_mpjpe_mm(body: BodyModel, true_joints: torch.Tensor, pose: np.ndarray) -> np.ndarray:
    """PA-MPJPE (N,) mm of mean-shape bodies in ``pose`` (N, 72) against true evaluation joints (N, 14, 3)."""
    betas = torch.zeros(len(pose), body.num_betas)
    est = posed_eval_joints(body, torch.as_tensor(pose, dtype=torch.float32), betas)
    return 1000.0 * pa_mpjpe(est.double(), true_joints.double()).numpy()


def calibrate_noise(body: BodyModel, people: People, directions: np.ndarray,
                    targets_mm: tuple[float, ...] = START_TARGETS_MM, tolerance_mm: float = 0.25,
                    max_evaluations: int = 8, sigma_high: float = 0.6, sigma_max: float = 2.0) -> dict[str, Any]:
    """The per-joint turn σ (rad) of each network-like start level: σ such that the median start PA-MPJPE of
    ``people`` (mean shape, pose turned by σ × ``directions`` (N, 24, 3)) is the target (mm), found by the Illinois
    variant of regula falsi to within ``tolerance_mm`` (the median grows smoothly with σ for fixed directions).

    PA-MPJPE ignores the global orientation, the camera and the translation, so the people's world poses serve.
    Returns {"sigma_rad": [...], "median_start_pa_mpjpe_mm": [...] (reached), "floor_mm": the median at σ = 0
    (the mean shape's error alone), "people": N, "targets_mm"}. A target under the floor gets σ = 0."""
    truth = posed_eval_joints(body, torch.as_tensor(people.pose, dtype=torch.float32),
                              torch.as_tensor(people.betas, dtype=torch.float32))
    seen: dict[float, float] = {}

    def median(sigma: float) -> float:
        if sigma not in seen:
            seen[sigma] = float(np.median(start_pa_mpjpe_mm(body, truth, perturb(people.pose, sigma * directions))))
        return seen[sigma]

    floor = median(0.0)
    high = sigma_high
    while median(high) < max(targets_mm) and high < sigma_max:
        high = min(2 * high, sigma_max)
    sigmas, reached = [], []
    for target in targets_mm:
        if target <= floor:
            sigmas.append(0.0)
            reached.append(floor)
            continue
        # the bracket: the largest σ seen below the target and the smallest above it
        lo = max((s for s, m in seen.items() if m < target), default=0.0)
        hi = min((s for s, m in seen.items() if m >= target), default=high)
        f_lo, f_hi = median(lo) - target, median(hi) - target
        sigma, side = hi, 0
        for _ in range(max_evaluations):
            sigma = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            f = median(sigma) - target
            if abs(f) <= tolerance_mm:
                break
            if f < 0:
                lo, f_lo = sigma, f
                f_hi = f_hi / 2 if side == -1 else f_hi  # Illinois: halve the end that stays
                side = -1
            else:
                hi, f_hi = sigma, f
                f_lo = f_lo / 2 if side == 1 else f_lo
                side = 1
        sigmas.append(sigma)
        reached.append(median(sigma))
    return {"sigma_rad": sigmas, "median_start_pa_mpjpe_mm": reached, "floor_mm": floor, "people": len(people),
            "targets_mm": list(targets_mm), "evaluations": len(seen)}
