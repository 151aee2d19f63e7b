"""ZeroShotEval: zero-shot classification of a labelled image set with the model's own text tower."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from clipforge.data.images import load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec, as_spec
from clipforge.eval.periodic import PeriodicEval
from clipforge.eval.zero_shot import (
    build_zero_shot_classifier,
    imagenet_classnames,
    imagenet_templates,
    zero_shot_accuracy,
)


class ZeroShotEval(PeriodicEval):
    """Classify the images of ``data`` by similarity to prompts built from class names, every few epochs.

    Works with any module exposing ``encode_image``, ``encode_text``, ``tokenizer`` and ``image_transform``.
    Logs ``val/zeroshot/<name>/top1`` and ``top5`` (percent).

    Args:
        data: labelled image set; each record's label is ``meta[label_field]``.
        name: dataset name in the metric keys.
        label_field: meta column holding the class name.
        classnames: ``labels`` (the distinct labels of ``data``), ``imagenet`` (open_clip's 1000 class names, labels
            must be among them) or an explicit list.
        templates: ``openai`` (open_clip's 80 ImageNet prompts), ``simple`` (its short set) or a list of strings
            with ``{}`` for the class name.
        every_n_epochs: run at the end of every n-th validation epoch (and always at the last one;
            :class:`~clipforge.eval.periodic.PeriodicEval`).
        batch_size: images per forward pass.
    """

    prefix = "val/zeroshot"

    def __init__(
        self,
        data: DatasetSpec | Mapping,
        name: str = "zeroshot",
        label_field: str = "label",
        classnames: str | list[str] = "labels",
        templates: str | list[str] = "simple",
        every_n_epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        super().__init__(name, every_n_epochs)
        self.spec = as_spec(data)
        self.label_field, self.classnames, self.templates = label_field, classnames, templates
        self.batch_size = batch_size

    def _classes_and_labels(self, records) -> tuple[list[str], list[int]]:
        labels = [str(r.meta[self.label_field]) for r in records]
        if self.classnames == "labels":
            classes = sorted(set(labels))
        elif self.classnames == "imagenet":
            classes = imagenet_classnames()
        else:
            classes = list(self.classnames)
        index = {c: i for i, c in enumerate(classes)}
        missing = sorted(set(labels) - set(index))
        if missing:
            raise ValueError(f"zero-shot labels not among the class names: {missing[:5]}")
        return classes, [index[lab] for lab in labels]

    def _templates(self) -> list:
        if self.templates in ("openai", "simple"):
            return imagenet_templates(self.templates)
        return list(self.templates)

    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Compute top-1/top-5 accuracy now (also usable outside a Trainer)."""
        records, _ = read_records(self.spec)
        records = [r for r in records if r.image is not None and self.label_field in r.meta]
        classes, labels = self._classes_and_labels(records)
        transform, tok, device = pl_module.image_transform(False), pl_module.tokenizer, pl_module.device

        def encode_text(texts: list[str]) -> torch.Tensor:
            batch = {k: v.to(device) for k, v in tok(texts).items()}
            return pl_module.encode_text(batch)

        classifier = build_zero_shot_classifier(encode_text, classes, self._templates())
        feats, kept = [], []
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            imgs = []
            for j, r in enumerate(chunk):
                try:
                    imgs.append(transform(load_image(r.image)))
                    kept.append(start + j)
                except Exception:  # a bad image is skipped here; the data layer records it for training runs
                    continue
            if imgs:
                feats.append(pl_module.encode_image(torch.stack(imgs).to(device)))
        result = zero_shot_accuracy(torch.cat(feats), classifier, torch.tensor([labels[i] for i in kept]))
        return {k: float(v) for k, v in result.items()}
