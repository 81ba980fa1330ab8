"""`fitloop shards show`, `render`, `stats` and `verify` on a sample with one damaged member: a json of the wrong
types, not JSON or not UTF-8, an npy member that is not one, a mask or JPEG that does not decode, a shard cut short.
Each is one line naming the shard, the sample, the member and the reason, and pointing at `fitloop shards verify`
(show and render read the sample through verify's own checks); never a traceback. Also render's option checks.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.joints import NUM_JOINTS
from fitloop.cli import INTERNAL_ERROR_STATUS, main
from shards.masks import MASK_NAMES, LabelMap
from shards.sample import decode_npy, encode_npy
from shards.schema import PersonRecord
from shards.writer import ShardConfig, write_shards

SHARD = "synth-train-000000.tar"  # synth/a (with a mask) and synth/b; synth/c is in synth-train-000001.tar


def person(root: Path, name: str) -> PersonRecord:
    """A 120 x 90 grey image with a bright person box, twelve keypoints and a person mask."""
    image = np.full((90, 120, 3), 60, np.uint8)
    image[20:70, 40:80] = 200
    path = root / "images" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
    keypoints[25:37] = (60.0, 45.0, 1.0)
    return PersonRecord(dataset="synth", split="train", key=f"synth/{name}", source="test", record=name,
                        image_path=f"images/{name}.png", image_root=root, image_size=(120, 90),
                        center=np.array([60.0, 45.0]), scale=0.4, keypoints_2d=keypoints,
                        mask=LabelMap.from_array(image[..., 0] > 100, MASK_NAMES, "synthetic-exact"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    records = [person(root / "data", name) for name in "abc"]
    write_shards(records, root / "set", ShardConfig(crop_res=64, samples_per_shard=2))
    return root / "set"


@pytest.fixture
def shard_set(pristine, tmp_path) -> Path:
    return shutil.copytree(pristine, tmp_path / "set")


def damage(shard_set: Path, member: str, change) -> None:
    """Rewrite one member of `SHARD` through ``change(bytes) -> bytes`` (the manifest's checksum is left stale)."""
    path = shard_set / SHARD
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members[member] = change(members[member])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def cut_inside(shard_set: Path, member: str, after: int = 10) -> None:
    """Cut `SHARD` ``after`` bytes into ``member``'s data, as a write that stopped there leaves it."""
    path = shard_set / SHARD
    with tarfile.open(path) as tar:
        at = tar.getmember(member).offset_data
    path.write_bytes(path.read_bytes()[:at + after])


def error_line(capsys, *argv) -> str:
    """The CLI's one error line for ``argv`` (exit status 1, no traceback)."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 1 and status != INTERNAL_ERROR_STATUS and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fitloop: error: "), err
    return lines[0]


def succeeds(capsys, *argv) -> str:
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_show_and_render_name_json_fields_of_the_wrong_type(capsys, shard_set, tmp_path):
    def strings(data: bytes) -> bytes:
        return json.dumps(json.loads(data) | {"center": "zz", "box_side_px": "zz", "crop": "zz"}).encode()

    damage(shard_set, "synth/a.json", strings)
    picture = tmp_path / "r.png"
    for argv in (["show", shard_set, "synth/a"], ["show", shard_set, "synth/a", "--json"],
                 ["render", shard_set, "--keys", "synth/a", "--out", picture],
                 ["render", shard_set, "--sample", "3", "--out", picture]):  # a whole set: the damaged one stops it
        line = error_line(capsys, "shards", *argv)
        assert f"shard {SHARD}: sample 'synth/a': json field 'center' is 'zz', expected [x, y] px" in line
        assert "json field 'crop' is 'zz'" in line and f"fitloop shards verify {shard_set}" in line
    assert not picture.exists()
    assert "sample synth/a: json field 'box_side_px' is 'zz', expected a positive number" in error_line(
        capsys, "shards", "stats", shard_set)  # stats says it in verify's words too
    succeeds(capsys, "shards", "show", shard_set, "synth/b")


def test_show_names_the_shard_of_intrinsics_that_do_not_parse(capsys, shard_set):
    damage(shard_set, "synth/a.json", lambda data: json.dumps(json.loads(data) | {"intrinsics": "zz"}).encode())
    line = error_line(capsys, "shards", "show", shard_set, "synth/a")
    assert f"shard {SHARD}: sample 'synth/a': json intrinsics: intrinsics must be an object, got 'zz'" in line
    assert "fitloop shards verify" in line


def test_render_names_a_mask_that_does_not_decode_and_show_still_shows_the_sample(capsys, shard_set, tmp_path):
    damage(shard_set, "synth/a.mask.png", lambda data: b"garbage")
    line = error_line(capsys, "shards", "render", shard_set, "--keys", "synth/b", "synth/a", "--out",
                      tmp_path / "r.png")
    assert f"shard {SHARD}: sample 'synth/a': mask.png: label PNG does not decode" in line
    assert "fitloop shards verify" in line and "0x" not in line  # no address of a buffer
    assert not (tmp_path / "r.png").exists()
    assert "keypoints: 12 of 49 annotated" in succeeds(capsys, "shards", "show", shard_set, "synth/a")


def test_render_names_the_shard_sample_and_member_of_a_corrupt_jpeg(capsys, shard_set, tmp_path):
    damage(shard_set, "synth/a.jpg", lambda data: data[:200] + bytes(len(data) - 200))
    line = error_line(capsys, "shards", "render", shard_set, "--keys", "synth/a", "--out", tmp_path / "r.html")
    assert f"shard {SHARD}: sample 'synth/a': jpg does not decode (" in line and "fitloop shards verify" in line


def test_an_npy_member_that_is_not_one_is_named_not_taken_for_a_pickle(capsys, shard_set, tmp_path):
    damage(shard_set, "synth/a.keypoints_2d.npy", lambda data: b"not an npy")
    said = "keypoints_2d.npy member is not a valid .npy array (it begins b'not an npy'"
    for argv in (["show", shard_set, "synth/a"], ["stats", shard_set],
                 ["render", shard_set, "--keys", "synth/a", "--out", tmp_path / "r.png"]):
        line = error_line(capsys, "shards", *argv)
        assert said in line and "sample" in line and "synth/a" in line and "allow_pickle" not in line
    capsys.readouterr()
    assert main(["shards", "verify", str(shard_set)]) == 1
    out = capsys.readouterr().out
    assert f"{SHARD}: sample synth/a: {said}" in out and "allow_pickle" not in out
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects, stored as a pickle, which fitloop never loads"):
        decode_npy(objects.getvalue())
    with pytest.raises(ValueError, match="a Python pickle"):
        decode_npy(b"\x80\x04\x95 pickled")
    with pytest.raises(ValueError, match=r"x.npy member is not a valid .npy array \(EOF"):
        decode_npy(encode_npy(np.zeros((49, 3), np.float32))[:50], "x.npy member")


@pytest.mark.parametrize("data, said", [
    (b'{"key": "unterminated', "json member is not valid JSON (Unterminated string"),
    (b"", "json member is not valid JSON (Expecting value: line 1 column 1"),
    (b'{"key": "synth/\xe9"}', "json member is not UTF-8 text ('utf-8' codec can't decode byte 0xe9"),
    (b"\xff\xfe{}", "json member is not UTF-8 text"),
    (b"[1, 2]", "json member is not a JSON object but list [1, 2]"),  # was: an AttributeError's traceback
])
def test_a_json_member_that_cannot_be_read_says_why(capsys, shard_set, tmp_path, data, said):
    damage(shard_set, "synth/a.json", lambda _: data)
    for argv in (["show", shard_set, "synth/a"], ["stats", shard_set]):
        line = error_line(capsys, "shards", *argv)
        assert said in line and "synth/a" in line and "fitloop shards verify" in line
    capsys.readouterr()
    assert main(["shards", "verify", str(shard_set)]) == 1
    assert f"{SHARD}: sample synth/a: {said}" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--size", "0"), ("--size", "-5"), ("--columns", "-1"),
                                           ("--columns", "0"), ("--sample", "-1")])
def test_render_refuses_a_size_columns_or_sample_below_one(capsys, pristine, tmp_path, option, value):
    pick = [] if option == "--sample" else ["--keys", "synth/a"]
    line = error_line(capsys, "shards", "render", pristine, *pick, option, value, "--out", tmp_path / "r.png")
    assert f"{option} must be >= 1, got {value}" in line
    assert not (tmp_path / "r.png").exists()


def test_show_finds_a_sample_read_whole_before_the_shard_breaks_off(capsys, shard_set, tmp_path):
    cut_inside(shard_set, "synth/b.jpg", 100)  # synth/a's members are all read; synth/b's first is cut
    assert "synth/a: synth / train" in succeeds(capsys, "shards", "show", shard_set, "synth/a")
    assert "wrote" in succeeds(capsys, "shards", "render", shard_set, "--keys", "synth/a", "synth/c", "--out",
                               tmp_path / "r.png")
    line = error_line(capsys, "shards", "show", shard_set, "synth/b")
    assert f"no sample with key(s) synth/b in the samples read: shard {SHARD} cannot be read" in line
    assert "truncated" in line and "fitloop shards verify" in line


def test_show_refuses_a_sample_cut_off_before_its_last_member(capsys, shard_set):
    cut_inside(shard_set, "synth/a.mask.png")  # its json says it has a mask: not read whole
    line = error_line(capsys, "shards", "show", shard_set, "synth/a")
    assert f"no sample with key(s) synth/a in the samples read: shard {SHARD} cannot be read" in line


# --- verify: samples that contradict their manifest; ls --keys on a damaged shard; render's --size ---------------

def restamp(shard_set: Path, change=None) -> None:
    """The manifest with `SHARD`'s sha256 and size as the file now is (the tamper a checksum cannot catch), and
    ``change(manifest)`` applied."""
    import hashlib

    manifest = json.loads((shard_set / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == SHARD:
            data = (shard_set / SHARD).read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if change is not None:
        change(manifest)
    (shard_set / "manifest.json").write_text(json.dumps(manifest))


def verify_lines(capsys, shard_set: Path) -> list[str]:
    """`fitloop shards verify`'s problem lines (exit status 1), without the leading folder."""
    capsys.readouterr()
    assert main(["shards", "verify", str(shard_set)]) == 1
    return [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()[:-1]]


@pytest.mark.parametrize("setting, said", [
    ({"crop_res": 48}, "json crop.res 48, the manifest's config says crop_res 64"),
    ({"crop_margin": 1.2}, "json crop.margin 1.2, the manifest's config says crop_margin 1.5"),
    ({"jpeg_quality": 50}, "jpg's quantization tables are those of JPEG quality 50, the manifest's config says "
                           "jpeg_quality 90"),
])
def test_verify_names_each_sample_of_a_shard_from_a_set_written_with_other_settings(capsys, shard_set, tmp_path,
                                                                                    setting, said):
    records = [person(tmp_path / "data", name) for name in "abc"]
    write_shards(records, tmp_path / "other", ShardConfig(**{"crop_res": 64, "samples_per_shard": 2, **setting}))
    shutil.copyfile(tmp_path / "other" / SHARD, shard_set / SHARD)  # its own samples, valid in their own set
    restamp(shard_set)
    assert verify_lines(capsys, shard_set) == [f"{SHARD}: sample synth/{key}: {said}" for key in "ab"]


def test_verify_counts_the_flags_the_manifest_states_and_stats_says_where_they_differ(capsys, shard_set):
    def counts(manifest: dict) -> None:
        manifest.update(has_smpl=5, has_mask=0)  # no sample has SMPL; every sample has a mask

    restamp(shard_set, counts)
    assert verify_lines(capsys, shard_set) == ["manifest.json: has_smpl 5, the samples' json flags count 0",
                                               "manifest.json: has_mask 0, the samples' json flags count 3"]
    out = succeeds(capsys, "shards", "stats", shard_set)
    assert "with SMPL 5" in out and "** the samples' json flags count has_smpl 0, has_mask 3 (the manifest's" in out
    assert "flags" not in json.loads(succeeds(capsys, "shards", "stats", shard_set, "--manifest-only", "--json"))


def test_verify_checks_the_config_hash_and_the_versions_against_the_samples(capsys, shard_set):
    from shards.verify import config_hash

    manifest = json.loads((shard_set / "manifest.json").read_text())
    assert manifest["config_sha256"] == config_hash(manifest["config"])  # as the writer makes it
    restamp(shard_set, lambda m: m["config"].update(crop_res=32))
    lines = verify_lines(capsys, shard_set)
    assert lines[0].startswith("manifest.json: config_sha256 ") and "is not the hash of its config" in lines[0]
    assert lines[1:] == [f"{shard}: sample synth/{key}: json crop.res 64, the manifest's config says crop_res 32"
                         for shard, key in ((SHARD, "a"), (SHARD, "b"), ("synth-train-000001.tar", "c"))]
    restamp(shard_set, lambda m: m["config"].update(crop_res=64) or m.update(config_sha256="0" * 64))
    assert [line[:45] for line in verify_lines(capsys, shard_set)] == ["manifest.json: config_sha256 0000000000000000"]
    restamp(shard_set, lambda m: m.update(config_sha256=manifest["config_sha256"], sample_format_version=3))
    assert verify_lines(capsys, shard_set)[0] == (f"{SHARD}: sample synth/a: json sample_format_version 4, the "
                                                  f"manifest says 3")


def test_verify_refuses_annotated_confidences_outside_zero_to_one_but_not_raw_detector_scores(capsys, shard_set):
    def confidences(data: bytes, slot: int, value: float) -> bytes:
        keypoints = np.array(decode_npy(data))
        keypoints[slot] = (*keypoints[25, :2], value)  # a joint at the annotated slot 25's place
        return encode_npy(keypoints)

    for member in ("synth/a.keypoints_2d.npy", "synth/a.keypoints_crop.npy"):  # both agree: only the range tells
        damage(shard_set, member, lambda data: confidences(data, 26, 7.0))
        damage(shard_set, member, lambda data: confidences(data, 0, 1.4))  # an OpenPose score: raw, may pass 1
    restamp(shard_set)
    assert verify_lines(capsys, shard_set) == [
        f"{SHARD}: sample synth/a: keypoints_2d.npy confidence 7 of joint 'Right Knee': an annotated joint's lies "
        f"in [0, 1], a detection's (OpenPose slots) is >= 0"]


def test_ls_keys_lists_what_a_truncated_shard_holds_says_where_it_breaks_and_goes_on(capsys, pristine, shard_set,
                                                                                      tmp_path):
    cut_inside(shard_set, "synth/b.jpg", 100)  # synth/a's members are all read; synth/b's first is cut
    capsys.readouterr()
    assert main(["shards", "ls", str(shard_set), "--keys"]) == 1
    out, err = capsys.readouterr()
    assert [line.strip() for line in out.splitlines() if line.startswith("    ")] == ["synth/a", "synth/c"]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fitloop: error: {shard_set}: {SHARD} is damaged after sample "
                                                   f"synth/a (1 listed): shard {SHARD} cannot be read")
    assert "truncated" in lines[0] and "fitloop shards verify" in lines[0]
    shard_set = shutil.copytree(pristine, tmp_path / "again")
    cut_inside(shard_set, "synth/a.mask.png")  # its json says it has a mask: not read whole
    assert main(["shards", "ls", str(shard_set), "--keys"]) == 1
    out, err = capsys.readouterr()
    assert [line.strip() for line in out.splitlines() if line.startswith("    ")] == ["synth/c"]
    assert f"{SHARD} is damaged before its first sample" in err
    assert main(["shards", "ls", str(shard_set)]) == 0  # without --keys the shards are not read


def test_render_refuses_a_size_over_its_limit_and_says_the_limit(capsys, pristine, tmp_path):
    from render.sample_picture import MAX_PANEL_PX

    line = error_line(capsys, "shards", "render", pristine, "--sample", "2", "--size", "100000", "--out",
                      tmp_path / "r.png")
    assert f"--size must be at most {MAX_PANEL_PX} px" in line and "got 100000" in line
    assert not (tmp_path / "r.png").exists()
    with pytest.raises(SystemExit):
        main(["shards", "render", "--help"])
    assert f"1 to {MAX_PANEL_PX}" in capsys.readouterr().out
