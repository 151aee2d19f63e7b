"""VLMSFTModule end to end on tiny random models: SFT lowers the loss, the LoRA stage trains only what it should,
its export loads in the captioner, and the mini_llava experiments run through the Hydra entry point."""

from __future__ import annotations

import functools
import json
import math
import os

import lightning as L
import pytest
import torch

from clipforge.data.datamodule import ImageTextDataModule
from clipforge.models.captioners.mini_llava import CAPTION_PROMPT, VLMCaptioner
from clipforge.models.lora import merged_state_dict
from clipforge.models.vlm import VisionLanguageModel
from clipforge.tasks.shared.vlm_sft import VLMSFTModule
from tests.helpers.tiny_vlm import tiny_images, tiny_spec


def _optimizer(lr: float):
    return functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)


def _datamodule(limit: int = 4) -> ImageTextDataModule:
    return ImageTextDataModule(
        train={"path": "synthetic", "limit": limit}, batch_size=4, caption_policy={"sampling": "first"}
    )


def _trainer(root, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    return L.Trainer(**{**options, **kwargs})


def _loss(module: VLMSFTModule, dm: ImageTextDataModule) -> float:
    module.eval()
    with torch.no_grad():
        return float(module._shared_step(next(iter(dm.train_dataloader())))[0]["lm_loss"])


def test_sft_steps_reduce_the_answer_loss(tmp_path):
    torch.manual_seed(0)
    module = VLMSFTModule(tiny_spec(), _optimizer(3e-3), trainable={"llm": "full"}, export_subdir=None)
    module.configure_model()
    dm = _datamodule()
    dm.connect(image_transform=module.image_transform(True))
    dm.setup("fit")
    before = _loss(module, dm)
    _trainer(tmp_path, max_steps=25, enable_checkpointing=False).fit(module, datamodule=dm)
    after = _loss(module, dm)
    assert before > 4.0  # about log(259) for a random byte-level model
    assert after < 0.5 * before


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A projector-only run exported to <root>/stage1."""
    root = tmp_path_factory.mktemp("stage1")
    torch.manual_seed(0)
    module = VLMSFTModule(tiny_spec(), _optimizer(1e-2), export_subdir="stage1")
    module.configure_model()
    before = {k: v.clone() for k, v in module.vlm.state_dict().items()}
    _trainer(root, max_steps=3, enable_checkpointing=False).fit(module, datamodule=_datamodule())
    return os.path.join(root, "stage1"), module, before


def test_projector_stage_changes_only_the_projector_and_exports_it(stage1):
    path, module, before = stage1
    exported = VisionLanguageModel.from_pretrained(path).state_dict()
    assert set(exported) == set(before)
    for key, value in exported.items():
        assert torch.equal(value, module.vlm.state_dict()[key]), key
        assert torch.equal(value, before[key]) != key.startswith("mm_projector."), key


def test_lora_stage_trains_only_adapters_and_projector_and_exports_merged(stage1, tmp_path):
    path = stage1[0]
    torch.manual_seed(1)
    module = VLMSFTModule(
        tiny_spec(),
        _optimizer(1e-2),
        init_from=path,
        trainable={"llm": "lora"},
        lora={"r": 2, "alpha": 4, "dropout": 0.0},
        export_subdir="stage2",
    )
    module.configure_model()
    start = VisionLanguageModel.from_pretrained(path)
    merged = merged_state_dict(module.vlm)  # adapters start at B = 0: the stage-1 weights exactly
    assert set(merged) == set(start.state_dict())
    for key, value in start.state_dict().items():
        assert torch.equal(merged[key], value), key
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("vlm.mm_projector.") for n in trainable)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    _trainer(tmp_path, max_steps=4, callbacks=[checkpoint]).fit(module, datamodule=_datamodule())
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert set(saved) == trainable
    exported = VisionLanguageModel.from_pretrained(str(tmp_path / "stage2"))
    q = "model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported.state_dict()[q], start.state_dict()[q])  # the adapter is merged in
    torch.testing.assert_close(exported.state_dict()[q], merged_state_dict(module.vlm)[q])
    vision = "vision_model.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(exported.state_dict()[vision], start.state_dict()[vision])


def test_export_holds_the_best_checkpoint_not_the_last_weights(tmp_path):
    """The exported folder is the monitored best epoch (here the worst loss, mode=max, so it is not the last)."""
    torch.manual_seed(0)
    module = VLMSFTModule(tiny_spec(), _optimizer(1e-2), export_subdir="best")
    dm = ImageTextDataModule(
        train={"path": "synthetic", "limit": 4},
        val={"path": "synthetic", "limit": 4},
        batch_size=4,
        caption_policy={"sampling": "first"},
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), monitor="val/lm_loss", mode="max", save_top_k=-1, save_last=True
    )
    trainer = _trainer(tmp_path, max_epochs=3, limit_val_batches=1.0, callbacks=[checkpoint])
    trainer.fit(module, datamodule=dm)
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    exported = VisionLanguageModel.from_pretrained(str(tmp_path / "best")).state_dict()
    keys = [k for k in best if k.startswith("vlm.mm_projector.")]
    assert keys and "epoch=2" not in checkpoint.best_model_path
    assert any(not torch.equal(best[k], last[k]) for k in keys)
    for k in keys:
        assert torch.equal(exported[k.removeprefix("vlm.")], best[k]), k
        assert torch.equal(module.state_dict()[k], last[k]), k  # the module itself keeps its last weights


def test_validation_targets_are_the_same_every_epoch(tmp_path):
    """A formatter that draws random negatives (AITQE) draws fixed ones in validation: val/lm_loss is comparable."""
    from clipforge.tasks.enhance.formatter import AITQEFormatter

    torch.manual_seed(0)
    formatter = AITQEFormatter(neg_prob=0.5)
    module = VLMSFTModule(tiny_spec(), _optimizer(1e-2), formatter=formatter, export_subdir=None)
    dm = ImageTextDataModule(
        val={"path": "synthetic", "limit": 8}, batch_size=4, caption_policy={"sampling": "first"}
    )
    trainer = _trainer(tmp_path, limit_val_batches=1.0)
    first, second = (
        trainer.validate(module, datamodule=dm, verbose=False)[0]["val/lm_loss"] for _ in range(2)
    )
    assert first == second and formatter.fixed is False
    rows = [
        {"key": str(i), "caption": "a red bus on a street", "captions": ["a red bus on a street"]}
        for i in range(8)
    ]
    assert len({formatter(r) for r in rows for _ in range(3)}) > 1  # training draws differ


def test_captioner_over_the_export_equals_generate_text(stage1):
    path = stage1[0]
    captioner = VLMCaptioner(path, decoding={"max_new_tokens": 8}, batch_size=2)
    captioner.setup("cpu")
    images = tiny_images(3)
    gens = captioner.generate(images, ["", "", ""], ["a", "b", "c"])
    expected = captioner.model.generate_text(images, [CAPTION_PROMPT] * 3, max_new_tokens=8)
    assert [g[0].text for g in gens] == expected
    assert all(g[0].model_id == path and g[0].num_tokens <= 8 for g in gens)
    assert gens[0][0].params["max_new_tokens"] == 8


def test_mini_llava_experiments_run_through_the_entry_point(tmp_path):
    from clipforge.cli.train import train
    from clipforge.utils.hydra import compose

    out1 = tmp_path / "stage1"
    cfg = compose(
        ["experiment=recap_mini_llava_train", "debug=tiny_recap_mini_llava_train"], output_dir=str(out1)
    )
    metrics, _ = train(cfg)
    assert math.isfinite(metrics["val/lm_loss"])
    config = json.loads((out1 / "mini_llava" / "config.json").read_text())
    assert config["model_type"] == "mm" and config["image_tile_tokens"] == 16
    out2 = tmp_path / "stage2"
    cfg = compose(
        [
            "experiment=recap_mini_llava_train_lora",
            "debug=tiny_recap_mini_llava_train_lora",
            f"model.init_from={out1 / 'mini_llava'}",
        ],
        output_dir=str(out2),
    )
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["val/lm_loss"])
    assert any("lora_" in n for n, p in objects["model"].named_parameters() if p.requires_grad)
    assert (out2 / "mini_llava" / "model.safetensors").exists()
