"""``RowsProgressBar``: the TQDM progress bar of predict jobs, counted in rows instead of batches."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.callbacks import TQDMProgressBar


def predict_rows(trainer, dataloader_idx: int = 0) -> int | None:
    """Rows this process predicts from dataloader ``dataloader_idx``: its sampler's length (``None`` if unsized).

    The datamodule's predict sampler yields this rank's unfinished shards only, so a resumed job counts what is
    left, and every rank its own part.
    """
    loaders = trainer.predict_dataloaders
    loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
    sampler = getattr(loader, "sampler", None)
    try:
        return len(sampler)
    except TypeError:
        return None


class RowsProgressBar(TQDMProgressBar):
    """The predict bar in rows (a row is one image or caption group, bad ones included): its total is the rows
    this process predicts, it advances by each batch's rows (so its rate is rows/s), and it shows the bad rows so
    far.

    Batches of jobs with slow rows (a captioner, an enhancer) take minutes each; counted in batches, the bar sat at
    ``0/1`` meanwhile. A batch without ``key`` (a datamodule that does not say its rows) counts as one row.
    """

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        super().on_predict_epoch_start(trainer, pl_module)
        self._rows = self._errors = 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        bar = self.predict_progress_bar
        bar.unit = "row"
        bar.reset(total=predict_rows(trainer, dataloader_idx))
        bar.set_description(f"{self.predict_description} DataLoader {dataloader_idx}")
        self._rows = self._errors = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(batch, Mapping) and "key" in batch:
            self._rows += len(batch["key"])
            self._errors += len(batch.get("errors", []))
        else:
            self._rows += 1
        bar = self.predict_progress_bar
        if not bar.disable:
            bar.n = self._rows + self._errors  # tqdm's rate is then rows/s
            bar.set_postfix(errors=self._errors)
