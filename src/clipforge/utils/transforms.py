"""Image transforms shared by the data layer and the vision tower specs.

In the bottom layer because both use them and neither imports the other: a vision tower names its transform
(:meth:`~clipforge.models.vision.VisionTower.image_transform`), the data layer falls back to one when the model
gives none (:class:`~clipforge.data.images.DefaultImageTransform`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2 as T

__all__ = ["ImageTransform", "ToRGB"]


class ImageTransform:
    """PIL image -> normalised float tensor: resize the short side, crop the centre (or a random crop).

    A class rather than a lambda so it pickles into DataLoader worker processes.

    Args:
        image_size: output side length.
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation used for normalisation.
        augment: random resized crop (scale 0.9-1.0, open_clip's training default) instead of a centre crop.
    """

    def __init__(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool = False
    ) -> None:
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        crop = (
            T.RandomResizedCrop(image_size, scale=(0.9, 1.0), antialias=True)
            if augment
            else T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size)])
        )
        self._tf = T.Compose(
            [T.ToImage(), crop, T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]
        )

    def __call__(self, image) -> torch.Tensor:
        return self._tf(image)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.image_size}, augment={self.augment})"


class ToRGB:
    """PIL image -> RGB PIL image (for models whose own processor resizes and normalises: captioners, VLMs).

    Args:
        max_side: downscale so the longer side is at most this (keeps batches of large photos small); ``None``
            keeps the size.
    """

    def __init__(self, max_side: int | None = None) -> None:
        self.max_side = max_side

    def __call__(self, image):
        image = image.convert("RGB")
        if self.max_side and max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side))
        return image

    def __repr__(self) -> str:
        return f"ToRGB(max_side={self.max_side})"
