"""Run a pipeline: plan the jobs, skip the finished ones, run the rest, then eval, lineage and report.

A rerun of the same command after a kill (at any point) continues: finished jobs are skipped by hash
(:mod:`clipforge.pipeline.state`), the interrupted one resumes from its own shards or ``last.ckpt``. Changing one
step's override changes that job's hash and, through the upstream hashes, those of the jobs that read its outputs:
only they run again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from clipforge.pipeline import compare
from clipforge.pipeline.jobs import JobFailed, run_job
from clipforge.pipeline.lineage import build_lineage, read_jsonl, write_lineage
from clipforge.pipeline.state import RunState, now
from clipforge.pipeline.steps import Plan, has_val_source, plan_jobs, source_spec, splits

log = logging.getLogger("clipforge.pipeline")

__all__ = ["run_pipeline"]


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: str, data: object) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)


def _source_records(cfg: DictConfig) -> list:
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    records, _ = read_records(DatasetSpec(**source_spec(cfg)), where="data.train")
    return records


def _folds(cfg: DictConfig, records: list) -> dict[str, int]:
    from clipforge.data.specs import DatasetSpec
    from clipforge.data.split import fold_of, side_of

    k = int(cfg.pipeline.folds or 0)
    if has_val_source(cfg):
        return {r.key: -1 for r in records}
    if k >= 2:
        return {r.key: fold_of(r.key, k) for r in records}
    holdout = DatasetSpec(**splits(cfg)[0].fields)  # the split rule the arms' specs use
    return {r.key: 0 if side_of(r.key, holdout) == "val" else -1 for r in records}


def _heldout_caption_counts(cfg: DictConfig, split) -> tuple[list[int], int]:
    """Captions per held-out image of one split (for chance levels) and the number of distinct labels."""
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    which = "val" if has_val_source(cfg) else "train"
    fields = source_spec(cfg, which)
    spec = DatasetSpec(**fields) if which == "val" else DatasetSpec(**fields, **split.spec("val"))
    records, _ = read_records(spec, where=f"data.{which}")
    labels = {str(r.meta.get("label")) for r in records if r.meta.get("label") is not None}
    return [len(r.captions) for r in records], len(labels)


def _eval_step(cfg: DictConfig, plan: Plan, run_dir: str) -> dict:
    """``comparison.json`` and ``retrieval_examples.json`` from the arms' finished runs."""
    dirs = {j.name: j.output_dir for j in plan.jobs}
    runs = compare.collect_runs(plan.arm_runs, dirs)
    encoders = {a: "all-MiniLM-L6-v2 (frozen) + head" for a in ("raw", "recap", "enhanced")}
    encoders["llm2clip"] = (
        str(cfg.pipeline.llm2clip.encoder)
        + (" + SimCSE (stage 1)" if cfg.pipeline.llm2clip.stage1.get("enabled") else "")
        + " (frozen) + adapter"
    )
    comparison = {
        "folds": len(splits(cfg)),
        "seeds": [int(s) for s in cfg.pipeline.seeds],
        "metric_keys": list(compare.METRIC_KEYS),
        "arms": compare.summarise(
            {a: runs[a] for a in cfg.pipeline.arms if a in runs}, compare.ARM_LABELS, encoders
        ),
    }
    chance_runs, n_images, n_captions = [], [], []
    for split in splits(cfg):
        counts, classes = _heldout_caption_counts(cfg, split)
        level = compare.chance_levels(counts)
        if classes:
            level["zeroshot_top1"] = 100.0 / classes
        chance_runs.append(level)
        n_images.append(len(counts))
        n_captions.append(sum(counts))
    comparison["chance"] = {
        "n_images_mean": sum(n_images) / len(n_images),
        "n_captions_mean": sum(n_captions) / len(n_captions),
        "per_split": [
            {"n_images": i, "n_captions": c, **lv} for i, c, lv in zip(n_images, n_captions, chance_runs)
        ],
        "mean": {k: sum(lv[k] for lv in chance_runs) / len(chance_runs) for k in chance_runs[0]},
    }
    examples, cra = {}, {}
    n_examples = int(cfg.pipeline.eval.get("examples", 8))
    for arm in (a for a in cfg.pipeline.arms if a in plan.arm_runs):
        first = plan.arm_runs[arm][0][2]
        emb = compare.embed_heldout(dirs[first])
        examples[arm] = compare.retrieval_examples(emb, n_examples)
        cra[f"{arm}: {encoders.get(arm, '')}"] = compare.text_cra(emb)
        del emb
        gc.collect()
    comparison["cra"] = cra
    notes = [
        f"{comparison['folds']} held-out split(s) x {len(comparison['seeds'])} seed(s); every arm trains on the same "
        "images, seeds and budget and is scored on the held-out images' human captions.",
        "CRA: each arm's text side on the held-out captions of the first split (caption #1 -> caption #2).",
    ]
    if "enhance" in cfg.pipeline.steps:
        notes.append(
            "enhancer: trained in this pipeline on every image of the source (the held-out images of each split "
            "included); it only changes the training captions of the other images."
            if plan.enhancer == "trained in pipeline"
            else f"enhancer: {plan.enhancer}"
        )
    if plan.retriever:
        notes.append(
            f"recap: a retriever ({plan.retriever}) trained per split on that split's training images, its datastore "
            "their captions (+ the captioner's own entries): one recap table per split; lineage, gallery and "
            f"score histograms show the first split's tables ({plan.recap_job}, {plan.score_job or 'no scores'})."
        )
    collapsed = [a for a, v in comparison["arms"].items() if v["collapsed_runs"]]
    if collapsed:
        notes.append(f"collapsed embeddings in: {', '.join(collapsed)} (see runs)")
    comparison["notes"] = notes
    _write_json(os.path.join(run_dir, "comparison.json"), comparison)
    _write_json(os.path.join(run_dir, "retrieval_examples.json"), examples)
    return {
        "comparison": os.path.join(run_dir, "comparison.json"),
        "examples": os.path.join(run_dir, "retrieval_examples.json"),
    }


def _lineage(cfg: DictConfig, plan: Plan, run_dir: str) -> dict[str, str]:
    records = _source_records(cfg)
    out = plan.outputs
    # one table per split with a per-split retriever: the lineage (and the report's gallery) shows the first's
    recap = out.get(plan.recap_job or "", {}).get("table")
    score = out.get(plan.score_job or "", {})
    rows = build_lineage(
        records,
        _folds(cfg, records),
        recap_rows=read_jsonl(recap),
        slots=plan.captioners,
        score_rows=read_jsonl(score.get("scores")),
        enhanced_rows=read_jsonl(score.get("enhanced")),
        enhancer=plan.enhancer or "",
    )
    return write_lineage(rows, run_dir)


def print_comparison(comparison: Mapping) -> None:
    """The comparison table with chance levels and the held-out size, on the terminal."""
    from rich.console import Console
    from rich.table import Table

    chance = comparison["chance"]
    keys = ["i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "rsum"]
    if any("zeroshot_top1" in a["mean"] for a in comparison["arms"].values()):
        keys.append("zeroshot_top1")
    title = (
        f"held-out comparison: {comparison['folds']} split(s) x {len(comparison['seeds'])} seed(s), "
        f"~{chance['n_images_mean']:.1f} held-out images ({chance['n_captions_mean']:.0f} captions) each; "
        "mean ± std"
    )
    table = Table(title=title)
    table.add_column("arm")
    for k in keys:
        table.add_column(k, justify="right")
    for arm, stats in comparison["arms"].items():
        flag = " (collapsed runs!)" if stats["collapsed_runs"] else ""
        cells = []
        for k in keys:
            m, s = stats["mean"].get(k), stats["std"].get(k)
            cells.append("—" if m is None else f"{m:.1f} ± {s:.1f}")
        table.add_row(arm + flag, *cells)
    table.add_row("chance", *[f"{chance['mean'][k]:.1f}" if k in chance["mean"] else "—" for k in keys])
    Console().print(table)


def run_pipeline(cfg: DictConfig) -> dict:
    """Run (or continue) the pipeline of a resolved config; returns ``{"run_dir", "comparison", "report"}``.

    Raises:
        JobFailed: a step failed (one line naming it; finished steps stay recorded).
    """
    run_dir = str(cfg.paths.output_dir)
    os.makedirs(run_dir, exist_ok=True)
    plan = plan_jobs(cfg, run_dir)
    steps = list(cfg.pipeline.steps)
    names = plan.names() + [s for s in ("eval", "report") if s in steps]
    _write_json(
        os.path.join(run_dir, "pipeline.json"),
        {
            "name": str(cfg.pipeline.name),
            "steps": names,
            "arms": [a for a in cfg.pipeline.arms if a in plan.arm_runs],
            "folds": len(splits(cfg)),
            "source": str(source_spec(cfg).get("path")),
            "seeds": [int(s) for s in cfg.pipeline.seeds],
            "created": now(),
            "config": OmegaConf.to_container(cfg.pipeline, resolve=True),
        },
    )
    state = RunState(run_dir)
    hashes: dict[str, str] = {}
    launcher = str(cfg.pipeline.get("launcher", "inprocess"))
    for i, job in enumerate(plan.jobs, 1):
        try:
            digest = job.config_hash(hashes)
        except Exception as e:  # the step's overrides do not compose
            raise JobFailed(
                f"step {job.name}: its config does not compose: {str(e).splitlines()[0]}"
            ) from None
        hashes[job.name] = digest
        if state.is_done(job.name, digest):
            log.info("[%d/%d] %s: done earlier, skipped", i, len(plan.jobs), job.name)
            continue
        log.info(
            "[%d/%d] %s: clipforge %s experiment=%s", i, len(plan.jobs), job.name, job.primary, job.experiment
        )
        state.begin(job.name, digest, job.output_dir)
        try:
            wall, counts = run_job(job, launcher)
        except JobFailed as e:
            state.fail(job.name, 0.0, str(e))
            raise
        missing = [p for p in plan.outputs[job.name].values() if not os.path.exists(p)]
        if missing:
            state.fail(job.name, wall, f"outputs missing: {missing}")
            raise JobFailed(f"step {job.name} failed: it finished without writing {missing[0]}")
        state.finish(job.name, wall, plan.outputs[job.name], **counts)
        gc.collect()

    outputs: dict = {"run_dir": run_dir}
    for name, fn, after in (
        (
            "eval",
            lambda: _eval_step(cfg, plan, run_dir),
            [n for runs in plan.arm_runs.values() for *_, n in runs],
        ),
        ("report", lambda: _report(cfg, run_dir), ["eval"]),
    ):
        if name not in steps:
            continue
        digest = _digest(
            {"after": {n: hashes.get(n) for n in after}, "cfg": OmegaConf.to_container(cfg.pipeline[name])}
        )
        if name == "report":
            _lineage(cfg, plan, run_dir)  # cheap: always rebuilt from the step outputs before the report
        if state.is_done(name, digest):
            hashes[name] = digest
            outputs.update(state.steps[name]["outputs"])
            continue
        state.begin(name, digest, os.path.join(run_dir, name))
        start = time.perf_counter()
        try:
            produced = fn()
        except Exception as e:
            state.fail(name, time.perf_counter() - start, str(e))
            raise JobFailed(f"step {name} failed: {type(e).__name__}: {e}") from e
        state.finish(name, time.perf_counter() - start, produced)
        hashes[name] = digest
        outputs.update(produced)
    if "report" not in steps:
        outputs.update(_lineage(cfg, plan, run_dir))
    comparison = os.path.join(run_dir, "comparison.json")
    if os.path.exists(comparison):
        with open(comparison, encoding="utf-8") as f:
            print_comparison(json.load(f))
    if outputs.get("report.html"):
        print(f"report: {outputs['report.html']}")
    return outputs


def _report(cfg: DictConfig, run_dir: str) -> dict[str, str]:
    from clipforge.pipeline.report import write_report

    paths = write_report(run_dir, gallery_size=int(cfg.pipeline.report.get("gallery", 12)))
    return {k: v for k, v in paths.items() if isinstance(v, str)}
