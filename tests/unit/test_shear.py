"""Text shearing: golden cases per unit and properties (never longer than the reference, idempotent, unicode)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipforge.data.shear import Shear, TokenCounter, shear

RAW = "a cat on a sofa"
EXT = "A fluffy orange cat is lying on a grey sofa next to a window. It looks happy."


@pytest.mark.parametrize(
    "unit,expected",
    [
        ("words", "A fluffy orange cat is"),
        ("tokens", "A fluffy orange cat is"),
        ("fixed", "A fluffy orange"),
        ("first_sentence", "A fluffy orange cat is lying on a grey sofa next to a window"),
        ("none", EXT),
    ],
)
def test_golden_cuts(unit, expected):
    assert shear(RAW, EXT, unit, fixed_len=3 if unit == "fixed" else 30) == expected


def test_token_budget_counts_bpe_tokens_not_words():
    # "photographed" is one CLIP BPE token, "unphotographable" several: the token unit keeps fewer words
    raw = "photographed photographed"
    ext = "unphotographable scenery everywhere"
    n_raw = TokenCounter().count(raw)
    assert n_raw == 2
    out = shear(raw, ext, "tokens")
    assert out == "unphotographable"  # over budget on its own: a caption is never cut to nothing
    assert shear(raw, ext, "words") == "unphotographable scenery"


def test_shorter_extended_caption_is_kept_verbatim():
    assert shear("a long raw caption with many words in it", "  short   one ", "tokens") == "  short   one "


def test_counter_matches_the_tokenizer_on_whole_captions():
    from open_clip.tokenizer import SimpleTokenizer

    tok, counter = SimpleTokenizer(), TokenCounter()
    for text in [EXT, "Two dogs, one ball!", "naïve café — déjà vu", "COCO 2017 val-set"]:
        assert counter.count(text) == len(tok.encode(text))


def test_model_tokenizer_counts_wordpieces(tiny_bert_dir):
    from clipforge.models.text import HFTokenizer

    tok = HFTokenizer(tiny_bert_dir)
    policy = Shear(unit="tokens", tokenizer="model").bind(tok)
    n_raw = len(tok.hf.encode("a cat sitting", add_special_tokens=False))
    out = policy("a cat sitting", "a dog chasing a ball in the park")
    assert len(tok.hf.encode(out, add_special_tokens=False)) <= n_raw
    assert "a dog chasing a ball in the park".startswith(out)


def test_bad_unit_is_a_clear_error():
    with pytest.raises(ValueError, match="shear.unit"):
        Shear(unit="chars")


words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)
captions = st.lists(words, min_size=0, max_size=25).map(" ".join)
POLICIES = {u: Shear(unit=u, fixed_len=7) for u in ("tokens", "words", "fixed")}


@settings(max_examples=150, deadline=None)
@given(raw=captions, ext=captions, unit=st.sampled_from(sorted(POLICIES)))
def test_properties(raw, ext, unit):
    policy = POLICIES[unit]
    out = policy(raw, ext)
    # idempotent, a word prefix of the input (or the input itself), never longer than the budget (or one word)
    assert policy(raw, out) == out
    ext_words, out_words = ext.split(), out.split()
    assert out == ext or out_words == ext_words[: len(out_words)]
    counter = policy.counter
    cost = counter.count if unit == "tokens" else (lambda t: len(t.split()))
    budget = {"tokens": max(1, counter.count(raw)), "words": max(1, len(raw.split()))}.get(unit, 7)
    assert cost(out) <= budget or len(out_words) == 1 or out == ext and cost(ext) <= budget


def _official_first_sentence(text: str) -> str:
    # the MLLMs-Augmented scripts' expression (LLaVA/llava.py, Qwen-VL/qwen.py)
    return text.strip().split(".")[0]


def _varied_captions(n: int, seed: int = 0) -> list[str]:
    """Caption-like strings: leading / trailing whitespace, no period, several periods, ellipses, decimals,
    newlines and tabs, non-ASCII words, first sentences far longer than 30 tokens."""
    import random

    rng = random.Random(seed)
    words = "a cat sits on the red sofa near 3.5 meters café naïve U.S. e.g.".split()
    seps = [" . ", ". ", ".", "...", " .", ".\n", "\n", "\t", ", "]
    pads = ["", " ", "  ", "\n", "\t ", " \n "]
    out = []
    for _ in range(n):
        length = rng.choice([1, 3, 8, 20, 45, 80])
        p_sep = rng.choice([0.0, 0.05, 0.3])  # 0: one sentence without any period
        pool = words if p_sep else [w for w in words if "." not in w]
        body = "".join(
            rng.choice(pool) + (rng.choice(seps) if rng.random() < p_sep else " ") for _ in range(length)
        )
        out.append(rng.choice(pads) + body.rstrip(" ") + rng.choice(pads))
    edge = ["", " ", ".", "...", " . A cat", "A cat .", "no period at all ", "  A dog runs.  It is happy. "]
    return out + edge


def test_legacy_first_sentence_is_exactly_the_official_cut():
    """``first_sentence`` reproduces ``.strip().split('.')[0]`` character for character: no second strip, no
    token cap (the scripts' 30 is the captioner's ``max_new_tokens``, applied at generation)."""
    policy = Shear(unit="first_sentence")
    texts = _varied_captions(400)
    assert sum(len(_official_first_sentence(t).split()) > 30 for t in texts) > 20  # long first sentences
    assert sum(_official_first_sentence(t) != _official_first_sentence(t).strip() for t in texts) >= 15
    for raw, ext in zip(reversed(texts), texts):
        assert policy(raw, ext) == _official_first_sentence(ext), repr(ext)
        assert shear(raw, ext, "first_sentence") == _official_first_sentence(ext), repr(ext)


@settings(max_examples=150, deadline=None)
@given(raw=captions, ext=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_legacy_first_sentence_properties(raw, ext):
    """Any string: the official expression's output, a prefix of the stripped caption, never longer."""
    out = Shear(unit="first_sentence")(raw, ext)
    assert out == _official_first_sentence(ext)
    assert ext.strip().startswith(out) and len(out) <= len(ext)
