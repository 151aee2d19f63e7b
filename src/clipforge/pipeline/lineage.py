"""``lineage.{jsonl,parquet}``: one row per image of the pipeline's source, from raw captions to training captions.

Row layout (the report and :func:`clipforge.utils.runs.load_pipeline` read it):

- ``key``, ``image`` (absolute path, or ``None`` for an image that is not a file), ``fold`` (the split holding it
  out: the fold index, or ``0`` / ``-1`` = train side of a single split), ``raw_captions``;
- ``recap``: per captioner slot ``{captioner, raw, sheared, raw_len, sheared_len, model, prompt, decoding}``;
- ``scored``: per scored caption ``{caption, source, overall, expected, scores (five aspects), action, recaption,
  final_overall}`` (``source`` is ``raw`` or the captioner slot whose caption it is);
- ``final_captions``: the enhanced caption set the ``enhanced`` arm trains on, ``{caption, source}`` with source
  ``raw`` / ``<slot>`` / ``rewrite:<raw|slot>``; ``enhancer``: which enhancer scored the row.

With a per-split retriever (``pipeline.recap.retriever``) every split has its own recap and enhanced tables; the
lineage joins the first split's (``Plan.recap_job`` / ``Plan.score_job``), the report's gallery and histograms too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from clipforge.tasks.enhance.prompt import ASPECTS

__all__ = ["build_lineage", "read_jsonl", "write_lineage"]


def read_jsonl(path: str | None) -> list[dict]:
    """Rows of a JSONL file; none when the file is absent (a step that did not run)."""
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _recap_entries(row: Mapping, slots: Sequence[str]) -> list[dict]:
    out = []
    for s in slots:
        if s not in row:
            continue
        meta = row.get(f"{s}_meta") or {}
        out.append(
            {
                "captioner": s,
                "raw": row.get(f"{s}_raw"),
                "sheared": row.get(s),
                "raw_len": row.get(f"{s}_raw_len"),
                "sheared_len": row.get(f"{s}_len"),
                "model": str(meta.get("model_id", "")),
                "prompt": str(meta.get("prompt_id", "")),
                "decoding": json.dumps(meta.get("params") or {}, sort_keys=True),
            }
        )
    return out


def build_lineage(
    records: Sequence,
    folds: Mapping[str, int],
    recap_rows: Sequence[Mapping] = (),
    slots: Sequence[str] = (),
    score_rows: Sequence[Mapping] = (),
    enhanced_rows: Sequence[Mapping] = (),
    enhancer: str = "",
) -> list[dict]:
    """Join the source records with every step's per-row outputs by sample key.

    Args:
        records: the source's :class:`~clipforge.data.records.Record` s (raw captions, image paths).
        folds: key -> held-out fold.
        recap_rows: the recap table's rows.
        slots: the recap table's captioner slots.
        score_rows: the scoring job's rows (``{"key", "pairs": [...]}``).
        enhanced_rows: the enhanced table's rows (one per training caption).
        enhancer: how the enhancer was obtained (a folder, or "trained in pipeline").

    Returns:
        One row per record, in source order (module docstring).
    """
    recap = {r["key"]: r for r in recap_rows}
    scored = {r["key"]: r.get("pairs", []) for r in score_rows}
    final: dict[str, list[dict]] = {}
    for r in enhanced_rows:
        final.setdefault(str(r["key"]), []).append(r)
    out = []
    for rec in records:
        key = rec.key
        raw = list(rec.captions)
        table = recap.get(key, {})
        entries = _recap_entries(table, slots)
        source_of = {c: "raw" for c in raw}
        for e in entries:
            source_of.setdefault(e["sheared"], e["captioner"])
        actions = {}
        for r in final.get(key, []):
            actions.setdefault(r.get("original_caption"), r.get("action"))
        pairs = []
        for p in scored.get(key, []):
            caption = p.get("caption", "")
            rescore = p.get("rescore") or {}
            pairs.append(
                {
                    "caption": caption,
                    "source": source_of.get(caption, "raw" if not entries else "unknown"),
                    "overall": p.get("overall"),
                    "expected": p.get("overall_expected"),
                    "scores": {a: (p.get("scores") or {}).get(a) for a in ASPECTS},
                    "action": actions.get(caption, "drop"),
                    "recaption": p.get("recaption"),
                    "final_overall": rescore.get("overall")
                    if actions.get(caption) == "rewrite"
                    else p.get("overall"),
                }
            )
        captions = []
        for r in final.get(key, []):
            origin = source_of.get(r.get("original_caption"), "raw")
            captions.append(
                {"caption": r.get("caption"), "source": f"rewrite:{origin}" if r.get("rewritten") else origin}
            )
        image = rec.image if isinstance(rec.image, str) else None
        out.append(
            {
                "key": key,
                "image": os.path.abspath(image) if image else None,
                "fold": int(folds.get(key, -1)),
                "raw_captions": raw,
                "recap": entries,
                "scored": pairs,
                "final_captions": captions,
                "enhancer": enhancer,
            }
        )
    return out


def write_lineage(rows: Sequence[Mapping], run_dir: str) -> dict[str, str]:
    """Write ``lineage.jsonl`` and ``lineage.parquet`` atomically; returns both paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = os.path.join(run_dir, "lineage.jsonl")
    with open(jsonl + ".tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(jsonl + ".tmp", jsonl)
    parquet = os.path.join(run_dir, "lineage.parquet")
    # nested lists of structs: JSON-encode the variable parts so every row has one schema
    flat = [
        {
            **{k: row[k] for k in ("key", "image", "fold", "raw_captions", "enhancer")},
            **{
                k: json.dumps(row[k], ensure_ascii=False, sort_keys=True)
                for k in ("recap", "scored", "final_captions")
            },
        }
        for row in rows
    ]
    pq.write_table(pa.Table.from_pylist(flat), parquet + ".tmp")
    os.replace(parquet + ".tmp", parquet)
    return {"lineage": jsonl, "lineage_parquet": parquet}
