"""Corruptions of a caption with known target scores: one function per negative kind (see
:mod:`clipforge.tasks.enhance.negatives` for the kinds and their grades).

Each corruption takes ``(key, caption, labels, rng)`` and returns ``(caption, grades, explanations)`` — the degraded
text, its scores ``(overall, *ASPECTS)`` and one explanation per aspect — or ``None`` when it does not apply to the
caption; :func:`other_image` also takes the pool of other images' captions and their labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from clipforge.tasks.enhance.vocabulary import (
    ATTRIBUTE_GROUPS,
    COCO_CATEGORIES,
    GENERIC_ALT_TEXTS,
    MENTION_RE,
    NAMES,
    SINGULARS,
    SPELLINGS,
    plural,
)

__all__ = [
    "ASPECTS",
    "CORRUPTIONS",
    "GRADES",
    "KINDS",
    "Corruption",
    "bare",
    "generic",
    "indefinite_article",
    "join_names",
    "other_image",
    "shuffle",
    "swap_attribute",
    "swap_object",
    "truncate",
]

KINDS = ("swap_attribute", "truncate", "swap_object", "shuffle", "other_image", "generic")
"""Negative kinds, mildest first."""

# (overall, text_quality, image_text_matching, object_detail, semantic_understanding, text_chart_description)
GRADES = {
    "true": (8, 8, 9, 7, 7, 6),
    "swap_attribute": (5, 8, 5, 4, 5, 5),
    "truncate": (3, 3, 4, 2, 2, 3),
    "swap_object": (3, 7, 2, 3, 3, 3),
    "shuffle": (2, 1, 3, 3, 2, 2),
    "other_image": (2, 7, 1, 1, 1, 2),
    "generic": (1, 2, 1, 1, 1, 1),
}
"""Target scores per kind: ``(overall, *ASPECTS)`` (``true`` is a dataset caption)."""
ASPECTS = (
    "text_quality",
    "image_text_matching",
    "object_detail",
    "semantic_understanding",
    "text_chart_description",
)
"""The aspect scores of an annotation, in :data:`GRADES` order after ``overall``."""

Corruption = tuple[str, Sequence[int], dict[str, str]]
"""What a corruption returns: ``(caption, grades, explanations)``."""


def join_names(names: Sequence[str]) -> str:
    """At most three names as an English list: ``"a, b and c"``."""
    names = list(names)[:3]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def bare(word: str) -> str:
    """``word`` without surrounding punctuation."""
    return word.strip(".,;:!?\"'()")


def indefinite_article(word: str) -> str:
    """``a`` or ``an`` before ``word`` (by its first letter)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def swap_attribute(key: str, caption: str, labels: Sequence[str], rng: random.Random) -> Corruption | None:
    """A colour, count, size or position word of the caption becomes another of its group."""
    words = caption.split()
    spots = [(i, g) for i, w in enumerate(words) for g in ATTRIBUTE_GROUPS if bare(w).lower() in g]
    if not spots:
        return None
    i, group = rng.choice(spots)
    old = bare(words[i])
    new = rng.choice([w for w in group if w not in (old.lower(), SPELLINGS.get(old.lower()))])
    words[i] = words[i].replace(old, new.capitalize() if old[:1].isupper() else new)
    explanations = {
        "overall": f"The caption is fluent but says {new} where the image shows {old.lower()}.",
        "text_quality": "The caption is grammatical and easy to read.",
        "image_text_matching": f"Most of the caption matches, but '{new}' is wrong.",
        "object_detail": f"The detail '{new}' contradicts the image.",
        "semantic_understanding": "The scene is described, with one wrong detail.",
        "text_chart_description": "The caption does not describe any text in the image.",
    }
    return " ".join(words), GRADES["swap_attribute"], explanations


def truncate(key: str, caption: str, labels: Sequence[str], rng: random.Random) -> Corruption | None:
    """Only the first 20-50 % of the words are left (captions of 4 words or more)."""
    words = caption.split()
    if len(words) < 4:
        return None
    fraction = rng.uniform(0.2, 0.5)
    kept = max(1, min(len(words) - 2, int(round(len(words) * fraction))))
    o, tq, itm, od, su, tc = GRADES["truncate"]
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


def swap_object(key: str, caption: str, labels: Sequence[str], rng: random.Random) -> Corruption | None:
    """A mentioned object the image contains (any mentioned COCO category without ``labels``) becomes one it lacks."""
    present = set(labels)
    spots = [
        (m, cat)
        for cat, pattern in MENTION_RE.items()
        if not present or cat in present  # without labels, any mentioned category may be swapped
        for m in pattern.finditer(caption)
    ]
    mentioned = {cat for _, cat in spots}
    absent = [c for c in COCO_CATEGORIES if c not in present and c not in mentioned]
    if not spots:
        return None
    m, cat = rng.choice(spots)
    new = NAMES[rng.choice(absent)]
    word = m.group("word")
    is_plural = word.lower() not in SINGULARS[cat]
    replacement = plural(new) if is_plural else new
    if word[:1].isupper():
        replacement = replacement[:1].upper() + replacement[1:]
    article = m.group("article") or ""
    if article.strip().lower() in ("a", "an"):
        fixed = indefinite_article(replacement)
        article = (fixed.capitalize() if article[:1].isupper() else fixed) + article[len(article.rstrip()) :]
    text = caption[: m.start()] + article + replacement + caption[m.end() :]
    o, tq, itm, od, su, tc = GRADES["swap_object"]
    grades = (o - (len(mentioned) == 1), tq, itm, od, su, tc)  # the only object named is wrong: worse
    explanations = {
        "overall": f"The caption mentions {replacement}, but the image shows {join_names(labels) or word}.",
        "text_quality": "The caption is grammatical and easy to read.",
        "image_text_matching": f"There is no {new} in the image.",
        "object_detail": f"The {word} in the image is called {indefinite_article(new)} {new}.",
        "semantic_understanding": "The described scene differs from the image.",
        "text_chart_description": "The caption does not describe any text in the image.",
    }
    return text, grades, explanations


def shuffle(key: str, caption: str, labels: Sequence[str], rng: random.Random) -> Corruption | None:
    """The words in another order (captions of at least 3 distinct words)."""
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
    return " ".join(shuffled), GRADES["shuffle"], explanations


def other_image(
    key: str,
    caption: str,
    labels: Sequence[str],
    rng: random.Random,
    pool: Sequence[tuple[str, str]] = (),
    labels_of: Callable[[str], Sequence[str]] = lambda key: (),
) -> Corruption | None:
    """A caption of another image of ``pool`` (``(key, caption)`` pairs), preferably one whose labels
    (``labels_of(key)``) share none with ``labels``."""
    pool = [(k, c) for k, c in pool if k != key]
    if not pool:
        return None
    choice = rng.choice(pool)
    for _ in range(10):  # prefer an image that shares no object label
        if not set(labels) & set(labels_of(choice[0])):
            break
        choice = rng.choice(pool)
    shows = f", which shows {join_names(labels)}" if labels else ""
    explanations = {
        "overall": f"The caption describes a different scene and does not match the image{shows}.",
        "text_quality": "The caption is grammatical and easy to read.",
        "image_text_matching": "The caption is unrelated to the image.",
        "object_detail": "None of the described objects are in the image.",
        "semantic_understanding": "The caption conveys the meaning of another image.",
        "text_chart_description": "The caption does not describe any text in the image.",
    }
    return choice[1], GRADES["other_image"], explanations


def generic(key: str, caption: str, labels: Sequence[str], rng: random.Random) -> Corruption | None:
    """Web alt-text that says nothing about the image."""
    text = rng.choice(GENERIC_ALT_TEXTS).format(n=rng.randrange(1000, 10000))
    explanations = {
        "overall": "The text is generic alt-text that says nothing about the image.",
        "text_quality": "It is not a sentence.",
        "image_text_matching": "It does not describe the image.",
        "object_detail": "No objects are mentioned.",
        "semantic_understanding": "It carries no information about the scene.",
        "text_chart_description": "The caption does not describe any text in the image.",
    }
    return text, GRADES["generic"], explanations


CORRUPTIONS: dict[str, Callable[..., Corruption | None]] = {
    "swap_attribute": swap_attribute,
    "truncate": truncate,
    "swap_object": swap_object,
    "shuffle": shuffle,
    "other_image": other_image,
    "generic": generic,
}
"""Kind -> its corruption."""
