"""Robust parsing of AITQE outputs: scores, explanations and the rewritten caption, from any model text.

The released code turns the default (stopped) output into JSON with ``outputs[:-1] + "}"``, which breaks whenever
the stop lands elsewhere, the model loops, or a caption holds a quote. :func:`parse_output` never
raises: it first tries the text as one JSON (or Python-literal) object, else finds every known key by name and
takes the text up to the next known key as its value, so truncated output, unescaped quotes, single-quoted
dicts, code fences and extra chatter still give whatever fields are there. What went wrong is listed in
``problems``; a result is usable when its overall score was found (:attr:`AITQEResult.ok`).

Design notes: docs/design/enhance.md#parsing-the-answer.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field

from clipforge.tasks.enhance.prompt import (
    ASPECTS,
    OVERALL_EXPLANATION,
    OVERALL_MARKER,
    OVERALL_SCORE,
    RECAPTION,
    SCORE_RANGE,
    official_fields,
)

__all__ = ["AITQEResult", "parse_output"]

_SCORE_KEYS = {OVERALL_SCORE: "overall", **{f"{n} Score": s for s, n in ASPECTS.items()}}
_EXPLANATION_KEYS = {OVERALL_EXPLANATION: "overall", **{f"{n} Explanation": s for s, n in ASPECTS.items()}}
_KNOWN = [RECAPTION, *_SCORE_KEYS, *_EXPLANATION_KEYS]
_MAX_LITERAL_CHARS = (
    100_000  # ast.literal_eval on megabytes of looping output is slow; JSON and the scan are not
)


def _norm(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


_CANONICAL = {_norm(k): k for k in _KNOWN}


def _key_alternative(key: str) -> str:
    # "Image-Text Matching Score" also matches "image text matching score", "Image_Text-Matching  Score"
    return r"[\s\-/_]*".join(re.escape(w) for w in re.split(r"[\s\-/]+", key))


# a known key, quoted (anywhere) or bare (at the start of a line or after "{" / ","), followed by a colon
_KEY_RE = re.compile(
    r"(?:[\"']\s*(?P<q>" + "|".join(_key_alternative(k) for k in _KNOWN) + r")\s*[\"']"
    r"|(?:^|(?<=[{,\n]))[ \t]*(?P<b>" + "|".join(_key_alternative(k) for k in _KNOWN) + r"))\s*:",
    re.IGNORECASE | re.MULTILINE,
)
# after a closing quote: nothing, or a separator and the start of the next key (cut off, or an unknown key)
_TAIL_RE = re.compile(r"\s*(?:[,}]\s*(?:[\"'][^\"']*(?:[\"']\s*(?::[\s\S]*)?)?)?)?\Z")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_FENCE_RE = re.compile(r"```(?:json|python)?", re.IGNORECASE)
_NO_TEXT = {"", "none", "null", "n/a", "na"}


@dataclass
class AITQEResult:
    """What one model output says about one image-caption pair.

    Attributes:
        overall: overall score (integer, 1-10), ``None`` when absent or unreadable.
        scores: aspect slug (:data:`~clipforge.tasks.enhance.prompt.ASPECTS`) -> score or ``None``.
        explanations: ``"overall"`` / aspect slug -> explanation, for the ones found.
        recaption: the rewritten caption, ``None`` when the model wrote none (it judged the pair good).
        problems: what was missing or malformed (``not_json``, ``missing:Overall Score``, ``bad_score:...``).
        raw: the text that was parsed.
    """

    overall: int | None = None
    scores: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(ASPECTS))
    explanations: dict[str, str] = field(default_factory=dict)
    recaption: str | None = None
    problems: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def ok(self) -> bool:
        """Whether the overall score was found (the one field every mode needs)."""
        return self.overall is not None

    def complete(self, output_all: bool = True) -> bool:
        """Every field of the mode is present (``output_all``: all scores and explanations; else the overall)."""
        if not output_all:
            return self.ok
        return (
            self.ok
            and all(v is not None for v in self.scores.values())
            and all(k in self.explanations for k in ("overall", *ASPECTS))
        )

    def to_row(self) -> dict:
        """JSON-able fields for output rows (``overall``, ``scores``, ``explanations``, ``recaption``, ``problems``)."""
        return {
            "overall": self.overall,
            "scores": dict(self.scores),
            "explanations": dict(self.explanations),
            "recaption": self.recaption,
            "problems": list(self.problems),
        }

    def to_official(self, output_all: bool = False) -> dict:
        """The seed's JSON shape: ``Recaption`` (if any), ``"Overall Score": "<n><Overall>"`` and, with
        ``output_all``, the explanations and aspect scores that were found. Without an overall score the shape
        cannot be kept: ``{"Overall Score": null, "Raw Output": raw}``."""
        if self.overall is None:
            return {OVERALL_SCORE: None, "Raw Output": self.raw}
        return official_fields(self.overall, self.scores, self.explanations, self.recaption, output_all)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _load_object(text: str) -> dict | None:
    """The outermost ``{...}`` of ``text`` as a dict (JSON, else a Python literal), or ``None``."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    body = text[start : end + 1]
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
        if len(body) <= _MAX_LITERAL_CHARS:
            try:
                obj = ast.literal_eval(body)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                obj = None
    return obj if isinstance(obj, dict) else None


def _unquote(value: str) -> str | None:
    """A scanned value span -> the string it holds (``None`` for a bare ``null``).

    The closing quote is the first quote followed only by a separator and, at most, the next key (cut off, or
    one this parser does not know); quotes before it belong to the value (models rarely escape them). Without
    such a quote the output was cut inside the value, and all of it is kept.
    """
    v = value.strip()
    if not v or v[0] not in "\"'":
        v = v.rstrip(",}\n\r\t ")
        return None if v.lower() in ("null", "none") else v
    q, body = v[0], v[1:]
    inner = body
    for i, ch in enumerate(body):
        if ch == q and _TAIL_RE.match(body, i + 1):
            inner = body[:i]
            break
    if q == "'":
        return inner.replace("\\'", "'").replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
    for candidate in (inner, re.sub(r'(?<!\\)"', r"\\\"", inner)):
        try:
            out = json.loads(f'"{candidate}"')
        except ValueError:
            continue
        if isinstance(out, str):
            return out
    return inner


def _scan(text: str) -> dict[str, object]:
    """Known keys found by name; each value is the text up to the next known key (first occurrence wins)."""
    matches = list(_KEY_RE.finditer(text))
    out: dict[str, object] = {}
    for m, nxt in zip(matches, [*matches[1:], None]):
        key = _CANONICAL[_norm(m.group("q") or m.group("b"))]
        if key not in out:
            out[key] = _unquote(text[m.end() : nxt.start() if nxt else len(text)])
    return out


def _score(value: object) -> tuple[int | None, str | None]:
    """A score cell -> ``(score, problem)``: numbers or strings like ``"7<Overall>"`` / ``"8/10"``."""
    if isinstance(value, bool) or value is None:
        return None, "missing"
    if isinstance(value, int | float):
        number = float(value)
    else:
        m = _NUMBER_RE.search(_as_text(value).replace(OVERALL_MARKER, ""))
        if m is None:
            return None, "bad_score"
        number = float(m.group())
    if not math.isfinite(number) or not SCORE_RANGE[0] <= number <= SCORE_RANGE[1]:
        return None, "out_of_range"
    return int(math.floor(number + 0.5)), None


def parse_output(text: object) -> AITQEResult:
    """Parse one AITQE output (any text; never raises).

    Args:
        text: the decoded generation (``str``; ``bytes`` and ``None`` are accepted too).

    Returns:
        The fields found, with ``problems`` naming what was missing or malformed.
    """
    raw = _as_text(text)
    result = AITQEResult(raw=raw)
    cleaned = _FENCE_RE.sub("", raw)
    tail = cleaned.rstrip()  # the default mode's answer, cut by the stop string (inside or after its token)
    if tail.endswith(OVERALL_MARKER) or tail.endswith(OVERALL_MARKER + '"'):
        cleaned = tail + ("}" if tail.endswith('"') else '"}')
    obj = _load_object(cleaned)
    if obj is None:
        result.problems.append("not_json")
        fields = _scan(cleaned)
    else:
        fields = {}
        for k, v in obj.items():
            key = _CANONICAL.get(_norm(str(k)))
            if key is not None and key not in fields:
                fields[key] = v
    for key, slug in _SCORE_KEYS.items():
        score, problem = _score(fields.get(key))
        if problem and (key in fields or slug == "overall"):
            result.problems.append(f"{problem}:{key}")
        if slug == "overall":
            result.overall = score
        else:
            result.scores[slug] = score
    for key, slug in _EXPLANATION_KEYS.items():
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            result.explanations[slug] = value.strip()
    recaption = fields.get(RECAPTION)
    if isinstance(recaption, str) and recaption.strip().lower() not in _NO_TEXT:
        result.recaption = recaption.strip()
    return result
