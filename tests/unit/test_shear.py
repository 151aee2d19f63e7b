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
POLICIES = {u: Shear(unit=u, fixed_len=7) for u in ("tokens", "words", "fixed", "first_sentence")}


@settings(max_examples=150, deadline=None)
@given(raw=captions, ext=captions, unit=st.sampled_from(sorted(POLICIES)))
def test_properties(raw, ext, unit):
    policy = POLICIES[unit]
    out = policy(raw, ext)
    # idempotent, a word prefix of the input (or the input itself), never longer than the budget (or one word)
    assert policy(raw, out) == out
    ext_words, out_words = ext.split(), out.split()
    if unit == "first_sentence":
        ext_words = ext.strip().split(".")[0].split()
    assert out == ext or out_words == ext_words[: len(out_words)]
    counter = policy.counter
    cost = counter.count if unit in ("tokens", "first_sentence") else (lambda t: len(t.split()))
    budget = {"tokens": max(1, counter.count(raw)), "words": max(1, len(raw.split()))}.get(unit, 7)
    assert cost(out) <= budget or len(out_words) == 1 or out == ext and cost(ext) <= budget
