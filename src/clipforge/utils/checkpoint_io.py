"""``AtomicCheckpointIO``: checkpoints written next to their final name and renamed, so a kill never leaves a torn one.

Lightning's own save (``TorchCheckpointIO`` -> ``_atomic_save``) writes the bytes to a temporary file of the system's
temporary directory and moves it over the checkpoint. When that directory is on another filesystem than the run
(a node-local ``/tmp`` and shared checkpoints on a cluster, or ``TMPDIR=/dev/shm``), the move is a copy into the
existing ``last.ckpt``: the file is truncated first, and a job killed during the copy is left with a cut-short
``last.ckpt`` and no resume point. Here the temporary file is ``<path>.tmp`` in the checkpoint's own folder, flushed
to disk and renamed over the old checkpoint in one step (``os.replace``), wherever ``TMPDIR`` is. Remote paths
(``s3://`` ...) keep Lightning's save, whose object-store upload is already all-or-nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a same-folder temporary file renamed over the checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path``: complete or not at all, the previous file kept until the rename.

        Args:
            checkpoint: model and trainer state.
            path: target file.
            storage_options: not supported (as in ``TorchCheckpointIO``).

        Raises:
            TypeError: ``storage_options`` given.
        """
        path = os.fspath(path)
        if storage_options is not None or ("://" in path and not path.startswith("file://")):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = path.removeprefix("file://")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
