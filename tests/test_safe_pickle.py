import importlib.util
import pickle
import sys

import model_files
import numpy as np
import pytest
import scipy.sparse as sp

from core.errors import ModelFileError, UnsafePickleError
from fitting import safe_pickle


def test_chumpy_pickle_loads_without_chumpy(tmp_path):
    assert importlib.util.find_spec("chumpy") is None, "this test needs an environment without chumpy"
    arrays = model_files.smpl_arrays(num_vertices=50)
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    model_files.write_chumpy_pickle(path, arrays)
    assert b"chumpy.ch" in path.read_bytes() and b"scipy.sparse" in path.read_bytes()
    loaded = safe_pickle.load(path)
    assert "chumpy" not in sys.modules
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        assert isinstance(loaded[key], np.ndarray), key
        np.testing.assert_array_equal(loaded[key], arrays[key])
    assert loaded["bs_style"] == "lbs"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.mkdir, (str(self.marker),))


def test_foreign_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "was-run"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((2, 3)), "hook": _RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*posix\.mkdir|evil\.pkl.*os\.mkdir"):
        safe_pickle.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [b"builtins\neval", b"subprocess\nPopen", b"torch\nload"])
def test_other_dangerous_globals_are_refused(global_name):
    data = b"\x80\x02c" + global_name + b"\nq\x00."
    with pytest.raises(UnsafePickleError, match="refusing"):
        safe_pickle.loads(data, "crafted.pkl")


def test_sparse_matrix_and_sklearn_gmm_state():
    matrix = sp.csc_matrix(np.eye(3, 7) * 2.0)
    assert np.array_equal(safe_pickle.loads(pickle.dumps({"J": matrix}, protocol=2))["J"], matrix.toarray())
    # An old sklearn GMM pickles as a class reference plus its __dict__; emulate the bytes without sklearn.
    state = {"means_": np.ones((2, 3)), "covars_": np.stack([np.eye(3)] * 2), "weights_": np.array([0.5, 0.5])}
    data = (b"\x80\x02csklearn.mixture.gmm\nGMM\nq\x00)\x81q\x01" + pickle.dumps(state, protocol=2)[2:-1] + b"b.")
    loaded = safe_pickle.loads(data, "gmm_08.pkl")
    np.testing.assert_array_equal(loaded["means_"], state["means_"])


def test_corrupt_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"\x80\x02}q\x00(X\x03")  # truncated
    with pytest.raises(ModelFileError, match="broken.pkl: not a readable pickle"):
        safe_pickle.load(path)
    with pytest.raises(ModelFileError, match="no such file"):
        safe_pickle.load(tmp_path / "missing.pkl")
