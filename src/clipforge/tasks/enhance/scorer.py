"""``EnhanceScoreModule``: batched AITQE scoring of any dataset, then the enhancement policy (``clipforge generate``).

The official code scores one pair per call. Here every caption of every image in a batch is one row of
a single left-padded greedy decoding batch (``chunk_size`` rows at most) in which each image passes the vision
tower once and each row leaves the batch when its answer ends, stopped at ``<Overall>`` unless ``output_all``;
the outputs are parsed robustly. Rows the policy would rewrite can be scored again with their
recaption (``rescore_rewrites``), so the "after" histogram and the data budget see the rewrite's own score.

When every shard is written, :meth:`on_predictions_merged` applies the policy and writes, next to the merged
predictions, the enhanced dataset (``enhanced_name``, JSONL: ``key``, ``image``, ``caption`` + provenance; the
data layer reads it like any JSONL), ``report.json`` / ``report.md`` (score histograms before/after, counts per
action) and, when the rows carry a label (``label_field``), the ROC AUC of the overall score.

Design notes: docs/design/enhance.md#batched-scoring.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

import lightning as L
import torch

from clipforge.models.greedy import greedy_decode
from clipforge.models.vlm import VisionLanguageModel, VLMSpec
from clipforge.tasks.enhance.outputs import predict_image_paths, write_jsonl
from clipforge.tasks.enhance.parse import AITQEResult, parse_output
from clipforge.tasks.enhance.policy import PolicyConfig, apply_policy, as_policy, decide
from clipforge.tasks.enhance.prompt import OVERALL_MARKER, build_prompt
from clipforge.tasks.enhance.report import auc_report, report_markdown
from clipforge.tasks.enhance.soft_score import DigitRecorder, digit_token_ids, expected_overall

__all__ = ["EnhanceScoreModule"]

log = logging.getLogger("clipforge.enhance")


class EnhanceScoreModule(L.LightningModule):
    """Score image-caption pairs with an AITQE-format model and build the enhanced dataset.

    Batch keys: ``key``, ``image`` (tensors from the model's own square transform), ``captions`` +
    ``caption_image_index`` (every caption of each image is scored; an image without captions is scored with an
    empty caption, so the model writes one), ``meta``. Each output row is ``{"key", "pairs": [{caption, overall,
    scores, explanations, recaption, problems, raw, rescore}]}``.

    Args:
        model_path: folder of an AITQE-format checkpoint (``VisionLanguageModel.save_pretrained``, or the
            released ``HymanH/AITQE``).
        spec: build the model from this spec when no ``model_path`` is given (random init unless its parts load
            weights; smoke tests; a tiny overlay's spec gives way to a folder given on top of it).
        output_all: generate the full answer (explanations, aspect scores) instead of stopping at ``<Overall>``.
        max_new_tokens: generation limit (official: 384).
        chunk_size: pairs per decoding batch (``None`` = all pairs of a batch at once).
        vision_chunk_size: images per vision-tower call (``None`` = every distinct image of a chunk at once; a CNN
            tower on a CPU is faster in chunks of a few images).
        policy: the enhancement policy (:class:`~clipforge.tasks.enhance.policy.PolicyConfig` fields).
        rescore_rewrites: score ``(image, recaption)`` of pairs the policy rewrites (their score after).
        enhanced_name: file name of the enhanced dataset in the output folder.
        label_field: ``meta`` field with a 0/1 label (1 = the caption belongs to the image); the summary then
            reports the ROC AUC of the overall score (and per ``meta["kind"]`` when present).
        keep_raw: keep the decoded model text in each pair (for inspection; large for ``output_all``).
        dtype: weight dtype (``None`` = the checkpoint's).
        vision_model_name_or_path: local SigLIP folder for a released AITQE checkpoint.
        attn_implementation: the LLM's attention implementation.
    """

    def __init__(
        self,
        model_path: str | None = None,
        spec: VLMSpec | None = None,
        output_all: bool = False,
        max_new_tokens: int = 384,
        chunk_size: int | None = None,
        vision_chunk_size: int | None = None,
        policy: PolicyConfig | Mapping | None = None,
        rescore_rewrites: bool = True,
        enhanced_name: str = "enhanced.jsonl",
        label_field: str | None = None,
        keep_raw: bool = True,
        dtype: str | None = None,
        vision_model_name_or_path: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        if model_path is None and spec is None:
            raise ValueError("EnhanceScoreModule needs model_path (an AITQE-format folder) or spec")
        if model_path is not None:
            spec = None  # a folder given on top of a spec (a debug overlay's) is the model; hparams record so
        policy = as_policy(policy)
        self.save_hyperparameters(logger=False)
        self.spec = spec
        self.policy = policy
        self.vlm = None
        self._vision = None
        self._digits: list[int] | None = None

    # -- data-side contract -------------------------------------------------------------------------------------
    def image_transform(self, train: bool):
        """The checkpoint's square image transform (read from its ``config.json``; no weights loaded)."""
        if self.spec is not None:
            return self.spec.image_transform(False)
        if self._vision is None:
            from clipforge.models.vlm import folder_vision

            with open(os.path.join(self.hparams.model_path, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            self._vision = folder_vision(cfg, self.hparams.vision_model_name_or_path)
        return self._vision.image_transform(False)

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        hp = self.hparams
        if self.spec is not None:
            self.vlm = VisionLanguageModel.build(self.spec).eval()
        else:
            self.vlm = VisionLanguageModel.from_pretrained(
                hp.model_path, hp.dtype, hp.vision_model_name_or_path, hp.attn_implementation
            ).eval()

    # -- scoring -------------------------------------------------------------------------------------------------
    def score(
        self, images: torch.Tensor, captions: Sequence[str], image_index: Sequence[int] | None = None
    ) -> list[tuple[AITQEResult, float | None]]:
        """``(parsed output, expected overall score)`` of each ``(images[image_index[i]], captions[i])`` pair
        (``image_index`` = ``range(len(captions))`` when absent); ``chunk_size`` pairs per decoding batch (the
        expected score: :mod:`~clipforge.tasks.enhance.soft_score`).

        Each distinct image of a chunk goes through the vision tower once; decoding is greedy and a pair leaves the
        batch when its answer ends (:func:`~clipforge.models.greedy.greedy_decode`), stopped at ``<Overall>``
        unless ``output_all``.
        """
        tokenizer = self.vlm.tokenizer
        if self._digits is None:
            self._digits = digit_token_ids(tokenizer) or []
        index = list(range(len(captions))) if image_index is None else [int(i) for i in image_index]
        if len(index) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(index)} image indices")
        stops = [] if self.hparams.output_all else [OVERALL_MARKER]
        out: list[tuple[AITQEResult, float | None]] = []
        step = self.hparams.chunk_size or max(1, len(captions))
        for start in range(0, len(captions), step):
            caps, rows = list(captions[start : start + step]), index[start : start + step]
            distinct = sorted(set(rows))
            local = torch.tensor([distinct.index(i) for i in rows])
            inputs = self.vlm.build_inputs([build_prompt(c) for c in caps], padding_side="left")
            input_ids = inputs["input_ids"].to(self.vlm.device)
            embeds = self.vlm.embed(images[distinct], input_ids, local, self.hparams.vision_chunk_size)
            recorder = DigitRecorder(self._digits, len(caps)) if self._digits else None
            new = greedy_decode(
                self.vlm.model,
                embeds,
                inputs["attention_mask"],
                self.hparams.max_new_tokens,
                [self.vlm.eos_token_id],  # the one VisionLanguageModel.generate (the official path) stops at
                stops,
                tokenizer,
                on_logits=recorder,
            )
            for b, ids in enumerate(new):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                soft = expected_overall(tokenizer, ids, recorder.probs(b)) if recorder else None
                out.append((parse_output(text.strip()), soft))
        return out

    def _pair(self, caption: str, result: AITQEResult, expected: float | None) -> dict:
        pair = {"caption": caption, **result.to_row(), "overall_expected": expected}
        if not self.hparams.output_all:
            del pair["explanations"]
        if self.hparams.keep_raw:
            pair["raw"] = result.raw
        return pair

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        keys = list(batch["key"])
        if not keys:
            return {"rows": []}
        images = batch["image"]
        index = (
            batch["caption_image_index"].tolist()
            if "caption_image_index" in batch
            else list(range(len(keys)))
        )
        captions = list(batch["captions"]) if "captions" in batch else list(batch["caption"])
        # an image without captions is scored with an empty one: the model then writes a recaption
        for i in sorted(set(range(len(keys))) - set(index)):
            index.append(i)
            captions.append("")
        scored = self.score(images, captions, index)
        results = [r for r, _ in scored]
        pairs = [self._pair(c, r, e) for c, (r, e) in zip(captions, scored)]
        rewrite = [
            n
            for n, (p, r) in enumerate(zip(pairs, results))
            if self.hparams.rescore_rewrites
            and r.recaption
            and decide(p, self.policy) in ("rewrite", "keep_both")
        ]
        if rewrite:
            again = self.score(images, [results[n].recaption for n in rewrite], [index[n] for n in rewrite])
            for n, (r, e) in zip(rewrite, again):
                pairs[n]["rescore"] = {"overall": r.overall, "overall_expected": e, "scores": dict(r.scores)}
        rows = [{"key": k, "pairs": []} for k in keys]
        label = self.hparams.label_field
        for i, pair in zip(index, pairs):
            meta = batch["meta"][i] if "meta" in batch else {}
            if label and label in meta:
                pair["label"] = meta[label]
                pair["kind"] = meta.get("kind")
            rows[i]["pairs"].append(pair)
        return {"rows": rows}

    # -- the enhanced dataset -------------------------------------------------------------------------------------
    def on_predictions_merged(self, rows: list[dict], output_dir: str) -> dict:
        """Apply the policy, write the enhanced dataset and the report; return the summary numbers."""
        images = predict_image_paths(self, output_dir)
        pairs = [
            {
                "key": row["key"],
                "image": images.get(row["key"]),
                "caption": p["caption"],
                "overall": p.get("overall"),
                "scores": p.get("scores") or {},
                "recaption": p.get("recaption"),
                "expected": p.get("overall_expected"),
                "rescore_overall": (p.get("rescore") or {}).get("overall"),
                "rescore_expected": (p.get("rescore") or {}).get("overall_expected"),
            }
            for row in rows
            for p in row.get("pairs", [])
        ]
        enhanced, report = apply_policy(pairs, self.policy)
        missing = sum(r["image"] is None for r in enhanced)
        enhanced = [r for r in enhanced if r["image"] is not None]
        path = os.path.join(output_dir, self.hparams.enhanced_name)
        write_jsonl(enhanced, path)
        report.update(enhanced_path=path, rows_without_image=missing, policy=vars(self.policy))
        report.update(auc_report([p for row in rows for p in row.get("pairs", [])]))
        with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
            f.write(report_markdown(report))
        log.info("enhanced dataset: %s (%d rows)", path, len(enhanced))
        summary = {
            "enhance/pairs": report["pairs"],
            "enhance/unscored": report["unscored"],
            "enhance/rows": len(enhanced),
            "enhance/mean_score_before": report["mean_before"],
            "enhance/mean_score_after": report["mean_after"],
            **{f"enhance/action_{a}": n for a, n in report["actions"].items()},
        }
        summary.update({f"enhance/{k}": v for k, v in report.items() if k.startswith("roc_auc")})
        return summary
