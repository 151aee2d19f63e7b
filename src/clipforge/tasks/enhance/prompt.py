"""The AITQE prompt and answer format, exactly as the released inference code and model use them.

The prompt is the official one: an image tag holding a JSON object between ``<img_start>`` and ``<img_end>``
(the model's processor replaces the whole tag by the image's tokens, so the path inside never reaches the LLM),
a newline, then the question. No chat template, no system prompt, no BOS/EOS.

The answer is one JSON object whose fields come in the official order: ``Recaption`` (only for low-quality
pairs), ``Overall Score`` as a string ``"<n><Overall>"`` (the ``<Overall>`` marker is where the default mode stops
generating), ``Overall Explanation``, then a score and an explanation for each of the five aspects.

Design notes: docs/design/enhance.md#prompt-and-answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

IMAGE_START = "<img_start>"
IMAGE_END = "<img_end>"
OVERALL_MARKER = "<Overall>"
"""The official ``stop_strings`` entry: generation stops right after the overall score."""

RECAPTION = "Recaption"
OVERALL_SCORE = "Overall Score"
OVERALL_EXPLANATION = "Overall Explanation"
ASPECTS = {
    "text_quality": "Text Quality",
    "image_text_matching": "Image-Text Matching",
    "object_detail": "Object Detail",
    "semantic_understanding": "Semantic Understanding",
    "text_chart_description": "Text/Chart Description",
}
"""Aspect slug (row keys, configs) -> the name the model writes, in output order."""

SCORE_RANGE = (1, 10)
"""Scores are integers on the official 1-10 scale."""


def question(caption: str) -> str:
    """The official instruction for one caption."""
    return (
        f"Evaluate the caption: {caption}\nif score is low, give a short description of the image.\n"
        "Respond using a dictionary structure."
    )


def image_tag(image_path: str = "image") -> str:
    """``<img_start>{"path": ..., "source": "localpath", "file_type": "I"}<img_end>`` (the official image dict)."""
    return (
        f"{IMAGE_START}{json.dumps({'path': image_path, 'source': 'localpath', 'file_type': 'I'})}{IMAGE_END}"
    )


def build_prompt(caption: str, image_path: str = "image") -> str:
    """The full official prompt: image tag, newline, question."""
    return f"{image_tag(image_path)}\n{question(caption)}"


def official_fields(
    overall: int,
    scores: Mapping[str, int | None] | None = None,
    explanations: Mapping[str, str] | None = None,
    recaption: str | None = None,
    output_all: bool = True,
) -> dict:
    """The answer as an ordered dict with the official keys and value types.

    Args:
        overall: overall score.
        scores: aspect slug -> score (see :data:`ASPECTS`); aspects without a score are left out.
        explanations: ``"overall"`` or an aspect slug -> explanation; missing ones are left out.
        recaption: rewritten caption; ``None`` or empty = no ``Recaption`` field (a high-quality pair).
        output_all: include the explanations and aspect scores (else stop after ``Overall Score``).
    """
    scores, explanations = dict(scores or {}), dict(explanations or {})
    out: dict = {}
    if recaption:
        out[RECAPTION] = recaption
    out[OVERALL_SCORE] = f"{overall}{OVERALL_MARKER}"
    if not output_all:
        return out
    if explanations.get("overall"):
        out[OVERALL_EXPLANATION] = explanations["overall"]
    for slug, name in ASPECTS.items():
        if scores.get(slug) is not None:
            out[f"{name} Score"] = scores[slug]
        if explanations.get(slug):
            out[f"{name} Explanation"] = explanations[slug]
    return out


def generation_kwargs(output_all: bool = False, max_new_tokens: int = 384, tokenizer=None) -> dict:
    """The official decoding (``inference.py``): greedy, one beam, KV cache, 384 new tokens; without
    ``output_all`` generation stops at ``<Overall>`` (``stop_strings`` needs the ``tokenizer``)."""
    kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "use_cache": True}
    if not output_all:
        if tokenizer is None:
            raise ValueError("stopping at <Overall> needs the tokenizer (transformers' stop_strings)")
        kwargs.update(stop_strings=[OVERALL_MARKER], tokenizer=tokenizer)
    return kwargs


def format_answer(
    overall: int,
    scores: Mapping[str, int | None] | None = None,
    explanations: Mapping[str, str] | None = None,
    recaption: str | None = None,
    output_all: bool = True,
) -> str:
    """The answer text the model is trained to write (``json.dumps`` of :func:`official_fields`)."""
    return json.dumps(
        official_fields(overall, scores, explanations, recaption, output_all), ensure_ascii=False
    )
