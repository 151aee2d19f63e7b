"""llm2clip_s2_demo end to end on the tiny overlay: the caption-embedding job writes the cache, stage 2 trains from it,
and training from the cache equals training with the same frozen encoder online; clipforge-eval reproduces it."""

from __future__ import annotations

import pytest
import torch

from clipforge.utils.hydra import compose

pytestmark = pytest.mark.slow  # an embedding job, two trainings and an evaluation: ~1 min on 2 idle cores

TINY = ["experiment=llm2clip_s2_demo", "debug=tiny_llm2clip_s2_demo"]
FULL_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=null", "trainer.limit_val_batches=null"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """Caption embeddings of the synthetic training source by the embedding job (same tiny encoder, fp32)."""
    from clipforge.cli.generate import generate

    out = tmp_path_factory.mktemp("embed")
    cfg = compose(
        [
            "experiment=llm2clip_embed_demo",
            "debug=tiny_llm2clip_embed_demo",
            "data.predict.limit=32",
            "callbacks.shard_writer.dtype=float32",
        ],
        "generate",
        output_dir=str(out),
    )
    generate(cfg)
    return str(out / "shards")


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory) -> dict:
    from clipforge.cli.train import train

    out = {}
    for source, extra in (("cache", [f"data.train.text_embeddings={cache}"]), ("online", [])):
        run_dir = tmp_path_factory.mktemp(f"train_{source}")
        cfg = compose([*TINY, *FULL_EPOCHS, f"model.text_source={source}", *extra], output_dir=str(run_dir))
        metrics, objects = train(cfg)
        out[source] = (run_dir, metrics, objects)
    return out


def test_training_from_the_cache_equals_training_online(runs):
    (_, cached, obj_c), (_, online, obj_o) = runs["cache"], runs["online"]
    assert obj_c["trainer"].global_step == obj_o["trainer"].global_step > 0
    keys = [k for k in online if k.startswith("val/retrieval/")]
    assert keys and cached["val/retrieval/synthetic/num_images"] > 0
    assert {k: cached[k] for k in keys} == pytest.approx({k: online[k] for k in keys}, abs=1e-6)
    state_c, state_o = obj_c["model"].state_dict(), obj_o["model"].state_dict()
    for k in state_o:
        torch.testing.assert_close(state_c[k], state_o[k], rtol=1e-4, atol=1e-5)
    # the frozen LLM is not in checkpoints, only the vision tower, its head, the adapter and the loss scale
    ckpt = torch.load(runs["cache"][0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"vision_tower", "vision_head", "adapter", "loss"}


def test_eval_of_the_best_checkpoint_reproduces_validation(runs, cache, tmp_path):
    from clipforge.cli.eval import evaluate
    from clipforge.utils.runs import find_checkpoint

    run_dir, metrics, _ = runs["cache"]
    cfg = compose(
        [
            *TINY,
            "model.text_source=cache",
            f"data.train.text_embeddings={cache}",
            f"ckpt_path={find_checkpoint(str(run_dir), 'best')}",
            "trainer.limit_val_batches=null",
        ],
        "eval",
        output_dir=str(tmp_path),
    )
    again, _ = evaluate(cfg)
    keys = [k for k in metrics if k.startswith("val/retrieval/")]
    assert {k: again[k] for k in keys} == pytest.approx({k: metrics[k] for k in keys})
