"""SPIN's file conventions (nkolot/SPIN, `config.py` and `constants.py`), named once: what its data files are
called and what each one holds. See ../shared/SPIN_REFERENCE.md for where each fact comes from."""
from __future__ import annotations

from core.joints import J24_NAMES

# The shape coefficients SPIN fits, regresses and stores (its smpl_mean_params.npz `shape`, its fits' columns 72-81):
# fitloop's too, whatever a model file offers (SMPL 10 or 300, SMPL-H 16, SMPL-X 10 or 300 beside its expressions)
NUM_BETAS = 10

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

# SPIN's evaluation selectors (constants.py): the 17 evaluation joints ("J17") as rows of J_regressor_h36m.npy
# (H36M_TO_J17) and as J24 slots (J24_TO_J17); the first 14 are the Human3.6M protocol's (H36M_TO_J14, J24_TO_J14).
SPIN_H36M_TO_J17: tuple[int, ...] = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9)
SPIN_J24_TO_J17: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17)
# So the canonical joint of each row of SPIN's J_regressor_h36m.npy (17 × 6890), in the file's order: pelvis, the
# LEFT leg (rows 1–3), the right leg (4–6), spine, thorax, jaw, head, left arm, right arm. This is not
# `core.joints.H36M_JOINTS` (right leg first); `fitting.body_model` permutes the file's rows into that order once,
# at load. ../shared/SPIN_REFERENCE.md §2.3–2.4; SPIN#102 discusses the naming.
SPIN_H36M_REGRESSOR_ROWS: tuple[str, ...] = tuple(
    J24_NAMES[SPIN_J24_TO_J17[SPIN_H36M_TO_J17.index(row)]] for row in range(len(SPIN_H36M_TO_J17)))
