"""Released LLM2CLIP vision checkpoints -> an :class:`~clipforge.tasks.llm2clip.clip.LLM2CLIPModule` state dict.

Two key layouts, read from the official code (microsoft/LLM2CLIP ``llm2clip/eva_clip/model.py``, ``factory.py``)
and the released Hugging Face repositories:

``eva_clip`` — the "PyTorch version" checkpoints the paper evaluates (``CustomCLIP`` state dicts, e.g. the
    EVA02-L-14-336 release): ``visual.*`` an ``EVAVisionTransformer`` (``patch_embed.proj``, ``cls_token``,
    ``pos_embed``, ``blocks.{i}.{norm1,norm2}``, ``attn.{q,k,v}_proj`` + ``q_bias``/``v_bias`` — LLM2CLIP's
    ``load_checkpoint`` renames those to ``q_proj.bias``/``v_proj.bias`` — ``attn.inner_attn_ln``, ``attn.proj``,
    SwiGLU ``mlp.{w1,w2,ffn_ln,w3}``, ``rope`` buffers, final ``norm``) with the new projection ``visual.head``
    (``Linear(width -> 1280)``, bias); ``text.text_adaptor.*`` the adapter (``TextProj``: ``{k}.ln``,
    ``{k}.fn.0``, ``{k}.fn.3`` for the ``LinearBlock`` s, then a ``LayerNorm`` and the ``Linear`` to 1280);
    ``logit_scale``. The trunk goes to timm's ``Eva`` (``eva02_*_clip_*``) through timm's own EVA-CLIP
    ``checkpoint_filter_fn``.
``hf_clip`` — the Hugging Face "OpenAI" releases (``LLM2CLIP-Openai-B-16`` / ``-L-14-224`` / ``-L-14-336``,
    ``trust_remote_code`` CLIP): a folder with ``config.json`` (a CLIP config whose ``auto_map`` names the folder's
    own modelling files), those files and the weights. ``vision_model.*`` a ``CLIPVisionTransformer``
    (``embeddings.{class_embedding,patch_embedding,position_embedding}``, ``pre_layrnorm``,
    ``encoder.layers.{i}.{self_attn.{q,k,v,out}_proj,layer_norm1,mlp.fc1,mlp.fc2,layer_norm2}``,
    ``post_layernorm``), ``visual_projection`` (``Linear(width -> 1280)``, no bias; ``get_image_features``),
    ``text_adapter.adaptor.*`` (the same ``TextProj`` layout, index 5 the final Linear; ``get_text_features``, which
    L2-normalises its input first) and ``logit_scale``; any CLIP text tower the file also holds is ignored. The
    folder's ``vision_config`` gives the attention heads (and must agree with the tensors: width, image and patch
    size, ``quick_gelu``, LayerNorm eps 1e-5). The trunk goes to timm's CLIP ViT with QuickGELU
    (``vit_*_clip_quickgelu_*``): ``q/k/v`` are concatenated into ``qkv``, ``post_layernorm`` (applied to the class
    token) becomes timm's final ``norm`` (applied to every token, then the class token is pooled). These names are
    those of transformers' CLIP plus the adapter, as code using the released folders addresses them
    (``model.text_adapter.adaptor[5]``, ``model.vision_model.post_layernorm``, ``model.visual_projection``).

Output: the module's state dict (``vision_tower.model.*``, ``vision_head.0.*``, ``adapter.*``,
``loss.logit_scale``) plus the constructor arguments that rebuild the same shapes (timm architecture and its
``model_args``, ``embed_dim``, ``embedding_dim``, adapter and head specs). ``clipforge convert llm2clip
<checkpoint> <out_dir>`` writes both; ``out_dir/model/llm2clip_converted.yaml`` is a ready ``model`` config:
``clipforge eval -cd <out_dir> '~experiment' model=llm2clip_converted ckpt_path=null data.val...`` (the text side
then needs cached embeddings of the evaluation captions, or ``model.text=<encoder>``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import yaml
from torch import Tensor

__all__ = [
    "ConvertedLLM2CLIP",
    "adapter_from_official",
    "convert_eva_clip",
    "convert_hf_clip",
    "convert_llm2clip",
    "detect_layout",
    "load_checkpoint",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_ADAPTER_PREFIXES = ("text.text_adaptor.", "text_adapter.adaptor.")


@dataclass
class ConvertedLLM2CLIP:
    """A converted checkpoint: the LLM2CLIPModule state dict and the arguments that rebuild its shapes.

    Attributes:
        layout: the source layout (``eva_clip`` or ``hf_clip``).
        vision: ``TimmVision`` arguments (``model_name``, ``model_args``, ``image_size``, ``mean``, ``std``).
        embed_dim: width of the shared space.
        embedding_dim: width of the LLM embeddings the adapter takes.
        adapter: ``AdapterSpec`` fields.
        vision_head: ``HeadSpec`` fields.
        state_dict: tensors keyed like ``LLM2CLIPModule.state_dict()``.
        ignored: source keys that have no place in the module (CLIP text towers, RoPE buffers).
    """

    layout: str
    vision: dict
    embed_dim: int
    embedding_dim: int
    adapter: dict
    vision_head: dict
    state_dict: dict[str, Tensor] = field(repr=False)
    ignored: list[str] = field(default_factory=list)

    def model_config(self, weights_path: str) -> dict:
        """A Hydra ``model`` config (``LLM2CLIPModule``, cached text, frozen nothing) loading these weights."""
        return {
            "defaults": [{"loss": "clip"}, "_self_"],
            "_target_": "clipforge.tasks.llm2clip.clip.LLM2CLIPModule",
            "vision": {"_target_": "clipforge.models.vision.TimmVision", **self.vision},
            "text": None,
            "text_source": "cache",
            "embedding_dim": self.embedding_dim,
            "embed_dim": self.embed_dim,
            "adapter": dict(self.adapter),
            "vision_head": dict(self.vision_head),
            "init_weights": os.path.abspath(weights_path),
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 1.0e-5,
                "weight_decay": 0.05,
            },
        }


# -- reading ------------------------------------------------------------------------------------------------------
def _read_file(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):  # EVA-CLIP / DeepSpeed wrappers (factory.load_state_dict)
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    return dict(state)


def load_checkpoint(path: str) -> dict[str, Tensor]:
    """Tensors of a checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) or a Hugging Face folder.

    Folders: ``model.safetensors``, ``pytorch_model.bin`` or their sharded ``*.index.json``. Wrapper keys
    (``state_dict``, ``model``, ``module``) and a DDP ``module.`` prefix are removed.

    Raises:
        FileNotFoundError: no weights file in the folder.
    """
    if os.path.isdir(path):
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if os.path.exists(os.path.join(path, index)):
                with open(os.path.join(path, index)) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
                state: dict[str, Tensor] = {}
                for shard in shards:
                    state.update(_read_file(os.path.join(path, shard)))
                break
        else:
            files = [
                f for f in ("model.safetensors", "pytorch_model.bin") if os.path.exists(os.path.join(path, f))
            ]
            if not files:
                raise FileNotFoundError(
                    f"{path}: no model.safetensors / pytorch_model.bin (or sharded index)"
                )
            state = _read_file(os.path.join(path, files[0]))
    else:
        state = _read_file(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """``eva_clip`` (``visual.*`` EVA trunk + ``text.text_adaptor``) or ``hf_clip`` (``vision_model.*``).

    Raises:
        ValueError: neither layout, or Hugging Face vision names without CLIP's ``pre_layrnorm`` (an EVA-CLIP
            tower converted to Hugging Face names, which this converter does not map).
    """
    if "visual.pos_embed" in state and any(k.startswith("visual.blocks.") for k in state):
        return "eva_clip"
    if "vision_model.embeddings.class_embedding" in state:
        if "vision_model.pre_layrnorm.weight" not in state:
            raise ValueError(
                "Hugging Face vision_model.* tensors without CLIP's vision_model.pre_layrnorm: not an OpenAI-CLIP "
                "LLM2CLIP release (an EVA-CLIP tower in Hugging Face names?); convert the EVA-CLIP .pt checkpoint"
            )
        return "hf_clip"
    raise ValueError(
        "not a released LLM2CLIP vision checkpoint: expected EVA-CLIP keys (visual.pos_embed, visual.blocks.*) "
        "or Hugging Face CLIP keys (vision_model.embeddings.*)"
    )


# -- adapter ------------------------------------------------------------------------------------------------------
def adapter_from_official(state: Mapping[str, Tensor], prefix: str) -> tuple[dict, dict[str, Tensor]]:
    """LLM2CLIP's ``TextProj`` tensors under ``prefix`` -> (``AdapterSpec`` fields, ``TextProj`` state dict).

    The official ``nn.Sequential`` holds ``num_layers`` ``LinearBlock`` s (``{k}.ln``, ``{k}.fn.0`` = Linear
    d -> expansion*d, ``{k}.fn.3`` = Linear back), then ``{n}`` a LayerNorm and ``{n+1}`` the output Linear.

    Raises:
        KeyError: the final LayerNorm / Linear is missing.
    """
    keys = [k for k in state if k.startswith(prefix)]
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.fn\.", k))})
    n = len(blocks)
    if blocks != list(range(n)):
        raise KeyError(f"{prefix}: LinearBlocks are not numbered 0..{n - 1}: {blocks}")
    out: dict[str, Tensor] = {}
    for k in range(n):
        src = f"{prefix}{k}."
        for theirs, ours in (("ln", "norm"), ("fn.0", "fc1"), ("fn.3", "fc2")):
            for p in ("weight", "bias"):
                out[f"blocks.{k}.{ours}.{p}"] = state[f"{src}{theirs}.{p}"]
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = state[f"{prefix}{n}.{p}"]
    out["proj.weight"] = state[f"{prefix}{n + 1}.weight"]
    bias = f"{prefix}{n + 1}.bias" in state
    if bias:
        out["proj.bias"] = state[f"{prefix}{n + 1}.bias"]
    dim = out["norm.weight"].shape[0]
    expansion = out["blocks.0.fc1.weight"].shape[0] / dim if n else 2.0
    spec = {
        "kind": "textproj",
        "num_layers": n,
        "expansion": expansion,
        "bias": bias,
        "normalize_input": True,
    }
    return spec, out


def _adapter(state: Mapping[str, Tensor]) -> tuple[dict, dict[str, Tensor], int, int]:
    prefix = next(
        (p for p in _ADAPTER_PREFIXES if f"{p}0.ln.weight" in state or f"{p}1.weight" in state), None
    )
    if prefix is None:
        raise KeyError(f"no LLM2CLIP adapter in the checkpoint (looked for {', '.join(_ADAPTER_PREFIXES)})")
    spec, tensors = adapter_from_official(state, prefix)
    out_dim, in_dim = tensors["proj.weight"].shape
    return spec, {f"adapter.{k}": v for k, v in tensors.items()}, int(in_dim), int(out_dim)


def _logit_scale(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    for key in ("logit_scale", "text.logit_scale"):
        if key in state:
            return {"loss.logit_scale": state[key].reshape(())}
    return {}


# -- EVA-CLIP -----------------------------------------------------------------------------------------------------
def convert_eva_clip(
    state: Mapping[str, Tensor], head_width: int = 64, ref_grid: int = 16
) -> ConvertedLLM2CLIP:
    """Convert an ``eva_clip`` layout state dict (see the module docstring).

    Args:
        state: the checkpoint's tensors.
        head_width: attention head width (EVA-CLIP ``head_width``: 64 in every EVA02 config).
        ref_grid: grid side the RoPE frequencies were defined on (EVA-CLIP ``pt_hw_seq_len``: 16).
    """
    import timm
    from timm.models.eva import checkpoint_filter_fn

    width = state["visual.cls_token"].shape[-1]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"visual\.blocks\.(\d+)\.", k))})
    patch = state["visual.patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["visual.pos_embed"].shape[1] - 1)
    hidden = state["visual.blocks.0.mlp.w1.weight"].shape[0]
    model_args: dict[str, Any] = {
        "img_size": grid * patch,
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": width // head_width,
        "mlp_ratio": (hidden + 0.5) / width,  # timm takes int(width * mlp_ratio) = hidden
        "ref_feat_shape": (ref_grid, ref_grid),
        "num_classes": 0,
    }
    arch = "eva02_base_patch16_clip_224"  # every dimension is overridden by model_args
    trunk = {k: v for k, v in state.items() if k.startswith("visual.") and not k.startswith("visual.head.")}
    with torch.device("meta"):
        shape_model = timm.create_model(arch, pretrained=False, **model_args)
    converted = checkpoint_filter_fn(trunk, shape_model)
    out = {f"vision_tower.model.{k}": v for k, v in converted.items()}
    head = {"kind": "linear", "bias": "visual.head.bias" in state}
    out["vision_head.0.weight"] = state["visual.head.weight"]
    if head["bias"]:
        out["vision_head.0.bias"] = state["visual.head.bias"]
    adapter, adapter_state, embedding_dim, embed_dim = _adapter(state)
    out.update(adapter_state)
    out.update(_logit_scale(state))
    used = set(trunk) | {"visual.head.weight", "visual.head.bias", "logit_scale", "text.logit_scale"}
    ignored = sorted(k for k in state if k not in used and not k.startswith(_ADAPTER_PREFIXES))
    ignored += sorted(k for k in trunk if "rope" in k)
    vision = {
        "model_name": arch,
        "model_args": _plain(model_args),
        "image_size": grid * patch,
        "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD),
    }
    return ConvertedLLM2CLIP("eva_clip", vision, int(embed_dim), embedding_dim, adapter, head, out, ignored)


# -- Hugging Face CLIP --------------------------------------------------------------------------------------------
def _hf_vision_to_timm(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    p = "vision_model."
    out = {
        "cls_token": state[f"{p}embeddings.class_embedding"].reshape(1, 1, -1),
        "patch_embed.proj.weight": state[f"{p}embeddings.patch_embedding.weight"],
        "pos_embed": state[f"{p}embeddings.position_embedding.weight"].unsqueeze(0),
        "norm_pre.weight": state[f"{p}pre_layrnorm.weight"],
        "norm_pre.bias": state[f"{p}pre_layrnorm.bias"],
        "norm.weight": state[f"{p}post_layernorm.weight"],
        "norm.bias": state[f"{p}post_layernorm.bias"],
    }
    for i in range(depth):
        src, dst = f"{p}encoder.layers.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[f"{dst}attn.qkv.{t}"] = torch.cat([state[f"{src}self_attn.{q}_proj.{t}"] for q in "qkv"])
            out[f"{dst}attn.proj.{t}"] = state[f"{src}self_attn.out_proj.{t}"]
            out[f"{dst}norm1.{t}"] = state[f"{src}layer_norm1.{t}"]
            out[f"{dst}norm2.{t}"] = state[f"{src}layer_norm2.{t}"]
            out[f"{dst}mlp.fc1.{t}"] = state[f"{src}mlp.fc1.{t}"]
            out[f"{dst}mlp.fc2.{t}"] = state[f"{src}mlp.fc2.{t}"]
    return out


def _check_vision_config(vision_config: Mapping, width: int, patch: int, image_size: int) -> int:
    """The attention head width a Hugging Face ``vision_config`` gives, after checking it against the tensors.

    Raises:
        ValueError: the config disagrees with the tensors or describes what the timm CLIP ViT does not compute.
    """
    checks = {"hidden_size": width, "patch_size": patch, "image_size": image_size}
    for key, found in checks.items():
        if key in vision_config and int(vision_config[key]) != found:
            raise ValueError(
                f"config.json vision_config.{key}={vision_config[key]} but the weights have {found}"
            )
    act = vision_config.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise ValueError(
            f"config.json vision_config.hidden_act={act!r}: only OpenAI CLIP's quick_gelu is mapped"
        )
    eps = float(vision_config.get("layer_norm_eps", 1e-5))
    if not math.isclose(eps, 1e-5):
        raise ValueError(f"config.json vision_config.layer_norm_eps={eps}: the timm CLIP ViT uses 1e-5")
    heads = int(vision_config.get("num_attention_heads", width // 64))
    if heads < 1 or width % heads:
        raise ValueError(
            f"config.json vision_config.num_attention_heads={heads} does not divide the width {width}"
        )
    return width // heads


def convert_hf_clip(
    state: Mapping[str, Tensor], head_width: int | None = None, vision_config: Mapping | None = None
) -> ConvertedLLM2CLIP:
    """Convert an ``hf_clip`` layout state dict (see the module docstring).

    Args:
        state: the checkpoint's tensors.
        head_width: attention head width; ``None``: from ``vision_config``, else 64 (every OpenAI CLIP ViT).
        vision_config: the folder's ``config.json`` ``vision_config`` (checked against the tensors).

    Raises:
        ValueError: ``vision_config`` disagrees with the tensors (see :func:`_check_vision_config`).
    """
    width = state["vision_model.embeddings.class_embedding"].shape[0]
    depth = len(
        {int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    )
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(state["vision_model.embeddings.position_embedding.weight"].shape[0] - 1)
    hidden = state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    if vision_config is not None:
        from_config = _check_vision_config(vision_config, int(width), int(patch), int(grid * patch))
        head_width = head_width or from_config
    head_width = head_width or 64
    model_args: dict[str, Any] = {
        "img_size": grid * patch,
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": width // head_width,
        "mlp_ratio": hidden / width,
        "num_classes": 0,
    }
    trunk = _hf_vision_to_timm(state, depth)
    out = {f"vision_tower.model.{k}": v for k, v in trunk.items()}
    out["vision_head.0.weight"] = state["visual_projection.weight"]
    head = {"kind": "linear", "bias": "visual_projection.bias" in state}
    if head["bias"]:
        out["vision_head.0.bias"] = state["visual_projection.bias"]
    adapter, adapter_state, embedding_dim, embed_dim = _adapter(state)
    out.update(adapter_state)
    out.update(_logit_scale(state))
    used_prefixes = ("vision_model.", "visual_projection.", *_ADAPTER_PREFIXES)
    ignored = sorted(k for k in state if not k.startswith(used_prefixes) and k != "logit_scale")
    ignored += sorted(k for k in state if k.endswith("embeddings.position_ids"))
    vision = {
        "model_name": "vit_base_patch16_clip_quickgelu_224",  # every dimension is overridden by model_args
        "model_args": _plain(model_args),
        "image_size": grid * patch,
        "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD),
    }
    return ConvertedLLM2CLIP("hf_clip", vision, int(embed_dim), embedding_dim, adapter, head, out, ignored)


def _plain(args: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def _folder_vision_config(path: str) -> dict | None:
    """``vision_config`` of a Hugging Face folder's ``config.json`` (``None`` for files and folders without)."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as f:
        return json.load(f).get("vision_config")


def convert_llm2clip(path: str, head_width: int | None = None) -> ConvertedLLM2CLIP:
    """Read a released LLM2CLIP vision checkpoint (file or folder) and convert it, whichever layout it has.

    Args:
        path: checkpoint file or Hugging Face folder.
        head_width: attention head width; ``None``: the folder's ``config.json`` (Hugging Face layout), else 64.
    """
    state = load_checkpoint(path)
    layout = detect_layout(state)
    if layout == "eva_clip":
        return convert_eva_clip(state, head_width=head_width or 64)
    vision_config = _folder_vision_config(path) if os.path.isdir(path) else None
    return convert_hf_clip(state, head_width=head_width, vision_config=vision_config)


def write_converted(converted: ConvertedLLM2CLIP, out_dir: str) -> dict[str, str]:
    """Write ``weights.pt``, ``model/llm2clip_converted.yaml`` and ``conversion.json`` under ``out_dir``."""
    os.makedirs(os.path.join(out_dir, "model"), exist_ok=True)
    weights = os.path.join(out_dir, "weights.pt")
    torch.save(converted.state_dict, weights)
    config = os.path.join(out_dir, "model", "llm2clip_converted.yaml")
    with open(config, "w") as f:
        f.write(
            "# Written by clipforge.models.convert.llm2clip. Use: clipforge eval -cd <the folder holding model/> "
            "'~experiment' model=llm2clip_converted ckpt_path=null ...\n"
        )
        yaml.safe_dump(converted.model_config(weights), f, sort_keys=False)
    report = os.path.join(out_dir, "conversion.json")
    summary = {k: v for k, v in asdict(converted).items() if k != "state_dict"}
    summary["num_tensors"] = len(converted.state_dict)
    with open(report, "w") as f:
        json.dump(summary, f, indent=2)
    return {"weights": weights, "config": config, "report": report}
