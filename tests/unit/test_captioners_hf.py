"""The captioner presets end to end on tiny random-weight models of the real architectures, saved to disk and
loaded through the same config path users hit (Hydra preset -> instantiate -> ``from_pretrained``).

References: the seed's scripts re-implemented here (LLaVA's chunked prompt tokenisation, Qwen-VL's batched
``generate`` call and decoding), and one-image-per-call generation for every left-padded batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from clipforge.eval.zero_shot import imagenet_classnames
from clipforge.models.captioners.base import Captioner
from clipforge.models.captioners.label_llm import LabelLLMCaptioner
from clipforge.utils.hydra import compose
from tests.helpers.tiny_vlms import (
    TINY_CLASSIFIER,
    save_tiny_chat_llama,
    save_tiny_classifier,
    save_tiny_llava,
    save_tiny_qwen2_vl,
    save_tiny_qwen_vl_remote,
)

KEYS = ["img-a", "img-b", "img-c", "img-d"]
CAPTIONS = ["a cat", "a dog chasing a ball in the park", "", "two motorcycles parked on the street at night"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Four RGB images of different sizes and aspect ratios (Qwen2-VL then gives prompts of different lengths)."""
    sizes = [(40, 24), (40, 44), (64, 30), (24, 60)]
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (h, w, 3), dtype=np.uint8))
        for i, (w, h) in enumerate(sizes)
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {
        "llava": save_tiny_llava(root / "llava"),
        "qwen2_vl": save_tiny_qwen2_vl(root / "qwen2_vl"),
        "qwen_vl": save_tiny_qwen_vl_remote(root / "qwen_vl"),
        "chat_llama": save_tiny_chat_llama(root / "chat_llama"),
        "classifier": save_tiny_classifier(root / "classifier"),
    }


def preset(tmp_path, option: str, **fields) -> Captioner:
    """The captioner a user gets from ``+model/mllm@model.captioners.cap=<option> model.captioners.cap.<k>=<v>``."""
    overrides = [
        "experiment=recap_label_llm",
        "~model/mllm@model.captioners.label_llm",
        f"+model/mllm@model.captioners.cap={option}",
        *[f"++model.captioners.cap.{k}={v}" for k, v in fields.items()],
    ]
    cfg = compose(overrides, "generate", output_dir=str(tmp_path))
    return instantiate(cfg.model.captioners.cap, _convert_="all")


def texts(generations) -> list[str]:
    return [g[0].text for g in generations]


def one_at_a_time(captioner, images, captions, keys) -> list[str]:
    return [captioner.generate([im], [c], [k])[0][0].text for im, c, k in zip(images, captions, keys)]


# -- LLaVA-1.5 ----------------------------------------------------------------------------------------------------


def _official_llava_ids(prompt: str, tokenizer, image_id: int, n_image: int) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: tokenise the text around ``<image>`` chunk by chunk (BOS only once),
    then (as the HF model does) expand the image placeholder to its ``n_image`` feature slots."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [image_id] * n_image + (chunk[1:] if chunk and chunk[0] == bos else chunk)
    return ids


def test_llava_1_5_preset_is_the_seed_recipe(tmp_path, tiny, images):
    cap = preset(tmp_path, "tiny_llava_1_5", name_or_path=tiny["llava"])
    assert cap.prompt == "Describe <image> in English:" and cap.chat_template is False
    assert cap.model_class == "LlavaForConditionalGeneration" and cap.postprocess == "first_sentence"
    d = cap.decoding
    assert (d.do_sample, d.temperature, d.top_k, d.top_p, d.max_new_tokens) == (True, 0.2, 50, 1.0, 30)
    cap.setup("cpu")
    assert type(cap.model).__name__ == "LlavaForConditionalGeneration"
    inputs, _ = cap._encode(images[:2], CAPTIONS[:2])
    tok = cap.tokenizer
    expected = _official_llava_ids(cap.prompt, tok, tok.convert_tokens_to_ids("<image>"), 16)
    assert inputs["input_ids"].tolist() == [expected, expected]  # same prompt for every image: no padding
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)


def test_llava_1_5_sampling_depends_on_the_key_only(tmp_path, tiny, images):
    cap = preset(tmp_path, "tiny_llava_1_5", name_or_path=tiny["llava"], batch_size=3)
    cap.setup("cpu")
    batched = cap.generate(images, CAPTIONS, KEYS)
    assert texts(batched) == one_at_a_time(cap, images, CAPTIONS, KEYS)
    assert texts(cap.generate(images[::-1], CAPTIONS[::-1], KEYS[::-1])) == texts(batched)[::-1]
    g = batched[0][0]
    assert g.params["row_seed"] != batched[1][0].params["row_seed"]
    assert g.model_id == tiny["llava"] and g.prompt_id == "seed_llava_describe_in_english"
    assert g.text == g.raw_text.strip().split(".")[0].strip() and 0 < g.num_tokens <= 30


def test_several_captions_per_image_need_sampling(tmp_path, tiny, images):
    cap = preset(tmp_path, "tiny_llava_1_5", name_or_path=tiny["llava"], num_captions=3)
    cap.setup("cpu")
    out = cap.generate(images[:2], CAPTIONS[:2], KEYS[:2])
    assert [len(g) for g in out] == [3, 3]
    assert len({g.params["row_seed"] for gens in out for g in gens}) == 6
    with pytest.raises(Exception, match="do_sample") as err:
        preset(
            tmp_path,
            "tiny_llava_1_5",
            name_or_path=tiny["llava"],
            num_captions=2,
            **{"decoding.do_sample": False},
        )
    assert isinstance(err.value.__cause__, ValueError)


# -- Qwen2-VL (native) ----------------------------------------------------------------------------------------------


def test_qwen2_vl_left_padded_batch_equals_one_image_per_call(tmp_path, tiny, images):
    cap = preset(tmp_path, "tiny_qwen2_vl", name_or_path=tiny["qwen2_vl"])
    assert cap.prompt == "Express emotional or artistic response:" and cap.chat_template is True
    d = cap.decoding
    assert (d.do_sample, d.max_new_tokens, d.min_new_tokens) == (False, 30, 8)
    cap.setup("cpu")
    inputs, _ = cap._encode(images, CAPTIONS)
    mask = inputs["attention_mask"]
    assert (mask == 0).any() and (mask[:, -1] == 1).all()  # different image sizes -> left padding
    assert "<|vision_start|><|image_pad|><|vision_end|>Express emotional" in cap.render("")
    # reference: the official loop style, one image per generate call with the script's decoding
    model, proc = cap.model, cap.processor
    reference = []
    for im in images:
        one = proc(images=[im], text=[cap.render("")], return_tensors="pt")
        out = model.generate(**one, do_sample=False, num_beams=1, max_new_tokens=30, min_new_tokens=8)
        decoded = cap.tokenizer.decode(out[0, one["input_ids"].shape[1] :], skip_special_tokens=True)
        reference.append(decoded.strip().split(".")[0].strip())
    generations = cap.generate(images, CAPTIONS, KEYS)
    assert texts(generations) == reference
    assert all(8 <= g[0].num_tokens <= 30 for g in generations)


def test_generic_hf_preset_puts_the_raw_caption_in_the_chat_prompt(tmp_path, tiny, images):
    cap = preset(tmp_path, "hf", name_or_path=tiny["qwen2_vl"], prompt="'Rewrite: {caption}'", batch_size=4)
    cap.setup("cpu")
    assert "Rewrite: a dog chasing a ball in the park<|im_end|>" in cap.render(CAPTIONS[1])
    square = [im.resize((32, 32)) for im in images]  # same image size: only the captions' lengths differ
    inputs, _ = cap._encode(square, CAPTIONS)
    assert (inputs["attention_mask"] == 0).any()
    assert texts(cap.generate(square, CAPTIONS, KEYS)) == one_at_a_time(cap, square, CAPTIONS, KEYS)


# -- Qwen-VL (remote code) ------------------------------------------------------------------------------------------


def test_qwen_vl_needs_the_users_opt_in(tmp_path, tiny):
    with pytest.raises(Exception, match="trust_remote_code: true") as err:
        preset(tmp_path, "tiny_qwen_vl", name_or_path=tiny["qwen_vl"])
    assert isinstance(err.value.__cause__ or err.value, PermissionError)


def test_qwen_vl_reproduces_the_official_script(tmp_path, tiny, images):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = tmp_path / "scratch"
    cap = preset(
        tmp_path, "tiny_qwen_vl", name_or_path=tiny["qwen_vl"], trust_remote_code=True, scratch_dir=scratch
    )
    cap.setup("cpu")
    ours = texts(cap.generate(images, CAPTIONS, KEYS))
    assert list(scratch.iterdir()) == []  # the batch's image files are gone
    # the seed's Qwen-VL/qwen.py on the same image files (one batch, as its DataLoader gives it)
    paths = [cap.image_path(im) for im in images]
    for im, p in zip(images, paths):
        im.save(p, format="PNG")
    tokenizer = AutoTokenizer.from_pretrained(tiny["qwen_vl"], trust_remote_code=True)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.eod_id
    model = AutoModelForCausalLM.from_pretrained(tiny["qwen_vl"], trust_remote_code=True).eval()
    prompt = "<img>{}</img>Express emotional or artistic response:"
    enc = tokenizer([prompt.format(p) for p in paths], return_tensors="pt", padding="longest")
    pred = model.generate(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=30,
        min_new_tokens=8,
        length_penalty=0,
        num_return_sequences=1,
        use_cache=True,
        pad_token_id=tokenizer.eod_id,
        eos_token_id=tokenizer.eod_id,
    )
    official = [
        tokenizer.decode(p[enc.input_ids.size(1) :], skip_special_tokens=True).strip().split(".")[0]
        for p in pred
    ]
    assert ours == [o.strip() for o in official]


# -- label-conditioned LLM ----------------------------------------------------------------------------------------


def test_label_llm_prompts_with_the_classifiers_top_labels(tiny, images):
    import timm

    from clipforge.utils.transforms import ImageTransform

    cap = LabelLLMCaptioner(
        llm=tiny["chat_llama"],
        classifier=TINY_CLASSIFIER["model_name"],
        classifier_args=TINY_CLASSIFIER["model_args"],
        classifier_checkpoint=tiny["classifier"],
        key_mapping="exact",
        image_size=32,
        top_k=2,
        batch_size=3,
    )
    cap.setup("cpu")
    # reference labels: the saved classifier, the same preprocessing, softmax, top-2
    net = timm.create_model(TINY_CLASSIFIER["model_name"], pretrained=False, **TINY_CLASSIFIER["model_args"])
    net.load_state_dict(torch.load(tiny["classifier"], weights_only=True))
    x = torch.stack([ImageTransform(32, (0.5,) * 3, (0.5,) * 3)(im) for im in images])
    with torch.no_grad():
        top = net.eval()(x).softmax(-1).topk(2).indices.tolist()
    names = imagenet_classnames()
    expected = [[names[i] for i in row] for row in top]
    assert [[n for n, _ in t] for t in cap.labels(images)] == expected
    prompt = cap.render(expected[0], "")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert f"a photo that shows: {expected[0][0]}, {expected[0][1]}.<|im_end|>" in prompt
    generations = cap.generate(images, CAPTIONS, KEYS)
    assert [g[0].params["labels"] for g in generations] == expected
    assert texts(generations) == one_at_a_time(cap, images, CAPTIONS, KEYS)
    assert (
        "tf_efficientnet" not in generations[0][0].model_id
        and tiny["chat_llama"] in generations[0][0].model_id
    )


def test_label_llm_rejects_a_classifier_without_imagenet_classes(tiny):
    args = {**TINY_CLASSIFIER["model_args"], "num_classes": 10}
    cap = LabelLLMCaptioner(
        llm=tiny["chat_llama"],
        classifier=TINY_CLASSIFIER["model_name"],
        classifier_args=args,
        classifier_checkpoint=None,
    )
    with pytest.raises(ValueError, match="1000"):
        cap.setup("cpu")
