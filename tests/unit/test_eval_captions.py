"""BLEU and CIDEr (``clipforge.eval.captions``) against coco-caption's own scorers (``pycocoevalcap``) on real
COCO captions, plus hand-computed cases of the tokenizer and of BLEU's smoothing and brevity penalty."""

from __future__ import annotations

import json
import math
import random

import pytest

from clipforge.eval.captions import bleu, caption_metrics, cider_d, tokenize
from tests.helpers.shared_data import COCO_DEV, require


@pytest.fixture(scope="module")
def coco_refs() -> dict[str, list[str]]:
    path = require(*COCO_DEV, "annotations", "captions_train2017.json")
    refs: dict[str, list[str]] = {}
    for a in json.loads(path.read_text())["annotations"]:
        refs.setdefault(str(a["image_id"]), []).append(tokenize(a["caption"]))
    return refs


def _hypotheses(refs: dict[str, list[str]], seed: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Hypotheses of every kind: another image's caption, a held-out own caption, word salad, empty, one word."""
    rng = random.Random(seed)
    keys = sorted(refs)
    vocab = sorted({w for rs in refs.values() for r in rs for w in r.split()})
    gts, hyps = {}, {}
    for i, k in enumerate(keys):
        kind = i % 5
        if kind == 0:  # one of its own captions, scored against the other four
            hyps[k], gts[k] = refs[k][0], refs[k][1:]
        else:
            gts[k] = refs[k]
            if kind == 1:
                hyps[k] = rng.choice(refs[rng.choice(keys)])
            elif kind == 2:
                hyps[k] = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 20)))
            elif kind == 3:
                hyps[k] = rng.choice(["", "a", "a man"])
            else:
                hyps[k] = refs[k][1] + " " + refs[k][2]  # too long: the length penalties
    return gts, hyps


def _coco_caption():
    """pycocoevalcap's ``Bleu`` and ``Cider``, imported when used: ``make setup`` installs this peer in .venv only
    (the vLLM environment collects this file too)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    return Bleu, Cider


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_and_cider_equal_coco_caption_on_real_captions(coco_refs, seed):
    Bleu, Cider = _coco_caption()
    gts, hyps = _hypotheses(coco_refs, seed)
    res = {k: [h] for k, h in hyps.items()}
    ref_bleu, ref_bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    ours, ours_each = bleu(gts, hyps)
    assert max(abs(a - b) for a, b in zip(ours, ref_bleu)) <= 1e-9
    keys = list(gts)  # pycocoevalcap lists per-image scores in the dict's order
    for n in range(4):
        assert max(abs(ours_each[k][n] - ref_bleu_each[n][i]) for i, k in enumerate(keys)) <= 1e-9
    ref_cider, ref_cider_each = Cider().compute_score(gts, res)
    score, each = cider_d(gts, hyps)
    assert abs(score - ref_cider) <= 1e-9
    assert max(abs(each[k] - ref_cider_each[i]) for i, k in enumerate(keys)) <= 1e-9
    assert 0 < score < 10 and 0 < ours[3] < 1


def test_caption_metrics_tokenises_then_scores(coco_refs):
    keys = sorted(coco_refs)[:20]
    raw_refs = {k: [r.upper() + " ." for r in coco_refs[k][1:]] for k in keys}
    raw_hyps = {k: coco_refs[k][0].capitalize() + "!" for k in keys}
    got = caption_metrics(raw_refs, raw_hyps)
    Bleu, Cider = _coco_caption()
    gts, res = {k: coco_refs[k][1:] for k in keys}, {k: [coco_refs[k][0]] for k in keys}
    assert got["BLEU-4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-12)
    assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_tokenize_by_hand():
    assert tokenize("A man's dog, running -- FAST!") == "a man 's dog running fast"
    assert tokenize("  Two  cats.\nOn a bed... ") == "two cats on a bed"
    assert tokenize("3.5 km") == "3 5 km"


def test_bleu_by_hand():
    # identical 4-word sentence: every precision is 1 up to the 1e-15 / 1e-9 smoothing, no brevity penalty
    (b1, _, _, b4), _ = bleu({"x": ["a b c d"]}, {"x": "a b c d"})
    assert b1 == pytest.approx(1.0, abs=1e-8) and b4 == pytest.approx(1.0, abs=1e-8)
    # 2 of 3 unigrams match ("a" clipped to the reference's one), hypothesis shorter than the closest reference
    (b1, _, _, _), _ = bleu({"x": ["a b c d e", "q r s t"]}, {"x": "a a b"})
    assert b1 == pytest.approx((2 / 3) * math.exp(1 - 4 / 3), abs=1e-8)


def test_mismatched_keys_and_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="same keys"):
        bleu({"a": ["x"]}, {"b": "x"})
    with pytest.raises(ValueError, match="no captions"):
        cider_d({}, {})
    with pytest.raises(ValueError, match="without references"):
        cider_d({"a": []}, {"a": "x"})
