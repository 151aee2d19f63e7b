"""The report of a pipeline run: ``report.html`` (one self-contained file), ``report.md`` and ``figures/``.

:func:`write_report` reads the run folder (``pipeline.json``, ``state.json`` and whichever of ``lineage.jsonl`` /
``lineage.parquet``, ``comparison.json``, ``retrieval_examples.json`` the steps that ran have written) and fills
the sections it has data for:

* the steps: status, rows, errors, wall time, rows/s, and a line naming the steps that did not run;
* the comparison of the arms on the same held-out split: mean ± std over runs of every metric, each row next to
  its chance level and the number of held-out images and captions; collapsed runs are flagged; a bar chart of
  R@1 per arm with the chance line; caption retrieval accuracy (CRA) per text encoder with its chance;
* the notes of the comparison; retrieval examples (a query caption, its top 5 images, the hit framed green);
* the enhancer's scores before and after enhancement (histogram, counts per action, mean per caption source);
* a gallery of images chosen by a stable hash of their key, each with its raw captions, recap captions
  (extended -> sheared), scores and actions, and the enhanced caption set.

Every string from the run is untrusted (captions come from the web and from models): the HTML escapes all of
them and holds no script, stylesheet link or external URL; images are embedded as base64 thumbnails of at most
160 px. ``report.md`` has the same tables and links ``figures/*.png`` and ``figures/thumbs/``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.pipeline.steps import STEPS as KNOWN_STEPS
from clipforge.tasks.enhance.prompt import ASPECTS, SCORE_RANGE
from clipforge.utils.runs import PipelineRun, load_pipeline

__all__ = ["KNOWN_STEPS", "gallery_keys", "write_report"]


THUMB_PX = 160
ASPECT_ABBREV = {
    "text_quality": "TQ",
    "image_text_matching": "ITM",
    "object_detail": "OD",
    "semantic_understanding": "SU",
    "text_chart_description": "TCD",
}
DEFAULT_METRICS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum"]
DASH = "–"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1220px;color:#1f2328;background:#fff;line-height:1.4;font-size:14px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #d0d7de;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta,.muted{color:#57606a}.small{font-size:12px}
table{border-collapse:collapse;margin:6px 0 10px}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}td.chance{background:#f3f0ff;color:#4b3b8f}
td.best{font-weight:700;background:#e9f7ef}tr.count td{color:#57606a}td:first-child{white-space:nowrap}
th .sub{font-weight:400;font-size:11px;color:#57606a;white-space:normal;min-width:120px}th{vertical-align:bottom}
.warn{background:#fff4e5;border:1px solid #f0a020;border-left:6px solid #f0a020;padding:6px 10px;
border-radius:4px;margin:6px 0}.error{background:#ffebe9;border-color:#cf222e}
.status-done{color:#1a7f37;font-weight:600}.status-failed{color:#cf222e;font-weight:700}
.status-running{color:#9a6700;font-weight:600}.status-skipped{color:#57606a}
figure{margin:8px 0}figure img{max-width:100%;border:1px solid #d0d7de}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.gallery-item{display:flex;gap:12px;border:1px solid #d0d7de;border-radius:6px;padding:10px;background:#fbfcfd}
.thumbcol{flex:0 0 160px;text-align:center;font-size:12px}.thumb{max-width:160px;max-height:160px;
border:1px solid #d0d7de}.missing{width:150px;height:100px;display:flex;align-items:center;
justify-content:center;background:#eaeef2;color:#57606a;border:1px dashed #8c959f;font-size:12px}
.details{flex:1;min-width:0;font-size:13px}.details ul{margin:2px 0 6px;padding-left:18px}
.tag{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;color:#fff;
background:#57606a;border-radius:3px;padding:0 5px;margin-right:4px}.tag.raw{background:#6e7781}
.tag.recap{background:#0969da}.tag.enhanced{background:#1a7f37}.src{color:#57606a;font-size:12px}
.score{display:inline-block;min-width:18px;text-align:center;font-weight:700;border-radius:3px;
padding:0 4px;background:#ddf4ff;color:#0550ae}.aspects{color:#57606a;font-size:12px}
.action{font-size:11px;font-weight:700;border-radius:3px;padding:0 4px}.action-keep{background:#dafbe1}
.action-rewrite{background:#fff8c5}.action-keep_both{background:#ddf4ff}.action-drop{background:#ffebe9;
color:#cf222e}.arrow{color:#8c959f}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:8px}
.example{border:1px solid #d0d7de;border-radius:6px;padding:8px}.top5{display:flex;gap:6px;margin-top:4px;
flex-wrap:wrap}.top5 figure{margin:0;text-align:center;font-size:11px}.top5 img,.top5 .missing{width:84px;
height:auto;border:4px solid #eaeef2}.top5 .missing{height:60px}.top5 .hit img,.top5 .hit .missing{
border-color:#1a7f37}.hit figcaption{color:#1a7f37;font-weight:700}
"""


def _esc(value: object) -> str:
    """HTML text of any value from the run (``None`` -> a dash)."""
    return DASH if value is None else html.escape(str(value), quote=True)


def _md(value: object) -> str:
    """Markdown text of any value from the run: HTML-escaped, Markdown syntax and line breaks neutralised."""
    # quotes stay as they are: Markdown shows them as text, and an entity such as &#x27; would lose its # below
    text = DASH if value is None else html.escape(str(value), quote=False)
    text = text.replace("\r", " ").replace("\n", " ")
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", text)


def _num(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return DASH
    return f"{float(value):.{digits}f}"


def _int(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return DASH
    return str(int(value))


def _mean_std(mean: object, std: object) -> str:
    if mean is None:
        return DASH
    return f"{float(mean):.2f}" if std is None else f"{float(mean):.2f} ± {float(std):.2f}"


@dataclass
class _Cell:
    """A table cell: its text (escaped when rendered) and CSS classes."""

    text: str
    cls: str = ""
    bold: bool = False


@dataclass
class _Table:
    """A table rendered both as HTML and as Markdown (every text escaped for its format)."""

    headers: list[str]
    rows: list[list[_Cell]] = field(default_factory=list)
    subs: list[str] = field(default_factory=list)  # a smaller second line under each header
    row_cls: list[str] = field(default_factory=list)
    num_cols: tuple[int, ...] = ()

    def html(self, table_id: str | None = None) -> str:
        ident = f' id="{table_id}"' if table_id else ""

        def cls(i: int, extra: str = "") -> str:
            names = " ".join(n for n in ("num" if i in self.num_cols else "", extra) if n)
            return f' class="{names}"' if names else ""

        subs = self.subs + [""] * (len(self.headers) - len(self.subs))
        head = "".join(
            f"<th{cls(i)}>{_esc(h)}" + (f'<div class="sub">{_esc(sub)}</div>' if sub else "") + "</th>"
            for i, (h, sub) in enumerate(zip(self.headers, subs))
        )
        body = []
        for r, row in enumerate(self.rows):
            rc = self.row_cls[r] if r < len(self.row_cls) else ""
            cells = "".join(f"<td{cls(i, c.cls)}>{_esc(c.text)}</td>" for i, c in enumerate(row))
            body.append((f'<tr class="{rc}">' if rc else "<tr>") + cells + "</tr>")
        return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def md(self) -> str:
        subs = self.subs + [""] * (len(self.headers) - len(self.subs))
        heads = [_md(h) + (f" ({_md(sub)})" if sub else "") for h, sub in zip(self.headers, subs)]
        lines = ["| " + " | ".join(heads) + " |"]
        lines.append(
            "|" + "|".join("---:" if i in self.num_cols else "---" for i in range(len(self.headers))) + "|"
        )
        for row in self.rows:
            lines.append(
                "| " + " | ".join(f"**{_md(c.text)}**" if c.bold else _md(c.text) for c in row) + " |"
            )
        return "\n".join(lines)


def gallery_keys(keys: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """The gallery's images: the ``n`` keys with the smallest ``sha256(f"{seed}:{key}")``, in key order.

    The choice depends only on the keys and the seed (not on row order), so reruns show the same images.
    """
    chosen = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())[: max(n, 0)]
    return sorted(chosen)


class _Thumbs:
    """Thumbnails (at most ``THUMB_PX``) of the run's images, made once per key: a data URI and a file."""

    def __init__(self, images: Mapping[str, str | None], run_dir: Path, out_dir: Path) -> None:
        self.images, self.run_dir, self.out_dir = images, run_dir, out_dir
        self.cache: dict[str, tuple[str, str] | None] = {}
        self.problems: list[str] = []

    def get(self, key: str) -> tuple[str, str] | None:
        """``(data URI, path relative to the run folder)`` of ``key``'s thumbnail, ``None`` without an image."""
        if key not in self.cache:
            self.cache[key] = self._make(key)
        return self.cache[key]

    def _make(self, key: str) -> tuple[str, str] | None:
        from PIL import Image

        path = self.images.get(key)
        if not path:
            return None
        path = Path(path) if os.path.isabs(path) else self.run_dir / path
        try:
            with Image.open(path) as img:
                img.draft("RGB", (2 * THUMB_PX, 2 * THUMB_PX))  # JPEG: decode at a reduced size
                img.thumbnail((THUMB_PX, THUMB_PX))
                if img.mode in ("RGBA", "LA", "P"):
                    img = img.convert("RGBA")
                    flat = Image.new("RGB", img.size, (255, 255, 255))
                    flat.paste(img, mask=img.getchannel("A"))
                    img = flat
                else:
                    img = img.convert("RGB")
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=85)
        except Exception as e:  # noqa: BLE001 (any unreadable image is a listed problem, never a failed report)
            self.problems.append(f"{key}: image {path} could not be read ({type(e).__name__})")
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:40]
        name = f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.jpg"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / name).write_bytes(buf.getvalue())
        uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        return uri, f"figures/thumbs/{name}"

    def html(self, key: str, cls: str = "thumb") -> str:
        got = self.get(key)
        if got is None:
            return f'<div class="missing">no image<br>{_esc(key)}</div>'
        return f'<img class="{cls}" src="{got[0]}" alt="{_esc(key)}">'

    def md(self, key: str) -> str:
        got = self.get(key)
        return f"![{_md(key)}]({got[1]})" if got else f"(no image: {_md(key)})"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _png_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


class _Doc:
    """The report being built: HTML and Markdown side by side."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.in_section = False

    def section(self, ident: str, title: str) -> None:
        self.close()
        self.in_section = True
        self.html.append(f'<section id="{ident}"><h2>{_esc(title)}</h2>')
        self.md.append(f"\n## {title}\n")

    def close(self) -> None:
        if self.in_section:
            self.html.append("</section>")
        self.in_section = False

    def para(self, text: str, cls: str = "") -> None:
        self.html.append(f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>")
        self.md.append(("> **Warning:** " if "warn" in cls else "") + _md(text) + "\n")

    def table(self, table: _Table, ident: str | None = None) -> None:
        self.html.append(table.html(ident))
        self.md.append(table.md() + "\n")

    def figure(self, path: str, rel: str, alt: str) -> None:
        self.html.append(f'<figure><img src="{_png_uri(path)}" alt="{_esc(alt)}"></figure>')
        self.md.append(f"![{_md(alt)}]({rel})\n")


# ---------------------------------------------------------------------------------------------------- steps


def _steps(doc: _Doc, run: PipelineRun, problems: Sequence[str]) -> None:
    doc.section("steps", "Steps")
    table = _Table(["step", "status", "rows", "errors", "wall time (s)", "rows/s"], num_cols=(2, 3, 4, 5))
    states = {step: run.state[step] for step in run.steps["step"]}  # pipeline order, values as written
    for step, s in states.items():
        status = str(s.get("status") or "unknown")
        table.rows.append(
            [
                _Cell(step),
                _Cell(status, f"status-{status}" if re.fullmatch(r"[a-z]+", status) else ""),
                _Cell(_int(s.get("rows"))),
                _Cell(_int(s.get("errors"))),
                _Cell(_num(s.get("wall_s"), 1)),
                _Cell(_num(s.get("rows_per_s"), 2)),
            ]
        )
    doc.table(table, "steps-table")
    # a step runs as one job (`eval`) or several (`train/raw/fold0_s0`, ...): judge it by all of its jobs
    planned = list(run.pipeline.get("steps", []))
    missing = []
    for step in list(KNOWN_STEPS) + [s for s in planned if s.split("/")[0] not in KNOWN_STEPS]:
        jobs = [n for n in planned if n == step or n.startswith(step + "/")]
        reached = [states[n] for n in jobs if n in states]
        bad = sorted({r.get("status") for r in reached} & {"failed", "skipped"})
        if not jobs:
            missing.append(f"{step} (not in this pipeline)")
        elif len(reached) < len(jobs):
            missing.append(f"{step} (not reached)")
        elif bad:
            missing.append(f"{step} ({bad[0]})")
    if missing:
        doc.para("Steps that did not run: " + ", ".join(missing) + ".", "warn")
    else:
        doc.para("Every step ran.")
    for step, s in states.items():
        if s.get("error"):
            doc.para(f"{step} {s.get('status') or 'error'}: {s['error']}", "warn error")
    for p in problems:
        doc.para(p, "warn")


# ------------------------------------------------------------------------------------------------ comparison


def _recall_figure(comparison: Mapping, arms: Sequence[str], metrics: Sequence[str], out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m.endswith("_R@1")]
    if not metrics or not arms:
        return None
    chance = comparison.get("chance", {}).get("mean", {})
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    width = 0.8 / len(metrics)
    colours = ["#0969da", "#bc4c00", "#1a7f37", "#8250df"]
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(arms))]
        means = [comparison["arms"][a].get("mean", {}).get(m) or 0.0 for a in arms]
        stds = [comparison["arms"][a].get("std", {}).get(m) or 0.0 for a in arms]
        hatches = ["//" if comparison["arms"][a].get("collapsed_runs") else "" for a in arms]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=m, color=colours[j % 4], alpha=0.85)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    levels: dict[float, list[str]] = {}  # equal chance levels share one line and one label
    for m in metrics:
        if chance.get(m) is not None:
            levels.setdefault(round(float(chance[m]), 1), []).append(m)
    for level, names in levels.items():
        ax.hlines(level, -0.5, len(arms) - 0.5, colors="#57606a", linestyles="--", linewidth=1.2)
        ax.text(len(arms) - 0.45, level, f"chance {' = '.join(names)}: {level:.1f}", va="center", fontsize=8)
    labels = [a + (" (collapsed run)" if comparison["arms"][a].get("collapsed_runs") else "") for a in arms]
    ax.set_xticks(range(len(arms)), labels, fontsize=9)
    ax.set_ylabel("recall (%), mean ± std over runs")
    n = comparison.get("chance", {}).get("n_images_mean")
    ax.set_title(f"R@1 per arm, {comparison.get('folds', '?')} folds, ~{_num(n, 1)} held-out images per fold")
    ax.set_xlim(-0.5, len(arms) + 0.9)
    ax.legend(fontsize=8, loc="upper left")
    return _save_figure(fig, out / "recall_at_1.png")


def _save_figure(fig, path: Path) -> str:
    """Lay out, write and close a matplotlib figure; returns the file's path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _comparison(doc: _Doc, run: PipelineRun, figures: Path, written: dict[str, str]) -> None:
    doc.section("comparison-section", "Comparison of the arms")
    comparison = run.comparison
    if not comparison.get("arms"):
        doc.para("No comparison: comparison.json is absent (the train and eval steps did not run).", "warn")
        return
    arms = list(comparison["arms"])
    metrics = list(comparison.get("metric_keys") or DEFAULT_METRICS)
    chance = comparison.get("chance", {})
    seeds = comparison.get("seeds") or []
    runs_per_arm = {a: v.get("runs", []) for a, v in comparison["arms"].items()}
    doc.para(
        f"{comparison.get('folds', '?')} folds x {len(seeds)} seed(s); every arm is evaluated on the same held-out "
        f"split: ~{_num(chance.get('n_images_mean'), 1)} held-out images "
        f"(~{_num(chance.get('n_captions_mean'), 1)} captions) per fold. Values are percentages, mean ± std over "
        "runs; 'chance' is the expected value of a random ranking of the same held-out set."
    )
    for a in arms:
        collapsed = comparison["arms"][a].get("collapsed_runs") or 0
        if collapsed:
            which = ", ".join(
                f"fold {r.get('fold')} seed {r.get('seed')}" for r in runs_per_arm[a] if r.get("collapsed")
            )
            doc.para(
                f"⚠ {a}: {collapsed} of {len(runs_per_arm[a])} runs collapsed ({which}): the embeddings collapsed "
                "and those numbers sit at chance; they are included in the mean ± std.",
                "warn collapsed",
            )
    sizes = {a: sorted({(r.get("n_images"), r.get("n_captions")) for r in runs_per_arm[a]}) for a in arms}
    if len({tuple(v) for v in sizes.values()}) > 1:
        per_arm = "; ".join(
            f"{a}: " + ", ".join(f"{i} images / {c} captions" for i, c in v) for a, v in sizes.items()
        )
        doc.para(
            f"⚠ The arms were not evaluated on held-out sets of the same size ({per_arm}).", "warn mismatch"
        )

    headers = ["metric", "chance"] + list(arms)
    subs = ["", "random ranking"] + [
        f"{comparison['arms'][a].get('label') or a}; {comparison['arms'][a].get('text_encoder') or '?'}"
        for a in arms
    ]
    table = _Table(headers, subs=subs, num_cols=tuple(range(1, len(headers))))
    for m in metrics:
        means = {a: comparison["arms"][a].get("mean", {}).get(m) for a in arms}
        known = [v for v in means.values() if v is not None]
        best = max(known) if known else None
        row = [_Cell(m), _Cell(_num(chance.get("mean", {}).get(m)), "chance")]
        for a in arms:
            is_best = best is not None and means[a] == best and len(arms) > 1
            text = _mean_std(means[a], comparison["arms"][a].get("std", {}).get(m))
            row.append(_Cell(text, "best" if is_best else "", bold=is_best))
        table.rows.append(row)
        table.row_cls.append("")

    def mean_of(a: str, k: str) -> str:
        vals = [r.get(k) for r in runs_per_arm[a] if r.get(k) is not None]
        return _num(sum(vals) / len(vals), 1) if vals else DASH

    for label, key, chance_key in (
        ("held-out images / run", "n_images", "n_images_mean"),
        ("held-out captions / run", "n_captions", "n_captions_mean"),
    ):
        table.rows.append(
            [_Cell(label), _Cell(_num(chance.get(chance_key), 1), "chance")]
            + [_Cell(mean_of(a, key)) for a in arms]
        )
        table.row_cls.append("count")
    table.rows.append([_Cell("runs"), _Cell("")] + [_Cell(str(len(runs_per_arm[a]))) for a in arms])
    table.row_cls.append("count")
    table.rows.append(
        [_Cell("collapsed runs"), _Cell("")]
        + [
            _Cell(
                str(comparison["arms"][a].get("collapsed_runs") or 0),
                "warn" if comparison["arms"][a].get("collapsed_runs") else "",
            )
            for a in arms
        ]
    )
    table.row_cls.append("count")
    doc.table(table, "comparison")
    best = run.best_arm("rsum" if "rsum" in metrics else metrics[-1])
    if best:
        doc.para(f"Best arm by mean {'rsum' if 'rsum' in metrics else metrics[-1]}: {best}.")
    fig = _recall_figure(comparison, arms, metrics, figures)
    if fig:
        written["figures/recall_at_1.png"] = fig
        doc.figure(fig, "figures/recall_at_1.png", "R@1 per arm with the chance level")

    cra = comparison.get("cra") or {}
    if cra:
        doc.html.append("<h3>Caption retrieval accuracy (CRA) per text encoder</h3>")
        doc.md.append("\n### Caption retrieval accuracy (CRA) per text encoder\n")
        users = {}
        for a in arms:
            users.setdefault(comparison["arms"][a].get("text_encoder"), []).append(a)
        t = _Table(
            ["text encoder", "arms", "CRA pairs", "chance (pairs)", "CRA full gallery", "groups"],
            num_cols=(2, 3, 4, 5),
        )
        for enc, v in cra.items():
            t.rows.append(
                [
                    _Cell(enc),
                    _Cell(", ".join(users.get(enc, [])) or DASH),
                    _Cell(_num(v.get("cra_pairs"))),
                    _Cell(_num(v.get("chance_pairs")), "chance"),
                    _Cell(_num(v.get("cra_full"))),
                    _Cell(_int(v.get("n_groups"))),
                ]
            )
        doc.table(t, "cra-table")
        doc.para(
            "CRA pairs: caption #1 of each image retrieves caption #2 among the #2 captions of every image "
            "(chance = 100 / groups); the full-gallery variant retrieves among all other captions.",
            "muted small",
        )


def _notes(doc: _Doc, run: PipelineRun) -> None:
    notes = run.comparison.get("notes") or []
    if not notes:
        return
    doc.section("notes", "Notes")
    doc.html.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    doc.md.extend(f"- {_md(n)}" for n in notes)
    doc.md.append("")


# ------------------------------------------------------------------------------------------ retrieval examples


def _retrieval(doc: _Doc, run: PipelineRun, thumbs: _Thumbs, max_examples: int) -> None:
    examples = run.retrieval_examples
    if not examples:
        return
    doc.section("retrieval", "Retrieval examples")
    doc.para(
        "Each query caption retrieves among the held-out images; its own image is framed green when it is "
        "in the top 5.",
        "muted",
    )
    for arm, items in examples.items():
        items = list(items or [])
        hits = sum(e.get("hit_rank") is not None for e in items)
        title = f"{arm}: {hits} of {len(items)} queries find their image in the top 5"
        if len(items) > max_examples:
            title += f" (first {max_examples} shown)"
        doc.html.append(f'<h3>{_esc(title)}</h3><div class="examples">')
        doc.md.append(f"\n### {_md(title)}\n")
        for e in items[:max_examples]:
            hit = e.get("hit_rank")
            verdict = f"hit at rank {hit + 1}" if isinstance(hit, int) else "miss: not in the top 5"
            figs = []
            md_cells = []
            for rank, key in enumerate(e.get("top5") or []):
                cls = ' class="hit"' if rank == hit else ""
                figs.append(
                    f"<figure{cls}>{thumbs.html(key, 'rthumb')}<figcaption>{rank + 1}. {_esc(key)}</figcaption></figure>"
                )
                md_cells.append(("**HIT** " if rank == hit else "") + thumbs.md(key))
            doc.html.append(
                f'<div class="example"><div><b>“{_esc(e.get("query"))}”</b> '
                f'<span class="muted">({_esc(e.get("query_key"))}; {_esc(verdict)})</span></div>'
                f'<div class="top5">{"".join(figs)}</div></div>'
            )
            doc.md.append(
                f"- “{_md(e.get('query'))}” ({_md(e.get('query_key'))}; {verdict}): " + " ".join(md_cells)
            )
        doc.html.append("</div>")
        doc.md.append("")


# ---------------------------------------------------------------------------------------------------- scores


def _scores_figure(before: Sequence[int], after: Sequence[int], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = SCORE_RANGE
    values = list(range(lo, hi + 1))
    cb, ca = Counter(before), Counter(after)
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
    w = 0.4
    mb = f"{sum(before) / len(before):.2f}" if before else DASH
    ma = f"{sum(after) / len(after):.2f}" if after else DASH
    ax.bar(
        [v - w / 2 for v in values],
        [cb[v] for v in values],
        w,
        label=f"scored captions: overall (n={len(before)}, mean {mb})",
        color="#8c959f",
    )
    ax.bar(
        [v + w / 2 for v in values],
        [ca[v] for v in values],
        w,
        label=f"kept after enhancement: final overall (n={len(after)}, mean {ma})",
        color="#1a7f37",
    )
    ax.set_xticks(values)
    ax.set_xlabel("enhancer score")
    ax.set_ylabel("captions")
    ax.set_title("Caption scores before and after enhancement")
    ax.legend(fontsize=8, loc="upper left")
    return _save_figure(fig, out / "score_hist.png")


def _score_badges(entry: Mapping) -> str:
    """Inline HTML of one scored caption: overall, aspects present, action, rewrite and final score."""
    parts = [f'<span class="score" title="overall">{_esc(entry.get("overall"))}</span>']
    scores = entry.get("scores") or {}
    aspects = [f"{ASPECT_ABBREV.get(a, a)} {scores[a]}" for a in ASPECTS if scores.get(a) is not None]
    if aspects:
        parts.append(f'<span class="aspects">{_esc(" · ".join(aspects))}</span>')
    action = str(entry.get("action") or "?")
    cls = f"action-{action}" if action in ("keep", "rewrite", "keep_both", "drop") else ""
    parts.append(f'<span class="action {cls}">{_esc(action)}</span>')
    if entry.get("recaption"):
        parts.append(f'<span class="arrow">→</span> <i>{_esc(entry["recaption"])}</i>')
    if entry.get("action") != "drop" and entry.get("final_overall") is not None:
        parts.append(
            f'<span class="muted">final</span> <span class="score">{_esc(entry["final_overall"])}</span>'
        )
    return " ".join(parts)


def _score_md(entry: Mapping) -> str:
    scores = entry.get("scores") or {}
    aspects = [f"{ASPECT_ABBREV.get(a, a)} {scores[a]}" for a in ASPECTS if scores.get(a) is not None]
    text = f"overall {_md(entry.get('overall'))}"
    if aspects:
        text += " (" + ", ".join(aspects) + ")"
    text += f", {_md(entry.get('action'))}"
    if entry.get("recaption"):
        text += f" → “{_md(entry['recaption'])}”"
    if entry.get("action") != "drop" and entry.get("final_overall") is not None:
        text += f", final {_md(entry['final_overall'])}"
    return text


def _scores(doc: _Doc, run: PipelineRun, figures: Path, written: dict[str, str]) -> None:
    doc.section("scores", "Caption scores (enhance)")
    scored = [s for r in run.records for s in (r.get("scored") or [])]
    if not scored:
        doc.para("No scores: the enhance step did not run.", "warn")
        return
    before = [s["overall"] for s in scored if s.get("overall") is not None]
    after = [
        s["final_overall"] for s in scored if s.get("action") != "drop" and s.get("final_overall") is not None
    ]
    fig = _scores_figure(before, after, figures)
    written["figures/score_hist.png"] = fig
    doc.figure(fig, "figures/score_hist.png", "score histograms before and after enhancement")
    actions = Counter(s.get("action") for s in scored)
    finals = sum(len(r.get("final_captions") or []) for r in run.records)
    t = _Table(
        ["scored captions", "unscored", "keep", "rewrite", "keep_both", "drop", "final captions"],
        num_cols=tuple(range(7)),
    )
    t.rows.append(
        [_Cell(str(len(scored))), _Cell(str(len(scored) - len(before)))]
        + [_Cell(str(actions.get(a, 0))) for a in ("keep", "rewrite", "keep_both", "drop")]
        + [_Cell(str(finals))]
    )
    doc.table(t, "actions-table")
    by_source: dict[str, list[Mapping]] = {}
    for s in scored:
        by_source.setdefault(str(s.get("source")), []).append(s)
    t = _Table(["source", "captions", "mean overall", "kept", "mean final overall"], num_cols=(1, 2, 3, 4))
    for source, items in by_source.items():
        ov = [s["overall"] for s in items if s.get("overall") is not None]
        kept = [s for s in items if s.get("action") != "drop"]
        final = [s["final_overall"] for s in kept if s.get("final_overall") is not None]
        t.rows.append(
            [
                _Cell(source),
                _Cell(str(len(items))),
                _Cell(_num(sum(ov) / len(ov)) if ov else DASH),
                _Cell(str(len(kept))),
                _Cell(_num(sum(final) / len(final)) if final else DASH),
            ]
        )
    doc.table(t, "sources-table")


# --------------------------------------------------------------------------------------------------- gallery


def _gallery_item(r: Mapping, thumbs: _Thumbs) -> tuple[str, str]:
    """(HTML, Markdown) of one image's lineage."""
    key = str(r.get("key"))
    scored = {(str(s.get("source")), s.get("caption")): s for s in (r.get("scored") or [])}
    used: set = set()

    def badge(source: str, *captions: str | None) -> tuple[str, str]:
        for c in captions:
            s = scored.get((source, c))
            if s is not None:
                used.add((source, c))
                return " " + _score_badges(s), "; " + _score_md(s)
        return "", ""

    h = [f'<div class="gallery-item" id="item-{_esc(hashlib.sha1(key.encode()).hexdigest()[:10])}">']
    h.append(f'<div class="thumbcol">{thumbs.html(key)}<div><b>{_esc(key)}</b></div>')
    h.append(f'<div class="muted">held out by fold {_esc(r.get("fold"))}</div></div><div class="details">')
    m = [f"\n### {_md(key)} (held out by fold {_md(r.get('fold'))})\n", thumbs.md(key) + "\n"]
    raws = r.get("raw_captions") or []
    h.append('<div><span class="tag raw">raw</span></div><ul>')
    m.append("- **raw**")
    for c in raws:
        bh, bm = badge("raw", c)
        h.append(f"<li>{_esc(c)}{bh}</li>")
        m.append(f"  - {_md(c)}{bm}")
    h.append("</ul>")
    recap = r.get("recap") or []
    if recap:
        h.append(
            '<div><span class="tag recap">recap</span><span class="src">extended → sheared</span></div><ul>'
        )
        m.append("- **recap** (extended → sheared)")
        for c in recap:
            bh, bm = badge(str(c.get("captioner")), c.get("sheared"), c.get("raw"))
            h.append(
                f'<li><span class="src">{_esc(c.get("captioner"))}:</span> {_esc(c.get("raw"))} '
                f'<span class="src">({_esc(c.get("raw_len"))})</span> <span class="arrow">→</span> '
                f'<b>{_esc(c.get("sheared"))}</b> <span class="src">({_esc(c.get("sheared_len"))})</span>{bh}</li>'
            )
            m.append(
                f"  - {_md(c.get('captioner'))}: {_md(c.get('raw'))} ({_md(c.get('raw_len'))}) → "
                f"**{_md(c.get('sheared'))}** ({_md(c.get('sheared_len'))}){bm}"
            )
        h.append("</ul>")
    rest = [s for k, s in scored.items() if k not in used]
    if rest:
        h.append('<div><span class="tag">scored</span></div><ul>')
        m.append("- **scored**")
        for s in rest:
            h.append(
                f'<li><span class="src">{_esc(s.get("source"))}:</span> {_esc(s.get("caption"))} {_score_badges(s)}</li>'
            )
            m.append(f"  - {_md(s.get('source'))}: {_md(s.get('caption'))}; {_score_md(s)}")
        h.append("</ul>")
    final = r.get("final_captions") or []
    if r.get("scored") or final:
        enhancer = f" ({r.get('enhancer')})" if r.get("enhancer") else ""
        h.append(
            f'<div><span class="tag enhanced">enhanced</span><span class="src">{_esc(enhancer)}</span></div><ul>'
        )
        m.append(f"- **enhanced**{_md(enhancer)}")
        for c in final:
            h.append(f'<li>{_esc(c.get("caption"))} <span class="src">[{_esc(c.get("source"))}]</span></li>')
            m.append(f"  - {_md(c.get('caption'))} [{_md(c.get('source'))}]")
        if not final:
            h.append('<li class="muted">every caption was dropped</li>')
            m.append("  - (every caption was dropped)")
        h.append("</ul>")
    h.append("</div></div>")
    return "".join(h), "\n".join(m)


def _gallery(doc: _Doc, run: PipelineRun, thumbs: _Thumbs, size: int, seed: int) -> None:
    doc.section("gallery", "Gallery")
    by_key = {}
    for r in run.records:
        by_key.setdefault(str(r.get("key")), r)
    if not by_key:
        doc.para("No lineage: lineage.jsonl / lineage.parquet is absent.", "warn")
        return
    keys = gallery_keys(by_key, size, seed)
    doc.para(
        f"{len(keys)} of {len(by_key)} images, chosen by a stable hash of the key (seed {seed}). "
        "Numbers in parentheses after recap captions are their lengths; scores are the enhancer's (overall, then aspects: "
        + ", ".join(f"{v} = {k.replace('_', ' ')}" for k, v in ASPECT_ABBREV.items())
        + ").",
        "muted",
    )
    items = [_gallery_item(by_key[k], thumbs) for k in keys]
    doc.html.append('<div class="gallery">' + "".join(h for h, _ in items) + "</div>")
    doc.md.extend(md for _, md in items)
    doc.md.append("")


# ---------------------------------------------------------------------------------------------------- report


def write_report(
    run_dir: str | os.PathLike, gallery_size: int = 12, seed: int = 0, max_examples: int = 6
) -> dict[str, str]:
    """Write ``report.html``, ``report.md`` and ``figures/`` into a pipeline run folder.

    Args:
        run_dir: the run folder (``pipeline.json`` and ``state.json`` are needed; the other files fill their
            sections when present).
        gallery_size: images in the gallery (all of them when the run has fewer).
        seed: seed of the gallery's choice (see :func:`gallery_keys`).
        max_examples: retrieval examples shown per arm.

    Returns:
        Output name -> absolute path: ``report.html``, ``report.md``, the figures written
        (``figures/recall_at_1.png``, ``figures/score_hist.png``) and ``figures/thumbs``.

    Raises:
        FileNotFoundError: ``pipeline.json`` or ``state.json`` is missing.
    """
    run_dir = Path(run_dir).resolve()
    run = load_pipeline(str(run_dir))
    figures = run_dir / "figures"
    thumbs_dir = figures / "thumbs"
    if thumbs_dir.exists():
        shutil.rmtree(thumbs_dir)  # thumbnails of a previous report may name images no longer shown
    figures.mkdir(parents=True, exist_ok=True)
    thumbs = _Thumbs({str(r.get("key")): r.get("image") for r in run.records}, run_dir, thumbs_dir)
    written: dict[str, str] = {}

    p = run.pipeline
    name = str(p.get("name") or run_dir.name)
    doc = _Doc()
    doc.html.append(f"<h1>Pipeline report: {_esc(name)}</h1>")
    meta = (
        f"source {p.get('source')} · created {p.get('created')} · steps {', '.join(map(str, p.get('steps', [])))} · "
        f"arms {', '.join(map(str, p.get('arms', [])))} · {p.get('folds')} folds · seeds "
        f"{', '.join(map(str, p.get('seeds', [])))} · {len(run.records)} images"
    )
    doc.html.append(f'<p class="meta">{_esc(meta)}</p>')
    doc.md.append(f"# Pipeline report: {_md(name)}\n\n{_md(meta)}\n")

    _steps(doc, run, run.problems)
    _comparison(doc, run, figures, written)
    _notes(doc, run)
    _retrieval(doc, run, thumbs, max_examples)
    _scores(doc, run, figures, written)
    _gallery(doc, run, thumbs, gallery_size, seed)
    if thumbs.problems:
        doc.section("problems", "Images that could not be read")
        doc.html.append("<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in thumbs.problems) + "</ul>")
        doc.md.extend(f"- {_md(x)}" for x in thumbs.problems)
    doc.close()

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc('Pipeline report: ' + name)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(doc.html)
        + "\n</body></html>\n"
    )
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    _write_atomic(html_path, page)
    _write_atomic(md_path, "\n".join(doc.md).strip() + "\n")
    out = {"report.html": str(html_path), "report.md": str(md_path), **written}
    if thumbs_dir.exists():
        out["figures/thumbs"] = str(thumbs_dir)
    return out
