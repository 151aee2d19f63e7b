"""LLM2CLIPModule: CLIP training whose text tower is a frozen LLM caption encoder behind a trained adapter.

LLM2CLIP stage 2: the caption-contrastive LLM is frozen and its caption embeddings are computed
once, offline (``tasks/llm2clip/embed.py`` writes them next to the data; the datamodule hands them over as
``batch["text_embedding"]``); an adapter (:mod:`clipforge.models.adapters`, ``TextProj`` by default) maps them
into the shared space, and the pretrained vision tower is fine-tuned with a new head, a contrastive loss over the
global batch (``ClipLoss`` / ``SigLipLoss``) and layer-wise lr decay.

Everything image-side (towers, frozen-feature cache, retrieval accumulators, logging) is :class:`CLIPModule`'s;
this class replaces the text side:

* ``text_source="cache"`` (default): text = ``adapter(batch["text_embedding"])``. Where a batch has no
  embeddings (a dataset without a cache) and a text encoder is configured, its captions are encoded online
  instead, with a one-time warning.
* ``text_source="online"`` (the paper's "LLM in the loop" ablation): the frozen encoder embeds the tokenized
  captions of every batch, every step.

The text encoder (``text``: an :class:`~clipforge.models.llm_encoder.LLMEncoderSpec` — the stage-1 encoder
folder, a raw LLM — or any :class:`~clipforge.models.text.TextTower` such as MiniLM) is built on first use, kept
in eval mode without gradients and *outside* the module's state: it is not in checkpoints, not in the optimizer
and not wrapped by DDP ("frozen and absent from the graph"). It also serves zero-shot classification: ``tokenizer`` + ``encode_text`` follow CLIPModule's contract, so
:class:`~clipforge.callbacks.zero_shot.ZeroShotEval` builds class-name embeddings with the LLM (prompt -> LLM ->
adapter -> L2, averaged over templates, renormalised: LLM2CLIP's classifier).

Design notes: docs/design/llm2clip.md#stage-2-the-model-and-the-loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clipforge.eval.accumulator import RetrievalAccumulator
from clipforge.models.adapters import AdapterSpec, as_adapter_spec, build_adapter
from clipforge.models.heads import HeadSpec, build_head
from clipforge.models.llm_encoder import LLMEncoderSpec
from clipforge.models.text import TextTower
from clipforge.models.trainable import apply_trainable
from clipforge.models.vision import VisionTower
from clipforge.tasks.shared.clip import CLIPModule
from clipforge.utils.layer_decay import apply_lr_scales, layer_decay_param_groups
from clipforge.utils.optim import optimizer_config, param_groups

__all__ = ["TEXT_SOURCES", "LLM2CLIPModule"]

log = logging.getLogger("clipforge")

TEXT_SOURCES = ("cache", "online")


class LLM2CLIPModule(CLIPModule):
    """Vision tower + head, adapter over frozen-LLM caption embeddings (cached or online), contrastive loss.

    Batch keys: ``image``, ``key``, and ``text_embedding`` (``(B, D)`` for the sampled caption in training,
    ``(N_captions, D)`` aligned with ``captions`` in evaluation) and/or ``text`` (tokenized captions, present when
    a text encoder is configured). Logged like :class:`CLIPModule` (``train/contrastive_loss``,
    ``{val,test}/retrieval/<dataset>/...``, ``{val,test}/rsum``).

    Args:
        vision: image tower spec (EfficientNet-Lite0 on CPU; EVA02 / OpenAI ViTs through timm).
        loss: contrastive loss module (``ClipLoss`` or ``SigLipLoss``).
        optimizer: optimizer builder, applied to the parameter groups.
        scheduler: optional LR-scheduler builder, stepped every optimizer step.
        text: frozen text encoder: an :class:`~clipforge.models.llm_encoder.LLMEncoderSpec` (the stage-1 encoder
            folder, or a raw LLM with its pooling / attention settings) or any ``TextTower`` (MiniLM...);
            ``None`` = cached embeddings only (then ``embedding_dim`` is required).
        text_source: ``cache`` or ``online`` (see the module docstring).
        embedding_dim: width of the text embeddings; default: the text encoder's ``feature_dim``.
        adapter: the adapter (``kind`` ``textproj`` | ``linear`` | ``none``, depth, expansion...).
        embed_dim: width of the shared space (LLM2CLIP: 1280).
        vision_head: projection head of the image tower (LLM2CLIP: a new linear head).
        trainable_vision: ``full`` (LLM2CLIP fine-tunes the whole tower) or ``frozen`` (LiT-style, CPU demos).
        layer_decay: layer-wise lr decay of the vision tower (LLM2CLIP: 0.85; ``1.0`` = off).
        cache_frozen_features: with a frozen vision tower, memoise image features by sample key (see
            :class:`CLIPModule`).
        memoize_text: memoise the text encoder's embeddings by caption string, so each distinct caption is
            encoded once (online mode and cache fallback): the offline cache, built lazily. Off for the "LLM in
            the loop" measurement.
        init_weights: a state-dict file of this module (vision tower, head, adapter, loss scale), e.g. a released
            LLM2CLIP checkpoint converted by :mod:`clipforge.models.convert`; loaded in ``configure_model``.
    """

    def __init__(
        self,
        vision: VisionTower,
        loss: nn.Module,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        text: TextTower | LLMEncoderSpec | None = None,
        text_source: str = "cache",
        embedding_dim: int | None = None,
        adapter: AdapterSpec | Mapping | None = None,
        embed_dim: int = 1280,
        vision_head: HeadSpec | Mapping | None = None,
        trainable_vision: str = "full",
        layer_decay: float = 1.0,
        cache_frozen_features: bool = False,
        memoize_text: bool = False,
        init_weights: str | None = None,
    ) -> None:
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source must be one of {TEXT_SOURCES}, got {text_source!r}")
        if text is None and (text_source == "online" or embedding_dim is None):
            raise ValueError(
                "without a text encoder (model.text) use text_source=cache and set embedding_dim"
            )
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        super().__init__(
            vision=vision,
            text=text,
            loss=loss,
            optimizer=optimizer,
            scheduler=scheduler,
            embed_dim=embed_dim,
            vision_head=vision_head,
            trainable={"vision": trainable_vision, "text": "frozen"},
            cache_frozen_features=cache_frozen_features,
        )
        self.text_source, self.layer_decay, self.init_weights = text_source, layer_decay, init_weights
        self.memoize_text = memoize_text
        self.adapter_spec = as_adapter_spec(adapter)
        self._embedding_dim = embedding_dim
        self.adapter: nn.Module | None = None
        # the text encoder lives in a plain dict: not a submodule, so not in the state dict, optimizer or DDP
        self._frozen: dict[str, nn.Module] = {}
        self._warned_fallback = False

    # -- data-side contract -------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The text encoder's tokenizer (``None`` without one: cached embeddings need no tokens)."""
        if self.text_spec is None:
            return None
        return super().tokenizer

    @property
    def embedding_dim(self) -> int:
        """Width of the text embeddings the adapter takes."""
        if self._embedding_dim is None:
            self._embedding_dim = int(self.text_spec.feature_dim)
        return self._embedding_dim

    # -- model ----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.vision_tower is not None:
            return
        self.vision_tower = self.vision_spec.build()
        self.vision_head = build_head(
            self.vision_head_spec, self.vision_spec.feature_dim, self.hparams.embed_dim
        )
        self.adapter = build_adapter(self.adapter_spec, self.embedding_dim, self.hparams.embed_dim)
        apply_trainable(self.vision_tower, self.trainable.vision)
        if self.init_weights:
            state = torch.load(self.init_weights, map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("state_dict", state), strict=True)

    def text_encoder(self) -> nn.Module:
        """The frozen text encoder, built on first use (eval mode, no gradients, on this module's device)."""
        if self.text_spec is None:
            raise RuntimeError(
                "no text encoder configured (model.text): only cached text embeddings can be used"
            )
        encoder = self._frozen.get("text")
        if encoder is None:
            encoder = self.text_spec.build()
            apply_trainable(encoder, "frozen")
            self._frozen["text"] = encoder
        if next(encoder.parameters()).device != self.device:
            encoder.to(self.device)
        return encoder

    @torch.no_grad()
    def text_features(self, text: Mapping) -> torch.Tensor:
        """Text-encoder embeddings ``(N, embedding_dim)`` (fp32) of tokenized captions."""
        encoder = self.text_encoder()
        # every tokenizer output goes in: LLMEncoder also takes the pooled span (embed_mask)
        return encoder(**{k: v.to(self.device) for k, v in text.items()}).float()

    def encode_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """L2-normalised shared-space embeddings ``(N, embed_dim)`` of text embeddings ``(N, embedding_dim)``."""
        if embedding.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"text embeddings are {embedding.shape[-1]}-d but the adapter takes {self.embedding_dim}-d "
                "(model.embedding_dim / the text encoder's width): were they computed by another encoder?"
            )
        return F.normalize(self.adapter(embedding.to(self.device, torch.float32)), dim=-1)

    def encode_text(self, text: Mapping, captions: list[str] | None = None, slot: tuple = ("eval",)):
        """L2-normalised caption embeddings ``(N, embed_dim)`` from tokenizer output, through the text encoder."""
        return self.encode_embedding(self.text_features(text))

    def _text_embeddings(self, batch: Mapping, captions_key: str) -> torch.Tensor:
        """The batch's text embeddings: cached ones, or the text encoder's (online mode / no cache)."""
        if self.text_source == "cache" and "text_embedding" in batch:
            return batch["text_embedding"]
        if "text" not in batch:
            raise KeyError(
                "batch has no text_embedding (set data.<split>.text_embeddings to the cache folder) and no "
                "tokenized captions (configure model.text to encode them online)"
            )
        if self.text_source == "cache" and not self._warned_fallback:
            log.warning("a batch has no cached text_embedding: encoding its captions with the text encoder")
            self._warned_fallback = True
        if not self.memoize_text:
            return self.text_features(batch["text"])
        captions = batch[captions_key]
        missing = [i for i, c in enumerate(captions) if ("llm", c) not in self._cache]
        if missing:
            rows = torch.tensor(missing)
            feats = self.text_features({k: v[rows] for k, v in batch["text"].items()})
            for j, i in enumerate(missing):
                self._cache[("llm", captions[i])] = feats[j]
        return torch.stack([self._cache[("llm", c)] for c in captions])

    def forward(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(batch["image"]), self.encode_embedding(
            self._text_embeddings(batch, "caption")
        )

    # -- steps ----------------------------------------------------------------------------------------------------
    def _shared_step(self, batch: Mapping) -> dict[str, torch.Tensor]:
        img = self.encode_image(batch["image"], batch["key"], slot=("fit",))
        txt = self.encode_embedding(self._text_embeddings(batch, "caption"))
        return self.loss(img, txt)

    def _eval_step(self, batch: Mapping, dataloader_idx: int, stage: str) -> None:
        if len(batch["key"]) == 0:
            return
        img = self.encode_image(batch["image"], batch["key"], slot=(stage, dataloader_idx))
        txt = self.encode_embedding(self._text_embeddings(batch, "captions"))
        acc = self._accumulators.setdefault(dataloader_idx, RetrievalAccumulator())
        acc.update(batch["key"], img, txt, batch["caption_image_index"])

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        decayed = self.layer_decay < 1.0 and self.trainable.vision == "full"
        groups = (
            layer_decay_param_groups(self, self.vision_tower, self.layer_decay)
            if decayed
            else param_groups(self)
        )
        optimizer = apply_lr_scales(self.optimizer_builder(groups))
        return optimizer_config(optimizer, self)
