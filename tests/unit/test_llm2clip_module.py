"""LLM2CLIPModule: cached vs online text, the frozen encoder kept out of the module, layer decay, errors."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import ClipLoss
from clipforge.models.llm_encoder import LLMEncoderSpec
from clipforge.models.vision import TimmVision
from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
from tests.helpers.tiny_hf import save_tiny_llm

CAPTIONS = [
    "a cat sitting on a sofa",
    "a rocket launching into the sky",
    "a bowl of fruit",
    "two motorcycles",
]


@pytest.fixture(scope="module")
def encoder_spec(tmp_path_factory) -> LLMEncoderSpec:
    path = save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), "llama")
    return LLMEncoderSpec(name_or_path=path, bidirectional=True, pooling="mean", max_length=32)


def _vision() -> TimmVision:
    args = {"img_size": 16, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2}
    return TimmVision("vit_tiny_patch16_224", image_size=16, model_args=args)


def _module(text=None, **kwargs) -> LLM2CLIPModule:
    torch.manual_seed(0)
    module = LLM2CLIPModule(
        vision=_vision(),
        loss=ClipLoss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
        text=text,
        embed_dim=12,
        adapter={"num_layers": 2},
        **kwargs,
    )
    module.configure_model()
    return module


def _batch(module: LLM2CLIPModule, embeddings: torch.Tensor | None = None, tokens: bool = True) -> dict:
    torch.manual_seed(1)
    batch = {"key": [f"k{i}" for i in range(4)], "image": torch.randn(4, 3, 16, 16), "caption": CAPTIONS}
    if tokens:
        batch["text"] = module.tokenizer(CAPTIONS)
    if embeddings is not None:
        batch["text_embedding"] = embeddings
    return batch


def test_cached_embeddings_and_online_encoding_give_the_same_loss(encoder_spec):
    cached = _module(encoder_spec, text_source="cache")
    online = _module(encoder_spec, text_source="online")
    online.load_state_dict(cached.state_dict())
    embeddings = online.text_encoder().encode(CAPTIONS)  # what the offline cache job stores
    loss_cached = cached._shared_step(_batch(cached, embeddings, tokens=False))["contrastive_loss"]
    loss_online = online._shared_step(_batch(online))["contrastive_loss"]
    torch.testing.assert_close(loss_cached, loss_online, rtol=1e-5, atol=1e-6)
    # and both are CLIP's loss on normalize(head(vision(x))) vs normalize(adapter(e))
    batch = _batch(cached, embeddings)
    with torch.no_grad():
        img = F.normalize(cached.vision_head(cached.vision_tower(batch["image"])), dim=-1)
        txt = F.normalize(cached.adapter(F.normalize(embeddings, dim=-1)), dim=-1)
    torch.testing.assert_close(loss_cached, ClipLoss()(img, txt)["contrastive_loss"], rtol=1e-5, atol=1e-6)


def test_the_frozen_encoder_stays_out_of_state_optimizer_and_training(encoder_spec):
    module = _module(encoder_spec, text_source="online")
    module.train()
    loss = module._shared_step(_batch(module))["contrastive_loss"]
    loss.backward()
    encoder = module.text_encoder()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    assert not any(k.startswith(("text", "_frozen")) for k in module.state_dict())
    optimized = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in encoder.parameters()}
    assert module.adapter.proj.weight.grad is not None and module.vision_head[0].weight.grad is not None


def test_cache_mode_without_embeddings_falls_back_to_the_encoder(encoder_spec, caplog):
    module = _module(encoder_spec)
    embeddings = module.text_encoder().encode(CAPTIONS)
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        fallback = module._shared_step(_batch(module))["contrastive_loss"]
    assert "no cached text_embedding" in caplog.text
    cached = module._shared_step(_batch(module, embeddings, tokens=False))["contrastive_loss"]
    torch.testing.assert_close(fallback, cached, rtol=1e-5, atol=1e-6)


def test_cache_only_module_needs_no_tokenizer_and_reports_missing_text():
    module = _module(embedding_dim=8)
    assert module.tokenizer is None
    out = module._shared_step(_batch(module, torch.randn(4, 8), tokens=False))
    assert out["contrastive_loss"].isfinite()
    with pytest.raises(KeyError, match="text_embeddings"):
        module._shared_step(_batch(module, tokens=False))
    with pytest.raises(ValueError, match="6-d but the adapter takes 8-d"):
        module._shared_step(_batch(module, torch.randn(4, 6), tokens=False))


def test_layer_decay_scales_the_vision_tower_only():
    module = _module(embedding_dim=8, layer_decay=0.5)
    optimizer = module.configure_optimizers()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trunk = module.vision_tower.model
    assert lr_of[id(trunk.cls_token)] == pytest.approx(1e-3 * 0.5**3)  # 2 blocks: stem = 0.5 ** 3
    assert lr_of[id(trunk.blocks[1].mlp.fc1.weight)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(trunk.norm.weight)] == lr_of[id(module.adapter.proj.weight)] == pytest.approx(1e-3)
    frozen = _module(embedding_dim=8, layer_decay=0.5, trainable_vision="frozen")
    assert {g["lr"] for g in frozen.configure_optimizers().param_groups} == {1e-3}


def test_constructor_validation():
    loss, opt = ClipLoss(), functools.partial(torch.optim.AdamW)
    with pytest.raises(ValueError, match="without a text encoder"):
        LLM2CLIPModule(_vision(), loss, opt, text_source="online", embedding_dim=8)
    with pytest.raises(ValueError, match="without a text encoder"):
        LLM2CLIPModule(_vision(), loss, opt)
    with pytest.raises(ValueError, match="text_source"):
        LLM2CLIPModule(_vision(), loss, opt, embedding_dim=8, text_source="llm")
    with pytest.raises(ValueError, match="layer_decay"):
        LLM2CLIPModule(_vision(), loss, opt, embedding_dim=8, layer_decay=0.0)


def test_memoized_online_text_encodes_each_caption_once(encoder_spec):
    plain = _module(encoder_spec, text_source="online")
    memo = _module(encoder_spec, text_source="online", memoize_text=True)
    memo.load_state_dict(plain.state_dict())
    encoder = memo.text_encoder()
    calls = []
    encoder.register_forward_hook(lambda mod, args, kwargs, out: calls.append(out.shape[0]), with_kwargs=True)
    batch = _batch(memo)
    first = memo._shared_step(batch)["contrastive_loss"]
    again = memo._shared_step(batch)["contrastive_loss"]
    assert calls == [4]  # the second step found every caption memoised
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(
        first, plain._shared_step(_batch(plain))["contrastive_loss"], rtol=1e-5, atol=1e-6
    )
    partial = {
        **batch,
        "caption": ["new caption", *CAPTIONS[1:]],
        "text": memo.tokenizer(["new caption", *CAPTIONS[1:]]),
    }
    memo._shared_step(partial)
    assert calls == [4, 1]  # only the unseen caption went through the encoder
