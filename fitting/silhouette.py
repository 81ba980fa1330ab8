"""Differentiable silhouettes and body-part maps of a mesh: batched, pure torch (CPU and CUDA alike).

`render_silhouette` draws (B, V, 3) camera-frame meshes into a soft silhouette (B, H, W) in [0, 1] and, given a
part labelling, part probabilities (B, P, H, W) that sum to the silhouette; both carry gradients to the vertices.
It is the renderer of the silhouette and part terms (Pavlakos et al., CVPR 2018; DSR, Dwivedi et al., ICCV 2021).
docs/renderer.md says why this one and not a library (measured: `fitloop bench renderer`).

How (DEODR's idea, de La Gorce et al., "Model-based 3D hand pose estimation from monocular video", TPAMI 2011,
re-implemented here in batched torch): a z-buffer decides what each pixel centre sees, exactly as
`render.raster.rasterize` does; then every *contour edge* (an edge between a face turned towards the camera and
one turned away) is drawn as an anti-aliasing band of ``sigma`` px on its outer side, over whatever lies behind
it: ``silhouette = w + (1 - w)·covered`` with ``w = 1 - d / sigma`` at distance ``d`` px from the edge. A pixel
changes from uncovered to covered exactly where a contour edge crosses its centre, and there ``w = 1``: the
picture is continuous in the vertices, and its gradient is the derivative of ``d``. Inside the body the
silhouette is 1 with no gradient; part maps inside get theirs from the barycentric interpolation of per-vertex
part weights, and across occluding contours (an arm over the torso) from the same band. The cost is the number
of (face, pixel centre) pairs in the faces' bounding boxes plus (contour edge, pixel) pairs in the bands' boxes:
a soft rasteriser without culling pairs every face with every pixel.

Conventions (those of `render.raster`, so that the hard picture is the z-buffer's, pixel for pixel):
    camera: pinhole (`core.pinhole.pinhole`), OpenCV camera frame: x right, y down, z forward; metres.
    pixels: 0-based, pixel centres at integers: pixel (i, j) is covered when its centre (i, j) px lies in a
        projected face (edges count as inside). The principal point is in the same frame.
    faces: wound counter-clockwise seen from outside (SMPL's, SMPL-X's and the open model's files); faces seen
        from behind, or with a vertex nearer than ``NEAR`` to the camera plane, are not drawn (as `rasterize`).
    sharpness: ``sigma`` px, the width of the band; as ``sigma`` -> 0 the silhouette is the z-buffer's coverage.
    Meshes must be closed (every edge shared by two faces, as the SMPL family's and the open model's), or have
        boundary edges, which count as contour edges when their one face is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from core.pinhole import pinhole

NEAR = 1e-3          # m: a face with a vertex at z <= NEAR is not drawn (render.raster's rule)
INSIDE_EPS = -1e-9   # barycentric tolerance of the inside test (render.raster's): pixel centres on edges count
DEFAULT_SIGMA = 1.0  # px: band width; DEODR's default anti-aliasing width (Scene3D(sigma=1))


@dataclass(frozen=True)
class MeshEdges:
    """The edges of a triangle mesh, each with its (up to) two faces: what the contour bands are drawn from.

    edges (E, 2) vertex indices; faces (E, 2) the faces on either side (-1 on a boundary); opposite (E, 2) each
    face's third vertex (-1 on a boundary). An edge with more than two faces is refused (not a surface).
    """
    edges: Tensor
    faces: Tensor
    opposite: Tensor


def mesh_edges(faces: Tensor) -> MeshEdges:
    """Edges and their faces for (F, 3) long `faces`; computed once per topology and passed to the renderer."""
    faces = torch.as_tensor(faces, dtype=torch.long)
    num_faces = len(faces)
    corners = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]], device=faces.device)   # edge (a, b), opposite c
    half = faces[:, corners].reshape(num_faces * 3, 3)                                 # face-major half edges
    face_of = torch.arange(num_faces, device=faces.device).repeat_interleave(3)
    pair = torch.sort(half[:, :2], dim=1).values
    edges, slot = torch.unique(pair, dim=0, return_inverse=True)
    count = torch.bincount(slot, minlength=len(edges))
    if int(count.max()) > 2:
        raise ValueError(f"mesh_edges: {int((count > 2).sum())} edges are shared by more than two faces; "
                         "the renderer needs a surface (each edge in one or two faces)")
    order = torch.argsort(slot, stable=True)
    first = torch.zeros(len(edges), dtype=torch.long, device=faces.device)
    first[1:] = torch.cumsum(count, 0)[:-1]
    rank = torch.arange(len(order), device=faces.device) - first[slot[order]]       # 0 or 1 within the edge
    side_faces = torch.full((len(edges), 2), -1, dtype=torch.long, device=faces.device)
    side_opposite = torch.full((len(edges), 2), -1, dtype=torch.long, device=faces.device)
    side_faces[slot[order], rank] = face_of[order]
    side_opposite[slot[order], rank] = half[order, 2]
    return MeshEdges(edges=edges, faces=side_faces, opposite=side_opposite)


@dataclass(frozen=True)
class Silhouette:
    """What `render_silhouette` returns.

    mask (B, H, W) in [0, 1]; parts (B, P, H, W) in [0, 1], summing over P to `mask` (None without a
    labelling; a view of a (B, H, W, P) tensor); face_index (B, H, W) long, the face the z-buffer sees at each pixel centre or -1 (no gradient).
    """
    mask: Tensor
    parts: Tensor | None
    face_index: Tensor


def render_silhouette(vertices: Tensor, faces: Tensor, focal: float | Sequence[float] | Tensor,
                      center: Sequence[float] | Tensor, size: tuple[int, int], *, sigma: float = DEFAULT_SIGMA,
                      vertex_parts: Tensor | None = None, face_parts: Tensor | None = None,
                      edges: MeshEdges | None = None) -> Silhouette:
    """Soft silhouettes (and part maps) of a batch of meshes, differentiable in `vertices`.

    Args:
        vertices: (B, V, 3) camera frame (z > 0 in front), float32 or float64, any device.
        faces: (F, 3) long vertex indices, wound counter-clockwise seen from outside.
        focal: px: f, (fx, fy), or per sample (B, 1) / (B, 2). center: px, (cx, cy) or (B, 2), pixel centres
            at integers. size: (width, height) px.
        sigma: px, the band width of contour edges (> 0); the silhouette at 0.5 is the coverage grown by
            sigma / 2 px.
        vertex_parts: (V,) long part labels in [0, P) (P = max + 1), or (V, P) part weights per vertex (soft,
            rows summing to 1), interpolated over each face (perspective-correct); or
        face_parts: (F,) long part label per face, in [0, P) with P = face_parts.max() + 1.
        edges: `mesh_edges(faces)`, to compute once per topology (computed here when None).
    Returns:
        `Silhouette` (mask (B, H, W), parts (B, P, H, W) or None, face_index (B, H, W)).
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"render_silhouette: vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    if not sigma > 0:
        raise ValueError(f"render_silhouette: sigma must be > 0 px, got {sigma}")
    if vertex_parts is not None and face_parts is not None:
        raise ValueError("render_silhouette: pass vertex_parts or face_parts, not both")
    width, height = int(size[0]), int(size[1])
    batch, device, dtype = vertices.shape[0], vertices.device, vertices.dtype
    faces = torch.as_tensor(faces, dtype=torch.long, device=device)
    edges = mesh_edges(faces) if edges is None else edges
    if edges.edges.device != device:
        edges = MeshEdges(edges.edges.to(device), edges.faces.to(device), edges.opposite.to(device))
    points = pinhole(vertices, _per_sample(focal, batch, device, dtype), _per_sample(center, batch, device, dtype))
    labels = _labels(vertex_parts, face_parts, vertices.shape[1], len(faces), device, dtype)

    drawn = drawn_faces(vertices.detach(), faces)                                      # (B, F)
    face_index, inv_depth = _zbuffer(points.detach(), vertices[..., 2].detach(), faces, drawn, width, height)
    covered = face_index >= 0                                                           # (B, H·W)

    flat_covered = covered.reshape(-1)
    hit = torch.nonzero(flat_covered).squeeze(1)                                        # covered pixels (N,)
    band = _contour_band(points, vertices[..., 2], edges, drawn, inv_depth, covered, width, height, sigma)
    mask = flat_covered.to(dtype)
    parts = None
    if band is not None:
        pixel, weight, along, ends, front = band
        mask = mask.index_put((pixel,), weight + (1 - weight) * mask[pixel])
    if labels is not None:
        surface = _surface_labels(points, vertices, faces, labels, hit, face_index, width, height)   # (N, P)
        values, where = surface, hit
        if band is not None:
            if labels[0] == "face":
                on_edge = _one_hot(labels, labels[1][front], dtype)
            else:
                on_edge = _mix(labels, ends, torch.stack((1 - along, along), dim=-1))
            row = torch.full_like(flat_covered, -1, dtype=torch.long)
            row[hit] = torch.arange(len(hit), device=device)
            under = row[pixel]                                                           # its surface's row or -1
            behind = torch.where((under >= 0)[:, None], surface[under.clamp(min=0)], torch.zeros_like(on_edge))
            in_band = torch.zeros_like(flat_covered)
            in_band[pixel] = True
            alone = ~in_band[hit]
            # one write: covered pixels outside the bands, then every band pixel (the two sets are disjoint)
            values = torch.cat([surface[alone], weight[:, None] * on_edge + (1 - weight[:, None]) * behind])
            where = torch.cat([hit[alone], pixel])
        parts = torch.zeros(batch * height * width, labels[2], device=device, dtype=dtype)
        parts = parts.index_put((where,), values)
    mask = mask.reshape(batch, height, width)
    if parts is not None:
        parts = parts.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
    return Silhouette(mask=mask, parts=parts, face_index=face_index.reshape(batch, height, width))


def _per_sample(value, batch: int, device, dtype) -> Tensor:
    """focal or center -> (B or 1, 1, 2) px for `pinhole`."""
    value = torch.as_tensor(value, device=device, dtype=dtype)
    if value.ndim == 0:
        value = value.expand(2)
    if value.ndim == 2 and value.shape[1] == 1:
        value = value.expand(-1, 2)                                                      # (B, 1): f per sample
    if value.shape[-1] != 2 or value.numel() not in (2, 2 * batch):
        raise ValueError(f"render_silhouette: focal/center must be a scalar, 2 values, (B, 1) or (B, 2) "
                         f"with B={batch}, got shape {tuple(value.shape)}")
    return value.reshape(-1, 1, 2)


def _labels(vertex_parts, face_parts, num_vertices: int, num_faces: int, device, dtype):
    """The part labelling as (kind, table, P): ("label", (V,) long, P), ("weights", (V, P), P), ("face", (F,) long,
    P), or None."""
    if vertex_parts is not None:
        vertex_parts = torch.as_tensor(vertex_parts, device=device)
        if vertex_parts.shape[0] != num_vertices or vertex_parts.ndim not in (1, 2):
            raise ValueError(f"render_silhouette: vertex_parts must be (V={num_vertices},) labels or "
                             f"(V={num_vertices}, P) weights, got {tuple(vertex_parts.shape)}")
        if vertex_parts.ndim == 2:
            return "weights", vertex_parts.to(dtype), vertex_parts.shape[1]
        return "label", _checked_labels(vertex_parts, "vertex_parts"), int(vertex_parts.max()) + 1
    if face_parts is not None:
        face_parts = torch.as_tensor(face_parts, device=device)
        if face_parts.shape != (num_faces,):
            raise ValueError(f"render_silhouette: face_parts must be (F={num_faces},) labels, "
                             f"got {tuple(face_parts.shape)}")
        return "face", _checked_labels(face_parts, "face_parts"), int(face_parts.max()) + 1
    return None


def _checked_labels(labels: Tensor, name: str) -> Tensor:
    if labels.is_floating_point() or int(labels.min()) < 0:
        raise ValueError(f"render_silhouette: {name} labels must be integers >= 0")
    return labels.long()


def _mix(labels, vertex: Tensor, weight: Tensor) -> Tensor:
    """Part weights (N, P) of points that mix vertices (N, k) with weights (N, k) under a per-vertex labelling."""
    kind, table, count = labels
    if kind == "weights":
        return torch.bmm(weight[:, None, :], table[vertex]).squeeze(1)
    out = torch.zeros(len(vertex), count, device=weight.device, dtype=weight.dtype)
    return out.scatter_add(1, table[vertex], weight)                 # one-hot labels: no (N, k, P) product


def drawn_faces(vertices: Tensor, faces: Tensor) -> Tensor:
    """(B, F) bool: the face's outside faces the camera and all its vertices lie beyond NEAR (render.raster's)."""
    tri = vertices[:, faces]                                                             # (B, F, 3, 3)
    normal = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    facing = -(normal * tri.mean(dim=2)).sum(-1)                                         # sign of cos(normal, view)
    return (facing > 0) & (tri[..., 2] > NEAR).all(dim=-1)


def _edge(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """Twice the signed area of (a, b, p), (..., 2) px each: which side of a -> b the point p lies on."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _boxes(low: Tensor, high: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Enumerate the integer pixel centres of boxes [low, high] (N, 2) px clipped to the image.

    Returns (owner, x, y): for every pixel centre in every box, the box's row and the centre's coordinates.
    """
    low = torch.ceil(low).clamp(min=0).long()
    high = torch.minimum(torch.floor(high).long(), torch.tensor([width - 1, height - 1], device=low.device))
    span = (high - low + 1).clamp(min=0)
    counts = span[:, 0] * span[:, 1]
    owner = torch.repeat_interleave(torch.arange(len(low), device=low.device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(owner), device=low.device) - start[owner]
    return owner, low[owner, 0] + local % span[owner, 0], low[owner, 1] + local // span[owner, 0]


def _zbuffer(points: Tensor, depth: Tensor, faces: Tensor, drawn: Tensor, width: int, height: int):
    """The visible face at every pixel centre, as `render.raster.rasterize` decides it (no gradient).

    points (B, V, 2) px, depth (B, V) z; returns face_index (B, H·W) long (-1: uncovered) and the nearest
    1 / z there (B·H·W,), 0 where uncovered.
    """
    batch = points.shape[0]
    sample, face = torch.nonzero(drawn, as_tuple=True)
    tri = points[sample[:, None], faces[face]]                                           # (K, 3, 2)
    inv_z = 1.0 / depth[sample[:, None], faces[face]]                                    # (K, 3)
    owner, px, py = _boxes(tri.min(dim=1).values, tri.max(dim=1).values, width, height)
    p = torch.stack((px, py), dim=-1).to(points.dtype)
    a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]
    area = _edge(a, b, c)
    bary = torch.stack((_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)), dim=-1) / area[:, None]
    inside = (bary >= INSIDE_EPS).all(dim=-1) & (area.abs() > 1e-12)
    owner, bary = owner[inside], bary[inside]
    pixel = (sample[owner] * height + py[inside]) * width + px[inside]
    candidate_depth = (bary * inv_z[owner]).sum(-1)
    nearest = torch.zeros(batch * height * width, device=points.device, dtype=points.dtype)
    nearest = nearest.scatter_reduce(0, pixel, candidate_depth, reduce="amax", include_self=False)
    won = candidate_depth == nearest[pixel]                                              # ties: the highest face
    face_index = torch.full((batch * height * width,), -1, dtype=torch.long, device=points.device)
    face_index = face_index.scatter_reduce(0, pixel[won], face[owner[won]], reduce="amax", include_self=True)
    return face_index.reshape(batch, height * width), nearest


def _surface_labels(points: Tensor, vertices: Tensor, faces: Tensor, labels, hit: Tensor, face_index: Tensor,
                    width: int, height: int) -> Tensor:
    """Part weights (N, P) at the covered pixels `hit` (flat B·H·W indices), with gradient to the vertices."""
    face = face_index.reshape(-1)[hit]
    if labels[0] == "face":
        return _one_hot(labels, labels[1][face], points.dtype)
    sample = hit // (height * width)
    rest = hit % (height * width)
    p = torch.stack((rest % width, rest // width), dim=-1).to(points.dtype)
    corner = faces[face]                                                                 # (N, 3)
    tri = points[sample[:, None], corner]                                                # (N, 3, 2), gradient
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    bary = torch.stack((_edge(b, c, p), _edge(c, a, p), _edge(a, b, p)), dim=-1) / _edge(a, b, c)[:, None]
    perspective = bary / vertices[sample[:, None], corner, 2]                            # λ_i / z_i
    perspective = perspective / perspective.sum(-1, keepdim=True)
    return _mix(labels, corner, perspective)


def _one_hot(labels, label: Tensor, dtype) -> Tensor:
    """(N,) labels -> (N, P) one-hot rows."""
    return torch.nn.functional.one_hot(label, labels[2]).to(dtype)


def _contour_band(points: Tensor, depth: Tensor, edges: MeshEdges, drawn: Tensor, inv_depth: Tensor,
                  covered: Tensor, width: int, height: int, sigma: float):
    """The anti-aliasing bands of the contour edges: per band pixel, its weight w = 1 - d / sigma (gradient).

    A pixel centre belongs to the band of the nearest contour edge (an edge with one drawn face) within sigma px
    on the edge's outer side that is not hidden: the pixel is uncovered, or what covers it lies behind the edge.
    points (B, V, 2) px and depth (B, V) z carry the gradient. Returns (pixel (N,) flat B·H·W, weight (N,), the
    nearest point's position along the edge in [0, 1] (perspective-correct: as the face's own interpolation there),
    the edge's vertices (N, 2), its drawn face (N,)) or None when no pixel is in a band.
    """
    batch = points.shape[0]
    depth_of, depth = depth, depth.detach()
    two = edges.faces.clamp(min=0)
    side = drawn[:, two] & (edges.faces >= 0)                                            # (B, E, 2)
    contour = side[..., 0] ^ side[..., 1]
    sample, edge = torch.nonzero(contour, as_tuple=True)
    if len(edge) == 0:
        return None
    front = torch.where(side[sample, edge, 0], 0, 1)
    ends = edges.edges[edge]
    opposite = edges.opposite[edge, front]
    flat = points.detach()
    a, b = flat[sample, ends[:, 0]], flat[sample, ends[:, 1]]
    o = flat[sample, opposite]
    owner, px, py = _boxes(torch.minimum(a, b) - sigma, torch.maximum(a, b) + sigma, width, height)
    p = torch.stack((px, py), dim=-1).to(points.dtype)
    t, dist = _segment_distance(a[owner], b[owner], p)
    outer = _edge(a[owner], b[owner], p) * _edge(a[owner], b[owner], o[owner]) <= 0
    pixel = (sample[owner] * height + py) * width + px
    inv_z = (1 - t) / depth[sample[owner], ends[owner, 0]] + t / depth[sample[owner], ends[owner, 1]]
    visible = ~covered.reshape(-1)[pixel] | (inv_depth[pixel] < inv_z)
    keep = (dist < sigma) & outer & visible
    owner, pixel, dist = owner[keep], pixel[keep], dist[keep]
    if len(owner) == 0:
        return None
    nearest = torch.full((batch * height * width,), float("inf"), device=points.device, dtype=points.dtype)
    nearest = nearest.scatter_reduce(0, pixel, dist, reduce="amin", include_self=True)
    won = torch.nonzero(dist == nearest[pixel]).squeeze(1)
    choice = torch.full_like(nearest, -1, dtype=torch.long)
    choice = choice.scatter_reduce(0, pixel[won], won, reduce="amax", include_self=True)  # ties: one per pixel
    won = choice[choice >= 0]
    owner, pixel = owner[won], pixel[won]
    s, e = sample[owner], edge[owner]
    rest = pixel % (height * width)
    p = torch.stack((rest % width, rest // width), dim=-1).to(points.dtype)
    ends = edges.edges[e]
    t, dist = _segment_distance(points[s, ends[:, 0]], points[s, ends[:, 1]], p)                  # gradient
    near, far = (1 - t) / depth_of[s, ends[:, 0]], t / depth_of[s, ends[:, 1]]
    return pixel, 1 - dist / sigma, far / (near + far), ends, edges.faces[e, front[owner]]


def _segment_distance(a: Tensor, b: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest point of segments a-b (N, 2) to points p (N, 2): its parameter t in [0, 1] and the distance."""
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)).clamp(0, 1)
    gap = p - (a + t[:, None] * ab)
    return t, torch.sqrt((gap * gap).sum(-1).clamp(min=1e-20))
