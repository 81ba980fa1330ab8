"""One run per shard-set folder (`shards.writer.writing_lock`): a second run into a folder another process is
writing is refused at its start with one line naming the first, and leaves the first run's set intact; a run
killed while it held the folder does not block the next one, which resumes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fitloop.cli import main as fitloop
from shards.writer import LOCK, ShardWriteError, writing_lock

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120

# A real writing run (`write_shards`, the CLI's in-process route) that stops after its first chunk, with the folder
# held, until it reads a line: the first of two runs into one folder.
PAUSED_WRITER = """
import sys
from pathlib import Path
import pyarrow.dataset  # noqa: F401 - before torch (fitloop.cli.preload_arrow)
from pipelines.preprocess import DatasetSpec, open_datasets
from shards.writer import ShardConfig, write_shards

records, inputs = open_datasets([DatasetSpec("lsp", sys.argv[1], ("all",))])

def pausing():
    for i, record in enumerate(records):
        if i == 3:  # the first chunk (2 samples) is written by now
            print("paused", flush=True)
            sys.stdin.readline()
        yield record

write_shards(pausing(), Path(sys.argv[2]), ShardConfig(crop_res=64, samples_per_shard=2), inputs=inputs)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def lsp_root(tmp_path_factory) -> Path:
    """Six synthetic people in the LSP layout, converted as split ``all`` (the file holds 6 images, not LSP's 2000)."""
    from pipelines.synthetic import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth"), SynthConfig.with_people(6, datasets=("lsp",)))["lsp"]


def _paused_writer(root: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(root), str(out)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline()
    assert line == "paused\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _argv(root: Path, out: Path) -> list[str]:
    return ["preprocess", "lsp", "--root", str(root), "--split", "all", "--out", str(out), "--crop-res", "64",
            "--samples-per-shard", "2", "--no-progress"]


def test_a_second_run_into_a_folder_being_written_is_refused_and_the_first_finishes(lsp_root, tmp_path, capsys):
    from pipelines import flow_params
    from pipelines.preprocess import DatasetSpec, preprocess

    out = tmp_path / "shards"
    first = _paused_writer(lsp_root, out)
    try:
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        line = f"another run (pid {first.pid} on host {socket.gethostname()}) is writing {out}; wait for it or " \
               f"choose another output folder"
        assert fitloop(_argv(lsp_root, out)) == 1  # the CLI, in-process route
        assert capsys.readouterr().err.strip().splitlines() == [f"fitloop: error: {line}"]
        with pytest.raises(ShardWriteError) as refused:  # the Dask route's writer (a local client is not needed)
            preprocess([DatasetSpec("lsp", str(lsp_root), ("all",))], out, client=object())
        assert str(refused.value) == line
        with pytest.raises(flow_params.FlowParameterError) as refused:  # a flow, before any work
            flow_params.check_out_dir(out, overwrite=True)
        assert str(refused.value) == f"out: {line}"
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.wait(START_TIMEOUT_S) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 6 and len(manifest["shards"]) == 3
    assert not (out / LOCK).exists()  # gone with the run that held it


def test_a_run_killed_while_it_held_the_folder_is_resumed_by_the_next(lsp_root, tmp_path):
    out = tmp_path / "shards"
    first = _paused_writer(lsp_root, out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    first.send_signal(signal.SIGKILL)
    assert first.wait(START_TIMEOUT_S) == -signal.SIGKILL
    assert (out / LOCK).exists() and kept  # left behind, unlocked, with the chunk it finished
    assert fitloop(_argv(lsp_root, out)) == 0
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # resumed: the shard was kept
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
        + ["manifest.json", "rejects.parquet"])


def test_the_holding_thread_may_enter_again_another_thread_may_not(tmp_path):
    """A flow holds its folder while its task (in the flow's thread) writes it; a second run in another thread of
    the same process is refused as one in another process is."""
    out = tmp_path / "shards"
    errors: list[BaseException] = []

    def other_run() -> None:
        try:
            with writing_lock(out):
                pass
        except ShardWriteError as err:
            errors.append(err)

    with writing_lock(out):
        with writing_lock(out):
            assert (out / LOCK).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        thread = threading.Thread(target=other_run)
        thread.start()
        thread.join()
        assert (out / LOCK).exists()  # the inner exit kept it
    assert [str(e) for e in errors] == [f"another run (pid {os.getpid()} on host {socket.gethostname()}, this "
                                        f"process) is writing {out.resolve()}; wait for it or choose another output "
                                        f"folder"]
    assert not (out / LOCK).exists()
    assert not out.exists()  # made by the lock, left empty: removed (a refused run used to leave the folder)
    other_run()  # free again
    assert len(errors) == 1
    out.mkdir()
    with writing_lock(out):
        pass
    assert out.is_dir()  # not made by the lock: kept, empty or not
    with writing_lock(tmp_path / "written"):
        (tmp_path / "written" / "shard-000000.tar").write_bytes(b"")
    assert (tmp_path / "written" / "shard-000000.tar").exists()
