"""notebooks/02-pipeline.ipynb runs on the fixture pipeline run and prints the arms and the best one."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from tests.helpers.pipeline_run import make_pipeline_run

ROOT = Path(__file__).resolve().parents[2]


def test_notebook_runs_on_a_pipeline_run(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    run_dir = make_pipeline_run(tmp_path)
    comparison = json.loads((run_dir / "comparison.json").read_text())
    rsum = {a: [r["metrics"]["rsum"] for r in v["runs"]] for a, v in comparison["arms"].items()}
    best = max(rsum, key=lambda a: statistics.fmean(rsum[a]))
    chance = comparison["chance"]["mean"]["rsum"]

    nb = nbformat.read(ROOT / "notebooks" / "02-pipeline.ipynb", as_version=4)
    os.environ["CLIPFORGE_PIPELINE_RUN"] = str(run_dir)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["CLIPFORGE_PIPELINE_RUN"]
    shown = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "arms: raw, recap, enhanced, llm2clip\n" in shown
    line = (
        f"best arm by mean rsum: {best} ({statistics.fmean(rsum[best]):.2f} ± {statistics.stdev(rsum[best]):.2f}, "
        f"chance {chance:.2f})\n"
    )
    assert line in shown
    scored = [
        s for r in map(json.loads, (run_dir / "lineage.jsonl").read_text().splitlines()) for s in r["scored"]
    ]
    before = [s["overall"] for s in scored if s["overall"] is not None]
    after = [s["final_overall"] for s in scored if s["action"] != "drop" and s["final_overall"] is not None]
    assert f"mean score before {statistics.fmean(before):.2f}, after {statistics.fmean(after):.2f}\n" in shown
    for name in ("pipeline_comparison.png", "pipeline_scores.png"):
        assert (run_dir / name).stat().st_size > 1000
        assert str(run_dir / name) in shown
