"""VLMSFTModule parts: answer-only loss, batch rows, formatter, trainable parts, trainable-only checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses.answer import AnswerLoss, answer_window
from clipforge.models.captioners.mini_llava import CAPTION_PROMPT
from clipforge.models.vlm import IGNORE_INDEX, VisionLanguageModel
from clipforge.tasks.shared.vlm_sft import (
    CaptionFormatter,
    Formatter,
    VLMSFTModule,
    VLMTrainableSpec,
    batch_rows,
)
from tests.helpers.tiny_vlm import tiny_images, tiny_spec


def _module(**kwargs) -> VLMSFTModule:
    torch.manual_seed(0)
    module = VLMSFTModule(tiny_spec(), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **kwargs)
    module.configure_model()
    return module


def test_answer_only_loss_equals_hand_computed_masked_cross_entropy():
    torch.manual_seed(0)
    vlm = VisionLanguageModel.build(tiny_spec()).eval()
    inputs = vlm.build_inputs(["<image> say", "<image> a much longer prompt here"], ["a red cat", "ok"])
    pixels = vlm.pixel_values(tiny_images(2))
    labels = inputs["labels"]
    with torch.no_grad():
        full = vlm(pixels, inputs["input_ids"], inputs["attention_mask"])
        window = vlm(
            pixels, inputs["input_ids"], inputs["attention_mask"], logits_to_keep=answer_window(labels)
        )
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != IGNORE_INDEX:
                terms.append(-F.log_softmax(full[b, t], dim=-1)[labels[b, t + 1]])
    assert len(terms) == len("a red cat") + 1 + len("ok") + 1  # byte tokens + EOS
    expected = torch.stack(terms).mean()
    loss = AnswerLoss()
    torch.testing.assert_close(loss(full, labels), expected)
    torch.testing.assert_close(loss(window, labels), expected)
    assert window.shape[1] < full.shape[1]


def test_answer_window_covers_the_earliest_answer():
    labels = torch.full((2, 10), IGNORE_INDEX)
    labels[0, 7:9] = 5
    labels[1, 4:6] = 5
    assert answer_window(labels) == 10 - 3  # position 3 predicts the first label (at 4)


def test_batch_rows_train_and_eval_batches():
    train = {"key": ["a", "b"], "caption": ["x", "y"], "meta": [{}, {"m": 1}]}
    assert batch_rows(train) == [
        {"key": "a", "caption": "x", "captions": ["x"], "meta": {}},
        {"key": "b", "caption": "y", "captions": ["y"], "meta": {"m": 1}},
    ]
    val = {
        **train,
        "captions": ["x", "x2", "y", "y2", "y3"],
        "caption_image_index": torch.tensor([0, 0, 1, 1, 1]),
    }
    rows = batch_rows(val)
    assert rows[0]["captions"] == ["x", "x2"] and rows[1]["captions"] == ["y", "y2", "y3"]


def test_caption_formatter_and_protocol():
    fmt = CaptionFormatter()
    assert fmt({"key": "k", "caption": "a dog", "captions": ["a dog"], "meta": {}}) == (
        CAPTION_PROMPT,
        "a dog",
    )
    assert isinstance(fmt, Formatter)
    with pytest.raises(ValueError):
        VLMTrainableSpec(projector="lora")
    with pytest.raises(ValueError):
        VLMTrainableSpec(llm="partial")


def test_trainable_parts_frozen_lora_full():
    module = _module(trainable={"vision": "frozen", "projector": "full", "llm": "lora"}, lora={"r": 2})
    for name, p in module.named_parameters():
        expect = name.startswith("vlm.mm_projector.") or "lora_" in name
        assert p.requires_grad == expect, name
    assert any("lora_" in n for n, _ in module.named_parameters())
    module.train()
    assert (
        not module.vlm.vision_model.training
        and module.vlm.model.training
        and module.vlm.mm_projector.training
    )
    full = _module(trainable={"vision": "full", "projector": "frozen", "llm": "frozen"})
    for name, p in full.named_parameters():
        assert p.requires_grad == name.startswith("vlm.vision_model."), name


def test_checkpoints_keep_only_trainable_weights():
    module = _module()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {
        "vlm.mm_projector.0.weight",
        "vlm.mm_projector.0.bias",
        "vlm.mm_projector.2.weight",
    }
    assert module.strict_loading is False
    module.on_load_checkpoint(checkpoint)
    checkpoint["state_dict"].pop("vlm.mm_projector.2.weight")
    with pytest.raises(KeyError, match="mm_projector.2.weight"):
        module.on_load_checkpoint(checkpoint)
    full = _module(checkpoint_trainable_only=False)
    checkpoint = {"state_dict": full.state_dict()}
    full.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(full.state_dict()) and full.strict_loading is True
