"""AtomicCheckpointIO: a checkpoint is replaced in one rename from a temporary file in its own folder."""

from __future__ import annotations

import os

import torch

from clipforge.utils.checkpoint_io import AtomicCheckpointIO


def test_save_replaces_the_file_in_one_rename_from_beside_it(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(3.0)}, path)
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((os.fspath(src), os.fspath(dst)))
        assert torch.load(path, weights_only=True)["w"].tolist() == [
            0.0,
            1.0,
            2.0,
        ]  # old one intact until now
        real_replace(src, dst)

    monkeypatch.setenv(
        "TMPDIR", str(tmp_path / "elsewhere")
    )  # not used: the temporary file sits beside the target
    monkeypatch.setattr(os, "replace", replace)
    io.save_checkpoint({"w": torch.ones(2)}, f"file://{path}")
    assert renames == [(f"{path}.tmp", str(path))]
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(2))
    assert sorted(os.listdir(path.parent)) == ["last.ckpt"]


def test_trainer_of_every_config_uses_it(tmp_path):
    from hydra.utils import instantiate

    from clipforge.utils.hydra import compose

    cfg = compose(["experiment=clip_demo", "debug=tiny_clip"], output_dir=str(tmp_path))
    trainer = instantiate(cfg.trainer, _convert_="all")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
