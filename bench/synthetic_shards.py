"""Small synthetic shard sets of rendered bodies with known SMPL parameters, for training tests and benchmarks.

Each person is the body model (default the 1229-vertex open model) in a real pose (SPIN's 1000 LSP fits from
../shared/fixtures, with 0.05 rad of noise per angle; prior samples without them; or, where a spec names a CMU
split, a frame of CMU motion capture of subjects the pose prior never saw, `bench.smplify_cases.cmu_pool`, turned
to a heading within ±90° of facing the camera), random betas ~ N(0, 0.8²), seen
by SPIN's crop camera (f = 5000 px for a 224 px crop, scale s ~ U(0.8, 1.05), the pelvis near the centre). The
image *is* the person box (``res`` px square, focal scaled with it): the body drawn with the painter's algorithm,
each face coloured by the body part that moves it most (so left and right differ), over a random plain
background. Keypoints: the 24 dataset joints projected, with pixel noise and a few missing; "OpenPose" joints
(noisier, confidence 0.7) where a dataset spec asks for them. 3D joints (camera frame) and SMPL are recorded as a
dataset spec says; a trainer may be told to ignore them (``ignore_3d_datasets``) and evaluate against them.

`write_synthetic_shards` writes one shard set (`shards.writer`) holding several such datasets and splits. A real
synthetic-data pipeline (pipelines/synthetic.py) supersedes this for experiments; this one is small and quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from bench.smplify_cases import cmu_pool, rest_joints
from core.frames import FIT_CENTER, FIT_FOCAL, FIT_RES
from core.joints import J24_OFFSET, NUM_JOINTS, OPENPOSE_NAMES, indices
from core.pinhole import pinhole
from fitting.body_model import BodyModel, load_body_model
from fitting.dsr import face_segments
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior
from pipelines.synthetic.paint import SEGMENT_NAMES
from render.raster import rasterize
from shards.masks import MASK_NAMES, LabelMap
from shards.schema import PersonRecord, make_key
from shards.writer import ShardConfig, write_shards

SPIN_LSP_FITS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lsp" / "spin_npz" / "lsp-orig_fits.npy"

# CMU people face the camera within this heading (rad) either way, as people in photos mostly do
CMU_HEADING = np.pi / 2
LEVEL_CAMERA = Rotation.from_euler("x", np.pi)  # world (Y up) -> a level camera (y down, z forward)

# OpenPose joints a detector would report (no feet: they are often missing)
_OPENPOSE = indices([n for n in OPENPOSE_NAMES if "Toe" not in n and "Heel" not in n])


@dataclass(frozen=True)
class DatasetSpec:
    """One synthetic dataset split: ``count`` people; what their records carry."""

    dataset: str
    split: str
    count: int
    smpl: bool = False          # record ground-truth SMPL (has_smpl)
    joints_3d: bool = False     # record 3D joints
    openpose: bool = False      # fill the OpenPose slots with noisy detections
    poses: tuple[float, float] = (0.0, 1.0)  # the slice of the pose pool drawn from (fractions): keep test poses apart
    cmu: str | None = None      # draw poses from CMU mocap of this split's subjects ("dev"/"test", both held out of
                                # the pose prior: `assets.prior_train`) instead of SPIN's LSP fits
    masks: bool = False         # record each person's exact silhouette (the rasteriser's coverage) as its mask
    parts: bool = False         # and its exact part labels: the drawn face's SMPL segment (`fitting.dsr.face_segments`,
                                # the synthetic generator's rule), named by `pipelines.synthetic.paint.SEGMENT_NAMES`


# A SPIN-like mix: an H36M-like set (SMPL + 3D), an in-the-wild set (2D for training; SMPL and 3D recorded for
# evaluation, to be ignored by the trainer) and an MPI-INF-3DHP-like set (3D joints, no SMPL), plus held-out test
# splits with 3D ground truth whose poses come from a part of the pose pool no training split draws from.
TRAIN_POSES, TEST_POSES = (0.0, 0.8), (0.8, 1.0)
DEFAULT_SPECS = (
    DatasetSpec("synth-h36m", "train", 300, smpl=True, joints_3d=True, poses=TRAIN_POSES),
    DatasetSpec("synth-wild", "train", 600, smpl=True, joints_3d=True, openpose=True, poses=TRAIN_POSES),
    DatasetSpec("synth-3dhp", "train", 100, joints_3d=True, poses=TRAIN_POSES),
    DatasetSpec("synth-h36m", "test", 100, smpl=True, joints_3d=True, poses=TEST_POSES),
    DatasetSpec("synth-wild", "test", 100, smpl=True, joints_3d=True, poses=TEST_POSES),
)


def cmu_poses(body: BodyModel, split: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 72) axis-angle poses in SPIN's camera convention (y down, z forward): frames of the CMU subjects of
    ``split`` (`bench.smplify_cases.cmu_pool`, world frame, Y up) turned about the vertical by a heading within
    ±`CMU_HEADING` of facing the camera, then seen by a level camera."""
    pool = cmu_pool(split, rest_joints(body)).poses
    pose = pool[rng.integers(len(pool), size=count)].copy()
    heading = Rotation.from_euler("y", rng.uniform(-CMU_HEADING, CMU_HEADING, (count, 1)))
    pose[:, :3] = (LEVEL_CAMERA * heading * Rotation.from_rotvec(pose[:, :3])).as_rotvec()
    return pose


def sample_people(body: BodyModel, count: int, rng: np.random.Generator,
                  poses: tuple[float, float] = (0.0, 1.0), cmu: str | None = None) -> dict[str, np.ndarray]:
    """pose (N, 72) axis-angle (camera convention), betas (N, 10), cam_t (N, 3) in SPIN's crop camera, joints
    (N, 49, 3) model frame, vertices (N, V, 3) model frame. ``poses``: the slice of SPIN's LSP fits drawn from;
    ``cmu``: draw from the CMU subjects of this split instead (`cmu_poses`)."""
    if cmu is not None:
        pose = cmu_poses(body, cmu, count, rng)
    elif SPIN_LSP_FITS.is_file():
        fits = np.load(SPIN_LSP_FITS)[:, :72].astype(np.float64)
        fits = fits[int(poses[0] * len(fits)):max(int(poses[1] * len(fits)), int(poses[0] * len(fits)) + 1)]
        pose = fits[rng.integers(len(fits), size=count)] + 0.05 * rng.standard_normal((count, 72))
    else:
        prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
        k = rng.choice(len(prior.means), size=count, p=prior.log_weights.exp().double().numpy() /
                       float(prior.log_weights.exp().sum()))
        cov = np.linalg.inv(prior.precisions.double().numpy())
        body_pose = np.stack([rng.multivariate_normal(prior.means[i].double().numpy(), cov[i]) for i in k])
        orient = np.array([np.pi, 0.0, 0.0]) + 0.2 * rng.standard_normal((count, 3))
        pose = np.concatenate([orient, body_pose], 1)
    betas = 0.8 * rng.standard_normal((count, body.num_betas))
    pose_t, betas_t = torch.as_tensor(pose, dtype=torch.float32), torch.as_tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        out = body(betas_t, pose_t[:, 3:], pose_t[:, :3])
    joints, vertices = out.joints.numpy().astype(np.float64), out.vertices.numpy().astype(np.float64)
    scale = rng.uniform(0.8, 1.05, size=count)
    cam_t = np.zeros((count, 3))
    cam_t[:, 2] = 2 * FIT_FOCAL / (FIT_RES * scale)
    pelvis = joints[:, indices(["Pelvis (MPII)"])[0]]
    cam_t[:, :2] = -pelvis[:, :2] + 0.04 * rng.standard_normal((count, 2))
    return {"pose": pose.astype(np.float32), "betas": betas.astype(np.float32), "cam_t": cam_t, "joints": joints,
            "vertices": vertices}


def part_colours(body: BodyModel, rng_seed: int = 7) -> np.ndarray:
    """(F, 3) face colours: one colour per SMPL body part (the joint that moves the face's first vertex most)."""
    weights = body.layer.lbs_weights.detach().cpu().numpy()
    part = weights.argmax(1)[body.faces[:, 0]]
    palette = np.random.default_rng(rng_seed).uniform(40, 255, size=(weights.shape[1], 3))
    return palette[part]


def render(vertices_cam: np.ndarray, faces: np.ndarray, colours: np.ndarray, res: int,
           background: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A mesh (camera frame, metres) seen by the crop camera scaled to ``res`` px, drawn by the one renderer
    (`render.raster.rasterize`, pixel centres at integers) over a flat background; and the face drawn at each
    pixel (res, res) int, -1 where none: ``>= 0`` is the person's exact mask."""
    focal = FIT_FOCAL * res / FIT_RES
    pixels, face_index = rasterize(vertices_cam, faces, colours, focal, ((res - 1) / 2.0, (res - 1) / 2.0), (res, res))
    pixels[face_index < 0] = background
    return Image.fromarray(pixels), face_index


def synthetic_records(body: BodyModel, spec: DatasetSpec, image_root: Path, *, res: int, seed: int,
                      noise_px: float = 1.5, missing: float = 0.05) -> list[PersonRecord]:
    """Render ``spec.count`` people into ``image_root/<dataset>-<split>/`` and return their records."""
    rng = np.random.default_rng([seed, sum(map(ord, spec.dataset)), sum(map(ord, spec.split))])
    people = sample_people(body, spec.count, rng, spec.poses, spec.cmu)
    colours = part_colours(body)
    segment_ids = (np.concatenate([face_segments(body.faces, body.layer.lbs_weights.detach().cpu()).numpy() + 1,
                                   [0]]) if spec.parts else None)                # face -> part id, -1 (none) -> 0
    folder = Path(image_root) / f"{spec.dataset}-{spec.split}"
    folder.mkdir(parents=True, exist_ok=True)
    k = res / FIT_RES                                               # image px per fit-frame px
    records = []
    for i in range(spec.count):
        cam_joints = people["joints"][i] + people["cam_t"][i]
        fit_px = pinhole(cam_joints, FIT_FOCAL, (FIT_CENTER, FIT_CENTER))   # fit frame: corners at integers
        keypoints = np.zeros((NUM_JOINTS, 3))
        j24 = np.arange(J24_OFFSET, NUM_JOINTS)
        keypoints[j24, :2] = (fit_px[j24] + noise_px * rng.standard_normal((len(j24), 2))) * k - 0.5
        keypoints[j24, 2] = rng.random(len(j24)) >= missing
        if spec.openpose:
            detected = fit_px[_OPENPOSE] + 2 * noise_px * rng.standard_normal((len(_OPENPOSE), 2))
            keypoints[_OPENPOSE, :2] = detected * k - 0.5
            keypoints[_OPENPOSE, 2] = 0.7 * (rng.random(len(_OPENPOSE)) >= missing)
        keypoints[keypoints[:, 2] <= 0] = 0.0
        name = f"{i:06d}"
        background = tuple(int(c) for c in rng.integers(0, 256, size=3))
        picture, face_index = render(people["vertices"][i] + people["cam_t"][i], body.faces, colours, res,
                                     background)
        covered = face_index >= 0
        picture.save(folder / f"{name}.png")
        joints_3d = np.concatenate([cam_joints, np.zeros((NUM_JOINTS, 1))], 1)
        joints_3d[J24_OFFSET:, 3] = 1.0
        records.append(PersonRecord(
            dataset=spec.dataset, split=spec.split, key=make_key(spec.dataset, spec.split, name),
            source="synthetic", record=f"person {i}", image_path=f"{folder.name}/{name}.png", image_root=image_root,
            image_size=(res, res), center=np.full(2, (res - 1) / 2.0), scale=res / 200.0, keypoints_2d=keypoints,
            joints_3d=joints_3d if spec.joints_3d else None,
            smpl_pose=people["pose"][i] if spec.smpl else None, smpl_betas=people["betas"][i] if spec.smpl else None,
            has_smpl=spec.smpl,
            mask=LabelMap.from_array(covered, MASK_NAMES, "synthetic-exact") if spec.masks else None,
            parts=(LabelMap.from_array(segment_ids[face_index], SEGMENT_NAMES, "synthetic-exact") if spec.parts
                   else None)))
    return records


def write_synthetic_shards(out_dir: Path, specs: Sequence[DatasetSpec] = DEFAULT_SPECS, *,
                           body_model: str = "open-small", res: int = 128, crop_res: int | None = None,
                           samples_per_shard: int = 100, seed: int = 0) -> dict[str, Any]:
    """Render the people of ``specs`` (images in ``out_dir/images``) and write them as a shard set in
    ``out_dir/shards``; returns the manifest. ``crop_res``: the stored crop (default 1.5 × res, the margin)."""
    out_dir = Path(out_dir)
    body = load_body_model(body_model)
    records = []
    for spec in specs:
        records += synthetic_records(body, spec, out_dir / "images", res=res, seed=seed)
    config = ShardConfig(crop_res=crop_res or int(round(1.5 * res)), samples_per_shard=samples_per_shard)
    return write_shards(records, out_dir / "shards", config,
                        inputs=[{"dataset": s.dataset, "split": s.split, "root": str(out_dir / "images"),
                                 "options": {"synthetic": True, "seed": seed, "body_model": body_model}}
                                for s in specs])
