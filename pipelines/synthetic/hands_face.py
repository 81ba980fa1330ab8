"""Random but anatomical hands and faces for synthetic whole-body (SMPL-X-layout) people.

Hands (`sample_hands`): each finger curls about its joints' flexion axes, every joint within the sampling
ranges below, and the fingers spread a little at their base knuckles. A hand draws one grip g ~ U(0, 1) (how
closed it is), each finger its curl clip(g + N(0, `FINGER_JITTER`), 0, 1), and each joint the flexion
curl · its range's top (plus N(0, `TWIST_JITTER_DEG`) of twist and side play, clipped to the ranges), so a hand
goes from flat to a fist with its fingers mostly together, as hands do. The fingers spread by s ~ U(0, `SPREAD_DEG`)
at the MCP joints: index +s (towards the thumb), middle 0, ring −s/2, pinky −s.

*Ranges* (degrees, `SAMPLE_RANGES_DEG`: twist, abduction, flexion, flexion positive towards the palm) lie inside
fitting's hand joint limits (`fitting.hand_prior.LIMITS_DEG`: the American Academy of Orthopaedic Surgeons' normal
active ranges, AAOS 1965 via Norkin & White: finger MCP flexion 90, PIP 100, DIP 90, abduction 20; thumb CMC
flexion 15, palmar abduction 70, MCP flexion 50, IP flexion 80) and stop short of them (MCP 80, PIP 95, DIP 70,
thumb MCP 45, IP 70): synthetic hands are typical hands, not hands at their limits, and a fit's hand prior never
fights the truth (tests/test_synthetic_wholebody.py checks the inclusion).

*Axes*: the hand prior's (`fitting.hand_prior.flexion_axes`: SMPL-X's rest frame, rows twist, abduction, flexion;
right-hand fingers flex about +Z, the thumb across the palm about −Y, the left hand mirrored). A joint's
axis-angle is Σ component · axis (the axes are orthonormal).

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
from fitting.hand_prior import HAND_JOINT_NAMES, flexion_axes, joint_kind

# (twist, abduction, flexion) ranges in degrees for sampling, per joint kind (`fitting.hand_prior.joint_kind`;
# module docstring).
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
SPREAD_SIGN = {"index": 1.0, "middle": 0.0, "ring": -0.5, "pinky": -1.0, "thumb": 0.0}
EXPRESSION_CLIP = 2.5
JAW_OPEN_SHARE = 0.4
JAW_OPEN_RAD = (0.05, 0.35)


def joint_kinds() -> list[str]:
    """The `SAMPLE_RANGES_DEG` row of each of a hand's 15 joints, SMPL-X's order (either side)."""
    return [joint_kind(name) for name in HAND_JOINT_NAMES["right"]]


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
    return np.einsum("njc,jcd->njd", components, flexion_axes(side)).reshape(len(components), 45)


def hand_components(pose: np.ndarray, side: str) -> np.ndarray:
    """(N, 15, 3) twist, abduction, flexion of a hand pose (N, 45) of ``side``: the inverse of `hand_pose`."""
    return np.einsum("njd,jcd->njc", np.asarray(pose).reshape(-1, 15, 3), flexion_axes(side))


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
