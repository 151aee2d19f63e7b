"""Probability-weighted overall scores: a continuous quality signal read off the generation for free.

A greedy AITQE answer gives an integer 1-10, so millions of pairs tie and a data budget cannot rank within a
score; small models also put almost every pair on one or two values. G-Eval-style, the expected score
``sum_d d * p(d) / sum_d p(d)`` over the digit tokens at the position where the model wrote the overall score
breaks the ties with the model's own confidence. :class:`DigitRecorder` (the ``on_logits`` hook of
:func:`~clipforge.models.greedy.greedy_decode`) keeps the digit probabilities of every generated position of every
row; :func:`expected_overall` finds the overall score's position in the decoded answer and averages there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

__all__ = ["DigitRecorder", "digit_token_ids", "expected_overall"]

_OVERALL_DIGIT = re.compile(r"Overall Score[\"']?\s*:\s*[\"']?(\d)")


def digit_token_ids(tokenizer) -> list[int] | None:
    """Token ids of ``"1"`` ... ``"9"``, or ``None`` when a digit is not a single token of this tokenizer."""
    ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(1, 10)]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


class DigitRecorder:
    """Records, per row and generated position, the probabilities of the digit tokens 1-9: the ``on_logits``
    hook of :func:`~clipforge.models.greedy.greedy_decode`, which passes the rows still generating.

    Args:
        digit_ids: token ids of ``"1"`` ... ``"9"`` (:func:`digit_token_ids`).
        rows: rows of the batch.
    """

    def __init__(self, digit_ids: Sequence[int], rows: int) -> None:
        self.digit_ids = list(digit_ids)
        self._steps: list[list[torch.Tensor]] = [[] for _ in range(rows)]

    def __call__(self, rows: Sequence[int], logits: torch.Tensor) -> None:
        probs = logits.float().softmax(-1)[:, self.digit_ids].cpu()
        for j, row in enumerate(rows):
            self._steps[row].append(probs[j])

    def probs(self, row: int) -> torch.Tensor:
        """``(T, 9)``: the digit probabilities of the row's ``T`` generated positions."""
        steps = self._steps[row]
        return torch.stack(steps) if steps else torch.zeros(0, len(self.digit_ids))


def expected_overall(tokenizer, new_ids: Sequence[int], digit_probs: torch.Tensor) -> float | None:
    """Expected overall score of one generated answer.

    Args:
        tokenizer: the model's tokenizer.
        new_ids: the generated token ids of the answer.
        digit_probs: ``(T, 9)`` digit probabilities of its generated positions (:class:`DigitRecorder`).

    Returns:
        ``sum_d d * p(d) / sum_d p(d)`` at the token that starts the overall score, or ``None`` when the answer
        has no overall score or the score's first digit does not begin a token. A two-digit score (10) counts as
        its first digit, 1.
    """
    ids = [int(i) for i in new_ids]
    m = _OVERALL_DIGIT.search(tokenizer.decode(ids, skip_special_tokens=True))
    if m is None:
        return None
    start = m.start(1)
    for j in range(len(ids)):  # the token whose text reaches the digit
        if len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) > start:
            break
    else:
        return None
    if len(tokenizer.decode(ids[:j], skip_special_tokens=True)) != start or j >= len(digit_probs):
        return None
    p = digit_probs[j].double()
    total = float(p.sum())
    if total <= 0:
        return None
    return float((p * torch.arange(1, 10, dtype=torch.float64)).sum()) / total
