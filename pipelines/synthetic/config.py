"""The synthetic generator's one typed config: what to generate, how many, how it looks, from which poses."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.errors import FitloopError

# Datasets the generator writes, each in its native layout (docs/synthetic.md): body datasets (people of the
# body model, `SynthConfig.body_model`) and whole-body ones (people with posed hands and faces,
# `SynthConfig.wholebody_model`). A config writes the body datasets unless told otherwise.
BODY_DATASETS: tuple[str, ...] = ("coco", "mpii", "lsp", "lspet", "h36m")
WHOLEBODY_DATASETS: tuple[str, ...] = ("coco_wholebody", "openpose")
# Datasets written only when named (their videos cost encoding): MPI-INF-3DHP, from the body model.
VIDEO_DATASETS: tuple[str, ...] = ("mpi_inf_3dhp",)
DATASETS: tuple[str, ...] = BODY_DATASETS + WHOLEBODY_DATASETS + VIDEO_DATASETS
H36M_CAMERAS = 4
LSP_MAX_PEOPLE = 1000  # LSP's splits are by image index: images 1-1000 train, so a larger set reaches into test
PoseSourceName = Literal["auto", "cmu", "prior"]
# ../shared/mocap/cmu beside the checkout (the brief's "../shared"): CMU clips as BVH, never copied into the repo.
DEFAULT_MOCAP_DIR = Path(__file__).resolve().parents[3] / "shared" / "mocap" / "cmu"


class SynthError(FitloopError):
    """The generator's config or output folder is unusable; nothing was written."""


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides a synthetic set; stored (resolved, less ``workers``) in every dataset's
    ``fitloop_synth.json``.

    Attributes:
        seed: one seed for everything; each dataset draws from its own stream, so changing one dataset's count
            leaves the others unchanged.
        datasets: which of `DATASETS` to write (default `BODY_DATASETS`).
        coco_people, mpii_people, lsp_people, lspet_people, coco_wholebody_people, openpose_people: people per
            single-image dataset.
        max_people_per_image: COCO and MPII images hold 1 to this many people, side by side.
        image_size: (min, max) px of each side of a single-image dataset's image, drawn per image.
        fov_deg: (min, max) field of view across the longer image side, degrees.
        truncated_share: share of single-person COCO/MPII images where the person is allowed to run off the edge
            (their outside joints are then not labelled; LSP and LSPET people are always whole).
        h36m_subjects / h36m_actions: Human3.6M sequences, one per (subject, action) filmed by 4 cameras.
        h36m_frames: frames per sequence in the pose files.
        h36m_frame_step: frames 0, step, 2·step … get an extracted image (SPIN samples every 5th).
        h36m_image_size: (width, height) of the Human3.6M frames (the real ones are 1000 × 1000 or 1002).
        h36m_image_layout: "spin" (images/S1_Directions_1.54138969_000001.jpg), "folders", or "video" (the
            release's S1/Videos/Directions 1.54138969.mp4, every frame painted); see pipelines/adapters/h36m.py.
        mpi_inf_3dhp_subjects / mpi_inf_3dhp_sequences: MPI-INF-3DHP training sequences (S1–S8 × Seq1–Seq2),
            each annotated for 14 cameras.
        mpi_inf_3dhp_cameras: the training cameras (0–13) painted into videos (SPIN reads 0, 1, 2, 4–8).
        mpi_inf_3dhp_frames: frames per sequence (train and test); every frame of a painted camera is a person.
        mpi_inf_3dhp_image_size: (width, height) of the training videos (the real ones are 2048 × 2048).
        mpi_inf_3dhp_test_sequences: test sequences (TS1–TS6), each one camera, frame 1 marked invalid.
        mpi_inf_3dhp_test_scale: test frames are this share of the real ones (2048² for TS1–4, 1920 × 1080 for
            TS5–6), filmed with the release's test cameras scaled to that size.
        poses: "cmu" (CMU BVH clips converted at run time), "prior" (samples of the shipped pose prior), or
            "auto" (cmu when ``mocap_dir`` exists).
        mocap_dir: the CMU BVH folder; default ../shared/mocap/cmu beside the checkout.
        max_clips: at most this many clips are converted per run (chosen by the seed).
        betas_clip: betas ~ N(0, 1) clipped to ±this.
        body_model: "open" (the shipped model; its truth is what the files hold).
        wholebody_model: the SMPL-X-layout model of the whole-body datasets' people ("open-smplx", the shipped
            one; "open-smplx-small" or an SMPL-X file are accepted).
        wholebody_image_size: (min, max) px of each side of a whole-body dataset's image (larger than the body
            datasets', so that hands and faces are more than a few pixels).
        jpeg_quality: quality of every written JPEG.
        workers: processes that render (1: render in this process).
    """

    seed: int = 0
    datasets: tuple[str, ...] = BODY_DATASETS
    coco_people: int = 80
    mpii_people: int = 80
    lsp_people: int = 60
    lspet_people: int = 60
    coco_wholebody_people: int = 40
    openpose_people: int = 40
    max_people_per_image: int = 2
    image_size: tuple[int, int] = (200, 360)
    fov_deg: tuple[float, float] = (35.0, 65.0)
    truncated_share: float = 0.15
    h36m_subjects: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
    h36m_actions: tuple[str, ...] = ("Directions 1", "Walking")
    h36m_frames: int = 10
    h36m_frame_step: int = 5
    h36m_image_size: tuple[int, int] = (400, 400)
    h36m_image_layout: Literal["spin", "folders", "video"] = "spin"
    mpi_inf_3dhp_subjects: tuple[str, ...] = ("S1", "S2")
    mpi_inf_3dhp_sequences: tuple[str, ...] = ("Seq1",)
    mpi_inf_3dhp_cameras: tuple[int, ...] = (0, 1, 2, 4, 5, 6, 7, 8)  # SPIN_CAMERAS of the adapter
    mpi_inf_3dhp_frames: int = 3
    mpi_inf_3dhp_image_size: tuple[int, int] = (256, 256)
    mpi_inf_3dhp_test_sequences: tuple[str, ...] = ("TS1", "TS5")
    mpi_inf_3dhp_test_scale: float = 0.125
    poses: PoseSourceName = "auto"
    mocap_dir: Path | None = None
    max_clips: int = 24
    betas_clip: float = 2.5
    body_model: str = "open"
    wholebody_model: str = "open-smplx"
    wholebody_image_size: tuple[int, int] = (320, 480)
    jpeg_quality: int = 90
    workers: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.datasets) - set(DATASETS))
        if unknown or not self.datasets:
            raise SynthError(f"datasets must be among {', '.join(DATASETS)}; got {', '.join(self.datasets) or 'none'}"
                             + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
        counts = {name: getattr(self, f"{name}_people") for name in BODY_DATASETS + WHOLEBODY_DATASETS
                  if name != "h36m"}
        if any(n < 0 for n in counts.values()) or self.h36m_frames < 1 or self.h36m_frame_step < 1:
            raise SynthError("people counts must be >= 0 and h36m_frames, h36m_frame_step >= 1")
        if counts["lsp"] > LSP_MAX_PEOPLE:
            raise SynthError(f"lsp_people must be <= {LSP_MAX_PEOPLE}: LSP's train split is images "
                             f"1-{LSP_MAX_PEOPLE}")
        for field in ("image_size", "wholebody_image_size"):
            low, high = getattr(self, field)
            if not 32 <= low <= high:
                raise SynthError(f"{field} must be (min, max) with 32 <= min <= max, got {getattr(self, field)}")
        if not 1 <= self.max_people_per_image <= 4:
            raise SynthError("max_people_per_image must be 1 to 4")
        if not 0.0 < self.fov_deg[0] <= self.fov_deg[1] < 120.0:
            raise SynthError(f"fov_deg must be (min, max) in (0, 120), got {self.fov_deg}")
        if self.poses not in ("auto", "cmu", "prior"):
            raise SynthError(f"poses must be auto, cmu or prior, got {self.poses!r}")
        if self.h36m_image_layout not in ("spin", "folders", "video"):
            raise SynthError(f"h36m_image_layout must be spin, folders or video, got {self.h36m_image_layout!r}")
        bad = [s for s in self.h36m_subjects if not (s.startswith("S") and s[1:].isdigit() and 1 <= int(s[1:]) <= 11)]
        if bad or len(set(self.h36m_subjects)) != len(self.h36m_subjects):
            raise SynthError(f"h36m_subjects must be distinct S1..S11 (metadata.xml has 11 slots), "
                             f"got {bad or 'repeats'}")
        if any("." in a or "/" in a or not a.strip() for a in self.h36m_actions):
            raise SynthError("h36m_actions must be non-empty names without '.' or '/' "
                             "(the files are <action>.<camera>.cdf)")
        self._check_mpi_inf_3dhp()
        if not 1 <= self.jpeg_quality <= 100:
            raise SynthError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if self.workers < 1:
            raise SynthError(f"workers must be >= 1 (render processes), got {self.workers}")

    def _check_mpi_inf_3dhp(self) -> None:
        if any(s not in [f"S{n}" for n in range(1, 9)] for s in self.mpi_inf_3dhp_subjects) \
                or any(q not in ("Seq1", "Seq2") for q in self.mpi_inf_3dhp_sequences) \
                or any(t not in [f"TS{n}" for n in range(1, 7)] for t in self.mpi_inf_3dhp_test_sequences):
            raise SynthError("mpi_inf_3dhp_subjects must be among S1-S8, mpi_inf_3dhp_sequences among Seq1, Seq2 "
                             "and mpi_inf_3dhp_test_sequences among TS1-TS6")
        if any(not 0 <= int(c) < 14 for c in self.mpi_inf_3dhp_cameras) or self.mpi_inf_3dhp_frames < 1:
            raise SynthError("mpi_inf_3dhp_cameras must be among 0-13 and mpi_inf_3dhp_frames >= 1")
        if not 0.0 < self.mpi_inf_3dhp_test_scale <= 1.0 or min(self.mpi_inf_3dhp_image_size) < 32:
            raise SynthError("mpi_inf_3dhp_test_scale must lie in (0, 1] and mpi_inf_3dhp_image_size be >= 32 px")

    def people(self, dataset: str) -> int:
        """People (records) the dataset will hold."""
        if dataset == "mpi_inf_3dhp":
            frames = self.mpi_inf_3dhp_frames
            train = len(self.mpi_inf_3dhp_subjects) * len(self.mpi_inf_3dhp_sequences) * len(self.mpi_inf_3dhp_cameras)
            return train * frames + len(self.mpi_inf_3dhp_test_sequences) * (frames - (frames > 1))
        if dataset == "h36m":
            sampled = math.ceil(self.h36m_frames / self.h36m_frame_step)
            return len(self.h36m_subjects) * len(self.h36m_actions) * H36M_CAMERAS * sampled
        return getattr(self, f"{dataset}_people")

    def resolved_mocap_dir(self) -> Path:
        return Path(self.mocap_dir) if self.mocap_dir is not None else DEFAULT_MOCAP_DIR

    def to_json(self) -> dict[str, Any]:
        """What decides the set, as json-able values (tuples as lists, paths as strings); ``workers`` is left
        out: it changes the speed, never the output."""
        out = dataclasses.asdict(self)
        out.pop("workers")
        out["mocap_dir"] = str(self.resolved_mocap_dir())
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def with_people(cls, people: int, **overrides: Any) -> "SynthConfig":
        """A config with ``people`` per dataset: each single-image dataset (whole-body ones too) gets ``people``;
        Human3.6M gets enough
        frames per sequence that its sampled frames × 4 cameras × sequences reach at least ``people``."""
        base = cls(**overrides)
        per_frame = max(1, len(base.h36m_subjects) * len(base.h36m_actions) * H36M_CAMERAS)
        sampled = max(1, math.ceil(people / per_frame))
        return dataclasses.replace(base, coco_people=people, mpii_people=people, lsp_people=min(people, LSP_MAX_PEOPLE),
                                   lspet_people=people, coco_wholebody_people=people, openpose_people=people,
                                   h36m_frames=sampled * base.h36m_frame_step)

    def with_wholebody_people(self, people: int) -> SynthConfig:
        """This config with ``people`` per whole-body dataset (COCO-WholeBody, OpenPose)."""
        return dataclasses.replace(self, coco_wholebody_people=people, openpose_people=people)
