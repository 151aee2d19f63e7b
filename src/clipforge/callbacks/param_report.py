"""ParamReport: total / trainable / frozen parameter counts, per top-level child, once the model is built; a warning
for modules that train in eval mode."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger("clipforge")


class ParamReport(L.Callback):
    """Log parameter counts at fit start (after ``configure_model``) — essential when most of an LLM is frozen.

    At train start it also warns when a module in eval mode holds trainable parameters (its dropout or batch norm
    would run as in evaluation while it learns). Frozen towers in eval mode are what clipforge's modules do on
    purpose, so Lightning's own "N module(s) in eval mode" warning, which counts those too, is silenced
    (:mod:`clipforge.utils.quiet`) and this narrower one takes its place.

    Attributes:
        counts: the ``params/...`` counts of the last fit.
        trainable_in_eval: names of the modules in eval mode with trainable parameters at the last train start.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.trainable_in_eval: list[str] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts: dict[str, int] = {}
        for name, child in pl_module.named_children():
            params = list(child.parameters())
            if not params:
                continue
            counts[f"params/{name}/total"] = sum(p.numel() for p in params)
            counts[f"params/{name}/trainable"] = sum(p.numel() for p in params if p.requires_grad)
        allp = list(pl_module.parameters())
        counts["params/total"] = sum(p.numel() for p in allp)
        counts["params/trainable"] = sum(p.numel() for p in allp if p.requires_grad)
        counts["params/frozen"] = counts["params/total"] - counts["params/trainable"]
        self.counts = counts
        log.info(
            "parameters: %s total, %s trainable, %s frozen",
            f"{counts['params/total']:,}",
            f"{counts['params/trainable']:,}",
            f"{counts['params/frozen']:,}",
        )
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in counts.items()}, step=0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainable_in_eval = [
            name or type(pl_module).__name__
            for name, module in pl_module.named_modules()
            if not module.training and any(p.requires_grad for p in module.parameters(recurse=False))
        ]
        if self.trainable_in_eval:
            log.warning(
                "%d module(s) in eval mode hold trainable parameters (dropout / batch norm act as in evaluation): %s",
                len(self.trainable_in_eval),
                ", ".join(self.trainable_in_eval[:5]) + (" ..." if len(self.trainable_in_eval) > 5 else ""),
            )
