"""The tie rule shared by every ranking metric (retrieval R@k, zero-shot top-k, long-text R@k, CRA).

**Pessimistic rank.** For a query (one row of a score matrix) with a set ``P`` of positive candidates, let
``b = max_{p in P} s_p`` be the best positive score. The 0-based rank of the query is the number of *other*
candidates — those not in ``P`` — whose score is *not strictly below* ``b``::

    rank = #{ c not in P : not (s_c < b) }        (s_c >= b, or either side NaN)

and the query is a hit at ``k`` when ``rank < k``. Consequences:

* **A tie with the best positive counts against the model.** A collapsed encoder (every embedding equal) ties
  everywhere, so every query gets the worst possible rank and every recall / accuracy is 0, not 100.
* **Other positives never count against the best one.** With several captions per image (image→text "any-hit"),
  a second caption of the same image that ties or trails the best one does not push it down; only
  non-positive candidates do. With one positive per row (text→image, zero-shot labels, long-text pairs, CRA),
  ``P`` is that single candidate and the rule is "the number of other candidates scoring ``>=`` the positive".
* **Without ties it is the position in a descending sort.** ``rank`` is then the index of the first positive in
  ``argsort(scores, descending=True)`` — exactly what CLIP_benchmark's ``recall_at_k > 0`` and ``topk``
  membership compute — and the result never depends on index order or on a sort's tie-breaking.
* **NaN counts against the model.** A NaN score is never "strictly below" anything, so a NaN competitor counts
  and a NaN best positive (``max`` propagates NaN) gives the worst rank.
* A row without positives gets rank ``n_candidates`` (a miss at every ``k <= n_candidates``); callers drop or
  reject such rows.

The count is taken per row chunk, so a query's positive score and the scores it is compared with always come
from the same matmul call (ranks cannot be flipped by last-ulp differences between two computations of one dot
product); memory is one boolean of the chunk's size besides the scores themselves. On the CPU the
compare-and-count runs through NumPy (``count_nonzero(scores < best, axis=1)``), several times faster than
torch's boolean row sum on this project's two-core machine (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["count_below", "pessimistic_ranks"]


def pessimistic_ranks(scores: Tensor, positive_rows: Tensor, positive_cols: Tensor) -> Tensor:
    """0-based rank of each row's best positive under the pessimistic tie rule (module docstring).

    Args:
        scores: ``(R, C)`` scores of ``R`` queries against ``C`` candidates (any float dtype).
        positive_rows: ``(P,)`` row index of each positive pair, on ``scores``' device.
        positive_cols: ``(P,)`` column index of each positive pair; the ``(row, col)`` pairs must be distinct.

    Returns:
        ``(R,)`` ``int64`` ranks in ``[0, C - #positives of the row]``, on ``scores``' device.

    Raises:
        ValueError: if ``scores`` is not 2-D or the index tensors differ in shape.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {tuple(scores.shape)}")
    if positive_rows.shape != positive_cols.shape or positive_rows.ndim != 1:
        raise ValueError(
            f"positive_rows and positive_cols must be equal 1-D shapes, got {tuple(positive_rows.shape)} and "
            f"{tuple(positive_cols.shape)}"
        )
    n_rows, n_cols = scores.shape
    values = scores[positive_rows, positive_cols]
    best = scores.new_full((n_rows,), float("-inf"))
    best.scatter_reduce_(0, positive_rows, values, reduce="amax")  # NaN propagates: NaN best -> worst rank
    below = count_below(scores, best)  # candidates strictly below the best positive, positives included
    positives_below = torch.zeros(n_rows, dtype=torch.long, device=scores.device)
    positives_below.scatter_add_(0, positive_rows, (values < best[positive_rows]).long())
    n_positive = torch.bincount(positive_rows, minlength=n_rows)
    return (n_cols - n_positive) - (below - positives_below)


def count_below(scores: Tensor, thresholds: Tensor, dim: int = 1) -> Tensor:
    """Entries strictly below their row's (``dim=1``) or column's (``dim=0``) threshold; NaN is never below.

    Args:
        scores: ``(R, C)`` scores.
        thresholds: ``(R,)`` for ``dim=1``, ``(C,)`` for ``dim=0``, same dtype as ``scores``.
        dim: ``1`` counts along each row, ``0`` along each column.

    Returns:
        ``int64`` counts on ``scores``' device: ``(scores < thresholds[:, None]).sum(1)`` or
        ``(scores < thresholds[None, :]).sum(0)``.
    """
    bound = thresholds[:, None] if dim == 1 else thresholds[None, :]
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        below = scores.detach().numpy() < bound.detach().numpy()
        return torch.from_numpy(np.add.reduce(below, axis=dim, dtype=np.int64))
    return (scores < bound).sum(dim)
