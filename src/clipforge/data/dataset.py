"""``ImageTextDataset``: map-style dataset over records; bad rows come back as ``{"key", "error"}``, never raise."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from clipforge.data.errors import ImageLoadError
from clipforge.data.images import DEFAULT_MAX_PIXELS, DefaultImageTransform, load_image
from clipforge.data.records import RAW, Record
from clipforge.data.split import key_fraction

CAPTION_SAMPLING = ("random_one", "first", "raw_only", "ext_only", "all_pairs", "multi_positive")
"""How a training row picks its caption(s) among the record's candidates (see :class:`ImageTextDataset`)."""


class ImageTextDataset(Dataset):
    """Images (transformed to tensors) with their captions.

    ``dataset[i]`` is ``{"key", "image", "caption", "captions", "meta"}`` (no ``image`` when text-only), or
    ``{"key", "error": reason}`` for an image that cannot be loaded or transformed.

    Caption candidates of a record: its captions whose source (:attr:`Record.sources`: ``raw`` or a captioner /
    column name) is in ``caption_sources`` (all when ``None``), narrowed by the sampling mode and
    ``rewrite_ratio``. ``caption_sampling``:

    - ``random_one``: one candidate per draw, uniformly (or by ``source_weights``), drawn from
      ``(seed, epoch, index)``, so it changes across epochs and is the same in every run and worker process;
    - ``first``: the first candidate;  ``raw_only`` / ``ext_only``: ``random_one`` over raw / extended captions;
    - ``all_pairs``: one item per (record, candidate) pair, so an epoch sees every caption once;
    - ``multi_positive``: ``captions`` holds ``captions_per_image`` candidates (without replacement while there
      are enough) for a multi-positive loss.

    Extended (non-``raw``) captions are cut by ``shear(raw, ext)`` when they are handed out; the record's first
    raw caption is the length reference. With ``all_captions`` (evaluation) ``captions`` holds every candidate and
    ``caption`` the first. With ``text_embeddings`` (``key -> Tensor[n_captions, D]`` aligned with the record's
    captions) items carry ``text_embedding`` for the caption(s) they hand out.

    The epoch comes from the index when the sampler yields ``(index, epoch)`` pairs (:class:`EpochSampler`,
    which works with any number of workers, persistent or not), else from :meth:`set_epoch`.

    Args:
        records: the rows.
        image_transform: picklable ``PIL.Image -> Tensor[3, H, W]`` (or ``-> PIL.Image`` for models with their
            own processor); ``None`` = :class:`DefaultImageTransform`.
        caption_sampling: one of :data:`CAPTION_SAMPLING`.
        seed: seed of caption sampling and of the ``rewrite_ratio`` / ``remove_ratio`` draws (by key).
        all_captions: evaluation mode (every candidate in ``captions``).
        text_only: do not load images.
        max_image_pixels: largest image accepted (``too_many_pixels`` error above).
        caption_sources: sources whose captions are candidates; ``None`` = all.
        source_weights: ``random_one``: probability weight per source (``{raw: 0.5, dense: 0.5}``); sources left
            out get weight 0, weights of the sources a record lacks are renormalised away.
        shear: ``(raw, ext) -> ext`` cut (a :class:`~clipforge.data.shear.Shear`); ``None`` = no cut.
        rewrite_ratio: fraction of records (by key) whose candidates are only extended captions, the rest only
            raw ones (the rewriting sweep); ``None`` = off.
        remove_ratio: fraction of records (by key) left out (the removal sweep); 0 = none.
        captions_per_image: ``multi_positive``: captions per image.
        text_embeddings: cached caption embeddings by key.
    """

    def __init__(
        self,
        records: Sequence[Record],
        image_transform: Callable | None = None,
        caption_sampling: str = "random_one",
        seed: int = 0,
        all_captions: bool = False,
        text_only: bool = False,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        caption_sources: Sequence[str] | None = None,
        source_weights: Mapping[str, float] | None = None,
        shear: Callable[[str, str], str] | None = None,
        rewrite_ratio: float | None = None,
        remove_ratio: float = 0.0,
        captions_per_image: int = 2,
        text_embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if caption_sampling not in CAPTION_SAMPLING:
            raise ValueError(f"caption_sampling={caption_sampling!r} is not one of {CAPTION_SAMPLING}")
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image={captions_per_image} must be >= 1")
        self.image_transform = image_transform if image_transform is not None else DefaultImageTransform()
        self.caption_sampling, self.seed = caption_sampling, seed
        self.all_captions, self.text_only, self.max_image_pixels = all_captions, text_only, max_image_pixels
        self.source_weights = dict(source_weights) if source_weights else None
        self.shear, self.captions_per_image = shear, captions_per_image
        self.text_embeddings = text_embeddings
        self.epoch = 0
        sources = set(caption_sources) if caption_sources is not None else None
        self.records: list[Record] = []
        self.candidates: list[list[int]] = []
        self.dropped: list[str] = []  # keys left without a candidate caption
        self._sources, self._remove_ratio, self._rewrite_ratio = sources, remove_ratio, rewrite_ratio
        for rec in records:
            cands = self.admit(rec)
            if cands is None:
                continue
            if cands or not rec.captions:
                self.records.append(rec)
                self.candidates.append(cands)
            else:
                self.dropped.append(rec.key)
        self.pairs = [(r, c) for r, cands in enumerate(self.candidates) for c in cands]
        # keys whose image the model no longer needs (its frozen features are cached): ``placeholder`` instead
        self.skip_image_keys: frozenset[str] = frozenset()
        self.placeholder = None

    def admit(self, rec: Record) -> list[int] | None:
        """Caption candidates of ``rec`` under this dataset's policy; ``None`` when ``remove_ratio`` leaves it out
        (``[]`` for a record with captions: none of its sources is a candidate, it is dropped)."""
        if self._remove_ratio > 0 and key_fraction(rec.key, self.seed + 1) < self._remove_ratio:
            return None
        return self._candidates(rec, self._sources, self._rewrite_ratio)

    def _candidates(self, rec: Record, sources: set[str] | None, rewrite_ratio: float | None) -> list[int]:
        idx = [i for i in range(len(rec.captions)) if sources is None or rec.source(i) in sources]
        raw = [i for i in idx if rec.source(i) == RAW]
        ext = [i for i in idx if rec.source(i) != RAW]
        if self.caption_sampling == "raw_only":
            return raw
        if self.caption_sampling == "ext_only":
            return ext
        if rewrite_ratio is not None:
            return (ext or raw) if key_fraction(rec.key, self.seed + 2) < rewrite_ratio else (raw or ext)
        return idx

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for caption sampling when indices are plain integers."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (
            len(self.pairs)
            if self.caption_sampling == "all_pairs" and not self.all_captions
            else len(self.records)
        )

    def text_of(self, rec: Record, caption: int) -> str:
        """Caption ``caption`` of ``rec`` as handed out: extended captions sheared to the raw one's length."""
        text = rec.captions[caption]
        if self.shear is None or rec.source(caption) == RAW:
            return text
        ref = next((c for i, c in enumerate(rec.captions) if rec.source(i) == RAW), None)
        return text if ref is None else self.shear(ref, text)

    def _weighted(self, rec: Record, cands: list[int], rng: random.Random) -> int:
        by_source: dict[str, list[int]] = {}
        for c in cands:
            by_source.setdefault(rec.source(c), []).append(c)
        names = [s for s in by_source if self.source_weights.get(s, 0.0) > 0]
        if not names:
            return rng.choice(cands)
        source = rng.choices(names, weights=[self.source_weights[s] for s in names])[0]
        return rng.choice(by_source[source])

    def pick(self, index: int, epoch: int) -> tuple[int, list[int]]:
        """``(record index, caption indices)`` item ``index`` hands out at ``epoch``."""
        if self.caption_sampling == "all_pairs" and not self.all_captions:
            r, c = self.pairs[index]
            return r, [c]
        return index, self.pick_of(self.records[index], self.candidates[index], epoch, index)

    def pick_of(self, rec: Record, cands: list[int], epoch: int, salt: int | str) -> list[int]:
        """Caption indices a record with candidates ``cands`` hands out at ``epoch``; the draw is seeded by
        ``(seed, epoch, salt)``: the item index (map-style) or the sample key (streaming)."""
        if self.all_captions:
            return list(cands)
        if not cands:
            return []
        if self.caption_sampling == "first" or len(cands) == 1 and self.caption_sampling != "multi_positive":
            return [cands[0]]
        rng = random.Random(f"{self.seed}:{epoch}:{salt}")
        if self.caption_sampling == "multi_positive":
            m = self.captions_per_image
            return rng.sample(cands, m) if len(cands) >= m else cands + rng.choices(cands, k=m - len(cands))
        if self.source_weights:
            return [self._weighted(rec, cands, rng)]
        return [cands[rng.randrange(len(cands))]]

    def caption_of(self, index: int, epoch: int) -> str:
        """The caption item ``index`` gives at ``epoch`` (``""`` for a row without captions)."""
        r, picks = self.pick(index, epoch)
        return self.text_of(self.records[r], picks[0]) if picks else ""

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        r, picks = self.pick(index, epoch)
        return self.item_of(self.records[r], picks)

    def item_of(self, rec: Record, picks: list[int]) -> dict:
        """The item of ``rec`` handing out captions ``picks`` (image loaded and transformed, or an error item)."""
        texts = [self.text_of(rec, c) for c in picks]
        multi = self.all_captions or self.caption_sampling == "multi_positive"
        item = {"key": rec.key, "caption": texts[0] if texts else "", "meta": rec.meta}
        item["captions"] = texts if multi else list(rec.captions)
        if self.text_embeddings is not None and picks:
            emb = self.text_embeddings[rec.key][picks]
            item["text_embedding"] = emb if multi else emb[0]
        if self.text_only:
            return item
        if rec.image is None:
            return {"key": rec.key, "error": "no_image"}
        if self.placeholder is not None and rec.key in self.skip_image_keys:
            item["image"] = self.placeholder
            return item
        try:
            image = load_image(rec.image, self.max_image_pixels)
        except ImageLoadError as e:
            return {"key": rec.key, "error": e.reason}
        try:
            item["image"] = self.image_transform(image)
        except (
            Exception
        ):  # a transform that chokes on one odd image (1x1, extreme aspect) must not stop training
            return {"key": rec.key, "error": "transform_failed"}
        return item
