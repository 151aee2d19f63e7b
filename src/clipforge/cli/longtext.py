"""``clipforge longtext``: a long-caption benchmark in its own file layout -> a JSONL file the data layer reads.

clipforge longtext <sharegpt4v|urban1k|docci> <path> <out.jsonl> [--image-root DIR] [--limit N]

The layouts and the metric are :mod:`clipforge.eval.longtext`'s. The JSONL (``{"key", "image", "caption"}`` with
absolute image paths) is then a validation set like any other: ``data.val.path=<out.jsonl>``, cached by the
caption-embedding job, reported by ``clipforge eval``. Captions longer than the data layer's default 2000
characters need ``data.max_caption_chars``; the command says so.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from clipforge.eval.longtext import LAYOUTS, read_longtext, write_jsonl

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The layout, its path, the output file and the reader's options."""
    parser = argparse.ArgumentParser(
        prog="clipforge longtext", description="Write a long-caption benchmark as JSONL for the data layer."
    )
    parser.add_argument("layout", choices=LAYOUTS)
    parser.add_argument("path", help="ShareGPT4V JSON, Urban1k folder or DOCCI .jsonlines file")
    parser.add_argument("out", help="output .jsonl")
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--limit", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Read the layout, write the JSONL, print the pair count and what is missing or too long."""
    args = build_parser().parse_args(argv)
    records = read_longtext(args.layout, args.path, args.image_root, args.limit)
    missing = [r.key for r in records if not os.path.exists(r.image)]
    write_jsonl(records, args.out)
    longest = max((len(r.captions[0]) for r in records), default=0)
    print(f"{args.out}: {len(records)} pairs, {len(missing)} images missing, longest caption {longest} chars")
    if missing:
        print("missing images (first 5): " + ", ".join(missing[:5]))
    if longest > 2000:
        print(f"captions exceed the data layer's default 2000 chars: add data.max_caption_chars={longest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
