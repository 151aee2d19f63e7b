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


def _source(tmp_path) -> dict:
    """Two good photos, a zero-byte and a non-image file, and an empty caption (an index-time error)."""
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
    return {"path": str(data / "d.json")}


def test_data_error_log_writes_each_error_once(tmp_path):
    spec = _source(tmp_path)
    data = tmp_path / "data"
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


def test_a_rerun_into_the_same_folder_appends_no_error_twice(tmp_path):
    """A resumed run (a generation job rerun after a kill, training from last.ckpt) writes into the same folder: the
    errors already in the file are not written again, and the counters count the file's distinct errors."""
    spec = _source(tmp_path)
    path = tmp_path / "out" / "data_errors.jsonl"
    for run in range(2):
        dm = ImageTextDataModule(train=spec, val=spec, batch_size=4, drop_last=False)
        callback = DataErrorLog(dirpath=str(tmp_path / "out"))
        trainer = quiet_trainer(tmp_path / str(run), callbacks=[callback], num_sanity_val_steps=0)
        trainer.fit(TinyModule(), datamodule=dm)
        if run == 0:
            first = path.read_text()
    assert path.read_text() == first and len(first.splitlines()) == 6
    assert callback.counts == {"train": 3, "val": 3}


def test_a_line_cut_by_a_kill_is_dropped_and_written_again(tmp_path):
    from types import SimpleNamespace

    path = tmp_path / "data_errors.jsonl"
    path.write_text(
        '{"split": "predict", "key": "a", "reason": "unreadable"}\n{"split": "predict", "key": "b", "re'
    )
    callback = DataErrorLog(dirpath=str(tmp_path))
    trainer = SimpleNamespace(world_size=1, global_rank=0, log_dir=None, default_root_dir=str(tmp_path))
    errors = [{"key": "a", "reason": "unreadable"}, {"key": "b", "reason": "missing_file"}]
    assert callback.record(trainer, "predict", errors) == 1  # "a" was already written, "b" was cut short
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"split": "predict", "key": "a", "reason": "unreadable"},
        {"split": "predict", "key": "b", "reason": "missing_file"},
    ]
    assert callback.counts == {"predict": 2}
