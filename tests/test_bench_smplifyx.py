"""`fitloop bench smplifyx`: one JSON record with both modes on the same people, their ratio and interpenetration."""
import json

import pytest
import torch

from bench.smplifyx import interpenetration, table
from bench.smplifyx_cases import bench_people
from core.errors import ModelFileError
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.wholebody_model import WholeBodyModel

ERRORS = ("body_pa_mpjpe_mm", "left_hand_pa_mpjpe_mm", "right_hand_pa_mpjpe_mm", "face_reprojection_px")


@pytest.mark.slow
def test_bench_record_compares_both_modes_on_the_same_people(capsys):
    torch.manual_seed(0)
    assert main(["bench", "smplifyx", "--model", "open-smplx-small", "--split", "dev", "--sources", "lsp,synthetic",
                 "--people", "2", "--reference-people", "1", "--batch", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    sources = record["sources"]  # lsp is skipped with a note where ../shared is absent
    assert (record["people"], record["reference_people"], record["threads"]) == (2 * len(sources), 1, 1)
    assert record["split"] == "dev" and record["reference_origins"][0].startswith(sources[0] + ":")
    assert set(record["fast_wins"]) == set(ERRORS) | {"objective", "of"} and record["fast_wins"]["of"] == 1
    for mode in ("fast", "fast_on_reference_people", "reference"):
        assert set(ERRORS) <= set(record[mode])
        # hands curled by up to 1 rad per joint and a 5 px noisy face: a fit recovers them to these bounds
        assert record[mode]["left_hand_pa_mpjpe_mm"] < 40 and record[mode]["right_hand_pa_mpjpe_mm"] < 40
        assert record[mode]["face_reprojection_px"] < 8
    assert record["fast"]["fits"] == 2 * len(sources) and record["reference"]["fits"] == 1
    assert record["speedup"]["fits_per_s"] == pytest.approx(
        record["fast"]["fits_per_s"] / record["reference"]["fits_per_s"])
    assert record["speedup"]["fits_per_s"] > 10  # batched LM against per-person L-BFGS stages
    model = WholeBodyModel(load_body_model("open-smplx-small"))
    people, _ = bench_people(model, tuple(sources), "dev", 2, seed=0)
    assert record["interpenetration"]["truth"] == interpenetration(model, people.full_pose, people.betas,
                                                                   people.expression)
    term = record["interpenetration"]["with_term"]
    for side in ("without", "with"):   # the same people, fitted both ways, each with every figure
        assert set(ERRORS) <= set(term[side]) and term[side]["fits"] == 2 * len(sources)
        assert {"share", "share_deeper_10mm", "mean_depth_mm", "fits_per_cpu_s", "capsule_penalty_m2"} <= set(
            term[side])
    # the default's side is the "fast" row's fits (deterministic), the term lowers the capsules' overlap
    assert term[term["default"]]["body_pa_mpjpe_mm"] == record["fast"]["body_pa_mpjpe_mm"]
    assert term["with"]["capsule_penalty_m2"] <= term["without"]["capsule_penalty_m2"]
    assert term["cpu_seconds_ratio"] == pytest.approx(term["with"]["cpu_seconds"] / term["without"]["cpu_seconds"])
    rate, claims = record["throughput"], record["must_show"]   # the 2-thread row, every claim from this record
    assert (rate["threads"], rate["batch"]) == (2, min(4, record["people"]))
    assert rate["fits"] == rate["batch"] * (record["people"] // rate["batch"])
    assert rate["fits_per_s"] == pytest.approx(rate["fits"] / rate["seconds"])
    assert claims["errors_at_most_reference"] == {
        e: record["fast_on_reference_people"][e] <= record["reference"][e] for e in ERRORS}
    assert claims["errors_hold"] == all(claims["errors_at_most_reference"].values())
    assert claims["speedup_holds"] == (record["speedup"]["fits_per_s"] >= 100)
    assert claims["throughput_holds"] == (rate["fits_per_s"] >= 20)
    assert torch.get_num_threads() == 1   # the throughput row's threads are the caller's again
    lines = table(record).splitlines()   # the printed table: both of the term's rows after the three modes'
    assert [line.split(" | ")[0] for line in lines[2:7]] == [
        "| fast (all)", "| fast (reference's people)", "| reference", "| fast without the term (all)",
        "| fast with the term (all)"]


def test_bench_refuses_bad_counts(capsys):
    with pytest.raises(SystemExit) as exit:  # a usage error naming the option (tests/test_bench_cli.py)
        main(["bench", "smplifyx", "--people", "0"])
    assert exit.value.code == 2 and "argument --people: must be at least 1, got 0" in capsys.readouterr().err
    # one person per source, three sources: the reference cannot fit four (refused before any fit)
    assert main(["bench", "smplifyx", "--model", "open-smplx-small", "--people", "1", "--reference-people", "4"]) != 0
    assert "--reference-people must be in 1..3" in capsys.readouterr().err


def test_a_mesh_the_check_cannot_measure_is_refused_before_any_fit(monkeypatch):
    """The interpenetration figures need a closed mesh: a model whose faces leave it open once failed with a
    ValueError after minutes of fitting (an internal error); now it is refused first, naming the model file's `f`."""
    import bench.smplifyx as bench

    model = WholeBodyModel(load_body_model("open-smplx-small", dtype=torch.float64))
    model.body.faces = model.body.faces[: len(model.body.faces) // 3]
    monkeypatch.setattr(bench, "bench_people", lambda *a, **k: pytest.fail("people drawn before the mesh check"))
    with pytest.raises(ModelFileError, match="mesh is not closed.*`f`"):
        bench.run(model, people=1, reference_people=1)


def test_body_pose_sources_split_dev_and_test_apart_deterministically():
    """`bench.smplifyx_cases.body_poses`: the same people for the same (seed, source, split, index) whatever the
    count; dev and test never share a CMU subject, an LSP row or a prior sample; SMPL's pose becomes SMPL-X's by
    its first 21 body joints."""
    import numpy as np

    from assets.prior_train import CMU_DEV_SUBJECTS, CMU_TEST_SUBJECTS
    from bench.smplify_cases import LSP_ROWS, available_sources, lsp_pool
    from bench.smplifyx_cases import SOURCES, body_poses

    model = WholeBodyModel(load_body_model("open-smplx-small"))
    sources, _ = available_sources(SOURCES)
    for source in sources:
        dev, test = (body_poses(model, source, split, 6, seed=0) for split in ("dev", "test"))
        again = body_poses(model, source, "dev", 3, seed=0)
        assert again.origin == dev.origin[:3] and np.array_equal(again.body, dev.body[:3])
        assert dev.body.shape == (6, 63) and not set(dev.origin) & set(test.origin)
        assert not np.array_equal(body_poses(model, source, "dev", 6, seed=1).body, dev.body)
        if source == "cmu":  # origin "cmu:<release>/<subject>_<clip>.bvh:<frame>"
            subjects = {split: {int(o.split("/")[1].split("_")[0]) for o in p.origin}
                        for split, p in (("dev", dev), ("test", test))}
            assert subjects["dev"] <= set(CMU_DEV_SUBJECTS) and subjects["test"] <= set(CMU_TEST_SUBJECTS)
        if source == "lsp":
            for split, p in (("dev", dev), ("test", test)):
                rows = [int(o.rsplit(":", 1)[1]) for o in p.origin]
                assert set(rows) <= set(LSP_ROWS[split])
                # SMPL's 72 values -> SMPL-X's body pose: values 3..65 (joints 1-21), the hands dropped
                fits = np.load(lsp_pool.__defaults__[0])
                assert np.allclose(p.body, fits[rows, 3:66])


def test_without_heading_keeps_the_tilt():
    import numpy as np
    from scipy.spatial.transform import Rotation

    from bench.smplifyx_cases import without_heading

    tilt = Rotation.from_euler("x", np.array([[0.3], [-0.2], [0.0]]))   # leaning forward/back, upright
    heading = Rotation.from_euler("y", np.array([[2.0], [-1.0], [3.0]]))
    assert np.allclose(without_heading((heading * tilt).as_rotvec()), tilt.as_rotvec(), atol=1e-9)


def test_bench_people_interleave_sources_and_hands_mirror():
    """The benchmark's people: sources interleaved person by person; the two hands' curl axes are mirror images
    (a left/right sign error in `MANO_CURL_AXIS` or the hand keypoint map would make the hands' errors differ)."""
    from bench.smplifyx_cases import MANO_CURL_AXIS, bench_people
    from core.wholebody import LEFT_HAND_NAMES, RIGHT_HAND_NAMES, wholebody_indices
    from fitting.wholebody_model import POSE_SLICES

    model = WholeBodyModel(load_body_model("open-smplx-small"))
    people, about = bench_people(model, ("lsp", "synthetic"), "dev", 2, seed=0)
    sources = about["sources"]
    assert [o.split(":")[0] for o in people.origin] == [sources[i % len(sources)] for i in range(2 * len(sources))]
    pose = torch.zeros(1, 165)
    for side, sign in (("left_hand_pose", -1.0), ("right_hand_pose", 1.0)):
        hand = torch.zeros(15, 3)
        hand[:, MANO_CURL_AXIS] = sign * 0.8
        pose[:, POSE_SLICES[side]] = hand.reshape(1, 45)
    points = model.forward_full(pose, torch.zeros(1, model.num_betas), torch.zeros(1, model.num_expression)).points[0]
    left, right = points[wholebody_indices(LEFT_HAND_NAMES)], points[wholebody_indices(RIGHT_HAND_NAMES)]
    mirrored = right * torch.tensor([-1.0, 1.0, 1.0])
    # the open model is left/right symmetric (to 0.1 mm): curled hands are mirror images; a sign error is cm
    assert torch.allclose(left, mirrored, atol=2e-4)
    # the generator's hands curl towards the palm (-Y in the T-pose) on both sides: the four fingers' tips drop
    count = len(people.origin)
    flat = torch.zeros(count, 165)
    curled = flat.clone()
    for side in ("left_hand_pose", "right_hand_pose"):
        curled[:, POSE_SLICES[side]] = people.full_pose[:, POSE_SLICES[side]]
    zero_betas, zero_expression = torch.zeros(count, model.num_betas), torch.zeros(count, model.num_expression)
    rest, bent = (model.forward_full(p, zero_betas, zero_expression).points for p in (flat, curled))
    for names in (LEFT_HAND_NAMES, RIGHT_HAND_NAMES):
        tips = wholebody_indices([n for n in names if n.endswith(("index", "middle", "ring", "pinky"))])
        assert len(tips) == 4 and (bent[:, tips, 1] < rest[:, tips, 1] - 0.01).all()
