"""A decoder LLM (Llama / Qwen2 / Mistral families; SmolLM2 is a Llama) as a caption encoder, LLM2Vec style.

* **Bidirectional attention** is a switch (:func:`set_bidirectional`): transformers builds its attention masks in
  ``masking_utils.create_causal_mask``, which returns a padding-only bidirectional mask when ``config.is_causal`` is
  ``False``; the attention modules' own ``is_causal`` flag (what SDPA and flash attention use when no mask is
  materialised) is cleared too. Both together make every token see every non-padding token under ``eager``,
  ``sdpa`` and ``flash_attention_2`` alike.
* **Instructions and the pooled span**: a text is rendered as ``template.format(text=<instruction part> + text)``
  where the instruction part is ``instruction_format.format(instruction=...)`` (LLM2CLIP's
  ``"{instruction}; "``) or empty. With a chat template or ``eos`` pooling the caption's trailing whitespace is
  removed (and the instruction part's leading whitespace), as llm2vec's ``prepare_for_tokenization`` strips its
  text in exactly those cases; a bare ``{text}`` template with mean pooling keeps the text as given. Pooling covers the tokens from the start of the caption to the end of the
  rendered string (a chat template's closing token included, tokenizer-added BOS excluded) — LLM2Vec's
  ``skip_instruction`` span, found here from character offsets instead of a separator string.
* **Pooling**: ``mean`` and ``weighted_mean`` (weights 1..n along the span) over that span, or ``eos`` (the
  tokenizer's EOS token, appended after truncation, is the last token and its state is the embedding).
* Positions are counted from each sequence's first real token, so padding side and batch composition do not
  change an embedding.

An *encoder folder* is self-describing: Hugging Face weights (adapters merged) + tokenizer + ``encoder_config.json``
(pooling, bidirectional, instruction, template, max length), written by :meth:`LLMEncoder.save_pretrained` and
read by :meth:`LLMEncoder.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.lora import merged_state_dict
from clipforge.models.text import TextTower

__all__ = [
    "DEFAULTS",
    "ENCODER_CONFIG",
    "LLMEncoder",
    "LLMEncoderSpec",
    "LLMTokenizer",
    "POOLINGS",
    "as_encoder_spec",
    "load_encoder_spec",
    "pool_span",
    "set_bidirectional",
]

POOLINGS = ("mean", "weighted_mean", "eos")
ENCODER_CONFIG = "encoder_config.json"
DEFAULTS = {
    "bidirectional": True,
    "pooling": "mean",
    "instruction": "",
    "instruction_format": "{instruction}; ",
    "template": "{text}",
    "max_length": 512,
    "dtype": "float32",
}
"""Encoder settings used when neither the spec nor the folder's ``encoder_config.json`` gives one."""


@dataclass
class LLMEncoderSpec(TextTower):
    """What to load and how to turn its hidden states into one embedding per text.

    Settings left ``None`` come from the folder's ``encoder_config.json`` when ``name_or_path`` is an encoder
    folder, else from :data:`DEFAULTS`; :meth:`resolve` fills them in. So ``name_or_path: <run>/encoder`` alone
    reproduces the encoder a stage-1 run exported, and any field set here overrides the folder.

    Attributes:
        name_or_path: HF id, local folder (an encoder folder or any causal-LM folder) or ``pypi:<alias>``.
        gguf_file: GGUF file inside ``name_or_path`` (set by the ``pypi:smollm2-135m-instruct`` alias).
        bidirectional: every token attends to every non-padding token (LLM2Vec); ``False`` keeps the causal mask.
        pooling: ``mean`` | ``weighted_mean`` (over the caption span) | ``eos`` (state of an appended EOS token).
        instruction: instruction of :meth:`LLMEncoder.encode` when the call gives none (``""`` = no instruction).
        instruction_format: how an instruction is written before the caption (``{instruction}`` placeholder).
        template: model-specific wrapper of the instruction part + caption (``{text}`` placeholder), e.g.
            Llama-3's ``"<|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>"``.
        max_length: tokens per text, special tokens included (longer texts are cut at the end).
        dtype: weight dtype: ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: ``eager`` | ``sdpa`` | ``flash_attention_2``; ``None`` = transformers' default.
        merge_adapters: ``peft`` LoRA adapters (folders or HF ids) folded into the weights after loading, in order
            — LLM2CLIP starts from Llama-3 with LLM2Vec's ``-mntp`` and ``-mntp-supervised`` adapters merged.
        from_config: build a randomly initialised model (seed 0) from these ``AutoConfig.for_model`` fields
            (``model_type`` required, ``vocab_size`` defaults to the tokenizer's) instead of loading weights;
            ``name_or_path`` then only supplies the tokenizer. For tests and CPU smoke runs.
    """

    name_or_path: str
    gguf_file: str | None = None
    bidirectional: bool | None = None
    pooling: str | None = None
    instruction: str | None = None
    instruction_format: str | None = None
    template: str | None = None
    max_length: int | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    merge_adapters: list[str] | None = None
    from_config: dict | None = None

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"LLMEncoderSpec.pooling={self.pooling!r} is not one of {POOLINGS}")
        if self.template is not None and self.template.count("{text}") != 1:
            raise ValueError(f"LLMEncoderSpec.template must contain '{{text}}' once, got {self.template!r}")
        if self.instruction_format is not None and "{instruction}" not in self.instruction_format:
            raise ValueError("LLMEncoderSpec.instruction_format must contain '{instruction}'")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"LLMEncoderSpec.max_length={self.max_length} must be >= 2")

    def resolved(self) -> tuple[str, str | None]:
        """``(path, gguf_file)`` after resolving a ``pypi:`` alias."""
        asset = resolve_asset(self.name_or_path, self.gguf_file)
        return asset.path, asset.gguf_file

    def resolve(self) -> LLMEncoderSpec:
        """A copy with every setting filled in: this spec's, else the encoder folder's, else :data:`DEFAULTS`."""
        saved: dict = {}
        config_file = os.path.join(os.path.expanduser(self.resolved()[0]), ENCODER_CONFIG)
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                saved = json.load(f)
        filled = {
            k: getattr(self, k) if getattr(self, k) is not None else saved.get(k, default)
            for k, default in DEFAULTS.items()
        }
        return dataclasses.replace(self, **filled)

    def tokenizer(self) -> LLMTokenizer:
        """The tokenizer callable of this encoder (no weights are loaded)."""
        spec = self.resolve()
        path, gguf = spec.resolved()
        return LLMTokenizer(
            path,
            gguf,
            cast(int, spec.max_length),  # resolve() filled every setting
            cast(str, spec.template),
            cast(str, spec.instruction_format),
            append_eos=spec.pooling == "eos",
        )

    @property
    def feature_dim(self) -> int:
        """Width of the embeddings (the LLM's hidden size), read from its config."""
        from transformers import AutoConfig

        if self.from_config is not None:
            return int(self.from_config["hidden_size"])
        path, gguf = self.resolved()
        cfg = AutoConfig.from_pretrained(path, gguf_file=gguf)
        return int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)

    def build(self, with_lm_head: bool = False) -> LLMEncoder:
        """Load the weights; ``with_lm_head`` also keeps the LM head (``encoder.lm_head``, for MNTP)."""
        return LLMEncoder.from_spec(self, with_lm_head=with_lm_head)


def as_encoder_spec(spec: LLMEncoderSpec | Mapping) -> LLMEncoderSpec:
    """Normalise a spec given as a dataclass or a mapping (Hydra, jsonargparse)."""
    return spec if isinstance(spec, LLMEncoderSpec) else LLMEncoderSpec(**spec)


# -- tokenizer ---------------------------------------------------------------------------------------------------
class LLMTokenizer:
    """``texts -> {"input_ids", "attention_mask", "embed_mask"}`` (right padding, pad = EOS when unset).

    ``embed_mask`` marks the pooled span of each text (see the module docstring). Picklable, so dataloader
    workers can use it.

    Args:
        name_or_path: tokenizer folder or HF id.
        gguf_file: GGUF file inside ``name_or_path``.
        max_length: tokens per text including special tokens.
        template: wrapper with one ``{text}`` placeholder.
        instruction_format: how an instruction precedes the caption (``{instruction}`` placeholder).
        append_eos: end every sequence with the EOS token (``eos`` pooling), kept even when the text is cut.
    """

    def __init__(
        self,
        name_or_path: str,
        gguf_file: str | None = None,
        max_length: int = 512,
        template: str = "{text}",
        instruction_format: str = "{instruction}; ",
        append_eos: bool = False,
    ) -> None:
        from transformers import AutoTokenizer

        self.max_length, self.template, self.instruction_format = max_length, template, instruction_format
        self.append_eos = append_eos
        self._tok = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        if append_eos and self._tok.eos_token_id is None:
            raise ValueError(f"eos pooling needs an EOS token; {name_or_path} has none")

    @property
    def hf(self):
        """The wrapped ``transformers`` tokenizer."""
        return self._tok

    @property
    def strips(self) -> bool:
        """Whether :meth:`render` strips: with a chat template around the text or EOS pooling, the cases where
        llm2vec's ``prepare_for_tokenization`` applies ``text.strip()``; a bare ``{text}`` template with mean
        pooling passes the text as given, as llm2vec does."""
        return self.template != "{text}" or self.append_eos

    def render(self, text: str, instruction: str = "") -> tuple[str, int]:
        """The string fed to the model and the character offset where the caption starts.

        When :attr:`strips`, the instruction part + caption is stripped as llm2vec strips its
        ``"{instruction part}{separator}{caption}"`` string: trailing whitespace of the caption goes, and leading
        whitespace of the instruction part (a caption's own leading whitespace stays, behind the separator).
        """
        prefix, suffix = self.template.split("{text}")
        head = self.instruction_format.format(instruction=instruction) if instruction else ""
        if self.strips:
            head, text = head.lstrip(), text.rstrip()
        head = prefix + head
        return head + text + suffix, len(head)

    def __call__(
        self, texts: Sequence[str], instructions: str | Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize ``texts``, each with its instruction (one string for all, a list, or ``None``)."""
        texts = list(texts)
        if instructions is None or isinstance(instructions, str):
            instructions = [instructions or ""] * len(texts)
        if len(instructions) != len(texts):
            raise ValueError(f"{len(instructions)} instructions for {len(texts)} texts")
        rendered = [self.render(t, i) for t, i in zip(texts, instructions)]
        budget = self.max_length - int(self.append_eos)
        enc = self._tok(
            [r[0] for r in rendered],
            truncation=True,
            max_length=budget,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        rows_ids, rows_span = [], []
        for (_, start), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            # a token belongs to the caption span when it covers characters at or after the caption's start;
            # tokenizer-added specials (BOS) cover no characters
            span = [int(b > a and b > start) for a, b in offsets]
            if self.append_eos:
                ids, span = [*ids, self._tok.eos_token_id], [*span, 1]
            if not any(span):  # caption cut away entirely: pool over the whole text rather than nothing
                span = [1] * len(ids)
            rows_ids.append(ids)
            rows_span.append(span)
        width = max(len(r) for r in rows_ids) if rows_ids else 0
        pad = self._tok.pad_token_id
        input_ids = torch.full((len(rows_ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows_ids), width), dtype=torch.long)
        embed = torch.zeros((len(rows_ids), width), dtype=torch.long)
        for i, (ids, span) in enumerate(zip(rows_ids, rows_span)):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, : len(ids)] = 1
            embed[i, : len(ids)] = torch.tensor(span, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "embed_mask": embed}


# -- attention switch and pooling ----------------------------------------------------------------------------------
def set_bidirectional(model: nn.Module, enabled: bool) -> None:
    """Switch every attention layer of a transformers decoder between causal and bidirectional attention.

    Sets ``config.is_causal`` (read by transformers' mask builders; sliding windows become symmetric) on every
    config found in the model and the ``is_causal`` attribute of every attention module (read by SDPA / flash
    attention when no mask tensor is passed).
    """
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            config.is_causal = not enabled
        if "is_causal" in vars(module) and isinstance(vars(module)["is_causal"], bool):
            vars(module)["is_causal"] = not enabled


def pool_span(
    hidden: torch.Tensor, embed_mask: torch.Tensor, attention_mask: torch.Tensor, how: str
) -> torch.Tensor:
    """Pool token states ``(B, L, D)`` into ``(B, D)`` (float32).

    Args:
        hidden: last hidden states.
        embed_mask: ``(B, L)`` 1 on the pooled span (``mean``, ``weighted_mean``).
        attention_mask: ``(B, L)`` 1 on real tokens (``eos``: the last real token).
        how: one of :data:`POOLINGS`.
    """
    hidden = hidden.float()
    if how == "eos":
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(1).values.clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = embed_mask.to(hidden.dtype)
    if how == "mean":
        weights = mask
    elif how == "weighted_mean":
        weights = mask.cumsum(1) * mask  # 1, 2, ..., n along the span
    else:
        raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-9)
    return (hidden * weights.unsqueeze(-1)).sum(1)


# -- encoder -------------------------------------------------------------------------------------------------------
class LLMEncoder(nn.Module):
    """Hidden states of a decoder LLM pooled into caption embeddings.

    Args:
        model: the base transformer (``AutoModel``: no LM head), possibly wrapped in a ``peft.PeftModel``.
        tokenizer: the matching :class:`LLMTokenizer`.
        spec: the settings it was built with (pooling, bidirectional, instruction, ...; resolved here).
        lm_head: the LM head when the encoder is trained with MNTP (frozen, often tied to the input embeddings).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: LLMTokenizer,
        spec: LLMEncoderSpec,
        lm_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.spec = model, tokenizer, spec.resolve()
        self.lm_head = lm_head
        set_bidirectional(self.model, bool(self.spec.bidirectional))  # resolved: never None

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: LLMEncoderSpec | Mapping, with_lm_head: bool = False) -> LLMEncoder:
        """Load the weights a spec names (``with_lm_head``: through ``AutoModelForCausalLM``, keeping the head)."""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        spec = as_encoder_spec(spec).resolve()
        tokenizer = spec.tokenizer()
        auto = AutoModelForCausalLM if with_lm_head else AutoModel
        kwargs: dict = {"dtype": getattr(torch, cast(str, spec.dtype))}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        if spec.from_config is not None:
            fields = {"vocab_size": len(tokenizer.hf), **spec.from_config}
            config = AutoConfig.for_model(**fields)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = auto.from_config(config, **kwargs)
        else:
            path, gguf = spec.resolved()
            model = auto.from_pretrained(path, gguf_file=gguf, **kwargs)
        decoder = model.get_decoder() if with_lm_head else model
        for adapter in spec.merge_adapters or []:
            from peft import PeftModel

            # merge_and_unload folds the adapter in place and returns the same decoder object
            decoder = PeftModel.from_pretrained(decoder, resolve_asset(adapter).path).merge_and_unload()
        return cls(decoder, tokenizer, spec, model.get_output_embeddings() if with_lm_head else None)

    @classmethod
    def from_pretrained(cls, path: str, with_lm_head: bool = False, **overrides) -> LLMEncoder:
        """Load an encoder folder (its ``encoder_config.json`` settings) or any causal-LM folder / id / alias.

        Args:
            path: encoder folder, model folder, HF id or ``pypi:<alias>``.
            with_lm_head: keep the LM head (MNTP).
            **overrides: :class:`LLMEncoderSpec` fields that replace the folder's settings.
        """
        return cls.from_spec(load_encoder_spec(path, **overrides), with_lm_head=with_lm_head)

    # -- forward ---------------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Embedding width."""
        return int(self.base_model.config.hidden_size)

    @property
    def base_model(self) -> Any:
        """The transformer without a ``peft`` wrapper."""
        from peft import PeftModel

        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def set_bidirectional(self, enabled: bool) -> None:
        """Switch the attention between bidirectional and causal (the spec records the choice)."""
        set_bidirectional(self.model, enabled)
        self.spec = dataclasses.replace(self.spec, bidirectional=enabled)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``(B, L, D)``; positions start at 0 on every sequence's first real token."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embed_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled embeddings ``(B, D)`` in float32 (``embed_mask`` defaults to every real token)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        span = attention_mask if embed_mask is None else embed_mask
        return pool_span(hidden, span, attention_mask, cast(str, self.spec.pooling))

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        instruction: str | None = None,
        normalize: bool = False,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Embed ``texts`` (longest first, in eval mode) and return ``(N, D)`` float32 on the CPU, input order.

        Args:
            texts: the texts.
            batch_size: texts per forward pass.
            instruction: instruction before every text; ``None`` = the spec's ``instruction``.
            normalize: L2-normalise the embeddings.
            show_progress: a tqdm bar over batches.
        """
        texts = list(texts)
        instruction = self.spec.instruction if instruction is None else instruction
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        device = next(self.model.parameters()).device
        was_training = self.training
        self.eval()
        chunks = []
        starts = range(0, len(texts), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        try:
            for s in starts:
                batch = self.tokenizer([texts[i] for i in order[s : s + batch_size]], instruction)
                batch = {k: v.to(device) for k, v in batch.items()}
                chunks.append(self(**batch).cpu())
        finally:
            self.train(was_training)
        out = torch.empty(len(texts), self.feature_dim)
        if chunks:
            out[torch.tensor(order)] = torch.cat(chunks)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    # -- saving ----------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> str:
        """Write an encoder folder: merged HF weights, tokenizer and ``encoder_config.json``; returns ``path``.

        LoRA adapters are folded into the weights (the live model keeps training unchanged). The saved
        ``config.json`` is the model's ordinary causal config; ``encoder_config.json`` carries the attention and
        pooling settings :meth:`from_pretrained` re-applies.
        """
        os.makedirs(path, exist_ok=True)
        base = self.base_model
        if any(not p.is_floating_point() for p in base.parameters()):
            raise ValueError("packed quantized weights cannot be exported; load the encoder de-quantized")
        # dense weights saved as a plain checkpoint: no bidirectional flag in config.json (encoder_config.json
        # has it) and no quantizer (a GGUF file loads de-quantized on CPU, yet keeps its quantizer attached)
        saved = {
            "is_causal": base.config.__dict__.pop("is_causal", None),
            "quantization_config": base.config.__dict__.pop("quantization_config", None),
        }
        quantizer = base.__dict__.pop("hf_quantizer", None)
        try:
            base.save_pretrained(path, state_dict=merged_state_dict(self.model))
        finally:
            base.config.__dict__.update({k: v for k, v in saved.items() if v is not None})
            if quantizer is not None:
                base.hf_quantizer = quantizer
        self.tokenizer.hf.save_pretrained(path)
        settings = {k: getattr(self.spec, k) for k in DEFAULTS}
        with open(os.path.join(path, ENCODER_CONFIG), "w", encoding="utf-8") as f:
            json.dump({**settings, "source": self.spec.name_or_path}, f, indent=2)
        return path


def load_encoder_spec(path: str, **overrides) -> LLMEncoderSpec:
    """The resolved spec of an encoder folder (``encoder_config.json``) or plain model, ``overrides`` applied."""
    return LLMEncoderSpec(name_or_path=path, **overrides).resolve()
