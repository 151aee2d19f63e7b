"""SimCSELoss against a naive loop reference, a hand-computed case, and 2-process (gloo) global negatives."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.losses.simcse import SimCSELoss
from tests.helpers.dist import init_gloo, run_ranks


def naive_simcse(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, scale: float) -> float:
    """Python loops in float64: row i's cross-entropy over cos(q_i, [pos_1..pos_N, neg_1..neg_N]), label i."""

    def cos(a, b):
        a, b = a.double().tolist(), b.double().tolist()
        dot = sum(x * y for x, y in zip(a, b))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    docs = list(pos) + (list(neg) if neg is not None else [])
    total = 0.0
    for i, qi in enumerate(q):
        row = [scale * cos(qi, d) for d in docs]
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[i]
    return total / len(q)


def _triplets(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_negatives", [True, False])
def test_matches_naive(n, seed, with_negatives):
    q, p, neg = _triplets(n, 5, seed)
    neg = neg if with_negatives else None
    out = SimCSELoss(scale=7.0)(q, p, neg)
    assert out["contrastive_loss"].item() == pytest.approx(naive_simcse(q, p, neg, 7.0), rel=1e-12)
    assert not out["top1"].requires_grad


def test_hand_computed_and_top1():
    # q1 = e1, q2 = e2; positives e1, (0.6, 0.8); one hard negative each: (0.8, 0.6), e1  (cosines, scale 10)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    pos = torch.tensor([[2.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # unnormalised: the loss normalises
    neg = torch.tensor([[0.8, 0.6], [1.0, 0.0]], dtype=torch.float64)
    # row 1 scores [10, 6, 8, 10] (label 0) -> log(e^10 + e^6 + e^8 + e^10) - 10
    # row 2 scores [0, 8, 6, 0]  (label 1) -> log(1 + e^8 + e^6 + 1) - 8
    r1 = math.log(2 * math.exp(10) + math.exp(6) + math.exp(8)) - 10
    r2 = math.log(2 + math.exp(8) + math.exp(6)) - 8
    out = SimCSELoss(scale=10.0)(q, pos, neg)
    assert out["contrastive_loss"].item() == pytest.approx((r1 + r2) / 2, rel=1e-12)
    # row 1 ties its positive with the second hard negative: argmax takes the first -> hit; row 2 hit
    assert out["top1"].item() == 1.0


def test_mismatched_sizes_raise():
    q, p, neg = _triplets(3, 4, 0)
    with pytest.raises(ValueError):
        SimCSELoss()(q, p[:2])
    with pytest.raises(ValueError):
        SimCSELoss()(q, p, neg[:1])


# ----------------------------------------------------------------------------------------------------------------
# two processes (gloo): B = 8 triplets from three tiny linear encoders (seed 0); rank r holds rows [4r, 4r + 4).
# After backward each rank averages its gradients over ranks (what DDP does). Both the global and the local-loss
# variants must give the single-process loss (global: on every rank; local: as the mean over ranks) and exactly
# the single-process gradients.

_B, _IN, _D, _WORLD = 8, 6, 4, 2
_CASES = {"global": False, "local": True}


def _loss_and_grads(local: bool, rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    encoders = [torch.nn.Linear(_IN, _D).double() for _ in range(3)]
    inputs = [torch.randn(_B, _IN, dtype=torch.float64) for _ in range(3)]
    feats = [enc(x[rows]) for enc, x in zip(encoders, inputs)]
    loss = SimCSELoss(scale=5.0, local_loss=local)(*feats)["contrastive_loss"]
    loss.backward()
    grads = {
        f"{i}.{k}": p.grad.detach().clone() for i, e in enumerate(encoders) for k, p in e.named_parameters()
    }
    return loss.item(), grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, _WORLD, port)
    try:
        n = _B // _WORLD
        result = {}
        for name, local in _CASES.items():
            loss, grads = _loss_and_grads(local, slice(rank * n, (rank + 1) * n))
            for g in grads.values():
                dist.all_reduce(g)
                g /= _WORLD
            result[name] = (loss, grads)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_global_negatives_equal_single_process(tmp_path):
    ranks = run_ranks(_worker, _WORLD, tmp_path)
    for name, local in _CASES.items():
        ref_loss, ref_grads = _loss_and_grads(local, slice(0, _B))
        losses = [r[name][0] for r in ranks]
        if local:
            assert losses[0] != pytest.approx(losses[1], rel=1e-6)
            assert sum(losses) / _WORLD == pytest.approx(ref_loss, rel=1e-12)
        else:
            for loss in losses:
                assert loss == pytest.approx(ref_loss, rel=1e-12)
        for r in ranks:
            for key, ref in ref_grads.items():
                torch.testing.assert_close(r[name][1][key], ref, rtol=1e-10, atol=1e-12, msg=f"{name}: {key}")
    # the reference itself is the naive loss over the whole batch
    torch.manual_seed(0)
    encoders = [torch.nn.Linear(_IN, _D).double() for _ in range(3)]
    inputs = [torch.randn(_B, _IN, dtype=torch.float64) for _ in range(3)]
    feats = [F.linear(x, e.weight, e.bias).detach() for e, x in zip(encoders, inputs)]
    assert _loss_and_grads(False, slice(0, _B))[0] == pytest.approx(naive_simcse(*feats, 5.0), rel=1e-10)
