"""``CaptionGeneratorModule``: several captioners over one dataset -> one row of extended captions per image.

A ``clipforge generate`` job (``trainer.predict``) with the ``ShardWriter`` callback: every batch of images goes
through each captioner, each extended caption is sheared against the image's raw caption, and the rows (layout in
:mod:`clipforge.tasks.recap.export`) are written as resumable shards and merged at the end; then
:meth:`CaptionGeneratorModule.on_predictions_merged` writes the seed's per-captioner JSON files and the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning as L

from clipforge.data.shear import Shear
from clipforge.models.captioners.base import Captioner, Generation
from clipforge.models.captioners.batched import BatchedCaptioner
from clipforge.tasks.recap.export import image_ref, slot_names, summarize, write_seed_json

log = logging.getLogger("clipforge.recap")

SEED_JSON = ("raw", "sheared", "none")


def _as_shear(shear: Shear | Mapping | None) -> Shear:
    if shear is None:
        return Shear()
    return shear if isinstance(shear, Shear) else Shear(**dict(shear))


class CaptionGeneratorModule(L.LightningModule):
    """Extended captions of every image from a list of captioners, sheared to the raw caption's length.

    Captioners are specs: constructing them loads nothing, ``configure_model`` loads their weights on the
    trainer's device. Images reach the captioners as RGB ``PIL`` images (``image_transform`` returns a PIL -> PIL
    transform; each captioner's own processor resizes and normalises). Lengths are counted in the shear unit:
    tokens of the shear tokenizer (CLIP BPE by default), or words for ``words`` / ``fixed``.

    Args:
        captioners: the captioners, as a list or a ``{slot: captioner}`` mapping (Hydra composes a mapping from
            ``model/mllm`` options); each captioner's ``name`` names its columns and must be unique.
        shear: text shearing (:class:`clipforge.data.shear.Shear` fields: ``unit``, ``tokenizer``, ``fixed_len``,
            ``min_len``); ``tokenizer`` is ``clip_bpe`` or an HF tokenizer id / folder.
        seed_json: which caption the seed-format JSON files hold: ``raw`` (post-processed, unsheared: what the
            seed released), ``sheared``, or ``none`` (no files).
        max_image_side: downscale images whose longer side is larger (``None`` = as decoded).
        backend: the generation engine of every captioner (``hf`` | ``vllm``; ``None`` = each captioner's own
            ``backend``); a captioner without that engine refuses it by name.
    """

    def __init__(
        self,
        captioners: Mapping[str, Captioner] | Sequence[Captioner],
        shear: Shear | Mapping | None = None,
        seed_json: str = "raw",
        max_image_side: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        shear = _as_shear(shear)  # before save_hyperparameters: Hydra (dict) and jsonargparse save the same
        # captioners hold model weights once set up: keep them out of the hyper-parameters
        self.save_hyperparameters(logger=False, ignore=["captioners"])
        self.captioners: list[Captioner] = list(
            captioners.values() if isinstance(captioners, Mapping) else captioners
        )
        if backend is not None:
            for c in self.captioners:
                if not isinstance(c, BatchedCaptioner):
                    raise ValueError(f"{c.name}: backend={backend} is not available for {type(c).__name__}")
                c.use_backend(backend)
        names = [c.name for c in self.captioners]
        if not names:
            raise ValueError("CaptionGeneratorModule needs at least one captioner (model.captioners)")
        if len(set(names)) != len(names):
            raise ValueError(f"captioner names must be unique, got {names}")
        if seed_json not in SEED_JSON:
            raise ValueError(f"seed_json={seed_json!r} is not one of {SEED_JSON}")
        self.shear = shear
        if self.shear.tokenizer == "model":
            raise ValueError(
                "shear.tokenizer=model has no model here: use clip_bpe or an HF tokenizer id / folder"
            )
        self.slots = {c.name: slot_names(c.name, c.num_captions) for c in self.captioners}
        self._image_refs: dict[str, str] = {}

    # -- data-side contract -------------------------------------------------------------------------------------
    def image_transform(self, train: bool):
        """PIL -> RGB PIL (captioners take decoded images; their processors do the rest)."""
        from clipforge.utils.transforms import ToRGB

        return ToRGB(self.hparams.max_image_side)

    # -- model ----------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        for captioner in self.captioners:
            captioner.setup(str(device))

    def on_predict_start(self) -> None:
        # batches carry keys, not image locations: look the images up in the predict dataset's records (only the
        # rows this rank writes, when the datamodule says which)
        datamodule = getattr(self.trainer, "datamodule", None)
        mine = {k for shard in getattr(datamodule, "assigned_predict_shards", []) for k in shard.keys}
        for ds in getattr(datamodule, "datasets", {}).get("predict", []):
            records = getattr(ds, "records", [])
            self._image_refs.update({r.key: image_ref(r.image) for r in records if not mine or r.key in mine})

    # -- steps ----------------------------------------------------------------------------------------------------
    def length(self, text: str) -> int:
        """Length of ``text`` in the shear unit (words for ``words`` / ``fixed``, else shear-tokenizer tokens)."""
        if self.shear.unit in ("words", "fixed"):
            return len(text.split())
        return self.shear.counter.count(text)

    def _columns(self, slot: str, raw_caption: str, gen: Generation) -> dict:
        sheared = self.shear(raw_caption, gen.text)
        meta = {
            "model_id": gen.model_id,
            "prompt_id": gen.prompt_id,
            "params": gen.params,
            "num_tokens": gen.num_tokens,
            "output": gen.raw_text,
        }
        return {
            slot: sheared,
            f"{slot}_raw": gen.text,
            f"{slot}_len": self.length(sheared),
            f"{slot}_raw_len": self.length(gen.text),
            f"{slot}_empty": not gen.text.strip(),
            f"{slot}_meta": meta,
        }

    def predict_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> dict:
        keys = list(batch["key"])
        if not keys:
            return {"rows": []}
        images, raw = list(batch["image"]), list(batch["caption"])
        captions: list[list[str]] = [[] for _ in keys]
        for text, i in zip(batch.get("captions", raw), batch.get("caption_image_index", range(len(raw)))):
            captions[int(i)].append(text)
        rows = [
            {
                "key": k,
                "image": self._image_refs.get(k, ""),
                "caption": c,
                "captions": cs,
                "caption_len": self.length(c),
            }
            for k, c, cs in zip(keys, raw, captions)
        ]
        for captioner in self.captioners:
            generations = captioner.generate(images, raw, keys)
            for row, gens, c in zip(rows, generations, raw):
                for slot, gen in zip(self.slots[captioner.name], gens):
                    row.update(self._columns(slot, c, gen))
        return {"rows": rows}

    def on_predictions_merged(self, rows: list[dict], output_dir: str) -> dict:
        """Write ``<output_dir>/seed_json/<slot>.json`` and return the summary (``summary.json``)."""
        slots = [s for names in self.slots.values() for s in names]
        summary = summarize(rows, slots)
        summary["length_unit"] = (
            "words" if self.shear.unit in ("words", "fixed") else f"{self.shear.tokenizer} tokens"
        )
        summary["shear"] = {"unit": self.shear.unit, "tokenizer": self.shear.tokenizer}
        if self.hparams.seed_json != "none":
            suffix = "_raw" if self.hparams.seed_json == "raw" else ""
            summary["seed_json"] = write_seed_json(rows, {s: s + suffix for s in slots}, output_dir)
        for slot, stats in summary["captioners"].items():
            log.info("recap %s: %s", slot, stats)
        return summary
