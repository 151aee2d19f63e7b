"""ZeroShotEval against a module whose embeddings are known: one axis per class."""

from __future__ import annotations

import pytest
import torch

from clipforge.callbacks.zero_shot import ZeroShotEval
from clipforge.data.demo import demo_records


def fingerprint(img) -> torch.Tensor:
    """Size and mean colour: tells the demo photos apart, so encode_image can look up the label."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    return torch.tensor([img.size[0], img.size[1], *arr.mean(axis=(0, 1))], dtype=torch.float64)


class OneHotModule(torch.nn.Module):
    """Images embed to the one-hot of their demo label (``wrong`` of them to 1.0 on the next class and 0.5 on their
    own, so the true class comes second without ties); a prompt embeds to the one-hot of the class word it
    contains."""

    def __init__(self, classes: list[str], labels_by_size: dict, wrong: set[int]) -> None:
        super().__init__()
        self.classes, self.labels_by_size, self.wrong = classes, labels_by_size, wrong
        self.tokenizer = self._tok
        self._texts: list[str] = []

    @property
    def device(self):
        return torch.device("cpu")

    def image_transform(self, train: bool):
        return fingerprint

    def _tok(self, texts):
        self._texts = list(texts)
        return {"input_ids": torch.zeros(len(texts), 1, dtype=torch.long)}

    def encode_text(self, batch):
        out = torch.zeros(len(self._texts), len(self.classes))
        for i, t in enumerate(self._texts):
            hits = [c for c in self.classes if f" {c}" in f" {t.lower()}".replace(".", " ")]
            out[i, self.classes.index(max(hits, key=len))] = 1.0
        return out

    def encode_image(self, x):
        out = torch.zeros(len(x), len(self.classes))
        for i, fp in enumerate(x.tolist()):
            c = self.labels_by_size[tuple(round(v, 2) for v in fp)]
            if c in self.wrong:
                out[i, (c + 1) % len(self.classes)], out[i, c] = 1.0, 0.5
            else:
                out[i, c] = 1.0
        return out


def test_zero_shot_callback_accuracy_matches_hand_count():
    from clipforge.data.images import load_image

    records = demo_records()
    classes = sorted({r.meta["label"] for r in records})
    sizes = {
        tuple(round(v, 2) for v in fingerprint(load_image(r.image)).tolist()): classes.index(r.meta["label"])
        for r in records
    }
    assert len(sizes) == len(records)  # every photo has its own fingerprint
    wrong = {0, 1, 2}
    n_wrong = sum(1 for r in records if classes.index(r.meta["label"]) in wrong)
    cb = ZeroShotEval({"path": "demo"}, templates=["a photo of a {}."])
    result = cb.evaluate(OneHotModule(classes, sizes, wrong))
    assert result["top1"] == pytest.approx(100.0 * (len(records) - n_wrong) / len(records))
    assert result["top5"] == 100.0
