"""Caption text rules shared by the data layer (text shearing) and the captioners (post-processing).

In the bottom layer because both apply them and neither imports the other.
"""

from __future__ import annotations

__all__ = ["first_sentence"]


def first_sentence(text: str) -> str:
    """The official scripts' cut, ``text.strip().split(".")[0]`` exactly: everything before the first ``.`` of the
    stripped text (``" A cat. It"`` -> ``"A cat"``). Whitespace before that ``.`` is kept (``"A cat ."`` ->
    ``"A cat "``) and a text that starts with ``.`` gives ``""``, as in the released captions."""
    return text.strip().split(".")[0]
