"""Vocabulary of the offline negatives (:mod:`clipforge.tasks.enhance.negatives`): COCO categories, the words
captions use for them, attribute groups and empty web alt-text."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "ATTRIBUTE_GROUPS",
    "COCO_CATEGORIES",
    "GENERIC_ALT_TEXTS",
    "IRREGULAR_PLURALS",
    "MENTION_RE",
    "NAMES",
    "SINGULARS",
    "SPELLINGS",
    "SYNONYMS",
    "mention_pattern",
    "plural",
]

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

SYNONYMS = {
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
"""Categories that captions name differently: ``category -> (name written into a caption, singular words that
mention it)``."""
IRREGULAR_PLURALS = {
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
"""Plurals that :func:`plural` does not form by adding ``s`` / ``es``."""


def plural(word: str) -> str:
    """The plural of an English noun (irregular ones from :data:`IRREGULAR_PLURALS`)."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def mention_pattern(words: Sequence[str]) -> re.Pattern | None:
    """A regex matching any of ``words`` or their plurals, with an optional article (``None`` for no words)."""
    forms = sorted({f for w in words for f in (w, plural(w))}, key=len, reverse=True)
    if not forms:
        return None
    return re.compile(
        r"\b(?P<article>(?:an?|the)\s+)?(?P<word>" + "|".join(map(re.escape, forms)) + r")\b", re.I
    )


NAMES = {c: SYNONYMS.get(c, (c, (c,)))[0] for c in COCO_CATEGORIES}
SINGULARS = {c: SYNONYMS.get(c, (c, (c,)))[1] for c in COCO_CATEGORIES}
MENTION_RE = {c: p for c in COCO_CATEGORIES if (p := mention_pattern(SINGULARS[c])) is not None}
"""Per category: the name a swap writes (:data:`NAMES`), the words that mention it (:data:`SINGULARS`) and their
regex (:data:`MENTION_RE`)."""
ATTRIBUTE_GROUPS = (
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
"""Words a ``swap_attribute`` negative exchanges within a group: colours, counts, sizes, positions."""
SPELLINGS = {"gray": "grey", "grey": "gray"}
"""Spelling variants that are the same word (never swapped for each other)."""
GENERIC_ALT_TEXTS = (
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
"""Web alt-text that says nothing about the image (``{n}``: a random number)."""
