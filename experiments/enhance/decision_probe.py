"""Is "this caption belongs to this photo" readable from a VLM's hidden state where the AITQE answer starts?

    python experiments/enhance/decision_probe.py <VLM folder> \\
        [--train /tmp/clipforge-runs/eval_pairs_train.jsonl --val /tmp/clipforge-runs/eval_pairs_val.jsonl]

The two files are ``clipforge.tasks.enhance.eval_pairs`` outputs for the training and the held-out photos. For each
true and ``other_image`` pair, the official prompt followed by ``{"`` (the answer's first characters; the next token
is ``Recaption`` or ``Overall``, the verdict) goes through the model; the last position's hidden state of every
layer is kept. A logistic regression per layer is fitted on the training photos and scored (ROC AUC) on the held-out
ones. Held-out AUC near 0.5 at every layer means a linear read-out of the verdict does not exist in the model as it
is: SFT has to build the comparison, not just route it to the answer.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from clipforge.data.images import load_image
from clipforge.models.vlm import VisionLanguageModel
from clipforge.tasks.enhance.prompt import build_prompt


def hidden_states(vlm, path: str, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, layers, hidden)`` states at the verdict position and the 0/1 labels."""
    with open(path, encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["kind"] in ("true", "other_image")]
    tf = vlm.image_transform(False)
    states, labels = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        pixels = torch.stack([tf(load_image(r["image"])) for r in chunk])
        inputs = vlm.build_inputs([build_prompt(r["caption"]) + '{"' for r in chunk], padding_side="left")
        mask = inputs["attention_mask"]
        with torch.no_grad():
            out = vlm.model(
                inputs_embeds=vlm.embed(pixels, inputs["input_ids"]),
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                output_hidden_states=True,
            )
        states.append(torch.stack([h[:, -1] for h in out.hidden_states], 1).float())
        labels += [int(r["label"]) for r in chunk]
    return torch.cat(states).numpy(), np.array(labels)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_path")
    p.add_argument("--train", default="/tmp/clipforge-runs/eval_pairs_train.jsonl")
    p.add_argument("--val", default="/tmp/clipforge-runs/eval_pairs_val.jsonl")
    p.add_argument("--every", type=int, default=3, help="probe every n-th layer")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    vlm = VisionLanguageModel.from_pretrained(a.model_path).eval()
    xt, yt = hidden_states(vlm, a.train)
    xv, yv = hidden_states(vlm, a.val)
    result = {"train_pairs": len(yt), "val_pairs": len(yv), "layers": {}}
    for layer in range(0, xt.shape[1], a.every):
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(xt[:, layer], yt)
        result["layers"][layer] = {
            "train_auc": round(float(roc_auc_score(yt, clf.decision_function(xt[:, layer]))), 3),
            "val_auc": round(float(roc_auc_score(yv, clf.decision_function(xv[:, layer]))), 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
