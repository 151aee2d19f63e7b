"""Released LLM2CLIP vision checkpoints (EVA-CLIP .pt and Hugging Face CLIP layouts) -> LLM2CLIPModule.

Each test writes a tiny checkpoint in the released key layout from reference modules (a timm EVA02 trunk, a
``transformers`` CLIPVisionModel, the official ``TextProj`` re-stated in tests/helpers/llm2clip.py), converts it,
loads it into an LLM2CLIPModule through ``init_weights`` and checks that the module computes what the reference
modules compute.
"""

from __future__ import annotations

import functools
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
