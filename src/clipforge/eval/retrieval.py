"""Image-text retrieval metrics (Recall@k) with bounded memory, for Flickr30k / COCO and long-caption benchmarks.

Conventions (LLM2CLIP's and CLIP_benchmark's; docs/design/llm2clip.md#evaluation-protocol):

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

Memory and time: scores are computed ``chunk_size`` image rows at a time (``chunk_size x N_txt``), never the full
``N_img x N_txt`` matrix. Image→text ranks come from these rows directly: an image's positives and the scores
they are compared with come from the *same* matmul call, so last-ulp differences between two computations of one
dot product cannot flip a tie. Text→image ranks are counted in the same pass against a window that provably holds
each caption's fp32 positive score (:func:`retrieval_ranks`); only captions with a competitor inside their window
— every exact tie, and differences at rounding level — are ranked again from full ``caption x all images`` rows
of one matmul call. So the work is one matmul plus a fraction of a second (all of it for a collapsed encoder),
not one per direction. Each side is held once more, transposed and contiguous (``D x N``, fp32), which is what
the CPU GEMM runs fastest on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.eval.ranking import count_below, pessimistic_ranks

__all__ = [
    "embedding_spread",
    "is_collapsed",
    "long_text_r1",
    "retrieval_metrics",
    "retrieval_ranks",
    "top_k",
]


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


def _exact_fp32_matmul(device: torch.device) -> bool:
    """Whether fp32 matmuls on ``device`` are IEEE fp32 (no TF32 / bf16 shortcuts), as the window bound needs."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    backend = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
    precision = getattr(backend, "fp32_precision", "none")
    return precision in ("none", "ieee") and not (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )


def _positive_windows(
    images: Tensor, texts: Tensor, text_to_image: Tensor, block: int = 16384
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where each caption's positive score lies, whatever order a fp32 GEMM sums it in.

    Any fp32 evaluation of a length-``D`` dot product ``a . b`` is within ``gamma_D * |a| |b|`` of the exact value
    (``gamma_D = D u / (1 - D u)``, ``u = 2^-24``; Higham, *Accuracy and Stability of Numerical Algorithms*,
    §3.1), so with ``M = max_j |image_j|`` every fp32 score of caption ``t`` — its positive's and every
    competitor's — lies within ``E_t = (gamma_D + gamma_D^(64)) M |text_t|`` of its exact value, and the float64
    dot product ``p_t`` of the positive is within ``gamma_D^(64) M |text_t|`` of its own.

    Returns:
        ``(p, E, lo, hi)``: float64 ``p`` and ``E``, and fp32 bounds ``lo < p - E``, ``hi > p + E`` (one ulp
        outward), all ``(N_txt,)``.
    """
    dim = images.shape[1]
    gamma = sum(dim * u / (1 - dim * u) for u in (2.0**-24, 2.0**-53))
    max_norm = max(
        float(images[i : i + block].double().norm(dim=1).max()) for i in range(0, len(images), block)
    )
    p = torch.empty(len(texts), dtype=torch.float64, device=texts.device)
    width = torch.empty_like(p)
    for i in range(0, len(texts), block):
        b = texts[i : i + block].double()
        p[i : i + block] = (images[text_to_image[i : i + block]].double() * b).sum(1)
        width[i : i + block] = b.norm(dim=1) * (gamma * max_norm * (1 + 1e-6))
    inf = torch.tensor(float("inf"), device=texts.device)
    lo = torch.nextafter((p - width).float(), -inf)
    hi = torch.nextafter((p + width).float(), inf)
    return p, width, lo, hi


@torch.no_grad()
def retrieval_ranks(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    chunk_size: int = 1024,
    single_matmul: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """0-based ranks of the positives in both directions (competitors scoring ``>=`` the positive).

    Image→text ranks come from full rows ``image chunk x all captions``: an image's positives and competitors are
    scores of one matmul call. Text→image ranks need full *columns* of the same matrix. With ``single_matmul``
    they are counted in the same pass: each caption's competitors are compared with a window ``[lo_t, hi_t)``
    that provably holds its positive's fp32 score however a GEMM sums it (:func:`_positive_windows`); a
    competitor above the window counts, one below does not. A caption with any competitor *inside* its window —
    an exact tie always is, and so is any difference within fp32 rounding error — or whose positive falls
    outside it (non-IEEE arithmetic) is ranked again from full rows ``caption x all images`` of one matmul call,
    exactly as without ``single_matmul``. Ties are therefore resolved identically on both paths; the two can only
    differ on a competitor whose exact score is within about twice the rounding bound of the positive's, where
    neither fp32 order is more right than the other (none was seen in the tests or benchmarks). The single pass
    saves the part of the second matmul that near-ties do not need.

    Args:
        image_features: ``(N_img, D)`` L2-normalised image embeddings (any float dtype; upcast per chunk). The
            computation runs on this tensor's device; the other inputs are moved there.
        text_features: ``(N_txt, D)`` L2-normalised caption embeddings.
        text_to_image: ``(N_txt,)`` integer tensor, ``text_to_image[t]`` = index of caption ``t``'s image.
        chunk_size: rows of the score matrix held at once.
        single_matmul: count text→image in the image→text pass (see above); ``None`` = whenever fp32 matmuls
            are exact IEEE fp32 (``torch.get_float32_matmul_precision() == "highest"``, no TF32 / bf16).

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
    if single_matmul is None:
        single_matmul = _exact_fp32_matmul(device)
    if single_matmul:
        p, width, lo, hi = _positive_windows(image_features.float(), text_features.float(), text_to_image)
        below_lo = torch.zeros(n_txt, dtype=torch.long, device=device)
        below_hi = torch.zeros(n_txt, dtype=torch.long, device=device)
        own = torch.empty(n_txt, device=device)  # each caption's positive, as its image row's matmul gave it

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
        rows = text_to_image[caps] - start
        i2t[start:stop] = pessimistic_ranks(scores, rows, caps)
        if single_matmul:
            below_lo += count_below(scores, lo, dim=0)
            below_hi += count_below(scores, hi, dim=0)
            own[caps] = scores[rows, caps]
        del scores
    del texts_t

    # text -> image: full rows of (caption chunk x all images); one positive per row
    if single_matmul:
        below_lo -= (own < lo).long()  # competitors only: take each caption's own image out of the counts
        below_hi -= (own < hi).long()
        t2i = (n_img - 1) - below_hi  # competitors at or above the window (or NaN): above the positive
        unsure = (below_hi > below_lo) | ~((own.double() - p).abs() <= width)
        captions = unsure.nonzero().flatten()
    else:
        t2i = torch.empty(n_txt, dtype=torch.long, device=device)
        captions = torch.arange(n_txt, device=device)
    images_t = image_features.float().T.contiguous()
    for start in range(0, len(captions), chunk_size):
        chunk = captions[start : start + chunk_size]
        scores = text_features[chunk].float() @ images_t
        rows = torch.arange(len(chunk), device=device)
        t2i[chunk] = pessimistic_ranks(scores, rows, text_to_image[chunk])
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
def top_k(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    query_groups: Tensor | None = None,
    gallery_groups: Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The ``k`` best-scoring gallery rows of every query (dot product), skipping the query's own group.

    Retrieval-augmented captioning: queries are image embeddings, the gallery a caption datastore, and a group
    an image key, so an image never retrieves its own captions. Scores are computed ``chunk_size`` query rows at
    a time as one fp32 matmul per chunk; ties are broken by gallery order (a stable sort), so the result does
    not depend on the chunk size or the sort implementation.

    Args:
        queries: ``(Q, D)`` embeddings (any float dtype; upcast per chunk).
        gallery: ``(N, D)`` embeddings.
        k: rows per query.
        query_groups: ``(Q,)`` integer group of each query (``-1`` = none); with ``gallery_groups``, a gallery
            row of the query's group is never returned.
        gallery_groups: ``(N,)`` integer group of each gallery row.
        chunk_size: query rows scored at once.

    Returns:
        ``(scores, indices)``, both ``(Q, k)``, best first; where fewer than ``k`` rows are eligible the rest
        are ``-inf`` / ``-1``.

    Raises:
        ValueError: on mismatched shapes, ``k < 1`` or groups given for one side only.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected (Q, D) and (N, D), got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got {k} and {chunk_size}")
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("give query_groups and gallery_groups together")
    if gallery_groups is not None and query_groups is not None:
        if query_groups.shape != (queries.shape[0],) or gallery_groups.shape != (gallery.shape[0],):
            raise ValueError("query_groups must be (Q,) and gallery_groups (N,)")
    n, width = gallery.shape[0], min(k, gallery.shape[0])
    scores = torch.full((queries.shape[0], k), float("-inf"))
    indices = torch.full((queries.shape[0], k), -1, dtype=torch.long)
    if n == 0:
        return scores, indices
    g = gallery.to(queries.device, torch.float32).T.contiguous()
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size].float() @ g
        eligible = torch.full((block.shape[0],), n, dtype=torch.long)
        if query_groups is not None and gallery_groups is not None:
            own = gallery_groups.to(block.device)[None, :] == query_groups[
                start : start + chunk_size, None
            ].to(block.device)
            own &= query_groups[start : start + chunk_size, None].to(block.device) >= 0
            block = block.masked_fill(own, float("-inf"))
            eligible -= own.sum(1).cpu()
        top, idx = torch.sort(block, dim=1, descending=True, stable=True)
        top, idx = top[:, :width].cpu(), idx[:, :width].cpu()
        keep = torch.arange(width)[None, :] < eligible[:, None]
        scores[start : start + len(top), :width] = top.masked_fill(~keep, float("-inf"))
        indices[start : start + len(top), :width] = idx.masked_fill(~keep, -1)
    return scores, indices


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
