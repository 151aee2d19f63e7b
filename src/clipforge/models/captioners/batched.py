"""``BatchedCaptioner``: the generation loop shared by every ``transformers``-based captioner.

A subclass loads its model in :meth:`BatchedCaptioner._load` and turns a chunk of images (+ raw captions) into
left-padded model inputs in :meth:`BatchedCaptioner._encode`; this class does the rest: it repeats every image
``num_captions`` times (each copy with its own sampling seed), runs one ``generate`` call per ``batch_size`` rows,
keeps only the new tokens, decodes, post-processes and attaches provenance.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clipforge.models.captioners.base import Generation
from clipforge.models.captioners.decoding import Decoding, as_decoding, row_seed
from clipforge.models.captioners.decoding import postprocess as postprocess_rule

log = logging.getLogger("clipforge.recap")

__all__ = ["BatchedCaptioner", "count_new_tokens", "resolve_dtype"]


def resolve_dtype(dtype: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the ``torch.dtype``."""
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype name (float32, bfloat16, float16)")
    return value


def count_new_tokens(new_tokens: torch.Tensor, stop_ids: Sequence[int]) -> list[int]:
    """Generated tokens per row before the first stop token (EOS / padding), i.e. the caption's token count."""
    if new_tokens.shape[1] == 0:
        return [0] * new_tokens.shape[0]
    stop = torch.zeros_like(new_tokens, dtype=torch.bool)
    for i in set(stop_ids):
        stop |= new_tokens == i
    first = stop.float().argmax(1)  # index of the first stop token (0 when there is none)
    return [int(n) if hit else new_tokens.shape[1] for n, hit in zip(first, stop.any(1))]


class BatchedCaptioner(abc.ABC):
    """Base of the batched ``generate`` captioners (HF VLMs, remote-code Qwen-VL, the label-conditioned LLM).

    Args:
        name: column name of this captioner's captions.
        model_id: provenance: what the model is (HF id, folder, alias).
        prompt_id: provenance: name/version of the prompt template.
        decoding: generation parameters (:class:`~clipforge.models.captioners.decoding.Decoding` fields).
        postprocess: ``first_sentence`` (official scripts) or ``strip``.
        num_captions: captions per image; more than one needs ``decoding.do_sample``.
        batch_size: rows per ``generate`` call (``num_captions`` copies of an image count as rows).
    """

    def __init__(
        self,
        name: str,
        model_id: str,
        prompt_id: str,
        decoding: Decoding | Mapping | None,
        postprocess: str,
        num_captions: int,
        batch_size: int,
    ) -> None:
        self.name, self.model_id, self.prompt_id = name, model_id, prompt_id
        self.decoding = as_decoding(decoding)
        self.postprocess = postprocess
        self._post = self._postprocess_rule(postprocess)
        if num_captions < 1 or batch_size < 1:
            raise ValueError(f"{name}: num_captions and batch_size must be >= 1")
        if num_captions > 1 and not self.decoding.do_sample:
            raise ValueError(
                f"{name}: num_captions={num_captions} needs decoding.do_sample=true (greedy decoding writes the "
                "same caption every time)"
            )
        self.num_captions, self.batch_size = num_captions, batch_size
        self.device = torch.device("cpu")
        # loaded by setup(): any transformers model / tokenizer (typed Any: their classes differ per captioner)
        self.model: Any = None
        self.tokenizer: Any = None

    # -- subclass API -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self, device: torch.device) -> None:
        """Load ``self.model`` (eval mode, on ``device``) and ``self.tokenizer`` (left padding, a pad token)."""

    @abc.abstractmethod
    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        """Left-padded ``generate`` inputs of these rows, and per-row extra provenance (``{}`` if none)."""

    def _postprocess_rule(self, rule: str):
        """The function ``text -> caption`` named ``rule`` (subclasses add their models' official rules)."""
        return postprocess_rule(rule)

    def _decode(self, sequences: torch.Tensor, prompt_length: int) -> tuple[list[str], list[str]]:
        """``(decoded new tokens, captions)`` of ``generate``'s output rows (prompt + new tokens).

        The default decodes the new tokens without special tokens and applies the post-processing rule; a model
        whose official script cuts the decoded *whole* sequence (special tokens kept) overrides this.
        """
        texts = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return texts, [self._post(t) for t in texts]

    def _generate_kwargs(self) -> dict:
        """Keyword arguments of ``model.generate`` (the decoding's; subclasses add model-specific ones)."""
        return self.decoding.generate_kwargs()

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, list | tuple) else ([] if ids is None else [ids])
        return [*ids, self.tokenizer.pad_token_id]

    # -- protocol -----------------------------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load the weights on ``device`` (once; later calls only move them)."""
        self.device = torch.device(device)
        if self.model is None:
            log.info("%s: loading %s", self.name, self.model_id)
            self._load(self.device)
        else:
            self._to(self.device)

    def _to(self, device: torch.device) -> None:
        """Move loaded weights to ``device``."""
        self.model.to(device)

    @torch.inference_mode()
    def generate(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[list[Generation]]:
        """``num_captions`` generations per image, in input order."""
        if not len(images) == len(captions) == len(keys):
            raise ValueError(f"{self.name}: {len(images)} images, {len(captions)} captions, {len(keys)} keys")
        if self.model is None:
            raise RuntimeError(f"{self.name}: call setup(device) before generate()")
        rows = [(i, j) for i in range(len(images)) for j in range(self.num_captions)]
        out: list[list[Generation]] = [[] for _ in images]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            seeds = [row_seed(self.decoding.seed, keys[i], j) for i, j in chunk]
            gens = self._generate_chunk([images[i] for i, _ in chunk], [captions[i] for i, _ in chunk], seeds)
            for (i, _), gen in zip(chunk, gens):
                out[i].append(gen)
        return out

    def _generate_chunk(
        self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]
    ) -> list[Generation]:
        inputs, extras = self._encode(images, captions)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        sampler = self.decoding.sampler(seeds)
        kwargs = self._generate_kwargs()
        if sampler is not None:
            kwargs["logits_processor"] = [sampler]
        out = self.model.generate(**inputs, **kwargs, pad_token_id=self.tokenizer.pad_token_id)
        out = out.cpu()
        prompt_length = inputs["input_ids"].shape[1]
        texts, cuts = self._decode(out, prompt_length)
        counts = count_new_tokens(out[:, prompt_length:], self._stop_ids())
        params = self.decoding.to_dict()
        return [
            Generation(
                text=cut,
                raw_text=text,
                model_id=self.model_id,
                prompt_id=self.prompt_id,
                params={**params, "row_seed": seed, **extra}
                if self.decoding.do_sample
                else {**params, **extra},
                num_tokens=n,
            )
            for text, cut, n, seed, extra in zip(texts, cuts, counts, seeds, extras)
        ]
