"""ParamReport: total / trainable / frozen parameter counts, per top-level child, once the model is built."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger("clipforge")


class ParamReport(L.Callback):
    """Log parameter counts at fit start (after ``configure_model``) — essential when most of an LLM is frozen."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

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
