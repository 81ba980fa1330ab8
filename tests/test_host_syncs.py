"""Host syncs: the counter (`core.host_syncs`) sees each kind of read of a tensor's value at its line, and leaves
torch as it found it; `to_host` reads several tensors exactly, with one read; and the training step makes a
constant number of reads, whatever number of loss terms it logs (it read every term once per step before).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from core.host_syncs import count_host_syncs, to_host
from training.losses import betas_loss, example_mean, keypoint_3d_loss, pose_loss
from training.run_log import PARTS
from training.step_stats import StepStats, StepTimer

REPO = Path(__file__).resolve().parents[1]
HERE = "tests/test_host_syncs.py"


def test_each_kind_of_read_is_counted_at_its_line_and_torch_is_restored():
    x = torch.arange(6.0) - 2.5
    before = {name: vars(torch.Tensor).get(name) for name in ("__getitem__", "__bool__", "item")}
    with count_host_syncs(REPO) as seen:
        line = __import__("inspect").currentframe().f_lineno + 1
        float(x.sum()), bool((x > 0).any()), x.tolist(), np.asarray(x), x[x > 0], torch.nonzero(x > 0), x[1:3]
        if x.max() > 0:                 # an implicit bool
            pass
        opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
        opt.param_groups[0]["params"][0].grad = torch.ones(2)
        opt.step()                      # Adam reads its host-side step counter: torch's own, not counted
    kinds = {kind for kind, where in seen.sites if where == f"{HERE}:{line}"}
    assert kinds == {"__float__", "__bool__", "tolist", "__array__", "mask_index", "nonzero"}  # not x[1:3]
    assert seen.sites[("__bool__", f"{HERE}:{line + 1}")] == 1
    assert seen.total == 7 and seen.under("tests") == 7 and seen.under("training") == 0
    assert sum(seen.torch_own.values()) >= 1 and all(k == "item" for k, _ in seen.torch_own)
    assert {name: vars(torch.Tensor).get(name) for name in before} == before
    assert float(x[0]) == -2.5 and seen.total == 7     # after the block nothing is counted
    assert torch.tensor([x[0], x[1]]).tolist() == [-2.5, -1.5]   # and tensors behave as before (not sequences)


def test_to_host_reads_every_dtype_exactly_with_one_read():
    tensors = (torch.randn(3, 4), torch.tensor([True, False, True]), torch.arange(5) * 10**12,
               torch.tensor(2.5, dtype=torch.float64), torch.randn(2, requires_grad=True), torch.zeros(0, 3))
    with count_host_syncs() as seen:
        host = to_host(*tensors)
    assert seen.total == 1
    for t, h in zip(tensors, host):
        assert h.dtype == t.detach().numpy().dtype and h.shape == tuple(t.shape)
        assert np.array_equal(h, t.detach().numpy())


def test_masked_losses_equal_the_selected_mean_and_ignore_what_the_others_hold():
    """The losses select examples with masked sums; they equal the mean over the selected examples, give 0 with
    none, and a NaN held by an unselected example (absent 3D joints, say) reaches neither value nor gradient."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 24, 3, 3, generator=g, requires_grad=True)
    target = torch.randn(5, 24, 3, 3, generator=g)
    valid = torch.tensor([True, False, True, False, False])
    target[1] = float("nan")
    loss = pose_loss(pred, target, valid)
    expected = (pred[valid] - target[valid]).square().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[~valid] == 0).all()
    assert pose_loss(pred, target, torch.zeros(5, dtype=torch.bool)).item() == 0.0
    betas, betas_target = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    torch.testing.assert_close(betas_loss(betas, betas_target, valid),
                               (betas[valid] - betas_target[valid]).square().mean())
    joints, joints_3d = torch.randn(5, 49, 3, generator=g), torch.randn(5, 49, 4, generator=g)
    has_3d = torch.tensor([False, True, True, True, False])
    joints_3d[0] = float("nan")
    got = keypoint_3d_loss(joints, joints_3d, has_3d)
    assert torch.isfinite(got) and got > 0
    torch.testing.assert_close(got, keypoint_3d_loss(joints[has_3d], joints_3d[has_3d],
                                                     torch.ones(3, dtype=torch.bool)))
    torch.testing.assert_close(example_mean(torch.arange(6.0).reshape(3, 2), torch.tensor([True, False, True])),
                               torch.tensor(2.5))


def test_step_stats_are_the_steps_means_read_once():
    stats = StepStats()
    values = [{"pose": torch.tensor(v), "valid": torch.tensor(v / 10), "fits_kept": k} for v, k in ((1.0, 2), (4.0, 3))]
    with count_host_syncs() as seen:
        for v in values:
            stats.add(v)
        row = stats.take()
    assert seen.total == 1                                   # the row's one read, nothing per step
    assert row == pytest.approx({"pose": 2.5, "valid": 0.25, "fits_kept": 2.5})
    assert stats.take() == {}                                # reset


def test_the_step_timer_times_parts_only_when_asked():
    for parts in (False, True):
        timer = StepTimer(torch.device("cpu"), parts=parts)
        for _ in range(2):
            with timer.step():
                for p in PARTS:
                    with timer.part(p):
                        sum(range(1000))
        times = timer.take()
        assert times["step_ms"] > 0
        if parts:
            assert times["step_ms"] == pytest.approx(sum(times[f"{p}_ms"] for p in PARTS))
        else:
            assert all(times[f"{p}_ms"] is None for p in PARTS)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("syncs")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 4, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-wild", "train", 4, openpose=True)],
                           res=32, samples_per_shard=4, seed=5)
    return root / "shards"


def _step_syncs(shards: Path, tmp: Path, counter=count_host_syncs, warmup: int = 0, **changes):
    from bench.train_step import count_step
    from fitting.smplify import SMPLifyConfig
    from training.config import TrainConfig
    from training.loop import resolve

    config = TrainConfig(shards=(str(shards),), fits=str(tmp / "fits"), run_dir=str(tmp / "run"), backbone=18,
                         img_res=32, batch_size=4, steps_per_epoch=2, num_workers=0, body_model="open-small",
                         mix="synth-h36m=0.5;*=0.5", smplify=SMPLifyConfig(body_iterations=2), tensorboard=False,
                         device="cpu", eval_splits=("none",))
    return count_step(resolve(dataclasses.replace(config, **changes)), warmup=warmup, counter=counter)


def test_the_training_steps_host_syncs_do_not_grow_with_its_loss_terms(tiny_shards, tmp_path):
    """The trainer's own code (training/, and the fits rows it builds) reads the device once per step: the fits
    write-back's one transfer; without SMPLify in the loop, not at all. Before, every loss term and every logged
    share was read each step (28 reads with SMPLify, 18 without, for the hmr head's 5 terms), and one term more
    (the shape loss) was one read more."""
    from training.config import LossWeights

    with_fits = _step_syncs(tiny_shards, tmp_path / "a")
    no_fits = _step_syncs(tiny_shards, tmp_path / "b", run_smplify=False)
    more_terms = _step_syncs(tiny_shards, tmp_path / "c", loss=LossWeights(shape=1.0))
    assert with_fits.under("training", "fits") == 1, with_fits.describe()
    assert no_fits.under("training", "fits") == 0, no_fits.describe()
    assert more_terms.under("training", "fits") == with_fits.under("training", "fits"), more_terms.describe()


@pytest.mark.gpu
def test_the_training_step_on_cuda_syncs_once_in_the_trainers_code(tiny_shards, tmp_path):
    """CUDA's own count (sync debug mode: reads, blocking copies either way, synchronize): the trainer's code makes
    one sync per step, the write-back's transfer; its uploads do not wait (``non_blocking``); timing per part is
    off. With SMPLify on the GPU (``smplify_device`` "auto"), what remains is SMPLify's and the body model's."""
    from core.host_syncs import count_cuda_syncs

    syncs = _step_syncs(tiny_shards, tmp_path, counter=count_cuda_syncs, device="cuda", warmup=1)
    print(syncs.describe())
    assert syncs.under("training", "fits") <= 1, syncs.describe()


def test_the_log_line_names_the_parts_only_where_they_were_timed():
    """Without --profile-parts the parts are blank: the line once ended "481 ms/step ( ms)"."""
    from training.run_log import describe_train_row

    row = {"epoch": 0, "step": 6, "loss": 6.03, "fits_updated": 0.5, "step_ms": 481.0}
    assert describe_train_row(row).endswith("fits improved 50%, 481 ms/step")
    timed = describe_train_row({**row, "data_ms": 12.0, "network_ms": 300.0, "smplify_ms": 150.0, "write_back_ms": 19.0})
    assert timed.endswith("481 ms/step (data 12, network 300, smplify 150, write-back 19 ms)")
