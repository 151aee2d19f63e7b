"""Enumerate the config tree: primaries, experiments, ablations, and the tiny overlay of each stage."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from clipforge.utils.hydra import CONF_DIR

CONF = Path(CONF_DIR)
STAGES = ("recap", "enhance", "llm2clip")
PRIMARIES = ("train", "eval", "generate")


def is_renamed_stub(path: Path) -> bool:
    """A file left under a renamed config's old name (it sets only ``renamed: <old choice>``)."""
    return "renamed" in (yaml.safe_load(path.read_text()) or {})


def configs(group: str) -> list[str]:
    """The options of a config group, renamed stubs left out."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not is_renamed_stub(p))


def experiments() -> list[str]:
    return configs("experiment")


def ablations() -> list[tuple[str, str]]:
    return [(s, p.stem) for s in STAGES for p in sorted((CONF / "ablation" / s).glob("*.yaml"))]


ABLATION_TARGET = {"recap": "recap_clip", "enhance": "enhance_train_demo", "llm2clip": "llm2clip_s2_demo"}
"""The experiment a stage's ablation files modify (the stage's training recipe)."""


def combinations() -> list[tuple[str, str, str]]:
    """``(experiment, stage, ablation)`` to test: every experiment once (with its stage's empty ``none``), and
    every ablation file with its stage's training experiment (one paper's ablations do not apply to another's
    experiments)."""
    exps = experiments()
    out = [(e, stage_of(e) if stage_of(e) in STAGES else STAGES[0], "none") for e in exps]
    for s, a in ablations():
        target = (
            ABLATION_TARGET[s]
            if ABLATION_TARGET[s] in exps
            else next((e for e in exps if stage_of(e) == s), None)
        )
        if a != "none" and target is not None:
            out.append((target, s, a))
    return out


def compose_cases() -> list[tuple[str, str, str, str]]:
    """``(primary, experiment, stage, ablation)``: experiments under every primary, ablations under ``train``."""
    return [(p, e, s, a) for e, s, a in combinations() for p in (PRIMARIES if a == "none" else ("train",))]


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


def sweep_rows(path: Path) -> list[list[str]]:
    """The overrides of every job of a ``conf/sweep`` file, as Hydra's basic sweeper makes them: each parameter
    ``key: value`` parsed as the override ``key=value`` (so values may be lists or dicts, ``{a: 1},{a: 2}``), then
    the product of the parameters' values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    axes = []
    for key, value in yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"].items():
        override = parser.parse_override(f"{key}={value}")
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(row) for row in itertools.product(*axes)]
