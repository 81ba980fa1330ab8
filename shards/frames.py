"""Frames of video files as images: what the adapters' checks and the shard writer read when a record's image is a
frame of a video (Human3.6M ships as ``S<n>/Videos/<Action>.<camera>.mp4``; MPI-INF-3DHP as ``video_<k>.avi``).

A record names a video by its path (``PersonRecord.image_path``, a `VIDEO_SUFFIXES` file) and the frame by its
0-based index in decoding order (``PersonRecord.image_frame``). Decoding is OpenCV's (``cv2.VideoCapture``, its
FFmpeg back end). **Frames are read in order, never by seeking**: ``CAP_PROP_POS_FRAMES`` seeks to key frames and
is frame-exact only for some codecs and containers, while reading from the start is exact for all of them; a
reader (`VideoFrames`) keeps its capture open and grabs (decodes without converting) the frames it skips, so the
records of one sequence, which an adapter yields in frame order, cost one pass over the video. A request for an
earlier frame reopens the file.

The frame count (`video_info`) is the container's (``CAP_PROP_FRAME_COUNT``: exact for MP4, whose sample table
lists every frame, and for AVI's index; counted by decoding when a container gives none), so checking a video costs
no decoding; a video that holds fewer decodable frames than it says fails at crop time for the missing ones (a
``corrupt_image`` reject naming the frame). The adapters compare the count with the annotation's (Human3.6M: the
pose files').
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class VideoError(OSError):
    """A video that cannot be opened or decoded, or a frame it does not have."""


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by its suffix, `VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """A video's decodable frame count, frame size (width, height) px and frame rate (frames per second)."""

    frames: int
    size: tuple[int, int]
    fps: float


def _capture(path: Path):
    import cv2  # imported here: only video sources need OpenCV

    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path.name}: OpenCV cannot open it as a video (not a video, or a codec its FFmpeg lacks)")
    return capture


def video_info(path: str | Path) -> VideoInfo:
    """Frame count (the container's; module docstring), size and rate of the video at ``path``.
    FileNotFoundError without a file; `VideoError` when it cannot be opened, holds no frame, or states frames of
    0 px (a file whose index is cut short opens, states its frame count and a 0x0 size, and decodes nothing)."""
    import cv2

    path = Path(path)
    capture = _capture(path)
    try:
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if frames <= 0:  # a container without a count: decode to count
            frames = 0
            while capture.grab():
                frames += 1
    finally:
        capture.release()
    if frames == 0:
        raise VideoError(f"{path.name}: no frame decodes")
    if min(size) <= 0:
        raise VideoError(f"{path.name}: OpenCV opens it but finds {size[0]}x{size[1]} px frames: its index or frames "
                         f"are damaged (a download cut short?)")
    return VideoInfo(frames, size, fps)


class VideoFrames:
    """One video's frames as RGB images, read in order (module docstring). Use as a context manager or call
    `close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._capture = _capture(self.path)
        self._next = 0   # the index of the frame the next grab decodes

    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` (0-based, decoding order) as an RGB image; `VideoError` past the last frame."""
        if index < 0:
            raise VideoError(f"{self.path.name}: frame {index} does not exist (frames count from 0)")
        if index < self._next:  # backwards: start again (exact, unlike seeking)
            self._capture.release()
            self._capture, self._next = _capture(self.path), 0
        while self._next < index:
            if not self._capture.grab():
                raise VideoError(f"{self.path.name}: frame {index} does not exist (the video ends after "
                                 f"{self._next} frames)")
            self._next += 1
        ok, bgr = self._capture.read()
        if not ok and self._next == 0:  # a video that states frames and decodes none
            raise VideoError(f"{self.path.name}: its first frame does not decode (a damaged file or a download cut "
                             f"short?)")
        if not ok:
            raise VideoError(f"{self.path.name}: frame {index} does not exist (the video ends after {self._next} "
                             f"frames)")
        self._next += 1
        return Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))  # OpenCV decodes to BGR

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: str | Path, frames: list[np.ndarray] | list[Image.Image], fps: float) -> None:
    """Encode RGB frames (H, W, 3) uint8 arrays or images, all one size, as an MPEG-4 Part 2 video (``mp4v``, what
    OpenCV's FFmpeg writes everywhere; the synthetic generator's Human3.6M videos). `VideoError` when OpenCV cannot
    write it."""
    import cv2

    path = Path(path)
    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.uint8) for f in frames]
    if not arrays:
        raise VideoError(f"{path.name}: no frames to write")
    height, width = arrays[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise VideoError(f"{path}: OpenCV cannot write an mp4v video here")
    try:
        for array in arrays:
            if array.shape[:2] != (height, width):
                raise VideoError(f"{path.name}: frames of different sizes ({array.shape[1]}x{array.shape[0]} after "
                                 f"{width}x{height})")
            writer.write(np.ascontiguousarray(array[:, :, ::-1]))
    finally:
        writer.release()
