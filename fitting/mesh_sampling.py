"""Mesh down- and upsampling matrices for GraphCMR's graph CNN (Kolotouros et al., CVPR 2019), built offline.

GraphCMR (nkolot/GraphCMR ``utils/mesh.py``, commit eaee920) reads ``data/mesh_downsampling.npz``, made with
COMA's code (Ranjan et al., ECCV 2018, ``mesh_sampling.py``: ``generate_transform_matrices``): for SMPL's 6,890
vertices, a coarse mesh of 1,723 made by quadric-error half-edge collapse, and

* D (Vc, V): downsampling, a selection: row i has one 1 at the full vertex coarse vertex i is (a half-edge
  collapse moves no vertex, so the coarse vertices are a subset of the full ones);
* U (V, Vc): upsampling, each full vertex as barycentric weights of the three corners of the coarse face nearest
  to it (COMA's ``setup_deformation_transfer``);
* A (Vc, Vc): the coarse mesh's vertex adjacency (binary, symmetric, zero diagonal); GraphCMR's graph convolution
  row-normalises it with self-loops (`normalized_adjacency`).

`build_sampling` does the same for any triangle mesh: COMA's ``qslim_decimator_transformer`` (Garland and
Heckbert's quadrics, SIGGRAPH 1997, summed per vertex from the planes of its faces; an edge collapses into the
endpoint whose position costs least under the two quadrics summed; the kept vertex takes the sum), with a lazy
heap instead of COMA's list scans (the same rule, in seconds instead of minutes; a collapse re-queues its
kept vertex's edges at their new costs, where COMA renames the queued ones; ties broken by vertex index, so the
build is deterministic). Collapses stop when ``target`` vertices remain in the faces. Numpy and scipy only (no
mesh library: trimesh is the open-model extra's; the tests check the closest points against it).

Files: fitloop's own are ``.npz`` of plain arrays (no pickles): the three matrices in CSR parts
(``{d,u,a}_data/_indices/_indptr/_shape``) and the coarse faces. GraphCMR's official file holds lists of scipy
sparse matrices per level and pickled ``psbody`` meshes; `load_sampling` reads only its ``A``, ``U`` and ``D``
members through the restricted unpickler (`fitting.safe_pickle`) and never unpickles the rest.
"""
from __future__ import annotations

import hashlib
import heapq
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.errors import FitloopError, ModelFileError
from fitting import safe_pickle

GRAPHCMR_VERTICES = 1723  # GraphCMR's coarse SMPL mesh (models/smpl_param_regressor.py: "1723 is the number of ...")
GRAPHCMR_FACTOR = 4       # 6890 -> 1723: COMA's factor per level (GraphCMR uses the first level)
_NN_CANDIDATES = 8        # coarse vertices whose faces are searched for each full vertex's nearest face


@dataclass(frozen=True)
class MeshSampling:
    """down (Vc, V) CSR selection; up (V, Vc) CSR barycentric; adjacency (Vc, Vc) CSR binary; faces (Fc, 3) int64
    the coarse mesh's faces (None for GraphCMR's file, which keeps them only in its psbody meshes); source: where
    it came from."""

    down: sp.csr_matrix
    up: sp.csr_matrix
    adjacency: sp.csr_matrix
    faces: np.ndarray | None
    source: str

    @property
    def num_vertices(self) -> int:
        return int(self.down.shape[1])

    @property
    def num_coarse(self) -> int:
        return int(self.down.shape[0])


def sampling_digest(sampling: MeshSampling) -> str:
    """sha256 (hex) of what a network computes with: the down, up and adjacency matrices as canonical CSR
    (duplicates summed, zeros dropped, indices sorted, values float64), not the faces nor the file's name or format:
    GraphCMR's file and fitloop's .npz of the same matrices have one digest."""
    digest = hashlib.sha256()
    for matrix in (sampling.down, sampling.up, sampling.adjacency):
        csr = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        csr.sort_indices()
        for part in (np.asarray(csr.shape, np.int64), csr.indptr.astype(np.int64), csr.indices.astype(np.int64),
                     csr.data):
            digest.update(part.tobytes())
    return digest.hexdigest()


def normalized_adjacency(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """GraphCMR's ``adjmat_sparse`` (nsize 1): binary, with self-loops, each row divided by its sum."""
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    a.data[:] = 1.0
    a = (a + sp.identity(a.shape[0], format="csr")).tocsr()
    a.data[:] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a)


def mesh_adjacency(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """(N, N) binary symmetric vertex adjacency of a triangle mesh's edges."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    a = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    return a


def _vertex_quadrics(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 4, 4): the sum over each vertex's faces of p pᵀ, p = [n, −n·v0] the face's unit plane (COMA)."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    plane = np.concatenate([normal, -(normal * tri[:, 0]).sum(1, keepdims=True)], 1)
    q = plane[:, :, None] * plane[:, None, :]
    out = np.zeros((len(vertices), 4, 4))
    for k in range(3):
        np.add.at(out, faces[:, k], q)
    return out


def _quadric_cost(outer: np.ndarray, quadric: np.ndarray) -> float:
    """hᵀ Q h from h hᵀ (4, 4) of a homogeneous point h and a quadric Q (4, 4), the same to the bit on every
    machine: each of the 16 terms is one rounding, and `math.fsum` adds them exactly rounded. (``h @ Q @ h`` goes
    through BLAS, whose kernels differ by CPU: AVX-512's sum in another order, which reordered near-tied collapses
    and gave other coarse faces than the committed file on such a machine.)"""
    return math.fsum((outer * quadric).ravel().tolist())


def decimate(vertices: np.ndarray, faces: np.ndarray, target: int) -> np.ndarray:
    """COMA's quadric half-edge collapse (module docstring) of a mesh (V, 3), (F, 3) down to ``target`` vertices.
    Returns the coarse faces (Fc, 3) in the full mesh's vertex indices."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64).copy()
    quadrics = _vertex_quadrics(vertices, faces)
    homogeneous = np.concatenate([vertices, np.ones((len(vertices), 1))], 1)
    outer = homogeneous[:, :, None] * homogeneous[:, None, :]          # (V, 4, 4) h hᵀ: hᵀ Q h = Σ (h hᵀ ∘ Q)
    incident: list[set[int]] = [set() for _ in range(len(vertices))]
    for f, corners in enumerate(faces.tolist()):
        for v in corners:
            incident[v].add(f)
    alive_face = np.ones(len(faces), bool)

    def costs(r: int, c: int) -> tuple[float, float, np.ndarray]:
        total = quadrics[r] + quadrics[c]
        return _quadric_cost(outer[r], total), _quadric_cost(outer[c], total), total

    heap = []
    for r, c in sorted({(min(a, b), max(a, b)) for a, b in np.concatenate(
            [faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()}):
        keep_r, keep_c, _ = costs(r, c)
        heap.append((min(keep_r, keep_c), r, c))
    heapq.heapify(heap)
    remaining = len(np.unique(faces))
    while remaining > target and heap:
        cost, r, c = heapq.heappop(heap)
        if not incident[r] or not incident[c] or r == c:
            continue                                           # an endpoint already collapsed away
        keep_r, keep_c, total = costs(r, c)
        if min(keep_r, keep_c) > cost:                         # stale entry: its quadrics grew, queue it again
            heapq.heappush(heap, (min(keep_r, keep_c), r, c))
            continue
        keep, gone = (r, c) if keep_r <= keep_c else (c, r)
        touched = set()
        for f in sorted(incident[gone]):
            corners = faces[f]
            corners[corners == gone] = keep
            if len(set(corners.tolist())) < 3:                 # the collapsed edge's faces become degenerate
                alive_face[f] = False
                for v in corners.tolist():
                    incident[v].discard(f)
                    touched.add(v)
            else:
                incident[keep].add(f)
        incident[gone] = set()
        quadrics[keep] = total
        remaining -= 1 + sum(1 for v in touched - {gone} if not incident[v])   # vertices left without a face
        neighbours = {int(v) for f in incident[keep] for v in faces[f]} - {keep}
        for n in sorted(neighbours):
            a, b = min(keep, n), max(keep, n)
            keep_a, keep_b, _ = costs(a, b)
            heapq.heappush(heap, (min(keep_a, keep_b), a, b))
    return faces[alive_face]


def _closest_on_triangles(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric weights (N, 3) of the closest point to each point (N, 3) on its triangle (N, 3, 3) (Ericson,
    Real-Time Collision Detection, 5.1.5), clamped to the triangle."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, points - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = points - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = points - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    w = np.zeros((len(points), 3))
    done = np.zeros(len(points), bool)

    def put(mask: np.ndarray, weights: np.ndarray) -> None:
        nonlocal done
        m = mask & ~done
        w[m] = weights[m]
        done |= m

    n = len(points)
    put((d1 <= 0) & (d2 <= 0), np.tile([1.0, 0, 0], (n, 1)))
    put((d3 >= 0) & (d4 <= d3), np.tile([0, 1.0, 0], (n, 1)))
    put((d6 >= 0) & (d5 <= d6), np.tile([0, 0, 1.0], (n, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t, t, 0 * t], 1))
        t = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t, 0 * t, t], 1))
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([0 * t, 1 - t, t], 1))
        denom = 1.0 / (va + vb + vc)
        v, u = vb * denom, vc * denom
        put(np.ones(n, bool), np.stack([1 - v - u, v, u], 1))
    return np.nan_to_num(w, nan=1.0 / 3)


def barycentric_upsampling(points: np.ndarray, coarse_vertices: np.ndarray, coarse_faces: np.ndarray,
                           num_coarse: int) -> sp.csr_matrix:
    """(N, Vc) CSR: each point (N, 3) as the barycentric weights of the nearest point on the coarse mesh
    (vertices (Vc, 3), faces (Fc, 3) in coarse indices), searched over the faces around its `_NN_CANDIDATES`
    nearest coarse vertices (COMA's ``setup_deformation_transfer``, which searches an AABB tree)."""
    from scipy.spatial import cKDTree

    incident: list[list[int]] = [[] for _ in range(num_coarse)]
    for f, corners in enumerate(coarse_faces.tolist()):
        for v in corners:
            incident[v].append(f)
    _, near = cKDTree(coarse_vertices).query(points, k=min(_NN_CANDIDATES, len(coarse_vertices)))
    rows, cols, vals = [], [], []
    best = np.full(len(points), np.inf)
    best_face = np.zeros(len(points), np.int64)
    best_w = np.zeros((len(points), 3))
    candidates = [sorted({f for v in row for f in incident[v]}) for row in near.tolist()]
    width = max(len(c) for c in candidates)
    for k in range(width):
        idx = np.array([c[k] if k < len(c) else c[-1] for c in candidates])
        tri = coarse_vertices[coarse_faces[idx]]
        w = _closest_on_triangles(points, tri)
        dist = np.linalg.norm(np.einsum("nk,nkd->nd", w, tri) - points, axis=1)
        better = dist < best - 1e-12
        best[better], best_face[better], best_w[better] = dist[better], idx[better], w[better]
    for i in range(len(points)):
        for corner, weight in zip(coarse_faces[best_face[i]].tolist(), best_w[i].tolist()):
            rows.append(i), cols.append(corner), vals.append(weight)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(points), num_coarse))


def build_sampling(vertices: np.ndarray, faces: np.ndarray, target: int, source: str = "built") -> MeshSampling:
    """D, U, A (module docstring) for a mesh (V, 3) metres, (F, 3), coarse to ``target`` vertices; deterministic."""
    vertices = np.asarray(vertices, np.float64)
    if not 4 <= target < len(vertices):  # a tetrahedron at least; fewer than the mesh's own, or nothing is coarse
        raise FitloopError(f"coarse vertices must be from 4 to {len(vertices) - 1} (the mesh has {len(vertices)}), "
                           f"got {target}")
    coarse_faces_full = decimate(vertices, faces, target)
    kept = np.unique(coarse_faces_full)
    remap = np.full(len(vertices), -1, np.int64)
    remap[kept] = np.arange(len(kept))
    coarse_faces = remap[coarse_faces_full]
    down = sp.csr_matrix((np.ones(len(kept)), (np.arange(len(kept)), kept)), shape=(len(kept), len(vertices)))
    up = barycentric_upsampling(vertices, vertices[kept], coarse_faces, len(kept))
    return MeshSampling(down=down, up=up, adjacency=mesh_adjacency(coarse_faces, len(kept)), faces=coarse_faces,
                        source=source)


def reconstruction_error(sampling: MeshSampling, meshes: np.ndarray) -> tuple[float, float]:
    """Mean and max distance (the meshes' units) between each vertex of meshes (B, V, 3) and U·D of it."""
    meshes = np.asarray(meshes, np.float64)
    ud = sampling.up @ sampling.down
    err = np.stack([np.linalg.norm(ud @ m - m, axis=1) for m in meshes])
    return float(err.mean()), float(err.max())


def check_sampling_path(path: str | Path) -> Path:
    """The path a sampling file may be written to: an ``.npz`` name (numpy would write an .npz under any name, and
    readers go by the name), not a folder; `FitloopError` saying what to name otherwise."""
    path = Path(path)
    if path.is_dir():
        raise FitloopError(f"{path} is a folder: give the .npz file to write, e.g. {path}/mesh_sampling.npz")
    if path.suffix != ".npz":
        raise FitloopError(f"{path}: a sampling file is an .npz archive; name it so (e.g. {path.with_suffix('.npz')})")
    return path


def save_sampling(path: str | Path, sampling: MeshSampling) -> None:
    """Write fitloop's layout (module docstring), atomically, byte-reproducibly (np.savez: fixed member times)."""
    path = check_sampling_path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, m in (("d", sampling.down), ("u", sampling.up), ("a", sampling.adjacency)):
        m = sp.csr_matrix(m)
        m.sort_indices()
        arrays |= {f"{name}_data": m.data.astype(np.float64), f"{name}_indices": m.indices.astype(np.int64),
                   f"{name}_indptr": m.indptr.astype(np.int64), f"{name}_shape": np.asarray(m.shape, np.int64)}
    arrays["faces"] = np.asarray(sampling.faces, np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
    except BaseException:  # a full disk, a kill: no stray temporary file
        tmp.unlink(missing_ok=True)
        raise


def load_sampling(path: str | Path) -> MeshSampling:
    """fitloop's ``.npz`` or GraphCMR's ``mesh_downsampling.npz`` (its first level: D[0], U[0], A[1]);
    `ModelFileError` naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such mesh sampling file (build one with `fitloop model sampling "
                             f"--model MODEL --out FILE`, or pass GraphCMR's data/mesh_downsampling.npz)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).stem for n in archive.namelist()}
            if {"A", "U", "D"} <= names:
                return _graphcmr_sampling(archive, path)
        with np.load(path, allow_pickle=False) as data:
            parts = {name: sp.csr_matrix((data[f"{name}_data"], data[f"{name}_indices"], data[f"{name}_indptr"]),
                                         shape=tuple(data[f"{name}_shape"])) for name in ("d", "u", "a")}
            faces = np.asarray(data["faces"], np.int64)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise ModelFileError(f"{path}: not a mesh sampling file (fitloop's d/u/a CSR arrays, or GraphCMR's A, U, "
                             f"D): {type(err).__name__}: {err}") from None
    return _checked(MeshSampling(parts["d"], parts["u"], parts["a"], faces, f"npz:{path.name}"), path)


def _npy_pickle(archive: zipfile.ZipFile, member: str, path: Path) -> object:
    """An object array member of an .npz, its pickle read by `fitting.safe_pickle` (never numpy's unpickler)."""
    raw = archive.read(member)
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
    _, _, dtype = header(stream)
    if dtype != np.dtype(object):
        return np.load(io.BytesIO(raw), allow_pickle=False)
    return safe_pickle.loads(raw[stream.tell():], f"{path}:{member}", sparse=True)


def _graphcmr_sampling(archive: zipfile.ZipFile, path: Path) -> MeshSampling:
    members = {Path(n).stem: n for n in archive.namelist()}
    levels = {key: list(np.asarray(_npy_pickle(archive, members[key], path), dtype=object).ravel())
              for key in ("A", "U", "D")}
    if len(levels["A"]) < 2 or not levels["U"] or not levels["D"]:
        raise ModelFileError(f"{path}: GraphCMR's layout needs A with 2 levels and U, D with 1; found "
                             f"{', '.join(f'{k}: {len(v)}' for k, v in levels.items())}")
    d, u, a = (sp.csr_matrix(m, dtype=np.float64) for m in (levels["D"][0], levels["U"][0], levels["A"][1]))
    a = ((a + a.T) > 0).astype(np.float64).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    return _checked(MeshSampling(d, u, a, None, f"graphcmr:{path.name}"), path)


def _checked(sampling: MeshSampling, path: Path) -> MeshSampling:
    vc, v = sampling.down.shape
    if sampling.up.shape != (v, vc) or sampling.adjacency.shape != (vc, vc):
        raise ModelFileError(f"{path}: D is {vc} x {v}, so U must be {v} x {vc} and A {vc} x {vc}; found "
                             f"{sampling.up.shape} and {sampling.adjacency.shape}")
    return sampling


def default_target(num_vertices: int) -> int:
    """GraphCMR's coarse size where the mesh allows it, else a quarter of it (COMA's factor): 1723 for the open
    model's 13,492 vertices, 307 for open-small's 1,229."""
    return min(GRAPHCMR_VERTICES, num_vertices // GRAPHCMR_FACTOR)


def committed_path(model: str) -> Path | None:
    """The committed sampling file of a built-in open model (``fitting/data/<model file>_sampling.npz``), None for
    any other model (a real SMPL: GraphCMR's ``mesh_downsampling.npz``, or one built with ``fitloop model
    sampling``)."""
    from fitting.body_model import OPEN_MODELS

    if model not in OPEN_MODELS:
        return None
    source = OPEN_MODELS[model]
    return source.with_name(f"{source.stem}_sampling.npz")


def build_for_model(model: str, target: int | None = None) -> MeshSampling:
    """The sampling of a body model's template mesh (`fitting.body_model.load_body_model` source), coarse to
    ``target`` vertices (default `default_target`)."""
    from fitting.body_model import load_body_model

    body = load_body_model(model)
    template = body.layer.v_template.detach().cpu().double().numpy()
    target = default_target(len(template)) if target is None else target
    return build_sampling(template, body.faces, target, source=f"built:{model}")
