"""Damaged, foreign and wrongly shaped body-model, regressor and pose-prior files (issue 13).

Every case runs the CLI as a user would (`fitloop model info|convert`, `fitloop prior info|train`) and expects one
line naming the file (and the array) and the reason, never a traceback and never exit 0. The model files are
synthetic, in the real SMPL / SMPL-H / SMPL-X layouts (tests/model_files.py), with one fault each.
"""
import io
import json
import pickle
import zipfile

import model_files
import numpy as np
import pytest
from faultcheck import expect_error

from core.errors import UnsafePickleError
from fitting.body_model import MODEL_LAYOUT, OPEN_MODELS, load_body_model

FAULT_CLASS = "damaged or wrong model, regressor and prior files"
SMALL_VERTICES = 300  # every fault below is found before the mesh size matters


@pytest.fixture(scope="module")
def smpl_small():
    return model_files.smpl_arrays(num_vertices=SMALL_VERTICES)


@pytest.fixture(scope="module")
def smpl_full():
    return model_files.smpl_arrays()


@pytest.fixture(scope="module")
def smpl_full_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.npz"
    np.savez(path, **model_files.smpl_arrays())
    return path


def _small(arrays):
    """An SMPL-H/SMPL-X layout on SMALL_VERTICES vertices (the faults below are found before the mesh size matters)."""
    per_vertex = ("v_template", "shapedirs", "posedirs", "weights")
    small = {k: v[:SMALL_VERTICES] if k in per_vertex else v for k, v in arrays.items()}
    return dict(small, J_regressor=arrays["J_regressor"][:, :SMALL_VERTICES], f=arrays["f"] % SMALL_VERTICES)


@pytest.fixture(scope="module")
def smplh_small():
    return _small(model_files.smplh_arrays())


@pytest.fixture(scope="module")
def smplx_small():
    return _small(model_files.smplx_arrays())


def _save(tmp_path, arrays, name="SMPL_NEUTRAL.npz"):
    path = tmp_path / name
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        model_files.write_chumpy_pickle(path, arrays)
    return path


def _info(capsys, path, *fragments):
    return expect_error(capsys, ["model", "info", "--model", path], str(path), *fragments)


# --- files that are not what they are named ----------------------------------------------------------------------
def test_a_truncated_npz_is_one_line(tmp_path, capsys, smpl_small):
    path = _save(tmp_path, smpl_small)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _info(capsys, path, "cut short", "get a fresh copy")


def test_an_npz_with_a_corrupt_member_is_one_line(tmp_path, capsys, smpl_small):
    path = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez_compressed(path, **smpl_small)
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(64)  # inside the compressed v_template/shapedirs members: CRC or zlib fails
    path.write_bytes(bytes(data))
    _info(capsys, path, "not a readable .npz body-model file", "get a fresh copy")


@pytest.mark.parametrize("name, content, fragment", [
    ("model.npz", b"v 0 0 0\nf 1 2 3\n", "it is text, where an SMPL-family model is a pickle"),
    ("model.pkl", b"v 0 0 0\nf 1 2 3\n", "it is text, where an SMPL-family model is a pickle"),
    ("model.npz", b"\x93NUMPY\x01\x00", "it is a single numpy array (.npy)"),
    ("model.npz", b"", "empty (0 bytes)"),
    ("model.pkl", b"", "empty (0 bytes)"),
])
def test_a_file_of_another_kind_is_one_line(tmp_path, capsys, smpl_small, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    _info(capsys, path, fragment)


@pytest.mark.parametrize("name", ["model.pkl", "model.npz", "SMPL_NEUTRAL.NPZ", "SMPL_NEUTRAL.PKL", "model.pickle",
                                  "basicModel_neutral_lbs_10_207_0_v1.0.0"])
def test_a_model_file_under_another_name_is_the_same_model(tmp_path, smpl_full, name):
    """A file is read as what its bytes are (a pickle or a zip), not by its suffix: an .npz renamed .pkl (or the
    other way round, upper case, no suffix) once got "the file is damaged ... get a fresh copy"."""
    np.savez(tmp_path / "real.npz", **smpl_full)
    _save(tmp_path, smpl_full, "real.pkl")
    expected = load_body_model(tmp_path / "real.npz").model_id
    for source in ("real.npz", "real.pkl"):
        renamed = tmp_path / "renamed" / source / name
        renamed.parent.mkdir(parents=True)
        renamed.write_bytes((tmp_path / source).read_bytes())
        assert load_body_model(renamed).model_id == expected


def test_an_npz_saved_from_the_released_pickle_reads_its_sparse_regressor(tmp_path, smpl_full):
    """``np.savez(out, **pickle.load(release))`` keeps SMPL's scipy-sparse J_regressor as an object entry: it is
    read by the guarded unpickler (it was reported as missing), and the model is the release's."""
    import scipy.sparse as sp

    _save(tmp_path, smpl_full, "SMPL_NEUTRAL.pkl")
    path = tmp_path / "converted.npz"
    np.savez(path, **{**smpl_full, "J_regressor": np.array(sp.csc_matrix(smpl_full["J_regressor"]), object)})
    assert load_body_model(path).model_id == load_body_model(tmp_path / "SMPL_NEUTRAL.pkl").model_id
    with zipfile.ZipFile(path, "a") as archive:  # an object entry naming a global no model needs is refused
        archive.writestr("bs_type.npy", _npy_object_header() + b"cos\nsystem\n(S'echo'\ntR.")
    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        load_body_model(path)


def _npy_object_header() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buffer.getvalue()


def test_a_chumpy_expression_is_harmless_where_unused_and_named_where_needed(tmp_path, capsys, smpl_full):
    """SMPL's own files hold plain chumpy arrays; an expression (chumpy.ch_ops.add, ...) needs chumpy to compute.
    One in an entry no model reads (``J``) once refused the whole file; one in ``v_template`` is named, with a way
    to convert the file."""
    plain = load_body_model(_save(tmp_path, smpl_full, "SMPL_NEUTRAL.npz")).model_id
    extra = tmp_path / "with_J.pkl"
    _pickle_with_expression(extra, smpl_full, "J")
    assert load_body_model(extra).model_id == plain
    needed = tmp_path / "expression_template.pkl"
    _pickle_with_expression(needed, smpl_full, "v_template")
    _info(capsys, needed, "v_template is no plain array", "a chumpy expression", "np.savez")


def _pickle_with_expression(path, arrays, key):
    class add:  # noqa: N801 - chumpy.ch_ops's name; its value is not stored as "x"
        def __init__(self, a, b):
            self.a, self.b = a, b

    with model_files.stand_in("chumpy.ch_ops", add):
        path.write_bytes(pickle.dumps({**arrays, key: add(arrays["v_template"], arrays["v_template"])}, protocol=2))


def test_a_truncated_pickle_is_one_line(tmp_path, capsys, smpl_small):
    path = _save(tmp_path, smpl_small, "SMPL_NEUTRAL.pkl")
    path.write_bytes(path.read_bytes()[:5000])
    _info(capsys, path, "not a readable pickle", "get a fresh copy")


def test_a_folder_where_a_file_is_expected_is_one_line(tmp_path, capsys):
    folder = tmp_path / "SMPL_NEUTRAL.pkl"
    folder.mkdir()
    _info(capsys, folder, "a folder, not a body-model file")
    expect_error(capsys, ["prior", "info", folder], str(folder), "a folder, not a pose-prior file")


# --- arrays of the wrong shape, dtype or value -------------------------------------------------------------------
def _expected(key, arrays):
    """The shape MODEL_LAYOUT asks of ``key``, for the synthetic SMPL arrays."""
    sizes = {"V": SMALL_VERTICES, "J": 24, "9(J-1)": 207, "NB": arrays["shapedirs"].shape[-1], "F": len(arrays["f"])}
    return tuple(sizes[d] if isinstance(d, str) else d for d in MODEL_LAYOUT[key][0])


@pytest.mark.parametrize("key", sorted(MODEL_LAYOUT))
def test_every_model_array_of_the_wrong_shape_is_named_with_its_shape(tmp_path, capsys, smpl_small, key):
    arrays = dict(smpl_small)
    # one column short (shapedirs: one vertex short, as any number of shape directions is a valid layout)
    arrays[key] = arrays[key][:-1] if key == "shapedirs" else arrays[key][..., :-1]
    line = _info(capsys, _save(tmp_path, arrays), key, str(arrays[key].shape))
    if key != "kintree_table":  # (2, 23): named by its joint count instead
        assert str(_expected(key, smpl_small)) in line


def test_a_model_pickle_of_the_wrong_shape_is_named_too(tmp_path, capsys, smpl_small):
    arrays = dict(smpl_small, J_regressor=smpl_small["J_regressor"].T)  # transposed: (V, J)
    _info(capsys, _save(tmp_path, arrays, "SMPL_NEUTRAL.pkl"), "J_regressor", f"({SMALL_VERTICES}, 24)",
          f"expected (24, {SMALL_VERTICES}) = (J, V)")


@pytest.mark.parametrize("fault, fragments", [
    ("nan v_template", ("v_template holds NaN or infinite values", "(7, 1)")),
    ("inf weights", ("weights holds NaN or infinite values",)),
    ("faces out of range", ("f holds index 300, outside 0..299",)),
    ("negative face", ("f holds index -1",)),
    ("float faces", ("f has dtype float64, expected integers",)),
    ("parent after child", ("gives joint 4 the parent 7", "before it")),
    ("root with a parent", ("gives the root joint the parent 0",)),
    ("empty mesh", ("is empty",)),
])
def test_a_bad_value_is_named(tmp_path, capsys, smpl_small, fault, fragments):
    arrays = {k: v.copy() for k, v in smpl_small.items()}
    if fault == "nan v_template":
        arrays["v_template"][7, 1] = np.nan
    elif fault == "inf weights":
        arrays["weights"][3, 0] = np.inf
    elif fault == "faces out of range":
        arrays["f"][5, 2] = SMALL_VERTICES
    elif fault == "negative face":
        arrays["f"] = arrays["f"].astype(np.int64)
        arrays["f"][0, 0] = -1
    elif fault == "float faces":
        arrays["f"] = arrays["f"].astype(np.float64)
    elif fault == "parent after child":
        arrays["kintree_table"][0, 4] = 7
    elif fault == "root with a parent":
        arrays["kintree_table"][0, 0] = 0
    elif fault == "empty mesh":
        arrays["f"] = arrays["f"][:0]
    _info(capsys, _save(tmp_path, arrays), *fragments)


def test_an_smplx_file_without_its_landmarks_is_named_by_its_joint_count(tmp_path, capsys, smplx_small):
    arrays = dict(smplx_small)
    for key in ("lmk_faces_idx", "lmk_bary_coords", "hands_componentsl"):
        arrays.pop(key)  # now it reads as SMPL: 55 joints where SMPL has 24
    _info(capsys, _save(tmp_path, arrays, "SMPLX_NEUTRAL.npz"), "kintree_table", "55 joints", "an SMPL model has 24",
          "joint count of SMPL-X", "this one lacks hands_componentsl, lmk_faces_idx, lmk_bary_coords")


@pytest.mark.parametrize("directions", [0, 5])
def test_fewer_than_ten_shape_directions_is_refused_on_loading(tmp_path, capsys, smpl_small, directions):
    """fitloop fits and stores 10 betas: such a file once loaded, then failed in the fit (0: a reshape inside torch,
    an internal error) or when the fits were stored, after all the fitting (5: betas of the wrong shape)."""
    arrays = dict(smpl_small, shapedirs=smpl_small["shapedirs"][..., :directions])
    _info(capsys, _save(tmp_path, arrays, "SMPL_NEUTRAL.npz"), f"shapedirs has {directions} shape directions",
          "stores 10 betas")


def test_a_template_in_millimetres_is_refused(tmp_path, capsys, smpl_small):
    """Once loaded and fitted: 76 m of PA-MPJPE in the benchmark, a plausible loss in the fits table."""
    arrays = {**smpl_small, **{k: 1000 * smpl_small[k] for k in ("v_template", "shapedirs", "posedirs")}}
    _info(capsys, _save(tmp_path, arrays, "SMPL_NEUTRAL.npz"), "v_template spans", "in metres", "divide it by 1000")


def test_smplh_and_smplx_entries_are_checked(tmp_path, capsys, smplh_small, smplx_small):
    arrays = dict(smplh_small, hands_meanl=smplh_small["hands_meanl"][:30])
    _info(capsys, _save(tmp_path, arrays, "SMPLH_NEUTRAL.npz"), "hands_meanl", "(30,)", "expected (45,)")
    arrays = dict(smplx_small, lmk_faces_idx=smplx_small["lmk_faces_idx"].copy())
    arrays["lmk_faces_idx"][3] = len(arrays["f"])
    _info(capsys, _save(tmp_path, arrays, "SMPLX_NEUTRAL.npz"), "lmk_faces_idx",
          f"outside 0..{len(arrays['f']) - 1}")
    arrays = dict(smplx_small, shapedirs=smplx_small["shapedirs"][..., :16])
    _info(capsys, _save(tmp_path, arrays, "SMPLX_NEUTRAL.npz"), "shapedirs has 16 directions", "at least 20")
    arrays = dict(smplx_small)
    arrays.pop("hands_meanr")
    _info(capsys, _save(tmp_path, arrays, "SMPLX_NEUTRAL.npz"), "the SMPL-X model lacks hands_meanr")


def test_an_open_model_with_damaged_entries_is_named(tmp_path, capsys):
    with np.load(OPEN_MODELS["open-small"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    bad = dict(arrays, metadata=np.array("{not json"))
    _info(capsys, _save(tmp_path, bad, "open.npz"), "metadata is not JSON")
    bad = dict(arrays, vertex_ids=arrays["vertex_ids"] + 10**6)
    _info(capsys, _save(tmp_path, bad, "open.npz"), "vertex_ids holds index")
    bad = dict(arrays, keypoint_regressor=arrays["keypoint_regressor"][:, :10])
    _info(capsys, _save(tmp_path, bad, "open.npz"), "keypoint_regressor", "(30, 10)", "(30, 1229)")


@pytest.mark.parametrize("content, fragment", [
    ({"means": np.zeros((8, 69)), "covars": np.zeros((8, 69, 69)), "weights": np.ones(8)}, "a pose prior"),
    ({"v_template": np.zeros((10, 3))}, "missing ['shapedirs'"),
])
def test_a_pickle_of_another_kind_is_one_line(tmp_path, capsys, content, fragment):
    import pickle
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    _info(capsys, path, "not an SMPL-family model", fragment)
    path.write_bytes(pickle.dumps([np.zeros(3)], protocol=2))
    _info(capsys, path, "expected a pickled dict of arrays", "found list")


# --- SPIN's regressor files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, fragment", [
    ("npz", "it is a zip archive"), ("nan", "holds NaN"), ("shape", "array of shape (6890, 9), expected (9, 6890)"),
    ("object", "not a readable .npy"), ("text", "it is text"), ("folder", "a folder"), ("missing", "no such"),
])
def test_a_bad_extra_regressor_is_one_line(tmp_path, capsys, smpl_full_npz, fault, fragment):
    path = tmp_path / "J_regressor_extra.npy"
    good = np.full((9, 6890), 1 / 6890)
    if fault == "npz":
        np.savez(tmp_path / "extra.npz", good)
        (tmp_path / "extra.npz").rename(path)
    elif fault == "nan":
        good[4, 100] = np.nan
        np.save(path, good)
    elif fault == "shape":
        np.save(path, good.T)
    elif fault == "object":
        np.save(path, np.array([good, "x"], dtype=object), allow_pickle=True)
    elif fault == "text":
        path.write_text("0.1 0.2\n")
    elif fault == "folder":
        path.mkdir()
    expect_error(capsys, ["model", "info", "--model", smpl_full_npz, "--joint-regressor-extra", path], str(path),
                 fragment)


def test_a_bad_h36m_regressor_is_one_line(tmp_path, capsys):
    path = tmp_path / "J_regressor_h36m.npy"
    rows = np.full((17, 1229), 1 / 1229)
    rows[3, 3] = np.inf
    np.save(path, rows)
    expect_error(capsys, ["model", "info", "--model", "open-small", "--h36m-regressor", path], str(path),
                 "Human3.6M regressor", "holds NaN or infinite values")


# --- pose priors -------------------------------------------------------------------------------------------------
def _prior(k=2, d=69):
    return {"means": np.zeros((k, d)), "covars": np.stack([np.eye(d)] * k), "weights": np.full(k, 1 / k),
            "metadata": np.array(json.dumps({"source": "test"}))}


@pytest.mark.parametrize("fault, fragment", [
    ("truncated", "cut short"), ("text", "it is text"), ("nan", "NaN or infinite"), ("shape", "do not match means"),
    ("empty", "empty (0 bytes)"), ("model", "it looks like a body model"), ("metadata", "metadata is not JSON"),
])
def test_a_bad_prior_file_is_one_line(tmp_path, capsys, fault, fragment):
    path = tmp_path / "prior.npz"
    arrays = _prior()
    if fault == "nan":
        arrays["covars"][1, 5, 5] = np.nan
    elif fault == "shape":
        arrays["covars"] = arrays["covars"][:, :10, :10]
    elif fault == "model":
        arrays = {"v_template": np.zeros((5, 3))}
    elif fault == "metadata":
        arrays["metadata"] = np.array("{")
    np.savez(path, **arrays)
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif fault == "text":
        path.write_text("means 0 0 0\n")
    elif fault == "empty":
        path.write_bytes(b"")
    expect_error(capsys, ["prior", "info", path], str(path), fragment)


def test_a_pose_prior_over_the_wrong_values_is_refused_where_it_is_used(tmp_path):
    from core.errors import ModelFileError
    from fitting.priors import GaussianMixture, MaxMixturePrior, save_gmm
    path = tmp_path / "prior10.npz"
    raw = _prior(d=10)
    save_gmm(GaussianMixture(raw["means"], raw["covars"], raw["weights"]), path)
    with pytest.raises(ModelFileError, match=r"prior10\.npz: a mixture over 10 values; .* 69 body-pose values"):
        MaxMixturePrior.from_file(path)


# --- commands that write from a model file -----------------------------------------------------------------------
def test_convert_refuses_a_bad_destination_and_a_bad_source_and_leaves_nothing(tmp_path, capsys, smpl_small):
    source = _save(tmp_path, smpl_small, "SMPL_NEUTRAL.pkl")
    expect_error(capsys, ["model", "convert", source, tmp_path / "copy.pkl"], "copy.pkl", "must be named .npz")
    (tmp_path / "out.npz").mkdir()
    expect_error(capsys, ["model", "convert", source, tmp_path / "out.npz"], "out.npz", "a folder is in the way")
    source.write_bytes(source.read_bytes()[:3000])
    expect_error(capsys, ["model", "convert", source, tmp_path / "copy.npz"], str(source), "not a readable pickle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMPL_NEUTRAL.pkl", "out.npz"]


def test_prior_train_refuses_a_damaged_model_and_amass_file(tmp_path, capsys, smpl_small):
    model = tmp_path / "model.npz"
    arrays = dict(smpl_small, J_regressor=smpl_small["J_regressor"][:, :-1])
    np.savez(model, **arrays)
    (tmp_path / "bvh").mkdir()
    expect_error(capsys, ["prior", "train", "--bvh", tmp_path / "bvh", "--out", tmp_path / "p.npz", "--model", model],
                 str(model), "J_regressor", f"(24, {SMALL_VERTICES - 1})")
    amass = tmp_path / "clip_poses.npz"
    np.savez(amass, poses=np.zeros((20, 156)), mocap_framerate=np.array(120.0))
    amass.write_bytes(amass.read_bytes()[:-100])
    expect_error(capsys, ["prior", "train", "--amass", amass, "--out", tmp_path / "p.npz"], str(amass), "cut short")
    np.savez(amass, poses=np.full((20, 156), np.nan), mocap_framerate=np.array(120.0))
    expect_error(capsys, ["prior", "train", "--amass", amass, "--out", tmp_path / "p.npz"], str(amass), "NaN")
    assert not (tmp_path / "p.npz").exists()
