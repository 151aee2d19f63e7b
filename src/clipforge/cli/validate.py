"""Validation of a composed config before anything is built: one line naming the key, its value and what it takes.

Every Hydra entry point (``clipforge train``, ``clipforge eval``, ``clipforge generate``) runs
:func:`validate_config` through :func:`~clipforge.cli.task.task_wrapper` before it writes run files, instantiates a
model or reads data, so a wrong override fails at once with one line and exit code 2::

    error: data.batch_size=-4: expected a positive integer

The rules are a table (:data:`RULES`) of key patterns (``*`` stands for one key segment; list indices are skipped, so
``data.val.val_fraction`` also covers ``data.val[1].val_fraction``) applied to whatever keys the composed config
holds: a pattern that matches no key (another stage's option) is not an error. After the values, the data sources
the stage will read are checked for existence exactly as the data layer checks them when it reads
(:func:`~clipforge.data.specs.check_paths`), so a missing file is reported before a model is loaded, and so is a
logger whose package is not installed (:func:`check_loggers`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

MISSING = "???"


class ConfigValueError(ValueError):
    """A composed config value that no component accepts; the message is one line naming the full key.

    Entry points print it as ``error: <message>`` and exit with code 2 (:func:`~clipforge.cli.task.task_wrapper`).
    """


@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``check(value) -> bool`` and the text after ``expected`` in the error message.

    Attributes:
        check: predicate on the resolved value.
        expected: what the key accepts (``a positive integer``).
    """

    check: Callable[[Any], bool]
    expected: str


def _show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def optional(rule: Rule) -> Rule:
    """``rule`` or ``null``."""
    return Rule(lambda v: v is None or rule.check(v), f"{rule.expected} or null")


def choice(values: Sequence, shown: Sequence | None = None) -> Rule:
    """One of ``values`` (the message lists ``shown``, default ``values``)."""
    return Rule(lambda v: v in values, "one of " + ", ".join(_show(v) for v in (shown or values)))


INT = Rule(_int, "an integer")
POSITIVE_INT = Rule(lambda v: _int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: _int(v) and v >= 0, "an integer >= 0")
INT_OR_MINUS_ONE = Rule(lambda v: _int(v) and v >= -1, "an integer >= -1 (-1: no limit)")
POSITIVE = Rule(lambda v: _number(v) and v > 0, "a positive number")
NON_NEGATIVE = Rule(lambda v: _number(v) and v >= 0, "a number >= 0")
FRACTION = Rule(lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)")
PROBABILITY = Rule(lambda v: _number(v) and 0 <= v <= 1, "a probability in [0, 1]")
UNIT_INTERVAL_OPEN_LEFT = Rule(lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
BETAS = Rule(
    lambda v: isinstance(v, list) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
    "two numbers in [0, 1)",
)
BATCHES = Rule(
    lambda v: (_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
    "a number of batches (integer >= 0) or a fraction in [0, 1]",
)
DTYPE = choice(("float32", "float16", "bfloat16"))
CKPT_KEYWORDS = ("last", "best", "hpc")


def _checkpoint(v: Any) -> bool:
    if not isinstance(v, str) or not v:
        return False
    if v in CKPT_KEYWORDS or v.startswith("registry") or "://" in v:  # Lightning's keywords, remote files
        return True
    return os.path.isfile(os.path.expanduser(v))


CHECKPOINT = Rule(_checkpoint, "an existing checkpoint file, last, best")
EXISTING_PATH = Rule(
    lambda v: isinstance(v, str) and os.path.exists(os.path.expanduser(v)), "an existing file or folder"
)


def _devices(v: Any) -> bool:
    if _int(v):
        return v == -1 or v > 0
    if isinstance(v, list):
        return bool(v) and all(_int(d) and d >= 0 for d in v)
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",") if p.strip()]
        return v == "auto" or (bool(parts) and all(p.lstrip("-").isdigit() for p in parts))
    return False


DEVICES = Rule(_devices, "a positive integer, -1 (all), auto, or a list of device indices")


# Choices of the components, repeated here so that validating needs neither torch nor Lightning (importing them
# takes seconds); tests/faults/test_bad_config.py checks that each equals the constant it mirrors.
CAPTION_SAMPLING = ("random_one", "first", "raw_only", "ext_only", "all_pairs", "multi_positive")
SHEAR_UNITS = ("tokens", "words", "fixed", "first_sentence", "none")
DATA_FORMATS = ("auto", "json", "jsonl", "parquet", "coco", "karpathy", "wds", "hf", "demo", "synthetic")
TEXT_SOURCES = ("cache", "online")
SHARD_FORMATS = ("jsonl", "parquet", "pt")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISION_NAMES = (
    "64",
    "32",
    "16",
    "bf16",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "32-true",
    "64-true",
)
PRECISIONS = (64, 32, 16, *PRECISION_NAMES, "transformer-engine", "transformer-engine-float16")


def _accelerator(v: Any) -> bool:
    if isinstance(v, Mapping) or v in ACCELERATORS:
        return True
    if not isinstance(v, str):
        return False
    from lightning.pytorch.accelerators import AcceleratorRegistry  # only for a name not listed: a plugin's?

    return v in AcceleratorRegistry.available_accelerators()


ACCELERATOR = Rule(_accelerator, choice(ACCELERATORS).expected)

RULES: tuple[tuple[str, Rule], ...] = (
    # -- primary config -------------------------------------------------------------------------------------
    ("seed", optional(INT)),
    ("ckpt_path", optional(CHECKPOINT)),
    ("evaluate", BOOL),
    # -- data (ImageTextDataModule, the caption-group datamodules) and its dataset specs ----------------------
    ("data.batch_size", POSITIVE_INT),
    ("data.eval_batch_size", optional(POSITIVE_INT)),
    ("data.num_workers", NON_NEGATIVE_INT),
    ("data.predict_shard_rows", POSITIVE_INT),
    ("data.holdout_fraction", FRACTION),
    ("data.seed", INT),
    ("data.max_caption_chars", POSITIVE_INT),
    ("data.max_image_pixels", POSITIVE_INT),
    ("data.block_size", POSITIVE_INT),
    ("data.pin_memory", BOOL),
    ("data.persistent_workers", BOOL),
    ("data.drop_last", BOOL),
    ("data.caption_policy.sampling", choice(CAPTION_SAMPLING)),
    ("data.caption_policy.rewrite_ratio", optional(PROBABILITY)),
    ("data.caption_policy.remove_ratio", FRACTION),
    ("data.caption_policy.captions_per_image", POSITIVE_INT),
    ("data.caption_policy.source_weights.*", NON_NEGATIVE),
    ("data.caption_policy.shear.unit", choice(SHEAR_UNITS)),
    ("data.caption_policy.shear.min_len", NON_NEGATIVE_INT),
    ("data.caption_policy.shear.fixed_len", POSITIVE_INT),
    ("data.*.format", choice(DATA_FORMATS)),
    ("data.*.split", choice((None, "train", "val"))),
    ("data.*.val_fraction", PROBABILITY),
    ("data.*.split_seed", INT),
    ("data.*.limit", optional(POSITIVE_INT)),
    ("data.*.text_only", BOOL),
    # -- model --------------------------------------------------------------------------------------------------
    ("model.optimizer.lr", POSITIVE),
    ("model.optimizer.weight_decay", NON_NEGATIVE),
    ("model.optimizer.eps", POSITIVE),
    ("model.optimizer.momentum", NON_NEGATIVE),
    ("model.optimizer.betas", BETAS),
    ("model.scheduler.warmup_steps", NON_NEGATIVE_INT),
    ("model.scheduler.min_lr_ratio", PROBABILITY),
    ("model.embed_dim", POSITIVE_INT),
    ("model.layer_decay", UNIT_INTERVAL_OPEN_LEFT),
    ("model.mask_probability", FRACTION),
    ("model.max_length", POSITIVE_INT),
    ("model.max_new_tokens", POSITIVE_INT),
    ("model.chunk_size", POSITIVE_INT),
    ("model.micro_batch_size", POSITIVE_INT),
    ("model.vision_chunk_size", POSITIVE_INT),
    ("model.dtype", optional(DTYPE)),
    ("model.text_source", choice(TEXT_SOURCES)),
    ("model.init_from", optional(EXISTING_PATH)),
    ("model.lora.r", POSITIVE_INT),
    ("model.lora.alpha", POSITIVE),
    ("model.lora.dropout", FRACTION),
    ("model.formatter.neg_prob", PROBABILITY),
    ("model.teacher.max_retries", NON_NEGATIVE_INT),
    ("model.teacher.timeout_s", POSITIVE),
    ("model.captioners.*.batch_size", POSITIVE_INT),
    ("model.captioners.*.top_k", POSITIVE_INT),
    ("model.captioners.*.decoding.max_new_tokens", POSITIVE_INT),
    ("model.*.max_length", POSITIVE_INT),
    # -- trainer ------------------------------------------------------------------------------------------------
    ("trainer.accelerator", ACCELERATOR),
    ("trainer.devices", DEVICES),
    ("trainer.num_nodes", POSITIVE_INT),
    ("trainer.precision", optional(choice(PRECISIONS, PRECISION_NAMES))),
    ("trainer.max_epochs", optional(INT_OR_MINUS_ONE)),
    ("trainer.min_epochs", optional(NON_NEGATIVE_INT)),
    ("trainer.max_steps", INT_OR_MINUS_ONE),
    ("trainer.min_steps", optional(NON_NEGATIVE_INT)),
    ("trainer.limit_train_batches", optional(BATCHES)),
    ("trainer.limit_val_batches", optional(BATCHES)),
    ("trainer.limit_test_batches", optional(BATCHES)),
    ("trainer.limit_predict_batches", optional(BATCHES)),
    ("trainer.log_every_n_steps", optional(POSITIVE_INT)),
    ("trainer.accumulate_grad_batches", POSITIVE_INT),
    ("trainer.num_sanity_val_steps", optional(INT_OR_MINUS_ONE)),
    ("trainer.check_val_every_n_epoch", optional(POSITIVE_INT)),
    ("trainer.gradient_clip_val", optional(NON_NEGATIVE)),
    # -- callbacks ----------------------------------------------------------------------------------------------
    ("callbacks.shard_writer.format", choice(SHARD_FORMATS)),
    ("callbacks.shard_writer.dtype", DTYPE),
    ("callbacks.zero_shot.every_n_epochs", POSITIVE_INT),
    ("callbacks.*.save_top_k", INT_OR_MINUS_ONE),
    ("callbacks.*.mode", choice(("min", "max"))),
    ("callbacks.*.patience", NON_NEGATIVE_INT),
)
"""``(key pattern, rule)``; every rule whose pattern matches a key must accept its value."""

RENAMED: dict[str, str] = {
    "data.caption_sampling": "data.caption_policy.sampling",
    "data.caption_sources": "data.caption_policy.sources",
    "data.caption_source_weights": "data.caption_policy.source_weights",
    "data.eval_caption_sources": "data.caption_policy.eval_sources",
    "data.rewrite_ratio": "data.caption_policy.rewrite_ratio",
    "data.remove_ratio": "data.caption_policy.remove_ratio",
    "data.captions_per_image": "data.caption_policy.captions_per_image",
    "data.shear": "data.caption_policy.shear",
    "aitqe": "enhance",  # enhance's own keys (enhance.train.*, enhance.apply.*): one slug per stage
}
"""Old key -> new key (a key under an old one moves with it). A config that still sets an old key (an own
experiment file, a ``+key=`` override) fails with one line naming the new key instead of reaching a constructor
that no longer takes it."""

RENAMED_CONFIGS: dict[str, str] = {
    "experiment=demo_clip": "experiment=clip_demo",
    "experiment=enhance_demo_train": "experiment=enhance_train_demo",
    "experiment=llm2clip_demo": "experiment=llm2clip_s2_demo",
    "debug=tiny_enhance_demo_train": "debug=tiny_enhance_train_demo",
    "debug=tiny_llm2clip_demo": "debug=tiny_llm2clip_s2_demo",
}
"""Old config choice -> new one (experiments are named ``<stage>_<what>``). The old name is a stub file that sets
only ``renamed: <old choice>``, so composing it stops at validation with one line naming the new choice."""

STAGE_SPLITS = {"train": ("train", "val", "test"), "evaluate": ("val", "test"), "generate": ("predict",)}
"""The data splits each entry point's task reads (``evaluate`` reads ``test`` if set, else ``val`` / held-out)."""


def _leaves(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, value)`` of every leaf; a path holds key names and list indices; lists of scalars are leaves."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(node, list) and any(isinstance(v, Mapping | list) for v in node):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _matches(pattern: str, path: tuple) -> bool:
    names = [p for p in path if not isinstance(p, int)]
    parts = pattern.split(".")
    return len(parts) == len(names) and all(p in ("*", n) for p, n in zip(parts, names))


def _job(cfg: DictConfig) -> dict:
    """The job config (no ``hydra`` node) as a resolved container; missing values stay ``???``."""
    keys = [k for k in cfg if k != "hydra"]
    job = OmegaConf.masked_copy(cfg, keys) if "hydra" in cfg else cfg.copy()
    try:
        return OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        message = str(e.msg or e).splitlines()[0]
        raise ConfigValueError(f"{e.full_key or 'config'}: cannot resolve: {message}") from None


def renamed(key: str, table: Mapping[str, str] = RENAMED) -> str | None:
    """The new name of ``key`` when it is, or lies under, a renamed key of ``table``; else ``None``."""
    for old, new in table.items():
        if key == old or key.startswith((old + ".", old + "[")):
            return new + key[len(old) :]
    return None


def check_renamed_configs(job: Mapping) -> None:
    """Raise :class:`ConfigValueError` when the job composed a renamed config's stub (its ``renamed`` key).

    Raises:
        ConfigValueError: ``<old choice>: renamed; use <new choice>`` (``experiment=demo_clip: renamed; use
            experiment=clip_demo``).
    """
    old = job.get("renamed")
    if old is not None:
        new = RENAMED_CONFIGS.get(str(old))
        raise ConfigValueError(
            f"{old}: renamed; use {new}" if new else f"{old}: renamed (README, Config names)"
        )


def check_values(job: Mapping, rules: Sequence[tuple[str, Rule]] = RULES, missing_ok: bool = False) -> None:
    """Raise :class:`ConfigValueError` for the first value (in config order) that a matching rule rejects.

    Args:
        job: resolved job config as plain containers.
        rules: ``(pattern, rule)`` table (default :data:`RULES`).
        missing_ok: skip required values left unset (``???``: a config checked before the user fills them in).

    Raises:
        ConfigValueError: ``<key>=<value>: expected <what the rule accepts>``, ``<key>=???: ...`` for a
            required value left unset, or ``<key>=<value>: renamed; use <new key>=<value>`` for a key of
            :data:`RENAMED`.
    """
    for path, value in _leaves(job):
        key = _dotted(path)
        new = renamed(key)
        if new is not None:
            raise ConfigValueError(f"{key}={_show(value)}: renamed; use {new}={_show(value)}")
        if value == MISSING:
            if missing_ok:
                continue
            raise ConfigValueError(f"{key}=???: expected a value (required; set {key}=...)")
        for pattern, rule in rules:
            if _matches(pattern, path) and not rule.check(value):
                raise ConfigValueError(f"{key}={_show(value)}: expected {rule.expected}")


def _specs(node: Any, where: str) -> list[tuple[str, Any]]:
    from clipforge.data.specs import as_spec, is_empty_slot

    items = node if isinstance(node, list) else [node]
    out = []
    for i, item in enumerate(items):
        name = f"{where}[{i}]" if isinstance(node, list) else where
        if isinstance(item, Mapping):
            try:
                spec = as_spec({k: v for k, v in item.items() if not str(k).startswith("_")})
            except (TypeError, ValueError) as e:
                raise ConfigValueError(f"{name}: {e}") from None
            if not is_empty_slot(spec):
                out.append((name, spec))
    return out


def check_sources(job: Mapping, stage: str) -> None:
    """Raise :class:`~clipforge.data.errors.DataConfigError` if a data source ``stage`` reads does not exist.

    The same check, with the same message, as the data layer's when it reads (``data.train.path: no such file:
    /x.json``), done before the model is built. Splits follow the datamodule: ``train`` reads ``train`` and ``val``
    (and ``test`` when set and ``evaluate`` is on); ``evaluate`` reads ``test`` when set, else ``val``, else the
    held-out part of ``train``; ``generate`` reads ``predict``.

    Args:
        job: resolved job config as plain containers.
        stage: ``train``, ``evaluate`` or ``generate``; any other name checks nothing.
    """
    from clipforge.data.specs import check_paths

    data = job.get("data")
    if not isinstance(data, Mapping) or stage not in STAGE_SPLITS:
        return
    specs = {split: _specs(data.get(split), f"data.{split}") for split in ("train", "val", "test", "predict")}
    if stage == "train":
        splits = ["train", "val"] + (["test"] if job.get("evaluate", True) else [])
    elif stage == "evaluate":
        splits = ["test"] if specs["test"] else ["val"] if specs["val"] else ["train"]
    else:
        splits = ["predict"]
    for split in splits:
        for where, spec in specs[split]:
            check_paths(spec, where)


LOGGER_PACKAGES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb",),
    "lightning.pytorch.loggers.wandb.WandbLogger": ("wandb",),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow",),
    "lightning.pytorch.loggers.mlflow.MLFlowLogger": ("mlflow",),
    "lightning.pytorch.loggers.CometLogger": ("comet_ml",),
    "lightning.pytorch.loggers.comet.CometLogger": ("comet_ml",),
    "lightning.pytorch.loggers.NeptuneLogger": ("neptune",),
    "lightning.pytorch.loggers.neptune.NeptuneLogger": ("neptune",),
}
"""Lightning loggers -> the packages that provide them (any one of them); Lightning imports them only when the
logger is built, i.e. after the model and the data."""


def check_loggers(job: Mapping) -> None:
    """Raise :class:`ConfigValueError` for a logger of ``job["logger"]`` whose package is not installed.

    Looked up with :func:`importlib.util.find_spec` (nothing is imported), so ``logger=tensorboard`` without
    TensorBoard fails here with the install line instead of after the model and data are built.
    """
    import importlib.util

    loggers = job.get("logger")
    if not isinstance(loggers, Mapping):
        return
    for name, node in loggers.items():
        target = node.get("_target_") if isinstance(node, Mapping) else None
        packages = LOGGER_PACKAGES.get(target, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ConfigValueError(
                f"logger.{name}: {target.rsplit('.', 1)[-1]} needs the {packages[0]} package: "
                f"pip install {packages[0]} (the dev extra has tensorboard and wandb: make setup)"
            )


def validate_config(cfg: DictConfig, stage: str | None = None) -> None:
    """Check a composed config before anything is instantiated (see the module docstring).

    Args:
        cfg: the composed config (with or without its ``hydra`` node).
        stage: the task about to run (``train``, ``evaluate``, ``generate``): which data sources must exist;
            ``None`` checks values only.

    Raises:
        ConfigValueError: a value no component accepts, a required value left unset, an interpolation that does not
            resolve, a logger whose package is not installed.
        DataConfigError: a data source the stage reads does not exist.
    """
    job = _job(cfg)
    check_renamed_configs(job)
    check_values(job)
    check_loggers(job)
    if stage is not None:
        check_sources(job, stage)
