"""The silhouette term of a fit: a symmetric distance-transform (chamfer) distance between a person mask and the
projected body's silhouette, as least-squares residuals with analytic Jacobians (SMPLify's fast LM) or as an
autograd energy (its reference mode, the tests).

The literature's form (Lassner et al., CVPR 2017, "Unite the People", §4.1; Pavlakos et al., CVPR 2018, mask
consistency; SMPLify-style silhouette terms): with S the mesh's silhouette-boundary vertices projected to px and M
the mask's boundary pixels,

    E_sil = mean_{v in S} DT(π(v))²  +  mean_{m in M} ‖π(v*(m)) − m‖²,      v*(m) = argmin_{v in S} ‖π(v) − m‖,

(a) DT the mask's Euclidean distance transform (px to the nearest person pixel; 0 on the person), sampled
bilinearly: the residual is DT(π(v)), its Jacobian ∇DT · ∂π/∂X · ∂X/∂θ; (b) a residual vector per mask boundary
pixel through its nearest silhouette vertex. (a) pulls the silhouette into the mask, (b) makes it fill the mask:
keypoints alone say little about shape and depth, (b) is what widens a body too thin for its mask. Both are means,
so the energy is in px² whatever the mask's size, and `SMPLifyConfig.silhouette_weight` w enters as w² E_sil
beside the keypoints' Σ c² ρ (px², ~25 joints): w = 5 weighs the silhouette like the keypoints.

The silhouette vertices are chosen per evaluation by the normals (fitting.silhouette's rule): the ends of contour
edges, edges between a face turned towards the camera and one turned away. That set is sparse (~10 % of the
vertices), so the term stays batched and cheap; the choice and the matching v*(m) are held fixed within a step
(the Jacobian is that of the energy at fixed correspondences, as in ICP) and re-made at every evaluation.

Masks: (B, H, W) uint8 pictures of the keypoints' pixel frame (SMPLify's fit frame: SPIN's 224 px crop, whose
pixel *corners* sit at integers, `core.frames.FIT_FRAME_OFFSET`: mask pixel (i, j) has its centre at
(i + offset, j + offset) px, offset 0.5 by default), 0 background, 1 person, `UNKNOWN` (255) not known
(shards.masks.UNKNOWN: crop pixels outside the image); an unknown pixel counts as person for (a) (no pull out of
it) and is never a boundary pixel for (b); vertices projected outside the picture are ignored (it says nothing
there). A mask pixel is a pixel centre inside the person, so the mask's edge lies half a pixel outside its boundary
pixels' centres: the term pulls the contour ~0.5 px inward of a hard mask's edge, well below 5 px keypoint noise.

A mask may be finer than the keypoints' frame (``mask_targets(scale=s)``: s mask px per keypoint px, e.g. a
s·224 px mask of the same crop, drawn with focal s·f and principal point s·c). The two grids' pixel corners
coincide, so mask pixel (i, j) has its centre at ((j − (s − 1)/2)/s + offset, (i − (s − 1)/2)/s + offset)
keypoint px (in the fit frame: ((j + ½)/s, (i + ½)/s)). Its targets are converted to keypoint px once, when they
are made (distances ÷ s, boundary centres mapped as above); only the lookup of the distance transform reads the
mask's grid (`MaskTargets.mask_index`, derivative × s). So every residual, the energy and ``silhouette_weight``
stay in keypoint px at any s, and the projection, the matching and the normal equations are the same code as at
s = 1 (the other way, projecting at s·f and dividing the residuals by s, would thread s through the camera, both
residual kinds and their Jacobians); s = 1 is the plain term bit for bit. A finer mask draws the outline with s×
the pixels per σ of shape: the betas that move a 224 px outline by under a pixel move a 4·224 px one by several
(docs/smplify.md says what it bought).

Several terms share this machinery (`MaskTerm`, all read off one silhouette per evaluation): the silhouette term,
and DSR's (`fitting.dsr`): a term may read a subset of the vertices, pair boundary pixels only with vertices of
their group (per-part matching: ``mask_targets(groups=)`` and the term's vertex groups), or drop (b) for a one-sided
containment (``mask_targets(fill=False)``).

The distance transform is scipy's exact Euclidean one (`scipy.ndimage.distance_transform_edt`); OpenCV's
``distanceTransform(DIST_L2, 5)`` is an approximation of it and OpenCV is not a dependency here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from core.frames import FIT_FRAME_OFFSET
from core.pinhole import pinhole
from fitting.silhouette import MeshEdges, drawn_faces

UNKNOWN = 255  # the mask's "not known" id (shards.masks.UNKNOWN; VOC's and Cityscapes' ignore id)
UNSEEN_PX = 1e6  # px: where vertices the term ignores are put for the nearest-vertex search (far off any picture)


@dataclass(frozen=True)
class MaskTargets:
    """What the term reads of a batch of masks (`mask_targets`).

    distance (B, H, W) keypoint px from each mask pixel to the nearest person (or unknown) pixel; boundary (B, M, 2)
    px the person pixels with a background 4-neighbour (their centres, in the keypoints' px), padded to the batch's
    most; boundary_valid (B, M) bool; has_mask (B,) bool (an example without a mask gets no term); offset px: where
    the keypoint frame's pixel 0's centre lies; boundary_group (B, M) long or None: the group (e.g. body part) of
    each boundary pixel, which pairs it only with silhouette vertices of the same group (`silhouette_residuals`;
    None: any vertex); scale: mask px per keypoint px (module docstring; 1: the mask is of the keypoints' frame)."""

    distance: Tensor
    boundary: Tensor
    boundary_valid: Tensor
    has_mask: Tensor
    offset: float = FIT_FRAME_OFFSET
    boundary_group: Tensor | None = None
    scale: float = 1.0

    def select(self, rows: Tensor) -> "MaskTargets":
        """The targets of examples ``rows`` (N,) long (SMPLify's candidates)."""
        group = None if self.boundary_group is None else self.boundary_group[rows]
        return MaskTargets(self.distance[rows], self.boundary[rows], self.boundary_valid[rows], self.has_mask[rows],
                           self.offset, group, self.scale)

    def mask_index(self, pixels: Tensor) -> Tensor:
        """Points (..., 2) keypoint px as (fractional) indices (x, y) of the mask's pixels: s·(x − offset) +
        (s − 1)/2 (the grids' pixel corners coincide), which is x − offset at s = 1 bit for bit."""
        return (pixels - self.offset) * self.scale + (self.scale - 1) / 2


def mask_targets(masks: Tensor, has_mask: Tensor, dtype: torch.dtype = torch.float32,
                 offset: float = FIT_FRAME_OFFSET, *, fill: bool = True, groups: Tensor | None = None,
                 scale: float = 1.0) -> MaskTargets:
    """Distance transforms and boundary pixels of masks (B, H, W) uint8 (0, 1, `UNKNOWN`); has_mask (B,) bool;
    offset px: where the keypoint frame's pixel 0's centre lies (module docstring; 0 for a frame with pixel
    centres at integers); scale: the mask's px per keypoint px (>= 1 for a finer mask; module docstring), both
    read into keypoint px here. Computed once per fit (CPU, scipy), then moved to the masks' device.

    fill False: no boundary pixels, so only (a) acts: a one-sided term that pulls the silhouette into the mask and
    never out to fill it (DSR-C's containment, `fitting.dsr`). groups (B, H, W) long: each pixel's group, read at
    the boundary pixels into ``boundary_group`` (per-part matching, DSR-MC)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W) uint8, got shape {tuple(masks.shape)}")
    if not scale > 0:
        raise ValueError(f"mask scale must be positive (mask px per keypoint px), got {scale}")
    array = masks.detach().cpu().numpy()
    bad = ~np.isin(array, (0, 1, UNKNOWN))
    if bad.any():
        raise ValueError(f"masks hold values other than 0, 1 and {UNKNOWN} (e.g. {int(array[bad][0])}): pass "
                         f"person masks as the shards store them")
    has = torch.as_tensor(has_mask, dtype=torch.bool).cpu().numpy() & (array == 1).any((1, 2))
    distance = np.zeros(array.shape, dtype=np.float64)
    boundaries, labels = [], []
    group_array = None if groups is None else torch.as_tensor(groups).cpu().numpy()
    for i, m in enumerate(array):
        if has[i]:
            distance[i] = ndimage.distance_transform_edt(m == 0) / scale   # background -> keypoint px to person
        if not has[i] or not fill:
            boundaries.append(np.zeros((0, 2)))
            labels.append(np.zeros(0, dtype=np.int64))
            continue
        person = m == 1
        padded = np.pad(m, 1, constant_values=UNKNOWN)               # beyond the image: unknown, not background
        background = padded == 0
        touches = (background[:-2, 1:-1] | background[2:, 1:-1] | background[1:-1, :-2] | background[1:-1, 2:])
        y, x = np.nonzero(person & touches)
        index = np.stack([x, y], 1).astype(np.float64)                 # inverse of MaskTargets.mask_index
        boundaries.append((index - (scale - 1) / 2) / scale + offset)
        labels.append(np.zeros(len(y), dtype=np.int64) if group_array is None else group_array[i, y, x])
    most = max([len(b) for b in boundaries] + [1])
    boundary = np.zeros((len(array), most, 2))
    valid = np.zeros((len(array), most), dtype=bool)
    group = np.full((len(array), most), -1, dtype=np.int64)
    for i, (b, g) in enumerate(zip(boundaries, labels)):
        boundary[i, :len(b)], valid[i, :len(b)], group[i, :len(g)] = b, True, g
    device = masks.device
    return MaskTargets(torch.as_tensor(distance, dtype=dtype, device=device),
                       torch.as_tensor(boundary, dtype=dtype, device=device),
                       torch.as_tensor(valid, device=device), torch.as_tensor(has, device=device), offset,
                       None if groups is None else torch.as_tensor(group, device=device), float(scale))


def contour_vertices(vertices: Tensor, faces: Tensor, edges: MeshEdges) -> tuple[Tensor, Tensor]:
    """The silhouette-boundary vertices of camera-frame meshes (B, V, 3): the ends of contour edges (one face
    drawn, `fitting.silhouette`'s rule, the other not). Returns indices (B, K) long, padded with 0, and their
    validity (B, K) bool; K the batch's most. No gradient."""
    with torch.no_grad():
        drawn = drawn_faces(vertices.detach(), faces)                                # (B, F)
        side = drawn[:, edges.faces.clamp(min=0)] & (edges.faces >= 0)                # (B, E, 2)
        contour = side[..., 0] ^ side[..., 1]
        on = torch.zeros(vertices.shape[:2], dtype=torch.bool, device=vertices.device)
        sample, edge = torch.nonzero(contour, as_tuple=True)
        on[sample[:, None], edges.edges[edge]] = True
        count = on.sum(1)
        order = torch.argsort((~on).to(torch.int8), dim=1, stable=True)[:, :max(int(count.max()), 1)]
        valid = torch.arange(order.shape[1], device=vertices.device)[None] < count[:, None]
        return torch.where(valid, order, 0), valid


def bilinear(image: Tensor, xy: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples (B, N) of images (B, H, W) at points xy (B, N, 2) px (pixel centres at integers; points
    clamped to the image) and their gradient d value / d xy (B, N, 2). Differentiable in xy by autograd too (the
    same derivative, away from pixel centre lines)."""
    height, width = image.shape[1:]
    x = xy[..., 0].clamp(0, width - 1)
    y = xy[..., 1].clamp(0, height - 1)
    x0 = x.detach().floor().clamp(max=width - 2).long()
    y0 = y.detach().floor().clamp(max=height - 2).long()
    fx, fy = x - x0, y - y0
    flat = image.reshape(image.shape[0], -1)

    def at(dy: int, dx: int) -> Tensor:
        return torch.gather(flat, 1, (y0 + dy) * width + x0 + dx)

    v00, v01, v10, v11 = at(0, 0), at(0, 1), at(1, 0), at(1, 1)
    top, bottom = v00 + fx * (v01 - v00), v10 + fx * (v11 - v10)
    value = top + fy * (bottom - top)
    gx = (1 - fy) * (v01 - v00) + fy * (v11 - v10)
    gy = bottom - top
    return value, torch.stack([gx, gy], -1).detach()


@dataclass(frozen=True)
class SilhouetteResiduals:
    """The term's residuals at one evaluation, E_sil = Σ dist² + Σ ‖gap‖² (module docstring).

    vertex (B, K) the silhouette vertices; dist (B, K) px the (a) residuals, DT / sqrt(n_a) (0 where invalid);
    d_dist (B, K, 2) their derivative w.r.t. the vertex's pixel; match (B, M) which of the K vertices each mask
    boundary pixel pairs with; gap (B, M, 2) px the (b) residuals / sqrt(n_b) (0 where invalid); share (B, M) the
    1 / sqrt(n_b) scale of each (b) residual (0 where invalid); energy (B,) E_sil."""

    vertex: Tensor
    dist: Tensor
    d_dist: Tensor
    match: Tensor
    gap: Tensor
    share: Tensor
    energy: Tensor


def silhouette_residuals(pixels: Tensor, vertex: Tensor, valid: Tensor, targets: MaskTargets,
                         vertex_group: Tensor | None = None) -> SilhouetteResiduals:
    """Residuals of the projected silhouette vertices ``pixels`` (B, K, 2) px (indices ``vertex`` (B, K), valid
    (B, K)) against masks' ``targets``; differentiable in ``pixels`` by autograd. Examples without a mask get
    zero residuals. vertex_group (B, K) long: each vertex's group, with the targets' ``boundary_group`` (a boundary
    pixel pairs only with vertices of its group; one without any such vertex in view is left out)."""
    height, width = targets.distance.shape[1:]
    dtype = pixels.dtype
    at = targets.mask_index(pixels)                                   # in the mask's pixel indices
    seen = valid & targets.has_mask[:, None]
    seen = seen & (at[..., 0] >= 0) & (at[..., 0] <= width - 1) & (at[..., 1] >= 0) & (at[..., 1] <= height - 1)
    n_a = seen.sum(1, keepdim=True).clamp(min=1).to(dtype)
    value, grad = bilinear(targets.distance.to(dtype), at)           # keypoint px; grad per mask px
    scale_a = seen.to(dtype) / n_a.sqrt()
    dist = value * scale_a
    d_dist = grad * (targets.scale * scale_a[..., None])             # d/d keypoint px = s · d/d mask px
    boundary = targets.boundary.to(dtype)
    with torch.no_grad():
        unseen_far = torch.where(seen[..., None], pixels.detach(), UNSEEN_PX)          # unseen ones never nearest
        apart = torch.cdist(boundary, unseen_far)                                            # (B, M, K)
        grouped = targets.boundary_group is not None and vertex_group is not None
        if grouped:  # another group's vertex is as far as an unseen one
            same = targets.boundary_group[..., None] == vertex_group[:, None]
            apart = torch.where(same & seen[:, None], apart, UNSEEN_PX)
        match = apart.argmin(2)                                                              # (B, M)
        counterpart = (same & seen[:, None]).any(2) if grouped else seen.any(1, keepdim=True)
    paired = targets.boundary_valid & counterpart & targets.has_mask[:, None]
    n_b = paired.sum(1, keepdim=True).clamp(min=1).to(dtype)
    share = paired.to(dtype) / n_b.sqrt()
    nearest = torch.gather(pixels, 1, match[..., None].expand(-1, -1, 2))
    gap = (nearest - boundary) * share[..., None]
    energy = dist.square().sum(1) + gap.square().sum((1, 2))
    return SilhouetteResiduals(vertex, dist, d_dist, match, gap, share, energy)


def silhouette_energy(vertices: Tensor, faces: Tensor, edges: MeshEdges, focal: Tensor, center: Tensor,
                      targets: MaskTargets, subset: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """E_sil (B,) px² of camera-frame meshes (B, V, 3) m seen by pinhole cameras focal (B, 2) and center (B, 2)
    px, with autograd to the vertices (correspondences fixed, module docstring): SMPLify's reference mode and
    the check of the analytic normal equations. subset (V,) bool, groups (V,) long: as `MaskTerm`'s."""
    vertex, valid = contour_vertices(vertices, faces, edges)
    points = torch.gather(vertices, 1, vertex[..., None].expand(-1, -1, 3))
    pixels = pinhole(points, focal[:, None], center[:, None])
    return term_residuals(MaskTerm(1.0, targets, subset, groups), pixels, vertex, valid).energy


@dataclass(frozen=True)
class MaskTerm:
    """One chamfer term of a fit: its weight w (it enters as w² E), its masks' targets, the vertices that take
    part (V,) bool (None: all; DSR-MC: the minimally-clothed ones) and each vertex's group (V,) long (None: no
    groups; with the targets' ``boundary_group``, per-part matching)."""

    weight: float
    targets: MaskTargets
    subset: Tensor | None = None
    groups: Tensor | None = None

    def select(self, rows: Tensor) -> "MaskTerm":
        """The term for examples ``rows`` (N,) long (SMPLify's candidates)."""
        return MaskTerm(self.weight, self.targets.select(rows), self.subset, self.groups)


def term_residuals(term: MaskTerm, pixels: Tensor, vertex: Tensor, valid: Tensor) -> SilhouetteResiduals:
    """`silhouette_residuals` of one term at the mesh's silhouette vertices (indices ``vertex`` (B, K), valid
    (B, K), projected to ``pixels`` (B, K, 2) px): only the term's subset of them, paired within groups."""
    if term.subset is not None:
        valid = valid & term.subset[vertex]
    group = None if term.groups is None else term.groups[vertex]
    return silhouette_residuals(pixels, vertex, valid, term.targets, group)


def normal_equations(res: SilhouetteResiduals, d_pixels: Tensor) -> tuple[Tensor, Tensor]:
    """JᵀJ (B, D, D) and Jᵀr (B, D) of the term's residuals, given d pixel / d parameters (B, K, 2, D) of its K
    silhouette vertices; Jᵀr is ½ ∇E_sil. The (b) rows of a vertex matched by several boundary pixels are summed
    per vertex (a scatter over K), so the cost is O(K D²), not O(M D²)."""
    batch, num = res.dist.shape
    j_a = (res.d_dist[:, :, None, :] @ d_pixels)[:, :, 0]                           # (B, K, D)
    hess = j_a.transpose(1, 2) @ j_a
    grad = (j_a.transpose(1, 2) @ res.dist[..., None])[..., 0]
    weight = torch.zeros(batch, num, dtype=res.gap.dtype, device=res.gap.device)
    weight = weight.scatter_add(1, res.match, res.share.square())                  # Σ share² per vertex
    pull = torch.zeros(batch, num, 2, dtype=res.gap.dtype, device=res.gap.device)
    pull = pull.scatter_add(1, res.match[..., None].expand(-1, -1, 2), res.gap * res.share[..., None])
    flat = d_pixels.reshape(batch, num * 2, -1)
    hess = hess + flat.transpose(1, 2) @ (weight.repeat_interleave(2, 1)[..., None] * flat)
    grad = grad + (flat.transpose(1, 2) @ pull.reshape(batch, -1, 1))[..., 0]
    return hess, grad
