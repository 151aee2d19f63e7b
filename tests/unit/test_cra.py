"""Caption retrieval accuracy against naive loops (ties included), hand-computed cases, chunking invariance."""

from __future__ import annotations

import math

import pytest
import torch

from clipforge.eval.cra import caption_positions, caption_retrieval_accuracy, cra_full_gallery, cra_pairs


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def naive_pairs(q: torch.Tensor, g: torch.Tensor) -> float:
    q, g = q.double().tolist(), g.double().tolist()
    hits = 0
    for i, qi in enumerate(q):
        scores = [_cos(qi, gj) for gj in g]
        hits += all(scores[i] > s for j, s in enumerate(scores) if j != i)
    return 100.0 * hits / len(q)


def naive_full(e: torch.Tensor, groups: list[int]) -> float:
    e = e.double().tolist()
    hits = counted = 0
    for i, ei in enumerate(e):
        same = [_cos(ei, e[j]) for j in range(len(e)) if j != i and groups[j] == groups[i]]
        other = [_cos(ei, e[j]) for j in range(len(e)) if groups[j] != groups[i]]
        if not same:
            continue
        counted += 1
        hits += max(same) > max(other, default=float("-inf"))
    return 100.0 * hits / counted


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_pairs_match_naive(seed, chunk):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(9, 4, generator=g, dtype=torch.float64)
    t = q + 0.9 * torch.randn(9, 4, generator=g, dtype=torch.float64)
    t[3] = t[5]  # a tie: query 3 and query 5 cannot both win
    assert cra_pairs(q, t, chunk) == pytest.approx(naive_pairs(q, t))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk", [2, 1024])
def test_full_gallery_matches_naive(seed, chunk):
    g = torch.Generator().manual_seed(seed)
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 3]  # group 3 has one caption: not counted as a query
    centers = torch.randn(4, 5, generator=g, dtype=torch.float64)
    e = centers[groups] + 0.8 * torch.randn(len(groups), 5, generator=g, dtype=torch.float64)
    e[4] = e[7]  # a caption repeated across groups
    assert cra_full_gallery(e, torch.tensor(groups), chunk) == pytest.approx(naive_full(e, groups))


def test_hand_computed():
    # queries e1, e2, e3; targets t1 = e1, t2 = (0, 1, 1), t3 = (1, 0, 0.1)
    # q1: cos [1, 0, .995] -> hit; q2: [0, .707, 0] -> hit; q3: [0, .707, .0995] -> t2 wins -> miss
    q = torch.eye(3)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.1]])
    assert cra_pairs(q, t) == pytest.approx(200 / 3)
    # collapse: every embedding equal -> every target ties -> 0, not 100
    assert cra_pairs(torch.ones(4, 3), torch.ones(4, 3)) == 0.0
    # two groups of two: each caption's nearest other caption is its group partner -> 100
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert cra_full_gallery(e, torch.tensor([0, 0, 1, 1])) == 100.0
    # swap groups of captions 1 and 3: caption 0's nearest (0.9, 0.1) is now in group 1 -> all four miss
    assert cra_full_gallery(e, torch.tensor([0, 1, 1, 0])) == 0.0


def test_collapsed_encoder_scores_zero_in_both_variants():
    # every caption embedding equal: targets tie every non-target -> 0 (chance would be 1/N), never 100
    e = torch.ones(40, 6)
    groups = torch.arange(20).repeat_interleave(2)
    assert cra_pairs(e[0::2], e[1::2], chunk_size=7) == 0.0
    assert cra_full_gallery(e, groups, chunk_size=7) == 0.0
    out = caption_retrieval_accuracy(e, groups)
    assert out["cra_pairs"] == out["cra_full"] == 0.0


def test_ties_between_partners_of_one_group_do_not_count():
    # group 0 = captions 0, 1, 2 where 1 and 2 are identical: caption 0's two partners tie each other, not a
    # competitor -> still a hit; a caption of another group tying the best partner -> a miss
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert cra_full_gallery(e, torch.tensor([0, 0, 0, 1, 1])) == 100.0
    # caption 2 moved to group 1: for caption 0 the best partner (caption 1) is now tied by caption 2 -> miss;
    # caption 1 / 2: best partner each other at cos 1 in different groups -> both miss; 3, 4 partners -> hits
    assert cra_full_gallery(e, torch.tensor([0, 0, 1, 1, 1])) == pytest.approx(naive_full(e, [0, 0, 1, 1, 1]))


def test_nan_embeddings_are_misses():
    q = torch.eye(3)
    q[1, 0] = float("nan")
    assert cra_pairs(q, torch.eye(3)) == pytest.approx(200 / 3)


def test_positions_and_combined_metrics():
    groups = torch.tensor([7, 7, 3, 7, 3, 9])
    assert caption_positions(groups).tolist() == [0, 1, 0, 2, 1, 0]
    g = torch.Generator().manual_seed(0)
    e = torch.randn(6, 4, generator=g)
    out = caption_retrieval_accuracy(e, groups)
    # pairs: groups 7 and 3 (9 has one caption) -> queries rows 0 and 2, targets rows 1 and 4
    assert out["groups"] == 2.0 and out["captions"] == 6.0
    assert out["cra_pairs"] == pytest.approx(naive_pairs(e[[0, 2]], e[[1, 4]]))
    assert out["cra_full"] == pytest.approx(naive_full(e, groups.tolist()))
    out = caption_retrieval_accuracy(e, groups, first=0, second=2)  # only group 7 has a third caption
    assert out["groups"] == 1.0 and out["cra_pairs"] == 100.0


def test_errors():
    with pytest.raises(ValueError):
        cra_pairs(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        cra_full_gallery(torch.randn(3, 2), torch.tensor([0, 1, 2]))  # no group with two captions
    with pytest.raises(ValueError):
        caption_retrieval_accuracy(torch.randn(2, 2), torch.tensor([0, 1]))
