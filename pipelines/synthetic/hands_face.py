"""Random but anatomical hands and faces for synthetic whole-body (SMPL-X-layout) people.

Hands (`sample_hand_poses`): each finger curls about its joints' flexion axes, every joint within the sampling
ranges below, and the fingers spread a little at their base knuckles. A hand draws one grip g ~ U(0, 1) (how
closed it is), each finger its curl clip(g + N(0, `FINGER_JITTER`), 0, 1), and each joint the flexion
curl · its range's top (plus N(0, `TWIST_JITTER_DEG`) of twist and side play, clipped to the ranges), so a hand
goes from flat to a fist with its fingers mostly together, as hands do. The fingers spread by s ~ U(0, `SPREAD_DEG`)
at the MCP joints: index +s (towards the thumb), middle 0, ring −s/2, pinky −s.

*Ranges* (degrees, `SAMPLE_RANGES_DEG`: twist, abduction, flexion, flexion positive towards the palm) are kept
inside the American Academy of Orthopaedic Surgeons' normal active ranges (AAOS 1965, as tabulated in Norkin &
White, *Measurement of Joint Motion*): finger MCP flexion 90, PIP 100, DIP 90, abduction 20; thumb CMC flexion
15, palmar abduction 70, MCP flexion 50, IP flexion 80. The sampling ranges stop short of those limits (MCP 80,
PIP 95, DIP 70, thumb MCP 45, IP 70): synthetic hands are typical hands, not hands at their limits.
NOTE: fitting's hand joint-limit prior (`fitting.hand_prior`, the vposer branch, not on main when this was
written) holds the same AAOS limits and the same axes; once it is on main these ranges should be checked against
its `LIMITS_DEG` (a test can assert they lie inside) and the axes taken from its `flexion_axes`.

*Axes* (SMPL-X's rest frame: arms along ±X, palms down (−Y), thumbs forward (+Z)), rows twist, abduction,
flexion: right-hand fingers twist about X, abduct about Y, flex about +Z (a positive rotation takes −X, the
finger's direction, towards −Y, the palm); the right thumb, lying in the palm's plane, flexes across the palm
about −Y and abducts away from it about +Z. The left hand is the mirror image (x -> −x), under which an axial
vector (a, b, c) becomes (a, −b, −c). A joint's axis-angle is Σ component · axis (the components are orthogonal).

Faces (`sample_faces`): expression ~ N(0, 1) clipped to ±`EXPRESSION_CLIP`; the jaw opened with probability
`JAW_OPEN_SHARE` by U(`JAW_OPEN_RAD`) about x (SMPL-X's jaw opens for positive x); eyes straight (zero), since
nothing here looks at anything.

Shapes: hand poses (N, 45) per hand, axis-angle radians, SMPL-X's (MANO's) joint order
(`core.wholebody.MANO_FINGERS`, joints 1–3 base to tip), relative to the flat hand (smplx's
``flat_hand_mean=True``); jaw (N, 3); expression (N, NE).
"""
from __future__ import annotations

import numpy as np

from core.wholebody import MANO_FINGERS

# (twist, abduction, flexion) ranges in degrees for sampling, per joint kind (module docstring).
SAMPLE_RANGES_DEG: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "finger1": ((-5, 5), (-15, 15), (0, 80)),     # MCP
    "finger2": ((-5, 5), (-5, 5), (0, 95)),       # PIP
    "finger3": ((-5, 5), (-5, 5), (0, 70)),       # DIP
    "thumb1": ((-15, 15), (0, 50), (0, 15)),      # CMC: palmar abduction, flexion
    "thumb2": ((-5, 5), (-5, 5), (0, 45)),        # MCP
    "thumb3": ((-5, 5), (-5, 5), (0, 70)),        # IP
}
FINGER_JITTER = 0.25      # spread of a finger's curl about its hand's grip (grip and curl in [0, 1])
TWIST_JITTER_DEG = 2.0    # N(0, this) on twist and (but the MCP spread) abduction, within the ranges
SPREAD_DEG = 12.0         # largest spread of the fingers at their MCP joints
THUMB_OPPOSITION = (10.0, 50.0)  # the thumb's CMC palmar abduction is drawn in this range (degrees), ...
                                 # more closed hands oppose it more
RIGHT_AXES: dict[str, np.ndarray] = {  # rows twist, abduction, flexion (module docstring)
    "finger": np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "thumb": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}
MIRROR_AXIAL = np.diag([1.0, -1.0, -1.0])  # an axial vector under x -> -x
SPREAD_SIGN = {"index": 1.0, "middle": 0.0, "ring": -0.5, "pinky": -1.0, "thumb": 0.0}
EXPRESSION_CLIP = 2.5
JAW_OPEN_SHARE = 0.4
JAW_OPEN_RAD = (0.05, 0.35)


def joint_kinds() -> list[str]:
    """The `SAMPLE_RANGES_DEG` row of each of a hand's 15 joints, SMPL-X's order."""
    return [("thumb" if finger == "thumb" else "finger") + str(k) for finger in MANO_FINGERS for k in (1, 2, 3)]


def hand_axes(side: str) -> np.ndarray:
    """(15, 3, 3) each joint's axes, rows twist, abduction, flexion, in SMPL-X's rest frame, for ``side``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be left or right, not {side!r}")
    axes = np.stack([RIGHT_AXES[kind[:-1]] for kind in joint_kinds()])
    return axes if side == "right" else axes @ MIRROR_AXIAL


def sample_ranges_rad() -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) (15, 3) radians, each hand joint's sampling range per component (twist, abduction, flexion)."""
    table = np.radians(np.array([SAMPLE_RANGES_DEG[kind] for kind in joint_kinds()], dtype=np.float64))
    return table[..., 0], table[..., 1]


def sample_hand_components(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 15, 3) components (twist, abduction, flexion) radians of ``count`` hands (module docstring); the
    same for either side (`hand_pose` mirrors them through the axes)."""
    lo, hi = sample_ranges_rad()
    grip = rng.uniform(0.0, 1.0, count)
    curl = np.clip(grip[:, None] + FINGER_JITTER * rng.standard_normal((count, len(MANO_FINGERS))), 0.0, 1.0)
    spread = np.radians(rng.uniform(0.0, SPREAD_DEG, count))
    jitter = np.radians(TWIST_JITTER_DEG) * rng.standard_normal((count, 15, 2))
    comps = np.zeros((count, 15, 3))
    for f, finger in enumerate(MANO_FINGERS):
        for k in range(3):
            j = 3 * f + k
            comps[:, j, 0] = jitter[:, j, 0]
            comps[:, j, 1] = jitter[:, j, 1]
            comps[:, j, 2] = lo[j, 2] + curl[:, f] * (hi[j, 2] - lo[j, 2])
        comps[:, 3 * f, 1] += SPREAD_SIGN[finger] * spread
    thumb = 3 * MANO_FINGERS.index("thumb")
    low, high = np.radians(THUMB_OPPOSITION)
    comps[:, thumb, 1] = low + curl[:, MANO_FINGERS.index("thumb")] * (high - low)
    return np.clip(comps, lo, hi)


def hand_pose(components: np.ndarray, side: str) -> np.ndarray:
    """(N, 45) axis-angle hand pose of one side from components (N, 15, 3) (`sample_hand_components`)."""
    return np.einsum("njc,jcd->njd", components, hand_axes(side)).reshape(len(components), 45)


def hand_components(pose: np.ndarray, side: str) -> np.ndarray:
    """(N, 15, 3) twist, abduction, flexion of a hand pose (N, 45) of ``side``: the inverse of `hand_pose`."""
    return np.einsum("njd,jcd->njc", np.asarray(pose).reshape(-1, 15, 3), hand_axes(side))


def sample_hands(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Left and right hand poses (count, 45) each, drawn independently (module docstring)."""
    left = hand_pose(sample_hand_components(rng, count), "left")
    right = hand_pose(sample_hand_components(rng, count), "right")
    return left, right


def sample_faces(rng: np.random.Generator, count: int, num_expression: int) -> tuple[np.ndarray, np.ndarray]:
    """Jaw poses (count, 3) and expressions (count, num_expression) (module docstring)."""
    expression = np.clip(rng.standard_normal((count, num_expression)), -EXPRESSION_CLIP, EXPRESSION_CLIP)
    opened = rng.random(count) < JAW_OPEN_SHARE
    jaw = np.zeros((count, 3))
    jaw[:, 0] = np.where(opened, rng.uniform(*JAW_OPEN_RAD, count), 0.0)
    return jaw, expression
