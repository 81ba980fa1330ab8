"""Hostile pickles: structure and declared sizes that would hang, crash or exhaust memory (issue 13).

Each file passes the allow-list of `fitting.safe_pickle` (no refused global) and attacks with what its opcodes
describe alone (tests/hostile_pickles.py writes them by hand); `fitloop model info --model FILE` and `fitloop prior
info FILE` must end in one line naming the file and saying it is damaged or hostile. Before the bounds, the billion
laughs ran until killed, the deep tuple key crashed the interpreter (C recursion in hashing), the memo index asked
for a 16 GiB table, the cycle and the deep lists raised RecursionError and the declared shapes MemoryError.

The cases that would hang or crash without the bounds run in a subprocess under a timeout (`faultcheck`), so a
regression fails its case, not the suite; the ones that would fail fast run in this process (`expect_error`).
"""
import hostile_pickles as hp
import pytest
from faultcheck import expect_error, expect_error_in_subprocess

FAULT_CLASS = "hostile pickles (expansion, nesting, declared sizes)"
HOSTILE = "damaged or hostile"

IN_SUBPROCESS = {  # name: (bytes, a fragment of the reason); without the bounds: a hang, a crash or 16 GiB
    "billion-laughs": (hp.billion_laughs(31), "billion laughs"),
    "late-filled-laughs": (hp.late_filled_laughs(35), "billion laughs"),
    "deep-tuple-key": (hp.deep_tuple_key(1_000_000), "more than 100 deep"),
    "huge-memo-index": (hp.huge_memo_index(2**31 - 1), "memo index 2147483647"),
}
IN_PROCESS = {  # without the bounds: RecursionError or MemoryError, at once
    "self-containing-list": (hp.self_containing_list(), "contains itself"),
    "deep-lists": (hp.deep_lists(100_000), "more than 100 deep"),
    "huge-reconstruct": (hp.huge_reconstruct(10**12), "(1000000000000,)"),
    "huge-object-setstate": (hp.huge_object_setstate(10**12), "(1000000000000,)"),
    "direct-ndarray-call": (hp.direct_ndarray_call(10**12), "numpy.ndarray directly"),
    "huge-sparse": (hp.huge_sparse(10**6), "(1000000, 1000000)"),
}


def test_the_billion_laughs_is_a_few_hundred_bytes():
    # as small as the (307 bytes): the bound must come from the structure, not from the file's size
    assert len(IN_SUBPROCESS["billion-laughs"][0]) < 320


@pytest.mark.parametrize("name", sorted(IN_SUBPROCESS))
def test_model_info_refuses_a_pickle_that_would_hang_or_crash(tmp_path, name):
    data, reason = IN_SUBPROCESS[name]
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    expect_error_in_subprocess(["model", "info", "--model", path], str(path), reason, HOSTILE)


@pytest.mark.parametrize("name", sorted(IN_PROCESS))
def test_model_info_refuses_a_pickle_that_would_overflow(tmp_path, capsys, name):
    data, reason = IN_PROCESS[name]
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    expect_error(capsys, ["model", "info", "--model", path], str(path), reason, HOSTILE)


@pytest.mark.parametrize("name", ["deep-lists", "huge-object-setstate"])
def test_prior_info_refuses_a_hostile_pickle(tmp_path, capsys, name):
    data, reason = IN_PROCESS[name]
    path = tmp_path / "gmm_08.pkl"
    path.write_bytes(data)
    expect_error(capsys, ["prior", "info", path], str(path), reason, HOSTILE)
