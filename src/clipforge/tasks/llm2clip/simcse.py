"""CaptionContrastiveModule: supervised SimCSE on caption groups (LLM2CLIP stage 1b), LoRA on the LLM.

Positives are another caption of the same image, hard negatives a caption of another image, and every other
document of the global batch is a negative (:class:`~clipforge.losses.simcse.SimCSELoss`, scale 50). Validation
measures caption retrieval accuracy (:mod:`clipforge.eval.cra`) on held-out caption groups, embedded without an
instruction, as LLM2CLIP's CRA does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clipforge.eval.cra import caption_retrieval_accuracy
from clipforge.models.llm_encoder import LLMEncoderSpec
from clipforge.models.lora import LoraSpec
from clipforge.tasks.llm2clip import EncoderTrainingModule

__all__ = ["CaptionContrastiveModule"]


class CaptionContrastiveModule(EncoderTrainingModule):
    """Caption-contrastive fine-tuning of an LLM encoder.

    Batch keys (training, :class:`~clipforge.data.caption_triplets.CaptionTripletDataModule`): ``query``,
    ``positive``, ``negative`` (tokenizer outputs with ``embed_mask``). Validation batches: ``text`` (every caption
    of each held-out group) and ``caption_group``. Logged: ``train/contrastive_loss``, ``train/top1``,
    ``train/global_batch_size``; ``val/cra/<dataset>/{cra_pairs,cra_full}`` and, for the first validation set,
    ``val/cra_pairs`` / ``val/cra_full`` (checkpoint monitoring). Trainable: the LoRA adapters (or the whole LLM).

    Args:
        llm_encoder: the LLM (LLM2CLIP: bidirectional, mean pooling over the caption, after MNTP).
        loss: the contrastive loss (``SimCSELoss``).
        optimizer: optimizer builder.
        scheduler: optional LR-scheduler builder (per step).
        lora: LoRA adapters; ``None`` = full fine-tuning.
        gradient_checkpointing: recompute activations in the backward pass.
        export_dir: where the merged encoder is written when fitting ends.
    """

    def __init__(
        self,
        llm_encoder: LLMEncoderSpec | Mapping,
        loss: nn.Module,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        lora: LoraSpec | Mapping | None = LoraSpec(),
        gradient_checkpointing: bool = False,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(llm_encoder, optimizer, scheduler, lora, gradient_checkpointing, export_dir)
        self.save_hyperparameters(logger=False)
        self.loss = loss
        self._val: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, text: Mapping) -> torch.Tensor:
        """Caption embeddings ``(N, D)`` (float32, not normalised) of tokenizer output."""
        return self.encoder(text["input_ids"], text["attention_mask"], text.get("embed_mask"))

    def _shared_step(self, batch: Mapping) -> dict[str, torch.Tensor]:
        return self.loss(self(batch["query"]), self(batch["positive"]), self(batch["negative"]))

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        out = self._shared_step(batch)
        bs = len(batch["key"])
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=k.endswith("_loss"), batch_size=bs)
        self.log("train/global_batch_size", float(bs * self.trainer.world_size), batch_size=bs)
        return sum(v for k, v in out.items() if k.endswith("_loss"))

    # -- caption retrieval on held-out groups ----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        parts = self._val.setdefault(dataloader_idx, [])
        offset = int(parts[-1][1].max()) + 1 if parts else 0  # group ids stay unique across batches
        parts.append((self(batch["text"]).cpu(), batch["caption_group"].cpu() + offset))

    def on_validation_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = datamodule.eval_names("val") if hasattr(datamodule, "eval_names") else []
        for idx in sorted(self._val):
            embeddings = torch.cat([e for e, _ in self._val[idx]])
            groups = torch.cat([g for _, g in self._val[idx]])
            metrics = caption_retrieval_accuracy(embeddings, groups)
            name = names[idx] if idx < len(names) else f"set{idx}"
            for key in ("cra_pairs", "cra_full"):
                self.log(f"val/cra/{name}/{key}", metrics[key], add_dataloader_idx=False, sync_dist=True)
                if idx == 0:
                    self.log(f"val/{key}", metrics[key], add_dataloader_idx=False, sync_dist=True)
        self._val = {}
