"""``CachedClassZeroShotEval``: zero-shot classification whose class embeddings come from a pre-computed file.

LLM2CLIP's ImageNet zero-shot (arXiv 2411.04997; ``training/zero_shot.py`` of ``microsoft/LLM2CLIP``) reads a
pre-computed tensor of *LLM* embeddings of every class's prompts; :mod:`clipforge.eval.llm_classnames` builds and
reads that file (:func:`~clipforge.eval.llm_classnames.save_class_features`). This callback evaluates with it, so
the module needs no LLM in memory, only ``encode_embedding`` (the adapter).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clipforge.callbacks.zero_shot import ZeroShotEval
from clipforge.data.specs import DatasetSpec
from clipforge.eval.llm_classnames import load_class_features

__all__ = ["CachedClassZeroShotEval"]


class _CachedPrompts:
    """Stands in for a module in ``ZeroShotEval.evaluate``: prompts -> cached LLM embeddings -> the adapter."""

    def __init__(self, module, table: dict) -> None:
        self.module = module
        flat = table["features"].reshape(-1, table["features"].shape[-1])
        self.features = flat
        self.index = {p: i for i, p in enumerate(q for row in table["prompts"] for q in row)}

    @property
    def device(self):
        return self.module.device

    def image_transform(self, train: bool):
        return self.module.image_transform(train)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.module.encode_image(images)

    def tokenizer(self, prompts: list[str]) -> dict[str, Tensor]:
        missing = [p for p in prompts if p not in self.index]
        if missing:
            raise KeyError(
                f"prompts not in the class-feature file (other classes / templates?): {missing[:3]}"
            )
        return {"index": torch.tensor([self.index[p] for p in prompts], dtype=torch.long)}

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        return self.module.encode_embedding(self.features[tokens["index"].cpu()])


class CachedClassZeroShotEval(ZeroShotEval):
    """:class:`ZeroShotEval` whose class embeddings come from a pre-computed LLM class-feature file.

    The prompts ``ZeroShotEval`` renders (its ``classnames`` and ``templates``) are looked up in the file
    (:func:`save_class_features`), mapped through the module's adapter (``encode_embedding``), L2-normalised,
    averaged per class and renormalised — LLM2CLIP's classifier — so evaluating needs no LLM in memory.

    Args:
        class_features: the class-feature file.
        data: labelled image set; each record's label is ``meta[label_field]``.
        name: dataset name in the metric keys.
        label_field: meta column holding the class name.
        classnames: ``labels``, ``imagenet`` or an explicit list (must be in the file).
        templates: ``openai``, ``simple`` or a list of ``{}`` strings (must be in the file).
        every_n_epochs: run at the end of every n-th validation epoch (and always at the last one).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        class_features: str,
        data: DatasetSpec | Mapping,
        name: str = "zeroshot",
        label_field: str = "label",
        classnames: str | list[str] = "labels",
        templates: str | list[str] = "simple",
        every_n_epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        super().__init__(data, name, label_field, classnames, templates, every_n_epochs, batch_size)
        self.class_features = class_features
        self._table: dict | None = None

    def evaluate(self, pl_module) -> dict[str, float]:
        """Top-1/top-5 accuracy with the cached class features."""
        if self._table is None:
            self._table = load_class_features(self.class_features)
        return super().evaluate(_CachedPrompts(pl_module, self._table))
