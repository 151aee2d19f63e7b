"""DataErrorLog: index-time and batch errors as de-duplicated JSON lines, and per-split counters."""

from __future__ import annotations

import json

import lightning as L
import torch

from clipforge.callbacks.data_errors import DataErrorLog
from clipforge.data.datamodule import ImageTextDataModule
from tests.unit.test_data_fixtures import CharTokenizer, quiet_trainer, write_image


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = CharTokenizer()

    def image_transform(self, train: bool):
        from clipforge.data.images import DefaultImageTransform

        return DefaultImageTransform(8)

    def training_step(self, batch, batch_idx):
        return (self.w * batch["image"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        assert len(batch["key"]) == len(batch["image"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_data_error_log_writes_each_error_once(tmp_path):
    data = tmp_path / "data"
    write_image(str(data / "good1.jpg"))
    write_image(str(data / "good2.png"), (0, 0, 255))
    (data / "zero.jpg").write_bytes(b"")
    (data / "notimage.jpg").write_text("hello")
    rows = [
        {"image": n, "caption": f"a photo {n}"}
        for n in ("good1.jpg", "zero.jpg", "notimage.jpg", "good2.png")
    ]
    rows.append({"image": "good1.jpg", "caption": "   "})  # an empty caption: an index-time error
    (data / "d.json").write_text(json.dumps(rows))
    spec = {"path": str(data / "d.json")}
    dm = ImageTextDataModule(train=spec, val=spec, batch_size=4, drop_last=False)
    callback = DataErrorLog(dirpath=str(tmp_path / "out"))
    trainer = quiet_trainer(tmp_path, callbacks=[callback], num_sanity_val_steps=0)
    trainer.fit(TinyModule(), datamodule=dm)
    lines = [json.loads(x) for x in (tmp_path / "out" / "data_errors.jsonl").read_text().splitlines()]
    assert sorted((x["split"], x["key"], x["reason"]) for x in lines) == [
        ("train", "good1", "empty_caption"),
        ("train", "notimage", "unreadable"),
        ("train", "zero", "zero_byte"),
        ("val", "good1", "empty_caption"),
        ("val", "notimage", "unreadable"),
        ("val", "zero", "zero_byte"),
    ]  # two epochs, each error once
    assert [x["source"] for x in lines if x["reason"] == "empty_caption"] == [f"{data / 'd.json'}#4"] * 2
    assert callback.counts == {"train": 3, "val": 3}
    assert trainer.callback_metrics["train/data_errors"] == 2.0
    assert trainer.callback_metrics["val/data_errors"] == 2.0
