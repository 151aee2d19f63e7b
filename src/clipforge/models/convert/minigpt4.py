"""MiniGPT-4's released files -> the tensors and shapes of :class:`~clipforge.models.captioners.minigpt4.MiniGPT4Model`.

MiniGPT-4 (Vision-CAIR/MiniGPT-4, ``minigpt4/models/minigpt4.py``, ``eva_vit.py``, ``Qformer.py``, ``blip2.py``;
the recap seed's copy is ``MiniGPT-4/minigpt4/models/mini_gpt4.py``) is BLIP-2's frozen image side in front of a
Vicuna / Llama-2-chat: EVA ViT-g/14 (``create_eva_vit_g``: 1408 wide, 39 of the release's 40 blocks, 16 heads,
MLP ratio 4.3637, LayerNorm eps 1e-6, q/v biases, no final norm) -> ``ln_vision`` (LayerNorm eps 1e-5) -> the
Q-Former (a BERT-base whose 32 learned ``query_tokens`` go through ``embeddings.LayerNorm``, self-attention,
cross-attention to the image in every second layer, and the query FFN ``intermediate_query``/``output_query``;
its word / position embeddings, text FFN and LM head are deleted) -> ``llama_proj`` (``Linear(768 -> LLM
width)``). The official model loads three files in this order, each with ``strict=False`` (later files override
earlier keys):

1. ``eva_vit_g.pth``: the EVA ViT state dict (no prefix; ``pos_embed`` interpolated bicubically when the image size
   differs; blocks past the 39th are unused);
2. ``blip2_pretrained_flant5xxl.pth`` (``["model"]``): ``Qformer.*``, ``query_tokens``, ``ln_vision.*`` (and
   whatever else BLIP-2 saved: ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, the deleted Q-Former parts
   — all unused);
3. ``pretrained_minigpt4.pth`` (``["model"]``): ``llama_proj.*`` (the only trained tensors).

The names are mapped to transformers' BLIP-2 modules, which compute the same thing: ``Blip2VisionModel``
(``visual_encoder.*`` -> ``vision_model.embeddings`` / ``encoder.layers``, ``q_bias``/``v_bias`` -> one
``qkv.bias`` with a zero key part, ``ln_vision`` -> ``post_layernorm``) and ``Blip2QFormerModel``
(``Qformer.bert.embeddings.LayerNorm`` -> ``layernorm``, ``attention.self`` -> ``attention.attention``). The LLM
stays the user's Hugging Face folder. ``python -m clipforge.models.convert.minigpt4 --eva-vit ... --qformer ...
--checkpoint ... --llm ... <out>`` writes a folder (``config.json`` + ``model.safetensors``) that the ``minigpt4``
preset loads with ``path=<out>``; the preset also takes the three files directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TypedDict

import torch
from torch import Tensor

from clipforge.models.convert.llm2clip import load_checkpoint

__all__ = [
    "CONFIG_NAME",
    "ConvertedMiniGPT4",
    "WEIGHTS_NAME",
    "convert_minigpt4",
    "load_converted",
    "map_official_names",
    "write_converted",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "clipforge_minigpt4"


class _EvaSettings(TypedDict):
    depth: int
    num_heads: int
    layer_norm_eps: float


class _BertSettings(TypedDict):
    num_attention_heads: int
    layer_norm_eps: float
    hidden_act: str


EVA_VIT_G: _EvaSettings = {"depth": 39, "num_heads": 16, "layer_norm_eps": 1e-6}
"""``create_eva_vit_g``'s settings the tensors do not carry (``num_heads=1408 // 88``)."""
LN_VISION_EPS = 1e-5
"""``ln_vision``: LAVIS' fp32 ``LayerNorm(num_features)`` with torch's default eps."""
BERT_BASE: _BertSettings = {"num_attention_heads": 12, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
"""The Q-Former's ``BertConfig.from_pretrained("bert-base-uncased")`` settings the tensors do not carry."""


@dataclass
class ConvertedMiniGPT4:
    """MiniGPT-4's image side in :class:`~clipforge.models.captioners.minigpt4.MiniGPT4Model` names.

    Attributes:
        vision: ``Blip2VisionConfig`` fields.
        qformer: ``Blip2QFormerConfig`` fields.
        num_query_tokens: learned queries (32).
        ln_vision_eps: eps of ``ln_vision`` (``vision_model.post_layernorm``).
        llm_hidden_size: output width of ``llama_proj`` (the LLM's hidden size).
        state_dict: ``vision_model.*``, ``qformer.*``, ``query_tokens``, ``llama_proj.*``.
        ignored: source keys the model does not use.
    """

    vision: dict
    qformer: dict
    num_query_tokens: int
    ln_vision_eps: float
    llm_hidden_size: int
    state_dict: dict[str, Tensor] = field(repr=False)
    ignored: list[str] = field(default_factory=list)

    def config(self) -> dict:
        """The shapes and settings, as written to ``config.json``."""
        out = asdict(self)
        del out["state_dict"], out["ignored"]
        return {"model_type": MODEL_TYPE, **out}


def _interpolate_pos_embed(pos_embed: Tensor, num_patches: int) -> Tensor:
    """``eva_vit.interpolate_pos_embed``: bicubic resize of the patch grid, the class token kept."""
    extra = 1  # the class token
    old, new = int((pos_embed.shape[-2] - extra) ** 0.5), int(num_patches**0.5)
    if old == new:
        return pos_embed
    dim = pos_embed.shape[-1]
    tokens = pos_embed[:, extra:].float().reshape(-1, old, old, dim).permute(0, 3, 1, 2)
    tokens = torch.nn.functional.interpolate(tokens, size=(new, new), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((pos_embed[:, :extra].float(), tokens), dim=1).to(pos_embed.dtype)


_VISION_RENAMES = [
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"encoder.layers.\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
]
_QFORMER_RENAMES = [
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", r"layernorm.\1"),
    (
        r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"encoder.layer.\1.\2.attention.\3.\4",
    ),
    (
        r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"encoder.layer.\1.\2.output.\3.\4",
    ),
    (
        r"bert\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.(weight|bias)",
        r"encoder.layer.\1.intermediate_query.dense.\2",
    ),
    (
        r"bert\.encoder\.layer\.(\d+)\.output_query\.(dense|LayerNorm)\.(weight|bias)",
        r"encoder.layer.\1.output_query.\2.\3",
    ),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def map_official_names(
    official: Mapping[str, Tensor], vision_depth: int
) -> tuple[dict[str, Tensor], list[str]]:
    """Official MiniGPT-4 model keys (``visual_encoder.*``, ``ln_vision.*``, ``Qformer.*``, ``query_tokens``,
    ``llama_proj.*``) -> native names, and the keys left out (later blocks, deleted Q-Former parts, BLIP-2 heads).
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    biases: dict[int, dict[str, Tensor]] = {}
    for key, value in official.items():
        new = None
        if key.startswith("visual_encoder."):
            sub = key.removeprefix("visual_encoder.")
            block = re.match(r"blocks\.(\d+)\.", sub)
            if block and int(block.group(1)) >= vision_depth:
                ignored.append(key)
                continue
            bias = re.fullmatch(r"blocks\.(\d+)\.attn\.(q_bias|v_bias)", sub)
            if bias:
                biases.setdefault(int(bias.group(1)), {})[bias.group(2)] = value
                continue
            renamed = _rename(sub, _VISION_RENAMES)
            new = None if renamed is None else "vision_model." + renamed
        elif key.startswith("ln_vision."):
            new = "vision_model.post_layernorm." + key.removeprefix("ln_vision.")
        elif key.startswith("Qformer."):
            renamed = _rename(key.removeprefix("Qformer."), _QFORMER_RENAMES)
            new = None if renamed is None else "qformer." + renamed
        elif key == "query_tokens" or key in ("llama_proj.weight", "llama_proj.bias"):
            new = key
        if new is None:
            ignored.append(key)
        else:
            out[new] = value
    for i, qv in biases.items():
        if set(qv) != {"q_bias", "v_bias"}:
            raise KeyError(
                f"visual_encoder.blocks.{i}.attn: q_bias and v_bias must come together, got {sorted(qv)}"
            )
        out[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat(
            (qv["q_bias"], torch.zeros_like(qv["v_bias"]), qv["v_bias"])
        )
    return out, sorted(ignored)


def _numbered(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def convert_minigpt4(
    eva_vit: str | Mapping[str, Tensor],
    qformer: str | Mapping[str, Tensor],
    checkpoint: str | Mapping[str, Tensor],
    image_size: int = 224,
    vision_depth: int = EVA_VIT_G["depth"],
    vision_heads: int = EVA_VIT_G["num_heads"],
    vision_layer_norm_eps: float = EVA_VIT_G["layer_norm_eps"],
    ln_vision_eps: float = LN_VISION_EPS,
    qformer_heads: int = BERT_BASE["num_attention_heads"],
    qformer_layer_norm_eps: float = BERT_BASE["layer_norm_eps"],
) -> ConvertedMiniGPT4:
    """The official three files, loaded in the official order, in native names with the shapes they imply.

    Args:
        eva_vit: ``eva_vit_g.pth`` (path or its state dict).
        qformer: ``blip2_pretrained_flant5xxl.pth`` (path or its ``["model"]`` state dict).
        checkpoint: ``pretrained_minigpt4.pth`` (path or its ``["model"]`` state dict).
        image_size: input size (``image_size: 224`` in ``minigpt4_vicuna0.yaml``); ``pos_embed`` is resized to it.
        vision_depth: EVA blocks used (39: BLIP-2 drops EVA-CLIP-g's last block).
        vision_heads: EVA attention heads (16).
        vision_layer_norm_eps: the EVA blocks' LayerNorm eps (1e-6).
        ln_vision_eps: ``ln_vision``'s eps (1e-5).
        qformer_heads: Q-Former attention heads (BERT-base: 12).
        qformer_layer_norm_eps: Q-Former LayerNorm eps (BERT-base: 1e-12).

    Returns:
        The converted state dict and shapes.

    Raises:
        KeyError: a tensor the model needs is in none of the files (e.g. a file given in the wrong slot).
        ValueError: the tensors do not fit together (too few EVA blocks, Q-Former width vs ``llama_proj``).
    """
    eva = dict(load_checkpoint(eva_vit) if isinstance(eva_vit, str) else eva_vit)
    eva = {k.removeprefix("visual_encoder."): v for k, v in eva.items()}
    if "pos_embed" not in eva or "patch_embed.proj.weight" not in eva:
        raise KeyError(
            "eva_vit: no pos_embed / patch_embed.proj.weight: not an EVA ViT state dict (eva_vit_g.pth)"
        )
    patch = eva["patch_embed.proj.weight"].shape[-1]
    eva["pos_embed"] = _interpolate_pos_embed(eva["pos_embed"], (image_size // patch) ** 2)
    official: dict[str, Tensor] = {"visual_encoder." + k: v for k, v in eva.items()}
    for source in (qformer, checkpoint):  # blip2.load_from_pretrained, then the MiniGPT-4 ckpt (strict=False)
        official.update(load_checkpoint(source) if isinstance(source, str) else source)

    state, ignored = map_official_names(official, vision_depth)
    blocks = _numbered(state, r"vision_model\.encoder\.layers\.(\d+)\.")
    if blocks != list(range(vision_depth)):
        raise ValueError(f"eva_vit: {len(blocks)} usable blocks, the model uses {vision_depth}")
    width = state["vision_model.embeddings.class_embedding"].shape[-1]
    if width % vision_heads:
        raise ValueError(f"eva_vit: width {width} is not divisible by {vision_heads} heads")
    vision = {
        "hidden_size": width,
        "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": vision_depth,
        "num_attention_heads": vision_heads,
        "image_size": image_size,
        "patch_size": patch,
        "layer_norm_eps": vision_layer_norm_eps,
        "qkv_bias": True,
        "hidden_act": "gelu",
    }
    required = [
        "vision_model.post_layernorm.weight",
        "qformer.layernorm.weight",
        "query_tokens",
        "llama_proj.weight",
    ]
    missing = [k for k in required if k not in state]
    if missing:
        raise KeyError(
            f"{missing} in none of the files: ln_vision / Qformer / query_tokens come from the BLIP-2 file "
            "(blip2_pretrained_flant5xxl.pth), llama_proj from pretrained_minigpt4.pth"
        )
    layers = _numbered(state, r"qformer\.encoder\.layer\.(\d+)\.")
    cross = _numbered(state, r"qformer\.encoder\.layer\.(\d+)\.crossattention\.")
    frequency = cross[1] - cross[0] if len(cross) > 1 else len(layers)
    if not cross or cross != list(range(0, len(layers), frequency)):
        raise ValueError(f"Qformer: cross-attention in layers {cross} is not every n-th layer from 0")
    hidden = state["query_tokens"].shape[-1]
    qformer_cfg = {
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": qformer_heads,
        "intermediate_size": state["qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        "layer_norm_eps": qformer_layer_norm_eps,
        "hidden_act": BERT_BASE["hidden_act"],
        "cross_attention_frequency": frequency,
        "encoder_hidden_size": state["qformer.encoder.layer.0.crossattention.attention.key.weight"].shape[1],
        "use_qformer_text_input": False,
    }
    if qformer_cfg["encoder_hidden_size"] != width:
        raise ValueError(
            f"Qformer cross-attends to width {qformer_cfg['encoder_hidden_size']}, the ViT is {width}"
        )
    proj = state["llama_proj.weight"]
    if proj.shape[1] != hidden:
        raise ValueError(f"llama_proj takes width {proj.shape[1]}, the Q-Former gives {hidden}")
    return ConvertedMiniGPT4(
        vision=vision,
        qformer=qformer_cfg,
        num_query_tokens=state["query_tokens"].shape[1],
        ln_vision_eps=ln_vision_eps,
        llm_hidden_size=proj.shape[0],
        state_dict=state,
        ignored=ignored,
    )


def write_converted(converted: ConvertedMiniGPT4, out: str, llm: str | None = None) -> str:
    """Write ``config.json`` (shapes, settings and the LLM folder) and ``model.safetensors``; returns ``out``."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    config = converted.config()
    if llm is not None:
        config["llm"] = os.path.abspath(llm) if os.path.exists(llm) else llm
    save_file({k: v.contiguous() for k, v in converted.state_dict.items()}, os.path.join(out, WEIGHTS_NAME))
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)
    return out


def load_converted(path: str) -> tuple[ConvertedMiniGPT4, str | None]:
    """A folder written by :func:`write_converted` -> (the converted model, its LLM folder or ``None``).

    Raises:
        FileNotFoundError: no ``config.json`` / ``model.safetensors``.
        ValueError: ``config.json`` is not a converted MiniGPT-4.
    """
    from safetensors.torch import load_file

    config_file, weights = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    for file in (config_file, weights):
        if not os.path.exists(file):
            raise FileNotFoundError(
                f"{path}: no {os.path.basename(file)} (write it with python -m {__name__})"
            )
    with open(config_file) as f:
        config = json.load(f)
    if config.pop("model_type", None) != MODEL_TYPE:
        raise ValueError(f"{config_file}: model_type is not {MODEL_TYPE!r}")
    llm = config.pop("llm", None)
    return ConvertedMiniGPT4(**config, state_dict=load_file(weights)), llm


def main(argv: list[str] | None = None) -> None:
    """``python -m clipforge.models.convert.minigpt4 --eva-vit F --qformer F --checkpoint F [--llm D] out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eva-vit", required=True, help="eva_vit_g.pth")
    parser.add_argument("--qformer", required=True, help="blip2_pretrained_flant5xxl.pth")
    parser.add_argument("--checkpoint", required=True, help="pretrained_minigpt4.pth (or the Llama-2 one)")
    parser.add_argument(
        "--llm", default=None, help="the Vicuna / Llama-2-chat folder, recorded in config.json"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--vision-depth", type=int, default=EVA_VIT_G["depth"], help="EVA blocks used (39)")
    parser.add_argument("--vision-heads", type=int, default=EVA_VIT_G["num_heads"], help="EVA heads (16)")
    parser.add_argument("--qformer-heads", type=int, default=BERT_BASE["num_attention_heads"], help="(12)")
    parser.add_argument("out", help="folder to write config.json and model.safetensors to")
    args = parser.parse_args(argv)
    converted = convert_minigpt4(
        args.eva_vit,
        args.qformer,
        args.checkpoint,
        image_size=args.image_size,
        vision_depth=args.vision_depth,
        vision_heads=args.vision_heads,
        qformer_heads=args.qformer_heads,
    )
    write_converted(converted, args.out, args.llm)
    n = sum(math.prod(v.shape) for v in converted.state_dict.values())
    print(
        f"{len(converted.state_dict)} tensors ({n / 1e6:.1f} M values), {len(converted.ignored)} source keys unused"
    )
    print(f"use: +model/mllm@model.captioners.minigpt4=minigpt4 model.captioners.minigpt4.path={args.out}")


if __name__ == "__main__":
    main()
