"""``ImageTextDataModule``: the shared, model-agnostic datamodule of every stage (docs/design/data.md)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping

import lightning as L
from torch.utils.data import DataLoader

from clipforge.data.caption_policy import CaptionPolicy, as_caption_policy
from clipforge.data.collate import ImageTextCollator, Tokenizer
from clipforge.data.dataset import ImageTextDataset
from clipforge.data.embeddings import join_text_embeddings
from clipforge.data.errors import DataConfigError
from clipforge.data.images import DEFAULT_MAX_PIXELS
from clipforge.data.readers import read_source, select
from clipforge.data.records import ErrorRecord
from clipforge.data.sampler import EpochSampler, Shard, ShardSampler
from clipforge.data.specs import DatasetSpec, as_spec, as_spec_list, as_spec_or_list, is_empty_slot
from clipforge.data.streaming import StreamingImageTextDataset, is_streaming, read_stream_records, shard_urls

log = logging.getLogger("clipforge.data")

SPLITS = ("train", "val", "test", "predict")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """Per-device batch of a global batch; contrastive results depend on the global number, so it must divide."""
    if world_size < 1 or global_batch_size % world_size:
        raise ValueError(
            f"data.batch_size={global_batch_size} is the global batch size; it must be divisible by the world "
            f"size ({world_size})"
        )
    return global_batch_size // world_size


class ImageTextDataModule(L.LightningDataModule):
    """Image-text (or caption-only) data for training, evaluation and prediction.

    The tokenizer and image transforms come from the model at ``setup()`` (``lightning_module.tokenizer`` and
    ``lightning_module.image_transform(train)``) unless :meth:`connect` supplied them. Train batches carry one
    sampled caption per image (shuffled, ``drop_last``); val/test/predict batches carry every caption
    (``captions`` + ``caption_image_index``) in order and keep the last partial batch. The caption-sampling epoch
    reaches the workers through :class:`~clipforge.data.sampler.EpochSampler`, which Lightning ``set_epoch``-s
    every epoch. Which captions train and evaluate (sampling mode, sources, shearing, the rewriting / removal
    ratios) is the :class:`~clipforge.data.caption_policy.CaptionPolicy` ``caption_policy``. Index-time errors are
    kept in ``index_errors`` (and per split in ``index_errors_by_split``).

    Args:
        train: training source.
        val: validation source(s); one spec, a list, or ``None``. ``{path: ""}`` is an empty slot.
        test: test source(s), like ``val``.
        predict: prediction source (records without captions are kept).
        batch_size: GLOBAL training batch size; per device = ``batch_size // world_size``.
        eval_batch_size: global evaluation batch size (default ``batch_size``; rounded up per device).
        num_workers: dataloader worker processes.
        caption_policy: which captions train and evaluate (a
            :class:`~clipforge.data.caption_policy.CaptionPolicy` or its fields); ``None`` = its defaults.
        max_caption_chars: longer captions are dropped (``caption_too_long``).
        max_image_pixels: larger images are errors (``too_many_pixels``).
        seed: seed of shuffling and caption sampling.
        pin_memory: pin host memory of batches.
        persistent_workers: keep workers alive across epochs (only with ``num_workers > 0``).
        drop_last: drop the last incomplete training batch (kept anyway when the set is smaller than one batch).
        holdout_fraction: when ``val`` is empty, hold out this fraction of ``train`` keys as validation set.
        predict_shard_rows: rows per input shard of ``predict`` (the unit a generation job writes and resumes).
        shuffle_buffer: samples in each reader's shuffle buffer of a streaming training source.

    A streaming training source (:func:`~clipforge.data.streaming.is_streaming`: ``train.streaming=true``, remote or
    compressed shards) is read by a :class:`~clipforge.data.streaming.StreamingImageTextDataset`; its readers'
    positions are this datamodule's ``state_dict`` (so in every checkpoint), and a run resumed mid-epoch continues
    each reader where it stopped. Held-out, val, test and predict sets of such a source are read once into memory.

    Raises:
        ValueError: a count that is not a positive integer, or a caption policy field ``CaptionPolicy`` rejects.
    """

    def __init__(
        self,
        train: DatasetSpec | Mapping | None = None,
        val: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        test: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        predict: DatasetSpec | Mapping | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        caption_policy: CaptionPolicy | Mapping | None = None,
        max_caption_chars: int = 2000,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        holdout_fraction: float = 0.0,
        predict_shard_rows: int = 1000,
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__()
        for name, count in (("batch_size", batch_size), ("predict_shard_rows", predict_shard_rows)):
            if (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):  # 0 / -3 rows: an empty plan
                raise ValueError(f"{name}={count} must be a positive integer")
        # normalised before save_hyperparameters, so Hydra (dicts) and jsonargparse (dataclasses) save the same
        caption_policy = as_caption_policy(caption_policy)
        train, val, test, predict = (
            as_spec(train),
            as_spec_or_list(val),
            as_spec_or_list(test),
            as_spec(predict),
        )
        self.save_hyperparameters(logger=False)
        self.specs = {k: as_spec_list(v) for k, v in zip(SPLITS, (train, val, test, predict))}
        self.tokenizer: Tokenizer | None = None
        self.caption_policy: CaptionPolicy = caption_policy
        self.transforms: dict[bool, Callable | None] = {True: None, False: None}
        self._connected = False
        self.datasets: dict[str, list[ImageTextDataset]] = {}
        self.index_errors: list[ErrorRecord] = []
        self.index_errors_by_split: dict[str, list[ErrorRecord]] = {}
        self.batch_size_per_device = batch_size
        self._cache: dict[tuple, tuple] = {}
        self._done_predict_shards: set[str] = set()
        self.assigned_predict_shards: list[Shard] = []
        # streaming: {"epoch", "consumed": {reader: samples}} of the batches trained so far (the resume point)
        self.stream_state: dict = {}
        self._resume_state: dict = {}

    # -- wiring -----------------------------------------------------------------------------------------------
    def connect(
        self,
        tokenizer: Tokenizer | None = None,
        image_transform: Callable | None = None,
        eval_image_transform: Callable | None = None,
    ) -> None:
        """Supply the tokenizer and ``PIL -> Tensor`` transforms directly (notebooks, tests), instead of the model's.

        Args:
            tokenizer: ``list[str] -> {"input_ids", "attention_mask"}``.
            image_transform: training transform (also used for evaluation unless ``eval_image_transform``).
            eval_image_transform: evaluation / prediction transform.
        """
        self.tokenizer, self._connected = tokenizer, True
        shear = self.caption_policy.shear
        if shear is not None and shear.tokenizer == "model":
            shear.bind(tokenizer)
        self.transforms = {True: image_transform, False: eval_image_transform or image_transform}
        for split, datasets in self.datasets.items():
            for ds in datasets:
                if isinstance(ds, StreamingImageTextDataset):
                    ds.collate.tokenizer = tokenizer
                    ds = ds.items
                ds.image_transform = self.transforms[split == "train"] or ds.image_transform

    def _bind_model(self) -> None:
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        shear = self.caption_policy.shear
        if shear is not None and shear.tokenizer == "model":
            shear.bind(self.tokenizer if self._connected else getattr(module, "tokenizer", None))
        if self._connected or module is None:
            return
        self.tokenizer = getattr(module, "tokenizer", None)
        if callable(getattr(module, "image_transform", None)):
            self.transforms = {True: module.image_transform(True), False: module.image_transform(False)}

    @property
    def world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer, ``(1, 0)`` without one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    @property
    def has_test(self) -> bool:
        """Whether a test set is configured (entry points then test instead of validate)."""
        return any(not is_empty_slot(s) for s in self.specs["test"])

    def eval_names(self, stage: str = "val") -> list[str]:
        """Names of the ``val`` or ``test`` sets in dataloader order (for metric keys)."""
        return [s.display_name for s in self.split_specs(stage)]

    # -- reading ----------------------------------------------------------------------------------------------
    def split_specs(self, split: str) -> list[DatasetSpec]:
        """The specs a split reads, with ``holdout_fraction`` applied (empty ``val`` -> held-out train keys)."""
        train = self.specs["train"][0] if self.specs["train"] else None
        frac = self.hparams.holdout_fraction
        holdout = frac > 0 and train is not None and all(is_empty_slot(s) for s in self.specs["val"])
        if holdout and train.split is None:
            train = dataclasses.replace(train, split="train", val_fraction=frac)
        if split == "train":
            return [train] if train is not None else []
        if split == "val" and holdout:
            return [dataclasses.replace(train, split="val")]
        return [s for s in self.specs[split] if not is_empty_slot(s)]

    def _read(self, spec: DatasetSpec, where: str, require_captions: bool) -> tuple[list, list]:
        source = dataclasses.replace(
            spec, split=None, val_fraction=0.0, split_seed=0, val_keys=None, num_folds=0, fold=0, name=None
        )
        cache_key = (repr(source), require_captions)
        if cache_key not in self._cache:  # held-out val shares train's source: read once
            read = read_stream_records if is_streaming(source) else read_source
            self._cache[cache_key] = read(source, self.hparams.max_caption_chars, require_captions, where)
        records, errors = self._cache[cache_key]
        return select(records, errors, spec)

    def _build_stream(self, spec: DatasetSpec, where: str) -> StreamingImageTextDataset:
        hp = self.hparams
        if spec.text_embeddings or spec.sidecars:
            raise DataConfigError(
                f"{where}: a streaming source takes no text_embeddings / sidecars folder; read the cache "
                "map-style (streaming: false on local .tar shards)"
            )
        items = ImageTextDataset(
            [],
            self.transforms[True],
            seed=hp.seed,
            text_only=spec.text_only,
            max_image_pixels=hp.max_image_pixels,
            **self.caption_policy.dataset_options(),
        )
        dataset = StreamingImageTextDataset(
            shard_urls(spec, where),
            spec,
            items,
            ImageTextCollator(self.tokenizer, all_captions=self.caption_policy.sampling == "multi_positive"),
            self.batch_size_per_device,
            drop_last=hp.drop_last,
            seed=hp.seed,
            shuffle_buffer=hp.shuffle_buffer,
            world=self.world,
            max_caption_chars=hp.max_caption_chars,
        )
        log.info("%s (%s): streaming %d shards", where, spec.display_name, len(dataset.urls))
        return dataset

    def _build(self, split: str, index: int, spec: DatasetSpec, many: bool) -> ImageTextDataset:
        where, hp, train = f"data.{split}" + (f"[{index}]" if many else ""), self.hparams, split == "train"
        policy = self.caption_policy
        if train and is_streaming(spec):
            return self._build_stream(spec, where)  # type: ignore[return-value]
        records, errors = self._read(spec, where, require_captions=split != "predict")
        embeddings = None
        if spec.text_embeddings:
            if train and policy.shear is not None and policy.shear.unit != "none":
                raise DataConfigError(
                    f"{where}.text_embeddings: cached embeddings are of the stored captions; shear them offline "
                    "(a sheared column) instead of data.caption_policy.shear"
                )
            records, more, embeddings = join_text_embeddings(
                records, spec.text_embeddings, spec.caption_fields
            )
            errors = errors + more
        options = dict(all_captions=not train, text_only=spec.text_only, max_image_pixels=hp.max_image_pixels)
        if train:
            options.update(policy.dataset_options())
        else:
            options["caption_sampling"] = "first"
            if split != "predict":
                options["caption_sources"] = policy.eval_sources
        dataset = ImageTextDataset(
            records, self.transforms[train], seed=hp.seed, text_embeddings=embeddings, **options
        )
        errors = errors + [ErrorRecord(k, "no_caption_of_sources", where) for k in dataset.dropped]
        counts = collections.Counter(e.reason for e in errors).most_common(5)
        summary = f"{len(errors)} errors ({', '.join(f'{r}: {n}' for r, n in counts) or 'none'})"
        if not dataset.records:
            raise DataConfigError(
                f"{where}: no usable rows in {spec.path or spec.format} (split={spec.split}, "
                f"val_fraction={spec.val_fraction}); {summary}"
            )
        self.index_errors.extend(errors)
        self.index_errors_by_split.setdefault(split, []).extend(errors)
        n_captions = sum(len(c) for c in dataset.candidates)
        log.info(
            "%s (%s): %d rows, %d candidate captions, %d items, %s",
            where,
            spec.display_name,
            len(dataset.records),
            n_captions,
            len(dataset),
            summary,
        )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Bind the model's tokenizer/transforms and read the splits ``stage`` needs (each only once)."""
        self._bind_model()
        self.batch_size_per_device = per_device_batch_size(self.hparams.batch_size, self.world[0])
        for split in _STAGE_SPLITS.get(stage or "", SPLITS):
            if split not in self.datasets:
                specs = self.split_specs(split)
                self.datasets[split] = [self._build(split, i, s, len(specs) > 1) for i, s in enumerate(specs)]

    # -- loaders ----------------------------------------------------------------------------------------------
    def _datasets(self, split: str) -> list[ImageTextDataset]:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        return self.datasets[split]

    def _loader_args(self, all_captions: bool) -> dict:
        """DataLoader arguments; ``all_captions``: collate every caption of a row (eval, multi-positive)."""
        workers = self.hparams.num_workers
        return {
            "num_workers": workers,
            "pin_memory": self.hparams.pin_memory,
            "persistent_workers": self.hparams.persistent_workers and workers > 0,
            "collate_fn": ImageTextCollator(self.tokenizer, all_captions=all_captions),
        }

    # -- streaming position -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The streaming readers' position (``{}`` for map-style training, whose sampler restarts per epoch)."""
        return {"stream": dict(self.stream_state)} if self.stream_state else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume point of a checkpoint: the next iteration of the same epoch skips what was trained."""
        self._resume_state = dict(state_dict.get("stream") or {})
        self.stream_state = dict(self._resume_state)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):  # noqa: ANN001, ANN201 - Lightning's hook
        position = batch.pop("stream_position", None) if isinstance(batch, dict) else None
        if position is not None:
            if self.stream_state.get("epoch") != position["epoch"]:
                self.stream_state = {"epoch": position["epoch"], "consumed": {}}
            self.stream_state["consumed"][int(position["reader"])] = int(position["consumed"])
        return batch

    def _start_stream_epoch(self, dataset: StreamingImageTextDataset) -> None:
        epoch = self.trainer.current_epoch if self.trainer is not None else dataset.epoch
        dataset.set_epoch(epoch)
        resume, self._resume_state = self._resume_state, {}
        dataset.skip = dict(resume.get("consumed", {})) if resume.get("epoch") == epoch else {}
        self.stream_state = {"epoch": epoch, "consumed": dict(dataset.skip)}

    def train_dataloader(self) -> DataLoader:
        datasets = self._datasets("train")
        if not datasets:
            raise DataConfigError("data.train: no training set configured")
        dataset, (world, rank) = datasets[0], self.world
        if isinstance(dataset, StreamingImageTextDataset):
            workers = self.hparams.num_workers
            return _StreamLoader(
                dataset,
                lambda: self._start_stream_epoch(dataset),
                batch_size=None,
                collate_fn=_as_is,  # batches are collated by the dataset (default_convert would walk them again)
                num_workers=workers,
                pin_memory=self.hparams.pin_memory,
                # the epoch and resume point reach the readers when their workers start: never persistent
                persistent_workers=False,
            )
        bs, drop_last = self.batch_size_per_device, self.hparams.drop_last
        if drop_last and math.ceil(len(dataset) / world) < bs:
            log.warning(
                "data.train: %d rows per device < batch %d; keeping the partial batch", len(dataset), bs
            )
            drop_last = False
        sampler = EpochSampler(dataset, world, rank, shuffle=True, seed=self.hparams.seed)
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            drop_last=drop_last,
            **self._loader_args(self.caption_policy.sampling == "multi_positive"),
        )

    def _eval_loaders(self, split: str) -> DataLoader | list[DataLoader]:
        world = self.world[0]
        bs = max(1, math.ceil((self.hparams.eval_batch_size or self.hparams.batch_size) / world))
        loaders = [
            DataLoader(ds, batch_size=bs, shuffle=False, drop_last=False, **self._loader_args(True))
            for ds in self._datasets(split)
        ]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")

    # -- prediction shards --------------------------------------------------------------------------------------
    def predict_plan(self) -> list[Shard]:
        """The input shards of ``predict``: ``predict_shard_rows`` consecutive rows each, in source order; for a
        streaming source, one per input tar (named by its stem), so each output shard mirrors an input shard."""
        dataset = self._datasets("predict")[0]
        n, keys = self.hparams.predict_shard_rows, [r.key for r in dataset.records]
        if self.specs["predict"] and is_streaming(self.specs["predict"][0]):
            groups: list[tuple[str, int, list[str]]] = []
            for i, rec in enumerate(dataset.records):
                name = _stem(str(rec.meta.get("shard", "shard")))
                if not groups or groups[-1][0] != name:
                    groups.append((name, i, []))
                groups[-1][2].append(rec.key)
            return [Shard(name, start, shard_keys) for name, start, shard_keys in groups]
        return [Shard(f"shard-{i // n:05d}", i, keys[i : i + n]) for i in range(0, len(keys), n)]

    def set_done_predict_shards(self, names: set[str]) -> None:
        """Shards already written by an earlier run: ``predict_dataloader`` leaves their rows out."""
        self._done_predict_shards = set(names)

    def predict_dataloader(self) -> DataLoader:
        """This rank's unfinished shards (``i % world == rank``), rows in order, batches of ``eval_batch_size``."""
        dataset, (world, rank) = self._datasets("predict")[0], self.world
        plan = self.predict_plan()
        self.assigned_predict_shards = [
            s for i, s in enumerate(plan) if i % world == rank and s.name not in self._done_predict_shards
        ]
        sampler = ShardSampler(dataset, self.assigned_predict_shards, world, rank)
        bs = max(1, math.ceil((self.hparams.eval_batch_size or self.hparams.batch_size) / world))
        return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=False, **self._loader_args(True))


def _as_is(batch: dict) -> dict:
    return batch


def _stem(name: str) -> str:
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


class _StreamLoader(DataLoader):
    """DataLoader of a streaming dataset that sets the epoch and resume point before each iteration starts (an
    ``IterableDataset`` takes no sampler, so Lightning's ``set_epoch`` cannot reach it)."""

    def __init__(self, dataset: StreamingImageTextDataset, on_iter: Callable[[], None], **kwargs) -> None:  # noqa: ANN003
        super().__init__(dataset, **kwargs)
        self._on_iter = on_iter

    def __iter__(self):  # noqa: ANN204
        self._on_iter()
        return super().__iter__()
