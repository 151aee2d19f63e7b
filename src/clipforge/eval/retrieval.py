"""Image-text retrieval metrics (Recall@k) with bounded memory, for Flickr30k / COCO and long-caption benchmarks.

Conventions (SPEC §C.7):

* **image→text is any-hit**: an image scores at ``k`` if *any* of its captions is among its top-``k`` captions
  (Flickr30k / COCO convention, CLIP_benchmark's ``recall > 0``, BLIP's ``itm_eval``).
* **text→image**: the rank of the caption's single image among all images.
* **rank = number of strictly greater scores** (0-based). A score that *ties* the positive does not push it down,
  so ties resolve in the model's favour and the result does not depend on a sort's tie order. Without ties this
  is exactly the position of the (best) positive in a descending ``argsort``. Caveat: a collapsed encoder (all
  embeddings equal) ties everywhere and therefore scores 100; watch the training loss / embedding spread.
* With one caption per image both directions reduce to "is the diagonal in the row's top-k", i.e. R@1 is the
  argmax protocol of the long-caption benchmarks (ShareGPT4V-1k, Urban-1k, DOCCI) — see :func:`long_text_r1`.

Memory: scores are computed ``chunk_size`` rows at a time (``chunk_size x N_txt`` for image rows, then
``chunk_size x N_img`` for text rows), never the full ``N_img x N_txt`` matrix; the price is one matmul per
direction (two in all) instead of one. Each direction computes its own full rows, so a positive score and the scores it is compared with come from the *same* matmul call — the ranks
cannot be flipped by last-ulp differences between two different computations of one dot product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["long_text_r1", "retrieval_metrics", "retrieval_ranks"]


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
    """0-based ranks of the positives in both directions (number of strictly greater scores).

    Args:
        image_features: ``(N_img, D)`` L2-normalised image embeddings (any float dtype; upcast per chunk). The
            computation runs on this tensor's device; the other inputs are moved there.
        text_features: ``(N_txt, D)`` L2-normalised caption embeddings.
        text_to_image: ``(N_txt,)`` integer tensor, ``text_to_image[t]`` = index of caption ``t``'s image.
        chunk_size: rows of the score matrix held at once.

    Returns:
        ``(i2t_ranks, t2i_ranks)``: ``(N_img,)`` rank of each image's *best* caption (any-hit) and ``(N_txt,)``
        rank of each caption's image, both ``int64`` on the CPU.

    Raises:
        ValueError: on mismatched shapes, out-of-range indices or an image without captions.
    """
    device = image_features.device
    image_features, text_features = image_features.detach(), text_features.detach().to(device)
    text_to_image = text_to_image.detach().to(device=device, dtype=torch.long)
    _check_inputs(image_features, text_features, text_to_image, chunk_size)
    n_img, n_txt = image_features.shape[0], text_features.shape[0]

    # image -> text: full rows of (image chunk x all captions); best positive per image, then count above it
    texts = text_features.float()  # the whole other side in fp32: O(N * D), not O(N^2)
    order = torch.argsort(text_to_image, stable=True)  # captions grouped by image
    offsets = torch.cumsum(torch.bincount(text_to_image, minlength=n_img), 0).tolist()
    offsets.insert(0, 0)
    i2t = torch.empty(n_img, dtype=torch.long, device=device)
    for start in range(0, n_img, chunk_size):
        stop = min(start + chunk_size, n_img)
        scores = image_features[start:stop].float() @ texts.T
        caps = order[offsets[start] : offsets[stop]]
        rows = text_to_image[caps] - start
        best = torch.full((stop - start,), float("-inf"), device=device)
        best.scatter_reduce_(0, rows, scores[rows, caps], reduce="amax")
        i2t[start:stop] = (scores > best[:, None]).sum(1)
    del texts

    # text -> image: full rows of (caption chunk x all images)
    images = image_features.float()
    t2i = torch.empty(n_txt, dtype=torch.long, device=device)
    for start in range(0, n_txt, chunk_size):
        stop = min(start + chunk_size, n_txt)
        scores = text_features[start:stop].float() @ images.T
        positive = scores.gather(1, text_to_image[start:stop, None])
        t2i[start:stop] = (scores > positive).sum(1)
    return i2t.cpu(), t2i.cpu()


def retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k in both directions (percent), any-hit for image→text, strictly-greater ranks (module docstring).

    Memory is ``O(chunk_size * max(N_img, N_txt))`` beyond the inputs; 5k images x 25k captions x 512-d takes
    a few seconds on two CPU cores. Inputs may be fp16/bf16 (upcast per chunk); the work runs on the device of
    ``image_features``.

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
    top-k" at R@5/10/25/50; with one caption per image that is :func:`retrieval_metrics` with an identity mapping
    (ties aside: a tie with the positive counts as a hit here, whereas ``argmax`` picks the first index).

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
