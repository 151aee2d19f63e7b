"""Caption retrieval accuracy (CRA, LLM2CLIP): how well a text encoder tells captions of different images apart.

Two variants, both top-1 by cosine similarity, in percent:

* **pairs** (LLM2CLIP's CRA, issue #7): for each image take caption #1 as the query and caption #2 as its target;
  each query retrieves among the #2 captions of *every* image.
* **full gallery**: every caption of every image is a query and retrieves among *all other* captions; a hit is a
  caption of the same image. Only captions whose image has another caption count.

Both use the ranking metrics' tie rule (:mod:`clipforge.eval.ranking`): a hit needs the (best) target to score
*strictly* above every non-target; a tie (or a NaN) counts as a miss, so a collapsed encoder scores 0 and the
result never depends on index order (COCO repeats some captions across images). In the full gallery, the other
captions of the query's own group never count against the best of them. Scores are computed ``chunk_size``
query rows at a time, never as the full matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.eval.ranking import pessimistic_ranks

__all__ = ["caption_positions", "caption_retrieval_accuracy", "cra_full_gallery", "cra_pairs"]


@torch.no_grad()
def cra_pairs(queries: Tensor, gallery: Tensor, chunk_size: int = 1024) -> float:
    """Percent of queries ``i`` whose most similar gallery row is ``i`` (strictly).

    Args:
        queries: ``(N, D)`` embeddings (normalised here).
        gallery: ``(N, D)`` embeddings; row ``i`` is the target of query ``i``.
        chunk_size: query rows per matmul.
    """
    if queries.shape != gallery.shape or queries.ndim != 2 or queries.shape[0] == 0:
        raise ValueError(
            f"expected two equal (N, D) matrices, got {tuple(queries.shape)}, {tuple(gallery.shape)}"
        )
    q, g = F.normalize(queries.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    hits = 0
    for start in range(0, q.shape[0], chunk_size):
        scores = q[start : start + chunk_size] @ g.T
        rows = torch.arange(scores.shape[0])
        hits += int((pessimistic_ranks(scores, rows, rows + start) == 0).sum())
    return 100.0 * hits / q.shape[0]


@torch.no_grad()
def cra_full_gallery(embeddings: Tensor, groups: Tensor, chunk_size: int = 1024) -> float:
    """Percent of captions whose most similar *other* caption belongs to the same group (strictly).

    Args:
        embeddings: ``(M, D)`` caption embeddings (normalised here).
        groups: ``(M,)`` group (image) id of each caption.
        chunk_size: query rows per matmul.

    Raises:
        ValueError: when no group has two captions.
    """
    if embeddings.ndim != 2 or groups.shape != (embeddings.shape[0],):
        raise ValueError(
            f"expected (M, D) embeddings and (M,) groups, got {tuple(embeddings.shape)}, {tuple(groups.shape)}"
        )
    e = F.normalize(embeddings.float(), dim=-1)
    groups = groups.long()
    hits = counted = 0
    for start in range(0, e.shape[0], chunk_size):
        scores = e[start : start + chunk_size] @ e.T
        rows = torch.arange(scores.shape[0])
        # the query itself: a positive (never a competitor) scoring -inf (never the best partner)
        scores[rows, rows + start] = float("-inf")
        same = groups[start : start + chunk_size, None] == groups[None, :]
        has_partner = same.sum(1) > 1
        positive_rows, positive_cols = same.nonzero(as_tuple=True)
        ranks = pessimistic_ranks(scores, positive_rows, positive_cols)
        hits += int(((ranks == 0) & has_partner).sum())
        counted += int(has_partner.sum())
    if counted == 0:
        raise ValueError("full-gallery CRA needs at least one group with two captions")
    return 100.0 * hits / counted


def caption_positions(groups: Tensor) -> Tensor:
    """Position of each caption within its group, in order of appearance (``[7, 7, 3, 7] -> [0, 1, 0, 2]``)."""
    seen: dict[int, int] = {}
    out = []
    for g in groups.tolist():
        out.append(seen.get(g, 0))
        seen[g] = out[-1] + 1
    return torch.tensor(out, dtype=torch.long)


def caption_retrieval_accuracy(
    embeddings: Tensor, groups: Tensor, first: int = 0, second: int = 1, chunk_size: int = 1024
) -> dict[str, float]:
    """Both CRA variants of a set of caption groups.

    Args:
        embeddings: ``(M, D)`` caption embeddings.
        groups: ``(M,)`` group id of each caption; within a group, captions keep their source order.
        first: position of the query caption in each group (0 = caption #1).
        second: position of the target caption (1 = caption #2).
        chunk_size: query rows per matmul.

    Returns:
        ``{"cra_pairs", "cra_full", "groups" (with both positions), "captions"}``.
    """
    positions = caption_positions(groups)
    ids = groups.long()
    by_slot = {(g, p): i for i, (g, p) in enumerate(zip(ids.tolist(), positions.tolist()))}
    pair_groups = [g for g in dict.fromkeys(ids.tolist()) if (g, first) in by_slot and (g, second) in by_slot]
    if not pair_groups:
        raise ValueError(f"no group has captions at positions {first} and {second}")
    q = embeddings[[by_slot[(g, first)] for g in pair_groups]]
    t = embeddings[[by_slot[(g, second)] for g in pair_groups]]
    return {
        "cra_pairs": cra_pairs(q, t, chunk_size),
        "cra_full": cra_full_gallery(embeddings, ids, chunk_size),
        "groups": float(len(pair_groups)),
        "captions": float(embeddings.shape[0]),
    }
