"""Forward-pass speed of a body model: fitloop's 49-joint forward against the bare smplx layer it wraps.

The baseline is the smplx layer alone (vertices + its own 45 joints, no canonical mapping), timed in the same
process on the same inputs, so the ratio is fitloop's overhead for the canonical joints.
"""
from __future__ import annotations

import torch

from bench.timing import median_seconds
from fitting.body_model import load_body_model


def run(model: str = "open", batch: int = 64, repeats: int = 20, device: str = "cpu", seed: int = 0) -> dict:
    body = load_body_model(model, device=device)
    gen = torch.Generator().manual_seed(seed)
    betas = torch.randn(batch, body.num_betas, generator=gen).to(device)
    body_pose = (0.3 * torch.randn(batch, 69, generator=gen)).to(device)
    orient = (0.3 * torch.randn(batch, 3, generator=gen)).to(device)
    inputs = body._layer_inputs(betas, body_pose, orient, None, True)

    with torch.no_grad():
        fitloop_s = median_seconds(lambda: body(betas, body_pose, orient), repeats=repeats, device=device)
        smplx_s = median_seconds(lambda: body.layer(**inputs), repeats=repeats, device=device)

    def forward_backward() -> None:
        pose = body_pose.detach().requires_grad_(True)
        body(betas, pose, orient).joints.square().sum().backward()

    backward_s = median_seconds(forward_backward, repeats=repeats, device=device)
    return {
        "benchmark": "body-model", "model": body.name, "vertices": body.num_vertices, "device": device,
        "batch": batch, "threads": torch.get_num_threads(),
        "forward_ms": 1e3 * fitloop_s, "smplx_layer_forward_ms": 1e3 * smplx_s,
        "forward_backward_ms": 1e3 * backward_s,
        "ratio_forward_vs_smplx_layer": fitloop_s / smplx_s,
    }
