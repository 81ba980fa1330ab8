"""Mask consistency of the network's predicted mesh (Pavlakos et al., CVPR 2018, "Learning to Estimate 3D Human
Pose and Shape from a Single Color Image": the predicted mesh, rendered, must match the person's silhouette).

The predicted vertices (model frame, metres) plus the translation of the network's weak-perspective camera
(`core.camera.weak_perspective_to_translation`, the camera SPIN's 2D keypoint loss projects with,
`training.geometry.project_normalised`) are drawn by `fitting.silhouette.render_silhouette` into a soft
silhouette of ``res`` px over the training crop, and compared with the sample's person mask pooled to the same
grid.

**The render camera.** SPIN's training projection is ``n = 5000·x / (112·z)`` in normalised crop coordinates
(edges at ±1); the reader puts crop pixel i's centre at ``n = 2(i + 0.5)/R − 1`` (`shards.augment.
normalize_keypoints`). So at ``res`` px with pixel centres at integers (the renderer's convention) the camera is
focal ``5000·res/224`` px, principal point ``(res − 1)/2`` px (`mask_camera`): the same rays as the keypoint loss.

**Resolution.** ``res`` = 56 by default (`MASK_RES`, a quarter of SPIN's 224 px crop): a pixel is 4 fit-frame px,
finer than any limb is wide (a forearm is ~10–15 fit px), and the renderer's cost grows with the pixels
in the faces' bounding boxes (measured in docs/training.md: a third of 224 px's with the small open model). The
contour band is the renderer's default 1 px (4 fit px): the loss sees a contour misplaced by ~1 fit px and more.

**The target.** The renderer draws a contour edge as a band of ``sigma`` px on its outer side over the pixel-centre
coverage (`fitting.silhouette`): averaged over where an edge falls between pixel centres, its picture is the
area-coverage of the mesh grown by sigma / 2 px. The target is therefore the person mask grown by the same
(k·sigma/2 px at the mask's resolution R, k = R / res; `grown_mask`) and then area-pooled to res × res (`pooled_mask`):
per cell the person fraction of its known pixels, and the known fraction as the cell's weight (255 = unknown,
outside the image: weight 0). Without the growth the loss is lowest for a mesh ~sigma/2 px thinner than the
truth (measured: on 8 synthetic people at res 56, self-loss 0.22 and falling as the mesh shrinks; with it 0.024,
lowest at the true mesh for shifts and scales). res divides R (`grid_res`), so the cells do not overlap.

**The loss.** 1 − the weighted Jaccard (Ruzicka) similarity of the soft silhouette s and the pooled mask m,
``1 − Σ w·min(s, m) / Σ w·max(s, m)``, w the known fraction: the IoU of two soft maps, 0 exactly when they agree
(the product form Σsm / Σ(s + m − sm) is not 0 for equal fractional maps); scale-free (a small person counts as
a large one). Its mean over the samples that carry a mask (0, graph kept, when none does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.frames import FIT_FOCAL, FIT_RES
from fitting.dsr import face_segments, mc_group_table
from fitting.silhouette import DEFAULT_SIGMA, MeshEdges, Silhouette, mesh_edges, render_silhouette
from shards.masks import UNKNOWN
from training.losses import example_mean

MASK_RES = 56   # px: the loss's grid over the training crop (module docstring: a quarter of SPIN's 224 px)
EMPTY = 1e-6    # cells: added to both sums of the Jaccard, so that two empty maps agree (loss 0), not 1 − 0/0


def mask_camera(res: int) -> tuple[float, float]:
    """(focal, principal point) px of SPIN's crop camera at ``res`` px, pixel centres at integers."""
    return FIT_FOCAL * res / FIT_RES, (res - 1) / 2.0


def grid_res(img_res: int, mask_res: int = MASK_RES) -> int:
    """The loss's grid for a training crop of ``img_res`` px: the largest divisor of img_res not above mask_res
    (56 for SPIN's 224, 32 for a 64 px CPU run)."""
    return max(d for d in range(1, min(img_res, mask_res) + 1) if img_res % d == 0)


def pooled_mask(mask: Tensor, res: int, sigma: float = DEFAULT_SIGMA) -> tuple[Tensor, Tensor]:
    """A reader's masks (B, R, R) uint8 (0, 1, `UNKNOWN`; res divides R) as the renderer would draw them at
    ``res`` px with band ``sigma`` px (module docstring): (person fraction of the known pixels, known fraction),
    (B, res, res) float32 in [0, 1] each."""
    person, known = pooled_regions((mask == 1)[:, None], mask != UNKNOWN, res, sigma)
    return person[:, 0], known


def pooled_regions(regions: Tensor, known: Tensor, res: int, sigma: float = DEFAULT_SIGMA) -> tuple[Tensor, Tensor]:
    """Regions (B, C, R, R) bool (a person, or one region per part) over known pixels (B, R, R) bool, as the
    renderer would draw them at ``res`` px (res divides R) with band ``sigma`` px: each grown by the half band
    (`grown_mask`), then per cell its fraction of the known pixels (B, C, res, res) and the known fraction
    (B, res, res), float32 in [0, 1]."""
    if regions.shape[-1] % res or regions.shape[-2] % res:
        raise ValueError(f"pooled_regions: res {res} px must divide the labels' {tuple(regions.shape[-2:])} px")
    known = known.float()[:, None]
    grown = grown_mask(regions.float(), sigma / 2 * regions.shape[-1] / res) * known
    cell = regions.shape[-1] // res
    known_share = F.avg_pool2d(known, cell)
    return F.avg_pool2d(grown, cell) / known_share.clamp(min=1e-6), known_share[:, 0]


def grown_mask(person: Tensor, radius: float) -> Tensor:
    """Coverage (B, C, H, W) in [0, 1] of binary regions (B, C, H, W) grown by ``radius`` px: a pixel at
    distance d (centre to centre) from the nearest person pixel is covered ``clamp(1 + radius − d, 0, 1)`` (the
    region's edge lies half a pixel beyond its boundary pixels' centres; a pixel is covered by the share of it
    inside the grown edge, to first order). A grey dilation with a cone, one shifted max per offset."""
    reach = int(radius + 1)
    padded = F.pad(person, (reach, reach, reach, reach))
    height, width = person.shape[-2:]
    grown = person.clone()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            weight = min(1.0, 1.0 + radius - (dx * dx + dy * dy) ** 0.5)
            if weight <= 0 or dx == dy == 0:
                continue
            shifted = padded[..., reach + dy:reach + dy + height, reach + dx:reach + dx + width]
            grown = torch.maximum(grown, weight * shifted)
    return grown


def jaccard_loss(silhouette: Tensor, person: Tensor, known: Tensor, has_mask: Tensor) -> Tensor:
    """Mean over the samples with ``has_mask`` (B,) of 1 − Σ w·min(s, m) / Σ w·max(s, m) for silhouettes s (B, ...)
    in [0, 1], person fractions m of the same shape and weights w = known fractions (broadcast to it), the sums
    over all but the batch axis (several maps pool into one ratio); 0 for a sample where both are empty, and 0
    without such a sample."""
    s, m, w = silhouette, person, known
    axes = tuple(range(1, s.ndim))
    inter = (w * torch.minimum(s, m)).sum(axes)
    union = (w * torch.maximum(s, m)).sum(axes)
    return example_mean(1.0 - (inter + EMPTY) / (union + EMPTY), has_mask)   # masked: no host sync


@dataclass(frozen=True)
class MaskConsistency:
    """The picture of the predicted mesh that the mask loss and DSR's losses (`training.dsr_loss`) read, and the
    mask loss. Its fixed parts for one body model: the faces (F, 3) long and their `MeshEdges` (computed once),
    the grid ``res`` px and, for DSR-MC, each face's minimally-clothed group (F,) long (`fitting.dsr.mc_group_table`:
    0 not minimally clothed, 1 + the index in `fitting.dsr.MC_PARTS`; None: parts are not drawn). `from_faces`
    builds it; `draw` renders a batch once for all three losses; `loss` / `__call__` is the mask loss."""

    faces: Tensor
    edges: MeshEdges
    res: int = MASK_RES
    face_groups: Tensor | None = None

    @classmethod
    def from_faces(cls, faces, res: int = MASK_RES, device: torch.device | str = "cpu",
                   skinning_weights: Tensor | None = None) -> "MaskConsistency":
        """With ``skinning_weights`` (V, 24) in SMPL's joint order, the faces' minimally-clothed groups by anatomy
        (`fitting.dsr.face_segments`, the synthetic generator's part rule; ValueError for another layout)."""
        faces = torch.as_tensor(faces, dtype=torch.long, device=device)
        groups = None
        if skinning_weights is not None:
            segments = face_segments(faces.cpu(), torch.as_tensor(skinning_weights).detach().cpu())
            groups = mc_group_table()[segments + 1].to(device)
        return cls(faces, mesh_edges(faces), int(res), groups)

    def draw(self, vertices: Tensor, cam_t: Tensor, parts: bool = False) -> Silhouette:
        """The soft silhouettes (B, res, res) of model-frame vertices (B, V, 3) m moved by cam_t (B, 3) m, seen by
        SPIN's crop camera at ``res`` px (`mask_camera`), and with ``parts`` the minimally-clothed groups' maps
        (B, 1 + len(MC_PARTS), res, res) (group 0: the rest of the body); float32, differentiable in both."""
        if parts and self.face_groups is None:
            raise ValueError("MaskConsistency.draw: parts need the faces' groups (from_faces(skinning_weights=...))")
        focal, center = mask_camera(self.res)
        return render_silhouette(vertices.float() + cam_t.float()[:, None], self.faces, focal, (center, center),
                                 (self.res, self.res), edges=self.edges,
                                 face_parts=self.face_groups if parts else None)

    def render(self, vertices: Tensor, cam_t: Tensor) -> Tensor:
        """The soft silhouettes (B, res, res) alone (`draw`)."""
        return self.draw(vertices, cam_t).mask

    def loss(self, picture: Silhouette, mask: Tensor, has_mask: Tensor) -> Tensor:
        """1 − weighted Jaccard (module docstring) of drawn silhouettes (`draw`) against the reader's masks
        (B, R, R) uint8 (res divides R), over the samples with has_mask (B,) bool."""
        person, known = pooled_mask(mask, self.res)
        return jaccard_loss(picture.mask, person, known, has_mask)

    def __call__(self, vertices: Tensor, cam_t: Tensor, mask: Tensor, has_mask: Tensor) -> Tensor:
        """The mask loss of predicted meshes (`draw`, then `loss`)."""
        return self.loss(self.draw(vertices, cam_t), mask, has_mask)
