"""`fitloop bench`'s shared options (fitloop/commands/bench.py): every benchmark prints its record with --json or
its text without, writes the record with --out, and those that run torch here set --threads for the run (default 1)
and give the caller's count back."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from fitloop.cli import build_parser, main

# benchmarks whose work is not torch on this process's CPU, or whose thread count is their own
NO_THREADS_OPTION = {"shards", "fits-table", "preprocess", "loop"}
SEEDING_THREAD_LIST = "seeding"  # its --threads is a list of thread counts, each one an arm


def _benchmarks() -> dict[str, argparse.ArgumentParser]:
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    return dict(bench._subparsers._group_actions[0].choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_every_benchmark_has_the_shared_options():
    benchmarks = _benchmarks()
    assert {"body-model", "smplify", "smplifyx", "train-step", "fit3d", "loop"} <= set(benchmarks)
    for name, parser in benchmarks.items():
        options = _options(parser)
        assert "--json" in options, name
        if name != "loop":  # its --out is the folder of its runs, where it writes loop.json
            assert options["--out"].dest == "record_file", name
        if name in NO_THREADS_OPTION:
            assert "--threads" not in options, name
        elif name != SEEDING_THREAD_LIST:
            assert options["--threads"].default == 1, name


def test_record_printed_and_written_on_the_threads_asked(tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not 1 and not this machine's default: the benchmark must set its own
    try:
        argv = ["bench", "body-model", "--model", "open-small", "--batch", "2", "--repeats", "1"]
        assert main([*argv, "--json", "--threads", "1", "--out", str(tmp_path / "r" / "body.json")]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads((tmp_path / "r" / "body.json").read_text())
        assert printed["threads"] == 1 and printed["batch"] == 2
        assert torch.get_num_threads() == 3  # the caller's count is given back
        assert not list((tmp_path / "r").glob("*.tmp"))

        assert main([*argv, "--threads", "2"]) == 0
        text = capsys.readouterr().out
        assert "2 threads" in text and "smplx layer forward (baseline)" in text
        assert not text.lstrip().startswith("{")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, message", [
    (["body-model", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["smplify", "--threads", "-2"], "argument --threads: must be at least 1, got -2"),
    (["smplify", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["body-model", "--device", "foo"], "'foo': not a device torch knows"),
    (["smplify", "--device", "xla"], "fitloop computes on cpu, cuda, mps or xpu"),
    (["train-step", "--device", "mps"], "pass --device cpu"),
])
def test_a_bad_count_or_device_is_refused_before_any_work(argv, message, capsys):
    """Checked where argparse reads them (usage error, exit 2): a device torch cannot use here once surfaced as an
    assertion inside torch, reported as an internal error."""
    with pytest.raises(SystemExit) as exit:
        main(["bench", *argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


def test_texts_of_the_records_that_have_two_forms():
    """`train-step --count-syncs` and `smplify --profile` print other records: each text is chosen by the
    record's "benchmark" (a wrong choice raises KeyError on the other record's fields)."""
    from bench.smplify_profile import PROFILE
    from bench.train_step import SYNC_COUNT
    from fitloop.commands.bench import table_smplify, table_train_step

    syncs = {"benchmark": SYNC_COUNT, "batch": 8, "body_model": "open-small", "counted": "reads",
             "hmr_smplify": {"total": 12, "by_folder": {"training": 3, "fitting": 9}, "torch_own": 1}}
    text = table_train_step(syncs)
    assert "host syncs per training step (batch 8, open-small)" in text and "hmr_smplify" in text
    assert "training/ 3, fitting/ 9" in text
    profile = {"benchmark": PROFILE, "model": "open", "batch": 256, "threads": 1, "config": {},
               "per_lm_iteration": {"kernels": 52.0, "syncs": 0.0, "from_host": 0.0},
               "per_call": {"mean": {"kernels": 900, "syncs": 3, "from_host": 0, "sync_ops": {}}}}
    text = table_smplify(profile)
    assert "| one stage-2 LM iteration | 52 | 0.0 |" in text and "start=mean" in text


def test_fit3d_text_is_the_records_table():
    from fitloop.commands.bench import table_fit3d

    row = {"joints_abs": 1.0, "pa_mpjpe": 2.0, "mpjpe": 3.0, "v2v": 4.0, "shape_v2v": 5.0, "betas": 0.5,
           "jitter": float("nan"), "fits_per_s": 100.0}
    record = {"model": "open-small", "subjects": 1, "frames": 3, "threads": 1,
              "sources": {"cmu": {"3d, clean": row}, "lsp": {"1 view, 2 px": row}}}
    lines = table_fit3d(record).splitlines()
    assert lines[0].startswith("fit3d benchmark: 1 subjects x 3 frames") and lines[1].startswith("| poses |")
    assert lines[3:] == ["| cmu | 3d, clean | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 0.5 | – | 100.0 |",
                         "| lsp | 1 view, 2 px | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 0.5 | – | 100.0 |"]


def test_train_step_reports_smplifys_share_of_the_step(tmp_path, capsys):
    """The figure bench/gpu_check.sh reads on a GPU (issue 17: SMPLify's share of a training step), here on the CPU
    at toy sizes: the median SMPLify part over the median step, for fitloop's SMPLify and SPIN's."""
    argv = ["bench", "train-step", "--batch", "4", "--steps", "2", "--backbone", "18", "--img-res", "64", "--model",
            "open-small", "--num-workers", "0", "--workdir", str(tmp_path), "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    for arm in ("fitloop", "spin_smplify"):
        r = record[arm]
        assert r["smplify_share"] == pytest.approx(r["parts_ms"]["smplify"] / r["step_ms"])
        assert 0 < r["smplify_share"] < 1
    # SPIN's 2 x 100 Adam iterations on the full mesh against the fast mode: its share is the larger
    assert record["spin_smplify"]["smplify_share"] > record["fitloop"]["smplify_share"]
    assert record["threads"] == 1


def test_a_kind_named_twice_is_run_once_and_numbers_keep_their_repeats():
    """``--cameras crop,crop`` once ran and recorded its cells twice; ``--dsr 0,10,10`` is three weights."""
    from fitloop.commands.bench import _kinds, _names

    assert _kinds(" crop, real,crop,,") == ("crop", "real")
    assert _names("0,10,10") == ("0", "10", "10")


@pytest.mark.parametrize("argv, message", [
    (["train-step", "--smplify-device", "foo"], "--smplify-device 'foo': not a device torch knows"),
    (["smplifyx", "--reference-people", "0"], "argument --reference-people: must be at least 1, got 0"),
    (["smplifyx", "--people", "0"], "argument --people: must be at least 1, got 0"),
    (["seeding", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["seeding", "--threads", "1,x"], "argument --threads: 'x' is not a whole number"),
    (["seeding", "--people", "1"], "argument --people: must be at least 2, got 1"),
    (["fit3d", "--frames", "2"], "argument --frames: must be at least 3, got 2"),
    (["smplify", "--cases", "0"], "argument --cases: must be at least 1, got 0"),
    (["masks", "--mask-scale", "0"], "argument --mask-scale: must be at least 1, got 0"),
    (["fits-table", "--improved", "2"], "argument --improved: must be a share from 0 to 1, got 2"),
    (["fits-table", "--improved", "nan"], "argument --improved: must be a share from 0 to 1, got nan"),
])
def test_a_bad_value_is_a_usage_error_naming_its_option(argv, message, capsys):
    """Checked where argparse reads them, one option at a time: counts were refused in one message listing every
    value, and a share above 1 ran."""
    with pytest.raises(SystemExit) as exit:
        main(["bench", *argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the usage
    assert last.startswith(f"fitloop bench {argv[0]}: error: ") and message in last and "internal error" not in err


@pytest.mark.parametrize("flag, value, message", [
    ("--img-res", "7", "img_res must be >= 32 px, got 7"),
    ("--backbone", "7", "backbone must be a ResNet depth 18/34/50/101/152, got 7")])
def test_train_step_refuses_what_the_training_config_refuses_before_writing_data(flag, value, message, capsys,
                                                                                 tmp_path):
    """An image size or ResNet depth the training config refuses was an internal error once the benchmark had
    written its shards: now the config is checked first, and its refusal is one line."""
    argv = ["bench", "train-step", "--batch", "2", "--steps", "1", "--skip-baseline", "--workdir", str(tmp_path),
            flag, value]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fitloop: error: bench train-step: invalid training config")
    assert message in err[0] and list(tmp_path.iterdir()) == []   # nothing written


def test_comma_separated_counts_drop_repeats_and_refuse_an_empty_list():
    from fitloop.commands.bench import _counts

    assert _counts(1)(" 2, 1,2,") == (2, 1)
    with pytest.raises(argparse.ArgumentTypeError, match="takes comma-separated whole numbers"):
        _counts(1)(" , ")


def test_shards_refuses_an_unknown_dataset_in_one_line(capsys):
    assert main(["bench", "shards", "--copies", "1", "--repeats", "1", "--datasets", "coco,foo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fitloop: error: --datasets takes some of coco, mpii, lsp, lspet; got 'coco,foo' (foo unknown)"]


@pytest.fixture
def body_model_never_runs(monkeypatch):
    """`bench body-model` whose measurement fails the test: --out must be refused before it."""
    import fitloop.commands.bench as bench

    def measure(args):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(bench, "measure_body_model", measure)


def test_out_is_checked_before_the_benchmark_runs(tmp_path, capsys, body_model_never_runs):
    """`--out DIR` once ran the whole benchmark, then failed to rename DIR.tmp onto the folder: record lost."""
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main(["bench", "body-model", "--out", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fitloop: error: --out {folder}: {folder} is a folder")
    assert f"--out {folder / 'record.json'}" in err[0]
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile" / "r.json", tmp_path / "afile" / "sub" / "r.json"):  # no folder can be made
        assert main(["bench", "body-model", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fitloop: error: ") and "afile" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "outdir"]  # no .tmp left anywhere
    assert not list(folder.iterdir())


def test_loop_says_its_out_is_a_folder():
    """Every other benchmark's --out is the record's file; loop's is the folder of its runs: the help says so."""
    loop = _options(_benchmarks()["loop"])["--out"]
    assert loop.metavar == "DIR" and "folder" in loop.help and "not the record's file" in loop.help
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    assert "(loop: --out DIR" in " ".join(bench.description.split())


def test_a_poses_file_that_is_no_npz_says_what_it_must_be(tmp_path):
    """`--poses notes.json` showed numpy's advice to load it with allow_pickle."""
    from bench.smplify_cases import BenchCaseError, load_pose_file

    notes = tmp_path / "notes.json"
    notes.write_text('{"poses": []}')
    with pytest.raises(BenchCaseError) as err:
        load_pose_file(notes)
    text = str(err.value)
    assert text.startswith(f"{notes}: not a readable .npz of poses (it is neither a .npz nor a .npy file)")
    assert "`poses` (N, W) axis-angle, W = 72 (SMPL), 156 (SMPL-H) or 165 (SMPL-X)" in text
    assert "allow_pickle" not in text and "pickle.load" not in text
    import numpy as np

    np.savez(tmp_path / "objects.npz", poses=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BenchCaseError, match=r"holds Python objects, which are never unpickled") as err:
        load_pose_file(tmp_path / "objects.npz")
    assert "allow_pickle" not in str(err.value)
