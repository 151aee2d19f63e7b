"""``ShardWriter``: resumable, sharded outputs of every ``clipforge generate`` job (captions, scores, embeddings).

The predict source is cut into input shards of ``data.predict_shard_rows`` consecutive rows
(``shard-00000``, ``shard-00001``, ...); every input shard becomes exactly one output shard file, written to a
temporary name and renamed once all of its rows are in, so a file on disk is always complete. On a rerun into
the same folder, finished shards are skipped (the datamodule leaves their rows out), so a job killed at any point
resumes without losing or duplicating rows. Under DDP each rank takes the disjoint shards ``i % world == rank``.

The shard files themselves (formats, plain-data ``pt`` shards read with ``weights_only=True``, reading a folder
back) are the data layer's: :mod:`clipforge.data.shards`.

A row whose image failed is an error row ``{"key", "error": reason}`` in its shard, so every input row is
accounted for; the merged table holds the good rows, ``errors.jsonl`` the others. ``_plan.json`` records the
shard plan (row keys per shard): resuming into a folder whose plan differs (another input, another shard size)
is refused instead of mixing outputs.

One job at a time: the writer holds the folder's :class:`~clipforge.utils.locks.FolderLock` (``_lock``) from
setup to teardown, so a second live job on the same folder is refused with one line naming the folder and the
holder's pid, while a lock left by a killed job (``kill -9``) is free again and its rerun resumes. Temporary
files carry the writer's pid and a random tag, so no two writers ever share one; the holder of the lock removes
the ones killed writers left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from clipforge.data.records import jsonable
from clipforge.data.shards import FORMATS, read_shards, shard_files, tmp_name, write_shard
from clipforge.utils.locks import FolderLock

log = logging.getLogger("clipforge.generate")


def _write_json(obj: Any, path: str, **kwargs) -> None:
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def _plan_digest(keys: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode("utf-8", "surrogatepass")).hexdigest()


class ShardWriter(BasePredictionWriter):
    """Write ``predict_step`` rows as one atomic output shard per input shard; merge them at the end.

    ``predict_step`` returns ``{"rows": [row, ...]}``: one dict per ``batch["key"]``, in order, each with ``key``.
    At the end (rank 0, once every shard exists) the good rows are merged into ``merge_path`` (JSONL or Parquet by
    extension; not for ``pt``), error rows into ``errors.jsonl`` beside it, and ``summary.json`` gets the row
    counts plus whatever the module's optional ``on_predictions_merged(rows, output_dir) -> dict`` returns.

    Args:
        dirpath: folder of the shards (stable across reruns: that is what makes the job resumable).
        format: ``jsonl``, ``parquet`` or ``pt`` (tensors kept; floating tensors stored as ``dtype``).
        merge_path: merged table path; ``None`` = no merged file.
        dtype: storage dtype of floating tensors with ``format: pt`` (``float16`` halves the size).
    """

    def __init__(
        self, dirpath: str, format: str = "jsonl", merge_path: str | None = None, dtype: str = "float32"
    ) -> None:
        super().__init__(write_interval="batch")
        if format not in FORMATS:
            raise ValueError(f"ShardWriter.format={format!r} is not one of {tuple(FORMATS)}")
        if merge_path and format == "pt":
            raise ValueError(
                "ShardWriter: merge_path needs format jsonl or parquet (pt shards are read as a folder)"
            )
        self.dirpath, self.format, self.merge_path, self.dtype = (
            dirpath,
            format,
            merge_path,
            getattr(torch, dtype),
        )
        self._pending: dict[str, list[dict]] = {}
        self._expected: dict[str, int] = {}
        self._shard_of: dict[str, str] = {}
        self._order: dict[str, int] = {}
        self._lock = FolderLock(dirpath)
        self.rows_written = 0
        self.merged = False  # set by merge(); reset when a predict run is set up

    # -- plan -------------------------------------------------------------------------------------------------
    def _path(self, shard: str) -> str:
        return os.path.join(self.dirpath, shard + FORMATS[self.format])

    @staticmethod
    def _datamodule(trainer: L.Trainer):
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "predict_plan"):
            raise RuntimeError("ShardWriter needs a datamodule with a predict plan (ImageTextDataModule)")
        return dm

    def _prepare(self, digest: dict[str, str]) -> None:
        """Rank 0, holding the lock: check or write the plan, remove temporary files of killed writers."""
        plan_file = os.path.join(self.dirpath, "_plan.json")
        if os.path.exists(plan_file):
            with open(plan_file, encoding="utf-8") as f:
                old = json.load(f)
            if old != digest:
                raise RuntimeError(
                    f"{self.dirpath} holds shards of another input or shard size; write to a new folder "
                    "(paths.output_dir=...) or delete it"
                )
        else:
            _write_json(digest, plan_file)
        for name in os.listdir(self.dirpath):
            if name.endswith(".tmp"):
                os.remove(os.path.join(self.dirpath, name))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.merged = False
        dm = self._datamodule(trainer)
        plan = dm.predict_plan()
        digest = {s.name: _plan_digest(s.keys) for s in plan}
        refusal: Exception | None = None
        if trainer.is_global_zero:
            try:
                self._lock.acquire()
                self._prepare(digest)
            except RuntimeError as e:  # FolderLockedError, or a folder of another plan
                self._lock.release()
                refusal = e
        refusal = trainer.strategy.broadcast(refusal, src=0)  # every rank stops, none waits at the barrier
        if refusal is not None:
            raise refusal
        trainer.strategy.barrier("shard_writer.setup")
        done = {os.path.basename(p).split(".")[0] for p in shard_files(self.dirpath)}
        if done:
            log.info("%s: %d of %d shards already written; skipping them", self.dirpath, len(done), len(plan))
        dm.set_done_predict_shards(done)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            self._lock.release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        while self._lock.held:
            self._lock.release()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mine = self._datamodule(trainer).assigned_predict_shards
        self._pending = {s.name: [] for s in mine}
        self._expected = {s.name: len(s.keys) for s in mine}
        self._shard_of = {k: s.name for s in mine for k in s.keys}
        self._order = {k: i for s in mine for i, k in enumerate(s.keys)}
        self.rows_written = 0

    # -- writing ----------------------------------------------------------------------------------------------
    def _flush(self, shard: str) -> None:
        rows = sorted(self._pending.pop(shard), key=lambda r: self._order[r["key"]])
        write_shard(rows, self._path(shard), self.format, self.dtype)
        self.rows_written += len(rows)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        rows = list(prediction["rows"] if isinstance(prediction, Mapping) else prediction or [])
        if [r.get("key") for r in rows] != list(batch["key"]):
            raise RuntimeError(
                f"{type(pl_module).__name__}.predict_step must return one row per batch['key'], in order"
            )
        rows += [{"key": e["key"], "error": e["reason"]} for e in batch.get("errors", [])]
        touched = set()
        for row in rows:
            shard = self._shard_of.get(row["key"])
            if shard is None or shard not in self._pending:
                raise RuntimeError(f"row {row['key']!r} does not belong to a pending shard of this rank")
            self._pending[shard].append(row)
            touched.add(shard)
        for shard in touched:
            if len(self._pending[shard]) == self._expected[shard]:
                self._flush(shard)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        unfinished = {s: len(r) for s, r in self._pending.items()}
        if unfinished:
            raise RuntimeError(f"shards left incomplete (rows received): {unfinished}")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("shard_writer.end")
        self.merge(trainer, pl_module)

    def merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Merge the shards (rank 0) and call the module's ``on_predictions_merged``. Also what a rerun whose every
        shard is already written does: Lightning then runs no predict loop, and ``clipforge generate`` calls this,
        so the merged outputs (e.g. a changed enhancement policy) are rebuilt from the shards without recomputing."""
        self.merged = True
        if not trainer.is_global_zero:
            return
        with self._lock:  # already held inside a predict run; taken again by a merge-only rerun
            self._merge(trainer, pl_module)

    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = self._datamodule(trainer).predict_plan()
        missing = [s.name for s in plan if not os.path.exists(self._path(s.name))]
        if missing:
            log.warning("%d shards missing (%s...): no merged output yet", len(missing), missing[0])
            return
        rows = read_shards(self.dirpath)
        errors = read_shards(self.dirpath, errors=True)
        out_dir = os.path.dirname(os.path.abspath(self.merge_path or self.dirpath))
        if self.merge_path:
            write_shard(
                rows,
                self.merge_path,
                "parquet" if self.merge_path.endswith(".parquet") else "jsonl",
                self.dtype,
            )
        write_shard(errors, os.path.join(out_dir, "errors.jsonl"), "jsonl", self.dtype)
        summary: dict[str, Any] = {"rows": len(rows), "errors": len(errors), "shards": len(plan)}
        hook = getattr(pl_module, "on_predictions_merged", None)
        if callable(hook):
            summary.update(hook(rows, out_dir) or {})
        _write_json(jsonable(summary), os.path.join(out_dir, "summary.json"), indent=2)
        log.info("generate summary: %s", json.dumps(jsonable(summary)))
