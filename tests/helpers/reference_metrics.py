"""Reference values for the metrics a run reports, recomputed from its checkpoint without the evaluation code.

The smoke tests compare a run's ``metrics.json`` with these numbers exactly, so a wrong metric (or a metric of the
wrong checkpoint) fails instead of passing a ``0 <= R@1 <= 100`` range check.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping

import torch


def loop_recall(
    img: torch.Tensor, txt: torch.Tensor, text_to_image: list[int], ks: Iterable[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k (percent) in both directions by a plain Python loop over float64 scores.

    The tie rule is the project's pessimistic one (a competitor counts when it is not strictly below the positive):
    image→text ranks the image's best caption against the captions of other images, text→image ranks the caption's
    image against every other image.

    Args:
        img: ``(n_images, d)`` embeddings.
        txt: ``(n_captions, d)`` embeddings.
        text_to_image: the image index of each caption.
        ks: the cut-offs.

    Returns:
        ``{"i2t_R@k": ..., "t2i_R@k": ...}`` for every ``k``.
    """
    scores = (img.double() @ txt.double().T).tolist()
    n_img, n_txt = len(scores), len(text_to_image)
    i2t, t2i = [], []
    for i in range(n_img):
        positives = {t for t in range(n_txt) if text_to_image[t] == i}
        best = max(scores[i][t] for t in positives)
        i2t.append(sum(1 for t in range(n_txt) if t not in positives and not scores[i][t] < best))
    for t in range(n_txt):
        positive = scores[text_to_image[t]][t]
        t2i.append(sum(1 for j in range(n_img) if j != text_to_image[t] and not scores[j][t] < positive))
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * sum(r < k for r in i2t) / n_img
        out[f"t2i_R@{k}"] = 100.0 * sum(r < k for r in t2i) / n_txt
    return out


def checkpoint_recall(
    model: torch.nn.Module,
    checkpoint: str,
    loader: Iterable[Mapping],
    embed: Callable[[torch.nn.Module, Mapping], tuple[torch.Tensor, torch.Tensor]],
    ks: Iterable[int] = (1, 5, 10),
    limit_batches: int | None = None,
) -> dict[str, float]:
    """:func:`loop_recall` of a checkpoint's weights over one pass of an evaluation loader.

    Args:
        model: a module of the run's class (it is copied; the copy gets the checkpoint's ``state_dict``).
        checkpoint: the ``.ckpt`` file.
        loader: evaluation batches (``image``, captions, ``caption_image_index``).
        embed: ``(model, batch) -> (image embeddings, caption embeddings)``.
        ks: the cut-offs.
        limit_batches: read only the first batches, as the run's evaluation did (``trainer.num_val_batches``).
    """
    model = copy.deepcopy(model).cpu()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=getattr(model, "strict_loading", True))
    model.eval()
    images, texts, owner = [], [], []
    with torch.no_grad():
        for batch in itertools.islice(loader, limit_batches):
            img, txt = embed(model, batch)
            index = batch["caption_image_index"]
            for i in range(img.shape[0]):
                mine = txt[index == i]
                if len(mine) == 0:  # an image without captions is no query (as in the evaluation)
                    continue
                owner.extend([len(images)] * len(mine))
                images.append(img[i].float())
                texts.extend(mine.float())
    return loop_recall(torch.stack(images), torch.stack(texts), owner, ks)


def loop_cra(
    embeddings: torch.Tensor, groups: list[int], first: int = 0, second: int = 1
) -> dict[str, float]:
    """Caption retrieval accuracy (percent) by plain loops over float64 cosine similarities.

    ``cra_pairs``: caption ``first`` of each group retrieves among caption ``second`` of every group; ``cra_full``:
    every caption of a group with another caption retrieves among all other captions, the group's others being
    the targets. A hit needs the best target strictly above every non-target (ties are misses).

    Args:
        embeddings: ``(M, D)`` caption embeddings, groups contiguous.
        groups: the group of each caption.
        first: caption position of the pair queries.
        second: caption position of the pair targets.
    """
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sim = (e @ e.T).tolist()
    members: dict[int, list[int]] = {}
    for row, g in enumerate(groups):
        members.setdefault(g, []).append(row)
    order = list(members)
    queries = [members[g][first] for g in order]
    targets = [members[g][second] for g in order]
    pair_hits = sum(
        all(sim[q][t] > sim[q][other] for other in targets if other != t) for q, t in zip(queries, targets)
    )
    full_hits = counted = 0
    for q, g in enumerate(groups):
        mine = [r for r in members[g] if r != q]
        if not mine:
            continue
        counted += 1
        best = max(sim[q][r] for r in mine)
        full_hits += all(best > sim[q][r] for r in range(len(groups)) if groups[r] != g)
    return {"cra_pairs": 100.0 * pair_hits / len(order), "cra_full": 100.0 * full_hits / counted}
