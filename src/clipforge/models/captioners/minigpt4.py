"""``MiniGPT4Captioner``: MiniGPT-4 built from transformers modules, as the recap seed's ``MiniGPT-4/minigpt4.py`` runs it.

The model (:class:`MiniGPT4Model`) is MiniGPT-4's ``encode_img`` + ``get_context_emb`` with transformers parts:
``Blip2VisionModel`` (EVA ViT-g/14; its ``post_layernorm`` is ``ln_vision``), ``Blip2QFormerModel`` (the Q-Former
over 32 learned queries), ``llama_proj`` and the user's Vicuna / Llama-2-chat folder (``AutoModelForCausalLM``). The
weights come from the official files through :mod:`clipforge.models.convert.minigpt4`, no remote code.

What the seed runs (``Chat.batch_answer`` of its ``conversation.py``, the ``pretrain_vicuna0`` conversation):

* the prompt ``CONV_VISION_Vicuna0.get_prompt()`` after ``upload_img`` and ``ask('Describe in English:')`` — the
  system sentence, ``###Human: <Img><ImageHere></Img> Describe in English:###Assistant: ``; the text before
  ``<ImageHere>`` is tokenised with BOS, the text after without special tokens, and the 32 projected query outputs
  go in between (here: :data:`IMAGE_SLOT_ID` positions of ``input_ids``, replaced by the image features);
* ``generate(inputs_embeds=..., do_sample=True, top_p=0.9, temperature=1.0, num_beams=1, min_length=1,
  repetition_penalty=1.0, length_penalty=1, max_new_tokens=30)`` with transformers' default top-k 50, stopping at
  ``###`` (the token ids ``[835]`` / ``[2277, 29937]`` of Llama's vocabulary: ``stop_strings: ['###']`` here);
* the cut :func:`minigpt4_answer` on the generated tokens decoded *with* special tokens, after dropping a leading
  ``<unk>`` and then a leading ``<s>``.

Differences, all deliberate: the seed left-pads prompts of different lengths with zero embeddings and no attention
mask (its prompts all have the same length, so nothing is padded there) — here padding is masked; its stopping
criterion looks at row 0 only, so one row reaching ``###`` ends every row of the batch — here each row stops at
its own ``###`` (text before the first ``###`` is all the cut keeps, so a row's caption no longer depends on the
other rows); sampling draws per key (:class:`~clipforge.models.captioners.decoding.KeyedSampler`) instead of from
the global CUDA generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from PIL import Image
from torch import Tensor, nn

from clipforge.models.assets import resolve_asset
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import render_prompt
from clipforge.models.captioners.native import empty_init, load_strict
from clipforge.models.convert.minigpt4 import ConvertedMiniGPT4, convert_minigpt4, load_converted
from clipforge.models.vlm.causal_lm import generate_ids, input_embeddings

__all__ = [
    "IMAGE_PLACEHOLDER",
    "IMAGE_SLOT_ID",
    "MINIGPT4_VICUNA0_PROMPT",
    "MiniGPT4Captioner",
    "MiniGPT4Model",
    "minigpt4_answer",
]

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_SLOT_ID = -200
"""Marks the image's positions in ``input_ids`` (never embedded: replaced by the projected Q-Former outputs)."""

MINIGPT4_VICUNA0_PROMPT = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions.###Human: <Img><ImageHere></Img> Describe in English:###Assistant: "
)
"""``CONV_VISION_Vicuna0`` with the seed's question, as ``Chat.batch_answer`` renders it."""

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def minigpt4_answer(text: str) -> str:
    """``Chat.batch_answer``'s cut: before the first ``###``, before the first ``.``, after the last ``Assistant:``,
    stripped, without newlines and zero-width spaces (in that order)."""
    text = text.split("###")[0].split(".")[0]
    return text.split("Assistant:")[-1].strip().replace("\n", "").replace("\u200b", "")


class MiniGPT4Model(nn.Module):
    """EVA ViT-g + ``ln_vision`` -> Q-Former -> ``llama_proj`` -> image slots of the LLM's input embeddings.

    Args:
        converted: the image side's shapes and tensors (:func:`~clipforge.models.convert.minigpt4.convert_minigpt4`).
        language_model: the LLM (``LlamaForCausalLM`` or any causal LM with ``get_input_embeddings``).
        dtype: dtype of the image side.
        attn_implementation: transformers attention of the ViT and Q-Former (``None`` = the library's choice).

    Raises:
        ValueError: ``llama_proj`` does not output the LLM's width.
    """

    def __init__(
        self,
        converted: ConvertedMiniGPT4,
        language_model: nn.Module,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

        super().__init__()
        hidden = input_embeddings(language_model).weight.shape[1]
        if converted.llm_hidden_size != hidden:
            raise ValueError(f"llama_proj outputs width {converted.llm_hidden_size}, the LLM's is {hidden}")
        extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with empty_init(dtype):
            self.vision_model = Blip2VisionModel(Blip2VisionConfig(**converted.vision, **extra))
            self.qformer = Blip2QFormerModel(Blip2QFormerConfig(**converted.qformer, **extra))
            self.query_tokens = nn.Parameter(
                torch.empty(1, converted.num_query_tokens, converted.qformer["hidden_size"])
            )
            self.llama_proj = nn.Linear(converted.qformer["hidden_size"], hidden)
        self.vision_model.post_layernorm.eps = converted.ln_vision_eps  # ln_vision, not the blocks' eps
        load_strict(self, converted.state_dict, "MiniGPT-4 image side")
        self.language_model = language_model  # attached after the image side is loaded (it is loaded already)
        self.num_query_tokens = converted.num_query_tokens

    @property
    def generation_config(self):
        return self.language_model.generation_config

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """``encode_img``: ``(B, 3, H, W)`` -> ``(B, num_query_tokens, LLM width)``."""
        dtype = self.query_tokens.dtype
        image = self.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state  # ln_vision(ViT(x))
        queries = self.query_tokens.expand(image.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image).last_hidden_state
        return self.llama_proj(out)

    def embed(self, input_ids: Tensor, pixel_values: Tensor) -> Tensor:
        """Token embeddings with every row's :data:`IMAGE_SLOT_ID` positions replaced by its image's features.

        Raises:
            ValueError: a row without exactly ``num_query_tokens`` image slots.
        """
        slots = input_ids == IMAGE_SLOT_ID
        if (slots.sum(1) != self.num_query_tokens).any():
            raise ValueError(
                f"every row needs {self.num_query_tokens} image slots, got {slots.sum(1).tolist()}"
            )
        embeds = input_embeddings(self.language_model)(input_ids.masked_fill(slots, 0))
        images = self.encode_images(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(slots[..., None], images)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, **kwargs):
        """The LLM's output (``.logits``) on the prompt with the image inserted."""
        embeds = self.embed(input_ids, pixel_values)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def generate(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, **kwargs) -> Tensor:
        """``generate`` from the embeddings only (as the official ``Chat``: logits processors and ``min_length``
        see the generated tokens only); returns ``input_ids`` followed by the new tokens."""
        embeds = self.embed(input_ids, pixel_values)
        new = generate_ids(self.language_model, inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


class MiniGPT4Captioner(BatchedCaptioner):
    """MiniGPT-4 (the official files or a converted folder + the LLM folder) through the batched generation loop.

    Args:
        llm: the Vicuna-v0 / Llama-2-chat folder (or hub id) in Hugging Face format, with its tokenizer (``None`` =
            the one recorded in ``path``'s ``config.json``).
        eva_vit: ``eva_vit_g.pth``.
        qformer: ``blip2_pretrained_flant5xxl.pth``.
        checkpoint: ``pretrained_minigpt4.pth`` (``prerained_minigpt4_7b.pth`` for Llama-2).
        path: a folder written by ``python -m clipforge.models.convert.minigpt4`` (instead of the three files).
        name: column name of this captioner's captions.
        prompt: the full prompt with one ``<ImageHere>``; ``{caption}`` is the raw caption.
        prompt_id: provenance name of the prompt.
        stop_strings: a row stops once its text ends with one of these (``###``, the conversation separator).
        decoding: generation parameters.
        postprocess: ``minigpt4`` (the seed's cut on the decoded tokens, special tokens kept), ``first_sentence`` or
            ``strip`` (on the new tokens decoded without special tokens).
        num_captions: captions per image (more than one needs sampling).
        batch_size: rows per ``generate`` call.
        dtype: weight dtype of the whole model.
        image_size: input size of the ViT (``blip2_image_eval``: a square bicubic resize, no crop).
        vision_depth: EVA blocks used (39).
        vision_heads: EVA attention heads (16).
        qformer_heads: Q-Former attention heads (12).
        attn_implementation: transformers attention implementation (``None`` = the library's choice).
    """

    def __init__(
        self,
        llm: str | None = None,
        eva_vit: str | None = None,
        qformer: str | None = None,
        checkpoint: str | None = None,
        path: str | None = None,
        name: str = "minigpt4",
        prompt: str = MINIGPT4_VICUNA0_PROMPT,
        prompt_id: str = "seed_minigpt4_vicuna0_describe_in_english",
        stop_strings: Sequence[str] = ("###",),
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "minigpt4",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str = "float32",
        image_size: int = 224,
        vision_depth: int = 39,
        vision_heads: int = 16,
        qformer_heads: int = 12,
        attn_implementation: str | None = None,
    ) -> None:
        given = [f is not None for f in (eva_vit, qformer, checkpoint)]
        if not (path is None and all(given) or path is not None and not any(given)):
            raise ValueError(
                f"{name}: give either path (a converted folder) or all of eva_vit, qformer and checkpoint "
                "(eva_vit_g.pth, blip2_pretrained_flant5xxl.pth, pretrained_minigpt4.pth)"
            )
        if path is None and llm is None:
            raise ValueError(
                f"{name}: llm (the Vicuna / Llama-2-chat folder) is required with the official files"
            )
        if prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"{name}: the prompt needs exactly one {IMAGE_PLACEHOLDER}")
        model_id = cast(str, path or checkpoint)  # checked above: one of them is given
        super().__init__(name, model_id, prompt_id, decoding, postprocess, num_captions, batch_size)
        self.llm, self.eva_vit, self.qformer, self.checkpoint, self.path = (
            llm,
            eva_vit,
            qformer,
            checkpoint,
            path,
        )
        self.prompt, self.stop_strings, self.dtype = prompt, list(stop_strings), dtype
        self.image_size, self.vision_depth, self.vision_heads = image_size, vision_depth, vision_heads
        self.qformer_heads, self.attn_implementation = qformer_heads, attn_implementation
        resolve_dtype(dtype)
        self.transform: Callable[[Image.Image], Tensor] | None = None  # set by _load

    def _postprocess_rule(self, rule: str):
        return minigpt4_answer if rule == "minigpt4" else super()._postprocess_rule(rule)

    def _load(self, device: torch.device) -> None:
        from torchvision import transforms
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.path is not None:
            converted, recorded = load_converted(resolve_asset(self.path).path)
            llm = self.llm or recorded
            if llm is None:
                raise ValueError(f"{self.name}: {self.path} records no LLM folder; set llm")
        else:  # __init__: without a path, all three files and the LLM are given
            converted = convert_minigpt4(
                resolve_asset(cast(str, self.eva_vit)).path,
                resolve_asset(cast(str, self.qformer)).path,
                resolve_asset(cast(str, self.checkpoint)).path,
                image_size=self.image_size,
                vision_depth=self.vision_depth,
                vision_heads=self.vision_heads,
                qformer_heads=self.qformer_heads,
            )
            llm = cast(str, self.llm)
        dtype = resolve_dtype(self.dtype)
        llm_path = resolve_asset(llm).path
        tok = AutoTokenizer.from_pretrained(llm_path)
        extra = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        language_model = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, **extra)
        # rows that end early are filled like the official call fills them: the LLM's pad id, else EOS
        gen = language_model.generation_config
        tok.pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else _first(gen.eos_token_id)
        tok.padding_side = "left"
        self.tokenizer = tok
        self.model = (
            MiniGPT4Model(converted, language_model, dtype, self.attn_implementation).to(device).eval()
        )
        size = converted.vision["image_size"]
        self.transform = transforms.Compose(
            [
                transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
            ]
        )

    def prompt_ids(self, caption: str = "") -> list[int]:
        """One row's ids: the text before ``<ImageHere>`` with BOS, the image slots, the text after (no specials)."""
        before, after = render_prompt(self.prompt, caption).split(IMAGE_PLACEHOLDER)
        slots = [IMAGE_SLOT_ID] * self.model.num_query_tokens
        tok = self.tokenizer
        return (
            tok(before, add_special_tokens=True).input_ids
            + slots
            + tok(after, add_special_tokens=False).input_ids
        )

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        rows = [self.prompt_ids(c) for c in captions]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        transform = self.transform
        assert transform is not None  # generate() refuses to run before setup()
        pixels = torch.stack([transform(im.convert("RGB")) for im in images])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, [{} for _ in rows]

    def _generate_kwargs(self) -> dict:
        kwargs = self.decoding.generate_kwargs()
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        return kwargs

    def _stop_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos = (
            list(eos)
            if isinstance(eos, list | tuple)
            else [self.tokenizer.eos_token_id if eos is None else eos]
        )
        return [*eos, self.tokenizer.pad_token_id]

    def _decode(self, sequences: Tensor, prompt_length: int) -> tuple[list[str], list[str]]:
        if self.postprocess != "minigpt4":
            return super()._decode(sequences, prompt_length)
        texts = []
        for row in sequences[:, prompt_length:].tolist():
            # batch_answer: "the model might output a unknow token <unk> at the beginning", then a start token <s>
            if row and row[0] == self.tokenizer.unk_token_id:
                row = row[1:]
            if row and row[0] == self.tokenizer.bos_token_id:
                row = row[1:]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=False))
        return texts, [minigpt4_answer(t) for t in texts]

    def __repr__(self) -> str:
        return f"MiniGPT4Captioner({self.name!r}, {self.model_id!r}, llm={self.llm!r})"


def _first(ids):
    return ids[0] if isinstance(ids, list | tuple) else ids
