"""``Annotation``: a caption with its target quality judgement (what the enhancer is trained to answer).

Teacher jobs write annotations as JSONL rows; the offline negative generator makes them on the fly; the SFT
formatter turns one into the official answer text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from clipforge.tasks.enhance.prompt import ASPECTS, format_answer

__all__ = ["Annotation"]


@dataclass
class Annotation:
    """One image-caption pair's target judgement.

    Attributes:
        caption: the caption being judged.
        overall: overall score (1-10).
        scores: aspect slug -> score.
        explanations: ``"overall"`` / aspect slug -> explanation.
        recaption: the better caption a low-quality pair should be rewritten to (``None`` for good pairs).
        kind: where the pair came from: ``true`` (a dataset caption), a negative kind (``swap_object``,
            ``shuffle``, ...), ``teacher`` or ``contrast_high`` / ``contrast_low`` (teacher phase 2).
    """

    caption: str
    overall: int
    scores: dict[str, int] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    recaption: str | None = None
    kind: str = "true"

    def answer(self, output_all: bool = True, rewrite: bool = True) -> str:
        """The official answer text; ``rewrite=False`` leaves the recaption out (score-only training)."""
        return format_answer(
            self.overall, self.scores, self.explanations, self.recaption if rewrite else None, output_all
        )

    def to_dict(self) -> dict:
        """Plain dict (JSON rows)."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, row: Mapping, caption: str | None = None) -> Annotation | None:
        """An annotation from a row's fields (``overall``, ``scores``, ``explanations``, ``recaption``,
        ``kind``), or ``None`` when the row carries no overall score.

        Args:
            row: a JSONL row or a record's ``meta``.
            caption: the caption judged (default ``row["caption"]``).
        """
        overall = row.get("overall")
        if overall is None or isinstance(overall, bool):
            return None
        scores = {
            k: int(v) for k, v in dict(row.get("scores") or {}).items() if k in ASPECTS and v is not None
        }
        return cls(
            caption=caption if caption is not None else str(row.get("caption", "")),
            overall=int(overall),
            scores=scores,
            explanations={str(k): str(v) for k, v in dict(row.get("explanations") or {}).items() if v},
            recaption=row.get("recaption") or None,
            kind=str(row.get("kind") or "teacher"),
        )
