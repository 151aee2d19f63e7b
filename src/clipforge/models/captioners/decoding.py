"""Decoding settings of a captioner and per-row reproducible sampling.

``Decoding`` lists every generation parameter explicitly, so a preset means the same thing whatever a checkpoint's
own ``generation_config.json`` says (``generate`` kwargs take precedence over it).

Sampling is made independent of how rows are batched: with ``do_sample`` the captioner runs ``generate`` greedily
and appends :class:`KeyedSampler`, which applies the usual temperature / top-k / top-p warpers and then draws the
next token of every row from that row's own random generator (Gumbel-max: ``argmax(log p + Gumbel)`` is a sample
of ``p``). A row's generator is seeded from ``(seed, sample key, caption index)``, so a caption depends on its key
only, not on batch size, padding or the other rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from clipforge.utils.text import first_sentence

__all__ = ["POSTPROCESS", "Decoding", "KeyedSampler", "as_decoding", "postprocess", "row_seed"]


def _strip(text: str) -> str:
    return text.strip()


POSTPROCESS: dict[str, Callable[[str], str]] = {"first_sentence": first_sentence, "strip": _strip}
"""Post-processing rules: ``first_sentence`` (the official scripts' ``.strip().split('.')[0]``) or ``strip``."""


def postprocess(rule: str) -> Callable[[str], str]:
    """The post-processing function named ``rule`` (see :data:`POSTPROCESS`)."""
    if rule not in POSTPROCESS:
        raise ValueError(f"postprocess={rule!r} is not one of {tuple(POSTPROCESS)}")
    return POSTPROCESS[rule]


def row_seed(seed: int, key: str, index: int = 0) -> int:
    """A 60-bit seed of one generated caption: ``(seed, sample key, caption index)`` hashed with SHA-256."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{index}".encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:15], 16)


@dataclass
class Decoding:
    """Generation parameters of a captioner (``model.captioners.<name>.decoding.*``).

    Args:
        max_new_tokens: generated tokens at most (the official scripts: 30).
        min_new_tokens: EOS is suppressed before this many tokens (Qwen-VL's script: 8).
        do_sample: sample instead of greedy / beam search (per-row generators, see :class:`KeyedSampler`).
        temperature: softmax temperature of sampling.
        top_k: keep the ``top_k`` most likely tokens when sampling (0 = off; ``transformers``' default is 50).
        top_p: nucleus sampling mass (1.0 = off).
        num_beams: beam search width (greedy only).
        repetition_penalty: CTRL-style penalty of already generated tokens (1.0 = off).
        no_repeat_ngram_size: forbid repeating n-grams of this size (0 = off).
        length_penalty: beam-search length penalty.
        seed: base seed of sampling (a row's generator is seeded from it, the sample key and the caption index).
    """

    max_new_tokens: int = 30
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ValueError("decoding needs 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("decoding: beam sampling (do_sample with num_beams > 1) is not supported")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("decoding needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")

    def to_dict(self) -> dict:
        """The parameters, for provenance."""
        return asdict(self)

    def generate_kwargs(self) -> dict:
        """Keyword arguments of ``model.generate``; sampling itself is done by :meth:`sampler`."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "do_sample": False,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "length_penalty": self.length_penalty,
            "num_return_sequences": 1,
            "use_cache": True,
        }

    def sampler(self, seeds: Sequence[int]) -> KeyedSampler | None:
        """The logits processor that samples rows with these seeds, or ``None`` for greedy / beam search."""
        if not self.do_sample:
            return None
        return KeyedSampler(seeds, self.temperature, self.top_k, self.top_p)


def as_decoding(decoding: Decoding | Mapping | None) -> Decoding:
    """Normalise a ``Decoding`` given as a dataclass, a mapping (Hydra) or ``None`` (defaults)."""
    if decoding is None:
        return Decoding()
    return decoding if isinstance(decoding, Decoding) else Decoding(**dict(decoding))


class KeyedSampler:
    """A ``transformers`` logits processor that samples every row with its own ``torch.Generator``.

    Must be the last processor and ``generate`` must run greedily: it returns scores that are ``0`` at the sampled
    token and ``-inf`` elsewhere, so the greedy ``argmax`` picks the sample. Warping follows ``transformers``'
    sampling order (temperature, then top-k, then top-p, after every non-sampling processor such as
    ``min_new_tokens`` or the repetition penalty).

    Args:
        seeds: one seed per row of the batch.
        temperature: softmax temperature.
        top_k: keep the ``top_k`` most likely tokens (0 = off).
        top_p: nucleus mass (1.0 = off).
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
    ) -> None:
        from transformers import (
            LogitsProcessor,
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.seeds = [int(s) for s in seeds]
        warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        self.warpers = LogitsProcessorList(warpers)
        self._generators: list[torch.Generator] | None = None

    def _rows(self, device: torch.device) -> list[torch.Generator]:
        if self._generators is None:
            self._generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        return self._generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(
                f"KeyedSampler has {len(self.seeds)} seeds for a batch of {scores.shape[0]} rows"
            )
        logp = torch.log_softmax(self.warpers(input_ids, scores).float(), dim=-1)
        choice = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for i, gen in enumerate(self._rows(scores.device)):
            # Exp(1) noise: -log(E) is Gumbel(0, 1), so argmax(logp - log E) samples softmax(logp)
            noise = torch.empty_like(logp[i]).exponential_(generator=gen)
            choice[i] = torch.argmax(logp[i] - noise.log())
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out
