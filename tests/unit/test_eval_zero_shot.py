"""Zero-shot classifier construction (hand-built encoder, hand-computed weights) and top-k accuracy against
CLIP_benchmark's ``accuracy`` and a Python loop of the pessimistic tie rule."""

from __future__ import annotations

import math
import random

import pytest
import torch

from clipforge.eval.zero_shot import (
    build_zero_shot_classifier,
    imagenet_classnames,
    imagenet_templates,
    zero_shot_accuracy,
)

CLASSES = ["cat", "dog", "bird"]
# three templates, each leaving a recognisable marker in the prompt: a format string with "{}", a callable and a
# format string with "{c}"
TEMPLATES = ["a photo of a {}.", lambda c: f"a drawing of a {c}.", "{c}!"]


class HandEncoder:
    """Deterministic 'text tower': D = 3 class dims + 2 template dims, recording every call.

    photo   -> 2 e_class + 1 e_3   (norm sqrt 5)
    drawing -> 4 e_class + 3 e_4   (norm 5)
    "!"     -> 1 e_class           (norm 1)
    """

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        out = torch.zeros(len(prompts), 5)
        for row, prompt in enumerate(prompts):
            cls = next(i for i, name in enumerate(CLASSES) if name in prompt)
            if "photo" in prompt:
                out[row, cls], out[row, 3] = 2.0, 1.0
            elif "drawing" in prompt:
                out[row, cls], out[row, 4] = 4.0, 3.0
            else:
                out[row, cls] = 1.0
        return out


def _expected_column(cls: int, normalize: bool) -> torch.Tensor:
    if (
        normalize
    ):  # mean of unit vectors (2e_c + e_3)/sqrt5, (4e_c + 3e_4)/5, e_c; the 1/3 cancels in the renorm
        a, b, c = 2 / math.sqrt(5) + 4 / 5 + 1.0, 1 / math.sqrt(5), 3 / 5
    else:  # mean of raw vectors: (7 e_c + e_3 + 3 e_4) / 3
        a, b, c = 7.0, 1.0, 3.0
    col = torch.zeros(5)
    col[cls], col[3], col[4] = a, b, c
    return col / math.sqrt(a * a + b * b + c * c)


@pytest.mark.parametrize("normalize", [True, False])
def test_classifier_matches_hand_computation(normalize: bool) -> None:
    encoder = HandEncoder()
    weights = build_zero_shot_classifier(encoder, CLASSES, TEMPLATES, normalize=normalize)
    assert weights.shape == (5, 3) and weights.dtype == torch.float32
    expected = torch.stack([_expected_column(c, normalize) for c in range(3)], dim=1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))
    assert encoder.calls == [
        [
            "a photo of a cat.",
            "a drawing of a cat.",
            "cat!",
            "a photo of a dog.",
            "a drawing of a dog.",
            "dog!",
            "a photo of a bird.",
            "a drawing of a bird.",
            "bird!",
        ]
    ]


def test_classifier_batching_is_invisible() -> None:
    encoder = HandEncoder()
    batched = build_zero_shot_classifier(encoder, CLASSES, TEMPLATES, batch_size=4)
    assert [len(c) for c in encoder.calls] == [4, 4, 1]
    for size in (1, 2, 9, 256):
        torch.testing.assert_close(
            build_zero_shot_classifier(HandEncoder(), CLASSES, TEMPLATES, size), batched
        )


def test_classifier_validation() -> None:
    with pytest.raises(ValueError):
        build_zero_shot_classifier(HandEncoder(), [], TEMPLATES)
    with pytest.raises(ValueError):
        build_zero_shot_classifier(HandEncoder(), CLASSES, [])
    with pytest.raises(ValueError):
        build_zero_shot_classifier(lambda prompts: torch.zeros(1, 5), CLASSES, TEMPLATES)


def test_accuracy_on_hand_classifier() -> None:
    weights = build_zero_shot_classifier(HandEncoder(), CLASSES, TEMPLATES)
    images = torch.zeros(5, 5)
    images[0, 0] = images[1, 1] = images[2, 2] = 1.0  # a cat, a dog, a bird: logits peak at the right class
    images[3, 0] = 1.0  # looks like a cat, labelled dog: cat higher, bird ties dog -> rank 2 (ties count)
    images[4, 2], images[4, 0] = 1.0, 0.5  # bird-ish with some cat, labelled cat -> rank 1
    labels = torch.tensor([0, 1, 2, 1, 0])
    # top1: images 0-2 right, 3 and 4 wrong -> 3/5 = 60 %; top2: all but image 3 -> 80 %; top5 >= 3 classes -> 100
    assert zero_shot_accuracy(images, weights, labels, topk=(1, 2, 5)) == {
        "top1": 60.0,
        "top2": 80.0,
        "top5": 100.0,
    }


def test_accuracy_matches_topk_without_ties() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=-1)
    weights = torch.nn.functional.normalize(torch.randn(16, 10, generator=g), dim=0)
    labels = torch.randint(0, 10, (200,), generator=g)
    logits = images @ weights
    expected = {
        f"top{k}": 100.0 * int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()) / 200
        for k in (1, 3, 5)
    }
    assert zero_shot_accuracy(images, weights, labels, topk=(1, 3, 5), chunk_size=7) == expected
    assert zero_shot_accuracy(images.half(), weights, labels)["top1"] == pytest.approx(
        expected["top1"], abs=1.0
    )
    with pytest.raises(ValueError):
        zero_shot_accuracy(images, weights, torch.full((200,), 10))
    with pytest.raises(ValueError):
        zero_shot_accuracy(images, weights, labels, topk=(0,))


def test_accuracy_ties_count_against_the_true_class() -> None:
    images = torch.ones(2, 2)
    weights = torch.eye(2)  # both classes score 1 for every image
    assert zero_shot_accuracy(images, weights, torch.tensor([0, 1]), topk=(1, 2)) == {
        "top1": 0.0,
        "top2": 100.0,
    }


def test_collapsed_embeddings_score_zero() -> None:
    # collapsed image and text towers: every class ties -> top-k 0 for every k below the class count (chance k/C)
    images = torch.ones(50, 8) / 8**0.5
    classifier = torch.ones(8, 20) / 8**0.5
    labels = torch.arange(50) % 20
    assert zero_shot_accuracy(images, classifier, labels, topk=(1, 5, 10)) == {
        "top1": 0.0,
        "top5": 0.0,
        "top10": 0.0,
    }


def _loop_accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...]) -> dict[str, float]:
    """The pessimistic tie rule image by image: rank = other classes whose logit is not below the true one."""
    ranks = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        ranks.append(sum(1 for c, v in enumerate(row) if c != label and not v < row[label]))
    return {f"top{k}": 100.0 * sum(r < k for r in ranks) / len(ranks) for k in topk}


def test_integer_features_with_ties_match_the_loop_reference() -> None:
    rng = random.Random(0)
    for trial in range(60):
        g = torch.Generator().manual_seed(trial)
        n, dim, num_classes = rng.randint(1, 30), rng.choice([1, 2, 4]), rng.randint(1, 12)
        images = torch.randint(-2, 3, (n, dim), generator=g).float()
        weights = torch.randint(-2, 3, (dim, num_classes), generator=g).float()
        labels = torch.randint(0, num_classes, (n,), generator=g)
        got = zero_shot_accuracy(images, weights, labels, topk=(1, 2, 5), chunk_size=rng.choice([1, 7, 4096]))
        assert got == _loop_accuracy(images @ weights, labels, (1, 2, 5))


@pytest.mark.parametrize("seed", range(4))
def test_tie_free_features_equal_clip_benchmark(seed: int) -> None:
    # CLIP_benchmark's recall_at_k with one positive per row (the true class) is top-k accuracy; its own
    # zeroshot_classification.accuracy cannot run here (float() of a 1-element array fails under numpy 2.4)
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    g = torch.Generator().manual_seed(seed)
    classes = 10 + 7 * seed
    weights = torch.nn.functional.normalize(torch.randn(16, classes, generator=g), dim=0)
    labels = torch.randint(0, classes, (300,), generator=g)
    images = torch.nn.functional.normalize(torch.randn(300, 16, generator=g) + weights.T[labels], dim=-1)
    topk = (1, 3, 5)
    got = zero_shot_accuracy(images, weights, labels, topk=topk, chunk_size=64)
    positives = torch.nn.functional.one_hot(labels, classes).bool()
    for k in topk:
        hits = recall_at_k(images @ weights, positives, k) > 0
        assert got[f"top{k}"] == 100.0 * int(hits.sum()) / 300
    assert 0 < got["top1"] < 100


def test_imagenet_metadata() -> None:
    names = imagenet_classnames()
    assert len(names) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"] and names[-1] == "toilet paper"
    openai = imagenet_templates()
    assert len(openai) == 80 and len(imagenet_templates("simple")) == 7
    assert openai[0]("dog") == "a bad photo of a dog."
    assert imagenet_templates("simple")[0]("dog") == "itap of a dog."
    with pytest.raises(ValueError):
        imagenet_templates("clip")  # type: ignore[arg-type]
    weights = build_zero_shot_classifier(HandEncoder(), ["cat"], imagenet_templates("simple"))
    assert weights.shape == (5, 1)
