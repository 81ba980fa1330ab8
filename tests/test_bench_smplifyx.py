"""`fitloop bench smplifyx`: one JSON record with both modes on the same people, their ratio and interpenetration."""
import json

import pytest
import torch

from bench.smplifyx import interpenetration, table
from bench.smplifyx_cases import synthetic_people
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.wholebody_model import WholeBodyModel

ERRORS = ("body_pa_mpjpe_mm", "left_hand_pa_mpjpe_mm", "right_hand_pa_mpjpe_mm", "face_reprojection_px")


@pytest.mark.slow
def test_bench_record_compares_both_modes_on_the_same_people(capsys):
    torch.manual_seed(0)
    assert main(["bench", "smplifyx", "--model", "open-smplx-small", "--people", "4", "--reference-people", "1",
                 "--batch", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["people"], record["reference_people"], record["threads"]) == (4, 1, 1)
    for mode in ("fast", "fast_on_reference_people", "reference"):
        assert set(ERRORS) <= set(record[mode])
        # hands curled by up to 1 rad per joint and a 5 px noisy face: a fit recovers them to these bounds
        assert record[mode]["left_hand_pa_mpjpe_mm"] < 40 and record[mode]["right_hand_pa_mpjpe_mm"] < 40
        assert record[mode]["face_reprojection_px"] < 8
    assert record["fast"]["fits"] == 4 and record["reference"]["fits"] == 1
    assert record["speedup"]["fits_per_s"] == pytest.approx(
        record["fast"]["fits_per_s"] / record["reference"]["fits_per_s"])
    assert record["speedup"]["fits_per_s"] > 10  # batched LM against per-person L-BFGS stages
    model = WholeBodyModel(load_body_model("open-smplx-small"))
    people = synthetic_people(model, 4, seed=0)
    assert record["interpenetration"]["truth"] == interpenetration(model, people.full_pose, people.betas,
                                                                   people.expression)
    term = record["interpenetration"]["with_term"]
    for side in ("without", "with"):   # the same people, fitted both ways, each with every figure
        assert set(ERRORS) <= set(term[side]) and term[side]["fits"] == 4
        assert {"share", "share_deeper_10mm", "mean_depth_mm", "fits_per_cpu_s", "capsule_penalty_m2"} <= set(
            term[side])
    # the default's side is the "fast" row's fits (deterministic), the term lowers the capsules' overlap
    assert term[term["default"]]["body_pa_mpjpe_mm"] == record["fast"]["body_pa_mpjpe_mm"]
    assert term["with"]["capsule_penalty_m2"] <= term["without"]["capsule_penalty_m2"]
    assert term["cpu_seconds_ratio"] == pytest.approx(term["with"]["cpu_seconds"] / term["without"]["cpu_seconds"])
    lines = table(record).splitlines()   # the printed table: both of the term's rows after the three modes'
    assert [line.split(" | ")[0] for line in lines[2:7]] == [
        "| fast (all)", "| fast (reference's people)", "| reference", "| fast without the term (all)",
        "| fast with the term (all)"]


def test_bench_refuses_bad_counts(capsys):
    assert main(["bench", "smplifyx", "--people", "2", "--reference-people", "3"]) != 0
    assert "--reference-people in 1..--people" in capsys.readouterr().err
