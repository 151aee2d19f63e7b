"""The AITQE prompt and answer format against the official strings, and the output parser on well-formed,
truncated and malformed outputs (golden strings; it must never raise)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipforge.tasks.enhance.parse import parse_output
from clipforge.tasks.enhance.prompt import build_prompt, format_answer

# The seed's README example output (`--output_all`), verbatim.
SEED_OUTPUT = (
    '{"Recaption": "A man stands in front of a checklist of customer service questions, including \'Do you take '
    'each customer seriously?\' and \'Do you qualify customers properly?\'", "Overall Score": "2<Overall>", '
    '"Overall Explanation": "The caption is vague and does not accurately describe the image or its content. It '
    'lacks detail and relevance to the checklist shown in the image.", "Text Quality Score": 3, "Text Quality '
    'Explanation": "The caption is grammatically correct but lacks clarity and relevance to the image. It is vague '
    'and does not provide a meaningful description.", "Image-Text Matching Score": 2, "Image-Text Matching '
    'Explanation": "The caption does not accurately describe the image, which features a checklist of customer '
    'service questions. The caption is unrelated to the content of the image.", "Object Detail Score": 2, '
    '"Object Detail Explanation": "The caption does not provide any details about the objects in the image, such '
    'as the checklist or the person in the background.", "Semantic Understanding Score": 2, "Semantic '
    'Understanding Explanation": "The caption fails to convey any understanding of the image\'s context or '
    'purpose, which is about customer service evaluation.", "Text/Chart Description Score": 2, "Text/Chart '
    'Description Explanation": "The caption does not describe the text in the image, which is a checklist of '
    'customer service questions."}'
)
RECAPTION = (
    "A man stands in front of a checklist of customer service questions, including 'Do you take each customer "
    "seriously?' and 'Do you qualify customers properly?'"
)


def test_prompt_is_the_official_string():
    # inference.py: process_prompt("./figs/test.png", "Some random text to the image like this is a test")
    expected = (
        '<img_start>{"path": "./figs/test.png", "source": "localpath", "file_type": "I"}<img_end>\n'
        "Evaluate the caption: Some random text to the image like this is a test\n"
        "if score is low, give a short description of the image.\nRespond using a dictionary structure."
    )
    assert build_prompt("Some random text to the image like this is a test", "./figs/test.png") == expected


def test_prompt_keeps_braces_and_quotes_of_the_caption():
    assert 'caption: a {b} "c"\n' in build_prompt('a {b} "c"')


def test_seed_output_parses_and_serialises_back_to_the_same_string():
    r = parse_output(SEED_OUTPUT)
    assert r.problems == [] and r.complete(output_all=True)
    assert r.overall == 2 and r.recaption == RECAPTION
    assert r.scores == {
        "text_quality": 3,
        "image_text_matching": 2,
        "object_detail": 2,
        "semantic_understanding": 2,
        "text_chart_description": 2,
    }
    assert json.dumps(r.to_official(output_all=True)) == SEED_OUTPUT
    assert format_answer(r.overall, r.scores, r.explanations, r.recaption) == SEED_OUTPUT
    assert r.to_official(output_all=False) == {"Recaption": RECAPTION, "Overall Score": "2<Overall>"}


def test_default_mode_output_stopped_at_the_overall_marker():
    stopped = SEED_OUTPUT[: SEED_OUTPUT.index("<Overall>") + len("<Overall>")]  # what stop_strings leaves
    official = stopped[:-1] + "}"  # inference.py's post-processing: invalid JSON
    for text in (stopped, official):
        r = parse_output(text)
        assert (r.overall, r.recaption) == (2, RECAPTION), text
        assert r.complete(output_all=False) and not r.complete(output_all=True)
    assert parse_output(stopped).problems == []  # the expected default-mode answer is not a defect
    assert parse_output(official).problems == ["not_json"]
    for cut in (
        '{"Overall Score": "8<Overall>',
        '{"Overall Score": "8<Overall>"',
        '{"Overall Score": "8<Overall>"\n',
    ):
        r = parse_output(cut)
        assert (r.overall, r.problems) == (8, []), cut


def test_every_truncation_of_the_seed_output_parses_and_keeps_what_is_there():
    marker = SEED_OUTPUT.index('"Overall Score": "2') + len('"Overall Score": "2')
    for cut in range(len(SEED_OUTPUT) + 1):
        r = parse_output(SEED_OUTPUT[:cut])
        assert r.overall == (2 if cut >= marker else None), cut
        if r.recaption is not None:
            assert RECAPTION.startswith(r.recaption), cut


@pytest.mark.parametrize(
    "text,overall,recaption,text_quality",
    [
        # python dict repr ("Respond using a dictionary structure")
        ("{'Recaption': 'a dog', 'Overall Score': 4, 'Text Quality Score': '6'}", 4, "a dog", 6),
        # unescaped quotes inside the recaption
        (
            '{"Recaption": "A sign saying "Open" on a door", "Overall Score": "3<Overall>"}',
            3,
            'A sign saying "Open" on a door',
            None,
        ),
        # code fence, float score, chatter
        ('Sure! ```json\n{"Overall Score": 7.6, "Text Quality Score": 8}\n``` Hope it helps', 8, None, 8),
        # bare keys, one per line
        ("Overall Score: 9\nText Quality Score: 7/10\nOverall Explanation: fine", 9, None, 7),
        # score out of the 1-10 scale, empty recaption
        ('{"Recaption": "", "Overall Score": "85", "Text Quality Score": 0}', None, None, None),
        # keys in other case and separators
        ('{"overall score": "6<Overall>", "text-quality score": 5}', 6, None, 5),
        # a looping model: the first occurrence wins
        ('{"Overall Score": "5<Overall>", "Overall Score": "9<Overall>", "Overall Score": "1', 5, None, None),
        # recaption looping until max_new_tokens, no score
        ('{"Recaption": "a a a a a a a a a a a', None, "a a a a a a a a a a a", None),
        ("null", None, None, None),
        ("", None, None, None),
        ("{}", None, None, None),
        ("[1, 2, 3]", None, None, None),
        ('{"Overall Score": true}', None, None, None),
        ('{"Overall Score": NaN}', None, None, None),
    ],
)
def test_malformed_outputs(text, overall, recaption, text_quality):
    r = parse_output(text)
    assert (r.overall, r.recaption, r.scores["text_quality"]) == (overall, recaption, text_quality)
    if overall is None:
        assert any(p.endswith("Overall Score") for p in r.problems)


def test_non_text_inputs_do_not_raise():
    assert parse_output(None).overall is None
    assert parse_output(b'{"Overall Score": "7<Overall>"}').overall == 7
    assert parse_output(12).overall is None
    assert parse_output("{" * 5000 + "}" * 5000).overall is None  # deep nesting: no RecursionError


def test_to_official_without_a_score_keeps_the_raw_text():
    assert parse_output("oops").to_official() == {"Overall Score": None, "Raw Output": "oops"}


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises_on_any_text(text):
    r = parse_output(text)
    assert r.overall is None or 1 <= r.overall <= 10


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SEED_OUTPUT)), st.text(max_size=20))
def test_parser_never_raises_on_corrupted_golden_output(cut, junk):
    r = parse_output(SEED_OUTPUT[:cut] + junk + SEED_OUTPUT[cut:])
    assert r.overall is None or 1 <= r.overall <= 10
