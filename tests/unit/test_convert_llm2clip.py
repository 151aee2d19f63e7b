"""Released LLM2CLIP vision checkpoints (EVA-CLIP .pt and Hugging Face CLIP layouts) -> LLM2CLIPModule.

Each test writes a tiny checkpoint in the released key layout from reference modules (a timm EVA02 trunk, a
``transformers`` CLIPVisionModel, the official ``TextProj`` re-stated in tests/helpers/llm2clip.py), converts it,
loads it into an LLM2CLIPModule through ``init_weights`` and checks that the module computes what the reference
modules compute.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses import ClipLoss
from clipforge.models.adapters import TextProj
from clipforge.models.convert.llm2clip import (
    adapter_from_official,
    convert_eva_clip,
    convert_llm2clip,
    detect_layout,
    load_checkpoint,
    write_converted,
)
from clipforge.models.vision import TimmVision
from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
from tests.helpers.llm2clip import (
    OfficialTextProj,
    eva_clip_layout,
    hf_clip_vision_layout,
    tiny_eva,
    tiny_hf_clip_vision,
)

LLM_DIM, EMBED = 24, 20


def _official_adapter(prefix: str, num_layers: int = 4) -> tuple[OfficialTextProj, dict]:
    torch.manual_seed(1)
    ref = OfficialTextProj(LLM_DIM, EMBED, num_layers_text=num_layers).eval()
    state = {prefix + k.removeprefix("text_adaptor."): v for k, v in ref.state_dict().items()}
    return ref, state


def _module(converted, weights: str) -> LLM2CLIPModule:
    module = LLM2CLIPModule(
        vision=TimmVision(**converted.vision),
        loss=ClipLoss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
        embedding_dim=converted.embedding_dim,
        embed_dim=converted.embed_dim,
        adapter=converted.adapter,
        vision_head=converted.vision_head,
        init_weights=weights,
    )
    module.configure_model()
    return module.eval()


@pytest.mark.parametrize("num_layers", [4, 1, 0])
def test_official_adapter_maps_onto_textproj(num_layers):
    ref, state = _official_adapter("text.text_adaptor.", num_layers)
    spec, tensors = adapter_from_official(state, "text.text_adaptor.")
    assert spec == {
        "kind": "textproj",
        "num_layers": num_layers,
        "expansion": 2.0,
        "bias": True,
        "normalize_input": True,
    }
    ours = TextProj(LLM_DIM, EMBED, num_layers=num_layers)
    ours.load_state_dict(tensors, strict=True)
    x = torch.randn(5, LLM_DIM) * 3
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("llm2clip_bias_names", [False, True])
def test_eva_clip_checkpoint_round_trip(tmp_path, llm2clip_bias_names):
    ref = tiny_eva()
    head = nn.Linear(32, EMBED)
    adapter, adapter_state = _official_adapter("text.text_adaptor.")
    state = eva_clip_layout(ref.state_dict(), llm2clip_bias_names)
    state.update(
        {"visual.head.weight": head.weight.data, "visual.head.bias": head.bias.data, **adapter_state}
    )
    state["logit_scale"] = torch.tensor(math.log(42.0))
    # DeepSpeed / DDP style wrapping: {"module": {"module.visual...": ...}}
    path = tmp_path / "llm2clip_eva.pt"
    torch.save({"module": {"module." + k: v for k, v in state.items()}}, path)

    loaded = load_checkpoint(str(path))
    assert detect_layout(loaded) == "eva_clip"
    converted = convert_eva_clip(loaded, head_width=16, ref_grid=4)
    assert converted.embedding_dim == LLM_DIM and converted.embed_dim == EMBED
    assert converted.vision["model_args"]["depth"] == 2 and converted.vision["image_size"] == 32
    assert "visual.rope.freqs_cos" in converted.ignored
    paths = write_converted(converted, str(tmp_path / "out"))
    module = _module(converted, paths["weights"])

    images, emb = torch.randn(3, 3, 32, 32), torch.randn(3, LLM_DIM)
    with torch.no_grad():
        expected_img = F.normalize(
            head(ref.forward_head(ref.forward_features(images), pre_logits=True)), dim=-1
        )
        torch.testing.assert_close(module.encode_image(images), expected_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module.encode_embedding(emb), F.normalize(adapter(emb), dim=-1))
    torch.testing.assert_close(module.loss.logit_scale.exp(), torch.tensor(42.0))


def test_hf_clip_folder_round_trip(tmp_path):
    from safetensors.torch import save_file

    ref = tiny_hf_clip_vision()
    proj = nn.Linear(32, EMBED, bias=False)
    adapter, adapter_state = _official_adapter("text_adapter.adaptor.")
    state = hf_clip_vision_layout(ref)
    state.update({"visual_projection.weight": proj.weight.data, **adapter_state})
    state["logit_scale"] = torch.tensor(math.log(7.0))
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)  # a CLIP text tower: ignored
    folder = tmp_path / "LLM2CLIP-Openai-tiny"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))

    converted = convert_llm2clip(str(folder), head_width=16)
    assert converted.layout == "hf_clip"
    assert converted.vision_head == {"kind": "linear", "bias": False}
    assert converted.ignored == ["text_model.embeddings.token_embedding.weight"]
    paths = write_converted(converted, str(tmp_path / "out"))
    module = _module(converted, paths["weights"])

    pixels, emb = torch.randn(2, 3, 32, 32), torch.randn(4, LLM_DIM)
    with torch.no_grad():
        expected_img = F.normalize(proj(ref(pixel_values=pixels).pooler_output), dim=-1)
        torch.testing.assert_close(module.encode_image(pixels), expected_img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module.encode_embedding(emb), F.normalize(adapter(emb), dim=-1))
    # the command writes the same files
    from clipforge.cli.convert import main

    assert main(["llm2clip", str(folder), str(tmp_path / "cli"), "--head-width", "16"]) == 0
    by_cli = torch.load(tmp_path / "cli" / "weights.pt", weights_only=True)
    direct = torch.load(paths["weights"], weights_only=True)
    assert by_cli.keys() == direct.keys() and all(torch.equal(by_cli[k], direct[k]) for k in direct)
    cli_config = (tmp_path / "cli" / "model" / "llm2clip_converted.yaml").read_text()
    assert cli_config == open(paths["config"]).read().replace(
        paths["weights"], str(tmp_path / "cli" / "weights.pt")
    )


def test_converted_model_config_composes_with_hydra(tmp_path):
    """The written ``model/llm2clip_converted.yaml`` is a working model config for the entry points (``-cd``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from clipforge.utils.hydra import CONF_DIR, register_resolvers

    ref = tiny_eva()
    _, adapter_state = _official_adapter("text.text_adaptor.")
    state = eva_clip_layout(ref.state_dict())
    state.update(
        {"visual.head.weight": torch.randn(EMBED, 32), **adapter_state, "logit_scale": torch.tensor(2.0)}
    )
    out = tmp_path / "converted"
    paths = write_converted(convert_eva_clip(state, head_width=16, ref_grid=4), str(out))
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"hydra.searchpath=[file://{out}]",
                "~experiment",
                "model=llm2clip_converted",
                "ckpt_path=null",
            ],
        )
    module = instantiate(cfg.model, _convert_="all")
    module.configure_model()
    assert module.init_weights == paths["weights"]
    torch.testing.assert_close(module.loss.logit_scale, torch.tensor(2.0))


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="not a released LLM2CLIP"):
        detect_layout({"conv1.weight": torch.zeros(1)})


# -- the Hugging Face folders (microsoft/LLM2CLIP-Openai-*) -----------------------------------------------------------
HF_WIDTH, HF_HEADS, HF_LAYERS, HF_PATCH, HF_SIZE = 48, 4, 2, 8, 32  # head width 12: neither 64 nor 16


def _hf_llm2clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names of the released ``CLIPModel`` with LLM2CLIP's adapter: ``vision_model.*``
    (transformers' CLIP vision transformer), ``visual_projection``, ``text_adapter.adaptor.{0..3}`` LinearBlocks
    + ``.4`` LayerNorm + ``.5`` Linear, ``logit_scale``, and the CLIP text tower the release still carries."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, dim):
        return {f"{prefix}.weight": 1 + r(dim), f"{prefix}.bias": r(dim)}

    w, grid = HF_WIDTH, HF_SIZE // HF_PATCH
    v = "vision_model."
    state = {
        f"{v}embeddings.class_embedding": r(w),
        f"{v}embeddings.patch_embedding.weight": r(w, 3, HF_PATCH, HF_PATCH, scale=0.05),
        f"{v}embeddings.position_embedding.weight": r(grid * grid + 1, w),
        f"{v}embeddings.position_ids": torch.arange(grid * grid + 1)[None],  # a buffer older releases saved
        **norm(f"{v}pre_layrnorm", w),
        **norm(f"{v}post_layernorm", w),
        "visual_projection.weight": r(EMBED, w),
        "logit_scale": torch.tensor(math.log(30.0)),
        "text_model.embeddings.token_embedding.weight": r(10, 8),
        "text_projection.weight": r(8, 8),
    }
    for i in range(HF_LAYERS):
        p = f"{v}encoder.layers.{i}."
        for q in ("q", "k", "v", "out"):
            state[f"{p}self_attn.{q}_proj.weight"], state[f"{p}self_attn.{q}_proj.bias"] = r(w, w), r(w)
        state |= norm(f"{p}layer_norm1", w) | norm(f"{p}layer_norm2", w)
        state[f"{p}mlp.fc1.weight"], state[f"{p}mlp.fc1.bias"] = r(2 * w, w), r(2 * w)
        state[f"{p}mlp.fc2.weight"], state[f"{p}mlp.fc2.bias"] = r(w, 2 * w), r(w)
    a = "text_adapter.adaptor."
    for k in range(4):
        state |= norm(f"{a}{k}.ln", LLM_DIM)
        state[f"{a}{k}.fn.0.weight"], state[f"{a}{k}.fn.0.bias"] = r(2 * LLM_DIM, LLM_DIM), r(2 * LLM_DIM)
        state[f"{a}{k}.fn.3.weight"], state[f"{a}{k}.fn.3.bias"] = r(LLM_DIM, 2 * LLM_DIM), r(LLM_DIM)
    state |= norm(f"{a}4", LLM_DIM)
    state[f"{a}5.weight"], state[f"{a}5.bias"] = r(EMBED, LLM_DIM), r(EMBED)
    return state


def _write_hf_folder(folder, state) -> None:
    """The released folder: ``config.json`` (a CLIP config whose ``auto_map`` points at the folder's own
    modelling files), those files, ``model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {
        "architectures": ["CLIPModel"],
        "auto_map": {"AutoConfig": "configuration_clip.CLIPConfig", "AutoModel": "modeling_clip.CLIPModel"},
        "model_type": "clip",
        "projection_dim": EMBED,
        "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2},
        "vision_config": {
            "hidden_size": HF_WIDTH,
            "intermediate_size": 2 * HF_WIDTH,
            "num_hidden_layers": HF_LAYERS,
            "num_attention_heads": HF_HEADS,
            "image_size": HF_SIZE,
            "patch_size": HF_PATCH,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": EMBED,
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_clip.py", "modeling_clip.py"):  # remote code: read by nobody here
        (folder / name).write_text("# trust_remote_code modelling file of the release\n")


def _hf_image_features(state, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's vision forward from the raw tensors (``get_image_features``): patch conv, class token, positions,
    pre-LN; per layer pre-LN multi-head attention and a QuickGELU MLP, both residual; post-LN of the class token;
    the projection."""
    v, w, heads = "vision_model.", HF_WIDTH, HF_HEADS

    def ln(x, prefix):
        return F.layer_norm(x, (w,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)

    def lin(x, prefix):
        return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]

    x = (
        F.conv2d(pixels, state[f"{v}embeddings.patch_embedding.weight"], stride=HF_PATCH)
        .flatten(2)
        .transpose(1, 2)
    )
    cls = state[f"{v}embeddings.class_embedding"].expand(len(pixels), 1, w)
    x = ln(torch.cat([cls, x], 1) + state[f"{v}embeddings.position_embedding.weight"], f"{v}pre_layrnorm")
    for i in range(HF_LAYERS):
        p = f"{v}encoder.layers.{i}."
        h = ln(x, f"{p}layer_norm1")
        q, k, val = (
            lin(h, f"{p}self_attn.{n}_proj").unflatten(-1, (heads, -1)).transpose(1, 2) for n in "qkv"
        )
        att = (q @ k.transpose(-1, -2) / math.sqrt(w // heads)).softmax(-1) @ val
        x = x + lin(att.transpose(1, 2).flatten(2), f"{p}self_attn.out_proj")
        h = lin(ln(x, f"{p}layer_norm2"), f"{p}mlp.fc1")
        x = x + lin(h * torch.sigmoid(1.702 * h), f"{p}mlp.fc2")
    return ln(x[:, 0], f"{v}post_layernorm") @ state["visual_projection.weight"].T


def _hf_text_features(state, emb: torch.Tensor) -> torch.Tensor:
    """LLM2CLIP's adapter (``get_text_features``): L2-normalised input, four pre-LN residual GELU blocks, LN,
    Linear."""
    a = "text_adapter.adaptor."

    def ln(x, prefix):
        return F.layer_norm(x, (LLM_DIM,), state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    x = F.normalize(emb, dim=-1)
    for k in range(4):
        h = ln(x, f"{a}{k}.ln") @ state[f"{a}{k}.fn.0.weight"].T + state[f"{a}{k}.fn.0.bias"]
        x = x + F.gelu(h) @ state[f"{a}{k}.fn.3.weight"].T + state[f"{a}{k}.fn.3.bias"]
    return ln(x, f"{a}4") @ state[f"{a}5.weight"].T + state[f"{a}5.bias"]


def test_hf_llm2clip_folder_converts_to_the_same_embeddings(tmp_path):
    """A folder laid out like ``microsoft/LLM2CLIP-Openai-*`` (config.json + remote-code files + safetensors)
    converts without being told its shapes (heads, image size come from ``config.json``), and the converted
    module's image / text embeddings are the ones the released model's forward computes from the same tensors."""
    state = _hf_llm2clip_state()
    folder = tmp_path / "LLM2CLIP-Openai-tiny"
    _write_hf_folder(folder, state)

    converted = convert_llm2clip(str(folder))
    assert converted.layout == "hf_clip"
    assert (
        converted.vision["model_args"]["num_heads"] == HF_HEADS and converted.vision["image_size"] == HF_SIZE
    )
    assert converted.embedding_dim == LLM_DIM and converted.embed_dim == EMBED
    assert {"text_model.embeddings.token_embedding.weight", "text_projection.weight"} <= set(
        converted.ignored
    )
    assert "vision_model.embeddings.position_ids" in converted.ignored
    module = _module(converted, write_converted(converted, str(tmp_path / "out"))["weights"])

    g = torch.Generator().manual_seed(1)
    pixels, emb = torch.randn(3, 3, HF_SIZE, HF_SIZE, generator=g), torch.randn(4, LLM_DIM, generator=g) * 3
    with torch.no_grad():
        torch.testing.assert_close(
            module.encode_image(pixels),
            F.normalize(_hf_image_features(state, pixels), dim=-1),
            rtol=1e-4,
            atol=1e-5,
        )
        torch.testing.assert_close(
            module.encode_embedding(emb),
            F.normalize(_hf_text_features(state, emb), dim=-1),
            rtol=1e-4,
            atol=1e-5,
        )
    torch.testing.assert_close(module.loss.logit_scale.exp(), torch.tensor(30.0))


def test_hf_folder_config_disagreeing_with_the_weights_is_an_error(tmp_path):
    state = _hf_llm2clip_state()
    folder = tmp_path / "bad"
    _write_hf_folder(folder, state)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act"):
        convert_llm2clip(str(folder))
    config["vision_config"] |= {"hidden_act": "quick_gelu", "num_attention_heads": 5}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_attention_heads"):
        convert_llm2clip(str(folder))


def test_hf_vision_keys_without_clip_pre_layernorm_are_rejected_clearly():
    """An EVA-CLIP vision tower converted to Hugging Face names has ``vision_model.embeddings.*`` but no CLIP
    ``pre_layrnorm``: a clear error, not a KeyError half-way through the CLIP mapping."""
    state = {k: v for k, v in _hf_llm2clip_state().items() if "pre_layrnorm" not in k}
    with pytest.raises(ValueError, match="pre_layrnorm"):
        detect_layout(state)
