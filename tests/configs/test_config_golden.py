"""Every experiment, tiny overlay, ablation and pipeline-preset job composes to the values in
``golden_configs.json`` (written by ``python -m tests.helpers.config_snapshot`` from the tree before its last
reorganisation), once the names and keys renamed on purpose are mapped to their new ones and the classes that
moved to their new paths."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from clipforge.cli.validate import RENAMED_CONFIGS, renamed
from clipforge.utils.moved import upgrade_targets
from tests.helpers.config_snapshot import CONF, load, preset_jobs, resolve_case
from tests.helpers.configs import configs, sweep_rows

ROWS = load()

RENAMED: dict[str, str] = RENAMED_CONFIGS
"""Old override -> new override: the entry points' table of renamed experiments and overlays (whose old names stop
with one line naming the new ones)."""

REPLACED: dict[str, list[str]] = {
    **{
        f"ablation/recap=remove_{p}": [
            "ablation/recap=raw_only",
            f"data.caption_policy.remove_ratio={p / 100}",
        ]
        for p in (25, 50, 75)
    },
    **{
        f"ablation/recap=rewrite_{p}": [f"data.caption_policy.rewrite_ratio={p / 100}"]
        for p in (25, 50, 75, 100)
    },
    **{
        f"ablation/llm2clip=dense_ratio_{p}": [
            f"data.caption_policy.source_weights={{raw: {1 - p / 100}, dense: {p / 100}}}"
        ]
        for p in (0, 25, 50, 75, 100)
    },
    **{f"ablation/llm2clip=adapter_layers_{n}": [f"model.adapter.num_layers={n}"] for n in (0, 1, 2)},
}
"""Old override -> the overrides that replace it (ablation files that became a documented sweep over a key)."""


TINY_BASE_TRAINING = {
    "callbacks.lr_monitor": None,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "data.batch_size": 4,
}
"""The training part of ``debug/tiny_base.yaml``, which the generation overlays inherit unused (they did not set it
before they inherited it; a generation job never fits, and predicts in batches of ``data.eval_batch_size``, which
every image generation overlay sets; llm2clip_embed_demo's overlay had these values already)."""


STREAMING = {"data.train.streaming": None, "data.shuffle_buffer": 1000}
"""``conf/data/demo.yaml``'s streaming keys (auto-detected streaming; the shuffle buffer of a streamed source)."""


MODEL_SUMMARY = {
    "callbacks.model_summary._target_": "clipforge.callbacks.summary.ModelSummary",
    "callbacks.model_summary.max_depth": 1,
}
"""``conf/callbacks/model_summary.yaml``, added to the default callbacks (the summary without an empty FLOPs column)."""


BACKEND_CAPTIONERS = (
    "clipforge.models.captioners.label_llm.LabelLLMCaptioner",
    "clipforge.models.captioners.hf.HFCaptioner",
)
"""Captioner classes whose presets now name their generation backend (``backend: hf``; ``vllm`` is the other)."""


def new_overrides(old: list[str]) -> list[str]:
    out: list[str] = []
    for o in old:
        out.extend(REPLACED.get(o, [RENAMED.get(o, o)]))
    return out


def new_key(key: str) -> str:
    """The key's name now: the entry points' table of renamed keys (``RENAMED``, which refuses the old ones)."""
    return renamed(key) or key


def new_value(key: str, value: Any) -> Any:
    """A ``_target_`` / ``class_path`` value names the class where it lives now (``clipforge.utils.moved``)."""
    if key.rsplit(".", 1)[-1] in ("_target_", "class_path") and isinstance(value, str):
        return upgrade_targets({"_target_": value})["_target_"]
    return value


def expected(config: dict[str, Any], tiny: bool) -> dict[str, Any]:
    """The golden ``config`` under the new names, with the deliberate changes of a ``tiny`` overlay applied."""
    out = {new_key(k): new_value(k, v) for k, v in config.items()}
    if out.get("callbacks.zero_shot.name") == "demo":  # named for what it classifies: the embedded photos
        out["callbacks.zero_shot.name"] = "embedded_photos"
    if (
        "callbacks.param_report._target_" in out
    ):  # callbacks/default.yaml now also holds the quieter model summary
        out.update(MODEL_SUMMARY)
    if tiny and out.get("task_name") == "generate":
        out.update(TINY_BASE_TRAINING)
    if out.get("data._target_") == "clipforge.data.datamodule.ImageTextDataModule":
        out.update(STREAMING)
    for key, value in list(out.items()):
        if key.startswith("model.captioners.") and key.endswith("._target_") and value in BACKEND_CAPTIONERS:
            out[key.removesuffix("_target_") + "backend"] = "hf"
    if out.get("model._target_") == "clipforge.tasks.recap.generator.CaptionGeneratorModule":
        out["model.backend"] = None  # one engine for every captioner of the job (null = each preset's)
    return out


def _id(row: dict) -> str:
    return f"{row['primary']}:{','.join(row['overrides'])}"


CASES = [r for r in ROWS if "primary" in r]


@pytest.mark.parametrize("row", CASES, ids=[_id(r) for r in CASES])
def test_composes_to_the_same_values_as_before(row):
    now = resolve_case(row["primary"], new_overrides(row["overrides"]))
    tiny = any(o.startswith("debug=tiny_") for o in row["overrides"])
    assert now == expected(row["config"], tiny)


def expected_job(preset: str, job: str, config: dict[str, Any]) -> dict[str, Any]:
    """``expected`` of a pipeline job. The tiny preset's scoring job no longer clears its overlay's spec
    (``++model.spec=null``): the model folder the pipeline hands it wins over the spec, which the job config now
    carries as the standalone tiny overlay composes it."""
    out = expected(config, preset == "tiny")
    if (preset, job) == ("tiny", "enhance/score"):
        assert out.pop("model.spec") is None and out["model.model_path"].endswith("/aitqe")
        tiny = next(
            r
            for r in CASES
            if _id(r) == "generate:experiment=enhance_score_demo,debug=tiny_enhance_score_demo"
        )
        out.update({k: v for k, v in tiny["config"].items() if k.startswith("model.spec.")})
    return out


@pytest.mark.parametrize("preset", sorted({r["preset"] for r in ROWS if "preset" in r}))
def test_pipeline_preset_jobs_compose_to_the_same_values_as_before(preset):
    before = {
        r["job"]: expected_job(preset, r["job"], r["config"]) for r in ROWS if r.get("preset") == preset
    }
    now = preset_jobs(preset)
    assert sorted(now) == sorted(before)
    for name in before:
        assert now[name] == before[name], name


def test_every_experiment_overlay_and_ablation_file_is_compared():
    """A file of the tree that no snapshot case composes (a new one) needs a new snapshot."""
    used = {o for r in CASES for o in new_overrides(r["overrides"])}
    for name in configs("debug"):  # a base overlay is compared through the overlays on top of it
        defaults = yaml.safe_load((CONF / "debug" / f"{name}.yaml").read_text()).get("defaults") or []
        used |= {f"debug={d}" for d in defaults if isinstance(d, str) and not d.startswith("_")}
    for group in ("experiment", "debug"):
        for name in configs(group):
            assert f"{group}={name}" in used, name
    for path in sorted((CONF / "ablation").glob("*/*.yaml")):
        if path.stem != "none":
            assert f"ablation/{path.parent.name}={path.stem}" in used, path


def test_every_replaced_ablation_file_is_a_row_of_a_sweep():
    """The one-number ablation files became sweeps over their key: each one's overrides are a job of a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def parsed(overrides) -> set:
        return {(o.key_or_group, repr(o.value())) for o in map(parser.parse_override, overrides)}

    rows = [parsed(row) for path in (CONF / "sweep").rglob("*.yaml") for row in sweep_rows(path)]
    for old, new in REPLACED.items():
        assert any(parsed(new) <= row for row in rows), old


@pytest.mark.parametrize("old", sorted(RENAMED_CONFIGS))
def test_a_renamed_config_stops_with_one_line_naming_the_new_one(old, tmp_path):
    from clipforge.cli.validate import ConfigValueError, validate_config
    from clipforge.utils.hydra import compose

    with pytest.raises(ConfigValueError) as info:
        validate_config(compose([old], "train", output_dir=str(tmp_path)), "train")
    assert str(info.value) == f"{old}: renamed; use {RENAMED_CONFIGS[old]}"
    group, name = old.split("=")
    assert name not in configs(group) and (CONF / group / f"{name}.yaml").exists()
    assert RENAMED_CONFIGS[old].split("=")[1] in configs(group)
