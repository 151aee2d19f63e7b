"""Every entry point end to end on the tiny CLIP overlay (random 2-layer towers, synthetic images, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from clipforge.data.shards import read_shards
from clipforge.utils.hydra import compose
from clipforge.utils.runs import find_checkpoint
from tests.helpers.reference_metrics import checkpoint_recall

TINY = ["experiment=clip_demo", "debug=tiny_clip"]


def _env(tmp_path) -> dict:
    return {
        **os.environ,
        "CLIPFORGE_LOG_DIR": str(tmp_path / "logs"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests that read its outputs."""
    from clipforge.cli.train import train

    out = tmp_path_factory.mktemp("train_run")
    cfg = compose([*TINY, "trainer.max_epochs=2"], output_dir=str(out))
    metrics, objects = train(cfg)
    return out, metrics, objects


def test_train_writes_run_files_and_metrics(trained):
    out, metrics, objects = trained
    for name in ("config.yaml", "run.cli.yaml", "metrics.json", "checkpoints/last.ckpt"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert on_disk["val/retrieval/synthetic/num_images"] > 0
    assert on_disk["val/retrieval/synthetic/collapsed"] == 0.0  # the collapse guard reaches metrics.json
    # the final validation is the best checkpoint's: recomputed from its weights by a plain loop
    best = find_checkpoint(str(out), "best")
    expected = checkpoint_recall(
        objects["model"],
        best,
        objects["datamodule"].val_dataloader(),
        lambda m, b: (m.encode_image(b["image"]), m.encode_text(b["text"])),
        limit_batches=objects["trainer"].num_val_batches[0],
    )
    assert {k: on_disk[f"val/retrieval/synthetic/{k}"] for k in expected} == pytest.approx(expected)
    assert objects["trainer"].current_epoch == 2
    cli = yaml.safe_load((out / "run.cli.yaml").read_text())
    assert cli["model"]["class_path"] == "clipforge.tasks.shared.clip.CLIPModule"


def test_eval_reproduces_final_validation(trained, tmp_path):
    """clipforge-eval on the best checkpoint gives exactly the numbers train reported for it."""
    from clipforge.cli.eval import evaluate
    from clipforge.utils.runs import find_checkpoint

    out, metrics, _ = trained
    ckpt = find_checkpoint(str(out), "best")
    cfg = compose([*TINY, f"ckpt_path={ckpt}"], "eval", output_dir=str(tmp_path))
    again, _ = evaluate(cfg)
    keys = [k for k in metrics if k.startswith("val/retrieval/")]
    assert keys
    assert {k: again[k] for k in keys} == pytest.approx({k: metrics[k] for k in keys})


def test_load_run_rebuilds_the_checkpointed_model(trained):
    from clipforge.utils.runs import load_run

    out, _, objects = trained
    run = load_run(str(out), checkpoint="last")
    assert run.metrics and run.checkpoint.endswith("last.ckpt")
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    from clipforge.cli.train import train

    out, _, objects = trained
    steps = objects["trainer"].global_step
    cfg = compose(
        [*TINY, "trainer.max_epochs=3", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"],
        output_dir=str(tmp_path),
    )
    _, resumed = train(cfg)
    assert resumed["trainer"].current_epoch == 3
    assert resumed["trainer"].global_step == steps + steps // 2  # one more epoch of the same length


def test_last_checkpoint_is_the_latest_epoch_even_when_the_best_is_older(tmp_path):
    """last.ckpt (the resume point) follows every epoch, not only epochs that improve the monitored metric."""
    from clipforge.cli.train import train
    from clipforge.utils.runs import find_checkpoint

    cfg = compose(
        [
            *TINY,
            "trainer.max_epochs=3",
            "callbacks.model_checkpoint.monitor=epoch",
            "callbacks.model_checkpoint.mode=min",
        ],
        output_dir=str(tmp_path),
    )
    _, objects = train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == objects["trainer"].global_step and last["epoch"] == 2
    best = find_checkpoint(str(tmp_path), "best")
    assert os.path.basename(best) == "epoch_000.ckpt"  # the monitored callback's choice, read from last.ckpt


def test_generate_writes_embeddings_matching_the_model(trained, tmp_path):
    from clipforge.cli.generate import generate

    out, _, _ = trained
    cfg = compose(
        [
            *TINY,
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            "data.predict.path=synthetic",
            "+data.predict.limit=6",
            "callbacks.shard_writer.format=pt",
            "callbacks.shard_writer.merge_path=null",
        ],
        "generate",
        output_dir=str(tmp_path),
    )
    _, objects = generate(cfg)
    rows = read_shards(str(tmp_path / "shards"))
    assert not list((tmp_path / "shards").glob("*.tmp"))
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 6
    emb = torch.stack([r["image_embedding"] for r in rows])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))
    assert [len(r["captions"]) for r in rows] == [len(r["text_embedding"]) for r in rows]
    # the same model embeds the first batch's images and captions identically outside the writer
    model, dm = objects["model"], objects["datamodule"]
    dm.set_done_predict_shards(set())
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch["image"]), emb[: len(batch["key"])])
        first = (batch["caption_image_index"] == 0).nonzero().flatten()
        torch.testing.assert_close(model.encode_text(batch["text"])[first], rows[0]["text_embedding"])


def test_lightning_cli_fits_from_generated_yaml(trained, tmp_path):
    from clipforge.cli.lightning_cli import build_cli as cli_main

    out, _, _ = trained
    cfg = yaml.safe_load((out / "run.cli.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(tmp_path)
    cfg["trainer"]["max_epochs"] = 1
    cfg["trainer"]["callbacks"] = []  # the run's checkpoint dir is not ours to write
    path = tmp_path / "run.cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = cli_main(["fit", "--config", str(path)])
    assert cli.trainer.current_epoch == 1 and cli.trainer.global_step > 0


def test_bad_rows_are_recorded_and_training_goes_on(tmp_path):
    from PIL import Image

    from clipforge.cli.train import train

    img_dir = tmp_path / "img"
    img_dir.mkdir()
    rows = []
    for i in range(10):
        Image.new("RGB", (40, 40), (20 * i, 100, 200 - 10 * i)).save(img_dir / f"{i}.jpg")
        rows.append({"image": f"{i}.jpg", "caption": f"a picture number {i}"})
    (img_dir / "empty.jpg").write_bytes(b"")
    (img_dir / "text.jpg").write_text("not an image")
    rows += [
        {"image": "empty.jpg", "caption": "zero bytes"},
        {"image": "text.jpg", "caption": "a text file"},
        {"image": "missing.jpg", "caption": "gone"},
        {"image": "0.jpg", "caption": "   "},
    ]
    src = tmp_path / "pairs.json"
    src.write_text(json.dumps(rows))
    out = tmp_path / "run"
    cfg = compose(
        [
            *TINY,
            f"data.train.path={src}",
            f"data.train.image_root={img_dir}",
            "data.holdout_fraction=0",
            f"data.val.path={src}",
            f"data.val.image_root={img_dir}",
            "data.batch_size=13",
            "trainer.limit_train_batches=null",
        ],  # one batch = every row
        output_dir=str(out),
    )
    metrics, _ = train(cfg)
    lines = [json.loads(x) for x in (out / "data_errors.jsonl").read_text().splitlines()]
    found = {(x["split"], x["key"], x["reason"]) for x in lines}
    for split in ("train", "val"):
        assert (split, "empty", "zero_byte") in found
        assert (split, "text", "unreadable") in found
        assert (split, "missing", "missing_file") in found
    assert metrics["val/retrieval/pairs/num_images"] == 10  # every good image evaluated


def test_missing_data_file_is_one_clear_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "clipforge.cli.train", *TINY, "data.train.path=/no/such/file.json"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert r.returncode == 2
    assert "error: data.train.path: no such file: /no/such/file.json" in r.stderr
    assert "Traceback" not in r.stderr


def test_ddp_two_cpu_processes(trained, tmp_path):
    """A 2-process CPU DDP run: the global batch is twice the per-device one and metrics cover every image."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipforge.cli.train",
            *TINY,
            "trainer=ddp_sim",
            "trainer.devices=2",
            "data.batch_size=8",
            "hydra.run.dir=" + str(tmp_path / "run"),
            "logger=csv",
            "callbacks.lr_monitor=null",
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/global_batch_size"] == 8.0
    # 11 held-out images: a distributed sampler pads them to 12 across 2 ranks; each must count once, as in the
    # single-process run
    single = trained[1]["val/retrieval/synthetic/num_images"]
    assert single % 2 == 1
    assert metrics["val/retrieval/synthetic/num_images"] == single


def test_frozen_feature_cache_changes_nothing_but_speed(tmp_path):
    """Caching frozen-tower outputs (and skipping the decode of cached images) trains exactly like no cache."""
    from clipforge.cli.train import train

    heads = []
    for cache in (False, True):
        cfg = compose(
            [
                *TINY,
                "trainer.max_epochs=3",
                "trainer.limit_train_batches=null",
                "evaluate=false",
                "model.trainable.vision=frozen",
                "model.trainable.text=frozen",
                f"model.cache_frozen_features={str(cache).lower()}",
            ],
            output_dir=str(tmp_path / str(cache)),
        )
        _, objects = train(cfg)
        model = objects["model"]
        heads.append({k: v for k, v in model.state_dict().items() if "head" in k or "logit" in k})
        if cache:
            ds = objects["datamodule"].datasets["train"][0]
            assert ds.skip_image_keys  # later epochs did not decode the cached images
    assert heads[0].keys() == heads[1].keys()
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], rtol=1e-5, atol=1e-6)
