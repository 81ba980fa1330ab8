"""`fitloop bench loop` (bench/loop.py): SPIN's ablation runs tiny, its record has every arm and epoch, the static
arm fits nothing, and the control arm's fits start from the mean, never from the network."""
from __future__ import annotations

import json
import math

import pytest
import torch

import bench.loop as bench_loop
from bench.loop import ARMS, METRICS, LoopBench
from fitting.smplify import SMPLify
from training.config import TrainConfig

TINY = LoopBench(people=12, held_out=6, epochs=2, batch_size=6, steps_per_epoch=2, smplify_iterations=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny ablation, with every SMPLify call recorded: the arm training when it was made, its start and its
    initial pose and betas."""
    calls: list[dict] = []
    arm = {"now": "seeding"}
    smplify_call, train = SMPLify.__call__, bench_loop.train

    def spy_call(self, keypoints, init_pose, init_betas, init_cam_t, camera_center, *, start, **kwargs):
        calls.append({"arm": arm["now"], "start": start, "pose": init_pose.detach().clone(),
                      "betas": init_betas.detach().clone()})
        return smplify_call(self, keypoints, init_pose, init_betas, init_cam_t, camera_center, start=start, **kwargs)

    def spy_train(config: TrainConfig, **kwargs):
        arm["now"] = config.run_id.removeprefix("ablation-")
        return train(config, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SMPLify, "__call__", spy_call)
        mp.setattr(bench_loop, "train", spy_train)
        out = tmp_path_factory.mktemp("loop")
        record = bench_loop.run(out, TINY)
    return out, record, calls


def test_record_has_every_arm_and_epoch(tiny):
    out, record, _ = tiny
    assert list(record["arms"]) == list(ARMS) == ["static", "loop", "control"]
    for arm, r in record["arms"].items():
        assert [e["epoch"] for e in r["epochs"]] == [0, 1, 2], arm
        assert r["steps"] == TINY.epochs * TINY.steps_per_epoch
        for e in r["epochs"]:
            assert all(math.isfinite(e[m]) and e[m] > 0 for m in METRICS), (arm, e)
            assert e["fits_samples"] == TINY.people and e["net_samples"] == TINY.held_out
    # every arm starts from the same network and the same seed fits
    firsts = [r["epochs"][0] for r in record["arms"].values()]
    assert all(f == firsts[0] for f in firsts[1:])
    # the static arm fits nothing: its fits table stays the seed fits
    static = record["arms"]["static"]["epochs"]
    assert all(e["fits_pa_mpjpe_mm"] == static[0]["fits_pa_mpjpe_mm"] for e in static)
    assert set(record["verdict"]) == {"last_epoch", "loop_minus_static_mm", "loop_minus_control_mm"}
    on_disk = json.loads((out / "loop.json").read_text())
    assert on_disk["arms"].keys() == record["arms"].keys()
    assert (out / "loop.png").stat().st_size > 10_000
    assert "| control | 2 |" in (out / "loop.md").read_text()


def test_control_refits_from_the_mean_start_not_the_network(tiny):
    _, _, calls = tiny
    by_arm = {name: [c for c in calls if c["arm"] == name] for name in ("seeding", *ARMS)}
    assert not by_arm["static"]                                   # no fitting in the loop
    steps = TINY.epochs * TINY.steps_per_epoch
    for name in ("loop", "control"):
        assert len(by_arm[name]) == steps, name                   # one SMPLify call per step: the same budget
    mean_orient = torch.tensor([math.pi, 0.0, 0.0])
    for call in by_arm["control"]:
        assert call["start"] == "mean"
        assert torch.allclose(call["pose"][:, :3], mean_orient.expand_as(call["pose"][:, :3]))
        assert not call["pose"][:, 3:].any() and not call["betas"].any()
    # the loop arm (the same code path but for the start) starts from the network: what the control must not do
    for call in by_arm["loop"]:
        assert call["start"] == "estimate"
        assert (call["pose"][:, 3:].abs().amax(1) > 1e-3).all()


def test_loop_start_is_checked():
    with pytest.raises(ValueError, match="loop_start must be one of network/mean"):
        TrainConfig(shards=("s",), fits="f", loop_start="network-ish").validated()


def test_conclusion_states_the_numbers_and_the_demo_report_shows_them(tiny, tmp_path):
    from pipelines.report import write_report

    out, record, _ = tiny
    lines = bench_loop.conclusion(record)
    last = record["verdict"]["last_epoch"]
    for metric, line in (("fits_pa_mpjpe_mm", lines[0]), ("net_pa_mpjpe_mm", lines[1])):
        for other in ("static", "control"):
            diff = last["loop"][metric] - last[other][metric]
            word = "beats" if diff < 0 else "does not beat"
            assert f"{word} {other} ({last['loop'][metric]:.1f} vs {last[other][metric]:.1f} mm, {diff:+.1f} mm)" \
                in line, (metric, other, line)
    manifest = {"counts": {"read": 1, "written": 1, "rejected": 0}, "shards": [], "by_dataset": {},
                "rejects_by_reason": {}}
    report = write_report(tmp_path, manifest=manifest, seed={"fitted": 1, "appended": 1},
                          train={"run_dir": str(tmp_path / "run")}, fit_errors=[], pictures={}, timings={},
                          notes=[], ablation={"conclusion": lines, "table": bench_loop.table(record),
                                              "picture": "ablation/loop.png", "cpu_s": 1.0}).read_text()
    assert "## SPIN's ablation" in report and lines[0] in report and "![SPIN's ablation](ablation/loop.png)" in report
    assert "| control | 2 |" in report  # the table's last arm and epoch
