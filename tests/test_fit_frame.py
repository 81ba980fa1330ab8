"""The two entries into the fit frame agree on real samples: `core.frames.keypoints_in_fit_frame` (the seed path:
a sample's stored-crop keypoints) and `core.frames.fit_frame_px` of the reader's normalised keypoints (the
trainer's loop path), unaugmented at any training resolution, and augmented then undone
(`training.geometry.canonical_keypoints`). Samples: the real excerpts in ../shared/fixtures, preprocessed here.
Absent joints (confidence 0) are compared by their confidence only: the seed path puts them at (0, 0), the loop
path at the crop centre (112, 112), and neither weighs them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.frames import fit_frame_px, keypoints_in_fit_frame
from fitloop.cli import main
from shards.augment import AugmentParams
from shards.reader import ReaderConfig, ShardReader, iter_shard, list_shards
from training.geometry import canonical_keypoints

# the fixtures as `fitloop demo` reads them (fitloop/commands/demo.py), relative to ../shared/fixtures
REAL_SETS = (
    ("coco", "coco", ["--split", "val", "--option", "annotation_file=test_coco.json"]),
    ("mpii", "mpii", ["--split", "val", "--option", "annotation_file=mmpose_json/test_mpii.json",
                      "--option", "image_dir={root}/mmpose_json"]),
    ("lsp", "lsp/lsp_dataset", ["--split", "test"]),
)
AUGMENTATIONS = (AugmentParams(flip=True, rot=30.0, scale=1.2), AugmentParams(rot=-50.0, scale=0.8),
                 AugmentParams(flip=True, scale=1.1))
TOLERANCE_PX = 1e-3   # float32 keypoints through two affine maps; measured: 3e-5 px at most


@pytest.fixture(scope="module")
def real_shards(shared_dir, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("real")
    dirs = []
    for dataset, root, options in REAL_SETS:
        root = shared_dir / "fixtures" / root
        args = ["preprocess", dataset, "--root", str(root), "--out", str(out / dataset), "--no-progress",
                *(o.format(root=root) for o in options)]
        assert main(args) == 0
        dirs.append(out / dataset)
    return dirs


def test_the_seed_and_loop_entries_into_the_fit_frame_agree_on_real_samples(real_shards):
    samples, worst = 0, 0.0
    for shard_dir in real_shards:
        readers = {res: ShardReader(shard_dir, ReaderConfig(img_res=res)) for res in (224, 64)}
        for sample in (s for shard in list_shards(shard_dir) for s in iter_shard(shard)):
            seed = keypoints_in_fit_frame(sample.keypoints_crop, sample.meta["crop"])
            present = seed[:, 2] > 0
            loop = [fit_frame_px(reader.make_item(sample, AugmentParams())["keypoints"][None])[0].numpy()
                    for reader in readers.values()]
            for params in AUGMENTATIONS:
                item = readers[224].make_item(sample, params)
                undone = canonical_keypoints(item["keypoints"][None], item["rot"][None], item["flip"][None],
                                             item["scale"][None])
                loop.append(fit_frame_px(undone)[0].numpy())
            for keypoints in loop:
                # confidences equal; absent joints (confidence 0, no weight in any loss) may sit anywhere
                np.testing.assert_array_equal(keypoints[:, 2], seed[:, 2])
                error = np.abs(keypoints[present, :2] - seed[present, :2]).max()
                assert error < TOLERANCE_PX, (sample.key, error)
                worst = max(worst, float(error))
            samples += 1
    assert samples == 12 + 5 + 2
    print(f"fit-frame entries: {samples} samples, largest difference {worst:.2e} px")
