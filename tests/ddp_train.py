"""Run by tests/test_training_ddp.py under torchrun, once per rank: train the run whose `TrainConfig` is the JSON
file ARGV[1] and write what this rank saw to the folder ARGV[2]: ``rank<R>.json`` (the keys of every batch it
trained on and their augmentation draws, a digest of its model before the first step and of its RNG state there, its summary, and its fits
store's best losses) and ``rank<R>.pt`` (its final parameters; BatchNorm buffers differ after the last step: DDP broadcasts rank 0's at each forward). Not a test module: pytest does not collect it."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

import training.loop as loop
from training.config import TrainConfig


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    out = Path(sys.argv[2])
    seen: dict = {"batches": []}
    step = loop.train_step

    def spy(run, store, items, pos, timer):
        if not seen["batches"]:
            seen["initial_weights"] = _digest(run.raw_model.state_dict().values())
            seen["rng"] = _digest([torch.get_rng_state()])
        seen["batches"].append({"epoch": pos.epoch, "keys": list(items["key"]),
                                "augment": [items[k].tolist() for k in ("scale", "rot", "flip")]})
        seen["run"], seen["store"] = run, store
        return step(run, store, items, pos, timer)

    loop.train_step = spy
    summary = loop.train(config, progress=False)
    run, store = seen.pop("run"), seen.pop("store")
    keys = sorted(store._index)
    _, _, loss, _ = store.lookup(keys)
    torch.save({n: p.detach() for n, p in run.raw_model.named_parameters()}, out / f"rank{run.rank}.pt")
    (out / f"rank{run.rank}.json").write_text(json.dumps({
        **seen, "summary": {k: summary[k] for k in ("rank", "step", "fits_version", "fits_rows_read")},
        "store": dict(zip(keys, loss.tolist())), "store_version": store.version}))


if __name__ == "__main__":
    main()
