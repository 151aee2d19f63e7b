"""enhance end to end on tiny models: scoring job + policy + enhanced dataset (resumable), the seed-compatible CLI,
the SFT experiment exporting an AITQE-format folder, and the teacher job against a local HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.utils.hydra import compose
from tests.helpers.tiny_enhance import save_tiny_aitqe
from tests.unit.test_enhance_teacher import _Server

ROOT = Path(__file__).resolve().parents[2]
# what the fitted tiny enhancer answers for each caption (any image)
ANSWERS = {
    "a good caption": '{"Overall Score": "8<Overall>"}',
    "a bad caption": '{"Recaption": "a red square", "Overall Score": "2<Overall>"}',
    "a red square": '{"Overall Score": "7<Overall>"}',
    "junk": "no json here",
}
SCORE = ["experiment=enhance_score_demo", "debug=tiny_enhance_score_demo"]  # + model.model_path


@pytest.fixture(scope="module")
def aitqe(tmp_path_factory) -> str:
    return save_tiny_aitqe(tmp_path_factory.mktemp("aitqe"), ANSWERS, steps=120)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A JSONL source: 3 photos with 2 captions each (one per row), one missing image; labelled for the AUC."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    rows = [
        {"key": "p0", "image": "p0.png", "caption": "a good caption", "label": 1},
        {"key": "p0", "image": "p0.png", "caption": "a bad caption", "label": 1},
        {"key": "p1", "image": "p1.png", "caption": "junk", "label": 0},
        {"key": "p2", "image": "p2.png", "caption": "a bad caption", "label": 0},
        {"key": "p3", "image": "missing.png", "caption": "a good caption", "label": 1},
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _score(aitqe, photos, out, *extra):
    from clipforge.cli.generate import generate

    cfg = compose(
        [
            *SCORE,
            f"model.model_path={aitqe}",
            "model.max_new_tokens=80",
            f"data.predict.path={photos / 'data.jsonl'}",
            "data.predict_shard_rows=2",
            "data.eval_batch_size=2",
            "model.label_field=label",
            *extra,
        ],
        "generate",
        output_dir=str(out),
    )
    generate(cfg)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(aitqe, photos, tmp_path_factory):
    return _score(aitqe, photos, tmp_path_factory.mktemp("score"))


def test_scoring_rows_match_one_pair_per_call(scored, aitqe, photos):
    """The batched, left-padded job gives exactly what the official one-pair-per-call loop gives."""
    from clipforge.cli.aitqe import evaluate_pair
    from clipforge.models.vlm import VisionLanguageModel

    rows = {r["key"]: r for r in _lines(scored / "predictions.jsonl")}
    assert list(rows) == ["p0", "p1", "p2"]
    assert [e["key"] for e in _lines(scored / "errors.jsonl")] == ["p3"]
    vlm = VisionLanguageModel.from_pretrained(aitqe)
    for key, row in rows.items():
        image = Image.open(photos / f"{key}.png").convert("RGB")
        for pair in row["pairs"]:
            one = evaluate_pair(vlm, image, pair["caption"], max_new_tokens=80)
            assert (pair["overall"], pair["recaption"]) == (one.overall, one.recaption)
            assert pair["raw"] == one.raw
    assert [(p["caption"], p["overall"], p["recaption"]) for p in rows["p0"]["pairs"]] == [
        ("a good caption", 8, None),
        ("a bad caption", 2, "a red square"),
    ]
    assert rows["p0"]["pairs"][1]["rescore"]["overall"] == 7  # the rewrite scored again
    good, bad = rows["p0"]["pairs"]  # the expected score stays near the greedy one and keeps the order
    assert abs(good["overall_expected"] - 8) < 1 and abs(bad["overall_expected"] - 2) < 1
    assert rows["p1"]["pairs"][0]["overall"] is None and "not_json" in rows["p1"]["pairs"][0]["problems"]


def test_rewrite_policy_writes_the_enhanced_dataset_and_report(scored, photos):
    enhanced = _lines(scored / "enhanced.jsonl")
    assert [(r["key"], r["caption"], r["action"], r["final_overall"]) for r in enhanced] == [
        ("p0", "a good caption", "keep", 8),
        ("p0", "a red square", "rewrite", 7),
        ("p1", "junk", "keep", None),  # unscored: kept (error_action)
        ("p2", "a red square", "rewrite", 7),
    ]
    assert enhanced[1]["original_caption"] == "a bad caption" and enhanced[1]["rewritten"]
    assert enhanced[0]["image"] == str(photos / "p0.png")
    report = json.loads((scored / "report.json").read_text())
    assert report["actions"] == {"keep": 2, "rewrite": 2, "keep_both": 0, "drop": 0}
    assert report["histogram_before"]["8"] == 1 and report["histogram_before"]["2"] == 2
    assert report["histogram_after"]["7"] == 2 and report["histogram_after"]["2"] == 0
    # labels: p0's two captions are true (8, 2), p2's is not (2): one tie, one win -> AUC 0.75
    assert report["roc_auc"] == pytest.approx(0.75)
    summary = json.loads((scored / "summary.json").read_text())
    assert summary["enhance/action_rewrite"] == 2 and summary["enhance/rows"] == 4
    assert summary["enhance/roc_auc"] == pytest.approx(0.75)
    assert "overall score before" in (scored / "report.md").read_text()


def test_enhanced_dataset_is_readable_by_the_data_layer(scored):
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    records, errors = read_records(DatasetSpec(path=str(scored / "enhanced.jsonl")))
    assert not errors
    assert {r.key: r.captions for r in records} == {
        "p0": ["a good caption", "a red square"],
        "p1": ["junk"],
        "p2": ["a red square"],
    }
    assert records[0].meta["original_caption"] == "a good caption"


def test_rerun_scores_only_missing_shards_and_applies_the_new_policy(scored, aitqe, photos, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(scored, out)
    (out / "shards" / "shard-00001.jsonl").unlink()  # as if killed before the last shard (p2, p3) was written
    first = (out / "shards" / "shard-00000.jsonl").stat().st_mtime_ns
    _score(aitqe, photos, out, "model.policy.low_action=drop")
    assert (out / "shards" / "shard-00000.jsonl").stat().st_mtime_ns == first  # not scored again
    again, before = _lines(out / "predictions.jsonl"), _lines(scored / "predictions.jsonl")
    assert again[:2] == before[:2]
    # the rescored shard differs only in the rewrite's score: a dropping policy has no rewrite to score
    assert again[2]["pairs"][0] == {k: v for k, v in before[2]["pairs"][0].items() if k != "rescore"}
    assert [(r["key"], r["caption"]) for r in _lines(out / "enhanced.jsonl")] == [
        ("p0", "a good caption"),
        ("p1", "junk"),
    ]


def test_cli_prints_seed_shaped_json(aitqe, photos, capsys):
    from clipforge.cli.aitqe import main

    def run(*args):
        code = main(["--model_path", aitqe, "--image_path", str(photos / "p0.png"), *args])
        return code, capsys.readouterr().out.strip()

    assert run("--caption", "a bad caption") == (
        0,
        '{"Recaption": "a red square", "Overall Score": "2<Overall>"}',
    )
    code, out = run("--caption", "a good caption", "--output_all", "--gpu_id", "0")
    assert code == 0 and json.loads(out) == {"Overall Score": "8<Overall>"}
    code, out = run("--caption", "junk")
    assert code == 1 and json.loads(out) == {"Overall Score": None, "Raw Output": "no json here"}
    assert run("--caption", "junk", "--raw") == (1, "no json here")
    # the module entry point, as `clipforge-aitqe` runs it
    cmd = [
        sys.executable,
        "-m",
        "clipforge.cli.aitqe",
        "--model_path",
        aitqe,
        "--image_path",
        str(photos / "p1.png"),
        "--caption",
        "a bad caption",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert (r.returncode, r.stdout.strip()) == (
        0,
        '{"Recaption": "a red square", "Overall Score": "2<Overall>"}',
    )


def test_tiny_score_overlay_runs_from_a_spec(tmp_path):
    from clipforge.cli.generate import generate

    cfg = compose(
        ["experiment=enhance_score_demo", "debug=tiny_enhance_score_demo"], "generate", str(tmp_path)
    )
    generate(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["enhance/pairs"] == 18  # 3 captions per synthetic image
    assert len(_lines(tmp_path / "enhanced.jsonl")) == 18 - summary["enhance/action_drop"]


def test_demo_train_overlay_exports_an_aitqe_folder_the_cli_loads(tmp_path, capsys):
    from clipforge.cli.aitqe import main
    from clipforge.cli.train import train
    from clipforge.models.vlm import VisionLanguageModel

    cfg = compose(
        ["experiment=enhance_train_demo", "debug=tiny_enhance_train_demo"], output_dir=str(tmp_path)
    )
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["val/lm_loss"])
    folder = tmp_path / "aitqe"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mm" and config["image_tile_tokens"] == 16
    vlm = VisionLanguageModel.from_pretrained(str(folder))
    trained = objects["model"].vlm
    for k, v in vlm.mm_projector.state_dict().items():
        assert torch.equal(v, trained.mm_projector.state_dict()[k]), k
    photo, broken = tmp_path / "photo.png", tmp_path / "broken.png"
    Image.new("RGB", (40, 30), (10, 200, 10)).save(photo)
    broken.write_bytes(b"not an image")
    args = ["--model_path", str(folder), "--max_new_tokens", "8", "--caption", "x", "--image_path"]
    assert main([*args, str(broken)]) == 2
    capsys.readouterr()
    code = main([*args, str(photo)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "Overall Score" in json.loads(out)  # random weights: any text, the seed's shape


def _teacher(body: dict) -> str:
    """Phase 1: a low score (with a recaption) for captions saying "bad", a high one otherwise; phase 2: fixed
    captions of the requested quality."""
    text = body["messages"][0]["content"][1]["text"]
    if text.startswith("You judge"):
        low = "bad" in text.split("Caption: ")[1].split("\n")[0]
        answer = {"Recaption": "a fine square"} if low else {}
        answer.update(
            {"Overall Score": 3 if low else 9, "Overall Explanation": "judged", "Text Quality Score": 7}
        )
        return json.dumps(answer)
    return "a detailed caption" if "better caption" in text else "bad blurry thing"


def test_teacher_job_writes_training_pairs_that_the_sft_formatter_reads(tmp_path):
    from clipforge.cli.generate import generate
    from clipforge.tasks.enhance.formatter import AITQEFormatter

    server = _Server(respond=_teacher)
    try:
        overrides = [f"model.teacher.base_url={server.url}", "model.teacher.max_retries=0"]
        cfg = compose(
            ["experiment=enhance_annotate_chat", "debug=tiny_enhance_annotate_chat", *overrides],
            "generate",
            str(tmp_path),
        )
        generate(cfg)
    finally:
        server.close()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["annotate/pairs"] == 4 and summary["annotate/phase1_failed"] == 0
    assert len(server.requests) == 4 * 3  # phase 1, phase 2, phase 1 of the contrast caption
    pairs = _lines(tmp_path / "pairs.jsonl")
    assert len(pairs) == 8 and len(_lines(tmp_path / "pairs_no_contrast.jsonl")) == 4
    originals, contrasts = pairs[:4], pairs[4:]
    assert all(p["overall"] == 9 and p["recaption"] is None and p["kind"] == "teacher" for p in originals)
    assert all(p["caption"] == "bad blurry thing" and p["overall"] == 3 for p in contrasts)
    assert all(p["kind"] == "contrast_low" and p["recaption"] == "a fine square" for p in contrasts)
    assert all(Path(p["image"]).is_file() for p in pairs)  # synthetic images written out for the JSONL
    prompt, answer = AITQEFormatter()({"caption": contrasts[0]["caption"], "meta": contrasts[0]})
    assert "Evaluate the caption: bad blurry thing\n" in prompt
    assert answer == (
        '{"Recaption": "a fine square", "Overall Score": "3<Overall>", "Overall Explanation": '
        '"judged", "Text Quality Score": 7}'
    )


def test_captioner_teacher_with_an_aitqe_folder_as_the_judge(aitqe):
    """A local teacher: the enhancer itself (any AITQE-format folder) judges through the recap captioner loop."""
    from clipforge.models.captioners.mini_llava import VLMCaptioner
    from clipforge.tasks.enhance.negatives import NegativeGenerator
    from clipforge.tasks.enhance.parse import parse_output
    from clipforge.tasks.enhance.prompt import build_prompt
    from clipforge.tasks.enhance.teacher import CaptionerTeacher

    judge = VLMCaptioner(
        aitqe,
        name="aitqe",
        prompt=build_prompt("{caption}"),
        postprocess="strip",
        decoding={"max_new_tokens": 80},
    )
    teacher = CaptionerTeacher(judge, judge, negatives=NegativeGenerator())
    teacher.setup("cpu")
    image = Image.new("RGB", (30, 30), (200, 30, 30))
    replies = teacher.score([image, image], ["a bad caption", "a good caption"], ["k0", "k1"])
    parsed = [parse_output(r.text) for r in replies]
    assert [(p.overall, p.recaption) for p in parsed] == [(2, "a red square"), (8, None)]
