"""Zero-shot classification with LLM class-name embeddings: the feature builder, the classifier, both callbacks."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from clipforge.callbacks.llm_zero_shot import CachedClassZeroShotEval
from clipforge.callbacks.zero_shot import ZeroShotEval
from clipforge.cli.classnames import main
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.eval.llm_classnames import (
    build_class_features,
    classifier_from_features,
    load_class_features,
    save_class_features,
)
from clipforge.eval.zero_shot import build_zero_shot_classifier
from clipforge.losses import ClipLoss
from clipforge.models.llm_encoder import LLMEncoder, LLMEncoderSpec
from clipforge.models.vision import TimmVision
from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
from tests.helpers.tiny_hf import save_tiny_llm

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]


def _fake_encode(texts: list[str]) -> torch.Tensor:
    """Deterministic 4-d 'embeddings': character statistics of each prompt."""
    return torch.tensor(
        [[len(t), t.count("a"), t.count("o"), sum(map(ord, t)) % 7] for t in texts], dtype=torch.float
    )


def test_features_are_class_major_raw_embeddings():
    feats = build_class_features(_fake_encode, ["cat", "dog", "car"], TEMPLATES, batch_size=4)
    assert feats.shape == (3, 2, 4)
    torch.testing.assert_close(feats[1, 1], _fake_encode(["a blurry photo of the dog."])[0])


def test_classifier_is_adapter_l2_mean_l2():
    torch.manual_seed(0)
    project = torch.nn.Linear(4, 3)
    feats = build_class_features(_fake_encode, ["cat", "dog"], TEMPLATES)
    weights = classifier_from_features(feats, project)
    with torch.no_grad():  # hand-computed for class "dog"
        per_prompt = F.normalize(project(feats[1]), dim=-1)
        expected = F.normalize(per_prompt.mean(0), dim=-1)
    torch.testing.assert_close(weights[:, 1], expected)
    # the shared open_clip-style builder over "prompt -> encoder -> adapter" gives the same classifier
    shared = build_zero_shot_classifier(lambda p: project(_fake_encode(p)), ["cat", "dog"], TEMPLATES)
    torch.testing.assert_close(weights, shared)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> str:
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), "llama")


def _module(text=None) -> LLM2CLIPModule:
    torch.manual_seed(0)
    vision = TimmVision(
        "vit_tiny_patch16_224",
        image_size=16,
        model_args={"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    module = LLM2CLIPModule(
        vision, ClipLoss(), functools.partial(torch.optim.AdamW), text=text, embedding_dim=32, embed_dim=8
    )
    module.configure_model()
    return module.eval()


def test_cached_class_features_match_the_online_llm_classifier(tiny_llm, tmp_path):
    """ZeroShotEval through the module's LLM == CachedClassZeroShotEval from a file built by the CLI."""
    spec = LLMEncoderSpec(name_or_path=tiny_llm, max_length=32)
    online_module = _module(spec)
    cached_module = _module()
    cached_module.load_state_dict(online_module.state_dict())
    data = {"path": "demo", "split": "val", "val_fraction": 0.3}
    online = ZeroShotEval(data, templates=TEMPLATES).evaluate(online_module)

    classes = tmp_path / "classes.txt"
    records, _ = read_records(DatasetSpec(**data))
    labels = sorted({str(r.meta["label"]) for r in records})
    classes.write_text("\n".join(labels) + "\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    out = tmp_path / "demo_class_features.pt"
    assert (
        main(
            [
                "--encoder",
                tiny_llm,
                "--out",
                str(out),
                "--classnames",
                str(classes),
                "--templates",
                str(templates),
            ]
        )
        == 0
    )
    table = load_class_features(str(out))
    assert (
        table["features"].shape == (len(labels), 2, 32)
        and table["prompts"][0][0] == f"a photo of a {labels[0]}."
    )

    cached = CachedClassZeroShotEval(str(out), data, templates=TEMPLATES).evaluate(cached_module)
    assert cached == pytest.approx(online, abs=1e-9)
    assert set(cached) == {"top1", "top5"}


def test_missing_prompts_are_reported(tmp_path):
    path = save_class_features(str(tmp_path / "f.pt"), torch.zeros(1, 1, 32), ["cat"], ["a photo of a {}."])
    callback = CachedClassZeroShotEval(path, {"path": "demo", "split": "val", "val_fraction": 0.3})
    with pytest.raises(KeyError, match="not in the class-feature file"):
        callback.evaluate(_module())


def test_encoder_round_trip_of_save_and_load(tiny_llm, tmp_path):
    encoder = LLMEncoder.from_pretrained(tiny_llm)
    feats = build_class_features(encoder.encode, ["cat", "dog"], TEMPLATES)
    path = save_class_features(str(tmp_path / "f.pt"), feats, ["cat", "dog"], TEMPLATES, encoder=tiny_llm)
    table = load_class_features(path)
    torch.testing.assert_close(table["features"], feats)
    torch.testing.assert_close(table["features"][0, 0], encoder.encode(["a photo of a cat."])[0])
    with pytest.raises(ValueError, match="do not match"):
        save_class_features(str(tmp_path / "g.pt"), feats, ["cat"], TEMPLATES)
