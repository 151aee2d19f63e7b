"""Evaluation helpers of enhance: ROC AUC (against scikit-learn) and the labelled pair builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipforge.cli.eval_pairs import main
from clipforge.data.specs import DatasetSpec
from clipforge.tasks.enhance.eval_pairs import build_eval_pairs
from clipforge.tasks.enhance.report import roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60).tolist()
    scores = rng.integers(1, 11, 60).tolist()  # integer scores: many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_on_continuous_scores(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, 200).tolist()
    scores = (rng.normal(size=200) + 0.8 * np.asarray(labels)).tolist()  # tie-free, informative
    assert len(set(scores)) == 200
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_matches_sklearn_when_almost_everything_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300).tolist()
    scores = [2 if y and rng.random() < 0.1 else 1 for y in labels]  # two values; 90 % of positives tie all
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([1] * 6, [1, 0, 1, 0, 0, 1]) == 0.5 == roc_auc_score([1, 0, 1, 0, 0, 1], [1] * 6)


def test_roc_auc_hand_cases():
    assert roc_auc([9, 8, 2], [1, 1, 0]) == 1.0
    assert roc_auc([2, 8, 9], [1, 1, 0]) == 0.0
    assert roc_auc([5, 5], [1, 0]) == 0.5
    assert roc_auc([5, 6], [1, 1]) is None


@pytest.fixture()
def source(tmp_path):
    rows = []
    for i, caption in enumerate(["a black dog on the grass", "two red buses on a street", "a cat on a bed"]):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append({"key": f"k{i}", "image": f"{i}.png", "caption": caption})
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_eval_pairs_one_true_and_one_negative_per_kind(source):
    rows = build_eval_pairs(DatasetSpec(path=str(source / "src.jsonl")), ["other_image", "shuffle"])
    assert [(r["key"], r["label"]) for r in rows] == [
        (f"k{i}#{kind}", int(kind == "true")) for i in range(3) for kind in ("true", "other_image", "shuffle")
    ]
    captions = {r["key"]: r["caption"] for r in rows}
    for i in range(3):
        assert captions[f"k{i}#other_image"] in {captions[f"k{j}#true"] for j in range(3) if j != i}
        assert sorted(captions[f"k{i}#shuffle"].split()) == sorted(captions[f"k{i}#true"].split())
    assert all(r["image"] == str(source / f"{r['key'][1]}.png") for r in rows)
    with pytest.raises(ValueError):
        build_eval_pairs(DatasetSpec(path=str(source / "src.jsonl")), ["paraphrase"])


def test_eval_pairs_cli_writes_jsonl_and_respects_the_split(source, capsys):
    out = source / "pairs.jsonl"
    assert (
        main(
            [
                "--path",
                str(source / "src.jsonl"),
                "--split",
                "val",
                "--val_fraction",
                "1.0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and "6 pairs (3 true) from 3 images" in capsys.readouterr().out
    main(
        ["--path", str(source / "src.jsonl"), "--split", "train", "--val_fraction", "1.0", "--out", str(out)]
    )
    assert out.read_text() == ""
