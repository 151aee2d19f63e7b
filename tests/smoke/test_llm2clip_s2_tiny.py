"""llm2clip_s2_demo's tiny overlay through clipforge-train: fit, validate, checkpoint without the frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch

from clipforge.utils.hydra import compose
from clipforge.utils.runs import find_checkpoint
from tests.helpers.reference_metrics import checkpoint_recall


def test_tiny_llm2clip_s2_demo_trains_and_checkpoints_without_the_llm(tmp_path):
    from clipforge.cli.train import train

    cfg = compose(["experiment=llm2clip_s2_demo", "debug=tiny_llm2clip_s2_demo"], output_dir=str(tmp_path))
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["val/retrieval/synthetic/num_images"] > 0
    assert on_disk["val/retrieval/synthetic/collapsed"] == 0.0
    # the best checkpoint's numbers, recomputed from its weights (the frozen encoder stays the run's) by a loop
    expected = checkpoint_recall(
        objects["model"],
        find_checkpoint(str(tmp_path), "best"),
        objects["datamodule"].val_dataloader(),
        lambda m, b: (m.encode_image(b["image"]), m.encode_text(b["text"])),
        limit_batches=objects["trainer"].num_val_batches[0],
    )
    assert {k: on_disk[f"val/retrieval/synthetic/{k}"] for k in expected} == pytest.approx(expected)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert {k.split(".")[0] for k in state} == {"vision_tower", "vision_head", "adapter", "loss"}
    model = objects["model"]
    assert model.text_encoder() is not None and not any("text" in k for k in model.state_dict())
