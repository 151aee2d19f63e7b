"""What the entry points add to every checkpoint, whatever the callbacks config says.

- :class:`MetricsState`: the latest logged metrics, so that a run resumed with nothing left to train (killed
  after its final epoch, e.g. during the final evaluation) still reports its training metrics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from clipforge.utils.task import flat_metrics

__all__ = ["MetricsState"]


class MetricsState(Callback):
    """Keep ``trainer.callback_metrics`` (scalars, as floats) in each checkpoint; restore them on resume.

    ``restored`` holds the metrics of the checkpoint a run resumed from (empty otherwise); ``clipforge-train``
    reports them under the ones the resumed fit logs itself. ``last.ckpt`` is written at the end of each training
    epoch (``conf/callbacks/last_checkpoint.yaml``), after the epoch's metrics are reduced, so the restored
    values are those the uninterrupted run reported.
    """

    def __init__(self) -> None:
        self.restored: dict[str, float] = {}
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is None:
            return {}
        return {"metrics": flat_metrics(self._trainer.callback_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict.get("metrics", {}))
