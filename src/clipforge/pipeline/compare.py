"""The pipeline's eval step: every arm on the same held-out split(s), chance levels, CRA, retrieval examples.

``comparison.json`` holds, per arm, every run's held-out retrieval metrics (read from the run's ``metrics.json``,
written by the best checkpoint's evaluation), their mean and standard deviation over folds and seeds, and the
chance level of each metric for the same held-out sets:

* text->image R@k: ``k / N`` (``N`` held-out images);
* image->text R@k (any-hit): the mean over images of ``1 - C(T - c_i, k) / C(T, k)`` (``T`` held-out captions,
  ``c_i`` of them image ``i``'s): the chance that a random ranking puts one of its captions in the top ``k``;
* zero-shot top-1: ``1 / classes``.

CRA (caption retrieval accuracy, query caption #1 -> caption #2 of the same image, LLM2CLIP's protocol) is measured
for each arm's text side on the held-out captions of the first split, with chance ``1 / groups``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections.abc import Mapping, Sequence

import torch

log = logging.getLogger("clipforge.pipeline")

__all__ = ["ARM_LABELS", "METRIC_KEYS", "chance_levels", "collect_runs", "embed_heldout", "summarise"]

METRIC_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")

ARM_LABELS = {
    "raw": "raw captions only (control)",
    "recap": "raw + recap captions",
    "enhanced": "enhanced captions",
    "llm2clip": "llm2clip (frozen LLM text encoder, enhanced captions)",
}

PREFIX = "val/retrieval/heldout/"


def chance_levels(captions_per_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall (percent) of a random ranking on a held-out set (module docstring).

    Args:
        captions_per_image: ``c_i`` for every held-out image.
        ks: cut-offs.

    Returns:
        ``i2t_R@k``, ``t2i_R@k`` and ``rsum`` (their sum).
    """
    n, total = len(captions_per_image), sum(captions_per_image)
    if n == 0:
        return {}
    out: dict[str, float] = {}
    for k in ks:
        miss = [
            math.comb(total - c, k) / math.comb(total, k) if total - c >= k else 0.0
            for c in captions_per_image
        ]
        out[f"i2t_R@{k}"] = 100.0 * (1.0 - statistics.fmean(miss)) if k < total else 100.0
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * min(k, n) / n
    out["rsum"] = sum(out.values())
    return out


def collect_runs(
    arm_runs: Mapping[str, Sequence[tuple]], run_dirs: Mapping[str, str]
) -> dict[str, list[dict]]:
    """Per arm, each run's held-out metrics: ``{"fold", "seed", "n_images", "n_captions", "collapsed", "metrics"}``."""
    out: dict[str, list[dict]] = {}
    for arm, runs in arm_runs.items():
        for split, seed, job in runs:
            path = os.path.join(run_dirs[job], "metrics.json")
            with open(path, encoding="utf-8") as f:
                metrics = json.load(f)
            values = {k: metrics.get(PREFIX + k) for k in METRIC_KEYS}
            if metrics.get("val/zeroshot/heldout/top1") is not None:
                values["zeroshot_top1"] = metrics["val/zeroshot/heldout/top1"]
            out.setdefault(arm, []).append(
                {
                    "fold": split.fold,
                    "split": split.name,
                    "seed": seed,
                    "n_images": int(metrics.get(PREFIX + "num_images") or 0),
                    "n_captions": int(metrics.get(PREFIX + "num_captions") or 0),
                    "collapsed": bool(metrics.get(PREFIX + "collapsed") or 0.0),
                    "metrics": {k: v for k, v in values.items() if v is not None},
                }
            )
    return out


def _mean_std(runs: Sequence[Mapping], key: str) -> tuple[float | None, float | None]:
    values = [r["metrics"][key] for r in runs if key in r["metrics"]]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: Mapping[str, list[dict]], labels: Mapping[str, str], encoders: Mapping[str, str]) -> dict:
    """The ``arms`` part of ``comparison.json``: runs, mean and std per metric, collapsed-run count."""
    arms = {}
    for arm, mine in runs.items():
        keys = [k for k in (*METRIC_KEYS, "zeroshot_top1") if any(k in r["metrics"] for r in mine)]
        stats = {k: _mean_std(mine, k) for k in keys}
        arms[arm] = {
            "label": labels.get(arm, arm),
            "text_encoder": encoders.get(arm, ""),
            "runs": mine,
            "mean": {k: m for k, (m, _) in stats.items() if m is not None},
            "std": {k: s for k, (_, s) in stats.items() if s is not None},
            "collapsed_runs": sum(r["collapsed"] for r in mine),
        }
    return arms


@torch.no_grad()
def embed_heldout(run_dir: str) -> dict:
    """Embed the held-out set of a finished training run with its best checkpoint.

    Returns:
        ``keys`` (images), ``image`` ``(N, D)``, ``captions`` (list), ``caption_image`` ``(T,)`` (index into
        ``keys``), ``text`` ``(T, D)``; both sides L2-normalised as the model scores them.
    """
    from clipforge.utils.runs import load_run

    run = load_run(run_dir, checkpoint="best")
    model, dm = run.model, run.datamodule
    dm.connect(tokenizer=model.tokenizer, eval_image_transform=model.image_transform(False))
    dm.setup("validate")
    loaders = dm.val_dataloader()
    loader = loaders[0] if isinstance(loaders, list) else loaders
    keys, images, captions, owner, texts = [], [], [], [], []
    for batch in loader:
        if not batch["key"]:
            continue
        images.append(model.encode_image(batch["image"]))
        texts.append(model.encode_text(batch["text"], batch["captions"]))
        offset = len(keys)
        keys += list(batch["key"])
        captions += list(batch["captions"])
        owner += [offset + int(i) for i in batch["caption_image_index"]]
    return {
        "keys": keys,
        "image": torch.cat(images).float(),
        "captions": captions,
        "caption_image": torch.tensor(owner, dtype=torch.long),
        "text": torch.cat(texts).float(),
    }


def retrieval_examples(emb: Mapping, n: int, k: int = 5) -> list[dict]:
    """The first caption of the first ``n`` held-out images as queries: their top-``k`` images."""
    out = []
    seen: set[int] = set()
    for t, img in enumerate(emb["caption_image"].tolist()):
        if img in seen or len(out) >= n:
            continue
        seen.add(img)
        scores = emb["text"][t] @ emb["image"].T
        top = torch.topk(scores, min(k, scores.numel())).indices.tolist()
        out.append(
            {
                "query": emb["captions"][t],
                "query_key": emb["keys"][img],
                "top5": [emb["keys"][i] for i in top],
                "hit_rank": top.index(img) if img in top else None,
            }
        )
    return out


def text_cra(emb: Mapping) -> dict:
    """CRA of a run's text side on its held-out captions (caption #1 -> caption #2 of the same image)."""
    from clipforge.eval.cra import caption_retrieval_accuracy

    metrics = caption_retrieval_accuracy(emb["text"], emb["caption_image"])
    groups = int(metrics["groups"])
    return {
        "cra_pairs": float(metrics["cra_pairs"]),
        "cra_full": float(metrics["cra_full"]),
        "n_groups": groups,
        "chance_pairs": 100.0 / groups if groups else None,
    }
