import importlib.util
import pickle
import pickletools
import sys

import hostile_pickles as hp
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
    with pytest.raises(ModelFileError, match="no such pickle file"):
        safe_pickle.load(tmp_path / "missing.pkl")


def test_shared_references_of_a_real_file_stay_shared_and_load():
    names = ["pelvis", "left_hip", "right_hip"]
    array = np.arange(12.0).reshape(4, 3)
    loaded = safe_pickle.loads(pickle.dumps({"a": array, "b": array, "names": names, "again": names}, protocol=2))
    assert loaded["names"] is loaded["again"] and loaded["names"] == names  # resolved once, not copied
    assert type(loaded["a"]) is np.ndarray and np.shares_memory(loaded["a"], loaded["b"])
    np.testing.assert_array_equal(loaded["a"], array)


def _shared_list_pickle(length: int, references: int) -> bytes:
    """A list of ``references`` references to one list of ``length`` ints (memo 0)."""
    inner = hp.MARK + b"".join(hp.integer(i % 200) for i in range(length)) + hp.LIST + hp.put(0)
    return hp.PROTO2 + hp.MARK + inner + hp.get(0) * (references - 1) + hp.LIST + hp.STOP


def test_the_expansion_bound_is_proportional_to_the_opcodes():
    # 10 references to a 1000-element list expand to ~10,000 objects from ~1,000 opcodes: within the bound
    loaded = safe_pickle.loads(_shared_list_pickle(1000, 10), "ten.pkl")
    assert len(loaded) == 10 and loaded[0] is loaded[9] and len(loaded[0]) == 1000
    # 100 references expand to ~100,000 from ~1,100 opcodes: past 16 x opcodes + 10,000
    assert 100 * 1001 > safe_pickle.expansion_limit(1100)
    with pytest.raises(UnsafePickleError, match=r"hundred\.pkl: shared references expand .*billion laughs"):
        safe_pickle.loads(_shared_list_pickle(1000, 100), "hundred.pkl")


@pytest.mark.parametrize("data, reason", [
    (hp.self_containing_list(), "contains itself"),
    (hp.huge_reconstruct(10**12), r"declares shape \(1000000000000,\) of float64 \(8000000000000 bytes\), more than the \d+ bytes"),
    (hp.huge_object_setstate(10**12), r"object array declares shape \(1000000000000,\) .* holds 0 elements"),
    (hp.direct_ndarray_call(10**12), "calls numpy.ndarray directly"),
    (hp.huge_sparse(10**6), r"sparse matrix declares shape \(1000000, 1000000\)"),
    (hp.model_dict(hp.NONE + hp.put(1000)), "memo index 1000 at opcode"),
])
def test_structural_bounds_refuse_in_one_line(data, reason):
    # the cases whose failure without the bound is fast (RecursionError, MemoryError); the hanging ones run in
    # subprocesses in tests/faults/test_fault_hostile_pickle.py
    with pytest.raises(UnsafePickleError, match=f"x.pkl: .*{reason}.*damaged or hostile"):
        safe_pickle.loads(data, "x.pkl")


def test_an_array_whose_data_does_not_fill_its_shape_is_refused():
    state = (hp.MARK + hp.integer(1) + hp.integer(10) + hp.TUPLE1 + hp.dtype_call("f8") + hp.NEWFALSE
             + b"U\x08" + bytes(8) + b"t")  # 10 float64 declared, 8 bytes given
    with pytest.raises(UnsafePickleError, match=r"declares shape \(10,\) of float64 \(80 bytes\) but holds 8"):
        safe_pickle.loads(hp.model_dict(hp.reconstruct_call(0) + state + hp.BUILD), "short.pkl")


def test_the_opcode_cap(monkeypatch):
    monkeypatch.setattr(safe_pickle, "MAX_OPCODES", 500)
    assert safe_pickle.loads(_shared_list_pickle(400, 1), "small.pkl")[0] == [i % 200 for i in range(400)]
    with pytest.raises(UnsafePickleError, match="more than 500 opcodes"):
        safe_pickle.loads(_shared_list_pickle(600, 1), "big.pkl")


def test_the_first_pass_reads_opcodes_as_pickletools_does(tmp_path):
    # the reference: pickletools.genops; the first pass skips counted data instead of copying it, nothing else
    model_files.write_chumpy_pickle(tmp_path / "py2.pkl", model_files.smpl_arrays(num_vertices=50))  # BINSTRINGs
    value = {"a": np.arange(6.0).reshape(2, 3), "b": [1, 2.5, "text", b"bytes", None, True, 10**30, (1, 2)],
             "s": {1, 2}, "f": frozenset({3}), "big": b"x" * 70_000, "long": "é" * 70_000, "ba": bytearray(b"ab")}
    pickles = [pickle.dumps(value, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for protocol, data in enumerate(pickles + [(tmp_path / "py2.pkl").read_bytes()]):
        expected = [(op.name, None if op.arg in safe_pickle._COUNTED_ARGS else arg)
                    for op, arg, _ in pickletools.genops(data)]
        assert [(op.name, arg) for op, arg in safe_pickle._opcodes(data)] == expected, protocol
    with pytest.raises(safe_pickle._Malformed, match="runs past the end"):
        list(safe_pickle._opcodes(pickle.dumps(b"x" * 1000, protocol=3)[:-20]))
