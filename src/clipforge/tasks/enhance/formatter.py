"""``AITQEFormatter``: one training row -> ``(prompt, answer)`` for the VLM SFT module.

A row that carries a judgement (a teacher-annotated JSONL row: ``overall``, ``scores``, ``explanations``,
``recaption`` in its ``meta``) is used as is. A plain dataset row (a human caption) becomes, with probability
``neg_prob``, an offline negative with graded targets, else a graded positive (Table 6 ablations: negatives on/off
is ``neg_prob`` > 0 or 0; rewriting on/off is ``rewrite``). The prompt is the official one around the (possibly
degraded) caption; the answer is the official JSON (:func:`~clipforge.tasks.enhance.prompt.format_answer`).

Design notes: docs/design/enhance.md#ablations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from clipforge.tasks.enhance.annotation import Annotation
from clipforge.tasks.enhance.negatives import NegativeGenerator
from clipforge.tasks.enhance.prompt import build_prompt

__all__ = ["AITQEFormatter"]


class AITQEFormatter:
    """Training targets in the official AITQE format.

    Args:
        negatives: the offline negative generator (labels, other-image pool); ``None`` = one without
            labels or pool (text-only kinds).
        neg_prob: probability that a plain row becomes a negative sample (0 = the no-negatives ablation).
        rewrite: include ``Recaption`` for low-quality pairs (``False`` = the score-only ablation).
        output_all: train on the full answer (explanations and aspect scores); ``False`` = only ``Recaption``
            and ``Overall Score`` (what the default stop-at-``<Overall>`` inference reads; 5-10x shorter).
        seed: seed of the negative sampling (each call draws anew, so every epoch sees other negatives).

    ``fixed`` (set by :class:`~clipforge.tasks.shared.vlm_sft.VLMSFTModule` during validation) makes a row's target
    depend on the row only, so every validation epoch scores the same negatives and ``val/lm_loss`` is comparable.
    """

    def __init__(
        self,
        negatives: NegativeGenerator | None = None,
        neg_prob: float = 0.5,
        rewrite: bool = True,
        output_all: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= neg_prob <= 1.0:
            raise ValueError(f"AITQEFormatter.neg_prob={neg_prob} must be in [0, 1]")
        self.negatives = negatives if negatives is not None else NegativeGenerator()
        self.neg_prob, self.rewrite, self.output_all, self.seed = neg_prob, rewrite, output_all, seed
        self._calls = 0
        self.fixed = False

    def annotate(self, row: Mapping) -> Annotation:
        """The target judgement of a row (its own, a negative or a graded positive)."""
        meta = row.get("meta") or {}
        caption = str(row.get("caption") or "")
        given = Annotation.from_mapping(meta, caption)
        if given is not None:
            return given
        key = str(row.get("key", ""))
        captions = list(row.get("captions") or [caption])
        self._calls += 1
        draw = "val" if self.fixed else self._calls
        rng = random.Random(f"{self.seed}:{key}:{caption}:{draw}")
        if self.neg_prob > 0 and rng.random() < self.neg_prob:
            negative = self.negatives.negative(key, caption, captions, meta, rng)
            if negative is not None:
                return negative
        return self.negatives.positive(key, caption, captions, meta, rng)

    def __call__(self, row: Mapping) -> tuple[str, str]:
        annotation = self.annotate(row)
        return build_prompt(annotation.caption), annotation.answer(self.output_all, self.rewrite)

    def __repr__(self) -> str:
        return (
            f"AITQEFormatter(neg_prob={self.neg_prob}, rewrite={self.rewrite}, output_all={self.output_all})"
        )
