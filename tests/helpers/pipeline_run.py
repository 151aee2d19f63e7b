"""A complete ``clipforge-pipeline`` run folder written without running anything (docs: spec PIPELINE_RUN).

``make_pipeline_run(tmp_path)`` writes ``pipeline.json``, ``state.json``, ``lineage.jsonl`` / ``lineage.parquet``,
``comparison.json`` and ``retrieval_examples.json`` exactly as the pipeline must, with real PNG images (a coloured
shape on a coloured background, described by the raw captions), deterministic pseudo-random scores and metrics
(``seed``), and one collapsed training run. The report and ``load_pipeline`` are tested on it; the real
pipeline's tests check that its run folder has the same shape.

Values follow the contract's rules, so tests can recompute them:

* image ``i`` has key ``img{i:03d}`` and is held out by fold ``i % folds``;
* a metric's ``mean`` / ``std`` are the mean and the sample standard deviation (``ddof=1``, 0 for one run) of
  its runs; ``rsum`` is the sum of the six recalls;
* chance: t2i R@K = ``100 * min(K, n) / n`` for ``n`` held-out images; i2t R@K = the probability that a random
  ranking of the ``m`` held-out captions puts one of the image's ``c`` captions in the top K,
  ``100 * mean_i(1 - C(m - c_i, K) / C(m, K))``; both averaged over folds; CRA's ``chance_pairs`` = 100 / groups.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ALL_STEPS = ("recap", "enhance", "llm2clip", "train", "eval", "report")
ALL_ARMS = ("raw", "recap", "enhanced", "llm2clip")
METRIC_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")
ASPECTS = (
    "text_quality",
    "image_text_matching",
    "object_detail",
    "semantic_understanding",
    "text_chart_description",
)
CAPTIONERS = ("tiny_qwen_vl", "mini_llava")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "grey": (120, 120, 120),
    "black": (20, 20, 20),
    "pink": (250, 190, 200),
}
SHAPES = ("circle", "square", "triangle")
ARM_LABELS = {
    "raw": "raw captions (control)",
    "recap": "raw + recap captions",
    "enhanced": "enhanced captions",
    "llm2clip": "llm2clip text encoder",
}
ARM_QUALITY = {"raw": 0.35, "recap": 0.45, "enhanced": 0.55, "llm2clip": 0.5}  # fraction of hits at R@1
COLLAPSED = ("llm2clip", 1)  # (arm, fold) of the collapsed run; the last arm when llm2clip is not trained
START = datetime(2025, 1, 6, 9, 0, 0, tzinfo=timezone.utc)


def _draw(path: Path, shape: str, colour: str, background: str, size: int = 96) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    lo, hi = size // 5, size - size // 5
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=fill)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=fill)
    else:
        draw.polygon([(size // 2, lo), (hi, hi), (lo, hi)], fill=fill)
    img.save(path)


def _decide(overall: int | None) -> tuple[str, bool]:
    """(action, has a recaption) for an overall score: the shape of the recaption_present / threshold policies."""
    if overall is None:
        return "keep", False
    if overall <= 2:
        return "drop", False
    if overall <= 4:
        return "rewrite", True
    if overall == 5:
        return "keep_both", True
    return "keep", False


def _lineage_row(i: int, folds: int, run_steps: set[str], image_dir: Path, rng: np.random.Generator) -> dict:
    key = f"img{i:03d}"
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    path = image_dir / f"{key}.png"
    _draw(path, shape, colour, background)
    article = "an" if colour[0] in "aeiou" else "a"
    raw = [f"{article} {colour} {shape} on a {background} background"]
    if i % 2 == 0:
        raw.append(f"stock photo {key} {colour} {shape} free download")  # a noisy web alt-text
    recap = []
    if "recap" in run_steps:
        styles = {
            "tiny_qwen_vl": f"The image shows a single {colour} {shape} in the centre of a plain {background} "
            f"background. The {shape} has sharp edges and a flat colour. There is no text in the image.",
            "mini_llava": f"{article.capitalize()} {colour} {shape} sits on a {background} background. It is drawn with flat colour and "
            "no shading. Nothing else is visible.",
        }
        for captioner in CAPTIONERS:
            long = styles[captioner]
            sheared = long.split(". ")[0] + "."
            recap.append(
                {
                    "captioner": captioner,
                    "raw": long,
                    "sheared": sheared,
                    "raw_len": len(long.split()),
                    "sheared_len": len(sheared.split()),
                    "model": f"tests/helpers/{captioner}",
                    "prompt": "Describe this image in detail.",
                    "decoding": json.dumps({"do_sample": False, "max_new_tokens": 64}, sort_keys=True),
                }
            )
    scored, final = [], []
    if "enhance" in run_steps:
        candidates = [(c, "raw") for c in raw] + [(r["sheared"], r["captioner"]) for r in recap]
        for j, (caption, source) in enumerate(candidates):
            overall = None if (i, j) == (1, 0) else int(rng.integers(1, 11))  # one unreadable output
            action, has_recaption = _decide(overall)
            recaption = (
                f"{article} {colour} {shape} centred on a {background} background" if has_recaption else None
            )
            rescore = int(rng.integers(6, 11)) if has_recaption else None
            scores = {a: (None if overall is None else int(rng.integers(1, 11))) for a in ASPECTS}
            scores["text_chart_description"] = None  # no text in these images
            scored.append(
                {
                    "caption": caption,
                    "source": source,
                    "overall": overall,
                    "expected": None
                    if overall is None
                    else round(overall + float(rng.uniform(-0.5, 0.5)), 3),
                    "scores": scores,
                    "action": action,
                    "recaption": recaption,
                    "final_overall": {"keep": overall, "drop": None}.get(action, rescore),
                }
            )
            if action in ("keep", "keep_both"):
                final.append({"caption": caption, "source": source})
            if action in ("rewrite", "keep_both"):
                final.append({"caption": recaption, "source": f"rewrite:{source}"})
    return {
        "key": key,
        "image": str(path.resolve()),
        "fold": i % folds,
        "raw_captions": raw,
        "recap": recap,
        "scored": scored,
        "final_captions": final,
        "enhancer": "steps/enhance/aitqe (trained in pipeline)" if "enhance" in run_steps else "",
    }


def _chance(n_captions_per_image: Sequence[int]) -> dict[str, float]:
    n, m = len(n_captions_per_image), sum(n_captions_per_image)
    out = {}
    for k in (1, 5, 10):
        miss = [math.comb(m - c, k) / math.comb(m, k) if m >= k else 0.0 for c in n_captions_per_image]
        out[f"i2t_R@{k}"] = 100 * (1 - sum(miss) / n)
        out[f"t2i_R@{k}"] = 100 * min(k, n) / n
    out["rsum"] = sum(out[k] for k in METRIC_KEYS[:-1])
    return out


def _recall(n: int, frac: float, k: int, rng: np.random.Generator) -> float:
    """A percentage that a real evaluation can produce: ``100 * hits / n`` with hits growing with ``k``."""
    p = min(1.0, frac * (1 + 0.6 * math.log(k)) + float(rng.uniform(-0.1, 0.1)))
    return 100 * min(n, max(0, round(p * n))) / n


def _comparison(rows: list[dict], arms: Sequence[str], folds: int, seeds: Sequence[int], rng) -> dict:
    per_fold = [[len(r["raw_captions"]) for r in rows if r["fold"] == f] for f in range(folds)]
    chance_folds = [_chance(c) for c in per_fold]
    collapsed = (COLLAPSED[0] if COLLAPSED[0] in arms else arms[-1], COLLAPSED[1] % folds)
    out_arms = {}
    for arm in arms:
        runs = []
        for fold in range(folds):
            for seed in seeds:
                n_img, n_cap = len(per_fold[fold]), sum(per_fold[fold])
                is_collapsed = (arm, fold) == collapsed and seed == seeds[0]
                if is_collapsed:  # every embedding equal: ties rank in index order, the numbers sit at chance
                    metrics = {k: round(v, 4) for k, v in chance_folds[fold].items()}
                else:
                    metrics = {}
                    for k in (1, 5, 10):
                        metrics[f"i2t_R@{k}"] = _recall(n_img, ARM_QUALITY[arm] + 0.1, k, rng)
                        metrics[f"t2i_R@{k}"] = _recall(n_cap, ARM_QUALITY[arm], k, rng)
                    metrics["rsum"] = round(sum(metrics[k] for k in METRIC_KEYS[:-1]), 4)
                    metrics = {k: metrics[k] for k in METRIC_KEYS}
                runs.append(
                    {
                        "fold": fold,
                        "seed": seed,
                        "n_images": n_img,
                        "n_captions": n_cap,
                        "collapsed": is_collapsed,
                        "metrics": metrics,
                    }
                )
        values = {k: [r["metrics"][k] for r in runs] for k in METRIC_KEYS}
        out_arms[arm] = {
            "label": ARM_LABELS.get(arm, arm),
            "text_encoder": "llm2clip_tiny_llama" if arm == "llm2clip" else "clip_text_tower",
            "runs": runs,
            "mean": {k: statistics.fmean(v) for k, v in values.items()},
            "std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()},
            "collapsed_runs": sum(r["collapsed"] for r in runs),
        }
    n_groups = sum(1 for r in rows if len(r["raw_captions"]) >= 2)
    cra = {"clip_text_tower": {"cra_pairs": 42.8571, "cra_full": 35.7143, "n_groups": n_groups}}
    if "llm2clip" in arms:
        cra["llm2clip_tiny_llama"] = {"cra_pairs": 71.4286, "cra_full": 64.2857, "n_groups": n_groups}
    for v in cra.values():
        v["chance_pairs"] = 100 / n_groups
    return {
        "folds": folds,
        "seeds": list(seeds),
        "metric_keys": list(METRIC_KEYS),
        "arms": out_arms,
        "chance": {
            "n_images_mean": statistics.fmean(len(c) for c in per_fold),
            "n_captions_mean": statistics.fmean(sum(c) for c in per_fold),
            "mean": {k: statistics.fmean(c[k] for c in chance_folds) for k in METRIC_KEYS},
        },
        "cra": cra,
        "notes": [
            f"Every arm is evaluated on the same held-out fold ({folds}-fold split by image key).",
            f"{collapsed[0]} fold {collapsed[1]} seed {seeds[0]} collapsed (all text embeddings equal); its "
            "metrics are at chance and are included in the mean.",
        ],
    }


def _retrieval_examples(rows: list[dict], arms: Sequence[str], rng, per_arm: int = 3) -> dict:
    held_out = [r for r in rows if r["fold"] == 0]
    keys = [r["key"] for r in held_out]
    out = {}
    for arm in arms:
        examples = []
        for r in held_out[:per_arm]:
            top5 = [keys[j] for j in rng.permutation(len(keys))[:5]]
            examples.append(
                {
                    "query": r["raw_captions"][0],
                    "query_key": r["key"],
                    "top5": top5,
                    "hit_rank": top5.index(r["key"]) if r["key"] in top5 else None,
                }
            )
        out[arm] = examples
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_lineage(run_dir: str | Path, rows: Sequence[Mapping]) -> None:
    """Write ``lineage.jsonl`` and ``lineage.parquet`` (the same rows) into ``run_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    with open(run_dir / "lineage.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), run_dir / "lineage.parquet")


def edit_lineage(run_dir: str | Path, edit: Callable[[list[dict]], list[dict] | None]) -> None:
    """Rewrite a run's lineage (both files) through ``edit`` (it changes the rows in place or returns new ones)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "lineage.jsonl").read_text().splitlines() if line]
    new = edit(rows)
    write_lineage(run_dir, rows if new is None else new)


def make_pipeline_run(
    tmp_path: str | Path,
    n_images: int = 14,
    folds: int = 3,
    arms: Sequence[str] = ALL_ARMS,
    seed: int = 0,
    steps: Sequence[str] = ALL_STEPS,
    failed: Mapping[str, str] | None = None,
    seeds: Sequence[int] = (0,),
    name: str = "pipeline_run",
) -> Path:
    """Write a finished pipeline run folder (the report step still running) under ``tmp_path / name``.

    Args:
        tmp_path: parent folder; the images go to ``tmp_path / f"{name}_source"``.
        n_images: images of the source.
        folds: held-out folds (image ``i`` is held out by fold ``i % folds``).
        arms: arms to train; an arm whose step is not in ``steps`` (``recap``, ``enhanced``, ``llm2clip``) is left
            out, as the pipeline would.
        seed: seed of every pseudo-random value.
        steps: the pipeline's steps, a subset of :data:`ALL_STEPS` (order kept).
        failed: step -> error message: that step failed, its outputs are missing and later steps did not run.
        seeds: training seeds (runs per arm = folds x seeds).
        name: the run folder's name.

    Returns:
        The run folder.
    """
    if n_images < folds:
        raise ValueError(f"every fold needs a held-out image: n_images={n_images} < folds={folds}")
    failed = dict(failed or {})
    steps = [s for s in ALL_STEPS if s in steps]
    unknown = set(failed) - set(steps)
    if unknown:
        raise ValueError(f"failed steps {sorted(unknown)} are not in steps {steps}")
    ran = []  # steps that started, in order; stops at the first failure
    for s in steps:
        ran.append(s)
        if s in failed:
            break
    done = {s for s in ran if s not in failed}
    needs = {"recap": "recap", "enhanced": "enhance", "llm2clip": "llm2clip"}
    arms = [a for a in arms if a not in needs or needs[a] in done]
    rng = np.random.default_rng(seed)
    tmp_path = Path(tmp_path)
    run_dir = tmp_path / name
    image_dir = tmp_path / f"{name}_source"
    image_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    rows = [_lineage_row(i, folds, done, image_dir, rng) for i in range(n_images)]
    write_lineage(run_dir, rows)
    trained = {"train", "eval"} <= done and bool(arms)
    comparison = _comparison(rows, arms, folds, list(seeds), rng) if trained else None
    if comparison is not None:
        _write_json(run_dir / "comparison.json", comparison)
        _write_json(run_dir / "retrieval_examples.json", _retrieval_examples(rows, arms, rng))

    _write_json(
        run_dir / "pipeline.json",
        {
            "name": name,
            "steps": steps,
            "arms": list(arms),
            "folds": folds,
            "source": str(image_dir.resolve()),
            "seeds": list(seeds),
            "created": START.isoformat(),
        },
    )
    n_rows = {
        "recap": n_images,
        "enhance": sum(len(r["scored"]) for r in rows),
        "llm2clip": sum(len(r["raw_captions"]) + len(r["final_captions"]) for r in rows),
        "train": len(arms) * folds * len(seeds),
        "eval": len(arms) * folds * len(seeds),
    }
    state, clock = {}, START
    for s in ran:
        step_dir = run_dir / "steps" / s
        step_dir.mkdir(parents=True, exist_ok=True)
        wall = round(float(rng.uniform(2, 60)), 3)
        finished = clock + timedelta(seconds=wall)
        status = "failed" if s in failed else "running" if s == "report" else "done"
        rows_s = None if status != "done" else n_rows[s]
        state[s] = {
            "hash": hashlib.sha256(f"{s}:{seed}".encode()).hexdigest()[:16],
            "status": status,
            "started": clock.isoformat(),
            "finished": finished.isoformat() if status != "running" else None,
            "wall_s": wall if status != "running" else None,
            "rows": rows_s,
            "errors": None if rows_s is None else (1 if s == "enhance" else 0),
            "rows_per_s": None if rows_s is None else rows_s / wall,
            "outputs": {} if status != "done" else {"dir": str(step_dir.resolve())},
            "error": failed.get(s),
        }
        clock = finished
    _write_json(run_dir / "state.json", {"steps": state})
    return run_dir


class Node:
    """An element of a parsed HTML page (see :func:`parse_html`)."""

    def __init__(self, tag: str, attrs: Mapping[str, str | None], parent: Node | None = None) -> None:
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        """The text inside, entities decoded, whitespace collapsed."""
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and (id is None or n.attrs.get("id") == id)
        ]

    def find(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> Node | None:
        found = self.find_all(tag, cls, id)
        return found[0] if found else None

    def table_rows(self) -> list[list[str]]:
        """The text of every cell, row by row (header row first)."""
        return [[c.text() for c in tr.find_all() if c.tag in ("th", "td")] for tr in self.find_all("tr")]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def parse_html(text: str) -> Node:
    """Parse an HTML page into a :class:`Node` tree (stdlib parser; void elements close themselves)."""
    from html.parser import HTMLParser

    root = Node("#root", {})

    class _Parser(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.cur = root

        def handle_starttag(self, tag, attrs):
            node = Node(tag, attrs, self.cur)
            self.cur.children.append(node)
            if tag not in VOID:
                self.cur = node

        def handle_startendtag(self, tag, attrs):
            self.cur.children.append(Node(tag, attrs, self.cur))

        def handle_endtag(self, tag):
            n = self.cur
            while n is not root and n.tag != tag:
                n = n.parent
            if n is not root:
                self.cur = n.parent

        def handle_data(self, data):
            self.cur.children.append(data)

    p = _Parser()
    p.feed(text)
    p.close()
    return root
