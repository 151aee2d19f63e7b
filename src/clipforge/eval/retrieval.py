"""Image-text retrieval metrics (Recall@k) with bounded memory, for Flickr30k / COCO and long-caption benchmarks.

Conventions (SPEC §C.7):

* **image→text is any-hit**: an image scores at ``k`` if *any* of its captions is among its top-``k`` captions
  (Flickr30k / COCO convention, CLIP_benchmark's ``recall > 0``, BLIP's ``itm_eval``).
* **text→image**: the rank of the caption's single image among all images.
* **Ties count against the model** (the shared rule of :mod:`clipforge.eval.ranking`): the 0-based rank is the
  number of *competitors* scoring ``>=`` the positive (NaN included). For image→text the positive is the
  image's best caption and the competitors are the captions of *other* images — the image's other captions never
  count against its best one; for text→image the competitors are all other images. Without ties this is exactly
  the position of the (best) positive in a descending ``argsort``, i.e. CLIP_benchmark's ``recall_at_k``; with
  ties the result no longer depends on a sort's tie order, and a collapsed encoder (all embeddings equal) gets
  the worst rank everywhere, R@k = 0. :func:`embedding_spread` / :func:`is_collapsed` detect such an encoder
  (the training modules log ``val/retrieval/<name>/collapsed``).
* With one caption per image both directions reduce to "the pair beats every other candidate", i.e. R@1 is the
  long-caption benchmarks' argmax protocol minus its index-order tie-break — see :func:`long_text_r1`.

Memory: scores are computed ``chunk_size`` rows at a time (``chunk_size x N_txt`` for image rows, then
``chunk_size x N_img`` for text rows), never the full ``N_img x N_txt`` matrix; the price is one matmul per
direction (two in all) instead of one. Each direction computes its own full rows, so a positive score and the
scores it is compared with come from the *same* matmul call — the ranks cannot be flipped by last-ulp differences
between two different computations of one dot product. The other side is held once, transposed and contiguous
(``D x N``, fp32), which is what the CPU GEMM runs fastest on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.eval.ranking import pessimistic_ranks

__all__ = ["embedding_spread", "is_collapsed", "long_text_r1", "retrieval_metrics", "retrieval_ranks"]


def _check_inputs(
    image_features: Tensor, text_features: Tensor, text_to_image: Tensor, chunk_size: int
) -> None:
    if (
        image_features.ndim != 2
        or text_features.ndim != 2
        or image_features.shape[1] != text_features.shape[1]
    ):
        raise ValueError(
            f"expected (N_img, D) and (N_txt, D) features, got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}"
        )
    if text_to_image.shape != (text_features.shape[0],):
        raise ValueError(
            f"text_to_image must have shape ({text_features.shape[0]},), got {tuple(text_to_image.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_img = image_features.shape[0]
    if n_img == 0:
        raise ValueError("no images")
    if text_to_image.numel() and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n_img):
        raise ValueError(f"text_to_image values must lie in [0, {n_img})")
    if bool((torch.bincount(text_to_image, minlength=n_img) == 0).any()):
        raise ValueError("every image needs at least one caption (drop caption-less images first)")


@torch.no_grad()
def retrieval_ranks(
    image_features: Tensor, text_features: Tensor, text_to_image: Tensor, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """0-based ranks of the positives in both directions (competitors scoring ``>=`` the positive).

    Args:
        image_features: ``(N_img, D)`` L2-normalised image embeddings (any float dtype; upcast per chunk). The
            computation runs on this tensor's device; the other inputs are moved there.
        text_features: ``(N_txt, D)`` L2-normalised caption embeddings.
        text_to_image: ``(N_txt,)`` integer tensor, ``text_to_image[t]`` = index of caption ``t``'s image.
        chunk_size: rows of the score matrix held at once.

    Returns:
        ``(i2t_ranks, t2i_ranks)``: ``(N_img,)`` number of other images' captions scoring ``>=`` each image's
        *best* caption (any-hit) and ``(N_txt,)`` number of other images scoring ``>=`` each caption's image,
        both ``int64`` on the CPU.

    Raises:
        ValueError: on mismatched shapes, out-of-range indices or an image without captions.
    """
    device = image_features.device
    image_features, text_features = image_features.detach(), text_features.detach().to(device)
    text_to_image = text_to_image.detach().to(device=device, dtype=torch.long)
    _check_inputs(image_features, text_features, text_to_image, chunk_size)
    n_img, n_txt = image_features.shape[0], text_features.shape[0]

    # image -> text: full rows of (image chunk x all captions); positives = the chunk's own captions
    texts_t = text_features.float().T.contiguous()  # (D, N_txt): O(N * D), not O(N^2)
    order = torch.argsort(text_to_image, stable=True)  # captions grouped by image
    offsets = torch.cumsum(torch.bincount(text_to_image, minlength=n_img), 0).tolist()
    offsets.insert(0, 0)
    i2t = torch.empty(n_img, dtype=torch.long, device=device)
    for start in range(0, n_img, chunk_size):
        stop = min(start + chunk_size, n_img)
        scores = image_features[start:stop].float() @ texts_t
        caps = order[offsets[start] : offsets[stop]]
        i2t[start:stop] = pessimistic_ranks(scores, text_to_image[caps] - start, caps)
        del scores
    del texts_t

    # text -> image: full rows of (caption chunk x all images); one positive per row
    images_t = image_features.float().T.contiguous()
    t2i = torch.empty(n_txt, dtype=torch.long, device=device)
    for start in range(0, n_txt, chunk_size):
        stop = min(start + chunk_size, n_txt)
        scores = text_features[start:stop].float() @ images_t
        rows = torch.arange(stop - start, device=device)
        t2i[start:stop] = pessimistic_ranks(scores, rows, text_to_image[start:stop])
        del scores
    return i2t.cpu(), t2i.cpu()


def retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k in both directions (percent), any-hit for image→text, ties counted against (module docstring).

    Memory is ``O(chunk_size * max(N_img, N_txt) + (N_img + N_txt) * D)`` beyond the inputs; BENCHMARKS.md
    gives times for 5k x 25k and 50k x 250k captions (512-d) on two CPU cores. Inputs may be fp16/bf16 (upcast
    per chunk); the work runs on the device of ``image_features``.

    Args:
        image_features: ``(N_img, D)`` L2-normalised image embeddings.
        text_features: ``(N_txt, D)`` L2-normalised caption embeddings.
        text_to_image: ``(N_txt,)`` index of each caption's image; every image needs at least one caption.
        ks: cut-offs ``k``.
        chunk_size: rows of the score matrix held at once; results do not depend on it.

    Returns:
        ``i2t_R@{k}`` and ``t2i_R@{k}`` for each ``k`` (0-100), ``rsum`` (sum of all those recalls), and
        ``i2t_mean_rank``, ``i2t_median_rank``, ``t2i_mean_rank``, ``t2i_median_rank`` (1-based ranks; the
        median is the lower median).

    Raises:
        ValueError: on mismatched shapes, out-of-range indices, an image without captions or ``k < 1``.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {tuple(ks)}")
    i2t, t2i = retrieval_ranks(image_features, text_features, text_to_image, chunk_size=chunk_size)
    metrics: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            metrics[f"{name}_R@{k}"] = 100.0 * int((ranks < k).sum()) / ranks.numel()
    metrics["rsum"] = sum(metrics.values())
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        metrics[f"{name}_mean_rank"] = float(ranks.double().mean()) + 1.0
        metrics[f"{name}_median_rank"] = float(ranks.median()) + 1.0
    return metrics


def long_text_r1(
    image_features: Tensor,
    text_features: Tensor,
    ks: Sequence[int] = (1, 5, 10, 25, 50),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """One caption per image (row ``i`` of both inputs is a pair): the long-caption benchmarks' protocol.

    LLM2CLIP's ``retrieval_global`` (ShareGPT4V-1k, Urban-1k, DOCCI) counts an argmax hit at R@1 and "index in
    top-k" at R@5/10/25/50; with one caption per image that is :func:`retrieval_metrics` with an identity mapping.
    Ties aside: here a competitor tying the pair counts against it (R@1 needs the pair to beat every other
    candidate strictly), whereas ``argmax`` / ``topk`` credit whichever tied index comes first.

    Args:
        image_features: ``(N, D)`` L2-normalised image embeddings.
        text_features: ``(N, D)`` L2-normalised caption embeddings, caption ``i`` describing image ``i``.
        ks: cut-offs ``k``.
        chunk_size: rows of the score matrix held at once.

    Returns:
        Same keys as :func:`retrieval_metrics`.

    Raises:
        ValueError: if the two inputs hold different numbers of rows.
    """
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"one caption per image expected, got {image_features.shape[0]} images and "
            f"{text_features.shape[0]} captions"
        )
    mapping = torch.arange(image_features.shape[0])
    return retrieval_metrics(image_features, text_features, mapping, ks=ks, chunk_size=chunk_size)


@torch.no_grad()
def embedding_spread(features: Tensor, chunk_size: int = 16384) -> dict[str, float]:
    """How far apart a set of embeddings is: the collapse signal of a contrastive encoder.

    Both statistics are exact over all rows, in ``O(N * D)`` time and ``O(chunk_size * D)`` memory (no pairwise
    matrix): with unit rows ``u_i``, ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2``. Rows are
    L2-normalised first (in float64); an all-zero row stays zero.

    Args:
        features: ``(N, D)`` embeddings (any float dtype).
        chunk_size: rows normalised at once.

    Returns:
        ``{"mean_cosine": mean cosine similarity over all pairs of distinct rows,
        "max_dim_std": largest per-dimension standard deviation of the normalised rows}``, both NaN for fewer
        than two rows. Identical rows give ``1.0`` and ``0.0``; random directions in ``D`` dimensions about
        ``0`` and ``1 / sqrt(D)``.

    Raises:
        ValueError: if ``features`` is not 2-D.
    """
    if features.ndim != 2:
        raise ValueError(f"expected (N, D) features, got shape {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        return {"mean_cosine": float("nan"), "max_dim_std": float("nan")}
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    squares = torch.zeros_like(total)
    for start in range(0, n, chunk_size):
        unit = F.normalize(features[start : start + chunk_size].detach().double(), dim=-1)
        total += unit.sum(0)
        squares += (unit * unit).sum(0)
    mean = total / n
    variance = ((squares - n * mean * mean) / (n - 1)).clamp_min(0.0)
    return {
        "mean_cosine": (float(total @ total) - float(squares.sum())) / (n * (n - 1)),
        "max_dim_std": float(variance.max().sqrt()),
    }


def is_collapsed(features: Tensor, max_mean_cosine: float = 0.99, min_dim_std: float = 1e-4) -> bool:
    """Whether embeddings have (nearly) no spread: mean pairwise cosine above ``max_mean_cosine`` or every
    dimension's standard deviation below ``min_dim_std`` (after L2 normalisation; see :func:`embedding_spread`).

    Non-finite statistics (NaN embeddings) count as collapsed; fewer than two rows never do (nothing to compare).

    Args:
        features: ``(N, D)`` embeddings.
        max_mean_cosine: largest mean pairwise cosine of a healthy encoder.
        min_dim_std: smallest largest-per-dimension standard deviation of a healthy encoder.

    Returns:
        ``True`` when collapsed.
    """
    if features.shape[0] < 2:
        return False
    spread = embedding_spread(features)
    return not (spread["mean_cosine"] <= max_mean_cosine and spread["max_dim_std"] >= min_dim_std)
