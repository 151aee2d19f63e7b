"""Text shearing (recap): cut an extended caption to the length of its raw caption.

One implementation serves both uses: materialised offline (the generation job writes a sheared column) and
online (the dataset shears extended captions when it samples them, ``data.shear=...``).

Units (``unit``):

- ``tokens``: the raw caption's token count in the training text tokenizer (CLIP BPE by default);
- ``words``: the raw caption's whitespace word count;
- ``fixed``: ``fixed_len`` words, whatever the raw caption;
- ``first_sentence``: the official scripts' legacy rule, ``ext.strip().split(".")[0]`` character for character
  (:func:`~clipforge.utils.text.first_sentence`); no token budget: the scripts' 30 is the captioner's
  ``max_new_tokens`` at generation (its own tokenizer), not a cut;
- ``none``: unchanged.

``tokens`` / ``words`` / ``fixed`` cuts fall on word boundaries; an extended caption already within the budget is
returned unchanged, so shearing is idempotent and never lengthens a caption. A caption is never cut to nothing:
when even its first word is over the budget, that word is kept. ``first_sentence`` keeps the official
expression's quirks instead: whitespace before the first ``.`` stays (so a second application can strip it), a
``.`` inside a word cuts there (``"3.5 m"`` -> ``"3"``) and a caption that starts with ``.`` becomes ``""``. The raw
caption itself is never sheared.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from clipforge.utils.text import first_sentence

UNITS = ("tokens", "words", "fixed", "first_sentence", "none")


class TokenCounter:
    """Tokens per word of a tokenizer, cached: ``count(text)`` is the sum over its whitespace words.

    CLIP BPE and WordPiece pre-tokenize on whitespace, so the per-word sum equals the tokenizer's count (special
    tokens excluded); byte-level BPE attaches the leading space to a word, which ``count`` reproduces by encoding
    every word after the first with a leading space.

    Args:
        tokenizer: ``None`` (open_clip's CLIP BPE), an object with ``encode(text)`` (open_clip ``SimpleTokenizer``,
            a ``transformers`` tokenizer), or clipforge's ``HFTokenizer`` / ``OpenCLIPTokenizer`` wrappers.
    """

    def __init__(self, tokenizer: object | None = None) -> None:
        self._encode = _encoder(tokenizer)
        self._cache: dict[str, int] = {}

    def word(self, word: str, first: bool) -> int:
        """Tokens of one word (``first``: at the start of the text, without a leading space)."""
        key = word if first else " " + word
        n = self._cache.get(key)
        if n is None:
            n = self._cache[key] = len(self._encode(key))
        return n

    def count(self, text: str) -> int:
        """Tokens of ``text`` (sum over its words)."""
        return sum(self.word(w, i == 0) for i, w in enumerate(text.split()))


@functools.lru_cache(maxsize=1)
def clip_counter() -> TokenCounter:
    """The shared counter of open_clip's CLIP BPE (its vocabulary loads once per process)."""
    return TokenCounter(None)


_COUNTERS: dict[int, tuple[object, TokenCounter]] = {}


def counter_for(tokenizer: object | None) -> TokenCounter:
    """A cached :class:`TokenCounter` per tokenizer object (``None`` = CLIP BPE)."""
    if tokenizer is None:
        return clip_counter()
    hit = _COUNTERS.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = _COUNTERS[id(tokenizer)] = (tokenizer, TokenCounter(tokenizer))
    return hit[1]


def _encoder(tokenizer: object | None) -> Callable[[str], list]:
    if tokenizer is None:
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer()
    inner = getattr(tokenizer, "hf", None) or getattr(tokenizer, "_tok", None) or tokenizer
    encode = getattr(inner, "encode", None)
    if encode is None:
        raise TypeError(f"shear: tokenizer {type(tokenizer).__name__} has no encode()")
    try:
        encode("a", add_special_tokens=False)
        return lambda text: encode(text, add_special_tokens=False)
    except TypeError:  # open_clip SimpleTokenizer.encode(text) adds no special tokens
        return encode


def _cut(ext: str, budget: int, cost: Callable[[str, int], int]) -> str:
    words = ext.split()
    used, keep = 0, 0
    for i, w in enumerate(words):
        used += cost(w, i)
        if used > budget:
            break
        keep = i + 1
    if keep == len(words):
        return ext
    return " ".join(words[: max(keep, 1)])


@dataclass
class Shear:
    """A shearing policy (``data.shear``): ``Shear(unit)(raw, ext) -> ext cut to raw's length``.

    Args:
        unit: one of :data:`UNITS`.
        fixed_len: the length of ``fixed`` (words).
        min_len: smallest budget, in the unit (a one-word raw caption still allows ``min_len`` units).
        tokenizer: ``clip_bpe`` (open_clip's, the CLIP text tokenizer), ``model`` (the training model's tokenizer,
            set by the datamodule through :meth:`bind`), or an HF tokenizer id / folder.
    """

    unit: str = "tokens"
    fixed_len: int = 30
    min_len: int = 1
    tokenizer: str = "clip_bpe"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"shear.unit={self.unit!r} is not one of {UNITS}")
        if self.fixed_len < 1 or self.min_len < 0:
            raise ValueError("shear.fixed_len must be >= 1 and shear.min_len >= 0")
        self._counter: TokenCounter | None = None
        self._bound: object | None = None

    def bind(self, model_tokenizer: object | None) -> Shear:
        """Use ``model_tokenizer`` for ``tokenizer: model`` (called by the datamodule once the model is known)."""
        self._bound, self._counter = model_tokenizer, None
        return self

    @property
    def counter(self) -> TokenCounter:
        """The token counter of the configured tokenizer (built on first use)."""
        if self._counter is None:
            if self.tokenizer == "clip_bpe":
                self._counter = clip_counter()
            elif self.tokenizer == "model":
                if self._bound is None:
                    raise ValueError("shear.tokenizer=model needs the model's tokenizer (Shear.bind)")
                self._counter = counter_for(self._bound)
            else:
                from transformers import AutoTokenizer

                self._counter = TokenCounter(AutoTokenizer.from_pretrained(self.tokenizer))
        return self._counter

    def __getstate__(self) -> dict:  # dataloader workers rebuild the counter (tokenizers may not pickle)
        state = dict(self.__dict__)
        state["_counter"] = None
        return state

    def __call__(self, raw: str, ext: str) -> str:
        """``ext`` cut to ``raw``'s length in the configured unit."""
        unit = self.unit
        if unit == "none" or not ext:
            return ext
        if unit == "words":
            return _cut(ext, max(self.min_len, len(raw.split())), lambda w, i: 1)
        if unit == "fixed":
            return _cut(ext, self.fixed_len, lambda w, i: 1)
        if unit == "first_sentence":
            return first_sentence(ext)
        counter = self.counter
        return _cut(ext, max(self.min_len, counter.count(raw)), lambda w, i: counter.word(w, i == 0))


def shear(
    raw: str,
    ext: str,
    unit: str = "tokens",
    tokenizer: object | None = None,
    fixed_len: int = 30,
    min_len: int = 1,
) -> str:
    """Functional form of :class:`Shear` for one pair; ``tokenizer`` is a tokenizer object (``None`` = CLIP BPE).

    For many captions build one :class:`Shear` (its token counts are cached across calls).
    """
    policy = Shear(unit=unit, fixed_len=fixed_len, min_len=min_len, tokenizer="model")
    policy._counter = counter_for(tokenizer)
    return policy(raw, ext)
