"""Every pipeline preset plans and every one of its jobs composes under its primary (nothing is run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class

from clipforge.pipeline.steps import plan_jobs
from clipforge.utils.hydra import CONF_DIR, compose, job_config

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "preset").glob("*.yaml"))


def _plan(preset: str, tmp_path):
    cfg = job_config(compose([f"preset={preset}"], "pipeline", output_dir=str(tmp_path / "run")))
    return cfg, plan_jobs(cfg, str(tmp_path / "run"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_job_of_every_preset_composes(preset, tmp_path):
    cfg, plan = _plan(preset, tmp_path)
    assert plan.jobs and set(plan.arm_runs) == set(cfg.pipeline.arms)
    hashes: dict[str, str] = {}
    for job in plan.jobs:
        composed = job_config(job.compose())
        get_class(composed.model._target_)  # the module class resolves
        hashes[job.name] = job.config_hash(hashes)
    assert len(set(hashes.values())) == len(hashes)  # every job has its own config


def test_paper_preset_is_the_papers_models_under_ddp(tmp_path):
    cfg, plan = _plan("paper", tmp_path)
    jobs = {j.name: job_config(j.compose()) for j in plan.jobs}
    recap = jobs["recap"]
    assert sorted(recap.model.captioners) == ["llava_1_5", "qwen_vl"]
    assert recap.model.captioners.llava_1_5.name_or_path == "llava-hf/llava-1.5-7b-hf"
    assert "enhance/train" not in jobs and jobs["enhance/score"].model.model_path == "HymanH/AITQE"
    s2 = jobs["llm2clip/holdout_s0"]
    assert s2.model.text.name_or_path == "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
    assert s2.model.vision.model_name == "eva02_large_patch14_clip_224"
    assert all(j.trainer.strategy == "ddp" for j in jobs.values())
    assert jobs["train/raw/holdout_s0"].data.train.format == "wds"
    assert cfg.pipeline.launcher == "subprocess"


def test_coco_dev_preset_holds_out_by_key_hash_with_three_seeds(tmp_path):
    cfg, plan = _plan("coco_dev", tmp_path)
    assert [(s.name, seed) for s, seed, _ in plan.arm_runs["raw"]] == [
        ("holdout", 0),
        ("holdout", 1),
        ("holdout", 2),
    ]
    job = job_config(next(j for j in plan.jobs if j.name == "train/enhanced/holdout_s1").compose())
    assert job.data.train.split == "train" and job.data.train.val_fraction == 0.3
    assert job.data.val.split == "val" and job.data.val.path.endswith(
        "coco-dev/annotations/captions_train2017.json"
    )
    assert job.seed == 1
