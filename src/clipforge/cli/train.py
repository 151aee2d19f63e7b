"""``clipforge train``: fit a LightningModule on a datamodule, then evaluate the best checkpoint.

clipforge train                                   # experiment=clip_demo on the embedded demo photos
clipforge train experiment=clip_demo data.train.path=coco.json data.train.image_root=images/
clipforge train -m 'model/loss=clip,siglip' seed=0,1
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clipforge.cli.task import (
    flat_metrics,
    log_hyperparameters,
    print_metrics,
    task_wrapper,
    write_metrics,
    write_run_files,
)
from clipforge.utils.hydra import CONF_DIR, instantiate_dict

log = logging.getLogger("clipforge")


def build(cfg: DictConfig) -> dict:
    """Instantiate datamodule, model, callbacks, loggers and trainer from a composed config.

    The callbacks of ``cfg.callbacks`` come first, then the ones every run has
    (:mod:`clipforge.callbacks.checkpoint`: plain hyper-parameters, metrics in checkpoints).
    """
    import lightning as L  # here, not at import: a bad config is reported before Lightning loads (seconds)

    from clipforge.callbacks.checkpoint import MetricsState, PlainHyperparameters
    from clipforge.utils import quiet

    quiet.install(
        transformers=True
    )  # Lightning is imported now; weight-loading bars off before a model loads

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    plain = PlainHyperparameters(
        OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.data, resolve=True)
    )
    callbacks = [*instantiate_dict(cfg.get("callbacks"), "callback"), plain, MetricsState()]
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    return {
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def weights_only(cfg: DictConfig) -> bool:
    """How the job loads checkpoints: ``weights_only=True`` unless ``trust_checkpoint`` (or the environment, see
    :mod:`clipforge.utils.checkpoint`) opts in to unrestricted unpickling."""
    from clipforge.utils.checkpoint import trusts_checkpoints

    return not trusts_checkpoints(cfg.get("trust_checkpoint"))


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit, then validate (or test, when ``data.test`` is set) the best checkpoint; write ``metrics.json``."""
    # imported here (they import torch): a bad config is reported before torch and Lightning load
    from clipforge.callbacks.checkpoint import MetricsState
    from clipforge.utils.checkpoint import refuse_untrusted

    out_dir = cfg.paths.output_dir
    write_run_files(cfg, out_dir)
    objects = build(cfg)
    model, datamodule, trainer = objects["model"], objects["datamodule"], objects["trainer"]
    log_hyperparameters(trainer, cfg)
    with refuse_untrusted(cfg.get("ckpt_path")):
        trainer.fit(
            model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=weights_only(cfg)
        )
    # a resumed run logs only what it trained: the checkpoint's metrics (a finished run's, all) fill in the rest
    state = next(c for c in trainer.callbacks if isinstance(c, MetricsState))
    metrics = {**state.restored, **flat_metrics(trainer.callback_metrics)}
    if cfg.get("evaluate", True) and not trainer.fast_dev_run:
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        stage = "test" if getattr(datamodule, "has_test", False) else "validate"
        log.info("evaluating %s (%s)", ckpt or "the final weights", stage)
        with refuse_untrusted(ckpt):
            results = getattr(trainer, stage)(
                model,
                datamodule=datamodule,
                ckpt_path=ckpt or None,
                weights_only=weights_only(cfg),
                verbose=False,  # the final table below is the one printed
            )
        for r in results:
            metrics.update(flat_metrics(r))
    if trainer.is_global_zero:
        write_metrics(metrics, out_dir)
        print_metrics(metrics, f"final metrics ({out_dir})", patterns=("retrieval/", "zeroshot/", "lm_loss"))
    return metrics, objects


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
