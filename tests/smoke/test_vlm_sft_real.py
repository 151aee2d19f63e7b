"""The CPU preset with its real offline weights (EfficientNet-Lite0 + SmolLM2-135M GGUF): build, save in the AITQE
layout, reload both ways (``from_pretrained`` and an empty build + ``init_from``-style load) with equal logits."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from clipforge.models.vlm import VisionLanguageModel, load_weights
from clipforge.utils.hydra import compose
from tests.helpers.tiny_vlm import tiny_images

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]


def test_effnet_smollm2_round_trips_through_its_folder(tmp_path):
    cfg = compose(["experiment=recap_mini_llava_train"], output_dir=str(tmp_path))
    spec = instantiate(cfg.model.vlm, _convert_="all")
    torch.manual_seed(0)
    vlm = VisionLanguageModel.build(spec).eval()
    assert vlm.num_image_tokens == 16 and vlm.eos_token_id == vlm.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    out = vlm.save_pretrained(str(tmp_path / "vlm"))
    inputs = vlm.prepare_generation(tiny_images(2), ["<image>\nDescribe the image.", "What is it? <image>"])
    with torch.no_grad():
        expected = vlm(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
        again = VisionLanguageModel.from_pretrained(out).eval()
        torch.testing.assert_close(
            again(inputs["images"], inputs["input_ids"], inputs["attention_mask"]), expected
        )
        empty = VisionLanguageModel.build(spec, empty=True).eval()
        load_weights(empty, out)
        torch.testing.assert_close(
            empty(inputs["images"], inputs["input_ids"], inputs["attention_mask"]), expected
        )
