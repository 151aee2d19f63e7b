"""``VLMSFTModule``: supervised fine-tuning of a vision + projector + LLM model with the loss on answers only.

One module covers LLaVA-style stages by configuration: projector alignment (``trainable: {vision: frozen,
projector: full, llm: frozen}``), then LoRA (``trainable.llm: lora`` with ``init_from`` = the first stage's export),
or full fine-tuning. What the model is asked and must answer comes from a pluggable :class:`Formatter`: captions
for recap's ``mini_llava`` (:class:`CaptionFormatter`), quality judgements for enhance's AITQE.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clipforge.losses.answer import IGNORE_INDEX, AnswerLoss, answer_window
from clipforge.models.captioners.mini_llava import CAPTION_PROMPT
from clipforge.models.lora import LoraSpec, apply_lora, as_lora_spec
from clipforge.models.trainable import apply_trainable
from clipforge.models.vlm import VisionLanguageModel, VLMSpec, load_weights
from clipforge.utils.checkpoint import plain_hyperparameters
from clipforge.utils.optim import optimizer_config, param_groups

log = logging.getLogger("clipforge")

__all__ = [
    "CaptionFormatter",
    "Formatter",
    "VLMSFTModule",
    "VLMTrainableSpec",
    "batch_rows",
]


@runtime_checkable
class Formatter(Protocol):
    """Turns one batch row into ``(prompt, answer)``: the whole interface of a training task.

    A row is a dict with ``key`` (sample key), ``caption`` (the training caption: a fresh random one of the image
    every epoch in training batches, the first one in validation batches), ``captions`` (all of the image's
    captions in validation batches, ``[caption]`` in training batches) and ``meta`` (the source's other columns).
    The prompt holds the model's image placeholder (``<image>``; without one the image goes first); the answer is
    the target text, after which the model appends its EOS token. Any class with this ``__call__`` works.
    """

    def __call__(self, row: Mapping) -> tuple[str, str]: ...


class CaptionFormatter:
    """Captioning: a fixed prompt, the row's caption as the answer.

    Args:
        prompt: the prompt (with the image placeholder); the default is ``mini_llava``'s.
    """

    def __init__(self, prompt: str = CAPTION_PROMPT) -> None:
        self.prompt = prompt

    def __call__(self, row: Mapping) -> tuple[str, str]:
        return self.prompt, str(row["caption"])

    def __repr__(self) -> str:
        return f"CaptionFormatter({self.prompt!r})"


_PART_MODES = {
    "vision": ("frozen", "lora", "full"),
    "projector": ("frozen", "full"),
    "llm": ("frozen", "lora", "full"),
}


@dataclass
class VLMTrainableSpec:
    """Training mode per part: ``frozen``, ``lora`` (vision, llm) or ``full``."""

    vision: str = "frozen"
    projector: str = "full"
    llm: str = "frozen"

    def __post_init__(self) -> None:
        for part, modes in _PART_MODES.items():
            if getattr(self, part) not in modes:
                raise ValueError(f"trainable.{part} must be one of {modes}, got {getattr(self, part)!r}")


def as_vlm_trainable(spec: VLMTrainableSpec | Mapping | None) -> VLMTrainableSpec:
    """Normalise a spec given as a dataclass, a mapping or ``None`` (projector only)."""
    if spec is None:
        return VLMTrainableSpec()
    return spec if isinstance(spec, VLMTrainableSpec) else VLMTrainableSpec(**spec)


def batch_rows(batch: Mapping) -> list[dict]:
    """The rows of a datamodule batch as ``{key, caption, captions, meta}`` dicts (see :class:`Formatter`)."""
    keys = list(batch["key"])
    captions = [[c] for c in batch["caption"]]
    if "captions" in batch:
        captions = [[] for _ in keys]
        for caption, i in zip(batch["captions"], batch["caption_image_index"].tolist()):
            captions[i].append(caption)
    return [
        {"key": k, "caption": c, "captions": cs, "meta": m}
        for k, c, cs, m in zip(keys, batch["caption"], captions, batch["meta"])
    ]


class VLMSFTModule(L.LightningModule):
    """Supervised fine-tuning of a :class:`~clipforge.models.vlm.VisionLanguageModel`.

    Batch keys: ``image`` (B,3,H,W from :meth:`image_transform`), ``key``, ``caption``, ``meta`` and, in
    validation, ``captions`` + ``caption_image_index``. The module has no ``tokenizer`` attribute, so the
    datamodule does not tokenize: the :class:`Formatter` writes each row's prompt and answer and the model
    tokenizes them here (prompt and image positions get no loss). Logged: ``train/lm_loss`` (per step, mean over
    answer tokens), ``val/lm_loss`` (mean over every answer token of the validation set), ``train/answer_tokens``.
    At the end of training the model is written with ``save_pretrained`` (adapters merged) to
    ``<trainer.default_root_dir>/<export_subdir>``.

    Args:
        vlm: the architecture (tower, LLM, tokenizer, image transform).
        optimizer: optimizer builder, applied to parameter groups (no weight decay on norms and biases).
        scheduler: optional LR-scheduler builder, stepped every optimizer step.
        init_from: a folder written by ``save_pretrained`` with the same architecture (an earlier stage's
            export): its weights replace the pretrained ones of ``vlm``.
        formatter: row -> ``(prompt, answer)``; default :class:`CaptionFormatter`.
        trainable: ``{vision: frozen|lora|full, projector: frozen|full, llm: frozen|lora|full}``.
        lora: LoRA settings of the parts in ``lora`` mode.
        max_length: longest training sequence in tokens (image positions included); answers are cut to fit.
        export_subdir: where the trained model is written under the run's output dir; ``None`` = not written.
        checkpoint_trainable_only: Lightning checkpoints hold only the trainable parameters (the frozen ones are
            rebuilt from ``vlm`` / ``init_from`` when a checkpoint is loaded).
        gradient_checkpointing: recompute the LLM's activations in the backward pass (less memory).
    """

    def __init__(
        self,
        vlm: VLMSpec,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
        formatter: Formatter | None = None,
        trainable: VLMTrainableSpec | Mapping | None = None,
        lora: LoraSpec | Mapping | None = None,
        max_length: int = 512,
        export_subdir: str | None = "vlm",
        checkpoint_trainable_only: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.vlm_spec = vlm
        self.formatter = formatter if formatter is not None else CaptionFormatter()
        self.trainable, self.lora = as_vlm_trainable(trainable), as_lora_spec(lora)
        # kept as attributes: under LightningCLI, hparams hold the parsed config dicts, not the callables
        self.optimizer_builder, self.scheduler_builder = optimizer, scheduler
        self.loss = AnswerLoss()
        self.strict_loading = not checkpoint_trainable_only
        self.vlm: VisionLanguageModel | None = None

    def image_transform(self, train: bool):
        """PIL -> tensor transform of the vision tower (the same for training and evaluation)."""
        return self.vlm_spec.image_transform(train)

    # -- model ----------------------------------------------------------------------------------------------------
    def _parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vlm.vision_model, "projector": self.vlm.mm_projector, "llm": self.vlm.model}

    def configure_model(self) -> None:
        if self.vlm is not None:
            return
        init_from = self.hparams.init_from
        self.vlm = VisionLanguageModel.build(self.vlm_spec, empty=init_from is not None)
        if init_from is not None:
            log.info("VLM weights from %s", init_from)
            load_weights(self.vlm, init_from)
        for part, module in self._parts().items():
            mode = getattr(self.trainable, part)
            apply_trainable(module, "frozen" if mode == "lora" else mode)
            if mode == "lora":
                apply_lora(module, self.lora)
        if self.hparams.gradient_checkpointing:
            self.vlm.model.gradient_checkpointing_enable()

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen parts keep eval-mode norms and dropout whatever Lightning switches the module to
        if self.vlm is not None:
            for part, module in self._parts().items():
                if getattr(self.trainable, part) == "frozen":
                    module.eval()
        return self

    # -- steps ----------------------------------------------------------------------------------------------------
    def _shared_step(self, batch: Mapping) -> tuple[dict[str, torch.Tensor], int]:
        prompts, answers = zip(*(self.formatter(row) for row in batch_rows(batch)))
        inputs = self.vlm.build_inputs(prompts, answers, max_length=self.hparams.max_length)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        labels = inputs["labels"]
        logits = self.vlm(
            batch["image"],
            inputs["input_ids"],
            inputs["attention_mask"],
            logits_to_keep=answer_window(labels),
        )
        tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return {"lm_loss": self.loss(logits, labels)}, tokens

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor | None:
        if not batch["key"]:
            return None  # every row of the batch was unreadable
        out, tokens = self._shared_step(batch)
        bs = len(batch["key"])
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=True, batch_size=bs)
        self.log("train/answer_tokens", float(tokens), batch_size=bs)
        return sum(out.values())

    def on_validation_epoch_start(self) -> None:
        if hasattr(
            self.formatter, "fixed"
        ):  # the same targets every validation epoch (random ones in training)
            self.formatter.fixed = True

    def on_validation_epoch_end(self) -> None:
        if hasattr(self.formatter, "fixed"):
            self.formatter.fixed = False

    def validation_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not batch["key"]:
            return
        out, tokens = self._shared_step(batch)
        for k, v in out.items():  # weighted by answer tokens: the epoch value is the per-token mean
            self.log(f"val/{k}", v, batch_size=tokens, add_dataloader_idx=False, prog_bar=True)

    # -- export and checkpoints -----------------------------------------------------------------------------------
    def export_dir(self) -> str | None:
        """``<trainer.default_root_dir>/<export_subdir>``, or ``None`` when export is off."""
        sub = self.hparams.export_subdir
        return os.path.join(self.trainer.default_root_dir, sub) if sub else None

    def on_train_end(self) -> None:
        """Export the best checkpoint's weights (the monitored one; the last weights without a monitor)."""
        path = self.export_dir()
        if not path:
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        live = None
        if best and os.path.exists(best):  # swap the best weights in for the export, then back
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            current = self.state_dict()
            live = {k: current[k].detach().clone() for k in state if k in current}
            self.load_state_dict(state, strict=False)  # trainable-only checkpoints: the rest is unchanged
            log.info("exporting the best checkpoint %s", best)
        if self.trainer.is_global_zero:
            self.vlm.save_pretrained(path)
            log.info("exported the trained VLM to %s", path)
        if live is not None:
            self.load_state_dict(live, strict=False)

    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        plain_hyperparameters(checkpoint)  # on_train_end reads the best one back with weights_only=True
        if self.hparams.checkpoint_trainable_only:
            keep = self._trainable_names()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self._trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights {missing[:5]} ({len(missing)} in all)")

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_builder(param_groups(self))
        return optimizer_config(optimizer, self)
