"""Caption sources and sampling modes (recap's raw + extended captions, LLM2CLIP's dense ratio), multi-positive
InfoNCE against a naive loop, and the join of cached caption embeddings by key."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch

from clipforge.data.dataset import ImageTextDataset
from clipforge.data.readers import read_records
from clipforge.data.records import Record
from clipforge.data.shear import Shear
from clipforge.data.specs import DatasetSpec
from clipforge.losses.clip import ClipLoss


def _records(n: int = 40) -> list[Record]:
    return [
        Record(
            f"k{i}",
            None,
            [f"raw {i}", f"label llm caption number {i} that is long", f"mini llava says {i} too"],
            {},
            ["raw", "label_llm", "mini_llava"],
        )
        for i in range(n)
    ]


def _ds(sampling="random_one", **kw) -> ImageTextDataset:
    return ImageTextDataset(_records(), caption_sampling=sampling, text_only=True, **kw)


def test_table_columns_become_caption_sources(tmp_path):
    rows = [{"key": "a", "caption": "a cat", "label_llm": "a tabby cat on a mat", "mini_llava": ""}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(
        str(tmp_path / "t.jsonl"), caption_fields=["caption", "label_llm", "mini_llava"], text_only=True
    )
    records, errors = read_records(spec)
    assert records[0].captions == ["a cat", "a tabby cat on a mat"]
    assert records[0].sources == ["raw", "label_llm"]
    assert [e.reason for e in errors] == ["empty_caption"]


def test_random_one_draws_every_source_and_shears_extended_ones():
    ds = _ds(shear=Shear(unit="words"))
    seen = collections.Counter(ds[(0, epoch)]["caption"] for epoch in range(300))
    assert set(seen) == {"raw 0", "label llm", "mini llava"}  # extended captions cut to 2 words
    assert all(60 < n < 140 for n in seen.values())
    assert ds[(0, 5)]["caption"] == ds[(0, 5)]["caption"]  # deterministic per (seed, epoch, index)


@pytest.mark.parametrize(
    "sampling,sources,allowed",
    [
        ("raw_only", None, {"raw 3"}),
        ("ext_only", None, {"label llm caption number 3 that is long", "mini llava says 3 too"}),
        ("random_one", ["raw", "mini_llava"], {"raw 3", "mini llava says 3 too"}),
    ],
)
def test_source_filters(sampling, sources, allowed):
    ds = _ds(sampling, caption_sources=sources)
    assert {ds[(3, e)]["caption"] for e in range(100)} == allowed


def test_all_pairs_sees_every_caption_once_per_epoch():
    ds = _ds("all_pairs")
    assert len(ds) == 40 * 3
    items = [(ds[i]["key"], ds[i]["caption"]) for i in range(len(ds))]
    assert len(set(items)) == len(items)


def test_source_weights_set_the_dense_ratio():
    ds = _ds(source_weights={"raw": 0.25, "label_llm": 0.75})
    counts = collections.Counter(
        "raw" if ds[(i, e)]["caption"].startswith("raw") else "ext" for i in range(40) for e in range(50)
    )
    assert counts["raw"] / 2000 == pytest.approx(0.25, abs=0.03)
    assert not any(ds[(i, 0)]["caption"].startswith("mini") for i in range(40))  # weight 0


def test_rewrite_and_remove_ratios_pick_images_by_key():
    keep_all = _ds(rewrite_ratio=0.0)
    assert all(keep_all[(i, e)]["caption"].startswith("raw") for i in range(40) for e in range(3))
    half = _ds(rewrite_ratio=0.5)
    rewritten = {half.records[i].key for i in range(40) if not half[(i, 0)]["caption"].startswith("raw")}
    assert 10 <= len(rewritten) <= 30
    assert rewritten == {
        half.records[i].key for i in range(40) if not half[(i, 7)]["caption"].startswith("raw")
    }
    removed = _ds(remove_ratio=0.5)
    assert 10 <= len(removed) <= 30
    assert {r.key for r in removed.records} == {r.key for r in _ds(remove_ratio=0.5, seed=0).records}


def test_multi_positive_items_and_collate():
    from clipforge.data.collate import ImageTextCollator

    ds = _ds("multi_positive", captions_per_image=3)
    item = ds[(0, 0)]
    assert sorted(item["captions"]) == sorted(_records(1)[0].captions)
    batch = ImageTextCollator(all_captions=True)([ds[(i, 0)] for i in range(4)])
    assert batch["caption_image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def _naive_multi_positive(img, txt, scale, m):
    n, losses_i, losses_t = img.shape[0], [], []
    for i in range(n):
        logits = [scale * float(img[i] @ t) for t in txt]
        pos = math.log(sum(math.exp(logits[j]) for j in range(i * m, i * m + m)))
        losses_i.append(math.log(sum(math.exp(v) for v in logits)) - pos)
    for j in range(txt.shape[0]):
        logits = [scale * float(txt[j] @ im) for im in img]
        losses_t.append(math.log(sum(math.exp(v) for v in logits)) - logits[j // m])
    return (sum(losses_i) / n + sum(losses_t) / len(losses_t)) / 2


@pytest.mark.parametrize("m", [1, 3])
def test_multi_positive_infonce_matches_a_naive_loop(m):
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5 * m, 8, dtype=torch.float64), dim=-1)
    loss = ClipLoss(init_logit_scale=math.log(10))
    got = loss(img, txt)["contrastive_loss"].item()
    assert got == pytest.approx(_naive_multi_positive(img, txt, 10.0, m), rel=1e-9)
    with pytest.raises(ValueError, match="need m per image"):
        loss(img, txt[:-1]) if m > 1 else loss(img, txt[:3])


def test_cached_text_embeddings_join_by_key_and_caption(tmp_path):
    from clipforge.data.embeddings import join_text_embeddings
    from clipforge.data.shards import write_shard

    records = _records(3)
    emb = {r.key: torch.randn(len(r.captions), 4) for r in records}
    rows = [{"key": r.key, "captions": r.captions, "text_embedding": emb[r.key]} for r in records[:2]]
    rows[1]["captions"] = rows[1]["captions"][:2]  # one caption of k1 has no embedding
    rows[1]["text_embedding"] = emb["k1"][:2]
    write_shard(rows, str(tmp_path / "shard-00000.pt"), "pt", torch.float32)
    joined, errors, table = join_text_embeddings(records, str(tmp_path))
    assert [r.key for r in joined] == ["k0", "k1"] and len(joined[1].captions) == 2
    assert sorted((e.key, e.reason) for e in errors) == [
        ("k1", "missing_text_embedding"),
        *[("k2", "missing_text_embedding")] * 3,
    ]
    assert records[1].captions == _records(3)[1].captions  # the input records are not changed
    ds = ImageTextDataset(joined, text_only=True, text_embeddings=table)
    for epoch in range(10):
        item = ds[(1, epoch)]
        i = joined[1].captions.index(item["caption"])
        torch.testing.assert_close(item["text_embedding"], emb["k1"][i])
    evald = ImageTextDataset(joined, text_only=True, all_captions=True, text_embeddings=table)
    torch.testing.assert_close(evald[0]["text_embedding"], emb["k0"])


@pytest.mark.parametrize("sampling", ["multi_positive", "all_pairs"])
def test_clip_trains_with_each_sampling_mode(sampling, tmp_path):
    from clipforge.cli.train import train
    from clipforge.utils.hydra import compose

    cfg = compose(
        [
            "experiment=clip_demo",
            "debug=tiny_clip",
            f"data.caption_policy.sampling={sampling}",
            "data/shear=words",
        ],
        output_dir=str(tmp_path),
    )
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["train/contrastive_loss"])
    batch = next(iter(objects["datamodule"].train_dataloader()))
    if sampling == "multi_positive":
        assert len(batch["captions"]) == 2 * len(batch["key"]) == batch["text"]["input_ids"].shape[0]
    else:
        assert len(objects["datamodule"].datasets["train"][0]) == 3 * len(
            objects["datamodule"].datasets["train"][0].records
        )
