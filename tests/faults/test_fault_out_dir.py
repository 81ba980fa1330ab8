"""`fitloop preprocess --out`: a folder that holds anything fitloop did not write is refused, with or without
--overwrite, and nothing in it is removed; a folder it cannot write (read-only, full, a file in the way) is one
line naming the path (issue 13)."""
import errno
import json
import os

import pytest
from faultcheck import expect_error
from faultdata import convert, reconcile, write_lsp

from fitloop.cli import main as fitloop
from pipelines.flow_params import FlowParameterError, check_out_dir
from shards import writer as shard_writer

FAULT_CLASS = "user files deleted / output folder faults"


def listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("files", [{"notes.tmp": b"my notes"}, {"rejects.parquet": b"my own table"},
                                   {"draft-000001.tar.tmp": b"x", "README": b"mine"}])
def test_a_folder_with_files_fitloop_did_not_write_is_refused_and_left_as_it_was(capsys, tmp_path, files, overwrite):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root)
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    first = min(files)
    expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", out, "--no-progress", *overwrite],
                 str(out), repr(first), "no fitloop shard set", "move those files away")
    assert listing(out) == files  # nothing removed, nothing added


def test_overwrite_replaces_a_set_but_refuses_one_with_a_users_file_in_it(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root)
    convert(capsys, "lsp", root, out)
    expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", out, "--no-progress"],
                 str(out), "already holds a shard set", "--overwrite")
    (out / "keep.tmp").write_bytes(b"mine")
    expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", out, "--no-progress", "--overwrite"],
                 str(out), "'keep.tmp'", "not written by fitloop", "move it away")
    assert (out / "keep.tmp").read_bytes() == b"mine" and (out / "manifest.json").is_file()
    (out / "keep.tmp").unlink()
    manifest = convert(capsys, "lsp", root, out, "--overwrite")
    assert manifest["counts"] == {"read": 2, "written": 2, "rejected": 0}
    reconcile(out)


def test_resuming_removes_only_its_own_half_written_files(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root, count=3)
    (out / shard_writer.CHUNKS_DIR).mkdir(parents=True)  # an unfinished set, killed while writing its first shard
    (out / "lsp-train-000000.tar.tmp").write_bytes(b"half a shard")
    manifest = convert(capsys, "lsp", root, out)  # resumes the unfinished set: its .tmp is fitloop's own
    assert not (out / "lsp-train-000000.tar.tmp").exists() and manifest["counts"]["written"] == 3
    reconcile(out)


def test_a_file_where_the_folder_should_be_is_one_line(capsys, tmp_path):
    root = tmp_path / "lsp"
    write_lsp(root)
    (tmp_path / "file").write_text("x")
    expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", tmp_path / "file", "--no-progress"],
                 str(tmp_path / "file"), "is a file, not a folder")
    expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", tmp_path / "file" / "set", "--no-progress"],
                 str(tmp_path / "file"), "a file is in the way")


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free space"), (errno.EROFS, "write elsewhere"),
                                          (errno.EACCES, "permissions")])
def test_a_full_or_read_only_disk_while_writing_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch, code,
                                                                             advice):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root)

    def fails(self, data):
        raise OSError(code, os.strerror(code))  # as a write on a full disk says it: no file name

    monkeypatch.setattr(shard_writer._HashingFile, "write", fails)
    line = expect_error(capsys, ["preprocess", "lsp", "--root", root, "--out", out, "--no-progress"],
                        str(out / "lsp-train-000000.tar.tmp"), os.strerror(code), advice)
    assert "None" not in line
    assert not (out / "lsp-train-000000.tar.tmp").exists()  # no half-written shard left behind


def test_a_damaged_receipt_of_an_unfinished_set_is_written_again(capsys, tmp_path, monkeypatch):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root, count=3)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after every chunk, before the manifest

    with monkeypatch.context() as patch:
        patch.setattr(shard_writer, "finalize_manifest", killed)
        assert fitloop(["preprocess", "lsp", "--root", str(root), "--out", str(out), "--no-progress",
                        "--samples-per-shard", "1", "--split", "train"]) == 130
    receipt = out / shard_writer.CHUNKS_DIR / "lsp-train-000001.json"
    damaged = json.loads(receipt.read_text())
    damaged["result"]["counts"] = ["not", "counts"]  # the digest still matches: only the result is wrong
    receipt.write_text(json.dumps(damaged))
    manifest = convert(capsys, "lsp", root, out, "--samples-per-shard", "1", "--split", "train")
    assert manifest["counts"] == {"read": 3, "written": 3, "rejected": 0} and len(manifest["shards"]) == 3
    reconcile(out)


def test_a_flow_checks_the_folder_the_same_way_before_any_work(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FlowParameterError, match="out: .*'notes.txt' but no fitloop shard set"):
            check_out_dir(tmp_path / "out", overwrite)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_synth_overwrite_replaces_only_datasets_it_wrote(capsys, tmp_path):
    real = tmp_path / "lsp"
    write_lsp(real)  # a user's LSP where fitloop synth would write its own
    expect_error(capsys, ["synth", "--out", tmp_path, "--people", "2", "--datasets", "lsp", "--overwrite"],
                 str(real), "fitloop synth did not write it", "move it away")
    assert (real / "joints.mat").is_file() and len(list((real / "images").iterdir())) == 2
