"""ClipLoss / SigLipLoss against naive loop references, hand-computed cases, and 2-process (gloo) equivalence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.losses import ClipLoss, SigLipLoss, gather_features, rank_and_world
from tests.helpers.dist import init_gloo, run_ranks

# ----------------------------------------------------------------------------------------------------------------
# naive references: Python loops over rows, float64 scalars, hand-written log-sum-exp and log-sigmoid


def _scores(img: torch.Tensor, txt: torch.Tensor) -> list[list[float]]:
    a, b = img.double().tolist(), txt.double().tolist()
    return [[sum(x * y for x, y in zip(row_i, row_t)) for row_t in b] for row_i in a]


def _logsumexp(row: list[float]) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def naive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    s = _scores(img, txt)
    n = len(s)
    i2t = sum(_logsumexp([scale * v for v in s[i]]) - scale * s[i][i] for i in range(n)) / n
    t2i = sum(_logsumexp([scale * s[j][i] for j in range(n)]) - scale * s[i][i] for i in range(n)) / n
    return (i2t + t2i) / 2


def naive_siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: float, bias: float) -> float:
    s = _scores(img, txt)
    n = len(s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += _log_sigmoid(z * (scale * s[i][j] + bias))
    return -total / n


def _double(module: torch.nn.Module, values: dict[str, float]) -> torch.nn.Module:
    """Cast to float64 and set scale/bias to exact float64 values (the float32 init would be off by ~1e-7)."""
    module = module.double()
    with torch.no_grad():
        for key, value in values.items():
            getattr(module, key).fill_(value)
    return module


def _features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1),
    )


# ----------------------------------------------------------------------------------------------------------------
# single process


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_loss_matches_naive(n: int, seed: int) -> None:
    img, txt = _features(n, 6, seed)
    loss_fn = _double(ClipLoss(), {"logit_scale": math.log(7.5 + seed)})
    out = loss_fn(img, txt)
    assert set(out) == {"contrastive_loss", "logit_scale"}
    assert out["contrastive_loss"].item() == pytest.approx(naive_clip_loss(img, txt, 7.5 + seed), rel=1e-12)
    assert out["logit_scale"].item() == pytest.approx(7.5 + seed)
    assert not out["logit_scale"].requires_grad


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_siglip_loss_matches_naive(n: int, seed: int) -> None:
    img, txt = _features(n, 5, seed)
    loss_fn = _double(SigLipLoss(), {"logit_scale": math.log(10.0 + seed), "logit_bias": -3.0 - seed})
    out = loss_fn(img, txt)
    assert set(out) == {"contrastive_loss", "logit_scale", "logit_bias"}
    expected = naive_siglip_loss(img, txt, 10.0 + seed, -3.0 - seed)
    assert out["contrastive_loss"].item() == pytest.approx(expected, rel=1e-12)
    assert out["logit_bias"].item() == pytest.approx(-3.0 - seed)


def test_hand_computed_2x2() -> None:
    # images e1, e2; texts e1, (0.6, 0.8)  ->  cosines S = [[1, 0.6], [0, 0.8]]
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    l1p = lambda x: math.log1p(math.exp(-x))  # noqa: E731  -log sigmoid(x) = log(1 + e^-x)
    # CLIP, scale 10: logits [[10, 6], [0, 8]]
    #   i2t rows: log(1+e^-4), log(1+e^-8)   t2i columns: [10, 0] -> log(1+e^-10), [6, 8] -> log(1+e^-2)
    #   loss = ((0.0181499 + 0.0003354) / 2 + (0.0000454 + 0.1269280) / 2) / 2 = 0.0363647
    clip = _double(ClipLoss(), {"logit_scale": math.log(10)})(img, txt)["contrastive_loss"].item()
    assert clip == pytest.approx(((l1p(4) + l1p(8)) / 2 + (l1p(10) + l1p(2)) / 2) / 2, rel=1e-12)
    assert clip == pytest.approx(0.03636468605822372, rel=1e-12)
    # SigLIP, scale 10, bias -5: logits [[5, 1], [-5, 3]], signs [[+, -], [-, +]] -> z*logits [[5, -1], [5, 3]]
    #   loss = (log(1+e^-5) + log(1+e^1) + log(1+e^-5) + log(1+e^-3)) / 2 = (0.0067153*2 + 1.3132617 + 0.0485874)/2
    sig = _double(SigLipLoss(), {"logit_scale": math.log(10), "logit_bias": -5.0})(img, txt)
    assert sig["contrastive_loss"].item() == pytest.approx(0.6876398680351005, rel=1e-12)


def test_clip_scale_clamping_and_gradient() -> None:
    img, txt = _features(4, 3, 7)
    capped = ClipLoss(init_logit_scale=math.log(200), max_logit_scale=math.log(100)).double()
    at_max = ClipLoss(init_logit_scale=math.log(100), max_logit_scale=math.log(100)).double()
    out = capped(img, txt)
    torch.testing.assert_close(out["contrastive_loss"], at_max(img, txt)["contrastive_loss"])
    assert out["logit_scale"].item() == pytest.approx(100.0)
    out["contrastive_loss"].backward()
    assert capped.logit_scale.grad is not None and capped.logit_scale.grad.item() == 0.0
    below = ClipLoss(init_logit_scale=math.log(20)).double()
    below(img, txt)["contrastive_loss"].backward()
    assert below.logit_scale.grad.item() != 0.0
    capped.clamp_()
    assert capped.logit_scale.item() == pytest.approx(math.log(100))
    negative = ClipLoss(init_logit_scale=-1.0)
    negative.clamp_()
    assert negative.logit_scale.item() == 0.0


def test_clip_fixed_scale_is_a_buffer() -> None:
    loss_fn = ClipLoss(learnable_scale=False)
    assert "logit_scale" in dict(loss_fn.named_buffers())
    assert not list(loss_fn.parameters())
    assert "logit_scale" in loss_fn.state_dict()
    img, txt = _features(3, 4, 0)
    assert loss_fn.double()(img, txt)["logit_scale"].item() == pytest.approx(1 / 0.07)
    assert isinstance(ClipLoss().logit_scale, torch.nn.Parameter)


def test_mismatched_batches_raise() -> None:
    img, txt = _features(3, 4, 0)
    with pytest.raises(ValueError):
        ClipLoss()(img.float(), txt[:2].float())
    with pytest.raises(ValueError):
        SigLipLoss()(img.float(), txt[:2].float())


def test_single_process_gather_is_identity() -> None:
    x = torch.randn(3, 2)
    assert rank_and_world() == (0, 1)
    assert gather_features(x) is x and gather_features(x, with_grad=False) is x


# ----------------------------------------------------------------------------------------------------------------
# two processes (gloo): per-rank losses and DDP-averaged gradients equal the single-process ones
#
# Setup: a fixed batch of B = 8 pairs is produced by two tiny linear layers (one per modality, seed 0) and
# L2-normalised; rank r holds pairs [4r, 4r + 4). After backward each rank all-reduces (sum) its parameter
# gradients and divides by the world size, exactly what DDP does.
#   ClipLoss(local_loss=False): every rank's loss == single-process loss (full global logits everywhere).
#   ClipLoss(local_loss=True):  mean over ranks of the per-rank losses == single-process loss.
#   SigLipLoss: normalised by the *local* batch n, so mean_r L_r = 1/(W n) * sum over all B x B pairs = L (see
#   the class docstring); the gradient identity follows because the all-gather backward sums into the owner.

_B, _IN_IMG, _IN_TXT, _D, _WORLD = 8, 6, 5, 4, 2
_CASES = {
    "clip_global": lambda: ClipLoss(init_logit_scale=math.log(5.0), local_loss=False),
    "clip_local": lambda: ClipLoss(init_logit_scale=math.log(5.0), local_loss=True),
    "siglip": lambda: SigLipLoss(init_logit_scale=math.log(5.0), init_logit_bias=-2.0),
}


def _setup_model() -> tuple[torch.nn.Linear, torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    img_proj = torch.nn.Linear(_IN_IMG, _D).double()
    txt_proj = torch.nn.Linear(_IN_TXT, _D).double()
    x_img = torch.randn(_B, _IN_IMG, dtype=torch.float64)
    x_txt = torch.randn(_B, _IN_TXT, dtype=torch.float64)
    return img_proj, txt_proj, x_img, x_txt


def _loss_and_grads(name: str, rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    img_proj, txt_proj, x_img, x_txt = _setup_model()
    loss_fn = _CASES[name]().double()
    img = F.normalize(img_proj(x_img[rows]), dim=-1)
    txt = F.normalize(txt_proj(x_txt[rows]), dim=-1)
    loss = loss_fn(img, txt)["contrastive_loss"]
    loss.backward()
    params = {f"img.{k}": p for k, p in img_proj.named_parameters()}
    params |= {f"txt.{k}": p for k, p in txt_proj.named_parameters()}
    params |= {f"loss.{k}": p for k, p in loss_fn.named_parameters()}
    return loss.item(), {k: p.grad.detach().clone() for k, p in params.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, _WORLD, port)
    try:
        n = _B // _WORLD
        rows = slice(rank * n, (rank + 1) * n)
        result: dict[str, object] = {"rank_and_world": rank_and_world()}
        for name in _CASES:
            loss, grads = _loss_and_grads(name, rows)
            for g in grads.values():  # DDP-style averaging
                dist.all_reduce(g)
                g /= _WORLD
            result[name] = (loss, grads)
        # gather semantics: with_grad sums every rank's gradient into the owner; without, only the local slot
        x = torch.full((2, 3), float(rank), requires_grad=True)
        gathered = gather_features(x, with_grad=True)
        gathered.sum().backward()
        result["gather_with_grad"] = (gathered.detach(), x.grad.clone())
        x.grad = None
        gathered = gather_features(x, with_grad=False)
        gathered.sum().backward()
        result["gather_no_grad"] = (gathered.detach(), x.grad.clone())
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_gloo_equivalence(tmp_path: Path) -> None:
    ranks = run_ranks(_worker, _WORLD, tmp_path)
    assert [r["rank_and_world"] for r in ranks] == [(0, 2), (1, 2)]

    for name in _CASES:
        ref_loss, ref_grads = _loss_and_grads(name, slice(0, _B))
        losses = [r[name][0] for r in ranks]
        if name == "clip_global":
            for loss in losses:
                assert loss == pytest.approx(ref_loss, rel=1e-12)
        else:  # per-rank losses differ; their mean is the global loss
            assert losses[0] != pytest.approx(losses[1], rel=1e-6)
            assert sum(losses) / _WORLD == pytest.approx(ref_loss, rel=1e-12)
        for r in ranks:
            grads = r[name][1]
            assert set(grads) == set(ref_grads)
            for key, ref in ref_grads.items():
                torch.testing.assert_close(grads[key], ref, rtol=1e-10, atol=1e-12, msg=f"{name}: {key}")

    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    for r in ranks:
        gathered, grad = r["gather_with_grad"]
        torch.testing.assert_close(gathered, expected)
        torch.testing.assert_close(grad, torch.full((2, 3), float(_WORLD)))
        gathered, grad = r["gather_no_grad"]
        torch.testing.assert_close(gathered, expected)
        torch.testing.assert_close(grad, torch.ones(2, 3))
