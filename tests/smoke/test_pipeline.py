"""``clipforge-pipeline`` end to end on tiny models: every step's outputs, lineage joined by key, the comparison
with chance levels, skipping of finished steps, reruns of only the changed step and those after it, and one clear
line for a failing step."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from clipforge.pipeline.compare import chance_levels
from clipforge.pipeline.run import run_pipeline
from clipforge.pipeline.steps import plan_jobs
from clipforge.utils.hydra import compose, job_config
from tests.helpers.tiny_pipeline import (
    N_IMAGES,
    pipeline_command,
    pipeline_env,
    read_lines,
    tiny_overrides,
    tiny_source,
)

ARMS = ["raw", "recap", "enhanced", "llm2clip"]


def _cfg(source: Path, logs: Path, *extra: str):
    cfg = compose(
        tiny_overrides(source, logs, *extra), "pipeline", output_dir=str(logs / "pipeline" / "tiny")
    )
    return job_config(cfg)


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())["steps"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    source = tiny_source(root / "src")
    logs = root / "logs"
    run_pipeline(_cfg(source, logs))
    return source, logs, logs / "pipeline" / "tiny"


def test_every_step_writes_its_outputs(tiny_run):
    _, _, run = tiny_run
    state = _state(run)
    assert all(s["status"] == "done" for s in state.values()), state
    jobs = json.loads((run / "pipeline.json").read_text())["steps"]
    expected = ["recap", "enhance/align", "enhance/train", "enhance/score", "llm2clip/embed"]
    expected += [f"llm2clip/fold{f}_s0" for f in (0, 1)]
    expected += [f"train/{a}/fold{f}_s0" for a in ("raw", "recap", "enhanced") for f in (0, 1)]
    assert jobs == [*expected, "eval", "report"] and list(state) == jobs
    for name in (
        "lineage.jsonl",
        "lineage.parquet",
        "comparison.json",
        "retrieval_examples.json",
        "report.html",
    ):
        assert (run / name).exists(), name
    assert state["recap"]["rows"] == N_IMAGES and state["enhance/score"]["rows"] == N_IMAGES
    # each job leaves the standalone command that reproduces it
    command = (run / "steps" / "train" / "recap" / "fold1_s0" / "command.sh").read_text()
    assert command.startswith("clipforge train experiment=recap_clip debug=tiny_clip ")
    assert "++data.train.num_folds=2" in command and "++data.train.fold=1" in command


def test_lineage_joins_every_step_by_key(tiny_run):
    source, _, run = tiny_run
    lineage = read_lines(run / "lineage.jsonl")
    src = read_lines(source)
    assert [r["key"] for r in lineage] == [r["key"] for r in src]
    table = {r["key"]: r for r in read_lines(run / "steps" / "recap" / "predictions.jsonl")}
    enhanced = read_lines(run / "steps" / "enhance_score" / "enhanced.jsonl")
    for row, raw in zip(lineage, src):
        assert row["raw_captions"] == raw["captions"] and row["image"] == raw["image"]
        assert row["fold"] in (0, 1)
        (recap,) = row["recap"]
        assert recap["captioner"] == "label_llm" and recap["sheared"] == table[row["key"]]["label_llm"]
        assert recap["raw"] == table[row["key"]]["label_llm_raw"]
        # every raw caption and the sheared extended caption were scored, each with its source
        assert [p["caption"] for p in row["scored"]] == [*raw["captions"], recap["sheared"]]
        assert [p["source"] for p in row["scored"]] == ["raw"] * 3 + ["label_llm"]
        mine = [r for r in enhanced if r["key"] == row["key"]]
        assert [c["caption"] for c in row["final_captions"]] == [r["caption"] for r in mine]
    assert sum(len(r["final_captions"]) for r in lineage) == len(enhanced)


def test_comparison_has_every_arm_on_the_same_splits_with_chance(tiny_run):
    source, _, run = tiny_run
    comparison = json.loads((run / "comparison.json").read_text())
    assert list(comparison["arms"]) == ARMS and comparison["folds"] == 2
    sizes = None
    for arm, stats in comparison["arms"].items():
        runs = stats["runs"]
        assert [(r["fold"], r["seed"]) for r in runs] == [(0, 0), (1, 0)], arm
        mine = [r["n_images"] for r in runs]
        assert sizes is None or mine == sizes  # every arm scored on the same held-out images
        sizes = mine
        values = [r["metrics"]["t2i_R@1"] for r in runs]
        assert stats["mean"]["t2i_R@1"] == pytest.approx(sum(values) / 2)
    assert sum(sizes) == N_IMAGES  # two folds: every image held out exactly once
    lineage = read_lines(run / "lineage.jsonl")
    for fold, level in enumerate(comparison["chance"]["per_split"]):
        n = sum(r["fold"] == fold for r in lineage)
        assert level["n_images"] == n and level["n_captions"] == 3 * n
        # hand-computed: one of an image's 3 captions among 3n in the top 1 / top 5
        assert level["i2t_R@1"] == pytest.approx(100 * 3 / (3 * n))
        assert level["i2t_R@5"] == pytest.approx(100 * (1 - math.comb(3 * n - 3, 5) / math.comb(3 * n, 5)))
        assert level["t2i_R@1"] == pytest.approx(100 / n)
        assert level == {"n_images": n, "n_captions": 3 * n, **chance_levels([3] * n)}
    examples = json.loads((run / "retrieval_examples.json").read_text())
    assert list(examples) == ARMS and all(len(v) == 3 for v in examples.values())


def test_rerun_skips_finished_steps(tiny_run):
    source, logs, run = tiny_run
    before = _state(run)
    run_pipeline(_cfg(source, logs))
    after = _state(run)
    assert {k: v["finished"] for k, v in after.items()} == {k: v["finished"] for k, v in before.items()}


def test_changing_one_step_reruns_it_and_what_reads_it(tiny_run):
    source, logs, run = tiny_run

    def hashes(*extra):
        cfg = _cfg(source, logs, *extra)
        out: dict[str, str] = {}
        for job in plan_jobs(cfg, str(run)).jobs:
            out[job.name] = job.config_hash(out)
        return out

    base = {k: v["hash"] for k, v in _state(run).items() if "/" in k or k == "recap"}
    assert hashes() == base
    recap_changed = hashes("pipeline.recap.overrides=['debug=tiny_recap_label_llm','model.shear.unit=words']")
    changed = {k for k in base if recap_changed[k] != base[k]}
    # recap and everything that reads its table; the enhancer's training and the raw arm read the source only
    assert changed == {k for k in base if not k.startswith(("enhance/align", "enhance/train", "train/raw"))}

    before = _state(run)
    run_pipeline(_cfg(source, logs, "pipeline.train.overrides=['debug=tiny_clip','model.embed_dim=8']"))
    after = _state(run)
    rerun = {k for k in after if after[k]["finished"] != before[k]["finished"]}
    assert rerun == {k for k in after if k.startswith("train/")} | {"eval", "report"}


def test_a_failing_step_is_one_line_and_keeps_finished_steps(tiny_run, tmp_path):
    source, _, _ = tiny_run
    logs = tmp_path / "logs"
    bad = "pipeline.train.overrides=['debug=tiny_clip','data.batch_size=-4']"
    steps = "pipeline.steps=[train,eval]"
    proc = subprocess.run(
        pipeline_command(*tiny_overrides(source, logs, steps, "pipeline.arms=[raw]", bad)),
        capture_output=True,
        text=True,
        env=pipeline_env(),
        timeout=600,
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: step train/raw/fold0_s0 failed: "), proc.stderr
    assert "Traceback" not in proc.stderr
    state = _state(logs / "pipeline" / "tiny")
    assert state["train/raw/fold0_s0"]["status"] == "failed"


def test_load_pipeline_reads_the_run(tiny_run):
    from clipforge.utils.runs import load_pipeline, read_lineage

    _, _, run = tiny_run
    loaded = load_pipeline(str(run))
    assert list(loaded.lineage["key"]) == [f"k{i}" for i in range(N_IMAGES)]
    assert set(loaded.metrics["arm"]) == set(ARMS)
    (run / "lineage.jsonl").rename(run / "lineage.moved")  # the Parquet copy holds the same rows
    try:
        assert read_lineage(str(run))[0] == read_lines(run / "lineage.moved")
    finally:
        (run / "lineage.moved").rename(run / "lineage.jsonl")
