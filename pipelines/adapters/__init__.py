"""Dataset adapters: each reads one dataset format and yields `PersonRecord`s and `Reject`s (shards.schema).

`ADAPTERS` maps a registry name to its adapter; `iter_dataset` is the one entry point the CLI and the flows use:

    for item in iter_dataset("coco", Path("/data/coco"), "train", min_joints=12):
        ...  # a PersonRecord to write, or a Reject to table

Adding a dataset (Human3.6M, a synthetic generator) means one module with an adapter class — ``name``,
``splits``, ``config_type`` (a frozen dataclass extending `CheckConfig`) and ``read(root, split, config)`` that
hands each candidate to `RecordBuilder.person` — and one line in `ADAPTERS`. docs/datasets.md says what each
adapter reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from pipelines.adapters.base import (
    SPIN_LIMB_JOINTS,
    Adapter,
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    make_config,
    unique_keys,
)
from pipelines.adapters.coco import CocoAdapter, CocoConfig
from pipelines.adapters.coco_wholebody import CocoWholeBodyAdapter, CocoWholeBodyConfig
from pipelines.adapters.h36m import H36mAdapter
from pipelines.adapters.lsp import LSP_LAYOUT, LSPET_LAYOUT, LspAdapter, LspConfig
from pipelines.adapters.mpi_inf_3dhp import MpiInf3dhpAdapter, MpiInf3dhpConfig
from pipelines.adapters.mpii import MpiiAdapter, MpiiConfig
from pipelines.adapters.openpose import OpenPoseAdapter, OpenPoseConfig
from pipelines.adapters.spin_npz import SpinNpzAdapter, SpinNpzConfig

ADAPTERS: dict[str, Adapter] = {adapter.name: adapter for adapter in (
    CocoAdapter(),
    MpiiAdapter(),
    LspAdapter("lsp", LSP_LAYOUT),        # lsp_dataset: the small images; SPIN's LSP test set
    LspAdapter("lsp-orig", LSP_LAYOUT),   # lsp_dataset_original: full-size images; SPIN's LSP training set
    LspAdapter("lspet", LSPET_LAYOUT),
    SpinNpzAdapter(),
    H36mAdapter(),
    MpiInf3dhpAdapter(),                  # MPI-INF-3DHP: train videos + annot.mat, test set JPEGs + annot_data.mat
    CocoWholeBodyAdapter(),               # COCO-WholeBody: COCO + feet, face, hands (161-point whole-body keypoints)
    OpenPoseAdapter(),                    # OpenPose --write_json output: BODY_25 + hands + face per image
)}


def iter_dataset(name: str, root: Path, split: str, **options: Any) -> Iterator[Output]:
    """Read dataset ``name`` under ``root``: one `PersonRecord` or `Reject` per person record read.

    Args:
        name: a key of `ADAPTERS` ("coco", "mpii", "lsp", "lsp-orig", "lspet", "spin-npz", "h36m",
            "mpi-inf-3dhp", "coco_wholebody", "openpose").
        root: the dataset's root folder; annotation and image paths in the options are relative to it.
        split: one of the adapter's ``splits``.
        **options: fields of the adapter's config (``ADAPTERS[name].config_type``), as values or as strings
            (a CLI's); an unknown option raises `DatasetError` listing the known ones.
    A record whose key an earlier one of the split already had is a ``duplicate_record`` reject (`unique_keys`).

    Raises:
        DatasetError: an unknown dataset or option, at the call; an unknown split or a missing annotation file,
            when iteration starts, before anything is yielded; `AnnotationFileError` (a DatasetError) for an
            annotation file that exists but cannot be read, also before anything is yielded.
    """
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    adapter = ADAPTERS[name]
    return unique_keys(adapter.read(Path(root), split, make_config(adapter.config_type, options)))


__all__ = ["ADAPTERS", "Adapter", "AnnotationFileError", "CheckConfig", "CocoConfig", "CocoWholeBodyConfig",
           "DatasetError", "LspConfig", "MpiInf3dhpConfig", "MpiiConfig", "OpenPoseConfig", "Output", "RecordBuilder", "SPIN_LIMB_JOINTS",
           "SpinNpzConfig", "iter_dataset"]
