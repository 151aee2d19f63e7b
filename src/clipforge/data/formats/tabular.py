"""Row formats: seed JSON lists, Karpathy-split JSON, JSON Lines and Parquet.

JSON and JSONL text is decoded with ``surrogateescape`` so one undecodable byte sequence spoils only the
caption it sits in (``non_utf8_caption``), not the line or the file; a line that is not JSON is a
``malformed_json`` error with its line number and the rest of the file is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import RecordBuilder
from clipforge.data.records import ErrorRecord


def load_json(path: str) -> object:
    """Parse a JSON file; undecodable bytes survive as lone surrogates (flagged later, per caption)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return json.load(f)


def karpathy_original_rows(data: Mapping) -> Iterator[dict]:
    """Rows of Karpathy's original ``dataset_{coco,flickr30k}.json`` (``images`` with ``sentences``)."""
    for img in data["images"]:
        row = {k: v for k, v in img.items() if k not in ("sentences", "sentids", "filename", "filepath")}
        row["image"] = os.path.join(img.get("filepath", ""), img["filename"])
        row["caption"] = [s.get("raw", " ".join(s.get("tokens", []))) for s in img.get("sentences", [])]
        yield row


def json_rows(data: object, path: str, where: str) -> Iterator[tuple[object, str]]:
    """``(row, source)`` pairs of a parsed seed / Karpathy JSON file."""
    if isinstance(data, Mapping) and isinstance(data.get("images"), list):
        for i, row in enumerate(karpathy_original_rows(data)):
            yield row, f"{path}#{i}"
    elif isinstance(data, list):
        for i, row in enumerate(data):
            yield row, f"{path}#{i}"
    else:
        raise DataConfigError(
            f"{where}.path: {path}: expected a JSON list of records, a COCO or a Karpathy file"
        )


def read_json(builder: RecordBuilder, paths: list[str], where: str, parsed: object = None) -> None:
    """Seed JSON (``[{"image", "caption"}]``, caption str or list) and Karpathy JSON, into ``builder``."""
    index = 0
    for n, path in enumerate(paths):
        data = parsed if (n == 0 and parsed is not None) else load_json(path)
        for row, source in json_rows(data, path, where):
            if isinstance(row, Mapping):
                builder.add(row, source, index)
            else:
                builder.errors.append(ErrorRecord(f"row:{index}", "bad_row", source))
            index += 1


def read_jsonl(builder: RecordBuilder, paths: list[str]) -> None:
    """JSON Lines, read as bytes and decoded line by line; malformed lines are errors, the rest is read."""
    index = 0
    for path in paths:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                source = f"{path}:{lineno}"
                try:
                    row = json.loads(raw.decode("utf-8", "surrogateescape"))
                except json.JSONDecodeError:
                    builder.errors.append(ErrorRecord(f"line:{lineno}", "malformed_json", source))
                    continue
                if isinstance(row, Mapping):
                    builder.add(row, source, index)
                else:
                    builder.errors.append(ErrorRecord(f"line:{lineno}", "bad_row", source))
                index += 1


def read_parquet(builder: RecordBuilder, paths: list[str], batch_size: int = 4096) -> None:
    """Parquet files, streamed in record batches (binary caption cells are decoded as UTF-8, per cell)."""
    import pyarrow.parquet as pq

    index = 0
    for path in paths:
        row_in_file = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                builder.add(row, f"{path}#{row_in_file}", index)
                row_in_file += 1
                index += 1
