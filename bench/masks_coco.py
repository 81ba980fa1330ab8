"""`fitloop bench masks`' COCO section: fits of real COCO people with and without the silhouette term, scored by
the IoU of the fitted body's silhouette with the person's annotated mask, and drawn.

**People.** The COCO excerpt in ../shared/fixtures/coco (`bench.shards.FIXTURES`: 4 val2017 images, 14 person
annotations) through the project's own path: the COCO adapter (`pipelines.adapters.coco`, SPIN's box: bbox
centre, side 1.2·max(w, h)), the shard writer (`shards.writer.write_shards`: the stored crop, its keypoints, the
mask decoded from the polygons or RLE and warped into the crop), the shard reader, into a temporary folder.
Selection: SPIN's COCO training selection (datasets/preprocess/coco.py, nkolot/SPIN: a person is kept only when
all 12 limb joints, shoulders to ankles, are annotated; `pipelines.adapters.SPIN_LIMB_JOINTS`): a person with fewer
keypoints says too little for SMPLify to fit (a ``missing_required_joints`` reject). The adapter also rejects
crowd regions (``iscrowd=1``, ``crowd``) and people under its other checks; a person written without a mask is
``no_mask``. Each skip is counted by its reason (``skipped``).

**What SMPLify gets** is what ``fitloop fits seed`` gives it for a COCO sample (`fits.seeding`): the stored crop's
49 keypoints in SPIN's fit frame (`core.frames.keypoints_in_fit_frame`; COCO fills the 17 J24 slots it has, the
OpenPose slots are empty), SPIN's crop camera (f = 5000 px, principal point 112 px), the mean-pose start
(`fitting.smplify.mean_pose_start`), the fast mode; plus the person mask in the same 224 px frame (nearest
neighbour from the stored crop, `shards.masks.crop_labels`; crop pixels outside the image stay `UNKNOWN`, and so do
the image's other people and crowd regions outside the person: possible occluders, `pipelines.adapters.coco`).
The arms are those of the synthetic section (``silhouette_weight`` 0 and each ``--weights`` value), chosen on its
dev split: these real people play no part in choosing them.

**IoU** of the fit's z-buffer coverage (`fitting.silhouette.render_silhouette`, ``face_index >= 0``) with the
annotated mask, over the pixels the annotation knows (``UNKNOWN`` pixels, outside the image or under another
person, left out of both).
COCO's polygons trace the clothed person, the body model is unclothed, so IoU 1 is out of reach by design; the
comparison between arms is what counts. Also: the fits' reprojection error (px, mean over the annotated joints).

**Pictures** (``--pictures DIR``): per person, the fit-frame crop at `PICTURE_SCALE` × with the annotated mask's
outline in white (the pixels outside it dimmed, unknown ones — outside the image, other people — more), the keypoints-only fit's outline in `KEYPOINTS_COLOUR` and the silhouette-term fit's (the first
``--weights`` value) in `SILHOUETTE_COLOUR`, and a caption with the IoUs; and a contact sheet of them all.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from bench.shards import FIXTURES
from core.frames import FIT_CENTER, FIT_FOCAL, FIT_FRAME_OFFSET, FIT_RES, keypoints_in_fit_frame, stored_to_fit_frame
from fitting.body_model import BodyModel
from fitting.silhouette import render_silhouette
from fitting.smplify import SMPLify, mean_pose_start
from pipelines.adapters import SPIN_LIMB_JOINTS, iter_dataset
from render.sample_picture import contact_sheet, decode_crop, text_font
from shards.crop import warp
from shards.lookup import iter_samples
from shards.masks import UNKNOWN, crop_labels
from shards.writer import REJECTS, ShardConfig, write_shards

COCO_ROOT = FIXTURES / "coco"
COCO_ANNOTATIONS = "test_coco.json"
PICTURE_SCALE = 2                              # picture px per fit-frame px
CAPTION_PX = 30                                # the caption's band under each picture
KEYPOINTS_COLOUR = (255, 150, 30)              # outline of the keypoints-only fit (orange)
SILHOUETTE_COLOUR = (40, 220, 255)             # outline of the fit with the silhouette term (cyan)
MASK_COLOUR = (255, 255, 255)                  # outline of the annotated mask (white)
BACKGROUND_DIM = 0.6                           # pixels outside the mask dimmed by this (unknown ones twice)
# The fit frame's pixel indices (centres at integers) from its px (corners at integers, `core.frames`).
TO_PIXEL_INDEX = np.array([[1.0, 0.0, -FIT_FRAME_OFFSET], [0.0, 1.0, -FIT_FRAME_OFFSET], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CocoPeople:
    """The COCO people the section fits, in the fit frame.

    keys (N,) sample keys; keypoints (N, 49, 3) fit-frame px + confidence; masks (N, 224, 224) uint8 (0, 1,
    `UNKNOWN`), pixel (i, j) centred at fit-frame px (j + 0.5, i + 0.5); crops: the (224, 224) RGB fit-frame
    pictures; skipped: reason -> people left out (module docstring)."""

    keys: list[str]
    keypoints: np.ndarray
    masks: torch.Tensor
    crops: list[Image.Image]
    skipped: dict[str, int]


def coco_people(root: Path = COCO_ROOT, annotation_file: str = COCO_ANNOTATIONS) -> CocoPeople:
    """The fixture's people through adapter, shard writer and reader (module docstring); FileNotFoundError when
    ``root`` is absent."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is absent: the COCO section reads the real fixtures beside the checkout")
    records = iter_dataset("coco", root, "val", annotation_file=annotation_file, require_joints=SPIN_LIMB_JOINTS)
    keys, keypoints, masks, crops = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="fitloop-bench-masks-coco-") as tmp:
        shards = Path(tmp) / "shards"
        write_shards(records, shards, ShardConfig())
        skipped = Counter(pq.read_table(shards / REJECTS).column("reason").to_pylist())
        for sample in iter_samples(shards):
            mask = sample.labels("mask")
            if mask is None:
                skipped["no_mask"] += 1
                continue
            to_fit = TO_PIXEL_INDEX @ stored_to_fit_frame(sample.meta["crop"])
            keys.append(sample.key)
            keypoints.append(keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"]))
            masks.append(crop_labels(mask, to_fit, FIT_RES))
            crops.append(warp(decode_crop(sample), to_fit, FIT_RES))
    return CocoPeople(keys, np.stack(keypoints) if keys else np.zeros((0, 49, 3), np.float32),
                      torch.as_tensor(np.stack(masks) if keys else np.zeros((0, FIT_RES, FIT_RES), np.uint8)),
                      crops, dict(sorted(skipped.items())))


def fit_coverage(smplify: SMPLify, people: CocoPeople) -> tuple[torch.Tensor, np.ndarray, float]:
    """Fit the people from SPIN's mean start in the crop camera (with their masks: the term acts when its weight
    is > 0). Returns the fits' coverage (N, 224, 224) bool, their reprojection error (N,) px (mean distance over
    the annotated joints) and the CPU seconds of the fits."""
    body = smplify.body
    kp = torch.as_tensor(people.keypoints, dtype=torch.float32)
    center = torch.full((len(kp), 2), FIT_CENTER)
    pose, betas, cam_t = mean_pose_start(body, kp, FIT_FOCAL, center)
    clock = time.process_time()
    fit = smplify(kp, pose, betas, cam_t, center, start="mean", masks=people.masks)
    seconds = time.process_time() - clock
    with torch.no_grad():
        out = body(fit.betas, fit.pose[:, 3:], fit.pose[:, :3])
        camera = out.vertices + fit.cam_t[:, None]
        drawn = render_silhouette(camera, torch.as_tensor(body.faces), smplify.config.focal_length,
                                  (FIT_CENTER - FIT_FRAME_OFFSET,) * 2, (FIT_RES, FIT_RES))
        joints = out.joints + fit.cam_t[:, None]
        projected = smplify.config.focal_length * joints[..., :2] / joints[..., 2:] + FIT_CENTER
    seen = kp[..., 2] > 0
    distance = (projected - kp[..., :2]).norm(dim=-1)
    reprojection = ((distance * seen).sum(1) / seen.sum(1).clamp(min=1)).numpy()
    return drawn.face_index >= 0, reprojection, seconds


def mask_iou(coverage: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """IoU (N,) of coverages (N, H, W) bool with person masks (N, H, W) uint8 over the pixels the masks know
    (`UNKNOWN` pixels count in neither); 0 where both are empty."""
    known = masks != UNKNOWN
    person = masks == 1
    inter = (coverage & person & known).sum((1, 2))
    union = ((coverage | person) & known).sum((1, 2))
    return (inter / union.clamp(min=1)).numpy()


def run_coco(body: BodyModel, arms: dict[str, SMPLify], pictures: Path | None = None,
             people: CocoPeople | None = None) -> dict[str, Any]:
    """The section: per arm (name -> its SMPLify; "keypoints" the baseline), per person and mean IoU and
    reprojection, CPU s per fit, the ratios of the means to the baseline's; pictures into ``pictures`` when given
    (their paths under ``"pictures"``). ``people`` default: `coco_people` of the fixtures."""
    people = coco_people() if people is None else people
    out: dict[str, Any] = {"people": len(people.keys), "skipped": people.skipped, "keys": people.keys, "arms": {}}
    if not people.keys:
        return out
    coverages = {}
    for arm, smplify in arms.items():
        coverage, reprojection, seconds = fit_coverage(smplify, people)
        iou = mask_iou(coverage, people.masks)
        coverages[arm] = coverage
        out["arms"][arm] = {"iou": float(iou.mean()), "reprojection_px": float(reprojection.mean()),
                            "cpu_s_per_fit": seconds / len(people.keys), "iou_per_person": iou.round(4).tolist()}
    base = out["arms"]["keypoints"]
    for arm, row in out["arms"].items():
        if arm != "keypoints":
            row["ratio_to_keypoints"] = {k: row[k] / base[k] for k in ("iou", "reprojection_px")}
            row["people_better"] = int(sum(a > b for a, b in zip(row["iou_per_person"], base["iou_per_person"])))
    if pictures is not None:
        term = next(arm for arm in arms if arm != "keypoints")
        out["pictures"] = write_pictures(people, coverages["keypoints"], coverages[term],
                                         out["arms"]["keypoints"]["iou_per_person"],
                                         out["arms"][term]["iou_per_person"], term, Path(pictures))
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a (H, W) bool mask with a 4-neighbour outside it (the image's edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def person_picture(crop: Image.Image, mask: np.ndarray, keypoints_fit: np.ndarray, term_fit: np.ndarray,
                   caption: str) -> Image.Image:
    """One person's picture (module docstring): ``crop`` the (224, 224) fit-frame RGB, ``mask`` its (224, 224)
    uint8 annotated mask, the two fits' coverages (224, 224) bool; `PICTURE_SCALE` × its size, plus the caption's
    band."""
    side = FIT_RES * PICTURE_SCALE

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, PICTURE_SCALE, 0), PICTURE_SCALE, 1)

    pixels = np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float64)
    person, unknown = up(mask == 1), up(mask == UNKNOWN)
    pixels[~person] *= BACKGROUND_DIM
    pixels[unknown] *= BACKGROUND_DIM
    for region, colour in ((person, MASK_COLOUR), (up(keypoints_fit), KEYPOINTS_COLOUR),
                           (up(term_fit), SILHOUETTE_COLOUR)):
        edge = outline(region)
        edge |= np.roll(edge, 1, 0) | np.roll(edge, 1, 1)          # 2 px wide lines
        pixels[edge] = colour
    picture = Image.new("RGB", (side, side + CAPTION_PX), (255, 255, 255))
    picture.paste(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (0, 0))
    ImageDraw.Draw(picture).text((4, side + 2), caption, fill=(0, 0, 0), font=text_font(11))
    return picture


def write_pictures(people: CocoPeople, keypoints_fit: torch.Tensor, term_fit: torch.Tensor,
                   iou_keypoints: list[float], iou_term: list[float], term: str, folder: Path) -> list[str]:
    """One PNG per person (``<key with / as _>.png``) and ``coco_masks.png``, the contact sheet of them all, in
    ``folder`` (created); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, pictures = [], []
    for i, key in enumerate(people.keys):
        caption = (f"{key}\nIoU keypoints {iou_keypoints[i]:.3f} (orange)  {term} {iou_term[i]:.3f} (cyan)")
        picture = person_picture(people.crops[i], people.masks[i].numpy(), keypoints_fit[i].numpy(),
                                 term_fit[i].numpy(), caption)
        path = folder / f"{key.replace('/', '_')}.png"
        picture.save(path)
        paths.append(str(path))
        pictures.append(picture)
    sheet = folder / "coco_masks.png"
    contact_sheet(pictures).save(sheet)
    return [str(sheet)] + paths
