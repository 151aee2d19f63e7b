"""The ``minigpt4`` preset on tiny random-weight files in the official release layout (``eva_vit_g.pth``,
``blip2_pretrained_flant5xxl.pth``, ``pretrained_minigpt4.pth`` + an LLM folder), loaded through the config path a
user takes, against the official forward re-stated in ``tests/helpers/minigpt4_reference.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from clipforge.models.captioners.minigpt4 import IMAGE_SLOT_ID, minigpt4_answer
from clipforge.models.convert.minigpt4 import convert_minigpt4
from clipforge.models.convert.minigpt4 import main as convert_main
from clipforge.utils.hydra import compose
from tests.helpers.minigpt4_reference import (
    batch_answer_text,
    eval_pixels,
    load_official_minigpt4,
    official_prompt,
    save_official_minigpt4,
)

KEYS = ["img-a", "img-b", "img-c"]
CAPTIONS = ["a cat", "", "two motorcycles parked on the street at night"]
CAPTION_PROMPT = "'###Human: <Img><ImageHere></Img> Rewrite {caption}###Assistant: '"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    return save_official_minigpt4(tmp_path_factory.mktemp("minigpt4"))


@pytest.fixture(scope="module")
def reference(files):
    return load_official_minigpt4(files)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    sizes = [(40, 24), (28, 28), (30, 50)]
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (h, w, 3), dtype=np.uint8))
        for i, (w, h) in enumerate(sizes)
    ]


def preset(tmp_path, option: str = "tiny_minigpt4", **fields):
    """``+model/mllm@model.captioners.cap=<option> model.captioners.cap.<k>=<v>`` -> the captioner."""
    overrides = [
        "experiment=recap_label_llm",
        "~model/mllm@model.captioners.label_llm",
        f"+model/mllm@model.captioners.cap={option}",
        *[f"++model.captioners.cap.{k}={v}" for k, v in fields.items()],
    ]
    cfg = compose(overrides, "generate", output_dir=str(tmp_path))
    return cfg, lambda: instantiate(cfg.model.captioners.cap, _convert_="all")


def official_files(files) -> dict:
    return {k: files[k] for k in ("llm", "eva_vit", "qformer", "checkpoint")}


def test_preset_records_the_seed_settings(tmp_path):
    cfg, _ = preset(tmp_path, "minigpt4", llm="/vicuna")
    cap = cfg.model.captioners.cap
    assert cap.prompt == official_prompt()  # CONV_VISION_Vicuna0 + upload_img + ask("Describe in English:")
    assert list(cap.stop_strings) == ["###"] and cap.postprocess == "minigpt4"
    d = cap.decoding
    assert (d.do_sample, d.top_p, d.temperature, d.top_k, d.max_new_tokens, d.min_new_tokens) == (
        True,
        0.9,
        1.0,
        50,
        30,
        1,
    )
    assert (d.num_beams, d.repetition_penalty, d.length_penalty) == (1, 1.0, 1.0)
    assert (cap.batch_size, cap.dtype, cap.image_size, cap.vision_depth, cap.vision_heads) == (
        96,
        "float16",
        224,
        39,
        16,
    )


def test_preset_needs_the_official_files_or_a_converted_folder(tmp_path, files):
    with pytest.raises(Exception, match="eva_vit, qformer and checkpoint") as err:
        preset(tmp_path, llm=files["llm"], eva_vit=files["eva_vit"])[1]()
    assert isinstance(err.value.__cause__ or err.value, ValueError)


def test_official_files_load_and_logits_equal_the_reference(tmp_path, files, reference, images):
    cap = preset(tmp_path, **official_files(files))[1]()
    cap.setup("cpu")
    inputs, _ = cap._encode(images, [""] * 3)
    assert (inputs["attention_mask"] == 1).all()  # the seed's prompt: one length, no padding
    with torch.no_grad():
        ours = cap.model(**inputs).logits
        for i, im in enumerate(images):
            official = reference(eval_pixels(im, 28)[None], official_prompt())
            assert ours[i : i + 1].shape == official.shape
            assert (ours[i : i + 1] - official).abs().max() <= 1e-5


def test_left_padded_rows_equal_the_reference_on_their_tokens(tmp_path, files, reference, images):
    cap = preset(tmp_path, prompt=CAPTION_PROMPT, **official_files(files))[1]()
    cap.setup("cpu")
    inputs, _ = cap._encode(images, CAPTIONS)
    mask = inputs["attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        ours = cap.model(**inputs).logits
        for i, (im, c) in enumerate(zip(images, CAPTIONS)):
            prompt = f"###Human: <Img><ImageHere></Img> Rewrite {c}###Assistant: "
            official = reference(eval_pixels(im, 28)[None], prompt)[0]
            assert (ours[i][mask[i].bool()] - official).abs().max() <= 1e-5


def test_prompt_ids_equal_the_official_template(tmp_path, files, reference, images):
    cap = preset(tmp_path, **official_files(files))[1]()
    cap.setup("cpu")
    ids = cap._encode(images[:1], [""])[0]["input_ids"][0].tolist()
    _, (before, after) = reference.context_emb(official_prompt(), torch.zeros(1, 4, 32))
    before, after = before[0].tolist(), after[0].tolist()
    assert before[0] == cap.tokenizer.bos_token_id  # BOS on the first segment only
    assert ids == before + [IMAGE_SLOT_ID] * 4 + after


def test_greedy_captions_equal_the_official_generation_loop(tmp_path, files, reference, images):
    cap = preset(tmp_path, batch_size=3, **{"decoding.do_sample": False}, **official_files(files))[1]()
    cap.setup("cpu")
    ours = cap.generate(images, [""] * 3, KEYS)
    tok, llama = reference.llama_tokenizer, reference.llama_model
    for im, gens in zip(images, ours):
        # Chat.answer's loop, greedy: embeddings only, min_length=1 (no EOS first), stop at '###' / EOS, 30 tokens
        with torch.no_grad():
            embs, _ = reference.context_emb(
                official_prompt(), reference.encode_img(eval_pixels(im, 28)[None])
            )
            new: list[int] = []
            for step in range(30):
                logits = llama(inputs_embeds=embs).logits[0, -1]
                if step == 0:
                    logits[tok.eos_token_id] = -float("inf")
                nxt = int(logits.argmax())
                new.append(nxt)
                if nxt == tok.eos_token_id or tok.decode(new).endswith("###"):
                    break
                embs = torch.cat([embs, llama.model.embed_tokens(torch.tensor([[nxt]]))], dim=1)
        assert gens[0].text == batch_answer_text(new, tok)
        assert gens[0].num_tokens == len([t for t in new if t != tok.eos_token_id])


def test_each_row_stops_at_its_own_separator(tmp_path, files, images):
    """The seed stops the whole batch when row 0 ends with '###'; here row 1 keeps going to its own '###'."""
    cap = preset(tmp_path, batch_size=2, **{"decoding.do_sample": False}, **official_files(files))[1]()
    cap.setup("cpu")
    sep = cap.tokenizer("###", add_special_tokens=False).input_ids
    plan = {0: 2, 1: 5}  # row -> step at which '###' starts

    def force(input_ids, scores):
        step = input_ids.shape[1]
        for row, start in plan.items():
            if start <= step < start + len(sep):
                scores[row] = -float("inf")
                scores[row, sep[step - start]] = 0.0
        return scores

    kwargs = cap._generate_kwargs()
    cap._generate_kwargs = lambda: {**kwargs, "logits_processor": [force]}
    gens = cap.generate(images[:2], ["", ""], KEYS[:2])
    for row, start in plan.items():
        g = gens[row][0]
        assert g.num_tokens == start + len(sep)
        assert g.raw_text.count("###") == 1 and g.text == minigpt4_answer(g.raw_text)
        assert "###" not in g.text


def test_sampling_depends_on_the_key_only(tmp_path, files, images):
    cap = preset(tmp_path, batch_size=2, num_captions=2, **official_files(files))[1]()
    cap.setup("cpu")
    batched = cap.generate(images, CAPTIONS, KEYS)
    alone = [cap.generate([im], [c], [k])[0] for im, c, k in zip(images, CAPTIONS, KEYS)]
    assert [[g.text for g in gens] for gens in batched] == [[g.text for g in gens] for gens in alone]
    seeds = {g.params["row_seed"] for gens in batched for g in gens}
    assert len(seeds) == 6 and batched[0][0].params["top_p"] == 0.9


def test_converted_folder_is_the_same_model(tmp_path, files, images, capsys):
    out = tmp_path / "converted"
    args = ["--eva-vit", files["eva_vit"], "--qformer", files["qformer"], "--checkpoint", files["checkpoint"]]
    tiny = ["--image-size", "28", "--vision-depth", "2", "--vision-heads", "2", "--qformer-heads", "2"]
    convert_main([*args, *tiny, "--llm", files["llm"], str(out)])
    assert f"model.captioners.minigpt4.path={out}" in capsys.readouterr().out
    direct = preset(tmp_path, **official_files(files))[1]()
    folder = preset(tmp_path, path=str(out), llm="null")[1]()  # the LLM folder recorded by the converter
    direct.setup("cpu")
    folder.setup("cpu")
    inputs, _ = direct._encode(images, [""] * 3)
    with torch.no_grad():
        assert torch.equal(direct.model(**inputs).logits, folder.model(**inputs).logits)


def test_converter_maps_the_official_order_and_rejects_swapped_files(files):
    converted = convert_minigpt4(
        files["eva_vit"],
        files["qformer"],
        files["checkpoint"],
        image_size=28,
        vision_depth=2,
        vision_heads=2,
        qformer_heads=2,
    )
    assert "visual_encoder.blocks.2.attn.qkv.weight" in converted.ignored  # the release's unused last block
    assert {"vision_proj.weight", "Qformer.cls.predictions.weight", "temp"} <= set(converted.ignored)
    assert converted.qformer["cross_attention_frequency"] == 2 and converted.num_query_tokens == 4
    eva = torch.load(files["eva_vit"], weights_only=True)
    qkv_bias = converted.state_dict["vision_model.encoder.layers.1.self_attn.qkv.bias"]
    assert torch.equal(
        qkv_bias, torch.cat([eva["blocks.1.attn.q_bias"], torch.zeros(32), eva["blocks.1.attn.v_bias"]])
    )
    # a later file overrides an earlier one, as load_state_dict(strict=False) in the official order does
    blip2 = torch.load(files["qformer"], weights_only=True)["model"]
    override = {**blip2, "visual_encoder.cls_token": torch.full((1, 1, 32), 3.0)}
    c2 = convert_minigpt4(
        files["eva_vit"], override, files["checkpoint"], image_size=28, vision_depth=2, vision_heads=2
    )
    assert (c2.state_dict["vision_model.embeddings.class_embedding"] == 3.0).all()
    with pytest.raises(KeyError, match="blip2_pretrained_flant5xxl"):
        convert_minigpt4(
            files["eva_vit"], files["checkpoint"], files["checkpoint"], image_size=28, vision_depth=2
        )
    with pytest.raises(ValueError, match="3 usable blocks, the model uses 39"):
        convert_minigpt4(files["eva_vit"], files["qformer"], files["checkpoint"], image_size=28)


def test_minigpt4_cut_is_the_batch_answer_rule():
    assert minigpt4_answer("A man skiing down a hill. He is happy###Human: x") == "A man skiing down a hill"
    assert minigpt4_answer("Assistant: a dog\u200b on\n grass###") == "a dog on grass"
    assert minigpt4_answer("  a cat</s></s>") == "a cat</s></s>"  # decoded with special tokens, as the seed
    assert minigpt4_answer("###") == "" and minigpt4_answer(".x") == ""
