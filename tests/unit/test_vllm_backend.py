"""The vLLM backend's parts that need no vLLM: decoding presets -> ``SamplingParams`` arguments, the backend
switch's validation, and the one-line error of ``backend: vllm`` where vLLM is not installed. (vLLM itself runs
in the ``vllm`` tier: tests/smoke/test_vllm_backend.py, ``make test-vllm``.)"""

from __future__ import annotations

import sys

import pytest

from clipforge.models.captioners.batched import BatchedCaptioner
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import HFCaptioner
from clipforge.models.captioners.label_llm import LabelLLMCaptioner
from clipforge.models.captioners.vllm_engine import VLLM_MISSING, import_vllm, sampling_kwargs
from clipforge.tasks.recap.generator import CaptionGeneratorModule
from clipforge.utils.hydra import compose


def test_greedy_preset_maps_to_temperature_zero_with_the_same_limits_and_penalty():
    d = Decoding(max_new_tokens=30, min_new_tokens=8, repetition_penalty=1.3)
    assert sampling_kwargs(d, [7, 2, 7]) == {
        "max_tokens": 30,
        "min_tokens": 8,
        "repetition_penalty": 1.3,
        "stop_token_ids": [2, 7],
        "detokenize": False,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
    }


def test_sampling_preset_keeps_temperature_top_k_and_top_p():
    # the llava_1_5 preset: LLaVA's default sampling at temperature 0.2, transformers' top_k 50
    d = Decoding(max_new_tokens=30, do_sample=True, temperature=0.2, top_k=50, top_p=0.9)
    kw = sampling_kwargs(d, [2])
    assert (kw["temperature"], kw["top_k"], kw["top_p"], kw["max_tokens"], kw["min_tokens"]) == (
        0.2,
        50,
        0.9,
        30,
        0,
    )


@pytest.mark.parametrize(
    ("decoding", "word"), [({"num_beams": 3}, "beam search"), ({"no_repeat_ngram_size": 3}, "no_repeat")]
)
def test_settings_without_a_vllm_equivalent_are_refused_at_construction(tmp_path, decoding, word):
    with pytest.raises(ValueError, match=word):
        sampling_kwargs(Decoding(**decoding), [2])
    with pytest.raises(ValueError, match=word):
        HFCaptioner(str(tmp_path), decoding=decoding, backend="vllm")
    HFCaptioner(str(tmp_path), decoding=decoding)  # the HF backend runs them


class _HFOnly(BatchedCaptioner):
    """A captioner with only the HF path (like Qwen-VL's remote code, MiniGPT-4, Otter, mini_llava)."""

    def _load(self, device):
        raise AssertionError("nothing loads in this test")

    def _encode(self, images, captions):
        raise AssertionError("nothing encodes in this test")


def test_backend_names_and_captioners_without_a_vllm_path_are_refused(tmp_path):
    with pytest.raises(ValueError, match="backend='tgi' is not one of"):
        HFCaptioner(str(tmp_path), backend="tgi")
    with pytest.raises(ValueError, match="backend=vllm is not available for _HFOnly"):
        _HFOnly("x", "x", "x", None, "strip", 1, 1, backend="vllm")
    assert _HFOnly("x", "x", "x", None, "strip", 1, 1).backend == "hf"


def test_backend_vllm_without_vllm_fails_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is absent
    with pytest.raises(ModuleNotFoundError) as info:
        import_vllm()
    assert str(info.value) == VLLM_MISSING and "\n" not in VLLM_MISSING and "make setup-vllm" in VLLM_MISSING
    captioner = LabelLLMCaptioner(llm=str(tmp_path), backend="vllm")
    with pytest.raises(ModuleNotFoundError, match="make setup-vllm"):
        captioner.setup("cpu")  # before any weights load: nothing in tmp_path to load
    assert captioner.engine is None and captioner.classifier_model is None


def test_the_backend_is_one_override_of_a_captioner_preset():
    cfg = compose(
        ["experiment=recap_label_llm", "model.captioners.label_llm.backend=vllm"],
        "generate",
        output_dir="/tmp/unused",
    )
    assert cfg.model.captioners.label_llm.backend == "vllm"
    default = compose(["experiment=recap_label_llm"], "generate", output_dir="/tmp/unused")
    assert default.model.captioners.label_llm.backend == "hf"


def test_model_backend_switches_every_captioner_of_a_job(tmp_path):
    """``model.backend=vllm``: one override for every captioner of a generate job; one without a vLLM path refuses
    it by name (no captioner silently stays on the HF backend); ``null`` leaves each captioner's own."""
    cfg = compose(["experiment=recap_label_llm", "model.backend=vllm"], "generate", output_dir=str(tmp_path))
    assert cfg.model.backend == "vllm"
    assert compose(["experiment=recap_label_llm"], "generate", output_dir=str(tmp_path)).model.backend is None
    both = CaptionGeneratorModule(
        [LabelLLMCaptioner(llm=str(tmp_path)), HFCaptioner(str(tmp_path))], backend="vllm"
    )
    assert [c.backend for c in both.captioners] == ["vllm", "vllm"]
    with pytest.raises(ValueError, match="backend=vllm is not available for _HFOnly"):
        CaptionGeneratorModule([_HFOnly("x", "x", "x", None, "strip", 1, 1)], backend="vllm")
    with pytest.raises(ValueError, match="beam search"):
        CaptionGeneratorModule([HFCaptioner(str(tmp_path), decoding={"num_beams": 3})], backend="vllm")
    own = [HFCaptioner(str(tmp_path), backend="vllm"), _HFOnly("y", "y", "y", None, "strip", 1, 1)]
    assert [c.backend for c in CaptionGeneratorModule(own).captioners] == ["vllm", "hf"]
