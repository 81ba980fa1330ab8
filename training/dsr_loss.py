"""DSR's two semantic losses on the network's predicted mesh (Dwivedi et al., ICCV 2021, "Learning to Regress
Bodies from Images using Differentiable Semantic Rendering", §3.2), beside the mask loss and drawn by the same
render (`training.mask_loss.MaskConsistency.draw`: one render per step, the same grid and camera, the same
half-band growth of the targets, `training.mask_loss.pooled_regions`).

**DSR-MC** (minimally clothed): the rendered head, hands and feet must match the pixels of those parts. The parts
are chosen **by anatomy**, `fitting.dsr`'s rule (`MC_PARTS`, `mc_group_table`; each face's group by
`fitting.dsr.face_segments`, the synthetic generator's own part rule): the renderer draws one map per group, the
sample's part labels give one region per group, and the loss is 1 − the weighted Jaccard of the stacked maps
(`training.mask_loss.jaccard_loss`, the sums over groups and pixels pooled into one ratio: a hand drawn on the
head's pixels is a miss, and a part small in the image weighs by its area, not as a whole term). Known pixels are
the background and the minimally-clothed parts; every other person pixel (torso, limbs, clothing) and 255 are
unknown: where the image shows a sleeve, the body under it may be anything. A cell of the grid counts only when
all its pixels are known: the render samples each cell at its centre and cannot tell where inside a cell a cut
(wrist, neck, ankle) lies, so cells that straddle one would bias the loss (measured on 6 synthetic people at
56 px of 224: the truth's loss 0.128 with partly known cells weighed by their known share, 0.079 without them;
shifted 1 cm 0.19 / 0.16, 2 cm 0.30 / 0.28).

**DSR-C** (clothed): the rendered body must lie inside the clothed person: the person region of the sample's
parsing (every id but 0 and 255), or its person mask when it has no parsing. One-sided: the rendered mass beyond
the region, over the region's area, ``Σ w·max(s − m, 0) / Σ w·m`` (s the soft silhouette, m the region's pooled
fraction, w the known fraction); its gradient is 0 inside the region, so clothing the body does not fill costs
nothing; 0 for a body inside, scale-free as the mask loss. (``s·(1 − m)`` would charge a boundary cell that the
body covers exactly; measured on the same 6 people: the truth 0.066 that way, 0.005 this way.)

**How these relate to DSR's own training losses** (saidwivedi/DSR, commit cc56dd8, ``dsr/losses/losses.py``
``DSRLoss.sr_losses`` and ``dsr/semantic_rendering/loss.py``): DSR renders SMPL with SoftRas textured by its
per-face semantic prior (`fitting.dsr.load_semantic_prior`) at 224 px. Its DSR-MC (``dsr_mc_loss``, type
``'DistM'``) is one-sided: the rendered minimally-clothed probability times the distance transform of the image's
minimally-clothed pixels (Graphonomy's), over (Σ rendered)^{3/2}; its ``'nIOU'`` baseline is 1 − the product-form
soft IoU of the rendered and image maps. Ours is the soft-Jaccard (two-sided) per anatomy group: it also pulls a
rendered hand out to fill the image's hand, and compares parts with their own parts. Its DSR-C is a per-pixel
cross-entropy of the rendered clothing-class probabilities (the prior's 20 classes) against the parsing's classes,
class-weighted; ours is containment in the parsing's person region, which needs no per-vertex clothing prior (the
open model has none) and reads any parser's labels. DSR's default weights are 0.2 for each (``DSRLoss.__init__``
``dsr_mc_loss_weight``, ``dsr_c_loss_weight``) inside SPIN's ×60 total, as here.

**Part tables.** The reader gives each sample's part ids with its own table (``parts_names``, a JSON list:
`shards.reader.ShardReader`); `smpl_part_ids` maps every table to SMPL's segment ids by name (`fitting.dsr`'s
ids: 1 + the index in `core.joints.SMPL_JOINT_NAMES`), once per table, and refuses a table with other names.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor

from core.errors import FitloopError
from core.joints import SMPL_JOINT_INDEX
from fitting.dsr import MC_PARTS, parsing_person, part_id, pixel_groups
from fitting.silhouette import DEFAULT_SIGMA
from shards.masks import UNKNOWN
from training.losses import example_mean
from training.mask_loss import jaccard_loss, pooled_regions

MC_GROUPS = len(MC_PARTS)   # DSR-MC's groups 1 … MC_GROUPS (head, hands, feet); 0 is the rest of the body


class PartLabelError(FitloopError):
    """A sample's part labels whose table is not SMPL's segments: DSR-MC cannot tell its head, hands and feet."""


@lru_cache(maxsize=64)
def _segment_lookup(table: str) -> Tensor:
    """(256,) long: a part id of the JSON table -> SMPL segment id (0 background, `UNKNOWN` kept); ValueError
    naming the names that are not SMPL segments."""
    names = json.loads(table)
    lookup = torch.arange(256)
    if not names:
        return lookup
    unknown = [n for n in names[1:] if n not in SMPL_JOINT_INDEX]
    if names[0] != "background" or unknown:
        raise ValueError(f"{unknown or names[:1]}")
    lookup[:len(names)] = torch.tensor([0] + [part_id(n) for n in names[1:]])
    return lookup


def smpl_part_ids(parts: Tensor, tables: Sequence[str], keys: Sequence[str]) -> Tensor:
    """Part labels (B, R, R) uint8 (ids into each sample's table, `UNKNOWN` 255) -> SMPL segment ids (B, R, R)
    uint8 (`fitting.dsr`: 0 background, 1 + `SMPL_JOINT_INDEX`, 255 unknown). tables: each sample's
    ``parts_names`` (a JSON list; "[]" for a sample without parts, whose zeros stay 0); keys: for the error.
    `PartLabelError` naming the sample and the names for a table that is not SMPL's segments."""
    lookups = []
    for table, key in zip(tables, keys):
        try:
            lookups.append(_segment_lookup(table))
        except ValueError as err:
            raise PartLabelError(f"sample {key}: its part labels name {err} (table {table}), not SMPL segments "
                                 f"(background, then {', '.join(list(SMPL_JOINT_INDEX)[:3])}, …): DSR-MC reads "
                                 f"head, hands and feet by SMPL segment; relabel its parts or train without "
                                 f"--dsr-mc-weight") from None
    lookup = torch.stack(lookups).to(parts.device)                                  # (B, 256)
    return lookup.gather(1, parts.long().flatten(1)).view(parts.shape).to(torch.uint8)


def minimally_clothed_regions(segments: Tensor, res: int, sigma: float = DEFAULT_SIGMA) -> tuple[Tensor, Tensor]:
    """DSR-MC's targets from SMPL segment ids (B, R, R) uint8 (`smpl_part_ids`): each group's pooled fraction
    (B, MC_GROUPS, res, res) (`pooled_regions`: grown by the half band) and each cell's weight (B, res, res): 1
    where all its pixels are known (background or a minimally-clothed part), else 0 (module docstring)."""
    group = pixel_groups(segments)                                   # 0: background, other parts and unknown
    ids = torch.arange(1, MC_GROUPS + 1, device=segments.device)
    regions = group[:, None] == ids[None, :, None, None]
    fraction, known = pooled_regions(regions, (segments == 0) | (group > 0), res, sigma)
    return fraction, (known > 1 - 1e-6).to(fraction.dtype)


def dsr_mc_loss(part_maps: Tensor, segments: Tensor, has_parts: Tensor) -> Tensor:
    """DSR-MC (module docstring): drawn group maps (B, 1 + MC_GROUPS, res, res) (`MaskConsistency.draw(parts=
    True)`) against SMPL segment ids (B, R, R) uint8 (res divides R), over the samples with has_parts (B,) bool."""
    regions, weight = minimally_clothed_regions(segments, part_maps.shape[-1])
    return jaccard_loss(part_maps[:, 1:], regions, weight[:, None], has_parts)


def clothed_region(mask: Tensor, has_mask: Tensor, parsing: Tensor, has_parsing: Tensor) -> tuple[Tensor, Tensor]:
    """DSR-C's region (B, R, R) uint8 (1 the clothed person, 0 background, `UNKNOWN`) and which samples have one
    (B,) bool: the parsing's person (every id but 0 and 255) where a sample has a parsing, else its person mask."""
    return torch.where(has_parsing[:, None, None], parsing_person(parsing), mask), has_parsing | has_mask


def dsr_c_loss(silhouette: Tensor, region: Tensor, has_region: Tensor) -> Tensor:
    """DSR-C (module docstring): mean over the samples with has_region (B,) bool of the drawn silhouettes'
    (B, res, res) mass beyond the region (B, R, R) uint8 (`clothed_region`; res divides R), over its area."""
    inside, known = pooled_regions((region == 1)[:, None], region != UNKNOWN, silhouette.shape[-1])
    s, m, w = silhouette, inside[:, 0], known
    outside = (w * (s - m).clamp(min=0)).sum((1, 2))
    return example_mean(outside / (w * m).sum((1, 2)).clamp(min=1.0), has_region)  # an empty region: over one cell
