"""Retrieval Recall@k against naive full-matrix + argsort references, hand-computed cases and edge cases."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from clipforge.eval.retrieval import long_text_r1, retrieval_metrics, retrieval_ranks

# ----------------------------------------------------------------------------------------------------------------
# naive references: the whole score matrix, one argsort per row, Python loops


def naive_ranks(
    img: torch.Tensor, txt: torch.Tensor, text_to_image: list[int], positives_first: bool
) -> tuple[list[int], list[int]]:
    """Rank of the best positive per image and of the image per caption, from a descending argsort per row.

    ``positives_first=True`` implements the tie rule independently of the counting code: positives are placed
    first before a *stable* sort, so among equal scores they come out on top. With ``False`` it is the plain
    ``argsort`` that CLIP_benchmark / BLIP-style evaluators use (only valid without ties).
    """
    scores = img.double() @ txt.double().T
    n_img, n_txt = scores.shape

    def rank_in_row(row: torch.Tensor, positives: list[int]) -> int:
        others = [j for j in range(len(row)) if j not in positives]
        perm = torch.tensor(positives + others) if positives_first else torch.arange(len(row))
        order = perm[torch.argsort(row[perm], descending=True, stable=True)].tolist()
        return min(order.index(p) for p in positives)

    i2t = [rank_in_row(scores[i], [t for t in range(n_txt) if text_to_image[t] == i]) for i in range(n_img)]
    t2i = [rank_in_row(scores[:, t], [text_to_image[t]]) for t in range(n_txt)]
    return i2t, t2i


def naive_recalls(i2t: list[int], t2i: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * sum(1 for r in ranks if r < k) / len(ranks)
    out["rsum"] = sum(out.values())
    return out


def _random_mapping(rng: random.Random, n_img: int, max_caps: int) -> list[int]:
    mapping = [i for i in range(n_img) for _ in range(rng.randint(1, max_caps))]
    rng.shuffle(mapping)  # captions of one image need not be contiguous
    return mapping


def _check(
    img: torch.Tensor, txt: torch.Tensor, mapping: list[int], positives_first: bool, chunk: int
) -> None:
    ks = (1, 2, 5, 10)
    ref_i2t, ref_t2i = naive_ranks(img, txt, mapping, positives_first)
    i2t, t2i = retrieval_ranks(img, txt, torch.tensor(mapping), chunk_size=chunk)
    assert i2t.tolist() == ref_i2t
    assert t2i.tolist() == ref_t2i
    got = retrieval_metrics(img, txt, torch.tensor(mapping), ks=ks, chunk_size=chunk)
    expected = naive_recalls(ref_i2t, ref_t2i, ks)
    assert {k: got[k] for k in expected} == expected
    assert got["i2t_mean_rank"] == pytest.approx(sum(ref_i2t) / len(ref_i2t) + 1)
    assert got["t2i_mean_rank"] == pytest.approx(sum(ref_t2i) / len(ref_t2i) + 1)


# ----------------------------------------------------------------------------------------------------------------
# against the references


def test_random_integer_features_with_ties_match_naive() -> None:
    # small integer features: every dot product is an exact float32 integer whatever the summation order, and
    # ties with the positive are frequent, so this pins the tie rule exactly
    rng = random.Random(0)
    for trial in range(150):
        n_img = rng.randint(1, 12)
        mapping = _random_mapping(rng, n_img, 5)
        g = torch.Generator().manual_seed(trial)
        dim = rng.choice([1, 2, 3, 6])
        img = torch.randint(-2, 3, (n_img, dim), generator=g).float()
        txt = torch.randint(-2, 3, (len(mapping), dim), generator=g).float()
        _check(img, txt, mapping, positives_first=True, chunk=rng.choice([1, 3, 1024]))


def test_random_normalised_features_match_plain_argsort() -> None:
    # continuous features (no ties): the plain descending argsort of CLIP_benchmark / BLIP's itm_eval
    rng = random.Random(1)
    for trial in range(40):
        n_img = rng.randint(1, 30)
        mapping = _random_mapping(rng, n_img, 5)
        g = torch.Generator().manual_seed(100 + trial)
        img = F.normalize(torch.randn(n_img, 32, generator=g), dim=-1)
        txt = F.normalize(torch.randn(len(mapping), 32, generator=g), dim=-1)
        _check(img, txt, mapping, positives_first=False, chunk=rng.choice([1, 4, 7, 1024]))


# ----------------------------------------------------------------------------------------------------------------
# hand-computed


def test_hand_computed_3_images_5_captions() -> None:
    # Similarity matrix S (rows: images, columns: captions); captions 0,1 -> image 0, 2,3 -> image 1, 4 -> image 2.
    #            c0   c1   c2   c3   c4
    #   img0 [ 0.9, 0.1, 0.8, 0.2, 0.3 ]  best positive 0.9 (c0): nothing higher        -> rank 0
    #   img1 [ 0.7, 0.6, 0.5, 0.1, 0.4 ]  best positive 0.5 (c2): 0.7, 0.6 higher        -> rank 2
    #   img2 [ 0.2, 0.3, 0.1, 0.9, 0.4 ]  positive 0.4 (c4): 0.9 higher                  -> rank 1
    #   i2t R@1 = 1/3 = 33.3, R@2 = 2/3 = 66.7, R@5 = 3/3 = 100
    # Captions (columns) against their image:
    #   c0 [0.9, 0.7, 0.2] pos img0 0.9 -> 0;  c1 [0.1, 0.6, 0.3] pos img0 0.1 -> 2;  c2 [0.8, 0.5, 0.1] img1 -> 1
    #   c3 [0.2, 0.1, 0.9] pos img1 0.1 -> 2;  c4 [0.3, 0.4, 0.4] pos img2 0.4, tie with img1 -> 0 (ties don't demote)
    #   t2i R@1 = 2/5 = 40, R@2 = 3/5 = 60, R@5 = 5/5 = 100
    # Mean ranks (1-based): i2t (1 + 3 + 2) / 3 = 2, t2i (1 + 3 + 2 + 3 + 1) / 5 = 2; medians 2 and 2.
    sim = torch.tensor(
        [[0.9, 0.1, 0.8, 0.2, 0.3], [0.7, 0.6, 0.5, 0.1, 0.4], [0.2, 0.3, 0.1, 0.9, 0.4]], dtype=torch.float32
    )
    img = torch.eye(3)  # one-hot images: img @ txt.T == sim exactly (the metric only uses dot products)
    txt = sim.T.contiguous()
    mapping = torch.tensor([0, 0, 1, 1, 2])
    got = retrieval_metrics(img, txt, mapping, ks=(1, 2, 5))
    assert got == {
        "i2t_R@1": 100 / 3,
        "i2t_R@2": 200 / 3,
        "i2t_R@5": 100.0,
        "t2i_R@1": 40.0,
        "t2i_R@2": 60.0,
        "t2i_R@5": 100.0,
        "rsum": pytest.approx(100 / 3 + 200 / 3 + 100 + 40 + 60 + 100),
        "i2t_mean_rank": 2.0,
        "i2t_median_rank": 2.0,
        "t2i_mean_rank": 2.0,
        "t2i_median_rank": 2.0,
    }
    assert retrieval_ranks(img, txt, mapping)[0].tolist() == [0, 2, 1]
    assert retrieval_ranks(img, txt, mapping)[1].tolist() == [0, 2, 1, 2, 0]


def test_ties_do_not_demote_the_positive() -> None:
    # every score equal: all ranks are 0 -> 100 %. Caveat of the convention: a collapsed encoder scores perfectly.
    img = torch.ones(4, 3) / 3**0.5
    txt = torch.ones(8, 3) / 3**0.5
    got = retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), ks=(1,))
    assert got["i2t_R@1"] == got["t2i_R@1"] == 100.0
    # one exact tie above a worse positive: the tie does not count, the strictly greater score does
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])  # captions 0, 2 tie for image 0 and image 1
    ranks_i2t, ranks_t2i = retrieval_ranks(img, txt, torch.tensor([1, 0, 0]))
    assert ranks_i2t.tolist() == [0, 0]  # image 0: best positive c1 (1.0); image 1: c0 = 0.5, tied by c2 only
    assert ranks_t2i.tolist() == [0, 0, 0]  # c0: 0.5 vs 0.5 tie; c2: 0.5 vs 0.5 tie


def test_chunk_size_invariance() -> None:
    rng = random.Random(3)
    mapping = _random_mapping(rng, 40, 5)
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(len(mapping), 16, generator=g) + 0.5 * img[mapping], dim=-1)
    results = [retrieval_metrics(img, txt, torch.tensor(mapping), chunk_size=c) for c in (1, 7, 10**9)]
    assert results[0] == results[1] == results[2]
    assert 0 < results[0]["i2t_R@1"] < 100


def test_one_caption_any_hit_equals_argmax() -> None:
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(60, 8, generator=g) + img, dim=-1)
    got = long_text_r1(img, txt)
    assert set(got) >= {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10, 25, 50)}
    scores = img @ txt.T
    # LLM2CLIP's retrieval_global: argmax for R@1, "i in topk" for the other k
    argmax_i2t = sum(int(scores[i].argmax()) == i for i in range(60))
    argmax_t2i = sum(int(scores[:, t].argmax()) == t for t in range(60))
    assert got["i2t_R@1"] == 100.0 * argmax_i2t / 60
    assert got["t2i_R@1"] == 100.0 * argmax_t2i / 60
    for k in (5, 10, 25, 50):
        assert got[f"i2t_R@{k}"] == 100.0 * sum(i in scores[i].topk(k).indices for i in range(60)) / 60
        assert got[f"t2i_R@{k}"] == 100.0 * sum(t in scores[:, t].topk(k).indices for t in range(60)) / 60
    assert 0 < got["i2t_R@1"] < 100
    assert long_text_r1(img, txt) == retrieval_metrics(img, txt, torch.arange(60), ks=(1, 5, 10, 25, 50))
    with pytest.raises(ValueError):
        long_text_r1(img, txt[:-1])


def test_any_hit_differs_from_first_caption_only() -> None:
    # image 0's first caption is bad, its second is perfect: any-hit counts the image at R@1
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # c0 (img0) looks like img1; c1 (img0) perfect
    got = retrieval_metrics(img, txt, torch.tensor([0, 0, 1]), ks=(1,))
    assert got["i2t_R@1"] == 100.0
    assert got["t2i_R@1"] == pytest.approx(200 / 3)  # c0 retrieves image 1


def test_perfect_features_score_100() -> None:
    g = torch.Generator().manual_seed(5)
    img = F.normalize(torch.randn(25, 16, generator=g), dim=-1)
    mapping = torch.arange(25).repeat_interleave(3)
    got = retrieval_metrics(img, img[mapping].clone(), mapping, ks=(1, 5, 10))
    assert all(v == 100.0 for k, v in got.items() if "_R@" in k)
    assert got["rsum"] == 600.0
    assert got["i2t_mean_rank"] == got["t2i_mean_rank"] == 1.0


def test_half_precision_inputs_are_upcast() -> None:
    g = torch.Generator().manual_seed(6)
    img = F.normalize(torch.randn(30, 16, generator=g), dim=-1).half()
    txt = F.normalize(torch.randn(90, 16, generator=g), dim=-1).half()
    mapping = torch.arange(30).repeat_interleave(3)
    assert retrieval_metrics(img, txt, mapping, chunk_size=8) == retrieval_metrics(
        img.float(), txt.float(), mapping, chunk_size=8
    )
    assert retrieval_metrics(img.bfloat16(), txt.bfloat16(), mapping)["i2t_R@10"] >= 0


def test_invalid_inputs_raise() -> None:
    img, txt = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(img, txt, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 3]))  # index out of range
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2]))  # wrong length
    with pytest.raises(ValueError):
        retrieval_metrics(img, torch.randn(4, 5), torch.tensor([0, 1, 2, 2]))  # dim mismatch
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 2]), ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 2]), chunk_size=0)
