"""Synthetic model files in the real SMPL / SMPL-H / SMPL-X layouts (keys, shapes, pickle style), for tests.

The geometry is a crude articulated blob, not a human: these files exercise the loaders, not the fitting.
"""
from __future__ import annotations

import contextlib
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.joints import SMPL_PARENTS

SMPL_VERTICES, SMPLX_VERTICES = 6890, 10475


def _rest_joints() -> np.ndarray:
    """A T-pose skeleton in metres (Y up, facing +Z, left is +X), SMPL joint order."""
    return np.array([
        [0, 0.9, 0], [0.09, 0.82, 0], [-0.09, 0.82, 0], [0, 1.0, 0], [0.1, 0.45, 0], [-0.1, 0.45, 0],
        [0, 1.12, 0], [0.1, 0.08, 0], [-0.1, 0.08, 0], [0, 1.25, 0], [0.1, 0.02, 0.1], [-0.1, 0.02, 0.1],
        [0, 1.45, 0], [0.08, 1.38, 0], [-0.08, 1.38, 0], [0, 1.6, 0], [0.18, 1.4, 0], [-0.18, 1.4, 0],
        [0.45, 1.4, 0], [-0.45, 1.4, 0], [0.7, 1.4, 0], [-0.7, 1.4, 0], [0.78, 1.4, 0], [-0.78, 1.4, 0]])


def smpl_arrays(num_vertices: int = SMPL_VERTICES, num_betas: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    joints = _rest_joints()
    owner = rng.permutation(np.arange(num_vertices) % 24)  # every joint owns some vertices
    v_template = joints[owner] + rng.normal(scale=0.03, size=(num_vertices, 3))
    weights = np.zeros((num_vertices, 24))
    weights[np.arange(num_vertices), owner] = 1.0
    j_regressor = np.zeros((24, num_vertices))
    for j in range(24):
        members = np.flatnonzero(owner == j)
        j_regressor[j, members] = 1.0 / len(members)
    return {
        "v_template": v_template, "weights": weights, "J_regressor": j_regressor,
        "shapedirs": rng.normal(scale=0.01, size=(num_vertices, 3, num_betas)),
        "posedirs": rng.normal(scale=0.001, size=(num_vertices, 3, 207)),
        "kintree_table": np.stack([np.array(SMPL_PARENTS, dtype=np.int64) % (2**32), np.arange(24)]),
        "f": rng.integers(0, num_vertices, size=(2 * num_vertices, 3)).astype(np.uint32),
    }


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the SMPL release pickles (protocol 2) hold array data."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_chumpy_pickle(path: Path, arrays: dict[str, np.ndarray], chumpy_keys=("v_template", "shapedirs", "posedirs"),
                        sparse_keys=("J_regressor",)) -> None:
    """A pickle laid out like the SMPL release: chumpy `Ch` arrays, a scipy csc J_regressor, Python-2 strings.

    A throw-away module named `chumpy.ch` is registered only while pickling, so the file names the real
    global `chumpy.ch.Ch`; it is removed afterwards, so loading must not need chumpy.
    """
    class Ch:  # mimics chumpy: the value lives in the instance dict under "x"
        def __init__(self, x):
            self.x = x

    with stand_in("chumpy.ch", Ch):
        payload = {}
        for key, value in arrays.items():
            if key in chumpy_keys:
                payload[key] = Ch(value)
            elif key in sparse_keys:
                payload[key] = sp.csc_matrix(value)
            else:
                payload[key] = value
        payload["bs_style"] = "lbs"
        with open(path, "wb") as fh:
            _Py2Pickler(fh, protocol=2).dump(payload)


@contextlib.contextmanager
def stand_in(module: str, cls: type):
    """Register throw-away modules ``module`` (and its parent package) holding ``cls`` under its own name while the
    block runs, so a pickle written inside names the global ``module.<name>``; removed afterwards, so loading must
    not need the real package (chumpy)."""
    parent = module.split(".")[0]
    modules = {parent: types.ModuleType(parent), module: types.ModuleType(module)}
    cls.__module__, cls.__qualname__ = module, cls.__name__
    setattr(modules[module], cls.__name__, cls)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _hand_parents(wrist: int, first: int) -> list[int]:
    """MANO order: five fingers (index, middle, pinky, ring, thumb) of three joints each, rooted at the wrist."""
    parents = []
    for finger in range(5):
        base = first + 3 * finger
        parents += [wrist, base, base + 1]
    return parents


def _articulated(num_vertices: int, parents: list[int], rest: np.ndarray, rng) -> dict[str, np.ndarray]:
    num_joints = len(parents)
    owner = rng.permutation(np.arange(num_vertices) % num_joints)
    weights = np.zeros((num_vertices, num_joints))
    weights[np.arange(num_vertices), owner] = 1.0
    j_regressor = np.zeros((num_joints, num_vertices))
    for j in range(num_joints):
        members = np.flatnonzero(owner == j)
        j_regressor[j, members] = 1.0 / max(len(members), 1)
    return {"v_template": rest[owner] + rng.normal(scale=0.02, size=(num_vertices, 3)), "weights": weights,
            "J_regressor": j_regressor,
            "kintree_table": np.stack([np.array(parents) % (2**32), np.arange(num_joints)]).astype(np.int64)}


def smplh_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """SMPL-H layout: 52 joints (22 body + 2 x 15 hand), hand PCA components and means."""
    rng = np.random.default_rng(seed)
    body = _rest_joints()[:22]
    parents = list(SMPL_PARENTS[:22]) + _hand_parents(20, 22) + _hand_parents(21, 37)
    rest = np.concatenate([body, np.repeat(body[[20]], 15, 0), np.repeat(body[[21]], 15, 0)])
    arrays = _articulated(SMPL_VERTICES, parents, rest, rng)
    arrays.update(shapedirs=rng.normal(scale=0.01, size=(SMPL_VERTICES, 3, 16)),
                  posedirs=rng.normal(scale=0.001, size=(SMPL_VERTICES, 3, 51 * 9)),
                  f=rng.integers(0, SMPL_VERTICES, size=(13776, 3)).astype(np.uint32),
                  hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
                  hands_meanl=rng.normal(scale=0.1, size=45), hands_meanr=rng.normal(scale=0.1, size=45))
    return arrays


def smplx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """SMPL-X layout: 55 joints (22 body, jaw, 2 eyes, 2 x 15 hand), 300+100 shape/expression, landmarks."""
    rng = np.random.default_rng(seed)
    body = _rest_joints()[:22]
    parents = list(SMPL_PARENTS[:22]) + [15, 15, 15] + _hand_parents(20, 25) + _hand_parents(21, 40)
    rest = np.concatenate([body, np.repeat(body[[15]], 3, 0), np.repeat(body[[20]], 15, 0),
                           np.repeat(body[[21]], 15, 0)])
    arrays = _articulated(SMPLX_VERTICES, parents, rest, rng)
    faces = rng.integers(0, SMPLX_VERTICES, size=(20908, 3)).astype(np.uint32)
    arrays.update(shapedirs=rng.normal(scale=0.01, size=(SMPLX_VERTICES, 3, 400)),
                  posedirs=rng.normal(scale=0.001, size=(SMPLX_VERTICES, 3, 54 * 9)), f=faces,
                  hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
                  hands_meanl=rng.normal(scale=0.1, size=45), hands_meanr=rng.normal(scale=0.1, size=45),
                  lmk_faces_idx=rng.integers(0, len(faces), 51), lmk_bary_coords=np.full((51, 3), 1 / 3),
                  dynamic_lmk_faces_idx=rng.integers(0, len(faces), (79, 17)),
                  dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3))
    return arrays
