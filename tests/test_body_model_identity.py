"""A body model is known by its content: `fitloop model convert`, a rename or a re-save keeps its id, any change of
a value that defines the mesh or the joints gives another one, and the id is the same in every process.

The model files are synthetic, in the real SMPL layout (tests/model_files.py: a Python-2 pickle with chumpy arrays,
a scipy sparse J_regressor, uint32 faces, the root's parent as 2**32 - 1), as the SMPL release ships them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import model_files
import numpy as np
import pytest

from fitloop.cli import main as fitloop
from fitting.body_model import IDENTITY_KEYS, MODEL_ID_PATTERN, load_body_model, read_model_arrays
from fitting.digest import content_digest

REPO = Path(__file__).resolve().parents[1]
SMPL_ROOT_PARENT = 2**32 - 1  # how the SMPL release's kintree_table names the root's parent (uint32 -1)


@pytest.fixture(scope="module")
def smpl_pkl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("identity") / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    model_files.write_chumpy_pickle(path, model_files.smpl_arrays())
    return path


@pytest.fixture(scope="module")
def smpl_id(smpl_pkl) -> str:
    return load_body_model(smpl_pkl).model_id


def _resave(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def test_the_id_is_family_and_content_digest(smpl_id):
    assert MODEL_ID_PATTERN.match(smpl_id) and smpl_id.startswith("smpl:")
    assert "basicModel" not in smpl_id  # no file name in it


def test_convert_keeps_the_id(smpl_pkl, smpl_id, tmp_path, capsys):
    out = tmp_path / "SMPL_NEUTRAL.npz"
    assert fitloop(["model", "convert", str(smpl_pkl), str(out)]) == 0
    assert f"id {smpl_id}, the same as" in capsys.readouterr().out
    assert load_body_model(out).model_id == smpl_id


def test_rename_and_resave_in_other_dtypes_keep_the_id(smpl_pkl, smpl_id, tmp_path):
    renamed = tmp_path / "my_body.pkl"
    shutil.copy(smpl_pkl, renamed)
    assert load_body_model(renamed).model_id == smpl_id
    arrays, _ = read_model_arrays(smpl_pkl)
    assert arrays["f"].dtype == np.uint32 and arrays["kintree_table"][0, 0] == SMPL_ROOT_PARENT
    # float32 values, int64 faces, the root's parent as -1 (as many converters write it): the same model
    changed = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    changed["f"] = arrays["f"].astype(np.int64)
    changed["kintree_table"] = arrays["kintree_table"].astype(np.int32)
    changed["kintree_table"][0, 0] = -1
    assert load_body_model(_resave(tmp_path / "float32.npz", changed)).model_id == smpl_id
    # float64 values within half a float32 step of the same float32 values: the same model (fitting.digest)
    exact = dict(arrays, v_template=arrays["v_template"].astype(np.float32).astype(np.float64))
    nudged = dict(arrays, v_template=exact["v_template"] * (1 + 1e-12))
    assert (load_body_model(_resave(tmp_path / "exact.npz", exact)).model_id
            == load_body_model(_resave(tmp_path / "nudged.npz", nudged)).model_id)


def _changed(arrays: dict, key: str) -> dict:
    """``arrays`` with one value of ``key`` changed (a different model)."""
    value = np.array(arrays[key])
    if key == "kintree_table":
        value[0, 23] = 20         # the right hand hangs from the left wrist
    elif key == "f":
        value[0, 0] = (value[0, 0] + 1) % 6890
    else:
        value.flat[7] += 1e-3
    return dict(arrays, **{key: value})


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_changing_one_value_of_any_defining_array_changes_the_id(smpl_pkl, smpl_id, tmp_path, key):
    arrays, _ = read_model_arrays(smpl_pkl)
    changed = load_body_model(_resave(tmp_path / f"{key}.npz", _changed(arrays, key))).model_id
    assert changed != smpl_id and changed.startswith("smpl:")


def test_an_extra_joint_regressor_changes_the_id_and_its_file_name_does_not(smpl_pkl, smpl_id, tmp_path):
    extra = np.zeros((9, 6890))
    extra[np.arange(9), np.arange(9) * 100] = 1.0
    np.save(tmp_path / "J_regressor_extra.npy", extra)
    np.save(tmp_path / "renamed_extra.npy", extra)
    with_extra = load_body_model(smpl_pkl, joint_regressor_extra=tmp_path / "J_regressor_extra.npy").model_id
    assert with_extra != smpl_id
    assert load_body_model(smpl_pkl, joint_regressor_extra=tmp_path / "renamed_extra.npy").model_id == with_extra
    extra[0, 0] = 0.5
    np.save(tmp_path / "other_extra.npy", extra)
    assert load_body_model(smpl_pkl, joint_regressor_extra=tmp_path / "other_extra.npy").model_id != with_extra


def test_the_open_models_ids_are_the_same_in_another_process():
    here = {name: load_body_model(name).model_id for name in ("open", "open-small")}
    assert here["open"] != here["open-small"] and all(i.startswith("open:") for i in here.values())
    code = "from fitting.body_model import load_body_model as m; print(m('open').model_id, m('open-small').model_id)"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == [here["open"], here["open-small"]]


def test_the_content_digest_is_pinned():
    """The canonical form is a stored contract (every fit and checkpoint names its model by it): a change here
    orphans every table. float64 / float32, -0.0 / 0.0, uint32 / int64 are the same values."""
    pinned = "8361dac23b1ad7d5"
    wide = [("x", np.array([[0.5, -0.0], [1.25, 3.0]])), ("i", np.array([1, 2, 3], np.uint32)),
            ("names", ["a", "b"]), ("none", None)]
    narrow = [("x", np.array([[0.5, 0.0], [1.25, 3.0]], np.float32)), ("i", np.array([1, 2, 3], np.int64)),
              ("names", np.array(["a", "b"])), ("none", None)]
    assert content_digest(wide) == content_digest(narrow) == pinned
    reshaped = [("x", np.array([0.5, 0.0, 1.25, 3.0]))] + wide[1:]
    renamed = [("y", wide[0][1])] + wide[1:]
    assert len({pinned, content_digest(reshaped), content_digest(renamed), content_digest(wide[::-1])}) == 4
