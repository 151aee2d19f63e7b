"""Bad configuration gets one line naming the key, its value and what it takes, before any model or data loads.

Most cases compose with the compose API and run the validation the entry points run; a few run the real console
scripts and check exit code 2, a single stderr line, and that neither torch nor a run file was touched. Every shipped
experiment (with its tiny overlay) passes, so the validation has no false positives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.cli.validate import ConfigValueError, validate_config
from clipforge.data.errors import DataConfigError
from clipforge.utils.hydra import compose
from tests.helpers.configs import experiments, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["experiment=clip_demo", "debug=tiny_clip"]
GENERATE = ["experiment=llm2clip_embed_demo", "debug=tiny_llm2clip_embed_demo"]
STAGE = {"train": "train", "eval": "evaluate", "generate": "generate"}

CASES = [
    # (primary, overrides, the one line)
    ("train", ["data.batch_size=abc"], "data.batch_size=abc: expected a positive integer"),
    ("train", ["data.batch_size=0"], "data.batch_size=0: expected a positive integer"),
    ("train", ["data.batch_size=-4"], "data.batch_size=-4: expected a positive integer"),
    ("train", ["data.batch_size=2.5"], "data.batch_size=2.5: expected a positive integer"),
    ("train", ["data.batch_size=true"], "data.batch_size=true: expected a positive integer"),
    ("train", ["++data.eval_batch_size=0"], "data.eval_batch_size=0: expected a positive integer or null"),
    ("train", ["data.num_workers=-1"], "data.num_workers=-1: expected an integer >= 0"),
    ("generate", ["data.predict_shard_rows=-3"], "data.predict_shard_rows=-3: expected a positive integer"),
    ("generate", ["data.predict_shard_rows=0"], "data.predict_shard_rows=0: expected a positive integer"),
    ("train", ["data.holdout_fraction=1.5"], "data.holdout_fraction=1.5: expected a fraction in [0, 1)"),
    ("train", ["data.holdout_fraction=1.0"], "data.holdout_fraction=1.0: expected a fraction in [0, 1)"),
    ("train", ["data.holdout_fraction=-0.1"], "data.holdout_fraction=-0.1: expected a fraction in [0, 1)"),
    (
        "train",
        ["++data.train.val_fraction=1.5"],
        "data.train.val_fraction=1.5: expected a probability in [0, 1]",
    ),
    (
        "train",
        ["data.caption_policy.rewrite_ratio=2"],
        "data.caption_policy.rewrite_ratio=2: expected a probability in [0, 1] or null",
    ),
    (
        "train",
        ["data.caption_policy.remove_ratio=1.0"],
        "data.caption_policy.remove_ratio=1.0: expected a fraction in [0, 1)",
    ),
    (
        "train",
        ["data.caption_policy.sampling=bogus"],
        "data.caption_policy.sampling=bogus: expected one of random_one, first, raw_only, ext_only, all_pairs, "
        "multi_positive",
    ),
    (
        "train",
        ["data.caption_policy.source_weights={raw: 1, dense: -0.5}"],
        "data.caption_policy.source_weights.dense=-0.5: expected a number >= 0",
    ),
    (
        "train",
        ["data.caption_policy.captions_per_image=0"],
        "data.caption_policy.captions_per_image=0: expected a positive integer",
    ),
    # keys that moved under data.caption_policy (an own config file, or a `+` override, still setting them)
    (
        "train",
        ["+data.caption_sampling=all_pairs"],
        "data.caption_sampling=all_pairs: renamed; use data.caption_policy.sampling=all_pairs",
    ),
    (
        "train",
        ["+data.rewrite_ratio=0.5"],
        "data.rewrite_ratio=0.5: renamed; use data.caption_policy.rewrite_ratio=0.5",
    ),
    (
        "train",
        ["+data.caption_source_weights={raw: 0.5, dense: 0.5}"],
        "data.caption_source_weights.raw=0.5: renamed; use data.caption_policy.source_weights.raw=0.5",
    ),
    (
        "train",
        ["+data.shear.unit=words"],
        "data.shear.unit=words: renamed; use data.caption_policy.shear.unit=words",
    ),
    (
        "train",
        ["++data.train.format=xml"],
        "data.train.format=xml: expected one of auto, json, jsonl, parquet, coco, karpathy, wds, hf, demo, "
        "synthetic",
    ),
    ("train", ["+data.train.split=test"], "data.train.split=test: expected one of null, train, val"),
    ("train", ["data.train.limit=0"], "data.train.limit=0: expected a positive integer or null"),
    (
        "train",
        ["data/shear=tokens", "data.caption_policy.shear.unit=letters"],
        "data.caption_policy.shear.unit=letters: expected one of tokens, words, fixed, first_sentence, none",
    ),
    ("train", ["seed=notanint"], "seed=notanint: expected an integer or null"),
    ("train", ["seed=1.5"], "seed=1.5: expected an integer or null"),
    ("train", ["evaluate=maybe"], "evaluate=maybe: expected true or false"),
    ("train", ["model.optimizer.lr=-1"], "model.optimizer.lr=-1: expected a positive number"),
    ("train", ["model.optimizer.lr=0"], "model.optimizer.lr=0: expected a positive number"),
    ("train", ["model.optimizer.lr=abc"], "model.optimizer.lr=abc: expected a positive number"),
    ("train", ["model.optimizer.lr=nan"], "model.optimizer.lr=nan: expected a positive number"),
    (
        "train",
        ["model.optimizer.weight_decay=-0.1"],
        "model.optimizer.weight_decay=-0.1: expected a number >= 0",
    ),
    (
        "train",
        ["model.optimizer.betas=[0.9,1.5]"],
        "model.optimizer.betas=[0.9, 1.5]: expected two numbers in [0, 1)",
    ),
    ("train", ["model.embed_dim=0"], "model.embed_dim=0: expected a positive integer"),
    (
        "train",
        ["ckpt_path=/nonexistent"],
        "ckpt_path=/nonexistent: expected an existing checkpoint file, last, best or null",
    ),
    ("eval", [], "ckpt_path=???: expected a value (required; set ckpt_path=...)"),
    (
        "train",
        ["trainer.max_epochs=-2"],
        "trainer.max_epochs=-2: expected an integer >= -1 (-1: no limit) or null",
    ),
    (
        "train",
        ["trainer.devices=0"],
        "trainer.devices=0: expected a positive integer, -1 (all), auto, or a list of device indices",
    ),
    (
        "train",
        ["trainer.accelerator=gpus"],
        "trainer.accelerator=gpus: expected one of auto, cpu, gpu, cuda, mps, tpu",
    ),
    (
        "train",
        ["+trainer.precision=17"],
        "trainer.precision=17: expected one of 64, 32, 16, bf16, 16-mixed, bf16-mixed, 16-true, bf16-true, "
        "32-true, 64-true or null",
    ),
    (
        "train",
        ["trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches=1.5: expected a number of batches (integer >= 0) or a fraction in [0, 1] "
        "or null",
    ),
    (
        "train",
        ["trainer.log_every_n_steps=0"],
        "trainer.log_every_n_steps=0: expected a positive integer or null",
    ),
    (
        "train",
        ["+trainer.accumulate_grad_batches=0"],
        "trainer.accumulate_grad_batches=0: expected a positive integer",
    ),
    (
        "train",
        ["callbacks.last_checkpoint.save_top_k=-2"],
        "callbacks.last_checkpoint.save_top_k=-2: expected an integer >= -1 (-1: no limit)",
    ),
    (
        "train",
        ["callbacks.model_checkpoint.mode=maximum"],
        "callbacks.model_checkpoint.mode=maximum: expected one of min, max",
    ),
    (
        "generate",
        ["callbacks.shard_writer.format=csv"],
        "callbacks.shard_writer.format=csv: expected one of jsonl, parquet, pt",
    ),
    (
        "generate",
        ["callbacks.shard_writer.dtype=float8"],
        "callbacks.shard_writer.dtype=float8: expected one of float32, float16, bfloat16",
    ),
    ("generate", ["model.micro_batch_size=0"], "model.micro_batch_size=0: expected a positive integer"),
    (
        "train",
        ["experiment=llm2clip_s2_demo", "debug=tiny_llm2clip_s2_demo", "model.text_source=both"],
        "model.text_source=both: expected one of cache, online",
    ),
    (
        "train",
        ["experiment=llm2clip_s2_demo", "debug=tiny_llm2clip_s2_demo", "model.layer_decay=0"],
        "model.layer_decay=0: expected a number in (0, 1]",
    ),
    (
        "train",
        ["data.batch_size=${nope}"],
        "data.batch_size: cannot resolve: Interpolation key 'nope' not found",
    ),
]


def _compose(primary: str, overrides: list[str], tmp_path) -> object:
    base = GENERATE if primary == "generate" else TRAIN
    if overrides and overrides[0].startswith("experiment="):
        base = []
    return compose([*base, *overrides], primary, output_dir=str(tmp_path))


def _message(primary: str, overrides: list[str], tmp_path) -> str:
    with pytest.raises((ConfigValueError, DataConfigError)) as info:
        validate_config(_compose(primary, overrides, tmp_path), STAGE[primary])
    return str(info.value)


@pytest.mark.parametrize(("primary", "overrides", "line"), CASES, ids=[" ".join(c[1]) or c[0] for c in CASES])
def test_wrong_value_is_one_line_naming_the_key(primary, overrides, line, tmp_path):
    message = _message(primary, overrides, tmp_path)
    assert message == line
    assert "\n" not in message


def test_checkpoint_path_that_is_a_folder(tmp_path):
    assert _message("train", [f"ckpt_path={tmp_path}"], tmp_path) == (
        f"ckpt_path={tmp_path}: expected an existing checkpoint file, last, best or null"
    )


def test_missing_data_files_of_the_stage_are_reported_before_anything_is_built(tmp_path):
    """The data layer's own message, for the splits the stage reads; another stage's missing source is fine."""
    missing = "/nonexistent/captions.json"
    assert (
        _message("train", [f"data.train.path={missing}"], tmp_path)
        == f"data.train.path: no such file: {missing}"
    )
    assert (
        _message("train", [f"data.val.path={missing}"], tmp_path) == f"data.val.path: no such file: {missing}"
    )
    assert _message("generate", [f"data.predict.path={missing}"], tmp_path) == (
        f"data.predict.path: no such file: {missing}"
    )
    assert _message("train", [f"data.train.image_root={tmp_path / 'nope'}"], tmp_path) == (
        f"data.train.image_root: no such folder: {tmp_path / 'nope'}"
    )
    # generate reads only data.predict; train never reads it
    validate_config(_compose("generate", [f"data.train.path={missing}"], tmp_path), "generate")
    validate_config(_compose("train", [f"data.predict.path={missing}"], tmp_path), "train")
    # eval reads the test set when one is given, so a missing training file does not matter then
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    evaluate = [f"ckpt_path={ckpt}", "data.test.path=synthetic", f"data.train.path={missing}"]
    validate_config(_compose("eval", evaluate, tmp_path), "evaluate")


def test_allowed_edge_values_pass(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    for overrides in (
        ["seed=null", "data.holdout_fraction=0", "++data.eval_batch_size=null", "trainer.max_epochs=-1"],
        [f"ckpt_path={ckpt}", "trainer.devices=auto", "trainer.limit_train_batches=0.5"],
        [
            "ckpt_path=last",
            "trainer.devices=[0]",
            "+trainer.precision=bf16-mixed",
            "trainer.accelerator=auto",
        ],
        ["trainer.devices=-1", "+trainer.precision=16", "data.train.limit=null"],
    ):
        validate_config(_compose("train", overrides, tmp_path), "train")


@pytest.mark.parametrize("primary", ["eval", "generate"])
@pytest.mark.parametrize("experiment", experiments())
def test_every_tiny_experiment_passes(primary, experiment, tmp_path):
    """No false positives: every experiment's tiny overlay under eval and generate (under train, with every
    ablation and sweep value, tests/configs/test_configs.py validates them; it also checks the values of every
    full-size composition)."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    extra = [f"ckpt_path={ckpt}"] if primary == "eval" else []
    validate_config(compose([*tiny_overrides(experiment), *extra], primary, str(tmp_path)), STAGE[primary])


def test_constants_repeated_for_speed_equal_the_ones_they_mirror():
    """The validation lists the choices itself (no torch import); they must stay those of the components."""
    import typing

    from lightning.fabric import connector
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from clipforge.cli import validate
    from clipforge.data.dataset import CAPTION_SAMPLING
    from clipforge.data.shards import FORMATS
    from clipforge.data.shear import UNITS
    from clipforge.data.specs import FORMATS as DATA_FORMATS
    from clipforge.tasks.llm2clip.clip import TEXT_SOURCES

    assert validate.CAPTION_SAMPLING == CAPTION_SAMPLING
    assert validate.SHEAR_UNITS == UNITS
    assert validate.DATA_FORMATS == DATA_FORMATS
    assert validate.TEXT_SOURCES == TEXT_SOURCES
    assert validate.SHARD_FORMATS == tuple(FORMATS)
    assert set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"} <= set(validate.ACCELERATORS)
    lightning_precisions = {
        *typing.get_args(connector._PRECISION_INPUT_INT),
        *typing.get_args(connector._PRECISION_INPUT_STR),
        *typing.get_args(connector._PRECISION_INPUT_STR_ALIAS),
    }
    assert set(validate.PRECISIONS) == lightning_precisions


def test_datamodule_refuses_a_shard_size_that_would_write_no_rows():
    """Built directly (notebooks, LightningCLI), a non-positive shard size used to plan zero shards: no rows."""
    from clipforge.data.datamodule import ImageTextDataModule

    for rows in (-3, 0):
        with pytest.raises(ValueError, match=f"predict_shard_rows={rows} must be a positive integer"):
            ImageTextDataModule(predict={"path": "synthetic", "limit": 4}, predict_shard_rows=rows)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        ImageTextDataModule(batch_size=0)


# -- the console scripts ----------------------------------------------------------------------------------------
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('heavy modules:', sorted({'lightning', 'transformers', 'timm'} & set(sys.modules))))\n"
    "from clipforge.cli.MODULE import ENTRY\n"
    "sys.argv[0] = 'clipforge-NAME'\n"
    "ENTRY()\n"
)
SCRIPTS = {"train": ("train", "main"), "eval": ("eval", "main"), "generate": ("generate", "main")}


def _run_script(name: str, overrides: list[str], tmp_path) -> subprocess.CompletedProcess:
    module, entry = SCRIPTS[name]
    code = PROBE.replace("MODULE", module).replace("ENTRY", entry).replace("NAME", name)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "CLIPFORGE_LOG_DIR": str(tmp_path / "logs"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", code, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "overrides", "line"),
    [
        ("train", [*TRAIN, "data.batch_size=-4"], "error: data.batch_size=-4: expected a positive integer"),
        (
            "train",
            [*TRAIN, "ckpt_path=/nonexistent"],
            "error: ckpt_path=/nonexistent: expected an existing checkpoint file, last, best or null",
        ),
        ("eval", TRAIN, "error: ckpt_path=???: expected a value (required; set ckpt_path=...)"),
        (
            "generate",
            [*GENERATE, "data.predict_shard_rows=-3"],
            "error: data.predict_shard_rows=-3: expected a positive integer",
        ),
        (
            "generate",
            [*GENERATE, "data.predict.path=/nonexistent/captions.json"],
            "error: data.predict.path: no such file: /nonexistent/captions.json",
        ),
        (
            "train",
            ["experiment=demo_clip"],
            "error: experiment=demo_clip: renamed; use experiment=clip_demo",
        ),
        (
            "train",
            [*TRAIN, "+data.caption_sampling=all_pairs"],
            "error: data.caption_sampling=all_pairs: renamed; use data.caption_policy.sampling=all_pairs",
        ),
    ],
    ids=[
        "train-batch-size",
        "train-ckpt-path",
        "eval-no-ckpt",
        "generate-shard-rows",
        "generate-missing-file",
        "train-renamed-experiment",
        "train-renamed-key",
    ],
)
def test_console_script_exits_2_with_one_line_before_loading_anything(name, overrides, line, tmp_path):
    r = _run_script(name, overrides, tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == [line]
    assert (
        "heavy modules: []" in r.stdout
    )  # neither Lightning nor a model library was imported: no model, no data
    assert not (tmp_path / "run" / "config.yaml").exists()  # the task's run files were never written


def test_console_script_runs_a_valid_config(tmp_path):
    """The same probe on a valid tiny run: Lightning is imported then, the job finishes (the probe is honest)."""
    valid = [
        *TRAIN,
        "data.predict.path=synthetic",
        "+data.predict.limit=4",
        "callbacks.shard_writer.format=pt",
    ]
    r = _run_script("generate", [*valid, "callbacks.shard_writer.merge_path=null"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "heavy modules: ['lightning'" in r.stdout
    assert (tmp_path / "run" / "summary.json").exists()
