"""``VLMCaptioner``: captions from a saved :class:`~clipforge.models.vlm.VisionLanguageModel` folder (recap's
``mini_llava``, or any model in the AITQE layout) through the shared batched generation loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from PIL import Image

from clipforge.models.captioners.batched import BatchedCaptioner
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import render_prompt
from clipforge.models.vlm import VisionLanguageModel, VLMSpec

__all__ = ["CAPTION_PROMPT", "VLMCaptioner"]

CAPTION_PROMPT = "<|im_start|>user\n<image>\nDescribe the image briefly.<|im_end|>\n<|im_start|>assistant\n"
"""The caption prompt ``mini_llava`` is trained with (``CaptionFormatter``'s default): one ChatML user turn
(SmolLM2's and Qwen2's chat format) holding the image and the request, then the assistant's turn."""


class VLMCaptioner(BatchedCaptioner):
    """Captions from a vision + projector + LLM folder written by ``VisionLanguageModel.save_pretrained``.

    Args:
        path: the model folder (e.g. ``<train run>/mini_llava``).
        spec: build the model from a ``VLMSpec`` when no ``path`` is given: pretrained towers with an untrained
            projector (the no-alignment baseline), or random tiny parts for smoke runs (a tiny overlay's spec
            gives way to a folder given on top of it).
        name: column name of this captioner's captions.
        prompt: prompt template with the model's image placeholder; ``{caption}`` becomes the raw caption. The
            default is the prompt the caption SFT trains with.
        prompt_id: provenance name of the prompt.
        decoding: generation parameters (default: greedy, at most 30 new tokens).
        postprocess: ``strip`` or ``first_sentence`` (the recap seed's cut at the first period).
        num_captions: captions per image (more than one needs ``decoding.do_sample``).
        batch_size: rows per ``generate`` call.
        dtype: weight dtype; ``None`` = the folder's.
    """

    def __init__(
        self,
        path: str | None = None,
        spec: VLMSpec | None = None,
        name: str = "mini_llava",
        prompt: str = CAPTION_PROMPT,
        prompt_id: str = "describe_briefly_chatml",
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "strip",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str | None = None,
    ) -> None:
        if path is None and spec is None:
            raise ValueError(f"{name}: give path (a saved VLM folder) or spec (the model to build)")
        if path is not None:
            spec = None  # a folder given on top of a spec (a debug overlay's) is the model
        super().__init__(name, path or repr(spec), prompt_id, decoding, postprocess, num_captions, batch_size)
        self.path, self.spec, self.prompt, self.dtype = path, spec, prompt, dtype

    def _load(self, device: torch.device) -> None:
        if self.spec is not None:
            model = VisionLanguageModel.build(self.spec)
        else:
            model = VisionLanguageModel.from_pretrained(cast(str, self.path), dtype=self.dtype)
        self.model = model.to(device).eval()
        self.tokenizer = self.model.tokenizer

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        prompts = [render_prompt(self.prompt, c) for c in captions]
        return self.model.prepare_generation(images, prompts), [{} for _ in prompts]

    def __repr__(self) -> str:
        return f"VLMCaptioner({self.name!r}, {self.model_id!r}, prompt_id={self.prompt_id!r})"
