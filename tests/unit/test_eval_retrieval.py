"""Retrieval Recall@k against CLIP_benchmark, a naive loop of the tie rule, hand-computed cases and edge cases."""

from __future__ import annotations

import logging
import random

import pytest
import torch
import torch.nn.functional as F

from clipforge.eval.accumulator import RetrievalAccumulator
from clipforge.eval.retrieval import (
    _exact_fp32_matmul,
    _positive_windows,
    embedding_spread,
    is_collapsed,
    long_text_r1,
    retrieval_metrics,
    retrieval_ranks,
)

# ----------------------------------------------------------------------------------------------------------------
# references: a plain argsort (tie-free data), a Python loop of the pessimistic tie rule, CLIP_benchmark itself


def argsort_ranks(
    img: torch.Tensor, txt: torch.Tensor, text_to_image: list[int]
) -> tuple[list[int], list[int]]:
    """Position of the first positive in a descending argsort per row: what BLIP-style evaluators do.

    Only defined without ties (with ties it depends on the sort's tie order).
    """
    scores = img.double() @ txt.double().T

    def first_positive(row: torch.Tensor, positives: list[int]) -> int:
        order = torch.argsort(row, descending=True).tolist()
        return min(order.index(p) for p in positives)

    n_img, n_txt = scores.shape
    i2t = [
        first_positive(scores[i], [t for t in range(n_txt) if text_to_image[t] == i]) for i in range(n_img)
    ]
    t2i = [first_positive(scores[:, t], [text_to_image[t]]) for t in range(n_txt)]
    return i2t, t2i


def loop_ranks(img: torch.Tensor, txt: torch.Tensor, text_to_image: list[int]) -> tuple[list[int], list[int]]:
    """The pessimistic tie rule, one query at a time in plain Python (float64 scores).

    image→text: the best positive caption vs the *non-positive* captions only (other captions of the same image
    never count against it); text→image: the caption's image vs every other image. A competitor counts when it
    is not strictly below the positive (``>=``, or NaN).
    """
    scores = (img.double() @ txt.double().T).tolist()
    n_img, n_txt = len(scores), len(text_to_image)
    i2t = []
    for i in range(n_img):
        positives = [t for t in range(n_txt) if text_to_image[t] == i]
        best = max(scores[i][t] for t in positives)
        i2t.append(sum(1 for t in range(n_txt) if t not in positives and not scores[i][t] < best))
    t2i = []
    for t in range(n_txt):
        positive = scores[text_to_image[t]][t]
        t2i.append(sum(1 for j in range(n_img) if j != text_to_image[t] and not scores[j][t] < positive))
    return i2t, t2i


def clip_benchmark_hits(
    img: torch.Tensor, txt: torch.Tensor, text_to_image: list[int], k: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Per-query hits and recalls exactly as CLIP_benchmark 1.6.2's ``zeroshot_retrieval.evaluate`` computes them
    once the embeddings exist (the full score matrix, ``positive_pairs``, ``batchify(recall_at_k, ...) > 0``).

    Returns:
        ``(i2t_hits, t2i_hits, text_retrieval_recall, image_retrieval_recall)``: CLIP_benchmark's "text retrieval"
        is image→text, its "image retrieval" text→image; recalls are its fractions (0-1).
    """
    from clip_benchmark.metrics import zeroshot_retrieval as cb

    scores = txt @ img.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), text_to_image] = True
    t2i = cb.batchify(cb.recall_at_k, scores, positive_pairs, batch_size, "cpu", k=k) > 0
    i2t = cb.batchify(cb.recall_at_k, scores.T, positive_pairs.T, batch_size, "cpu", k=k) > 0
    return i2t, t2i, i2t.float().mean().item(), t2i.float().mean().item()


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


def _check(img: torch.Tensor, txt: torch.Tensor, mapping: list[int], reference, chunk: int) -> None:
    ks = (1, 2, 5, 10)
    ref_i2t, ref_t2i = reference(img, txt, mapping)
    for single_matmul in (True, False):  # text->image counted in the image->text pass, or from its own matmul
        i2t, t2i = retrieval_ranks(
            img, txt, torch.tensor(mapping), chunk_size=chunk, single_matmul=single_matmul
        )
        assert i2t.tolist() == ref_i2t
        assert t2i.tolist() == ref_t2i
    got = retrieval_metrics(img, txt, torch.tensor(mapping), ks=ks, chunk_size=chunk)
    expected = naive_recalls(ref_i2t, ref_t2i, ks)
    assert {k: got[k] for k in expected} == expected
    assert got["i2t_mean_rank"] == pytest.approx(sum(ref_i2t) / len(ref_i2t) + 1)
    assert got["t2i_mean_rank"] == pytest.approx(sum(ref_t2i) / len(ref_t2i) + 1)


# ----------------------------------------------------------------------------------------------------------------
# against the references


def test_random_integer_features_with_ties_match_the_loop_reference() -> None:
    # small integer features: every dot product is an exact float32 integer whatever the summation order, and
    # ties with the positive (and between positives of one image) are frequent, so this pins the tie rule exactly
    rng = random.Random(0)
    for trial in range(150):
        n_img = rng.randint(1, 12)
        mapping = _random_mapping(rng, n_img, 5)
        g = torch.Generator().manual_seed(trial)
        dim = rng.choice([1, 2, 3, 6])
        img = torch.randint(-2, 3, (n_img, dim), generator=g).float()
        txt = torch.randint(-2, 3, (len(mapping), dim), generator=g).float()
        _check(img, txt, mapping, loop_ranks, chunk=rng.choice([1, 3, 1024]))


def test_random_normalised_features_match_plain_argsort() -> None:
    # continuous features (no ties): the plain descending argsort of BLIP's itm_eval; the loop rule agrees
    rng = random.Random(1)
    for trial in range(40):
        n_img = rng.randint(1, 30)
        mapping = _random_mapping(rng, n_img, 5)
        g = torch.Generator().manual_seed(100 + trial)
        img = F.normalize(torch.randn(n_img, 32, generator=g), dim=-1)
        txt = F.normalize(torch.randn(len(mapping), 32, generator=g), dim=-1)
        _check(img, txt, mapping, argsort_ranks, chunk=rng.choice([1, 4, 7, 1024]))
        assert loop_ranks(img, txt, mapping) == argsort_ranks(img, txt, mapping)


@pytest.mark.parametrize("seed", range(6))
def test_tie_free_features_equal_clip_benchmark(seed: int) -> None:
    # CLIP_benchmark's own recall_at_k + batchify on its own full score matrix, query by query and in its metric
    rng = random.Random(seed)
    n_img = rng.randint(12, 60)
    mapping = _random_mapping(rng, n_img, 5)
    g = torch.Generator().manual_seed(200 + seed)
    img = F.normalize(torch.randn(n_img, 32, generator=g), dim=-1)
    txt = F.normalize(torch.randn(len(mapping), 32, generator=g) + 0.7 * img[mapping], dim=-1)
    i2t, t2i = retrieval_ranks(img, txt, torch.tensor(mapping), chunk_size=rng.choice([1, 5, 1024]))
    ks = (1, 5, 10)
    got = retrieval_metrics(img, txt, torch.tensor(mapping), ks=ks, chunk_size=7)
    for k in ks:
        cb_i2t, cb_t2i, text_retrieval, image_retrieval = clip_benchmark_hits(
            img, txt, mapping, k, batch_size=rng.choice([1, 8, 64])
        )
        assert torch.equal(i2t < k, cb_i2t)
        assert torch.equal(t2i < k, cb_t2i)
        assert got[f"i2t_R@{k}"] == pytest.approx(100 * text_retrieval, abs=1e-4)  # its float32 mean
        assert got[f"t2i_R@{k}"] == pytest.approx(100 * image_retrieval, abs=1e-4)
    assert 0 < got["i2t_R@1"] < 100 and 0 < got["t2i_R@1"] < 100


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
    #   c3 [0.2, 0.1, 0.9] pos img1 0.1 -> 2;  c4 [0.3, 0.4, 0.4] pos img2 0.4, tied by img1 -> 1 (a tie counts)
    #   t2i R@1 = 1/5 = 20, R@2 = 3/5 = 60, R@5 = 5/5 = 100
    # Mean ranks (1-based): i2t (1 + 3 + 2) / 3 = 2, t2i (1 + 3 + 2 + 3 + 2) / 5 = 2.2; medians (lower) 2 and 2.
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
        "t2i_R@1": 20.0,
        "t2i_R@2": 60.0,
        "t2i_R@5": 100.0,
        "rsum": pytest.approx(100 / 3 + 200 / 3 + 100 + 20 + 60 + 100),
        "i2t_mean_rank": 2.0,
        "i2t_median_rank": 2.0,
        "t2i_mean_rank": pytest.approx(2.2),
        "t2i_median_rank": 2.0,
    }
    assert retrieval_ranks(img, txt, mapping)[0].tolist() == [0, 2, 1]
    assert retrieval_ranks(img, txt, mapping)[1].tolist() == [0, 2, 1, 2, 1]


def test_ties_count_against_the_positive() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])  # captions 0, 2 tie for image 0 and image 1
    ranks_i2t, ranks_t2i = retrieval_ranks(img, txt, torch.tensor([1, 0, 0]))
    # image 0: best positive c1 (1.0) above everything -> 0; image 1: its c0 = 0.5 is tied by c2 (not its own) -> 1
    assert ranks_i2t.tolist() == [0, 1]
    # c0 (image 1): 0.5 vs image 0's 0.5 -> 1; c1 (image 0): 1.0 vs 0.0 -> 0; c2 (image 0): 0.5 vs 0.5 -> 1
    assert ranks_t2i.tolist() == [1, 0, 1]


def test_other_positives_do_not_count_against_the_best_one() -> None:
    # image 0 owns c0, c1, c2: c0 and c1 tie at the top, so a rule counting every other caption >= the best one
    # would give rank 1; only non-positive captions compete -> rank 0
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.1, 0.0], [0.5, 0.5]])
    #          c0   c1   c2   c3
    #   img0 [1.0, 1.0, 0.1, 0.5]  positives c0, c1, c2: best 1.0, non-positive c3 0.5 below   -> 0
    #   img1 [0.0, 0.0, 0.0, 0.5]  positive c3 0.5, non-positives 0, 0, 0 below                -> 0
    ranks_i2t, _ = retrieval_ranks(img, txt, torch.tensor([0, 0, 0, 1]))
    assert ranks_i2t.tolist() == [0, 0]
    # image 0 owns c0 (1.0) and c2 (0.1), image 1 owns c1 and c3: for image 0 the non-positive c1 ties the best
    # positive (counts), c3 (0.5) is below, its own c2 never counts -> 1; image 1: best c3 0.5 above 0, 0 -> 0
    ranks_i2t, _ = retrieval_ranks(img, txt, torch.tensor([0, 1, 0, 1]))
    assert ranks_i2t.tolist() == [1, 0]


def test_collapsed_embeddings_score_zero_not_100() -> None:
    # every embedding equal: every positive is tied by every competitor -> the worst rank, recall 0 (chance: 1-10 %)
    n = 100
    img = F.normalize(torch.ones(n, 8), dim=-1)
    txt = F.normalize(torch.ones(5 * n, 8), dim=-1)
    mapping = torch.arange(n).repeat_interleave(5)
    got = retrieval_metrics(img, txt, mapping, chunk_size=33)
    assert all(got[f"{d}_R@{k}"] == 0.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert got["rsum"] == 0.0
    i2t, t2i = retrieval_ranks(img, txt, mapping)
    assert i2t.tolist() == [5 * n - 5] * n  # every caption but its own five
    assert t2i.tolist() == [n - 1] * (5 * n)  # every other image
    assert got["i2t_mean_rank"] == 5 * n - 4 and got["t2i_mean_rank"] == n
    long = long_text_r1(img, txt[:n])
    assert all(v == 0.0 for k, v in long.items() if "_R@" in k)


def test_nan_scores_count_against_the_model() -> None:
    img = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    i2t, t2i = retrieval_ranks(img, txt, torch.tensor([0, 1, 2]))
    # image 1 is NaN: its positive is NaN -> worst rank 2; for every caption, image 1's NaN score competes
    assert i2t.tolist() == [0, 2, 1]  # image 2: c1 (non-positive) ties its c2
    assert t2i.tolist() == [1, 2, 1]  # c1's own image is NaN: both others count


def test_positive_windows_hold_every_fp32_evaluation() -> None:
    # the fp32 positive score, however the GEMM sums it (chunk shapes, transposed layouts), lies inside its window
    g = torch.Generator().manual_seed(11)
    img = F.normalize(torch.randn(300, 96, generator=g), dim=-1) * 3.0  # not unit norm: the bound scales
    mapping = torch.randint(0, 300, (700,), generator=g)
    txt = F.normalize(torch.randn(700, 96, generator=g), dim=-1) * 0.5
    p, width, lo, hi = _positive_windows(img, txt, mapping, block=128)
    exact = (img.double()[mapping] * txt.double()).sum(1)
    assert torch.allclose(p, exact, rtol=0, atol=1e-12)
    for chunk in (1, 7, 300):
        for start in range(0, 300, chunk):
            scores = img[start : start + chunk] @ txt.T.contiguous()
            mine = (mapping >= start) & (mapping < start + chunk)
            own = scores[mapping[mine] - start, mine.nonzero().flatten()]
            assert bool(((own.double() - p[mine]).abs() <= width[mine]).all())
            assert bool(((lo[mine] < own) & (own < hi[mine])).all())
    dots = (img[mapping] * txt).sum(1)  # a different kernel, same guarantee
    assert bool(((dots.double() - p).abs() <= width).all())


def test_duplicate_images_in_different_chunks_tie() -> None:
    # images 3 and 40 are the same vector but their rows fall in different matmul calls (chunk 16): every caption
    # of either is exactly tied by the other, in both directions and both text->image paths
    g = torch.Generator().manual_seed(12)
    img = F.normalize(torch.randn(50, 24, generator=g), dim=-1)
    img[40] = img[3]
    mapping = torch.arange(50).repeat_interleave(2)
    txt = F.normalize(img[mapping] + 0.3 * torch.randn(100, 24, generator=g), dim=-1)
    ref_i2t, ref_t2i = loop_ranks(img, txt, mapping.tolist())
    for single_matmul in (True, False):
        i2t, t2i = retrieval_ranks(img, txt, mapping, chunk_size=16, single_matmul=single_matmul)
        assert i2t.tolist() == ref_i2t and t2i.tolist() == ref_t2i
        assert all(t2i[t] >= 1 for t in (6, 7, 80, 81))  # captions of images 3 and 40: the twin ties


def test_reduced_precision_matmul_uses_two_matmuls() -> None:
    previous = torch.get_float32_matmul_precision()
    try:
        assert _exact_fp32_matmul(torch.device("cpu"))
        torch.set_float32_matmul_precision("medium")  # may run fp32 matmuls in bf16: the window bound fails
        assert not _exact_fp32_matmul(torch.device("cpu"))
    finally:
        torch.set_float32_matmul_precision(previous)
    assert _exact_fp32_matmul(torch.device("cpu"))


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
    txt = torch.tensor([[0.1, 0.9], [1.0, 0.0], [0.0, 1.0]])  # c0 (img0) looks like img1; c1 (img0) perfect
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
    # bf16 inputs: scored as their exact fp32 values, so every recall equals the loop reference on those values
    img16, txt16 = img.bfloat16(), txt.bfloat16()
    got = retrieval_metrics(img16, txt16, mapping, ks=(1, 5, 10))
    assert got == retrieval_metrics(img16.float(), txt16.float(), mapping, ks=(1, 5, 10))
    expected = naive_recalls(*loop_ranks(img16.float(), txt16.float(), mapping.tolist()), (1, 5, 10))
    assert {k: got[k] for k in expected} == expected
    assert 0 < got["i2t_R@1"] < got["i2t_R@10"] < 100  # random 16-d features: neither trivial nor degenerate


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


# ----------------------------------------------------------------------------------------------------------------
# collapse guard


def test_embedding_spread_against_the_pairwise_matrix() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 6, generator=g) + torch.tensor([2.0, 0, 0, 0, 0, 0])  # not centred: positive cosines
    unit = F.normalize(x.double(), dim=-1)
    cos = unit @ unit.T
    mean_off_diagonal = float((cos.sum() - cos.diagonal().sum()) / (37 * 36))
    spread = embedding_spread(x)
    assert spread["mean_cosine"] == pytest.approx(mean_off_diagonal, abs=1e-6)
    assert spread["max_dim_std"] == pytest.approx(float(unit.std(0).max()), abs=1e-6)


def test_is_collapsed() -> None:
    g = torch.Generator().manual_seed(8)
    random_features = F.normalize(torch.randn(200, 32, generator=g), dim=-1)
    assert not is_collapsed(random_features)
    assert is_collapsed(torch.ones(200, 32))  # identical rows: mean cosine 1, no spread
    assert is_collapsed(torch.ones(200, 32) + 1e-3 * torch.randn(200, 32, generator=g))  # near-identical
    assert is_collapsed(torch.zeros(200, 32))  # a dead tower: no direction at all
    assert is_collapsed(torch.full((200, 32), float("nan")))
    one_dim = torch.zeros(200, 32)
    one_dim[:, 0] = torch.randn(200, generator=g).sign()  # +-e0: cosines +-1, mean ~0, but spread on one axis
    assert not is_collapsed(one_dim)
    assert not is_collapsed(random_features[:1])  # one row: nothing to compare


def _accumulate(img: torch.Tensor, txt: torch.Tensor, per_image: int) -> RetrievalAccumulator:
    acc = RetrievalAccumulator()
    n = img.shape[0]
    for start in range(0, n, 8):  # batches of 8 images with their captions
        stop = min(start + 8, n)
        index = torch.arange(stop - start).repeat_interleave(per_image)
        keys = [f"k{i}" for i in range(start, stop)]
        acc.update(keys, img[start:stop], txt[start * per_image : stop * per_image], index)
    return acc


def test_accumulator_flags_collapsed_embeddings(caplog) -> None:
    n = 30
    img = F.normalize(torch.ones(n, 16), dim=-1)
    txt = F.normalize(torch.ones(3 * n, 16), dim=-1)
    with caplog.at_level(logging.WARNING, logger="clipforge.eval.accumulator"):
        metrics = _accumulate(img, txt, 3).compute(name="coco")
    assert metrics["collapsed"] == 1.0
    assert metrics["i2t_R@1"] == metrics["t2i_R@1"] == 0.0
    assert any("coco" in r.getMessage() and "collapsed" in r.getMessage() for r in caplog.records)
    # only one side collapsed is flagged too
    g = torch.Generator().manual_seed(9)
    varied = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    assert _accumulate(varied, txt, 3).compute()["collapsed"] == 1.0


def test_accumulator_random_embeddings_not_collapsed(caplog) -> None:
    g = torch.Generator().manual_seed(10)
    n = 30
    img = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    txt = F.normalize(img.repeat_interleave(2, 0) + 0.5 * torch.randn(2 * n, 16, generator=g), dim=-1)
    with caplog.at_level(logging.WARNING, logger="clipforge.eval.accumulator"):
        metrics = _accumulate(img, txt, 2).compute(name="coco")
    assert metrics["collapsed"] == 0.0
    assert metrics["num_images"] == 30.0 and metrics["num_captions"] == 60.0
    expected = retrieval_metrics(img, txt, torch.arange(n).repeat_interleave(2))
    assert {k: metrics[k] for k in expected} == expected
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
