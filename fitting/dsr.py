"""DSR's two semantic terms of a fit (Dwivedi et al., ICCV 2021, "Learning to Regress Bodies from Images using
Differentiable Semantic Rendering", §3.2): which vertices and which pixels each reads. The chamfer machinery is
`fitting.silhouette_term`'s; this module only says what to compare.

**DSR-MC** (minimally clothed): the regions of the image where the skin shows must match the rendered body tightly.
Here: a per-part symmetric chamfer (`silhouette_term`'s (a) + (b)) between the silhouette vertices of the
minimally-clothed parts and the pixels of those parts, each part's boundary pixels paired only with its own
vertices (groups: `mc_group_table`) (a head pixel never pulls a hand). Which parts are minimally clothed is decided **by anatomy** from the
body model's own skinning segmentation (`vertex_segments`: the joint with the largest linear-blend-skinning
weight, SMPL's 24 segments, as the synthetic generator labels parts: `pipelines.synthetic.paint.SEGMENT_NAMES`),
`MC_PARTS`: head, hands and feet; forearms (`FOREARMS`) optionally. No licensed clothing prior is
needed. With DSR's per-face semantic prior (`load_semantic_prior`, when a user has it and fits SMPL) the
minimally-clothed vertices are DSR's own instead (`prior_segments`).

Pixels: a part-label image (B, H, W) uint8 in the keypoints' pixels, ids as the shards store parts
(`shards.masks`): 0 background, 1 + i the segment ``SMPL_JOINT_NAMES[i]``, `UNKNOWN` 255. The term's mask
(`minimally_clothed_targets`) is 1 on the minimally-clothed parts, 0 on the background and unknown elsewhere
(other parts, clothing): its boundary pixels are the visible outline of head, hands and feet against the
background (never the cut where a hand meets a sleeve), and (a) pulls a hand's silhouette vertex only when it
falls on the background.

**DSR-C** (clothed): the clothed person must *contain* the body, and clothes may be loose: a one-sided term, (a)
alone (`silhouette_term.mask_targets(fill=False)`): silhouette vertices outside the person region of a parsing
(clothing ∪ skin: every class but background) are pulled in by the region's distance transform, none is pulled out
to fill it. The parsing is what a user brings (a human parser's output, `shards.masks`' "parsing" kind; no
parser runs here): (B, H, W) uint8, 0 background, any other id the person, `UNKNOWN` not known.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.errors import ModelFileError
from core.joints import SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, face_joints
from fitting.silhouette_term import UNKNOWN, MaskTargets, mask_targets

# By anatomy: SMPL's skinning segments (named by their joint; "left_ankle" is the foot, "left_foot" the toes,
# "left_wrist" the palm, "left_hand" the fingers; SMPL's part segmentation smpl_vert_segmentation.json names them
# leftFoot, leftToeBase, leftHand, leftHandIndex1) that are skin in everyday clothing, grouped into the parts DSR-MC
# matches within: head, hands, feet (shoes hug the foot, so a shoe's outline is the foot's, as DSR's leftShoe /
# rightShoe classes treat it).
MC_PARTS: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "left_hand": ("left_wrist", "left_hand"), "right_hand": ("right_wrist", "right_hand"),
    "left_foot": ("left_ankle", "left_foot"), "right_foot": ("right_ankle", "right_foot"),
}
MC_SEGMENTS: tuple[str, ...] = tuple(s for segments in MC_PARTS.values() for s in segments)
# the forearms (bare in short sleeves), optionally: each joins its hand's part
FOREARMS: dict[str, str] = {"left_elbow": "left_hand", "right_elbow": "right_hand"}

# DSR's per-face semantic prior: SMPL's 13776 faces × the 20 Graphonomy (LIP-style) parsing classes, the
# probability of each class on each face (saidwivedi/DSR dsr/semantic_rendering/constants.py, GRPH_LABEL and
# RP_TEXTURE_PROB = 'dsr_data/semantic_prior.npy'; read with np.squeeze in data_utils.get_dsr_mc_probPrior).
SEMANTIC_PRIOR_CLASSES: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upperclothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "leftArm", "rightArm", "leftLeg", "rightLeg", "leftShoe", "rightShoe")
SMPL_FACES = 13776
# DSR-MC's classes (DSR constants.py SELECTED_GRPH_LABELS): a face's minimally-clothed probability is the sum of
# these columns (data_utils.get_dsr_mc_probPrior); a face is minimally clothed here where it exceeds one half.
SEMANTIC_PRIOR_MC_CLASSES: tuple[str, ...] = ("leftShoe", "rightShoe", "leftArm", "rightArm", "face")
# the part (`MC_PARTS`) a prior class's vertices are matched within (DSR's GRPH_LABEL_TO_SMPL_JOINT: shoes on
# ankle and foot, arms on elbow/wrist/hand, face on the head)
PRIOR_CLASS_PART: dict[str, str] = {"face": "head", "leftArm": "left_hand", "rightArm": "right_hand",
                                    "leftShoe": "left_foot", "rightShoe": "right_foot"}


def part_id(segment: str) -> int:
    """The label id (in part-label images) of an SMPL segment: 1 + its joint index (0 is background)."""
    return SMPL_JOINT_INDEX[segment] + 1


def mc_group_table(forearms: bool = False) -> Tensor:
    """(25,) long: the DSR-MC group of each part-label id (module docstring's ids): 1 + the index of its part in
    `MC_PARTS`, 0 for the background and every segment that is not minimally clothed."""
    table = torch.zeros(len(SMPL_JOINT_NAMES) + 1, dtype=torch.long)
    for group, segments in enumerate(MC_PARTS.values(), 1):
        table[[part_id(s) for s in segments]] = group
    if forearms:
        for segment, part in FOREARMS.items():
            table[part_id(segment)] = list(MC_PARTS).index(part) + 1
    return table


def face_segments(faces: np.ndarray | Tensor, skinning_weights: Tensor | np.ndarray) -> Tensor:
    """Each face's SMPL segment (F,) long: its dominant joint (`core.joints.face_joints`, the synthetic generator's
    part labels too). faces (F, 3); skinning_weights (V, 24) in `SMPL_JOINT_NAMES` order."""
    weights = torch.as_tensor(skinning_weights)
    vertex_segments(weights)                                                   # the layout check
    return torch.as_tensor(face_joints(torch.as_tensor(faces).cpu().numpy(), weights.detach().cpu().numpy()))


def vertex_segments(skinning_weights: Tensor | np.ndarray) -> Tensor:
    """Each vertex's SMPL segment (V,) long, index into `SMPL_JOINT_NAMES`: the joint with the largest skinning
    weight. skinning_weights (V, 24) in `SMPL_JOINT_NAMES` order (SMPL, the open model); other layouts raise."""
    weights = torch.as_tensor(skinning_weights)
    if weights.ndim != 2 or weights.shape[1] != len(SMPL_JOINT_NAMES):
        raise ValueError(f"skinning weights of shape {tuple(weights.shape)}: the anatomy rule reads SMPL's "
                         f"{len(SMPL_JOINT_NAMES)} segments (V, {len(SMPL_JOINT_NAMES)})")
    return weights.argmax(1)


def minimally_clothed_vertices(segments: Tensor, forearms: bool = False) -> tuple[Tensor, Tensor]:
    """By anatomy: which vertices (V,) bool DSR-MC reads (their segment in `MC_SEGMENTS`, plus the forearms'
    when asked) and each one's group (V,) long (`mc_group_table`; 0 for the others)."""
    group = mc_group_table(forearms).to(segments.device)[segments + 1]
    return group > 0, group


def pixel_groups(parts: Tensor, forearms: bool = False) -> Tensor:
    """Each pixel's DSR-MC group (same shape, long; `mc_group_table`, 0 for the background, other segments and
    `UNKNOWN`) of part-label images (module docstring's ids); ValueError for other ids."""
    labels = parts.to(torch.long)
    known = (labels <= len(SMPL_JOINT_NAMES)) | (labels == UNKNOWN)
    if not bool(known.all()):
        raise ValueError(f"part labels hold ids other than 0-{len(SMPL_JOINT_NAMES)} and {UNKNOWN} (e.g. "
                         f"{int(labels[~known][0])}): pass SMPL-segment part labels (a parsing goes to parsing=)")
    table = torch.zeros(UNKNOWN + 1, dtype=torch.long)
    table[:len(SMPL_JOINT_NAMES) + 1] = mc_group_table(forearms)
    return table.to(parts.device)[labels]


def parsing_person(parsing: Tensor) -> Tensor:
    """A parsing (..., H, W) uint8 (0 background, any other id the person, `UNKNOWN`) as a person mask: 1 on the
    person (clothing ∪ skin), 0 background, `UNKNOWN` kept; uint8."""
    return torch.where((parsing != 0) & (parsing != UNKNOWN), 1, parsing).to(torch.uint8)


def minimally_clothed_targets(parts: Tensor, has_parts: Tensor, dtype: torch.dtype = torch.float32, *,
                              forearms: bool = False, scale: float = 1.0) -> MaskTargets:
    """DSR-MC's targets from part-label images (B, H, W) uint8 (module docstring's ids) and has_parts (B,) bool:
    the minimally-clothed parts' mask (1 there, 0 background, unknown elsewhere), its boundary pixels grouped by
    part (`mc_group_table`). scale: the images' px per keypoint px (`silhouette_term.mask_targets`)."""
    labels = parts.to(torch.long)
    group = pixel_groups(parts, forearms)
    mask = torch.where(labels == 0, 0, UNKNOWN)
    mask = torch.where(group > 0, 1, mask).to(torch.uint8)
    return mask_targets(mask, has_parts, dtype, groups=group, scale=scale)


def clothed_targets(parsing: Tensor, has_parsing: Tensor, dtype: torch.dtype = torch.float32, *,
                    scale: float = 1.0) -> MaskTargets:
    """DSR-C's targets from parsings (B, H, W) uint8 (0 background, another id the person, `UNKNOWN`) and
    has_parsing (B,) bool: the person region's distance transform, no boundary pixels (containment only). scale:
    the parsings' px per keypoint px (`silhouette_term.mask_targets`)."""
    return mask_targets(parsing_person(parsing), has_parsing, dtype, fill=False, scale=scale)


def load_semantic_prior(path: str | Path, num_faces: int) -> np.ndarray:
    """DSR's per-face semantic prior (SMPL faces, 20 classes) float64, from ``semantic_prior.npy``; num_faces: the
    fitted model's faces (SMPL's 13776). ModelFileError, naming the file and what to do, for a file that is not a
    (13776, 20) array of probabilities (leading/trailing unit axes allowed, as DSR squeezes them) or a model with
    another topology."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path}: cannot read DSR's semantic prior as a .npy array ({err}); pass DSR's "
                             f"dsr_data/semantic_prior.npy") from None
    array = np.squeeze(array)
    shape = (SMPL_FACES, len(SEMANTIC_PRIOR_CLASSES))
    if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
        raise ModelFileError(f"{path}: DSR's semantic prior is a float array of shape {shape} (SMPL's faces × "
                             f"the {shape[1]} parsing classes), got {array.dtype} {array.shape}; pass DSR's "
                             f"dsr_data/semantic_prior.npy")
    if not np.isfinite(array).all() or (array < 0).any() or (array > 1 + 1e-6).any():
        raise ModelFileError(f"{path}: DSR's semantic prior holds values outside [0, 1] (per-face class "
                             f"probabilities); pass DSR's dsr_data/semantic_prior.npy unchanged")
    if num_faces != SMPL_FACES:
        raise ModelFileError(f"{path}: DSR's semantic prior is per face of SMPL's mesh ({SMPL_FACES} faces); the "
                             f"fitted model has {num_faces}: use it with SMPL, or leave it out (the anatomy rule)")
    return array.astype(np.float64)


def prior_segments(prior: np.ndarray, faces: np.ndarray, num_vertices: int) -> tuple[Tensor, Tensor]:
    """DSR-MC's vertices by DSR's semantic prior (F, 20) over a mesh's faces (F, 3): the vertices of faces whose
    minimally-clothed probability (the sum of `SEMANTIC_PRIOR_MC_CLASSES`) exceeds ½, as (V,) bool, and each
    one's group (V,) long: the `MC_PARTS` group of its most probable MC class (`PRIOR_CLASS_PART`), so its
    pixels are read from the same part labels as the anatomy rule's."""
    columns = [SEMANTIC_PRIOR_CLASSES.index(c) for c in SEMANTIC_PRIOR_MC_CLASSES]
    mc_prob = prior[:, columns]                                                       # (F, 5)
    on = mc_prob.sum(1) > 0.5
    part_group = [list(MC_PARTS).index(PRIOR_CLASS_PART[c]) + 1 for c in SEMANTIC_PRIOR_MC_CLASSES]
    face_group = np.array(part_group)[mc_prob.argmax(1)]
    chosen = np.zeros(num_vertices, dtype=bool)
    group = np.zeros(num_vertices, dtype=np.int64)
    corners = np.asarray(faces)[on]
    chosen[corners.reshape(-1)] = True
    group[corners.reshape(-1)] = np.repeat(face_group[on], 3)
    return torch.as_tensor(chosen), torch.as_tensor(group)
