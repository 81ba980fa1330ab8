"""GraphCMR's mesh sampling matrices (fitting.mesh_sampling): the committed files are what the build gives, the
matrices have COMA's structure, and GraphCMR's own pickled file is read through the restricted unpickler."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from core.errors import UnsafePickleError
from fitting.mesh_sampling import (
    GRAPHCMR_VERTICES,
    _closest_on_triangles,
    _quadric_cost,
    build_for_model,
    build_sampling,
    committed_path,
    decimate,
    load_sampling,
    normalized_adjacency,
    reconstruction_error,
    sampling_digest,
    save_sampling,
)


def _same(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    return a.shape == b.shape and abs(sp.csr_matrix(a) - sp.csr_matrix(b)).max() < 1e-12


@pytest.mark.parametrize("model", ["open-small", "open"])
def test_committed_files_are_the_rebuild(tmp_path, model):
    committed = load_sampling(committed_path(model))
    rebuilt = build_for_model(model)                                           # ~4.5 s CPU for the full model
    assert _same(committed.down, rebuilt.down) and _same(committed.up, rebuilt.up)
    assert _same(committed.adjacency, rebuilt.adjacency) and np.array_equal(committed.faces, rebuilt.faces)
    save_sampling(tmp_path / "a.npz", rebuilt)
    assert (tmp_path / "a.npz").read_bytes() == committed_path(model).read_bytes()  # byte-reproducible


def test_a_collapses_cost_is_exactly_rounded_whatever_the_order():
    """The decimation's costs decide the order of near-tied collapses, so they must be the same float on every
    machine: hᵀ Q h is the exactly rounded sum of its 16 products (BLAS's ``h @ Q @ h`` sums in an order that
    depends on the CPU's kernels, and gave another coarse mesh on an AVX-512 machine)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for _ in range(200):
        h = np.append(rng.normal(0, 1, 3) * 10.0 ** rng.integers(-3, 3), 1.0)
        q = rng.normal(0, 1, (4, 4)) * 10.0 ** rng.integers(-6, 6, (4, 4))
        outer = h[:, None] * h[None, :]
        terms = (outer * q).ravel()
        exact = float(sum(Fraction(t) for t in terms.tolist()))
        assert _quadric_cost(outer, q) == exact
        flipped = _quadric_cost(outer.T.copy(), q.T.copy())         # the same terms in another order
        assert flipped == exact


def test_committed_open_file_has_graphcmrs_size():
    sampling = load_sampling(committed_path("open"))
    assert sampling.num_vertices == 13492 and sampling.num_coarse == GRAPHCMR_VERTICES


def test_matrices_have_comas_structure():
    sampling = load_sampling(committed_path("open-small"))
    down, up = sampling.down, sampling.up
    assert np.all(down.data == 1) and np.all(np.diff(down.indptr) == 1)        # D picks one full vertex per row
    assert np.allclose(np.asarray(up.sum(1)).ravel(), 1) and up.min() >= 0    # U: barycentric rows
    assert np.all(np.diff(up.indptr) <= 3)
    kept = down.indices
    assert _same((up @ down)[kept], sp.identity(len(kept)) @ down)            # U·D is exact on kept vertices
    a = sampling.adjacency
    assert (a != a.T).nnz == 0 and a.diagonal().sum() == 0
    faces = sampling.faces
    edges = {tuple(sorted(e)) for f in faces.tolist() for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    assert a.nnz == 2 * len(edges)


def test_closest_points_are_trimeshs():
    trimesh = pytest.importorskip("trimesh")                                   # the open-model extra
    rng = np.random.default_rng(0)
    tri, points = rng.normal(size=(2000, 3, 3)), 2 * rng.normal(size=(2000, 3))
    weights = _closest_on_triangles(points, tri)
    assert np.allclose(weights.sum(1), 1) and weights.min() >= -1e-12
    assert np.allclose(np.einsum("nk,nkd->nd", weights, tri), trimesh.triangles.closest_point(tri, points), atol=1e-9)


def test_decimation_keeps_a_closed_surface_and_reconstructs_a_sphere():
    trimesh = pytest.importorskip("trimesh")
    sphere = trimesh.creation.icosphere(subdivisions=4)                        # 2562 vertices, radius 1
    sampling = build_sampling(sphere.vertices, sphere.faces, 640)
    assert sampling.num_coarse == 640
    coarse = trimesh.Trimesh(sphere.vertices[sampling.down.indices], sampling.faces, process=False)
    assert coarse.is_watertight and coarse.euler_number == 2
    mean, worst = reconstruction_error(sampling, sphere.vertices[None])
    assert mean < 0.01 and worst < 0.03                                        # of a unit radius


def test_decimation_is_deterministic():
    trimesh = pytest.importorskip("trimesh")
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert np.array_equal(decimate(sphere.vertices, sphere.faces, 200), decimate(sphere.vertices, sphere.faces, 200))


def test_normalized_adjacency_is_graphcmrs():
    a = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], float))
    expected = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    assert np.allclose(normalized_adjacency(a).toarray(), expected)


class PsbodyMesh:  # stands in for psbody.mesh.Mesh: a class no allow-list knows
    def __init__(self):
        self.v = np.zeros((3, 3))


def _graphcmr_file(path, sampling, extra):
    """GraphCMR's data/mesh_downsampling.npz layout: object arrays of scipy sparse matrices per level (A: the full
    and the coarse mesh's adjacency; U, D: one level here) and other pickled members."""
    full_adj = sp.random(6890, 6890, density=1e-3, format="csc", random_state=0)   # SMPL's size: too big dense

    def objects(*items):
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out

    np.savez(path, A=objects(full_adj, sp.csc_matrix(sampling.adjacency)), U=objects(sp.csc_matrix(sampling.up)),
             D=objects(sp.csc_matrix(sampling.down)), **extra)


def test_graphcmr_layout_is_read_without_its_meshes(tmp_path):
    sampling = load_sampling(committed_path("open-small"))
    path = tmp_path / "mesh_downsampling.npz"
    _graphcmr_file(path, sampling, {"M": np.array([PsbodyMesh()], dtype=object)})
    loaded = load_sampling(path)
    assert _same(loaded.down, sampling.down) and _same(loaded.up, sampling.up)
    assert _same(loaded.adjacency, sampling.adjacency) and loaded.faces is None
    # the matrices' digest (what a graphcmr checkpoint records) is theirs, not the file's: CSC pickles, no faces
    assert sampling_digest(loaded) == sampling_digest(sampling)
    moved = sp.csr_matrix(sampling.up, copy=True)
    moved.data[:2] = moved.data[1::-1] + 1e-9        # one weight moved a billionth
    assert sampling_digest(dataclasses.replace(sampling, up=moved)) != sampling_digest(sampling)


def test_graphcmr_layout_with_a_hostile_member_is_refused(tmp_path):
    sampling = load_sampling(committed_path("open-small"))
    path = tmp_path / "mesh_downsampling.npz"
    _graphcmr_file(path, sampling, {})
    hostile = tmp_path / "hostile.npz"
    with np.load(path, allow_pickle=True) as data:
        members = {k: data[k] for k in data.files}
    members["D"] = np.array([PsbodyMesh()], dtype=object)
    np.savez(hostile, **members)
    with pytest.raises(UnsafePickleError, match="PsbodyMesh"):
        load_sampling(hostile)


def test_a_coarse_size_the_mesh_cannot_have_and_a_folder_as_out_are_one_line(tmp_path, capsys):
    from fitloop.cli import main

    for vertices in ("-5", "3", "1229", "99999"):      # open-small has 1,229 vertices: 99999 gave an identity
        assert main(["model", "sampling", "--model", "open-small", "--vertices", vertices,
                     "--out", str(tmp_path / "s.npz")]) == 1
        assert f"coarse vertices must be from 4 to 1228 (the mesh has 1229), got {vertices}" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["model", "sampling", "--model", "open-small", "--out", str(tmp_path / "folder")]) == 1
    assert "is a folder: give the .npz file to write" in capsys.readouterr().err
    # numpy writes an .npz under any name: "s.txt" was an archive named as text
    assert main(["model", "sampling", "--model", "open-small", "--out", str(tmp_path / "s.txt")]) == 1
    assert "a sampling file is an .npz archive; name it so" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]          # no stray temporary file
    assert main(["model", "sampling", "--model", "open-small", "--out", str(tmp_path / "new" / "s.npz")]) == 0
    assert (tmp_path / "new" / "s.npz").read_bytes() == committed_path("open-small").read_bytes()


def test_without_out_nothing_is_written_not_even_the_committed_file(tmp_path, capsys, monkeypatch):
    """`fitloop model sampling --vertices 500` (no --out) replaced the committed open_body_sampling.npz, whose digest
    graphcmr checkpoints record. Without --out the build's figures are printed and nothing is written; the committed
    file is rebuilt only when named."""
    import fitting.mesh_sampling as mesh_sampling
    from fitloop.cli import main

    stand_in = tmp_path / "open_body_small_sampling.npz"      # where the command would write the committed file
    monkeypatch.setattr(mesh_sampling, "committed_path", lambda model: stand_in)
    capsys.readouterr()
    assert main(["model", "sampling", "--model", "open-small", "--vertices", "100"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [] and out.startswith("built: 1229 -> 100 vertices")
    assert out.splitlines()[-1] == "nothing written (no --out); to write it, pass --out FILE"
    monkeypatch.undo()
    committed = committed_path("open-small")
    before = committed.read_bytes()
    assert main(["model", "sampling", "--model", "open-small"]) == 0
    assert committed.read_bytes() == before
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("nothing written (no --out); to write it, pass --out FILE; it matches the committed "
                           "open_body_small_sampling.npz, which is rebuilt only when named: --out ")
    assert last.endswith("open_body_small_sampling.npz")
