"""Self-contact for batched fits: capsule proxies on a body model's tree, a differentiable interpenetration penalty
with closed-form Jacobians, and a mesh-level check that does not use the proxies.

SMPLify-X penalises interpenetration with torch-mesh-isect (a BVH over the mesh's triangles and a cone distance
field), which runs only on CUDA and one person at a time. Here every body part carries a **capsule** (a segment
with a radius) and each pair of parts that anatomy does not put in contact is penalised by how deep their capsules
overlap, for a whole batch at once, on any device, with derivatives the Levenberg–Marquardt fit can chain.

**Parts** (`body_parts`): the joints of the model's kinematic tree, except that every joint below a wrist is
merged into the wrist and every joint below the head into the head (`MERGED_BELOW`): a hand is one proxy, in
SMPL's tree (wrist + hand) as in SMPL-H's and SMPL-X's (wrist + 15 finger joints), and jaw and eyes belong to the
head. Fingers of one hand touch each other by anatomy (a fist), a finger's capsule would be millimetres thick —
below the keypoints' noise — and the hand's own pose is held by its joint-limit prior; what a whole-body fit must
avoid is a hand inside the torso, a thigh or the head, which one hand proxy sees. Vertices belong to the part of
the joint that skins them most.

**Capsules** (`body_capsules`), from the model's rest mesh (metres): a part's axis is the principal direction of
its vertices (a limb's bone; across the body for the pelvis and the chest slabs, which are wider than tall); its
radius the RADIUS_QUANTILE quantile of its middle vertices' distances from the axis (a slightly inscribed
capsule: surfaces that merely touch give no penalty); its segment ends END_QUANTILE inside the part's extent along
the axis, less the radius (so the caps stay inside the part). Each end is an affine combination of the part's
vertices around it (a vertex row, exact at rest), so the ends move with the skinned mesh for every shape and pose
and `fitting.skeleton.Skeleton(body, capsules.end_rows)` gives them with exact Jacobians. Radii are linear in
the shape coefficients, r(β) = r₀ + G β, fitted by central differences over each coefficient (±1).

**Pairs**: every pair of parts, except those within SKIP_HOPS of each other in the part tree (a joint's
neighbourhood bends into itself) and the named anatomical contacts of `EXCLUDED_PAIRS` (each with its reason).

**Penalty** (`penetration_depths`, `collision_residuals`): per kept pair, depth = max(0, r_a + r_b − d), d the
distance between the two segments (closed form, batched over pairs: Ericson, *Real-Time Collision Detection*
§5.1.9); the penalty is Σ depth² per example (m²). The depth is at most r_a + r_b (a few cm), so squares need no
robust function. The Jacobian of depth w.r.t. the segment ends is closed-form: the closest points minimise the
distance, so (envelope theorem) moving an end moves d by the unit separation n weighted by the closest point's
share of that end: ∂d/∂p₀ = (1 − s) n, ∂d/∂p₁ = s n, ∂d/∂q₀ = −(1 − t) n, ∂d/∂q₁ = −t n.

**Mesh check** (`mesh_interpenetration`, `interpenetrates`): independent of the proxies. Each vertex of a part is
tested against every other part it is not anatomically next to (`mesh_parts`: coarser parts, next to = adjacent
in their tree) by the generalised winding number of that part's triangles (Jacobson et al. 2013, the solid angle
of each triangle by Van Oosterom & Strackee 1983): a vertex inside another part's volume sees it at ≈ 1, a vertex
outside at ≈ 0; the parts are open where they join their neighbours, so the threshold is MESH_INSIDE (0.5).
Only vertices inside a part's posed bounding box are tested against it. The depth figure is, per example, the
largest distance from an inside vertex to the surface (triangles) of the part it is inside (m).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.errors import ModelFileError
from core.joints import SMPL_JOINT_NAMES, SMPL_PARENTS, mirror_name
from core.wholebody import SMPLX_JOINT_NAMES, SMPLX_PARENTS
from fitting.body_model import BodyModel
from fitting.skeleton import Skeleton

# Joints whose whole subtree is one part (a hand, the head with jaw and eyes).
MERGED_BELOW: tuple[str, ...] = ("left_wrist", "right_wrist", "head")
# Pairs of parts at most this many edges apart in the part tree are never tested.
SKIP_HOPS = 2
# Capsule shape from the rest mesh (module docstring).
RADIUS_QUANTILE = 0.25      # of the distances of a part's middle vertices (middle 60 % along the axis) from its axis
END_QUANTILE = 0.03         # the segment's ends: this quantile of the vertices along the axis, inside by the radius
END_SLAB = 0.02             # m: half-thickness of the vertex slab whose affine combination is an end
MIN_SLAB_VERTICES = 6
PARALLEL = 1e-6             # segments whose directions' sin² is below this are treated as parallel
# Parts whose capsules meet by anatomy, beyond SKIP_HOPS; each with its reason. Closed under left/right mirroring.
EXCLUDED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("left_shoulder", "spine2", "the upper arm hangs against the side of the ribcage"),
    ("right_shoulder", "spine2", "the upper arm hangs against the side of the ribcage"),
    ("left_shoulder", "spine1", "the upper arm hangs against the side of the waist"),
    ("right_shoulder", "spine1", "the upper arm hangs against the side of the waist"),
)
# The mesh check's parts: each joint belongs to the part of its nearest ancestor-or-self listed here.
MESH_PART_ROOTS: tuple[str, ...] = (
    "pelvis", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
MESH_INSIDE = 0.5           # winding number above which a vertex is inside another part


# --- The model's tree, by name ----------------------------------------------------------------------------------
def tree_joint_names(body: BodyModel) -> tuple[str, ...]:
    """The names of the body model's kinematic-tree joints, in the layer's order: SMPL's 24 (SMPL, the open model),
    SMPL-H's 52 (SMPL-X's without jaw and eyes) or SMPL-X's 55 (`core.wholebody.SMPLX_JOINT_NAMES`); checked
    against the layer's parents."""
    smplh = SMPLX_JOINT_NAMES[:22] + SMPLX_JOINT_NAMES[25:]
    smplh_parents = SMPLX_PARENTS[:22] + tuple(p if p < 22 else p - 3 for p in SMPLX_PARENTS[25:])
    known = {"smpl": (SMPL_JOINT_NAMES, SMPL_PARENTS), "open": (SMPL_JOINT_NAMES, SMPL_PARENTS),
             "smplh": (smplh, smplh_parents), "smplx": (SMPLX_JOINT_NAMES, SMPLX_PARENTS)}
    if body.family not in known:
        raise ModelFileError(f"{body.name}: no joint names for the {body.family!r} tree; collision proxies need "
                             f"an SMPL, SMPL-H, SMPL-X or open model")
    names, parents = known[body.family]
    actual = tuple(int(p) for p in body.layer.parents.cpu().tolist())
    if len(actual) != len(names) or any(a != p for a, p in zip(actual[1:], parents[1:])):
        raise ModelFileError(f"{body.name}: its kinematic tree ({len(actual)} joints) is not the {body.family} "
                             f"tree the collision proxies are named on")
    return names


def _tree(body: BodyModel) -> tuple[tuple[str, ...], np.ndarray]:
    names = tree_joint_names(body)
    parents = body.layer.parents.cpu().numpy().astype(np.int64)
    return names, parents


def _group(names: tuple[str, ...], parents: np.ndarray, roots: set[str]) -> np.ndarray:
    """Per joint, the index of its nearest ancestor-or-self whose name is in ``roots`` (the root joint if none)."""
    owner = np.zeros(len(names), dtype=np.int64)
    for j in range(len(names)):
        owner[j] = j if names[j] in roots or parents[j] < 0 else owner[parents[j]]
    return owner


def _part_tree(owner: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parts (their root joints, in tree order) and each part's parent part (-1 for the root part)."""
    roots = np.unique(owner)
    index = {int(r): i for i, r in enumerate(roots)}
    parent_part = np.array([-1 if parents[r] < 0 else index[int(owner[parents[r]])] for r in roots])
    return roots, parent_part


def _hops(parent_part: np.ndarray) -> np.ndarray:
    """(K, K) number of edges between parts of a tree given by its parents."""
    k = len(parent_part)
    adj = np.full((k, k), np.inf)
    np.fill_diagonal(adj, 0)
    for i, p in enumerate(parent_part):
        if p >= 0:
            adj[i, p] = adj[p, i] = 1
    for m in range(k):  # Floyd–Warshall; K is at most a few dozen
        adj = np.minimum(adj, adj[:, m:m + 1] + adj[m:m + 1, :])
    return adj


@dataclass(frozen=True)
class BodyParts:
    """The proxies' parts of a body model: names (K,) (each part's root joint), ``joint_part`` (J,) the part of each
    tree joint, ``vertex_part`` (V,) the part of each vertex (the part of the joint that skins it most) and
    ``parent`` (K,) each part's parent part (-1 for the pelvis)."""

    names: tuple[str, ...]
    joint_part: np.ndarray
    vertex_part: np.ndarray
    parent: np.ndarray


def body_parts(body: BodyModel, merged_below: tuple[str, ...] = MERGED_BELOW) -> BodyParts:
    """The parts of the capsule proxies (module docstring): one per tree joint, subtrees of ``merged_below`` merged."""
    names, parents = _tree(body)
    merged = set(merged_below)
    # a joint is its own part unless an ancestor is in merged_below
    owner = np.arange(len(names))
    for j in range(1, len(names)):
        p = owner[parents[j]]
        if names[p] in merged or (p != parents[j]):
            owner[j] = p
    roots, parent_part = _part_tree(owner, parents)
    joint_part = np.searchsorted(roots, owner)
    weights = body.layer.lbs_weights.detach().cpu().numpy()
    return BodyParts(tuple(names[r] for r in roots), joint_part, joint_part[weights.argmax(1)], parent_part)


def mesh_parts(body: BodyModel) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The mesh check's parts (`MESH_PART_ROOTS`: torso, head, upper arms, forearms, hands, thighs, shins, feet):
    their names (K,), each vertex's part (V,) (that of the joint skinning it most), and the (K, K) bool matrix
    of part pairs not to test: a part and the parts adjacent to it in their tree."""
    names, parents = _tree(body)
    owner = _group(names, parents, set(MESH_PART_ROOTS))
    roots, parent_part = _part_tree(owner, parents)
    joint_part = np.searchsorted(roots, owner)
    weights = body.layer.lbs_weights.detach().cpu().numpy()
    return tuple(names[r] for r in roots), joint_part[weights.argmax(1)], _hops(parent_part) <= 1


# --- Capsules -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capsules:
    """Capsule proxies of a body model (module docstring). C capsules, one per part; P tested pairs.

    end_rows (2C, V): capsule c's segment runs from ``end_rows[2c] @ vertices`` to ``end_rows[2c + 1] @
    vertices``; radius (C,) m at the mean shape and radius_dirs (C, NB) m per unit of each shape coefficient;
    pairs (P, 2) long, capsule indices; names (C,) part names; excluded: the (name, name, reason) pairs
    left out beyond SKIP_HOPS."""

    names: tuple[str, ...]
    end_rows: Tensor
    radius: Tensor
    radius_dirs: Tensor
    pairs: Tensor
    excluded: tuple[tuple[str, str, str], ...]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Capsules":
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return Capsules(self.names, move(self.end_rows), move(self.radius), move(self.radius_dirs),
                        self.pairs.to(device), self.excluded)

    def ends(self, vertices: Tensor) -> Tensor:
        """Segment ends (B, 2C, 3) of posed vertices (B, V, 3), same frame and units."""
        return torch.einsum("qv,bvc->bqc", self.end_rows.to(vertices), vertices)

    def radii(self, betas: Tensor) -> Tensor:
        """Radii (B, C) m for shape coefficients (B, NB') (extra coefficients ignored, missing ones 0)."""
        nb = min(betas.shape[1], self.radius_dirs.shape[1])
        return self.radius.to(betas) + betas[:, :nb] @ self.radius_dirs[:, :nb].to(betas).T


def _end_row(points: np.ndarray, along: np.ndarray, target: np.ndarray, at: float) -> np.ndarray:
    """Affine weights (n,) over ``points`` (n, 3) that are exactly ``target`` (3,): the points near ``at`` along
    the axis (``along`` (n,): their coordinate on it) with the least-norm change from their plain mean."""
    near = np.flatnonzero(np.abs(along - at) <= END_SLAB)
    if len(near) < MIN_SLAB_VERTICES:
        near = np.argsort(np.abs(along - at))[:MIN_SLAB_VERTICES]
    a = np.vstack([points[near].T, np.ones(len(near))])                  # (4, n)
    w0 = np.full(len(near), 1.0 / len(near))
    gap = np.append(target, 1.0) - a @ w0
    correction = a.T @ np.linalg.solve(a @ a.T + 1e-9 * np.eye(4), gap)
    row = np.zeros(len(points))
    row[near] = w0 + correction
    return row


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Each vertex's share of the surface (V,) m²: a third of the area of every face it is a corner of."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return np.bincount(faces.reshape(-1), np.repeat(area / 3, 3), minlength=len(vertices))


def _quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The weighted q-quantile of values (n,) (weights (n,) >= 0): where the cumulative weight reaches q."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cum, q * cum[-1]), len(values) - 1)])


def _radius(points: np.ndarray, area: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> float:
    """The RADIUS_QUANTILE (area-weighted) distance from the line through ``centre`` along unit ``axis`` of the
    points in the middle 60 % of the part's extent along it."""
    along = (points - centre) @ axis
    radial = np.linalg.norm(points - centre - along[:, None] * axis, axis=1)
    low, high = _quantile(along, area, END_QUANTILE), _quantile(along, area, 1 - END_QUANTILE)
    middle = np.abs(along - (low + high) / 2) <= 0.3 * (high - low)
    if middle.sum() < 4:
        middle = np.ones_like(middle)
    return _quantile(radial[middle], area[middle], RADIUS_QUANTILE)


def _capsule_geometry(points: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float,
                                                                     np.ndarray]:
    """A part's capsule from its rest vertices (n, 3) and their areas (n,) (module docstring): centre (3,), unit
    axis (3,) (the surface's principal direction), the ends' coordinates along it, the radius, and every vertex's
    coordinate along the axis."""
    weight = area / area.sum()
    centre = weight @ points
    _, _, vt = np.linalg.svd((points - centre) * np.sqrt(weight)[:, None], full_matrices=False)
    axis = vt[0] * (1 if vt[0][np.argmax(np.abs(vt[0]))] > 0 else -1)   # sign fixed: deterministic rows
    along = (points - centre) @ axis
    low, high = _quantile(along, area, END_QUANTILE), _quantile(along, area, 1 - END_QUANTILE)
    radius = _radius(points, area, centre, axis)
    t0, t1 = low + radius, high - radius
    if t0 > t1:                                                           # shorter than wide: a sphere
        t0 = t1 = (low + high) / 2
    return centre, axis, float(t0), float(t1), radius, along


def _radius_of(points: np.ndarray, area: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> float:
    """`_radius` about the line through p0 and p1 (a sphere's centre p0 = p1: the principal axis)."""
    length = np.linalg.norm(p1 - p0)
    if length < 1e-6:
        return _capsule_geometry(points, area)[4]
    return _radius(points, area, p0, (p1 - p0) / length)


def body_capsules(body: BodyModel, excluded: tuple[tuple[str, str, str], ...] = EXCLUDED_PAIRS,
                  skip_hops: int = SKIP_HOPS) -> Capsules:
    """The capsule proxies of a body model, from its rest mesh (module docstring); on the model's device, float32
    or the model's dtype. ``excluded`` names part pairs left out (entries naming parts this tree lacks are
    ignored)."""
    parts = body_parts(body)
    layer = body.layer
    v_template = layer.v_template.detach().cpu().double().numpy()           # (V, 3)
    shapedirs = layer.shapedirs.detach().cpu().double().numpy()[..., :body.num_betas]  # (V, 3, NB)
    num_parts, nb = len(parts.names), body.num_betas
    area = vertex_areas(v_template, body.faces)
    rows = np.zeros((2 * num_parts, len(v_template)))
    radius = np.zeros(num_parts)
    members = []
    for c in range(num_parts):
        idx = np.flatnonzero(parts.vertex_part == c)
        if len(idx) < MIN_SLAB_VERTICES:
            raise ModelFileError(f"{body.name}: part {parts.names[c]!r} skins only {len(idx)} vertices; a capsule "
                                 f"needs at least {MIN_SLAB_VERTICES}")
        points = v_template[idx]
        centre, axis, t0, t1, radius[c], along = _capsule_geometry(points, area[idx])
        for k, t in enumerate((t0, t1)):
            rows[2 * c + k, idx] = _end_row(points, along, centre + t * axis, t)
        members.append(idx)
    # radius per shape coefficient: central differences at ±1 (the radius is near-linear in a coefficient)
    dirs = np.zeros((num_parts, nb))
    for i in range(nb):
        for sign in (1.0, -1.0):
            shaped = v_template + sign * shapedirs[..., i]
            ends, shaped_area = rows @ shaped, vertex_areas(shaped, body.faces)
            for c, idx in enumerate(members):
                dirs[c, i] += sign * _radius_of(shaped[idx], shaped_area[idx], ends[2 * c], ends[2 * c + 1]) / 2
    # pairs: all, less the near ones and the named contacts
    hops = _hops(parts.parent)
    index = {name: i for i, name in enumerate(parts.names)}
    keep = np.triu(hops > skip_hops, 1)
    for a, b, _ in excluded:
        if a in index and b in index:
            keep[index[a], index[b]] = keep[index[b], index[a]] = False
    pairs = np.argwhere(keep)
    dtype, device = layer.v_template.dtype, layer.v_template.device
    return Capsules(parts.names, torch.as_tensor(rows, dtype=dtype, device=device),
                    torch.as_tensor(radius, dtype=dtype, device=device),
                    torch.as_tensor(dirs, dtype=dtype, device=device),
                    torch.as_tensor(pairs, dtype=torch.long, device=device), tuple(excluded))


# --- The penalty ----------------------------------------------------------------------------------------------------
def segment_closest(p0: Tensor, p1: Tensor, q0: Tensor, q1: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Parameters s, t in [0, 1] (...,) of the closest points p0 + s (p1 − p0) and q0 + t (q1 − q0) of two batches
    of segments (..., 3) (Ericson, Real-Time Collision Detection §5.1.9); degenerate segments are points.
    Parallel segments get the pair nearest s = 0 (any minimiser gives the same distance)."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e = (d1 * d1).sum(-1), (d2 * d2).sum(-1)
    b, c, f = (d1 * d2).sum(-1), (d1 * r).sum(-1), (d2 * r).sum(-1)
    p_point, q_point = a <= eps, e <= eps
    a_, e_ = a.clamp_min(eps), e.clamp_min(eps)
    zero = torch.zeros_like(a)
    # both segments proper: s from the two lines (0 if parallel), t for it; t clamped, then s again for that t
    denom = a * e - b * b
    s = torch.where(denom > PARALLEL * a * e, ((b * f - c * e) / denom.clamp_min(eps)).clamp(0, 1), zero)
    t = (b * s + f) / e_
    s = torch.where(t < 0, (-c / a_).clamp(0, 1), torch.where(t > 1, ((b - c) / a_).clamp(0, 1), s))
    t = t.clamp(0, 1)
    # a segment that is a point
    s = torch.where(q_point, (-c / a_).clamp(0, 1), s)
    t = torch.where(q_point, zero, t)
    s = torch.where(p_point, zero, s)
    t = torch.where(p_point & ~q_point, (f / e_).clamp(0, 1), t)
    return s, t


def _pair_geometry(ends: Tensor, radii: Tensor, pairs: Tensor) -> tuple[Tensor, ...]:
    p0, p1 = ends[:, 2 * pairs[:, 0]], ends[:, 2 * pairs[:, 0] + 1]        # (B, P, 3)
    q0, q1 = ends[:, 2 * pairs[:, 1]], ends[:, 2 * pairs[:, 1] + 1]
    s, t = segment_closest(p0, p1, q0, q1)
    gap = (p0 + s[..., None] * (p1 - p0)) - (q0 + t[..., None] * (q1 - q0))  # (B, P, 3): closest points' offset
    dist = gap.norm(dim=-1)
    depth = (radii[:, pairs[:, 0]] + radii[:, pairs[:, 1]] - dist).clamp_min(0)
    return depth, s, t, gap, dist


def penetration_depths(ends: Tensor, radii: Tensor, pairs: Tensor) -> Tensor:
    """Per pair, how deep two capsules overlap (B, P) m: max(0, r_a + r_b − segment distance). ends (B, 2C, 3)
    (capsule c from ends[:, 2c] to ends[:, 2c + 1]), radii (B, C) m, pairs (P, 2) capsule indices.
    Differentiable (autograd); `collision_residuals` gives the same with its Jacobian in closed form."""
    return _pair_geometry(ends, radii, pairs)[0]


def collision_penalty(ends: Tensor, radii: Tensor, pairs: Tensor) -> Tensor:
    """The interpenetration penalty per example (B,) m²: Σ over pairs of depth² (`penetration_depths`)."""
    return penetration_depths(ends, radii, pairs).square().sum(-1)


def pair_ends(pairs: Tensor) -> Tensor:
    """The segment ends (P, 4) of each pair (P, 2): [2a, 2a + 1, 2b, 2b + 1], indices into ends (B, 2C, 3)."""
    return torch.stack([2 * pairs[:, 0], 2 * pairs[:, 0] + 1, 2 * pairs[:, 1], 2 * pairs[:, 1] + 1], -1)


def collision_residuals(ends: Tensor, radii: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The penalty's residuals and their Jacobian, for least squares, per pair: depth (B, P) m (penalty =
    Σ depth²); d depth / d ends (B, P, 4, 3) w.r.t. the pair's four segment ends `pair_ends(pairs)`, and
    d depth / d radii (B, P, 2) w.r.t. its two radii (module docstring: closed form; each pair depends on those
    six numbers only). Zero where capsules do not overlap. Chain with d ends / d params of
    `fitting.skeleton.Skeleton` (rows `Capsules.end_rows`) and d radii / d betas = `Capsules.radius_dirs`;
    `dense_ends_jacobian` spreads it over all ends."""
    depth, s, t, gap, dist = _pair_geometry(ends, radii, pairs)
    hit = (depth > 0).to(ends.dtype)                                        # (B, P)
    normal = gap / dist.clamp_min(1e-12)[..., None] * hit[..., None]        # unit p − q; zero where no overlap
    s, t = s[..., None], t[..., None]
    # depth = r_a + r_b − d, so each end's derivative is −∂d/∂end
    d_ends = torch.stack([-(1 - s) * normal, -s * normal, (1 - t) * normal, t * normal], 2)
    return depth, d_ends, torch.stack([hit, hit], -1)


def dense_ends_jacobian(d_ends: Tensor, pairs: Tensor, num_ends: int) -> Tensor:
    """`collision_residuals`' d depth / d ends (B, P, 4, 3) spread over all ends: (B, P, num_ends, 3)."""
    batch, num_pairs = d_ends.shape[:2]
    dense = d_ends.new_zeros(batch, num_pairs, num_ends, 3)
    rows = torch.arange(num_pairs, device=d_ends.device)[:, None]
    dense[:, rows, pair_ends(pairs)] = d_ends          # a capsule is never paired with itself: distinct ends
    return dense


def chained_collision_residuals(capsules: Capsules, proxies: Skeleton, rows: Tensor, pose: Tensor, shape: Tensor,
                                ends: Tensor, static: bool = False) -> tuple[Tensor, Tensor]:
    """The penalty's residuals and their Jacobian w.r.t. a fit's parameters, for least squares: the depths (B, K) m
    of the K pairs that overlap most per example (K: the most pairs any example has overlapping; the rest of an
    example's K are zero) and d depth / d [pose, shape] (B, K, D + S). ``proxies`` evaluates the segment ends
    (`Capsules.end_rows`) as its points ``rows`` (2C,) from pose (B, D) and shape (B, S) (its parameterisation:
    SMPL's (B, 72) and betas, or SMPL-X's full pose and [betas, expression]); ``ends`` (B, 2C, 3) are those points
    at (pose, shape). The radii read the first NB of shape (`Capsules.radii`). `collision_residuals` chained with
    the skeleton's Jacobian of just the ends the kept pairs use, for the examples in contact only: K, the examples
    and the ends are read from the data (host syncs). ``static``: every pair's row instead (K = P, zero where a pair
    does not overlap), the Jacobian of every end for every example: fixed shapes and no host sync, the same normal
    equations, more arithmetic (the default on a GPU, where syncs cost more than the work; `static_collision`)."""
    depth, d_ends, d_radii = collision_residuals(ends, capsules.radii(shape), capsules.pairs)
    batch, num_pose, dev = pose.shape[0], pose.shape[1], pose.device
    nb = min(shape.shape[1], capsules.radius_dirs.shape[1])
    if static:
        d_params = torch.cat(proxies.jacobian(proxies(pose, shape, rows)), -1)      # (B, 2C, 3, D + S)
        dense = dense_ends_jacobian(d_ends, capsules.pairs, d_params.shape[1])      # (B, P, 2C, 3)
        jac = torch.einsum("bpec,becn->bpn", dense, d_params)
        radius_dirs = capsules.radius_dirs[capsules.pairs][..., :nb]                # (P, 2, NB)
        jac[..., num_pose:num_pose + nb] += (d_radii[..., None] * radius_dirs).sum(2)
        return depth, jac
    k = int((depth > 0).sum(1).max()) if depth.shape[1] else 0
    top = depth.topk(k, 1).indices                                          # (B, K) pairs, deepest first
    jac = depth.new_zeros(batch, k, num_pose + shape.shape[1])
    hit = torch.nonzero((depth > 0).any(1))[:, 0]                           # the examples in contact
    if len(hit):
        top_h = top[hit]
        used, where = torch.unique(pair_ends(capsules.pairs)[top_h], return_inverse=True)  # the ends some pair needs
        state = proxies(pose[hit], shape[hit], rows[used])
        d_params = torch.cat(proxies.jacobian(state), -1)                    # (H, U, 3, D + S)
        at = torch.arange(len(hit), device=dev)[:, None]
        jac[hit] = torch.einsum("bkec,bkecn->bkn", d_ends[hit[:, None], top_h], d_params[at[..., None], where])
        radius_dirs = capsules.radius_dirs[capsules.pairs[top_h]][..., :nb]      # (H, K, 2, NB)
        jac[hit, :, num_pose:num_pose + nb] += (d_radii[hit[:, None], top_h][..., None] * radius_dirs).sum(2)
    return depth[torch.arange(batch, device=dev)[:, None], top], jac


# --- The mesh check -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeshContact:
    """Mesh interpenetration per example: ``inside`` (B,) bool, some vertex lies inside a part it is not next to;
    ``vertices`` (B,) how many do; ``depth`` (B,) m, the largest distance from such a vertex to the surface of the
    part it is inside (0 where none); ``parts`` (B, K, K) how many vertices of part a lie inside part b."""

    inside: Tensor
    vertices: Tensor
    depth: Tensor
    parts: Tensor


def solid_angles(points: Tensor, triangles: Tensor) -> Tensor:
    """Signed solid angles (N, F) sr that triangles (F, 3, 3) or (N, F, 3, 3) subtend at points (N, 3) (Van Oosterom
    & Strackee 1983); positive when a counter-clockwise triangle faces away from the point."""
    rel = triangles - points[:, None, None, :]
    a, b, c = rel.unbind(-2)
    la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
    num = (a * torch.linalg.cross(b, c)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
    return 2 * torch.atan2(num, den)


def point_triangle_distance(points: Tensor, triangles: Tensor) -> Tensor:
    """Distances (N, F) from points (N, 3) to triangles (N, F, 3, 3) or (F, 3, 3): to the plane where the point's
    projection falls inside the triangle, else to the nearest of its three edges."""
    a, b, c = (triangles - points[:, None, None, :]).unbind(-2)              # corners relative to the point
    normal = torch.linalg.cross(b - a, c - a)
    unit = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    height = (a * unit).sum(-1)                                               # signed distance of the plane
    foot = height[..., None] * unit                                           # the projection, relative
    inside = ((torch.linalg.cross(b - foot, c - foot) * normal).sum(-1) >= 0) & \
             ((torch.linalg.cross(c - foot, a - foot) * normal).sum(-1) >= 0) & \
             ((torch.linalg.cross(a - foot, b - foot) * normal).sum(-1) >= 0)

    def to_edge(p: Tensor, q: Tensor) -> Tensor:                              # the origin to segment p–q
        d = q - p
        t = (-(p * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-20)).clamp(0, 1)
        return (p + t[..., None] * d).norm(dim=-1)
    edges = torch.minimum(torch.minimum(to_edge(a, b), to_edge(b, c)), to_edge(c, a))
    return torch.where(inside, height.abs(), edges)


def mesh_interpenetration(vertices: Tensor, faces: Tensor | np.ndarray, labels: Tensor | np.ndarray,
                          ignore: Tensor | np.ndarray, chunk: int = 1 << 22) -> MeshContact:
    """Which posed meshes interpenetrate (module docstring), independently of the capsule proxies.

    vertices (B, V, 3) m (any frame); faces (F, 3) a closed mesh's triangles, oriented consistently; labels (V,)
    part per vertex (0..K−1); ignore (K, K) bool: part pairs not tested (a part and its neighbours, `mesh_parts`).
    A face belongs to its first vertex's part. ``chunk`` bounds the vertex–triangle pairs computed at once."""
    dev = vertices.device
    faces = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=dev)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=dev)
    ignore = torch.as_tensor(np.asarray(ignore), dtype=torch.bool, device=dev)
    batch, num_verts = vertices.shape[:2]
    face_part = labels[faces[:, 0]]
    # the mesh's orientation: the winding number of the whole mesh at its interior must be +1
    sign = _orientation(vertices[0], faces)
    count = torch.zeros(batch, dtype=torch.long, device=dev)
    num_parts = int(ignore.shape[0])
    parts = torch.zeros(batch * num_parts * num_parts, dtype=torch.long, device=dev)
    depth = torch.zeros(batch, dtype=vertices.dtype, device=dev)
    margin = 1e-3
    for part in range(num_parts):
        own_faces = faces[face_part == part]
        own_verts = torch.nonzero(labels == part)[:, 0]
        if len(own_faces) == 0:
            continue
        region = vertices[:, own_verts]                                      # (B, n, 3)
        low, high = region.amin(1) - margin, region.amax(1) + margin          # (B, 3)
        on_part = torch.zeros(num_verts, dtype=torch.bool, device=dev)
        on_part[own_faces.reshape(-1)] = True                                 # corners of its faces: on it
        tested = ~ignore[part][labels] & ~on_part                             # (V,)
        in_box = ((vertices >= low[:, None]) & (vertices <= high[:, None])).all(-1) & tested[None]
        which, vert = torch.nonzero(in_box, as_tuple=True)
        if len(which) == 0:
            continue
        step = max(1, chunk // len(own_faces))
        winding = []
        for s in range(0, len(which), step):
            w, v = which[s:s + step], vert[s:s + step]
            tri = vertices[w][:, own_faces]                                   # (n, f, 3, 3)
            winding.append(sign * solid_angles(vertices[w, v], tri).sum(-1) / (4 * torch.pi))
        inside = torch.cat(winding) > MESH_INSIDE
        if not bool(inside.any()):
            continue
        w, v = which[inside], vert[inside]
        count.index_add_(0, w, torch.ones_like(w))
        parts.index_add_(0, (w * num_parts + labels[v]) * num_parts + part, torch.ones_like(w))
        nearest = point_triangle_distance(vertices[w, v], vertices[w][:, own_faces]).amin(1)   # (n,)
        depth = depth.scatter_reduce(0, w, nearest.to(depth.dtype), reduce="amax")
    return MeshContact(count > 0, count, depth, parts.reshape(batch, num_parts, num_parts))


def _orientation(vertices: Tensor, faces: Tensor) -> float:
    """+1 if the closed mesh's triangles are ordered so that the winding number inside is +1, else −1: judged at
    points just off the largest face on both sides (one of them is inside)."""
    tri = vertices[faces]                                                     # (F, 3, 3)
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    biggest = int(normal.norm(dim=-1).argmax())
    step = 1e-4 * normal[biggest] / normal[biggest].norm()
    probes = tri[biggest].mean(0) + torch.stack([step, -step])
    winding = solid_angles(probes, tri).sum(-1) / (4 * torch.pi)             # (2,): ~0 outside, ~±1 inside
    inner = winding[int(winding.abs().argmax())]
    if abs(abs(float(inner)) - 1) > 0.1:
        raise ModelFileError(f"the body model's mesh is not closed or not consistently oriented (winding number "
                             f"{float(inner):.3f} just inside it, ±1 expected): the mesh check of interpenetration "
                             f"needs a closed mesh, as SMPL-family meshes are; is the model file's `f` its own?")
    return 1.0 if float(inner) > 0 else -1.0


def interpenetrates(vertices: Tensor, faces: Tensor | np.ndarray, labels: Tensor | np.ndarray,
                    ignore: Tensor | np.ndarray) -> Tensor:
    """(B,) bool: the posed mesh (B, V, 3) has a vertex inside a part it is not next to (`mesh_interpenetration`)."""
    return mesh_interpenetration(vertices, faces, labels, ignore).inside


def excluded_pairs_mirrored(pairs: tuple[tuple[str, str, str], ...] = EXCLUDED_PAIRS) -> bool:
    """Whether a table of excluded pairs holds the left/right mirror of each of its pairs (`core.joints.mirror_name`)."""
    names = {frozenset((a, b)) for a, b, _ in pairs}
    return all(frozenset((mirror_name(a), mirror_name(b))) in names for a, b, _ in pairs)
