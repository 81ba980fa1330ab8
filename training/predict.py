"""A trained regressor on one image (`fitloop predict`): SPIN's crop of the person's box, the network, and
optionally SMPLify from the network's estimate, as the trainer's loop fits.

The crop is made the way training makes it (`shards.reader.build_item` on the original image, no augmentation):
the square box of side ``200·scale`` px around ``center``, resampled to the run's ``img_res``; the keypoints (the
keypoints head's input, and SMPLify's data) go through the same map. The body is the run's body model (checked by
content id against the checkpoint's, so a renamed or converted file is caught); the prediction is in SPIN's crop
camera (focal 5000 px on the 224 px fit frame), which is, in the original image, a pinhole of focal
``5000·side/224`` px with its principal point at the box centre (`image_camera`), so the mesh is drawn over the
image with that camera.

Checkpoints: fitloop's (`training.checkpoint`: the head, the config and the body model it was trained with), or
**SPIN's released** ``model_checkpoint.pt`` (``{"model": state_dict, "optimizer": ..., ...}``): its HMR keys are
fitloop's `training.regressor.Regressor`'s (ResNet-50 with torchvision's names, fc1/fc2/decpose/decshape/deccam,
the init_pose/init_shape/init_cam buffers), so it loads into the ``hmr`` head with SPIN's settings (ResNet-50,
224 px, 3 iterations); its body model must then be SMPL's (the user's file: ``--body-model``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import FitloopError
from core.frames import FIT_FOCAL, FIT_RES, fit_frame_px
from fitting.body_model import BodyModel, load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLify
from shards.augment import AugmentParams
from shards.crop import box_to_crop
from shards.reader import build_item
from training.checkpoint import FORMAT, CheckpointError, load_checkpoint, read_torch_file
from training.config import TrainConfig
from training.geometry import rotmat_to_axis_angle
from training.graphcmr import check_checkpoint_sampling
from training.heads import DEFAULT_HEAD, Head, head_of
from training.regressor import heads_for_family, mean_params_from_npz, mean_params_from_prior
from training.resnet import ARCHITECTURES
from training.step import fit_in_the_loop, predict

SPIN_SETTINGS = {"backbone": 50, "img_res": 224, "head": "hmr"}  # SPIN's released model (its config.py / README)
# what each command that loads a regressor does with its bodies, and what to use instead for a whole-body one
WHAT_IT_DOES = {"fitloop predict": "poses", "fitloop eval": "evaluates"}
WHOLEBODY_INSTEAD = {
    "fitloop predict": ": predicting with a whole-body regressor is not done",
    "fitloop eval": ": evaluating a whole-body checkpoint is not done; the run's own evaluation (its metrics.csv "
                    "and metrics_by_dataset.csv, after every epoch) measures its network on the held-out shards",
}
# torchvision's ResNets by blocks per stage (layer1-4) and block kind (bottleneck: conv3): the depth a state
# dict's backbone has, to say what a checkpoint holds
RESNET_DEPTHS = {(blocks, kind == "bottleneck"): depth for depth, (kind, blocks) in ARCHITECTURES.items()}
_RESNET_BLOCK = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.conv(\d)\.weight$")


@dataclass
class LoadedRegressor:
    """A checkpoint's network, ready to predict: the network (eval mode), its head, the run's config (SPIN's
    settings for a SPIN checkpoint), the body model, SMPLify as the run fits in the loop, and where it came from."""

    model: torch.nn.Module
    head: Head
    config: TrainConfig
    body: BodyModel
    smplify: SMPLify
    source: str          # "fitloop" or "spin"


def load_regressor(path: Path, body_model: str | None = None, device: str | torch.device = "cpu",
                   mesh_sampling: str | None = None, command: str = "fitloop predict") -> LoadedRegressor:
    """The network of a fitloop or SPIN checkpoint (module docstring). ``body_model`` overrides the run's (a
    fitloop checkpoint's content id must then still match), ``mesh_sampling`` the graphcmr head's matrices file (their
    digest must match the checkpoint's); `CheckpointError` for a file that is neither, or whose weights do not fit
    the head built for it (naming what does not fit). ``command``: the command loading it, for its messages."""
    path = Path(path)
    data = read_torch_file(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        data = load_checkpoint(path)   # the format checks
        config = TrainConfig.from_dict(data["config"])
        source = "fitloop"
        trained_with = config.body_model
    elif isinstance(data, dict) and isinstance(data.get("model"), dict) and "fc1.weight" in data["model"]:
        config = replace(TrainConfig(), **{k: v for k, v in SPIN_SETTINGS.items()})
        source = "spin"
    else:
        raise CheckpointError(f"{path}: neither a fitloop checkpoint nor SPIN's model_checkpoint.pt (a dict whose "
                              f"'model' holds HMR's fc1/decpose weights)")
    if body_model is not None:
        config = replace(config, body_model=body_model)
    if mesh_sampling is not None:
        config = replace(config, mesh_sampling=str(mesh_sampling))
    if source == "spin" and body_model is None:
        raise FitloopError(f"{path} is SPIN's checkpoint: its network regresses SMPL; pass --body-model with your "
                           f"SMPL file (SPIN: the neutral SMPL)")
    body = load_body_model(config.body_model, device=torch.device(device),
                           joint_regressor_extra=config.joint_regressor_extra, h36m_regressor=config.h36m_regressor)
    if source == "fitloop" and data.get("body_model_id") and data["body_model_id"] != body.model_id:
        if body_model is None:
            raise FitloopError(f"{path} was trained with body model {trained_with} = {data['body_model_id']}; "
                               f"{trained_with} is now {body.model_id} (the file changed since): pass the model "
                               f"file the run used with --body-model")
        raise FitloopError(f"{path} was trained with body model {trained_with} = {data['body_model_id']}; "
                           f"{body_model} is {body.model_id}: leave --body-model out to use the run's "
                           f"({trained_with}), or pass a file of that model")
    if heads_for_family(body.family) != "smpl":  # a whole-body regressor (hands, face): not done here
        raise FitloopError(f"{command} {WHAT_IT_DOES.get(command, 'runs')} SMPL-family bodies only; "
                           f"{config.body_model} has SMPL-X's layout ({path} regresses hands and face too)"
                           + WHOLEBODY_INSTEAD.get(command, ""))
    prior = MaxMixturePrior.from_file(config.pose_prior).to(torch.device(device))
    mean = (mean_params_from_npz(config.mean_params) if config.mean_params
            else mean_params_from_prior(prior, body.num_betas))
    head = head_of(data.get("head", DEFAULT_HEAD) if source == "fitloop" else "hmr")
    model = head.build(mean, config)
    check_checkpoint_sampling(data, model, path, config)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:
        raise CheckpointError(_not_fitting(path, data["model"], model, head, config, source, err)) from None
    model.to(device).eval()
    return LoadedRegressor(model, head, config, body, SMPLify(body, prior, config.smplify), source)


def resnet_depth(state: dict[str, Any]) -> int | None:
    """The depth of the torchvision ResNet whose weights a state dict holds (`RESNET_DEPTHS`), by its blocks per
    stage and kind; None when it holds none, or one of another layout."""
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for key in state:
        found = _RESNET_BLOCK.search(key)
        if found:
            blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
            bottleneck |= found.group(3) == "3"
    return RESNET_DEPTHS.get((tuple(len(blocks.get(stage, ())) for stage in range(1, 5)), bottleneck))


def _listed(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _not_fitting(path: Path, state: dict[str, Any], model: torch.nn.Module, head: Head, config: TrainConfig,
                 source: str, err: RuntimeError) -> str:
    """Why a checkpoint's state dict does not load into the model built for it, in one line: the keys of another
    shape, the missing and the unexpected ones (the first few of each), what backbone the weights are, and what
    the checkpoint was taken for (SPIN's: its settings, ResNet-50; fitloop's: its config)."""
    own = model.state_dict()
    shapes = [f"{key} {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the head"
              for key, value in state.items()
              if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape]
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    found = "; ".join(part for part in (
        f"{len(shapes)} of another shape ({_listed(shapes, 1)})" if shapes else "",
        f"{len(missing)} missing ({_listed(missing)})" if missing else "",
        f"{len(unexpected)} unexpected ({_listed(unexpected)})" if unexpected else "") if part) or " ".join(
        str(err).split())  # none of those: torch's own words
    depth, built = resnet_depth(state), resnet_depth(own)
    weights = (f"its weights are a ResNet-{depth}'s and do not fit it" if depth is not None and depth != built
               else "its weights do not fit it")
    if source == "spin":
        return (f"{path}: a SPIN-layout checkpoint (a 'model' state dict with HMR's fc1/decpose weights, no fitloop "
                f"config), so it is loaded as SPIN's released model, the hmr head on a ResNet-{built} at "
                f"{config.img_res} px, but {weights}: {found}. SPIN's model_checkpoint.pt holds ResNet-50 weights; "
                f"for a fitloop run's network pass the checkpoint the run wrote (RUN/checkpoints/step-*.pt), which "
                f"carries its config")
    built_text = f"ResNet-{built}, " if built is not None else ""
    return (f"{path}: a fitloop checkpoint whose config builds the {head.name} head ({built_text}{config.img_res} px), "
            f"but {weights}: {found}; the file was changed after the run saved it: pass a checkpoint as the run "
            f"wrote it")


@dataclass
class ImagePrediction:
    """One person's prediction: pose (72) axis-angle, betas (NB), cam_t (3) m in SPIN's crop camera, vertices (V, 3)
    m in that camera (cam_t added), the 49 joints projected to original-image px (49, 2); refined: whether SMPLify
    ran (then these are its fit, and ``network`` holds the network's own pose, betas and cam_t)."""

    pose: np.ndarray
    betas: np.ndarray
    cam_t: np.ndarray
    vertices: np.ndarray
    keypoints_image: np.ndarray
    refined: bool
    network: dict[str, np.ndarray]


def image_camera(center: np.ndarray, scale: float) -> tuple[float, tuple[float, float]]:
    """The original image's pinhole (focal px, principal point px, pixel centres at integers) equivalent to SPIN's
    crop camera of the box (module docstring)."""
    side = 200.0 * scale
    return FIT_FOCAL * side / FIT_RES, (float(center[0]), float(center[1]))


def predict_image(loaded: LoadedRegressor, image: Image.Image, center: np.ndarray, scale: float,
                  keypoints: np.ndarray | None = None, refine: bool = False) -> ImagePrediction:
    """Predict one person of ``image`` in the box (``center`` px, ``scale`` = side / 200); ``keypoints`` (49, 3)
    original-image px + confidence (`core.joints` slots) feed the keypoints head and SMPLify (``refine``)."""
    config = loaded.config
    kp = np.zeros((49, 3), np.float64) if keypoints is None else np.asarray(keypoints, np.float64)
    if "keypoints" in loaded.head.inputs and keypoints is None:
        raise FitloopError(f"the {loaded.head.name} head reads 2D keypoints: pass --keypoints")
    if refine and not (kp[:, 2] > 0).any():
        raise FitloopError("--refine fits SMPLify to 2D keypoints: pass --keypoints")
    to_crop = box_to_crop(np.asarray(center, np.float64), 200.0 * scale, config.img_res)
    meta = {"key": "predict/image", "dataset": "predict", "split": "predict", "center": list(map(float, center)),
            "scale": float(scale), "has_smpl": False}
    item = build_item(image.convert("RGB"), to_crop, kp, np.eye(3), AugmentParams(), config.img_res, meta=meta,
                      joints_3d=None, smpl_pose=None, smpl_betas=None)
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()}
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        pred = predict(loaded.model, loaded.body, loaded.head.arguments(batch, device), torch.autocast(
            device.type, enabled=False))
    pose = rotmat_to_axis_angle(pred.rotmat.float()).reshape(1, 72)
    network = {"pose": pose[0].cpu().numpy(), "betas": pred.betas[0].float().cpu().numpy(),
               "cam_t": pred.cam_t[0].float().cpu().numpy()}
    betas, cam_t, vertices, joints = pred.betas.float(), pred.cam_t.float(), pred.vertices, pred.joints
    if refine:
        fit = fit_in_the_loop(loaded.smplify, pred, fit_frame_px(batch["keypoints"].to(device)))
        pose, betas, cam_t = fit.pose, fit.betas, fit.cam_t
        with torch.no_grad():
            out = loaded.body(betas, pose[:, 3:], pose[:, :3])
        vertices, joints = out.vertices, out.joints
    focal, principal = image_camera(np.asarray(center, np.float64), scale)
    points = (joints[0] + cam_t[0]).detach().double().cpu().numpy()
    keypoints_image = focal * points[:, :2] / points[:, 2:] + np.asarray(principal)
    return ImagePrediction(pose=pose[0].detach().cpu().numpy(), betas=betas[0].detach().cpu().numpy(),
                       cam_t=cam_t[0].detach().cpu().numpy(),
                       vertices=(vertices[0] + cam_t[0]).detach().cpu().numpy(), keypoints_image=keypoints_image,
                       refined=refine, network=network)


def describe(loaded: LoadedRegressor) -> dict[str, Any]:
    """What made the prediction, for the parameters file."""
    return {"checkpoint_kind": loaded.source, "head": loaded.head.name, "body_model": str(loaded.config.body_model),
            "body_model_id": loaded.body.model_id, "img_res": loaded.config.img_res,
            "camera": "SPIN's crop camera: focal 5000 px on the 224 px crop of the box, principal point at its "
                      "centre; in the image: focal 5000 * side / 224 px at the box centre"}
