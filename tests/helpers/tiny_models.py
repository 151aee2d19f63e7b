"""Tiny random-weight models of the real architecture classes, saved to disk and loaded via from_pretrained."""

from __future__ import annotations

import os

# the 2-layer decoder shape every tiny causal LM of the test helpers shares (Llama / Qwen2 / Mistral config kwargs)
TINY_DECODER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)

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


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
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
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def save_tiny_hf_model(path, kind: str) -> str:
    """Write a tiny ``bert`` or ``llama`` model + tokenizer to ``path`` and return it."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tokenizer(kind)
    if kind == "bert":
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        model = BertModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=len(tok),
            **TINY_DECODER,
            max_position_embeddings=64,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return os.fspath(path)
