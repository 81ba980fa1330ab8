"""Bytes per sample of a shard's label images (mask, parts, parsing), stored as fitloop stores them (1-channel 8-bit PNG, `shards.masks`)
against the alternatives: ``.npy`` + zlib (level 9), COCO's RLE (the compressed string, masks only), and the
label runs a record carries (`shards.masks.LabelMap`: uint8 values + uint32 lengths, raw), all of the same
stored-crop label images, and the JPEG crop for scale. Decoding cost per image is CPU time in this process
(``torch`` is not involved).

    python -m bench.mask_encoding SHARD_DIR [SHARD_DIR ...]

Data: the samples of the given shard sets that hold a mask or part labels (e.g. the COCO fixtures and a
synthetic set through ``fitloop preprocess``).
"""
from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import numpy as np

from shards.masks import LABEL_KINDS, decode_png, encode_png, rle_encode, rle_to_string, runs_of
from shards.reader import iter_shard, list_shards


def encodings(labels: np.ndarray, binary: bool) -> dict[str, int]:
    """Bytes of one (H, W) uint8 label image in each encoding (COCO RLE only for a mask: ``binary``)."""
    values, lengths = runs_of(labels)
    out = {"png": len(encode_png(labels)),
           "npy+zlib": len(zlib.compress(np.ascontiguousarray(labels).tobytes(), 9)) + 128,  # + a .npy header
           "runs": values.astype(np.uint8).nbytes + lengths.astype(np.uint32).nbytes}
    if binary:  # COCO RLE has two values; the crop's unknown pixels (255) are left out of it
        out["coco-rle"] = len(rle_to_string(rle_encode(labels == 1)))
    return out


def measure(shard_dirs: list[Path]) -> dict[str, dict[str, float]]:
    """Mean bytes per sample per encoding, per label kind, with the JPEG's and the decode time."""
    totals: dict[str, dict[str, list[float]]] = {kind: {} for kind in LABEL_KINDS}
    for shard in list_shards(shard_dirs):
        for sample in iter_shard(shard):
            for what in LABEL_KINDS:
                png = getattr(sample, f"{what}_png")
                if png is None:
                    continue
                start = time.process_time()
                labels = decode_png(png)
                decode_s = time.process_time() - start
                row = totals[what]
                for name, size in (encodings(labels, what == "mask") | {"jpg (crop)": len(sample.jpeg)}).items():
                    row.setdefault(name, []).append(size)
                row.setdefault("png decode ms", []).append(1e3 * decode_s)
                row.setdefault("samples", []).append(1)
    return {what: {name: float(np.sum(v) if name == "samples" else np.mean(v)) for name, v in row.items()}
            for what, row in totals.items() if row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+", metavar="SHARD_DIR")
    args = parser.parse_args(argv)
    for what, row in measure(args.dirs).items():
        print(f"{what}: {int(row.pop('samples'))} samples; " + ", ".join(
            f"{name} {value:.2f}" if "ms" in name else f"{name} {value:.0f} B" for name, value in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
