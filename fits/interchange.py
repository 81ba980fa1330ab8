"""SPIN's static fits in and out of a fits table: ``<ds>_fits.npy`` (N × 82 = 72 pose + 10 betas) ↔ keyed rows.

SPIN keys its fits by row: row i of ``<ds>_fits.npy`` belongs to row i of the dataset's ``.npz``. fitloop keys them
by sample key, built from the ``.npz``'s ``imgname`` exactly as the SPIN .npz adapter builds the keys of its
records (`pipelines.adapters.spin_npz`): ``<dataset>/<image stem>``, and ``..._n0``, ``..._n1`` in file order when
one image holds several people. So imported fits join the shards made from the same ``.npz``.

SPIN's fits file → its ``.npz`` → the dataset (key prefix) fitloop gives it, with an example key:

* ``lsp-orig_fits.npy`` → ``lsp_dataset_original_train.npz`` → ``lsp-orig``: ``images/im0001.jpg`` →
  ``lsp-orig/im0001``
* ``lspet_fits.npy`` → ``hr-lspet_train.npz`` → ``hr-lspet``: ``im00001.png`` → ``hr-lspet/im00001``
* ``mpii_fits.npy`` → ``mpii_train.npz`` → ``mpii``: ``images/015601864.jpg`` → ``mpii/015601864_n0``
* ``coco_fits.npy`` → ``coco_2014_train.npz`` → ``coco``: ``train2014/COCO_train2014_000000000036.jpg`` →
  ``coco/COCO_train2014_000000000036_n0``
* ``h36m_fits.npy`` → ``h36m_train.npz`` → ``h36m``: ``images/S1_Directions_1.54138969_000001.jpg`` →
  ``h36m/S1_Directions_1_54138969_000001``
* ``mpi-inf-3dhp_fits.npy`` → ``mpi_inf_3dhp_train.npz`` → ``mpi-inf-3dhp``: see below.

(``_n0`` only where an image has several rows.) The test file ``lsp_dataset_test.npz`` gives ``lsp/im1001``.
MPI-INF-3DHP's image names (``S1/Seq1/imageFrames/video_0/frame_000001.jpg``) share stems across sequences and
videos, so the stem rule gives the same key to different images: the import refuses such a file rather than
merge distinct samples (`spin_keys` raises and names the clash).

SPIN's fits are poses and betas of one body model (SPIN: the neutral SMPL with 10 betas), and mean nothing without
it: the import takes the body model they belong to (its content id, ``BodyModel.model_id``), so that a trainer
loading that model's fits uses them. An export writes one body model's best fits: a table holding fits of several
models needs the model named (`fits.schema.MixedBodyModelsError` otherwise), so one SPIN file never mixes them.

SPIN's fits are crop-frame fits (its SMPLify fits the 224 px crop with focal 5000 px; `fits.schema`): an import
writes frame "crop", and an export writes the best crop-frame fits only. An image-frame fit (made in the original
image's camera) has another translation and, off the optical axis, another global orientation, so it is never
exported as one of SPIN's; the export says so when that leaves rows without a fit.

Imported fits are unscored (SPIN stores no loss: it re-scores the stored fit each step), so any scored fit of the
same key and body model beats them, and importing the same file twice appends nothing. They have no quality record
(`fits.schema.QUALITY_COLUMNS` null: nothing was measured), so an export with a fit filter (`fits.quality`) leaves
them out. SPIN writes float64 fits of
float32 values; the table stores float32, and the import reports the largest rounding (0 for SPIN's own files), so
that an import followed by an export gives back the same array.

**Rows without a fit are never imported as fits.** An export with ``fill_missing`` writes zeros (SPIN's mean pose
and shape) for rows without a fit, and marks each in its ``.keys`` file (`keys_file`: the key, a tab, ``filled``; SPIN's
own ``.npy`` layout is unchanged, SPIN reads it as before); an import skips the marked rows, and refuses a marked row
that holds anything but zeros (the file changed after the export: the mark no longer tells). Any row whose pose and
betas are all exactly 0, which no real fit is (SPIN#11's hand-made H36M placeholder files are such rows), is left
out of every import too. The summary counts both (``skipped_filled``, ``skipped_zero``), so a trainer never reads
a filler row as a fit of zero pose.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.spin import SPIN_NPZ_FILES
from fits.quality import FitFilter, filter_rows
from fits.schema import NUM_BETAS, NUM_POSE, FitProvenance, FitsTableError, fits_batch
from fits.table import FitsTable, contents_text
from shards.schema import make_key

SPIN_FITS_WIDTH = NUM_POSE + NUM_BETAS  # 82
SPIN_FIT_CONFIG = "spin-static-fits"    # the fit_config_hash of imported rows: SPIN's own SMPLify, unknown config
FILLED_MARK = "filled"                  # a .keys line "<key>\tfilled": the export wrote zeros there, not a fit
# SPIN's MixedDataset names (its fits files) → the .npz stem they are row-aligned with.
SPIN_FITS_FILES = {"lsp-orig": "lsp_dataset_original_train", "lspet": "hr-lspet_train", "mpii": "mpii_train",
                   "coco": "coco_2014_train", "h36m": "h36m_train", "mpi-inf-3dhp": "mpi_inf_3dhp_train"}


def spin_dataset(npz: Path, dataset: str | None = None) -> str:
    """The dataset (key prefix) of a SPIN .npz: ``dataset`` if given, else from its file name."""
    if dataset is not None:
        return dataset
    known = SPIN_NPZ_FILES.get(Path(npz).stem)
    if known is None:
        raise FitsTableError(f"{Path(npz).name} is not one of SPIN's files ({', '.join(SPIN_NPZ_FILES)}); "
                             f"give the dataset name")
    return known[0]


def spin_keys(imgnames: list[str], dataset: str) -> list[str]:
    """The sample key of each row of a SPIN .npz, as the SPIN .npz adapter builds them; unique or FitsTableError."""
    repeats = Counter(imgnames)
    seen: Counter[str] = Counter()
    keys = []
    for name in imgnames:
        stem = Path(name).stem
        if repeats[name] > 1:
            keys.append(make_key(dataset, stem, f"n{seen[name]}"))
            seen[name] += 1
        else:
            keys.append(make_key(dataset, stem))
    clashes = [key for key, count in Counter(keys).items() if count > 1]
    if clashes:
        raise FitsTableError(f"{len(clashes)} key(s) stand for different images (image stems repeat across "
                             f"folders), e.g. {clashes[:3]}: the key rule cannot tell these rows apart")
    return keys


def _imgnames(npz: Path) -> list[str]:
    if not Path(npz).is_file():
        raise FitsTableError(f"{npz}: no such file; give one of SPIN's dataset .npz files (data/dataset_extras/*.npz)")
    try:
        with np.load(npz, allow_pickle=False) as data:
            return [str(name) for name in data["imgname"]]
    except (OSError, ValueError, KeyError) as err:
        raise FitsTableError(f"{npz}: not a SPIN .npz with imgname: {type(err).__name__}: {err}") from err


def keys_file(npy: Path) -> Path:
    """The key list written next to an exported fits file (``<file>.keys``: one sample key per row, in row order;
    the key, a tab and `FILLED_MARK` for a row the export filled with zeros), by which an import checks that the
    rows are the dataset's (`check_rows_match`) and skips the filled rows (`read_keys_file`)."""
    return npy.with_name(npy.name + ".keys")


def read_keys_file(listed: Path) -> tuple[list[str], np.ndarray]:
    """(the keys of a `keys_file`, in row order; (N,) bool: rows marked `FILLED_MARK`). A line with another mark
    raises FitsTableError naming it."""
    keys, filled = [], []
    for number, line in enumerate(listed.read_text().splitlines(), 1):
        key, tab, mark = line.partition("\t")
        if tab and mark != FILLED_MARK:
            raise FitsTableError(f"{listed}: line {number} has the mark {mark!r}; a line is a key, or a key, a tab "
                                 f"and {FILLED_MARK!r} (a row exported without a fit): fix the line or remove the file")
        keys.append(key)
        filled.append(bool(tab))
    return keys, np.array(filled, bool)


def check_rows_match(npy: Path, npz: Path, keys: list[str], dataset: str, *, vouched: bool = False) -> str:
    """Check that the rows of the fits file ``npy`` are those of ``npz`` (whose sample keys are ``keys``), not
    merely as many; returns how (for the summary): "keys file" (``<npy>.keys``, written by `export_spin`, compared
    key by key), "spin file name" (SPIN's ``<name>_fits.npy`` is row-aligned with one .npz of `SPIN_FITS_FILES`),
    or "unchecked" (neither, and the caller ``vouched`` that the rows are the .npz's: only the row count is checked).
    FitsTableError naming the file, the first differing row and what to do otherwise; and when nothing can tell and
    nobody vouched (a file of the same row count may be another dataset's fits)."""
    listed = keys_file(npy)
    if listed.is_file():
        theirs, _ = read_keys_file(listed)
        if theirs != keys:
            at = next((i for i, (a, b) in enumerate(zip(theirs, keys)) if a != b), min(len(theirs), len(keys)))
            mine = repr(keys[at]) if at < len(keys) else "past its end"
            other = repr(theirs[at]) if at < len(theirs) else "past its end"
            raise FitsTableError(f"{npy}: its rows are not those of {npz.name} ({listed.name} lists {len(theirs)} "
                                 f"keys; first difference at row {at}: {other} there, {mine} in {npz.name}); give "
                                 f"the .npz these fits were exported from, or export the fits of {npz.name}")
        return "keys file"
    spin_name = npy.name.removesuffix("_fits.npy") if npy.name.endswith("_fits.npy") else None
    if spin_name in SPIN_FITS_FILES:
        stem = SPIN_FITS_FILES[spin_name]
        expected = SPIN_NPZ_FILES[stem][0]
        if npz.stem != stem and dataset != expected:
            raise FitsTableError(f"{npy}: SPIN's {spin_name} fits are row-aligned with {stem}.npz (dataset "
                                 f"{expected}), not with {npz.name} (dataset {dataset}), whatever the row counts: "
                                 f"row 0 of the fits is {expected}'s first image, row 0 of {npz.name} is "
                                 f"{keys[0] if keys else 'none'}; give "
                                 f"{stem}.npz, or the fits file of {npz.name}")
        return "spin file name"
    if not vouched:
        raise FitsTableError(f"{npy}: nothing tells whether its {len(keys)} rows are the images of {npz.name} (it is "
                             f"neither SPIN's <name>_fits.npy nor beside a {keys_file(npy).name} written by `fitloop "
                             f"fits export`), and another dataset's fits of as many rows would import as silently "
                             f"wrong fits; write the keys in row order to {keys_file(npy)}, or pass --rows-match "
                             f"(rows_match=True) if you know the rows are {npz.name}'s")
    return "unchecked"


def _no_stage(name: str) -> None:
    return None


def import_spin(table: FitsTable, npz: Path, npy: Path, *, body_model_id: str, dataset: str | None = None,
                time: datetime | None = None, on_stage: Callable[[str], None] | None = None,
                rows_match: bool = False) -> dict:
    """Append SPIN's static fits ``npy`` (N × 82, row-aligned with ``npz``) as unscored ``import`` fits of the body
    model ``body_model_id`` (a content id: ``load_body_model(...).model_id``; SPIN's fits are of the neutral SMPL).

    Only keys without a fit of that body model are appended (an unscored fit never beats a known one), so importing
    twice is a no-op. Rows that are no fit are skipped (module docstring): those the ``.keys`` file marks as filled
    by the export (``skipped_filled``; a marked row that is not all zeros raises FitsTableError), and rows whose pose
    and betas are all exactly 0 (``skipped_zero``). Returns a summary: rows read, rows appended, rows skipped,
    version, dataset, body model, largest float32 rounding, how the rows were checked. ``on_stage(name)`` is called
    as each stage starts ("keys", "fits", "write"). The rows must be the .npz's by a check (`check_rows_match`), or
    by the caller's word (``rows_match``).
    """
    from fitting.body_model import MODEL_ID_PATTERN  # here: the body model module loads torch

    if not MODEL_ID_PATTERN.match(body_model_id):
        raise FitsTableError(f"body model {body_model_id!r} is not a content id (<family>:<16 hex digits>): load the "
                             f"model the fits belong to and pass its model_id (CLI: --model PATH|open)")
    stage = on_stage or _no_stage
    npz, npy = Path(npz), Path(npy)
    stage("keys")
    dataset = spin_dataset(npz, dataset)
    keys = spin_keys(_imgnames(npz), dataset)
    stage("fits")
    try:
        fits = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FitsTableError(f"{npy}: cannot read as a numpy array: {err}") from err
    if fits.shape != (len(keys), SPIN_FITS_WIDTH):
        raise FitsTableError(f"{npy.name} has shape {fits.shape}; {npz.name} has {len(keys)} rows, so SPIN's fits "
                             f"are ({len(keys)}, {SPIN_FITS_WIDTH})")
    identity = check_rows_match(npy, npz, keys, dataset, vouched=rows_match)
    if not np.isfinite(fits).all():
        bad = np.flatnonzero(~np.isfinite(fits).all(axis=1))
        raise FitsTableError(f"{npy}: {len(bad)} row(s) hold NaN or inf, the first row {bad[0]} ({keys[bad[0]]}); "
                             f"nothing was imported: fix or drop those fits in the file")
    zero = ~fits.any(axis=1)   # pose and betas exactly 0: SPIN's mean body, which no fit lands on exactly
    filled = read_keys_file(keys_file(npy))[1] if identity == "keys file" else np.zeros(len(keys), bool)
    if (filled & ~zero).any():
        bad = np.flatnonzero(filled & ~zero)
        raise FitsTableError(f"{npy}: {len(bad)} row(s) marked {FILLED_MARK!r} in {keys_file(npy).name} (exported "
                             f"without a fit, as zeros) hold values, the first row {bad[0]} ({keys[bad[0]]}): the "
                             f"file changed after `fitloop fits export` wrote it; nothing was imported: remove the "
                             f"mark of rows you filled with fits, or export the file again")
    keep = ~(filled | zero)
    rounding = float(np.abs(fits.astype(np.float32).astype(np.float64) - fits).max()) if fits.size else 0.0
    digest = hashlib.sha256(npy.read_bytes()).hexdigest()[:12]
    provenance = FitProvenance(run_id=f"import-{npy.stem}-{digest}", body_model_id=body_model_id,
                               fit_config_hash=SPIN_FIT_CONFIG, source="import")
    batch = fits_batch([key for key, kept in zip(keys, keep) if kept], fits[keep, :NUM_POSE], fits[keep, NUM_POSE:],
                       provenance, time=time)
    stage("write")
    result = table.append(batch, best=table.best_losses(body_model_id=body_model_id, frame="crop"))
    return {"dataset": dataset, "rows": len(keys), "appended": result.rows, "version": result.version,
            "skipped_filled": int(filled.sum()), "skipped_zero": int((zero & ~filled).sum()),
            "body_model_id": body_model_id, "run_id": provenance.run_id, "max_float32_rounding": rounding,
            "rows_checked_by": identity}


def export_spin(table: FitsTable, npz: Path, out: Path, *, dataset: str | None = None, version: int | None = None,
                timestamp: datetime | None = None, fill_missing: bool = False, body_model_id: str | None = None,
                fit_filter: FitFilter = FitFilter(), on_stage: Callable[[str], None] | None = None) -> dict:
    """Write one body model's best crop-frame fits of a version as SPIN's ``<ds>_fits.npy`` (N × 82 float64,
    row-aligned with ``npz``; module docstring: image-frame fits are never written).

    body_model_id: the model whose fits to write; None: the dataset's fits must be of one model (else
      `fits.schema.MixedBodyModelsError`, listing them: one file never mixes models).
    Betas are written as stored (SPIN zeroes extreme betas when it uses a fit, not in the file). ``fit_filter``:
    only the best fits that meet its bars are written (`fits.quality`); a fit below one counts as no fit. Rows
    without a fit raise FitsTableError unless ``fill_missing`` (then they are zeros, SPIN's mean pose and shape,
    and the ``.keys`` file marks them, `FILLED_MARK` after a tab, so that an import skips them; SPIN's layout is
    unchanged).
    The file is written to a temporary name and renamed, so a reader never sees half of it. ``on_stage(name)`` is
    called as each stage starts ("keys", "best", "write").
    """
    stage = on_stage or _no_stage
    npz, out = Path(npz), Path(out)
    stage("keys")
    dataset = spin_dataset(npz, dataset)
    keys = pa.array(spin_keys(_imgnames(npz), dataset))
    stage("best")
    best = table.best(version=version, timestamp=timestamp, dataset=dataset, body_model_id=body_model_id,
                      frame="crop")
    models = best["body_model_id"].unique().to_pylist()
    found = best.num_rows
    best, _ = filter_rows(best, fit_filter)
    where = pc.fill_null(pc.index_in(keys, value_set=best["key"].combine_chunks()), -1).to_numpy()
    missing = where < 0
    if missing.any() and not fill_missing:
        image_frame = table.best(version=version, timestamp=timestamp, dataset=dataset, body_model_id=body_model_id,
                                 frame="image").num_rows
        raise FitsTableError(f"{int(missing.sum())} of {len(keys)} rows of {npz.name} have no crop-frame fit in the "
                             f"table, e.g. {keys.filter(pa.array(missing))[:3].to_pylist()}"
                             + (f" ({image_frame} key(s) have image-frame fits, which SPIN's format cannot hold: "
                                f"seed crop-frame fits, fitloop fits seed --frame crop)" if image_frame else "")
                             + (f" ({found - best.num_rows} best fit(s) below the fit filter's bars: "
                                f"{fit_filter.describe()})" if found > best.num_rows else "")
                             + ("" if found or image_frame else
                                f" (none of body model {body_model_id or 'any'} in dataset {dataset}: the table "
                                f"holds {contents_text(table.contents(version=version, timestamp=timestamp))})")
                             + "; pass fill_missing (--fill-missing) to write zeros for them")
    rows = where[~missing].astype(np.int64)
    array = np.zeros((len(keys), SPIN_FITS_WIDTH), dtype=np.float64)
    pose = pc.list_flatten(best["pose"].combine_chunks()).to_numpy().reshape(-1, NUM_POSE)
    betas = pc.list_flatten(best["betas"].combine_chunks()).to_numpy().reshape(-1, NUM_BETAS)
    array[~missing, :NUM_POSE] = pose[rows]
    array[~missing, NUM_POSE:] = betas[rows]
    stage("write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        tmp.replace(out)
    except BaseException:  # a folder in the way, a full disk: no stray temporary file left
        tmp.unlink(missing_ok=True)
        raise
    # then its keys: killed in between, the file has the keys of the last export to this name (another dataset's
    # are refused at import) or none (only the row count is checked), never keys that vouch for other rows
    listed = keys_file(out)
    tmp_keys = listed.with_name(f".{listed.name}.{os.getpid()}.tmp")
    tmp_keys.write_text("".join(f"{key}\t{FILLED_MARK}\n" if fill else f"{key}\n"
                                for key, fill in zip(keys.to_pylist(), missing)))
    tmp_keys.replace(listed)
    return {"dataset": dataset, "rows": len(keys), "exported": int((~missing).sum()),
            "filled": int(missing.sum()), "filtered": found - best.num_rows, "out": str(out),
            "body_model_id": body_model_id or (models[0] if models else None)}
