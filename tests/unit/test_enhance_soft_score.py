"""Probability-weighted overall scores: the digit position found in the decoded answer, the average there."""

from __future__ import annotations

import pytest
import torch

from clipforge.models.vlm import byte_level_tokenizer
from clipforge.tasks.enhance.report import auc_report
from clipforge.tasks.enhance.soft_score import DigitRecorder, digit_token_ids, expected_overall


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


def _probs(n_tokens: int, at: int, dist: dict[int, float]) -> torch.Tensor:
    p = torch.full((n_tokens, 9), 0.001)
    for d, v in dist.items():
        p[at, d - 1] = v
    return p


def test_expected_score_at_the_overall_digit(tok):
    answer = '{"Recaption": "a cat", "Overall Score": "3<Overall>'
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    at = answer.index("3<Overall>")  # byte tokens: one token per character
    probs = _probs(len(ids), at, {3: 0.6, 4: 0.3, 9: 0.1})
    ref = (3 * 0.6 + 4 * 0.3 + 9 * 0.1 + 0.001 * sum(d for d in range(1, 10) if d not in (3, 4, 9))) / (
        1 + 0.006
    )
    assert expected_overall(tok, ids, probs) == pytest.approx(ref)


@pytest.mark.parametrize("answer", ['{"Recaption": "a cat"', "no score", '{"Overall Score": "x1"}'])
def test_no_score_no_expectation(tok, answer):
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert expected_overall(tok, ids, torch.ones(len(ids), 9)) is None


def test_recorder_keeps_each_rows_digit_probabilities(tok):
    digits = digit_token_ids(tok)
    assert digits == [tok.convert_tokens_to_ids(str(d)) for d in range(1, 10)]
    rec = DigitRecorder(digits, rows=3)
    first, second = torch.randn(3, len(tok)), torch.randn(2, len(tok))
    rec([0, 1, 2], first)
    rec([0, 2], second)  # row 1 has left the batch
    assert [rec.probs(r).shape[0] for r in range(3)] == [2, 1, 2]
    assert torch.allclose(rec.probs(1)[0], first[1].softmax(-1)[digits])
    assert torch.allclose(rec.probs(2)[1], second[1].softmax(-1)[digits])


def test_auc_report_greedy_and_expected():
    pairs = [
        {"label": 1, "overall": 8, "overall_expected": 7.9, "kind": "true"},
        {"label": 0, "overall": 8, "overall_expected": 7.1, "kind": "other_image"},
        {"label": 0, "overall": 2, "overall_expected": None, "kind": "shuffle"},
        {"label": 0, "overall": None, "kind": "shuffle"},
    ]
    r = auc_report(pairs)
    assert (r["labelled_pairs"], r["labelled_unscored"]) == (3, 1)
    assert r["roc_auc"] == pytest.approx(0.75) and r["roc_auc_expected"] == pytest.approx(1.0)
    assert r["roc_auc/other_image"] == pytest.approx(0.5) and r["roc_auc_expected/other_image"] == 1.0
    assert r["roc_auc/shuffle"] == 1.0
