"""Load finished runs and sweeps (for notebooks and scripts) from what every Hydra run leaves on disk.

A run dir holds ``config.yaml`` (resolved job config), ``run.cli.yaml``, ``metrics.json`` (flat final metrics),
``checkpoints/`` and ``.hydra/overrides.yaml``. A multirun dir holds one such run dir per job (``0/``, ``1/``...).
Nothing here composes ``paths``/``hydra`` configs, so it works anywhere the files are. Checkpoints are read with
``weights_only=True`` (:func:`~clipforge.utils.checkpoint.load_checkpoint`); ``trust_checkpoint=True`` (or
``CLIPFORGE_TRUST_CHECKPOINT=1``) is the opt-in for trusted files that hold pickled objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from clipforge.utils.checkpoint import load_checkpoint

__all__ = ["Run", "find_checkpoint", "load_run", "load_sweep"]


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
    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    run = Run(str(run_dir), cfg, _read_json(os.path.join(run_dir, "metrics.json")), _read_overrides(run_dir))
    if checkpoint in ("best", "last"):
        run.checkpoint = find_checkpoint(run_dir, checkpoint, trust_checkpoint)
    elif checkpoint:
        run.checkpoint = checkpoint
    if build:
        from hydra.utils import instantiate

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
    """One row per finished job of a multirun: ``job``, each override as a column, every metric as a column."""
    import pandas as pd

    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        if not (job / "config.yaml").exists():
            continue
        row: dict = {"job": job.name, "run_dir": str(job)}
        for ov in _read_overrides(str(job)):
            key, _, value = ov.lstrip("+~").partition("=")
            row[key] = value
        row.update(_read_json(str(job / "metrics.json")))
        rows.append(row)
    return pd.DataFrame(rows)
