"""Person masks and body-part labels: COCO's RLE and polygon codecs, the record's label map, and the crop's PNGs.

A person may carry three label images of the **original image** (`LABEL_KINDS`), each (H, W) uint8:

* a **person mask** (foreground silhouette): 0 background, 1 the person;
* **part labels** (anatomy): 0 background, 1 … n the body parts named by its table (`LabelMap.names`, index =
  id), e.g. the synthetic generator's 24 SMPL skinning segments;
* a **parsing** (clothing or semantic classes a user brings, e.g. a human parser's output): 0 background, ids
  into its own table. It is kept apart from the anatomy: a minimally-clothed-region term reads the parts, a
  clothing-containment term the parsing.

Each says where it came from (`PROVENANCES`). In a record (`shards.schema.PersonRecord`) a label image travels
as a `LabelMap`: column-major runs, COCO's RLE generalised to more than two values, so a 1000 × 1000 Human3.6M
frame costs a few hundred runs instead of a megabyte while records pass between processes. The shard writer
warps it into the stored crop (nearest neighbour, `crop_labels`) and stores it as a 1-channel PNG
(`encode_png`); the reader warps that into the training crop and flips it (`flip_labels`: a flip also swaps
every ``left_*`` part with its ``right_*`` twin).

**Unknown pixels.** Crop pixels that lie outside the original image (or, in training, outside the stored crop)
are `UNKNOWN` (255, the "ignore" id of VOC and Cityscapes): the annotation says nothing about them, which a
silhouette term must not read as background. A label map of the original image may hold `UNKNOWN` too, where its
source cannot tell: a COCO person's mask marks the other people and crowd regions of its image unknown outside the
person (an occluder in front hides the body behind it; `pipelines.adapters.coco`).

**COCO's conventions** (pycocotools ``common/maskApi.c``, cocodataset/cocoapi commit e0149257, and the format page
https://cocodataset.org/#format-data): an RLE is ``{"counts", "size": [h, w]}`` of run lengths over the mask
flattened **column-major**, the first run counting 0s (so it is 0 when the mask starts with a 1); ``counts`` is a
list (uncompressed, as ``iscrowd=1`` annotations of the json store them) or a string (compressed: `rle_from_string`,
what pycocotools' ``encode`` returns). A polygon is a flat [x1, y1, x2, y2, ...] in COCO's continuous
coordinates, where pixel (i, j) spans [i, i + 1] × [j, j + 1]; fitloop's pixel centres sit at integers
(`shards.schema`), so a polygon's pixels are those whose centre (i + 0.5, j + 0.5) lies inside it (even-odd).
pycocotools (``rleFrPoly``) walks the edges on a 5× finer grid, which samples column i at x = i + 0.4 and rounds
the vertices to 0.2 px; the two differ by edge pixels only (the tests bound it by the annotation's ``area``).

All functions are pure; none modifies its inputs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from shards.crop import warp

# The label images a sample may carry, in member order (module docstring).
LABEL_KINDS: tuple[str, ...] = ("mask", "parts", "parsing")
UNKNOWN = 255          # a label pixel the annotation says nothing about (outside the image or the stored crop)
MASK_NAMES: tuple[str, ...] = ("background", "person")  # a person mask's table
MAX_LABELS = 255       # ids 0 … 254; 255 is UNKNOWN

# Where a mask or part labels came from; a shard's json names one of these.
PROVENANCES: dict[str, str] = {
    "coco-polygon": "COCO segmentation polygons of the person's annotation (iscrowd=0), rasterised at pixel "
                    "centres",
    "coco-rle": "COCO segmentation RLE of the person's annotation (uncompressed counts or compressed string)",
    "synthetic-exact": "the synthetic generator's rendering: the pixels its rasteriser drew for this person",
    "h36m-foreground": "Human3.6M's background-subtraction mask (MySegmentsMat/ground_truth_bs)",
    "user-png": "a label PNG the user brought (a folder keyed by sample key or image name)",
}


class MaskError(ValueError):
    """A segmentation, RLE or label image that cannot be decoded as its convention says."""


# --- COCO RLE ---------------------------------------------------------------------------------------------------

def rle_encode(mask: np.ndarray) -> np.ndarray:
    """COCO's uncompressed RLE counts (R,) uint32 of an (H, W) mask (nonzero = 1): column-major runs, 0s first."""
    values, lengths = runs_of(np.asarray(mask) != 0)
    if len(values) and values[0]:
        lengths = np.concatenate([[0], lengths])
    return lengths.astype(np.uint32)


def rle_decode(counts: Sequence[int] | np.ndarray | str, size: Sequence[int]) -> np.ndarray:
    """(H, W) bool mask of COCO RLE ``counts`` (a list, or the compressed string) for ``size`` [h, w]."""
    if isinstance(counts, (str, bytes)):
        counts = rle_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    h, w = (int(v) for v in size)
    if (counts < 0).any() or counts.sum() != h * w:
        raise MaskError(f"RLE counts sum to {int(counts.sum())}, size {h}x{w} has {h * w} pixels")
    return expand_runs((np.arange(len(counts)) % 2).astype(bool), counts, (h, w))


def rle_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """COCO's compressed RLE string of uncompressed ``counts`` (pycocotools ``rleToString``): each count, less
    the count two before it from the fourth on, in 5-bit groups, least significant first, with a continuation
    bit (0x20) and a sign bit (0x10) in the last group, each group + 48 as one ASCII character."""
    counts = [int(c) for c in np.asarray(counts).reshape(-1)]
    out = []
    for i, x in enumerate(counts):
        if i > 2:  # sic: maskApi.c differences from the fourth count on (`if(i>2) x-=(long) cnts[i-2];`)
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative x ends at -1
            more = (x != -1) if c & 0x10 else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_from_string(text: str | bytes) -> np.ndarray:
    """Uncompressed counts (R,) int64 of COCO's compressed RLE string (pycocotools ``rleFrString``)."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise MaskError("compressed RLE string ends inside a count")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise MaskError(f"compressed RLE string has {chr(data[p])!r} at {p}, outside COCO's alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


# --- COCO polygons and annotations ------------------------------------------------------------------------------

def polygons_to_mask(polygons: Sequence[Sequence[float]], size: Sequence[int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside any of COCO's ``polygons`` (each flat [x1, y1, ...] in
    COCO's continuous px; module docstring), even-odd within a polygon, union over polygons; ``size`` [h, w]."""
    h, w = (int(v) for v in size)
    mask = np.zeros((h, w), dtype=bool)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1)
        if len(points) < 6 or len(points) % 2:
            raise MaskError(f"a polygon of {len(points)} numbers: COCO's need x, y pairs, 3 points at least")
        xy = points.reshape(-1, 2)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        rows = np.arange(max(0, int(np.floor(y0.min()))), min(h, int(np.ceil(y0.max())) + 1))
        if len(rows) == 0:
            continue
        yc = rows[:, None] + 0.5                                       # (R, 1) row centres
        crosses = (y0[None] <= yc) != (y1[None] <= yc)                 # (R, E) edges that straddle the row
        t = (yc - y0[None]) / np.where(y1 == y0, 1.0, y1 - y0)[None]
        xs = x0[None] + t * (x1 - x0)[None]                            # (R, E) where each edge meets the row
        # parity of the crossings left of each centre (i + 0.5 >= x from column ceil(x - 0.5) on): a +1 at that
        # column per crossing, summed along the row, over the polygon's columns c0 … c1 - 1 only
        c0, c1 = max(0, int(np.floor(x0.min()))), min(w, int(np.ceil(x0.max())) + 1)
        if c1 <= c0:
            continue
        span = c1 - c0
        first = np.clip(np.ceil(xs - 0.5) - c0, 0, span).astype(np.int64)
        r, e = np.nonzero(crosses)
        steps = np.bincount(r * (span + 1) + first[r, e], minlength=len(rows) * (span + 1))
        inside = np.cumsum(steps.reshape(len(rows), span + 1)[:, :span], axis=1) % 2 == 1
        mask[rows, c0:c1] |= inside
    return mask


def coco_mask(segmentation: Any, size: Sequence[int]) -> tuple[np.ndarray, str]:
    """(H, W) bool mask and provenance of a COCO annotation's ``segmentation`` for an image ``size`` [h, w]:
    polygons ("coco-polygon"), or an RLE dict with list or string counts ("coco-rle") whose size must match.
    MaskError when it is neither or does not fit the image."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, size), "coco-polygon"
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rle_size = [int(v) for v in segmentation.get("size", ())]
        if rle_size != [int(v) for v in size]:
            raise MaskError(f"segmentation RLE has size {rle_size}, the image is {list(size)} (h, w)")
        return rle_decode(segmentation["counts"], rle_size), "coco-rle"
    raise MaskError(f"segmentation is a {type(segmentation).__name__}, neither polygons nor an RLE")


# --- Label maps (a record's mask or part labels) ----------------------------------------------------------------

def runs_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of the runs of an (H, W) label image flattened column-major."""
    flat = np.asarray(labels).T.reshape(-1)
    if flat.size == 0:
        return flat[:0], np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    return flat[starts], np.diff(np.concatenate([starts, [flat.size]]))


def expand_runs(values: np.ndarray, lengths: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The (H, W) label image (of ``values``' dtype) whose column-major runs are ``values`` × ``lengths``."""
    h, w = (int(v) for v in size)
    return np.repeat(values, lengths).reshape(w, h).T


@dataclass(frozen=True, eq=False)
class LabelMap:
    """A label image of the original image, as column-major runs (module docstring).

    Attributes:
        size: (H, W) px of the original image.
        values: (R,) uint8 label of each run (an id into ``names``, or `UNKNOWN`); lengths: (R,) uint32 pixels in each run (sum H·W).
        names: the label table, id -> name (`MASK_NAMES` for a person mask; "background" first).
        provenance: a `PROVENANCES` key.
    """

    size: tuple[int, int]
    values: np.ndarray
    lengths: np.ndarray
    names: tuple[str, ...]
    provenance: str

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "size", (int(self.size[0]), int(self.size[1])))
        set_(self, "names", tuple(self.names))
        values = np.array(self.values, dtype=np.uint8).reshape(-1)
        lengths = np.array(self.lengths, dtype=np.uint32).reshape(-1)
        values.setflags(write=False)
        lengths.setflags(write=False)
        set_(self, "values", values)
        set_(self, "lengths", lengths)
        if self.provenance not in PROVENANCES:
            raise MaskError(f"mask provenance {self.provenance!r} is not one of {sorted(PROVENANCES)}")
        if not 2 <= len(self.names) <= MAX_LABELS or self.names[0] != "background":
            raise MaskError(f"a label table has 'background' first and 2 to {MAX_LABELS} names, got {self.names}")
        if len(values) != len(lengths) or int(lengths.sum(dtype=np.int64)) != self.size[0] * self.size[1]:
            raise MaskError(f"label runs cover {int(lengths.sum(dtype=np.int64))} pixels, size {self.size} has "
                            f"{self.size[0] * self.size[1]}")
        named = values[values != UNKNOWN]
        if len(named) and named.max() >= len(self.names):
            raise MaskError(f"label {int(named.max())} is not in the table of {len(self.names)} names (nor "
                            f"{UNKNOWN}, unknown)")

    @classmethod
    def from_array(cls, labels: np.ndarray, names: Sequence[str], provenance: str) -> "LabelMap":
        """The label map of an (H, W) integer image (a bool mask gives ids 0/1)."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise MaskError(f"a label image is (H, W), got shape {labels.shape}")
        values, lengths = runs_of(labels.astype(np.uint8) if labels.dtype == bool else labels)
        named = values[values != UNKNOWN]
        if len(values) and (values.min() < 0 or (len(named) and named.max() >= len(names))):
            raise MaskError(f"labels {int(values.min())}..{int(values.max())} are not all in the table of "
                            f"{len(names)} names (or {UNKNOWN}, unknown)")
        return cls(labels.shape, values, lengths, tuple(names), provenance)

    @property
    def is_mask(self) -> bool:
        """Whether this is a person mask (table `MASK_NAMES`)."""
        return self.names == MASK_NAMES

    def array(self) -> np.ndarray:
        """The (H, W) uint8 label image."""
        return expand_runs(self.values, self.lengths, self.size)

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size), "values": self.values.tolist(), "lengths": self.lengths.tolist(),
                "names": list(self.names), "provenance": self.provenance}


# --- In the crop ------------------------------------------------------------------------------------------------

def crop_labels(labels: np.ndarray, to_crop: np.ndarray, res: int) -> np.ndarray:
    """The (res, res) uint8 label image seen through ``to_crop`` ((3, 3) source px -> crop px, `shards.crop`),
    nearest neighbour (labels never blend), `UNKNOWN` where the crop lies outside the source."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L")
    return np.array(warp(image, to_crop, res, resample="nearest", antialias=False, fill=UNKNOWN))


def flip_permutation(names: Sequence[str]) -> np.ndarray:
    """(256,) uint8 lookup: each label id -> its mirror twin's (``left_x`` <-> ``right_x``, by name), every other
    id (and `UNKNOWN`) to itself."""
    index = {name: i for i, name in enumerate(names)}
    table = np.arange(256, dtype=np.uint8)
    for i, name in enumerate(names):
        for this, other in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(this) and other + name[len(this):] in index:
                table[i] = index[other + name[len(this):]]
    return table


def flip_labels(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Rename the ids of an already mirrored label image so left parts are called left again (`flip_permutation`);
    a person mask is unchanged."""
    return flip_permutation(names)[np.asarray(labels, dtype=np.uint8)]


def encode_png(labels: np.ndarray) -> bytes:
    """1-channel 8-bit PNG bytes of an (H, W) uint8 label image (PIL, deflate level 9)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(buffer, format="PNG",
                                                                                 compress_level=9)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The (H, W) uint8 label image of 1-channel PNG bytes; MaskError for anything else."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode != "L":
                raise MaskError(f"a label image must be a 1-channel 8-bit PNG, got {image.format} {image.mode}")
            return np.asarray(image)
    except MaskError:
        raise
    except Exception as err:  # PIL raises many types for bad bytes
        raise MaskError(f"label PNG does not decode ({describe_image_error(err)})") from None


def describe_image_error(err: Exception) -> str:
    """PIL's error for bytes that do not decode, as "Type: message", without the address of the buffer it names
    ("cannot identify image file <_io.BytesIO object at 0x...>")."""
    if isinstance(err, UnidentifiedImageError):
        return f"{type(err).__name__}: not an image file PIL can identify"
    return f"{type(err).__name__}: {err}"
