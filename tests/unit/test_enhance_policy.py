"""The enhancement policy on hand-computed cases: actions per rule, output rows, data budget, report."""

from __future__ import annotations

import pytest

from clipforge.tasks.enhance.policy import PolicyConfig, apply_policy, decide, score_histogram


def _pair(key, overall, recaption=None, rescore=None, **scores):
    return {
        "key": key,
        "image": f"/img/{key}.jpg",
        "caption": f"caption {key}",
        "overall": overall,
        "scores": scores,
        "recaption": recaption,
        "rescore_overall": rescore,
    }


PAIRS = [
    _pair("a", 9),  # good
    _pair("b", 3, recaption="better b", rescore=8),  # weak, rewritten
    _pair("c", 5, image_text_matching=2),  # weak by threshold, no recaption
    _pair("d", None),  # unscored (bad output)
    _pair("e", 7, recaption="better e", rescore=9, object_detail=3),  # model says weak despite 7
]


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (PolicyConfig(), ["keep", "rewrite", "keep", "keep", "rewrite"]),
        (PolicyConfig(rule="threshold"), ["keep", "rewrite", "keep", "keep", "keep"]),
        (
            PolicyConfig(rule="threshold", no_recaption_action="drop"),
            ["keep", "rewrite", "drop", "keep", "keep"],
        ),
        (
            PolicyConfig(rule="threshold", overall_threshold=4, aspect_thresholds={"object_detail": 3}),
            ["keep", "rewrite", "keep", "keep", "rewrite"],
        ),
        (PolicyConfig(low_action="drop", error_action="drop"), ["keep", "drop", "keep", "drop", "drop"]),
        (
            PolicyConfig(low_action="keep_both", drop_threshold=3),
            ["keep", "drop", "keep", "keep", "keep_both"],
        ),
    ],
)
def test_actions(cfg, expected):
    assert [decide(p, cfg) for p in PAIRS] == expected


def test_a_recaption_equal_to_the_caption_is_no_rewrite():
    same = {**_pair("s", 2, recaption="Caption  S."), "caption": "caption s"}
    assert decide(same, PolicyConfig()) == "keep"
    assert decide(same, PolicyConfig(no_recaption_action="drop")) == "drop"
    assert decide({**same, "recaption": "caption s with a dog"}, PolicyConfig()) == "rewrite"


def test_rows_and_report_of_keep_both():
    rows, report = apply_policy(PAIRS, PolicyConfig(low_action="keep_both"))
    assert [(r["key"], r["caption"], r["rewritten"], r["final_overall"]) for r in rows] == [
        ("a", "caption a", False, 9),
        ("b", "caption b", False, 3),
        ("b", "better b", True, 8),
        ("c", "caption c", False, 5),
        ("d", "caption d", False, None),
        ("e", "caption e", False, 7),
        ("e", "better e", True, 9),
    ]
    assert all(r["original_caption"] == f"caption {r['key']}" for r in rows)
    assert report["actions"] == {"keep": 3, "rewrite": 0, "keep_both": 2, "drop": 0}
    assert (report["pairs"], report["unscored"], report["low_quality"], report["rows"]) == (5, 1, 2, 7)
    assert report["histogram_before"] == {**score_histogram([]), "3": 1, "5": 1, "7": 1, "9": 1, "none": 1}
    assert report["histogram_after"] == {
        **score_histogram([]),
        "3": 1,
        "5": 1,
        "7": 1,
        "8": 1,
        "9": 2,
        "none": 1,
    }
    assert report["mean_before"] == pytest.approx((9 + 3 + 5 + 7) / 4)
    assert report["mean_after"] == pytest.approx((9 + 3 + 8 + 5 + 7 + 9) / 6)


def test_budget_keeps_the_best_final_scores_in_input_order():
    rows, report = apply_policy(PAIRS, PolicyConfig(select_k=3))
    # final scores: a 9, b(rewritten) 8, c 5, d None, e(rewritten) 9 -> a, b, e
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("a", "caption a"),
        ("b", "better b"),
        ("e", "better e"),
    ]
    assert (report["rows_before_selection"], report["rows"], report["rewritten_rows"]) == (5, 3, 2)


def test_random_budget_is_seeded_and_ignores_scores():
    cfg = PolicyConfig(select_k=2, selector="random", seed=3)
    first, _ = apply_policy(PAIRS, cfg)
    again, _ = apply_policy(PAIRS, cfg)
    assert first == again and len(first) == 2
    picks = {
        tuple(r["key"] for r in apply_policy(PAIRS, PolicyConfig(select_k=2, selector="random", seed=s))[0])
        for s in range(20)
    }
    assert len(picks) > 3  # not the score order every time


def test_rewritten_rows_without_rescore_rank_last():
    pairs = [_pair("x", 2, recaption="r"), _pair("y", 6)]
    rows, _ = apply_policy(pairs, PolicyConfig(select_k=1))
    assert [r["key"] for r in rows] == ["y"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rule": "vibes"},
        {"low_action": "shred"},
        {"aspect_thresholds": {"colour": 3}},
        {"select_k": -1},
        {"error_action": "rewrite"},
        {"selector": "mlm"},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)


def test_budget_breaks_score_ties_by_expected_score():
    pairs = [
        {**_pair("a", 8), "expected": 7.6},
        {**_pair("b", 8), "expected": 8.3},
        {**_pair("c", 8)},  # no expected score: its integer score
        {**_pair("d", 3, recaption="r", rescore=8), "rescore_expected": 8.1},
    ]
    rows, _ = apply_policy(pairs, PolicyConfig(select_k=2))
    assert [r["key"] for r in rows] == ["b", "d"]
    assert [r["final_expected"] for r in rows] == [8.3, 8.1]
