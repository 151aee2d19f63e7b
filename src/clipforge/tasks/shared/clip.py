"""CLIPModule: contrastive image-text training (CLIP / SigLIP / LiT) over any vision and text tower."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clipforge.eval.accumulator import RetrievalAccumulator
from clipforge.models.heads import HeadSpec, as_head_spec, build_head
from clipforge.models.text import TextTower
from clipforge.models.trainable import TrainableSpec, apply_trainable, as_trainable
from clipforge.models.vision import VisionTower
from clipforge.utils.optim import optimizer_config, param_groups


class CLIPModule(L.LightningModule):
    """Two towers, two projection heads and a contrastive loss with a global negative pool.

    Batch keys: ``image`` (B,3,H,W), ``text`` ({input_ids, attention_mask}), ``key`` (B sample keys); evaluation
    batches add ``caption_image_index`` (one entry per caption, every caption of every image is embedded).
    Logged: ``train/contrastive_loss``, ``train/logit_scale``, ``train/global_batch_size``;
    ``{val,test}/retrieval/<dataset>/{i2t,t2i}_R@{1,5,10}``, ``.../collapsed`` (1.0 with a warning when the image
    or caption embeddings have collapsed, else 0.0) and ``{val,test}/rsum`` (first dataset, for checkpoint
    monitoring). Trainable parts: the heads, the loss's scale (and bias), and each tower unless
    ``trainable`` freezes it; frozen towers run in eval mode without gradients.

    Args:
        vision: image tower spec (built in ``configure_model``).
        text: text tower spec (its tokenizer is handed to the datamodule).
        loss: contrastive loss module returning ``*_loss`` terms (``ClipLoss`` or ``SigLipLoss``).
        optimizer: optimizer builder, applied to parameter groups (no weight decay on norms, biases, scales).
        scheduler: optional LR-scheduler builder, stepped every optimizer step.
        embed_dim: width of the shared embedding space.
        vision_head: projection head of the image tower.
        text_head: projection head of the text tower.
        trainable: ``{vision, text}`` each ``frozen`` or ``full``.
        cache_frozen_features: memoise a frozen tower's outputs by sample key (images, when the training transform
            is deterministic) and by caption string (text); later epochs then skip the frozen towers entirely.
            Memory grows with the dataset: meant for LiT-style runs on small and medium sets.
    """

    def __init__(
        self,
        vision: VisionTower,
        text: TextTower,
        loss: nn.Module,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None = None,
        embed_dim: int = 256,
        vision_head: HeadSpec | Mapping | None = None,
        text_head: HeadSpec | Mapping | None = None,
        trainable: TrainableSpec | Mapping | None = None,
        cache_frozen_features: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.vision_spec, self.text_spec, self.loss = vision, text, loss
        self.trainable = as_trainable(trainable)
        self.vision_head_spec, self.text_head_spec = as_head_spec(vision_head), as_head_spec(text_head)
        # kept as attributes: under LightningCLI, hparams hold the parsed config dicts, not the callables
        self.optimizer_builder, self.scheduler_builder = optimizer, scheduler
        self.vision_tower: nn.Module | None = None
        self.text_tower: nn.Module | None = None
        self._tokenizer = None
        self._cache: dict[tuple, torch.Tensor] = {}
        self._accumulators: dict[int, RetrievalAccumulator] = {}

    # -- data-side contract -------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """Callable ``list[str] -> {input_ids, attention_mask}`` used by the datamodule's collator."""
        if self._tokenizer is None:
            self._tokenizer = self.text_spec.tokenizer()
        return self._tokenizer

    def image_transform(self, train: bool):
        """PIL -> tensor transform of the vision tower, for training or evaluation."""
        return self.vision_spec.image_transform(train)

    # -- model ----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.vision_tower is not None:
            return
        dim = self.hparams.embed_dim
        self.vision_tower, self.text_tower = self.vision_spec.build(), self.text_spec.build()
        self.vision_head = build_head(self.vision_head_spec, self.vision_spec.feature_dim, dim)
        self.text_head = build_head(self.text_head_spec, self.text_spec.feature_dim, dim)
        apply_trainable(self.vision_tower, self.trainable.vision)
        apply_trainable(self.text_tower, self.trainable.text)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen towers keep eval-mode norms and dropout whatever Lightning switches the module to
        for tower, part in ((self.vision_tower, "vision"), (self.text_tower, "text")):
            if tower is not None and getattr(self.trainable, part) == "frozen":
                tower.eval()
        return self

    def _tower(self, part: str, inputs: tuple, keys: list | None, slot: tuple) -> torch.Tensor:
        tower = self.vision_tower if part == "vision" else self.text_tower
        frozen = getattr(self.trainable, part) == "frozen"
        if not frozen:
            return tower(*inputs)
        cacheable = self.hparams.cache_frozen_features and keys is not None
        if part == "vision" and getattr(self.vision_spec, "augment", False) and slot[0] == "fit":
            cacheable = False  # random crops: the same key gives different inputs
        with torch.no_grad():
            if not cacheable:
                return tower(*inputs)
            missing = [i for i, k in enumerate(keys) if (*slot, k) not in self._cache]
            if missing:
                feats = tower(*(x[missing] for x in inputs))
                for j, i in enumerate(missing):
                    self._cache[(*slot, keys[i])] = feats[j]
            return torch.stack([self._cache[(*slot, k)] for k in keys])

    def encode_image(self, images: torch.Tensor, keys: list[str] | None = None, slot: tuple = ("eval",)):
        """L2-normalised image embeddings ``(B, embed_dim)``."""
        feats = self._tower("vision", (images,), keys, (*slot, "img"))
        return F.normalize(self.vision_head(feats), dim=-1)

    def encode_text(self, text: Mapping, captions: list[str] | None = None, slot: tuple = ("eval",)):
        """L2-normalised caption embeddings ``(N, embed_dim)`` from tokenizer output."""
        feats = self._tower("text", (text["input_ids"], text["attention_mask"]), captions, (*slot, "txt"))
        return F.normalize(self.text_head(feats), dim=-1)

    def forward(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(batch["image"]), self.encode_text(batch["text"])

    def on_train_epoch_start(self) -> None:
        # images whose frozen features are cached need not be decoded again: tell the train dataset(s) to hand
        # out a placeholder for them (takes effect with workers too: Lightning re-creates the iterator after
        # this hook from the second epoch on)
        if not self.hparams.cache_frozen_features or self.trainable.vision != "frozen":
            return
        if getattr(self.vision_spec, "augment", False):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        datasets = getattr(datamodule, "datasets", {}).get("train") or []
        cached = frozenset(k[-1] for k in self._cache if k[:-1] == ("fit", "img"))
        size = self.vision_spec.image_size
        for ds in datasets:
            if hasattr(ds, "skip_image_keys"):
                ds.skip_image_keys, ds.placeholder = cached, torch.zeros(3, size, size)

    # -- steps ----------------------------------------------------------------------------------------------------
    def _shared_step(self, batch: Mapping) -> dict[str, torch.Tensor]:
        img = self.encode_image(batch["image"], batch["key"], slot=("fit",))
        # multi_positive caption sampling: m captions per image, grouped by image (the loss takes n * m texts)
        captions = batch["captions"] if "caption_image_index" in batch else batch["caption"]
        txt = self.encode_text(batch["text"], captions, slot=("fit",))
        return self.loss(img, txt)

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        out = self._shared_step(batch)
        total = sum(v for k, v in out.items() if k.endswith("_loss"))
        bs = len(batch["key"])
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=k.endswith("_loss"), batch_size=bs)
        self.log("train/global_batch_size", float(bs * self.trainer.world_size), batch_size=bs)
        return total

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if hasattr(self.loss, "clamp_"):
            self.loss.clamp_()

    def _eval_step(self, batch: Mapping, dataloader_idx: int, stage: str) -> None:
        if len(batch["key"]) == 0:
            return
        img = self.encode_image(batch["image"], batch["key"], slot=(stage, dataloader_idx))
        txt = self.encode_text(batch["text"], batch["captions"], slot=(stage, dataloader_idx))
        acc = self._accumulators.setdefault(dataloader_idx, RetrievalAccumulator())
        acc.update(batch["key"], img, txt, batch["caption_image_index"])

    def validation_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    def test_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def predict_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """One row per image: its embedding, its captions and their embeddings (``ShardWriter`` with ``pt``)."""
        img = self.encode_image(batch["image"]) if "image" in batch else None
        txt = self.encode_text(batch["text"])
        index = batch["caption_image_index"]
        rows = []
        for i, key in enumerate(batch["key"]):
            mine = (index == i).nonzero().flatten()
            row = {
                "key": key,
                "captions": [batch["captions"][j] for j in mine.tolist()],
                "text_embedding": txt[mine],
            }
            if img is not None:
                row["image_embedding"] = img[i]
            rows.append(row)
        return {"rows": rows}

    def _eval_epoch_end(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "eval_names", lambda s: [])(stage) if datamodule is not None else []
        for idx in sorted(self._accumulators):
            name = names[idx] if idx < len(names) else f"set{idx}"
            metrics = self._accumulators[idx].compute(name=f"{stage}/retrieval/{name}")
            for k, v in metrics.items():
                self.log(f"{stage}/retrieval/{name}/{k}", v, add_dataloader_idx=False, rank_zero_only=True)
            if idx == 0 and "rsum" in metrics:
                self.log(f"{stage}/rsum", metrics["rsum"], add_dataloader_idx=False, rank_zero_only=True)
        self._accumulators = {}

    def on_validation_epoch_start(self) -> None:
        self._accumulators = {}

    def on_test_epoch_start(self) -> None:
        self._accumulators = {}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_builder(param_groups(self))
        return optimizer_config(optimizer, self)
