"""Caption metrics against human references: BLEU-1..4 and CIDEr (coco-caption's CIDEr-D), pure Python.

Both follow the COCO caption evaluation code (``pycocoevalcap`` 1.2, the ``coco-caption`` scorers) formula for
formula, quirks included, so scores equal it on the same tokenised inputs (the tests compare them to 1e-9):

* **BLEU** is corpus BLEU: clipped n-gram matches and guesses summed over all images, one brevity penalty from
  the summed hypothesis length and, per image, the reference length *closest* to its hypothesis'; ``1e-15`` /
  ``1e-9`` smoothing in every ratio. Per-image scores (sentence BLEU with the same smoothing) come alongside.
* **CIDEr** is the CIDEr-D variant coco-caption computes: TF-IDF n-gram vectors (n = 1..4, IDF from the
  references of the evaluated images), hypothesis counts clipped at the reference's, a Gaussian length penalty
  (sigma 6) on the difference of the *bigram* counts (the coco-caption code's ``length``), averaged over the
  references and the four n, times 10.

Inputs are whitespace-tokenised strings: :func:`tokenize` lower-cases and splits off punctuation the way the
PTB tokenizer coco-caption runs (in Java) mostly does; it is not that tokenizer, so absolute numbers differ
slightly from official leaderboards, while comparisons within one table are exact.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = ["bleu", "caption_metrics", "cider_d", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|'[a-z]+")


def tokenize(text: str) -> str:
    """Lower-case, drop punctuation, keep word-internal apostrophes' suffixes as tokens (``man's`` -> ``man 's``)."""
    words = _TOKEN.findall(text.lower())
    out: list[str] = []
    for w in words:
        head, sep, tail = w.partition("'")
        out.extend([head, sep + tail] if head and sep else [w])
    return " ".join(out)


def _ngrams(sentence: str, n: int) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str]) -> list[str]:
    if set(refs) != set(hyps):
        raise ValueError("refs and hyps must have the same keys")
    if not refs:
        raise ValueError("no captions to score")
    empty = [k for k, r in refs.items() if not r]
    if empty:
        raise ValueError(f"{len(empty)} images without references, e.g. {empty[0]!r}")
    return list(refs)


def bleu(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], n: int = 4
) -> tuple[list[float], dict[str, list[float]]]:
    """Corpus BLEU-1..``n`` and per-image BLEU-1..``n`` (coco-caption's ``Bleu(n)`` with ``option="closest"``).

    Args:
        refs: image key -> reference captions (tokenised, space-separated).
        hyps: image key -> the hypothesis caption (tokenised).
        n: highest n-gram order.

    Returns:
        ``([BLEU-1, ..., BLEU-n], {key: [BLEU-1, ..., BLEU-n]})``.
    """
    small, tiny = 1e-9, 1e-15
    total_guess, total_correct = [0] * n, [0] * n
    total_test = total_ref = 0
    per_image: dict[str, list[float]] = {}
    for key in _check(refs, hyps):
        ref_lens, max_counts = [], Counter()
        for ref in refs[key]:
            ref_lens.append(len(ref.split()))
            for gram, c in _ngrams(ref, n).items():
                max_counts[gram] = max(max_counts[gram], c)
        test_len = len(hyps[key].split())
        ref_len = min((abs(length - test_len), length) for length in ref_lens)[1]
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for gram, c in _ngrams(hyps[key], n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), c)
        total_test, total_ref = total_test + test_len, total_ref + ref_len
        scores, prod = [], 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            prod *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
            scores.append(prod ** (1.0 / (k + 1)))
        ratio = (test_len + tiny) / (ref_len + small)
        if ratio < 1:
            scores = [s * math.exp(1 - 1 / ratio) for s in scores]
        per_image[key] = scores
    corpus, prod = [], 1.0
    for k in range(n):
        prod *= float(total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(prod ** (1.0 / (k + 1)))
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        corpus = [s * math.exp(1 - 1 / ratio) for s in corpus]
    return corpus, per_image


def cider_d(
    refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str], n: int = 4, sigma: float = 6.0
) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr (coco-caption's ``Cider``, i.e. CIDEr-D) and the per-image scores it averages.

    Args:
        refs: image key -> reference captions (tokenised, space-separated); IDF comes from these.
        hyps: image key -> the hypothesis caption (tokenised).
        n: highest n-gram order.
        sigma: width of the Gaussian length penalty.
    """
    keys = _check(refs, hyps)
    cooked_refs = {k: [_ngrams(r, n) for r in refs[k]] for k in keys}
    df: Counter = Counter()
    for grams in cooked_refs.values():
        df.update({g for counts in grams for g in counts})
    log_images = math.log(float(len(keys)))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = float(tf) * (log_images - math.log(max(1.0, df[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:  # coco-caption's length: the number of bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    per_image: dict[str, float] = {}
    for key in keys:
        vec, norm, length = vector(_ngrams(hyps[key], n))
        score = [0.0] * n
        for ref in cooked_refs[key]:
            vec_r, norm_r, length_r = vector(ref)
            penalty = math.exp(-(float(length - length_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] != 0 and norm_r[k] != 0:
                    val /= norm[k] * norm_r[k]
                score[k] += val * penalty
        per_image[key] = sum(score) / n / len(cooked_refs[key]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image


def caption_metrics(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, str]) -> dict[str, float]:
    """``{"BLEU-1", ..., "BLEU-4", "CIDEr"}`` of raw (untokenised) captions, after :func:`tokenize`."""
    tok_refs = {k: [tokenize(r) for r in rs] for k, rs in refs.items()}
    tok_hyps = {k: tokenize(h) for k, h in hyps.items()}
    scores, _ = bleu(tok_refs, tok_hyps)
    out = {f"BLEU-{k + 1}": s for k, s in enumerate(scores)}
    out["CIDEr"] = cider_d(tok_refs, tok_hyps)[0]
    return out
