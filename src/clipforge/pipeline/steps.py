"""The pipeline's steps as jobs: recap -> enhance -> llm2clip -> train -> eval -> report.

Every job composes its stage's standalone experiment (``pipeline.<step>.experiment``) with the step's own
overrides (``pipeline.<step>.overrides``) and the hand-over overrides written here: the source and held-out split
of the pipeline's ``data`` config, and the paths that earlier jobs wrote. Nothing of a stage's config is copied.

Held-out protocol: with ``pipeline.folds = k >= 2`` every image key is held out by exactly one of ``k`` folds (the
stable key hash of :mod:`clipforge.data.split`); every arm trains once per fold and seed on the other keys and is
scored on the held-out keys' human captions of the source, so all arms see the same images, seeds and budget. The
held-out images are a test set: no checkpoint is chosen on them (the last epoch's weights are evaluated once).
With ``folds: 0`` one split is made by ``data.holdout_fraction`` (or by an explicit ``data.val`` source).

A retrieval captioner captions an image from the captions of similar ones, so under a split it must not be trained
on, nor retrieve, held-out captions: with ``pipeline.recap.retriever.experiment`` set, each split gets a retriever
trained on its training side (``recap/<split>/retriever``, the arms' split overrides) and its own recap job
(``recap/<split>``) whose retrieval captioners read that checkpoint and a datastore of the split's training captions
plus their own entries. Every job that reads a recap table then runs once per split (``<step>/<split>``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from clipforge.pipeline.jobs import Job, override

log = logging.getLogger("clipforge.pipeline")

__all__ = ["ARMS", "STEPS", "Split", "plan_jobs", "source_spec", "splits"]

STEPS = ("recap", "enhance", "llm2clip", "train", "eval", "report")
"""Steps in run order (``pipeline.steps`` selects a subset)."""

ARMS = ("raw", "recap", "enhanced", "llm2clip")
"""Trained arms: raw captions only (the control), raw + recap captions, the enhanced table, llm2clip stage 2."""

SPEC_KEYS = (
    "path",
    "format",
    "image_root",
    "caption_fields",
    "image_field",
    "key_field",
    "sidecars",
    "limit",
)
"""Source fields handed to every job (the rest of a spec is the job's own: split, embeddings, name)."""


HELD_OUT_ONLY_AT_END = 1_000_000
"""``check_val_every_n_epoch`` of the arms: never during training; the entry point evaluates the last weights."""


@dataclass(frozen=True)
class Split:
    """One train / held-out split: ``name`` (``fold0`` ... or ``holdout``) and the spec fields that select it."""

    name: str
    fold: int
    fields: dict = field(default_factory=dict)  # num_folds + fold, or val_fraction + split_seed

    def spec(self, side: str) -> dict:
        return {"split": side, **self.fields}


def source_spec(cfg: DictConfig, which: str = "train") -> dict:
    """The source (``data.train``) or explicit held-out source (``data.val``) fields of the pipeline config."""
    node = OmegaConf.to_container(cfg.data[which], resolve=True) if cfg.data.get(which) else {}
    defaults = {"format": "auto", "sidecars": []}
    return {k: node.get(k, defaults.get(k)) for k in SPEC_KEYS}


def table_spec(path: str, caption_fields: list[str] | None = None) -> dict:
    """Every source field of a JSONL table an earlier job wrote (image paths inside, keys of the source)."""
    return {
        **dict.fromkeys(SPEC_KEYS),
        "path": path,
        "format": "jsonl",
        "caption_fields": caption_fields,
        "sidecars": [],
    }


def has_val_source(cfg: DictConfig) -> bool:
    return bool(cfg.data.get("val") and cfg.data.val.get("path"))


def splits(cfg: DictConfig) -> list[Split]:
    """The held-out splits every arm is trained and scored on (module docstring)."""
    k = int(cfg.pipeline.folds or 0)
    if has_val_source(cfg):
        return [Split("heldout", 0, {})]
    if k >= 2:
        return [Split(f"fold{i}", i, {"num_folds": k, "fold": i}) for i in range(k)]
    frac = float(cfg.data.holdout_fraction)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"pipeline.folds={k} needs data.holdout_fraction in (0, 1), got {frac}")
    return [Split("holdout", 0, {"val_fraction": frac, "split_seed": 0})]


def spec_overrides(prefix: str, fields: Mapping) -> list[str]:
    """``++<prefix>.<field>=<value>`` for each field."""
    return [override(f"{prefix}.{k}", v) for k, v in fields.items()]


def _step(cfg: DictConfig, *path: str) -> DictConfig:
    node = cfg.pipeline
    for p in path:
        node = node[p]
    return node


def _user_overrides(node: DictConfig) -> list[str]:
    return [str(o) for o in (node.get("overrides") or [])]


@dataclass
class Plan:
    """Jobs in run order plus what the eval / report steps need to know about them."""

    jobs: list[Job] = field(default_factory=list)
    arm_runs: dict[str, list[tuple[Split, int, str]]] = field(
        default_factory=dict
    )  # arm -> (split, seed, job)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # job -> expected output files
    captioners: list[str] = field(default_factory=list)
    enhancer: str | None = None
    # the recap / scoring jobs whose tables the lineage shows (the first split's with a per-split retriever)
    recap_job: str | None = None
    score_job: str | None = None
    retriever: str | None = None  # the per-split retriever's experiment (pipeline.recap.retriever)

    def add(self, job: Job, outputs: Mapping[str, str]) -> Job:
        self.jobs.append(job)
        self.outputs[job.name] = dict(outputs)
        return job

    def names(self) -> list[str]:
        return [j.name for j in self.jobs]


def captioner_names(cfg: DictConfig, job: Job) -> list[str]:
    """Caption-column names of the recap job's captioners (slots; ``<name>_<j>`` for several per image)."""
    from hydra.utils import instantiate

    from clipforge.tasks.recap.export import slot_names

    composed = job.compose()
    names: list[str] = []
    for conf in (composed.model.captioners or {}).values():
        if conf is None:
            continue
        name = conf.get("name")
        if name is None:  # a captioner whose name is a property of its class
            name = instantiate(conf).name
        names += slot_names(str(name), int(conf.get("num_captions", 1) or 1))
    return names


def plan_jobs(cfg: DictConfig, run_dir: str) -> Plan:
    """Every job of the selected steps, with its overrides and the jobs it reads from."""
    steps = list(cfg.pipeline.steps)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"pipeline.steps: unknown step(s) {unknown}; choose from {list(STEPS)}")
    arms = [a for a in cfg.pipeline.arms]
    bad_arms = [a for a in arms if a not in ARMS]
    if bad_arms:
        raise ValueError(f"pipeline.arms: unknown arm(s) {bad_arms}; choose from {list(ARMS)}")
    seeds = [int(s) for s in cfg.pipeline.seeds]
    folds = splits(cfg)
    src = source_spec(cfg)
    val_src = source_spec(cfg, "val") if has_val_source(cfg) else src
    step_dir = os.path.join(run_dir, "steps")
    plan = Plan()

    def arm_data(split: Split, train_fields: Mapping, seed: int, zero_shot: bool) -> list[str]:
        ov = [
            *spec_overrides("data.train", {**train_fields, **split.spec("train")}),
            *spec_overrides("data.val", {**val_src, **(split.spec("val") if val_src is src else {})}),
            override("data.val.name", "heldout"),
            override("seed", seed),
            # the held-out images are the test set: no model selection on them, one evaluation of the last epoch
            override("callbacks.model_checkpoint", None),
            override("trainer.check_val_every_n_epoch", HELD_OUT_ONLY_AT_END),
            override("trainer.num_sanity_val_steps", 0),
        ]
        if zero_shot:
            ov.append(override("callbacks.zero_shot.data", {"path": "demo", **split.spec("val")}))
            ov.append(override("callbacks.zero_shot.name", "heldout"))
        else:
            ov.append(override("callbacks.zero_shot", None))
        return ov

    # A retriever per split (pipeline.recap.retriever) makes one recap table per split, and one job per split of
    # every step that reads a table (`<step>/<split>`); without it one table serves every split (unit None). A
    # retriever needs the recap step, so with `units` of splits there are always recap tables.
    retriever = _step(cfg, "recap").get("retriever") or {} if "recap" in steps else {}
    per_split = bool(retriever.get("experiment"))
    units: list[Split | None] = list(folds) if per_split else [None]

    def named(base: str, unit: Split | None) -> str:
        return base if unit is None else f"{base}/{unit.name}"

    def folder(base: str, unit: Split | None) -> str:
        return os.path.join(step_dir, base) if unit is None else os.path.join(step_dir, base, unit.name)

    def key(unit: Split | None) -> str | None:
        return None if unit is None else unit.name

    def unit_of(split: Split) -> str | None:
        return key(split) if per_split else None

    # -- recap: the captioners over every image of the source -> the multi-caption table (one per split with a
    #    retriever: trained on the split's training images, its datastore their captions + the captioner's own) --
    tables: dict[str | None, tuple[str, str]] = {}  # unit -> (recap job, table)
    table_fields = None
    if "recap" in steps:
        node = _step(cfg, "recap")
        base = [*_user_overrides(node), *spec_overrides("data.predict", {**src, "split": None})]
        slots, stores = retriever_slots(node, base, step_dir) if per_split else ([], {})
        for unit in units:
            overrides, after = list(base), []
            if unit is not None:
                train = Job(
                    f"recap/{unit.name}/retriever",
                    "train",
                    str(retriever.experiment),
                    [*_user_overrides(retriever), *arm_data(unit, src, seeds[0], False)],
                    folder("recap_retriever", unit),
                    resume_from_checkpoint=True,
                )
                plan.add(train, {"checkpoint": os.path.join(train.output_dir, "checkpoints", "last.ckpt")})
                store = [{**src, **unit.spec("train")}]  # the split's training images' captions only
                for slot in slots:
                    overrides += [
                        override(f"model.captioners.{slot}.checkpoint", train.output_dir),
                        override(f"model.captioners.{slot}.clip", None),
                        override(f"model.captioners.{slot}.datastore", [*store, *stores[slot]]),
                    ]
                after = [train.name]
            job = Job(
                named("recap", unit), "generate", node.experiment, overrides, folder("recap", unit), after
            )
            table = os.path.join(job.output_dir, "predictions.jsonl")
            plan.add(job, {"table": table, "summary": os.path.join(job.output_dir, "summary.json")})
            tables[key(unit)] = (job.name, table)
        first_recap = tables[key(units[0])][0]
        plan.recap_job = first_recap
        plan.retriever = str(retriever.experiment) if per_split else None
        plan.captioners = captioner_names(cfg, next(j for j in plan.jobs if j.name == first_recap))
        table_fields = ["captions", *plan.captioners]

    # -- enhance: (train an enhancer), score raw + extended captions, apply the policy -----------------------------
    scored: dict[str | None, tuple[str, str]] = {}  # unit -> (scoring job, enhanced table)
    if "enhance" in steps:
        node = _step(cfg, "enhance")
        after: list[str] = []
        enhancer = node.get("model_path")
        if enhancer:
            plan.enhancer = str(enhancer)
        else:
            aligned, train_after = None, []
            # caption alignment of the projector first (align.experiment: null = start from scratch)
            if node.align.get("experiment"):
                align = Job(
                    "enhance/align",
                    "train",
                    node.align.experiment,
                    [*_user_overrides(node.align), *spec_overrides("data.train", src)],
                    os.path.join(step_dir, "enhance_align"),
                    resume_from_checkpoint=True,
                )
                aligned = os.path.join(align.output_dir, "mini_llava")
                plan.add(align, {"export": aligned})
                train_after = [align.name]
            train = Job(
                "enhance/train",
                "train",
                node.train.experiment,
                [
                    *_user_overrides(node.train),
                    *spec_overrides("data.train", src),
                    override("model.init_from", aligned),
                ],
                os.path.join(step_dir, "enhance_train"),
                after=train_after,
                resume_from_checkpoint=True,
            )
            enhancer = os.path.join(train.output_dir, "aitqe")
            plan.add(train, {"export": enhancer})
            plan.enhancer = "trained in pipeline"
            after.append(train.name)
        for unit in units:
            if tables:
                recap_name, table = tables[key(unit)]
                scored_src, score_after = table_spec(table, table_fields), [*after, recap_name]
            else:
                scored_src, score_after = src, after
            score = Job(
                named("enhance/score", unit),
                "generate",
                node.score.experiment,
                [
                    *_user_overrides(node.score),
                    *spec_overrides("data.predict", {**scored_src, "split": None}),
                    override("model.model_path", enhancer),
                ],
                folder("enhance_score", unit),
                after=score_after,
            )
            enhanced = os.path.join(score.output_dir, "enhanced.jsonl")
            plan.add(
                score,
                {
                    "enhanced": enhanced,
                    "scores": os.path.join(score.output_dir, "predictions.jsonl"),
                    "report": os.path.join(score.output_dir, "report.json"),
                },
            )
            scored[key(unit)] = (score.name, enhanced)
        plan.score_job = next(iter(scored.values()))[0]

    zero_shot = src.get("path") == "demo" and bool(cfg.pipeline.eval.get("zero_shot", True))

    def add_arm(arm: str, experiment: str, inputs, prefix: str | None = None) -> None:
        """One training job of ``arm`` per split and seed, each scored on its split's held-out images;
        ``inputs(split)`` = the split's ``(overrides, training source fields, jobs read)``."""
        for split in folds:
            overrides, fields, after = inputs(split)
            for seed in seeds:
                run = f"{split.name}_s{seed}"
                job = Job(
                    f"{prefix or arm}/{run}",
                    "train",
                    experiment,
                    [*overrides, *arm_data(split, fields, seed, zero_shot)],
                    os.path.join(step_dir, *(prefix or arm).split("/"), run),
                    after=after,
                    resume_from_checkpoint=True,
                )
                plan.add(job, {"metrics": os.path.join(job.output_dir, "metrics.json")})
                plan.arm_runs.setdefault(arm, []).append((split, seed, job.name))

    # -- llm2clip: (stage 1 on the final caption groups), the embedding cache, stage 2 per split and seed -------
    if "llm2clip" in steps and "llm2clip" in arms:
        node = _step(cfg, "llm2clip")
        embedded: dict[
            str | None, tuple[str, str, list[str], dict]
        ] = {}  # unit -> (encoder, shards, after, final)
        for unit in units:
            if scored:
                final, upstream = table_spec(scored[key(unit)][1]), [scored[key(unit)][0]]
            elif tables:
                final, upstream = table_spec(tables[key(unit)][1], table_fields), [tables[key(unit)][0]]
            else:
                final, upstream = src, []
            encoder = str(node.encoder)
            after = list(upstream)
            if node.stage1.get("enabled"):
                s1 = Job(
                    named("llm2clip/stage1", unit),
                    "train",
                    node.stage1.experiment,
                    [
                        *_user_overrides(node.stage1),
                        *spec_overrides("data.train", {**final, "text_only": True}),
                        override("model.llm_encoder.name_or_path", encoder),
                    ],
                    folder("llm2clip_stage1", unit),
                    after=upstream,
                    resume_from_checkpoint=True,
                )
                encoder = os.path.join(s1.output_dir, "encoder")
                plan.add(s1, {"encoder": encoder})
                after = [s1.name]
            embed = Job(
                named("llm2clip/embed", unit),
                "generate",
                node.embed.experiment,
                [
                    *_user_overrides(node.embed),
                    *spec_overrides("data.predict", {**final, "text_only": True, "split": None}),
                    override("model.llm_encoder.name_or_path", encoder),
                ],
                folder("llm2clip_embed", unit),
                after=after,
            )
            shards = os.path.join(embed.output_dir, "shards")
            plan.add(embed, {"shards": shards})
            embedded[key(unit)] = (encoder, shards, [*after, embed.name], final)

        def llm2clip_inputs(split: Split):
            encoder, shards, after, final = embedded[unit_of(split)]
            overrides = [
                *_user_overrides(node.train),
                override("llm2clip_encoder", encoder),
                override("llm2clip_cache", shards),
            ]
            return overrides, {**final, "text_embeddings": shards}, after

        add_arm("llm2clip", node.train.experiment, llm2clip_inputs)

    # -- train: the CLIP recipe on each arm's captions, same images / seeds / budget ---------------------------
    if "train" in steps:
        node = _step(cfg, "train")
        for arm in (a for a in arms if a != "llm2clip"):
            if arm == "recap" and not tables:
                raise ValueError("pipeline.arms has 'recap' but pipeline.steps has no 'recap' step")
            if arm == "enhanced" and not scored:
                raise ValueError("pipeline.arms has 'enhanced' but pipeline.steps has no 'enhance' step")

            def inputs(split: Split, arm: str = arm):
                user = _user_overrides(node)
                if arm == "raw":
                    return user, src, []
                if arm == "recap":
                    name, table = tables[unit_of(split)]
                    return [*user, override("recap_table", table)], table_spec(table, table_fields), [name]
                name, enhanced = scored[unit_of(split)]
                return user, table_spec(enhanced), [name]

            add_arm(arm, str(node.experiments[arm]), inputs, prefix=f"train/{arm}")
    return plan


def retriever_slots(
    node: DictConfig, overrides: list[str], step_dir: str
) -> tuple[list[str], dict[str, list]]:
    """The captioner slots that take the per-split retriever (``pipeline.recap.retriever.captioners``) and each
    one's own datastore entries (resolved), which follow the split's training captions in its datastore."""
    slots = [str(s) for s in (node.retriever.get("captioners") or [])]
    composed = Job("recap", "generate", node.experiment, overrides, os.path.join(step_dir, "recap")).compose()
    captioners = composed.model.get("captioners") or {}
    missing = [s for s in slots if captioners.get(s) is None]
    if not slots or missing:
        raise ValueError(
            f"pipeline.recap.retriever.captioners={slots}: experiment {node.experiment} has no captioner "
            f"{missing[0] if missing else '(none named)'}; it has {sorted(k for k, v in captioners.items() if v)}"
        )
    stores = {}
    for s in slots:
        store = OmegaConf.to_container(captioners[s].get("datastore") or [], resolve=True)
        stores[s] = [store] if isinstance(store, dict) else list(store)
    return slots, stores
