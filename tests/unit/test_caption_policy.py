"""CaptionPolicy: normalisation, one-line errors per field, and the datamodule handing it to its datasets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from clipforge.data.caption_policy import FIELDS, CaptionPolicy, as_caption_policy
from clipforge.data.datamodule import ImageTextDataModule
from clipforge.data.dataset import ImageTextDataset
from clipforge.data.readers import read_records
from clipforge.data.shear import Shear
from clipforge.data.specs import DatasetSpec


def test_defaults_and_normalised_fields():
    assert as_caption_policy(None) == CaptionPolicy()
    assert dataclasses.asdict(CaptionPolicy()) == {
        "sampling": "random_one",
        "sources": None,
        "source_weights": None,
        "eval_sources": None,
        "shear": None,
        "rewrite_ratio": None,
        "remove_ratio": 0.0,
        "captions_per_image": 2,
    }
    policy = as_caption_policy(
        {
            "sources": "label_llm",
            "eval_sources": ("raw",),
            "source_weights": {"raw": 1, "dense": 3},
            "shear": {},
        }
    )
    assert policy.sources == ["label_llm"] and policy.eval_sources == ["raw"]
    assert policy.source_weights == {"raw": 1.0, "dense": 3.0}
    assert policy.shear == Shear()  # its fields' defaults: tokens, CLIP BPE
    assert as_caption_policy(policy) is policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.sampling = "first"


BAD = [
    (
        {"sampling": "bogus"},
        "CaptionPolicy.sampling='bogus' is not one of: random_one, first, raw_only, ext_only, all_pairs, "
        "multi_positive",
    ),
    ({"sources": []}, "CaptionPolicy.sources=[] names no source; give at least one, or null for all"),
    (
        {"eval_sources": []},
        "CaptionPolicy.eval_sources=[] names no source; give at least one, or null for all",
    ),
    ({"source_weights": {"raw": -1}}, "CaptionPolicy.source_weights.raw=-1 must be a number >= 0"),
    ({"source_weights": {"raw": "a"}}, "CaptionPolicy.source_weights.raw=a must be a number >= 0"),
    (
        {"source_weights": {"raw": 0, "dense": 0.0}},
        "CaptionPolicy.source_weights={'raw': 0, 'dense': 0.0}: at least one weight must be > 0",
    ),
    (
        {"source_weights": [0.5, 0.5]},
        "CaptionPolicy.source_weights=[0.5, 0.5] must map sources to weights ({raw: 0.5, dense: 0.5})",
    ),
    (
        {"sampling": "all_pairs", "source_weights": {"raw": 1}},
        "CaptionPolicy.source_weights applies to sampling random_one, raw_only, ext_only, not all_pairs",
    ),
    ({"shear": "words"}, "CaptionPolicy.shear='words' must be a Shear, its fields, or null"),
    ({"rewrite_ratio": 1.5}, "CaptionPolicy.rewrite_ratio=1.5 must be a number in [0, 1]"),
    (
        {"sampling": "raw_only", "rewrite_ratio": 0.5},
        "CaptionPolicy.rewrite_ratio=0.5 does nothing with sampling=raw_only (which fixes the sources); use "
        "random_one, first, all_pairs or multi_positive",
    ),
    ({"remove_ratio": 1.0}, "CaptionPolicy.remove_ratio=1.0 must be a number in [0, 1)"),
    ({"remove_ratio": -0.1}, "CaptionPolicy.remove_ratio=-0.1 must be a number in [0, 1)"),
    ({"remove_ratio": True}, "CaptionPolicy.remove_ratio=True must be a number in [0, 1)"),
    ({"captions_per_image": 0}, "CaptionPolicy.captions_per_image=0 must be a positive integer"),
    ({"captions_per_image": 2.0}, "CaptionPolicy.captions_per_image=2.0 must be a positive integer"),
    (
        {"caption_sampling": "first"},
        "CaptionPolicy: unknown field 'caption_sampling' (fields: " + ", ".join(FIELDS) + ")",
    ),
]


@pytest.mark.parametrize(("fields", "line"), BAD, ids=[json.dumps(b[0]) for b in BAD])
def test_bad_field_is_one_line_naming_it(fields, line):
    with pytest.raises(ValueError) as info:
        as_caption_policy(fields)
    assert str(info.value) == line and "\n" not in line
    with pytest.raises(ValueError):  # the datamodule refuses it when built, before reading anything
        ImageTextDataModule(caption_policy=fields)


def _table(tmp_path) -> str:
    rows = [
        {"key": f"k{i}", "caption": f"raw caption {i}", "dense": f"a long dense caption of image {i} here"}
        for i in range(24)
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "fields",
    [
        {"sampling": "raw_only", "remove_ratio": 0.5},
        {"rewrite_ratio": 0.5, "shear": {"unit": "words"}},
        {"source_weights": {"raw": 0.25, "dense": 0.75}},
        {"sampling": "multi_positive", "captions_per_image": 3},
        {"sampling": "all_pairs", "sources": ["dense"]},
    ],
    ids=["remove", "rewrite+shear", "dense_ratio", "multi_positive", "all_pairs"],
)
def test_datamodule_trains_on_what_the_dataset_gives_for_the_same_arguments(fields, tmp_path):
    """The reference: an ImageTextDataset built directly with the policy's values; evaluation keeps raw only."""
    path = _table(tmp_path)
    spec = {"path": path, "caption_fields": ["caption", "dense"], "text_only": True}
    dm = ImageTextDataModule(
        train=spec, val=spec, batch_size=4, seed=3, caption_policy={**fields, "eval_sources": ["raw"]}
    )
    dm.setup("fit")
    train, val = dm.datasets["train"][0], dm.datasets["val"][0]
    policy = CaptionPolicy(**fields)
    records, _ = read_records(DatasetSpec(**spec))
    reference = ImageTextDataset(
        records,
        caption_sampling=policy.sampling,
        seed=3,
        text_only=True,
        caption_sources=policy.sources,
        source_weights=policy.source_weights,
        shear=Shear(**fields["shear"]) if "shear" in fields else None,
        rewrite_ratio=policy.rewrite_ratio,
        remove_ratio=policy.remove_ratio,
        captions_per_image=policy.captions_per_image,
    )
    assert [r.key for r in train.records] == [r.key for r in reference.records]
    assert train.candidates == reference.candidates and len(train) == len(reference)
    for epoch in range(3):
        assert [
            train[(i, epoch)]["captions" if fields.get("sampling") == "multi_positive" else "caption"]
            for i in range(len(train))
        ] == [
            reference[(i, epoch)]["captions" if fields.get("sampling") == "multi_positive" else "caption"]
            for i in range(len(reference))
        ]
    assert all(val[i]["captions"] == [f"raw caption {val.records[i].key[1:]}"] for i in range(len(val)))
