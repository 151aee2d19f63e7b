"""Offline negative captions with graded target scores: the CPU stand-in for the teacher's phase 2.

AITQE's "negative sample learning" (arXiv 2410.16166; its Table 6 ablates it, see experiments/enhance/README.md)
adds deliberately low-quality captions to the training set. Without a GPT-4o-class teacher,
:class:`NegativeGenerator` degrades a dataset's own (human) captions in known ways, so the target score of each
negative is known by construction, graded by how much the caption was damaged:

=================  ==========================================================================  =======
kind               what changes                                                                overall
=================  ==========================================================================  =======
``true``           nothing (a dataset caption); longer, more detailed captions score higher    7-9
``swap_attribute`` a colour, count, size or position word becomes another one                  5
``truncate``       only the first 20-50 % of the words are left                                3-4
``swap_object``    an object the image contains (COCO instance labels) becomes one it lacks    2-3
``shuffle``        the words are shuffled                                                      2
``other_image``    a caption of another image (preferably sharing no object label)            2
``generic``        web alt-text that says nothing ("IMG_4031.jpg", "click to enlarge")         1
=================  ==========================================================================  =======

Every pair at or below ``rewrite_threshold`` gets a recaption: one of the image's true captions (the rewrite a
teacher would write). Object labels come from a COCO instances file (by image id) and/or a ``meta`` field (the
synthetic set's ``label``); the other-image pool is any dataset spec, read with the data layer.

The corruptions themselves are :mod:`clipforge.tasks.enhance.corruptions`, their word lists
:mod:`clipforge.tasks.enhance.vocabulary`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from clipforge.data.specs import DatasetSpec, as_spec
from clipforge.tasks.enhance.annotation import Annotation
from clipforge.tasks.enhance.corruptions import ASPECTS, CORRUPTIONS, GRADES, KINDS, join_names

__all__ = ["KINDS", "NegativeGenerator", "coco_labels"]


def coco_labels(instances_path: str) -> dict[str, list[str]]:
    """Image id (as a string) -> category names of its instance annotations, most frequent first."""
    with open(instances_path, encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    counts: dict[str, Counter] = {}
    for ann in data.get("annotations", []):
        name = names.get(ann.get("category_id"))
        if name is not None:
            counts.setdefault(str(ann.get("image_id")), Counter())[name] += 1
    return {k: [n for n, _ in c.most_common()] for k, c in counts.items()}


class NegativeGenerator:
    """Graded positives and negatives of a caption (see the module docstring for the kinds and scores).

    Files are read lazily on first use, so the generator pickles into dataloader workers cheaply.

    Args:
        instances_path: COCO instances JSON; its labels (by image id = ``meta["image_id"]`` or the row key) drive
            ``swap_object`` and the explanations. ``None`` = labels only from ``label_fields``.
        pool: dataset spec whose captions are the ``other_image`` candidates (use the training split only, so
            held-out captions never appear in training); ``None`` = that kind is unavailable.
        kinds: relative weight per negative kind (:data:`KINDS`); missing kinds are never drawn.
        rewrite_threshold: pairs whose overall score is at or below this get a recaption.
        label_fields: ``meta`` fields holding object labels (a string or a list), e.g. the synthetic ``label``.
    """

    def __init__(
        self,
        instances_path: str | None = None,
        pool: DatasetSpec | Mapping | None = None,
        kinds: dict[str, float] | None = None,
        rewrite_threshold: int = 5,
        label_fields: list[str] | None = None,
    ) -> None:
        self.kinds = dict(kinds) if kinds is not None else dict.fromkeys(KINDS, 1.0)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"NegativeGenerator.kinds: unknown {sorted(unknown)}; known: {KINDS}")
        self.instances_path, self.pool = instances_path, as_spec(pool)
        self.rewrite_threshold = rewrite_threshold
        self.label_fields = list(label_fields if label_fields is not None else ["label", "labels"])
        self._labels: dict[str, list[str]] | None = None
        self._pool: list[tuple[str, str]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_labels": None, "_pool": None}  # workers reload instead of copying

    # -- sources ----------------------------------------------------------------------------------------------
    def labels(self, key: str, meta: Mapping | None = None) -> list[str]:
        """Object labels of an image: the instances file's (by ``meta["image_id"]`` or key), then ``meta``'s."""
        if self._labels is None:
            self._labels = coco_labels(self.instances_path) if self.instances_path else {}
        meta = meta or {}
        out = list(self._labels.get(str(meta.get("image_id", key)), []))
        for f in self.label_fields:
            value = meta.get(f)
            for v in [value] if isinstance(value, str) else value or []:
                if isinstance(v, str) and v not in out:
                    out.append(v)
        return out

    def pool_captions(self) -> list[tuple[str, str]]:
        """``(key, caption)`` of every caption in the pool."""
        if self._pool is None:
            self._pool = []
            if self.pool is not None:
                from clipforge.data.readers import read_records

                records, _ = read_records(self.pool, where="negatives.pool")
                self._pool = [(r.key, c) for r in records for c in r.captions]
        return self._pool

    # -- annotations ------------------------------------------------------------------------------------------
    def _annotation(
        self,
        kind: str,
        caption: str,
        grades: Sequence[int],
        explanations: dict,
        recaptions: Sequence[str],
        rng: random.Random,
    ) -> Annotation:
        overall, *aspects = (max(1, min(10, g)) for g in grades)
        recaption = None
        if overall <= self.rewrite_threshold and recaptions:
            recaption = rng.choice(list(recaptions))
        return Annotation(caption, overall, dict(zip(ASPECTS, aspects)), explanations, recaption, kind)

    def positive(
        self, key: str, caption: str, captions: Sequence[str], meta: Mapping | None, rng: random.Random
    ) -> Annotation:
        """The target judgement of a true caption, graded by its length (detail)."""
        labels = self.labels(key, meta)
        words = len(caption.split())
        bonus = -1 if words <= 6 else 1 if words >= 13 else 0
        o, tq, itm, od, su, tc = GRADES["true"]
        grades = (o + bonus, tq, itm, od + 2 * bonus, su + bonus, tc)
        shows = f", which shows {join_names(labels)}" if labels else ""
        explanations = {
            "overall": "The caption is fluent and accurately describes the image.",
            "text_quality": "The caption is grammatical and easy to read.",
            "image_text_matching": f"The caption matches the image{shows}.",
            "object_detail": "It names the main objects" + (" but gives few details." if bonus < 0 else "."),
            "semantic_understanding": "It captures what is happening in the scene.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        others = [c for c in captions if c != caption] or [caption]
        return self._annotation("true", caption, grades, explanations, others, rng)

    def negative(
        self,
        key: str,
        caption: str,
        captions: Sequence[str],
        meta: Mapping | None,
        rng: random.Random,
        kind: str | None = None,
    ) -> Annotation | None:
        """A degraded copy of ``caption`` with its graded judgement; ``None`` when no allowed kind applies.

        Args:
            key: the image's key.
            caption: the caption to degrade.
            captions: every true caption of the image (recaption candidates).
            meta: the record's ``meta`` (image id, labels).
            rng: random source.
            kind: force this kind (``None`` = draw from ``kinds``; inapplicable kinds fall back to others).
        """
        labels = self.labels(key, meta)
        candidates = [kind] if kind else [k for k in self.kinds if self.kinds[k] > 0]
        while candidates:
            k = candidates[0] if kind else rng.choices(candidates, [self.kinds[c] for c in candidates])[0]
            if k == "other_image":
                made = CORRUPTIONS[k](key, caption, labels, rng, self.pool_captions(), self.labels)
            else:
                made = CORRUPTIONS[k](key, caption, labels, rng)
            if made is not None:
                text, grades, explanations = made
                recaptions = list(captions) or [caption]
                return self._annotation(k, text, grades, explanations, recaptions, rng)
            candidates.remove(k)
        return None
