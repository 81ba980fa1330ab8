"""Human3.6M from its videos: OpenCV's decoding in order (`shards.frames`), the synthetic generator's video layout,
the adapter's frame alignment (pose frame i is video frame i) and shards whose keypoints land on the person."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.joints import JOINT_INDEX
from pipelines.adapters import iter_dataset
from pipelines.adapters.h36m import VIDEO_LAYOUT
from pipelines.synthetic import SynthConfig, generate, load_truth
from pipelines.synthetic.paint import background
from shards.frames import VideoError, VideoFrames, is_video, video_info, write_video
from shards.reader import iter_shard, list_shards
from shards.schema import PersonRecord, Reject
from shards.verify import verify_set
from shards.writer import ShardConfig, write_shards

FRAMES = 4
PELVIS = JOINT_INDEX["OP MidHip"]  # the kinematic pelvis: inside the mesh, so its projection is on the body


def test_frames_decode_in_order_backwards_and_say_when_one_is_missing(tmp_path):
    levels = [10, 60, 110, 160, 210]  # flat grey frames: MPEG-4 keeps a flat frame's level to a few units
    path = tmp_path / "v.mp4"
    write_video(path, [np.full((32, 48, 3), v, np.uint8) for v in levels], fps=50)
    info = video_info(path)
    assert (info.frames, info.size, info.fps) == (5, (48, 32), 50.0) and is_video(path) and not is_video("a.jpg")
    with VideoFrames(path) as video:
        for index in (0, 3, 4, 1, 1, 2):  # forwards, then backwards (reopened), then the same frame again
            frame = np.asarray(video.frame(index), dtype=float)
            assert frame.shape == (32, 48, 3) and abs(frame.mean() - levels[index]) < 4, index
        with pytest.raises(VideoError, match="frame 5 does not exist"):
            video.frame(5)
    (tmp_path / "not.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="not.mp4"):
        video_info(tmp_path / "not.mp4")
    with pytest.raises(FileNotFoundError):
        VideoFrames(tmp_path / "absent.mp4")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """S1 with one action and every frame a person (step 1), in the release's video layout."""
    out = tmp_path_factory.mktemp("h36m_video")
    generate(out, SynthConfig(seed=5, datasets=("h36m",), h36m_subjects=("S1",), h36m_actions=("Walking",),
                              h36m_frames=FRAMES, h36m_frame_step=1, h36m_image_size=(320, 320),
                              h36m_image_layout="video", jpeg_quality=95))
    return out / "h36m"


def coloured(pixels: np.ndarray, outfit: np.ndarray, tolerance: float = 45.0) -> np.ndarray:
    """(N,) whether each pixel (N, 3) is one of the outfit's colours under flat shading, plus coding error."""
    hits = np.zeros(len(pixels), bool)
    for colour in outfit.astype(np.float64):
        shade = np.clip(pixels @ colour / (colour @ colour), 0.3, 1.05)
        hits |= np.abs(pixels - shade[:, None] * colour).max(axis=1) < tolerance
    return hits


def test_the_generator_writes_the_releases_videos_and_the_adapter_reads_them(videos):
    files = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))
    assert files == [VIDEO_LAYOUT.format(subject="S1", action="Walking", camera=c)
                     for c in ("54138969", "55011271", "58860488", "60457274")]
    assert not list(videos.rglob("*.jpg"))   # the painted frames were encoded and removed
    outputs = list(iter_dataset("h36m", videos, "train", frame_step=1))   # image_layout "auto" finds the videos
    people = [o for o in outputs if isinstance(o, PersonRecord)]
    assert len(people) == len(outputs) == 4 * FRAMES
    assert all(r.image_path.endswith(".mp4") and r.image_frame == r.extra["frame"] for r in people)
    assert not any("video_frames" in r.extra for r in people)   # the videos hold the pose files' frames


def test_pose_frame_i_is_video_frame_i(videos):
    """Where decoded frame i differs from its sequence's (static) background matches frame i's exact silhouette
    (ground_truth_bs, drawn from the pose of frame i) better than any other frame's, and clearly better than its
    neighbours' (the body moves a few px a frame): an off-by-one, as in SPIN's h36m.py, would show."""
    truth = load_truth(videos)
    people = [r for r in iter_dataset("h36m", videos, "train", frame_step=1) if isinstance(r, PersonRecord)]
    by_video: dict[str, list[PersonRecord]] = {}
    for record in people:
        by_video.setdefault(record.image_path, []).append(record)
    for path, records in by_video.items():
        row = truth.get(records[0].key)
        width, height = (int(v) for v in row["image_size"])
        ground = background((width, height), int(row["background_seed"])).astype(np.float64)
        with VideoFrames(videos / path) as video:
            moved = [np.abs(np.asarray(video.frame(i), dtype=np.float64) - ground).max(axis=-1) > 40
                     for i in range(FRAMES)]
        masks = [r.mask.array() == 1 for r in records]   # the records of frames 0, 1, 2, ... in order
        assert [r.image_frame for r in records] == list(range(FRAMES))
        for i in range(FRAMES):
            iou = [(moved[i] & mask).sum() / (moved[i] | mask).sum() for mask in masks]
            assert int(np.argmax(iou)) == i and iou[i] > 0.3, (path, i, iou)
            assert all(iou[i] > iou[j] + 0.03 for j in (i - 1, i + 1) if 0 <= j < FRAMES), (path, i, iou)


def test_video_frames_become_shards_whose_keypoints_land_on_the_person(videos, tmp_path):
    truth = load_truth(videos)
    outputs = list(iter_dataset("h36m", videos, "train", frame_step=2))
    missing = iter_dataset("h36m", videos, "train", frame_step=1, image_layout="spin")
    assert {o.reason for o in missing if isinstance(o, Reject)} == {"missing_image"}  # no extracted images here
    manifest = write_shards(outputs, tmp_path / "shards", ShardConfig())
    counts = manifest["counts"]
    assert counts["read"] == counts["written"] + counts["rejected"] == len(outputs) == 4 * FRAMES // 2
    assert counts["rejected"] == 0 and verify_set(tmp_path / "shards").problems == []
    samples = [s for shard in list_shards(tmp_path / "shards") for s in iter_shard(shard)]
    assert len(samples) == 4 * FRAMES // 2
    for sample in samples:
        assert sample.meta["image_frame"] == sample.meta["extra"]["frame"]
        crop = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"), dtype=np.float64)
        u, v = np.round(sample.keypoints_crop[PELVIS, :2]).astype(int)
        assert coloured(crop[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3), truth.get(sample.key)["outfit"]).all()
    again = json.loads(json.dumps(samples[0].meta))
    assert again["image_path"].startswith("S1/Videos/")


def test_a_frame_past_the_videos_end_is_a_missing_image_reject(videos, tmp_path):
    import shutil

    copy = Path(shutil.copytree(videos, tmp_path / "h36m"))
    path = copy / VIDEO_LAYOUT.format(subject="S1", action="Walking", camera="54138969")
    with VideoFrames(path) as video:   # the same video cut to its first 3 frames
        write_video(path.with_suffix(".tmp.mp4"), [video.frame(i) for i in range(3)], fps=50)
    path.with_suffix(".tmp.mp4").replace(path)
    outputs = [o for o in iter_dataset("h36m", copy, "train", frame_step=1) if "54138969" in o.key]
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert [r.key[-6:] for r in rejects] == [f"{i + 1:06d}" for i in range(3, FRAMES)]
    assert all(r.reason == "missing_image" and "has 3 frames" in r.message for r in rejects)
    kept = [o for o in outputs if isinstance(o, PersonRecord)]
    assert len(kept) == 3 and all(r.extra["video_frames"] == 3 and r.extra["pose_frames"] == FRAMES for r in kept)
