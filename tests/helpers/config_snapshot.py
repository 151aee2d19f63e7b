"""Resolved configs of the whole config tree as flat ``{dotted key: value}`` maps, for golden comparisons.

A case is ``(primary, overrides)``. Machine-dependent paths (the checkout, ``paths.*_dir``, the output folder) are
replaced by placeholders, so a snapshot written on one machine compares on another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from clipforge.utils.hydra import compose
from tests.helpers.configs import CONF, ablations, experiments

GOLDEN = Path(__file__).resolve().parents[1] / "configs" / "golden_configs.json"
OUT = "/tmp/clipforge-snapshot/out"
"""The output folder every case is composed with (replaced by ``<out>`` in the snapshot)."""


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if not node and prefix:
            yield prefix, {}
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def flat_job(cfg, out: str = OUT) -> dict[str, Any]:
    """The resolved job config (no ``hydra`` node) of a composed config as ``{dotted key: value}``."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    paths = container.get("paths", {})
    swaps = [(out, "<out>")]
    swaps += [
        (str(paths[k]), f"<{k}>") for k in ("data_dir", "log_dir", "artifact_dir", "root_dir") if k in paths
    ]
    swaps.sort(key=lambda s: -len(s[0]))  # longest first: data_dir lies under root_dir

    def clean(v: Any) -> Any:
        if isinstance(v, str):
            for old, new in swaps:
                v = v.replace(old, new)
            return v
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return {k: clean(v) for k, v in _leaves(container)}


def resolve_case(primary: str, overrides: list[str], out: str = OUT) -> dict[str, Any]:
    """``flat_job`` of ``overrides`` composed under ``primary``."""
    return flat_job(compose(overrides, primary, output_dir=out), out)


def _generates(experiment: str) -> bool:
    """Whether an experiment is a ``clipforge generate`` job (its header says so)."""
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    return f"clipforge generate experiment={experiment}" in text


def _tiny(experiment: str) -> str:
    own = f"tiny_{experiment}"
    if (CONF / "debug" / f"{own}.yaml").exists():
        return own
    head = experiment.split("_")[0]
    return f"tiny_{head if head in ('recap', 'enhance', 'llm2clip') else 'clip'}"


ABLATION_TARGET = {"recap": "recap_clip", "enhance": "enhance_train_demo", "llm2clip": "llm2clip_s2_demo"}


def cases() -> list[dict]:
    """Every experiment under every primary and with its tiny overlay, every ablation with its stage's training
    experiment (as is and with the tiny overlay), ``debug=fdr``."""
    out: list[dict] = []
    for e in experiments():
        for p in ("train", "eval", "generate"):
            out.append({"primary": p, "overrides": [f"experiment={e}"]})
        p = "generate" if _generates(e) else "train"
        out.append({"primary": p, "overrides": [f"experiment={e}", f"debug={_tiny(e)}"]})
    for stage, a in ablations():
        if a == "none":
            continue
        e = ABLATION_TARGET[stage]
        out.append({"primary": "train", "overrides": [f"experiment={e}", f"ablation/{stage}={a}"]})
        out.append(
            {
                "primary": "train",
                "overrides": [f"experiment={e}", f"debug={_tiny(e)}", f"ablation/{stage}={a}"],
            }
        )
    out.append({"primary": "train", "overrides": ["experiment=clip_demo", "debug=fdr"]})
    return out


def preset_jobs(preset: str, out: str = OUT) -> dict[str, dict[str, Any]]:
    """``{job name: flat job config}`` of every job a pipeline preset plans (nothing is run)."""
    from clipforge.pipeline.steps import plan_jobs
    from clipforge.utils.hydra import job_config

    run = f"{out}/pipeline"
    cfg = job_config(compose([f"preset={preset}"], "pipeline", output_dir=run))
    return {job.name: flat_job(job.compose(), out) for job in plan_jobs(cfg, run).jobs}


def presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def encode(rows: list[dict]) -> list[dict]:
    """Store each row's config as the difference from the earlier row it differs least from (``ref``): ``set``
    holds the leaves that differ, ``absent`` the reference's leaves the row does not have."""
    out, seen = [], []
    for row in rows:
        config = row["config"]
        best = None
        for j, other in enumerate(seen):
            changed = {k: v for k, v in config.items() if k not in other or _key(other[k]) != _key(v)}
            absent = sorted(k for k in other if k not in config)
            cost = len(_key(changed)) + len(_key(absent))
            if best is None or cost < best[0]:
                best = (cost, j, changed, absent)
        meta = {k: v for k, v in row.items() if k != "config"}
        if best is None or best[0] >= len(_key(config)):
            out.append({**meta, "config": config})
        else:
            out.append({**meta, "ref": best[1], "set": best[2], "absent": best[3]})
        seen.append(config)
    return out


def decode(stored: list[dict]) -> list[dict]:
    """The rows :func:`encode` stored, each with its full ``config``."""
    rows: list[dict] = []
    for row in stored:
        meta = {k: v for k, v in row.items() if k not in ("config", "ref", "set", "absent")}
        if "config" in row:
            config = dict(row["config"])
        else:
            config = {k: v for k, v in rows[row["ref"]]["config"].items() if k not in set(row["absent"])}
            config.update(row["set"])
        rows.append({**meta, "config": config})
    return rows


def load(path: Path = GOLDEN) -> list[dict]:
    """The snapshot rows of ``path`` with their full configs."""
    return decode(json.loads(path.read_text()))


def snapshot(path: Path = GOLDEN) -> None:
    """Write the resolved config of every case and of every pipeline preset's jobs to ``path``."""
    rows = [{**c, "config": resolve_case(c["primary"], c["overrides"])} for c in cases()]
    for preset in presets():
        for name, config in preset_jobs(preset).items():
            rows.append({"preset": preset, "job": name, "config": config})
    path.write_text(json.dumps(encode(rows), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    snapshot()
