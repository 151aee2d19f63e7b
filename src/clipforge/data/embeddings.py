"""Cached caption embeddings (llm2clip): written by a generation job as shards, joined to records by key."""

from __future__ import annotations

import dataclasses
import os

import torch

from clipforge.data.records import ErrorRecord, Record
from clipforge.data.shards import read_shards


def load_text_embeddings(folder: str) -> dict[str, dict[str, torch.Tensor]]:
    """``key -> {caption: embedding}`` from the ``pt`` shards of an embedding job (error rows skipped)."""
    table: dict[str, dict[str, torch.Tensor]] = {}
    for row in read_shards(os.path.expanduser(folder)):
        emb = row["text_embedding"]
        table.setdefault(str(row["key"]), {}).update(zip(row["captions"], emb))
    return table


def join_text_embeddings(
    records: list[Record], folder: str
) -> tuple[list[Record], list[ErrorRecord], dict[str, torch.Tensor]]:
    """Attach cached embeddings to records.

    A caption without an embedding is dropped with a ``missing_text_embedding`` error record; a record left
    without captions is dropped the same way. Records are copied, never changed in place.

    Returns:
        ``(records, errors, key -> Tensor[n_captions, D])``, the tensor rows aligned with each record's captions.
    """
    table = load_text_embeddings(folder)
    out, errors, embeddings = [], [], {}
    for rec in records:
        found = table.get(rec.key, {})
        keep = [i for i, c in enumerate(rec.captions) if c in found]
        errors += [
            ErrorRecord(rec.key, "missing_text_embedding", folder)
            for _ in range(len(rec.captions) - len(keep))
        ]
        if not keep:
            continue
        captions = [rec.captions[i] for i in keep]
        sources = [rec.source(i) for i in keep] if rec.sources else None
        out.append(dataclasses.replace(rec, captions=captions, sources=sources))
        embeddings[rec.key] = torch.stack([found[c] for c in captions])
    return out, errors, embeddings
