"""Generation of a :class:`~clipforge.models.vlm.model.VisionLanguageModel`: ``transformers`` ``generate`` from the
spliced image + prompt embeddings, and decoded answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image

from clipforge.models.vlm.causal_lm import generate_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["VLMGeneration"]


class _GenerationHost(Protocol):
    """What :class:`VLMGeneration` uses of its host class (and of itself), for the type checker."""

    @property
    def model(self) -> PreTrainedModel: ...
    @property
    def tokenizer(self) -> Any: ...
    @property
    def eos_token_id(self) -> int: ...
    @property
    def device(self) -> torch.device: ...
    def build_inputs(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]: ...
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor: ...
    def embed(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        image_index: torch.Tensor | None = None,
        vision_chunk_size: int | None = None,
    ) -> torch.Tensor: ...
    def prepare_generation(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> dict[str, torch.Tensor]: ...
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor: ...


class VLMGeneration:
    """Generation methods of :class:`~clipforge.models.vlm.model.VisionLanguageModel` (a mixin: they use its
    ``build_inputs``, ``pixel_values``, ``embed``, ``model``, ``tokenizer``, ``eos_token_id`` and ``device``)."""

    @property
    def generation_config(self):
        """The LLM's generation config (EOS ids and defaults of ``generate``)."""
        return self.model.generation_config

    def prepare_generation(
        self: _GenerationHost, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Left-padded :meth:`generate` inputs: ``input_ids``, ``attention_mask``, ``images``."""
        return {**self.build_inputs(prompts, padding_side="left"), "images": self.pixel_values(images)}

    @torch.no_grad()
    def generate(
        self: _GenerationHost,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor,
        **kwargs: Any,
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
        new = generate_ids(self.model, inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        prompts = input_ids.repeat_interleave(
            new.shape[0] // input_ids.shape[0], dim=0
        )  # num_return_sequences
        return torch.cat([prompts, new], dim=1)

    def generate_text(
        self: _GenerationHost,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        max_new_tokens: int = 30,
        **kwargs: Any,
    ) -> list[str]:
        """Decoded answers (special tokens removed, stripped), one per image; greedy unless ``kwargs`` say
        otherwise (``do_sample=True``, ``temperature``, ``repetition_penalty``, ...)."""
        inputs = self.prepare_generation(images, prompts)
        kwargs.setdefault("do_sample", False)
        out = self.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
