"""The demo report's fit errors: fitloop's one fit-vs-truth evaluation against the synthetic truth files."""
import numpy as np
import pytest

from core.errors import FitloopError
from fits.evaluate import EVALUATION
from fits.schema import FitProvenance, fits_batch
from fits.table import FitsTable
from fitting.body_model import load_body_model
from pipelines.report import WHOLEBODY_STARTS, fit_errors_by_version, synthetic_truth, write_report
from pipelines.synthetic.truth import load_truth


@pytest.fixture(scope="module")
def synthetic_lsp(tmp_path_factory):
    from pipelines.synthetic import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth"), SynthConfig.with_people(4, datasets=("lsp",)))["lsp"]


def test_true_fits_measure_zero_and_each_version_is_measured(synthetic_lsp, tmp_path):
    body = load_body_model("open")
    truth = load_truth(synthetic_lsp)
    keys = [str(k) for k in truth.arrays["key"]]
    table = FitsTable.create(tmp_path / "fits")
    off = truth.arrays["pose"].copy()
    off[:, 3:] += 0.2                                                          # every joint 0.2 rad off
    table.append(fits_batch(keys, off, truth.arrays["betas"], FitProvenance("seed", body.model_id, "c", "seed"),
                            loss=np.full(len(keys), 50.0)))
    table.append(fits_batch(keys[:2], truth.arrays["pose"][:2], truth.arrays["betas"][:2],
                            FitProvenance("loop", body.model_id, "c", "loop"), loss=np.full(2, 10.0)))
    table.append(fits_batch(keys, truth.arrays["pose"], truth.arrays["betas"],           # another model's: ignored
                            FitProvenance("x", "smpl:0000000000000001", "c", "seed"), loss=np.full(len(keys), 1.0)))
    rows = fit_errors_by_version(tmp_path / "fits", synthetic_truth([synthetic_lsp], body), body)
    assert [(r["version"], r["fits"], r["with_truth"]) for r in rows] == [(0, 0, 0), (1, 4, 4), (2, 4, 4), (3, 4, 4)]
    assert np.isnan(rows[0]["pa_mpjpe_mm"])
    seed, loop = rows[1], rows[2]
    assert 150 < seed["mpjpe_mm"] < 350 and seed["pa_mpjpe_mm"] < seed["mpjpe_mm"]   # seen 235 / 178 mm
    # the true bodies, posed as the truth is: the two exact fits measure 0, so half the error is left
    assert loop["mpjpe_mm"] == pytest.approx(0.5 * seed["mpjpe_mm"], rel=0.25)
    assert rows[3]["mpjpe_mm"] == pytest.approx(loop["mpjpe_mm"])           # the other model's rows change nothing
    manifest = {"counts": {"read": 4, "written": 4, "rejected": 0}, "shards": [], "by_dataset": {},
                "rejects_by_reason": {}}
    report = write_report(tmp_path, manifest=manifest, seed={"fitted": 4, "appended": 4},
                          train={"run_dir": str(tmp_path / "run")}, fit_errors=rows, pictures={},
                          timings={}, notes=[]).read_text()
    assert EVALUATION in report and body.model_id in report
    assert f"| 2 | 4 | 4 | {loop['pa_mpjpe_mm']:.1f} | {loop['mpjpe_mm']:.1f} |" in report


def test_truth_drawn_with_another_body_model_is_refused(synthetic_lsp):
    with pytest.raises(FitloopError, match="drawn with body model .* report with the model the data was made with"):
        synthetic_truth([synthetic_lsp], load_body_model("open-small"))


@pytest.mark.parametrize("start", ["lifted", "mean"])
def test_the_whole_body_section_says_how_its_fits_started(tmp_path, start):
    """The demo's whole-body record names its fits' start (`fitloop.commands.demo.wholebody_fits`: SMPLify-X lifts
    fits without an estimate by default); the report says it, and counts and errors as given."""
    manifest = {"counts": {"read": 0, "written": 0, "rejected": 0}, "shards": [], "by_dataset": {},
                "rejects_by_reason": {}}
    wholebody = {"rows": [{"dataset": "openpose", "fits": 2, "body_pa_mpjpe_mm": 51.4, "left_hand_pa_mpjpe_mm": 24.9,
                           "right_hand_pa_mpjpe_mm": 19.7, "face_reprojection_px": 0.5}],
                 "fits": 2, "seconds": 0.5, "fits_per_s": 4.0, "start": start, "model_id": "smplx:0000000000000001",
                 "version": 3, "shards": {"path": "wb", "read": 2, "written": 2, "rejected": 0}}
    report = write_report(tmp_path, manifest=manifest, seed={"fitted": 0, "appended": 0},
                          train={"run_dir": str(tmp_path / "run")}, fit_errors=[], pictures={}, timings={}, notes=[],
                          wholebody=wholebody).read_text()
    section = report[report.index("## Whole-body people"):]
    assert WHOLEBODY_STARTS[start] in section and "read 2 = written 2 + rejected 0" in section
    assert "| openpose | 2 | 51.4 | 24.9 | 19.7 | 0.5 |" in section
