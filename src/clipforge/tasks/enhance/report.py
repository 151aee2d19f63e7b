"""The scoring job's report: ROC AUC of the overall score on labelled pairs, and a Markdown summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["auc_report", "report_markdown", "roc_auc"]


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half; Mann-Whitney U).

    Returns ``None`` unless both classes are present.
    """
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    first: dict[float, int] = {}
    last: dict[float, int] = {}
    for i, s in enumerate(sorted(scores), 1):  # 1-based ranks; tied values share the mean of theirs
        first.setdefault(s, i)
        last[s] = i
    rank_sum = sum((first[s] + last[s]) / 2 for s in pos)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def auc_report(pairs: Sequence[Mapping]) -> dict:
    """ROC AUC of the scores of the scored pairs carrying a ``label`` (1 = the caption belongs to the image): of
    the integer ``overall`` (``roc_auc``) and of the expected score (``roc_auc_expected``; the integer where there
    is none), over all of them and true captions against each negative ``kind`` (``roc_auc/<kind>``,
    ``roc_auc_expected/<kind>``). Labelled pairs without a score are counted in ``labelled_unscored``."""
    labelled = [p for p in pairs if "label" in p and p.get("overall") is not None]
    out: dict = {
        "labelled_pairs": len(labelled),
        "labelled_unscored": sum("label" in p and p.get("overall") is None for p in pairs),
    }
    if not labelled:
        return out

    def hard(p: Mapping) -> float:
        return p["overall"]

    def soft(p: Mapping) -> float:
        return p["overall_expected"] if p.get("overall_expected") is not None else p["overall"]

    groups = {"": labelled}
    positives = [p for p in labelled if p["label"]]
    for kind in sorted({p["kind"] for p in labelled if not p["label"] and p.get("kind")}):
        groups[f"/{kind}"] = positives + [p for p in labelled if not p["label"] and p.get("kind") == kind]
    for suffix, chosen in groups.items():
        labels = [int(bool(p["label"])) for p in chosen]
        out[f"roc_auc{suffix}"] = roc_auc([hard(p) for p in chosen], labels)
        out[f"roc_auc_expected{suffix}"] = roc_auc([soft(p) for p in chosen], labels)
    return out


def _histogram(title: str, histogram: Mapping[str, int]) -> list[str]:
    width = max(histogram.values() or [0]) or 1
    bars = [f"    {k:>4} | {'#' * round(40 * n / width):<40} {n}" for k, n in histogram.items()]
    return [title, "", *bars, ""]


def _auc_text(value: float | None) -> str:
    return "n/a (one class)" if value is None else f"{value:.4f}"


def report_markdown(report: Mapping) -> str:
    """The report as Markdown: counts per action, score histograms before and after, ROC AUC when labelled."""
    lines = [
        "# Enhancement report",
        "",
        f"pairs: {report['pairs']} (unscored: {report['unscored']}), low quality: {report['low_quality']}, "
        f"output rows: {report['rows']}",
        "",
        "| action | pairs |",
        "|---|---|",
        *[f"| {a} | {n} |" for a, n in report["actions"].items()],
        "",
        *_histogram("overall score before", report["histogram_before"]),
        *_histogram("overall score after (rewritten rows: the rewrite's score)", report["histogram_after"]),
    ]
    if "roc_auc" in report:
        lines.append(
            f"ROC AUC of the overall score ({report['labelled_pairs']} labelled pairs): "
            f"{_auc_text(report['roc_auc'])}"
        )
        lines += [
            f"- true captions vs {k.split('/', 1)[1]}: {_auc_text(v)}"
            for k, v in report.items()
            if k.startswith("roc_auc/")
        ]
    return "\n".join(lines) + "\n"
