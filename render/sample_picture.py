"""Pictures of shard samples: the stored crop with its 2D keypoints and skeleton and a fit's mesh over it, one panel
per fit (e.g. the best fit now and as of an older table version), and contact sheets of many samples.

Meshes are drawn by fitloop's one renderer, the z-buffer of `render.raster` (numpy; no OpenGL), keypoints and
captions with PIL (`render.draw`). The mesh is placed by the camera of the fit's frame written in stored-crop px
(`panel_camera`): SPIN's fit-frame camera (`core.frames.fit_camera`) for a crop-frame fit, the original image's
camera (the row's intrinsics) through the crop's pixel map for an image-frame fit, both exact. The keypoints are
the sample's stored-crop keypoints, so both are drawn in the same pixel frame: when a fit is good, its mesh covers
the person and the markers sit on the person's joints. Pixel centres are at integers throughout (as `shards.crop`): the
rasteriser fills a pixel when its centre lies in a projected triangle, and PIL centres a marker on its pixel.

Only fits of the body model drawing them are drawn: a fit's pose and betas mean something on its own model alone
(SMPL-X's shape space and joints are not SMPL's). A sample whose fits are all of other models gets no mesh, and its
panel names those models and the ``--model`` that draws them (`fits_by_other_models`, `model_option`).

A sample with a person mask, part labels or a parsing (shard format 4, `shards.masks`) gets one more panel,
"labels" (`render_labels`): its part labels (else its parsing, else its mask) tinted over the crop (one colour per
id, `PART_PALETTE`), the mask's outline in white, and what the annotation says nothing about (outside the original
image) darkened.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.frames import (
    PixelCamera,
    camera_through,
    fit_camera,
    fit_frame_camera,
    image_to_fit_frame,
    keypoints_in_fit_frame,
    pose_fit,
)
from core.joints import JOINT_INDEX
from render.draw import draw_hands_and_face, draw_keypoints
from render.raster import render_mesh
from shards.masks import LABEL_KINDS, UNKNOWN
from shards.sample import StoredSample

MESH_COLOUR = (235, 205, 150)
MESH_OPACITY = 0.6            # the person stays visible under the mesh
CAPTION_LINE = 14             # px per caption line
CAPTION_LINES = 2
BACKGROUND = (255, 255, 255)
TEXT, WARN = (30, 30, 30), (190, 30, 30)
TORSO_PAIRS = (("Right Shoulder", "Right Hip"), ("Left Shoulder", "Left Hip"))
LABEL_OPACITY = 0.55          # of the part tint over the crop
# The largest panel side, px (`fitloop shards render --size`): 6.4x the default 320 px stored crop, so a crop is
# magnified well past what it holds. The rasteriser's memory grows with the pixels a mesh covers (`render.raster`):
# `fitloop shards render` of one synthetic person peaked at 0.76 GB at 2048 px (0.72 GB at 320: torch and the
# model), 1.5 GB at 4096 and 4.6 GB at 8192; 100000 px was killed for memory.
MAX_PANEL_PX = 2048
MASK_TINT = (60, 200, 255)    # the person of a sample with a mask and no part labels


def _palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 distinct colours per label id (golden-ratio hues, full value); id 0 (background) black."""
    hue = (np.arange(n) * 0.618033988749895) % 1.0
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6.0) % 6.0
    rgb = 1.0 - 0.75 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    out = (rgb * 255).round().astype(np.uint8)
    out[0] = 0
    return out


PART_PALETTE = _palette()


@dataclass(frozen=True)
class FitPanel:
    """One panel of a sample's picture: a title and the fit it shows (a fits-table row as a dict, e.g. from
    ``FitsTable.best().to_pylist()``; None draws the keypoints only and says "no fit")."""

    title: str
    fit: dict[str, Any] | None
    missing: str = "no fit"   # said on the picture when ``fit`` is None


def text_font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def decode_crop(sample: StoredSample) -> Image.Image:
    """The sample's stored crop as an RGB image (decoded in full)."""
    with Image.open(io.BytesIO(sample.jpeg)) as opened:
        return opened.convert("RGB")


def fit_intrinsics(fit: dict[str, Any]) -> PixelCamera | None:
    """The original image's camera (original-image px) an image-frame fit row was made with; None for a crop-frame
    fit (or a row without a frame: fits before schema 3 were all crop-frame). ValueError for an unknown frame or an
    image-frame row without intrinsics."""
    frame = fit.get("frame") or "crop"
    if frame == "crop":
        return None
    if frame != "image" or fit.get("intrinsics") is None:
        raise ValueError(f"a fit of frame {frame!r} with intrinsics {fit.get('intrinsics')!r}: fitloop draws "
                         f"crop-frame fits and image-frame fits with their image's intrinsics")
    fx, fy, cx, cy = (float(v) for v in fit["intrinsics"])
    return PixelCamera((fx, fy), (cx, cy))


def panel_camera(sample: StoredSample, fit: dict[str, Any], size: int | None = None) -> PixelCamera:
    """The camera that draws ``fit`` into the sample's stored crop (resized to ``size`` px; pixel centres at
    integers): SPIN's fit-frame camera for a crop-frame fit, the image's camera through ``image_to_crop`` for an
    image-frame fit (module docstring)."""
    crop = sample.meta["crop"]
    image = fit_intrinsics(fit)
    if image is None:
        base = fit_camera(crop)
        camera = PixelCamera((base.focal, base.focal), base.center)
    else:
        camera = camera_through(sample.image_to_crop, image)
    s = (size or crop["res"]) / crop["res"]
    resize = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])  # centres stay at integers
    return camera_through(resize, camera)


def estimate_cam_t(model: Any, sample: StoredSample, pose: np.ndarray, betas: np.ndarray,
                   image: PixelCamera | None = None) -> np.ndarray | None:
    """A camera translation (3,) metres for a fit stored without one (imported static fits): SMPLify's torso
    estimate from the sample's keypoints in the fit frame, with SPIN's fit-frame camera, or with the original
    image's camera ``image`` (original-image px) written in fit-frame px; None when no torso pair is annotated."""
    import torch

    from core.camera import translation_from_torso

    keypoints = torch.as_tensor(keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"]))[None]
    pairs = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in TORSO_PAIRS)
    if not any(keypoints[0, a, 2] > 0 and keypoints[0, b, 2] > 0 for a, b in pairs):
        return None
    camera = fit_frame_camera() if image is None else camera_through(image_to_fit_frame(sample.meta["crop"]), image)
    posed = pose_fit(model, pose, betas, np.zeros(3))
    joints = torch.as_tensor(posed.joints, dtype=torch.float32)[None]
    t = translation_from_torso(joints, keypoints, torch.tensor([camera.focal]), torch.tensor([camera.center]), pairs)
    return t[0].numpy().astype(np.float64)


def fits_by_other_models(histories: dict[str, list[dict[str, Any]]], model_id: str) -> dict[str, list[str]]:
    """key -> the ids (sorted) of the body models a key's fits are of, for each key that has fits but none of the
    body model ``model_id`` (``histories``: `fits.lookup.fit_histories`, rows of every model); other keys absent."""
    out = {}
    for key, rows in histories.items():
        models = {row["body_model_id"] for row in rows}
        if models and model_id not in models:
            out[key] = sorted(models)
    return out


FAMILY_FILES = {"smpl": "SMPL", "smplh": "SMPL-H", "smplx": "SMPL-X", "open": "open model"}


@functools.lru_cache(maxsize=None)
def model_option(model_id: str) -> str:
    """The ``--model`` that draws fits of the body model ``model_id`` (``<family>:<16 hex>``): the name of the open
    model with that id (each is loaded once to learn its id, about a second for all), else ``--model <SMPL-X
    file>`` (its family's): the file the fits were made with."""
    from core.errors import ModelFileError
    from fitting.body_model import OPEN_MODELS, load_body_model

    for name in OPEN_MODELS:
        try:
            if load_body_model(name).model_id == model_id:
                return f"--model {name}"
        except ModelFileError:  # an open model's file not built here: it cannot be the one
            continue
    return f"--model <{FAMILY_FILES.get(model_id.split(':', 1)[0], 'model')} file>"


def other_models_note(models: Sequence[str]) -> str:
    """What a panel says for a sample whose fits are all of other body models (``models``: their ids): how to draw
    them first, so that a small panel still shows it."""
    return (f"draw with {' or '.join(model_option(m) for m in models)}: "
            f"fit{'s' if len(models) > 1 else ''} by {', '.join(models)}")


def fit_caption(fit: dict[str, Any] | None, model: Any | None, missing: str = "no fit") -> tuple[str, bool]:
    """(one line describing a fit, whether it warns): loss, source, run; or ``missing`` when there is no fit."""
    if fit is None:
        return missing, True
    loss = "unscored" if fit.get("loss") is None else f"loss {fit['loss']:.2f} px^2"  # the font has no '²'
    text = f"{loss} · {fit.get('source') or 'unknown'} fit, run {fit.get('run_id') or 'unknown'}"
    if (fit.get("frame") or "crop") != "crop":
        text += f" · {fit['frame']} frame"
    warn = False
    if model is not None and fit.get("body_model_id") not in (None, model.model_id):
        text += f" · fit by {fit['body_model_id']}, drawn with {model.model_id}"
        warn = True
    return text, warn


def render_panel(sample: StoredSample, fit: dict[str, Any] | None, model: Any | None, size: int | None = None,
                 *, crop: Image.Image | None = None, opacity: float = MESH_OPACITY, radius: float | None = None,
                 missing: str = "no fit") -> tuple[Image.Image, list[str]]:
    """The stored crop (resized to ``size`` px, default its own) with the fit's mesh and the sample's keypoints.

    Args:
        sample: the shard sample. fit: a fits-table row (pose (72,), betas (10,), cam_t (3,) or None) or None.
        model: the body model (`fitting.body_model.BodyModel`) to pose the fit with; None draws no mesh.
        crop: the decoded crop, when the caller has it already.
        opacity: of the mesh; radius: of the keypoint markers, px (default from ``size``).
        missing: what the picture says when ``fit`` is None.
    Returns:
        (the picture, notes): notes say what is not drawn and why (``missing``, a camera estimated); they are also
        written on the picture.
    """
    base = crop if crop is not None else decode_crop(sample)
    res = base.size[0]
    size = size or res
    image = base if size == res else base.resize((size, size), Image.Resampling.BILINEAR)
    if sample.meta["crop"]["res"] != res:
        raise ValueError(f"sample {sample.key}: decoded crop is {res} px, its json says {sample.meta['crop']['res']}")
    notes = []
    if fit is None:
        notes.append(missing)
    elif model is None:
        notes.append("no body model")
    else:
        camera = panel_camera(sample, fit, size)
        cam_t = fit.get("cam_t")
        if cam_t is None:
            cam_t = estimate_cam_t(model, sample, np.asarray(fit["pose"]), np.asarray(fit["betas"]),
                                   fit_intrinsics(fit))
            notes.append("no camera stored: estimated from the torso" if cam_t is not None
                         else "no camera stored and no torso keypoints: mesh not drawn")
        if cam_t is not None:
            posed = pose_fit(model, np.asarray(fit["pose"]), np.asarray(fit["betas"]), np.asarray(cam_t))
            image = render_mesh(image, posed.vertices, model.faces, camera.focal, camera.center,
                                colour=MESH_COLOUR, opacity=opacity)
    radius = radius if radius is not None else max(2.0, size / 110)
    image = draw_keypoints(image, scale_keypoints(sample.keypoints_crop, res, size), radius=radius)
    if sample.wholebody_crop is not None:  # hands and face of a whole-body sample, smaller than the joints
        image = draw_hands_and_face(image, scale_keypoints(sample.wholebody_crop, res, size), radius=radius / 2)
    if notes:
        draw = ImageDraw.Draw(image)
        font_px = max(11, size // 22)
        font = text_font(font_px)
        for i, note in enumerate(notes):
            draw.text((4, 3 + i * (font_px + 3)), fit_text(note, font, size - 8), fill=(255, 255, 255), font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
    return image, notes


def scale_keypoints(keypoints: np.ndarray, res: int, size: int) -> np.ndarray:
    """(J, 3) keypoints in px of a ``res`` picture -> px of the picture resized to ``size`` (centres at integers);
    absent joints stay all zeros."""
    out = np.array(keypoints, dtype=np.float64)
    s = size / res
    present = out[:, 2] > 0
    out[present, :2] = (out[present, :2] + 0.5) * s - 0.5
    return out


def render_labels(sample: StoredSample, size: int | None = None, *, crop: Image.Image | None = None
                  ) -> tuple[Image.Image, str]:
    """The crop (resized to ``size`` px) with the sample's part labels tinted (else its parsing, else its mask), the
    mask's outline in white and unknown pixels darkened; and a caption naming the provenances."""
    base = crop if crop is not None else decode_crop(sample)
    res = base.size[0]
    size = size or res
    images = {kind: sample.labels(kind) for kind in LABEL_KINDS}
    mask = images["mask"]
    pixels = np.asarray(base, dtype=np.float32).copy()
    tinted = next((kind for kind in ("parts", "parsing", "mask") if images[kind] is not None), None)
    if tinted is not None:
        labels = images[tinted]
        shown = (labels > 0) & (labels != UNKNOWN)
        tint = PART_PALETTE[labels] if tinted != "mask" else np.broadcast_to(np.array(MASK_TINT), pixels.shape)
        pixels[shown] = (1 - LABEL_OPACITY) * pixels[shown] + LABEL_OPACITY * tint[shown]
        pixels[labels == UNKNOWN] *= 0.35
    if mask is not None:
        person = mask == 1
        edge = person & ~(np.roll(person, 1, 0) & np.roll(person, -1, 0) & np.roll(person, 1, 1)
                          & np.roll(person, -1, 1))
        pixels[edge] = 255.0
    image = Image.fromarray(pixels.round().astype(np.uint8))
    if size != res:
        image = image.resize((size, size), Image.Resampling.NEAREST)
    said = [f"mask: {sample.meta['mask_provenance']}" if mask is not None else "no mask"]
    said += [f"{kind}: {sample.meta[f'{kind}_provenance']} ({len(sample.label_names(kind)) - 1})"
             for kind in ("parts", "parsing") if images[kind] is not None]
    return image, " · ".join(said)


def render_sample(sample: StoredSample, panels: Sequence[FitPanel], model: Any | None, size: int | None = None,
                  *, opacity: float = MESH_OPACITY) -> Image.Image:
    """The sample's picture: one panel per `FitPanel` side by side (at least one: keypoints only), and a "labels"
    panel (`render_labels`) when the sample has a mask or part labels, each with a caption of two lines under it
    (the key and the panel's title; the fit's loss, source and run, or the labels' provenance)."""
    panels = list(panels) or [FitPanel("keypoints", None)]
    if size is not None and not 1 <= size <= MAX_PANEL_PX:
        raise ValueError(f"a panel's side is 1 to {MAX_PANEL_PX} px, got {size}")
    crop = decode_crop(sample)
    size = size or crop.size[0]
    has_labels = any(getattr(sample, f"{kind}_png") is not None for kind in LABEL_KINDS)
    out = Image.new("RGB", (size * (len(panels) + has_labels), size + CAPTION_LINE * CAPTION_LINES + 4), BACKGROUND)
    draw = ImageDraw.Draw(out)
    font = text_font()
    if has_labels:
        picture, line = render_labels(sample, size, crop=crop)
        x = size * len(panels)
        out.paste(picture, (x, 0))
        draw.text((x + 3, size + 2), fit_text(f"{sample.key} · labels", font, size - 6), fill=TEXT, font=font)
        draw.text((x + 3, size + 2 + CAPTION_LINE), fit_text(line, font, size - 6), fill=TEXT, font=font)
    for i, panel in enumerate(panels):
        picture, _ = render_panel(sample, panel.fit, model, size, crop=crop, opacity=opacity, missing=panel.missing)
        out.paste(picture, (i * size, 0))
        line, warn = fit_caption(panel.fit, model, panel.missing)
        draw.text((i * size + 3, size + 2), fit_text(f"{sample.key} · {panel.title}", font, size - 6), fill=TEXT,
                  font=font)
        draw.text((i * size + 3, size + 2 + CAPTION_LINE), fit_text(line, font, size - 6),
                  fill=WARN if warn else TEXT, font=font)
    return out


def fit_text(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` px in ``font``."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(pictures: Sequence[Image.Image], columns: int | None = None, gap: int = 4) -> Image.Image:
    """Pictures in a grid, row by row, ``gap`` px apart (white); every cell has the size of the largest picture.
    ``columns`` defaults to ceil(sqrt(n)). The sheet is ``columns·w + (columns-1)·gap`` wide and
    ``rows·h + (rows-1)·gap`` high."""
    if not pictures:
        raise ValueError("a contact sheet needs at least one picture")
    columns = max(1, min(columns or math.ceil(math.sqrt(len(pictures))), len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    w = max(p.size[0] for p in pictures)
    h = max(p.size[1] for p in pictures)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), BACKGROUND)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        sheet.paste(picture, (c * (w + gap), r * (h + gap)))
    return sheet


def projected_joints(sample: StoredSample, fit: dict[str, Any], model: Any, size: int | None = None) -> np.ndarray:
    """(49, 2) the fit's joints projected into the sample's stored crop (resized to ``size``), px: where
    `render_panel` puts them (either frame). For checks and for drawing fit joints elsewhere."""
    camera = panel_camera(sample, fit, size)
    posed = pose_fit(model, np.asarray(fit["pose"]), np.asarray(fit["betas"]), np.asarray(fit["cam_t"]))
    return camera.project(posed.joints)


def fits_sheet(shard_dir: Path, table_path: Path, n: int = 8, *, model: Any = "open", version: int | None = None,
               seed: int = 0, size: int = 192, columns: int | None = None, frame: str | None = None) -> Image.Image:
    """A contact sheet of ``n`` seeded-random samples of a shard set with their best fits of the body model
    ``model`` (a `BodyModel`, or what `load_body_model` takes) and ``frame`` (None: the fits must be of one) as of
    ``version``; a sample whose fits are all of other models says which (`other_models_note`)."""
    from fits.lookup import best_fits, fit_histories, latest_version
    from fits.table import FitsTable
    from fitting.body_model import load_body_model
    from shards.lookup import pick_samples
    from shards.verify import unusable

    samples = pick_samples(Path(shard_dir), n, seed, check=partial(unusable, picture=True))
    table = FitsTable.open(table_path)
    version = latest_version(table) if version is None else version
    body = load_body_model(model) if isinstance(model, str) else model
    keys = [s.key for s in samples]
    fits = best_fits(table, keys, version, body_model_id=body.model_id, frame=frame)
    others = fits_by_other_models(fit_histories(table, keys, version), body.model_id)
    pictures = [render_sample(s, [FitPanel(f"best, v{version}", fits.get(s.key),
                                           other_models_note(others[s.key]) if s.key in others else "no fit")],
                              body, size) for s in samples]
    return contact_sheet(pictures, columns)
