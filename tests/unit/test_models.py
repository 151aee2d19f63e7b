"""Towers, pooling, heads, freezing and offline asset resolution."""

from __future__ import annotations

import pytest
import torch

from clipforge.models.assets import resolve_asset
from clipforge.models.heads import HeadSpec, build_head
from clipforge.models.pooling import pool
from clipforge.models.text import HFText, OpenCLIPText
from clipforge.models.trainable import TrainableSpec, apply_trainable
from clipforge.models.vision import OpenCLIPVision, TimmVision, load_state_dict_file


def test_pooling_matches_loops():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    mean = pool(h, mask, "mean")
    last = pool(h, mask, "last")
    for b in range(3):
        idx = [i for i in range(5) if mask[b, i]]
        torch.testing.assert_close(mean[b], h[b, idx].mean(0))
        torch.testing.assert_close(last[b], h[b, idx[-1]])
    torch.testing.assert_close(pool(h, mask, "cls"), h[:, 0])
    with pytest.raises(ValueError):
        pool(h, mask, "max")


def test_heads_shapes_and_validation():
    x = torch.randn(2, 8)
    assert build_head(HeadSpec("linear"), 8, 4)(x).shape == (2, 4)
    assert build_head(HeadSpec("mlp", hidden_dim=16), 8, 4)(x).shape == (2, 4)
    assert torch.equal(build_head(HeadSpec("identity"), 8, 8)(x), x)
    with pytest.raises(ValueError):
        build_head(HeadSpec("identity"), 8, 4)
    with pytest.raises(ValueError):
        HeadSpec("conv")


def test_apply_trainable_freezes_and_sets_eval():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    apply_trainable(m, "frozen")
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
    with pytest.raises(ValueError):
        TrainableSpec(vision="lora-ish")


def test_timm_tower_features_and_transform():
    spec = TimmVision(
        "vit_tiny_patch16_224",
        image_size=32,
        model_args={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    assert spec.feature_dim == 16
    tower = spec.build()
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    from PIL import Image

    img = Image.new("RGB", (64, 48), (255, 0, 0))
    x = spec.image_transform(train=False)(img)
    assert x.shape == (3, 32, 32)
    # red channel of pure red with mean=std=0.5 -> +1, others -> -1
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_state_dict_by_order_mapping(tmp_path):
    import timm

    src = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = {f"_blocks.{i}.w": v.clone() for i, v in enumerate(src.state_dict().values())}
    path = tmp_path / "lite0.pth"
    torch.save(renamed, path)
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_state_dict_file(dst, str(path), "by_order")
    for (k, a), b in zip(dst.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), k
    bad = dict(renamed)
    bad.popitem()
    torch.save(bad, path)
    with pytest.raises(ValueError, match="tensors"):
        load_state_dict_file(dst, str(path), "by_order")


def test_openclip_towers_random_init():
    v = OpenCLIPVision(
        embed_dim=16,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    )
    assert v.build()(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    t = OpenCLIPText(embed_dim=16, text_cfg={"context_length": 16, "width": 32, "heads": 2, "layers": 1})
    tok = t.tokenizer()(["a cat", "a dog on a sofa"])
    assert tok["input_ids"].shape == (2, 16)
    assert tok["attention_mask"].sum(1).tolist() == [4, 7]  # <sot> + words + <eot>
    assert t.build()(tok["input_ids"], tok["attention_mask"]).shape == (2, 16)


def test_openclip_towers_read_the_named_config_and_its_overrides():
    """Both open_clip towers take a named config's part and width, explicit fields over it, and refuse a name
    open_clip does not know or a tower without a width."""
    import open_clip

    named = open_clip.get_model_config("ViT-B-32")
    v = OpenCLIPVision("ViT-B-32", vision_cfg={"layers": 1})
    assert v.vision_cfg == {**named["vision_cfg"], "layers": 1} and v.embed_dim == named["embed_dim"]
    t = OpenCLIPText("ViT-B-32", embed_dim=64)
    assert t.text_cfg == named["text_cfg"] and t.embed_dim == 64
    for tower in (OpenCLIPVision, OpenCLIPText):
        with pytest.raises(ValueError, match="unknown open_clip model config 'ViT-nope'"):
            tower("ViT-nope")
        with pytest.raises(ValueError, match=f"{tower.__name__} needs model_name or embed_dim"):
            tower()


@pytest.mark.parametrize("fixture,pooling", [("tiny_bert_dir", "cls"), ("tiny_llama_dir", "last")])
def test_hf_text_tower_from_saved_folder(request, fixture, pooling):
    path = request.getfixturevalue(fixture)
    spec = HFText(path, pooling=pooling, max_length=16)
    assert spec.feature_dim == 32
    tok = spec.tokenizer()
    batch = tok(["a cat sitting on a sofa", "a rocket"])
    tower = spec.build().eval()
    out = tower(**batch)
    assert out.shape == (2, 32)
    # padding must not change a sequence's embedding
    alone = tower(**tok(["a rocket"]))
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-4)


def test_resolve_asset_aliases():
    assert resolve_asset("/some/dir").path == "/some/dir"
    with pytest.raises(KeyError, match="known"):
        resolve_asset("pypi:nope")
