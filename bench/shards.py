"""Shard throughput: crops written per second per core, and training samples per second from shards against
SPIN-style loading (each sample's full JPEG read from disk, decoded and cropped), timed in the same process.

Data: the real fixture images (../shared/fixtures: COCO val2017 at ~640×400, MPII at 1280×720, and the small
LSP / LSPET images), run through the real adapters and copied ``copies`` times into a temporary dataset so every
sample has its own file and key (a few hundred samples). Files are read from the page cache on every side.

Three loaders produce a training item (224 px crop, SPIN's augmentation drawn from the same seed, ImageNet
normalisation, 49 keypoints) for the same samples:

* ``reader``: `ShardReader` over the shards (tar -> stored crop JPEG -> `build_item`).
* ``spin_loader``: SPIN's loader, ported: the full image decoded to float, SPIN's ``crop`` (zero canvas, rotate,
  resize), flip, noise, normalisation, and its per-joint keypoint transform. SPIN used scipy.misc's
  imrotate/imresize, which were PIL behind a float->uint8 conversion; PIL stands in for them here.
* ``full_decode``: the full JPEG decoded per sample, then fitloop's own crop code (`build_item`): the loading
  pattern alone, a stronger baseline than SPIN's code, so the ratio against it is what the data format buys.

Rates are per CPU second of this process (per core) and per wall second; CPU time is the steadier figure on a
shared machine. Each loader runs ``repeats`` times, alternating, and its best run counts.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from core.joints import J49_FLIP_PERM
from pipelines.adapters import iter_dataset
from shards.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, sample_params, training_transform
from shards.crop import box_side
from shards.reader import ReaderConfig, ShardReader, build_item
from shards.schema import PersonRecord
from shards.writer import ShardConfig, write_shards

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
DATASETS = ("coco", "mpii", "lsp", "lspet")


def fixture_records(fixtures: Path, datasets: tuple[str, ...]) -> list[PersonRecord]:
    """The persons the real adapters find in the fixtures, for the datasets named."""
    reads = {
        "coco": lambda: iter_dataset("coco", fixtures / "coco", "val", annotation_file="test_coco.json"),
        "mpii": lambda: iter_dataset("mpii", fixtures / "mpii", "val", annotation_file="mmpose_json/test_mpii.json",
                                     image_dir=fixtures / "mpii" / "mmpose_json"),
        "lsp": lambda: iter_dataset("lsp", fixtures / "lsp" / "lsp_dataset", "test"),
        "lspet": lambda: iter_dataset("lspet", fixtures / "lspet" / "lspet_dataset", "train"),
    }
    unknown = set(datasets) - set(reads)
    if unknown:
        raise ValueError(f"unknown benchmark dataset(s) {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    return [r for name in datasets for r in reads[name]() if isinstance(r, PersonRecord)]


def replicate(records: list[PersonRecord], root: Path, copies: int) -> list[PersonRecord]:
    """``copies`` copies of every record, each with its own image file under ``root`` and its own key."""
    out = []
    for copy in range(copies):
        for record in records:
            source = record.image_root / record.image_path
            relative = f"images/c{copy:03d}/{record.dataset}/{source.name}"
            target = root / relative
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            out.append(dataclasses.replace(record, key=f"{record.key}_c{copy:03d}", image_root=root,
                                           image_path=relative))
    return out


def _timed(fn: Callable[[], int]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"samples": count, "wall_s": wall, "cpu_s": cpu, "per_s": count / wall, "per_cpu_s": count / cpu}


def _meta(record: PersonRecord) -> dict[str, Any]:
    return {"key": record.key, "dataset": record.dataset, "split": record.split, "center": record.center.tolist(),
            "scale": record.scale, "has_smpl": record.has_smpl}


def full_decode(records: list[PersonRecord], augment: AugmentConfig, res: int, seed: int) -> int:
    """Per sample: read the original JPEG from disk, decode all of it, then crop and augment with fitloop's code
    (`build_item`, the shard reader's own): the loading pattern alone, without SPIN's slower crop code."""
    rng = np.random.default_rng(seed)
    identity = np.eye(3)
    for record in records:
        with open(record.image_root / record.image_path, "rb") as f, Image.open(f) as opened:
            image = opened.convert("RGB")
        params = sample_params(rng, augment)
        to_crop = training_transform(record.center.astype(np.float64), box_side(record.scale), params, res)
        build_item(image, to_crop, record.keypoints_2d, identity, params, res, meta=_meta(record),
                   joints_3d=record.joints_3d, smpl_pose=record.smpl_pose, smpl_betas=record.smpl_betas)
    return len(records)


# --- SPIN's loader (datasets/base_dataset.py, utils/imutils.py), ported with its arithmetic ---------------------
# scipy.misc.imrotate/imresize were PIL's rotate/resize behind a float->uint8 conversion, so PIL stands in for
# them (without bytescale's contrast stretch); cv2.imread is PIL's decode. Everything else is SPIN's numpy code.

def _spin_get_transform(center: np.ndarray, scale: float, res: int, rot: float = 0.0) -> np.ndarray:
    h = 200 * scale
    t = np.zeros((3, 3))
    t[0, 0] = float(res) / h
    t[1, 1] = float(res) / h
    t[0, 2] = res * (-float(center[0]) / h + .5)
    t[1, 2] = res * (-float(center[1]) / h + .5)
    t[2, 2] = 1
    if rot != 0:
        rot_rad = -rot * np.pi / 180
        sn, cs = np.sin(rot_rad), np.cos(rot_rad)
        rot_mat = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1.0]])
        t_mat = np.eye(3)
        t_mat[0, 2] = t_mat[1, 2] = -res / 2
        t_inv = t_mat.copy()
        t_inv[:2, 2] *= -1
        t = t_inv @ rot_mat @ t_mat @ t
    return t


def _spin_transform(pt: np.ndarray, center: np.ndarray, scale: float, res: int, invert: bool = False,
                    rot: float = 0.0) -> np.ndarray:
    t = _spin_get_transform(center, scale, res, rot=rot)
    if invert:
        t = np.linalg.inv(t)
    new_pt = t @ np.array([pt[0] - 1, pt[1] - 1, 1.0])
    return new_pt[:2].astype(int) + 1


def _spin_crop(img: np.ndarray, center: np.ndarray, scale: float, res: int, rot: float = 0.0) -> np.ndarray:
    ul = np.array(_spin_transform([1, 1], center, scale, res, invert=True)) - 1
    br = np.array(_spin_transform([res + 1, res + 1], center, scale, res, invert=True)) - 1
    pad = int(np.linalg.norm(br - ul) / 2 - float(br[1] - ul[1]) / 2)
    if rot != 0:
        ul -= pad
        br += pad
    new_img = np.zeros([br[1] - ul[1], br[0] - ul[0], img.shape[2]])
    new_x = max(0, -ul[0]), min(br[0], len(img[0])) - ul[0]
    new_y = max(0, -ul[1]), min(br[1], len(img)) - ul[1]
    old_x = max(0, ul[0]), min(len(img[0]), br[0])
    old_y = max(0, ul[1]), min(len(img), br[1])
    new_img[new_y[0]:new_y[1], new_x[0]:new_x[1]] = img[old_y[0]:old_y[1], old_x[0]:old_x[1]]
    if rot != 0:
        rotated = Image.fromarray(np.clip(new_img, 0, 255).astype(np.uint8)).rotate(rot, Image.Resampling.BILINEAR)
        new_img = np.asarray(rotated)[pad:-pad, pad:-pad]
    resized = Image.fromarray(np.clip(new_img, 0, 255).astype(np.uint8)).resize((res, res),
                                                                                Image.Resampling.BILINEAR)
    return np.array(resized)


def spin_loader(records: list[PersonRecord], augment: AugmentConfig, res: int, seed: int) -> int:
    """SPIN's per-sample loading: the full image read and decoded to float, cropped, rotated and resized with
    SPIN's code, flipped, noised, normalised; 2D keypoints through SPIN's per-joint transform."""
    rng = np.random.default_rng(seed)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for record in records:
        with open(record.image_root / record.image_path, "rb") as f, Image.open(f) as opened:
            img = np.asarray(opened.convert("RGB")).astype(np.float32)  # cv2.imread(...)[:, :, ::-1].astype(float32)
        params = sample_params(rng, augment)
        center, scale = record.center.astype(np.float64) + 1.0, record.scale * params.scale  # SPIN is 1-based
        rgb = _spin_crop(img, center, scale, res, rot=params.rot)
        if params.flip:
            rgb = np.fliplr(rgb)
        rgb = rgb.copy()
        for c in range(3):
            rgb[:, :, c] = np.minimum(255.0, np.maximum(0.0, rgb[:, :, c] * params.noise[c]))
        image = (torch.from_numpy(np.transpose(rgb.astype("float32"), (2, 0, 1)) / 255.0) - mean) / std
        kp = record.keypoints_2d.astype(np.float64) + np.array([1.0, 1.0, 0.0])
        for i in range(len(kp)):
            kp[i, 0:2] = _spin_transform(kp[i, 0:2] + 1, center, scale, res, rot=params.rot)
        kp[:, :-1] = 2. * kp[:, :-1] / res - 1.
        if params.flip:
            kp = kp[J49_FLIP_PERM]
            kp[:, 0] = -kp[:, 0]
        _ = {"img": image, "keypoints": torch.from_numpy(kp.astype(np.float32)), **_meta(record)}
    return len(records)


def shard_reading(shard_dir: Path, config: ReaderConfig) -> int:
    return sum(1 for _ in ShardReader(shard_dir, config, rank=0, world_size=1))


LOADERS = ("reader", "spin_loader", "full_decode")


def run(copies: int = 12, datasets: tuple[str, ...] = ("coco", "mpii"), repeats: int = 3, seed: int = 0,
        shard_config: ShardConfig = ShardConfig(samples_per_shard=100), fixtures: Path = FIXTURES,
        work_dir: Path | None = None) -> dict[str, Any]:
    """Write shards from the replicated fixtures, then time the shard reader, SPIN's loader and the full-decode
    loader over the same samples, alternating ``repeats`` times (each one's best run counts)."""
    if not fixtures.is_dir():
        raise FileNotFoundError(f"the benchmark reads the real fixture images at {fixtures}; it is absent")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with; the caller's count comes back at the end
    base = fixture_records(fixtures, datasets)
    tmp = Path(tempfile.mkdtemp(prefix="fitloop-bench-shards-", dir=work_dir))
    try:
        records = replicate(base, tmp / "dataset", copies)
        sizes = {r.dataset: list(Image.open(r.image_root / r.image_path).size) for r in base}
        writes = [_timed(lambda: write_shards(records, tmp / f"shards{i}", shard_config)["counts"]["written"])
                  for i in range(repeats)]
        shard_dir = tmp / "shards0"
        shard_bytes = sum(p.stat().st_size for p in shard_dir.glob("*.tar"))
        reader_config = ReaderConfig(seed=seed, shuffle_buffer=len(records))
        order = np.random.default_rng(seed).permutation(len(records))
        shuffled = [records[i] for i in order]  # SPIN's sampler visits samples in random order too

        def loaders(subset: list[PersonRecord], config: ReaderConfig) -> dict[str, Callable[[], int]]:
            args = (subset, config.augment, config.img_res, seed)
            return {"reader": lambda: shard_reading(shard_dir, config), "spin_loader": lambda: spin_loader(*args),
                    "full_decode": lambda: full_decode(*args)}

        def best_of(subset: list[PersonRecord], config: ReaderConfig) -> dict[str, dict[str, float]]:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in LOADERS}
            for _ in range(repeats):  # alternate, so a burst of load elsewhere hits every loader alike
                for name, fn in loaders(subset, config).items():
                    runs[name].append(_timed(fn))
            return {name: max(r, key=lambda t: t["per_cpu_s"]) for name, r in runs.items()}

        overall = best_of(shuffled, reader_config)
        per_dataset = {}
        for name in sorted({r.dataset for r in records}):
            subset = [r for r in shuffled if r.dataset == name]
            best = best_of(subset, dataclasses.replace(reader_config, datasets=(name,)))
            per_dataset[name] = {"samples": len(subset), "image_size": sizes[name],
                                 **{f"{k}_per_cpu_s": v["per_cpu_s"] for k, v in best.items()},
                                 "ratio_vs_spin_loader": best["reader"]["per_cpu_s"] / best["spin_loader"]["per_cpu_s"],
                                 "ratio_vs_full_decode": best["reader"]["per_cpu_s"] / best["full_decode"]["per_cpu_s"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(threads)

    write = max(writes, key=lambda t: t["per_cpu_s"])
    read, spin, full = overall["reader"], overall["spin_loader"], overall["full_decode"]
    return {
        "benchmark": "shards", "data": "real fixture images (../shared/fixtures), each copied per replica",
        "datasets": list(datasets), "copies": copies, "samples": len(records), "repeats": repeats,
        "torch_threads": torch.get_num_threads(), "shard_config": dataclasses.asdict(shard_config),
        "shard_bytes_per_sample": shard_bytes / len(records),
        "write_crops_per_s": write["per_s"], "write_crops_per_cpu_s": write["per_cpu_s"],
        "reader_samples_per_s": read["per_s"], "reader_samples_per_cpu_s": read["per_cpu_s"],
        "spin_loader_samples_per_s": spin["per_s"], "spin_loader_samples_per_cpu_s": spin["per_cpu_s"],
        "full_decode_samples_per_s": full["per_s"], "full_decode_samples_per_cpu_s": full["per_cpu_s"],
        "ratio_reader_vs_spin_loader_per_core": read["per_cpu_s"] / spin["per_cpu_s"],
        "ratio_reader_vs_full_decode_per_core": read["per_cpu_s"] / full["per_cpu_s"],
        "per_dataset": per_dataset,
        "load_average": list(os.getloadavg()), "cpus": os.cpu_count(),
    }
