"""Flows through a real Prefect server (`prefect server start`), on Dask for real (a local cluster, and a scheduler
and worker started as separate processes on loopback); deployments served and on a process work pool.

The server, the scheduler and every process a test starts listen on 127.0.0.1 and are stopped by the test.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pipelines.preprocess import DatasetSpec

pytestmark = pytest.mark.prefect  # run last: see conftest.py

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240   # a Prefect server, a `fitloop serve` process or a Dask worker coming up on a loaded machine
RUN_TIMEOUT_S = 420     # a tiny flow run, including its process start
TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
ENGINE_FAILED = "Engine execution exited with unexpected exception"  # Prefect's log line for a failed flow run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started in its own session, with everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait_for(what: str, check, proc: subprocess.Popen | None, log: Path | None, timeout: float = START_TIMEOUT_S):
    """Poll ``check()`` until it returns something truthy; skip (the environment, not the code, failed) when the
    process dies or the time runs out before it ever did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    pytest.skip(f"{what} did not come up within {timeout:.0f} s here: {tail}")


def _prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "FITLOOP_REPO"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A Prefect server started as users start it (`prefect server start`) on a free loopback port, with its own
    PREFECT_HOME; yields its API URL, which the flows run in this process use too."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], env=_prefect_env(home), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_for("prefect server start", lambda: _get(f"{url}/health") is True, server, log)
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        _stop(server)


def _get(url: str):
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


# Prefect's own client retries these (a busy server's SQLite answers 503 while it waits for its lock); so do we.
RETRIED_STATUS = (429, 502, 503)


def _post(url: str, body: dict, attempts: int = 6):
    for attempt in range(attempts):
        response = httpx.post(url, json=body, timeout=30)
        if response.status_code not in RETRIED_STATUS or attempt == attempts - 1:
            break
        time.sleep(2 ** attempt)
    response.raise_for_status()
    return response.json()


@contextmanager
def _dask_processes(folder: Path):
    """`dask scheduler` and `dask worker` as separate processes on loopback, the worker working in its own folder;
    yields the scheduler's address."""
    scheduler_file = folder / "scheduler.json"
    worker_cwd = folder / "worker-cwd"
    worker_cwd.mkdir()
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--dashboard-address", "127.0.0.1:0",  # its /health server
                                  "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        _wait_for("dask scheduler", lambda: scheduler_file.exists() and scheduler_file.stat().st_size, scheduler,
                  None)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host",
                                   "127.0.0.1"], cwd=worker_cwd,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=START_TIMEOUT_S)
        yield address
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                _stop(proc)


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    with _dask_processes(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.fixture(scope="module")
def synthetic_lsp(tmp_path_factory):
    """Six synthetic people in the LSP layout (train split), with ground truth."""
    from pipelines.synthetic import SynthConfig, generate

    roots = generate(tmp_path_factory.mktemp("synth"), SynthConfig.with_people(6, datasets=("lsp",)))
    return roots["lsp"]


@pytest.fixture(scope="module")
def negative_lsp(synthetic_lsp, tmp_path_factory):
    """The same dataset with every image inverted: the same keys, shard names and keypoints, other crops."""
    root = tmp_path_factory.mktemp("negative") / "lsp"
    shutil.copytree(synthetic_lsp, root)
    for path in (root / "images").iterdir():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        Image.fromarray(255 - pixels).save(path, quality=95)
    return root


def _lsp_spec(shared_dir):
    return DatasetSpec("lsp", str(shared_dir / "fixtures" / "lsp" / "lsp_dataset"), ("test",))


def _assert_holds_exactly(out: Path, root: Path, config) -> None:
    """The shard set ``out`` verifies against its manifest and holds, per input person of ``root``, the sample
    made from that person: the same keypoints and the very JPEG crop of its own image."""
    from pipelines.preprocess import open_datasets
    from shards.reader import iter_shard, list_shards, verify
    from shards.schema import PersonRecord
    from shards.writer import crop_record

    report = verify(out, deep=True)
    assert report.ok, report.problems
    records, _ = open_datasets([DatasetSpec("lsp", str(root))])
    expected = {r.key: r for r in records if isinstance(r, PersonRecord)}
    stored = {s.key: s for info in list_shards(out) for s in iter_shard(info)}
    assert sorted(stored) == sorted(expected)
    for key, sample in stored.items():
        record = expected[key]
        np.testing.assert_array_equal(sample.keypoints_2d, record.keypoints_2d)
        with Image.open(record.image_root / record.image_path) as image:
            jpeg, _ = crop_record(record, image.convert("RGB"), config)
        assert sample.jpeg == jpeg, f"{out}: {key} is not the crop of {root}'s image"


# --- Dask: runs that share a scheduler, paths, retries, where the cluster listens ---------------------------------

def test_two_concurrent_runs_on_one_scheduler_into_folders_of_one_name_keep_their_own_shards(
        dask_scheduler, synthetic_lsp, negative_lsp, tmp_path):
    """Two runs at once on ONE scheduler, writing …/A/shards and …/B/shards (every `build` names its folder
    `shards`) from different inputs with the same keys and shard names: each gets its own verified shards."""
    from pipelines.cluster import dask_client
    from pipelines.preprocess import open_datasets, write_shard_set
    from shards.writer import ShardConfig

    config = ShardConfig(samples_per_shard=3, crop_res=96)
    runs = {"A": synthetic_lsp, "B": negative_lsp}
    both_read = threading.Barrier(len(runs), timeout=START_TIMEOUT_S)
    errors: dict[str, BaseException] = {}

    def records_then_wait(records):
        yield from records
        both_read.wait()  # the last chunks of both runs go to the scheduler together, while both are in flight

    def run(name: str, root: Path) -> None:
        try:
            records, inputs = open_datasets([DatasetSpec("lsp", str(root))])
            with dask_client(dask_scheduler) as client:
                write_shard_set(records_then_wait(records), inputs, tmp_path / name / "shards", config,
                                client=client)
        except BaseException as err:  # noqa: BLE001 - reported by the test thread below
            errors[name] = err
            both_read.abort()

    threads = [threading.Thread(target=run, args=item) for item in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name, root in runs.items():
        _assert_holds_exactly(tmp_path / name / "shards", root, config)


def test_a_relative_out_is_written_where_the_caller_works_not_where_workers_do(dask_scheduler, synthetic_lsp,
                                                                              tmp_path, monkeypatch):
    from pipelines.cluster import dask_client
    from pipelines.preprocess import preprocess
    from shards.writer import ShardConfig

    config = ShardConfig(samples_per_shard=4, crop_res=64)
    monkeypatch.chdir(tmp_path)
    with dask_client(dask_scheduler) as client:
        worker_cwd = Path(next(iter(client.run(os.getcwd).values())))
        manifest = preprocess([DatasetSpec("lsp", str(synthetic_lsp))], Path("relative-shards"), config,
                              client=client)
    assert manifest["counts"]["written"] == 6
    _assert_holds_exactly(tmp_path / "relative-shards", synthetic_lsp, config)
    assert worker_cwd != tmp_path and not (worker_cwd / "relative-shards").exists()


def test_a_chunk_that_fails_once_is_retried_and_the_run_resumes(prefect_api, dask_scheduler, synthetic_lsp,
                                                                  tmp_path, monkeypatch):
    """An I/O error in one chunk (on the Dask worker) fails the `write shards` task; Prefect retries it, and the
    retry keeps the chunk the failed attempt finished, writes the rest, and the set is the one an uninterrupted
    run writes."""
    from pipelines import flows, preprocess
    from shards.writer import ShardConfig, write_shards

    attempts = tmp_path / "attempts"  # one line per call of a chunk, written by the worker process
    attempts.mkdir()
    real = preprocess.write_chunk

    def flaky(records, out_dir, shard_name, config, digest=None):
        with open(attempts / shard_name, "a") as f:
            f.write("call\n")
        if shard_name == "lsp-train-000001" and len((attempts / shard_name).read_text().splitlines()) == 1:
            raise OSError(f"{out_dir}: input/output error (simulated)")
        return real(records, out_dir, shard_name, config, digest)

    monkeypatch.setattr(preprocess, "write_chunk", flaky)  # what the chunk tasks run
    monkeypatch.setattr(flows.write_shards_task, "retry_delay_seconds", 0)
    manifest = flows.preprocess_flow([DatasetSpec("lsp", str(synthetic_lsp))], str(tmp_path / "shards"),
                                     crop_res=64, samples_per_shard=2, dask_address=dask_scheduler)
    calls = {p.name: len(p.read_text().splitlines()) for p in attempts.iterdir()}
    assert calls["lsp-train-000000"] == 1  # finished by the failed attempt, kept by the retry
    assert calls["lsp-train-000001"] == 2  # failed, then written by the retry
    records, _ = preprocess.open_datasets([DatasetSpec("lsp", str(synthetic_lsp))])
    config = ShardConfig(crop_res=64, samples_per_shard=2)
    reference = write_shards(records, tmp_path / "reference", config)
    assert [(s["name"], s["sha256"]) for s in manifest["shards"]] == \
           [(s["name"], s["sha256"]) for s in reference["shards"]]
    _assert_holds_exactly(tmp_path / "shards", synthetic_lsp, config)


def test_an_unreachable_scheduler_fails_fast_with_one_line_naming_it(prefect_api, synthetic_lsp, tmp_path, capsys):
    from fitloop.cli import main
    from pipelines.cluster import ClusterError
    from pipelines.flows import preprocess_flow

    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    state = preprocess_flow([DatasetSpec("lsp", str(synthetic_lsp))], str(tmp_path / "shards"),
                            dask_address=address, return_state=True)
    assert state.type.value == "FAILED" and f"no Dask scheduler at '{address}'" in state.message
    with pytest.raises(ClusterError, match="start one there"):
        state.result()
    assert not (tmp_path / "shards").exists()  # failed before any work
    assert main(["preprocess", "lsp", "--root", str(synthetic_lsp), "--out", str(tmp_path / "cli"),
                 "--dask-address", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fitloop: error: no Dask scheduler at '{address}'") and "Traceback" not in "".join(err)


def test_the_local_cluster_listens_on_loopback_only():
    import psutil

    from pipelines.cluster import dask_client

    with dask_client(None, 1) as client:
        workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        # this process (scheduler, dashboard), each worker and its nanny
        processes = [psutil.Process()] + workers + [w.parent() for w in workers]
        listening = {(c.laddr.ip, c.laddr.port) for p in processes for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        dashboard = client.dashboard_link
    # the scheduler, the worker, its nanny and the dashboard; all on loopback (none on 0.0.0.0 or ::)
    assert len(listening) >= 4 and {ip for ip, _ in listening} == {"127.0.0.1"}
    assert dashboard.startswith("http://127.0.0.1:")


def test_local_workers_start_with_the_raised_mmap_threshold_and_dasks_own_settings():
    import dask

    from pipelines.cluster import WORKER_MMAP_THRESHOLD, dask_client

    dasks = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_MMAP_THRESHOLD_" not in dasks  # Dask's defaults do not set it: the slow allocator (cluster.py)
    with dask_client(None, 1) as client:
        seen = list(client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", *dasks)}).values())
    assert seen[0]["MALLOC_MMAP_THRESHOLD_"] == str(WORKER_MMAP_THRESHOLD)
    assert all(seen[0][k] == str(v) for k, v in dasks.items())  # Dask's own (trim threshold, one thread) kept
    assert "MALLOC_MMAP_THRESHOLD_" not in dask.config.get("distributed.nanny.pre-spawn-environ")  # restored


# --- flows ---------------------------------------------------------------------------------------------------------

def test_preprocess_flow_on_a_local_cluster(prefect_api, shared_dir, tmp_path):
    from pipelines.flows import preprocess_flow

    manifest = preprocess_flow([_lsp_spec(shared_dir)], str(tmp_path / "shards"), workers=1)
    assert manifest["counts"] == {"read": 1000, "written": 2, "rejected": 998}
    assert (tmp_path / "shards" / "manifest.json").is_file()


def test_preprocess_flow_on_an_existing_scheduler(prefect_api, dask_scheduler, shared_dir, tmp_path):
    from distributed import Client

    from pipelines.flows import preprocess_flow

    def keys_seen(dask_scheduler):
        return sorted({str(entry[0]) for entry in dask_scheduler.transition_log})

    with Client(dask_scheduler) as client:
        before = set(client.run_on_scheduler(keys_seen))
    manifest = preprocess_flow([_lsp_spec(shared_dir)], str(tmp_path / "shards"), dask_address=dask_scheduler)
    assert manifest["counts"]["written"] == 2
    with Client(dask_scheduler) as client:  # the chunk really ran on that cluster, under this run's own key
        new = set(client.run_on_scheduler(keys_seen)) - before
    assert [k for k in new if k.startswith("write-") and k.endswith("-lsp-test-000000")]


TINY_TRAINING = {"backbone": 18, "img_res": 64, "batch_size": 3, "epochs": 1, "num_workers": 0, "log_every": 1,
                 "checkpoint_every": 1, "tensorboard": False, "eval_max_samples": 3}
# PA-MPJPE (14 LSP joints) against the ground truth of the six synthetic LSP people: their seed fits 95.6 mm
# (open model, SMPLify's fast mode from the mean pose; measured 2026-12), the mean pose itself 176.6 mm. The bound
# keeps a margin of 15 % and is far below what not fitting gives.
SEED_PA_MPJPE_MAX_MM = 110.0


def test_build_flow_runs_preprocess_seed_and_train(prefect_api, synthetic_lsp, tmp_path):
    from fits.table import FitsTable
    from pipelines.flows import build_flow

    summary = build_flow([DatasetSpec("lsp", str(synthetic_lsp))], str(tmp_path / "run"), TINY_TRAINING, workers=1)
    assert summary["manifest_counts"] == {"read": 6, "written": 6, "rejected": 0}
    assert summary["seed"]["fitted"] == 6 and summary["seed"]["versions"] == [1]
    versions = FitsTable.open(summary["fits"]).versions()
    assert len(versions) >= 2  # the seed version, then the training run's write-back
    run = tmp_path / "run" / "run"
    assert (run / "metrics.csv").is_file() and list((run / "checkpoints").glob("*.pt"))
    assert (tmp_path / "run" / "seed_fits.png").is_file()

    # the demo's report: every table version measured against the synthetic ground truth
    from fitting.body_model import load_body_model
    from pipelines.report import fit_errors_by_version, synthetic_truth, write_report

    body = load_body_model("open")
    errors = fit_errors_by_version(summary["fits"], synthetic_truth([synthetic_lsp], body), body)
    assert [e["version"] for e in errors] == [v["version"] for v in versions]
    seeded = errors[1]
    assert seeded["with_truth"] == 6 and seeded["pa_mpjpe_mm"] < SEED_PA_MPJPE_MAX_MM
    # training writes back only fits that lower a key's loss: the best fits after it are still within the bound
    assert errors[-1]["with_truth"] == 6 and errors[-1]["pa_mpjpe_mm"] < SEED_PA_MPJPE_MAX_MM
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    report = write_report(tmp_path, manifest=manifest, seed=summary["seed"], train=summary["train"],
                          fit_errors=errors, pictures={}, timings={"build": 1.0}, notes=["test"]).read_text()
    assert "## Fits table" in report and f"| 1 | 6 | 6 | {seeded['pa_mpjpe_mm']:.1f} |" in report


def test_seed_and_train_flows_on_their_own_log_and_report_to_prefect(prefect_api, synthetic_lsp, tmp_path):
    import base64

    from prefect.logging.handlers import APILogWorker

    from core.errors import FitloopError
    from fits.table import FitsTable
    from pipelines.flows import preprocess_flow, seed_fits_flow, train_flow

    shards, fits = str(tmp_path / "shards"), str(tmp_path / "fits")
    preprocess_flow([DatasetSpec("lsp", str(synthetic_lsp))], shards, workers=1)
    first = seed_fits_flow(shards, fits, workers=1)
    again = seed_fits_flow(shards, fits, workers=1)  # the same fits again: nothing improves, no new version
    assert first["appended"] == 6 and again["appended"] == 0 and again["versions"] == []
    image = seed_fits_flow(shards, str(tmp_path / "fits_image"), workers=1, frame="image")  # each sample's camera
    assert image["appended"] == 6
    assert set(FitsTable.open(tmp_path / "fits_image").best()["frame"].to_pylist()) == {"image"}
    state = train_flow([shards], fits, str(tmp_path / "train"), TINY_TRAINING, return_state=True)
    summary = state.result()
    assert summary["step"] == 2 and summary["fits_version"] >= 1

    run_id = str(state.state_details.flow_run_id)
    APILogWorker.drain_all(timeout=60)  # the run's log lines are sent in batches
    logs = [log["message"] for log in _post(f"{prefect_api}/logs/filter",
                                            {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})]
    # the trainer's rows, as they were written: two steps (log_every 1), evaluations before and after the epoch
    assert sum(m.startswith("epoch 1 step ") for m in logs) == 2
    evaluations = [m.split(" (")[0] for m in logs if m.startswith("evaluation ")]
    assert evaluations == ["evaluation before training", "evaluation after epoch 1"]
    artifacts = {a["key"]: a for a in _post(f"{prefect_api}/artifacts/filter",
                                            {"artifacts": {"flow_run_id": {"any_": [run_id]}}})}
    metrics = json.loads(artifacts["train-metrics"]["data"])
    assert [row["epoch"] for row in metrics] == [0, 1] and metrics == summary["metrics"]
    assert all(isinstance(row["step"], int) and isinstance(row["wall_s"], float) for row in metrics)
    picture = artifacts["train-curves"]["data"].split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(picture) == (tmp_path / "train" / "curves.png").read_bytes()
    # the run folder is the run's now: a new run there is refused before any work, naming it (training.run_folder)
    with pytest.raises(FitloopError, match=r"run_dir: .*train holds run .*--overwrite"):
        train_flow([shards], fits, str(tmp_path / "train"), TINY_TRAINING)


def test_flow_parameters_are_checked_before_any_work(prefect_api, synthetic_lsp, tmp_path):
    from core.errors import FitloopError
    from pipelines.flows import build_flow, seed_fits_flow, train_flow
    from pipelines.preprocess import preprocess

    lsp = [DatasetSpec("lsp", str(synthetic_lsp))]
    out = tmp_path / "out"
    cases = [
        (dict(train_settings={"backbone": "eighteen"}), r"train_settings\.backbone: expected an integer, not "
                                                        r"'eighteen'"),
        (dict(train_settings={"backbone": 19}), "backbone must be a ResNet depth"),
        (dict(train_settings={"augment": {"enabled": "no"}}), r"train_settings\.augment\.enabled: expected true"),
        (dict(train_settings={"epochs": 2.5}), r"train_settings\.epochs: expected an integer, not 2\.5"),
        (dict(train_settings={"mix": "lsp=0"}), "share must be > 0"),
        (dict(train_settings={"fits": "/elsewhere"}), r"train_settings\.fits: set by the flow's own parameter"),
        (dict(datasets=[DatasetSpec("lsp", str(tmp_path / "missing"))]), r"datasets\[0\]\.root: .* is not a folder"),
        (dict(datasets=[DatasetSpec("lsp", str(synthetic_lsp), ("val",))]), r"datasets\[0\]\.splits: lsp has no "
                                                                              r"split 'val'"),
        (dict(datasets=[DatasetSpec("lsp", str(synthetic_lsp), ("test",))]), r"none gives a training split \(train\)"),
        (dict(body_model="/no/such/SMPL_NEUTRAL.pkl"), "body_model: .* nor a file"),
    ]
    for change, message in cases:
        arguments = dict(datasets=lsp, out=str(out), train_settings=dict(TINY_TRAINING)) | change
        with pytest.raises(FitloopError, match=message):
            build_flow(**arguments)
        assert not out.exists(), change  # nothing was written
    (tmp_path / "empty").mkdir()
    with pytest.raises(FitloopError, match="shards: .*empty has no manifest.json"):
        train_flow([str(tmp_path / "empty")], str(tmp_path / "fits"), str(tmp_path / "run"))
    shards = tmp_path / "shards"
    preprocess(lsp, shards)  # the seed flow's input, made in this process: the preprocess flow is tested above
    for change, message in [(dict(frame="fisheye"), "frame: 'fisheye' is not one of 'crop', 'image'"),
                            (dict(mode="4d"), "mode: '4d' is not one of '2d', '3d'")]:
        with pytest.raises(FitloopError, match=message):
            seed_fits_flow(str(shards), str(tmp_path / "fits"), workers=1, **change)
        assert not (tmp_path / "fits").exists(), change


def test_a_fitloop_error_in_a_task_fails_the_flow_with_its_one_line(prefect_api, synthetic_lsp, tmp_path):
    """An expected fault met inside a task (an annotation file that cannot be read, a fits folder that is no fits
    table) fails the flow run as a wrong parameter does: its one line as the run's message, the `FitloopError`
    raised to the caller. Before: the task returned a Failed state, which the flow used as its result ('State'
    object is not subscriptable; a UUID that is not JSON serializable in the seed artifact)."""
    from fits.table import FitsTableError
    from pipelines.adapters import AnnotationFileError
    from pipelines.flows import preprocess_flow, seed_fits_flow
    from pipelines.preprocess import preprocess

    root = tmp_path / "lsp"
    (root / "images").mkdir(parents=True)
    (root / "joints.mat").write_text("not a MATLAB file\n")
    state = preprocess_flow([DatasetSpec("lsp", str(root), ("test",))], str(tmp_path / "unread"), workers=1,
                            return_state=True)
    assert state.type.value == "FAILED", state.message
    with pytest.raises(AnnotationFileError) as error:
        state.result()
    assert state.message == str(error.value) and str(error.value).startswith(f"{root / 'joints.mat'}: not an lsp")

    shards = tmp_path / "shards"
    preprocess([DatasetSpec("lsp", str(synthetic_lsp), ("all",))], shards)  # made here: the flow is tested above
    before = sorted(p.name for p in shards.iterdir())
    with pytest.raises(FitsTableError, match=f"^{shards} is a folder that is not a fits table"):
        seed_fits_flow(str(shards), str(shards), batch_size=4, workers=1)  # the shard set given as the fits table
    assert sorted(p.name for p in shards.iterdir()) == before


def test_labels_keep_two_sources_of_one_format_apart(synthetic_lsp, tmp_path):
    from pipelines.preprocess import open_datasets
    from pipelines.synthetic import SynthConfig, generate

    other = generate(tmp_path / "other", SynthConfig.with_people(3, datasets=("lsp",), seed=7))["lsp"]
    records, inputs = open_datasets([DatasetSpec("lsp", str(synthetic_lsp), label="lsp-a"),
                                     DatasetSpec("lsp", str(other), label="lsp-b"), DatasetSpec("lsp", str(other))])
    by_dataset = {}
    for record in records:
        assert record.key.startswith(record.dataset + "/")
        by_dataset[record.dataset] = by_dataset.get(record.dataset, 0) + 1
    assert by_dataset == {"lsp-a": 6, "lsp-b": 3, "lsp": 3}
    assert list(dict.fromkeys(i["label"] for i in inputs)) == ["lsp-a", "lsp-b", "lsp"]  # one input per split


# --- deployments ---------------------------------------------------------------------------------------------------

def _deployment_id(api: str, name: str, proc: subprocess.Popen | None, log: Path | None) -> str:
    found = _wait_for(f"deployment {name}", lambda: _get(f"{api}/deployments/name/{name}"), proc, log)
    return found["id"]


def _run_to_the_end(api: str, deployment_id: str, parameters: dict) -> dict:
    """Create a flow run of the deployment and wait for a terminal state; the flow run as the API returns it."""
    run = _post(f"{api}/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = _get(f"{api}/flow_runs/{run['id']}")
        if run["state"]["type"] in TERMINAL_STATES:
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run['id']} still {run['state']['type']} after {RUN_TIMEOUT_S} s")


def test_prefect_yaml_deploys_every_flow_by_module_path_with_its_own_name():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from pipelines.flows import ALL_FLOWS, POOL_DEPLOYMENT, SERVED_DEPLOYMENT

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["pull"] == []  # nothing to pull: a worker imports the installed package, from any folder
    deployments = spec["deployments"]
    assert {d["name"] for d in deployments} == {POOL_DEPLOYMENT} != {SERVED_DEPLOYMENT}
    loaded = [load_flow_from_entrypoint(d["entrypoint"]) for d in deployments]
    assert ":" not in "".join(d["entrypoint"] for d in deployments)  # module paths, not files of a checkout
    assert sorted(f.name for f in loaded) == sorted(f.name for f in ALL_FLOWS)


def test_a_served_deployment_runs_through_a_real_server(prefect_api, dask_scheduler, synthetic_lsp, tmp_path):
    """`fitloop serve`, started away from the checkout, serves the flows as FLOW/fitloop-served; a run created
    through the API completes and writes the shard set; a run with a relative path fails at once, saying so."""
    from pipelines.flows import SERVED_DEPLOYMENT
    from shards.writer import ShardConfig

    cwd, log = tmp_path / "serve-cwd", tmp_path / "serve.log"
    cwd.mkdir()
    with open(log, "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "fitloop.cli", "serve"], cwd=cwd, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env=_prefect_env(tmp_path / "home", prefect_api))
    try:
        deployment = _deployment_id(prefect_api, f"preprocess/{SERVED_DEPLOYMENT}", serve, log)
        datasets = [{"dataset": "lsp", "root": str(synthetic_lsp)}]
        ok = _run_to_the_end(prefect_api, deployment, {"datasets": datasets, "out": str(tmp_path / "served"),
                                                       "crop_res": 64, "dask_address": dask_scheduler})
        assert ok["state"]["type"] == "COMPLETED", (ok["state"], log.read_text()[-3000:])
        _assert_holds_exactly(tmp_path / "served", synthetic_lsp, ShardConfig(crop_res=64))

        relative = _run_to_the_end(prefect_api, deployment, {"datasets": datasets, "out": "relative-shards",
                                                             "dask_address": dask_scheduler})
        assert relative["state"]["type"] == "FAILED"
        line = "out: 'relative-shards' is a relative path, and a deployment's flow run works in a temporary " \
               "folder; give an absolute path"
        assert relative["state"]["message"] == line
        # the run's error log: the line, and Prefect's engine saying the run failed, without a traceback
        deadline, errors = time.monotonic() + 60, []
        while time.monotonic() < deadline and not any(m.startswith(ENGINE_FAILED) for m in errors):
            time.sleep(1)
            errors = [entry["message"] for entry in _post(f"{prefect_api}/logs/filter", {
                "logs": {"flow_run_id": {"any_": [relative["id"]]}, "level": {"ge_": 40}}, "limit": 50})]
        assert errors == [line, f"{ENGINE_FAILED}: {line}"], errors
    finally:
        _stop(serve)


def test_a_pool_deployment_runs_on_a_process_worker(prefect_api, dask_scheduler, synthetic_lsp, tmp_path):
    """`prefect deploy --all` (prefect.yaml, from the checkout) and `prefect worker start` from another folder, with
    no FITLOOP_REPO: the flow run imports the flows from the environment and completes."""
    import yaml

    from pipelines.flows import POOL_DEPLOYMENT
    from shards.writer import ShardConfig

    pool = yaml.safe_load((REPO / "prefect.yaml").read_text())["definitions"]["work_pool"]["name"]
    env = _prefect_env(tmp_path / "home", prefect_api)
    prefect = str(BIN / "prefect")
    for command, cwd in (([prefect, "work-pool", "create", pool, "--type", "process"], tmp_path),
                         ([prefect, "--no-prompt", "deploy", "--all"], REPO)):
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deployment = _deployment_id(prefect_api, f"preprocess/{POOL_DEPLOYMENT}", None, None)
    run = _post(f"{prefect_api}/deployments/{deployment}/create_flow_run", {"parameters": {
        "datasets": [{"dataset": "lsp", "root": str(synthetic_lsp)}], "out": str(tmp_path / "pooled"),
        "crop_res": 64, "dask_address": dask_scheduler}})
    worker_cwd = tmp_path / "worker-cwd"
    worker_cwd.mkdir()
    worker = subprocess.run([prefect, "worker", "start", "--pool", pool, "--run-once"], cwd=worker_cwd, env=env,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    state = _get(f"{prefect_api}/flow_runs/{run['id']}")["state"]
    assert state["type"] == "COMPLETED", (state, worker.stdout[-3000:], worker.stderr[-3000:])
    _assert_holds_exactly(tmp_path / "pooled", synthetic_lsp, ShardConfig(crop_res=64))
