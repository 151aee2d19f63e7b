"""The retrieval-augmented captioner on tiny random models: top-k search vs a naive loop, own captions never
retrieved, the datastore embedding cache, nearest mode, the prompt, provenance, a trained checkpoint's embeddings,
and bad datastores. References: naive Python loops, the LM's own ``generate`` on the hand-written prompt, and
``CLIPModule.encode_*`` of the saved module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from clipforge.eval.retrieval import top_k
from clipforge.tasks.recap.retrieval import SMALLCAP_PROMPT, Hit, RetrievalCaptioner, first_line
from clipforge.utils.hydra import compose
from tests.helpers.tiny_vlms import save_tiny_chat_llama

KEYS = ["img-a", "img-b", "img-c"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (24 + 8 * i, 40, 3), dtype=np.uint8))
        for i in range(len(KEYS))
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A caption table (JSONL, text only): 3 captions of each query key and 2 of 5 other keys."""
    root = tmp_path_factory.mktemp("store")
    rows = [{"key": k, "captions": [f"{k} caption {j}" for j in range(3)]} for k in KEYS] + [
        {"key": f"other-{i}", "captions": [f"a photo of thing {i}", f"thing {i} on a table"]}
        for i in range(5)
    ]
    path = root / "store.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_llm(tmp_path_factory) -> str:
    return save_tiny_chat_llama(tmp_path_factory.mktemp("llm") / "chat")


def preset(tmp_path, store: str, llm: str | None = None, **fields) -> RetrievalCaptioner:
    """``+model/mllm@model.captioners.cap=tiny_retrieval`` with this datastore (and a local tiny LM)."""
    overrides = [
        "experiment=recap_label_llm",
        "~model/mllm@model.captioners.label_llm",
        "+model/mllm@model.captioners.cap=tiny_retrieval",
        f"model.captioners.cap.datastore=[{{path:{store},caption_fields:[captions],key_field:key}}]",
        *([f"model.captioners.cap.llm={llm}", "~model.captioners.cap.llm_config"] if llm else []),
        *[f"++model.captioners.cap.{k}={v}" for k, v in fields.items()],
    ]
    cfg = compose(overrides, "generate", output_dir=str(tmp_path))
    captioner = instantiate(cfg.model.captioners.cap, _convert_="all")
    captioner.setup("cpu")
    return captioner


def naive_top_k(queries, gallery, k, qg, gg):
    out = []
    for q, g in zip(queries.tolist(), qg.tolist()):
        scored = [
            (sum(a * b for a, b in zip(q, row)), j)
            for j, row in enumerate(gallery.tolist())
            if g < 0 or gg[j] != g
        ]
        scored.sort(key=lambda t: (-t[0], t[1]))
        out.append(scored[:k])
    return out


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_top_k_equals_a_naive_loop_and_skips_the_own_group(chunk_size):
    gen = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(7, 8, generator=gen), torch.randn(30, 8, generator=gen)
    gallery[5] = gallery[4]  # a tie: gallery order decides
    gg = torch.randint(0, 6, (30,), generator=gen)
    qg = torch.tensor([0, 1, 2, -1, 5, 3, 40])
    scores, idx = top_k(queries, gallery, 5, qg, gg, chunk_size=chunk_size)
    for row, (s, i) in enumerate(zip(scores.tolist(), idx.tolist())):
        ref = naive_top_k(
            queries[row : row + 1].double(), gallery.double(), 5, qg[row : row + 1], gg.tolist()
        )[0]
        assert i == [j for _, j in ref]
        assert s == pytest.approx([v for v, _ in ref], abs=1e-5)
        assert all(gg[j] != qg[row] for j in i)
    # fewer eligible rows than k: padded with -1 / -inf
    s, i = top_k(queries[:1], gallery[:3], 5, torch.tensor([7]), torch.tensor([7, 1, 7]))
    assert i.tolist() == [[1, -1, -1, -1, -1]] and s[0, 1:].isinf().all()


def test_retrieve_equals_a_naive_search_and_never_returns_own_captions(tmp_path, store, images):
    cap = preset(tmp_path, store)
    assert len(cap.entry_captions) == 3 * 3 + 5 * 2
    hits = cap.retrieve(images, KEYS)
    img, txt = cap.encode_images(images).double(), cap.encode_texts(cap.entry_captions).double()
    for key, row, got in zip(KEYS, img, hits):
        scored = sorted(
            ((float(row @ txt[j]), j) for j, k in enumerate(cap.entry_keys) if k != key),
            key=lambda t: (-t[0], t[1]),
        )[: cap.top_k]
        assert [h.caption for h in got] == [cap.entry_captions[j] for _, j in scored]
        assert [h.score for h in got] == pytest.approx([s for s, _ in scored], abs=1e-5)
        assert key not in [h.key for h in got] and not any(h.caption.startswith(key) for h in got)
    # a key the datastore does not hold can retrieve every entry
    assert len(cap.retrieve(images[:1], ["unseen"])[0]) == cap.top_k


def test_nearest_mode_returns_the_top_retrieved_captions(tmp_path, store, images):
    cap = preset(tmp_path, store, mode="nearest", num_captions=2)
    assert cap.model is None  # no LM loaded
    gens = cap.generate(images, [""] * 3, KEYS)
    for got, hits in zip(gens, cap.retrieve(images, KEYS)):
        assert [g.text for g in got] == [hits[0].caption, hits[1].caption]
        assert got[0].params["retrieved_keys"] == [h.key for h in hits] and got[1].params["rank"] == 1
        assert got[0].num_tokens is None and got[0].prompt_id == "nearest"


def test_prompt_golden_strings(tmp_path, store, chat_llm):
    cap = preset(tmp_path, store, chat_llm)
    hits = cap.retrieve([Image.new("RGB", (32, 32))], ["img-a"])[0][:2]
    one, two = (h.caption for h in hits)
    assert cap.render(hits) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nThese captions describe photos similar to one photo:\n\n"
        f"{one}\n\n{two}.\n\nWrite one short caption of that photo.<|im_end|>\n<|im_start|>assistant\n"
    )
    cap.prompt, cap.chat_template = SMALLCAP_PROMPT, False  # SmallCap's completion prompt
    dotted = [Hit("k1", "A dog on a couch. ", 0.5), Hit("k2", "a cat", 0.4)]
    assert cap.render(dotted) == "Similar images show\n\nA dog on a couch\n\na cat.\n\nThis image shows "
    assert first_line(" a man riding a horse. Then\nmore") == "a man riding a horse"
    assert first_line("a dog on a couch\n\nSimilar images") == "a dog on a couch"


def test_lm_caption_and_provenance_equal_a_hand_run(tmp_path, store, chat_llm, images):
    cap = preset(tmp_path, store, chat_llm)
    gens = cap.generate(images, [""] * 3, KEYS)
    for image, key, (gen,) in zip(images, KEYS, gens):
        hits = cap.retrieve([image], [key])[0]
        assert gen.params["retrieved_keys"] == [h.key for h in hits]
        assert gen.params["retrieved"] == [h.caption for h in hits]
        ids = cap.tokenizer(cap.render(hits), add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = cap.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=cap.tokenizer.pad_token_id,
        )
        text = cap.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert gen.raw_text == text and gen.text == first_line(text)


def test_datastore_embeddings_are_cached_by_content(tmp_path, store, images, monkeypatch):
    calls: list[int] = []
    original = RetrievalCaptioner.encode_texts

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(RetrievalCaptioner, "encode_texts", counting)
    first = preset(tmp_path, store, cache_dir=str(tmp_path / "cache"))
    assert calls == [19]
    second = preset(tmp_path, store, cache_dir=str(tmp_path / "cache"))
    assert calls == [19]  # the encoder did not run again
    assert torch.equal(first.entry_embeddings, second.entry_embeddings)
    assert [h.caption for h in second.retrieve(images, KEYS)[0]] == [
        h.caption for h in first.retrieve(images, KEYS)[0]
    ]
    # another corpus is another cache entry
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"key": "z", "captions": ["just one caption"]}) + "\n")
    preset(tmp_path, str(other), cache_dir=str(tmp_path / "cache"))
    assert calls == [19, 1] and len(list((tmp_path / "cache" / "retrieval_datastore").iterdir())) == 2


def test_a_frozen_text_tower_caches_its_features_once_for_every_head(tmp_path, store, monkeypatch):
    """LiT (frozen text tower): the cache holds the tower's features, so a retriever with other heads (another
    split's) runs only its head; its embeddings equal the module's own encode_text of the same captions."""
    calls: list[int] = []
    original = RetrievalCaptioner.encode_text_features

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(RetrievalCaptioner, "encode_text_features", counting)
    cache = tmp_path / "cache" / "retrieval_datastore"
    cap = preset(
        tmp_path, store, **{"clip.trainable": "{vision:frozen,text:frozen}", "cache_dir": cache.parent}
    )
    assert calls == [19] and [p.name[:6] for p in cache.iterdir()] == ["tower-"]
    before = cap.entry_embeddings
    # another split's retriever: the same frozen tower, other head weights
    with torch.no_grad():
        for p in cap.lit.text_head.parameters():
            p.add_(torch.randn_like(p))
    cap._load_datastore()
    assert calls == [19] and len(list(cache.iterdir())) == 1  # the tower did not run again: one entry
    with torch.inference_mode():
        reference = cap.lit.encode_text(cap.lit.tokenizer(cap.entry_captions)).float()
    assert torch.allclose(cap.entry_embeddings, reference, atol=1e-5)
    assert not torch.allclose(before, reference, atol=1e-3)  # the new head changed them


def test_a_trained_checkpoint_embeds_like_the_saved_module(tmp_path, store, images):
    """A ``clipforge train`` checkpoint (plain hyper-parameters + state dict) is rebuilt and loaded strictly."""
    hp = {
        "_target_": "clipforge.tasks.shared.clip.CLIPModule",
        "embed_dim": 16,
        "vision": {
            "_target_": "clipforge.models.vision.TimmVision",
            "model_name": "vit_tiny_patch16_224",
            "image_size": 32,
            "model_args": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
        },
        "text": {
            "_target_": "clipforge.models.text.OpenCLIPText",
            "embed_dim": 32,
            "text_cfg": {"context_length": 32, "width": 32, "heads": 2, "layers": 1},
        },
        "loss": {"_target_": "clipforge.losses.clip.ClipLoss"},
        "optimizer": None,
    }
    torch.manual_seed(3)
    module = instantiate(hp, _convert_="all")
    module.configure_model()
    module.eval()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hp},
        tmp_path / "run" / "checkpoints" / "last.ckpt",
    )
    cap = RetrievalCaptioner(
        mode="nearest",
        checkpoint=str(tmp_path / "run"),
        datastore=[{"path": store, "caption_fields": ["captions"], "key_field": "key"}],
        cache_dir="off",
    )
    cap.setup("cpu")
    x = torch.stack([module.image_transform(False)(im) for im in images])
    with torch.no_grad():
        assert torch.allclose(cap.encode_images(images), module.encode_image(x), atol=1e-6)
        ref = module.encode_text(module.tokenizer(cap.entry_captions))
    assert torch.allclose(cap.entry_embeddings, ref, atol=1e-6)


def test_bad_datastores_are_clear_errors(tmp_path, store, images):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="datastore .* has no captions"):
        preset(tmp_path, str(empty))
    own_only = tmp_path / "own.jsonl"
    own_only.write_text(json.dumps({"key": "img-a", "captions": ["its own caption"]}) + "\n")
    cap = preset(tmp_path, str(own_only), mode="nearest")
    with pytest.raises(ValueError, match="no caption of another key than 'img-a'"):
        cap.generate(images[:1], [""], ["img-a"])
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        RetrievalCaptioner(datastore=[{"path": store}])
    with pytest.raises(ValueError, match="mode"):
        RetrievalCaptioner(mode="beam", clip={}, datastore=[{"path": store}])
