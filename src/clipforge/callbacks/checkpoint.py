"""What the entry points add to every checkpoint, whatever the callbacks config says.

- :class:`PlainHyperparameters`: hyper-parameters as plain config, so that every checkpoint loads with
  ``torch.load(weights_only=True)`` (see :mod:`clipforge.utils.checkpoint`).
- :class:`MetricsState`: the latest logged metrics, so that a run resumed with nothing left to train (killed
  after its final epoch, e.g. during the final evaluation) still reports its training metrics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from clipforge.utils.checkpoint import plain_hyperparameters
from clipforge.utils.metrics import flat_metrics

__all__ = ["MetricsState", "PlainHyperparameters"]


class PlainHyperparameters(Callback):
    """Store the module's and the datamodule's hyper-parameters as plain data in every checkpoint.

    Lightning saves ``save_hyperparameters()`` as given: tower specs, a loss module, optimizer builders, dataset
    specs, all pickled objects that only ``weights_only=False`` reads back. This replaces them, before the file is
    written, by the job's resolved configs when given (the entry points pass ``cfg.model`` and ``cfg.data``), else
    by :func:`~clipforge.utils.checkpoint.plain_data` of what was saved.

    Args:
        model: plain config of the module (``_target_`` and its arguments).
        datamodule: plain config of the datamodule.
    """

    def __init__(self, model: dict | None = None, datamodule: dict | None = None) -> None:
        self.model, self.datamodule = model, datamodule

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        plain_hyperparameters(checkpoint, self.model, self.datamodule)


class MetricsState(Callback):
    """Keep ``trainer.callback_metrics`` (scalars, as floats) in each checkpoint; restore them on resume.

    ``restored`` holds the metrics of the checkpoint a run resumed from (empty otherwise); ``clipforge train``
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
