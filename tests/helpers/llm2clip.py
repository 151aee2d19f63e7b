"""Reference pieces of the official LLM2CLIP code and tiny checkpoints in the released key layouts (tests only).

``OfficialTextProj`` re-states ``llm2clip/eva_clip/model.py::TextProj`` / ``LinearBlock`` module by module, so its
``state_dict`` has the official parameter names (``{k}.ln``, ``{k}.fn.0``, ``{k}.fn.3``, then a LayerNorm and a
Linear) and its forward is the reference (the L2 normalisation of the input happens first, as in the released
Hugging Face adapter). The layout builders turn tiny timm / transformers models into state dicts named
like the released checkpoints: EVA-CLIP's ``visual.*`` (with either ``q_bias``/``v_bias`` or LLM2CLIP's renamed
``q_proj.bias``/``v_proj.bias``) and Hugging Face CLIP's ``vision_model.*``.

Design notes: docs/design/llm2clip.md#stage-2-the-adapter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OfficialLinearBlock(nn.Module):
    def __init__(self, dim: int, expansion_factor: float = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.fn = nn.Sequential(
            nn.Linear(dim, int(expansion_factor * dim)),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(int(expansion_factor * dim), dim),
        )
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        return x + self.fn(self.ln(x))


class OfficialTextProj(nn.Module):
    def __init__(self, embedding_dim: int, output_dim: int, num_layers_text: int = 4, proj_bias: bool = True):
        super().__init__()
        self.text_adaptor = nn.Sequential(
            *[OfficialLinearBlock(embedding_dim, 2, 0.0) for _ in range(num_layers_text)],
            nn.LayerNorm(embedding_dim),
            nn.Linear(embedding_dim, output_dim, bias=proj_bias),
        )
        _perturb_1d(self)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.text_adaptor(F.normalize(text, dim=-1))


TINY_EVA = dict(
    img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, ref_feat_shape=(4, 4), num_classes=0
)


def tiny_eva():
    """A tiny timm EVA02-CLIP trunk (the reference image tower of the EVA-layout tests)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("eva02_base_patch16_clip_224", pretrained=False, **TINY_EVA).eval()
    _perturb_1d(model)
    return model


def eva_clip_layout(timm_state: dict, llm2clip_bias_names: bool = False) -> dict:
    """timm ``Eva`` tensors -> EVA-CLIP ``visual.*`` names (``EVAVisionTransformer`` of eva_clip/eva_vit_model.py)."""
    out = {}
    for k, v in timm_state.items():
        k = k.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc2", "mlp.w3")
        k = k.replace("mlp.norm", "mlp.ffn_ln").replace("attn.norm", "attn.inner_attn_ln")
        if not llm2clip_bias_names:
            k = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        out["visual." + k] = v
    # EVA02's rotary-embedding buffers are saved too (model-level and per attention); converters must skip them
    out["visual.rope.freqs_cos"] = torch.randn(16, 16)
    out["visual.blocks.0.attn.rope.freqs_sin"] = torch.randn(16, 16)
    return out


def tiny_hf_clip_vision():
    """A tiny ``transformers`` CLIP vision model (QuickGELU, like OpenAI's), 32 px images."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    model = CLIPVisionModel(cfg).eval()
    _perturb_1d(model)
    return model


def hf_clip_vision_layout(model) -> dict:
    """A ``CLIPVisionModel``'s tensors named as inside the released ``CLIPModel`` (``vision_model.*``)."""
    return {
        "vision_model." + k.removeprefix("vision_model."): v.contiguous()
        for k, v in model.state_dict().items()
    }


@torch.no_grad()
def _perturb_1d(model: nn.Module) -> None:
    """Move norm weights / biases away from their 1 / 0 init, so a swapped or dropped tensor changes outputs."""
    for p in model.parameters():
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.2)
