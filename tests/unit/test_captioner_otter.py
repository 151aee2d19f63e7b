"""The ``otter`` preset on tiny random-weight folders in the released ``luodian/OTTER-Image-MPT7B`` layout (config.json +
safetensors shards + index, a tokenizer folder like ``mosaicml/mpt-7b-instruct``), loaded through the config path a
user takes, against the official forward (Otter's modules + MosaicML's MPT) re-stated in
``tests/helpers/otter_reference.py``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from clipforge.models.captioners.otter import load_otter, otter_answer
from clipforge.utils.hydra import compose
from tests.helpers.otter_reference import official_greedy, otter_tokenizer, save_official_otter, seed_cut

KEYS = ["img-a", "img-b", "img-c"]
CAPTIONS = ["a cat", "", "two motorcycles parked on the street at night"]
CAPTION_PROMPT = "'<image> User: Rewrite {caption} GPT: <answer>'"


@pytest.fixture(scope="module")
def otter(tmp_path_factory) -> dict:
    return save_official_otter(tmp_path_factory.mktemp("otter") / "mpt")


@pytest.fixture(scope="module")
def otter_llama(tmp_path_factory) -> dict:
    return save_official_otter(tmp_path_factory.mktemp("otter") / "llama", language_model="llama")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    sizes = [(40, 24), (28, 28), (30, 50)]
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (h, w, 3), dtype=np.uint8))
        for i, (w, h) in enumerate(sizes)
    ]


def preset(tmp_path, option: str = "tiny_otter", **fields):
    overrides = [
        "experiment=recap_label_llm",
        "~model/mllm@model.captioners.label_llm",
        f"+model/mllm@model.captioners.cap={option}",
        *[f"++model.captioners.cap.{k}={v}" for k, v in fields.items()],
    ]
    cfg = compose(overrides, "generate", output_dir=str(tmp_path))
    return cfg, lambda: instantiate(cfg.model.captioners.cap, _convert_="all")


def loaded(tmp_path, info, **fields):
    cap = preset(tmp_path, name_or_path=info["path"], tokenizer=info["tokenizer"], **fields)[1]()
    cap.setup("cpu")
    return cap


def test_preset_records_the_seed_settings(tmp_path):
    cap = preset(tmp_path, "otter")[0].model.captioners.cap
    assert (cap.name_or_path, cap.tokenizer) == ("luodian/OTTER-Image-MPT7B", "mosaicml/mpt-7b-instruct")
    assert cap.prompt == "<image> User: Describe in English: GPT: <answer>" and cap.postprocess == "otter"
    d = cap.decoding
    assert (d.do_sample, d.num_beams, d.no_repeat_ngram_size, d.max_new_tokens) == (False, 1, 3, 30)
    assert (cap.batch_size, cap.dtype, cap.use_cache) == (48, "bfloat16", None)


@pytest.mark.parametrize("language_model", ["mpt", "llama"])
def test_released_folder_loads_and_logits_equal_the_reference(
    tmp_path, otter, otter_llama, images, language_model
):
    info = otter if language_model == "mpt" else otter_llama
    cap = loaded(tmp_path, info, prompt=CAPTION_PROMPT)
    inputs, _ = cap._encode(images, CAPTIONS)
    mask = inputs["attention_mask"].bool()
    assert not mask.all() and inputs["pixel_values"].shape == (3, 1, 1, 3, 224, 224)
    with torch.no_grad():
        ours = cap.model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits
        official = info["reference"](inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    assert ours.shape == official.shape
    assert (ours - official)[mask].abs().max() <= 1e-5
    # the cross-attention matters: without it (gates closed) the logits move
    with torch.no_grad():
        for layer in cap.model.layers:
            if layer.gated_cross_attn_layer is not None:
                layer.gated_cross_attn_layer.attn_gate.zero_()
        closed = cap.model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits
    assert (closed - official)[mask].abs().max() > 1e-2


def test_prompt_ids_equal_the_official_template(tmp_path, otter, images):
    cap = loaded(tmp_path, otter)
    tok, media_id, eoc_id = otter_tokenizer(otter["tokenizer"])
    prompts = ["<image> User: Describe in English: GPT: <answer>"] * 2
    official = tok(prompts, return_tensors="pt", padding=True)
    inputs, _ = cap._encode(images[:2], ["", ""])
    assert torch.equal(inputs["input_ids"], official["input_ids"])
    assert (cap.model.media_token_id, cap.model.eoc_token_id) == (media_id, eoc_id)
    assert (
        inputs["input_ids"][0, 0] == media_id
        and tok.convert_ids_to_tokens(int(official["input_ids"][0, -1])) == "<answer>"
    )
    assert len(cap.tokenizer) == len(tok) and cap.tokenizer.pad_token == "<PAD>"


@pytest.mark.parametrize("cached", [False, True])
def test_greedy_captions_equal_the_official_generate(tmp_path, otter, images, cached):
    """``use_cache: null`` follows the released text_config (false): every step recomputes the sequence and new
    tokens attend to the image; with the cache new tokens are forwarded alone and get no cross-attention — the
    official code does the same, so both are reproduced."""
    cap = loaded(tmp_path, otter, prompt=CAPTION_PROMPT, use_cache=cached)
    assert cap._generate_kwargs()["use_cache"] is cached
    generations = cap.generate(images, CAPTIONS, KEYS)
    inputs, _ = cap._encode(images, CAPTIONS)
    tok, _, eoc_id = otter_tokenizer(otter["tokenizer"])
    sequences = official_greedy(
        otter["reference"],
        inputs["pixel_values"],
        inputs["input_ids"],
        inputs["attention_mask"],
        eoc_id,
        cached=cached,
    )
    assert [g[0].text for g in generations] == [seed_cut(tok.decode(s)) for s in sequences]
    assert all(0 < g[0].num_tokens <= 30 for g in generations)


def test_checkpoint_use_cache_is_the_default(tmp_path, otter):
    cap = loaded(tmp_path, otter)
    assert cap.use_cache is None and cap._generate_kwargs()["use_cache"] is False  # text_config.use_cache


def test_loader_rejects_missing_tensors_and_unsupported_mpt(tmp_path, otter):
    broken = tmp_path / "broken"
    os.makedirs(broken)
    with open(os.path.join(otter["path"], "model.safetensors.index.json")) as f:
        index = json.load(f)
    first = sorted(set(index["weight_map"].values()))[0]
    os.symlink(os.path.join(otter["path"], first), broken / first)  # the other shard is missing
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v == first}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads(open(os.path.join(otter["path"], "config.json")).read())
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeyError, match="tensors in no shard"):
        load_otter(str(broken), otter["tokenizer"])
    config["text_config"]["attn_config"]["qk_ln"] = True
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="qk_ln"):
        load_otter(str(broken), otter["tokenizer"])


def test_otter_cut_is_the_seed_rule(tmp_path):
    row = "<PAD><PAD><image> User: Describe in English: GPT: <answer> A man on skis. He is<|endofchunk|><PAD>"
    assert otter_answer(row) == "A man on skis"
    # a word glued to a special token goes with it ("<answer>A"), as in the seed's output
    assert otter_answer("<image> User: x GPT: <answer>A dog runs<|endofchunk|>") == "dog runs"
    assert otter_answer("GPT: a cat GPT: sits<|endofchunk|> x") == "a cat GPT: sits"
    with pytest.raises(ValueError, match="GPT:"):
        otter_answer("<image> User: x GPT:<answer> a cat")
    with pytest.raises(Exception, match="GPT:") as err:
        preset(tmp_path, prompt="'<image> User: x GPT:<answer>'", name_or_path="x", tokenizer="y")[1]()
    assert isinstance(err.value.__cause__ or err.value, ValueError)
