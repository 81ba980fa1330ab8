"""The flows' parameters, checked before any work starts.

A flow run (from Python, `fitloop serve` or a work pool) checks every parameter first and fails with one
`FlowParameterError` line that names the parameter and says what to do: dataset names, roots, splits and options;
paths (absolute before they leave this process: Dask workers and deployments' flow runs work in other folders);
the output folder (and that no other run is writing it); the Dask address (fails within seconds when nothing
answers, or something that is not a Dask scheduler; ``workers`` beside it is refused); the body model; and training
settings, by type and by value, against `training.config.TrainConfig`. Prefect checks the parameters' types against
the flow's signature before any of this runs, and refuses a wrong type with its own `ParameterTypeError`.

Plain functions, importable and tested without Prefect.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from core.errors import FitloopError
from pipelines.preprocess import AGGREGATE_SPLITS, EXPECTED_ROOT, DatasetSpec


class FlowParameterError(FitloopError):
    """A flow parameter that cannot work; the message names it and says what to do."""


def in_deployment() -> bool:
    """True inside a flow run started from a deployment (served or on a work pool)."""
    from prefect import runtime

    return runtime.deployment.id is not None


def absolute_path(value: str | Path, name: str) -> Path:
    """``value`` as an absolute path. A relative path is taken from this process's working folder, except in a
    deployment's flow run, whose working folder is a temporary one: there it is refused."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if in_deployment():
        raise FlowParameterError(f"{name}: {str(value)!r} is a relative path, and a deployment's flow run works in "
                                 f"a temporary folder; give an absolute path")
    return path.resolve()


def check_datasets(datasets: Iterable[DatasetSpec | Mapping[str, Any]], name: str = "datasets") -> list[DatasetSpec]:
    """The datasets to convert, each checked (adapter, root folder, splits, options) and with an absolute root."""
    from pipelines.adapters import ADAPTERS, DatasetError, make_config

    specs = list(datasets or [])
    if not specs:
        raise FlowParameterError(f"{name}: no dataset given; e.g. [{{\"dataset\": \"lsp\", \"root\": "
                                 f"\"/data/lsp_dataset\"}}]")
    checked = []
    for i, spec in enumerate(specs):
        where = f"{name}[{i}]"
        if isinstance(spec, Mapping):
            try:
                spec = DatasetSpec(**spec)
            except TypeError as err:
                raise FlowParameterError(f"{where}: {err}; the fields are dataset, root, splits, options, label"
                                         ) from None
        if spec.dataset not in ADAPTERS:
            raise FlowParameterError(f"{where}.dataset: unknown dataset {spec.dataset!r}; known: "
                                     f"{', '.join(sorted(ADAPTERS))}")
        adapter = ADAPTERS[spec.dataset]
        root = absolute_path(spec.root, f"{where}.root")
        if not root.is_dir():
            raise FlowParameterError(f"{where}.root: {root} is not a folder; expected "
                                     f"{EXPECTED_ROOT.get(spec.dataset, 'the dataset folder')}")
        unknown = [s for s in spec.splits or () if s not in adapter.splits]
        if unknown:
            raise FlowParameterError(f"{where}.splits: {spec.dataset} has no split {unknown[0]!r}; its splits: "
                                     f"{', '.join(adapter.splits)}")
        try:
            make_config(adapter.config_type, dict(spec.options))
        except DatasetError as err:
            raise FlowParameterError(f"{where}.options: {err}") from None
        checked.append(dataclasses.replace(spec, root=str(root)))
    return checked


def splits_converted(spec: DatasetSpec) -> tuple[str, ...]:
    """The splits a dataset spec can give: its own, or every non-union split of its adapter."""
    from pipelines.adapters import ADAPTERS

    return tuple(spec.splits) if spec.splits else tuple(s for s in ADAPTERS[spec.dataset].splits
                                                         if s not in AGGREGATE_SPLITS)


def check_shard_config(crop_res: int, crop_margin: float, samples_per_shard: int) -> Any:
    """`shards.writer.ShardConfig` from the flow's shard settings (its check names the one setting that is wrong;
    Prefect has checked their types)."""
    from shards.writer import ShardConfig, ShardWriteError

    try:
        return ShardConfig(crop_res=crop_res, crop_margin=crop_margin, samples_per_shard=samples_per_shard)
    except ShardWriteError as err:
        raise FlowParameterError(str(err)) from None


def check_out_dir(out: str | Path, overwrite: bool, name: str = "out") -> tuple[Path, bool]:
    """(absolute shard-set folder, whether an unfinished set there will be resumed); refuses a finished set
    unless ``overwrite``, and a folder holding files that are not fitloop's (`shards.writer.check_out_dir`)."""
    from shards.writer import ShardWriteError
    from shards.writer import check_out_dir as check_folder

    path = absolute_path(out, name)
    try:
        return path, check_folder(path, overwrite)
    except ShardWriteError as err:
        raise FlowParameterError(f"{name}: {err}") from None


def check_shard_sets(shards: Iterable[str | Path], name: str = "shards") -> list[Path]:
    """Absolute paths of finished shard sets (each has a readable manifest)."""
    from shards.writer import ShardSetError, load_manifest

    paths = [absolute_path(s, name) for s in ([shards] if isinstance(shards, (str, Path)) else shards)]
    if not paths:
        raise FlowParameterError(f"{name}: no shard set given")
    for path in paths:
        try:
            load_manifest(path)
        except ShardSetError as err:
            raise FlowParameterError(f"{name}: {err}") from None
    return paths


def check_cluster(dask_address: str | None, workers: int | None) -> str | None:
    """The scheduler address to use (None: a local cluster), once a scheduler answers there; ``workers`` with an
    address (given, or ``$FITLOOP_DASK_ADDRESS``) is refused (`pipelines.cluster.choose_cluster`)."""
    from pipelines.cluster import check_scheduler, choose_cluster

    if workers is not None and workers < 1:
        raise FlowParameterError(f"workers: {workers} is not a worker count; give 1 or more, or leave it out")
    address = choose_cluster(dask_address, workers, workers_name="workers", address_name="dask_address")
    return None if address is None else check_scheduler(address)


def check_body_model(body_model: str, name: str = "body_model") -> str:
    """A body model `fitting.body_model.load_body_model` can load: a shipped one, or an existing file (absolute)."""
    from fitting.body_model import OPEN_MODELS

    if body_model in OPEN_MODELS:
        return body_model
    path = absolute_path(body_model, name)
    if not path.is_file():
        raise FlowParameterError(f"{name}: {body_model!r} is neither {' nor '.join(map(repr, OPEN_MODELS))} nor a "
                                 f"file; give one of those or the path of an SMPL/SMPL-H/SMPL-X model file")
    return str(path)


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise FlowParameterError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlowParameterError(f"{name}: {value!r} must be an integer >= 1")
    return value


# --- training settings -------------------------------------------------------------------------------------------

def check_train_settings(settings: Mapping[str, Any] | None, given: Mapping[str, Any],
                         name: str = "train_settings") -> Any:
    """The `training.config.TrainConfig` of ``settings`` (any of its fields, nested mappings for its nested
    configs) plus ``given`` (the fields a flow sets from its own parameters: shards, fits, run_dir), checked.

    Every setting must have its field's type (`check_fields`); then the values are checked as the trainer checks
    them (`TrainConfig.validated`, the ``mix`` syntax). A setting in ``given`` is refused: the flow's own
    parameter says it."""
    from training.config import TrainConfig
    from training.data import parse_mix

    if settings is not None and not isinstance(settings, Mapping):
        raise FlowParameterError(f"{name}: expected a mapping of TrainConfig settings, not {settings!r}")
    settings = dict(settings or {})
    taken = sorted(set(settings) & set(given))
    if taken:
        raise FlowParameterError(f"{name}.{taken[0]}: set by the flow's own parameter; leave it out of {name}")
    check_fields(TrainConfig, settings, name)
    try:
        config = TrainConfig.from_dict({**settings, **given}).validated()
        parse_mix(config.mix)
    except ValueError as err:
        raise FlowParameterError(f"{name}: {err}") from None
    return config


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Every key of ``values`` is a field of the dataclass ``cls`` and every value has the field's type: bool,
    int (not bool), float (int or float), str, ``X | None``, ``tuple[X, ...]`` / ``tuple[X, Y]`` (lists too), or
    a nested dataclass (a mapping, checked the same way). `FlowParameterError` names the first that is not."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in hints or key not in names:
            raise FlowParameterError(f"{where}.{key}: not a setting of {cls.__name__}; known: {', '.join(names)}")
        _check_value(value, hints[key], f"{where}.{key}")


def _check_value(value: Any, hint: Any, where: str) -> None:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return
        if not isinstance(value, Mapping):
            raise FlowParameterError(f"{where}: expected a mapping of {hint.__name__} settings, not {value!r}")
        check_fields(hint, value, where)
        return
    if not _matches(value, hint):
        raise FlowParameterError(f"{where}: expected {_describe(hint)}, not {value!r} ({type(value).__name__}); "
                                 f"fix that setting")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))
