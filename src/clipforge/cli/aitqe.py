"""``clipforge aitqe``: the official AITQE inference command, on any AITQE-format checkpoint.

Same arguments as the released ``inference.py`` and the same JSON on stdout (``Recaption`` when the model judges
the pair weak, ``"Overall Score": "<n><Overall>"`` and, with ``--output_all``, the explanations and the five aspect
scores), but always valid JSON: the output is parsed instead of cut with ``outputs[:-1] + "}"``. Runs on the CPU
when CUDA is absent.

    clipforge aitqe --model_path <run>/aitqe --image_path photo.jpg --caption "a dog on a beach" [--output_all]

``clipforge-aitqe`` (the former console script) takes the same flags for one release.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipforge.tasks.enhance.parse import AITQEResult, parse_output
from clipforge.tasks.enhance.prompt import build_prompt, generation_kwargs

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["evaluate_pair", "main"]


def evaluate_pair(
    vlm,
    image: Image.Image,
    caption: str,
    image_path: str = "image",
    output_all: bool = False,
    max_new_tokens: int = 384,
) -> AITQEResult:
    """One pair through the official prompt and decoding (the seed's ``eval_single_node``), parsed.

    Args:
        vlm: a loaded :class:`~clipforge.models.vlm.VisionLanguageModel`.
        image: the RGB image.
        caption: the caption to judge.
        image_path: the path written into the prompt's image tag (never read by the model).
        output_all: generate the full answer instead of stopping at ``<Overall>``.
        max_new_tokens: generation limit.
    """
    kwargs = generation_kwargs(output_all, max_new_tokens, vlm.tokenizer)
    max_new = kwargs.pop("max_new_tokens")
    [text] = vlm.generate_text([image], [build_prompt(caption, image_path)], max_new_tokens=max_new, **kwargs)
    return parse_output(text)


def build_parser() -> argparse.ArgumentParser:
    """The official arguments (``--model_path``, ``--image_path``, ``--caption``, ``--output_all``, ``--gpu_id``)
    plus the checkpoint loading options."""
    p = argparse.ArgumentParser(
        prog="clipforge aitqe",
        description="Score one image-caption pair with an AITQE-format model; print the seed's JSON.",
    )
    p.add_argument("--model_path", required=True, help="AITQE-format checkpoint folder")
    p.add_argument("--image_path", required=True, help="the image")
    p.add_argument("--caption", required=True, help="the caption to evaluate")
    p.add_argument(
        "--output_all", action="store_true", help="all scores and explanations, not only the overall"
    )
    p.add_argument("--gpu_id", type=int, default=0, help="CUDA device (the CPU is used when CUDA is absent)")
    p.add_argument("--max_new_tokens", type=int, default=384)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument(
        "--vision_model_name_or_path",
        default=None,
        help="local SigLIP folder for a released AITQE checkpoint whose config.json names a hub id",
    )
    p.add_argument("--raw", action="store_true", help="print the model's text as generated, unparsed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model, evaluate the pair, print the JSON; exit status 1 when no overall score was readable."""
    args = build_parser().parse_args(argv)
    # imported after parsing: --help and a usage error load no torch
    import torch

    from clipforge.data.errors import ImageLoadError
    from clipforge.data.images import load_image
    from clipforge.models.vlm import VisionLanguageModel
    from clipforge.utils import quiet

    quiet.install(transformers=True)

    try:
        image = load_image(args.image_path)
    except ImageLoadError as e:
        print(f"error: cannot read --image_path {args.image_path}: {e.reason}", file=sys.stderr)
        return 2
    device = torch.device(f"cuda:{args.gpu_id}" if torch.cuda.is_available() else "cpu")
    vlm = VisionLanguageModel.from_pretrained(args.model_path, args.dtype, args.vision_model_name_or_path)
    vlm = vlm.to(device).eval()
    with torch.inference_mode():
        result = evaluate_pair(
            vlm, image, args.caption, args.image_path, args.output_all, args.max_new_tokens
        )
    if args.raw:
        print(result.raw)
    else:
        print(json.dumps(result.to_official(args.output_all), ensure_ascii=False))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
