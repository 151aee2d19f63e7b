"""Long-caption retrieval (LLM2CLIP's ShareGPT4V-1k, Urban-1k, DOCCI): readers of their file layouts, argmax R@k.

Layouts (as LLM2CLIP's ``data/setup_eval_datasets.sh`` / Long-CLIP's loaders read them), one caption
per image:

* ``sharegpt4v`` — ``share-captioner_coco_lcs_sam_1246k_1107.json``: a list of ``{"id", "image", "conversations"}``;
  the **first 1000** entries, caption ``conversations[1]["value"]``, image ``<image_root>/<image>`` (default root:
  the JSON's folder).
* ``urban1k`` — ``Urban1k/caption/<n>.txt`` and ``Urban1k/image/<n>.jpg``; caption = the text file's **first
  line**; pairs by file stem, in numeric order.
* ``docci`` — ``docci_descriptions.jsonlines``: rows with ``split == "test"`` (5,000), caption ``description``,
  image ``<image_root>/<image_file>`` (default root: ``images/`` beside the file), key ``example_id``.

Metric (``retrieval_global``): image ``i`` and caption ``i`` are a pair; R@1 is an argmax hit and R@k "the pair
is among the top-k". Here both use the ranking metrics' tie rule (:mod:`clipforge.eval.ranking`): rank = number
of *other* gallery rows scoring ``>=`` the pair, a hit at ``k`` when ``rank < k``. Without ties that is exactly
LLM2CLIP's argmax / top-k; with ties LLM2CLIP credits whichever tied index comes first (``torch.argmax``), here
a tie counts against the model, so a collapsed encoder scores 0. Scores are computed in row chunks.

Use them three ways: :class:`LongTextEval` as a callback (images through the module, captions through its text
side or a cache), :func:`longtext_metrics` on embeddings, or ``clipforge longtext <layout> <path> <out.jsonl>``
(:mod:`clipforge.cli.longtext`) to turn a layout into a JSONL file the data layer reads (``data.val.path=<out.jsonl>``), so the
caption-embedding job can cache it and ``clipforge eval`` reports it like any validation set (long captions:
raise ``data.max_caption_chars``).

Design notes: docs/design/llm2clip.md#evaluation-protocol.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor

from clipforge.data.records import Record
from clipforge.eval.periodic import PeriodicEval
from clipforge.eval.ranking import pessimistic_ranks

__all__ = [
    "LAYOUTS",
    "LongTextEval",
    "longtext_metrics",
    "read_docci",
    "read_longtext",
    "read_sharegpt4v",
    "read_urban1k",
    "write_jsonl",
]

LAYOUTS = ("sharegpt4v", "urban1k", "docci")


# -- readers ------------------------------------------------------------------------------------------------------
def read_sharegpt4v(path: str, image_root: str | None = None, limit: int | None = 1000) -> list[Record]:
    """The first ``limit`` entries of a ShareGPT4V / ShareCaptioner JSON (``None`` = all)."""
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    root = image_root or os.path.dirname(os.path.abspath(path))
    records = []
    for i, item in enumerate(items[:limit] if limit is not None else items):
        caption = item["conversations"][1]["value"]
        key = str(item.get("id", i))
        records.append(
            Record(key, os.path.join(root, item["image"]), [caption], {"image_path": item["image"]})
        )
    return records


def _numeric_first(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_urban1k(root: str, image_root: str | None = None) -> list[Record]:
    """``<root>/caption/<n>.txt`` (first line) paired with ``<image_root or root/image>/<n>.jpg``."""
    captions_dir = os.path.join(root, "caption")
    images_dir = image_root or os.path.join(root, "image")
    stems = sorted(
        (os.path.splitext(f)[0] for f in os.listdir(captions_dir) if f.endswith(".txt")), key=_numeric_first
    )
    records = []
    for stem in stems:
        with open(os.path.join(captions_dir, stem + ".txt"), encoding="utf-8") as f:
            caption = f.readline().strip()
        records.append(Record(stem, os.path.join(images_dir, stem + ".jpg"), [caption], {}))
    return records


def read_docci(path: str, image_root: str | None = None, split: str = "test") -> list[Record]:
    """DOCCI descriptions of one ``split`` (``test``: the 5k evaluation images)."""
    root = image_root or os.path.join(os.path.dirname(os.path.abspath(path)), "images")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("split") != split:
                continue
            key = str(item.get("example_id") or os.path.splitext(item["image_file"])[0])
            records.append(Record(key, os.path.join(root, item["image_file"]), [item["description"]], {}))
    return records


def read_longtext(
    layout: str, path: str, image_root: str | None = None, limit: int | None = None
) -> list[Record]:
    """Records (one caption each) of a long-caption benchmark in its own file layout.

    Args:
        layout: one of :data:`LAYOUTS`.
        path: the ShareGPT4V JSON, the Urban1k folder or the DOCCI ``.jsonlines`` file.
        image_root: folder of the images (default: the layout's own place).
        limit: keep the first ``limit`` pairs (``sharegpt4v`` defaults to its 1000).

    Raises:
        ValueError: unknown layout.
    """
    if layout == "sharegpt4v":
        records = read_sharegpt4v(path, image_root, limit if limit is not None else 1000)
    elif layout == "urban1k":
        records = read_urban1k(path, image_root)
    elif layout == "docci":
        records = read_docci(path, image_root)
    else:
        raise ValueError(f"unknown long-caption layout {layout!r}; expected one of {LAYOUTS}")
    return records[:limit] if limit is not None else records


def write_jsonl(records: Sequence[Record], out: str) -> str:
    """Write ``{"key", "image", "caption"}`` rows (absolute image paths) the shared JSONL reader reads."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in records:
            row = {"key": r.key, "image": os.path.abspath(r.image), "caption": r.captions[0]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


# -- metric -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _direction(queries: Tensor, gallery: Tensor, ks: Sequence[int], chunk_size: int) -> dict[int, int]:
    hits = dict.fromkeys(ks, 0)
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ gallery.T
        rows = torch.arange(scores.shape[0], device=scores.device)
        rank = pessimistic_ranks(scores, rows, rows + start)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return hits


def longtext_metrics(
    image_features: Tensor,
    text_features: Tensor,
    ks: Sequence[int] = (1, 5, 10, 25, 50),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """``i2t_R@k`` / ``t2i_R@k`` (percent), ties counted against (module docstring); pair ``i`` = image ``i``,
    caption ``i``.

    Args:
        image_features: ``(N, D)`` L2-normalised image embeddings.
        text_features: ``(N, D)`` L2-normalised caption embeddings.
        ks: cut-offs (``1``: the pair beats every other candidate strictly).
        chunk_size: query rows per matmul.

    Raises:
        ValueError: the two sides differ in size, or are empty.
    """
    if image_features.shape[0] != text_features.shape[0] or image_features.shape[0] == 0:
        raise ValueError(
            f"one caption per image expected, got {image_features.shape[0]} images, {text_features.shape[0]} captions"
        )
    img, txt = image_features.float(), text_features.to(image_features.device).float()
    n = img.shape[0]
    out = {}
    for name, (q, g) in (("i2t", (img, txt)), ("t2i", (txt, img))):
        for k, hit in _direction(q, g, ks, chunk_size).items():
            out[f"{name}_R@{k}"] = 100.0 * hit / n
    return out


# -- callback -----------------------------------------------------------------------------------------------------
class LongTextEval(PeriodicEval):
    """Long-caption retrieval of a benchmark layout with the model being trained, every few epochs.

    Images go through ``image_transform(False)`` and ``encode_image``; captions through the module's cached-text
    path when ``text_embeddings`` is given (``encode_embedding`` of the cached rows, joined by key and caption),
    else through ``tokenizer`` + ``encode_text`` (LLM2CLIP with a text encoder, CLIP). Logs
    ``val/longtext/<name>/{i2t,t2i}_R@{k}``.

    Args:
        layout: one of :data:`LAYOUTS`.
        path: the layout's file or folder (see :func:`read_longtext`).
        image_root: image folder (default: the layout's own place).
        name: dataset name in the metric keys (default: the layout).
        limit: evaluate the first ``limit`` pairs (default: the whole benchmark).
        text_embeddings: folder of cached caption embeddings of these records (the caption-embedding job's
            shards); captions without one are left out with their image.
        every_n_epochs: run at the end of every n-th validation epoch (and always at the last one;
            :class:`~clipforge.eval.periodic.PeriodicEval`).
        batch_size: images / captions per forward pass.
        ks: cut-offs.
    """

    prefix = "val/longtext"

    def __init__(
        self,
        layout: str,
        path: str,
        image_root: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        text_embeddings: str | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 32,
        ks: list[int] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown long-caption layout {layout!r}; expected one of {LAYOUTS}")
        super().__init__(name or layout, every_n_epochs)
        self.layout, self.path, self.image_root, self.limit = layout, path, image_root, limit
        self.text_embeddings, self.batch_size, self.ks = (
            text_embeddings,
            batch_size,
            list(ks or (1, 5, 10, 25, 50)),
        )

    def _records(self) -> tuple[list[Record], dict[str, Tensor] | None]:
        records = read_longtext(self.layout, self.path, self.image_root, self.limit)
        if not self.text_embeddings:
            return records, None
        from clipforge.data.embeddings import join_text_embeddings

        records, _, embeddings = join_text_embeddings(records, self.text_embeddings)
        return records, embeddings

    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Compute the metrics now (also usable outside a Trainer)."""
        from clipforge.data.images import load_image

        records, cached = self._records()
        transform, device, bs = pl_module.image_transform(False), pl_module.device, self.batch_size
        images, texts = [], []
        for start in range(0, len(records), bs):
            chunk = records[start : start + bs]
            pixels = torch.stack([transform(load_image(r.image)) for r in chunk]).to(device)
            images.append(pl_module.encode_image(pixels))
            if cached is not None:
                emb = torch.stack([cached[r.key][0] for r in chunk])
                texts.append(pl_module.encode_embedding(emb.to(device)))
            else:
                tokens = pl_module.tokenizer([r.captions[0] for r in chunk])
                texts.append(pl_module.encode_text({k: v.to(device) for k, v in tokens.items()}))
        return longtext_metrics(torch.cat(images), torch.cat(texts), ks=self.ks)
