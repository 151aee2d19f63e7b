"""``PeriodicEval``: the epoch gating every evaluation callback shares (zero-shot, long-caption retrieval).

A subclass implements :meth:`PeriodicEval.evaluate` (metrics of the module now, also usable outside a Trainer)
and names its metric prefix; the base runs it at the end of every ``every_n_epochs``-th validation epoch and at the
last epoch, never during the sanity check, and logs ``<prefix>/<name>/<metric>``.
"""

from __future__ import annotations

import lightning as L

__all__ = ["PeriodicEval"]


class PeriodicEval(L.Callback):
    """Run :meth:`evaluate` at the end of every ``every_n_epochs``-th validation epoch (and always at the last one).

    Epochs count from 1 here: with ``every_n_epochs=2`` and ``max_epochs=5`` the evaluation runs after epochs 2, 4
    and 5; the last epoch is the one that reaches ``max_epochs`` or ``max_steps``. The gate reads the epoch number, so with ``check_val_every_n_epoch`` only epochs that validate and are
    due run it.

    Args:
        name: dataset name in the metric keys.
        every_n_epochs: the period, in training epochs.

    Attributes:
        prefix: metric key prefix of the subclass (``val/zeroshot``, ``val/longtext``).
        last: the metrics of the latest evaluation (empty before the first).
    """

    prefix = "val/eval"

    def __init__(self, name: str, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be a positive integer")
        self.name, self.every_n_epochs = name, every_n_epochs
        self.last: dict[str, float] = {}

    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The metrics of ``pl_module`` now; implemented by each evaluation."""
        raise NotImplementedError

    def due(self, trainer: L.Trainer) -> bool:
        """Whether the validation epoch that just ended is one to evaluate at."""
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch + 1
        # max_epochs=-1 / max_steps=-1 mean "no limit" to Lightning
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        last = last or 0 < trainer.max_steps <= trainer.global_step
        return last or epoch % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer):
            return
        self.last = self.evaluate(pl_module)  # Lightning has put the module in eval mode for validation
        for k, v in self.last.items():
            pl_module.log(f"{self.prefix}/{self.name}/{k}", v)
