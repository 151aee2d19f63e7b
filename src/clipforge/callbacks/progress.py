"""``RowsProgressBar``: the TQDM progress bar with rows/s and rows done while predicting."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar


class RowsProgressBar(TQDMProgressBar):
    """Adds ``rows``, ``rows/s`` and ``errors`` to the predict bar (a row is one image or caption group)."""

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        super().on_predict_epoch_start(trainer, pl_module)
        self._rows = self._errors = 0
        self._t0 = time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._rows += len(batch.get("key", []))
        self._errors += len(batch.get("errors", []))
        rate = self._rows / max(time.perf_counter() - self._t0, 1e-9)
        self.predict_progress_bar.set_postfix(rows=self._rows, rows_per_s=f"{rate:.1f}", errors=self._errors)
