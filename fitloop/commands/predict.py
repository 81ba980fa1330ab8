"""`fitloop predict IMAGE --checkpoint CKPT (--bbox X,Y,W,H | --keypoints FILE)`: a trained regressor on one image."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fitloop.options import count

BBOX_EXPAND = 1.2  # SPIN's box around a person box or keypoints (datasets/preprocess: scale = 1.2·max(w, h)/200)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="run a trained checkpoint (fitloop's or SPIN's) on one image: mesh overlay, parameters, .obj",
        description="Crop the person as training crops (SPIN's square box: 1.2 x the larger side of --bbox, or of "
                    "the --keypoints' tight box), run the checkpoint's network (its head: the ResNet on the crop, "
                    "or the keypoints head on the keypoints), optionally refine with SMPLify from that estimate "
                    "(--refine, as the trainer fits in the loop), and write OUT/<image stem>.png (the image with "
                    "the mesh drawn over it, beside the plain image), OUT/<image stem>.json (pose, betas, camera, "
                    "the network's own estimate when refined) and OUT/<image stem>.obj (the mesh in the crop "
                    "camera, metres). SPIN's released model_checkpoint.pt loads into the ResNet head; pass your "
                    "SMPL file with --body-model. docs/training.md#predict.")
    parser.add_argument("image", type=Path, help="the image (any format PIL reads)")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a fitloop checkpoint (RUN/checkpoints/*.pt) or SPIN's model_checkpoint.pt")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bbox", metavar="X,Y,W,H", help="the person's box in px (COCO's bbox convention)")
    where.add_argument("--keypoints", type=Path, metavar="FILE",
                       help="an OpenPose --write_json file: the person's BODY_25 keypoints give the box, feed the "
                            "keypoints head and SMPLify")
    parser.add_argument("--person", type=count(0), default=0, help="which person of the --keypoints file (default 0)")
    parser.add_argument("--refine", action="store_true", help="refine with SMPLify (needs --keypoints)")
    parser.add_argument("--body-model", default=None,
                        help="the body model file (default: the run's; required for SPIN's checkpoint)")
    parser.add_argument("--mesh-sampling", default=None,
                        help="graphcmr head: the mesh sampling file (default: the run's; its matrices must be the ones "
                             "the checkpoint was trained with)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: here)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print the parameters as JSON")
    parser.set_defaults(func=cmd_predict)


def read_openpose_person(path: Path, person: int):
    """(49, 3) keypoints (OpenPose's BODY_25 in their slots, `core.joints`) of one person of an OpenPose
    --write_json file; FitloopError naming the file for anything else."""
    import numpy as np

    from core.errors import FitloopError
    from core.joints import to_canonical
    from pipelines.adapters.openpose import BODY_FIELD

    try:
        people = json.loads(path.read_text(encoding="utf-8"))["people"]
        values = np.asarray(people[person][BODY_FIELD], dtype=np.float64).reshape(25, 3)
    except FileNotFoundError:
        raise FitloopError(f"--keypoints: no file {path}") from None
    except IndexError:
        raise FitloopError(f"--keypoints {path}: no person {person} (it holds {len(people)})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise FitloopError(f"--keypoints {path}: not an OpenPose keypoints file with {BODY_FIELD} of 25 points "
                           f"({type(err).__name__}: {err})") from None
    if not np.isfinite(values).all():
        raise FitloopError(f"--keypoints {path}: person {person}'s {BODY_FIELD} holds values that are not finite "
                           f"numbers (NaN or infinity); write the keypoints again")
    return to_canonical(values, "openpose")


def check_box(x: float, y: float, w: float, h: float, size: tuple[int, int], what: str, todo: str) -> None:
    """FitloopError naming ``what`` (and saying ``todo``) unless the box (px: top-left corner, width, height) is at
    least 1 px each way and overlaps the image of ``size`` (width, height): a crop of padding predicts nobody."""
    from core.errors import FitloopError

    width, height = size
    if w < 1 or h < 1:
        raise FitloopError(f"{what}: a box of {w:g} x {h:g} px, under 1 px, holds no person in the {width} x "
                           f"{height} px image; {todo}")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise FitloopError(f"{what}: the box x {x:g} to {x + w:g}, y {y:g} to {y + h:g} px lies outside the {width} "
                           f"x {height} px image; {todo}")


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from core.devices import parse_device
    from core.errors import FitloopError
    from fits.exports import write_obj
    from pipelines.adapters.base import points_box
    from render.raster import render_mesh
    from training.predict import describe, image_camera, load_regressor, predict_image

    device = parse_device(args.device, "--device")
    try:
        image = Image.open(args.image)
        image.load()
    except FileNotFoundError:
        raise FitloopError(f"no image file {args.image}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise FitloopError(f"{args.image}: not an image PIL can read ({err})") from None
    keypoints = None
    if args.keypoints is not None:
        keypoints = read_openpose_person(args.keypoints, args.person)
        box = points_box(keypoints, BBOX_EXPAND)
        if box is None:
            raise FitloopError(f"--keypoints {args.keypoints}: person {args.person} has no keypoint with "
                               f"confidence > 0")
        present = keypoints[keypoints[:, 2] > 0, :2]
        low, high = present.min(axis=0), present.max(axis=0)
        what = f"--keypoints {args.keypoints}: person {args.person}'s keypoints"
        if (high - low).max() < 1:
            raise FitloopError(f"{what} span no box: {len(present)} confident keypoint(s), all within 1 px of "
                               f"({low[0]:g}, {low[1]:g}); pass a file with the person's keypoints, or --bbox")
        check_box(*low, *np.maximum(high - low, 1.0), image.size, what,
                  f"pass the keypoints found in {args.image.name} (its px)")
        center, scale = box
    else:
        try:
            x, y, w, h = (float(v) for v in args.bbox.split(","))
        except ValueError:
            raise FitloopError(f"--bbox takes X,Y,W,H in px, got {args.bbox!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise FitloopError(f"--bbox takes four finite numbers X,Y,W,H in px, got {args.bbox!r}")
        if w <= 0 or h <= 0:
            raise FitloopError(f"--bbox needs a positive width and height, got {args.bbox!r}")
        check_box(x, y, w, h, image.size, f"--bbox {args.bbox}",
                  "give the person's box in that image's px (X,Y its top-left corner)")
        center, scale = np.array([x + w / 2.0, y + h / 2.0]), BBOX_EXPAND * max(w, h) / 200.0
    loaded = load_regressor(args.checkpoint, body_model=args.body_model, device=device,
                            mesh_sampling=args.mesh_sampling)
    result = predict_image(loaded, image, center, scale, keypoints, refine=args.refine)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.image.stem
    focal, principal = image_camera(center, scale)
    faces = np.asarray(loaded.body.faces)
    overlay = render_mesh(image.convert("RGB"), result.vertices, faces, focal, principal)
    picture = Image.new("RGB", (2 * image.width, image.height))
    picture.paste(image.convert("RGB"), (0, 0))
    picture.paste(overlay, (image.width, 0))
    picture.save(args.out / f"{stem}.png")
    record = {"image": str(args.image), "center": [float(v) for v in center], "scale": float(scale),
              "pose": result.pose.tolist(), "betas": result.betas.tolist(), "cam_t": result.cam_t.tolist(),
              "refined": result.refined, "keypoints_image": result.keypoints_image.tolist(),
              "image_camera": {"focal": focal, "principal": list(principal)}, **describe(loaded)}
    if result.refined:
        record["network"] = {k: v.tolist() for k, v in result.network.items()}
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_obj(args.out / f"{stem}.obj", result.vertices, faces,
              [f"fitloop predict {args.image.name}: the mesh in SPIN's crop camera (m), cam_t added"])
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{args.image}: {loaded.head.name} head ({loaded.source} checkpoint), "
              f"{'refined by SMPLify' if result.refined else 'network only'}; wrote {args.out / stem}.png, .json, "
              f".obj")
    return 0
