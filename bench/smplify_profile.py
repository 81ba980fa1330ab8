"""What one fast-SMPLify call asks of a device: kernel launches and host syncs, per LM iteration and per call.

Counted with ``torch.profiler`` on the CPU, where every aten operator is recorded (on a GPU the same operators
launch the kernels and do the syncs):

* **kernel launches**: the aten operators that do work themselves: leaves of the profiler's operator tree (no
  aten operator below them), less those that only make views or allocate (`NO_KERNEL`); a fused or composite
  operator counts once. On a GPU each is at least one kernel launch.
* **host syncs**: the operators that make the host wait for the device: a tensor read as a Python number or
  bool (``aten::_local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``) and shapes that depend on data
  (``aten::nonzero``: ``torch.nonzero``, indexing by a bool mask, ``aten::_unique2``). `SYNC_OPS`.
* **tensors from host data**: ``aten::lift_fresh`` (``torch.tensor(...)`` / ``as_tensor`` of Python numbers): on a
  GPU a host-to-device copy, which CUDA-graph capture rejects.

Per LM iteration = (counts of stage 2 run for `LONG` iterations − counts for `SHORT`) / (LONG − SHORT): what the
loop costs beyond its set-up. The script imports only ``fitting`` and ``core``, so run as a file with another
checkout on the path it profiles that checkout's SMPLify (``PYTHONPATH=/other python bench/smplify_profile.py``):
the before/after counts in docs/smplify.md were made that way. ``fitloop bench smplify --profile`` runs it here.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from core.camera import project
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLify, SMPLifyConfig, mean_pose_start

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2")
FROM_HOST_OPS = ("aten::lift_fresh",)
NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::_unsafe_view", "aten::as_strided",
    "aten::reshape", "aten::expand", "aten::t", "aten::transpose", "aten::permute", "aten::select", "aten::slice",
    "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::detach", "aten::resolve_conj", "aten::resolve_neg",
    "aten::lift_fresh", "aten::diagonal", "aten::unbind", "aten::split", "aten::narrow", "aten::expand_as",
    "aten::view_as", "aten::_reshape_alias", "aten::result_type", "aten::is_nonzero", "aten::chunk",
    "aten::set_", "aten::resize_", "aten::unfold", "aten::movedim", "aten::split_with_sizes", "aten::numpy_T",
    "aten::_local_scalar_dense", "aten::item",
})
SHORT, LONG = 2, 6
BATCH = 64
PRIOR_FILE = Path(__file__).resolve().parents[1] / "fitting" / "data" / "pose_prior_open.npz"


def counts(fn: Callable[[], Any]) -> dict[str, int]:
    """Kernel launches, host syncs and tensors from host data of one call of ``fn`` (module docstring)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = Counter(e.name for e in ops if e.name not in NO_KERNEL
                     and not any(child.name.startswith("aten::") for child in e.cpu_children))
    names = Counter(e.name for e in ops)
    return {"kernels": sum(leaves.values()), "syncs": sum(names[n] for n in SYNC_OPS),
            "from_host": sum(names[n] for n in FROM_HOST_OPS),
            "sync_ops": {n: names[n] for n in SYNC_OPS if names[n]}}


def _cases(body, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """People near the zero pose facing the camera at ~5 m, their 49 joints as keypoints of SPIN's crop camera,
    and a start 0.15 rad off their pose: what a network's estimate looks like to the solver."""
    gen = torch.Generator().manual_seed(seed)
    pose = torch.randn(batch, 72, generator=gen) * 0.2
    pose[:, 0] += torch.pi
    betas = torch.randn(batch, body.num_betas, generator=gen)
    cam_t = torch.tensor([0.0, 0.2, 50.0]).expand(batch, 3).clone()
    center = torch.full((batch, 2), 112.0)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    keypoints = torch.cat([project(joints, cam_t, 5000.0, center), torch.ones(batch, 49, 1)], -1)
    start = pose + torch.randn(batch, 72, generator=gen) * 0.15
    return {"keypoints": keypoints, "pose": start, "betas": torch.zeros_like(betas), "cam_t": cam_t * 1.1,
            "center": center}


PROFILE = "smplify profile"  # the "benchmark" of this module's record (bench.smplify's has none)


def run(model: str = "open", batch: int = BATCH) -> dict[str, Any]:
    torch.set_num_threads(1)
    body = load_body_model(model)
    fitter = SMPLify(body, MaxMixturePrior.from_file(PRIOR_FILE), SMPLifyConfig())
    case = _cases(body, batch)
    kp, center = case["keypoints"], case["center"]
    focal = torch.full((batch, 2), 5000.0)
    pose, cam_t = fitter._lm_camera(case["pose"], case["betas"], case["cam_t"], kp, center, focal)
    trust = torch.full((batch,), 20.0)

    def stage2(iterations: int) -> Callable[[], Any]:
        return lambda: fitter._lm_body(pose, case["betas"], cam_t, kp, center, focal, trust, pose[:, 3:].clone(),
                                       [1.0] * iterations)

    stage2(SHORT)()                                                                    # warm-up
    short, long = counts(stage2(SHORT)), counts(stage2(LONG))
    per_iteration = {k: (long[k] - short[k]) / (LONG - SHORT) for k in ("kernels", "syncs", "from_host")}
    mean_kp = mean_pose_start(body, kp)
    per_call = {
        "estimate": counts(lambda: fitter(kp, case["pose"], case["betas"], case["cam_t"], center, start="estimate")),
        "mean": counts(lambda: fitter(kp, *mean_kp, center, start="mean")),
    }
    return {"benchmark": PROFILE, "model": model, "batch": batch, "threads": torch.get_num_threads(),
            "config": {k: getattr(fitter.config, k) for k in ("body_iterations", "tolerance", "check_every")
                       if hasattr(fitter.config, k)},
            "per_lm_iteration": per_iteration, "per_call": per_call}


def table(result: dict[str, Any]) -> str:
    it = result["per_lm_iteration"]
    lines = [f"fast SMPLify, {result['model']} model, batch {result['batch']}, {result['threads']} thread, "
             f"config {result['config']}",
             "", "| what | kernel launches | host syncs | tensors from host data | sync operators |",
             "|---|---|---|---|---|",
             f"| one stage-2 LM iteration | {it['kernels']:.0f} | {it['syncs']:.1f} | {it['from_host']:.1f} | – |"]
    for start, c in result["per_call"].items():
        lines.append(f"| one call, start={start} | {c['kernels']} | {c['syncs']} | {c['from_host']} | "
                     f"{', '.join(f'{k} {v}' for k, v in c['sync_ops'].items()) or '–'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run()))
