"""Classes that moved between versions: run folders, checkpoints and pipeline hashes written before still work."""

from __future__ import annotations

import importlib

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from clipforge.utils.hydra import compose, job_config
from clipforge.utils.moved import MOVED, first_targets, upgrade_targets

OLD_CLIP = "clipforge.tasks.clip.module.CLIPModule"
NEW_CLIP = "clipforge.tasks.shared.clip.CLIPModule"


def test_upgrade_and_first_names_rewrite_class_paths_only():
    node = {
        "_target_": OLD_CLIP,
        "loss": {"_target_": "clipforge.losses.clip.ClipLoss"},
        "towers": [{"class_path": "clipforge.data.caption_groups.TextBlockDataModule"}],
        "note": OLD_CLIP,  # not a class path key: left as it is
    }
    assert upgrade_targets(node) == {
        "_target_": NEW_CLIP,
        "loss": {"_target_": "clipforge.losses.clip.ClipLoss"},
        "towers": [{"class_path": "clipforge.data.text_blocks.TextBlockDataModule"}],
        "note": OLD_CLIP,
    }
    assert node["_target_"] == OLD_CLIP  # the input is not changed
    assert first_targets(upgrade_targets(node)) == node


def test_every_moved_class_resolves_at_its_new_path_and_not_at_its_old_one():
    for old, new in MOVED.items():
        assert get_class(new).__qualname__ == new.rpartition(".")[2]
        module, _, name = old.rpartition(".")
        try:
            gone = not hasattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            gone = True
        assert gone, f"{old} still imports: no need to list it"


@pytest.fixture(scope="module")
def tiny_clip_cfg(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = job_config(compose(["experiment=clip_demo", "debug=tiny_clip"], output_dir=str(out)))
    assert cfg.model._target_ == NEW_CLIP
    return cfg


def test_a_run_folder_written_before_the_move_still_builds(tiny_clip_cfg, tmp_path):
    from clipforge.utils.runs import load_run

    old = OmegaConf.to_container(tiny_clip_cfg, resolve=True)
    old["model"]["_target_"] = OLD_CLIP
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    run = load_run(str(tmp_path), checkpoint=None)
    assert type(run.model) is get_class(NEW_CLIP)


def test_a_checkpoint_written_before_the_move_names_the_current_classes(tmp_path):
    from clipforge.utils.checkpoint import load_checkpoint

    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": {"_target_": OLD_CLIP, "embed_dim": 8},
            "datamodule_hyper_parameters": {
                "_target_": "clipforge.data.caption_groups.CaptionTripletDataModule"
            },
        },
        path,
    )
    state = load_checkpoint(str(path))
    assert state["hyper_parameters"] == {"_target_": NEW_CLIP, "embed_dim": 8}
    assert (
        state["datamodule_hyper_parameters"]["_target_"]
        == "clipforge.data.caption_triplets.CaptionTripletDataModule"
    )


def test_a_pipeline_job_keeps_its_hash_across_the_move(tmp_path, monkeypatch):
    """The same job composed by a version before the move (old class path) and now: one hash, so a resumed
    pipeline skips the finished job instead of emptying its folder and running it again."""
    from clipforge.pipeline.jobs import Job
    from clipforge.pipeline.steps import plan_jobs

    cfg = job_config(compose(["preset=demo"], "pipeline", output_dir=str(tmp_path / "run")))
    job = next(j for j in plan_jobs(cfg, str(tmp_path / "run")).jobs if j.name.startswith("train/raw/"))
    upstream = dict.fromkeys(job.after, "0" * 64)
    now = job.config_hash(upstream)
    composed = job.compose()
    assert job_config(composed).model._target_ == NEW_CLIP
    before = OmegaConf.create(OmegaConf.to_container(composed))
    before.model._target_ = OLD_CLIP
    monkeypatch.setattr(Job, "compose", lambda self: before)
    assert job.config_hash(upstream) == now
    before.model.embed_dim = before.model.embed_dim + 1  # a real change still changes the hash
    assert job.config_hash(upstream) != now
