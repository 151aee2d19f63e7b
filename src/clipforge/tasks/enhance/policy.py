"""The enhancement policy: what happens to each scored pair, and which pairs a data budget keeps.

Pure functions over plain dicts, configured by :class:`PolicyConfig` (a key per choice, so every variant is a
config override). A *pair* is one scored image-caption pair::

    {"key", "image", "caption", "overall", "scores": {aspect: score}, "recaption", "rescore_overall",
     "expected", "rescore_expected"}

(``overall`` ``None`` = unscored: its image failed or the output had no readable score; ``rescore_overall`` =
the score of ``(image, recaption)`` when the job scored the rewrite too; ``expected`` / ``rescore_expected`` =
the probability-weighted scores, which break ties of the budget's ranking). Each pair gets one action:

* ``keep``: the original caption stays;
* ``rewrite``: the model's recaption replaces it (the original is kept as provenance);
* ``keep_both``: both captions stay (two rows of the same image);
* ``drop``: the pair leaves the dataset.

Low quality is the released model's own judgement (``rule: recaption_present``: it wrote a ``Recaption``) or
thresholds (``rule: threshold``: overall at or below ``overall_threshold``, or any aspect at or below its entry of
``aspect_thresholds``). Low-quality pairs get ``low_action``; a low-quality pair without a recaption to rewrite
to gets ``no_recaption_action``; pairs at or below ``drop_threshold`` are dropped whatever the rule says. Then
``select_k`` keeps the best ``k`` rows by their final score (the rewrite's score for rewritten rows) or a random
``k`` (``selector: random``, the paper's random-sampling baseline).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clipforge.tasks.enhance.prompt import ASPECTS, SCORE_RANGE

__all__ = ["ACTIONS", "PolicyConfig", "apply_policy", "decide", "is_low_quality", "score_histogram"]

ACTIONS = ("keep", "rewrite", "keep_both", "drop")
RULES = ("recaption_present", "threshold")
SELECTORS = ("score", "random")


@dataclass
class PolicyConfig:
    """How scored pairs become the enhanced dataset.

    Attributes:
        rule: ``recaption_present`` (the model wrote a recaption) or ``threshold`` (scores at or below limits).
        overall_threshold: ``threshold`` rule: overall scores at or below this are low quality.
        aspect_thresholds: ``threshold`` rule: aspect slug -> a score at or below this is low quality.
        low_action: action of low-quality pairs: ``rewrite``, ``keep_both``, ``drop`` or ``keep``.
        no_recaption_action: action of a low-quality pair that has no recaption (or one equal to its caption up to
            case, punctuation and spacing): ``keep`` or ``drop``.
        drop_threshold: pairs whose overall score is at or below this are dropped (``None`` = never).
        error_action: action of pairs without a score (image or output unreadable): ``keep`` or ``drop``.
        select_k: keep at most this many rows (the data budget); ``None`` = all.
        selector: ``score`` (best final score first) or ``random``.
        seed: seed of the random selector.
    """

    rule: str = "recaption_present"
    overall_threshold: float = 5.0
    aspect_thresholds: dict[str, float] = field(default_factory=dict)
    low_action: str = "rewrite"
    no_recaption_action: str = "keep"
    drop_threshold: float | None = None
    error_action: str = "keep"
    select_k: int | None = None
    selector: str = "score"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "rule": (self.rule, RULES),
            "low_action": (self.low_action, ACTIONS),
            "no_recaption_action": (self.no_recaption_action, ("keep", "drop")),
            "error_action": (self.error_action, ("keep", "drop")),
            "selector": (self.selector, SELECTORS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"policy.{name}={value!r} is not one of {allowed}")
        unknown = set(self.aspect_thresholds) - set(ASPECTS)
        if unknown:
            raise ValueError(
                f"policy.aspect_thresholds: unknown aspects {sorted(unknown)}; known: {list(ASPECTS)}"
            )
        if self.select_k is not None and self.select_k < 0:
            raise ValueError(f"policy.select_k={self.select_k} must be >= 0")


def as_policy(policy: PolicyConfig | Mapping | None) -> PolicyConfig:
    """Normalise a policy given as a dataclass, a mapping (Hydra) or ``None`` (defaults)."""
    if policy is None:
        return PolicyConfig()
    return policy if isinstance(policy, PolicyConfig) else PolicyConfig(**policy)


def is_low_quality(pair: Mapping, cfg: PolicyConfig) -> bool:
    """Whether a scored pair is low quality under ``cfg.rule``."""
    if cfg.rule == "recaption_present":
        return bool(pair.get("recaption"))
    if pair.get("overall") is not None and pair["overall"] <= cfg.overall_threshold:
        return True
    scores = pair.get("scores") or {}
    return any(scores.get(a) is not None and scores[a] <= t for a, t in cfg.aspect_thresholds.items())


def decide(pair: Mapping, cfg: PolicyConfig) -> str:
    """The action of one pair (see the module docstring)."""
    overall = pair.get("overall")
    if overall is None:
        return cfg.error_action
    if cfg.drop_threshold is not None and overall <= cfg.drop_threshold:
        return "drop"
    if not is_low_quality(pair, cfg):
        return "keep"
    if cfg.low_action in ("rewrite", "keep_both") and (
        not pair.get("recaption") or _same_text(pair["recaption"], pair.get("caption") or "")
    ):
        return cfg.no_recaption_action  # no rewrite, or one that only changes case, spacing or punctuation
    return cfg.low_action


def _same_text(a: str, b: str) -> bool:
    """Equal up to case, punctuation and whitespace."""

    def norm(t: str) -> str:
        return " ".join("".join(c if c.isalnum() else " " for c in t.lower()).split())

    return norm(a) == norm(b)


def _rows_of(pair: Mapping, action: str) -> list[dict]:
    base = {
        "key": pair["key"],
        "image": pair.get("image"),
        "original_caption": pair["caption"],
        "action": action,
        "overall": pair.get("overall"),
        "scores": dict(pair.get("scores") or {}),
    }
    original = {
        **base,
        "caption": pair["caption"],
        "rewritten": False,
        "final_overall": pair.get("overall"),
        "final_expected": pair.get("expected"),
    }
    rewrite = {
        **base,
        "caption": pair.get("recaption"),
        "rewritten": True,
        "final_overall": pair.get("rescore_overall"),
        "final_expected": pair.get("rescore_expected"),
    }
    return {"keep": [original], "rewrite": [rewrite], "keep_both": [original, rewrite], "drop": []}[action]


def _select(rows: list[dict], cfg: PolicyConfig) -> list[dict]:
    if cfg.select_k is None or cfg.select_k >= len(rows):
        return rows
    if cfg.selector == "random":
        chosen = set(random.Random(cfg.seed).sample(range(len(rows)), cfg.select_k))
    else:  # best final score first, ties by expected score, then input order; unscored rows last

        def rank(i: int) -> tuple:
            score, soft = rows[i]["final_overall"], rows[i]["final_expected"]
            return (score is None, -(score or 0), -(soft if soft is not None else score or 0), i)

        chosen = set(sorted(range(len(rows)), key=rank)[: cfg.select_k])
    return [r for i, r in enumerate(rows) if i in chosen]


def score_histogram(scores: Iterable[float | None]) -> dict[str, int]:
    """Counts per integer score of the 1-10 scale, plus ``none`` for unscored items."""
    counts = Counter("none" if s is None else str(int(s)) for s in scores)
    return {
        **{str(s): counts.get(str(s), 0) for s in range(SCORE_RANGE[0], SCORE_RANGE[1] + 1)},
        "none": counts["none"],
    }


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def apply_policy(pairs: Sequence[Mapping], cfg: PolicyConfig) -> tuple[list[dict], dict]:
    """Decide every pair, build the output rows, apply the data budget.

    Args:
        pairs: scored pairs (see the module docstring), in dataset order.
        cfg: the policy.

    Returns:
        ``(rows, report)``: the enhanced rows in input order (``key``, ``image``, ``caption``,
        ``original_caption``, ``action``, ``rewritten``, ``overall``, ``final_overall``, ``final_expected``,
        ``scores``) and a report
        with counts per action, low-quality and unscored counts, and score histograms and means before (every
        pair's overall) and after (every output row's final score).
    """
    actions = [decide(p, cfg) for p in pairs]
    rows = [r for p, a in zip(pairs, actions) for r in _rows_of(p, a)]
    selected = _select(rows, cfg)
    before = [p.get("overall") for p in pairs]
    after = [r["final_overall"] for r in selected]
    report = {
        "pairs": len(pairs),
        "unscored": sum(s is None for s in before),
        "low_quality": sum(p.get("overall") is not None and is_low_quality(p, cfg) for p in pairs),
        "actions": {a: actions.count(a) for a in ACTIONS},
        "rows_before_selection": len(rows),
        "rows": len(selected),
        "rewritten_rows": sum(r["rewritten"] for r in selected),
        "histogram_before": score_histogram(before),
        "histogram_after": score_histogram(after),
        "mean_before": _mean(before),
        "mean_after": _mean(after),
    }
    return selected, report
