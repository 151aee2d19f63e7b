"""Tiny random-weight decoder LLMs (Llama, Qwen2, Mistral) saved to disk, loaded back like a user's folder."""

from __future__ import annotations

import os

from tests.helpers.tiny_models import CORPUS as BASE_CORPUS
from tests.helpers.tiny_models import TINY_DECODER

CORPUS = [*BASE_CORPUS, "given a sentence, retrieve a detailed relevant sentence"]

KINDS = ("llama", "qwen2", "mistral")


def tiny_tokenizer(add_bos: bool):
    """Byte-level BPE (every byte is a token, so ``_`` and any text encode) with EOS, optionally adding BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>" if add_bos else None
    )


def save_tiny_llm(path, kind: str = "llama", seed: int = 0) -> str:
    """Write a 2-layer ``llama`` (adds BOS), ``qwen2`` or ``mistral`` causal LM + tokenizer to ``path``."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    tok = tiny_tokenizer(add_bos=kind == "llama")
    common = dict(
        vocab_size=len(tok),
        **{**TINY_DECODER, "num_attention_heads": 4, "num_key_value_heads": 2},
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=64))
    else:
        raise ValueError(f"unknown tiny LLM kind {kind!r}; expected one of {KINDS}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return os.fspath(path)
