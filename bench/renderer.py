"""`fitloop bench renderer`: forward + backward CPU time per sample of the silhouette and part renderer
(`fitting.silhouette`) against DEODR (BSD, the library alternative), on the same bodies in one process.

Bodies: the open model (full topology by default: 13,492 vertices, 26,972 faces) posed by the people of
`bench.smplify_cases` (sources ``synthetic``, ``cmu``, ``lsp`` where their data is here; the ``test`` split),
betas uniform in ±2.5 σ, seen by SPIN's crop camera (f = 5000 px for 224 px, scaled to the picture) with pixel
centres at integers. Work: render the silhouette (one channel) or the 24 skinning parts (one-hot per vertex, the
label of the largest skinning weight) at RES² px, and back-propagate a squared-sum loss to the vertices. Time: CPU
seconds (`time.process_time`, all threads of this process) per sample, the median of `repeats` runs after one
warm-up, at `threads` torch threads (set here and reported). DEODR renders one mesh at a time in float64 (its
PyTorch interface takes double tensors); fitloop renders the batch at once in float32.

Both renderers must draw the same picture: the IoU of each one's 0.5-level silhouette with the z-buffer's coverage
(`render.raster`) is reported beside the times.

DEODR is not a dependency of fitloop; when it does not import, its entry says why and how to install it
(``pip install deodr==0.2.3``: a cp311 manylinux wheel that needs numpy >= 2 and scipy) and the ratio is absent.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import numpy as np
import torch

from bench.smplify_cases import FIT_CENTER, FIT_FOCAL, FIT_RES, available_sources, make_people, rng_for, view
from fitting.body_model import BodyModel, load_body_model
from fitting.silhouette import mesh_edges, render_silhouette
from render.raster import rasterize

DEODR_VERSION = "0.2.3"          # the version measured (PyPI, BSD-2-Clause; cp311 manylinux wheel)
BETAS_RANGE = 2.5                # betas uniform in ±2.5 σ (issue 15's "true shape varies widely")
PARTS = 24                       # the open model's skinning parts (SMPL's 24 joints)
SOURCES = ("synthetic", "cmu", "lsp")


def bodies(body: BodyModel, batch: int, res: int, seed: int, sources: tuple[str, ...] = SOURCES):
    """Per available source: (vertices (batch, V, 3) camera frame, focal px, center px) for a res² picture."""
    keep, notes = available_sources(sources)
    out = {}
    for source in keep:
        people = make_people(source, "test", batch, body, seed)
        betas = rng_for(seed, source, "test", "betas").uniform(-BETAS_RANGE, BETAS_RANGE, people.betas.shape)
        seen = view(dataclasses.replace(people, betas=betas), "crop", body, seed)
        with torch.no_grad():
            pose = torch.as_tensor(seen.pose, dtype=torch.float32)
            vertices = body(torch.as_tensor(betas, dtype=torch.float32), pose[:, 3:], pose[:, :3],
                            torch.as_tensor(seen.cam_t, dtype=torch.float32)).vertices
        scale = res / FIT_RES
        # SPIN's fit frame has pixel corners at integers; the renderer's centres are: u' = s·u - 0.5
        out[source] = (vertices, FIT_FOCAL * scale, (FIT_CENTER * scale - 0.5, FIT_CENTER * scale - 0.5))
    return out, notes


def fitloop_step(faces: torch.Tensor, part_labels: torch.Tensor | None, focal: float, center, res: int):
    """One forward + backward of fitloop's renderer over a batch: a step that returns the 0.5-level pictures.
    part_labels: (V,) long, or None for the silhouette alone."""
    edges = mesh_edges(faces)

    def step(vertices: torch.Tensor) -> np.ndarray:
        x = vertices.detach().requires_grad_(True)
        out = render_silhouette(x, faces, focal, center, (res, res), vertex_parts=part_labels, edges=edges)
        loss = out.mask.square().sum() + (out.parts.square().sum() if part_labels is not None else 0)
        loss.backward()
        return out.mask.detach().numpy() > 0.5
    return step


def deodr_step(faces: np.ndarray, colours: np.ndarray | None, focal: float, center, res: int):
    """The same work with DEODR, one mesh at a time (its PyTorch interface); colours (V, 24) one-hot parts, or
    None for the silhouette (one channel of ones). Raises ImportError without DEODR."""
    from deodr.pytorch import CameraPytorch, ColoredTriMeshPytorch, Scene3DPytorch

    intrinsic = np.array([[focal, 0.0, center[0]], [0.0, focal, center[1]], [0.0, 0.0, 1.0]])
    camera = CameraPytorch(extrinsic=np.hstack([np.eye(3), np.zeros((3, 1))]), intrinsic=intrinsic, width=res,
                           height=res)
    state = {}

    def step(vertices: torch.Tensor) -> np.ndarray:
        pictures = []
        for one in vertices.double():
            colour = colours if colours is not None else np.ones((len(one), 1))
            if "scene" not in state:    # DEODR's mesh holds its adjacency; built once as a user would
                mesh = ColoredTriMeshPytorch(faces.astype(np.int32), vertices=one.numpy(), colors=colour)
                scene = Scene3DPytorch()
                scene.set_mesh(mesh)
                scene.set_light(light_directional=torch.zeros(3, dtype=torch.float64),
                                light_ambient=torch.tensor(1.0, dtype=torch.float64))
                scene.set_background_color(np.zeros(colour.shape[1]))
                state.update(scene=scene, mesh=mesh)
            x = one.detach().requires_grad_(True)
            state["mesh"].set_vertices(x)
            state["mesh"].set_vertices_colors(torch.as_tensor(colour))
            image = state["scene"].render(camera)                          # (H, W, C), sigma = 1 px
            image.square().sum().backward()
            pictures.append(image.detach().sum(-1).numpy() > 0.5)
        return np.stack(pictures)
    return step


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of fn() (this process, all threads) over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def iou_with_zbuffer(pictures: np.ndarray, vertices: torch.Tensor, faces: np.ndarray, focal: float, center,
                     res: int) -> float:
    """Mean IoU of (B, H, W) bool pictures with render.raster's coverage of the same meshes."""
    ious = []
    for picture, one in zip(pictures, vertices):
        _, face_index = rasterize(one.double().numpy(), faces, np.zeros((len(faces), 3)), focal, center,
                                  (res, res))
        covered = face_index >= 0
        ious.append((picture & covered).sum() / max((picture | covered).sum(), 1))
    return float(np.mean(ious))


def run(model: str = "open", batch: int = 64, resolutions: tuple[int, ...] = (128, 224), repeats: int = 3,
        threads: int = 1, seed: int = 0, sources: tuple[str, ...] = SOURCES) -> dict:
    torch.set_num_threads(threads)
    body = load_body_model(model)
    faces_np = np.asarray(body.faces, dtype=np.int64)
    faces = torch.as_tensor(faces_np)
    labels = body.layer.lbs_weights.argmax(1)                 # (V,) the largest skinning weight's part
    try:
        import deodr
        deodr_note = f"deodr {deodr.__version__}"
    except ImportError as err:
        deodr = None
        deodr_note = (f"deodr does not import here ({err}); install it to compare: pip install "
                      f"deodr=={DEODR_VERSION} (cp311 manylinux wheel; needs numpy>=2, scipy)")
    rows, skipped = [], {}
    for res in resolutions:
        people, skipped = bodies(body, batch, res, seed, sources)
        for source, (vertices, focal, center) in people.items():
            for kind in ("silhouette", "parts"):
                ours = fitloop_step(faces, labels if kind == "parts" else None, focal, center, res)
                row = {"resolution": res, "source": source, "kind": kind,
                       "fitloop_ms_per_sample": 1e3 * cpu_seconds(lambda: ours(vertices), repeats) / batch,
                       "fitloop_iou_vs_zbuffer": iou_with_zbuffer(ours(vertices), vertices, faces_np, focal,
                                                                  center, res)}
                if deodr is not None:
                    colours = np.eye(PARTS)[labels.numpy()] if kind == "parts" else None   # one-hot (V, 24)
                    theirs = deodr_step(faces_np, colours, focal, center, res)
                    row["deodr_ms_per_sample"] = 1e3 * cpu_seconds(lambda: theirs(vertices), repeats) / batch
                    row["deodr_iou_vs_zbuffer"] = iou_with_zbuffer(theirs(vertices), vertices, faces_np, focal,
                                                                   center, res)
                    row["ratio_deodr_over_fitloop"] = row["deodr_ms_per_sample"] / row["fitloop_ms_per_sample"]
                rows.append(row)
    return {"benchmark": "renderer", "model": body.name, "vertices": body.num_vertices, "faces": len(faces_np),
            "batch": batch, "threads": torch.get_num_threads(), "repeats": repeats, "time": "CPU s per sample",
            "alternative": deodr_note, "sources_skipped": skipped, "rows": rows}
