"""Enumerate the config tree: primaries, experiments, ablations, and the tiny overlay of each stage."""

from __future__ import annotations

from pathlib import Path

from clipforge.utils.hydra import CONF_DIR

CONF = Path(CONF_DIR)
STAGES = ("recap", "enhance", "llm2clip")
PRIMARIES = ("train", "eval", "generate")


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def ablations() -> list[tuple[str, str]]:
    return [(s, p.stem) for s in STAGES for p in sorted((CONF / "ablation" / s).glob("*.yaml"))]


def stage_of(experiment: str) -> str:
    """`recap_*`, `enhance_*`, `llm2clip_*` belong to their stage; everything else is the CLIP baseline."""
    head = experiment.split("_")[0]
    return head if head in STAGES else "clip"


def tiny_overlay(experiment: str) -> str:
    """`debug=tiny_<experiment>` when that file exists, else the stage's `debug=tiny_<stage>`."""
    own = f"tiny_{experiment}"
    return own if (CONF / "debug" / f"{own}.yaml").exists() else f"tiny_{stage_of(experiment)}"


def tiny_overrides(experiment: str) -> list[str]:
    """Overrides that shrink an experiment to CPU-test size (no real weights, synthetic data)."""
    return [f"experiment={experiment}", f"debug={tiny_overlay(experiment)}"]
