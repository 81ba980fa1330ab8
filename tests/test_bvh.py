"""BVH parsing and CMU -> SMPL conversion on real clips from ../shared/mocap/cmu, and the committed default prior
checked against SPIN's real LSP fits."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from assets import bvh
from assets.prior_train import (
    CMU_HELD_OUT_SUBJECTS,
    DEFAULT_MODEL,
    PoseSet,
    bvh_source,
    clip_table,
    shown_folder,
    train_prior,
)
from core.joints import SMPL_JOINT_INDEX, SMPL_PARENTS, flip_pose
from fitting.priors import DEFAULT_PRIOR, MaxMixturePrior, angle_prior, load_gmm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CMU = SHARED / "mocap" / "cmu"
LSP_FITS = SHARED / "fixtures" / "lsp" / "spin_npz" / "lsp-orig_fits.npy"

needs_cmu = pytest.mark.skipif(not CMU.is_dir(), reason=f"{CMU} is absent: the CMU clips live in ../shared beside "
                                                        f"the checkout, never in the repo")

# Limb segments (SMPL joint -> child) whose BVH counterpart is one rigid segment: FK must reproduce them exactly.
LIMBS = [(f"{s}_{a}", f"{s}_{b}") for s in ("left", "right") for a, b in
         (("hip", "knee"), ("knee", "ankle"), ("shoulder", "elbow"), ("elbow", "wrist"), ("wrist", "hand"))]
MB_ONLY_LIMBS = [(f"{s}_ankle", f"{s}_foot") for s in ("left", "right")]  # the Daz release has no toe joint


def rest_poses() -> list[tuple[str, np.ndarray]]:
    out = [("standard", bvh.STANDARD_TPOSE_JOINTS)]
    if DEFAULT_MODEL.is_file():
        out.append(("open model", bvh.rest_joints_from_model(DEFAULT_MODEL)))
    return out


def clip_info() -> dict[str, dict[str, str]]:
    with (CMU / "CLIPS.tsv").open(newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@needs_cmu
@pytest.mark.parametrize("rel, n_joints, n_channels", [("mb/02_06.bvh", 31, 96), ("daz/13_10.bvh", 43, 132)])
def test_parse_real_clips(rel, n_joints, n_channels):
    clip = bvh.parse_bvh(CMU / rel)
    sk = clip.skeleton
    assert len(sk.names) == n_joints and sum(len(c) for c in sk.channels) == n_channels
    assert clip.motion.shape == (int(clip_info()[rel]["frames"]), n_channels)
    assert clip.frame_time == pytest.approx(1 / 30, rel=1e-4)
    assert (sk.parents[1:] < np.arange(1, n_joints)).all()  # parents come first
    if rel.startswith("mb/"):
        assert sk.names[0] == "Hips" and sk.channels[0][3:] == ("Zrotation", "Yrotation", "Xrotation")
        forearm = sk.offsets[sk.index("LeftForeArm")]  # per subject; along +X (left) in the T-pose skeleton
        assert 4 < forearm[0] < 6 and forearm[1] == forearm[2] == 0
        assert sk.end_sites[sk.index("Head")].shape == (3,)
    else:
        assert sk.names[0] == "hip" and sk.channels[1] == ("Zrotation", "Xrotation", "Yrotation")


@needs_cmu
def test_frame0_of_the_motionbuilder_release_is_the_t_pose():
    clip = bvh.parse_bvh(CMU / "mb/09_01.bvh")
    rest = rest_poses()[-1][1]  # the open model when present
    conv = bvh.convert_clip(clip, rest, drop_first=False)
    pose0 = conv.poses[0].reshape(24, 3)
    assert np.abs(pose0[0]).max() < 1e-6  # root: facing +Z, upright
    torso = [SMPL_JOINT_INDEX[n] for n in ("spine1", "spine2", "spine3", "neck", "head")]
    assert np.abs(pose0[torso]).max() < 1e-6  # the reference pose's torso is the rest torso
    # limbs: the small rest corrections between the two T-poses, and the upper arms' twist that puts CMU's elbow
    # hinge on the model's axis (-30° / +30° about the arm, the skeleton's convention)
    tolerance = 0.1 if DEFAULT_MODEL.is_file() else 2.0
    assert conv.arm_twist_deg == pytest.approx({"left": -30.0, "right": 30.0}, abs=tolerance)
    for side, arm_x in (("left", 1.0), ("right", -1.0)):  # the twist is about the arm: +X left, -X right
        shoulder = pose0[SMPL_JOINT_INDEX[f"{side}_shoulder"]]
        assert np.degrees(shoulder[0]) == pytest.approx(arm_x * conv.arm_twist_deg[side], abs=1.0)
    assert np.degrees(np.linalg.norm(pose0, axis=-1)).max() < 35
    assert len(conv.poses) == len(clip.motion) and len(bvh.convert_clip(clip, rest).poses) == len(clip.motion) - 1


@needs_cmu
@pytest.mark.parametrize("rel", ["mb/02_06.bvh", "mb/05_02.bvh", "daz/13_10.bvh", "daz/135_04.bvh"])
@pytest.mark.parametrize("rest_name, rest", rest_poses())
def test_forward_kinematics_reproduces_bvh_bone_directions(rel, rest_name, rest):
    conv = bvh.convert_clip(bvh.parse_bvh(CMU / rel), rest)
    joints = bvh.smpl_forward_kinematics(conv.poses, rest)
    limbs = LIMBS + (MB_ONLY_LIMBS if conv.skeleton == "mb" else [])
    for a, b in limbs:
        i, j = SMPL_JOINT_INDEX[a], SMPL_JOINT_INDEX[b]
        assert SMPL_PARENTS[j] == i
        cos = cosines(joints[:, j] - joints[:, i], conv.points[:, j] - conv.points[:, i])
        assert cos.min() > 0.9999, (rel, rest_name, a, b, cos.min())
    # The torso is not aligned bone by bone (module docstring), but pelvis -> neck must still point the same way.
    p, n = SMPL_JOINT_INDEX["pelvis"], SMPL_JOINT_INDEX["neck"]
    torso = cosines(joints[:, n] - joints[:, p], conv.points[:, n] - conv.points[:, p])
    assert torso.mean() > 0.98 and torso.min() > 0.9, (rel, rest_name, torso.mean(), torso.min())


def principal_axis(rotvec: np.ndarray, min_deg: float = 20.0) -> np.ndarray:
    """Principal rotation axis (3,) of axis-angle rotations (F, 3) bent more than ``min_deg``."""
    angle = np.linalg.norm(rotvec, axis=-1)
    axes = rotvec[angle > np.radians(min_deg)] / angle[angle > np.radians(min_deg), None]
    return np.linalg.eigh(axes.T @ axes)[1][:, -1]


@needs_cmu
@pytest.mark.parametrize("rel", ["mb/05_02.bvh", "daz/60_05.bvh"])
def test_elbows_and_knees_are_hinges_on_the_model_axes(rel):
    """Elbows flex about the model's Y axis (forearm forward from the T-pose), knees about X (shin backward)."""
    rest = rest_poses()[-1][1]  # the open model when present
    pose = bvh.convert_clip(bvh.parse_bvh(CMU / rel), rest).poses.reshape(-1, 24, 3).astype(np.float64)
    for side in ("left", "right"):
        elbow = principal_axis(pose[:, SMPL_JOINT_INDEX[f"{side}_elbow"]])
        assert np.degrees(np.arccos(abs(elbow[1]))) < 1.0, (side, elbow)
        knee = principal_axis(pose[:, SMPL_JOINT_INDEX[f"{side}_knee"]])
        assert np.degrees(np.arccos(abs(knee[0]))) < (5.0 if DEFAULT_MODEL.is_file() else 15.0), (side, knee)


@needs_cmu
def test_elbow_twist_fallback_matches_the_measured_twist():
    """A clip with too little elbow flexion to measure the hinge gets its skeleton's typical twist, same sign."""
    rest = rest_poses()[-1][1]
    for rel in ("mb/02_05.bvh", "daz/60_05.bvh"):
        conv = bvh.convert_clip(bvh.parse_bvh(CMU / rel), rest)
        straight = np.tile(np.eye(3), (5, 1, 1))
        fallback = bvh.SKELETON_MAPS[conv.skeleton].elbow_twist_fallback_deg
        for side in ("left", "right"):
            typical = bvh._elbow_twist(straight, rest, side, fallback)
            assert typical == pytest.approx(conv.arm_twist_deg[side], abs=3.0), (rel, side)


@needs_cmu
def test_converted_clip_follows_smpl_conventions():
    """Walking forward along the BVH's travel direction: the root faces where it goes, knees and elbows bend the
    natural way (the angle prior's signs), and mirroring swaps the sides."""
    clip = bvh.parse_bvh(CMU / "mb/02_01.bvh")  # walk
    conv = bvh.convert_clip(clip, bvh.STANDARD_TPOSE_JOINTS)
    pose = conv.poses.reshape(-1, 24, 3).astype(np.float64)
    facing = Rotation.from_rotvec(pose[:, 0]).apply([0.0, 0.0, 1.0])  # body front (+Z at rest) in the world
    travel = conv.points[-1, 0] - conv.points[0, 0]
    travel[1] = 0.0
    assert cosines(facing.mean(0), travel) > 0.9
    assert (pose[:, SMPL_JOINT_INDEX["left_knee"], 0] > -0.05).mean() > 0.95  # knees flex with +x
    assert (pose[:, SMPL_JOINT_INDEX["left_elbow"], 1] < 0.05).mean() > 0.95  # left elbow with -y
    assert (pose[:, SMPL_JOINT_INDEX["right_elbow"], 1] > -0.05).mean() > 0.95  # right elbow with +y
    body = torch.as_tensor(pose.reshape(-1, 72)[:, 3:])
    assert angle_prior(body).mean() < 4.0  # below the straight-limb value: bends are natural
    mirrored = flip_pose(pose.reshape(-1, 72)).reshape(-1, 24, 3)
    np.testing.assert_allclose(mirrored[:, SMPL_JOINT_INDEX["right_knee"], 0],
                               pose[:, SMPL_JOINT_INDEX["left_knee"], 0])


def test_unknown_hierarchy_and_malformed_files(tmp_path):
    good = tmp_path / "tiny.bvh"
    good.write_text("HIERARCHY\nROOT Root\n{\n OFFSET 0 0 0\n CHANNELS 6 Xposition Yposition Zposition Zrotation "
                    "Xrotation Yrotation\n JOINT Child\n {\n  OFFSET 0 1 0\n  CHANNELS 3 Zrotation Xrotation "
                    "Yrotation\n  End Site\n  {\n   OFFSET 0 1 0\n  }\n }\n}\nMOTION\nFrames: 2\nFrame Time: 0.1\n"
                    "0 0 0 0 0 0 0 0 0\n1 2 3 0 90 0 0 0 0\n")
    clip = bvh.parse_bvh(good)
    assert clip.skeleton.names == ("Root", "Child") and clip.motion.shape == (2, 9)
    local, root = bvh.local_rotations(clip)
    world, pos = bvh.forward_kinematics(clip.skeleton, local, root)
    np.testing.assert_allclose(pos[1, 1], [1, 2, 4], atol=1e-12)  # root rotated 90° about X: +Y -> +Z
    with pytest.raises(bvh.BvhError, match="matches none of the known hierarchies"):
        bvh.convert_clip(clip, bvh.STANDARD_TPOSE_JOINTS)
    bad = tmp_path / "short.bvh"
    bad.write_text(good.read_text().replace("0 0 0 0 0 0 0 0 0\n", ""))
    with pytest.raises(bvh.BvhError, match="short.bvh: 9 motion values, expected 2 frames"):
        bvh.parse_bvh(bad)


@needs_cmu
def test_train_on_a_few_clips_writes_a_prior_with_provenance(tmp_path):
    clips = tmp_path / "clips"
    (clips / "mb").mkdir(parents=True)
    for rel in ("mb/02_01.bvh", "mb/02_05.bvh"):  # a walk and a punch/strike clip, linked not copied
        (clips / rel).symlink_to(CMU / rel)
    (clips / "CLIPS.tsv").write_text("file\tcategory\nmb/02_01.bvh\twalk\nmb/02_05.bvh\tpunch/strike\n")
    out = tmp_path / "prior.npz"
    report = train_prior([clips], out, components=2, seed=0, model=None, walk_share=0.05, held_out_subjects=())
    assert report["clips"] == 2 and report["walk_share_after"] == pytest.approx(0.05)
    meta = load_gmm(out).metadata
    assert meta["acknowledgment"] == ("The data used in this project was obtained from mocap.cs.cmu.edu. "
                                      "The database was created with funding from NSF EIA-0196217.")
    assert "Bruce Hahne" in meta["bvh_conversion_credit"] and meta["config"]["seed"] == 0
    assert meta["source"] == (f"2 BVH clips of {shown_folder(clips)}: 2 of the CMU Graphics Lab Motion Capture "
                              f"Database (see {shown_folder((CMU / 'CREDITS.md').resolve())}); BVH files and "
                              f"converted poses are not "
                              f"redistributed")
    assert meta["unobserved_joints"] == ["left_collar", "right_collar", "left_hand", "right_hand"]
    first = out.read_bytes()
    train_prior([clips], out, components=2, seed=0, model=None, walk_share=0.05, held_out_subjects=())
    assert out.read_bytes() == first  # deterministic for a seed, byte for byte


CMU_TERMS = {"acknowledgment", "bvh_conversion_credit", "license"}


@needs_cmu
def test_a_folder_of_ones_own_is_labelled_by_what_was_read_without_cmus_terms(tmp_path):
    """`--bvh my_bvh` was labelled "CMU Graphics Lab ..., 133-clip BVH subset" with CMU's acknowledgment whatever
    the folder held. Copies without CMU's CREDITS.md are labelled by folder and count; with it, they are CMU's."""
    own = tmp_path / "my_bvh"
    own.mkdir()
    shutil.copy(CMU / "daz" / "12_02.bvh", own / "take.bvh")
    out = tmp_path / "own.npz"
    train_prior([own], out, components=1, held_out_subjects=())
    meta = load_gmm(out).metadata
    assert meta["source"] == (f"1 BVH clip of {shown_folder(own)} (1 in the folder); not CMU's database as far as "
                              f"fitloop can tell (no CREDITS.md naming mocap.cs.cmu.edu above them): their origin and "
                              f"terms are not recorded")
    assert not CMU_TERMS & set(meta) and "Graphics Lab" not in json.dumps(meta) and "NSF" not in json.dumps(meta)
    shutil.copy(CMU / "CREDITS.md", own / "CREDITS.md")    # a copy of CMU's folder keeps its CREDITS.md
    train_prior([own], out, components=1, held_out_subjects=())
    meta = load_gmm(out).metadata
    assert meta["source"] == (f"CMU Graphics Lab Motion Capture Database, 1-clip BVH subset ({shown_folder(own)}, "
                              f"see its CREDITS.md); BVH files and converted poses are not redistributed")
    assert CMU_TERMS <= set(meta) and meta["acknowledgment"].startswith("The data used in this project was obtained")


@needs_cmu
@pytest.mark.parametrize("prior", ["pose_prior_open.npz", "pose_prior_vae_open.npz"])
def test_the_shared_cmu_folder_keeps_the_shipped_priors_label(prior):
    """The shipped priors were trained on ../shared/mocap/cmu less the held-out subjects: retraining them labels
    them as they are labelled (checked on the clip table, without reading the clips)."""
    clips = [{"file": e.file, **({"held_out": True} if e.subject in CMU_HELD_OUT_SUBJECTS else {})}
             for e in clip_table(CMU)]
    data = PoseSet(np.zeros((0, 69)), np.zeros(0), np.zeros(0, dtype=bool), clips, CMU)
    label = bvh_source(data, [c for c in clips if not c.get("held_out")])
    with np.load(DEFAULT_PRIOR.with_name(prior)) as f:
        shipped = json.loads(str(f["metadata"]))
    assert set(label) == {"source", *CMU_TERMS} and label == {k: shipped[k] for k in label}
    assert label["source"].startswith("CMU Graphics Lab Motion Capture Database, 133-clip BVH subset "
                                      "(../shared/mocap/cmu, see its CREDITS.md and CLIPS.tsv) less the clips")


@pytest.mark.skipif(not LSP_FITS.is_file(), reason=f"{LSP_FITS} is absent (SPIN's LSP fits live in ../shared)")
def test_default_prior_prefers_real_poses():
    """SPIN's 1000 LSP fits (real SMPL poses, never used for training) score better than random or broken poses."""
    assert DEFAULT_PRIOR.is_file(), "fitting/data/pose_prior_open.npz is committed; retrain with `fitloop prior train`"
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR, dtype=torch.float64)
    assert prior.metadata["acknowledgment"].startswith("The data used in this project was obtained from mocap")
    real = np.load(LSP_FITS)[:, 3:72]
    rng = np.random.default_rng(0)
    uniform = Rotation.random(len(real) * 23, random_state=0).as_rotvec().reshape(len(real), 69)
    noisy = real + rng.normal(0, 0.5, real.shape)
    broken = real.copy()  # elbows and knees bent the wrong way
    broken[:, [52, 55, 9, 12]] *= -1
    e = {name: prior(torch.as_tensor(x)).numpy() for name, x in
         (("real", real), ("uniform", uniform), ("noisy", noisy), ("broken", broken))}
    assert e["real"].mean() < e["broken"].mean() < e["uniform"].mean()
    assert e["real"].mean() < e["noisy"].mean()
    assert (e["real"] < e["broken"]).mean() > 0.9  # per pose
    assert (e["real"] < e["noisy"]).mean() > 0.9
