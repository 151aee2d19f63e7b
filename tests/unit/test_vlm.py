"""VisionLanguageModel: AITQE folder layout, splice, inputs/labels, generation, towers, LoRA merge."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from clipforge.models.lora import LoraSpec, apply_lora, has_lora, merged_state_dict
from clipforge.models.projector import build_projector
from clipforge.models.vlm import (
    IGNORE_INDEX,
    IMAGE_POSITION,
    CausalLMSpec,
    SiglipPatchVision,
    SquareImageTransform,
    TimmPatchVision,
    VisionLanguageModel,
    VLMSpec,
)
from clipforge.tasks.enhance.prompt import build_prompt, image_tag
from tests.helpers.tiny_vlm import (
    LLM,
    SIGLIP,
    save_tiny_causal_lm,
    save_tiny_qwen2_tokenizer,
    save_tiny_siglip,
    tiny_images,
    tiny_spec,
    write_released_aitqe,
)

PROMPTS = ["<image>\nDescribe the image.", "a question <image> about it", "no placeholder here"]
ANSWERS = ["a cat", "a dog on a mat", ""]

# config.json keys the official MMConfig / data processor read (modeling_mm.py, data_processor.py)
AITQE_KEYS = {
    "model_type",
    "architectures",
    "language_model_name_or_path",
    "vision_model_name_or_path",
    "mm_projector_type",
    "image_aspect_ratio",
    "image_token_index",
    "pad_token_index",
    "eos_token_index",
    "IGNORE_INDEX",
    "image_tile_tokens",
    "pesudo_img_size",
    "pesudo_patch_size",
    "visual_hidden_dim",
    "pooling_kernel",
    "hidden_size",
    "vocab_size",
    "num_hidden_layers",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny SigLIP folder and a tiny Qwen2 folder, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("vlm_parts")
    return save_tiny_siglip(root / "tiny_siglip"), save_tiny_causal_lm(root / "tiny_qwen2")


@pytest.fixture(scope="module")
def vlm(folders):
    """SigLIP + Qwen2 loaded from their folders, new projector: the AITQE architecture, tiny."""
    torch.manual_seed(0)
    siglip, qwen = folders
    return VisionLanguageModel.build(VLMSpec(SiglipPatchVision(siglip), CausalLMSpec(qwen))).eval()


@pytest.fixture(scope="module")
def qwen_vlm(tmp_path_factory):
    """A config-only SigLIP + a random Qwen2 with a Qwen2Tokenizer ("\\n\\n" is one token, as in Qwen2's)."""
    tok_dir = save_tiny_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2_tok"))
    torch.manual_seed(0)
    llm = CausalLMSpec(config={"model_type": "qwen2", **LLM}, tokenizer=tok_dir)
    return VisionLanguageModel.build(VLMSpec(SiglipPatchVision(config=SIGLIP), llm)).eval()


NOLOSS_START, NOLOSS_END = "<noloss_start>", "<noloss_end>"


def official_prompt_ids(tokenizer, prompt: str, image_tokens: int) -> list[int]:
    """AITQE's ``MMDataProcessor`` at inference (``is_infra=True``), re-stated step by step from its
    ``data_processor.py``: every JSON image tag is wrapped in ``<noloss_start>...<noloss_end>``; the newline rule
    then sees ``<img_end>`` followed by ``<noloss_end>`` and inserts ``"\\n"`` there; the text is split at the
    no-loss spans, each span is split at its image tag, and every piece is tokenized on its own
    (``tokenizer(piece).input_ids``); an image becomes ``image_tokens`` positions of id -1."""
    start, end = "<img_start>", "<img_end>"
    text = prompt
    for obj in re.findall(f"{start}(.*?){end}", prompt):
        json.loads(obj)  # the test prompts hold JSON tags only (others are not wrapped by the official code)
        text = text.replace(f"{start}{obj}{end}", f"{NOLOSS_START}{start}{obj}{end}{NOLOSS_END}")
    text = re.sub(f"{re.escape(end)} +", end, text)
    text = re.sub(f"{re.escape(end)}(?![ \n])", f"{end}\n", text)
    ids: list[int] = []
    for part in re.split(f"({NOLOSS_START}.*?{NOLOSS_END})", text, flags=re.DOTALL):
        if not part:
            continue
        if re.match(f"{NOLOSS_START}.*?{NOLOSS_END}", part, flags=re.DOTALL):
            inner = part.replace(NOLOSS_START, "").replace(NOLOSS_END, "")
            for piece in re.split(f"({start}.*?{end})", inner):
                if re.match(f"{start}.*?{end}", piece):
                    ids += [IMAGE_POSITION] * image_tokens
                else:
                    ids += tokenizer(piece).input_ids
        else:
            ids += tokenizer(part).input_ids
    return ids


def test_aitqe_prompt_ids_are_the_official_processors(qwen_vlm):
    """The official processor adds a "\\n" after ``<img_end>`` and tokenizes it apart from the question: the
    image, then ``"\\n"``, then ``"\\nEvaluate ..."`` (one more token than the image + ``"\\n\\nEvaluate..."``
    or the image + ``"\\nEvaluate..."``)."""
    tok, n = qwen_vlm.tokenizer, qwen_vlm.num_image_tokens
    assert tok("\n").input_ids == tok("\n", add_special_tokens=False).input_ids  # no BOS / EOS added
    assert len(tok("\n\nEvaluate").input_ids) < len(tok("\n").input_ids + tok("\nEvaluate").input_ids)
    prompts = [
        build_prompt("a cat on a sofa"),
        build_prompt("two dogs.  "),
        build_prompt("12 cats", image_path="figs/test.png"),
        f"{image_tag()} Evaluate the caption: a cat",  # a space after the tag
        f"{image_tag()}Evaluate the caption: a cat",  # nothing between the tag and the text
        f"Look: {image_tag()}\nEvaluate the caption: a cat",  # text before the tag
        f"Evaluate the caption: a cat\n{image_tag()}",  # the tag last
        image_tag(),
    ]
    rows = qwen_vlm.build_inputs(prompts)
    for i, prompt in enumerate(prompts):
        expected = official_prompt_ids(tok, prompt, n)
        got = rows["input_ids"][i][rows["attention_mask"][i].bool()].tolist()
        assert got == expected, prompt
    question = tok("\nEvaluate the caption: a cat on a sofa").input_ids
    first = rows["input_ids"][0][rows["attention_mask"][0].bool()].tolist()
    assert first[: n + 1 + len(question)] == [IMAGE_POSITION] * n + tok("\n").input_ids + question


# the pre-tokenizer patterns of transformers 4.x's slow byte-level BPE classes (tokenization_gpt2.py, _qwen2.py)
SLOW_PATTERNS = {
    "GPT2Tokenizer": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "Qwen2Tokenizer": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the others to
    256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def slow_bpe_ids(folder: str, text: str) -> list[int]:
    """What a transformers-4.x slow byte-level BPE tokenizer (``use_fast=False``) reads and computes, re-stated:
    ``tokenizer_class`` from ``tokenizer_config.json``, the vocabulary from ``vocab.json``, merge ranks from
    ``merges.txt`` and added tokens from ``added_tokens_decoder``. Added tokens split the text first; each
    remaining piece is NFC-normalised (Qwen2), cut by the class's pattern, mapped to byte symbols and merged by
    rank."""
    import unicodedata

    import regex

    with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    cls = config["tokenizer_class"]
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    merges = [
        tuple(line.split()) for i, line in enumerate(lines) if line and not (i == 0 and line.startswith("#"))
    ]
    ranks = {pair: r for r, pair in enumerate(merges)}
    added = {t["content"]: int(i) for i, t in config.get("added_tokens_decoder", {}).items()}
    symbols = _byte_symbols()
    pattern = regex.compile(SLOW_PATTERNS[cls])

    def bpe(word: list[str]) -> list[str]:
        while len(word) > 1:
            pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2 :]
        return word

    ids: list[int] = []
    split = (
        "(" + "|".join(regex.escape(t) for t in sorted(added, key=len, reverse=True)) + ")" if added else None
    )
    for piece in regex.split(split, text) if split else [text]:
        if piece in added:
            ids.append(added[piece])
            continue
        if cls == "Qwen2Tokenizer":
            piece = unicodedata.normalize("NFC", piece)
        for chunk in pattern.findall(piece):
            ids += [vocab[t] for t in bpe([symbols[b] for b in chunk.encode("utf-8")])]
    return ids


TOKENIZER_SAMPLES = [
    build_prompt("a cat on a sofa"),
    "\n\nEvaluate  the image: 12 cats, 3 dogs.\tDone!",
    "naïve café — déjà vu, e\u0301 composed",
    "<|im_start|>user\nhi<|im_end|><|endoftext|>",
    "  leading and trailing  ",
]


@pytest.mark.parametrize("which", ["qwen2_tokenizer", "byte_level"])
def test_saved_folder_loads_with_the_official_slow_tokenizer_call(which, qwen_vlm, tmp_path):
    """The official inference loads ``AutoTokenizer.from_pretrained(path, use_fast=False)`` (transformers 4.41):
    a slow byte-level BPE needs ``vocab.json``, ``merges.txt``, the added tokens and a class it knows. A saved
    folder gives the fast tokenizer's ids through that route (re-stated in :func:`slow_bpe_ids`), and still
    reloads unchanged here."""
    from transformers import AutoTokenizer

    vlm = qwen_vlm if which == "qwen2_tokenizer" else VisionLanguageModel.build(tiny_spec()).eval()
    out = vlm.save_pretrained(str(tmp_path / "aitqe"))
    with open(os.path.join(out, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["tokenizer_class"] == ("Qwen2Tokenizer" if which == "qwen2_tokenizer" else "GPT2Tokenizer")
    for text in TOKENIZER_SAMPLES:
        fast = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert slow_bpe_ids(out, text) == fast, text
    again = AutoTokenizer.from_pretrained(out, use_fast=False)
    for text in TOKENIZER_SAMPLES:
        assert again(text)["input_ids"] == vlm.tokenizer(text)["input_ids"], text
    assert (again.pad_token_id, again.eos_token_id) == (
        vlm.tokenizer.pad_token_id,
        vlm.tokenizer.eos_token_id,
    )


def official_image_features(siglip: torch.nn.Module, pixels: torch.Tensor, name: str) -> torch.Tensor:
    """modeling_mm.py ``_merge_input_ids_with_image_features``: the penultimate hidden states, without patch 0
    unless ``vision_model_name_or_path`` contains "siglip"."""
    feats = siglip(pixels, output_hidden_states=True).hidden_states[-2]
    return feats if "siglip" in name.lower() else feats[:, 1:]


@pytest.mark.parametrize("tower", ["config_only", "folder_not_named_siglip"])
def test_vision_model_name_or_path_keeps_the_official_behaviour(tower, folders, tmp_path):
    """``vision_model_name_or_path`` is what the official model builds its SigLIP config and image processor from,
    and it drops patch 0 unless the name contains "siglip": a saved folder names a SigLIP folder that holds both
    (its own ``siglip_vision/`` when the tower has no such name) and every patch is kept; it still loads here,
    also after the folder is moved."""
    import shutil

    from transformers import SiglipImageProcessor, SiglipVisionConfig

    if tower == "config_only":
        vision = SiglipPatchVision(config=SIGLIP, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    else:
        vision = SiglipPatchVision(str(shutil.copytree(folders[0], tmp_path / "tower")))
    torch.manual_seed(0)
    vlm = VisionLanguageModel.build(VLMSpec(vision, CausalLMSpec(folders[1]))).eval()
    out = vlm.save_pretrained(str(tmp_path / "aitqe"))
    config = json.loads((tmp_path / "aitqe" / "config.json").read_text())
    name = config["vision_model_name_or_path"]
    assert "siglip" in name.lower()
    official = SiglipVisionConfig.from_pretrained(name)
    for key in ("hidden_size", "image_size", "patch_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(official, key) == getattr(vision.vision_config(), key), key
    proc = SiglipImageProcessor.from_pretrained(name)
    images = tiny_images(2)
    torch.testing.assert_close(
        proc(images, return_tensors="pt")["pixel_values"], vlm.pixel_values(images), atol=2e-2, rtol=0
    )
    with torch.no_grad():
        feats = official_image_features(vlm.vision_model.vision_model, vlm.pixel_values(images), name)
    assert feats.shape[1] == config["image_tile_tokens"] == 16
    inputs = vlm.build_inputs(PROMPTS, ANSWERS)
    pixels = vlm.pixel_values(tiny_images(3))
    with torch.no_grad():
        expected = vlm(pixels, inputs["input_ids"], inputs["attention_mask"])
        moved = shutil.move(out, tmp_path / "moved")
        again = VisionLanguageModel.from_pretrained(str(moved)).eval()
        torch.testing.assert_close(again(pixels, inputs["input_ids"], inputs["attention_mask"]), expected)
    resaved = again.save_pretrained(str(tmp_path / "resaved"))
    name2 = json.loads((tmp_path / "resaved" / "config.json").read_text())["vision_model_name_or_path"]
    assert "siglip" in name2.lower() and SiglipVisionConfig.from_pretrained(name2).hidden_size == 32
    if tower == "config_only":
        assert name2.startswith(os.path.abspath(resaved))  # the new folder's own copy, not the moved one's


def test_projector_is_linear_gelu_linear_without_bias():
    p = build_projector("mlp", 12, 8)
    assert [type(m).__name__ for m in p] == ["Linear", "GELU", "Linear"]
    assert set(p.state_dict()) == {"0.weight", "0.bias", "2.weight"}
    assert p(torch.randn(2, 5, 12)).shape == (2, 5, 8)
    with pytest.raises(ValueError):
        build_projector("qformer", 12, 8)


def test_save_pretrained_writes_the_aitqe_layout_and_reloads_identical_logits(vlm, folders, tmp_path):
    out = vlm.save_pretrained(str(tmp_path / "aitqe"))
    config = json.loads((tmp_path / "aitqe" / "config.json").read_text())
    assert AITQE_KEYS <= set(config)
    assert config["model_type"] == "mm" and config["architectures"] == ["MMForCausalLM"]
    assert (
        config["image_tile_tokens"] == 16 == (config["pesudo_img_size"] // config["pesudo_patch_size"]) ** 2
    )
    assert config["visual_hidden_dim"] == 32 and config["vision_model_name_or_path"] == folders[0]
    weights = load_file(os.path.join(out, "model.safetensors"))
    for key in (
        "model.model.embed_tokens.weight",
        "model.model.layers.0.self_attn.q_proj.weight",
        "model.lm_head.weight",
        "vision_model.vision_model.embeddings.patch_embedding.weight",
        "vision_model.vision_model.encoder.layers.1.mlp.fc2.weight",
        "mm_projector.0.weight",
        "mm_projector.0.bias",
        "mm_projector.2.weight",
        "image_newline",
    ):
        assert key in weights, key
    assert "mm_projector.2.bias" not in weights
    again = VisionLanguageModel.from_pretrained(out).eval()
    inputs = vlm.build_inputs(PROMPTS, ANSWERS)
    pixels = vlm.pixel_values(tiny_images(3))
    with torch.no_grad():
        assert torch.equal(
            vlm(pixels, inputs["input_ids"], inputs["attention_mask"]),
            again(pixels, inputs["input_ids"], inputs["attention_mask"]),
        )


def test_released_aitqe_folder_matches_the_official_forward(folders, tmp_path):
    """A folder written like the released checkpoint loads, and gives the logits of the official splice."""
    siglip_dir = folders[0]
    ref = write_released_aitqe(tmp_path / "released", siglip_dir)
    model = VisionLanguageModel.from_pretrained(
        str(tmp_path / "released"), vision_model_name_or_path=siglip_dir
    ).eval()
    assert model.num_image_tokens == 16 and model.eos_token_id == ref["tokenizer"].eos_token_id
    tok = ref["tokenizer"]
    # the official prompt: image, the "\n" its processor adds after <img_end>, then "\n" + question, each piece
    # tokenized on its own (official_prompt_ids)
    prompt = '<img_start>{"path": "x.png", "source": "localpath", "file_type": "I"}<img_end>\nEvaluate the caption: a cat'
    expected_ids = official_prompt_ids(tok, prompt, 16)
    assert expected_ids[16:] == tok("\n").input_ids + tok("\nEvaluate the caption: a cat").input_ids
    ids = torch.tensor([expected_ids])
    mask = torch.ones_like(ids)
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(model.build_inputs([prompt])["input_ids"], ids)
    with torch.no_grad():
        embeds = ref["llm"].model.embed_tokens(ids.clamp(min=0))
        feats = ref["projector"](ref["vision"](pixels, output_hidden_states=True).hidden_states[-2])
        where = torch.nonzero(ids == IMAGE_POSITION)
        embeds.index_put_([where[:, 0], where[:, 1]], feats.reshape(-1, 32))
        expected = ref["llm"](inputs_embeds=embeds, attention_mask=mask).logits
        torch.testing.assert_close(model(pixels, ids, mask), expected)


def test_splice_puts_projected_features_at_the_placeholder_positions(vlm):
    inputs = vlm.build_inputs(PROMPTS, ANSWERS, padding_side="left")
    pixels = vlm.pixel_values(tiny_images(3))
    ids = inputs["input_ids"]
    with torch.no_grad():
        spliced = vlm.embed(pixels, ids)
        feats = vlm.encode_images(pixels)
        table = vlm.model.get_input_embeddings().weight
    for b in range(ids.shape[0]):
        j = 0
        for t in range(ids.shape[1]):
            if ids[b, t] == IMAGE_POSITION:
                assert torch.equal(spliced[b, t], feats[b, j])
                j += 1
            else:
                assert torch.equal(spliced[b, t], table[ids[b, t]])
        assert j == vlm.num_image_tokens
    broken = ids[:1].clone()
    broken[0, (broken[0] == IMAGE_POSITION).nonzero()[0]] = 0  # 15 image positions for 16 features
    with pytest.raises(ValueError, match="image positions"):
        vlm.embed(pixels[:1], broken)


def test_shared_images_and_tower_chunks_give_the_same_embeddings(vlm):
    """Rows that share an image (``image_index``) and towers run in chunks splice the same features as one
    image per row in one call."""
    prompts = PROMPTS + PROMPTS[:2]
    ids = vlm.build_inputs(prompts, padding_side="left")["input_ids"]
    pixels = vlm.pixel_values(tiny_images(3))
    index = [0, 1, 2, 2, 0]
    with torch.no_grad():
        per_row = vlm.embed(pixels[index], ids)
        shared = vlm.embed(pixels, ids, torch.tensor(index), vision_chunk_size=2)
        chunked = vlm.encode_images(pixels, chunk_size=2)
    torch.testing.assert_close(shared, per_row)
    torch.testing.assert_close(chunked, vlm.encode_images(pixels))


def test_build_inputs_golden(vlm):
    tok, n = vlm.tokenizer, vlm.num_image_tokens

    def t(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    eos, pad = vlm.eos_token_id, tok.pad_token_id
    out = vlm.build_inputs(["ab <image> c", "d"], ["xy", "z"])
    row0 = t("ab ") + [IMAGE_POSITION] * n + t(" c") + t("xy") + [eos]
    row1 = [IMAGE_POSITION] * n + t("d") + t("z") + [eos]  # no placeholder: the image goes first
    width = len(row0)
    assert out["input_ids"].tolist() == [row0, row1 + [pad] * (width - len(row1))]
    assert out["attention_mask"].tolist() == [[1] * width, [1] * len(row1) + [0] * (width - len(row1))]
    assert out["labels"].tolist() == [
        [IGNORE_INDEX] * (width - 3) + t("xy") + [eos],
        [IGNORE_INDEX] * (len(row1) - 2) + t("z") + [eos] + [IGNORE_INDEX] * (width - len(row1)),
    ]
    left = vlm.build_inputs(["ab <image> c", "d"], padding_side="left")
    assert "labels" not in left
    assert left["input_ids"][1].tolist() == [pad] * (width - 3 - len(row1) + 2) + row1[:-2]
    cut = vlm.build_inputs(["d"], ["a long answer"], max_length=n + 3)
    assert cut["input_ids"].tolist() == [row1[:-2] + t("a long answer")[:2]]
    with pytest.raises(ValueError, match="one image per prompt"):
        vlm.build_inputs(["<image> and <image>"])
    with pytest.raises(ValueError, match="max_length"):
        vlm.build_inputs(["a long prompt"], ["x"], max_length=n + 2)


def test_left_and_right_padding_give_the_same_logits(vlm):
    pixels = vlm.pixel_values(tiny_images(3))
    right = vlm.build_inputs(PROMPTS, ANSWERS)
    left = vlm.build_inputs(PROMPTS, ANSWERS, padding_side="left")
    with torch.no_grad():
        a = vlm(pixels, right["input_ids"], right["attention_mask"])
        b = vlm(pixels, left["input_ids"], left["attention_mask"])
    for i in range(3):
        n = int(right["attention_mask"][i].sum())
        torch.testing.assert_close(a[i, :n], b[i, -n:], atol=1e-5, rtol=1e-5)


def test_batched_generation_equals_one_at_a_time_greedy(vlm):
    images = tiny_images(3)
    batched = vlm.generate_text(images, PROMPTS, max_new_tokens=12)
    single = [vlm.generate_text([im], [p], max_new_tokens=12)[0] for im, p in zip(images, PROMPTS)]
    assert batched == single
    assert any(batched)  # a random model still writes bytes
    inputs = vlm.prepare_generation(images, PROMPTS)
    out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (3, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_tied_llama_with_timm_tower_round_trip(tmp_path):
    """SmolLM2's shape (Llama, tied embeddings) with a timm tower: the LM head is stored once and re-tied."""
    torch.manual_seed(0)
    lm_dir = save_tiny_causal_lm(tmp_path / "llama", "llama", tie_word_embeddings=True)
    vit = TimmPatchVision(
        "vit_tiny_patch16_224",
        image_size=32,
        model_args={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    vlm = VisionLanguageModel.build(VLMSpec(vit, CausalLMSpec(lm_dir))).eval()
    out = vlm.save_pretrained(str(tmp_path / "vlm"))
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert "model.lm_head.weight" not in weights and "vision_model.model.patch_embed.proj.weight" in weights
    again = VisionLanguageModel.from_pretrained(out).eval()
    assert again.model.lm_head.weight is again.model.model.embed_tokens.weight
    inputs = vlm.build_inputs(PROMPTS, ANSWERS)
    pixels = vlm.pixel_values(tiny_images(3))
    with torch.no_grad():
        assert torch.equal(
            vlm(pixels, inputs["input_ids"], inputs["attention_mask"]),
            again(pixels, inputs["input_ids"], inputs["attention_mask"]),
        )
    assert type(again.vision) is TimmPatchVision and again.image_transform(False).image_size == 32


def test_from_pretrained_rejects_incomplete_or_foreign_weights(vlm, tmp_path):
    from safetensors.torch import save_file

    out = vlm.save_pretrained(str(tmp_path / "ok"))
    weights = load_file(os.path.join(out, "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("mm_projector.2")}, f"{out}/model.safetensors"
    )
    with pytest.raises(ValueError, match="missing weights"):
        VisionLanguageModel.from_pretrained(out)
    save_file({**weights, "extra.weight": torch.zeros(1)}, f"{out}/model.safetensors")
    with pytest.raises(ValueError, match="unexpected weights"):
        VisionLanguageModel.from_pretrained(out)


def test_timm_feature_map_tokens_are_row_major_and_poolable():
    spec = TimmPatchVision("tf_efficientnet_lite0", image_size=64)
    assert spec.num_tokens == 4 and spec.feature_dim == 1280 and spec.patch_size == 32
    tower = spec.build().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = tower.model.forward_features(x)
        tokens = tower(x)
    for i in range(2):
        for j in range(2):
            assert torch.equal(tokens[:, i * 2 + j], fmap[:, :, i, j])
    pooled = TimmPatchVision("tf_efficientnet_lite0", image_size=96, pool_to=2)
    assert pooled.num_tokens == 4 and pooled.patch_size == 48
    with torch.no_grad():
        out = pooled.build().eval()(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 4, 1280)


def test_square_transform_matches_siglip_image_processor(folders):
    from transformers import SiglipImageProcessor

    siglip = SiglipPatchVision(folders[0])
    tf = siglip.image_transform(False)
    assert isinstance(tf, SquareImageTransform) and tf.image_size == 32
    proc = SiglipImageProcessor.from_pretrained(folders[0])
    for image in tiny_images(2):
        expected = proc(image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(tf(image), expected, atol=2e-2, rtol=0)


def test_lora_merged_state_dict_equals_peft_merge(folders):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folders[1])
    model = apply_lora(copy.deepcopy(base), LoraSpec(r=4, alpha=8, target_modules=["q_proj", "down_proj"]))
    assert has_lora(model)
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # B starts at zero: make the delta non-trivial
    expected = copy.deepcopy(model)
    from peft.tuners.lora import LoraLayer

    for m in expected.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    merged = merged_state_dict(model)
    assert list(merged) == list(base.state_dict())
    for k, v in merged.items():
        ref = expected.get_submodule(k.rsplit(".", 1)[0])
        ref = ref.get_base_layer() if isinstance(ref, LoraLayer) else ref
        torch.testing.assert_close(v, getattr(ref, k.rsplit(".", 1)[1]), msg=k)
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"],
        base.state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )
    # a peft.PeftModel wrapper is looked through (keys of its base model)
    wrapped = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["v_proj"]))
    assert list(merged_state_dict(wrapped)) == list(base.state_dict())


def test_spec_validation():
    with pytest.raises(ValueError):
        SiglipPatchVision()
    with pytest.raises(ValueError):
        CausalLMSpec()
    with pytest.raises(ValueError):
        CausalLMSpec(config={"model_type": "qwen2"})  # no tokenizer
    with pytest.raises(ValueError):
        VLMSpec(tiny_spec().vision, tiny_spec().llm, dtype="float99")


def test_timm_class_probs_tokens_append_each_tokens_softmax():
    """class_probs: features unchanged, then softmax(classifier(token) / T), computed here by hand."""
    args = {"num_classes": 5}
    plain = TimmPatchVision("tf_efficientnet_lite0", image_size=64, model_args=args)
    spec = TimmPatchVision(
        "tf_efficientnet_lite0", image_size=64, model_args=args, class_probs=True, class_temperature=2.0
    )
    assert spec.num_classes == 5 and spec.feature_dim == 1280 + 5 and spec.num_tokens == plain.num_tokens == 4
    torch.manual_seed(0)
    tower = spec.build().eval()
    bare = plain.build().eval()
    bare.model.load_state_dict(tower.model.state_dict(), strict=False)  # the same backbone, no classifier
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, features = tower(x), bare(x)
    assert tokens.shape == (2, 4, 1285)
    torch.testing.assert_close(tokens[..., :1280], features)
    w, b = tower.model.classifier.weight, tower.model.classifier.bias
    for i in range(2):
        for t in range(4):
            logits = [(sum(w[k, c] * features[i, t, c] for c in range(1280)) + b[k]) / 2.0 for k in range(5)]
            z = sum(torch.exp(v) for v in logits)
            expected = torch.stack([torch.exp(v) / z for v in logits])
            torch.testing.assert_close(tokens[i, t, 1280:], expected, atol=1e-5, rtol=1e-4)
    assert spec.to_config()["class_probs"] is True and spec.to_config()["class_temperature"] == 2.0


def test_projector_lookup_init_maps_class_probabilities_to_centred_embeddings():
    from clipforge.models.projector import init_projector_as_lookup

    torch.manual_seed(0)
    k, d, extra = 6, 8, 10
    table = torch.rand(k, d) - 0.5  # |e| <= 0.5
    proj = build_projector("mlp", extra + k, d)
    init_projector_as_lookup(proj, table)
    probs = torch.rand(3, k).softmax(-1)
    x = torch.cat([torch.randn(3, extra), probs], dim=-1)  # the other features start at zero weight
    with torch.no_grad():
        out = proj(x)
    mix = probs @ table
    centred = mix - mix.mean(-1, keepdim=True)
    torch.testing.assert_close(out, centred, atol=4e-3, rtol=0)
    with pytest.raises(ValueError, match="cannot take"):
        init_projector_as_lookup(build_projector("mlp", 4, d), table)


def test_class_names_projector_init_builds_saves_and_reloads(tmp_path):
    """VLMSpec(projector_init='class_names'): the projector's class columns are the names' mean token
    embeddings (by hand from the embedding table); the folder reloads with the same tower and logits."""
    torch.manual_seed(0)
    lm_dir = save_tiny_causal_lm(tmp_path / "llama", "llama", tie_word_embeddings=True)
    names = ["cat", "dog", "red car"]
    tower = TimmPatchVision(
        "tf_efficientnet_lite0", image_size=64, model_args={"num_classes": 3}, class_probs=True
    )
    with pytest.raises(ValueError, match="class_probs"):
        VLMSpec(TimmPatchVision("tf_efficientnet_lite0"), CausalLMSpec(lm_dir), projector_init="class_names")
    vlm = VisionLanguageModel.build(
        VLMSpec(tower, CausalLMSpec(lm_dir), projector_init="class_names", class_names=names)
    ).eval()
    table = vlm.model.get_input_embeddings().weight
    for c, name in enumerate(names):
        ids = vlm.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        expected = sum(table[i] for i in ids) / len(ids)
        torch.testing.assert_close(vlm.mm_projector[0].weight[:, 1280 + c], expected)
    assert not vlm.mm_projector[0].weight[:, :1280].any()
    out = vlm.save_pretrained(str(tmp_path / "vlm"))
    again = VisionLanguageModel.from_pretrained(out).eval()
    assert again.vision.class_probs and again.vision.feature_dim == 1283
    inputs = vlm.build_inputs(PROMPTS, ANSWERS)
    pixels = vlm.pixel_values(tiny_images(3))
    with torch.no_grad():
        torch.testing.assert_close(
            vlm(pixels, inputs["input_ids"], inputs["attention_mask"]),
            again(pixels, inputs["input_ids"], inputs["attention_mask"]),
        )
