"""Shared image-text data layer: dataset specs, readers for many on-disk formats, image loading, the map-style
dataset, the collator and the ``ImageTextDataModule``.

Modules (import from them directly; this package imports nothing heavy):

- :mod:`clipforge.data.specs` — ``DatasetSpec`` (what to read) and ``as_spec``.
- :mod:`clipforge.data.readers` — ``read_records(spec)`` for every format (``detect_format`` tells which).
- :mod:`clipforge.data.records` — ``Record``, ``ErrorRecord`` and the image references they hold.
- :mod:`clipforge.data.images` — ``load_image(ref)`` with reasoned ``ImageLoadError``.
- :mod:`clipforge.data.dataset`, :mod:`clipforge.data.collate` — ``ImageTextDataset``, ``ImageTextCollator``.
- :mod:`clipforge.data.datamodule` — ``ImageTextDataModule``.
- :mod:`clipforge.data.demo`, :mod:`clipforge.data.synthetic` — the embedded demo photos and synthetic images.
"""
