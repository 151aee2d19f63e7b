"""Captioner building blocks without model weights: decoding (per-row sampling), token counts, post-processing,
the recap row layout, the seed-format export and the summary (against hand-computed cases and naive references)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clipforge.data.records import HFImageRef, SyntheticRef, TarMemberRef
from clipforge.data.shear import Shear
from clipforge.models.captioners.base import Captioner, Generation
from clipforge.models.captioners.batched import count_new_tokens
from clipforge.models.captioners.decoding import Decoding, KeyedSampler, as_decoding, postprocess, row_seed
from clipforge.tasks.recap.export import image_ref, seed_records, slot_names, summarize
from clipforge.tasks.recap.generator import CaptionGeneratorModule

# -- decoding ---------------------------------------------------------------------------------------------------


def test_row_seed_depends_on_seed_key_and_index_only():
    assert row_seed(0, "k", 0) == row_seed(0, "k", 0)
    assert len({row_seed(0, "k", 0), row_seed(1, "k", 0), row_seed(0, "j", 0), row_seed(0, "k", 1)}) == 4
    assert 0 <= row_seed(3, "x" * 500, 7) < 2**60


def test_decoding_validation_and_generate_kwargs():
    d = as_decoding({"max_new_tokens": 30, "min_new_tokens": 8, "length_penalty": 0.0})
    kw = d.generate_kwargs()
    assert kw["max_new_tokens"] == 30 and kw["min_new_tokens"] == 8 and kw["length_penalty"] == 0.0
    assert kw["do_sample"] is False and kw["num_beams"] == 1  # sampling is the KeyedSampler's job
    assert d.sampler([1, 2]) is None
    assert as_decoding(None) == Decoding()
    for bad in (
        {"do_sample": True, "num_beams": 2},
        {"min_new_tokens": 31},
        {"temperature": 0.0},
        {"top_p": 0},
    ):
        with pytest.raises(ValueError):
            as_decoding(bad)


def _hf_warped(scores, temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    for w in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
        scores = w(None, scores)
    return scores


def test_keyed_sampler_draws_from_the_warped_softmax():
    """Many single-row draws follow softmax(warped logits) (the transformers sampling distribution)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    temperature, top_k, top_p = 0.7, 6, 0.9
    probs = torch.softmax(_hf_warped(logits.clone(), temperature, top_k, top_p), -1)[0]
    n = 6000
    sampler = KeyedSampler(range(n), temperature, top_k, top_p)
    out = sampler(torch.zeros(n, 1, dtype=torch.long), logits.repeat(n, 1))
    assert torch.isinf(out).sum(1).tolist() == [11] * n  # exactly one finite (chosen) entry per row
    freq = torch.bincount(out.argmax(1), minlength=12).float() / n
    assert freq[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert torch.allclose(freq, probs, atol=0.025), (freq, probs)


def test_keyed_sampler_row_is_independent_of_the_batch():
    torch.manual_seed(1)
    scores = torch.randn(3, 50)
    seeds = [row_seed(0, k) for k in ("a", "b", "c")]
    together = KeyedSampler(seeds, temperature=1.3)(None, scores).argmax(1)
    alone = [
        KeyedSampler([s], temperature=1.3)(None, scores[i : i + 1]).argmax(1).item()
        for i, s in enumerate(seeds)
    ]
    assert together.tolist() == alone
    with pytest.raises(ValueError, match="seeds"):
        KeyedSampler(seeds)(None, scores[:2])


def test_count_new_tokens_stops_at_eos_or_pad():
    new = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 0, 0, 0]])
    assert count_new_tokens(new, [2, 0]) == [2, 4, 0, 1]
    assert count_new_tokens(torch.zeros(2, 0, dtype=torch.long), [2]) == [0, 0]


def test_postprocess_rules_match_the_official_cut():
    official = lambda s: s.strip().split(".")[0]  # noqa: E731  (the seed scripts' expression)
    texts = [
        " A dog runs. It is happy.",
        "no period at all ",
        "...",
        " A cat sits on a mat",
        "A cat sits .\nIt",
    ]
    for text in texts:
        assert postprocess("first_sentence")(text) == official(text)
    assert postprocess("first_sentence")("A cat sits .\nIt") == "A cat sits "  # the space before "." stays
    assert postprocess("strip")("  a. b ") == "a. b"
    with pytest.raises(ValueError):
        postprocess("minigpt")


# -- export -----------------------------------------------------------------------------------------------------


def test_slot_names_and_image_refs():
    assert slot_names("llava", 1) == ["llava"]
    assert slot_names("llava", 3) == ["llava_0", "llava_1", "llava_2"]
    assert image_ref("/data/a.jpg") == "/data/a.jpg"
    assert image_ref(TarMemberRef("s.tar", 512, 100)) == "s.tar#512+100"
    assert image_ref(HFImageRef("/ds", "image", 4)) == "/ds#image/4"
    assert image_ref(SyntheticRef(3, 1)) == "synthetic:1/3"
    assert image_ref(b"\xff\xd8") == ""


# -- the generation module with a scripted captioner --------------------------------------------------------------


class ScriptedCaptioner:
    """A captioner whose captions are fixed strings per key (for exact checks of the row layout)."""

    def __init__(self, name: str, texts: dict[str, list[str]], num_captions: int = 1) -> None:
        self.name, self.texts, self.num_captions = name, texts, num_captions
        self.calls: list[tuple] = []
        self.device = None

    def setup(self, device: str = "cpu") -> None:
        self.device = device

    def generate(self, images, captions, keys):
        self.calls.append((len(images), list(captions), list(keys)))
        return [
            [
                Generation(t, f"<{t}>", f"model/{self.name}", "p1", {"j": j}, len(t.split()))
                for j, t in enumerate(self.texts[k])
            ]
            for k in keys
        ]


TEXTS = {
    "a": ["a small brown dog is running across the green grass in the park", "x y"],
    "b": ["", "a b c d e f g h"],
}


def _batch(keys=("a", "b")) -> dict:
    caps = {"a": ["a dog on grass", "dog"], "b": ["a cat", "cat on sofa", "kitty"]}
    keys = list(keys)
    flat = [c for k in keys for c in caps[k]]
    index = [i for i, k in enumerate(keys) for _ in caps[k]]
    return {
        "key": keys,
        "image": [Image.new("RGB", (8, 8)) for _ in keys],
        "caption": [caps[k][0] for k in keys],
        "captions": flat,
        "caption_image_index": torch.tensor(index),
        "meta": [{} for _ in keys],
        "errors": [],
    }


def test_scripted_captioner_satisfies_the_protocol():
    assert isinstance(ScriptedCaptioner("s", {}), Captioner)


def test_predict_step_rows_follow_the_contract():
    one = ScriptedCaptioner("one", {k: v[:1] for k, v in TEXTS.items()})
    two = ScriptedCaptioner("two", TEXTS, num_captions=2)
    module = CaptionGeneratorModule({"x": one, "y": two}, shear={"unit": "words"})
    module._image_refs = {"a": "/img/a.jpg", "b": "/img/b.jpg"}
    rows = module.predict_step(_batch(), 0)["rows"]
    assert [r["key"] for r in rows] == ["a", "b"]
    assert one.calls == [(2, ["a dog on grass", "a cat"], ["a", "b"])]
    a, b = rows
    assert (
        a["image"] == "/img/a.jpg"
        and a["caption"] == "a dog on grass"
        and a["captions"] == ["a dog on grass", "dog"]
    )
    assert b["captions"] == ["a cat", "cat on sofa", "kitty"]
    assert a["caption_len"] == 4 and b["caption_len"] == 2
    # words shearing: the extended caption keeps as many words as the raw caption has (hand-computed)
    assert a["one"] == "a small brown dog" and a["one_raw"] == TEXTS["a"][0]
    assert a["one_len"] == 4 and a["one_raw_len"] == 13 and a["one_empty"] is False
    assert a["one_meta"] == {
        "model_id": "model/one",
        "prompt_id": "p1",
        "params": {"j": 0},
        "num_tokens": 13,
        "output": f"<{TEXTS['a'][0]}>",
    }
    # an empty caption still gives its columns, flagged
    assert b["one"] == "" and b["one_raw"] == "" and b["one_empty"] is True and b["one_len"] == 0
    # two captions per image: slots two_0 and two_1
    assert a["two_0"] == "a small brown dog" and a["two_1"] == "x y" and b["two_1"] == "a b"
    assert "two" not in a and b["two_1_raw"] == "a b c d e f g h"


def test_predict_step_token_shearing_matches_the_shear_reference():
    cap = ScriptedCaptioner("c", {k: v[:1] for k, v in TEXTS.items()})
    module = CaptionGeneratorModule([cap])  # default: CLIP BPE tokens
    rows = module.predict_step(_batch(("a",)), 0)["rows"]
    policy = Shear(unit="tokens")
    assert rows[0]["c"] == policy("a dog on grass", TEXTS["a"][0])
    assert rows[0]["c_len"] == policy.counter.count(rows[0]["c"]) <= policy.counter.count("a dog on grass")
    assert rows[0]["c_raw_len"] == policy.counter.count(TEXTS["a"][0])


def test_predict_step_on_an_all_error_batch_returns_no_rows():
    module = CaptionGeneratorModule([ScriptedCaptioner("c", {})])
    batch = {
        "key": [],
        "image": torch.zeros(0, 3, 0, 0),
        "caption": [],
        "captions": [],
        "caption_image_index": torch.zeros(0, dtype=torch.long),
        "errors": [{"key": "z", "reason": "zero_byte"}],
    }
    assert module.predict_step(batch, 0) == {"rows": []}


def test_module_validates_its_arguments():
    with pytest.raises(ValueError, match="at least one"):
        CaptionGeneratorModule([])
    with pytest.raises(ValueError, match="unique"):
        CaptionGeneratorModule([ScriptedCaptioner("c", {}), ScriptedCaptioner("c", {})])
    with pytest.raises(ValueError, match="seed_json"):
        CaptionGeneratorModule([ScriptedCaptioner("c", {})], seed_json="all")
    with pytest.raises(ValueError, match="tokenizer=model"):
        CaptionGeneratorModule([ScriptedCaptioner("c", {})], shear={"tokenizer": "model"})


def test_image_transform_keeps_pil_images():
    module = CaptionGeneratorModule([ScriptedCaptioner("c", {})], max_image_side=16)
    out = module.image_transform(False)(Image.new("L", (64, 32)))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (16, 8)


def test_configure_model_sets_up_every_captioner():
    caps = [ScriptedCaptioner("c", {}), ScriptedCaptioner("d", {})]
    CaptionGeneratorModule(caps).configure_model()
    assert [c.device for c in caps] == ["cpu", "cpu"]


def test_merged_predictions_give_seed_json_and_summary(tmp_path):
    one = ScriptedCaptioner("one", {k: v[:1] for k, v in TEXTS.items()})
    module = CaptionGeneratorModule([one], shear={"unit": "words"})
    module._image_refs = {"a": "/img/a.jpg", "b": "/img/b.jpg"}
    rows = module.predict_step(_batch(), 0)["rows"]
    rows = json.loads(json.dumps(rows))  # as the writer's merged JSONL gives them back
    summary = module.on_predictions_merged(rows, str(tmp_path))
    seed = json.loads((tmp_path / "seed_json" / "one.json").read_text())
    assert seed == [{"image": "/img/a.jpg", "caption": TEXTS["a"][0]}, {"image": "/img/b.jpg", "caption": ""}]
    assert summary["seed_json"] == {"one": str(tmp_path / "seed_json" / "one.json")}
    assert summary["caption_mean_len"] == 3.0 and summary["length_unit"] == "words"
    assert summary["captioners"]["one"] == {
        "rows": 2,
        "empty": 1,
        "sheared": 1,
        "mean_len_before_shear": 6.5,
        "mean_len_after_shear": 2.0,
        "mean_new_tokens": 6.5,
    }
    # sheared captions in the seed files when asked
    module = CaptionGeneratorModule([one], shear={"unit": "words"}, seed_json="sheared")
    module.on_predictions_merged(rows, str(tmp_path))
    assert json.loads((tmp_path / "seed_json" / "one.json").read_text())[0]["caption"] == "a small brown dog"
    assert seed_records(rows, "missing") == []
    assert summarize(rows, ["one"])["captioners"]["one"]["rows"] == 2
