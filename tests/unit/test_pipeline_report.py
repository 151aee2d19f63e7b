"""The pipeline report and ``load_pipeline`` on the fixture run folder (tests/helpers/pipeline_run.py).

Expected numbers are recomputed here from the fixture's raw files (runs, lineage), not read from the report's
own inputs where a recomputation is possible.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from clipforge.pipeline.report import gallery_keys, write_report
from clipforge.utils.runs import load_pipeline
from tests.helpers.pipeline_run import ALL_STEPS, METRIC_KEYS, edit_lineage, make_pipeline_run, parse_html

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = '"><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_pipeline_run(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def report(run_dir):
    out = write_report(run_dir)
    return out, parse_html(Path(out["report.html"]).read_text()), Path(out["report.md"]).read_text()


def _json(run_dir: Path, name: str):
    return json.loads((run_dir / name).read_text())


def _lineage(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "lineage.jsonl").read_text().splitlines()]


def _rows_by_first_cell(table) -> dict[str, list[str]]:
    return {r[0]: r for r in table.table_rows()[1:]}


# ------------------------------------------------------------------------------------------------ load_pipeline


def test_load_pipeline_tables(run_dir):
    run = load_pipeline(run_dir)
    state = _json(run_dir, "state.json")["steps"]
    assert run.steps["step"].tolist() == list(ALL_STEPS)
    assert run.steps["status"].tolist() == ["done"] * 5 + ["running"]
    assert run.steps.set_index("step").loc["enhance", "rows"] == state["enhance"]["rows"] == 49
    assert run.steps.set_index("step").loc["recap", "wall_s"] == state["recap"]["wall_s"]

    assert run.lineage["key"].tolist() == [f"img{i:03d}" for i in range(14)]
    assert run.lineage["fold"].tolist() == [i % 3 for i in range(14)]
    # 14 images, the even ones with a second raw caption; 2 captioners; every raw and sheared caption scored
    assert run.lineage["n_raw_captions"].sum() == 21
    counts = run.captions["stage"].value_counts().to_dict()
    finals = sum(len(r["final_captions"]) for r in _lineage(run_dir))
    assert counts == {"raw": 21, "recap": 28, "sheared": 28, "scored": 49, "final": finals}

    first = _lineage(run_dir)[0]
    row = run.captions[(run.captions.key == "img000") & (run.captions.stage == "scored")].iloc[0]
    assert (row.caption, row.source, row.overall, row.action) == (
        first["raw_captions"][0],
        "raw",
        first["scored"][0]["overall"],
        first["scored"][0]["action"],
    )
    assert row.image_text_matching == first["scored"][0]["scores"]["image_text_matching"]
    sheared = run.captions[(run.captions.key == "img000") & (run.captions.stage == "sheared")].iloc[0]
    assert (sheared.caption, sheared.length) == (
        first["recap"][0]["sheared"],
        first["recap"][0]["sheared_len"],
    )


def test_load_pipeline_metrics_and_best_arm(run_dir):
    run = load_pipeline(run_dir)
    comparison = _json(run_dir, "comparison.json")
    assert len(run.metrics) == 4 * 3 * len(METRIC_KEYS)  # arms x (folds x seeds) x metrics
    assert set(run.metrics["arm"]) == {"raw", "recap", "enhanced", "llm2clip"}
    collapsed = run.metrics[run.metrics.collapsed]
    assert set(zip(collapsed.arm, collapsed.fold, collapsed.seed)) == {("llm2clip", 1, 0)}
    one = run.metrics[
        (run.metrics.arm == "recap") & (run.metrics.fold == 2) & (run.metrics.metric == "t2i_R@5")
    ]
    run_2 = next(r for r in comparison["arms"]["recap"]["runs"] if r["fold"] == 2)
    assert one.value.tolist() == [run_2["metrics"]["t2i_R@5"]]
    assert one.n_images.tolist() == [4] and one.n_captions.tolist() == [6]  # images 2,5,8,11: 3 even ones
    rsum = {
        a: statistics.fmean(r["metrics"]["rsum"] for r in v["runs"]) for a, v in comparison["arms"].items()
    }
    assert run.best_arm() == max(rsum, key=rsum.get)


def test_load_pipeline_bad_lines_and_parquet(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=4)
    full = load_pipeline(run_dir)
    (run_dir / "lineage.jsonl").unlink()
    from_parquet = load_pipeline(run_dir)
    assert from_parquet.lineage["key"].tolist() == full.lineage["key"].tolist()
    assert from_parquet.captions[["key", "stage", "caption", "overall"]].equals(
        full.captions[["key", "stage", "caption", "overall"]]
    )
    lines = [json.dumps(r) for r in full.records]
    (run_dir / "lineage.jsonl").write_text("\n".join([lines[0], "{not json", "[1, 2]", *lines[1:]]) + "\n")
    run = load_pipeline(run_dir)
    assert run.lineage["key"].tolist() == ["img000", "img001", "img002", "img003"]
    assert run.problems == [
        "lineage.jsonl line 2: not JSON (Expecting property name enclosed in double quotes)",
        "lineage.jsonl line 3: not a lineage row (no string 'key')",
    ]
    (run_dir / "comparison.json").write_text('{"folds": 3,')
    (run_dir / "retrieval_examples.json").write_text("[]")
    run = load_pipeline(run_dir)
    assert (run.comparison, run.retrieval_examples, len(run.metrics)) == ({}, {}, 0)
    assert run.problems[2:] == [
        "comparison.json could not be read: Expecting property name enclosed in double quotes: line 1 column 13 "
        "(char 12); its sections are left out",
        "retrieval_examples.json could not be read: retrieval_examples.json holds a list, not a JSON object; its "
        "sections are left out",
    ]
    page = Path(write_report(run_dir)["report.html"]).read_text()
    warnings = [p.text() for p in parse_html(page).find(id="steps").find_all("p", cls="warn")]
    assert warnings == run.problems
    (run_dir / "state.json").write_text("{")
    with pytest.raises(ValueError, match="state.json could not be read"):
        load_pipeline(run_dir)
    (run_dir / "state.json").unlink()
    with pytest.raises(FileNotFoundError, match="state.json is missing"):
        load_pipeline(run_dir)


# ------------------------------------------------------------------------------------------------------- report


def test_every_section_and_output(report, run_dir):
    out, dom, md = report
    assert set(out) == {
        "report.html",
        "report.md",
        "figures/recall_at_1.png",
        "figures/score_hist.png",
        "figures/thumbs",
    }
    for name in ("figures/recall_at_1.png", "figures/score_hist.png"):
        assert Path(out[name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    for ident in ("steps", "comparison-section", "comparison", "cra-table", "notes", "retrieval", "scores"):
        assert dom.find(id=ident) is not None, ident
    assert dom.find(id="gallery") is not None
    for title in ("## Steps", "## Comparison of the arms", "## Notes", "## Retrieval examples", "## Gallery"):
        assert title in md
    assert "Every step ran." in dom.find(id="steps").text()
    notes = [li.text() for li in dom.find(id="notes").find_all("li")]
    assert notes == _json(run_dir, "comparison.json")["notes"]


def test_steps_table(report, run_dir):
    _, dom, md = report
    state = _json(run_dir, "state.json")["steps"]
    rows = _rows_by_first_cell(dom.find(id="steps-table"))
    assert list(rows) == list(ALL_STEPS)
    s = state["enhance"]
    assert rows["enhance"] == ["enhance", "done", "49", "1", f"{s['wall_s']:.1f}", f"{49 / s['wall_s']:.2f}"]
    assert rows["report"] == ["report", "running", "–", "–", "–", "–"]
    assert f"| enhance | done | 49 | 1 | {s['wall_s']:.1f} | {49 / s['wall_s']:.2f} |" in md


def _chance_reference(captions_per_image: list[int]) -> dict[str, float]:
    """Chance of a random ranking, by the product form of the hypergeometric miss probability."""
    n, m = len(captions_per_image), sum(captions_per_image)
    out = {}
    for k in (1, 5, 10):
        miss = [
            math.prod((m - c - j) / (m - j) for j in range(k)) if m >= k else 0.0 for c in captions_per_image
        ]
        out[f"i2t_R@{k}"] = 100 * (1 - statistics.fmean(miss))
        out[f"t2i_R@{k}"] = 100 * min(k, n) / n
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def test_comparison_table_numbers_next_to_chance(report, run_dir):
    _, dom, md = report
    comparison = _json(run_dir, "comparison.json")
    lineage = _lineage(run_dir)
    folds = [[len(r["raw_captions"]) for r in lineage if r["fold"] == f] for f in range(3)]
    chance = {k: statistics.fmean(_chance_reference(c)[k] for c in folds) for k in METRIC_KEYS}
    table = dom.find(id="comparison")
    header = table.table_rows()[0]
    assert [h.split()[0] for h in header] == ["metric", "chance", "raw", "recap", "enhanced", "llm2clip"]
    rows = _rows_by_first_cell(table)
    for metric in METRIC_KEYS:
        expected = [metric, f"{chance[metric]:.2f}"]
        for arm in ("raw", "recap", "enhanced", "llm2clip"):
            values = [r["metrics"][metric] for r in comparison["arms"][arm]["runs"]]
            expected.append(f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}")
        assert rows[metric] == expected, metric
        md_row = "| " + " | ".join([metric.replace("_", "\\_"), *expected[1:]]) + " |"
        assert md_row in md.replace("**", ""), md_row
    # held-out set sizes next to the figures: images 0..13 in 3 folds -> 5, 5, 4 images; 8, 7, 6 captions
    assert rows["held-out images / run"] == ["held-out images / run", "4.7", "4.7", "4.7", "4.7", "4.7"]
    assert rows["held-out captions / run"] == ["held-out captions / run", "7.0", "7.0", "7.0", "7.0", "7.0"]
    assert rows["runs"][2:] == ["3", "3", "3", "3"]
    assert rows["collapsed runs"][2:] == ["0", "0", "0", "1"]
    text = dom.find(id="comparison-section").text()
    assert "3 folds x 1 seed(s)" in text
    assert "~4.7 held-out images (~7.0 captions) per fold" in text
    best = dom.find(id="comparison").find_all("td", cls="best")
    assert best, "the best arm of each metric is marked"


def test_collapsed_warning(report, tmp_path):
    _, dom, md = report
    warnings = [p.text() for p in dom.find_all("p", cls="collapsed")]
    assert warnings == [
        "⚠ llm2clip: 1 of 3 runs collapsed (fold 1 seed 0): the embeddings collapsed and those numbers sit at "
        "chance; they are included in the mean ± std."
    ]
    assert "> **Warning:** ⚠ llm2clip: 1 of 3 runs collapsed" in md
    clean = make_pipeline_run(tmp_path, n_images=6)
    comparison = _json(clean, "comparison.json")
    for arm in comparison["arms"].values():
        arm["collapsed_runs"] = 0
        for r in arm["runs"]:
            r["collapsed"] = False
    (clean / "comparison.json").write_text(json.dumps(comparison))
    dom2 = parse_html(Path(write_report(clean)["report.html"]).read_text())
    assert dom2.find_all("p", cls="collapsed") == []


def test_held_out_size_mismatch_is_flagged(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=3, folds=1, arms=("raw", "recap"))
    comparison = _json(run_dir, "comparison.json")
    comparison["arms"]["recap"]["runs"][0]["n_images"] = 2
    (run_dir / "comparison.json").write_text(json.dumps(comparison))
    dom = parse_html(Path(write_report(run_dir)["report.html"]).read_text())
    # 3 images, the even ones (0 and 2) with two raw captions
    assert [p.text() for p in dom.find_all("p", cls="mismatch")] == [
        "⚠ The arms were not evaluated on held-out sets of the same size (raw: 3 images / 5 captions; "
        "recap: 2 images / 5 captions)."
    ]
    same = parse_html(Path(write_report(make_pipeline_run(tmp_path, name="same"))["report.html"]).read_text())
    assert same.find_all("p", cls="mismatch") == []


def test_cra_table(report, run_dir):
    _, dom, _ = report
    rows = _rows_by_first_cell(dom.find(id="cra-table"))
    # 7 images have two raw captions -> 7 groups, chance 100 / 7
    assert rows["clip_text_tower"] == [
        "clip_text_tower",
        "raw, recap, enhanced",
        "42.86",
        "14.29",
        "35.71",
        "7",
    ]
    assert rows["llm2clip_tiny_llama"] == ["llm2clip_tiny_llama", "llm2clip", "71.43", "14.29", "64.29", "7"]


def _gallery_keys(dom) -> list[str]:
    return [item.find("img").attrs["alt"] for item in dom.find_all(cls="gallery-item")]


def test_gallery_size_and_deterministic_choice(report, run_dir, tmp_path):
    _, dom, md = report
    keys = [f"img{i:03d}" for i in range(14)]
    expected = sorted(sorted(keys, key=lambda k: hashlib.sha256(f"0:{k}".encode()).hexdigest())[:12])
    assert _gallery_keys(dom) == expected == gallery_keys(reversed(keys), 12, seed=0)
    assert md.count("\n### img") == 12
    other = sorted(sorted(keys, key=lambda k: hashlib.sha256(f"5:{k}".encode()).hexdigest())[:12])
    assert other != expected
    html_a = Path(write_report(run_dir, seed=5)["report.html"]).read_text()
    html_b = Path(write_report(run_dir, seed=5)["report.html"]).read_text()
    assert html_a == html_b  # the same run and seed give the same bytes
    assert _gallery_keys(parse_html(html_a)) == other
    write_report(run_dir)  # back to the default report for the other tests of this module

    small = make_pipeline_run(tmp_path, n_images=5)
    dom_small = parse_html(Path(write_report(small)["report.html"]).read_text())
    assert _gallery_keys(dom_small) == [f"img{i:03d}" for i in range(5)]


def test_gallery_item_shows_every_stage(report, run_dir):
    _, dom, _ = report
    rows = {r["key"]: r for r in _lineage(run_dir)}
    for item in dom.find_all(cls="gallery-item"):
        key = item.find("img").attrs["alt"]
        text = item.text()
        r = rows[key]
        for c in r["raw_captions"]:
            assert c in text
        for c in r["recap"]:
            assert " ".join(c["raw"].split()) in text and " ".join(c["sheared"].split()) in text
        for c in r["final_captions"]:
            assert f"{c['caption']} [{c['source']}]" in text
        actions = [a.text() for a in item.find_all(cls="action")]
        assert actions == [s["action"] for s in r["scored"]]
        overall = [s.text() for s in item.find_all(cls="score", id=None) if s.attrs.get("title") == "overall"]
        assert overall == [str(s["overall"]) if s["overall"] is not None else "–" for s in r["scored"]]


def test_score_section_counts(report, run_dir):
    _, dom, _ = report
    scored = [s for r in _lineage(run_dir) for s in r["scored"]]
    actions = Counter(s["action"] for s in scored)
    finals = sum(len(r["final_captions"]) for r in _lineage(run_dir))
    row = dom.find(id="actions-table").table_rows()[1]
    unscored = sum(s["overall"] is None for s in scored)
    assert row == [str(len(scored)), str(unscored)] + [
        str(actions[a]) for a in ("keep", "rewrite", "keep_both", "drop")
    ] + [str(finals)]
    raw = [s for s in scored if s["source"] == "raw"]
    ov = [s["overall"] for s in raw if s["overall"] is not None]
    assert _rows_by_first_cell(dom.find(id="sources-table"))["raw"][:3] == [
        "raw",
        str(len(raw)),
        f"{statistics.fmean(ov):.2f}",
    ]


def test_self_contained_and_thumbnails(report):
    from PIL import Image

    out, dom, _ = report
    page = Path(out["report.html"]).read_text()
    for banned in ("http://", "https://", "<script", "<link", 'src="file', "@import"):
        assert banned not in page.lower()
    images = dom.find_all("img")
    assert images and all(i.attrs["src"].startswith("data:image/") for i in images)
    for i in images:
        if i.attrs["src"].startswith("data:image/jpeg"):
            thumb = Image.open(io.BytesIO(base64.b64decode(i.attrs["src"].split(",", 1)[1])))
            assert max(thumb.size) <= 160
    thumbs = sorted(Path(out["figures/thumbs"]).iterdir())
    assert thumbs and all(p.suffix == ".jpg" for p in thumbs)


def test_retrieval_hits_marked(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=30)  # 10 held-out images per fold: misses happen
    examples = _json(run_dir, "retrieval_examples.json")
    dom = parse_html(Path(write_report(run_dir)["report.html"]).read_text())
    shown = dom.find(id="retrieval").find_all(cls="example")
    flat = [e for arm in examples.values() for e in arm]
    assert len(shown) == len(flat)
    assert {e["hit_rank"] is None for e in flat} == {True, False}
    for node, e in zip(shown, flat):
        figures = node.find_all("figure")
        assert [f.find("img").attrs["alt"] for f in figures] == e["top5"]
        assert [i for i, f in enumerate(figures) if "hit" in f.classes] == (
            [] if e["hit_rank"] is None else [e["hit_rank"]]
        )
        assert (f"hit at rank {e['hit_rank'] + 1}" if e["hit_rank"] is not None else "miss") in node.text()


def test_hostile_strings_are_text(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=4)

    def poison(rows):
        rows[0]["raw_captions"][0] = HOSTILE
        rows[0]["recap"][0]["raw"] = HOSTILE_IMG
        rows[0]["final_captions"][0]["caption"] = HOSTILE
        rows[1]["key"] = HOSTILE_IMG

    edit_lineage(run_dir, poison)
    comparison = _json(run_dir, "comparison.json")
    comparison["notes"].append(HOSTILE)
    comparison["arms"]["raw"]["label"] = HOSTILE_IMG
    (run_dir / "comparison.json").write_text(json.dumps(comparison))
    examples = _json(run_dir, "retrieval_examples.json")
    examples["raw"][0]["query"] = HOSTILE
    (run_dir / "retrieval_examples.json").write_text(json.dumps(examples))

    out = write_report(run_dir)
    page = Path(out["report.html"]).read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    dom = parse_html(page)
    assert dom.find_all("script") == []
    assert all("onerror" not in i.attrs for i in dom.find_all("img"))
    assert {i.attrs["src"][:11] for i in dom.find_all("img")} == {"data:image/"}
    assert HOSTILE in dom.find(id="gallery").text()
    assert HOSTILE in dom.find(id="notes").text() and HOSTILE in dom.find(id="retrieval").text()
    assert HOSTILE_IMG in dom.find(id="comparison").text()
    md = Path(out["report.md"]).read_text()
    assert HOSTILE not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_partial_pipeline(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=5, steps=("recap", "report"))
    assert not (run_dir / "comparison.json").exists()
    out = write_report(run_dir)
    assert set(out) == {"report.html", "report.md", "figures/thumbs"}
    dom = parse_html(Path(out["report.html"]).read_text())
    assert [p.text() for p in dom.find(id="steps").find_all("p", cls="warn")] == [
        "Steps that did not run: enhance (not in this pipeline), llm2clip (not in this pipeline), "
        "train (not in this pipeline), eval (not in this pipeline)."
    ]
    assert dom.find(id="comparison") is None
    assert "No comparison" in dom.find(id="comparison-section").text()
    assert "No scores: the enhance step did not run." in dom.find(id="scores").text()
    items = dom.find_all(cls="gallery-item")
    assert len(items) == 5 and all(i.find(cls="recap") is not None for i in items)
    assert all(i.find(cls="enhanced") is None for i in items)


def test_failed_step(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=5, failed={"enhance": "CUDA out of memory <at> batch 3"})
    dom = parse_html(Path(write_report(run_dir)["report.html"]).read_text())
    warns = [p.text() for p in dom.find(id="steps").find_all("p", cls="warn")]
    assert warns == [
        "Steps that did not run: enhance (failed), llm2clip (not reached), train (not reached), eval (not reached), "
        "report (not reached).",
        "enhance failed: CUDA out of memory <at> batch 3",
    ]
    assert _rows_by_first_cell(dom.find(id="steps-table"))["enhance"][1] == "failed"


def test_missing_and_broken_images(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=4)
    (tmp_path / "broken.png").write_bytes(b"not a png")

    def damage(rows):
        rows[0]["image"] = None
        rows[1]["image"] = str(tmp_path / "broken.png")

    edit_lineage(run_dir, damage)
    dom = parse_html(Path(write_report(run_dir)["report.html"]).read_text())
    items = dom.find_all(cls="gallery-item")
    assert len(items) == 4
    assert [i.find("img") is None for i in items] == [True, True, False, False]
    assert [li.text() for li in dom.find(id="problems").find_all("li")] == [
        f"img001: image {tmp_path / 'broken.png'} could not be read (UnidentifiedImageError)"
    ]


def test_needs_pipeline_and_state(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=3)
    (run_dir / "pipeline.json").unlink()
    with pytest.raises(FileNotFoundError, match="pipeline.json is missing"):
        write_report(run_dir)


def test_fast_on_130_images(tmp_path):
    run_dir = make_pipeline_run(tmp_path, n_images=130, folds=5)
    start = time.perf_counter()
    out = write_report(run_dir)
    elapsed = time.perf_counter() - start
    assert len(parse_html(Path(out["report.html"]).read_text()).find_all(cls="gallery-item")) == 12
    assert elapsed < 5, f"report of 130 images took {elapsed:.1f} s"
