"""``OtterCaptioner``: Otter (OpenFlamingo architecture) built natively, as the recap seed's ``Otter/Otter.py`` runs it.

:class:`OtterModel` re-builds ``otter_ai``'s ``OtterForConditionalGeneration`` (Luodian/Otter,
``src/otter_ai/models/otter/modeling_otter.py``, ``configuration_otter.py``) from transformers modules and two
small ones of ours, with the released key names, so the Hugging Face folder of ``luodian/OTTER-Image-MPT7B``
(``config.json`` + weight shards) loads as it is, without remote code:

* ``vision_encoder``: transformers' ``CLIPVisionModel`` (CLIP ViT-L/14, 224 px); its last hidden state without the
  class token (no ``post_layernorm``) feeds
* ``perceiver``: :class:`PerceiverResampler` (``OtterPerceiverResampler``: 64 latents, 6 blocks of 8 heads x 64,
  FFN x4, optional ``frame_embs`` when ``max_num_frames`` is set) -> ``(B, T_img, 64, 1024)``;
* ``lang_encoder``: transformers' ``MptForCausalLM`` (MPT-7B: ALiBi, no biases; ``LlamaForCausalLM`` for the LLaMA
  Otters) whose decoder layer ``i`` is wrapped in :class:`CrossAttentionDecoderLayer` — ``decoder_layer`` (the
  original block) preceded, when ``(i + 1) % cross_attn_every_n_layers == 0``, by ``gated_cross_attn_layer``
  (:class:`GatedCrossAttentionBlock`: tanh-gated masked cross-attention to the latents, then a tanh-gated FFN);
* media locations: every forward of the language model recomputes ``input_ids == <image> id`` from the ids it is
  given (``OtterLMMixin.forward``); a text position attends to the latents of the last ``<image>`` at or before it,
  positions before any ``<image>`` get no cross-attention. As in the official code this also holds during cached
  generation, where each step sees only its new token: new tokens then get no cross-attention. The MPT-7B Otter
  config of the Otter repository (``utils/Otter-MPT7B-config.json``) has ``use_cache: false``, which the official
  ``generate`` inherits, so it recomputes the whole sequence each step and new tokens do attend to the image;
  ``use_cache`` (preset key, ``null`` = the checkpoint's ``text_config.use_cache``) reproduces either.

Seed settings (``Otter.py``, batch path): tokenizer ``mosaicml/mpt-7b-instruct`` plus the special tokens
``<|endofchunk|>``, ``<image>``, ``<answer>`` and ``<PAD>`` (as the model class adds them), left padding, prompt
``<image> User: Describe in English: GPT: <answer>``, ``transformers.CLIPImageProcessor()`` defaults (shortest side
224 bicubic, 224 centre crop, OpenAI mean / std), ``generate(max_new_tokens=30, num_beams=1,
no_repeat_ngram_size=3)`` greedy with EOS ``<|endofchunk|>``, bf16, and the cut :func:`otter_answer` on the whole
decoded sequence (prompt included, special tokens kept).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from clipforge.models.assets import resolve_asset
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import render_prompt
from clipforge.models.captioners.native import empty_init
from clipforge.models.vlm.causal_lm import generate_ids, input_embeddings

log = logging.getLogger("clipforge.models")

__all__ = [
    "OTTER_SPECIAL_TOKENS",
    "CrossAttentionDecoderLayer",
    "GatedCrossAttentionBlock",
    "MaskedCrossAttention",
    "OtterCaptioner",
    "OtterModel",
    "PerceiverResampler",
    "add_otter_tokens",
    "load_otter",
    "otter_answer",
]

OTTER_SPECIAL_TOKENS = ["<|endofchunk|>", "<image>", "<answer>"]
"""Added by ``OtterForConditionalGeneration.__init__`` (then ``<PAD>`` as pad token if the tokenizer has none)."""
HEADS, DIM_HEAD, FF_MULT = 8, 64, 4
"""Perceiver and cross-attention widths the official classes fix (``heads=8, dim_head=64, mult=4``)."""
PERCEIVER_DEPTH, NUM_LATENTS = 6, 64
DECODER_LAYERS = {"mpt": "transformer.blocks", "llama": "model.layers"}
_UNUSED_KEYS = ("position_ids",)  # CLIP's position-id buffer, saved by older transformers versions


def otter_answer(decoded: str) -> str:
    """``Otter.py``'s cut of one decoded sequence (prompt + answer, special tokens kept): split at spaces, drop
    words starting with ``<``, keep the words after the first ``GPT:``, re-join, cut at ``<|endofchunk|>``, then
    before the first ``.``.

    Raises:
        ValueError: no ``GPT:`` word (the script raises too).
    """
    words = [w for w in decoded.split(" ") if not w.startswith("<")]
    if "GPT:" not in words:
        raise ValueError(f"no 'GPT:' word in the decoded sequence {decoded[:200]!r}")
    answer = " ".join(words[words.index("GPT:") + 1 :])
    return answer.split("<|endofchunk|>")[0].split(".")[0]


def _ffn(dim: int, mult: int) -> nn.ModuleList:
    return nn.ModuleList(
        [
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        ]
    )


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(..., n, heads * d)`` -> ``(..., heads, n, d)``."""
    *lead, n, _ = x.shape
    return x.reshape(*lead, n, heads, -1).transpose(-3, -2)


def _merge(x: Tensor) -> Tensor:
    """``(..., heads, n, d)`` -> ``(..., n, heads * d)``."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverBlock(nn.Module):
    """Latents attend to ``[media; latents]`` (``OtterPerceiverBlock``), then an FFN; both residual."""

    def __init__(self, dim: int, dim_head: int = DIM_HEAD, heads: int = HEADS, mult: int = FF_MULT) -> None:
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * heads * 2, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
        self.feed_forward = _ffn(dim, mult)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """``x`` ``(b, T, n1, D)`` media, ``latents`` ``(b, T, n2, D)`` -> new latents."""
        x, residual = self.norm_media(x), latents
        latents = self.norm_latents(latents)
        q = _heads(self.to_q(latents), self.heads) * self.scale
        k, v = (_heads(t, self.heads) for t in self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1))
        attn = (q @ k.transpose(-1, -2)).softmax(dim=-1)
        out = self.to_out(_merge(attn @ v)) + residual
        residual = out
        for layer in self.feed_forward:
            out = layer(out)
        return out + residual


class PerceiverResampler(nn.Module):
    """``(b, T, F, v, D)`` image features -> ``(b, T, num_latents, D)`` (``OtterPerceiverResampler``)."""

    def __init__(
        self,
        dim: int,
        depth: int = PERCEIVER_DEPTH,
        num_latents: int = NUM_LATENTS,
        max_num_frames: int | None = None,
        max_num_media: int | None = None,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.empty(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.empty(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList([PerceiverBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, T, F, v, D = x.shape
        if self.frame_embs is not None:
            x = x + self.frame_embs[:F][None, None, :, None, :]
        x = x.reshape(b, T, F * v, D)
        if self.media_time_embs is not None:
            x = x + self.media_time_embs[:T]
        latents = self.latents.expand(b, T, *self.latents.shape)
        for block in self.layers:
            latents = block(x, latents)
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    """Text attends to the latents of its most recent ``<image>`` (``OtterMaskedCrossAttention``,
    ``only_attend_immediate_media=True``, ``attend_previous=True``)."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = DIM_HEAD, heads: int = HEADS) -> None:
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim_visual, dim_head * heads * 2, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

    def forward(self, x: Tensor, media: Tensor, media_locations: Tensor) -> Tensor:
        """``x`` ``(B, L, D)``, ``media`` ``(B, T_img, n, Dv)``, ``media_locations`` ``(B, L)`` bool."""
        _, t_img, n = media.shape[:3]
        q = _heads(self.to_q(self.norm(x)), self.heads) * self.scale
        k, v = (_heads(t, self.heads) for t in self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1))
        sim = q @ k.transpose(-1, -2)  # (B, h, L, T_img * n)
        text_time = media_locations.cumsum(
            dim=-1
        )  # which image (1-based) each position follows; 0 = none yet
        media_time = torch.arange(1, t_img + 1, device=x.device).repeat_interleave(n)
        allowed = text_time[:, None, :, None] == media_time
        sim = sim.masked_fill(~allowed, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1).masked_fill((text_time == 0)[:, None, :, None], 0.0)
        return self.to_out(_merge(attn @ v))


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(attn_gate) * xattn(x)``, then ``+ tanh(ff_gate) * ffn`` (``OtterGatedCrossAttentionBlock``)."""

    def __init__(self, dim: int, dim_visual: int, ff_mult: int = FF_MULT) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.feed_forward = _ffn(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, media: Tensor, media_locations: Tensor) -> Tensor:
        x = self.attn(x, media, media_locations) * self.attn_gate.tanh() + x
        residual = x
        for layer in self.feed_forward:
            x = layer(x)
        return x * self.ff_gate.tanh() + residual


class CrossAttentionDecoderLayer(nn.Module):
    """A language-model decoder layer, preceded by gated cross-attention to the conditioned media (``OtterLayer``)."""

    def __init__(
        self, gated_cross_attn_layer: GatedCrossAttentionBlock | None, decoder_layer: nn.Module
    ) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.media: Tensor | None = None
        self.media_locations: Tensor | None = None

    def forward(self, hidden_states: Tensor, *args, **kwargs):
        if self.gated_cross_attn_layer is not None:
            if self.media is None or self.media_locations is None:
                raise RuntimeError(
                    "cross-attention layer used without media (call OtterModel, not lang_encoder)"
                )
            hidden_states = self.gated_cross_attn_layer(hidden_states, self.media, self.media_locations)
        return self.decoder_layer(hidden_states, *args, **kwargs)


def _language_model_type(text_config: Mapping) -> str:
    arch = (text_config.get("architectures") or [None])[0]
    kind = {"MPTForCausalLM": "mpt", "LlamaForCausalLM": "llama"}.get(arch, text_config.get("model_type"))
    if kind not in DECODER_LAYERS:
        raise ValueError(
            f"Otter text_config: {arch or kind!r} is not MPT or LLaMA (MosaicGPT / Falcon Otters: no)"
        )
    return kind


def _mpt_config(text_config: Mapping):
    """The released MPT config as transformers' ``MptConfig``, refusing what ``MptForCausalLM`` does not compute."""
    from transformers import MptConfig

    cfg = dict(text_config)
    attn = dict(cfg.get("attn_config") or {})
    unsupported = {
        "attn_config.alibi": (attn.get("alibi", True), True),
        "attn_config.qk_ln": (attn.get("qk_ln", False), False),
        "attn_config.prefix_lm": (attn.get("prefix_lm", False), False),
        "attn_config.attn_uses_sequence_id": (attn.get("attn_uses_sequence_id", False), False),
        "attn_config.attn_type": (attn.get("attn_type", "multihead_attention"), "multihead_attention"),
        "expansion_ratio": (cfg.get("expansion_ratio", 4), 4),
        "no_bias": (cfg.get("no_bias", True), True),
        "logit_scale": (cfg.get("logit_scale"), None),
        "embedding_fraction": (cfg.get("embedding_fraction", 1.0), 1.0),
    }
    bad = {k: got for k, (got, want) in unsupported.items() if got != want}
    if bad:
        raise ValueError(f"Otter MPT text_config: {bad} is not supported by transformers' MptForCausalLM")
    for key in (
        "architectures",
        "model_type",
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
    ):
        cfg.pop(key, None)
    return MptConfig(**cfg)


class OtterModel(nn.Module):
    """Otter's forward: CLIP features -> Perceiver latents -> a language model with gated cross-attention layers.

    Args:
        config: the released ``config.json`` (``vision_config``, ``text_config``, ``cross_attn_every_n_layers``,
            optional ``max_num_frames``).
        media_token_id: id of ``<image>`` in the tokenizer.
        eoc_token_id: id of ``<|endofchunk|>`` (the end of an answer; ``generate``'s EOS).
        dtype: weight dtype.
        attn_implementation: transformers attention of the CLIP and language models (``None`` = the library's).

    The parameters are uninitialised: load them (:func:`load_otter`).
    """

    def __init__(
        self,
        config: Mapping,
        media_token_id: int,
        eoc_token_id: int,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModel,
            LlamaConfig,
            LlamaForCausalLM,
            MptForCausalLM,
        )

        super().__init__()
        extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
        text = dict(config["text_config"])
        self.kind = _language_model_type(text)
        vision_cfg = {k: v for k, v in config.get("vision_config", {}).items() if k != "model_type"}
        with empty_init(dtype):
            self.vision_encoder = CLIPVisionModel(CLIPVisionConfig(**vision_cfg, **extra))
            dim_visual = self.vision_encoder.config.hidden_size
            self.perceiver = PerceiverResampler(dim_visual, max_num_frames=config.get("max_num_frames"))
            lang: MptForCausalLM | LlamaForCausalLM
            if self.kind == "mpt":
                lang = MptForCausalLM(_mpt_config(text))
                lang.lm_head.weight = lang.transformer.wte.weight  # MPT's logits use the embedding matrix
            else:
                text = {k: v for k, v in text.items() if k not in ("architectures", "model_type")}
                lang = LlamaForCausalLM(LlamaConfig(**text, **extra))
            parent_name, attr = DECODER_LAYERS[self.kind].rsplit(".", 1)
            parent = lang.get_submodule(parent_name)
            every = int(config.get("cross_attn_every_n_layers", 4))
            hidden = lang.config.hidden_size
            wrapped = [
                CrossAttentionDecoderLayer(
                    GatedCrossAttentionBlock(hidden, dim_visual) if (i + 1) % every == 0 else None, layer
                )
                for i, layer in enumerate(getattr(parent, attr))
            ]
            setattr(parent, attr, nn.ModuleList(wrapped))
        self.lang_encoder = lang
        self.layers = wrapped
        self.media_token_id, self.eoc_token_id = media_token_id, eoc_token_id
        # OtterLMMixin.forward: the media locations of whatever ids the language model is called with
        lang.register_forward_pre_hook(self._condition_media_locations, with_kwargs=True)

    @property
    def generation_config(self):
        return self.lang_encoder.generation_config

    def _condition_media_locations(self, module, args, kwargs):
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        for layer in self.layers:
            layer.media_locations = ids == self.media_token_id

    def _condition_media(self, media: Tensor | None) -> None:
        for layer in self.layers:
            layer.media = media
            if media is None:
                layer.media_locations = None

    def encode_media(self, pixel_values: Tensor) -> Tensor:
        """``(B, T_img, F, C, H, W)`` -> Perceiver latents ``(B, T_img, num_latents, D)``."""
        b, t, f = pixel_values.shape[:3]
        dtype = self.perceiver.latents.dtype
        features = self.vision_encoder(pixel_values=pixel_values.flatten(0, 2).to(dtype)).last_hidden_state[
            :, 1:
        ]
        return self.perceiver(features.reshape(b, t, f, *features.shape[1:]))

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs
    ):
        """The language model's output (``.logits``) on ``input_ids`` conditioned on the images."""
        self._condition_media(self.encode_media(pixel_values))
        try:
            return self.lang_encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self._condition_media(None)

    def generate(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor, **kwargs) -> Tensor:
        """``OtterForConditionalGeneration.generate``: EOS ``<|endofchunk|>``; returns prompt + new tokens."""
        beams = kwargs.get("num_beams", 1)
        if beams > 1:
            pixel_values = pixel_values.repeat_interleave(beams, dim=0)
        self._condition_media(self.encode_media(pixel_values))
        try:
            return generate_ids(
                self.lang_encoder,
                input_ids=input_ids,
                attention_mask=attention_mask,
                eos_token_id=self.eoc_token_id,
                **kwargs,
            )
        finally:
            self._condition_media(None)


def _weight_files(path: str) -> list[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.exists(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                return [os.path.join(path, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(path, single)):
            return [os.path.join(path, single)]
    raise FileNotFoundError(f"{path}: no model.safetensors / pytorch_model.bin (or a sharded *.index.json)")


def _read_shard(file: str) -> dict[str, Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def add_otter_tokens(tokenizer) -> tuple[int, int]:
    """Add Otter's special tokens as its model class does; returns ``(media_token_id, eoc_token_id)``."""
    tokenizer.add_special_tokens({"additional_special_tokens": OTTER_SPECIAL_TOKENS})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer.encode("<image>")[-1], tokenizer.encode("<|endofchunk|>")[-1]


def load_otter(
    path: str,
    tokenizer: str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """A released Otter folder -> ``(OtterModel, tokenizer)``, every tensor loaded from its shards.

    Args:
        path: the Hugging Face folder (``config.json`` + ``model.safetensors[.index.json]`` or ``pytorch_model*.bin``).
        tokenizer: folder / id of the tokenizer; ``None`` = ``path`` itself (the official class loads
            ``mosaicml/mpt-7b-instruct`` for MPT, ``text_config._name_or_path`` for LLaMA).
        dtype: weight dtype.
        attn_implementation: transformers attention implementation.

    Raises:
        KeyError: a tensor of the model is in no shard.
        ValueError: a tokenizer larger than the embedding matrix, or an unsupported language model.
    """
    from transformers import AutoTokenizer

    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    tok = AutoTokenizer.from_pretrained(tokenizer or path)
    media_id, eoc_id = add_otter_tokens(tok)
    model = OtterModel(config, media_id, eoc_id, dtype, attn_implementation)
    vocab = input_embeddings(model.lang_encoder).weight.shape[0]
    if len(tok) > vocab:
        raise ValueError(
            f"{path}: tokenizer has {len(tok)} tokens (with Otter's), the embedding matrix {vocab}"
        )
    expected = set(model.state_dict())
    if model.kind == "mpt":
        expected.discard("lang_encoder.lm_head.weight")  # tied to lang_encoder.transformer.wte.weight
    unused: list[str] = []
    for file in _weight_files(path):
        shard = _read_shard(file)
        result = model.load_state_dict(shard, strict=False)
        expected -= set(shard) - set(result.unexpected_keys)
        unused += [k for k in result.unexpected_keys if not any(s in k for s in _UNUSED_KEYS)]
        del shard
    if expected:
        raise KeyError(
            f"{path}: {len(expected)} tensors in no shard ({', '.join(sorted(expected)[:6])}, ...)"
        )
    if unused:
        log.warning("%s: %d tensors not used (%s, ...)", path, len(unused), ", ".join(unused[:5]))
    return model, tok


class OtterCaptioner(BatchedCaptioner):
    """Otter through the batched generation loop (see the module docstring for the seed's settings).

    Args:
        name_or_path: the released Hugging Face folder or hub id (``luodian/OTTER-Image-MPT7B``).
        tokenizer: tokenizer folder / id (``None`` = ``name_or_path``; the seed's is ``mosaicml/mpt-7b-instruct``).
        name: column name of this captioner's captions.
        prompt: prompt with the ``<image>`` token; ``{caption}`` is the raw caption.
        prompt_id: provenance name of the prompt.
        decoding: generation parameters.
        postprocess: ``otter`` (the seed's cut, :func:`otter_answer`, on the decoded whole sequence), or
            ``first_sentence`` / ``strip`` on the new tokens decoded without special tokens.
        num_captions: captions per image (more than one needs sampling).
        batch_size: rows per ``generate`` call.
        dtype: weight dtype.
        use_cache: KV-cached generation (``None`` = the checkpoint's ``text_config.use_cache``, as the official
            ``generate``; the two differ in whether new tokens cross-attend to the image, see the module docs).
        attn_implementation: transformers attention implementation (``None`` = the library's choice).
    """

    def __init__(
        self,
        name_or_path: str,
        tokenizer: str | None = None,
        name: str = "otter",
        prompt: str = "<image> User: Describe in English: GPT: <answer>",
        prompt_id: str = "seed_otter_describe_in_english",
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "otter",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str = "float32",
        use_cache: bool | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if "<image>" not in prompt:
            raise ValueError(f"{name}: the prompt needs the <image> token")
        if postprocess == "otter" and "GPT:" not in prompt.split(" "):
            raise ValueError(
                f"{name}: postprocess=otter keeps the words after a 'GPT:' word; the prompt has none"
            )
        super().__init__(name, name_or_path, prompt_id, decoding, postprocess, num_captions, batch_size)
        self.name_or_path, self.tokenizer_path, self.prompt = name_or_path, tokenizer, prompt
        self.dtype, self.use_cache, self.attn_implementation = dtype, use_cache, attn_implementation
        resolve_dtype(dtype)
        self.image_processor: Callable[..., Any] | None = None  # a CLIPImageProcessor, set by _load

    def _postprocess_rule(self, rule: str):
        return otter_answer if rule == "otter" else super()._postprocess_rule(rule)

    def _load(self, device: torch.device) -> None:
        import transformers

        path = resolve_asset(self.name_or_path).path
        tok_path = resolve_asset(self.tokenizer_path).path if self.tokenizer_path else None
        model, tok = load_otter(path, tok_path, resolve_dtype(self.dtype), self.attn_implementation)
        tok.padding_side = "left"
        self.tokenizer = tok
        self.model = model.to(device).eval()
        # the seed builds transformers.CLIPImageProcessor() with its defaults; the PIL implementation is the one
        # transformers 4.x ran (transformers 5 defaults to a torchvision one with slightly different resizing)
        processor = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
        self.image_processor = processor()

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        texts = [render_prompt(self.prompt, c) for c in captions]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        assert self.image_processor is not None  # generate() refuses to run before setup()
        pixels = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        inputs = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": torch.as_tensor(pixels)[:, None, None],  # (B, T_img=1, F=1, C, H, W)
        }
        return inputs, [{} for _ in texts]

    def _generate_kwargs(self) -> dict:
        kwargs = self.decoding.generate_kwargs()
        cached = self.model.generation_config.use_cache if self.use_cache is None else self.use_cache
        kwargs["use_cache"] = bool(cached)
        return kwargs

    def _stop_ids(self) -> list[int]:
        return [self.model.eoc_token_id, self.tokenizer.pad_token_id]

    def _decode(self, sequences: Tensor, prompt_length: int) -> tuple[list[str], list[str]]:
        if self.postprocess != "otter":
            return super()._decode(sequences, prompt_length)
        tok = self.tokenizer
        texts = tok.batch_decode(sequences[:, prompt_length:], skip_special_tokens=False)
        return texts, [otter_answer(tok.decode(row)) for row in sequences.tolist()]

    def __repr__(self) -> str:
        return f"OtterCaptioner({self.name!r}, {self.name_or_path!r}, prompt_id={self.prompt_id!r})"
