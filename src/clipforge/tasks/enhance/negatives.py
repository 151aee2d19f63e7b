"""Offline negative captions with graded target scores: the CPU stand-in for the teacher's phase 2.

AITQE's "negative sample learning" adds deliberately low-quality captions to the training set (SPEC B.1). Without
a GPT-4o-class teacher, :class:`NegativeGenerator` degrades a dataset's own (human) captions in known ways, so the
target score of each negative is known by construction, graded by how much the caption was damaged:

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
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from clipforge.data.specs import DatasetSpec, as_spec
from clipforge.tasks.enhance.annotation import Annotation

__all__ = ["KINDS", "NegativeGenerator", "coco_labels"]

KINDS = ("swap_attribute", "truncate", "swap_object", "shuffle", "other_image", "generic")
"""Negative kinds, mildest first."""

# (overall, text_quality, image_text_matching, object_detail, semantic_understanding, text_chart_description)
_GRADES = {
    "true": (8, 8, 9, 7, 7, 6),
    "swap_attribute": (5, 8, 5, 4, 5, 5),
    "truncate": (3, 3, 4, 2, 2, 3),
    "swap_object": (3, 7, 2, 3, 3, 3),
    "shuffle": (2, 1, 3, 3, 2, 2),
    "other_image": (2, 7, 1, 1, 1, 2),
    "generic": (1, 2, 1, 1, 1, 1),
}
_SLUGS = (
    "text_quality",
    "image_text_matching",
    "object_detail",
    "semantic_understanding",
    "text_chart_description",
)

COCO_CATEGORIES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
"""The 80 COCO instance categories."""

# categories that captions name differently: (name written into a caption, singular words that mention it)
_SYNONYMS = {
    "person": ("person", ("man", "woman", "person", "boy", "girl", "child", "kid", "guy", "lady", "player")),
    "bicycle": ("bicycle", ("bicycle", "bike")),
    "motorcycle": ("motorcycle", ("motorcycle", "motorbike")),
    "airplane": ("airplane", ("airplane", "plane", "jet", "aircraft", "airliner")),
    "boat": ("boat", ("boat", "ship")),
    "sports ball": ("ball", ("ball",)),
    "dining table": ("table", ("table",)),
    "cell phone": ("phone", ("phone", "cellphone", "cell phone")),
    "tv": ("television", ("tv", "television")),
    "couch": ("couch", ("couch", "sofa")),
    "potted plant": ("plant", ("plant", "potted plant")),
    "hair drier": ("hair dryer", ("hair dryer", "hair drier")),
    "donut": ("donut", ("donut", "doughnut")),
    "cup": ("cup", ("cup", "mug")),
    "orange": ("orange", ()),  # "orange" is more often the colour; swap_attribute owns it
}
_IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "person": "people",
    "child": "children",
    "knife": "knives",
    "mouse": "mice",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "bus": "buses",
}


def _plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def _mention_pattern(words: Sequence[str]) -> re.Pattern | None:
    forms = sorted({f for w in words for f in (w, _plural(w))}, key=len, reverse=True)
    if not forms:
        return None
    return re.compile(
        r"\b(?P<article>(?:an?|the)\s+)?(?P<word>" + "|".join(map(re.escape, forms)) + r")\b", re.I
    )


_NAMES = {c: _SYNONYMS.get(c, (c, (c,)))[0] for c in COCO_CATEGORIES}
_SINGULARS = {c: _SYNONYMS.get(c, (c, (c,)))[1] for c in COCO_CATEGORIES}
_MENTION_RE = {c: p for c in COCO_CATEGORIES if (p := _mention_pattern(_SINGULARS[c])) is not None}
_ATTRIBUTE_GROUPS = (
    ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey"),
    ("two", "three", "four", "five", "six"),
    ("large", "small"),
    ("big", "little"),
    ("tall", "short"),
    ("young", "old"),
    ("left", "right"),
    ("top", "bottom"),
    ("inside", "outside"),
)
_SPELLINGS = {"gray": "grey", "grey": "gray"}
_GENERIC = (
    "image",
    "photo",
    "untitled",
    "stock photo",
    "click to enlarge",
    "view larger image",
    "picture 1",
    "IMG_{n}.jpg",
    "DSC_{n}.JPG",
    "free shipping on all orders",
    "download high resolution image",
    "see more photos",
    "no description available",
    "screenshot {n}",
    "thumbnail",
)


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


def _join(names: Sequence[str]) -> str:
    names = list(names)[:3]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _bare(word: str) -> str:
    return word.strip(".,;:!?\"'()")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


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
        return Annotation(caption, overall, dict(zip(_SLUGS, aspects)), explanations, recaption, kind)

    def positive(
        self, key: str, caption: str, captions: Sequence[str], meta: Mapping | None, rng: random.Random
    ) -> Annotation:
        """The target judgement of a true caption, graded by its length (detail)."""
        labels = self.labels(key, meta)
        words = len(caption.split())
        bonus = -1 if words <= 6 else 1 if words >= 13 else 0
        o, tq, itm, od, su, tc = _GRADES["true"]
        grades = (o + bonus, tq, itm, od + 2 * bonus, su + bonus, tc)
        shows = f", which shows {_join(labels)}" if labels else ""
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
            made = getattr(self, f"_{k}")(key, caption, labels, rng)
            if made is not None:
                text, grades, explanations = made
                recaptions = list(captions) or [caption]
                return self._annotation(k, text, grades, explanations, recaptions, rng)
            candidates.remove(k)
        return None

    # -- kinds: each returns (caption, grades, explanations) or None when it does not apply ---------------------
    @staticmethod
    def _swap_attribute(key, caption, labels, rng):
        words = caption.split()
        spots = [(i, g) for i, w in enumerate(words) for g in _ATTRIBUTE_GROUPS if _bare(w).lower() in g]
        if not spots:
            return None
        i, group = rng.choice(spots)
        old = _bare(words[i])
        new = rng.choice([w for w in group if w not in (old.lower(), _SPELLINGS.get(old.lower()))])
        words[i] = words[i].replace(old, new.capitalize() if old[:1].isupper() else new)
        explanations = {
            "overall": f"The caption is fluent but says {new} where the image shows {old.lower()}.",
            "text_quality": "The caption is grammatical and easy to read.",
            "image_text_matching": f"Most of the caption matches, but '{new}' is wrong.",
            "object_detail": f"The detail '{new}' contradicts the image.",
            "semantic_understanding": "The scene is described, with one wrong detail.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return " ".join(words), _GRADES["swap_attribute"], explanations

    @staticmethod
    def _truncate(key, caption, labels, rng):
        words = caption.split()
        if len(words) < 4:
            return None
        fraction = rng.uniform(0.2, 0.5)
        kept = max(1, min(len(words) - 2, int(round(len(words) * fraction))))
        o, tq, itm, od, su, tc = _GRADES["truncate"]
        grades = (o + (fraction > 0.4), tq, itm + (fraction > 0.4), od, su, tc)
        explanations = {
            "overall": "The caption is cut off and says little about the image.",
            "text_quality": "The text is an incomplete phrase.",
            "image_text_matching": "The few words left fit the image but miss most of it.",
            "object_detail": "Almost no object details remain.",
            "semantic_understanding": "The scene's meaning is lost.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return " ".join(words[:kept]), grades, explanations

    @staticmethod
    def _swap_object(key, caption, labels, rng):
        present = set(labels)
        spots = [
            (m, cat)
            for cat, pattern in _MENTION_RE.items()
            if not present or cat in present  # without labels, any mentioned category may be swapped
            for m in pattern.finditer(caption)
        ]
        mentioned = {cat for _, cat in spots}
        absent = [c for c in COCO_CATEGORIES if c not in present and c not in mentioned]
        if not spots:
            return None
        m, cat = rng.choice(spots)
        new = _NAMES[rng.choice(absent)]
        word = m.group("word")
        plural = word.lower() not in _SINGULARS[cat]
        replacement = _plural(new) if plural else new
        if word[:1].isupper():
            replacement = replacement[:1].upper() + replacement[1:]
        article = m.group("article") or ""
        if article.strip().lower() in ("a", "an"):
            fixed = _article(replacement)
            article = (fixed.capitalize() if article[:1].isupper() else fixed) + article[
                len(article.rstrip()) :
            ]
        text = caption[: m.start()] + article + replacement + caption[m.end() :]
        o, tq, itm, od, su, tc = _GRADES["swap_object"]
        grades = (o - (len(mentioned) == 1), tq, itm, od, su, tc)  # the only object named is wrong: worse
        explanations = {
            "overall": f"The caption mentions {replacement}, but the image shows {_join(labels) or word}.",
            "text_quality": "The caption is grammatical and easy to read.",
            "image_text_matching": f"There is no {new} in the image.",
            "object_detail": f"The {word} in the image is called {_article(new)} {new}.",
            "semantic_understanding": "The described scene differs from the image.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return text, grades, explanations

    @staticmethod
    def _shuffle(key, caption, labels, rng):
        words = caption.split()
        if len(set(words)) < 3:
            return None
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        explanations = {
            "overall": "The words are scrambled, so the caption cannot be read.",
            "text_quality": "The text is ungrammatical word salad.",
            "image_text_matching": "Some words relate to the image, but no statement is made.",
            "object_detail": "Objects are named without any coherent description.",
            "semantic_understanding": "The caption conveys no meaning.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return " ".join(shuffled), _GRADES["shuffle"], explanations

    def _other_image(self, key, caption, labels, rng):
        pool = [(k, c) for k, c in self.pool_captions() if k != key]
        if not pool:
            return None
        choice = rng.choice(pool)
        for _ in range(10):  # prefer an image that shares no object label
            if not set(labels) & set(self.labels(choice[0])):
                break
            choice = rng.choice(pool)
        shows = f", which shows {_join(labels)}" if labels else ""
        explanations = {
            "overall": f"The caption describes a different scene and does not match the image{shows}.",
            "text_quality": "The caption is grammatical and easy to read.",
            "image_text_matching": "The caption is unrelated to the image.",
            "object_detail": "None of the described objects are in the image.",
            "semantic_understanding": "The caption conveys the meaning of another image.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return choice[1], _GRADES["other_image"], explanations

    @staticmethod
    def _generic(key, caption, labels, rng):
        text = rng.choice(_GENERIC).format(n=rng.randrange(1000, 10000))
        explanations = {
            "overall": "The text is generic alt-text that says nothing about the image.",
            "text_quality": "It is not a sentence.",
            "image_text_matching": "It does not describe the image.",
            "object_detail": "No objects are mentioned.",
            "semantic_understanding": "It carries no information about the scene.",
            "text_chart_description": "The caption does not describe any text in the image.",
        }
        return text, _GRADES["generic"], explanations
