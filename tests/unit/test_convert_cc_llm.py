"""The released CC-finetuned LLM (LLM2Vec LlamaEncoderModel folder) -> an encoder folder LLMEncoder loads."""

from __future__ import annotations

import json

import pytest
import torch

from clipforge.cli.convert import main
from clipforge.models.convert.cc_llm import LLAMA3_TEMPLATE, convert_cc_llm
from clipforge.models.llm_encoder import LLMEncoder, LLMEncoderSpec
from tests.helpers.tiny_hf import save_tiny_llm

CAPTIONS = ["a cat sitting on a sofa", "two motorcycles parked on the street", "a cup of coffee"]


def _release(tmp_path, causal_lm: bool):
    """A tiny Llama saved like the release: base-model weights (or a causal LM's), remote-code config."""
    from transformers import AutoModel

    src = tmp_path / "LLM2CLIP-tiny-CC-Finetuned"
    save_tiny_llm(src, "llama")
    if not causal_lm:  # LlamaEncoderModel is a LlamaModel: weights without the "model." prefix, no lm_head
        AutoModel.from_pretrained(src).save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["LlamaEncoderModel"]
    config["auto_map"] = {
        "AutoModel": "McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp--modeling_llama_encoder.LlamaEncoderModel"
    }
    (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize("causal_lm", [False, True])
def test_converted_folder_reads_like_llm2clip_reads_the_release(tmp_path, causal_lm):
    src = _release(tmp_path, causal_lm)
    out = convert_cc_llm(str(src), str(tmp_path / "encoder"), dtype="float32")
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == ["LlamaModel"]
    assert (tmp_path / "encoder" / "model.safetensors").is_symlink()

    encoder = LLMEncoder.from_pretrained(out)
    spec = encoder.spec
    assert (spec.bidirectional, spec.pooling, spec.template, spec.max_length) == (
        True,
        "mean",
        LLAMA3_TEMPLATE,
        512,
    )
    # the reference: the release loaded with LLM2CLIP's reading settings spelled out
    reference = LLMEncoderSpec(
        name_or_path=str(src),
        bidirectional=True,
        pooling="mean",
        template=LLAMA3_TEMPLATE,
        max_length=512,
        dtype="float32",
    ).build()
    ref_state = reference.base_model.state_dict()
    for k, v in encoder.base_model.state_dict().items():
        torch.testing.assert_close(v, ref_state[k])
    torch.testing.assert_close(encoder.encode(CAPTIONS), reference.encode(CAPTIONS))
    # bidirectional: a caption's embedding differs from the causal reading of the same weights
    causal = LLMEncoder.from_pretrained(out, bidirectional=False)
    assert not torch.allclose(causal.encode(CAPTIONS), encoder.encode(CAPTIONS))


def test_cli_copy_and_bad_inputs(tmp_path, capsys):
    src = _release(tmp_path, causal_lm=False)
    argv = [
        "cc-llm",
        str(src),
        str(tmp_path / "copied"),
        "--copy",
        "--max-length",
        "64",
        "--dtype",
        "float32",
    ]
    assert main(argv) == 0
    assert not (tmp_path / "copied" / "model.safetensors").is_symlink()
    settings = json.loads((tmp_path / "copied" / "encoder_config.json").read_text())
    assert settings["max_length"] == 64 and settings["source"] == str(src)
    capsys.readouterr()
    assert main(["cc-llm", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'nothing'}: no config.json (download the whole release folder)\n"
    )
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_cc_llm(str(tmp_path / "nothing"), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown encoder settings"):
        convert_cc_llm(str(src), str(tmp_path / "y"), pooling_mode="mean")
