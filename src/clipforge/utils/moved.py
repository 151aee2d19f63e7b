"""Class paths that moved between clipforge versions, so that what an older version wrote keeps working.

A run folder's ``config.yaml``, a checkpoint's hyper-parameters (``_target_`` + arguments, see
:mod:`clipforge.utils.checkpoint`) and a pipeline job's hash all name classes by their dotted path. When a class
moves, :func:`upgrade_targets` rewrites the old paths to the current ones before anything is instantiated
(:func:`clipforge.utils.runs.load_run`, :func:`clipforge.utils.checkpoint.load_checkpoint`), and the pipeline
hashes a job with every class under its first name (:func:`first_targets`), so a move does not make a resumed
pipeline empty and rerun a finished job. Not covered: a run's ``run.cli.yaml`` (regenerate it with
``clipforge export-cli``) and checkpoints that hold pickled objects (the ``trust_checkpoint`` opt-in), whose
pickles name the module the class had when it was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MOVED", "first_targets", "upgrade_targets"]

MOVED: dict[str, str] = {
    "clipforge.tasks.clip.module.CLIPModule": "clipforge.tasks.shared.clip.CLIPModule",
    "clipforge.tasks.vlm.sft.VLMSFTModule": "clipforge.tasks.shared.vlm_sft.VLMSFTModule",
    "clipforge.tasks.vlm.sft.CaptionFormatter": "clipforge.tasks.shared.vlm_sft.CaptionFormatter",
    "clipforge.tasks.vlm.sft.VLMTrainableSpec": "clipforge.tasks.shared.vlm_sft.VLMTrainableSpec",
    "clipforge.tasks.vlm.sft.AnswerLoss": "clipforge.losses.answer.AnswerLoss",
    "clipforge.tasks.retrieval.RetrievalAccumulator": "clipforge.eval.accumulator.RetrievalAccumulator",
    "clipforge.data.caption_groups.CaptionTripletDataModule": "clipforge.data.caption_triplets.CaptionTripletDataModule",
    "clipforge.data.caption_groups.TextBlockDataModule": "clipforge.data.text_blocks.TextBlockDataModule",
    "clipforge.data.transforms.ImageTransform": "clipforge.utils.transforms.ImageTransform",
    "clipforge.data.transforms.ToRGB": "clipforge.utils.transforms.ToRGB",
    "clipforge.eval.llm_classnames.CachedClassZeroShotEval": "clipforge.callbacks.llm_zero_shot.CachedClassZeroShotEval",
}
"""Old dotted class path -> current one (a class that moves again: add its newest path, keep the old keys)."""

_KEYS = ("_target_", "class_path")


def _first_names() -> dict[str, str]:
    first: dict[str, str] = {}
    for old, new in MOVED.items():
        while old in first:  # a class moved more than once: its first name is the oldest
            old = first[old]
        first.setdefault(new, old)
    return first


def _rewrite(node: Any, table: Mapping[str, str]) -> Any:
    if isinstance(node, Mapping):
        return {
            k: (table.get(v, v) if k in _KEYS and isinstance(v, str) else _rewrite(v, table))
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return [_rewrite(v, table) for v in node]
    return node


def upgrade_targets(node: Any) -> Any:
    """A copy of ``node`` (plain containers) whose ``_target_`` / ``class_path`` values name the current classes."""
    current = {old: new for old, new in MOVED.items()}
    for old in current:  # follow chains: a -> b, b -> c gives a -> c
        while current[old] in MOVED:
            current[old] = MOVED[current[old]]
    return _rewrite(node, current)


def first_targets(node: Any) -> Any:
    """A copy of ``node`` whose ``_target_`` / ``class_path`` values name each moved class by its first path."""
    return _rewrite(upgrade_targets(node), _first_names())
