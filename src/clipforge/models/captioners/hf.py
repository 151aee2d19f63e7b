"""``HFCaptioner``: any ``transformers`` image-text-to-text model (``AutoProcessor`` + chat template).

The presets in ``conf/model/mllm/`` are instances of this class: ``llava_1_5`` (``LlavaForConditionalGeneration``,
the seed's raw prompt ``'Describe <image> in English:'`` without chat template, LLaVA's default sampling at
temperature 0.2), ``qwen2_vl`` (``Qwen2VLForConditionalGeneration`` through its chat template, the Qwen-VL script's
prompt and greedy decoding) and ``hf`` (any model ``AutoModelForImageTextToText`` loads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clipforge.models.assets import resolve_asset
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.decoding import Decoding

__all__ = ["HFCaptioner", "render_prompt"]


def render_prompt(template: str, caption: str) -> str:
    """The prompt of one row: ``{caption}`` in ``template`` becomes the raw caption (other text is literal)."""
    return template.replace("{caption}", caption)


def _model_class(name: str):
    import transformers

    if name == "auto":
        return transformers.AutoModelForImageTextToText
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"model_class={name!r} is not a transformers class (e.g. LlavaForConditionalGeneration)"
        )
    return cls


class HFCaptioner(BatchedCaptioner):
    """A ``transformers`` VLM behind its own processor, generating in left-padded batches.

    With ``chat_template`` the prompt is the text part of one user turn ``[image, text]`` (plus an optional system
    turn) rendered by the processor's chat template; without it the prompt is fed as is and must contain the
    processor's image token (``<image>`` for LLaVA). ``{caption}`` in the prompt is replaced by the raw caption.

    Args:
        name_or_path: HF id or local folder of the model and its processor.
        name: column name of this captioner's captions.
        prompt: prompt template (see above).
        prompt_id: provenance name of the prompt.
        chat_template: render the prompt with the processor's chat template.
        system_prompt: system turn for the chat template (``None`` = the template's default).
        decoding: generation parameters.
        postprocess: ``first_sentence`` (official scripts) or ``strip``.
        num_captions: captions per image (more than one needs sampling).
        batch_size: rows per ``generate`` call.
        model_class: ``auto`` (``AutoModelForImageTextToText``) or a ``transformers`` class name.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
        processor_kwargs: extra ``AutoProcessor.from_pretrained`` arguments (e.g. Qwen2-VL ``max_pixels``).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; ``None`` = the library's choice.
        trust_remote_code: run Python code shipped with the model folder (only if you trust it).
        backend: ``hf`` (``generate``) or ``vllm`` (any vLLM multimodal architecture; ``make setup-vllm``).
        engine_args: extra ``vllm.LLM`` arguments of the vLLM backend.
    """

    def __init__(
        self,
        name_or_path: str,
        name: str = "hf",
        prompt: str = "Describe this image in one sentence.",
        prompt_id: str = "describe_one_sentence",
        chat_template: bool = True,
        system_prompt: str | None = None,
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "first_sentence",
        num_captions: int = 1,
        batch_size: int = 16,
        model_class: str = "auto",
        dtype: str = "float32",
        processor_kwargs: dict | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        backend: str = "hf",
        engine_args: dict | None = None,
    ) -> None:
        super().__init__(
            name,
            name_or_path,
            prompt_id,
            decoding,
            postprocess,
            num_captions,
            batch_size,
            backend,
            engine_args,
        )
        self.name_or_path, self.prompt, self.chat_template = name_or_path, prompt, chat_template
        self.system_prompt, self.model_class, self.dtype = system_prompt, model_class, dtype
        self.processor_kwargs = dict(processor_kwargs or {})
        self.attn_implementation, self.trust_remote_code = attn_implementation, trust_remote_code
        resolve_dtype(dtype)
        self.processor: Any = None  # loaded by setup()

    def _load_processor(self) -> str:
        """Load ``self.processor`` and ``self.tokenizer`` (left padding, a pad token); returns the model folder."""
        from transformers import AutoProcessor

        path = resolve_asset(self.name_or_path).path
        remote = {"trust_remote_code": True} if self.trust_remote_code else {}
        self.processor = AutoProcessor.from_pretrained(path, **self.processor_kwargs, **remote)
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        return path

    def _load(self, device: torch.device) -> None:
        path = self._load_processor()
        remote = {"trust_remote_code": True} if self.trust_remote_code else {}
        extra = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        model = _model_class(self.model_class).from_pretrained(
            path, dtype=resolve_dtype(self.dtype), **extra, **remote
        )
        self.model = model.to(device).eval()

    def render(self, caption: str) -> str:
        """The full text of one row's prompt (chat template applied), before image-token expansion."""
        text = render_prompt(self.prompt, caption)
        if not self.chat_template:
            return text
        messages: list[dict[str, Any]] = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        )
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _vllm_setup(self, device: torch.device) -> dict:
        from clipforge.models.captioners.vllm_engine import generation_config

        path = self._load_processor()
        self.generation_config = generation_config(path, self.trust_remote_code)
        return {
            "model": path,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
            "multimodal": True,
            "processor_kwargs": self.processor_kwargs,
        }

    def _add_special_tokens(self, texts: Sequence[str]) -> bool:
        """Whether the tokenizer adds BOS: not when the chat template writes it itself (no second one)."""
        bos = self.tokenizer.bos_token
        return not (bos and texts and texts[0].startswith(bos))

    def _vllm_prompts(
        self, images: Sequence[Image.Image], captions: Sequence[str]
    ) -> tuple[list[dict], list[dict]]:
        # the unexpanded prompt (one image token each): vLLM's processor expands it as the HF processor does
        texts = [self.render(c) for c in captions]
        ids = self.tokenizer(texts, add_special_tokens=self._add_special_tokens(texts))["input_ids"]
        prompts = [{"prompt_token_ids": i, "multi_modal_data": {"image": im}} for i, im in zip(ids, images)]
        return prompts, [{} for _ in texts]

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        texts = [self.render(c) for c in captions]
        special = self._add_special_tokens(texts)
        inputs = self.processor(
            images=list(images),
            text=texts,
            padding=True,
            padding_side="left",
            add_special_tokens=special,
            return_tensors="pt",
        )
        inputs = dict(inputs)
        dtype = resolve_dtype(self.dtype)
        for k in ("pixel_values", "pixel_values_videos"):
            if k in inputs and inputs[k].is_floating_point():
                inputs[k] = inputs[k].to(dtype)
        return inputs, [{} for _ in texts]

    def __repr__(self) -> str:
        return f"HFCaptioner({self.name!r}, {self.name_or_path!r}, prompt_id={self.prompt_id!r})"
