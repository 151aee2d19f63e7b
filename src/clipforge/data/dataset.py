"""``ImageTextDataset``: map-style dataset over records; bad rows come back as ``{"key", "error"}``, never raise."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from clipforge.data.errors import ImageLoadError
from clipforge.data.images import DEFAULT_MAX_PIXELS, DefaultImageTransform, load_image
from clipforge.data.records import Record

CAPTION_SAMPLING = ("random_one", "first")


class ImageTextDataset(Dataset):
    """Images (transformed to tensors) with their captions.

    ``dataset[i]`` is ``{"key", "image", "caption", "captions", "meta"}`` (no ``image`` when text-only), or
    ``{"key", "error": reason}`` for an image that cannot be loaded or transformed. ``caption`` is one caption:
    ``first``, or ``random_one`` — drawn from ``(seed, epoch, index)``, so it changes across epochs and is the
    same in every run and every worker process. ``captions`` holds all of the row's captions.

    The epoch comes from the index when the sampler yields ``(index, epoch)`` pairs (:class:`EpochSampler`,
    which works with any number of workers, persistent or not), else from :meth:`set_epoch`.

    Args:
        records: the rows.
        image_transform: picklable ``PIL.Image -> Tensor[3, H, W]``; ``None`` = :class:`DefaultImageTransform`.
        caption_sampling: ``random_one`` or ``first``.
        seed: seed of caption sampling.
        all_captions: evaluation mode: ``caption`` is the first caption (``captions`` always holds them all).
        text_only: do not load images.
        max_image_pixels: largest image accepted (``too_many_pixels`` error above).
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
    ) -> None:
        if caption_sampling not in CAPTION_SAMPLING:
            raise ValueError(f"caption_sampling={caption_sampling!r} is not one of {CAPTION_SAMPLING}")
        self.records = list(records)
        self.image_transform = image_transform if image_transform is not None else DefaultImageTransform()
        self.caption_sampling, self.seed = caption_sampling, seed
        self.all_captions, self.text_only, self.max_image_pixels = all_captions, text_only, max_image_pixels
        self.epoch = 0
        # keys whose image the model no longer needs (its frozen features are cached): ``placeholder`` instead
        self.skip_image_keys: frozenset[str] = frozenset()
        self.placeholder = None

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for caption sampling when indices are plain integers."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def caption_of(self, index: int, epoch: int) -> str:
        """The caption row ``index`` gives at ``epoch`` (``""`` for a row without captions)."""
        captions = self.records[index].captions
        if not captions:
            return ""
        if self.all_captions or self.caption_sampling == "first" or len(captions) == 1:
            return captions[0]
        return captions[random.Random(f"{self.seed}:{epoch}:{index}").randrange(len(captions))]

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        rec = self.records[index]
        item = {"key": rec.key, "caption": self.caption_of(index, epoch), "captions": list(rec.captions)}
        item["meta"] = rec.meta
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
