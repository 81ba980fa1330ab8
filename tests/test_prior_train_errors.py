"""`fitloop prior train`'s faults are one line naming the file or flag, the reason and what to do; never a traceback.

Damaged BVH clips (no motion, one frame, a non-finite value) are left out one by one, named with their reason; bad
numbers are refused before anything is read or trained; --out may not be a folder, and a failed write leaves no
temporary file. Clips are edited copies of a real CMU clip (../shared/mocap/cmu), so no test trains beyond a
two-component mixture on one clip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from assets import bvh
from fitloop.cli import INTERNAL_ERROR_STATUS
from fitloop.cli import main as fitloop
from fitting.priors import write_npz

CMU = Path(__file__).resolve().parents[1].parent / "shared" / "mocap" / "cmu"
CLIP = CMU / "daz" / "12_02.bvh"   # 169 frames at 30 fps; its motion starts on line 276
needs_cmu = pytest.mark.skipif(not CLIP.is_file(), reason=f"{CLIP} is absent: the CMU clips live in ../shared")

TINY = ("HIERARCHY\nROOT Root\n{\n OFFSET 0 0 0\n CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation "
        "Yrotation\n JOINT Child\n {\n  OFFSET 0 1 0\n  CHANNELS 3 Zrotation Xrotation Yrotation\n  End Site\n  {\n"
        "   OFFSET 0 1 0\n  }\n }\n}\nMOTION\nFrames: 2\nFrame Time: 0.1\n0 0 0 0 0 0 0 0 0\n1 2 3 0 90 0 0 0 0\n")
BAD_CLIPS = {"f0.bvh": "0 motion frames (needs at least 2: frame 0 is the rest pose)",
             "f1.bvh": "1 motion frame (needs at least 2: frame 0 is the rest pose)",
             "nan.bvh": "a motion value is not finite (line 280)"}


def write_clips(folder: Path, *names: str) -> Path:
    """``folder`` with copies of the CMU clip: ``good.bvh`` as is, ``f0``/``f1`` cut to 0/1 motion frames, ``nan``
    with a NaN in its motion line 280."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = CLIP.read_text(encoding="latin1").splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("Frame Time"))
    nan = lines.copy()
    words = nan[279].split()
    nan[279] = " ".join(words[:4] + ["nan"] + words[5:]) + "\n"
    texts = {"good.bvh": lines, "f0.bvh": [*lines[:at - 1], "Frames: 0\n", lines[at]],
             "f1.bvh": [*lines[:at - 1], "Frames: 1\n", *lines[at:at + 2]], "nan.bvh": nan}
    for name in names:
        (folder / name).write_text("".join(texts[name]), encoding="latin1")
    return folder


def run(capsys, argv: list) -> tuple[int, str, str]:
    capsys.readouterr()
    status = fitloop([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and status != INTERNAL_ERROR_STATUS, err
    return status, out, err


def one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fitloop: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@needs_cmu
@pytest.mark.parametrize("name", sorted(BAD_CLIPS))
def test_a_clip_without_motion_or_with_a_non_finite_value_is_a_bvh_error(tmp_path, name):
    """The shared reader (`fitloop prior train` and `fitloop synth --poses cmu` alike) names the file and why."""
    path = write_clips(tmp_path, name) / name
    with pytest.raises(bvh.BvhError) as caught:
        bvh.convert_clip(bvh.parse_bvh(path), bvh.STANDARD_TPOSE_JOINTS)
    assert str(caught.value) == f"{path}: {BAD_CLIPS[name]}"


def test_a_bad_frame_time_or_offset_is_a_bvh_error(tmp_path):
    path = tmp_path / "tiny.bvh"
    for text, reason in ((TINY.replace("Frame Time: 0.1", "Frame Time: 0"), "Frame Time: 0.0; expected a positive"),
                         (TINY.replace("Frame Time: 0.1", "Frame Time: nan"), "Frame Time: nan; expected a positive"),
                         (TINY.replace("Frames: 2", "Frames: -2"), "Frames: -2; expected a frame count"),
                         (TINY.replace("OFFSET 0 1 0", "OFFSET 0 inf 0", 1), "joint Child has an OFFSET that is not")):
        path.write_text(text)
        with pytest.raises(bvh.BvhError, match=reason):
            bvh.parse_bvh(path)


@needs_cmu
def test_unreadable_clips_are_left_out_and_named_with_their_reason(tmp_path, capsys):
    clips = write_clips(tmp_path / "clips", "good.bvh", *BAD_CLIPS)
    out = tmp_path / "prior.npz"
    status, text, err = run(capsys, ["prior", "train", "--bvh", clips, "--out", out, "--hold-out", "none",
                                     "--components", "2", "--json"])
    assert status == 0
    report = json.loads(text)
    assert report["clips"] == 1
    assert report["clip_errors"] == [{"file": name, "reason": reason} for name, reason in sorted(BAD_CLIPS.items())]
    assert err.splitlines() == [f"fitloop: note: left out unreadable clip {name}: {reason}; fix or remove it"
                                for name, reason in sorted(BAD_CLIPS.items())]
    status, text, err = run(capsys, ["prior", "train", "--bvh", clips, "--out", out, "--hold-out", "none",
                                     "--components", "2", "--overwrite"])
    assert status == 0 and "clips: 1 (3 unreadable)" in text and "nan.bvh: a motion value is not finite" in err


@needs_cmu
def test_a_folder_of_only_unreadable_clips_is_one_readable_line(tmp_path, capsys):
    clips = write_clips(tmp_path / "clips", *BAD_CLIPS)
    status, _, err = run(capsys, ["prior", "train", "--bvh", clips, "--out", tmp_path / "p.npz", "--hold-out", "none"])
    line = one_error_line(err, f"{clips}: no usable frames in any clip; 3 unreadable clips, ",
                          *(f"{name}: {reason}" for name, reason in BAD_CLIPS.items()), "fix or replace the clips")
    assert status == 1 and "['" not in line and "{'" not in line


@pytest.mark.parametrize("flag, value, fragment", [
    ("--fps", "nan", "--fps must be a positive number of frames per second, got nan"),
    ("--fps", "0", "--fps must be a positive number of frames per second, got 0"),
    ("--cov-floor-deg", "nan", "--cov-floor-deg must be an angle from 0.5 to 180 (degrees), got nan"),
    ("--cov-floor-deg", "inf", "--cov-floor-deg must be an angle from 0.5 to 180 (degrees), got inf"),
    ("--cov-floor-deg", "-1", "--cov-floor-deg must be an angle from 0.5 to 180 (degrees), got -1"),
    # no floor gave covariances with eigenvalues of -9e-18 and a prior that ranked noise above real poses
    ("--cov-floor-deg", "0", "--cov-floor-deg must be an angle from 0.5 to 180 (degrees), got 0; a smaller floor "
                             "leaves the covariances too ill-conditioned for SMPLify's float32 fit"),
    ("--cov-floor-deg", "0.1", "--cov-floor-deg must be an angle from 0.5 to 180 (degrees), got 0.1"),
    ("--walk-share", "nan", "--walk-share must be in (0, 1], got nan"),
])
def test_a_bad_number_is_named_with_its_value_before_anything_is_read(tmp_path, capsys, flag, value, fragment):
    """An empty folder as --bvh: the flag's error must come first (reading would fail on the missing clips)."""
    status, _, err = run(capsys, ["prior", "train", "--bvh", tmp_path, "--out", tmp_path / "p.npz", flag, value])
    assert status == 1
    one_error_line(err, fragment)


@pytest.mark.parametrize("argv, fragment", [
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["--components", "0"], "argument --components: must be at least 1, got 0"),
    (["--vae", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--vae", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--lifter", "--steps", "1"], "argument --steps: must be at least 2, got 1"),
])
def test_a_bad_count_is_a_usage_error_naming_the_flag(tmp_path, capsys, argv, fragment):
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fitloop(["prior", "train", "--bvh", str(tmp_path), "--out", str(tmp_path / "p.npz"), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and err.splitlines()[-1].endswith(fragment), err


def test_a_seed_torch_cannot_take_is_refused_for_the_vae(tmp_path, capsys):
    status, _, err = run(capsys, ["prior", "train", "--vae", "--bvh", tmp_path, "--out", tmp_path / "p.npz",
                                  "--seed", str(2**64)])
    assert status == 1
    one_error_line(err, f"--seed must be below 2**64 for --vae and --lifter (torch's seeds), got {2**64}")


def test_a_folder_as_out_is_refused_and_a_failed_write_leaves_no_temporary_file(tmp_path, capsys):
    folder = tmp_path / "emptydir"
    folder.mkdir()
    status, _, err = run(capsys, ["prior", "train", "--bvh", tmp_path, "--out", folder])
    assert status == 1
    one_error_line(err, f"--out {folder} is a folder; give the file to write, e.g. {folder / 'prior.npz'}")
    with pytest.raises(IsADirectoryError):
        write_npz(folder, {"a": np.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emptydir"]


def test_out_must_be_a_new_npz_unless_overwrite(tmp_path, capsys):
    """`--out s4/manifest.json` replaced a shard set's manifest: --out must be named .npz, and an existing file is
    replaced only with --overwrite (checked before anything is read)."""
    poses = tmp_path / "poses.npz"
    np.savez(poses, poses=np.random.default_rng(0).normal(0, 0.2, (200, 72)))
    manifest = tmp_path / "s4" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text('{"kind": "shard set"}')
    argv = ["prior", "train", "--amass", poses, "--components", "1", "--out"]
    for flags in ([], ["--overwrite"]):
        status, _, err = run(capsys, [*argv, manifest, *flags])
        assert status == 1
        one_error_line(err, f"--out {manifest}: a prior is an .npz file; name it so, e.g. "
                            f"{manifest.with_suffix('.npz')}")
    assert manifest.read_text() == '{"kind": "shard set"}'
    prior = tmp_path / "s4" / "prior.npz"
    prior.write_bytes(b"someone's file")
    status, _, err = run(capsys, [*argv, prior])
    assert status == 1 and prior.read_bytes() == b"someone's file"
    one_error_line(err, f"--out {prior} exists; pass --overwrite to replace it, or choose a new file")
    status, _, err = run(capsys, [*argv, prior, "--overwrite"])
    assert status == 0 and np.load(prior)["means"].shape == (1, 69)
    assert sorted(p.name for p in prior.parent.iterdir()) == ["manifest.json", "prior.npz"]


def test_a_missing_bvh_folder_or_a_file_says_so(tmp_path, capsys):
    missing, clip = tmp_path / "nonexist", tmp_path / "clip.bvh"
    clip.write_text(TINY)
    for path, what in ((missing, "does not exist"), (clip, "is a file, not a folder")):
        status, _, err = run(capsys, ["prior", "train", "--bvh", path, "--out", tmp_path / "p.npz"])
        assert status == 1
        one_error_line(err, f"--bvh {path}: {what}; pass the folder that holds the .bvh clips")


@needs_cmu
def test_too_few_poses_suggests_a_higher_fps(tmp_path, capsys):
    """One clip at 10 fps: 56 frames, 112 with mirroring; caught before any training."""
    clips = write_clips(tmp_path / "clips", "good.bvh")
    argv = ["prior", "train", "--bvh", clips, "--out", tmp_path / "p.npz", "--hold-out", "none"]
    status, _, err = run(capsys, [*argv, "--vae", "--epochs", "1"])
    assert status == 1
    one_error_line(err, "only 112 training poses for batch size 128; give more clips or a higher --fps than 10 "
                        "(more frames per clip)")
    status, _, err = run(capsys, [*argv, "--components", "60", "--no-mirror"])
    assert status == 1
    one_error_line(err, "only 56 poses for 60 components; give more clips, fewer --components, a higher --fps than "
                        "10 (more frames per clip) or no --no-mirror (mirrored copies double the poses)")
    assert not (tmp_path / "p.npz").exists()
