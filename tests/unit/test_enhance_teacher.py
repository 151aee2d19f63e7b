"""Teachers: the OpenAI-compatible client against a local HTTP server started here, and local captioners."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from clipforge.models.captioners.base import Generation
from clipforge.tasks.enhance.negatives import NegativeGenerator
from clipforge.tasks.enhance.parse import parse_output
from clipforge.tasks.enhance.teacher import CaptionerTeacher, ChatTeacher

ANSWER = '{"Overall Score": 4, "Overall Explanation": "vague", "Recaption": "a red square"}'


class _Server:
    """A chat-completions endpoint on a free local port: records every request body and headers; answers from a
    queue of ``(status, body)``, else with ``respond(body)``, else by echoing the end of the prompt."""

    def __init__(self, respond=None) -> None:
        self.requests: list[dict] = []
        self.queue: list[tuple[int, object]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status, reply = server.queue.pop(0) if server.queue else (200, None)
                if reply is None:
                    if respond is not None:
                        content = respond(body)
                    else:
                        content = f"echo: {body['messages'][0]['content'][1]['text'][-40:]}"
                    reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                data = json.dumps(reply).encode() if not isinstance(reply, bytes) else reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


def _image(w=64, h=48, colour=(200, 10, 10)):
    return Image.new("RGB", (w, h), colour)


def _ok(content):
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_request_shape_and_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_TEST_KEY", "sk-local-123")
    server.queue = [_ok(ANSWER)]
    teacher = ChatTeacher("judge-1", base_url=server.url, api_key_env="CLIPFORGE_TEST_KEY", image_max_side=32)
    [reply] = teacher.score([_image()], ["a square"], ["k"])
    assert reply.error is None and parse_output(reply.text).overall == 4
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-local-123"
    body = req["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    image_part, text_part = body["messages"][0]["content"]
    assert text_part["type"] == "text" and "Caption: a square\n" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (32, 24)  # downscaled to image_max_side, aspect kept
    assert "sk-local-123" not in repr(teacher) and "sk-local-123" not in json.dumps(vars(teacher))


def test_no_key_in_the_environment_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("CLIPFORGE_TEST_KEY", raising=False)
    teacher = ChatTeacher("m", base_url=server.url, api_key_env="CLIPFORGE_TEST_KEY")
    teacher.score([_image()], ["x"], ["k"])
    assert "Authorization" not in server.requests[0]["headers"]


def test_retries_on_5xx_and_429_then_succeeds(server):
    server.queue = [(500, {"error": "busy"}), (429, {"error": "slow down"}), _ok(ANSWER)]
    teacher = ChatTeacher("m", base_url=server.url, max_retries=2, retry_wait_s=0.0)
    [reply] = teacher.score([_image()], ["x"], ["k"])
    assert reply.text == ANSWER and len(server.requests) == 3


def test_client_errors_and_bad_bodies_become_error_replies(server):
    teacher = ChatTeacher("m", base_url=server.url, max_retries=1, retry_wait_s=0.0, concurrency=1)
    server.queue = [(400, {"error": "bad"}), (200, b"not json"), (200, {"choices": []}), (500, {}), (500, {})]
    replies = teacher.score([_image()] * 4, ["a", "b", "c", "d"], ["1", "2", "3", "4"])
    assert [r.error for r in replies] == [
        "http_400",
        "bad_response: not JSON",
        "bad_response: no choices[0].message.content",
        "gave up after 1 retries (http_500)",
    ]
    assert all(r.text is None for r in replies)


def test_unreachable_endpoint_is_an_error_reply():
    teacher = ChatTeacher("m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=2)
    [reply] = teacher.score([_image()], ["x"], ["k"])
    assert reply.text is None and reply.error.startswith("gave up after 0 retries (network")


def test_write_uses_the_high_or_low_prompt_per_pair_in_order(server):
    teacher = ChatTeacher("m", base_url=server.url, concurrency=3)
    replies = teacher.write([_image()] * 3, ["c0", "c1", "c2"], ["0", "1", "2"], [True, False, True])
    texts = {r["body"]["messages"][0]["content"][1]["text"] for r in server.requests}
    assert len(texts) == 3
    assert [("better caption" in t, "low-quality" in t) for t in sorted(texts)] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert [r.text.startswith("echo:") for r in replies] == [True] * 3
    assert replies[1].text.endswith("Answer with the caption only.")


class _FakeCaptioner:
    """A Captioner that answers ``template.format(caption)`` (records its calls)."""

    def __init__(self, name, template):
        self.name, self.num_captions, self.template, self.calls = name, 1, template, []

    def setup(self, device="cpu"):
        self.device = device

    def generate(self, images, captions, keys):
        self.calls.append(list(keys))
        return [[Generation(self.template.format(c), self.template.format(c), "fake", "p")] for c in captions]


def test_captioner_teacher_scores_and_writes_with_offline_weak_captions():
    scorer = _FakeCaptioner("judge", '{{"Overall Score": "3<Overall>", "Recaption": "about {}"}}')
    writer = _FakeCaptioner("writer", '"a detailed caption of {}"')
    teacher = CaptionerTeacher(scorer, writer, negatives=NegativeGenerator(kinds={"shuffle": 1.0}))
    teacher.setup("cpu")
    assert scorer.device == writer.device == "cpu"
    [r] = teacher.score([_image()], ["a cat"], ["k"])
    assert parse_output(r.text).recaption == "about a cat"
    replies = teacher.write(
        [_image()] * 2, ["a big red bus", "one two three four"], ["a", "b"], [True, False]
    )
    assert replies[0].text == "a detailed caption of a big red bus"
    assert sorted(replies[1].text.split()) == sorted("one two three four".split())
    assert replies[1].text != "one two three four"
    assert writer.calls == [["a"]]
    with pytest.raises(ValueError):
        CaptionerTeacher(scorer, writer)


def _judged(overall, recaption=None):
    return {
        "overall": overall,
        "scores": {"text_quality": 5},
        "explanations": {"overall": "x"},
        "recaption": recaption,
    }


def test_training_pairs_recaptions_follow_the_contrast_rules():
    from clipforge.tasks.enhance.annotate import training_pairs

    rows = [
        {
            "key": "a",
            "pairs": [  # weak, no own recaption: the phase-2 good caption is the rewrite
                {
                    "caption": "blurry",
                    "judgement": _judged(2),
                    "contrast": {"quality": "high", "caption": "a dog on grass", "judgement": _judged(9)},
                },
                # weak with its own recaption: that one wins
                {
                    "caption": "meh",
                    "judgement": _judged(4, "a brown dog"),
                    "contrast": {"quality": "high", "caption": "a dog", "judgement": _judged(8)},
                },
            ],
        },
        {
            "key": "b",
            "pairs": [  # good: its weak contrast caption is rewritten back to it
                {
                    "caption": "a cat asleep",
                    "judgement": _judged(9),
                    "contrast": {"quality": "low", "caption": "cat", "judgement": _judged(3)},
                },
            ],
        },
        {"key": "c", "pairs": [{"caption": "x", "judgement": {"error": "http_500"}}]},  # phase 1 failed
        {"key": "d", "pairs": [{"caption": "y", "judgement": _judged(9)}]},  # image unreadable
    ]
    pairs, contrasts = training_pairs(rows, {"a": "/a.png", "b": "/b.png", "c": "/c.png", "d": None}, 5, "t")
    assert [(p["key"], p["caption"], p["overall"], p["recaption"]) for p in pairs] == [
        ("a#0", "blurry", 2, "a dog on grass"),
        ("a#1", "meh", 4, "a brown dog"),
        ("b#0", "a cat asleep", 9, None),
    ]
    assert [(p["key"], p["caption"], p["kind"], p["recaption"]) for p in contrasts] == [
        ("a#0c", "a dog on grass", "contrast_high", None),
        ("a#1c", "a dog", "contrast_high", None),
        ("b#0c", "cat", "contrast_low", "a cat asleep"),
    ]
    assert all(p["teacher"] == "t" and p["image"] in ("/a.png", "/b.png") for p in pairs + contrasts)
