"""Damaged shard sets, as `fitloop shards` and the reader meet them: a manifest that is not JSON or lacks a field, a
truncated or missing shard, a damaged rejects table or JPEG, counts that do not reconcile, a shard listed twice, a
pickle among a sample's members. Each is one line naming the file (and the sample), or a `verify` problem with a
non-zero exit; never a traceback, never read twice or skipped without a word (issue 13)."""
import hashlib
import io
import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultcheck import expect_error
from faultdata import lsp_joints, write_lsp

from fitloop.cli import INTERNAL_ERROR_STATUS
from fitloop.cli import main as fitloop
from shards import writer as shard_writer
from shards.reader import ShardCorruptError, ShardReader, iter_shard, list_shards
from shards.tar import READ_BLOCK, HashingReader, TarFormatError
from shards.writer import ShardSetError

FAULT_CLASS = "damaged shard sets"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A set of 3 samples in 2 shards and 1 reject (an image missing), from LSP."""
    root = tmp_path_factory.mktemp("lsp")
    write_lsp(root, count=4)
    (root / "images" / "im0003.jpg").unlink()
    out = root.parent / (root.name + "-set")
    assert fitloop(["preprocess", "lsp", "--root", str(root), "--out", str(out), "--samples-per-shard", "2",
                    "--no-progress", "--split", "train"]) == 0
    return out


@pytest.fixture
def shard_set(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "set")


def manifest_of(shard_set):
    return json.loads((shard_set / "manifest.json").read_text())


def write_manifest(shard_set, manifest):
    (shard_set / "manifest.json").write_text(json.dumps(manifest))


def run_verify(capsys, shard_set):
    """`fitloop shards verify`: (exit status, stdout); never a traceback or an internal error."""
    capsys.readouterr()
    status = fitloop(["shards", "verify", str(shard_set)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and status != INTERNAL_ERROR_STATUS, err
    return status, out


def test_the_pristine_set_verifies_and_its_counts_reconcile(capsys, shard_set):
    status, out = run_verify(capsys, shard_set)
    assert status == 0 and out.strip().endswith("OK"), out
    assert manifest_of(shard_set)["counts"] == {"read": 4, "written": 3, "rejected": 1}


@pytest.mark.parametrize("text", ["", "{not json", "[]", json.dumps({"format": "other"})])
def test_a_manifest_that_is_not_one_is_one_line_for_every_command(capsys, shard_set, text):
    (shard_set / "manifest.json").write_text(text)
    picture = str(shard_set.parent / "x.png")
    for command in (["stats"], ["ls"], ["show", "lsp/im0001"], ["render", "--keys", "lsp/im0001", "--out", picture]):
        expect_error(capsys, ["shards", command[0], shard_set, *command[1:]], "manifest.json")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "manifest.json" in out


@pytest.mark.parametrize("damage, fragment", [
    (lambda m: m.pop("counts"), "field 'counts' is missing"),
    (lambda m: m.pop("shards"), "field 'shards' is missing"),
    (lambda m: m.pop("rejects"), "field 'rejects' is missing"),
    (lambda m: m.pop("config"), "field 'config' is missing"),
    (lambda m: m["counts"].pop("written"), "field 'counts'"),
    (lambda m: m["shards"][0].pop("sha256"), "shards[0] has no 'sha256'"),
    (lambda m: m["shards"][1].update(samples="2"), "shards[1].samples"),
    (lambda m: m["shards"][0].update(name="../../etc/passwd.tar"), "shards[0].name"),  # never read outside the set
    (lambda m: m["rejects"].update(file="/etc/hostname"), "field 'rejects'"),
    (lambda m: m["shards"].append(dict(m["shards"][0])), "is listed twice"),
])
def test_a_manifest_missing_a_field_is_one_line_naming_it(capsys, shard_set, damage, fragment):
    manifest = manifest_of(shard_set)
    damage(manifest)
    write_manifest(shard_set, manifest)
    for command in (["stats"], ["ls"], ["stats", "--manifest-only"]):
        expect_error(capsys, ["shards", *command[:1], shard_set, *command[1:]], "manifest.json", fragment,
                     "preprocess --overwrite")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and fragment in out
    with pytest.raises(ShardSetError, match="manifest is damaged"):
        ShardReader(shard_set)


def test_a_truncated_or_missing_shard_is_one_line_naming_it(capsys, shard_set):
    shard = shard_set / "lsp-train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    for command in (["stats"], ["ls", "--keys"]):
        expect_error(capsys, ["shards", command[0], shard_set, *command[1:]], "lsp-train-000001.tar", "truncated")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "lsp-train-000001.tar: the tar breaks off" in out
    shard.unlink()
    expect_error(capsys, ["shards", "stats", shard_set], "lsp-train-000001.tar", "No such file")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "lsp-train-000001.tar: missing" in out


def rewrite_shard(shard_set, name, change):
    """Rewrite a shard's members through ``change(members) -> members`` and give the manifest its new size and
    sha256, so that only the change itself is wrong."""
    path = shard_set / name
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in change(members).items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    manifest = manifest_of(shard_set)
    entry = next(s for s in manifest["shards"] if s["name"] == name)
    entry["bytes"], entry["sha256"] = len(buffer.getvalue()), hashlib.sha256(buffer.getvalue()).hexdigest()
    write_manifest(shard_set, manifest)


def test_a_corrupt_jpeg_is_named_by_verify_and_does_not_stop_stats(capsys, shard_set):
    rewrite_shard(shard_set, "lsp-train-000000.tar",
                  lambda m: {k: (b"\xff\xd8\xff\xe0 broken" if k == "lsp/im0002.jpg" else v) for k, v in m.items()})
    capsys.readouterr()
    assert fitloop(["shards", "stats", str(shard_set)]) == 0  # stats reads no pixels: its counts still stand
    assert "read 4 = written 3 + rejected 1" in capsys.readouterr().out
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "sample lsp/im0002: jpg does not decode" in out


@pytest.mark.parametrize("suffix", ["pyd", "pickle"])
def test_a_pickle_member_is_refused_not_skipped(capsys, shard_set, suffix):
    rewrite_shard(shard_set, "lsp-train-000000.tar",  # among the sample's members, as webdataset groups them
                  lambda m: dict(sorted({**m, f"lsp/im0001.{suffix}": b"\x80\x04\x95 cos\nsystem\n."}.items())))
    shard = next(s for s in list_shards(shard_set) if s.path.name == "lsp-train-000000.tar")
    with pytest.raises(ShardCorruptError, match=f"lsp/im0001.{suffix}: Python pickles"):
        list(iter_shard(shard))
    expect_error(capsys, ["shards", "ls", shard_set, "--keys"], f"lsp/im0001.{suffix}", "WDS_SECURE")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and f"sample lsp/im0001: has member(s) lsp/im0001.{suffix}" in out


def test_a_damaged_rejects_table_is_one_line_for_stats_and_a_problem_for_verify(capsys, shard_set):
    (shard_set / "rejects.parquet").write_bytes(b"PAR1 cut short")
    expect_error(capsys, ["shards", "stats", shard_set], "rejects.parquet", "not a readable rejects table")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "rejects.parquet: sha256 mismatch" in out and "not a readable rejects table" in out


def test_verify_checks_read_is_written_plus_rejected(capsys, shard_set):
    manifest = manifest_of(shard_set)
    manifest["counts"]["read"] = 5
    write_manifest(shard_set, manifest)
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "read 5 is not written 3 + rejected 1" in out
    capsys.readouterr()
    assert fitloop(["shards", "stats", str(shard_set), "--manifest-only"]) == 0
    assert "counts do not reconcile" in capsys.readouterr().out


def test_verify_checks_the_rejects_table_against_the_counts(capsys, shard_set):
    table = pq.read_table(shard_set / "rejects.parquet")
    empty = table.slice(0, 0)
    sink = pa.BufferOutputStream()
    pq.write_table(empty, sink)
    data = sink.getvalue().to_pybytes()
    (shard_set / "rejects.parquet").write_bytes(data)
    manifest = manifest_of(shard_set)
    manifest["rejects"]["sha256"] = hashlib.sha256(data).hexdigest()  # only the rows are wrong
    write_manifest(shard_set, manifest)
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "rejects.parquet: 0 rows of lsp/train, the manifest counts 1 rejected" in out


def test_a_shard_set_given_twice_is_refused_not_read_twice(shard_set, tmp_path):
    (tmp_path / "link").symlink_to(shard_set)
    for twice in ([shard_set, shard_set], [shard_set, tmp_path / "link"]):
        with pytest.raises(ShardSetError, match="lsp-train-000000.tar is listed twice"):
            list_shards(twice)
        with pytest.raises(ShardSetError, match="listed twice"):
            ShardReader(twice)


def patch_first_header(shard_set, name, offset, data, cut=None):
    """Overwrite bytes of the shard's first tar header at ``offset``, fix its checksum (so only the change is
    wrong), optionally cut the file to ``cut`` bytes, and give the manifest the new size and sha256."""
    path = shard_set / name
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    raw = bytes(raw[:cut] if cut else raw)
    path.write_bytes(raw)
    manifest = manifest_of(shard_set)
    entry = next(s for s in manifest["shards"] if s["name"] == name)
    entry["bytes"], entry["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    write_manifest(shard_set, manifest)


@pytest.mark.parametrize("offset, data, cut, fragment", [
    (0, b"\xff\xfe", None, "cannot be parsed (UnicodeDecodeError"),         # a member name that is not UTF-8
    (124, b"77777777777\0", 4096, "wanted 8589934591 bytes"),            # 8 GiB declared: read as far as it goes
])
def test_a_damaged_tar_header_is_one_line_and_costs_no_more_memory_than_the_file(capsys, shard_set, offset, data,
                                                                                  cut, fragment):
    patch_first_header(shard_set, "lsp-train-000000.tar", offset, data, cut)
    for command in (["stats"], ["ls", "--keys"]):
        expect_error(capsys, ["shards", command[0], shard_set, *command[1:]], "lsp-train-000000.tar", fragment)
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "lsp-train-000000.tar: the tar breaks off before its first sample" in out


def test_a_declared_size_is_read_in_blocks_never_allocated_at_once():
    asked = []

    class Stream(io.BytesIO):
        def read(self, size=-1):
            asked.append(size)
            return super().read(size)

    with pytest.raises(TarFormatError, match=f"wanted {2 ** 40} bytes, got 3000"):
        HashingReader(Stream(b"x" * 3000)).read_exactly(2 ** 40, "a member")
    assert max(asked) == READ_BLOCK  # an exabyte header costs a block of memory, not what it says


def test_a_damaged_sample_is_one_line_naming_it_for_stats_and_show(capsys, shard_set):
    rewrite_shard(shard_set, "lsp-train-000000.tar",
                  lambda m: {k: (b'{"dataset": ' if k == "lsp/im0001.json" else v) for k, v in m.items()})
    expect_error(capsys, ["shards", "stats", shard_set], "lsp-train-000000.tar", "sample lsp/im0001",
                 "json member is not valid JSON", "fitloop shards verify")
    expect_error(capsys, ["shards", "show", shard_set, "lsp/im0001"], "lsp-train-000000.tar", "lsp/im0001")
    status, out = run_verify(capsys, shard_set)
    assert status == 1 and "sample lsp/im0001:" in out


def test_verify_names_a_sample_whose_crop_is_black_from_a_set_written_before_the_box_check(capsys, tmp_path,
                                                                                            monkeypatch):
    root, out = tmp_path / "lsp", tmp_path / "set"
    joints = lsp_joints(2)
    joints[1, :, :2] += 2000.0  # the box lies far beside the 100 x 80 image: its crop is black
    write_lsp(root, joints=joints)
    with monkeypatch.context() as patch:
        patch.setattr(shard_writer, "box_problem", lambda *args: "")  # as fitloop wrote sets before issue 13
        assert fitloop(["preprocess", "lsp", "--root", str(root), "--out", str(out), "--no-progress",
                        "--split", "train", "--option", "image_check=exists"]) == 0
    status, report = run_verify(capsys, out)
    assert status == 1 and "sample lsp/im0002: json box centred at" in report and "0% of its area" in report
    assert "lsp/im0001" not in report.replace("bad samples: lsp/im0002", "")
