"""The synthetic generator: every dataset it writes reads back through its real adapter, equal to the truth.

One tiny set (5 people per single-image dataset, Human3.6M S1 and S9, small images) is generated once for the
module; the determinism and CLI tests generate their own even smaller ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.joints import H36M_JOINTS, JOINT_INDEX, indices
from fitloop.cli import main
from fitting.body_model import load_body_model
from pipelines.adapters import iter_dataset
from pipelines.synthetic import SynthConfig, SynthError, generate, load_truth
from pipelines.synthetic.config import DEFAULT_MOCAP_DIR
from pipelines.synthetic.paint import background
from render.raster import rasterize
from shards.masks import rle_decode, rle_encode
from shards.schema import KEY_PATTERN, PersonRecord, Reject

TINY = dict(coco_people=5, mpii_people=5, lsp_people=5, lspet_people=5, h36m_subjects=("S1", "S9"),
            h36m_actions=("Directions 1",), h36m_frames=6, image_size=(96, 160), h36m_image_size=(160, 160))
# (adapter, dataset folder, splits that together hold every person, options)
READS = [("coco", "coco", ("train", "val"), {}), ("mpii", "mpii", ("trainval",), {}), ("lsp", "lsp", ("train",), {}),
         ("lspet", "lspet", ("train",), {}), ("h36m", "h36m", ("train", "test"), {})]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(seed=7, **TINY))
    return out


def read_all(adapter: str, root: Path, splits: tuple[str, ...], **options) -> list:
    return [o for split in splits for o in iter_dataset(adapter, root, split, **options)]


def expected_keypoints(dataset: str, truth_row: dict) -> np.ndarray:
    """(49, 2) px the adapter should give: the canonical projections (Human3.6M: its own 17 joints)."""
    if dataset != "h36m":
        return truth_row["keypoints_2d"]
    out = np.zeros((49, 2))
    out[indices(H36M_JOINTS)] = truth_row["h36m_keypoints"]
    return out


@pytest.mark.parametrize("adapter,folder,splits,options", READS, ids=[r[0] for r in READS])
def test_every_adapter_reads_its_dataset_back(synth, adapter, folder, splits, options):
    truth = load_truth(synth / folder)
    outputs = read_all(adapter, synth / folder, splits, **options)
    records = [o for o in outputs if isinstance(o, PersonRecord)]
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert len(records) + len(rejects) == len(outputs) == len(truth)  # read = written + rejected
    assert {o.key for o in outputs} == set(truth.row)
    assert len(records) >= len(truth) - 1, [r.message for r in rejects]  # at most a heavily cut-off person
    for record in records:
        row = truth.get(record.key)
        labelled = record.keypoints_2d[:, 2] > 0
        assert labelled.sum() >= 6
        np.testing.assert_allclose(record.keypoints_2d[labelled, :2], expected_keypoints(adapter, row)[labelled],
                                   atol=0.5, err_msg=record.key)
        assert record.image_size == tuple(row["image_size"])
        assert record.image_path == row["image"] or (record.image_root / record.image_path).samefile(
            synth / folder / row["image"])


def test_keys_are_dot_free_unique_and_split(synth):
    for adapter, folder, splits, options in READS:
        keys = [o.key for o in read_all(adapter, synth / folder, splits, **options)]
        assert len(keys) == len(set(keys)) and all(KEY_PATTERN.match(k) and "." not in k for k in keys)
    coco_val = [o.key for o in iter_dataset("coco", synth / "coco", "val")]
    assert coco_val and not set(coco_val) & {o.key for o in iter_dataset("coco", synth / "coco", "train")}
    train = [o.key for o in iter_dataset("mpii", synth / "mpii", "train")]  # pose-hg split files written too
    val = [o.key for o in iter_dataset("mpii", synth / "mpii", "val")]
    assert sorted(train + val) == sorted(o.key for o in iter_dataset("mpii", synth / "mpii", "trainval")) and val


def test_mpii_hourglass_files_agree_with_the_release_struct(synth):
    for split in ("train", "val"):
        from_mat = {o.key: o for o in iter_dataset("mpii", synth / "mpii", split)}
        from_h5 = {o.key: o for o in iter_dataset("mpii", synth / "mpii", split, format="h5")}
        assert from_mat.keys() == from_h5.keys()
        for key, a in from_mat.items():
            b = from_h5[key]
            np.testing.assert_allclose(a.keypoints_2d, b.keypoints_2d, atol=1.0)  # h5 joints are truncated
            np.testing.assert_allclose(a.center, b.center, atol=1e-3)
            assert a.scale == pytest.approx(b.scale)


def test_coco_boxes_and_masks_describe_the_silhouette(synth):
    data = json.loads((synth / "coco" / "annotations" / "person_keypoints_train2014.json").read_text())
    truth = load_truth(synth / "coco")
    assert {a["image_id"] for a in data["annotations"]} == {i["id"] for i in data["images"]}
    for annotation in data["annotations"]:
        height, width = annotation["segmentation"]["size"]
        mask = rle_decode(annotation["segmentation"]["counts"], (height, width))  # COCO's RLE
        assert mask.sum() == annotation["area"] > 0
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        key = f"coco/{annotation['image_id']:012d}_a{annotation['id']}"
        u0, v0, u1, v1 = truth.get(key)["vertex_box"]  # the mesh's extent contains what is drawn of it
        assert u0 - 1 <= xs.min() and xs.max() <= u1 + 1 and v0 - 1 <= ys.min() and ys.max() <= v1 + 1
    assert rle_encode(np.array([[True, False], [True, True]])).tolist() == [0, 2, 1, 1]


def body_coloured(pixel: np.ndarray, outfit: np.ndarray, tolerance: float = 40.0) -> bool:
    """Whether ``pixel`` is one of the outfit's colours under some flat shading (0.35-1) plus JPEG error."""
    for colour in outfit.astype(np.float64):
        shade = np.clip(pixel @ colour / (colour @ colour), 0.3, 1.05)
        if np.abs(pixel - shade * colour).max() < tolerance:
            return True
    return False


@pytest.mark.parametrize("folder", ["coco", "mpii", "lsp", "lspet", "h36m"])
def test_pixels_show_the_body_and_only_the_body(synth, folder):
    truth = load_truth(synth / folder)
    pelvis = JOINT_INDEX["OP MidHip"]  # the kinematic pelvis: inside the mesh, so its projection is on the body
    for key, i in truth.row.items():
        row = truth.get(key)
        image = np.asarray(Image.open(synth / folder / row["image"]).convert("RGB"), dtype=np.float64)
        u, v = np.round(row["keypoints_2d"][pelvis]).astype(int)
        if not (0 <= u < image.shape[1] and 0 <= v < image.shape[0]):
            continue  # a person cut off by the image border
        assert body_coloured(image[v, u], row["outfit"]), (key, image[v, u], row["outfit"])
        # a corner patch away from every person's mesh shows the background exactly as generated
        boxes = [truth.get(k)["vertex_box"] for k, j in truth.row.items()
                 if truth.arrays["image"][j] == row["image"]]
        width, height = row["image_size"]
        for x, y in ((2, 2), (width - 3, 2), (2, height - 3), (width - 3, height - 3)):
            if all(not (b[0] - 12 <= x <= b[2] + 12 and b[1] - 12 <= y <= b[3] + 12) for b in boxes):
                expected = background((int(width), int(height)), int(row["background_seed"]))[y - 2:y + 3, x - 2:x + 3]
                patch = image[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(axis=0)  # grain and JPEG average out
                assert np.abs(patch - expected.reshape(-1, 3).mean(axis=0)).max() < 10, (key, x, y)
                break


def test_truth_parameters_reproduce_the_joints(synth):
    model = load_body_model("open")
    for folder in ("coco", "lsp", "h36m"):
        truth = load_truth(synth / folder)
        a = truth.arrays
        with torch.no_grad():
            out = model(torch.as_tensor(a["betas"], dtype=torch.float32), torch.as_tensor(a["pose"][:, 3:]).float(),
                        torch.as_tensor(a["pose"][:, :3]).float(), torch.as_tensor(a["transl"]).float())
        np.testing.assert_allclose(out.joints.double().numpy(), a["joints_3d"], atol=2e-4)  # float32 model
        projected = a["focal"][:, None] * a["joints_3d"][..., :2] / a["joints_3d"][..., 2:] + a["principal"][:, None]
        np.testing.assert_allclose(projected, a["keypoints_2d"], atol=1e-6)
        if folder == "h36m":
            np.testing.assert_allclose(model.h36m_joints(out.vertices).double().numpy(), a["h36m_joints"],
                                       atol=2e-4)


def test_metadata_records_the_config_and_the_pose_source(synth):
    info = json.loads((synth / "lsp" / "fitloop_synth.json").read_text())
    assert info["config"]["seed"] == 7 and info["config"]["lsp_people"] == 5 and info["people"] == 5
    assert info["poses"]["source"] == ("cmu" if DEFAULT_MOCAP_DIR.is_dir() else "prior")
    if info["poses"]["source"] == "cmu":
        assert info["poses"]["clips"] and "mocap.cs.cmu.edu" in info["poses"]["acknowledgment"]
    assert load_truth(synth / "lsp").metadata == info


def small(seed: int, **overrides) -> SynthConfig:
    options = dict(seed=seed, datasets=("lsp",), lsp_people=6, image_size=(64, 96), poses="prior")
    return SynthConfig(**{**options, **overrides})


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    generate(tmp_path / "a", small(3, workers=1))
    painted: list[int] = []
    generate(tmp_path / "b", small(3, workers=2), progress=painted.append)
    config = small(3)
    assert sum(painted) == sum(config.people(d) for d in config.datasets) == 6  # every person once, per batch
    generate(tmp_path / "c", small(4, workers=1))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix in (".jpg", ".npz", ".json"):  # .mat headers carry a date; compared by content below
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    import scipy.io
    joints = [scipy.io.loadmat(tmp_path / d / "lsp" / "joints.mat")["joints"] for d in "abc"]
    np.testing.assert_array_equal(joints[0], joints[1])
    assert not np.allclose(joints[0], joints[2])
    assert load_truth(tmp_path / "a" / "lsp").metadata["poses"]["source"] == "prior"


@pytest.mark.skipif(not DEFAULT_MOCAP_DIR.is_dir(), reason=f"CMU clips not found at {DEFAULT_MOCAP_DIR}")
def test_cmu_poses_are_converted_at_run_time(tmp_path):
    generate(tmp_path, small(5, poses="cmu", max_clips=3, lsp_people=3))
    truth = load_truth(tmp_path / "lsp")
    assert len(truth.metadata["poses"]["clips"]) == 3
    assert np.abs(truth.arrays["pose"][:, 3:]).max() > 0.2  # real motion, not the rest pose


def test_refuses_to_overwrite_unless_asked(tmp_path):
    config = small(1, lsp_people=2)
    generate(tmp_path, config)
    with pytest.raises(SynthError, match="exist already"):
        generate(tmp_path, config)
    assert generate(tmp_path, config, overwrite=True) == {"lsp": tmp_path / "lsp"}
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(SynthError, match="datasets"):
        SynthConfig(datasets=("lsp", "3dpw"))


def test_overwrite_removes_only_the_files_synth_wrote(tmp_path):
    """`--overwrite` once deleted the whole dataset folder, a user's parsing labels in it (syn/lsp/parsing, the
    layout the adapters' labels_dir reads) too; now a folder with files synth did not write is refused, unchanged."""
    from pipelines.synthetic.written import WRITTEN_LIST

    config = small(1, lsp_people=2)
    generate(tmp_path, config)
    lsp = tmp_path / "lsp"
    listed = (lsp / WRITTEN_LIST).read_text().splitlines()
    assert listed == sorted(p.relative_to(lsp).as_posix() for p in lsp.rglob("*") if p.is_file())
    assert {"fitloop_synth.json", WRITTEN_LIST, "joints.mat", "images/im0001.jpg"} <= set(listed)
    for users in (lsp / "parsing" / "labels.json", lsp / "images" / "notes.txt"):
        users.parent.mkdir(exist_ok=True)
        users.write_text('{"kind": "parsing"}')
        name = users.relative_to(lsp).as_posix().removesuffix("/labels.json")
        with pytest.raises(SynthError, match=f"{lsp} holds '{name}/?', which fitloop synth did not write"):
            generate(tmp_path, config, overwrite=True)
        assert users.read_text() == '{"kind": "parsing"}' and (lsp / "joints.mat").is_file()
        users.rename(tmp_path / users.name)
        if users.parent.name == "parsing":
            users.parent.rmdir()  # an empty folder of the user's is no file of synth's either
    before = (lsp / "joints.mat").stat().st_mtime_ns
    assert generate(tmp_path, config, overwrite=True) == {"lsp": lsp}
    assert (lsp / "joints.mat").stat().st_mtime_ns != before and not list(tmp_path.glob(".*partial"))
    (lsp / WRITTEN_LIST).unlink()  # a folder of a fitloop synth before the list: its files are not known
    with pytest.raises(SynthError, match="older fitloop synth, which kept no list of its files"):
        generate(tmp_path, config, overwrite=True)
    assert (lsp / "joints.mat").is_file()


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path):
    with pytest.raises(SynthError, match="--poses cmu"):
        generate(tmp_path / "new", small(1, lsp_people=1, poses="cmu", mocap_dir=tmp_path / "no-clips"))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-5"], "argument --seed: must be at least 0, got -5"),
    (["--people", "0"], "argument --people: must be at least 1, got 0"),
])
def test_cli_refuses_a_negative_seed_before_any_work(tmp_path, capsys, argv, message):
    """`--seed -5` was numpy's ValueError (an internal error), after making an empty --out folder."""
    with pytest.raises(SystemExit) as exit:
        main(["synth", "--out", str(tmp_path / "x"), "--datasets", "lsp", *argv])
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["--datasets", ""], "--datasets '' names no dataset; give some of coco, mpii, lsp"),
    (["--datasets", " , "], "--datasets ' , ' names no dataset"),
    (["--people", "1001", "--datasets", "coco,lsp"], "--people 1001: LSP holds at most 1000 people, as its train "
                                                     "split is images 1-1000"),
    (["--people", "1001"], "--people 1001: LSP (one of the default datasets) holds at most 1000 people"),
])
def test_cli_refuses_an_empty_dataset_list_and_more_lsp_people_than_its_split(tmp_path, capsys, argv, message):
    """`--datasets ""` wrote the five default datasets, and `--people 1001` wrote 1000 LSP people, silently."""
    assert main(["synth", "--out", str(tmp_path / "x"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fitloop: error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--people", "2", "--datasets", "lspet", "--poses", "prior",
                 "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["datasets"]["lspet"]["people"] == 2 and summary["people_per_second"] > 0
    assert len(load_truth(tmp_path / "lspet")) == 2
    assert main(["synth", "--out", str(tmp_path), "--datasets", "lspet"]) == 1  # exists: a one-line error


def test_rasterizer_fills_pixel_centres_inside_triangles():
    # one square (two triangles) 1 m in front of a 20 px camera: covers pixel centres 5..14 exactly
    vertices = np.array([[-0.25, -0.25, 1.0], [0.25, -0.25, 1.0], [0.25, 0.25, 1.0], [-0.25, 0.25, 1.0]])
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    pixels, face_index = rasterize(vertices, faces, np.array([[200, 100, 50]] * 2), (18.0, 18.0), (9.5, 9.5), (20, 20))
    ys, xs = np.nonzero(face_index >= 0)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 14, 5, 14)
    np.testing.assert_allclose(pixels[10, 10], [200, 100, 50], atol=6)  # facing the camera: ~full shade


def test_one_person_leaves_a_split_empty_and_its_files_are_still_written(tmp_path):
    """`synth --people 1`: MPII's validation split gets nobody; its pose-hg .h5 is written with no rows (a reshape of
    the empty list was an internal error)."""
    import h5py

    from fitloop.cli import main

    assert main(["synth", "--out", str(tmp_path), "--people", "1", "--datasets", "mpii", "--workers", "1"]) == 0
    sizes = {}
    for path in (tmp_path / "mpii").rglob("*.h5"):
        with h5py.File(path) as h5:
            sizes[path.name] = (h5["visible"].shape, h5["part"].shape)
    assert sorted(sizes.values()) == [((0, 16), (0, 16, 2)), ((1, 16), (1, 16, 2))], sizes
