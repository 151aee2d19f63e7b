"""Load finished runs, sweeps and pipeline runs (for notebooks and scripts) from what they leave on disk.

A run dir holds ``config.yaml`` (resolved job config), ``run.cli.yaml``, ``metrics.json`` (flat final metrics),
``checkpoints/`` and ``.hydra/overrides.yaml``. A multirun dir holds one such run dir per job (``0/``, ``1/``...).
A ``clipforge pipeline`` run folder (``pipeline.json``, ``state.json``, ``lineage.jsonl``, ``comparison.json``...)
is read by :func:`load_pipeline`. Nothing here composes ``paths``/``hydra`` configs, so it works anywhere the files
are. Checkpoints are read with ``weights_only=True`` (:func:`~clipforge.utils.checkpoint.load_checkpoint`);
``trust_checkpoint=True`` (or ``CLIPFORGE_TRUST_CHECKPOINT=1``) is the opt-in for trusted files that hold pickled
objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf

from clipforge.utils.moved import upgrade_targets

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PipelineRun",
    "Run",
    "find_checkpoint",
    "load_pipeline",
    "load_run",
    "load_sweep",
    "read_lineage",
    "swept_keys",
]


@dataclass
class Run:
    """A finished run: its resolved config, final metrics, overrides and (optionally) the rebuilt objects."""

    run_dir: str
    config: DictConfig
    metrics: dict[str, float]
    overrides: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    model: object | None = None
    datamodule: object | None = None


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _read_overrides(run_dir: str) -> list[str]:
    path = os.path.join(run_dir, ".hydra", "overrides.yaml")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(yaml.safe_load(f) or [])


def find_checkpoint(run_dir: str, which: str = "best", trust_checkpoint: bool = False) -> str | None:
    """Path of the ``best`` or ``last`` checkpoint of a run (``best`` is read from ``last.ckpt``'s
    ModelCheckpoint state, falling back to ``last``), or ``None`` if the run saved none.

    Raises:
        UntrustedCheckpointError: ``last.ckpt`` needs unrestricted unpickling and ``trust_checkpoint`` is off.
    """
    # imported here (it imports torch): pipeline runs and sweeps load without it
    from clipforge.utils.checkpoint import load_checkpoint

    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if not os.path.exists(last):
        return None
    if which == "last":
        return last
    state = load_checkpoint(last, trust_checkpoint)
    for key, value in state.get("callbacks", {}).items():
        # the monitored ModelCheckpoint (last_checkpoint has no monitor: its "best" is last.ckpt itself)
        if key.startswith("ModelCheckpoint") and value.get("monitor") and value.get("best_model_path"):
            best = value["best_model_path"]
            # runs can be moved: resolve the file name inside this run's checkpoints/ folder
            local = os.path.join(run_dir, "checkpoints", os.path.basename(best))
            return local if os.path.exists(local) else best
    return last


def load_run(
    run_dir: str, checkpoint: str | None = "best", build: bool = True, trust_checkpoint: bool = False
) -> Run:
    """Load a run; with ``build`` also rebuild its model (weights from ``checkpoint``) and datamodule.

    Args:
        run_dir: the run's output dir.
        checkpoint: ``best``, ``last``, a checkpoint path, or ``None`` (config and metrics only, random weights).
        build: instantiate the model and datamodule from the resolved config.
        trust_checkpoint: load the checkpoint with ``weights_only=False`` (only for files you trust).

    Raises:
        UntrustedCheckpointError: the checkpoint needs unrestricted unpickling and ``trust_checkpoint`` is off.
    """
    # a run written before a class moved names its old path (clipforge.utils.moved)
    stored = OmegaConf.to_container(OmegaConf.load(os.path.join(run_dir, "config.yaml")))
    cfg = OmegaConf.create(upgrade_targets(stored))
    run = Run(str(run_dir), cfg, _read_json(os.path.join(run_dir, "metrics.json")), _read_overrides(run_dir))
    if checkpoint in ("best", "last"):
        run.checkpoint = find_checkpoint(run_dir, checkpoint, trust_checkpoint)
    elif checkpoint:
        run.checkpoint = checkpoint
    if build:
        from hydra.utils import instantiate

        from clipforge.utils.checkpoint import load_checkpoint

        run.model = instantiate(cfg.model, _convert_="all")
        run.datamodule = instantiate(cfg.data, _convert_="all")
        if hasattr(run.model, "configure_model"):
            run.model.configure_model()
        if run.checkpoint:
            state = load_checkpoint(run.checkpoint, trust_checkpoint)
            run.model.load_state_dict(state["state_dict"], strict=getattr(run.model, "strict_loading", True))
        run.model.eval()
    return run


def load_sweep(sweep_dir: str):
    """One row per finished job of a multirun: ``job``, each override as a column, every metric as a column.

    Override keys and metric names both may hold ``/`` (``model/loss``, ``val/rsum``); the override keys, in the
    order they first appear, are kept in ``df.attrs["override_keys"]`` (read by :func:`swept_keys`).
    """
    import pandas as pd

    rows = []
    override_keys: list[str] = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        if not (job / "config.yaml").exists():
            continue
        row: dict = {"job": job.name, "run_dir": str(job)}
        for ov in _read_overrides(str(job)):
            key, _, value = ov.lstrip("+~").partition("=")
            row[key] = value
            if key not in override_keys:
                override_keys.append(key)
        row.update(_read_json(str(job / "metrics.json")))
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["override_keys"] = override_keys
    return df


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The override keys of a :func:`load_sweep` frame that take more than one value across its jobs, in
    command-line order (``model/loss=clip,siglip seed=0,1`` -> ``["model/loss", "seed"]``).

    Raises:
        ValueError: ``df`` did not come from :func:`load_sweep` (it has no ``override_keys`` attribute).
    """
    if "override_keys" not in df.attrs:
        raise ValueError("swept_keys needs a DataFrame returned by load_sweep (df.attrs['override_keys'])")
    return [k for k in df.attrs["override_keys"] if k in df.columns and df[k].nunique(dropna=False) > 1]


STEP_COLUMNS = [
    "step",
    "status",
    "rows",
    "errors",
    "wall_s",
    "rows_per_s",
    "started",
    "finished",
    "hash",
    "error",
]
CAPTION_COLUMNS = [
    "key",
    "fold",
    "stage",
    "source",
    "caption",
    "length",
    "overall",
    "expected",
    "text_quality",
    "image_text_matching",
    "object_detail",
    "semantic_understanding",
    "text_chart_description",
    "action",
    "recaption",
    "final_overall",
    "model",
]
METRIC_COLUMNS = [
    "arm",
    "label",
    "text_encoder",
    "fold",
    "seed",
    "metric",
    "value",
    "n_images",
    "n_captions",
    "collapsed",
]


@dataclass
class PipelineRun:
    """A ``clipforge pipeline`` run folder, read into tables (see :func:`load_pipeline`).

    Attributes:
        run_dir: the run folder.
        pipeline: ``pipeline.json`` (name, steps, arms, folds, source, seeds, created).
        steps: one row per step of ``state.json`` in pipeline order (:data:`STEP_COLUMNS`, ``outputs``).
        lineage: one row per image: the lineage fields plus ``n_raw_captions``, ``n_recap``, ``n_scored``,
            ``n_final_captions``.
        captions: every caption of every image, long form (:data:`CAPTION_COLUMNS`); ``stage`` is ``raw``,
            ``recap`` (a captioner's full caption, ``length`` = ``raw_len``), ``sheared`` (``length`` =
            ``sheared_len``), ``scored`` (the enhancer's verdict on one caption) or ``final`` (the enhanced set).
        metrics: one row per arm x run x metric (:data:`METRIC_COLUMNS`), from ``comparison.json``.
        comparison: ``comparison.json`` (empty when the pipeline trained nothing).
        retrieval_examples: ``retrieval_examples.json`` (empty when absent).
        state: ``state.json``'s ``steps`` as written (step -> its record).
        records: the lineage rows as written.
        problems: what could not be read (lineage lines, an optional JSON file); it is left out of the tables.
    """

    run_dir: str
    pipeline: dict
    steps: pd.DataFrame
    lineage: pd.DataFrame
    captions: pd.DataFrame
    metrics: pd.DataFrame
    comparison: dict = field(default_factory=dict)
    retrieval_examples: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def best_arm(self, metric: str = "rsum") -> str | None:
        """The arm with the highest mean ``metric`` (the first one on ties), ``None`` without a comparison."""
        means = {a: v.get("mean", {}).get(metric) for a, v in self.comparison.get("arms", {}).items()}
        means = {a: m for a, m in means.items() if m is not None}
        return max(means, key=means.get) if means else None


def read_lineage(run_dir: str) -> tuple[list[dict], list[str]]:
    """The lineage rows of a pipeline run (``lineage.jsonl``, else ``lineage.parquet``) and the problems met.

    A line that is not a JSON object with a ``key`` is left out and described in the problems; the other rows
    are kept. No lineage file gives no rows.
    """
    rows, problems = [], []
    jsonl, parquet = os.path.join(run_dir, "lineage.jsonl"), os.path.join(run_dir, "lineage.parquet")
    if os.path.exists(jsonl):
        with open(jsonl, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.append(f"lineage.jsonl line {n}: not JSON ({e.msg})")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                    problems.append(f"lineage.jsonl line {n}: not a lineage row (no string 'key')")
                    continue
                rows.append(row)
    elif os.path.exists(parquet):
        import pyarrow.parquet as pq

        rows = pq.read_table(parquet).to_pylist()
        for row in rows:  # the pipeline writes the nested parts as JSON strings (one schema for every row)
            for k in ("recap", "scored", "final_captions"):
                if isinstance(row.get(k), str):
                    row[k] = json.loads(row[k])
    return rows, problems


def _lineage_frame(records: list[dict]) -> pd.DataFrame:
    import pandas as pd

    counts = {
        "n_raw_captions": "raw_captions",
        "n_recap": "recap",
        "n_scored": "scored",
        "n_final_captions": "final_captions",
    }
    rows = [{**r, **{c: len(r.get(f) or []) for c, f in counts.items()}} for r in records]
    base = ["key", "image", "fold", "raw_captions", "recap", "scored", "final_captions", "enhancer"]
    df = pd.DataFrame(rows)
    for c in base + list(counts):
        if c not in df.columns:
            df[c] = pd.Series(dtype=object)
    return df[base + list(counts) + [c for c in df.columns if c not in base and c not in counts]]


def _caption_frame(records: list[dict]) -> pd.DataFrame:
    import pandas as pd

    out = []
    for r in records:
        common = {"key": r.get("key"), "fold": r.get("fold")}
        for c in r.get("raw_captions") or []:
            out.append({**common, "stage": "raw", "source": "raw", "caption": c})
        for c in r.get("recap") or []:
            for stage, text, length in (("recap", "raw", "raw_len"), ("sheared", "sheared", "sheared_len")):
                out.append(
                    {
                        **common,
                        "stage": stage,
                        "source": c.get("captioner"),
                        "caption": c.get(text),
                        "length": c.get(length),
                        "model": c.get("model"),
                    }
                )
        for c in r.get("scored") or []:
            row = {**common, "stage": "scored", **{k: c.get(k) for k in ("source", "caption", "overall")}}
            row.update({k: c.get(k) for k in ("expected", "action", "recaption", "final_overall")})
            row.update(c.get("scores") or {})
            out.append(row)
        for c in r.get("final_captions") or []:
            out.append({**common, "stage": "final", "source": c.get("source"), "caption": c.get("caption")})
    return pd.DataFrame(out, columns=CAPTION_COLUMNS)


def _metric_frame(comparison: dict) -> pd.DataFrame:
    import pandas as pd

    out = []
    for arm, a in comparison.get("arms", {}).items():
        for run in a.get("runs", []):
            for metric, value in (run.get("metrics") or {}).items():
                out.append(
                    {
                        "arm": arm,
                        "label": a.get("label"),
                        "text_encoder": a.get("text_encoder"),
                        **{k: run.get(k) for k in ("fold", "seed")},
                        "metric": metric,
                        "value": value,
                        **{k: run.get(k) for k in ("n_images", "n_captions", "collapsed")},
                    }
                )
    return pd.DataFrame(out, columns=METRIC_COLUMNS)


def _read_run_json(run_dir: str, name: str, problems: list[str] | None) -> dict:
    """A JSON object of the run folder (``{}`` when absent). Unreadable: raise, or describe it in ``problems``."""
    path = os.path.join(run_dir, name)
    try:
        obj = _read_json(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{name} holds a {type(obj).__name__}, not a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        message = f"{name} could not be read: {e}"
        if problems is None:
            raise ValueError(f"{run_dir}: {message}") from e
        problems.append(message + "; its sections are left out")
        return {}
    return obj


def load_pipeline(run_dir: str) -> PipelineRun:
    """Read a ``clipforge pipeline`` run folder into tables.

    Args:
        run_dir: the run folder (``pipeline.json``, ``state.json`` and, when their steps ran, ``lineage.jsonl`` /
            ``lineage.parquet``, ``comparison.json``, ``retrieval_examples.json``).

    Returns:
        A :class:`PipelineRun`; the tables of files that are absent are empty (with their columns).

    Raises:
        FileNotFoundError: ``pipeline.json`` or ``state.json`` is missing (not a pipeline run folder).
        ValueError: ``pipeline.json`` or ``state.json`` is not a JSON object. An unreadable ``comparison.json`` or
            ``retrieval_examples.json`` is described in ``problems`` and read as empty instead.
    """
    import pandas as pd

    run_dir = str(run_dir)
    for name in ("pipeline.json", "state.json"):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"{run_dir} is not a pipeline run folder: {name} is missing")
    problems: list[str] = []
    pipeline = _read_run_json(run_dir, "pipeline.json", None)
    state = _read_run_json(run_dir, "state.json", None).get("steps") or {}
    order = list(pipeline.get("steps", []))
    order += [s for s in state if s not in order]
    steps = pd.DataFrame(
        [
            {
                "step": s,
                **{c: state[s].get(c) for c in STEP_COLUMNS[1:]},
                "outputs": state[s].get("outputs") or {},
            }
            for s in order
            if s in state
        ],
        columns=STEP_COLUMNS + ["outputs"],
    )
    records, lineage_problems = read_lineage(run_dir)
    problems += lineage_problems
    comparison = _read_run_json(run_dir, "comparison.json", problems)
    return PipelineRun(
        run_dir=run_dir,
        pipeline=pipeline,
        steps=steps,
        lineage=_lineage_frame(records),
        captions=_caption_frame(records),
        metrics=_metric_frame(comparison),
        comparison=comparison,
        retrieval_examples=_read_run_json(run_dir, "retrieval_examples.json", problems),
        state=state,
        records=records,
        problems=problems,
    )
