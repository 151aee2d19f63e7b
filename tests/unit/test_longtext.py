"""Long-caption benchmarks: ShareGPT4V-1k / Urban-1k / DOCCI file layouts, R@k (ties count against), callback."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.cli.longtext import main
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.eval.longtext import (
    LongTextEval,
    longtext_metrics,
    read_longtext,
    write_jsonl,
)
from clipforge.losses import ClipLoss
from clipforge.models.vision import TimmVision
from clipforge.tasks.llm2clip.clip import LLM2CLIPModule


def _image(path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 24), (shade, 255 - shade, 90)).save(path)


@pytest.fixture
def sharegpt4v(tmp_path):
    items = []
    for i in range(5):
        _image(tmp_path / "coco" / "train2017" / f"{i:012d}.jpg", 40 * i)
        conv = [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": f"long {i}"},
        ]
        items.append({"id": f"id{i}", "image": f"coco/train2017/{i:012d}.jpg", "conversations": conv})
    path = tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"
    path.write_text(json.dumps(items))
    return path


def test_sharegpt4v_first_entries_gpt_turn(sharegpt4v):
    records = read_longtext("sharegpt4v", str(sharegpt4v), limit=3)
    assert [r.key for r in records] == ["id0", "id1", "id2"]
    assert [r.captions for r in records] == [["long 0"], ["long 1"], ["long 2"]]
    assert records[2].image == str(sharegpt4v.parent / "coco" / "train2017" / "000000000002.jpg")
    assert len(read_longtext("sharegpt4v", str(sharegpt4v))) == 5  # the default 1000 keeps all five


def test_urban1k_first_line_numeric_order(tmp_path):
    root = tmp_path / "Urban1k"
    for n in (1, 2, 10):
        _image(root / "image" / f"{n}.jpg", n)
        (root / "caption").mkdir(exist_ok=True)
        (root / "caption" / f"{n}.txt").write_text(f"caption of {n}\nsecond line is not used\n")
    records = read_longtext("urban1k", str(root))
    assert [r.key for r in records] == ["1", "2", "10"]
    assert records[2].captions == ["caption of 10"]
    assert records[0].image == str(root / "image" / "1.jpg")


def test_docci_test_split_only(tmp_path):
    rows = [
        {"example_id": "test_01", "split": "test", "image_file": "test_01.jpg", "description": "a red door"},
        {"example_id": "train_01", "split": "train", "image_file": "train_01.jpg", "description": "a cat"},
        {"example_id": "test_02", "split": "test", "image_file": "test_02.jpg", "description": "two chairs"},
        {"example_id": "qual_01", "split": "qual_test", "image_file": "qual_01.jpg", "description": "x"},
    ]
    path = tmp_path / "docci_descriptions.jsonlines"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_longtext("docci", str(path))
    assert [(r.key, r.captions[0]) for r in records] == [("test_01", "a red door"), ("test_02", "two chairs")]
    assert records[0].image == str(tmp_path / "images" / "test_01.jpg")
    with pytest.raises(ValueError, match="unknown long-caption layout"):
        read_longtext("flickr", str(path))


def test_r1_hand_computed_with_ties():
    # rows: captions 0..2 vs images 0..2 (t2i); images 0 and 1 are identical, and so are captions 0 and 1
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    m = longtext_metrics(img, txt, ks=(1, 2))
    # t2i: captions 0 and 1 score 1.0 with both images 0 and 1 -> each positive is tied by the other image
    # (rank 1: a miss at R@1, where LLM2CLIP's argmax would credit caption 0 for coming first); caption 2 -> image
    # 2 scores 0.8 > 0.6 (hit)
    assert m["t2i_R@1"] == pytest.approx(100 / 3)
    assert m["t2i_R@2"] == 100.0
    # i2t: images 0 and 1 tie on captions 0 and 1 (rank 1 each); image 2 -> caption 2 (hit)
    assert m["i2t_R@1"] == pytest.approx(100 / 3)
    assert m["i2t_R@2"] == 100.0
    with pytest.raises(ValueError, match="one caption per image"):
        longtext_metrics(img, txt[:2])


def test_collapsed_embeddings_score_zero():
    # every embedding equal: every pair is tied by every other -> 0 at every k < N (argmax R@1 would give 1/N,
    # the old strictly-greater R@k 100)
    img = torch.ones(60, 8) / 8**0.5
    m = longtext_metrics(img, img.clone(), ks=(1, 5, 10, 25, 50), chunk_size=16)
    assert all(v == 0.0 for v in m.values())


def _loop_r_at_k(img: torch.Tensor, txt: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Pair i = (image i, caption i); rank = other gallery rows whose score is not below the pair's (float64)."""
    out = {}
    scores = (img.double() @ txt.double().T).tolist()
    n = len(scores)
    for name, score in (("i2t", lambda q, g: scores[q][g]), ("t2i", lambda q, g: scores[g][q])):
        ranks = [sum(1 for g in range(n) if g != q and not score(q, g) < score(q, q)) for q in range(n)]
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * sum(r < k for r in ranks) / n
    return out


def test_integer_features_with_ties_match_the_loop_reference():
    for trial in range(40):
        g = torch.Generator().manual_seed(trial)
        n = 1 + trial % 17
        img = torch.randint(-2, 3, (n, 3), generator=g).float()
        txt = torch.randint(-2, 3, (n, 3), generator=g).float()
        ks = (1, 2, 5)
        assert longtext_metrics(img, txt, ks=ks, chunk_size=1 + trial % 4) == _loop_r_at_k(img, txt, ks)


def test_argmax_matches_the_official_loop():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(40, 8), dim=-1), F.normalize(torch.randn(40, 8), dim=-1)
    official_t2i = sum(int(torch.argmax(txt[i] @ img.T)) == i for i in range(40)) / 40
    official_i2t_r5 = sum(i in torch.topk(img[i] @ txt.T, 5).indices for i in range(40)) / 40
    m = longtext_metrics(img, txt, chunk_size=7)
    assert m["t2i_R@1"] == pytest.approx(100 * official_t2i)
    assert m["i2t_R@5"] == pytest.approx(100 * official_i2t_r5)


def test_jsonl_export_reads_back_through_the_data_layer(sharegpt4v, tmp_path):
    records = read_longtext("sharegpt4v", str(sharegpt4v))
    out = write_jsonl(records, str(tmp_path / "sharegpt4v_1k.jsonl"))
    back, errors = read_records(DatasetSpec(path=out))
    assert not errors
    assert [(r.key, r.captions, r.image) for r in back] == [(r.key, r.captions, r.image) for r in records]
    assert main(["sharegpt4v", str(sharegpt4v), str(tmp_path / "cli.jsonl"), "--limit", "2"]) == 0
    assert len((tmp_path / "cli.jsonl").read_text().splitlines()) == 2


def _module() -> LLM2CLIPModule:
    torch.manual_seed(0)
    vision = TimmVision(
        "vit_tiny_patch16_224",
        image_size=16,
        model_args={"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    module = LLM2CLIPModule(
        vision, ClipLoss(), functools.partial(torch.optim.AdamW), embedding_dim=6, embed_dim=8
    )
    module.configure_model()
    return module.eval()


def test_callback_with_cached_caption_embeddings(sharegpt4v, tmp_path):
    records = read_longtext("sharegpt4v", str(sharegpt4v))
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.manual_seed(3)
    embeddings = torch.randn(len(records), 6)
    rows = [
        {"key": r.key, "captions": r.captions, "text_embedding": e[None]} for r, e in zip(records, embeddings)
    ]
    torch.save(rows, cache / "shard-00000.pt")  # the caption-embedding job's shard format
    module = _module()
    callback = LongTextEval("sharegpt4v", str(sharegpt4v), text_embeddings=str(cache), batch_size=2)
    metrics = callback.evaluate(module)
    transform = module.image_transform(False)
    with torch.no_grad():
        img = module.encode_image(
            torch.stack([transform(Image.open(r.image).convert("RGB")) for r in records])
        )
        txt = module.encode_embedding(embeddings)
    assert metrics == pytest.approx(longtext_metrics(img, txt))
    assert set(metrics) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10, 25, 50)}


def test_callback_through_the_module_text_encoder(sharegpt4v, tmp_path):
    from clipforge.models.llm_encoder import LLMEncoderSpec
    from tests.helpers.tiny_hf import save_tiny_llm

    spec = LLMEncoderSpec(name_or_path=save_tiny_llm(tmp_path / "llm", "llama"), max_length=32)
    torch.manual_seed(0)
    vision = TimmVision(
        "vit_tiny_patch16_224",
        image_size=16,
        model_args={"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    module = LLM2CLIPModule(vision, ClipLoss(), functools.partial(torch.optim.AdamW), text=spec, embed_dim=8)
    module.configure_model()
    module.eval()
    records = read_longtext("sharegpt4v", str(sharegpt4v))
    metrics = LongTextEval("sharegpt4v", str(sharegpt4v), batch_size=3).evaluate(module)
    transform = module.image_transform(False)
    with torch.no_grad():
        img = module.encode_image(
            torch.stack([transform(Image.open(r.image).convert("RGB")) for r in records])
        )
        txt = module.encode_text(module.tokenizer([r.captions[0] for r in records]))
    assert metrics == pytest.approx(longtext_metrics(img, txt), abs=1e-9)
