"""The synthetic MPI-INF-3DHP set: its plan (who moves where, filmed by which camera) and its native files.

Layout (under the dataset root; pipelines/adapters/mpi_inf_3dhp.py reads it):

    S<n>/Seq<m>/annot.mat               MATLAB v5 (scipy.io.savemat): annot2, annot3, univ_annot3 (14 × 1 cells of
                                        (F, 56) px / (F, 84) mm, camera frame), frames (F, 1), cameras (1, 14)
    S<n>/Seq<m>/camera.calibration      the release's text format: per camera name / sensor / size / animated /
                                        intrinsic (4 × 4) / extrinsic (4 × 4, mm) / radial
    S<n>/Seq<m>/imageSequence/video_<k>.avi     every frame of the cameras in ``mpi_inf_3dhp_cameras``
    mpi_inf_3dhp_test_set/TS<n>/annot_data.mat  MATLAB 7.3 (HDF5): annot2 (N, 1, 17, 2), annot3, univ_annot3
                                        (N, 1, 17, 3), valid_frame (N, 1), activity_annotation (N, 1)
    mpi_inf_3dhp_test_set/TS<n>/imageSequence/img_<i + 1>.jpg

Train: per subject one shape and colour; per (subject, sequence) one motion walked around the middle of a room
with its feet on the floor, seen by 14 cameras in a ring (3–3.6 m away, 0.9–1.9 m high, f = 0.73 · width as
the release's 1497 px at 2048 px). The annotations hold all 14 cameras; only ``mpi_inf_3dhp_cameras`` are painted
and encoded (MPEG-4 Part 2, ``mp4v``, in the .avi container: `shards.frames.write_video`; 25 fps). Every frame of
a painted camera is a person in the truth (the adapter samples them by its ``frame_step``).
Test: one motion per sequence, one camera (the release's studio camera for TS1–TS4, the outdoor one for TS5–TS6:
`TEST_CAMERAS`, at ``mpi_inf_3dhp_test_scale`` of the real frame size); frame 1 of every sequence is marked
invalid (``valid_frame`` 0: painted, not a person), the rest valid.

The 28 joints: the 17 SPIN reads are the body model's Human3.6M joints (the same canonical points, `NATIVE_NAMES`);
the spine, clavicle, hand and foot joints are the model's kinematic joints and the toes its big toes, so a reader
of those finds plausible points. ``univ_annot3`` is ``annot3`` scaled about the pelvis by `UNIVERSAL_SCALE` (a
stand-in for the release's rescale to a universal skeleton: it differs from ``annot3``, as the real one does).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
from PIL import Image
from scipy.spatial.transform import Rotation

from core.joints import H36M_JOINTS, JOINT_INDEX, SMPL_JOINT_INDEX
from pipelines.adapters.h36m import Camera
from pipelines.adapters.mpi_inf_3dhp import (
    NAME,
    NATIVE_NAMES,
    NUM_CAMERAS,
    TEST_CAMERAS,
    TEST_FOLDER,
    TEST_IMAGE_LAYOUT,
    TEST_JOINTS,
    TRAIN_JOINTS,
    VIDEO_LAYOUT,
)
from pipelines.synthetic.bodies import move_parameters, pose_bodies, rotate_orient
from pipelines.synthetic.h36m_files import stamp_matlab73
from pipelines.synthetic.paint import Body, Picture
from pipelines.synthetic.scene import MODEL_TO_H36M_WORLD, Person, look_at, sample_betas, sample_outfit
from shards.frames import write_video
from shards.schema import make_key

FPS = 25.0                 # the release's videos run at 25 or 50 fps (its mpii_get_sequence_info)
FOCAL_PER_WIDTH = 0.731    # the release's training cameras: f ~ 1497 px for 2048 px frames
UNIVERSAL_SCALE = 0.95
INVALID_TEST_FRAME = 1
FRAMES_DIR = ".frames"     # where video frames are painted before they are encoded (then removed)
# Native joints outside SPIN's 17: (where the point comes from, its name there).
EXTRA_JOINTS: dict[str, tuple[str, str]] = {
    "spine2": ("kinematic", "spine1"), "spine3": ("kinematic", "spine2"), "spine4": ("kinematic", "spine3"),
    "left_clavicle": ("kinematic", "left_collar"), "right_clavicle": ("kinematic", "right_collar"),
    "left_hand": ("kinematic", "left_hand"), "right_hand": ("kinematic", "right_hand"),
    "left_foot": ("kinematic", "left_foot"), "right_foot": ("kinematic", "right_foot"),
    "left_toe": ("canonical", "OP LBigToe"), "right_toe": ("canonical", "OP RBigToe"),
}
_H36M_OF_NATIVE = {native: H36M_JOINTS.index(canonical) for canonical, native in NATIVE_NAMES.items()}


def native_joints(names: tuple[str, ...], h36m: np.ndarray, joints: np.ndarray, kinematic: np.ndarray) -> np.ndarray:
    """The release's joints ``names`` (..., len(names), 3) from the model's Human3.6M joints (..., 17, 3),
    canonical joints (..., 49, 3) and kinematic joints (..., 24, 3), all in one frame and unit."""
    out = []
    for name in names:
        if name in _H36M_OF_NATIVE:
            out.append(h36m[..., _H36M_OF_NATIVE[name], :])
        else:
            kind, source = EXTRA_JOINTS[name]
            out.append(joints[..., JOINT_INDEX[source], :] if kind == "canonical"
                       else kinematic[..., SMPL_JOINT_INDEX[source], :])
    return np.stack(out, axis=-2)


def ring_rig(size: tuple[int, int], rng: np.random.Generator) -> list[Camera]:
    """14 cameras in a ring around the capture area (module docstring), world (Z up, mm) → camera."""
    width, height = size
    cameras = []
    for k in range(NUM_CAMERAS):
        azimuth = 2 * math.pi * k / NUM_CAMERAS + math.radians(rng.uniform(-5, 5))
        radius, elevation = rng.uniform(3.0, 3.6), rng.uniform(0.9, 1.9)
        centre = np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), elevation])
        cameras.append(look_at(centre, np.array([0.0, 0.0, 0.95]), FOCAL_PER_WIDTH * width * np.ones(2),
                                   np.array([(width - 1) / 2.0, (height - 1) / 2.0]) + rng.uniform(-3, 3, 2),
                                   str(k)))
    return cameras


def _to_camera(cam: Camera, points_m: np.ndarray) -> np.ndarray:
    return cam.to_camera(np.asarray(points_m, dtype=np.float64) * 1000.0) / 1000.0


def plan(root: Path, config, model, poses, rng: np.random.Generator):
    """Pictures and people of the set, and a function that writes its files (module docstring)."""
    size = tuple(config.mpi_inf_3dhp_image_size)
    pictures: list[Picture] = []
    people: list[Person] = []
    videos: list[tuple[Path, list[int]]] = []
    annotations: list[tuple[Path, dict[str, Any]]] = []
    calibrations: list[tuple[Path, list[Camera]]] = []
    frames = config.mpi_inf_3dhp_frames
    moves = [(f"{s}/{q}", s) for s in config.mpi_inf_3dhp_subjects for q in config.mpi_inf_3dhp_sequences]
    moves += [(f"test/{t}", t) for t in config.mpi_inf_3dhp_test_sequences]
    shapes = {}
    sequences = []
    for name, who in moves:
        if who not in shapes:
            shapes[who] = (sample_betas(rng, 1, model.num_betas, config.betas_clip), *sample_outfit(rng))
        motion = poses.sequence(frames, rng)
        heading = Rotation.from_euler("z", rng.uniform(0, 2 * np.pi)).as_matrix()
        motion[:, :3] = rotate_orient(heading @ MODEL_TO_H36M_WORLD, motion[:, :3])
        sequences.append((name, np.repeat(shapes[who][0], frames, axis=0), motion, shapes[who][1], shapes[who][2]))
    everyone = pose_bodies(model, np.concatenate([s[1] for s in sequences]),
                           np.concatenate([s[2] for s in sequences]), with_h36m=True)
    for n, (name, betas, motion, outfit, regions) in enumerate(sequences):
        span = slice(n * frames, (n + 1) * frames)
        vertices, kinematic = everyone.vertices[span], everyone.kinematic[span]
        path_xy = rng.uniform(-0.3, 0.3, 2) + np.linspace(0, 1, frames)[:, None] * rng.uniform(-0.4, 0.4, 2)
        offset = np.column_stack([path_xy - kinematic[:, 0, :2], -vertices[:, :, 2].min(axis=1)])  # feet on z = 0
        world = {"vertices": vertices + offset[:, None].astype(np.float32),
                 "joints": everyone.joints[span] + offset[:, None], "kinematic": kinematic + offset[:, None],
                 "h36m": everyone.h36m[span] + offset[:, None]}
        test = name.startswith("test/")
        if test:
            sequence = name[len("test/"):]
            real = TEST_CAMERAS[sequence]
            test_size = tuple(int(round(v * config.mpi_inf_3dhp_test_scale)) for v in real.size_px)
            k = real.intrinsics(test_size, sequence)
            azimuth = rng.uniform(0, 2 * np.pi)
            rig = [look_at(np.array([3.3 * math.cos(azimuth), 3.3 * math.sin(azimuth), 1.3]),
                               np.array([0.0, 0.0, 0.95]), np.array([k.fx, k.fy]), np.array([k.cx, k.cy]), "0")]
            shown, sizes = [0], {0: test_size}
        else:
            rig = ring_rig(size, rng)
            shown, sizes = list(config.mpi_inf_3dhp_cameras), {c: size for c in config.mpi_inf_3dhp_cameras}
            calibrations.append((root / name / "camera.calibration", rig))
        cells: dict[str, list[np.ndarray]] = {"annot2": [], "annot3": [], "univ_annot3": []}
        names = TEST_JOINTS if test else TRAIN_JOINTS
        for number, cam in enumerate(rig):
            native = native_joints(names, _to_camera(cam, world["h36m"]), _to_camera(cam, world["joints"]),
                                   _to_camera(cam, world["kinematic"]))          # (F, J, 3) m
            pelvis = native[:, names.index("pelvis")][:, None]
            cells["annot2"].append(cam.project(native))
            cells["annot3"].append(native * 1000.0)
            cells["univ_annot3"].append((pelvis + UNIVERSAL_SCALE * (native - pelvis)) * 1000.0)
            if number not in shown:
                continue
            vertices_cam = _to_camera(cam, world["vertices"])
            pixels = cam.project(vertices_cam.astype(np.float64))
            boxes = np.concatenate([pixels.min(axis=1), pixels.max(axis=1)], axis=1)
            orient, transl = move_parameters(motion[:, :3], offset, everyone.root_rest[span], cam.R,
                                             -cam.R @ cam.T / 1000.0)
            background = int(rng.integers(2 ** 31))
            if not test:
                subject, seq = name.split("/")
                videos.append((root / VIDEO_LAYOUT.format(subject=subject, sequence=seq, camera=number), []))
            for frame in range(frames):
                if test:
                    image = root / TEST_IMAGE_LAYOUT.format(sequence=sequence, frame1=frame + 1)
                    key = make_key(NAME, f"{sequence}_{frame + 1:06d}")
                else:
                    image = root / FRAMES_DIR / f"{len(pictures):07d}.jpg"
                    videos[-1][1].append(len(pictures))
                    key = make_key(NAME, f"{subject}_{seq}_c{number}_{frame + 1:06d}")
                if not (test and frame == INVALID_TEST_FRAME):
                    joints = _to_camera(cam, world["joints"][frame])
                    h36m = _to_camera(cam, world["h36m"][frame])
                    people.append(Person(
                        key=key, picture=len(pictures), pose=np.concatenate([orient[frame], motion[frame, 3:]]),
                        betas=betas[frame], transl=transl[frame], joints=joints, keypoints=cam.project(joints),
                        outfit=outfit, vertex_box=tuple(boxes[frame]), ids={"body": 0}, h36m_joints=h36m,
                        h36m_keypoints=cam.project(h36m)))
                pictures.append(Picture(
                    path=image, size=sizes[number], focal=(float(cam.f[0]), float(cam.f[1])),
                    principal=(float(cam.c[0]), float(cam.c[1])), background_seed=background,
                    bodies=[Body(vertices=vertices_cam[frame].astype(np.float32), colours=regions)],
                    jpeg_quality=config.jpeg_quality))
        if test:
            valid = np.ones(frames, dtype=np.uint8)
            valid[INVALID_TEST_FRAME:INVALID_TEST_FRAME + 1] = 0
            annotations.append((root / TEST_FOLDER / sequence / "annot_data.mat",
                                {**{f: cells[f][0] for f in cells}, "valid_frame": valid}))
        else:
            annotations.append((root / name / "annot.mat", cells))

    def write_files(_root: Path, _pictures: list[Picture], _people: list[Person]) -> None:
        encode_videos(videos, _pictures, FPS)
        if videos:
            shutil.rmtree(root / FRAMES_DIR)
        for path, cells in annotations:
            if path.name == "annot.mat":
                write_annot_mat(path, cells)
            else:
                write_test_annotations(path, cells)
        for path, rig in calibrations:
            write_calibration(path, rig, size)

    return pictures, people, write_files


def encode_videos(videos: list[tuple[Path, list[int]]], pictures: list[Picture], fps: float) -> None:
    """Encode each video's painted frames (JPEGs at its pictures' paths) into the video, and point those pictures
    at it (so the truth names the video)."""
    for path, shown in videos:
        frames_of = []
        for index in shown:
            with Image.open(pictures[index].path) as painted:
                frames_of.append(np.asarray(painted.convert("RGB")))
            pictures[index].path = path
        write_video(path, frames_of, fps)


def write_annot_mat(path: Path, cells: dict[str, list[np.ndarray]]) -> None:
    """A training sequence's annot.mat (module docstring) from per-camera (F, 28, 2) px / (F, 28, 3) mm arrays."""
    out: dict[str, Any] = {}
    for field, per_camera in cells.items():
        cell = np.empty((len(per_camera), 1), dtype=object)
        for k, values in enumerate(per_camera):
            cell[k, 0] = values.reshape(len(values), -1)
        out[field] = cell
    frames = len(cells["annot2"][0])
    out["frames"] = np.arange(frames, dtype=np.float64).reshape(-1, 1)
    out["cameras"] = np.arange(len(cells["annot2"]), dtype=np.float64).reshape(1, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), out, format="5")


def write_test_annotations(path: Path, fields: dict[str, np.ndarray]) -> None:
    """A test sequence's annot_data.mat (MATLAB 7.3): (N, 17, d) arrays stored as (N, 1, 17, d), as h5py reads the
    release's (MATLAB's (d, 17, 1, N), transposed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as h5:
        for field in ("annot2", "annot3", "univ_annot3"):
            h5.create_dataset(field, data=fields[field][:, None].astype(np.float64))
        frames = len(fields["valid_frame"])
        h5.create_dataset("valid_frame", data=fields["valid_frame"].reshape(-1, 1).astype(np.float64))
        h5.create_dataset("activity_annotation", data=np.ones((frames, 1)))
    stamp_matlab73(path)


def write_calibration(path: Path, rig: list[Camera], size: tuple[int, int]) -> None:
    """camera.calibration in the release's text format: intrinsic K (4 × 4), extrinsic [R | −R·T] (4 × 4, mm)."""
    lines = ["Skeletool Camera Calibration File V1.0"]
    for k, cam in enumerate(rig):
        intrinsic = np.eye(4)
        intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2] = cam.f[0], cam.f[1], cam.c[0], cam.c[1]
        extrinsic = np.eye(4)
        extrinsic[:3, :3], extrinsic[:3, 3] = cam.R, -cam.R @ cam.T
        lines += [f"name          {k}", "  sensor      10 10", f"  size        {size[0]} {size[1]}",
                  "  animated    0", "  intrinsic   " + " ".join(f"{v:.10g}" for v in intrinsic.reshape(-1)),
                  "  extrinsic   " + " ".join(f"{v:.10g}" for v in extrinsic.reshape(-1)), "  radial      0"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
