"""A folder of label PNGs beside a dataset: a parsing (clothing, semantic classes) or body-part labels per person or
per image, which any adapter attaches to its records (``CheckConfig.labels_dir``).

Layout::

    <labels_dir>/labels.json     {"kind": "parsing", "names": ["background", ...], "provenance": "user-png"}
    <labels_dir>/<key>.png       one person: its sample key with "/" as "__" (``coco__000000000785_a442619.png``)
    <labels_dir>/<image>.png     or one image: the image file's name without its suffix (``000000000785.png``)

Each PNG is 1-channel 8-bit at the original image's size, 0 background and ids into ``names`` ("background"
first). ``kind`` says which of a record's label images it fills: "parsing" (the default: what a human parser or a
clothing annotation gives) or "parts" (anatomy: body parts). A person's own file wins over its image's. An image's file covers everyone in it, so it is cut to the
person's mask where the record has one (pixels outside the mask become background), and taken whole otherwise
(``extra["parts_whole_image"]`` says so). ``provenance`` is a `shards.masks.PROVENANCES` key ("user-png" for a
parsing a user brings; the synthetic generator writes "synthetic-exact"). With ``"mask": true`` the labels also
give the person mask (its pixels with an id > 0) where the dataset's annotation has none: the synthetic generator's
exact silhouettes, for formats (MPII, LSP) that carry no segmentation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shards.masks import MASK_NAMES, PROVENANCES, LabelMap, MaskError, decode_png

LABELS_FILE = "labels.json"
DEFAULT_LABELS_DIR = "fitloop_parts"  # read when a dataset root holds it (the synthetic generator writes it)


def key_file_name(key: str) -> str:
    """The label PNG name of a sample key (`shards.schema.KEY_PATTERN`: no '.', one or more '/')."""
    return key.replace("/", "__") + ".png"


@dataclass(frozen=True)
class LabelFolder:
    """A label folder (module docstring): its path, kind ("parsing" or "parts"), table, provenance and whether its
    labels give the mask."""

    path: Path
    kind: str
    names: tuple[str, ...]
    provenance: str
    gives_mask: bool

    @classmethod
    def open(cls, path: Path) -> "LabelFolder":
        """Read ``labels.json``; ValueError naming the file and what is wrong."""
        spec_path = Path(path) / LABELS_FILE
        try:
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            names, provenance = tuple(str(n) for n in spec["names"]), str(spec.get("provenance", "user-png"))
            gives_mask = bool(spec.get("mask", False))
            kind = str(spec.get("kind", "parsing"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{spec_path}: not a label folder's table ({type(err).__name__}: {err}); it holds "
                             f'{{"names": ["background", ...], "provenance": "user-png"}}') from None
        if kind not in ("parsing", "parts"):
            raise ValueError(f"{spec_path}: kind {kind!r} is neither 'parsing' nor 'parts'")
        if provenance not in PROVENANCES:
            raise ValueError(f"{spec_path}: provenance {provenance!r} is not one of {', '.join(PROVENANCES)}")
        if len(names) < 2 or names[0] != "background":
            raise ValueError(f"{spec_path}: names must start with 'background' and hold 2 names at least")
        return cls(Path(path), kind, names, provenance, gives_mask)

    def labels_for(self, key: str, image_path: str, mask: LabelMap | None,
                   size: tuple[int, int] | None) -> tuple[LabelMap | None, LabelMap | None, dict[str, Any]]:
        """(labels of the folder's kind, mask, what they add to ``extra``) of one person: the labels of its own or its image's PNG
        (None when neither exists), and ``mask`` itself, or the labels' mask when ``mask`` is None and the folder
        gives masks. ``size`` (width, height) px is the image's, when known. MaskError naming the file when a PNG
        does not decode, is not at the image's size, or holds ids outside the table."""
        own = self.path / key_file_name(key)
        image_file = self.path / (PurePosixPath(image_path).stem + ".png")
        path = own if own.is_file() else image_file if image_file.is_file() else None
        if path is None:
            return None, mask, {}
        try:
            labels = decode_png(path.read_bytes())
        except (OSError, MaskError) as err:
            raise MaskError(f"{path}: {err}") from None
        if size is not None and labels.shape != (size[1], size[0]):
            raise MaskError(f"{path} is {labels.shape[1]}x{labels.shape[0]} px, the image {size[0]}x{size[1]}")
        if mask is not None and labels.shape != mask.size:
            raise MaskError(f"{path} is {labels.shape[1]}x{labels.shape[0]} px, the person's mask "
                            f"{mask.size[1]}x{mask.size[0]}")
        extra: dict[str, Any] = {}
        if path == image_file:
            if mask is not None:
                labels = np.where(mask.array() == 1, labels, 0).astype(np.uint8)
            else:
                extra["parts_whole_image"] = True
        try:
            parts = LabelMap.from_array(labels, self.names, self.provenance)
        except MaskError as err:
            raise MaskError(f"{path}: {err}") from None
        if mask is None and self.gives_mask and path == own:
            mask = LabelMap.from_array(labels > 0, MASK_NAMES, self.provenance)
        return parts, mask, extra
