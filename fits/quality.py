"""Keeping only good fits: a bar on each part of the quality record (`fits.schema.QUALITY_COLUMNS`, `pose_prior`),
for `fitloop fits list / export` and for the trainer's supervision.

`FitFilter` names the bars; a bar left unset (None / False) keeps every fit. A fit passes when it meets every bar
that is set:

* ``max_reprojection_px``: its worst body part (`core.joints.BODY_PARTS`) is at most this many fit-frame px from
  the keypoints. A fit with no part measured fails (no record, or no confident keypoint at all).
* ``require_facing``: it does not face the other way: ``facing >= -FACING_AMBIGUOUS``. A side view, where the
  keypoints cannot tell front from back (|facing| < `FACING_AMBIGUOUS`), passes; a fit whose facing could not be
  measured (no record, or no torso keypoints) fails.
* ``max_pose_prior``: its pose-prior energy (the GMM prior's value, unweighted, `fitting.priors`) is at most this;
  null fails.
* ``max_candidate_spread_mm``: the candidates it was chosen among agree within this PA-MPJPE (mm); a fit made from
  one candidate has nothing to disagree with and passes; a fit without a record fails.

So a fit without a quality record (imported SPIN fits, fits of tables before schema 4) fails every bar that is set:
a bar keeps only the fits known to meet it. SPIN's own bar, ``loss < smplify_threshold``, stays where it is (the
trainer's re-scored loss; the table's ``valid``); these are added to it.

Values are judged as one row each, from columns of float arrays (NaN = null): `columns_of` reads them from table
rows, `fits.store.FitsStore` keeps them for the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa

from fits.schema import PART_COLUMNS

# |facing| below this: the keypoints do not tell front from back (about 10° either side of a side view of an adult
# torso, whose frontal |facing| is about 0.9: `fitting.quality`); a fit faces the wrong way when facing < -this.
FACING_AMBIGUOUS = 0.2
# The columns a filter reads, in this order wherever they are kept as one (N, len) array (the trainer's store).
FILTER_COLUMNS: tuple[str, ...] = PART_COLUMNS + ("facing", "pose_prior", "candidates", "candidate_spread_mm")


@dataclass(frozen=True)
class FitFilter:
    """Bars on the quality record (module docstring); None / False: no bar.

    Attributes:
        max_reprojection_px: the worst body part's reprojection, fit-frame px.
        require_facing: the fit must not face the other way than its keypoints.
        max_pose_prior: the pose-prior energy (unweighted GMM energy, as the table's ``pose_prior``).
        max_candidate_spread_mm: the largest PA-MPJPE between the fit and another candidate, mm.
    """

    max_reprojection_px: float | None = None
    require_facing: bool = False
    max_pose_prior: float | None = None
    max_candidate_spread_mm: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_reprojection_px", "max_candidate_spread_mm"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.max_pose_prior is not None and not np.isfinite(self.max_pose_prior):
            raise ValueError(f"max_pose_prior must be a finite number, got {self.max_pose_prior}")

    @property
    def active(self) -> bool:
        """Whether any bar is set."""
        return (self.max_reprojection_px is not None or self.require_facing or self.max_pose_prior is not None
                or self.max_candidate_spread_mm is not None)

    def describe(self) -> str:
        """The bars in words, for messages ("no bar" when none is set)."""
        bars = []
        if self.max_reprojection_px is not None:
            bars.append(f"worst body part <= {self.max_reprojection_px:g} px")
        if self.require_facing:
            bars.append("facing the keypoints' way")
        if self.max_pose_prior is not None:
            bars.append(f"pose prior <= {self.max_pose_prior:g}")
        if self.max_candidate_spread_mm is not None:
            bars.append(f"candidate spread <= {self.max_candidate_spread_mm:g} mm")
        return ", ".join(bars) or "no bar"

    def failures_by_bar(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """For each bar that is set, the rows (N,) bool that fail it; ``columns``: `FILTER_COLUMNS` as (N,) float
        arrays, NaN = null."""
        failed = {}
        with np.errstate(invalid="ignore"):
            if self.max_reprojection_px is not None:
                parts = np.stack([np.asarray(columns[name], np.float64) for name in PART_COLUMNS], -1)
                measured = ~np.isnan(parts).all(-1)
                worst = np.where(measured, np.nanmax(np.where(measured[:, None], parts, 0.0), -1), np.nan)
                failed["max_reprojection_px"] = ~(worst <= self.max_reprojection_px)
            if self.require_facing:
                failed["require_facing"] = ~(np.asarray(columns["facing"], np.float64) >= -FACING_AMBIGUOUS)
            if self.max_pose_prior is not None:
                failed["max_pose_prior"] = ~(np.asarray(columns["pose_prior"], np.float64) <= self.max_pose_prior)
            if self.max_candidate_spread_mm is not None:
                candidates = np.asarray(columns["candidates"], np.float64)
                spread = np.asarray(columns["candidate_spread_mm"], np.float64)
                agree = (candidates == 1) | (spread <= self.max_candidate_spread_mm)
                failed["max_candidate_spread_mm"] = np.isnan(candidates) | ~agree
        return failed

    def keep(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: the rows that meet every bar (all of them when no bar is set); ``columns`` as in
        `failures_by_bar`."""
        rows = len(np.asarray(columns["facing"]))
        keep = np.ones(rows, dtype=bool)
        for failed in self.failures_by_bar(columns).values():
            keep &= ~failed
        return keep


def columns_of(rows: pa.Table) -> dict[str, np.ndarray]:
    """The `FILTER_COLUMNS` of fits rows (`fits.schema.FITS_SCHEMA`) as (N,) float64 arrays, null as NaN."""
    return {name: rows[name].cast(pa.float64()).fill_null(np.nan).to_numpy() for name in FILTER_COLUMNS}


def filter_rows(rows: pa.Table, fit_filter: FitFilter) -> tuple[pa.Table, dict[str, int]]:
    """(the rows of ``rows`` that meet every bar of ``fit_filter``, how many rows fail each bar): a row failing
    several bars counts under each."""
    columns = columns_of(rows)
    failed = fit_filter.failures_by_bar(columns)
    return rows.filter(pa.array(fit_filter.keep(columns))), {bar: int(mask.sum()) for bar, mask in failed.items()}
