"""MNTPModule: masked next-token prediction (LLM2Vec / LLM2CLIP stage 1a) on token blocks, LoRA on the LLM.

Masking follows ``transformers``' ``DataCollatorForLanguageModeling`` with LLM2Vec's settings: each non-special
token is selected with probability ``mask_probability`` (0.2); of the selected, 80 % become the blank token
``"_"``, 10 % a random token, 10 % stay. The model is bidirectional, and token ``i`` is predicted from the logits
at position ``i - 1`` (LLM2Vec's MNTP: the LM head reads the state just before the masked token). Position 0 has no
preceding state and is never selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clipforge.losses.mntp import mntp_loss
from clipforge.models.llm_encoder import LLMEncoderSpec
from clipforge.models.lora import LoraSpec
from clipforge.tasks.llm2clip import EncoderTrainingModule

__all__ = ["MNTPModule", "mntp_mask"]


def mntp_mask(
    input_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float,
    special_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt ``input_ids`` for MNTP; returns ``(inputs, labels)`` with ``labels = -100`` where nothing is asked.

    Args:
        input_ids: ``(B, L)`` token ids.
        mask_id: id of the mask token (LLM2Vec's blank ``"_"``).
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        probability: selection probability of each eligible token.
        special_ids: ids that are never selected (BOS, EOS, padding).
        generator: random source (on ``input_ids``' device).
    """
    eligible = ~torch.isin(
        input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    )
    eligible[:, 0] = False
    prob = torch.full(input_ids.shape, probability, device=input_ids.device) * eligible
    selected = torch.bernoulli(prob, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    half = torch.full(input_ids.shape, 0.5, device=input_ids.device)
    masked = torch.bernoulli(
        torch.full(input_ids.shape, 0.8, device=input_ids.device), generator=generator
    ).bool()
    masked &= selected
    randomised = torch.bernoulli(half, generator=generator).bool() & selected & ~masked
    inputs = input_ids.clone()
    inputs[masked] = mask_id
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    inputs[randomised] = random_ids[randomised].to(inputs.dtype)
    return inputs, labels


class MNTPModule(EncoderTrainingModule):
    """LLM2Vec's masked next-token prediction with LoRA; the first step of the caption-contrastive recipe.

    Batch keys: ``input_ids`` (``(B, block_size)`` token blocks from
    :class:`~clipforge.data.text_blocks.TextBlockDataModule`), optional ``attention_mask``. Logged: ``train/mntp_loss``, ``train/mntp_accuracy``,
    ``val/mntp_loss``, ``val/mntp_accuracy`` (validation masks with a fixed seed per batch, so epochs compare).
    Trainable: the LoRA adapters (or the whole LLM with ``lora: null``); the LM head stays frozen.

    Args:
        llm_encoder: the LLM (``bidirectional: true`` for LLM2Vec's MNTP).
        optimizer: optimizer builder.
        scheduler: optional LR-scheduler builder (per step).
        lora: LoRA adapters; ``None`` = full fine-tuning.
        mask_token: the token corrupted positions show (``"_"``: LLM2Vec's ``blank``); must be one token.
        mask_probability: share of eligible tokens selected.
        gradient_checkpointing: recompute activations in the backward pass.
        export_dir: where the merged encoder is written when fitting ends.
        seed: seed of the masking draws (combined with the step and rank).
    """

    with_lm_head = True

    def __init__(
        self,
        llm_encoder: LLMEncoderSpec | Mapping,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        lora: LoraSpec | Mapping | None = LoraSpec(),
        mask_token: str = "_",
        mask_probability: float = 0.2,
        gradient_checkpointing: bool = False,
        export_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(llm_encoder, optimizer, scheduler, lora, gradient_checkpointing, export_dir)
        self.save_hyperparameters(logger=False)
        if not 0.0 < mask_probability < 1.0:
            raise ValueError(f"mask_probability={mask_probability} must be in (0, 1)")
        self._mask_id: int | None = None

    def mask_token_id(self) -> int:
        """Id of ``mask_token`` in the encoder's vocabulary."""
        if self._mask_id is None:
            ids = self.tokenizer.hf(self.hparams.mask_token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"mask_token {self.hparams.mask_token!r} is {len(ids)} tokens, not one")
            self._mask_id = ids[0]
        return self._mask_id

    def _shared_step(self, batch: Mapping, stream: int) -> dict[str, torch.Tensor]:
        ids = batch["input_ids"]
        attention = batch.get("attention_mask", torch.ones_like(ids))
        hf = self.tokenizer.hf
        special = set(hf.all_special_ids) | {hf.pad_token_id}
        generator = torch.Generator(device=ids.device).manual_seed(
            hash((self.hparams.seed, stream, self.global_rank)) % 2**63
        )
        vocab = self.encoder.lm_head.out_features
        inputs, labels = mntp_mask(
            ids, self.mask_token_id(), vocab, self.hparams.mask_probability, special, generator
        )
        hidden = self.encoder.hidden_states(inputs, attention)
        loss, accuracy = mntp_loss(hidden, self.encoder.lm_head, labels)
        return {"mntp_loss": loss, "mntp_accuracy": accuracy}

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        out = self._shared_step(batch, stream=self.global_step)
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=k.endswith("_loss"), batch_size=batch["input_ids"].shape[0])
        return out["mntp_loss"]

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        out = self._shared_step(batch, stream=-1 - batch_idx)
        for k, v in out.items():
            self.log(
                f"val/{k}",
                v,
                prog_bar=k.endswith("_loss"),
                batch_size=batch["input_ids"].shape[0],
                sync_dist=True,
            )
