"""Where synthetic bodies' poses come from: CMU motion capture converted at run time, or the shipped pose prior.

Poses are (N, 72) axis-angle radians in the body model's frame (Y up, the body faces +Z, its left is +X): the
global orientation, then the 23 body joints relative to the model's T-pose (`assets.bvh`'s convention).

* `MocapPoses`: BVH clips of ``../shared/mocap/cmu`` converted with `assets.bvh.convert_clip` (frame 0, the
  reference T-pose, dropped), glitched frames rejected with the pose prior's rotation limits. Single poses are
  frames drawn across the clips; sequences are consecutive frames of one clip, so they move as people move.
* `PriorPoses`: body poses drawn from the shipped Gaussian mixture (fitting/data/pose_prior_open.npz), redrawn
  until every joint is within the same limits; upright, facing +Z. Sequences interpolate between drawn key poses.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from assets import bvh
from assets.prior_train import plausible_frames
from fitting.priors import DEFAULT_PRIOR as PRIOR_FILE
from fitting.priors import load_gmm
from pipelines.synthetic.config import SynthConfig, SynthError

PRIOR_KEY_EVERY = 8  # frames between drawn key poses in a prior sequence
_MAX_DRAWS = 50      # rounds of redrawing implausible prior samples before giving up


class PoseSource(Protocol):
    """Draws poses (N, 72) axis-angle, model frame; ``describe`` says where they came from (json-able)."""

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray: ...

    def sequence(self, length: int, rng: np.random.Generator) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class MocapPoses:
    """Frames of CMU BVH clips converted to the body model's joint rotations (module docstring)."""

    def __init__(self, directory: Path, rest_joints: np.ndarray, max_clips: int, rng: np.random.Generator) -> None:
        files = _clip_files(directory)
        if not files:
            raise SynthError(f"{directory}: no .bvh clips; pass poses='prior' or the CMU folder as mocap_dir")
        chosen = sorted(rng.choice(len(files), size=min(max_clips, len(files)), replace=False))
        self.directory = directory
        self.clips: list[tuple[str, np.ndarray]] = []
        self.skipped: list[dict[str, str]] = []
        for i in chosen:
            rel = files[i]
            try:
                poses = bvh.convert_clip(bvh.parse_bvh(directory / rel), rest_joints, drop_first=True).poses
            except (bvh.BvhError, KeyError, ValueError) as err:
                self.skipped.append({"file": rel, "error": str(err)})
                continue
            keep, _ = plausible_frames(poses)
            if keep.sum() >= 2:
                self.clips.append((rel, poses[keep].astype(np.float64)))
        if not self.clips:
            said = "; ".join(f"{s['file']}: {s['error']}" for s in self.skipped[:3])
            raise SynthError(f"{directory}: none of the {len(chosen)} chosen clips converted ({said}"
                             + (f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else "")
                             + "); give a folder of CMU .bvh clips (--mocap-dir) or --poses prior")
        self._sizes = np.array([len(p) for _, p in self.clips], dtype=np.float64)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        clip = rng.choice(len(self.clips), size=count, p=self._sizes / self._sizes.sum())
        return np.stack([self.clips[c][1][rng.integers(len(self.clips[c][1]))] for c in clip])

    def sequence(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """``length`` consecutive frames of one clip (clips shorter than that are repeated back and forth)."""
        poses = self.clips[int(rng.integers(len(self.clips)))][1]
        if len(poses) >= length:
            start = int(rng.integers(len(poses) - length + 1))
            return poses[start:start + length].copy()
        bounce = np.concatenate([poses, poses[::-1]])
        return np.resize(bounce, (length, poses.shape[1]))

    def describe(self) -> dict[str, Any]:
        return {"source": "cmu", "directory": str(self.directory), "clips": [name for name, _ in self.clips],
                "frames": int(self._sizes.sum()), "skipped": self.skipped,
                "acknowledgment": "The data used in this project was obtained from mocap.cs.cmu.edu. The database "
                                  "was created with funding from NSF EIA-0196217. BVH conversion by Bruce Hahne."}


class PriorPoses:
    """Body poses drawn from the Gaussian-mixture pose prior (module docstring)."""

    def __init__(self, path: Path = PRIOR_FILE) -> None:
        gmm = load_gmm(path)
        self.path = path
        self.means = gmm.means
        self.chols = np.linalg.cholesky(gmm.covars)
        self.weights = gmm.weights / gmm.weights.sum()
        self.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((count, 72))
        todo = np.arange(count)
        for _ in range(_MAX_DRAWS):
            component = rng.choice(len(self.weights), size=len(todo), p=self.weights)
            noise = rng.standard_normal((len(todo), self.means.shape[1]))
            out[todo, 3:] = self.means[component] + np.einsum("nij,nj->ni", self.chols[component], noise)
            keep, _ = plausible_frames(out[todo])
            todo = todo[~keep]
            if len(todo) == 0:
                return out
        raise SynthError(f"{self.path}: {len(todo)} prior samples stayed outside the joint limits after "
                         f"{_MAX_DRAWS} draws")

    def sequence(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """Key poses every `PRIOR_KEY_EVERY` frames, joint rotations slerped between them."""
        keys = self.sample(length // PRIOR_KEY_EVERY + 2, rng)
        times = np.arange(len(keys)) * PRIOR_KEY_EVERY
        out = np.empty((length, 72))
        for j in range(24):
            slerp = Slerp(times, Rotation.from_rotvec(keys[:, 3 * j:3 * j + 3]))
            out[:, 3 * j:3 * j + 3] = slerp(np.arange(length)).as_rotvec()
        return out

    def describe(self) -> dict[str, Any]:
        return {"source": "prior", "file": self.path.name, "sha256": self.sha256}


def pose_source(config: SynthConfig, rest_joints: np.ndarray, rng: np.random.Generator) -> PoseSource:
    """The config's pose source: CMU clips when asked for or (``poses="auto"``) when the folder exists."""
    directory = config.resolved_mocap_dir()
    if config.poses == "cmu" or (config.poses == "auto" and directory.is_dir()):
        if not directory.is_dir():
            raise SynthError(f"poses='cmu' (--poses cmu) but {directory} is not a folder: give the folder of CMU .bvh "
                             f"clips as mocap_dir (--mocap-dir), or poses='prior' (--poses prior)")
        return MocapPoses(directory, rest_joints, config.max_clips, rng)
    return PriorPoses()


def _clip_files(directory: Path) -> list[str]:
    """Clip paths relative to ``directory``: CLIPS.tsv's list when present (its files that exist), else every
    ``*.bvh`` below; sorted, so the seed picks the same clips everywhere."""
    table = directory / "CLIPS.tsv"
    if table.is_file():
        with table.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows and "file" in rows[0]:
            return sorted(r["file"] for r in rows if (directory / r["file"]).is_file())
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.bvh"))
