"""``clipforge eval``: evaluate a checkpoint on any dataset the data layer reads.

    clipforge eval experiment=clip_demo ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt \\
        data.val.path=coco_val.json data.val.image_root=images/

Caption retrieval accuracy of a text encoder is ``clipforge cra`` (:mod:`clipforge.cli.cra`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from clipforge.cli.task import flat_metrics, print_metrics, task_wrapper, write_metrics, write_run_files
from clipforge.cli.train import build, weights_only
from clipforge.utils.hydra import CONF_DIR


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Validate (or test, when ``data.test`` is set) ``cfg.ckpt_path``; write ``metrics.json``."""
    # imported here (they import torch): a bad config is reported before torch and Lightning load
    from clipforge.utils.checkpoint import refuse_untrusted

    write_run_files(cfg, cfg.paths.output_dir)
    objects = build(cfg)
    trainer, model, datamodule = objects["trainer"], objects["model"], objects["datamodule"]
    stage = "test" if getattr(datamodule, "has_test", False) else "validate"
    metrics: dict[str, float] = {}
    with refuse_untrusted(cfg.ckpt_path):
        results = getattr(trainer, stage)(
            model,
            datamodule=datamodule,
            ckpt_path=cfg.ckpt_path,
            weights_only=weights_only(cfg),
            verbose=False,  # the table below is the one printed
        )
    for r in results:
        metrics.update(flat_metrics(r))
    if trainer.is_global_zero:
        write_metrics(metrics, cfg.paths.output_dir)
        print_metrics(metrics, f"{stage} metrics ({cfg.ckpt_path})", patterns=("retrieval/", "zeroshot/"))
    return metrics, objects


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
