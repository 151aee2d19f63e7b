"""Hugging Face ``datasets``: a folder saved with ``save_to_disk``, or local files through ``load_dataset``.

Columns follow the row defaults (``caption``/``text``..., ``image``..., ``key``/``image_id``...); the image column
defaults to the first column with an ``Image`` feature. For a saved dataset, ``Image`` cells are not read at
index time: records hold an ``HFImageRef`` (folder, column, row) that the loader reads from the memory-mapped
table. For ``load_dataset`` files the encoded image bytes are held in the records (small local sets). A string
image column is a path, resolved against ``image_root``. A ``DatasetDict`` folder with several splits is an
error: point ``path`` at one split's folder.
"""

from __future__ import annotations

import os

from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import DEFAULT_IMAGE_FIELDS, RecordBuilder
from clipforge.data.records import HFImageRef

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}


def is_saved_dataset(path: str) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f))
        for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _load(paths: list[str], where: str):
    import datasets

    if len(paths) == 1 and is_saved_dataset(paths[0]):
        ds = datasets.load_from_disk(paths[0])
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise DataConfigError(
                    f"{where}.path: {paths[0]} holds splits {list(ds)}; point it at one split's folder"
                )
            ((name, ds),) = ds.items()
            return ds, os.path.join(paths[0], name)
        return ds, paths[0]
    exts = {os.path.splitext(p)[1].lower() for p in paths}
    if len(exts) != 1 or next(iter(exts)) not in _BUILDERS:
        raise DataConfigError(
            f"{where}.path: format=hf needs a saved dataset folder or .parquet/.json/.csv files"
        )
    ext = next(iter(exts))
    kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
    return datasets.load_dataset(_BUILDERS[ext], data_files=paths, split="train", **kwargs), None


def read_hf(builder: RecordBuilder, paths: list[str], where: str, batch_size: int = 1024) -> None:
    """Read a Hugging Face dataset into ``builder``."""
    import datasets

    ds, saved_path = _load(paths, where)
    spec = builder.spec
    image_col = spec.image_field or next(
        (c for c, f in ds.features.items() if isinstance(f, datasets.Image)),
        next((c for c in DEFAULT_IMAGE_FIELDS if c in ds.features), None),
    )
    is_image_feature = image_col is not None and isinstance(ds.features.get(image_col), datasets.Image)
    lazy = is_image_feature and saved_path is not None and not spec.text_only
    n_rows = ds.num_rows  # before dropping columns: a table without columns has no rows
    if is_image_feature and (lazy or spec.text_only):
        ds = ds.remove_columns([image_col])  # never read image cells at index time
    elif is_image_feature:
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # cells as {"bytes", "path"}
    source = saved_path or paths[0]
    for start in range(0, n_rows, batch_size):
        batch = ds[start : start + batch_size] if ds.column_names else {}  # no columns left: image-only set
        for j in range(min(batch_size, n_rows - start)):
            index, row = start + j, {name: values[j] for name, values in batch.items()}
            if lazy:
                row[image_col] = HFImageRef(os.path.abspath(saved_path), image_col, index)
            builder.add(row, f"{source}#{index}", index)
