"""``EnhanceAnnotateModule``: the teacher job that builds the enhancer's training set (``clipforge generate``).

For each image-caption pair: phase 1, the teacher scores and explains it; phase 2, it writes a caption
of contrasting quality (a good caption for a pair scored at or below ``rewrite_threshold``, a weak one otherwise)
and, with ``rescore_contrast``, scores that caption too, which makes the contrast pair a training pair of its own
(the paper's negative samples). The ShardWriter makes the job resumable (finished shards are skipped on rerun); a
pair whose teacher call failed is kept with its ``error``.

When all shards exist, :meth:`on_predictions_merged` writes the training set ``pairs.jsonl`` (JSONL: ``key``,
``image``, ``caption``, ``overall``, ``scores``, ``explanations``, ``recaption``, ``kind``, ``teacher``; what
:class:`~clipforge.tasks.enhance.formatter.AITQEFormatter` reads) and ``pairs_no_contrast.jsonl`` (phase 1 only:
the no-negatives ablation's data). Weak pairs get a recaption: the teacher's own, else the phase-2 good caption;
a weak contrast caption is rewritten to the original caption it was written from.

Design notes: docs/design/enhance.md#the-pipeline.
"""

from __future__ import annotations

import logging
import os

import lightning as L

from clipforge.tasks.enhance.outputs import predict_image_paths, write_jsonl
from clipforge.tasks.enhance.parse import parse_output
from clipforge.tasks.enhance.teacher import Reply, Teacher
from clipforge.utils.transforms import ToRGB

__all__ = ["EnhanceAnnotateModule", "training_pairs"]

log = logging.getLogger("clipforge.enhance")


def _judgement(reply: Reply) -> dict:
    if reply.text is None:
        return {"error": reply.error or "no_reply"}
    result = parse_output(reply.text)
    out = {**result.to_row(), "raw": reply.text}
    if not result.ok:
        out["error"] = "unparsed"
    return out


def training_pairs(
    rows: list[dict], images: dict[str, str | None], threshold: int, teacher: str
) -> tuple[list[dict], list[dict]]:
    """Judged pairs of the job's rows -> ``(pairs, contrast pairs)`` in the training-set layout (module docstring).

    Args:
        rows: the job's output rows.
        images: sample key -> image file (rows without one are left out).
        threshold: overall scores at or below this are weak (they get a recaption).
        teacher: provenance written to every pair.
    """
    pairs, contrasts = [], []
    for row in rows:
        for n, p in enumerate(row.get("pairs", [])):
            j = p["judgement"]
            if j.get("overall") is None or images.get(row["key"]) is None:
                continue
            contrast = p.get("contrast") or {}
            weak = j["overall"] <= threshold
            good_caption = contrast.get("caption") if contrast.get("quality") == "high" else None
            base = {"image": images[row["key"]], "teacher": teacher}
            pairs.append(
                {
                    **base,
                    "key": f"{row['key']}#{n}",
                    "caption": p["caption"],
                    **{k: j.get(k) for k in ("overall", "scores", "explanations")},
                    "recaption": (j.get("recaption") or good_caption) if weak else None,
                    "kind": "teacher",
                }
            )
            cj = contrast.get("judgement") or {}
            if cj.get("overall") is None:
                continue
            # a weak caption written from a good one is rewritten back to it
            fallback = p["caption"] if contrast["quality"] == "low" and not weak else None
            contrasts.append(
                {
                    **base,
                    "key": f"{row['key']}#{n}c",
                    "caption": contrast["caption"],
                    **{k: cj.get(k) for k in ("overall", "scores", "explanations")},
                    "recaption": (cj.get("recaption") or fallback) if cj["overall"] <= threshold else None,
                    "kind": f"contrast_{contrast['quality']}",
                }
            )
    return pairs, contrasts


class EnhanceAnnotateModule(L.LightningModule):
    """Teacher annotation (phase 1 scores + explanations, phase 2 contrasting captions) of a dataset.

    Batch keys: ``key``, ``image`` (RGB PIL images), ``caption`` / ``captions`` + ``caption_image_index``. Each
    output row is ``{"key", "pairs": [{caption, judgement, contrast: {caption, quality, judgement}}]}``.

    Args:
        teacher: the annotator (:class:`~clipforge.tasks.enhance.teacher.ChatTeacher` or
            :class:`~clipforge.tasks.enhance.teacher.CaptionerTeacher`).
        all_captions: annotate every caption of an image (else the first one only).
        contrast: run phase 2.
        rescore_contrast: score the phase-2 captions (without it they only serve as recaptions).
        rewrite_threshold: pairs whose overall score is at or below this are weak.
        image_max_side: images are downscaled to this longer side before they reach the teacher.
    """

    def __init__(
        self,
        teacher: Teacher,
        all_captions: bool = False,
        contrast: bool = True,
        rescore_contrast: bool = True,
        rewrite_threshold: int = 5,
        image_max_side: int = 768,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["teacher"])
        self.teacher = teacher

    def image_transform(self, train: bool):
        """RGB PIL images (teachers take images, not tensors)."""
        return ToRGB(self.hparams.image_max_side)

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.teacher.setup(str(self.device))

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        keys = list(batch["key"])
        if not keys:
            return {"rows": []}
        if self.hparams.all_captions and "captions" in batch:
            index, captions = batch["caption_image_index"].tolist(), list(batch["captions"])
        else:
            index, captions = list(range(len(keys))), list(batch["caption"])
        images = [batch["image"][i] for i in index]
        pair_keys = [keys[i] for i in index]
        pairs = [
            {"caption": c, "judgement": _judgement(r)}
            for c, r in zip(captions, self.teacher.score(images, captions, pair_keys))
        ]
        if self.hparams.contrast:
            todo = [n for n, p in enumerate(pairs) if p["judgement"].get("overall") is not None]
            high = [pairs[n]["judgement"]["overall"] <= self.hparams.rewrite_threshold for n in todo]
            written = self.teacher.write(
                [images[n] for n in todo], [captions[n] for n in todo], [pair_keys[n] for n in todo], high
            )
            done = [(n, h, w) for n, h, w in zip(todo, high, written) if w.text]
            for n, h, w in zip(todo, high, written):
                pairs[n]["contrast"] = {
                    "quality": "high" if h else "low",
                    "caption": w.text,
                    "error": w.error,
                }
            if self.hparams.rescore_contrast and done:
                replies = self.teacher.score(
                    [images[n] for n, _, _ in done],
                    [w.text for _, _, w in done],
                    [pair_keys[n] for n, _, _ in done],
                )
                for (n, _, _), r in zip(done, replies):
                    pairs[n]["contrast"]["judgement"] = _judgement(r)
        rows = [{"key": k, "pairs": []} for k in keys]
        for i, pair in zip(index, pairs):
            rows[i]["pairs"].append(pair)
        return {"rows": rows}

    def on_predictions_merged(self, rows: list[dict], output_dir: str) -> dict:
        """Write ``pairs.jsonl`` and ``pairs_no_contrast.jsonl``; return counts."""
        images = predict_image_paths(self, output_dir)
        pairs, contrasts = training_pairs(rows, images, self.hparams.rewrite_threshold, self.teacher.name)
        write_jsonl(pairs + contrasts, os.path.join(output_dir, "pairs.jsonl"))
        write_jsonl(pairs, os.path.join(output_dir, "pairs_no_contrast.jsonl"))
        judged = [p for row in rows for p in row.get("pairs", [])]
        summary = {
            "annotate/pairs": len(judged),
            "annotate/phase1_failed": sum("error" in p["judgement"] for p in judged),
            "annotate/contrast_failed": sum(bool((p.get("contrast") or {}).get("error")) for p in judged),
            "annotate/training_pairs": len(pairs),
            "annotate/training_contrast_pairs": len(contrasts),
            "annotate/weak_pairs": sum(p["recaption"] is not None for p in pairs),
        }
        log.info("teacher annotation: %s", summary)
        return summary
