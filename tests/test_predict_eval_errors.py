"""`fitloop predict` and `fitloop eval` on bad input: one line naming what is wrong and what to do, exit 1 (argparse's
usage error, exit 2, for a count below its minimum); never a traceback, never a result made of nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.devices import parse_device
from core.errors import FitloopError
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from pipelines.adapters import iter_dataset
from pipelines.synthetic import SynthConfig, generate
from shards.writer import ShardConfig, write_shards
from tests.test_predict import checkpoint
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.heads import head_of
from training.regressor import mean_params_from_prior


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """An hmr checkpoint (open-small), a 212 x 205 image, and Human3.6M shards: S1 (train) and S9 (test)."""
    root = tmp_path_factory.mktemp("errors")
    Image.fromarray(np.full((205, 212, 3), 90, np.uint8)).save(root / "a.jpg")
    data = generate(root / "data", SynthConfig(seed=2, datasets=("h36m",), h36m_subjects=("S1", "S9"),
                                               h36m_actions=("Walking",), h36m_frames=5, h36m_frame_step=5,
                                               h36m_image_size=(96, 96)))["h36m"]
    write_shards([r for split in ("train", "test") for r in iter_dataset("h36m", data, split)], root / "shards",
                 ShardConfig(crop_res=64))
    return {"checkpoint": checkpoint(root, "hmr"), "image": root / "a.jpg", "shards": root / "shards"}


def refused(capsys, argv: list[str], status: int = 1) -> str:
    """The one error line of a refused command (its exit status checked, no traceback)."""
    if status == 2:   # argparse's usage error
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    else:
        assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err.strip().splitlines()[-1]


def test_a_device_torch_cannot_use_is_refused_by_name(made, capsys, monkeypatch):
    predict = ["predict", str(made["image"]), "--checkpoint", str(made["checkpoint"]), "--bbox", "10,10,50,80"]
    evaluate = ["eval", str(made["checkpoint"]), "--shards", str(made["shards"])]
    for argv in (predict, evaluate):
        line = refused(capsys, argv + ["--device", "bogus"])
        assert line == "fitloop: error: --device 'bogus': not a device torch knows; pass cpu, cuda, cuda:N or mps"
        assert "computes on cpu, cuda, mps or xpu, not on 'meta'" in refused(capsys, argv + ["--device", "meta"])
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert "this torch" in refused(capsys, predict + ["--device", "cuda"])
    assert "is built without CUDA; pass --device cpu" in refused(capsys, evaluate + ["--device", "cuda"])
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: this machine has no cuda device torch can use" in refused(
        capsys, evaluate + ["--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "--device cuda:3: this machine has 2 cuda device(s), cuda:0 to cuda:1" in refused(
        capsys, predict + ["--device", "cuda:3"])
    assert parse_device("cuda:1", "--smplify-device") == torch.device("cuda", 1)
    monkeypatch.undo()
    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(FitloopError, match="--smplify-device 'cuda:x'"):
        parse_device("cuda:x", "--smplify-device")


def test_predict_refuses_a_box_that_is_not_finite_or_misses_the_image(made, capsys, tmp_path):
    argv = ["predict", str(made["image"]), "--checkpoint", str(made["checkpoint"]), "--out", str(tmp_path / "o")]
    for box in ("nan,1,5,5", "10,10,inf,5"):
        assert refused(capsys, argv + ["--bbox", box]) == (f"fitloop: error: --bbox takes four finite numbers "
                                                           f"X,Y,W,H in px, got '{box}'")
    for box in ("5000,5000,50,100", "-500,-500,50,50", "212,0,40,40"):
        line = refused(capsys, argv + [f"--bbox={box}"])
        assert f"--bbox {box}: the box" in line and "lies outside the 212 x 205 px image" in line, line
    line = refused(capsys, argv + ["--bbox", "10,10,0.001,0.001"])
    assert "a box of 0.001 x 0.001 px, under 1 px, holds no person in the 212 x 205 px image" in line
    assert not (tmp_path / "o").exists()
    assert main(argv + ["--bbox", "200,190,50,50"]) == 0   # a box partly inside is the user's to choose
    assert (tmp_path / "o" / "a.png").is_file()


def test_predict_refuses_keypoints_that_span_no_box_and_a_negative_person(made, capsys, tmp_path):
    def keypoints(*points: tuple[float, float, float]) -> str:
        body25 = np.zeros((25, 3))
        body25[:len(points)] = points
        path = tmp_path / "k.json"
        path.write_text(json.dumps({"people": [{"pose_keypoints_2d": body25.reshape(-1).tolist()}]}))
        return str(path)

    argv = ["predict", str(made["image"]), "--checkpoint", str(made["checkpoint"]), "--out", str(tmp_path / "o")]
    line = refused(capsys, argv + ["--keypoints", keypoints((50, 60, 0.9))])
    assert line == (f"fitloop: error: --keypoints {tmp_path / 'k.json'}: person 0's keypoints span no box: 1 "
                    f"confident keypoint(s), all within 1 px of (50, 60); pass a file with the person's keypoints, "
                    f"or --bbox")
    line = refused(capsys, argv + ["--keypoints", keypoints((900, 60, 1), (950, 160, 1))])
    assert "person 0's keypoints: the box x 900 to 950, y 60 to 160 px lies outside the 212 x 205 px image" in line
    assert "not finite" in refused(capsys, argv + ["--keypoints", keypoints((10, 10, 1), (float("nan"), 5, 1))])
    line = refused(capsys, argv + ["--keypoints", keypoints((10, 10, 1), (50, 90, 1)), "--person", "-1"], 2)
    assert line.endswith("error: argument --person: must be at least 0, got -1")


def test_eval_refuses_max_samples_below_one(made, capsys):
    for value in ("0", "-1"):
        line = refused(capsys, ["eval", str(made["checkpoint"]), "--shards", str(made["shards"]),
                                "--max-samples", value], 2)
        assert line.endswith(f"error: argument --max-samples: must be at least 1, got {value}")


def test_eval_says_what_a_protocol_takes_when_it_keeps_no_sample(made, capsys):
    line = refused(capsys, ["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--protocol",
                            "mpi-inf-3dhp", "--json"])
    assert line.startswith(f"fitloop: error: protocol mpi-inf-3dhp keeps none of the 8 samples of {made['shards']}: "
                           f"it takes dataset mpi-inf-3dhp, split test; the shards hold h36m/test 4 (cameras ")
    assert "subjects S9); h36m/train 4 (cameras " in line and line.endswith("or the --protocol that fits them")
    assert main(["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--protocol", "h36m-p1"]) == 0
    assert "8 samples read, 4 kept by the protocol" in capsys.readouterr().out


def test_eval_names_the_body_model_the_run_used(made, capsys, tmp_path):
    line = refused(capsys, ["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--body-model", "open"])
    assert f"{made['checkpoint']} was trained with body model open-small = open:" in line
    assert line.endswith("leave --body-model out to use the run's (open-small), or pass a file of that model")
    # the run's own model file no longer holds the model it was trained with
    config = TrainConfig(body_model="open-small", backbone=18, img_res=32)
    mean = mean_params_from_prior(MaxMixturePrior.from_file(config.pose_prior), load_body_model("open-small").num_betas)
    moved = save_checkpoint(tmp_path / "run", {"model": head_of("hmr").build(mean, config).state_dict(), "step": 1,
                                               "head": "hmr", "body_model_id": "open:0000000000000000",
                                               "config": config.to_dict()})
    line = refused(capsys, ["eval", str(moved), "--shards", str(made["shards"])])
    assert "trained with body model open-small = open:0000000000000000; open-small is now open:" in line
    assert line.endswith("(the file changed since): pass the model file the run used with --body-model")


def test_eval_that_measures_nothing_is_an_error_not_a_result(made, capsys, monkeypatch):
    """Kept samples without 3D truth printed "none: ..." and exited 0, as if a figure had been made."""
    import training.evaluate

    def no_truth(*args, **kwargs):
        return {"checkpoint": "c.pt", "head": "hmr", "checkpoint_kind": "fitloop", "body_model_id": "open:x",
                "protocol": "held-out", "about": "", "read": 8, "kept": 5, "errors": {}}

    monkeypatch.setattr(training.evaluate, "evaluate_checkpoint", no_truth)
    for extra in ([], ["--json"]):
        line = refused(capsys, ["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), *extra])
        assert line == ("fitloop: error: nothing evaluated: none of the 5 samples protocol held-out keeps (of 8 read) "
                        "has 3D ground truth; pass shards with 3D joints (Human3.6M, MPI-INF-3DHP, or a set written "
                        "with them)")


def test_eval_max_samples_reads_and_counts_the_same_whatever_the_batch_size(made, capsys):
    """--max-samples 3 read 6 samples with --batch-size 2 and every sample without it (the next batch was read before
    the limit stopped it), and the counts said so: now reading stops at the 3rd kept sample with 3D truth."""
    results = []
    for size in ("1", "2", "3", "32"):
        assert main(["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--max-samples", "3",
                     "--batch-size", size, "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert all(r["errors"]["all"]["samples"] == 3 and r["kept"] == 3 for r in results)
    assert len({r["read"] for r in results}) == 1
    for r in results[1:]:   # the same samples (the network's float32 arithmetic depends on the batch)
        assert r["errors"]["all"]["mpjpe_mm"] == pytest.approx(results[0]["errors"]["all"]["mpjpe_mm"], rel=1e-4)
    assert results[0]["stopped_at_max_samples"] and results[0]["read"] <= 8
    assert main(["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--max-samples", "3"]) == 0
    assert "3 kept by the protocol (reading stopped at --max-samples 3" in capsys.readouterr().out
    assert main(["eval", str(made["checkpoint"]), "--shards", str(made["shards"]), "--batch-size", "3", "--json"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert (everything["read"], everything["kept"], everything["stopped_at_max_samples"]) == (8, 4, False)


def test_a_whole_body_checkpoint_is_refused_by_the_command_run(made, capsys, tmp_path):
    """eval on an SMPL-X run's checkpoint said "fitloop predict poses SMPL-family bodies": each command names itself."""
    config = TrainConfig(body_model="open-smplx-small", backbone=18, img_res=32)
    body_id = load_body_model("open-smplx-small").model_id
    ckpt = save_checkpoint(tmp_path / "run", {"model": {}, "step": 1, "head": "hmr", "body_model_id": body_id,
                                              "config": config.to_dict()})
    line = refused(capsys, ["eval", str(ckpt), "--shards", str(made["shards"])])
    assert line.startswith("fitloop: error: fitloop eval evaluates SMPL-family bodies only; open-smplx-small has "
                           "SMPL-X's layout") and "fitloop predict" not in line
    assert "the run's own evaluation (its metrics.csv" in line
    line = refused(capsys, ["predict", str(made["image"]), "--checkpoint", str(ckpt), "--bbox", "10,10,50,80",
                            "--out", str(tmp_path / "o")])
    assert line.startswith("fitloop: error: fitloop predict poses SMPL-family bodies only; open-smplx-small has "
                           "SMPL-X's layout") and line.endswith("predicting with a whole-body regressor is not done")


def test_weights_that_do_not_fit_are_named(made, capsys, tmp_path):
    """A SPIN-layout file of a ResNet-18 network said only "(Error(s) in loading state_dict for Regressor:)": the
    line now names the keys that do not fit and what the file holds, for SPIN's layout and for fitloop's."""
    state = torch.load(made["checkpoint"], weights_only=False)["model"]
    torch.save({"model": state, "optimizer": {}}, tmp_path / "spin_like.pt")
    line = refused(capsys, ["predict", str(made["image"]), "--checkpoint", str(tmp_path / "spin_like.pt"),
                            "--body-model", "open-small", "--bbox", "10,10,50,80", "--out", str(tmp_path / "o")])
    assert line.startswith(f"fitloop: error: {tmp_path / 'spin_like.pt'}: a SPIN-layout checkpoint (a 'model' state "
                           f"dict with HMR's fc1/decpose weights, no fitloop config), so it is loaded as SPIN's "
                           f"released model, the hmr head on a ResNet-50 at 224 px, but its weights are a "
                           f"ResNet-18's and do not fit it: ")
    assert "of another shape (layer1.0.conv1.weight (64, 64, 3, 3) in the file, (64, 64, 1, 1) in the head" in line
    assert "missing (layer1.0.conv3.weight, layer1.0.bn3.weight, layer1.0.bn3.bias and " in line
    assert line.endswith("SPIN's model_checkpoint.pt holds ResNet-50 weights; for a fitloop run's network pass the "
                         "checkpoint the run wrote (RUN/checkpoints/step-*.pt), which carries its config")
    data = torch.load(made["checkpoint"], weights_only=False)
    data["model"]["fc1.weight"] = data["model"]["fc1.weight"][:, :10]
    del data["model"]["decpose.bias"]
    data["model"]["extra.weight"] = torch.zeros(1)
    torch.save(data, tmp_path / "changed.pt")
    line = refused(capsys, ["eval", str(tmp_path / "changed.pt"), "--shards", str(made["shards"])])
    assert line == (f"fitloop: error: {tmp_path / 'changed.pt'}: a fitloop checkpoint whose config builds the hmr head "
                    f"(ResNet-18, 64 px), but its weights do not fit it: 1 of another shape (fc1.weight (1024, 10) in "
                    f"the file, {tuple(state['fc1.weight'].shape)} in the head); 1 missing (decpose.bias); 1 "
                    f"unexpected (extra.weight); the file was changed after the run saved it: pass a checkpoint as "
                    f"the run wrote it")


def test_max_samples_counts_the_samples_with_truth_not_the_batch_positions(monkeypatch):
    """A kept sample without 3D truth ahead of the truth samples in a batch took a place of the limit: the last
    samples with truth fell past it, so --max-samples 3 evaluated 2 at batch size 32 and 3 at batch size 1."""
    import contextlib
    from types import SimpleNamespace

    import training.evaluate as evaluate

    counted: list[str] = []

    class Sums:
        def add(self, datasets, pred, gt):
            counted.extend(datasets)

        def result(self):
            return len(counted)

    monkeypatch.setattr(evaluate, "ErrorSums", SimpleNamespace(empty=Sums))
    monkeypatch.setattr(evaluate, "predict", lambda *args, **kwargs: SimpleNamespace(vertices=None, joints=None))
    monkeypatch.setattr(evaluate, "body_eval_joints", lambda body, vertices, joints: None)
    monkeypatch.setattr(evaluate, "ground_truth_joints",
                        lambda body, joints, has_3d, *rest: (torch.zeros(len(has_3d), 14, 3), has_3d.clone()))
    truth = torch.tensor([False, True, True, True])
    batch = {"joints_3d": torch.zeros(4, 49, 4), "has_joints_3d": truth, "pose": torch.zeros(4, 72),
             "betas": torch.zeros(4, 10), "has_smpl": torch.zeros(4, dtype=torch.bool), "dataset": ["a", "b", "c", "d"]}
    head = SimpleNamespace(arguments=lambda items, device, ok: None)
    evaluate.evaluate_network(torch.nn.Linear(1, 1), None, [batch], torch.device("cpu"), contextlib.nullcontext(), 3,
                              head=head)
    assert counted == ["b", "c", "d"]
