"""``clipforge pipeline preset=tiny`` with a per-split retriever (tiny clip_demo + tiny retrieval captioner): each
split's retriever checkpoint and recap table, rows of every table aligned with the source by key, no retrieved
caption from a held-out key of the split, per-split scoring jobs, and the report over them (llm2clip's per-split
jobs: tests/unit/test_pipeline_retriever.py)."""

from __future__ import annotations

import json

import pytest

from clipforge.pipeline.run import run_pipeline
from clipforge.utils.hydra import compose, job_config
from tests.helpers.tiny_pipeline import N_IMAGES, naive_fold, read_lines, tiny_overrides, tiny_source

SPLITS = ("fold0", "fold1")
ARMS = ["recap", "enhanced"]


@pytest.fixture(scope="module")
def retriever_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_retriever")
    source = tiny_source(root / "src")
    logs = root / "logs"
    overrides = tiny_overrides(
        source,
        logs,
        "pipeline.recap.experiment=recap_retrieval",
        "pipeline.recap.overrides=['debug=tiny_recap_retrieval']",
        "pipeline.recap.retriever.experiment=clip_demo",
        "pipeline.recap.retriever.overrides=['debug=tiny_clip']",
        "pipeline.enhance.align.experiment=null",
        f"pipeline.arms=[{','.join(ARMS)}]",
    )
    run = logs / "pipeline" / "tiny"
    run_pipeline(job_config(compose(overrides, "pipeline", output_dir=str(run))))
    return source, run


def test_each_split_has_its_retriever_and_table_aligned_by_key(retriever_run):
    source, run = retriever_run
    state = json.loads((run / "state.json").read_text())["steps"]
    assert all(s["status"] == "done" for s in state.values()), state
    src_keys = [r["key"] for r in read_lines(source)]
    for split in SPLITS:
        assert (run / "steps" / "recap_retriever" / split / "checkpoints" / "last.ckpt").exists()
        rows = read_lines(run / "steps" / "recap" / split / "predictions.jsonl")
        assert [r["key"] for r in rows] == src_keys and state[f"recap/{split}"]["rows"] == N_IMAGES
        assert all(r["retrieval"] for r in rows)
        scored = read_lines(run / "steps" / "enhance_score" / split / "predictions.jsonl")
        assert [r["key"] for r in scored] == src_keys
    command = (run / "steps" / "recap" / "fold1" / "command.sh").read_text()
    assert (
        "++model.captioners.retrieval.checkpoint=" + str(run / "steps" / "recap_retriever" / "fold1")
        in command
    )


def test_no_caption_of_a_held_out_key_is_retrieved(retriever_run):
    _, run = retriever_run
    all_keys = {f"k{i}" for i in range(N_IMAGES)}
    for fold, split in enumerate(SPLITS):
        held_out = {k for k in all_keys if naive_fold(k, 2) == fold}
        retrieved = set()
        for row in read_lines(run / "steps" / "recap" / split / "predictions.jsonl"):
            keys = row["retrieval_meta"]["params"]["retrieved_keys"]
            assert len(keys) == 4 and row["key"] not in keys
            retrieved |= set(keys)
        assert not retrieved & held_out
        assert retrieved & (all_keys - held_out)  # the split's training captions are in the datastore


def test_lineage_and_report_show_the_first_splits_tables(retriever_run):
    source, run = retriever_run
    table = {r["key"]: r for r in read_lines(run / "steps" / "recap" / "fold0" / "predictions.jsonl")}
    lineage = read_lines(run / "lineage.jsonl")
    assert [r["key"] for r in lineage] == [r["key"] for r in read_lines(source)]
    for row in lineage:
        (recap,) = row["recap"]
        assert recap["captioner"] == "retrieval" and recap["sheared"] == table[row["key"]]["retrieval"]
        assert row["scored"] and row["final_captions"]
    comparison = json.loads((run / "comparison.json").read_text())
    assert list(comparison["arms"]) == ARMS
    assert any("(recap/fold0, enhance/score/fold0)" in n for n in comparison["notes"])
    html = (run / "report.html").read_text()
    # every planned job ran (llm2clip has no job here: it is not among the arms)
    assert (
        "Steps that did not run: llm2clip (not in this pipeline)." in html and "recap/fold1/retriever" in html
    )
