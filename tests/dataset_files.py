"""Pieces of the real dataset file formats that several tests write (tests/ is on sys.path: conftest.py)."""
from __future__ import annotations

import numpy as np


def mat_structs(rows: list[dict]) -> np.ndarray:
    """A 1 x N MATLAB struct array (savemat writes a structured object array as one)."""
    array = np.zeros((1, len(rows)), dtype=[(name, "O") for name in rows[0]])
    for i, row in enumerate(rows):
        for name, value in row.items():
            array[0, i][name] = value
    return array
