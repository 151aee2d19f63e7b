"""Streaming webdataset shards: local, ``pipe:``, http(s) and object stores (``s3://``, ``gs://`` via fsspec).

The map-style reader (:mod:`clipforge.data.formats.wds`) indexes every member of every shard for random access;
that needs local uncompressed tars and a scan of the whole set before the first batch. A streaming source is read
front to back instead, shard by shard, by an ``IterableDataset``:

- **Selected** by ``streaming: true`` on the spec, or automatically for remote sources (``pipe:``, ``http(s)://``,
  ``s3://``, ``gs://``) and compressed shards (``.tar.gz``, ``.tgz``). Brace ranges (``shard-{00000..00009}.tar``)
  expand to one URL per shard; local globs and folders as in the map-style reader.
- **Order**: every epoch the shard list is shuffled by ``(seed, epoch)`` and dealt to the ``world x workers``
  readers by ``global_worker :: world * workers`` (disjoint, every shard read once); each reader mixes its samples
  in a shuffle buffer seeded by ``(seed, epoch, rank, worker)``. A reader's sample sequence is thus a pure function
  of the seed, the epoch and the shard list.
- **Resume**: each batch carries its reader's position (samples taken from the buffer so far); the datamodule keeps
  the last one per reader in its ``state_dict`` (so in every checkpoint) and a resumed epoch has each reader skip
  that many samples without decoding them. No sample repeats or is skipped, whatever the kill point.
- **Bad input** as in the map-style reader: a row without image or caption is an error record, a shard that cannot
  be opened or ends early is a ``unreadable_tar`` / ``truncated_tar`` error and the reader goes on with the next
  shard, keeping every complete sample before the cut. Errors travel in ``batch["errors"]`` (the data-error log).

Tar members are read with ``webdataset``'s ``tar_file_iterator`` (stream mode, so gzip is handled by
``tarfile``); shards are opened here rather than with ``webdataset.gopen`` because its ``s3://`` / ``gs://``
openers shell out to the ``aws`` / ``gsutil`` tools, while fsspec (``s3fs``, ``gcsfs``) speaks the protocol
itself and takes the usual credentials and ``AWS_ENDPOINT_URL``. Samples are grouped by ``__key__`` here instead
of by ``webdataset``'s ``group_by_keys`` so that a repeated member is an error record, not an exception.
"""

from __future__ import annotations

import logging
import os
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from torch.utils.data import IterableDataset, get_worker_info

from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import RecordBuilder
from clipforge.data.formats.wds import _KEY_EXT, add_sample
from clipforge.data.records import ErrorRecord, Record
from clipforge.data.specs import DatasetSpec, expand_paths, is_remote
from clipforge.data.split import select_split

log = logging.getLogger("clipforge.data")

COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")
"""Compressed shards: no random access, streamed."""
SHARD_SUFFIXES = (".tar", *COMPRESSED_SUFFIXES)

RawSample = tuple[str, dict[str, bytes], str]
"""``(key, {column: bytes}, shard url)`` as read from a tar."""


def is_streaming(spec: DatasetSpec) -> bool:
    """Whether a spec is read by streaming: ``streaming: true``, a remote path, or compressed shards."""
    if spec.builtin:
        return False
    if spec.streaming is not None:
        return bool(spec.streaming)
    path = spec.path.rstrip("/")
    return is_remote(path) or path.endswith(COMPRESSED_SUFFIXES) or ".tar.gz}" in path


def shard_urls(spec: DatasetSpec, where: str = "spec") -> list[str]:
    """The shard URLs of a streaming spec, in order: brace ranges expanded; local globs and folders resolved.

    Remote URLs are not checked here (a missing shard is an error record when it is read); local paths must exist.
    """
    from braceexpand import braceexpand

    urls: list[str] = []
    for p in braceexpand(spec.path) if is_remote(spec.path) else [spec.path]:
        if is_remote(p):
            urls.append(p)
            continue
        found = expand_paths(p)
        if not found:
            raise DataConfigError(f"{where}.path: no such file: {p}")
        for f in found:
            if os.path.isdir(f):
                names = [n for n in os.listdir(f) if n.endswith(SHARD_SUFFIXES)]
                # LLM2CLIP's embedding sidecars (X_text_embeddings.tar) beside the shards are no samples
                names = [n for n in names if not n.endswith("_text_embeddings.tar")]
                urls.extend(sorted(os.path.join(f, n) for n in names))
            else:
                urls.append(f)
    if not urls:
        raise DataConfigError(f"{where}.path: no .tar / .tar.gz shards in {spec.path}")
    return urls


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of one shard: a local file, a ``pipe:`` command's stdout, or an fsspec file."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if not is_remote(url):
        return open(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def iter_shard(url: str, errors: list[ErrorRecord]) -> Iterator[RawSample]:
    """The samples of one shard in member order; faults become error records appended to ``errors``.

    A shard that cannot be opened or is no tar is ``unreadable_tar``; one that ends inside a member (a cut copy or
    download, a broken gzip stream) is ``truncated_tar`` for the sample being read, whose members are dropped,
    every complete sample before it kept. A member repeating a column of its key is ``duplicate_key`` (the first
    is kept, the key's later members in this shard are skipped).
    """
    from webdataset.tariterators import tar_file_iterator

    def reraise(exn: Exception) -> bool:
        raise exn

    name = os.path.basename(url.rstrip("/"))
    key: str | None = None
    cols: dict[str, bytes] = {}
    repeated: set[str] = set()
    try:
        stream = open_shard(url)
    except Exception as e:  # noqa: BLE001 - any opener failure (missing object, refused connection) is a record
        errors.append(ErrorRecord(f"{name}@0", "unreadable_tar", f"{url}: {type(e).__name__}"))
        return
    members = 0
    try:
        with stream:
            for member in tar_file_iterator(stream, handler=reraise):
                members += 1
                match = _KEY_EXT.match(member["fname"])
                if match is None:
                    continue
                k, column = match.group(1), match.group(2).lower()
                if k in repeated:
                    continue
                if k != key:
                    if key is not None and cols:
                        yield key, cols, url
                    key, cols = k, {}
                if column in cols:
                    repeated.add(k)
                    errors.append(ErrorRecord(k, "duplicate_key", f"{url}#{member['fname']}"))
                    continue
                cols[column] = member["data"]
    except _READ_ERRORS as e:
        reason = "unreadable_tar" if members == 0 and key is None else "truncated_tar"
        errors.append(ErrorRecord(key or f"{name}@{members}", reason, f"{url}: {type(e).__name__}"))
        return
    if key is not None and cols:
        yield key, cols, url


def shuffled(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """webdataset's buffer shuffle with an explicit generator: fill ``size`` samples, then emit a random one per
    sample read; ``size <= 1`` keeps the order."""
    if size <= 1:
        yield from samples
        return
    buf: list[RawSample] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


def to_record(
    builder: RecordBuilder, sample: RawSample, require_captions: bool
) -> tuple[Record | None, list[ErrorRecord]]:
    """One raw sample -> its record (``None`` when rejected) and error records, by the map-style reader's rules."""
    key, cols, url = sample
    builder.records.clear()
    builder.first_source.clear()
    builder.errors = []
    add_sample(builder, key, cols, f"{url}#{key}", os.path.basename(url))
    records, errors = builder.finish(require_captions)
    return (records[0] if records else None), errors


def read_stream_records(
    spec: DatasetSpec, max_caption_chars: int = 2000, require_captions: bool = True, where: str = "spec"
) -> tuple[list[Record], list[ErrorRecord]]:
    """Every record of a streaming source, read once in shard order into memory (images as bytes).

    For evaluation, prediction and held-out sets, which are small or read once; training streams instead.
    """
    builder = RecordBuilder(spec, os.getcwd(), max_caption_chars)
    records: list[Record] = []
    errors: list[ErrorRecord] = []
    seen: set[str] = set()
    for url in shard_urls(spec, where):
        for sample in iter_shard(url, errors):
            rec, errs = to_record(builder, sample, require_captions)
            errors += errs
            if rec is None:
                continue
            if rec.key in seen:
                errors.append(ErrorRecord(rec.key, "duplicate_key", f"{url}#{rec.key}"))
                continue
            seen.add(rec.key)
            records.append(rec)
    return records, errors


class StreamingImageTextDataset(IterableDataset):
    """Batches of a streaming webdataset source (see the module docstring for order, resume and errors).

    Items are made by ``items`` (an :class:`~clipforge.data.dataset.ImageTextDataset` without records, configured
    with the training caption policy: sampling, sources, shearing, rewrite / removal ratios), one record at a
    time; caption draws are seeded by ``(seed, epoch, key)``. The dataset yields collated batches (use
    ``DataLoader(batch_size=None)``), each with ``stream_position`` = ``{"epoch", "reader", "consumed"}``.

    Args:
        urls: shard URLs.
        spec: the source (column choices, split, ``text_only``).
        items: item maker (see above).
        collate: batch collator.
        batch_size: rows per batch (per device).
        drop_last: drop each reader's last partial batch.
        seed: seed of the shard order and shuffle buffers.
        shuffle_buffer: samples per reader's shuffle buffer (``<= 1``: shard order only).
        world: ``(world_size, rank)``.
        max_caption_chars: longer captions are errors.
    """

    def __init__(
        self,
        urls: list[str],
        spec: DatasetSpec,
        items: Any,
        collate: Callable[[list[dict]], dict],
        batch_size: int,
        drop_last: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        world: tuple[int, int] = (1, 0),
        max_caption_chars: int = 2000,
    ) -> None:
        self.urls, self.spec, self.items, self.collate = list(urls), spec, items, collate
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.shuffle_buffer, self.world, self.max_caption_chars = shuffle_buffer, world, max_caption_chars
        self.epoch = 0
        self.skip: dict[int, int] = {}  # reader -> samples already trained this epoch (set on resume)
        self.records: list = []  # the datamodule's summary counts rows of map-style sets only
        self.candidates: list = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_of(self, epoch: int, reader: int, readers: int) -> list[str]:
        """Shards read by global reader ``reader`` of ``readers`` at ``epoch``."""
        order = list(self.urls)
        random.Random(f"{self.seed}:shards:{epoch}").shuffle(order)
        return order[reader::readers]

    def _items(self, sample: RawSample, builder: RecordBuilder, errors: list[dict]) -> list[dict]:
        rec, errs = to_record(builder, sample, require_captions=True)
        errors += [e.to_dict() for e in select_split(errs, self.spec)]
        if rec is None or not select_split([rec], self.spec):
            return []
        cands = self.items.admit(rec)
        if cands is None:
            return []
        if not cands and rec.captions:
            errors.append({"key": rec.key, "reason": "no_caption_of_sources", "source": sample[2]})
            return []
        ds, epoch = self.items, self.epoch
        if ds.caption_sampling == "all_pairs" and not ds.all_captions:
            return [ds.item_of(rec, [c]) for c in cands]
        return [ds.item_of(rec, ds.pick_of(rec, cands, epoch, rec.key))]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        world, rank = self.world
        reader, readers = rank * workers + worker, world * workers
        shards = self.shards_of(self.epoch, reader, readers)
        if not shards:
            log.warning("streaming reader %d of %d has no shard (fewer shards than readers)", reader, readers)
            return
        rng = random.Random(f"{self.seed}:buffer:{self.epoch}:{reader}")
        shard_errors: list[ErrorRecord] = []
        raw = (s for url in shards for s in iter_shard(url, shard_errors))
        builder = RecordBuilder(self.spec, os.getcwd(), self.max_caption_chars)
        skip, consumed = self.skip.get(reader, 0), 0
        pending: list[dict] = []
        errors: list[dict] = []

        def batch(rows: list[dict], position: int) -> dict:
            out = self.collate(rows)
            out["errors"] = out.get("errors", []) + errors
            errors.clear()
            out["stream_position"] = {"epoch": self.epoch, "reader": reader, "consumed": position}
            return out

        held: dict | None = None  # one batch held back: the errors of a dropped tail still reach the log
        for sample in shuffled(raw, self.shuffle_buffer, rng):
            consumed += 1
            errors += [e.to_dict() for e in select_split(shard_errors, self.spec)]
            shard_errors.clear()
            if consumed <= skip:
                errors.clear()  # logged by the run that trained them
                continue
            pending += self._items(sample, builder, errors)
            while len(pending) >= self.batch_size:
                rows, pending = pending[: self.batch_size], pending[self.batch_size :]
                if held is not None:
                    yield held
                # a sample whose items straddle two batches is counted with the second one
                held = batch(rows, consumed - 1 if pending else consumed)
        errors += [e.to_dict() for e in select_split(shard_errors, self.spec)]
        if pending and not self.drop_last:
            if held is not None:
                yield held
            held = batch(pending, consumed)
        elif held is not None:
            held["errors"] += errors
        if held is not None:
            yield held
