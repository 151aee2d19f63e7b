"""SimCSE data: triplets from caption groups and short/long pairs, homogeneous global batches across ranks, the
triplet datamodule (held-out groups, tokenized queries with instructions)."""

from __future__ import annotations

import json

import pytest
import torch

from clipforge.data.caption_groups import CaptionGroup, read_caption_groups
from clipforge.data.caption_triplets import (
    CaptionTripletDataModule,
    CaptionTripletDataset,
    HomogeneousBatchSampler,
)
from clipforge.data.errors import DataConfigError
from clipforge.data.specs import DatasetSpec
from tests.helpers.tiny_hf import save_tiny_llm


def _coco(path, n: int, per_image: int = 3) -> str:
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(n)]
    anns = [
        {"id": per_image * i + j, "image_id": i, "caption": f"a cat number {i} take {j}"}
        for i in range(n)
        for j in range(per_image)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return str(path)


def _pairs(path, n: int) -> str:
    rows = [
        {"key": f"p{i}", "short": f"dog {i}", "long": f"a long description of dog {i} in a park"}
        for i in range(n)
    ]
    rows.append(
        {"key": "lonely", "short": "only short", "long": ""}
    )  # no long caption: an error, not a group
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_group_triplets_are_deterministic_per_epoch():
    groups = [CaptionGroup(str(i), [f"c{i}-{j}" for j in range(3)]) for i in range(6)]
    groups.append(CaptionGroup("single", ["only one"]))  # cannot give a positive: left out
    ds = CaptionTripletDataset(groups, seed=1, same_kind="find the same")
    assert len(ds) == 6
    for i in range(6):
        item = ds[(i, 0)]
        assert item["query"] != item["positive"]
        assert item["query"].split("-")[0] == item["positive"].split("-")[0] == f"c{item['key']}"
        assert not item["negative"].startswith(f"c{item['key']}-")
        assert item["instruction"] == "find the same"
        assert ds[(i, 0)] == item
    assert [ds[(i, 0)] for i in range(6)] != [ds[(i, 1)] for i in range(6)]


def test_pair_source_gives_directional_triplets(tmp_path):
    groups, errors = read_caption_groups(
        DatasetSpec(path=_pairs(tmp_path / "p.jsonl", 8), caption_fields=["short", "long"])
    )
    assert len(groups) == 8 and groups[0].short == "dog 0" and groups[0].long.startswith("a long")
    assert any(e.key == "lonely" for e in errors)
    ds = CaptionTripletDataset(groups, seed=0, short_to_long="s2l", long_to_short="l2s")
    seen = set()
    for i in range(8):
        for epoch in range(4):
            it = ds[(i, epoch)]
            g = groups[i]
            if it["instruction"] == "s2l":
                assert (it["query"], it["positive"]) == (g.short, g.long) and it["negative"].startswith(
                    "a long"
                )
            else:
                assert it["instruction"] == "l2s"
                assert (it["query"], it["positive"]) == (g.long, g.short) and it["negative"].startswith(
                    "dog "
                )
            assert it["negative"] not in (g.short, g.long)
            seen.add(it["instruction"])
    assert seen == {"s2l", "l2s"}


def test_homogeneous_batches_across_ranks():
    sizes = [10, 7]  # global batch 4: two batches of source 0, one of source 1, incomplete ones dropped
    full = HomogeneousBatchSampler(sizes, 4, num_replicas=1, rank=0, seed=0)
    batches = full.global_batches(0)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    for b in batches:
        assert len({i < 10 for i in b}) == 1  # a single source per batch
    assert len({i for b in batches for i in b}) == 12  # no row twice
    ranks = [list(HomogeneousBatchSampler(sizes, 4, 2, r, seed=0)) for r in range(2)]
    assert all(len(r) == 6 for r in ranks) and len(HomogeneousBatchSampler(sizes, 4, 2, 0)) == 6
    for k, b in enumerate(batches):  # each global batch = rank 0's slice + rank 1's slice
        assert [i for i, _ in ranks[0][2 * k : 2 * k + 2] + ranks[1][2 * k : 2 * k + 2]] == b
    full.set_epoch(1)
    assert [i for i, e in full] != [i for b in batches for i in b] and {e for _, e in full} == {1}
    with pytest.raises(DataConfigError):
        HomogeneousBatchSampler([3, 2], 4)


def test_datamodule_batches(tmp_path):
    from clipforge.models.llm_encoder import LLMEncoderSpec

    tok = LLMEncoderSpec(name_or_path=save_tiny_llm(tmp_path / "llm", "qwen2")).tokenizer()
    coco = {"path": _coco(tmp_path / "c.json", 24), "text_only": True}
    pairs = {"path": _pairs(tmp_path / "p.jsonl", 16), "caption_fields": ["short", "long"]}
    dm = CaptionTripletDataModule(train=[coco, pairs], batch_size=4, holdout_fraction=0.25, seed=0)
    dm.connect(tok)
    dm.setup("fit")
    assert dm.eval_names() == ["c", "p"]
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for b in batches:
        assert len(set(b["source"])) == 1 and len(b["key"]) == 4
        for part in ("query", "positive", "negative"):
            assert b[part]["input_ids"].shape[0] == 4 and "embed_mask" in b[part]
        if b["source"][0] == 1:  # pairs: queries carry an instruction, so the span is shorter than the text
            q = b["query"]
            assert bool((q["embed_mask"].sum(1) < q["attention_mask"].sum(1)).all())
    val = dm.val_dataloader()
    assert isinstance(val, list) and len(val) == 2
    vb = next(iter(val[0]))
    assert len(vb["captions"]) == 3 * len(vb["key"]) and vb["caption_group"].tolist()[:3] == [0, 0, 0]
    train_keys = {g.key for g in dm.read_groups("train")[0]}
    assert not train_keys & {g.key for g in dm.read_groups("val")[0]}
    assert torch.is_tensor(vb["text"]["embed_mask"])
