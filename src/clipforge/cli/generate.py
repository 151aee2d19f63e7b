"""``clipforge generate``: predict-style jobs (captioning, scoring, embedding caches), resumable.

clipforge generate experiment=clip_demo ckpt_path=<run>/checkpoints/last.ckpt data.predict.path=coco.json
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from clipforge.cli.task import task_wrapper, write_run_files
from clipforge.cli.train import build, weights_only
from clipforge.utils.hydra import CONF_DIR


@task_wrapper
def generate(cfg: DictConfig) -> tuple[dict, dict]:
    """Run ``trainer.predict`` over ``data.predict``; the prediction writer callback writes the outputs."""
    # imported here (they import torch): a bad config is reported before torch and Lightning load
    from clipforge.callbacks.shard_writer import ShardWriter
    from clipforge.utils.checkpoint import refuse_untrusted

    write_run_files(cfg, cfg.paths.output_dir)
    objects = build(cfg)
    trainer = objects["trainer"]
    with refuse_untrusted(cfg.get("ckpt_path")):
        trainer.predict(
            objects["model"],
            datamodule=objects["datamodule"],
            ckpt_path=cfg.get("ckpt_path"),
            return_predictions=False,
            weights_only=weights_only(cfg),
        )
    for (
        callback
    ) in trainer.callbacks:  # every shard already written: no predict loop ran, merge what is there
        if isinstance(callback, ShardWriter) and not callback.merged:
            callback.merge(trainer, objects["model"])
    return {}, objects


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
