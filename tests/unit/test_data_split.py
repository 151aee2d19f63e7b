"""Deterministic split by key: stable across spec objects and machines, disjoint, complete, honours the fraction."""

from __future__ import annotations

import dataclasses
import json

import pytest

from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.data.split import key_fraction, side_of
from tests.helpers.shared_data import COCO_TEXT, require


def test_key_fraction_is_a_fixed_function():
    # golden values: sha1("0:790") -> these numbers on every machine and Python version
    assert key_fraction("790", 0) == pytest.approx(0.2595815982204605, abs=1e-15)
    assert key_fraction("790", 1) == pytest.approx(0.606925253250497, abs=1e-15)
    assert side_of("790", DatasetSpec(val_fraction=0.3)) == "val"
    assert side_of("790", DatasetSpec(val_fraction=0.25)) == "train"


def _keys(spec: DatasetSpec) -> list[str]:
    return [r.key for r in read_records(spec)[0]]


def test_split_on_synthetic_rows():
    base = dict(path="synthetic", limit=500, val_fraction=0.2, split_seed=3)
    val = _keys(DatasetSpec(**base, split="val"))
    train = _keys(DatasetSpec(**base, split="train"))
    assert not set(val) & set(train) and len(val) + len(train) == 500
    assert val == _keys(DatasetSpec(**base, split="val"))  # a second spec object gives the same keys
    assert val == [k for k in _keys(DatasetSpec(path="synthetic", limit=500)) if key_fraction(k, 3) < 0.2]
    other_seed = _keys(DatasetSpec(**{**base, "split_seed": 4}, split="val"))
    assert other_seed != val


def test_explicit_val_keys():
    spec = DatasetSpec(
        path="synthetic", limit=10, split="val", val_keys=["synthetic_00002", "synthetic_00007"]
    )
    assert _keys(spec) == ["synthetic_00002", "synthetic_00007"]
    train = _keys(dataclasses.replace(spec, split="train"))
    assert len(train) == 8 and "synthetic_00002" not in train


def test_limit_applies_after_split(tmp_path):
    rows = [{"image": f"{i:03d}.jpg", "caption": f"caption {i}"} for i in range(50)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    base = dict(path=str(tmp_path / "d.json"), split="train", val_fraction=0.5)
    train = _keys(DatasetSpec(**base))
    assert 10 < len(train) < 40
    assert _keys(DatasetSpec(**base, limit=5)) == train[:5]


def test_split_on_4000_text_groups():
    base = dict(path=str(require(*COCO_TEXT)), text_only=True, val_fraction=0.1, split_seed=0)
    val = _keys(DatasetSpec(**base, split="val"))
    train = _keys(DatasetSpec(**base, split="train"))
    everything = _keys(DatasetSpec(**base))
    assert len(everything) == 4000
    assert not set(val) & set(train) and sorted(val + train) == sorted(everything)
    # the naive rule (sha1 of "seed:key" below the fraction), in source order; 395 of the 4,000 images
    assert val == [k for k in everything if key_fraction(k, 0) < 0.1]
    assert len(val) == 395 and val[:3] == ["285", "2153", "6012"]
    assert val == _keys(DatasetSpec(**base, split="val"))


def test_k_fold_split_holds_every_key_out_once():
    base = dict(path="synthetic", limit=300, split_seed=2, num_folds=4)
    everything = _keys(DatasetSpec(path="synthetic", limit=300))
    folds = [_keys(DatasetSpec(**base, fold=f, split="val")) for f in range(4)]
    held = [k for fold in folds for k in fold]
    assert sorted(held) == sorted(everything)  # each key in exactly one fold
    for f in range(4):
        train = _keys(DatasetSpec(**base, fold=f, split="train"))
        assert sorted(train + folds[f]) == sorted(everything) and not set(train) & set(folds[f])
        # the naive rule: fold = floor(4 * hash)
        assert folds[f] == [k for k in everything if int(key_fraction(k, 2) * 4) == f]
    assert all(50 <= len(f) <= 100 for f in folds)
    assert side_of(folds[1][0], DatasetSpec(num_folds=4, fold=1, split_seed=2)) == "val"


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_folds=1), dict(num_folds=-2), dict(num_folds=3, fold=3), dict(num_folds=3, val_keys=["a"])],
)
def test_k_fold_arguments_are_checked(kwargs):
    with pytest.raises(ValueError):
        DatasetSpec(**kwargs)
