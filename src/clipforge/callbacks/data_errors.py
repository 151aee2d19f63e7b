"""DataErrorLog: every rejected row, caption and image of a run as JSON lines, plus per-split counters."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import lightning as L


class DataErrorLog(L.Callback):
    """Write the data errors of a run to ``dirpath/filename`` and log ``{split}/data_errors``.

    Two kinds of errors are recorded: index-time errors of the datamodule (``index_errors_by_split``: malformed
    lines, empty or non-UTF-8 captions, rows without a valid caption...) when it is set up, and ``batch["errors"]``
    (images that failed to load or transform) at the end of every train/val/test/predict batch. Each distinct
    ``(split, key, reason)`` is written once per output folder as ``{"split", "key", "reason"[, "source"]}``, however
    many epochs meet it: a rerun into the same folder (a generation job resumed after a kill, training resumed from
    ``last.ckpt``) first reads the errors already in the file and appends only new ones. With several processes each
    rank writes its own file, ``<stem>.rank{r}<ext>``.
    ``{split}/data_errors`` (train, val, test) is the number of failed rows per epoch (summed over batches).

    Args:
        dirpath: output folder; default ``trainer.log_dir`` or else ``trainer.default_root_dir``.
        filename: file name of the JSON lines.

    Attributes:
        counts: number of distinct errors in the file, per split.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "data_errors.jsonl") -> None:
        self.dirpath, self.filename = dirpath, filename
        self.counts: dict[str, int] = {}
        self.path: str | None = None
        self._seen: set[tuple[str, str, str]] = set()

    def _file(self, trainer: L.Trainer) -> str:
        if self.path is None:
            folder = self.dirpath or getattr(trainer, "log_dir", None) or trainer.default_root_dir
            name = self.filename
            if trainer.world_size > 1:
                stem, ext = os.path.splitext(name)
                name = f"{stem}.rank{trainer.global_rank}{ext}"
            os.makedirs(folder, exist_ok=True)
            self.path = os.path.join(folder, name)
            self._read_existing(self.path)
        return self.path

    def _read_existing(self, path: str) -> None:
        """Mark the errors an earlier run wrote to ``path`` as seen (a line cut by a kill is written again)."""
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        complete, tail = lines[:-1], lines[-1]  # the text after the last newline is a line cut short
        for line in complete:
            try:
                err = json.loads(line)
                ident = (str(err["split"]), str(err["key"]), str(err["reason"]))
            except (ValueError, KeyError, TypeError):
                continue
            if ident not in self._seen:
                self._seen.add(ident)
                self.counts[ident[0]] = self.counts.get(ident[0], 0) + 1
        if tail:  # drop the cut line so that the file stays valid JSON lines
            with open(path, "r+", encoding="utf-8") as f:
                f.truncate(len("\n".join(complete).encode("utf-8")) + (1 if complete else 0))

    def record(self, trainer: L.Trainer, split: str, errors: list[Mapping[str, Any]]) -> int:
        """Append the errors not seen before; returns how many were new."""
        path = self._file(trainer)  # first call: reads what an earlier run into this folder wrote
        lines = []
        for err in errors:
            ident = (split, str(err["key"]), str(err["reason"]))
            if ident in self._seen:
                continue
            self._seen.add(ident)
            self.counts[split] = self.counts.get(split, 0) + 1
            lines.append(
                json.dumps({"split": split, **{k: err[k] for k in ("key", "reason", "source") if k in err}})
            )
        if lines:
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        return len(lines)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        by_split = getattr(trainer.datamodule, "index_errors_by_split", None) or {}
        for split, errors in by_split.items():
            self.record(trainer, split, [e.to_dict() if hasattr(e, "to_dict") else e for e in errors])

    def _on_batch(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, split: str) -> None:
        errors = batch.get("errors") if isinstance(batch, Mapping) else None
        if errors is None:
            return
        self.record(trainer, split, errors)
        if split != "predict":  # Lightning does not allow logging while predicting
            size = max(1, len(batch.get("key", ())))
            pl_module.log(
                f"{split}/data_errors",
                float(len(errors)),
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                batch_size=size,
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._on_batch(trainer, pl_module, batch, "train")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._on_batch(trainer, pl_module, batch, "val")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._on_batch(trainer, pl_module, batch, "test")

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._on_batch(trainer, pl_module, batch, "predict")
