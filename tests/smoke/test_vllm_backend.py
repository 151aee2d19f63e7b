"""``backend: vllm`` against the HF backend on the same tiny random-weight models (``vllm`` tier: runs in
``.venv-vllm`` with ``make test-vllm``; vLLM's CPU attention needs a head size >= 64, hence the wide decoders).

Greedy decoding must give the same new tokens on both backends, row for row: the label-conditioned LLM (SmolLM2's
chat template), LLaVA-1.5 (``LlavaForConditionalGeneration``, the seed's raw prompt) and Qwen2-VL (chat template,
dynamic resolution: images of different sizes). Sampling must depend on the sample key only (per-row seeds), and
``clipforge generate`` must write the same table on both backends.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli.generate import generate
from clipforge.models.captioners.batched import count_new_tokens
from clipforge.models.captioners.hf import HFCaptioner
from clipforge.models.captioners.label_llm import LabelLLMCaptioner
from clipforge.models.captioners.vllm_engine import sampling_params
from clipforge.utils.hydra import compose
from tests.helpers.tiny_vlms import (
    TINY_CLASSIFIER,
    WIDE_DECODER,
    llava_hub_layout,
    save_tiny_chat_llama,
    save_tiny_classifier,
    save_tiny_llava,
    save_tiny_qwen2_vl,
)

pytestmark = pytest.mark.vllm
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine (tiny models)

ENGINE = {"enforce_eager": True}  # no torch.compile warm-up: seconds instead of minutes on CPU
SIZES = [(40, 40), (64, 48), (32, 56), (50, 50), (48, 64)]
WIDE_LLM = {"model_type": "llama", "num_hidden_layers": 2, "max_position_embeddings": 256, **WIDE_DECODER}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


IMAGES = _images()
KEYS = [f"img{i}" for i in range(len(IMAGES))]
CAPTIONS = ["a photo", "two dogs", "", "a red car on a road", "a cup"]


def _hf_tokens(c, images, captions) -> list[list[int]]:
    """New tokens of the HF backend's batched, left-padded ``generate``, each cut before its first stop id."""
    inputs, _ = c._encode(images, captions)
    with torch.inference_mode():
        out = c.model.generate(**inputs, **c._generate_kwargs(), pad_token_id=c.tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [row[:n].tolist() for row, n in zip(new, count_new_tokens(new, c._stop_ids()))]


def _vllm_tokens(c, images, captions) -> list[list[int]]:
    """New tokens of the vLLM engine on the same rows, each cut before its first stop id."""
    prompts, _ = c._vllm_prompts(images, captions)
    new = c.engine.generate(prompts, sampling_params(c.decoding, [0] * len(prompts), c._eos_ids()))
    stops = set(c._stop_ids())
    return [t[: next((i for i, x in enumerate(t) if x in stops), len(t))] for t in new]


def _pair(cls, **kwargs):
    hf, vl = cls(**kwargs), cls(**kwargs, backend="vllm", engine_args=ENGINE)
    hf.setup("cpu")
    vl.setup("cpu")
    return hf, vl


def _assert_same(hf, vl) -> None:
    a, b = _hf_tokens(hf, IMAGES, CAPTIONS), _vllm_tokens(vl, IMAGES, CAPTIONS)
    assert a == b
    assert len({tuple(t) for t in a}) > 1 and all(a)  # the rows differ: the inputs reach the model
    ga, gb = hf.generate(IMAGES, CAPTIONS, KEYS), vl.generate(IMAGES, CAPTIONS, KEYS)
    for x, y in zip(ga, gb):
        assert [g.raw_text for g in x] == [g.raw_text for g in y]
        assert [g.text for g in x] == [g.text for g in y]
        assert [g.num_tokens for g in x] == [g.num_tokens for g in y]
        assert [{**g.params, "backend": "vllm"} for g in x] == [g.params for g in y]


@pytest.fixture(scope="module")
def label_llm_kwargs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("label_llm")
    return {
        "llm": save_tiny_chat_llama(root / "llm"),  # its tokenizer; the LM is the wide random one
        "llm_config": WIDE_LLM,
        "classifier": TINY_CLASSIFIER["model_name"],
        "classifier_checkpoint": save_tiny_classifier(root / "cls"),
        "key_mapping": "exact",
        "classifier_args": TINY_CLASSIFIER["model_args"],
        "image_size": 32,
        "batch_size": 2,
    }


def test_label_llm_greedy_equals_the_hf_backend_token_for_token(label_llm_kwargs):
    decoding = {"max_new_tokens": 12, "min_new_tokens": 3, "repetition_penalty": 1.3}
    _assert_same(*_pair(LabelLLMCaptioner, **label_llm_kwargs, decoding=decoding))


def test_llava_greedy_equals_the_hf_backend_token_for_token(tmp_path):
    path = llava_hub_layout(save_tiny_llava(tmp_path / "llava", text=WIDE_DECODER))
    # the llava_1_5 preset's prompt and model class, greedy
    kwargs = {
        "name_or_path": path,
        "name": "llava_1_5",
        "model_class": "LlavaForConditionalGeneration",
        "prompt": "Describe <image> in English: {caption}",
        "chat_template": False,
        "decoding": {"max_new_tokens": 10},
        "batch_size": 2,
    }
    _assert_same(*_pair(HFCaptioner, **kwargs))


def test_qwen2_vl_greedy_equals_the_hf_backend_token_for_token(tmp_path):
    path = save_tiny_qwen2_vl(tmp_path / "qwen2_vl", text=WIDE_DECODER)
    # the qwen2_vl preset: chat template, 8 (here 3) to N new tokens, a pixel budget
    kwargs = {
        "name_or_path": path,
        "name": "qwen2_vl",
        "model_class": "Qwen2VLForConditionalGeneration",
        "prompt": "Express emotional or artistic response: {caption}",
        "chat_template": True,
        "decoding": {"max_new_tokens": 10, "min_new_tokens": 3},
        "processor_kwargs": {"max_pixels": 4096},
        "batch_size": 2,
    }
    _assert_same(*_pair(HFCaptioner, **kwargs))


def test_sampling_depends_on_the_key_only(label_llm_kwargs):
    decoding = {"max_new_tokens": 10, "do_sample": True, "temperature": 1.0, "top_k": 50, "seed": 3}
    c = LabelLLMCaptioner(
        **label_llm_kwargs, decoding=decoding, num_captions=2, backend="vllm", engine_args=ENGINE
    )
    c.setup("cpu")
    every = c.generate(IMAGES, CAPTIONS, KEYS)
    texts = [[g.raw_text for g in gens] for gens in every]
    # the same keys alone, in another order (another batch for the engine): the same captions
    again = c.generate(IMAGES[3:][::-1], CAPTIONS[3:][::-1], KEYS[3:][::-1])
    assert [[g.raw_text for g in gens] for gens in again] == texts[3:][::-1]
    assert texts == [[g.raw_text for g in gens] for gens in c.generate(IMAGES, CAPTIONS, KEYS)]
    assert len({t for pair in texts for t in pair}) > len(texts)  # the two captions of an image differ
    assert [g.params["row_seed"] for g in every[0]] != [g.params["row_seed"] for g in every[1]]


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_generate_writes_the_same_table_on_both_backends(tmp_path, label_llm_kwargs):
    """``clipforge generate experiment=recap_label_llm debug=tiny_recap_label_llm`` with the wide LM, HF vs vLLM:
    the same rows and columns; only the provenance's ``backend`` tells them apart."""
    wide = [f"model.captioners.label_llm.llm_config.{k}={v}" for k, v in WIDE_LLM.items()]
    base = [
        "experiment=recap_label_llm",
        "debug=tiny_recap_label_llm",
        f"model.captioners.label_llm.llm={label_llm_kwargs['llm']}",
        f"model.captioners.label_llm.classifier_checkpoint={label_llm_kwargs['classifier_checkpoint']}",
        "model.captioners.label_llm.key_mapping=exact",
        "model.captioners.label_llm.decoding.max_new_tokens=12",
        *wide,
    ]
    vllm = ["model.backend=vllm", "+model.captioners.label_llm.engine_args.enforce_eager=true"]
    generate(compose(base, "generate", output_dir=str(tmp_path / "hf")))
    generate(compose([*base, *vllm], "generate", output_dir=str(tmp_path / "vllm")))
    a, b = _rows(tmp_path / "hf" / "predictions.jsonl"), _rows(tmp_path / "vllm" / "predictions.jsonl")
    assert [r["key"] for r in a] == [r["key"] for r in b] and len(a) == 6
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        assert y["label_llm_meta"]["params"].pop("backend") == "vllm"
        assert x == y
    assert len({r["label_llm_raw"] for r in a}) > 1


def test_a_local_teacher_on_vllm_answers_as_on_the_hf_backend(tmp_path):
    """The enhance teacher with local captioners (``CaptionerTeacher``: phase-1 scores, phase-2 good captions) on
    a vLLM engine gives the HF backend's replies (greedy, tiny LLaVA)."""
    from clipforge.tasks.enhance.negatives import NegativeGenerator
    from clipforge.tasks.enhance.teacher import CaptionerTeacher

    path = llava_hub_layout(save_tiny_llava(tmp_path / "llava", text=WIDE_DECODER))
    kwargs = {"name_or_path": path, "model_class": "LlavaForConditionalGeneration", "chat_template": False}
    kwargs |= {"postprocess": "strip", "decoding": {"max_new_tokens": 12}, "batch_size": 2}

    def teacher(**backend) -> CaptionerTeacher:
        scorer = HFCaptioner(
            name="scorer", prompt="<image> Rate this caption from 1 to 10: {caption}", **kwargs, **backend
        )
        writer = HFCaptioner(
            name="writer", prompt="<image> Write a better caption than: {caption}", **kwargs, **backend
        )
        t = CaptionerTeacher(scorer, writer, negatives=NegativeGenerator())
        t.setup("cpu")
        return t

    hf, vl = teacher(), teacher(backend="vllm", engine_args=ENGINE)
    high = [True, False, True, True, False]
    a = [r.text for r in hf.score(IMAGES, CAPTIONS, KEYS)] + [
        r.text for r in hf.write(IMAGES, CAPTIONS, KEYS, high)
    ]
    b = [r.text for r in vl.score(IMAGES, CAPTIONS, KEYS)] + [
        r.text for r in vl.write(IMAGES, CAPTIONS, KEYS, high)
    ]
    assert a == b
    assert len(set(a[:5])) > 1 and all(
        t for t in a[:5]
    )  # the replies differ by image: the inputs reach the model
