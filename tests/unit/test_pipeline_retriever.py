"""The job graph of a pipeline with a per-split retriever (``pipeline.recap.retriever``): a retriever and a recap
table per split, every table reader once per split, and no held-out key of a split in what its retriever trains on
or retrieves from (asserted on the composed job configs; nothing is run)."""

from __future__ import annotations

import pytest

from clipforge.data.readers import read_records
from clipforge.data.specs import as_spec
from clipforge.pipeline.steps import plan_jobs
from clipforge.utils.hydra import compose, job_config
from tests.helpers.tiny_pipeline import N_IMAGES, naive_fold, tiny_overrides, tiny_source

RETRIEVER = [
    "pipeline.recap.experiment=recap_retrieval",
    "pipeline.recap.overrides=['debug=tiny_recap_retrieval']",
    "pipeline.recap.retriever.experiment=clip_demo",
    "pipeline.recap.retriever.overrides=['debug=tiny_clip']",
]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("retriever_plan")
    source = tiny_source(root / "src")
    run = root / "logs" / "pipeline" / "tiny"

    def plan(*extra):
        cfg = job_config(
            compose(tiny_overrides(source, root / "logs", *extra), "pipeline", output_dir=str(run))
        )
        return plan_jobs(cfg, str(run))

    return source, run, plan


def keys_of(spec) -> set[str]:
    records, _ = read_records(as_spec({**spec, "text_only": True}), where="test")
    return {r.key for r in records}


def test_job_graph_has_a_retriever_and_a_table_per_split(planned):
    _, run, plan = planned
    p = plan(*RETRIEVER)
    after = {j.name: j.after for j in p.jobs}
    expected = {}
    for s in ("fold0", "fold1"):
        expected |= {
            f"recap/{s}/retriever": [],
            f"recap/{s}": [f"recap/{s}/retriever"],
            f"enhance/score/{s}": ["enhance/train", f"recap/{s}"],
            f"llm2clip/embed/{s}": [f"enhance/score/{s}"],
            f"llm2clip/{s}_s0": [f"enhance/score/{s}", f"llm2clip/embed/{s}"],
            f"train/raw/{s}_s0": [],
            f"train/recap/{s}_s0": [f"recap/{s}"],
            f"train/enhanced/{s}_s0": [f"enhance/score/{s}"],
        }
    expected |= {"enhance/align": [], "enhance/train": ["enhance/align"]}
    assert after == expected
    # every job runs after the jobs it reads
    names = p.names()
    assert all(names.index(a) < names.index(n) for n, deps in after.items() for a in deps)
    assert (p.recap_job, p.score_job, p.captioners) == ("recap/fold0", "enhance/score/fold0", ["retrieval"])
    jobs = {j.name: j for j in p.jobs}
    for s in ("fold0", "fold1"):
        table = str(run / "steps" / "recap" / s / "predictions.jsonl")
        assert p.outputs[f"recap/{s}"]["table"] == table
        score = job_config(jobs[f"enhance/score/{s}"].compose())
        assert score.data.predict.path == table and list(score.data.predict.caption_fields) == [
            "captions",
            "retrieval",
        ]
        arm = job_config(jobs[f"train/recap/{s}_s0"].compose())
        assert arm.recap_table == table and arm.data.train.path == table
        enhanced = str(run / "steps" / "enhance_score" / s / "enhanced.jsonl")
        assert job_config(jobs[f"train/enhanced/{s}_s0"].compose()).data.train.path == enhanced
        embed = job_config(jobs[f"llm2clip/embed/{s}"].compose())
        assert embed.data.predict.path == enhanced


def test_no_held_out_key_in_a_retrievers_training_data_or_datastore(planned):
    source, run, plan = planned
    jobs = {j.name: j for j in plan(*RETRIEVER).jobs}
    all_keys = {f"k{i}" for i in range(N_IMAGES)}
    for fold in (0, 1):
        held_out = {k for k in all_keys if naive_fold(k, 2) == fold}
        assert held_out and held_out != all_keys  # both sides of the split hold images
        retriever = job_config(jobs[f"recap/fold{fold}/retriever"].compose())
        assert retriever.data.train.path == str(source)
        assert keys_of(retriever.data.train) == all_keys - held_out
        assert keys_of(retriever.data.val) == held_out
        # last epoch, no model selection on the held-out images
        assert (
            retriever.callbacks.model_checkpoint is None and retriever.callbacks.last_checkpoint is not None
        )
        assert retriever.trainer.check_val_every_n_epoch > retriever.trainer.max_epochs
        recap = job_config(jobs[f"recap/fold{fold}"].compose())
        captioner = recap.model.captioners.retrieval
        assert captioner.checkpoint == str(run / "steps" / "recap_retriever" / f"fold{fold}")
        assert captioner.clip is None
        own, *others = captioner.datastore
        assert keys_of(own) == all_keys - held_out
        assert [dict(o) for o in others] == [
            {"path": "synthetic", "limit": 12}
        ]  # the captioner's own entries
        assert not keys_of(others[0]) & all_keys
        assert recap.data.predict.path == str(source) and recap.data.predict.split is None  # every image


def test_without_a_retriever_the_jobs_stay_one_table(planned):
    _, _, plan = planned
    names = plan().names()
    expected = ["recap", "enhance/align", "enhance/train", "enhance/score", "llm2clip/embed"]
    expected += [f"llm2clip/fold{f}_s0" for f in (0, 1)]
    expected += [f"train/{a}/fold{f}_s0" for a in ("raw", "recap", "enhanced") for f in (0, 1)]
    assert names == expected


def test_a_retriever_slot_the_experiment_lacks_is_one_clear_error(planned):
    _, _, plan = planned
    with pytest.raises(ValueError, match=r"has no captioner nope; it has \['retrieval'\]"):
        plan(*RETRIEVER, "pipeline.recap.retriever.captioners=[nope]")
