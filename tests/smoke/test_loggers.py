"""``logger=tensorboard`` / ``logger=wandb`` on a tiny fit, and a logger whose package is absent failing at once."""

from __future__ import annotations

import importlib.util

import pytest

from clipforge.cli.validate import ConfigValueError, validate_config
from clipforge.utils.hydra import compose

TINY = ["experiment=clip_demo", "debug=tiny_clip", "trainer.max_epochs=2", "evaluate=false"]


def test_every_logger_config_has_its_package_installed(tmp_path):
    """What ``make setup`` installs (the dev extra) covers every file of conf/logger: ``logger=many`` validates."""
    cfg = compose([*TINY, "logger=many"], output_dir=str(tmp_path))
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}
    validate_config(cfg, "train")


def test_a_logger_without_its_package_fails_at_composition_with_the_install_line(tmp_path):
    assert importlib.util.find_spec("mlflow") is None  # the dev extra does not install MLflow
    cfg = compose(
        [*TINY, "+logger.mlflow._target_=lightning.pytorch.loggers.MLFlowLogger"], output_dir=str(tmp_path)
    )
    with pytest.raises(ConfigValueError) as e:
        validate_config(cfg, "train")
    assert str(e.value) == (
        "logger.mlflow: MLFlowLogger needs the mlflow package: pip install mlflow "
        "(the dev extra has tensorboard and wandb: make setup)"
    )


def test_tensorboard_logger_writes_the_training_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clipforge.cli.train import train

    cfg = compose([*TINY, "logger=tensorboard", "trainer.log_every_n_steps=1"], output_dir=str(tmp_path))
    _, objects = train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/contrastive_loss" in tags and "val/rsum" in tags
    steps = [e.step for e in events.Scalars("train/contrastive_loss")]
    assert len(steps) == objects["trainer"].global_step == 4  # 2 epochs x 2 batches, one point per step


def test_wandb_offline_run_is_written_under_the_run_folder(tmp_path, monkeypatch):
    from clipforge.cli.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose([*TINY, "logger=wandb"], output_dir=str(tmp_path))
    metrics, _ = train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    [log] = list(runs[0].glob("*.wandb"))
    assert log.stat().st_size > 0
    assert "val/rsum" in metrics
