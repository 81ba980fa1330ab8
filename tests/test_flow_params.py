"""The flows' parameter checks (`pipelines.flow_params`) and the flows' documentation, without Prefect runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.flow_params import FlowParameterError, check_shard_config

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("given, line", [
    (dict(samples_per_shard=0), "samples_per_shard: 0 must be an integer >= 1"),
    (dict(samples_per_shard=-3), "samples_per_shard: -3 must be an integer >= 1"),
    (dict(crop_res=-5), "crop_res: -5 must be an integer >= 8 (the stored crop's side, px)"),
    (dict(crop_res=7), "crop_res: 7 must be an integer >= 8 (the stored crop's side, px)"),
    (dict(crop_margin=0.5), "crop_margin: 0.5 must be a finite number >= 1 (crop side / person box side)"),
    (dict(crop_margin=float("nan")), "crop_margin: nan must be a finite number >= 1 (crop side / person box side)"),
])
def test_a_wrong_shard_setting_is_named_alone(given, line):
    """The preprocess flow has no jpeg_quality: its line once named it beside samples_per_shard ("jpeg_quality must
    be in [1, 100] and samples_per_shard >= 1, got 90, 0")."""
    settings = dict(crop_res=320, crop_margin=1.5, samples_per_shard=1000) | given
    with pytest.raises(FlowParameterError) as error:
        check_shard_config(**settings)
    assert str(error.value) == line
    assert check_shard_config(crop_res=8, crop_margin=1, samples_per_shard=1).samples_per_shard == 1


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_flow_snippet_in_the_docs_runs_as_a_script():
    """Run as a script, a flow with a local Dask cluster starts worker processes that import the script again
    (multiprocessing's spawn): a flow call outside ``if __name__ == "__main__":`` ran again in each of them
    ("Nanny failed to start")."""
    snippets = [block for block in _python_blocks((DOCS / "flows.md").read_text()) if "_flow(" in block]
    assert snippets, "docs/flows.md shows no flow call"
    for block in snippets:
        lines = block.splitlines()
        guard = next((i for i, line in enumerate(lines) if line.startswith('if __name__ == "__main__":')), len(lines))
        calls = [i for i, line in enumerate(lines) if "_flow(" in line and not line.startswith(("from ", "import "))]
        assert calls and all(i > guard and lines[i].startswith("    ") for i in calls), block
