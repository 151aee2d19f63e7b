"""``clipforge convert``: the released LLM2CLIP checkpoints into what clipforge loads.

clipforge convert llm2clip <checkpoint file | HF folder> <out_dir> [--head-width 64]
    a released vision checkpoint -> ``weights.pt`` + ``model/llm2clip_converted.yaml`` (a ready ``model`` config)
    + ``conversion.json`` (:mod:`clipforge.models.convert.llm2clip`)
clipforge convert cc-llm <release folder> <encoder folder> [--copy] [--dtype float32] [--max-length 512]
    the released caption-contrastive LLM -> an encoder folder :class:`~clipforge.models.llm_encoder.LLMEncoder`
    loads without remote code (:mod:`clipforge.models.convert.cc_llm`)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``llm2clip`` and ``cc-llm`` converters' arguments."""
    parser = argparse.ArgumentParser(
        prog="clipforge convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="converter", required=True)
    v = sub.add_parser("llm2clip", help="released LLM2CLIP vision checkpoint -> weights + model config")
    v.add_argument("checkpoint", help="released LLM2CLIP checkpoint: .pt/.bin/.safetensors file or HF folder")
    v.add_argument("out_dir", help="where weights.pt and model/llm2clip_converted.yaml go")
    v.add_argument(
        "--head-width",
        type=int,
        default=None,
        help="attention head width of the vision tower (default: the folder's config.json, else 64)",
    )
    c = sub.add_parser("cc-llm", help="released CC-finetuned LLM -> encoder folder")
    c.add_argument("src", help="downloaded microsoft/LLM2CLIP-*-CC-Finetuned folder")
    c.add_argument("out", help="encoder folder to write")
    c.add_argument("--copy", action="store_true", help="copy the weights instead of linking them")
    c.add_argument("--dtype", default=None, help="weight dtype when loaded (default bfloat16)")
    c.add_argument("--max-length", type=int, default=None, help="tokens per caption (default 512)")
    return parser


def _llm2clip(args: argparse.Namespace) -> None:
    from clipforge.models.convert.llm2clip import convert_llm2clip, write_converted

    converted = convert_llm2clip(args.checkpoint, head_width=args.head_width)
    paths = write_converted(converted, args.out_dir)
    print(f"{converted.layout}: {len(converted.state_dict)} tensors, {len(converted.ignored)} ignored")
    print(f"weights: {paths['weights']}\nmodel config: {paths['config']}")
    print(
        f"use: clipforge eval -cd {os.path.abspath(args.out_dir)} '~experiment' model=llm2clip_converted "
        "ckpt_path=null ..."
    )


def _cc_llm(args: argparse.Namespace) -> None:
    from clipforge.models.convert.cc_llm import convert_cc_llm

    overrides = {k: v for k, v in (("dtype", args.dtype), ("max_length", args.max_length)) if v is not None}
    out = convert_cc_llm(args.src, args.out, link=not args.copy, **overrides)
    print(f"encoder folder: {out}  (model.llm_encoder.name_or_path={out} / llm2clip_encoder={out})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen converter; a missing or unreadable input is one line on stderr, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        (_llm2clip if args.converter == "llm2clip" else _cc_llm)(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
