"""Load SMPL-family and SMPLify pickles without chumpy and without running code from the file.

The released SMPL / SMPL-H / SMPL-X `.pkl` files are Python-2 pickles whose arrays are `chumpy.ch.Ch` objects
and whose `J_regressor` is a `scipy.sparse` matrix; SMPLify's `gmm_08.pkl` is a dict of arrays (or, in old
copies, an sklearn GMM). chumpy does not import on numpy >= 1.24, and `pickle.load` on an untrusted file can
run arbitrary code. `load` unpickles with an allow-list: numpy arrays and dtypes, a few builtins, and stand-ins
for chumpy arrays, scipy sparse matrices and sklearn mixtures that only record their state. Any other global
(`os.system`, `builtins.eval`, a class of some other package, ...) raises `UnsafePickleError` before anything
from the file is called. After unpickling, stand-ins are replaced by plain numpy arrays (or, for an sklearn
mixture, a dict of its attributes), so the result holds only builtins and numpy.
"""
from __future__ import annotations

import copyreg
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelFileError, UnsafePickleError

try:  # numpy >= 2 moved the pickle helpers; old pickles name numpy.core.multiarray
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray


class _StateRecorder:
    """Base of the stand-ins: accepts any constructor arguments and keeps the pickled state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # NEWOBJ/REDUCE may call it; keep args only
        pass

    def __setstate__(self, state: Any) -> None:
        self._state = state


class _ChumpyArray(_StateRecorder):
    """Stands in for `chumpy.ch.Ch` (and subclasses): its `x` holds the array."""

    qualname = "chumpy.ch.Ch"


class _SparseMatrix(_StateRecorder):
    """Stands in for scipy.sparse csc/csr/coo matrices; rebuilt with scipy from `data/indices/indptr/_shape`."""

    qualname = "scipy.sparse matrix"


class _SklearnMixture(_StateRecorder):
    """Stands in for an old sklearn GMM / GaussianMixture; its state dict holds means_, covars_, weights_."""

    qualname = "sklearn mixture"


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """`copyreg._reconstructor`, restricted to the stand-ins (protocol 0/1 pickles of new-style objects)."""
    if not (isinstance(cls, type) and issubclass(cls, _StateRecorder)) or base is not object:
        raise UnsafePickleError(f"copyreg._reconstructor called on {cls!r}/{base!r}: refused")
    return cls.__new__(cls)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocols 0-2; only str -> bytes is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}): refused")
    return text.encode(encoding)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar
_ALLOWED[("copyreg", "__newobj__")] = copyreg.__newobj__  # type: ignore[attr-defined]

_SPARSE_MODULES = ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                   "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse._arrays")
_SKLEARN_MIXTURES = {("sklearn.mixture.gmm", "GMM"), ("sklearn.mixture._gaussian_mixture", "GaussianMixture"),
                     ("sklearn.mixture.gaussian_mixture", "GaussianMixture")}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyArray
        if module in _SPARSE_MODULES and name.endswith(("_matrix", "_array")):
            return _SparseMatrix
        if (module, name) in _SKLEARN_MIXTURES:
            return _SklearnMixture
        raise UnsafePickleError(
            f"{self._source}: the pickle names the global {module}.{name}, which a body-model or prior file never "
            f"needs; refusing to load it (nothing from the file was run). If this is a genuine SMPL/SMPLify file, "
            f"convert it on a trusted machine to .npz or report the global.")


def _resolve(obj: Any, where: str) -> Any:
    """Replace stand-ins by numpy arrays (recursively through dicts, lists and tuples)."""
    if isinstance(obj, _ChumpyArray):
        state = obj._state if isinstance(obj._state, dict) else {}
        if "x" not in state:
            raise ModelFileError(
                f"{where}: a chumpy object without a plain array value ('x'); only chumpy arrays (Ch), not "
                f"chumpy expressions, can be read without chumpy")
        return np.asarray(_resolve(state["x"], where))
    if isinstance(obj, _SparseMatrix):
        state = obj._state if isinstance(obj._state, dict) else {}
        try:
            import scipy.sparse as sp
            shape = tuple(state.get("_shape") or state["shape"])
            fmt = state.get("format", "csc")
            if fmt == "coo":
                row, col = state.get("row", state.get("coords", (None, None))[0]), state.get("col")
                return sp.coo_matrix((state["data"], (row, col)), shape=shape).toarray()
            cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            return cls((state["data"], state["indices"], state["indptr"]), shape=shape).toarray()
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{where}: a scipy sparse matrix whose state could not be read ({err})") from None
    if isinstance(obj, _SklearnMixture):
        state = obj._state if isinstance(obj._state, dict) else {}
        return {k: _resolve(v, f"{where}.{k}") for k, v in state.items()}
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _resolve(v, f"{where}[{k!r}]")
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, _StateRecorder):  # pragma: no cover - every stand-in is handled above
        raise ModelFileError(f"{where}: unreadable {obj.qualname} object")
    return obj


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` with the allow-list; chumpy arrays and sparse matrices come back as numpy arrays."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as err:
        raise ModelFileError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from None
    return _resolve(obj, source)


def load(path: str | Path) -> Any:
    """Unpickle the file at `path` with the allow-list (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    return loads(path.read_bytes(), str(path))
