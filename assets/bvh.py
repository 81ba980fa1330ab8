"""BVH motion capture: parse a clip, run its forward kinematics, and convert it to SMPL-convention poses.

Conventions of the output (the body model's, shared by SMPL and the open model):

* world frame: Y up, the body faces +Z, the subject's left is +X; the rest pose (all rotations zero) is the
  model's T-pose;
* a pose is (F, 72) axis-angle in radians, float32: the global orientation (3) then the 23 body joints' local
  rotations (69), each relative to its parent in the 24-joint SMPL tree (`core.joints.SMPL_PARENTS`).

How a clip becomes SMPL rotations (:func:`convert_clip`). Both CMU releases in ``../shared/mocap/cmu`` are Y up
and face +Z at rest, like the body model, so no change of world frame is needed.

1. Forward kinematics of the BVH gives every BVH joint's world rotation ``B(t)`` (F, J, 3, 3).
2. Each SMPL joint has a *driver*: the BVH joint whose world rotation moves the same body segment
   (:data:`SKELETON_MAPS`). Chains of BVH joints compose automatically because world rotations are used: the SMPL
   neck of the MotionBuilder skeleton is driven by ``Neck1``, whose world rotation already contains ``Neck``.
   One BVH joint may be split over two SMPL joints: the Daz ``chest`` (CMU's upper back and thorax in one) drives
   SMPL spine2 with half its local rotation (axis kept, angle halved) and spine3 with all of it.
3. Rotations are taken relative to a reference T-pose of the BVH skeleton: the MotionBuilder release's frame 0
   (the T-pose Hahne added to every file), the Daz release's zero-rotation rest pose.
   ``D_j(t) = B_drv(j)(t) · B_drv(j)(ref)⁻¹`` is how segment j has turned since the reference pose.
4. A per-joint rest correction ``A_j`` turns the body model's rest bones onto the BVH reference bones: for a
   joint with one bone to a child, the smallest rotation taking the model's rest bone direction to the BVH's; for
   several children (spine3 to neck and collars) the best rotation over their directions (Kabsch). This makes
   the result relative to *the model's* T-pose and lets forward kinematics on the model's joint tree reproduce
   the BVH bone directions exactly for single-child segments (tested). The pelvis gets no correction: both
   skeletons face +Z at rest, so the global orientation is the BVH root's rotation since the reference pose.
   A joint without a usable bone (the leaves: head, feet, hands; a zero-length BVH bone) takes its parent's
   correction, i.e. its rest is the parent's.
5. World rotations ``G_j = D_j · A_j``, local rotations ``G_parent⁻¹ · G_j``, axis-angle.
6. Twist of the arms. A bone direction fixes a segment up to its twist; the twist of the reference pose is the
   skeleton's convention. CMU's elbows are exact hinges whose axis, in the T-pose, sits 30° off the model's
   (forearm bending forward, axis along Y), in every clip. Each arm's corrections (shoulder, elbow, wrist) are
   turned about their bones by the angle that puts the clip's measured elbow hinge axis on Y
   (:func:`_elbow_twist`), so elbow flexion is what the angle prior and the model take it to be. Knees need no
   such fix: with the open model their hinge is within ~2° of X as converted.

SMPL joints that no BVH joint animates get the identity as their local rotation: the collars (neither release
animates CMU's clavicles), the hands (CMU's finger channels carry no data), and the Daz feet (no toe joint).
Joints that the BVH has but SMPL does not (CMU's hip joints, thumbs, eyes, buttocks, finger segments) are
absorbed into their parents' world rotations or ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from core.errors import FitloopError
from core.joints import SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, SMPL_PARENTS

NUM_SMPL_JOINTS = len(SMPL_JOINT_NAMES)  # 24
_SMPL_PARENTS = np.asarray(SMPL_PARENTS, dtype=np.int64)
_SMPL_CHILDREN: tuple[tuple[int, ...], ...] = tuple(
    tuple(c for c in range(NUM_SMPL_JOINTS) if SMPL_PARENTS[c] == j) for j in range(NUM_SMPL_JOINTS))


class BvhError(FitloopError):
    """A BVH file is malformed or uses a skeleton fitloop does not know how to map to SMPL."""


# --- Parsing -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skeleton:
    """A BVH hierarchy. Joints in file order (parents before children); offsets in the file's length unit.

    ``channels[j]`` are joint j's channel names as written (``Xposition``, ``Zrotation``, ...);
    ``end_sites[j]`` is the offset of joint j's End Site, if it has one.
    """

    names: tuple[str, ...]
    parents: np.ndarray  # (J,) int64, -1 for the root
    offsets: np.ndarray  # (J, 3) float64
    channels: tuple[tuple[str, ...], ...]
    end_sites: dict[int, np.ndarray]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"the BVH skeleton has no joint {name!r}") from None


@dataclass(frozen=True)
class Clip:
    """A parsed BVH file: its skeleton, the motion rows (F, C) as written (degrees, file units), frame time (s)."""

    skeleton: Skeleton
    motion: np.ndarray
    frame_time: float
    source: str


def parse_bvh(path: str | Path) -> Clip:
    """Parse a BVH file. Raises :class:`BvhError` naming the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="latin1")
    except OSError as err:
        raise BvhError(f"{path}: cannot read ({err.strerror})") from None
    head, sep, motion_text = text.partition("MOTION")
    if not sep:
        raise BvhError(f"{path}: no MOTION section; is this a BVH file?")
    tokens = head.split()
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    end_sites: dict[int, np.ndarray] = {}
    stack: list[int] = []  # open joints; -2 marks an End Site block
    pending: int | None = None  # joint whose "{" comes next
    i = 0
    try:
        while i < len(tokens):
            tok = tokens[i]
            if tok in ("ROOT", "JOINT"):
                names.append(tokens[i + 1])
                parents.append(next((s for s in reversed(stack) if s >= 0), -1) if tok == "JOINT" else -1)
                offsets.append([0.0, 0.0, 0.0])
                channels.append(())
                pending = len(names) - 1
                i += 2
            elif tok == "End":
                pending = -2
                i += 2
            elif tok == "{":
                if pending is None:
                    raise BvhError(f"{path}: '{{' without a joint")
                stack.append(pending)
                pending = None
                i += 1
            elif tok == "}":
                stack.pop()
                i += 1
            elif tok == "OFFSET":
                value = [float(t) for t in tokens[i + 1:i + 4]]
                if stack[-1] == -2:
                    owner = next(s for s in reversed(stack) if s >= 0)
                    end_sites.setdefault(owner, np.asarray(value))
                else:
                    offsets[stack[-1]] = value
                i += 4
            elif tok == "CHANNELS":
                n = int(tokens[i + 1])
                channels[stack[-1]] = tuple(tokens[i + 2:i + 2 + n])
                i += 2 + n
            elif tok == "HIERARCHY":
                i += 1
            else:
                raise BvhError(f"{path}: unexpected token {tok!r} in the hierarchy")
    except (IndexError, ValueError, StopIteration) as err:
        raise BvhError(f"{path}: malformed hierarchy near token {i} ({type(err).__name__}: {err})") from None
    if not names or stack:
        raise BvhError(f"{path}: empty or unbalanced hierarchy")
    bad = [names[j] for j, o in [*enumerate(offsets), *end_sites.items()] if not np.isfinite(o).all()]
    if bad:
        raise BvhError(f"{path}: joint {bad[0]} has an OFFSET that is not finite")
    for j, ch in enumerate(channels):
        rot = [c for c in ch if c.endswith("rotation")]
        if len(rot) not in (0, 3) or (j == 0) != any(c.endswith("position") for c in ch):
            raise BvhError(f"{path}: joint {names[j]} has channels {ch}; expected 3 rotations (and 3 positions "
                           f"on the root only)")

    lines = motion_text.strip().split("\n", 2)
    try:
        n_frames = int(lines[0].split(":")[1])
        frame_time = float(lines[1].split(":")[1])
        values = np.array(lines[2].split(), dtype=np.float64) if len(lines) > 2 else np.zeros(0)
    except (IndexError, ValueError) as err:
        raise BvhError(f"{path}: malformed MOTION header or values ({err})") from None
    if n_frames < 0:
        raise BvhError(f"{path}: the MOTION header says Frames: {n_frames}; expected a frame count (0 or more)")
    if not (np.isfinite(frame_time) and frame_time > 0):
        raise BvhError(f"{path}: the MOTION header says Frame Time: {frame_time}; expected a positive number of "
                       f"seconds")
    n_channels = sum(len(c) for c in channels)
    if values.size != n_frames * n_channels:
        raise BvhError(f"{path}: {values.size} motion values, expected {n_frames} frames × {n_channels} channels")
    if not np.isfinite(values).all():
        first = len(text) - len(motion_text.lstrip()) + len(lines[0]) + len(lines[1]) + 2  # where lines[2] starts
        number = text.count("\n", 0, first) + 1
        number += next(k for k, line in enumerate(lines[2].split("\n"))
                       if not np.isfinite(np.array(line.split(), dtype=np.float64)).all())
        raise BvhError(f"{path}: a motion value is not finite (line {number})")
    skeleton = Skeleton(tuple(names), np.asarray(parents, dtype=np.int64), np.asarray(offsets, dtype=np.float64),
                        tuple(channels), end_sites)
    return Clip(skeleton, values.reshape(n_frames, n_channels), frame_time, str(path))


# --- Forward kinematics of a BVH clip ------------------------------------------------------------------------
def local_rotations(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint local rotation matrices (F, J, 3, 3) and the root position (F, 3, file units).

    BVH rotation channels compose in the order written: ``Zrotation Yrotation Xrotation`` is Rz·Ry·Rx (intrinsic).
    Joints without rotation channels get the identity.
    """
    sk, motion = clip.skeleton, clip.motion
    n_frames = motion.shape[0]
    rots = np.tile(np.eye(3), (n_frames, len(sk.names), 1, 1))
    root_pos = np.zeros((n_frames, 3))
    col = 0
    for j, ch in enumerate(sk.channels):
        block = motion[:, col:col + len(ch)]
        col += len(ch)
        pos = [k for k, c in enumerate(ch) if c.endswith("position")]
        rot = [k for k, c in enumerate(ch) if c.endswith("rotation")]
        if pos:
            root_pos = block[:, [pos[[ch[k][0] for k in pos].index(a)] for a in "XYZ"]]
        if rot:
            order = "".join(ch[k][0].upper() for k in rot)  # uppercase = intrinsic in scipy
            rots[:, j] = Rotation.from_euler(order, block[:, rot], degrees=True).as_matrix()
    return rots, root_pos


def forward_kinematics(skeleton: Skeleton, local: np.ndarray, root_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (F, J, 3, 3) and world joint positions (F, J, 3) of a BVH skeleton.

    ``local`` (F, J, 3, 3) from :func:`local_rotations`; ``root_pos`` (F, 3). Positions in the file's units.
    """
    n_frames, n_joints = local.shape[:2]
    world = np.empty_like(local)
    pos = np.empty((n_frames, n_joints, 3))
    for j in range(n_joints):
        p = skeleton.parents[j]
        if p < 0:
            world[:, j] = local[:, j]
            pos[:, j] = root_pos + skeleton.offsets[j]
        else:
            world[:, j] = world[:, p] @ local[:, j]
            pos[:, j] = pos[:, p] + world[:, p] @ skeleton.offsets[j]
    return world, pos


# --- Mapping BVH skeletons to the SMPL joint tree --------------------------------------------------------------
@dataclass(frozen=True)
class SkeletonMap:
    """How one BVH hierarchy maps onto SMPL's 24 joints.

    ``points[smpl]``: the BVH joint whose position stands for the SMPL joint (used for the rest correction and
    the bone-direction check). ``drivers[smpl] = (bvh_joint, fraction)``: the BVH joint whose world rotation
    moves that SMPL joint's segment; a fraction below 1 applies only that part of the joint's local rotation
    (same axis, angle scaled). SMPL joints without a driver keep the identity local rotation.
    ``reference``: the T-pose the rotations are relative to: ``"frame0"`` or ``"zero"`` (all rotations 0).
    """

    name: str
    root: str
    points: dict[str, str]
    drivers: dict[str, tuple[str, float]]
    reference: str
    elbow_twist_fallback_deg: float  # the left arm's typical elbow-hinge twist (see _elbow_twist)


def _sides(table: dict[str, str]) -> dict[str, str]:
    """Expand ``{"left_knee": "LeftLeg"}`` with the mirrored right-side entry (names follow each release)."""
    out = dict(table)
    for smpl, bvh in table.items():
        if smpl.startswith("left_"):
            right = ("Right" + bvh[4:] if bvh.startswith("Left") else "R" + bvh[1:] if bvh.startswith("L")
                     else "r" + bvh[1:])
            out["right_" + smpl[5:]] = right
    return out


_MB_POINTS = _sides({
    "pelvis": "Hips", "spine1": "LowerBack", "spine2": "Spine", "spine3": "Spine1", "neck": "Neck1",
    "head": "Head", "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_ankle": "LeftFoot",
    "left_foot": "LeftToeBase", "left_collar": "LeftShoulder", "left_shoulder": "LeftArm",
    "left_elbow": "LeftForeArm", "left_wrist": "LeftFingerBase", "left_hand": "LeftHandIndex1",
})
_DAZ_POINTS = _sides({
    "pelvis": "hip", "spine1": "abdomen", "spine2": "chest", "spine3": "chest", "neck": "neck", "head": "head",
    "left_hip": "lThigh", "left_knee": "lShin", "left_ankle": "lFoot", "left_collar": "lCollar",
    "left_shoulder": "lShldr", "left_elbow": "lForeArm", "left_wrist": "lHand", "left_hand": "lMid1",
})
_UNDRIVEN = {"mb": ("left_collar", "right_collar", "left_hand", "right_hand"),
             "daz": ("left_collar", "right_collar", "left_hand", "right_hand")}

SKELETON_MAPS: dict[str, SkeletonMap] = {
    # Hahne's 2010 MotionBuilder-friendly release (CMU ASF names in brackets): Hips [root], LowerBack
    # [lowerback] -> spine1, Spine [upperback] -> spine2, Spine1 [thorax] -> spine3, Neck·Neck1 [lower/upper neck]
    # -> neck, LeftHand·LeftFingerBase [lwrist, lhand] -> left_wrist, LeftToeBase [ltoes] -> left_foot.
    "mb": SkeletonMap(
        name="mb", root="Hips", points=_MB_POINTS, reference="frame0", elbow_twist_fallback_deg=-30.0,
        drivers={k: (v, 1.0) for k, v in _MB_POINTS.items() if k not in _UNDRIVEN["mb"]}),
    # Hahne's Daz-friendly release: hip, abdomen -> spine1, chest split half/half over spine2 and spine3, neck,
    # head; buttock·thigh -> hip; no toes (SMPL feet stay at rest).
    "daz": SkeletonMap(
        name="daz", root="hip", points=_DAZ_POINTS, reference="zero", elbow_twist_fallback_deg=-27.5,
        drivers={**{k: (v, 1.0) for k, v in _DAZ_POINTS.items() if k not in _UNDRIVEN["daz"]},
                 "spine2": ("chest", 0.5)}),
}


def detect_skeleton(skeleton: Skeleton) -> SkeletonMap:
    """The :class:`SkeletonMap` whose root and mapped joints this hierarchy has; BvhError if none fits."""
    for smap in SKELETON_MAPS.values():
        if skeleton.names[0] == smap.root and set(smap.points.values()) <= set(skeleton.names):
            return smap
    raise BvhError(
        f"BVH skeleton with root {skeleton.names[0]!r} and joints {', '.join(skeleton.names[:8])}, ... matches "
        f"none of the known hierarchies ({', '.join(SKELETON_MAPS)}: CMU via Hahne's MotionBuilder or Daz "
        f"releases); add a SkeletonMap for it in assets/bvh.py")


# --- Conversion ---------------------------------------------------------------------------------------------------
def _smallest_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation matrix of least angle taking direction a to direction b (3,), (3,) -> (3, 3)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
    return Rotation.from_rotvec(axis / s * np.arctan2(s, c)).as_matrix()


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotation R minimising Σ‖R·src_i − dst_i‖² over unit directions (N, 3), (N, 3) -> (3, 3)."""
    u, _, vt = np.linalg.svd(dst.T @ src)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


# Joints whose rest correction aligns bones: the limbs, whose end points (hip, knee, ankle, ball of the foot,
# shoulder, elbow, wrist, knuckles) mean the same thing on a mocap skeleton and on the body model. The torso and
# head joints (spine1-3, neck, head) are short bones placed differently by each skeleton (the model's spine
# joints zigzag front to back by ~20°; CMU's spine is straight): aligning their directions would bake those
# placement differences into every pose as constant bends, so the reference pose's upright torso is taken as the
# model's rest (identity correction, checked on the whole torso direction in tests/test_bvh.py).
LIMB_JOINTS: tuple[str, ...] = tuple(f"{side}_{part}" for side in ("left", "right")
                                     for part in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist"))


def rest_corrections(smap: SkeletonMap, ref_pos: dict[str, np.ndarray], rest_joints: np.ndarray) -> np.ndarray:
    """Per-SMPL-joint rest corrections A (24, 3, 3) taking the model's rest bones onto the BVH reference bones.

    ``ref_pos``: BVH joint name -> world position (3,) in the reference pose; ``rest_joints`` (24, 3): the body
    model's rest (T-pose) joint positions, SMPL frame. Bones shorter than 1e-6 of the longest are ignored.
    """
    corrections = np.tile(np.eye(3), (NUM_SMPL_JOINTS, 1, 1))
    scale = max(np.linalg.norm(v) for v in ref_pos.values()) + 1.0
    for j in range(1, NUM_SMPL_JOINTS):  # parents come before children; the pelvis keeps the identity
        name = SMPL_JOINT_NAMES[j]
        src, dst = [], []
        if name in smap.points and name in LIMB_JOINTS:
            for c in _SMPL_CHILDREN[j]:
                cname = SMPL_JOINT_NAMES[c]
                if cname not in smap.points:
                    continue
                bvh_bone = ref_pos[smap.points[cname]] - ref_pos[smap.points[name]]
                model_bone = rest_joints[c] - rest_joints[j]
                if np.linalg.norm(bvh_bone) > 1e-6 * scale and np.linalg.norm(model_bone) > 1e-9:
                    src.append(model_bone / np.linalg.norm(model_bone))
                    dst.append(bvh_bone / np.linalg.norm(bvh_bone))
        if len(src) == 1:
            corrections[j] = _smallest_rotation(src[0], dst[0])
        elif src:
            corrections[j] = _kabsch(np.asarray(src), np.asarray(dst))
        else:
            corrections[j] = corrections[_SMPL_PARENTS[j]]
    return corrections


def _driver_world(world: np.ndarray, local: np.ndarray, skeleton: Skeleton, joint: str,
                  fraction: float) -> np.ndarray:
    """World rotation (F, 3, 3) of a driver: the BVH joint's, or its parent's times a fraction of its local."""
    j = skeleton.index(joint)
    if fraction == 1.0:
        return world[:, j]
    part = Rotation.from_rotvec(fraction * Rotation.from_matrix(local[:, j]).as_rotvec()).as_matrix()
    p = skeleton.parents[j]
    return part if p < 0 else world[:, p] @ part


@dataclass(frozen=True)
class Converted:
    """A converted clip: SMPL poses (F, 72) axis-angle radians (float32); for checking, the BVH world positions
    (F, 24, 3, file units) of the points standing for each SMPL joint (NaN where none does); the skeleton map's
    name; the twist applied to each arm (degrees, see :func:`_elbow_twist`)."""

    poses: np.ndarray
    points: np.ndarray
    skeleton: str
    arm_twist_deg: dict[str, float]


def convert_clip(clip: Clip, rest_joints: np.ndarray, *, drop_first: bool = True) -> Converted:
    """Convert a BVH clip to SMPL-convention poses relative to the T-pose whose joints are ``rest_joints``.

    ``rest_joints`` (24, 3): the body model's rest joint positions (metres, SMPL frame: Y up, facing +Z, left
    +X). ``drop_first`` drops frame 0, which in both CMU releases is a rest/T-pose frame, not motion.
    See the module docstring for the method.
    """
    try:
        smap = detect_skeleton(clip.skeleton)
    except BvhError as err:
        raise BvhError(f"{clip.source}: {err}") from None
    sk = clip.skeleton
    first, count = (1 if drop_first else 0), len(clip.motion)
    if count <= first:
        raise BvhError(f"{clip.source}: {count} motion frame{'s' * (count != 1)} (needs at least {first + 1}"
                       f"{': frame 0 is the rest pose' if drop_first else ''})")
    local, root_pos = local_rotations(clip)
    world, pos = forward_kinematics(sk, local, root_pos)

    if smap.reference == "frame0":
        ref_local, ref_root = local[:1], root_pos[:1]
    else:
        ref_local, ref_root = np.tile(np.eye(3), (1, len(sk.names), 1, 1)), np.zeros((1, 3))
    ref_world, ref_pos = forward_kinematics(sk, ref_local, ref_root)
    corrections = rest_corrections(smap, {n: ref_pos[0, i] for i, n in enumerate(sk.names)},
                                   np.asarray(rest_joints, dtype=np.float64))

    n_frames = local.shape[0] - first
    turns: dict[int, np.ndarray] = {}  # D_j(t): how each driven segment turned since the reference pose
    points = np.full((n_frames, NUM_SMPL_JOINTS, 3), np.nan)
    for j, name in enumerate(SMPL_JOINT_NAMES):
        if name in smap.points:
            points[:, j] = pos[first:, sk.index(smap.points[name])]
        if name in smap.drivers:
            joint, fraction = smap.drivers[name]
            now = _driver_world(world[first:], local[first:], sk, joint, fraction)
            ref = _driver_world(ref_world, ref_local, sk, joint, fraction)
            turns[j] = now @ np.swapaxes(ref, -1, -2)
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    loc = _local_rotations(turns, corrections)
    twists = {}
    for side in ("left", "right"):
        twists[side] = _elbow_twist(loc[:, SMPL_JOINT_INDEX[f"{side}_elbow"]], rest_joints, side,
                                    smap.elbow_twist_fallback_deg)
        for part in ARM_CHAIN:
            j = SMPL_JOINT_INDEX[f"{side}_{part}"]
            bone = rest_joints[_SMPL_CHILDREN[j][0]] - rest_joints[j]
            corrections[j] = corrections[j] @ Rotation.from_rotvec(
                np.radians(twists[side]) * bone / np.linalg.norm(bone)).as_matrix()
    loc = _local_rotations(turns, corrections)
    rotvec = Rotation.from_matrix(loc.reshape(-1, 3, 3)).as_rotvec().reshape(n_frames, NUM_SMPL_JOINTS * 3)
    return Converted(rotvec.astype(np.float32), points, smap.name, twists)


def _local_rotations(turns: dict[int, np.ndarray], corrections: np.ndarray) -> np.ndarray:
    """SMPL local rotations (F, 24, 3, 3) from segment turns D_j (F, 3, 3) and rest corrections A (24, 3, 3):
    world G_j = D_j·A_j (the parent's world rotation for undriven joints), local = G_parent⁻¹·G_j."""
    n_frames = next(iter(turns.values())).shape[0]
    glob = np.empty((n_frames, NUM_SMPL_JOINTS, 3, 3))
    for j in range(NUM_SMPL_JOINTS):
        glob[:, j] = turns[j] @ corrections[j] if j in turns else glob[:, _SMPL_PARENTS[j]]
    loc = np.empty_like(glob)
    loc[:, 0] = glob[:, 0]
    loc[:, 1:] = np.swapaxes(glob[:, _SMPL_PARENTS[1:]], -1, -2) @ glob[:, 1:]
    return loc


# The arm segments twisted together about their bones to put the elbow hinge on the model's axis.
ARM_CHAIN: tuple[str, ...] = ("shoulder", "elbow", "wrist")
_MIN_HINGE_FRAMES, _MIN_HINGE_DEG = 20, 20.0


def _elbow_twist(elbow: np.ndarray, rest_joints: np.ndarray, side: str, fallback_deg: float) -> float:
    """Twist (degrees, about the model's rest upper-arm bone) that turns a clip's elbow hinge onto the model's.

    ``elbow`` (F, 3, 3): the clip's elbow local rotations before the twist; ``fallback_deg``: the left arm's
    typical twist for this skeleton (the right arm's is its negative).

    The elbow of a mocap skeleton is a hinge whose axis, in the upper arm's reference frame, is a convention of
    the skeleton: CMU's sits 30° off the vertical in the MotionBuilder release's T-pose (every clip), 25-29° in
    the Daz release. The model's T-pose arm bends its elbow forward (axis along Y, perpendicular to the arm and
    to the body's front), as SMPL's angle prior assumes. The hinge axis is the principal direction of the
    clip's elbow rotation axes over frames bent more than 20°; with fewer than 20 such frames the skeleton's
    typical value is used.
    """
    rotvec = Rotation.from_matrix(elbow).as_rotvec()
    angle = np.linalg.norm(rotvec, axis=-1)
    bent = angle > np.radians(_MIN_HINGE_DEG)
    if bent.sum() < _MIN_HINGE_FRAMES:
        return fallback_deg if side == "left" else -fallback_deg
    axes = rotvec[bent] / angle[bent, None]
    axis = np.linalg.eigh(axes.T @ axes)[1][:, -1]  # principal axis (sign-free)
    j = SMPL_JOINT_INDEX[f"{side}_shoulder"]
    bone = rest_joints[SMPL_JOINT_INDEX[f"{side}_elbow"]] - rest_joints[j]
    bone = bone / np.linalg.norm(bone)
    target = np.array([0.0, 1.0, 0.0])
    u, t = axis - (axis @ bone) * bone, target - (target @ bone) * bone
    if u @ t < 0:
        u = -u
    theta = np.arctan2(np.cross(u, t) @ bone, u @ t)  # rotating u by theta about the bone gives t
    return float(np.degrees(-theta))


def smpl_forward_kinematics(poses: np.ndarray, rest_joints: np.ndarray) -> np.ndarray:
    """Joint positions (F, 24, 3) of the SMPL joint tree posed by axis-angle ``poses`` (F, 72), root at 0.

    ``rest_joints`` (24, 3): rest joint positions (metres). No shape blend, no translation: enough to check the
    directions of bones.
    """
    poses = np.asarray(poses, dtype=np.float64)
    n_frames = poses.shape[0]
    rot = Rotation.from_rotvec(poses.reshape(-1, 3)).as_matrix().reshape(n_frames, NUM_SMPL_JOINTS, 3, 3)
    world = np.empty_like(rot)
    out = np.zeros((n_frames, NUM_SMPL_JOINTS, 3))
    world[:, 0] = rot[:, 0]
    for j in range(1, NUM_SMPL_JOINTS):
        p = _SMPL_PARENTS[j]
        world[:, j] = world[:, p] @ rot[:, j]
        out[:, j] = out[:, p] + world[:, p] @ (rest_joints[j] - rest_joints[p])
    return out


# Approximate SMPL-like T-pose joint positions (metres, SMPL frame, pelvis near the origin), used only when no
# body-model file is given: enough to define rest bone directions, not a body model.
STANDARD_TPOSE_JOINTS = np.array([
    [0.000, 0.000, 0.000], [0.070, -0.095, -0.010], [-0.070, -0.095, -0.010], [0.000, 0.110, -0.025],
    [0.105, -0.480, -0.015], [-0.105, -0.480, -0.015], [0.000, 0.245, -0.025], [0.090, -0.920, -0.055],
    [-0.090, -0.920, -0.055], [0.000, 0.300, 0.000], [0.120, -0.980, 0.065], [-0.120, -0.980, 0.065],
    [0.000, 0.520, -0.045], [0.075, 0.410, -0.040], [-0.075, 0.410, -0.040], [0.000, 0.590, 0.010],
    [0.165, 0.455, -0.045], [-0.165, 0.455, -0.045], [0.415, 0.445, -0.065], [-0.415, 0.445, -0.065],
    [0.655, 0.455, -0.070], [-0.655, 0.455, -0.070], [0.735, 0.445, -0.085], [-0.735, 0.445, -0.085],
])


def rest_joints_from_model(path: str | Path) -> np.ndarray:
    """Rest joint positions (24, 3) of a body-model file (``J_regressor`` (24, V) @ ``v_template`` (V, 3)), read and
    checked by `fitting.body_model` (a damaged or foreign file is one `ModelFileError`)."""
    from fitting.body_model import check_model_arrays, detect_family, read_model_arrays

    path = Path(path)
    arrays, _ = read_model_arrays(path)
    check_model_arrays(arrays, detect_family(arrays, path), path)
    joints = np.asarray(arrays["J_regressor"], dtype=np.float64) @ np.asarray(arrays["v_template"], np.float64)
    if joints.shape != (NUM_SMPL_JOINTS, 3):
        raise BvhError(f"{path}: the model has {joints.shape[0]} joints; BVH rotations are made relative to the "
                       f"{NUM_SMPL_JOINTS} joints of an SMPL or open model: pass one")
    return joints
