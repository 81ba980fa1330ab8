"""Pictures of what the network predicts: held-out crops with the predicted mesh drawn over them, one grid per
evaluation (`training.run_log.RunLog.log_overlays` writes it as a PNG and to TensorBoard).

The crop is the reader's training crop (no augmentation on held-out shards): the square box of side ``200·scale``
around the person, resampled to the run's ``img_res``, ImageNet-normalised (`shards.augment.normalize_image`,
undone here). The network's camera is SPIN's crop camera, focal 5000 px on the 224 px fit frame with its
principal point at the crop centre (`core.frames`); on a crop of ``img_res`` px with pixel centres at integers
(`render.raster`'s convention) that is focal ``5000·img_res/224`` and principal point ``img_res/2 - 0.5``
(`crop_camera`), the camera `training.predict.image_camera` writes in the original image.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from PIL import Image

from core.frames import FIT_CENTER, FIT_FOCAL, FIT_FRAME_OFFSET, FIT_RES, CropCamera
from fitting.body_model import BodyModel
from fitting.wholebody_model import WholeBodyModel
from render.raster import render_mesh
from render.sample_picture import contact_sheet
from shards.augment import IMAGENET_MEAN, IMAGENET_STD
from training.heads import Head
from training.step import predict

OVERLAY_SAMPLES = 8   # held-out crops per evaluation picture: the first ones of the held-out shards, every time


def crop_camera(img_res: int) -> CropCamera:
    """SPIN's crop camera in the pixels of an ``img_res`` crop, centres at integers (module docstring)."""
    fit = CropCamera(FIT_FOCAL, (FIT_CENTER - FIT_FRAME_OFFSET,) * 2, FIT_RES)
    return fit.resized(img_res)


def crop_image(img: torch.Tensor) -> Image.Image:
    """A reader's crop (3, H, W) ImageNet-normalised float back to an RGB picture (H × W)."""
    pixels = img.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))


def first_items(batches: Iterable[Mapping], count: int) -> dict | None:
    """The first ``count`` examples of collated reader batches, as one batch (None when there are none)."""
    taken: list[Mapping] = []
    seen = 0
    for items in batches:
        taken.append(items)
        seen += len(items["img"])
        if seen >= count:
            break
    if not taken:
        return None
    out = {}
    for key in taken[0]:
        values = [items[key] for items in taken]
        out[key] = (torch.cat(values)[:count] if isinstance(values[0], torch.Tensor)
                    else [v for value in values for v in value][:count])
    return out


def overlay_grid(model: torch.nn.Module, body: BodyModel, items: Mapping, device: torch.device, autocast,
                 head: Head, img_res: int, wholebody: WholeBodyModel | None = None) -> Image.Image:
    """The network's meshes over the crops of a collated batch ``items``: one picture per example, side by side
    in a grid (`render.sample_picture.contact_sheet`). The model is put in eval mode and back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = predict(model, body, head.arguments(items, device), autocast, wholebody)
    finally:
        model.train(was_training)
    vertices = (pred.vertices.float() + pred.cam_t.float()[:, None]).cpu().numpy()   # (B, V, 3) m, crop camera
    faces = (wholebody.body if wholebody is not None else body).faces
    camera = crop_camera(img_res)
    pictures = [render_mesh(crop_image(img), v, faces, camera.focal, camera.center)
                for img, v in zip(items["img"], vertices)]
    return contact_sheet(pictures, columns=min(len(pictures), 4))
