"""The committed open whole-body model in SMPL-X's layout (fitting/data/open_smplx*.npz), checked without Anny.

Conventions checked are smplx 0.1.28's and SMPL-X's own: `smplx.SMPLX(model_path=<file>)` reads it; joints in
`core.wholebody.SMPLX_JOINT_NAMES` order; hand_pose in MANO's finger order (index, middle, pinky, ring, thumb);
a positive jaw_pose about +X opens the mouth; 51 landmarks in iBUG 17–67 order; frame Y up, facing +Z, left +X.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from assets.open_smplx import (
    FARKAS_MM,
    border_loop,
    expression_space,
    finger_rotations,
    landmark_positions,
    smplx_layer,
    smplx_segment,
)
from core.joints import mirror_name
from core.wholebody import (
    FACE_LANDMARK_NAMES,
    FINGERTIP_VERTEX_KEYS,
    MANO_FINGERS,
    PUPIL_NAMES,
    SMPLX_JOINT_INDEX,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
)

DATA = Path(__file__).resolve().parents[1] / "fitting" / "data"
FILES = {"full": DATA / "open_smplx.npz", "small": DATA / "open_smplx_small.npz"}
VERTICES = {"full": 13492, "small": 1229}
MAX_BYTES = {"full": 3_000_000, "small": 300_000}
# smplx 0.1.28's SMPLX: 10 betas + 10 expressions when shapedirs has fewer than 300 + 100 directions; 55 joints,
# then its 21 vertex picks (nose, eyes, ears, 10 fingertips, 6 feet points), then the 51 landmarks.
SMPLX_NUM_BETAS, SMPLX_NUM_EXPRESSION, SMPLX_VERTEX_PICKS, SMPLX_LANDMARKS = 10, 10, 21, 51
SMPLX_POSE_BASIS = 486  # 54 joints x 9
SMPLX_VERTEX_KEYS = {"nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
                     "RSmallToe", "RHeel"} | set(FINGERTIP_VERTEX_KEYS.values())
# Ids of the shipped SMPL-format open models (`fitloop model info`): this work must not change them.
OPEN_MODEL_IDS = {"open": "open:6dd97926c3ef4940", "open-small": "open:5a3949ebc2c70a28"}


def _arrays(variant):
    with np.load(FILES[variant], allow_pickle=False) as npz:  # no object arrays: pickle stays off
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module", params=sorted(FILES))
def model(request):
    return request.param, _arrays(request.param)


@pytest.fixture(scope="module")
def small_layer():
    return smplx_layer(FILES["small"])


def _pose(batch, **given):
    """smplx.SMPLX inputs for a batch: zeros, except ``given``."""
    sizes = {"betas": 10, "expression": 10, "global_orient": 3, "body_pose": 63, "left_hand_pose": 45,
             "right_hand_pose": 45, "jaw_pose": 3, "leye_pose": 3, "reye_pose": 3, "transl": 3}
    return {k: given.get(k, torch.zeros(batch, n)) for k, n in sizes.items()}


def test_arrays_have_smplx_layout(model):
    variant, a = model
    v = VERTICES[variant]
    assert FILES[variant].stat().st_size <= MAX_BYTES[variant]
    expected = {"v_template": (v, 3), "shapedirs": (v, 3, SMPLX_NUM_BETAS + SMPLX_NUM_EXPRESSION),
                "posedirs": (v, 3, SMPLX_POSE_BASIS), "J_regressor": (55, v), "weights": (v, 55),
                "kintree_table": (2, 55), "hands_componentsl": (45, 45), "hands_componentsr": (45, 45),
                "hands_meanl": (45,), "hands_meanr": (45,), "lmk_faces_idx": (51,), "lmk_bary_coords": (51, 3)}
    for key, shape in expected.items():
        assert a[key].shape == shape, key
    np.testing.assert_array_equal(a["kintree_table"], [SMPLX_PARENTS, np.arange(55)])
    assert not a["posedirs"].any() and not a["hands_meanl"].any() and not a["hands_meanr"].any()
    np.testing.assert_array_equal(a["hands_componentsl"], np.eye(45))
    assert a["f"].min() == 0 and a["f"].max() == v - 1
    assert 0 <= a["lmk_faces_idx"].min() and a["lmk_faces_idx"].max() < len(a["f"])
    np.testing.assert_allclose(a["lmk_bary_coords"].sum(1), 1.0, atol=1e-5)
    assert a["lmk_bary_coords"].min() >= 0.0
    for key in ("J_regressor", "weights", "keypoint_regressor", "h36m_regressor"):
        assert a[key].min() >= 0.0, key
        np.testing.assert_allclose(a[key].sum(1), 1.0, atol=1e-5, err_msg=key)


def test_vertex_picks_cover_fingertips_pupils_face_and_feet(model):
    _, a = model
    names = [str(n) for n in a["vertex_ids_names"]]
    assert set(names) == SMPLX_VERTEX_KEYS | set(PUPIL_NAMES) and len(names) == len(set(names))
    ids = dict(zip(names, a["vertex_ids"].tolist()))
    v = a["v_template"]
    j = a["J_regressor"] @ v
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for finger in ("index", "middle", "ring", "pinky", "thumb"):
            tip, last = v[ids[f"{side[0]}{finger}"]], j[SMPLX_JOINT_INDEX[f"{side}_{finger}3"]]
            wrist = j[SMPLX_JOINT_INDEX[f"{side}_wrist"]]
            assert np.linalg.norm(tip - wrist) > np.linalg.norm(last - wrist) + 0.01, (side, finger)
        pupil = v[ids[f"{side}_pupil"]]
        eye = j[SMPLX_JOINT_INDEX[f"{side}_eye_smplhf"]]
        assert sign * pupil[0] > 0.02 and 0.010 < pupil[2] - eye[2] < 0.020  # the front of its eyeball


def test_smplx_loads_the_committed_file_as_users_run_it():
    import smplx

    layer = smplx.SMPLX(model_path=str(FILES["full"]), ext="npz", use_pca=False, flat_hand_mean=True)
    assert layer.num_betas == SMPLX_NUM_BETAS and layer.num_expression_coeffs == SMPLX_NUM_EXPRESSION
    with torch.no_grad():
        out = layer(**_pose(1))
    a = _arrays("full")
    assert out.vertices.shape == (1, 13492, 3)
    assert out.joints.shape == (1, 55 + SMPLX_VERTEX_PICKS + SMPLX_LANDMARKS, 3)
    np.testing.assert_allclose(out.vertices[0].numpy(), a["v_template"], atol=1e-6)
    np.testing.assert_allclose(out.joints[0, :55].numpy(), a["J_regressor"] @ a["v_template"], atol=1e-5)
    lmk = landmark_positions(a["v_template"], a["f"], a["lmk_faces_idx"], a["lmk_bary_coords"])
    np.testing.assert_allclose(out.joints[0, -SMPLX_LANDMARKS:].numpy(), lmk, atol=1e-5)


def test_joints_sit_where_smplx_has_them(model):
    _, a = model
    j = a["J_regressor"] @ a["v_template"].astype(np.float64)
    ji = SMPLX_JOINT_INDEX
    assert abs(j[ji["pelvis"]]).max() < 0.01
    for side, sign in (("left", 1.0), ("right", -1.0)):
        wrist = sign * j[ji[f"{side}_wrist"], 0]
        assert wrist > 0.6  # arms out along +X (left) / -X (right)
        for finger in ("index", "middle", "ring", "pinky"):
            x = [sign * j[ji[f"{side}_{finger}{i}"], 0] for i in (1, 2, 3)]
            assert wrist + 0.07 < x[0] < x[1] < x[2] < wrist + 0.20, (side, finger)  # beyond the wrist, in order
            y = [j[ji[f"{side}_{finger}{i}"], 1] for i in (1, 2, 3)]
            assert np.ptp(y) < 0.01, (side, finger)  # straight and flat (SMPL-X's flat hand)
        z = [j[ji[f"{side}_{finger}1"], 2] for finger in ("index", "middle", "ring", "pinky")]
        assert z == sorted(z, reverse=True)  # knuckles from the front (index, beside the thumb) to the back
        thumb = [j[ji[f"{side}_thumb{i}"]] for i in (1, 2, 3)]
        assert sign * thumb[0][0] > wrist and thumb[2][2] > thumb[0][2] + 0.03  # beside the palm, forward
        assert j[ji[f"{side}_eye_smplhf"], 2] > j[ji["head"], 2] + 0.06 and sign * j[ji[f"{side}_eye_smplhf"], 0] > 0.02
    # Anny's jaw bone (the makehuman rig's) sits at the temporomandibular joint: ahead of the head joint, within
    # 2 cm of its height, below the eyes
    assert j[ji["jaw"], 2] > j[ji["head"], 2] + 0.01 and abs(j[ji["jaw"], 1] - j[ji["head"], 1]) < 0.02
    assert j[ji["jaw"], 1] < j[ji["left_eye_smplhf"], 1] - 0.02
    for name in SMPLX_JOINT_NAMES:  # left/right mirror images
        np.testing.assert_allclose(j[ji[mirror_name(name)]] * [-1, 1, 1], j[ji[name]], atol=1e-3, err_msg=name)


def test_a_hand_pose_curls_the_fingers_towards_the_palm(small_layer):
    hand = torch.zeros(2, 15, 3)
    for f, finger in enumerate(MANO_FINGERS):
        if finger != "thumb":
            hand[1, 3 * f:3 * f + 3, 2] = -0.5  # flexion: about -Z for the left hand (fingers along +X, palm down)
    with torch.no_grad():
        out = small_layer(**_pose(2, left_hand_pose=hand.reshape(2, 45)))
    j, ji = out.joints.numpy(), SMPLX_JOINT_INDEX
    a = _arrays("small")
    lmiddle = int(a["vertex_ids"][list(a["vertex_ids_names"]).index(FINGERTIP_VERTEX_KEYS["left_middle"])])
    wrist, tip = j[:, ji["left_wrist"]], out.vertices.numpy()[:, lmiddle]
    # measured: the fingertip comes 22 mm nearer the wrist and goes 72 mm down
    assert np.linalg.norm(tip[1] - wrist[1]) < np.linalg.norm(tip[0] - wrist[0]) - 0.015
    assert tip[1, 1] < tip[0, 1] - 0.05  # down, to the palm's side
    np.testing.assert_allclose(j[1, ji["right_middle3"]], j[0, ji["right_middle3"]], atol=1e-6)  # other hand


def test_jaw_pose_opens_the_mouth(small_layer):
    jaw = torch.zeros(2, 3)
    jaw[1, 0] = 0.3  # SMPL-X: positive rotation about +X opens the mouth
    with torch.no_grad():
        out = small_layer(**_pose(2, jaw_pose=jaw))
    lmk = out.joints.numpy()[:, -SMPLX_LANDMARKS:]
    top, bottom = FACE_LANDMARK_NAMES.index("mouth_top"), FACE_LANDMARK_NAMES.index("mouth_bottom")
    gap = np.linalg.norm(lmk[:, top] - lmk[:, bottom], axis=-1)
    assert gap[1] > gap[0] + 0.012
    assert lmk[1, bottom, 1] < lmk[0, bottom, 1] - 0.008 and abs(lmk[1, top, 1] - lmk[0, top, 1]) < 0.004
    for name in ("nose4", "right_eye1", "left_eye_brow3"):  # the upper face stays
        i = FACE_LANDMARK_NAMES.index(name)
        np.testing.assert_allclose(lmk[1, i], lmk[0, i], atol=1e-4)


def test_expression_moves_the_face_and_nothing_else(small_layer):
    a = _arrays("small")
    head = a["weights"][:, [SMPLX_JOINT_INDEX[n] for n in ("head", "jaw", "left_eye_smplhf", "right_eye_smplhf")]]
    expression = torch.zeros(11, 10)
    expression[1:] = torch.eye(10) * 2.0
    with torch.no_grad():
        out = small_layer(**_pose(11, expression=expression))
    moved = np.linalg.norm(out.vertices[1:].numpy() - out.vertices[:1].numpy(), axis=-1)  # (10, V)
    assert (moved.max(1) > 0.002).all()  # every component moves some vertex by 2 mm at 2 standard deviations
    assert moved.max() < 0.03
    assert moved[:, head.sum(1) == 0.0].max() < 1e-7  # nothing that is not skinned to the head at all
    lmk = out.joints.numpy()[:, -SMPLX_LANDMARKS:]
    assert np.linalg.norm(lmk[1:] - lmk[:1], axis=-1).max(1).min() > 0.0005  # each moves some landmark


def test_landmarks_follow_ibug_geometry_and_mirror_each_other(model):
    variant, a = model
    lmk = landmark_positions(a["v_template"].astype(np.float64), a["f"], a["lmk_faces_idx"], a["lmk_bary_coords"])
    at = {n: lmk[i] for i, n in enumerate(FACE_LANDMARK_NAMES)}
    assert at["right_eye1"][0] < at["right_eye4"][0] < 0 < at["left_eye4"][0] < at["left_eye1"][0]
    assert at["right_mouth_1"][0] < at["mouth_top"][0] < at["left_mouth_1"][0]
    y = {n: at[n][1] for n in ("right_eye_brow3", "right_eye2", "nose1", "nose4", "nose_middle", "mouth_top",
                               "lip_top", "mouth_bottom")}
    assert list(y.values()) == sorted(y.values(), reverse=True)  # brow, eye, nasion, tip, subnasale, lips
    assert at["nose4"][2] > max(p[2] for p in lmk) - 1e-9  # the nose tip is the front-most landmark
    pair = [FACE_LANDMARK_NAMES.index(mirror_name(n)) for n in FACE_LANDMARK_NAMES]
    betas = np.random.default_rng(0).standard_normal((20, 10))
    bodies = a["v_template"] + np.einsum("vdk,nk->nvd", a["shapedirs"][..., :10].astype(np.float64), betas)
    for vertices in (a["v_template"].astype(np.float64), *bodies):
        points = landmark_positions(vertices, a["f"], a["lmk_faces_idx"], a["lmk_bary_coords"])
        mirror_mm = np.linalg.norm(points - points[pair] * [-1.0, 1.0, 1.0], axis=-1) * 1000.0
        assert mirror_mm.max() < {"full": 0.1, "small": 2.5}[variant]
    stats = json.loads(str(a["metadata"]))["stats"]["landmarks"]
    for name, published in FARKAS_MM.items():  # the mean face against published adult proportions
        assert abs(stats["mean_face_mm"][name] - published) < 0.3 * published, name


def test_metadata_records_the_build_and_the_expression_components(model):
    variant, a = model
    meta = json.loads(str(a["metadata"]))
    assert meta["name"] == {"full": "fitloop-open-smplx", "small": "fitloop-open-smplx-small"}[variant]
    assert meta["layout"] == "SMPL-X" and meta["source"]["jaw_rig"] == "makehuman"
    assert "CC0" in meta["source"]["expression"] and "Apache-2.0" in meta["licence"]
    assert "faceunits01" in meta["source"]["expression_licence"] and "CC0" in meta["source"]["expression_licence"]
    assert meta["build"]["samples"] == 2000 and meta["build"]["seed"] == 0
    components = meta["expression_components"]
    assert len(components) == 10 and all(components)
    assert not {"jawOpen", "eyeLookUpLeft", "tongueOut"} & {k for c in components for k in c}
    stats = meta["stats"]
    assert set(stats["J_regressor_test_error_mm"]) == set(SMPLX_JOINT_NAMES)
    fingers = [e["mean"] for n, e in stats["J_regressor_test_error_mm"].items() if n[:-1].endswith(MANO_FINGERS)]
    assert max(fingers) < 2.0  # finger joints regress to their Anny bones within 2 mm on held-out bodies
    assert stats["expression"]["variance_explained"] > 0.9
    rule = stats["landmark_rule_on_shaped_faces"]  # measured: 0.34 mm mean, 93% on the same vertex
    assert rule["faces"] == 50 and rule["mean_mm"] < 1.0 and rule["unchanged_share"] > 0.85


def test_open_smplx_loads_through_the_smplx_family_path_and_the_open_models_keep_their_ids():
    from fitting.body_model import load_body_model

    model = load_body_model("open-smplx-small")
    assert model.family == "smplx" and model.model_id.startswith("smplx:")
    info = model.info()
    assert info["tree_joints"] == 55 and info["joints"] == 49 and info["name"] == "fitloop-open-smplx-small"
    with torch.no_grad():
        out = model(torch.zeros(1, 10), torch.zeros(1, 69), torch.zeros(1, 3))
    a = _arrays("small")
    j = a["J_regressor"] @ a["v_template"]
    np.testing.assert_allclose(out.kinematic_joints[0, SMPLX_JOINT_INDEX["left_wrist"]].numpy(),
                               j[SMPLX_JOINT_INDEX["left_wrist"]], atol=1e-5)
    for name, model_id in OPEN_MODEL_IDS.items():
        assert load_body_model(name).model_id == model_id


def test_model_info_reports_55_joints_for_open_smplx(capsys):
    from fitloop.cli import main as fitloop

    assert fitloop(["model", "info", "--model", "open-smplx", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tree_joints"] == 55 and info["family"] == "smplx" and info["vertices"] == 13492


def test_the_file_gives_every_whole_body_point_but_the_face_contour(model):
    """What a whole-body loader reads: body joints from the keypoint rows and kinematic joints, hand roots as the
    wrists, finger joints from the tree, fingertips and pupils from vertex picks, face from the landmarks."""
    from core.joints import JOINT_NAMES
    from core.wholebody import FACE_CONTOUR_NAMES, WHOLEBODY_ALIASES, WHOLEBODY_FROM_KINEMATIC, WHOLEBODY_NAMES

    _, a = model
    picks = {str(n) for n in a["vertex_ids_names"]}
    sources = set(JOINT_NAMES) | set(WHOLEBODY_ALIASES) | set(FACE_LANDMARK_NAMES)
    sources |= {n for n, joint in WHOLEBODY_FROM_KINEMATIC.items() if joint in SMPLX_JOINT_INDEX}
    sources |= {n for n, key in FINGERTIP_VERTEX_KEYS.items() if key in picks}
    sources |= {n for n in PUPIL_NAMES if n in picks}
    assert set(WHOLEBODY_NAMES) - sources == set(FACE_CONTOUR_NAMES)


def test_build_open_dispatches_its_variants(monkeypatch, tmp_path, capsys):
    import assets.open_model
    import assets.open_smplx
    from fitloop.cli import main as fitloop

    calls = []

    def fake(kind):
        def build_and_save(out_dir, *, samples, seed, cache_dir, variants):
            calls.append((kind, variants))
            return {v: out_dir / f"{kind}-{v}.npz" for v in variants}
        return build_and_save

    monkeypatch.setattr(assets.open_model, "build_and_save", fake("smpl"))
    monkeypatch.setattr(assets.open_smplx, "build_and_save", fake("smplx"))
    for argv, expected in ((["--variant", "smplx"], [("smplx", ("full", "small"))]),
                           (["--variant", "smplx-small"], [("smplx", ("small",))]),
                           ([], [("smpl", ("full", "small"))]),
                           (["--variant", "small", "--variant", "smplx"], [("smpl", ("small",)),
                                                                          ("smplx", ("full", "small"))])):
        calls.clear()
        assert fitloop(["model", "build-open", "--out", str(tmp_path), *argv]) == 0
        assert calls == expected, argv
    assert "smplx-small:" in capsys.readouterr().out


# --- the build's pieces, on small inputs ----------------------------------------------------------------------
def test_smplx_segments_of_annys_bones():
    assert smplx_segment("finger1-1.L") == "left_thumb1" and smplx_segment("finger2-3.R") == "right_index3"
    assert smplx_segment("finger5-2.L") == "left_pinky2" and smplx_segment("finger4-1.L") == "left_ring1"
    assert smplx_segment("metacarpal3.R") == "right_wrist" and smplx_segment("eye.L") == "left_eye_smplhf"
    assert smplx_segment("lowerarm02.L") == "left_elbow" and smplx_segment("toe2-3.R") == "right_foot"


def test_border_loop_orders_the_rim_between_two_face_sets():
    # a 3 x 3 grid of quads; the centre quad is "inside": its rim is the 4-cycle 5, 6, 10, 9
    quads = [[r * 4 + c, r * 4 + c + 1, (r + 1) * 4 + c + 1, (r + 1) * 4 + c] for r in range(3) for c in range(3)]
    inside = np.zeros(9, dtype=bool)
    inside[4] = True
    loop = border_loop(quads, inside, ~inside)
    assert sorted(loop) == [5, 6, 9, 10] and len(loop) == 4
    assert {frozenset(e) for e in zip(loop, loop[1:] + loop[:1])} == {frozenset(e) for e in
                                                                     ((5, 6), (6, 10), (10, 9), (9, 5))}
    with pytest.raises(ValueError, match="loop"):
        border_loop(quads, np.zeros(9, dtype=bool), np.ones(9, dtype=bool))


def test_finger_rotations_straighten_a_bent_finger():
    labels = [f"{b}.{s}" for s in "LR" for b in
              ("metacarpal1", "finger2-1", "finger2-2", "finger2-3", "finger1-1", "finger1-2", "finger1-3")]
    labels += [f"{b}.{s}" for s in "LR" for k in (3, 4, 5) for b in (f"metacarpal{k - 1}", f"finger{k}-1",
                                                                       f"finger{k}-2", f"finger{k}-3")]
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(len(labels), 3))
    rot = finger_rotations(directions, labels)
    index = {label: i for i, label in enumerate(labels)}
    for s in "LR":
        for parent, child in (("metacarpal1", "finger2-1"), ("finger2-1", "finger2-2"), ("finger1-1", "finger1-2"),
                              ("finger1-2", "finger1-3")):
            turned = rot[index[f"{child}.{s}"]] @ directions[index[f"{child}.{s}"]]
            target = directions[index[f"{parent}.{s}"]]
            np.testing.assert_allclose(turned / np.linalg.norm(turned), target / np.linalg.norm(target), atol=1e-9)
    assert index["finger1-1.L"] not in rot  # the thumb's metacarpal keeps its place


def test_expression_space_spans_the_sampled_faces_about_the_neutral_one():
    from assets.open_smplx import OpenSmplxConfig

    rng = np.random.default_rng(0)
    dirs = np.zeros((12, 30, 3))
    dirs[np.arange(12), np.arange(12) * 2] = rng.normal(size=(12, 3))  # 12 actions on disjoint vertices
    expr, mix, stats = expression_space(dirs, OpenSmplxConfig(expression_samples=4000))
    assert expr.shape == (30, 3, 10) and mix.shape == (10, 12)
    np.testing.assert_allclose(np.einsum("ka,avd->vdk", mix, dirs), expr, atol=1e-12)  # each a mix of actions
    assert not expr[1::2].any()  # vertices no action moves stay put
    flat = expr.reshape(-1, 10)
    gram = flat.T @ flat
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-12)  # orthogonal components
    assert 10 / 12 - 0.1 < stats["variance_explained"] < 1.0
