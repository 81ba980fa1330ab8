"""Flows run through Prefect for real (a temporary test server) and on Dask for real (local or by address)."""
import json
import subprocess
import sys
import time

import pytest

from pipelines.preprocess import DatasetSpec

pytestmark = pytest.mark.prefect  # run last: see conftest.py


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    """A distributed scheduler and one worker, as separate processes on loopback; yields the address."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(300):
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _lsp_spec(shared_dir):
    return DatasetSpec("lsp", str(shared_dir / "fixtures" / "lsp" / "lsp_dataset"), ("test",))


def test_preprocess_flow_on_a_local_cluster(prefect_server, shared_dir, tmp_path):
    from pipelines.flows import preprocess_flow

    manifest = preprocess_flow([_lsp_spec(shared_dir)], str(tmp_path / "shards"), workers=1)
    assert manifest["counts"] == {"read": 1000, "written": 2, "rejected": 998}
    assert (tmp_path / "shards" / "manifest.json").is_file()


def test_preprocess_flow_on_an_existing_scheduler(prefect_server, dask_scheduler, shared_dir, tmp_path):
    from distributed import Client

    from pipelines.flows import preprocess_flow

    with Client(dask_scheduler) as client:
        before = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes))
    manifest = preprocess_flow([_lsp_spec(shared_dir)], str(tmp_path / "shards"), dask_address=dask_scheduler)
    assert manifest["counts"]["written"] == 2
    with Client(dask_scheduler) as client:  # the chunk really ran on that cluster
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert any(p.startswith("write") for p in prefixes) and len(prefixes) > before


@pytest.fixture(scope="module")
def synthetic_lsp(tmp_path_factory):
    """Six synthetic people in the LSP layout (train split), with ground truth."""
    from pipelines.synthetic import SynthConfig, generate

    roots = generate(tmp_path_factory.mktemp("synth"), SynthConfig.with_people(6, datasets=("lsp",)))
    return roots["lsp"]


TINY_TRAINING = {"backbone": 18, "img_res": 64, "batch_size": 3, "epochs": 1, "num_workers": 0, "log_every": 1,
                 "checkpoint_every": 1, "tensorboard": False, "eval_max_samples": 3}


def test_build_flow_runs_preprocess_seed_and_train(prefect_server, synthetic_lsp, tmp_path):
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
    import json

    from fitting.body_model import load_body_model
    from pipelines.report import fit_errors_by_version, synthetic_truth, write_report

    body = load_body_model("open")
    errors = fit_errors_by_version(summary["fits"], synthetic_truth([synthetic_lsp], body), body)
    assert [e["version"] for e in errors] == [v["version"] for v in versions]
    seeded = errors[1]
    assert seeded["with_truth"] == 6 and 0 < seeded["pa_mpjpe_mm"] < 300
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    report = write_report(tmp_path, manifest=manifest, seed=summary["seed"], train=summary["train"],
                          fit_errors=errors, pictures={}, timings={"build": 1.0}, notes=["test"]).read_text()
    assert "## Fits table" in report and f"| 1 | 6 | 6 | {seeded['pa_mpjpe_mm']:.1f} |" in report


def test_seed_and_train_flows_on_their_own(prefect_server, synthetic_lsp, tmp_path):
    from pipelines.flows import preprocess_flow, seed_fits_flow, train_flow

    shards, fits = str(tmp_path / "shards"), str(tmp_path / "fits")
    preprocess_flow([DatasetSpec("lsp", str(synthetic_lsp))], shards, workers=1)
    first = seed_fits_flow(shards, fits, workers=1)
    again = seed_fits_flow(shards, fits, workers=1)  # the same fits again: nothing improves, no new version
    assert first["appended"] == 6 and again["appended"] == 0 and again["versions"] == []
    summary = train_flow([shards], fits, str(tmp_path / "train"), TINY_TRAINING)
    assert summary["step"] == 2 and summary["fits_version"] >= 1


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
