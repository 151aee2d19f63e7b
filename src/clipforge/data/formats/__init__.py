"""One module per on-disk layout; each fills a ``RecordBuilder`` (see :mod:`clipforge.data.readers`)."""
