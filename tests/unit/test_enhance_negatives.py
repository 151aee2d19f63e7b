"""Offline negatives (hand-checked edits and grades) and the SFT formatter's targets."""

from __future__ import annotations

import json
import pickle
import random

import pytest

from clipforge.tasks.enhance.formatter import AITQEFormatter
from clipforge.tasks.enhance.negatives import KINDS, NegativeGenerator, coco_labels
from clipforge.tasks.enhance.parse import parse_output

CAPTIONS = ["Two men walking a brown dog on the beach.", "People and a dog near the sea.", "A dog on sand."]


@pytest.fixture()
def files(tmp_path):
    instances = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 53, "name": "pizza"}],
        "annotations": [
            {"image_id": 1, "category_id": 18, "id": 1},
            {"image_id": 1, "category_id": 1, "id": 2},
            {"image_id": 1, "category_id": 1, "id": 3},
            {"image_id": 2, "category_id": 53, "id": 4},
            {"image_id": 3, "category_id": 18, "id": 5},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    rows = [
        {"key": "1", "image": "1.jpg", "caption": CAPTIONS[0]},
        {"key": "2", "image": "2.jpg", "caption": "A pizza with olives on a plate."},
        {"key": "3", "image": "3.jpg", "caption": "A puppy sleeping on a dog bed."},
    ]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "instances.json"), {"path": str(tmp_path / "pool.jsonl"), "text_only": True}


@pytest.fixture()
def gen(files):
    return NegativeGenerator(files[0], files[1])


def test_coco_labels_most_frequent_first(files):
    assert coco_labels(files[0]) == {"1": ["person", "dog"], "2": ["pizza"], "3": ["dog"]}


def _neg(gen, kind, caption=CAPTIONS[0], seed=0, meta=None):
    return gen.negative("1", caption, CAPTIONS, meta or {"image_id": 1}, random.Random(seed), kind=kind)


def test_swap_object_replaces_a_present_object_with_an_absent_one(gen):
    for seed in range(20):
        a = _neg(gen, "swap_object", seed=seed)
        removed = set(CAPTIONS[0].split()) - set(a.caption.split())
        added = set(a.caption.split()) - set(CAPTIONS[0].split())
        assert removed in ({"men"}, {"dog"}), a.caption  # one present object is gone ...
        assert added and not added & {"dog", "dogs", "men", "man", "people"}, (
            a.caption
        )  # ... for an absent one
        assert a.caption != CAPTIONS[0] and a.overall == 3 and a.scores["image_text_matching"] == 2
        assert a.recaption in CAPTIONS  # low quality: rewritten to a true caption of the image


def test_swap_object_fixes_the_article_and_keeps_number():
    g = NegativeGenerator()
    for seed in range(30):
        a = g.negative("k", "An apple and a cat", [], {}, random.Random(seed), kind="swap_object")
        words = a.caption.split()
        for i, w in enumerate(words[:-1]):
            if w.lower() in ("a", "an"):
                assert w.lower() == ("an" if words[i + 1][0].lower() in "aeiou" else "a"), a.caption
    a = g.negative(
        "k", "Two men near a bus", [], {"labels": ["person"]}, random.Random(0), kind="swap_object"
    )
    assert (
        a.caption.startswith("Two ") and a.caption.split()[1] != "men" and a.caption.split()[1].endswith("s")
    )


def test_swap_attribute_changes_one_attribute_word(gen):
    a = _neg(gen, "swap_attribute")
    diff = [(o, w) for o, w in zip(CAPTIONS[0].split(), a.caption.split()) if o != w]
    assert len(diff) == 1 and diff[0][0] in ("Two", "brown") and a.overall == 5


def test_truncate_shuffle_generic_other_image(gen):
    t = _neg(gen, "truncate")
    assert CAPTIONS[0].startswith(t.caption) and len(t.caption.split()) <= 4 and t.overall in (3, 4)
    s = _neg(gen, "shuffle")
    assert sorted(s.caption.split()) == sorted(CAPTIONS[0].split()) and s.caption != CAPTIONS[0]
    assert s.scores["text_quality"] == 1
    g = _neg(gen, "generic")
    assert g.overall == 1 and g.caption.lower() != CAPTIONS[0].lower()
    o = _neg(gen, "other_image")
    assert o.caption == "A pizza with olives on a plate."  # the only pool image sharing no label with image 1
    assert o.scores["image_text_matching"] == 1


def test_inapplicable_kinds_fall_back_or_return_none():
    g = NegativeGenerator(kinds={"swap_attribute": 1.0, "shuffle": 1.0})
    assert g.negative("k", "hello", ["hello"], {}, random.Random(0)) is None
    a = g.negative("k", "the cat sat down", [], {}, random.Random(0))
    assert a.kind == "shuffle"
    assert NegativeGenerator().negative("k", "a cat", [], {}, random.Random(0), kind="other_image") is None
    with pytest.raises(ValueError):
        NegativeGenerator(kinds={"paraphrase": 1.0})


def test_positive_is_graded_by_detail_and_has_no_recaption(gen):
    rng = random.Random(0)
    short = gen.positive("1", "A dog.", CAPTIONS, {"image_id": 1}, rng)
    long = gen.positive("1", " ".join(["word"] * 14), CAPTIONS, {"image_id": 1}, rng)
    assert short.overall < long.overall and short.recaption is None and long.recaption is None
    assert "person and dog" in short.explanations["image_text_matching"]


def test_every_kind_is_graded_below_the_true_caption(gen):
    true = gen.positive("1", CAPTIONS[0], CAPTIONS, {"image_id": 1}, random.Random(0)).overall
    for kind in KINDS:
        a = _neg(gen, kind)
        assert a is not None and a.kind == kind and a.overall < true, kind
        assert set(a.scores) == {
            "text_quality",
            "image_text_matching",
            "object_detail",
            "semantic_understanding",
            "text_chart_description",
        }


def test_generator_pickles_without_its_caches(gen):
    gen.pool_captions()
    clone = pickle.loads(pickle.dumps(gen))
    assert clone._pool is None and len(clone.pool_captions()) == 3


# -- formatter ------------------------------------------------------------------------------------------------
def test_formatter_passes_teacher_annotations_through():
    row = {
        "key": "k",
        "caption": "a red bus",
        "meta": {
            "overall": 3,
            "scores": {"text_quality": 6},
            "explanations": {"overall": "wrong colour"},
            "recaption": "a blue bus",
            "kind": "teacher",
        },
    }
    prompt, answer = AITQEFormatter(neg_prob=1.0)(row)
    assert prompt.endswith(
        "Evaluate the caption: a red bus\nif score is low, give a short description of the "
        "image.\nRespond using a dictionary structure."
    )
    assert answer == (
        '{"Recaption": "a blue bus", "Overall Score": "3<Overall>", "Overall Explanation": '
        '"wrong colour", "Text Quality Score": 6}'
    )
    _, no_rewrite = AITQEFormatter(rewrite=False)(row)
    assert "Recaption" not in no_rewrite
    _, short = AITQEFormatter(output_all=False)(row)
    assert short == '{"Recaption": "a blue bus", "Overall Score": "3<Overall>"}'


def test_formatter_negative_probability_and_round_trip(gen):
    row = {"key": "1", "caption": CAPTIONS[0], "captions": CAPTIONS, "meta": {"image_id": 1}}
    never = AITQEFormatter(gen, neg_prob=0.0)
    assert all(never.annotate(row).kind == "true" for _ in range(20))
    always = AITQEFormatter(gen, neg_prob=1.0)
    kinds = {always.annotate(row).kind for _ in range(60)}
    assert kinds == set(KINDS)
    half = AITQEFormatter(gen, neg_prob=0.5, seed=1)
    share = sum(half.annotate(row).kind != "true" for _ in range(400)) / 400
    assert 0.4 < share < 0.6
    for _ in range(20):  # the answer is what the parser reads back
        prompt, answer = always(row)
        a = parse_output(answer)
        assert a.complete(output_all=True) and a.recaption in CAPTIONS
        assert prompt.split("Evaluate the caption: ")[1].split("\n")[0] != CAPTIONS[0] or a.overall >= 5


def test_fixed_formatter_draws_the_same_target_every_time(gen):
    """Validation (``fixed``) scores the same negatives every epoch; training draws anew."""
    row = {"key": "1", "caption": CAPTIONS[0], "captions": CAPTIONS, "meta": {"image_id": 1}}
    f = AITQEFormatter(gen, neg_prob=0.5)
    assert len({f(row) for _ in range(30)}) > 1
    f.fixed = True
    first = f(row)
    assert all(f(row) == first for _ in range(30))
    fresh = AITQEFormatter(gen, neg_prob=0.5)  # no call history: the same target
    fresh.fixed = True
    assert fresh(row) == first
