"""The shared tie rule (``pessimistic_ranks``) against a per-row Python loop, hand cases and errors."""

from __future__ import annotations

import random

import pytest
import torch

from clipforge.eval.ranking import pessimistic_ranks


def loop_rank(row: list[float], positives: set[int]) -> int:
    """Non-positive candidates whose score is not strictly below the best positive (NaN counts, max keeps NaN)."""
    values = [row[c] for c in positives]
    best = float("nan") if any(v != v for v in values) else max(values, default=float("-inf"))
    return sum(1 for c, v in enumerate(row) if c not in positives and not v < best)


def test_random_scores_with_ties_and_nans_match_the_loop() -> None:
    rng = random.Random(0)
    for trial in range(300):
        n_rows, n_cols = rng.randint(1, 6), rng.randint(1, 9)
        g = torch.Generator().manual_seed(trial)
        scores = torch.randint(-2, 3, (n_rows, n_cols), generator=g).float()  # small integers: many ties
        if trial % 5 == 0:
            scores[torch.rand(n_rows, n_cols, generator=g) < 0.15] = float("nan")
        positives = [set(rng.sample(range(n_cols), rng.randint(0, n_cols))) for _ in range(n_rows)]
        pairs = [(r, c) for r, cols in enumerate(positives) for c in sorted(cols)]
        rng.shuffle(pairs)  # any order of the pairs
        rows = torch.tensor([r for r, _ in pairs], dtype=torch.long)
        cols = torch.tensor([c for _, c in pairs], dtype=torch.long)
        got = pessimistic_ranks(scores, rows, cols).tolist()
        assert got == [loop_rank(scores[r].tolist(), positives[r]) for r in range(n_rows)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_every_dtype_counts_the_same(dtype) -> None:
    # float32 / float64 on the CPU count through NumPy, other dtypes through torch: the same ranks
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(-3, 4, (20, 30), generator=g).float()
    scores[3, 5] = float("nan")
    rows = torch.arange(20).repeat_interleave(2)
    cols = torch.randint(0, 15, (40,), generator=g) * 2 + torch.arange(40) % 2  # two distinct columns per row
    expected = pessimistic_ranks(scores, rows, cols)
    assert torch.equal(pessimistic_ranks(scores.to(dtype), rows, cols), expected)


def test_hand_cases() -> None:
    scores = torch.tensor([[3.0, 3.0, 1.0, 3.0], [0.0, 5.0, 5.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    # row 0: positives 0, 1 tie at 3 (each other's tie never counts), non-positive 3 ties -> 1
    # row 1: positive 3 (4.0) below 5.0, 5.0 -> 2; row 2: positive 2, all tie -> 3 (the worst)
    rows, cols = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 3, 2])
    assert pessimistic_ranks(scores, rows, cols).tolist() == [1, 2, 3]
    # row 0 with positive 2 (1.0): the three 3.0 count -> 3; rows without positives: every candidate counts
    assert pessimistic_ranks(scores, torch.tensor([0]), torch.tensor([2])).tolist() == [3, 4, 4]


def test_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pessimistic_ranks(torch.zeros(3), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="equal 1-D"):
        pessimistic_ranks(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([0]))
