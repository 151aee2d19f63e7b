"""Layer-wise lr decay (LLM2CLIP ``visual-ld``): layer ids, scales, weight-decay split, scheduler interplay."""

from __future__ import annotations

import functools
import inspect

import pytest
import timm
import torch
from torch import nn

from clipforge.utils.layer_decay import apply_lr_scales, layer_decay_param_groups, layer_ids
from clipforge.utils.optim import WarmupCosine, optimizer_config, param_groups


class _Model(nn.Module):
    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk, nn.Linear(8, 4)
        self.logit_scale = nn.Parameter(torch.zeros(()))


def _vit(depth: int = 3) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=8,
        embed_dim=8,
        depth=depth,
        num_heads=2,
        num_classes=0,
    )


def _scale_of(groups: list[dict]) -> dict[int, float]:
    return {id(p): g["lr_scale"] for g in groups for p in g["params"]}


def test_eva_clip_rule_on_a_vit():
    """Stem = layer 0, block k = layer k + 1, the rest (final norm) = L + 1; scale = decay ** (L + 1 - id)."""
    model, decay = _Model(_vit(depth=3)), 0.5
    ids, num_blocks = layer_ids(model.trunk)
    assert num_blocks == 3
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["norm.weight"] == 4
    scales = _scale_of(layer_decay_param_groups(model, model.trunk, decay))
    named = dict(model.named_parameters())
    assert scales[id(named["trunk.cls_token"])] == decay**4
    assert scales[id(named["trunk.blocks.0.norm1.weight"])] == decay**3
    assert scales[id(named["trunk.blocks.2.attn.proj.weight"])] == decay**1
    assert scales[id(named["trunk.norm.bias"])] == 1.0
    assert scales[id(named["head.weight"])] == scales[id(named["logit_scale"])] == 1.0


def test_llm2clip_eva_l_scales():
    """run.sh (EVA02-L, 24 blocks, visual-ld 0.85): stem 0.0172, block 1 0.0202, block 24 0.85, the rest 1."""
    with torch.device("meta"):
        trunk = timm.create_model("eva02_large_patch14_clip_336", num_classes=0)
    model = _Model(trunk)
    scales = _scale_of(layer_decay_param_groups(model, trunk, 0.85))
    named = dict(model.named_parameters())
    assert round(scales[id(named["trunk.pos_embed"])], 4) == 0.0172
    assert round(scales[id(named["trunk.blocks.0.attn.q_proj.weight"])], 4) == 0.0202
    assert scales[id(named["trunk.blocks.23.mlp.fc2.weight"])] == pytest.approx(0.85)
    assert scales[id(named["trunk.norm.weight"])] == 1.0


def test_efficientnet_sub_blocks_are_layers_in_order():
    trunk = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    ids, num_blocks = layer_ids(trunk)
    assert num_blocks == 16  # EfficientNet-Lite0's 16 MBConv blocks over 7 stages
    assert ids["conv_stem.weight"] == ids["bn1.weight"] == 0
    assert ids["blocks.0.0.conv_dw.weight"] == 1 and ids["blocks.1.0.conv_pw.weight"] == 2
    assert ids["blocks.6.0.conv_pw.weight"] == 16 and ids["conv_head.weight"] == 17


def test_open_clip_tower_without_matcher_falls_back_to_resblocks():
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    visual = _build_vision_tower(
        8, CLIPVisionCfg(layers=2, width=16, head_width=8, patch_size=8, image_size=16)
    )
    ids, num_blocks = layer_ids(visual)
    assert num_blocks == 2
    assert ids["conv1.weight"] == ids["class_embedding"] == ids["positional_embedding"] == 0
    assert ids["transformer.resblocks.1.attn.in_proj_weight"] == 2
    assert ids["proj"] == ids["ln_post.weight"] == 3


def test_weight_decay_split_follows_param_groups_and_frozen_params_are_left_out():
    model = _Model(_vit(depth=2))
    model.trunk.blocks[0].requires_grad_(False)
    groups = layer_decay_param_groups(model, model.trunk, 0.7)
    no_decay = {id(p) for p in param_groups(model)[1]["params"]}
    seen = set()
    for g in groups:
        assert all((id(p) in no_decay) == (g.get("weight_decay") == 0.0) for p in g["params"])
        seen |= {id(p) for p in g["params"]}
    assert seen == {id(p) for p in model.parameters() if p.requires_grad}


def test_scaled_learning_rates_survive_the_scheduler():
    model = _Model(_vit(depth=2))
    builder = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    optimizer = apply_lr_scales(builder(layer_decay_param_groups(model, model.trunk, 0.5)))
    scheduler = WarmupCosine(optimizer, warmup_steps=0, total_steps=10)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    for g in optimizer.param_groups:  # halfway down the cosine, every group at half its own peak
        assert g["lr"] == pytest.approx(0.5e-3 * g["lr_scale"])


def test_every_module_configures_its_optimizer_and_per_step_schedule_alike():
    """``optimizer_config`` (the shared ``configure_optimizers``): the optimizer alone without a scheduler; with one,
    Lightning's dict stepped per optimizer step, a schedule length left to the trainer filled in."""
    from types import SimpleNamespace

    from clipforge.tasks.llm2clip import EncoderTrainingModule
    from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
    from clipforge.tasks.shared.clip import CLIPModule
    from clipforge.tasks.shared.vlm_sft import VLMSFTModule

    class Detached:  # a module without a trainer: reading ``trainer`` raises, as Lightning's does
        def __init__(self, scheduler_builder) -> None:
            self.scheduler_builder = scheduler_builder

        @property
        def trainer(self):
            raise RuntimeError("not attached to a Trainer")

    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert optimizer_config(optimizer, Detached(None)) is optimizer  # no trainer needed without a schedule
    attached = SimpleNamespace(
        scheduler_builder=functools.partial(WarmupCosine, warmup_steps=2),
        trainer=SimpleNamespace(estimated_stepping_batches=7),
    )
    out = optimizer_config(optimizer, attached)
    assert set(out) == {"optimizer", "lr_scheduler"} and out["optimizer"] is optimizer
    assert out["lr_scheduler"]["interval"] == "step" and out["lr_scheduler"]["scheduler"].total_steps == 7
    attached.scheduler_builder = functools.partial(WarmupCosine, total_steps=3)
    assert optimizer_config(optimizer, attached)["lr_scheduler"]["scheduler"].total_steps == 3
    for module in (CLIPModule, LLM2CLIPModule, EncoderTrainingModule, VLMSFTModule):
        assert "optimizer_config(" in inspect.getsource(module.configure_optimizers)


def test_invalid_arguments():
    model = _Model(_vit())
    with pytest.raises(ValueError, match="layer decay"):
        layer_decay_param_groups(model, model.trunk, 1.5)
    with pytest.raises(ValueError, match="not a submodule"):
        layer_decay_param_groups(model, _vit(), 0.8)


def test_a_tower_spec_wrapper_finds_the_timm_matcher_inside():
    """TimmVision.build() wraps the timm model (``model.*`` names): the stem must still be layer 0."""
    from clipforge.models.vision import TimmVision

    tower = TimmVision("tf_efficientnet_lite0").build()
    ids, num_blocks = layer_ids(tower)
    assert num_blocks == 16
    assert ids["model.conv_stem.weight"] == 0 and ids["model.blocks.6.0.conv_pw.weight"] == 16
    assert ids["model.conv_head.weight"] == 17
