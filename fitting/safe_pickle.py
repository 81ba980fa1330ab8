"""Load SMPL-family and SMPLify pickles without chumpy and without running code from the file.

The released SMPL / SMPL-H / SMPL-X `.pkl` files are Python-2 pickles whose arrays are `chumpy.ch.Ch` objects
and whose `J_regressor` is a `scipy.sparse` matrix; SMPLify's `gmm_08.pkl` is a dict of arrays (or, in old
copies, an sklearn GMM). chumpy does not import on numpy >= 1.24, and `pickle.load` on an untrusted file can
run arbitrary code. `load` unpickles with an allow-list: numpy arrays and dtypes, a few builtins, and stand-ins
for chumpy arrays, scipy sparse matrices and sklearn mixtures that only record their state. Any other global
(`os.system`, `builtins.eval`, a class of some other package, ...) raises `UnsafePickleError` before anything
from the file is called. After unpickling, stand-ins are replaced by plain numpy arrays (or, for an sklearn
mixture, a dict of its attributes; for a chumpy expression, whose value only chumpy could compute, a
`ChumpyExpression` naming where it was), so the result holds only builtins, numpy and those markers.

A few hundred bytes of pickle can also describe work that never ends. The opcode stream is a program for a stack
machine with a memo: a list put in the memo and fetched twice into the next list, thirty times over, is a
307-byte "billion laughs" whose copy, conversion to an array or hash takes 2**30 steps; a chain of nested
containers is deeper than any recursion; an allowed `numpy.ndarray` may declare a shape of 10**12 elements. So
`loads` bounds what a file may ask for, and refuses anything past a bound with an `UnsafePickleError` that names
the file and says it is damaged or hostile, before the structure is expanded:

* before unpickling, one pass over the opcodes (`pickletools`' reading of them, nothing built) refuses: more than
  `MAX_OPCODES` opcodes; a memo index past the objects read so far (the C unpickler sizes its memo by the index);
  counted data that runs past the end of the file; nesting deeper than `MAX_DEPTH`; an object whose expanded
  size (every shared reference counted each time it is reached) exceeds `expansion_limit` of the opcodes read;
* while unpickling, arrays are made only at sizes the file can back: `_reconstruct` and `ndarray.__setstate__`
  check the declared shape x itemsize against the file's length and the data in hand before numpy allocates;
  calling `numpy.ndarray` directly is refused; a sparse matrix's dense size is capped (`MAX_DENSE_ELEMENTS`);
* after unpickling, stand-ins are replaced once per object (shared references stay shared, so nothing is
  copied), and a cycle, nesting past `MAX_DEPTH` or an expanded size past `expansion_limit` is refused, counted
  exactly on the objects built (the first pass cannot see containers filled after they were shared).
"""
from __future__ import annotations

import copyreg
import io
import operator
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelFileError, UnsafePickleError
from fitting.files import DAMAGED, looks_like, require_file

try:  # numpy >= 2 moved the pickle helpers; old pickles name numpy.core.multiarray
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

# Bounds on what a pickle may ask for (module docstring). A released SMPL, SMPL-H or SMPL-X .pkl or SMPLify's
# gmm_08.pkl has a few thousand opcodes, nests about 6 deep and shares only small objects (dtypes, strings).
MAX_OPCODES = 4_000_000
MAX_DEPTH = 100
EXPANSION_PER_OPCODE = 16  # an object's expanded size may reach 16 x the opcodes read, plus the slack below
EXPANSION_SLACK = 10_000
MAX_DENSE_ELEMENTS = 1 << 25  # a sparse matrix's rows x cols (SMPL-X's J_regressor: 55 x 10475 = 576,125)
MAX_ARRAY_DIMS = 64  # numpy's own limit (NPY_MAXDIMS)
_COUNT_CAP = 1 << 62  # element counts are computed up to here (shown in messages), never as huge products


def expansion_limit(opcodes: int) -> int:
    """The most objects a pickle of ``opcodes`` opcodes may expand to, every shared reference counted each time."""
    return EXPANSION_PER_OPCODE * opcodes + EXPANSION_SLACK


class _Refused(Exception):
    """A bound was crossed inside the unpickler (the reason); `loads` names the file and raises UnsafePickleError."""


class _Malformed(Exception):
    """The opcode stream is not a well-formed pickle (the reason)."""


def _hostile(source: str, reason: str) -> UnsafePickleError:
    return UnsafePickleError(f"{source}: {reason}; refusing to load it: the file is damaged or hostile (nothing "
                             f"was expanded). Get a fresh copy of the file from its source")


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


@dataclass(frozen=True)
class ChumpyExpression:
    """What a chumpy expression (no plain value 'x') is read as: a reader that needs its value must refuse it
    (`fitting.body_model.read_model_arrays` skips such entries, so one the model does not use is harmless)."""

    where: str


class _ChumpyArray(_StateRecorder):
    """Stands in for `chumpy.ch.Ch` (and subclasses): its `x` holds the array."""

    qualname = "chumpy.ch.Ch"


class _SparseMatrix(_StateRecorder):
    """Stands in for scipy.sparse csc/csr/coo matrices; rebuilt with scipy from `data/indices/indptr/_shape`."""

    qualname = "scipy.sparse matrix"


class _SklearnMixture(_StateRecorder):
    """Stands in for an old sklearn GMM / GaussianMixture; its state dict holds means_, covars_, weights_."""

    qualname = "sklearn mixture"


def _element_count(shape: Any, cap: int) -> int:
    """The number of elements of an array of ``shape`` (an int or a sequence of ints), or ``cap + 1`` when it
    is more than ``cap`` (computed without multiplying huge numbers). TypeError/ValueError for a bad shape."""
    dims = [operator.index(d) for d in ((shape,) if isinstance(shape, int) else tuple(shape))]
    if len(dims) > MAX_ARRAY_DIMS or any(d < 0 for d in dims):
        raise ValueError(f"invalid array shape {tuple(dims)}")
    if 0 in dims:
        return 0
    count = 1
    for d in dims:
        count *= min(d, cap + 1)
        if count > cap:
            return cap + 1
    return count


def _shape_text(shape: Any) -> str:
    text = str(tuple(shape) if isinstance(shape, (tuple, list)) else shape)
    return text if len(text) <= 80 else text[:77] + "..."


class _PickledArray(np.ndarray):
    """`numpy.ndarray` as a pickle names it. numpy's own pickles build an array with `_reconstruct` and fill it by
    ``__setstate__``; here the state is checked first (the declared size must be the data in hand), and calling
    the class directly (which allocates any declared shape) is refused. Replaced by plain ndarrays after loading."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise _Refused("the pickle calls numpy.ndarray directly with a shape of its choosing (numpy's own pickles "
                       "never do)")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise TypeError("an ndarray state is not a 4- or 5-tuple")
        shape, dtype, _, data = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise TypeError(f"an ndarray state with dtype {type(dtype).__name__}")
        held = len(data) if isinstance(data, (bytes, bytearray, str, list)) else 0
        count = _element_count(shape, _COUNT_CAP)
        declared = f"shape {_shape_text(shape)} of {dtype}"
        if dtype.hasobject:
            if not isinstance(data, list) or count != held:
                raise _Refused(f"an object array declares {declared} but holds {held} elements")
        elif dtype.itemsize == 0 and count:
            raise _Refused(f"an array declares {declared}: elements of zero size")
        elif count * dtype.itemsize != held:
            size = f" ({count * dtype.itemsize} bytes)" if count <= _COUNT_CAP else ""
            raise _Refused(f"an array declares {declared}{size} but holds {held} bytes of data")
        super().__setstate__(state)


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
    ("numpy", "ndarray"): _PickledArray,
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
_ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
for _module in _ARRAY_MODULES:
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar
_ALLOWED[("copyreg", "__newobj__")] = copyreg.__newobj__  # type: ignore[attr-defined]

_SPARSE_MODULES = ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                   "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse._arrays")
_SKLEARN_MIXTURES = {("sklearn.mixture.gmm", "GMM"), ("sklearn.mixture._gaussian_mixture", "GaussianMixture"),
                     ("sklearn.mixture.gaussian_mixture", "GaussianMixture")}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str, size: int) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._size = size  # bytes in the file: no array may declare more

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's `_reconstruct(ndarray, shape, dtype)`, which allocates the declared shape: only when the file
        could hold that many bytes (numpy's pickles declare (0,) and fill the array by __setstate__)."""
        if subtype is not _PickledArray:
            raise _Refused(f"numpy's _reconstruct called on {getattr(subtype, '__name__', type(subtype).__name__)}")
        itemsize = np.dtype(dtype).itemsize
        count = _element_count(shape, _COUNT_CAP)
        if count > self._size or count * itemsize > self._size:
            size = f" ({count * itemsize} bytes)" if count <= _COUNT_CAP else ""
            raise _Refused(f"an array declares shape {_shape_text(shape)} of {np.dtype(dtype)}{size}, more than the "
                           f"{self._size} bytes of the file can hold")
        return _multiarray._reconstruct(_PickledArray, shape, dtype)

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in _ARRAY_MODULES:
            return self._reconstruct
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


# --- the pass over the opcodes before unpickling ----------------------------------------------------------------
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "READONLY_BUFFER"})


# Arguments that are counted data (a length, then that many bytes), by the width of their length: the first pass
# skips the data instead of reading it (a model pickle is mostly a few large strings of array bytes).
_COUNTED_ARGS = {pickletools.string4: (4, True), pickletools.bytes4: (4, False), pickletools.unicodestring4: (4, False),
                 pickletools.bytes8: (8, False), pickletools.unicodestring8: (8, False),
                 pickletools.bytearray8: (8, False)}


def _opcodes(data: bytes):
    """(opcode, argument) for each opcode of ``data`` up to STOP, as `pickletools.genops` gives them, except that
    counted data is checked against the end of ``data`` and skipped (its argument is None), not copied."""
    stream = io.BytesIO(data)
    while True:
        code = stream.read(1)
        opcode = pickletools.code2op.get(code.decode("latin-1")) if code else None
        if opcode is None:
            raise _Malformed(f"{'no STOP at the end' if not code else f'unknown opcode {code!r}'} at byte "
                             f"{stream.tell()}")
        counted = _COUNTED_ARGS.get(opcode.arg)
        if counted is not None:
            width, signed = counted
            raw = stream.read(width)
            length = int.from_bytes(raw, "little", signed=signed)
            if len(raw) < width or length < 0 or stream.tell() + length > len(data):
                raise _Malformed(f"{opcode.name} at byte {stream.tell()} runs past the end of the data")
            stream.seek(length, io.SEEK_CUR)
            yield opcode, None
        else:
            yield opcode, (opcode.arg.reader(stream) if opcode.arg is not None else None)
        if opcode.name == "STOP":
            return


class _Node:
    """What the first pass knows of an object on the stack: its expanded size and nesting depth."""

    __slots__ = ("depth", "size")

    def __init__(self, size: int, depth: int) -> None:
        self.size, self.depth = size, depth


def _scan(data: bytes) -> int:
    """Walk the opcode stream of ``data`` as the unpickler would, building nothing; return the opcode count.

    Raises `_Refused` past a bound (module docstring) and `_Malformed` for a stream no unpickler could run.
    Sizes and depths are exact for objects that are not changed after they are shared (tuples, frozensets:
    all that can be hashed); a list or dict filled after it was shared is counted exactly after loading."""
    stack: list[_Node | None] = []  # None: a MARK
    marks: list[int] = []  # stack positions of the MARKs
    memo: dict[int, _Node] = {}
    count = 0
    try:
        for opcode, arg in _opcodes(data):
            count += 1
            if count > MAX_OPCODES:
                raise _Refused(f"the pickle has more than {MAX_OPCODES:,} opcodes (a body-model or prior file has a "
                               f"few thousand)")
            name = opcode.name
            floor = marks[-1] + 1 if marks else 0  # nothing below the last MARK may be taken
            if name in _MEMO_PUTS:
                index = len(memo) if name == "MEMOIZE" else int(arg)
                if len(stack) <= floor:
                    raise _Malformed(f"{name} with nothing to memoize")
                if index >= count:
                    raise _Refused(f"memo index {index} at opcode {count} (a pickle numbers its memo from 0)")
                memo[index] = stack[-1]  # type: ignore[assignment]
                continue
            if name in _MEMO_GETS:
                if arg not in memo:
                    raise _Malformed(f"memo index {arg} read before it was written")
                stack.append(memo[arg])
                continue
            if name == "MARK":
                marks.append(len(stack))
                stack.append(None)
                continue
            if name == "DUP":
                if len(stack) <= floor:
                    raise _Malformed("DUP on an empty stack")
                stack.append(stack[-1])
                continue
            if name == "POP":
                if not stack:
                    raise _Malformed("POP on an empty stack")
                if stack.pop() is None:
                    marks.pop()
                continue
            before = opcode.stack_before
            items: list[_Node] = []
            below = len(before)
            if pickletools.markobject in before:
                if not marks:
                    raise _Malformed(f"{name} without a MARK")
                mark = marks.pop()
                items = stack[mark + 1:]  # type: ignore[assignment]
                del stack[mark:]
                below = before.index(pickletools.markobject)
                floor = marks[-1] + 1 if marks else 0
            if below:
                if len(stack) - floor < below:
                    raise _Malformed(f"{name} needs {below} objects on the stack")
                items = stack[len(stack) - below:] + items  # type: ignore[operator]
                del stack[len(stack) - below:]
            if not opcode.stack_after:  # POP_MARK, STOP, PROTO, FRAME
                continue
            if name in _IN_PLACE:
                node, others = items[0], items[1:]
                node.size += sum(o.size for o in others)
                node.depth = max([node.depth] + [1 + o.depth for o in others])
            else:
                node = _Node(1 + sum(i.size for i in items), 1 + max((i.depth for i in items), default=-1))
            if node.depth > MAX_DEPTH:
                raise _Refused(f"the pickle nests containers more than {MAX_DEPTH} deep (a model file nests about 6)")
            if node.size > expansion_limit(count):
                raise _Refused(f"shared references expand the pickle to more than {expansion_limit(count):,} "
                               f"objects from {count:,} opcodes (a 'billion laughs')")
            stack.append(node)
    except ValueError as err:  # from pickletools' readers: an argument cut short or malformed
        raise _Malformed(str(err)) from None
    return count


# --- after unpickling: stand-ins replaced, once per object -----------------------------------------------------
def _at(where: str) -> str:
    return f"at {where}" if where else "at the top of the pickle"


class _Resolver:
    """Replaces stand-ins by numpy arrays through dicts, lists, tuples, sets and object arrays, each object once
    (a shared reference gets the same result), counting the expanded size exactly; refuses cycles, nesting past
    `MAX_DEPTH` and an expanded size past ``limit``."""

    def __init__(self, source: str, limit: int, sparse: bool = False) -> None:
        self.source, self.limit, self.sparse = source, limit, sparse
        self.done: dict[int, tuple[Any, Any, int]] = {}  # id -> (object, result, expanded size); keeps ids unique
        self.active: set[int] = set()

    def __call__(self, obj: Any, where: str = "", depth: int = 0) -> tuple[Any, int]:
        """(result, expanded size) of ``obj``, found at ``where`` in the pickle (an index path, "" at the top)."""
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            return (obj.view(np.ndarray) if type(obj) is not np.ndarray else obj), 1
        if not isinstance(obj, (dict, list, tuple, set, frozenset, np.ndarray, _StateRecorder)):
            return obj, 1
        key = id(obj)
        if key in self.done:
            return self.done[key][1:]
        if key in self.active:
            raise _Refused(f"the object {_at(where)} contains itself (a model file holds no cycles)")
        if depth > MAX_DEPTH:
            raise _Refused(f"the object {_at(where)} is nested more than {MAX_DEPTH} deep (a model file nests "
                           f"about 6)")
        self.active.add(key)
        result, size = self._replace(obj, where, depth + 1)
        self.active.discard(key)
        if size > self.limit:
            raise _Refused(f"shared references expand the object {_at(where)} to more than {self.limit:,} objects "
                           f"(a 'billion laughs')")
        self.done[key] = (obj, result, size)
        return result, size

    def _all(self, values: Any, where: str, depth: int, labels: Any = None) -> tuple[list[Any], int]:
        """Results of ``values`` (found at ``where`` + [label]; labels default to indices) and 1 + their sizes."""
        out, total = [], 1
        for i, value in enumerate(values):
            label = repr(labels[i]) if labels is not None else str(i)
            result, size = self(value, f"{where}[{label}]", depth)
            out.append(result)
            total += size
            if total > self.limit:
                raise _Refused(f"shared references expand the object {_at(where)} to more than {self.limit:,} "
                               f"objects (a 'billion laughs')")
        return out, total

    def _replace(self, obj: Any, where: str, depth: int) -> tuple[Any, int]:
        if isinstance(obj, dict):
            keys, key_size = self._all(obj.keys(), f"{where}.keys()", depth)
            values, value_size = self._all(obj.values(), where, depth, labels=list(obj.keys()))
            keys = [k.decode("latin1") if isinstance(k, bytes) else k for k in keys]
            return dict(zip(keys, values)), key_size + value_size - 1
        if isinstance(obj, (list, tuple, set, frozenset)):
            items, size = self._all(obj, where, depth)
            return (items if isinstance(obj, list) else type(obj)(items)), size
        if isinstance(obj, np.ndarray):  # an object array: its elements may be stand-ins
            items, size = self._all(obj.reshape(-1), where, depth)
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(obj.shape), size
        state = obj._state if isinstance(obj._state, dict) else {}
        state, size = self(state, where, depth)
        if isinstance(obj, _ChumpyArray):
            if "x" not in state:  # an expression (chumpy.ch_ops.add, ...): only chumpy can evaluate it
                return ChumpyExpression(f"{self.source}{where}"), size
            return np.asarray(state["x"]), size
        if isinstance(obj, _SparseMatrix):
            return (_sparse if self.sparse else _dense)(state, self.source + where), size
        if isinstance(obj, _SklearnMixture):
            return state, size
        raise ModelFileError(f"{self.source}{where}: unreadable {obj.qualname} object")  # pragma: no cover


def _dense(state: dict, where: str) -> np.ndarray:
    """A scipy sparse matrix's pickled state as a dense array, if its rows x cols are within MAX_DENSE_ELEMENTS."""
    shape = tuple(state.get("_shape") or state.get("shape") or ())
    if len(shape) == 2 and _element_count(shape, MAX_DENSE_ELEMENTS) > MAX_DENSE_ELEMENTS:
        raise _Refused(f"a sparse matrix declares shape {_shape_text(shape)}, more than "
                       f"{MAX_DENSE_ELEMENTS:,} elements when dense (a model's largest has 576,125)")
    return _sparse(state, where).toarray()


def _sparse(state: dict, where: str) -> Any:
    """A scipy sparse matrix's pickled state as a scipy CSR matrix (its arrays are the file's, so no larger)."""
    try:
        import scipy.sparse as sp
        shape = tuple(state.get("_shape") or state["shape"])
        if len(shape) != 2:
            raise ValueError(f"shape {_shape_text(shape)} is not 2-D")
        fmt = state.get("format", "csc")
        if fmt == "coo":
            row, col = state.get("row", state.get("coords", (None, None))[0]), state.get("col")
            return sp.coo_matrix((state["data"], (row, col)), shape=shape).tocsr()
        cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
        return sp.csr_matrix(cls((state["data"], state["indices"], state["indptr"]), shape=shape))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ModelFileError(f"{where}: a scipy sparse matrix whose state could not be read ({err})") from None


_UNREADABLE = (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError,
               OverflowError, struct.error, _Malformed)


def loads(data: bytes, source: str = "<bytes>", *, sparse: bool = False) -> Any:
    """Unpickle `data` with the allow-list and the bounds of the module docstring; chumpy arrays and sparse
    matrices come back as numpy arrays (with ``sparse``, sparse matrices as scipy CSR matrices, not densified:
    GraphCMR's 6,890 × 6,890 adjacency is past `MAX_DENSE_ELEMENTS`). `UnsafePickleError` for a refused global
    or a crossed bound, `ModelFileError` for data that is not a readable pickle."""
    try:
        opcodes = _scan(data)
        obj = _RestrictedUnpickler(io.BytesIO(data), source, len(data)).load()
        return _Resolver(source, expansion_limit(opcodes), sparse)(obj)[0]
    except UnsafePickleError:
        raise
    except _Refused as err:
        raise _hostile(source, str(err)) from None
    except (RecursionError, MemoryError) as err:  # a bound above should have stopped it first
        raise _hostile(source, f"unpickling ran out of {'stack' if isinstance(err, RecursionError) else 'memory'}") \
            from None
    except _UNREADABLE as err:
        kind = looks_like(data[:256])
        found = "" if kind.startswith("a pickle") else f": it is {kind}"
        raise ModelFileError(f"{source}: not a readable pickle{found} ({type(err).__name__}: {err}); {DAMAGED}") \
            from None


def load(path: str | Path) -> Any:
    """Unpickle the file at `path` with the allow-list and bounds (see module docstring)."""
    path = require_file(path, "pickle file")
    return loads(path.read_bytes(), str(path))
