"""Cached caption embeddings (llm2clip): written by a generation job as shards, joined to records by key.

Two layouts are read by ``data.<split>.text_embeddings``:

- a folder of the embedding job's ``pt`` shards (rows ``{"key", "captions", "text_embedding"}``), joined by key
  and caption text;
- LLM2CLIP's sidecar tars: beside each image shard ``X.tar`` a tar ``X_text_embeddings.tar`` holding, in the image
  shard's sample order, one member ``{key}.{column}`` per caption column (``shortsv_captions``,
  ``longsv_captions``: the caption field's name, lower-cased as webdataset does) whose bytes are one raw float32
  vector. The official training code zips the two tars sample by sample and ``np.frombuffer``-s each column. A
  record's caption from field ``C`` (``caption_fields``) takes the vector of column ``c``; the folder (or a glob /
  brace pattern of sidecars) is named by ``text_embeddings`` as for ``pt`` shards.

:func:`write_sidecar_tars` turns the job's ``pt`` shards into sidecars of given image shards
(``clipforge data sidecars``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile

import numpy as np
import torch

from clipforge.data.records import RAW, ErrorRecord, Record
from clipforge.data.shards import read_shards
from clipforge.data.specs import expand_paths

SIDECAR_SUFFIX = "_text_embeddings.tar"
"""Name of the sidecar of image shard ``X.tar``: ``X_text_embeddings.tar`` (LLM2CLIP's ``find_column_url``)."""


def sidecar_files(path: str) -> list[str]:
    """The ``*_text_embeddings.tar`` files a ``text_embeddings`` value names (a folder, a file, a pattern)."""
    out: list[str] = []
    for p in expand_paths(os.path.expanduser(path)):
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(SIDECAR_SUFFIX))
        elif p.endswith(SIDECAR_SUFFIX):
            out.append(p)
    return out


def sidecar_of(shard: str, out_dir: str | None = None) -> str:
    """The sidecar path of image shard ``shard`` (``X.tar`` / ``X.tar.gz`` -> ``X_text_embeddings.tar``)."""
    name = os.path.basename(shard)
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return os.path.join(out_dir or os.path.dirname(shard), name + SIDECAR_SUFFIX)


def read_sidecar_embeddings(files: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``key -> {column: float32 vector}`` of sidecar tars (member ``{key}.{column}``, raw float32 bytes)."""
    from clipforge.data.formats.wds import _KEY_EXT

    table: dict[str, dict[str, torch.Tensor]] = {}
    for path in files:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                match = _KEY_EXT.match(member.name) if member.isfile() else None
                if match is None:
                    continue
                key, column = match.group(1), match.group(2).lower()
                data = tf.extractfile(member).read()
                if column.endswith(".npy"):
                    vec = np.load(io.BytesIO(data)).astype(np.float32).reshape(-1)
                    column = column[: -len(".npy")]
                else:
                    vec = np.frombuffer(data, dtype=np.float32).copy()
                table.setdefault(key, {})[column] = torch.from_numpy(vec)
    return table


def load_text_embeddings(folder: str) -> dict[str, dict[str, torch.Tensor]]:
    """``key -> {caption: embedding}`` from the ``pt`` shards of an embedding job (error rows skipped)."""
    table: dict[str, dict[str, torch.Tensor]] = {}
    for row in read_shards(os.path.expanduser(folder)):
        emb = row["text_embedding"]
        table.setdefault(str(row["key"]), {}).update(zip(row["captions"], emb))
    return table


def _caption_column(rec: Record, index: int, caption_fields: list[str] | None) -> str:
    """The caption field caption ``index`` of ``rec`` came from, lower-cased (``raw`` = the first field)."""
    source = rec.source(index)
    if source == RAW:
        source = caption_fields[0] if caption_fields else "txt"
    return source.lower().removesuffix(".txt")


def join_text_embeddings(
    records: list[Record], folder: str, caption_fields: list[str] | None = None
) -> tuple[list[Record], list[ErrorRecord], dict[str, torch.Tensor]]:
    """Attach cached embeddings (``pt`` shards or LLM2CLIP sidecar tars, see the module docstring) to records.

    A caption without an embedding is dropped with a ``missing_text_embedding`` error record; a record left
    without captions is dropped the same way. Records are copied, never changed in place.

    Returns:
        ``(records, errors, key -> Tensor[n_captions, D])``, the tensor rows aligned with each record's captions.
    """
    sidecars = sidecar_files(folder)
    table = read_sidecar_embeddings(sidecars) if sidecars else load_text_embeddings(folder)
    out, errors, embeddings = [], [], {}
    for rec in records:
        found = table.get(rec.key, {})
        if sidecars:
            vectors = [found.get(_caption_column(rec, i, caption_fields)) for i in range(len(rec.captions))]
        else:
            vectors = [found.get(c) for c in rec.captions]
        keep = [i for i, v in enumerate(vectors) if v is not None]
        errors += [
            ErrorRecord(rec.key, "missing_text_embedding", folder)
            for _ in range(len(rec.captions) - len(keep))
        ]
        if not keep:
            continue
        captions = [rec.captions[i] for i in keep]
        sources = [rec.source(i) for i in keep] if rec.sources else None
        out.append(dataclasses.replace(rec, captions=captions, sources=sources))
        embeddings[rec.key] = torch.stack([vectors[i] for i in keep])
    return out, errors, embeddings


def write_sidecar_tars(
    cache: str, shards: list[str], columns: list[str], out_dir: str | None = None
) -> tuple[list[str], list[ErrorRecord]]:
    """Write the embedding job's ``pt`` cache as LLM2CLIP sidecars of image ``shards``.

    Each image shard gets ``<stem>_text_embeddings.tar`` (in ``out_dir``, default beside it) with, for each of its
    samples in order, one member ``{key}.{column}`` per caption column: the float32 vector of the row's caption
    ``j`` under ``columns[j]`` (the job's rows hold a record's captions in caption-field order). A sample without a
    cached row is left out with a ``missing_text_embedding`` error (the official reader then stops at it: fix the
    cache first). Written atomically (temporary name, then renamed).

    Returns:
        ``(sidecar paths, errors)``.
    """
    from clipforge.data.streaming import iter_shard

    rows = {str(r["key"]): r for r in read_shards(os.path.expanduser(cache))}
    names = [c.lower() for c in columns]
    written, errors = [], []
    for shard in shards:
        path = sidecar_of(shard, out_dir)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, _, _ in iter_shard(shard, errors):
                row = rows.get(key)
                if row is None:
                    errors.append(ErrorRecord(key, "missing_text_embedding", cache))
                    continue
                emb = torch.as_tensor(row["text_embedding"]).float().reshape(len(row["captions"]), -1)
                for name, vec in zip(names, emb):
                    data = vec.numpy().astype(np.float32).tobytes()
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
        written.append(path)
    return written, errors
