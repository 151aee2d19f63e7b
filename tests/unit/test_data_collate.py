"""ImageTextDataset + ImageTextCollator: batch layout, caption_image_index, text-only, all-error batches."""

from __future__ import annotations

import pickle

import torch

from clipforge.data.collate import ImageTextCollator
from clipforge.data.dataset import ImageTextDataset
from clipforge.data.images import DefaultImageTransform
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from tests.unit.test_data_fixtures import CharTokenizer


def _item(key: str, captions: list[str]) -> dict:
    return {
        "key": key,
        "image": torch.full((3, 4, 4), float(len(key))),
        "caption": captions[0],
        "captions": captions,
        "meta": {"k": key},
    }


def test_all_captions_index_with_a_bad_row_in_the_middle():
    items = [_item("a", ["a1", "a2"]), {"key": "bad", "error": "unreadable"}, _item("cc", ["c1", "c2", "c3"])]
    batch = ImageTextCollator(CharTokenizer(), all_captions=True)(items)
    assert batch["key"] == ["a", "cc"]
    assert batch["captions"] == ["a1", "a2", "c1", "c2", "c3"]
    assert batch["caption_image_index"].tolist() == [0, 0, 1, 1, 1]
    assert batch["caption_image_index"].dtype == torch.long
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image"][1, 0, 0, 0] == 2.0
    assert batch["text"]["input_ids"].shape[0] == 5 and batch["text"]["attention_mask"].dtype == torch.long
    assert batch["errors"] == [{"key": "bad", "reason": "unreadable"}]
    assert batch["meta"] == [{"k": "a"}, {"k": "cc"}]


def test_training_batch_has_one_caption_per_image():
    batch = ImageTextCollator(CharTokenizer())([_item("a", ["a1", "a2"]), _item("b", ["b1"])])
    assert batch["caption"] == ["a1", "b1"] and "captions" not in batch
    assert batch["text"]["input_ids"].shape[0] == 2 and batch["errors"] == []


def test_all_error_batch_is_valid_and_empty():
    batch = ImageTextCollator(CharTokenizer(), all_captions=True)(
        [{"key": "x", "error": "zero_byte"}, {"key": "y", "error": "truncated"}]
    )
    assert batch["key"] == [] and batch["image"].shape[0] == 0 and batch["captions"] == []
    assert batch["caption_image_index"].shape == (0,) and batch["text"]["input_ids"].shape[0] == 0
    assert [e["reason"] for e in batch["errors"]] == ["zero_byte", "truncated"]


def test_text_only_dataset_has_no_images():
    records, _ = read_records(DatasetSpec(path="synthetic", limit=4, text_only=True))
    ds = ImageTextDataset(records, None, text_only=True, all_captions=True)
    batch = ImageTextCollator(CharTokenizer(), all_captions=True)([ds[i] for i in range(4)])
    assert "image" not in batch and len(batch["captions"]) == 12
    assert batch["caption_image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_caption_sampling_is_deterministic_and_picklable():
    records, _ = read_records(DatasetSpec(path="synthetic", limit=30))
    ds = ImageTextDataset(records, DefaultImageTransform(8), caption_sampling="random_one", seed=1)
    epoch0 = [ds[(i, 0)]["caption"] for i in range(30)]
    epoch1 = [ds[(i, 1)]["caption"] for i in range(30)]
    assert epoch0 != epoch1
    clone = pickle.loads(pickle.dumps(ds))
    assert [clone[(i, 0)]["caption"] for i in range(30)] == epoch0
    ds.set_epoch(1)
    assert [ds[i]["caption"] for i in range(30)] == epoch1
    first = ImageTextDataset(records, DefaultImageTransform(8), caption_sampling="first")
    assert all(first[(i, e)]["caption"] == records[i].captions[0] for i in range(5) for e in range(3))
    item = ds[0]
    assert (
        item["image"].shape == (3, 8, 8)
        and item["captions"] == records[0].captions
        and item["key"] == records[0].key
    )
