"""SPIN's file conventions (nkolot/SPIN, `config.py` and `constants.py`), named once: what its data files are
called and what each one holds. See ../shared/SPIN_REFERENCE.md for where each fact comes from."""
from __future__ import annotations

# SPIN's file stems (config.DATASET_FILES): the dataset, split and pixel offset each holds.
SPIN_NPZ_FILES: dict[str, tuple[str, str, float]] = {
    "lsp_dataset_original_train": ("lsp-orig", "train", 1.0),
    "lsp_dataset_test": ("lsp", "test", 1.0),
    "hr-lspet_train": ("hr-lspet", "train", 1.0),
    "mpii_train": ("mpii", "train", 1.0),
    "coco_2014_train": ("coco", "train", 0.0),
    "mpi_inf_3dhp_train": ("mpi-inf-3dhp", "train", 0.0),
    "mpi_inf_3dhp_valid": ("mpi-inf-3dhp", "val", 0.0),
    "h36m_train": ("h36m", "train", 0.0),
    "h36m_valid_protocol1": ("h36m-p1", "val", 0.0),
    "h36m_valid_protocol2": ("h36m-p2", "val", 0.0),
    "3dpw_test": ("3dpw", "test", 0.0),
}
