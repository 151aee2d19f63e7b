"""Does a trained VLM read the image? Caption likelihood of every (photo, caption) pair of held-out photos.

    python experiments/enhance/grounding_probe.py <VLM folder> [--data <COCO captions file>] [--images 12]

For the first ``--images`` photos of ``--data`` (default: the held-out split written by
``clipforge data split-coco``) and the first caption of each, computes the answer loss of ``caption j`` given
``photo i`` under the captioning prompt, for every i, j. A model that uses the image gives its own photo's caption a
lower loss (matched < mismatched) and picks the right photo for a caption above chance (top-1 vs 1/n).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from clipforge.data.images import load_image
from clipforge.losses.answer import AnswerLoss, answer_window
from clipforge.models.captioners.mini_llava import CAPTION_PROMPT
from clipforge.models.vlm import VisionLanguageModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_path")
    p.add_argument("--data", default="/tmp/clipforge-runs/coco_split/captions_train2017_val.json")
    p.add_argument("--image_root", default="../shared/data/coco-dev/train2017")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    vlm = VisionLanguageModel.from_pretrained(a.model_path).eval()
    with open(a.data, encoding="utf-8") as f:
        coco = json.load(f)
    images = coco["images"][: a.images]
    first: dict = {}
    for ann in coco["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"])
    captions = [first[im["id"]] for im in images]
    pixels = vlm.pixel_values([load_image(os.path.join(a.image_root, im["file_name"])) for im in images])
    n, loss = len(images), AnswerLoss()
    inputs = vlm.build_inputs([CAPTION_PROMPT] * n, captions, max_length=96)
    m = torch.zeros(n, n)
    with torch.no_grad():
        for i in range(n):
            for j in range(n):
                labels = inputs["labels"][j : j + 1]
                logits = vlm(
                    pixels[i : i + 1],
                    inputs["input_ids"][j : j + 1],
                    inputs["attention_mask"][j : j + 1],
                    logits_to_keep=answer_window(labels),
                )
                m[i, j] = loss(logits, labels)
    matched = float(m.diag().mean())
    mismatched = float((m.sum() - m.diag().sum()) / (n * n - n))
    top1 = float((m.argmin(0) == torch.arange(n)).float().mean())
    print(
        json.dumps(
            {
                "images": n,
                "matched_loss": matched,
                "mismatched_loss": mismatched,
                "top1": top1,
                "chance": 1 / n,
            }
        )
    )


if __name__ == "__main__":
    main()
