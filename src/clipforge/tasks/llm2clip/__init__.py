"""Stage ``llm2clip``: an LLM fine-tuned as a caption encoder (stage 1), frozen behind an adapter as CLIP's text tower (stage 2).

Every module around an LLM encoder derives from :class:`LLMEncoderModule` (the encoder built from its spec in
``configure_model``, the tokenizer before and after). Stage 1 modules (MNTP in :mod:`.mntp`, supervised SimCSE in
:mod:`.simcse`) share :class:`EncoderTrainingModule`:
the encoder is built in ``configure_model`` from its spec, LoRA adapters are the only trainable weights (or the
whole LLM with ``lora: null``), checkpoints hold the trainable weights only, and the encoder is exported with the
adapters merged when fitting ends. :mod:`.embed` caches caption embeddings with a frozen encoder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clipforge.models.llm_encoder import LLMEncoder, LLMEncoderSpec, as_encoder_spec
from clipforge.models.lora import LoraSpec, apply_lora, as_lora_spec
from clipforge.utils.optim import optimizer_config, param_groups

__all__ = ["EncoderTrainingModule", "LLMEncoderModule"]

log = logging.getLogger("clipforge")


class LLMEncoderModule(L.LightningModule):
    """A LightningModule around an :class:`LLMEncoder` built from its spec in ``configure_model``.

    ``tokenizer`` is the spec's until the encoder exists (the datamodule tokenizes before the model is built),
    then the encoder's. Subclasses adapt the new encoder in :meth:`prepare_encoder` (adapters, freezing, mode).

    Args:
        llm_encoder: the LLM and its attention / pooling / instruction settings.
    """

    with_lm_head = False

    def __init__(self, llm_encoder: LLMEncoderSpec | Mapping) -> None:
        super().__init__()
        self.encoder_spec = as_encoder_spec(llm_encoder)
        self.encoder: LLMEncoder | None = None
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The encoder's tokenizer (``texts, instructions -> input_ids, attention_mask, embed_mask``)."""
        if self._tokenizer is None:
            self._tokenizer = self.encoder_spec.tokenizer()
        return self._tokenizer

    def configure_model(self) -> None:
        if self.encoder is not None:
            return
        encoder = LLMEncoder.from_spec(self.encoder_spec, with_lm_head=self.with_lm_head)
        self._tokenizer = encoder.tokenizer
        self.encoder = self.prepare_encoder(encoder)

    def prepare_encoder(self, encoder: LLMEncoder) -> LLMEncoder:
        """The encoder as this module uses it (default: as built)."""
        return encoder


class EncoderTrainingModule(LLMEncoderModule):
    """An :class:`LLMEncoder` trained with LoRA; subclasses add the objective.

    Subclasses call ``save_hyperparameters`` with their full signature.

    Args:
        llm_encoder: the LLM and its attention / pooling / instruction settings.
        optimizer: optimizer builder, applied to the trainable parameters (no weight decay on norms and biases).
        scheduler: optional LR-scheduler builder, stepped every optimizer step.
        lora: LoRA adapters (LLM2CLIP: r 16, alpha 32, dropout 0.05 on q,k,v,o,gate,up,down: every linear layer
            of the decoder, the LM head is not part of it); ``None`` trains every weight of the LLM.
        gradient_checkpointing: recompute activations in the backward pass (memory for compute).
        export_dir: when fitting ends, rank 0 writes the encoder here with the adapters merged (an encoder folder:
            HF weights + tokenizer + ``encoder_config.json``); ``None`` = no export.
    """

    def __init__(
        self,
        llm_encoder: LLMEncoderSpec | Mapping,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        lora: LoraSpec | Mapping | None = None,
        gradient_checkpointing: bool = False,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(llm_encoder)
        self.lora_spec = None if lora is None else as_lora_spec(lora)
        # kept as attributes: under LightningCLI, hparams hold the parsed config dicts, not the callables
        self.optimizer_builder, self.scheduler_builder = optimizer, scheduler
        self.gradient_checkpointing, self.export_dir = gradient_checkpointing, export_dir
        # checkpoints hold the trainable weights only; the frozen LLM is rebuilt from its spec
        self.strict_loading = False

    def prepare_encoder(self, encoder: LLMEncoder) -> LLMEncoder:
        """Frozen LM head, LoRA adapters, gradient checkpointing, training mode."""
        if encoder.lm_head is not None:
            encoder.lm_head.requires_grad_(False)
        if self.lora_spec is not None:
            encoder.model = apply_lora(encoder.model, self.lora_spec)
        if self.gradient_checkpointing:
            encoder.base_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return encoder.train()  # from_pretrained leaves eval mode; adapters' dropout must be active

    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.encoder.save_pretrained(self.export_dir)
            log.info("encoder (adapters merged) written to %s", os.path.abspath(self.export_dir))
        self.trainer.strategy.barrier("encoder_export")

    def configure_optimizers(self):
        optimizer = self.optimizer_builder(param_groups(self))
        return optimizer_config(optimizer, self)
