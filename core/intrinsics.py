"""A sample's camera intrinsics in its original image, and where they come from: the dataset, EXIF, or a guess.

Every sample fitloop writes carries ``fx, fy, cx, cy`` in **original-image px** with its provenance
(`INTRINSICS_SOURCES`), so that a fit can be made in the image's own camera (`core.frames`) as well as in SPIN's
fit frame. Pixel convention: fitloop's (as OpenCV's): 0-based, pixel centres at integers, so an image of width W
spans [-0.5, W - 0.5] and its centre is ``(W - 1) / 2``; ``u = fx·X/Z + cx`` (`core.pinhole.pinhole`) gives
those px. No lens distortion is kept here (Human3.6M's is small; its adapter keeps it in ``extra``).

The three sources, best first (`resolve_intrinsics`):

* ``dataset``: the dataset's calibrated cameras (Human3.6M's ``cameras.h5`` / ``metadata.xml``, the synthetic
  generator's true cameras written in those files).
* ``exif``: the JPEG's EXIF (`intrinsics_from_exif`), tags of the Exif IFD (0x8769), two ways, in the order
  COLMAP tries them: ``FocalLengthIn35mmFilm`` (0xA405, mm, 35 mm equivalent; read by the diagonal, the common
  definition of the equivalent focal length: ``f_px = f35 · image diagonal px / 43.27 mm``, the diagonal of a
  36 × 24 mm frame, where COLMAP takes 35 mm across the longer side); else
  ``FocalLength`` (0x920A, mm) with ``FocalPlaneXResolution`` / ``FocalPlaneYResolution`` (0xA20E / 0xA20F, sensor
  px per unit) and ``FocalPlaneResolutionUnit`` (0xA210: 2 inch, the default, 3 cm, 4 mm, 5 µm), rescaled by
  ``width / PixelXDimension`` (0xA002, and 0xA003 for y) when those say the image was resized after capture.
  Principal point: the image centre. A value that gives a field of view outside (1°, 170°) is ignored.
* ``fov-guess``: `fov_guess`, the rule CLIFF (Li et al., ECCV 2022) introduced for images without intrinsics
  and BEDLAM-CLIFF and SMPLer-X keep: focal length = the image diagonal in px, i.e. a 53.1° diagonal field of
  view (2·atan(1/2)), principal point at the centre: a normal lens (35 mm-equivalent focal length 43 mm), from
  nothing but the image size. CameraHMR (Patel & Black, 3DV 2025) replaces it by a field of view its HumanFoV
  network estimates from the image; fitloop has no such network, so it keeps CLIFF's rule.

A shard set written before intrinsics were stored (sample format 1) reads as "unknown": the guess from the
image size (`shards.sample.StoredSample.intrinsics`).

numpy only, no torch: preprocessing workers import this.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from core.pinhole import pinhole

INTRINSICS_SOURCES: tuple[str, ...] = ("dataset", "exif", "fov-guess")
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm: the frame a 35 mm-equivalent focal length refers to
GUESS_DIAGONAL_FOV_DEG = math.degrees(2.0 * math.atan(0.5))  # 53.13°: focal length = image diagonal (CLIFF)
PLAUSIBLE_FOV_DEG = (1.0, 170.0)  # an EXIF focal length outside this diagonal field of view is ignored

# EXIF tags read (Exif IFD, 0x8769): name -> tag number
EXIF_IFD = 0x8769
EXIF_TAGS: dict[str, int] = {
    "FocalLength": 0x920A, "FocalLengthIn35mmFilm": 0xA405, "FocalPlaneXResolution": 0xA20E,
    "FocalPlaneYResolution": 0xA20F, "FocalPlaneResolutionUnit": 0xA210, "PixelXDimension": 0xA002,
    "PixelYDimension": 0xA003,
}
RESOLUTION_UNIT_MM: dict[int, float] = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit -> mm


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera of an original image: focal lengths and principal point in px (module docstring).

    Attributes:
        fx, fy: focal lengths, px. cx, cy: principal point, 0-based px with pixel centres at integers.
        source: one of `INTRINSICS_SOURCES`. detail: where exactly they come from, for a person to read.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    source: str
    detail: str = ""

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(value):
                raise ValueError(f"intrinsics {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"intrinsics focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if self.source not in INTRINSICS_SOURCES:
            raise ValueError(f"intrinsics source must be one of {INTRINSICS_SOURCES}, got {self.source!r}")

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) px."""
        return (self.fx, self.fy)

    @property
    def center(self) -> tuple[float, float]:
        """(cx, cy) px."""
        return (self.cx, self.cy)

    def matrix(self) -> np.ndarray:
        """K (3, 3) float64: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3), Z > 0 in front, to original-image px (..., 2) (`core.pinhole`)."""
        return pinhole(points_cam, self.focal, self.center)

    def diagonal_fov_deg(self, size: tuple[int, int]) -> float:
        """The diagonal field of view in degrees of an image of ``size`` (width, height) px seen by this camera."""
        half = math.hypot(size[0] / self.fx, size[1] / self.fy) / 2.0
        return math.degrees(2.0 * math.atan(half))

    def to_json(self) -> dict[str, Any]:
        """A json-able dict: fx, fy, cx, cy (float64 values survive json exactly), source, detail."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> "Intrinsics":
        """From `to_json`'s dict; ValueError saying what is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError(f"intrinsics must be an object, got {value!r}")
        missing = [k for k in ("fx", "fy", "cx", "cy", "source") if k not in value]
        if missing:
            raise ValueError(f"intrinsics lack {', '.join(missing)}")
        detail = value.get("detail", "")
        if not isinstance(detail, str):
            raise ValueError(f"intrinsics detail must be a string, got {detail!r}")
        return cls(value["fx"], value["fy"], value["cx"], value["cy"], value["source"], detail)


def image_centre(size: tuple[int, int]) -> tuple[float, float]:
    """The centre of an image of ``size`` (width, height) in 0-based px with pixel centres at integers."""
    return ((size[0] - 1) / 2.0, (size[1] - 1) / 2.0)


def fov_guess(size: tuple[int, int], why: str = "") -> Intrinsics:
    """The guess for an image of ``size`` (width, height) px without known intrinsics: focal length = the image
    diagonal (a 53.1° diagonal field of view, CLIFF's rule), principal point at the centre. ``why`` is added to
    the detail (e.g. that the shard predates stored intrinsics)."""
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"an image size must be positive, got {size}")
    f = math.hypot(width, height)
    detail = f"focal = image diagonal {f:.1f} px ({GUESS_DIAGONAL_FOV_DEG:.1f}° diagonal field of view, CLIFF's rule)"
    return Intrinsics(f, f, *image_centre((width, height)), source="fov-guess",
                      detail=detail + (f"; {why}" if why else ""))


def _number(value: Any) -> float | None:
    """An EXIF value (int, float, Pillow's IFDRational, a (num, den) pair) as a float; None when unusable."""
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0] / value[1] if value[1] else float("nan")
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def intrinsics_from_exif(tags: Mapping[int, Any], size: tuple[int, int]) -> Intrinsics | None:
    """The intrinsics an image's EXIF gives (module docstring), or None when its tags give none.

    Args:
        tags: EXIF tag number -> value, the Exif IFD's tags (Pillow: ``image.getexif().get_ifd(0x8769)``, merged
            with the main IFD's); values as Pillow gives them (numbers or rationals).
        size: (width, height) px of the image as stored.
    """
    width, height = (int(v) for v in size)
    diagonal = math.hypot(width, height)
    centre = image_centre((width, height))
    candidates: list[tuple[float, float, str]] = []
    f35 = _number(tags.get(EXIF_TAGS["FocalLengthIn35mmFilm"]))
    if f35 is not None:
        f = f35 * diagonal / FULL_FRAME_DIAGONAL_MM
        candidates.append((f, f, f"EXIF FocalLengthIn35mmFilm {f35:g} mm, by the diagonal ({diagonal:.1f} px = "
                                 f"{FULL_FRAME_DIAGONAL_MM:.2f} mm)"))
    focal_mm = _number(tags.get(EXIF_TAGS["FocalLength"]))
    x_res = _number(tags.get(EXIF_TAGS["FocalPlaneXResolution"]))
    if focal_mm is not None and x_res is not None:
        unit = int(_number(tags.get(EXIF_TAGS["FocalPlaneResolutionUnit"])) or 2)
        if unit in RESOLUTION_UNIT_MM:
            y_res = _number(tags.get(EXIF_TAGS["FocalPlaneYResolution"])) or x_res
            px_x = _number(tags.get(EXIF_TAGS["PixelXDimension"])) or width
            px_y = _number(tags.get(EXIF_TAGS["PixelYDimension"])) or height
            fx = focal_mm * x_res / RESOLUTION_UNIT_MM[unit] * width / px_x
            fy = focal_mm * y_res / RESOLUTION_UNIT_MM[unit] * height / px_y
            resized = "" if (px_x, px_y) == (width, height) else f", scaled from {px_x:g}×{px_y:g} px"
            candidates.append((fx, fy, f"EXIF FocalLength {focal_mm:g} mm × FocalPlaneX/YResolution "
                                       f"{x_res:g}/{y_res:g} px per {RESOLUTION_UNIT_MM[unit]:g} mm{resized}"))
    low, high = PLAUSIBLE_FOV_DEG
    for fx, fy, detail in candidates:
        if not (math.isfinite(fx) and math.isfinite(fy)):  # tags' product overflowed: no camera
            continue
        camera = Intrinsics(fx, fy, *centre, source="exif", detail=detail)
        if low < camera.diagonal_fov_deg((width, height)) < high:
            return camera
    return None


def resolve_intrinsics(known: Intrinsics | None, exif_tags: Mapping[int, Any] | None,
                       size: tuple[int, int]) -> Intrinsics:
    """A sample's intrinsics: the dataset's (``known``) when given, else the image's EXIF, else `fov_guess`."""
    if known is not None:
        return known
    from_exif = intrinsics_from_exif(exif_tags, size) if exif_tags else None
    return from_exif if from_exif is not None else fov_guess(size)
