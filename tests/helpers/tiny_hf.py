"""Tiny Hugging Face text models of the real architecture classes, saved to disk and loaded like a user's folder.

The two builders every tiny model of the test helpers uses — :func:`byte_level_bpe` (a byte-level BPE tokenizer
trained on a tiny corpus: every byte is a token, so any text encodes) and :func:`save_causal_lm` (a random
2-layer causal LM + its tokenizer) — and the models made with them:

- :func:`save_tiny_llm`: a ``llama`` (adds BOS), ``qwen2`` or ``mistral`` decoder (LLM encoders, MNTP, SimCSE);
- :func:`save_tiny_hf_model`: a 2-layer ``bert`` (WordPiece) or ``llama`` (the session fixtures of ``conftest.py``).

The VLM parts (:mod:`tests.helpers.tiny_vlm`) and the captioners (:mod:`tests.helpers.tiny_vlms`) build theirs
with the same two functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

TINY_DECODER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)
"""The 2-layer decoder shape every tiny causal LM of the test helpers shares (Llama / Qwen2 / Mistral kwargs)."""

CORPUS = [
    "a cat sitting on a sofa",
    "a dog chasing a ball in the park",
    "a cup of coffee on a wooden table",
    "a rocket launching into the sky",
    "an astronaut in a white space suit",
    "two motorcycles parked on the street",
    "a bowl of fruit next to a window",
    "people walking on a beach at sunset",
]
"""Captions the tiny tokenizers are trained on."""

LLM_CORPUS = [*CORPUS, "given a sentence, retrieve a detailed relevant sentence"]
""":data:`CORPUS` plus LLM2CLIP's query instruction (the tokenizer of :func:`save_tiny_llm`)."""

KINDS = ("llama", "qwen2", "mistral")
"""Architectures :func:`save_tiny_llm` builds."""


def byte_level_bpe(
    corpus: Sequence[str], vocab_size: int, specials: Sequence[str], bos: str | None = None, **tokens
):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus``, ``specials`` first.

    Args:
        corpus: training texts.
        vocab_size: target vocabulary size (bytes, specials and merges).
        specials: special tokens (ids ``0..len(specials)-1``).
        bos: a special token prepended to every encoded text; ``None`` = nothing prepended.
        **tokens: the tokenizer's named tokens (``eos_token``, ``pad_token``, ``bos_token``...).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


def save_causal_lm(path, tokenizer, model_type: str = "llama", seed: int = 0, **config) -> str:
    """Write a random causal LM (``AutoModelForCausalLM`` of ``model_type``) and ``tokenizer`` to ``path``.

    Args:
        path: the folder.
        tokenizer: its tokenizer (``vocab_size`` is its length).
        model_type: a ``transformers`` model type (``llama``, ``qwen2``, ``mistral``...).
        seed: ``torch`` seed of the random weights.
        **config: the model's config fields (shape, special-token ids, ``tie_word_embeddings``...).

    Returns:
        ``path`` as a string.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **config)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return os.fspath(path)


def save_tiny_llm(path, kind: str = "llama", seed: int = 0) -> str:
    """Write a 2-layer ``llama`` (adds BOS), ``qwen2`` or ``mistral`` causal LM + tokenizer to ``path``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny LLM kind {kind!r}; expected one of {KINDS}")
    add_bos = kind == "llama"
    tok = byte_level_bpe(
        LLM_CORPUS,
        320,
        ["<|endoftext|>", "<s>"],
        bos="<s>" if add_bos else None,
        eos_token="<|endoftext|>",
        bos_token="<s>" if add_bos else None,
    )
    extra = {"sliding_window": 64} if kind == "mistral" else {}
    return save_causal_lm(
        path,
        tok,
        kind,
        seed,
        **{**TINY_DECODER, "num_attention_heads": 4, "num_key_value_heads": 2},
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        **extra,
    )


def _wordpiece():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def save_tiny_hf_model(path, kind: str) -> str:
    """Write a tiny ``bert`` or ``llama`` model + tokenizer to ``path`` and return it."""
    if kind != "bert":
        tok = byte_level_bpe(
            CORPUS, 300, ["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>"
        )
        return save_causal_lm(
            path,
            tok,
            "llama",
            0,
            **TINY_DECODER,
            max_position_embeddings=64,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            tie_word_embeddings=True,
        )
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tok = _wordpiece()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return os.fspath(path)
