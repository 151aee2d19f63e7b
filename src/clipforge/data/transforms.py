"""Image transforms shared by the data layer and the vision tower specs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2 as T

__all__ = ["ImageTransform"]


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
