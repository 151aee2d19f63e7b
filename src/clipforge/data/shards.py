"""Output shards of generation jobs: one file per input shard, written atomically, read back as plain data.

Formats (:data:`FORMATS`): ``jsonl``, ``parquet`` and ``pt``. ``pt`` shards hold plain data only (tensors, numbers,
strings, lists, dicts: other values are stored as :func:`~clipforge.data.records.jsonable` makes them) and are read
with ``torch.load(weights_only=True)``, so a crafted shard in a folder given as input (``data.*.text_embeddings``)
cannot run code: it is refused with one line. A row whose image failed is an error row ``{"key", "error": reason}``.

:class:`~clipforge.callbacks.shard_writer.ShardWriter` writes the shards of a ``clipforge generate`` job; the data
layer reads them back (:mod:`clipforge.data.embeddings`), and so do tests and notebooks.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Mapping
from typing import Any

import torch

from clipforge.data.errors import DataConfigError
from clipforge.data.records import jsonable
from clipforge.utils.checkpoint import refusal_detail

__all__ = ["FORMATS", "read_shard", "read_shards", "shard_files", "tmp_name", "write_shard"]

FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet", "pt": ".pt"}


def tmp_name(path: str) -> str:
    """A temporary name beside ``path`` that no other writer uses (pid and a random tag)."""
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _plain(value: Any, dtype: torch.dtype) -> Any:
    """A ``pt`` shard value: tensors on CPU (floating ones as ``dtype``), containers recursed, the rest jsonable."""
    if torch.is_tensor(value):
        value = value.detach().to("cpu")
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, dtype) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, dtype) for v in value]
    return jsonable(value)


def write_shard(rows: list[dict], path: str, fmt: str, dtype: torch.dtype) -> None:
    """Write ``rows`` to ``path`` as ``fmt`` (a temporary name beside it, renamed when complete).

    Args:
        rows: the rows (dicts; error rows included).
        path: the shard file.
        fmt: ``jsonl``, ``parquet`` or ``pt``.
        dtype: storage dtype of floating tensors in ``pt`` shards.
    """
    tmp = tmp_name(path)
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([jsonable(r) for r in rows]), tmp)
    else:
        torch.save([_plain(r, dtype) for r in rows], tmp)
    os.replace(tmp, path)


def read_shard(path: str) -> list[dict]:
    """Rows of one output shard (``.jsonl``, ``.parquet`` or ``.pt``), error rows included.

    Raises:
        DataConfigError: a ``.pt`` file holding anything but plain data (it is never unpickled further).
    """
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [{k: v for k, v in r.items() if v is not None} for r in pq.read_table(path).to_pylist()]
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataConfigError(
            f"{path}: not a plain-data shard ({refusal_detail(e)}); shards are read with weights_only=True and "
            "never run code: regenerate the folder with clipforge generate"
        ) from None


def shard_files(dirpath: str) -> list[str]:
    """Finished output shards in ``dirpath``, in shard order."""
    if not os.path.isdir(dirpath):
        return []
    exts = tuple(FORMATS.values())
    return sorted(
        os.path.join(dirpath, f) for f in os.listdir(dirpath) if f.startswith("shard-") and f.endswith(exts)
    )


def read_shards(dirpath: str, errors: bool = False) -> list[dict]:
    """All rows of a shard folder in input order: the good rows, or with ``errors=True`` only the error rows."""
    rows = [r for path in shard_files(dirpath) for r in read_shard(path)]
    return [r for r in rows if ("error" in r) == errors]
