"""greedy_decode: the tokens of transformers' greedy ``generate`` (with EOS and stop strings), rows leaving the
batch as they end."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from clipforge.models.greedy import greedy_decode
from tests.helpers.tiny_vlm import save_tiny_causal_lm

PROMPTS = ["a", "the cat sat on", "hello world, this is a longer prompt"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = save_tiny_causal_lm(tmp_path_factory.mktemp("lm"), "llama")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _inputs(lm, prompts):
    model, tok = lm
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return model.get_input_embeddings()(enc["input_ids"]), enc["attention_mask"]


def _reference(lm, prompts, n, **kwargs) -> list[list[int]]:
    """transformers' greedy generate, each row cut after its end (finished rows are padded there)."""
    model, tok = lm
    embeds, mask = _inputs(lm, prompts)
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        **kwargs,
    )
    return out.tolist()


@torch.no_grad()
def test_matches_generate_without_a_stop(lm):
    model, tok = lm
    embeds, mask = _inputs(lm, PROMPTS)
    ours = greedy_decode(model, embeds, mask, 12, [tok.eos_token_id])
    ref = _reference(lm, PROMPTS, 12, eos_token_id=tok.eos_token_id)
    for row, expected in zip(ours, ref):
        assert row == expected[: len(row)]
        assert len(row) == 12 or row[-1] == tok.eos_token_id


@torch.no_grad()
def test_stop_strings_end_rows_early_and_the_batch_shrinks(lm):
    """A stop string taken from row 1's own answer ends it early (row 0 and 2 may run on); every row's tokens
    equal generate's, whose finished rows are padded to the end."""
    model, tok = lm
    embeds, mask = _inputs(lm, PROMPTS)
    free = greedy_decode(model, embeds, mask, 10, [tok.eos_token_id])
    stop = tok.decode(free[1][2:4])
    assert stop.strip(), "the tiny model's answer gives a stop string"
    seen: list[list[int]] = []
    ours = greedy_decode(
        model, embeds, mask, 10, [tok.eos_token_id], [stop], tok, on_logits=lambda rows, _: seen.append(rows)
    )
    assert len(ours[1]) <= 4 and stop in tok.decode(ours[1]) and stop not in tok.decode(ours[1][:-1])
    ref = _reference(lm, PROMPTS, 10, eos_token_id=tok.eos_token_id, stop_strings=[stop], tokenizer=tok)
    for row, expected in zip(ours, ref):
        assert row == expected[: len(row)]
        assert all(t == tok.pad_token_id for t in expected[len(row) :])
    assert seen[0] == [0, 1, 2] and 1 not in seen[-1] and len(seen) == max(len(r) for r in ours)
    with pytest.raises(ValueError, match="tokenizer"):
        greedy_decode(model, embeds, mask, 2, [tok.eos_token_id], [stop])
