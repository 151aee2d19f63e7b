"""``clipforge classnames``: LLM class-name embeddings for zero-shot classification (LLM2CLIP's ImageNet protocol).

clipforge classnames --encoder <encoder folder | model folder | HF id | pypi:alias> --out feats.pt
    [--classnames imagenet | classes.txt] [--templates openai | simple | templates.txt] [--batch-size 64]

Writes, for every class, the raw encoder embeddings of its prompts with the rendered prompts
(:func:`clipforge.eval.llm_classnames.save_class_features`); ``CachedClassZeroShotEval`` then evaluates with it and
no LLM in memory. Default: ImageNet's 1000 classes x OpenAI's 80 templates.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The encoder, the output file, the class names and the templates."""
    parser = argparse.ArgumentParser(
        prog="clipforge classnames", description="LLM class-name embeddings for zero-shot classification."
    )
    parser.add_argument(
        "--encoder", required=True, help="stage-1 encoder folder, model folder, HF id or pypi: alias"
    )
    parser.add_argument("--out", required=True, help="output .pt file")
    parser.add_argument(
        "--classnames", default="imagenet", help="'imagenet' or a text file with one name per line"
    )
    parser.add_argument(
        "--templates", default="openai", help="'openai' (80), 'simple' (7) or a file of {} lines"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def _lines(path: str, strip: bool) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() if strip else line.rstrip("\n") for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Embed every class's prompts with the encoder and save them with the prompts."""
    args = build_parser().parse_args(argv)
    # imported after parsing: --help loads no model library
    from clipforge.eval.llm_classnames import build_class_features, save_class_features
    from clipforge.eval.zero_shot import imagenet_classnames, imagenet_templates
    from clipforge.models.llm_encoder import LLMEncoder
    from clipforge.utils import quiet

    quiet.install(transformers=True)

    classnames = imagenet_classnames() if args.classnames == "imagenet" else _lines(args.classnames, True)
    if args.templates in ("openai", "simple"):
        templates: list = imagenet_templates(args.templates)
    else:
        templates = _lines(args.templates, False)
    encoder = LLMEncoder.from_pretrained(args.encoder)
    features = build_class_features(
        lambda texts: encoder.encode(texts, batch_size=args.batch_size),
        classnames,
        templates,
        args.batch_size,
    )
    save_class_features(args.out, features, classnames, templates, encoder=args.encoder)
    print(f"{args.out}: {len(classnames)} classes x {len(templates)} templates x {features.shape[-1]}-d")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
