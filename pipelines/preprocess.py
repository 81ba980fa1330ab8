"""Datasets, as their users unpack them, to a shard set: the logic behind `fitloop preprocess` and the
`preprocess` flow.

Adapters are read in this process (they parse annotation files and check image headers); records are grouped
into shard-sized chunks (`shards.writer.iter_chunks`) and each chunk — decode, crop, encode, tar — is written by
`shards.writer.write_chunk`, in this process or on Dask workers as chunks fill up. The manifest is written last,
once every shard it names is verified on disk. A failed or killed run resumes where it stopped: writing into
the same folder again keeps the chunks it finished (`shards.writer.plan_chunks`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from core.errors import FitloopError
from shards.schema import PersonRecord, Reject
from shards.writer import (
    REJECTS,
    ChunkResult,
    ShardConfig,
    finalize_manifest,
    plan_chunks,
    prepare_out_dir,
    write_chunk,
    write_shards,
    writing_lock,
)

# Splits that are unions of others: converting them as well would write every person twice.
AGGREGATE_SPLITS = ("all", "trainval")
# Options that name one annotation file (or one folder of per-image files): one split, so the split must be said.
SINGLE_FILE_OPTIONS = ("annotation_file", "npz_file", "json_dir")
# What a dataset's root should be, for the one-line error when it is not a folder.
EXPECTED_ROOT = {
    "coco": "the COCO folder (person_keypoints_<split>*.json in it or in annotations/, images in <subset>/)",
    "mpii": "the MPII folder (the release .mat, train.h5/valid.h5 or mpii_<split>.json, and images/)",
    "lsp": "lsp_dataset (joints.mat and images/im0001.jpg ...)",
    "lsp-orig": "lsp_dataset_original (joints.mat and images/im0001.jpg ...)",
    "lspet": "lspet_dataset (joints.mat and images/im00001.jpg ...)",
    "h36m": "the Human3.6M folder (S1/, S5/, ... with MyPoseFeatures/ and the frames)",
    "mpi-inf-3dhp": "the MPI-INF-3DHP folder (S1/Seq1/annot.mat ... with imageSequence/video_<k>.avi, and "
                    "mpi_inf_3dhp_test_set/TS1 ...)",
    "spin-npz": "the image root SPIN's imgname paths are relative to (and --option npz_file=...)",
    "coco_wholebody": "the COCO-WholeBody folder (coco_wholebody_<split>_v1.0.json in it or in annotations/, images "
                      "in <split>2017/)",
    "openpose": "the OpenPose folder (<split>/keypoints/*_keypoints.json and <split>/images/, or keypoints/ and "
                "images/ for train)",
}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to convert: its adapter name, root folder, splits (None: every split found) and options.

    label: the dataset name its records carry (default: the adapter's), e.g. ``"lsp-real"`` beside synthetic
    data in the LSP layout: keys become ``<label>/<id>``, so two sources of one format can share a shard set.
    """

    dataset: str
    root: str
    splits: tuple[str, ...] | None = None
    options: dict[str, str] = field(default_factory=dict)
    label: str | None = None


def relabel(item: PersonRecord | Reject, label: str) -> PersonRecord | Reject:
    """The record (or reject) under another dataset name: ``dataset`` and the key's prefix both change."""
    key = None if item.key is None else f"{label}/{item.key.split('/', 1)[1]}"
    return dataclasses.replace(item, dataset=label, key=key)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict; FitloopError on a pair without '=' or a key given twice."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise FitloopError(f"--option {pair!r} is not KEY=VALUE")
        if key.strip() in options:
            raise FitloopError(f"--option {key.strip()} is given twice")
        options[key.strip()] = value.strip()
    return options


def open_splits(dataset: str, root: Path, splits: Iterable[str] | None, options: dict[str, str]) -> list[tuple]:
    """[(split, first output or None, the rest)] for the splits to convert, each already started, so that missing
    files raise here and not halfway through writing. Without ``splits``, every non-union split of the adapter
    whose files exist; one whose files are missing is skipped with a note (one whose file is damaged raises)."""
    from pipelines.adapters import ADAPTERS, AnnotationFileError, DatasetError, iter_dataset

    if dataset not in ADAPTERS:
        raise FitloopError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(ADAPTERS))}")
    if not root.is_dir():
        expected = EXPECTED_ROOT.get(dataset, "the dataset's folder")
        raise FitloopError(f"--root {root} is not a folder; expected {expected}")
    explicit = splits is not None
    candidates = list(splits) if explicit else [s for s in ADAPTERS[dataset].splits if s not in AGGREGATE_SPLITS]
    opened, errors = [], []
    for split in candidates:
        outputs = iter_dataset(dataset, root, split, **options)
        try:
            first = next(outputs, None)
        except DatasetError as err:
            if explicit or isinstance(err, AnnotationFileError):  # a damaged file is no missing split
                raise
            errors.append(f"{split}: {err}")
            continue
        opened.append((split, first, outputs))
    if not opened:
        raise FitloopError(f"{dataset}: nothing to convert under {root}: {errors[0] if errors else 'no splits'}")
    file_options = [o for o in SINGLE_FILE_OPTIONS if o in options]
    if not explicit and file_options and len(opened) > 1:
        raise FitloopError(f"--option {file_options[0]} names one file; say which split it holds with --split "
                           f"({', '.join(s for s, _, _ in opened)})")
    for error in errors:
        print(f"fitloop preprocess: {dataset}: skipping split {error}", file=sys.stderr)
    return opened


def open_datasets(specs: Iterable[DatasetSpec]) -> tuple[Iterator[PersonRecord | Reject], list[dict[str, Any]]]:
    """All records of `specs`, in order, and the `inputs` list the manifest keeps; bad roots raise before any
    record is read."""
    streams, inputs = [], []
    for spec in specs:
        root = Path(spec.root).resolve()  # absolute, so lineage in samples and the manifest points at the files
        for split, first, rest in open_splits(spec.dataset, root, spec.splits, dict(spec.options)):
            stream = itertools.chain([] if first is None else [first], rest)
            if spec.label and spec.label != spec.dataset:
                stream = map(functools.partial(relabel, label=spec.label), stream)  # bound now, not at iteration
            streams.append(stream)
            inputs.append({"dataset": spec.dataset, "label": spec.label or spec.dataset, "split": split,
                           "root": str(root), "options": dict(spec.options)})
    return itertools.chain.from_iterable(streams), inputs


def preprocess(specs: Iterable[DatasetSpec], out_dir: Path, config: ShardConfig = ShardConfig(), *, client=None,
               overwrite: bool = False, on_item: Callable[[PersonRecord | Reject], None] | None = None,
               on_chunk: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Convert `specs` into the shard set `out_dir`; returns its manifest (`write_shard_set` for the options)."""
    records, inputs = open_datasets(specs)
    return write_shard_set(records, inputs, out_dir, config, client=client, overwrite=overwrite, on_item=on_item,
                           on_chunk=on_chunk)


def write_shard_set(records: Iterable[PersonRecord | Reject], inputs: list[dict[str, Any]], out_dir: Path,
                    config: ShardConfig = ShardConfig(), *, client=None, overwrite: bool = False,
                    on_item: Callable[[PersonRecord | Reject], None] | None = None,
                    on_chunk: Callable[[ChunkResult, bool], None] | None = None) -> dict[str, Any]:
    """Write opened records (`open_datasets`) as the shard set `out_dir`; returns its manifest.

    An unfinished set in `out_dir` (a failed or killed attempt) is resumed: its finished chunks are kept, the rest
    written (`shards.writer.plan_chunks`). The folder is held for the whole call (`shards.writer.writing_lock`):
    while another process writes it, this call is refused with `ShardWriteError` before it writes anything.

    client: a `distributed.Client` to write chunks on (`pipelines.cluster.dask_client`); None writes them here.
        Every path a chunk gets is absolute, and its task key is unique to this call (`chunk_key`), so runs that
        share a scheduler never share results.
    on_item / on_chunk: progress callbacks, per record read and per chunk done (its `ChunkResult`, and whether it
        was kept from an earlier attempt).
    Raises `FitloopError` once the set is written when it holds no sample (`check_not_empty`).
    """
    if client is None:
        return check_not_empty(write_shards(records, out_dir, config, inputs=inputs, overwrite=overwrite,
                                            on_item=on_item, on_chunk=on_chunk), out_dir)
    from distributed import as_completed

    out_dir = Path(out_dir).resolve()
    with writing_lock(out_dir):  # one run per folder: a second is refused here, before it writes anything
        prepare_out_dir(out_dir, overwrite)
        report = on_chunk or (lambda result, kept: None)
        run = run_token(out_dir)
        slots: list[Any] = []  # per chunk, in order: its kept result, or the future writing it
        for name, chunk, digest, kept in plan_chunks(records, out_dir, config, on_item=on_item):
            if kept is not None:
                report(kept, True)
                slots.append(kept)
            else:
                slots.append(client.submit(write_chunk, chunk, out_dir, name, config, digest,
                                           key=chunk_key(run, name), pure=False))
        futures = [slot for slot in slots if not isinstance(slot, ChunkResult)]
        for future in as_completed(futures):
            report(future.result(), False)
        written = iter(client.gather(futures))
        results = [slot if isinstance(slot, ChunkResult) else next(written) for slot in slots]
        return check_not_empty(finalize_manifest(out_dir, results, config, inputs=inputs), out_dir)


def check_not_empty(manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``manifest``, when its set holds a sample; else `FitloopError` (the set is written, so its rejects can be
    read): a conversion in which no record became a sample has failed, whatever the reason."""
    counts = manifest["counts"]
    if counts["written"]:
        return manifest
    reasons = ", ".join(f"{r} {n}" for r, n in manifest["rejects_by_reason"].items())
    raise FitloopError(f"{out_dir}: no record became a sample: read {counts['read']}, rejected {counts['rejected']}"
                       + (f" ({reasons}; the rows are in {Path(out_dir) / REJECTS})" if reasons else "")
                       + "; fix the dataset or the options, then convert again with --overwrite")


def run_token(out_dir: Path) -> str:
    """A token for one writing run into ``out_dir``: a hash of the absolute folder and a random part, so task keys
    of two runs differ even into the same folder, and a key still says which folder it writes."""
    folder = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:8]
    return f"{folder}{uuid.uuid4().hex[:12]}"


def chunk_key(run: str, shard_name: str) -> str:
    """The Dask task key of one chunk of run ``run`` (`run_token`): ``write-<run>-<shard name>``."""
    return f"write-{run}-{shard_name}"
