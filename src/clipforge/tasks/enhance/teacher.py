"""Teachers that annotate image-caption pairs for training the enhancer (AITQE's two GPT-4o phases).

Phase 1 scores a pair and explains the scores (the answer is read by :func:`~clipforge.tasks.enhance.parse.
parse_output`, so any model that writes roughly the official JSON works); phase 2 writes a caption of
*contrasting* quality for the same image: a good one for a weak pair, a weak one for a good pair.

* :class:`ChatTeacher`: any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp server,
  Ollama ...), called with ``urllib`` from a thread pool. The API key is read from an environment variable at
  request time and never stored, logged or written to a config, and it never leaves the endpoint's origin: a
  redirect to another scheme, host or port is refused (the call fails with an error naming both origins).
* :class:`CaptionerTeacher`: local captioner backends (:class:`~clipforge.models.captioners.base.Captioner`, e.g.
  an ``HFCaptioner`` VLM): one configured with the scoring prompt, one with the rewriting prompt; weak captions
  come from a third captioner or from the offline :class:`~clipforge.tasks.enhance.negatives.NegativeGenerator`.

Design notes: docs/design/enhance.md#the-pipeline.
"""

from __future__ import annotations

import abc
import base64
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from clipforge.models.captioners.base import Captioner
from clipforge.tasks.enhance.negatives import NegativeGenerator
from clipforge.tasks.enhance.prompt import ASPECTS, OVERALL_EXPLANATION, OVERALL_SCORE, RECAPTION

__all__ = ["CaptionerTeacher", "ChatTeacher", "Reply", "Teacher", "TeacherError"]

log = logging.getLogger("clipforge.enhance")

_KEYS = [RECAPTION, OVERALL_SCORE, OVERALL_EXPLANATION] + [
    f"{n} {part}" for n in ASPECTS.values() for part in ("Score", "Explanation")
]
SCORE_PROMPT = (
    "You judge how well a caption describes an image, to filter and repair multimodal pretraining data.\n"
    "Caption: {caption}\n"
    "Score each aspect with an integer from 1 (worst) to 10 (best):\n"
    "- Text Quality: grammatical correctness, diversity of vocabulary, fluency, readability, length and structure.\n"
    "- Image-Text Matching: whether the caption accurately represents the main features and objects of the image "
    "and captures its primary theme.\n"
    "- Object Detail: whether the caption describes the color, size, position, shape and material of the objects.\n"
    "- Semantic Understanding: whether the caption adds semantic information that is not apparent from the image "
    "alone (who, where, why).\n"
    "- Text/Chart Description: whether the caption describes the text, OCR content or charts in the image.\n"
    "- Overall: the caption's overall quality as a training caption for this image.\n"
    "If the overall score is 5 or lower, also write a Recaption: a short, accurate description of the image.\n"
    "Answer with one JSON object with these keys in this order (Recaption only for low scores): "
    + ", ".join(f'"{k}"' for k in _KEYS)
    + ". Each explanation is one sentence."
)
"""Phase 1 (the paper's prompts are unreleased): MLM-Filter's aspect definitions plus AITQE's fields."""

HIGH_PROMPT = (
    "The current caption of this image is: {caption}\n"
    "Write a better caption: one or two accurate, specific sentences describing the main objects, their "
    "attributes and the scene, and any visible text. Answer with the caption only."
)
"""Phase 2 for weak pairs: a high-quality caption."""

LOW_PROMPT = (
    "The current caption of this image is: {caption}\n"
    "Write a low-quality caption for this image, like noisy web alt-text: vague, partly wrong, or badly written. "
    "Answer with the caption only."
)
"""Phase 2 for good pairs: a deliberately low-quality caption (a negative sample)."""


class TeacherError(RuntimeError):
    """A teacher call that failed after its retries."""


@dataclass
class Reply:
    """One teacher answer: ``text``, or ``error`` (why the call failed)."""

    text: str | None = None
    error: str | None = None


def _render(template: str, caption: str) -> str:
    return template.replace("{caption}", caption)  # not str.format: captions and prompts hold braces


class Teacher(abc.ABC):
    """Scores pairs (phase 1) and writes contrasting-quality captions (phase 2), in batches."""

    name: str = "teacher"

    def setup(self, device: str = "cpu") -> None:  # noqa: B027 - remote teachers have nothing to load
        """Load local models on ``device`` (remote teachers: nothing to do)."""

    @abc.abstractmethod
    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[Reply]:
        """Phase 1: one reply per pair, holding the scores/explanations JSON text."""

    @abc.abstractmethod
    def write(
        self,
        images: Sequence[Image.Image],
        captions: Sequence[str],
        keys: Sequence[str],
        high: Sequence[bool],
    ) -> list[Reply]:
        """Phase 2: one new caption per pair, high quality where ``high`` is true, low quality elsewhere."""


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL (default ports filled in, case folded)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, refused for another origin: urllib would otherwise resend every header, the
    ``Authorization`` one included, to wherever a server points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise TeacherError(
                f"refused redirect (HTTP {code}) from {_origin(req.full_url)} to another origin {_origin(newurl)}: "
                "credentials are never sent to another origin; set base_url to the address that answers"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def _data_url(image: Image.Image, max_side: int) -> str:
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ChatTeacher(Teacher):
    """An OpenAI-compatible chat endpoint with image input.

    Args:
        model: the endpoint's model name (e.g. ``gpt-4o``, or what a local vLLM server serves).
        base_url: API root; requests go to ``<base_url>/chat/completions``.
        api_key_env: environment variable holding the API key, read at request time (unset: no
            ``Authorization`` header, as local servers expect). The key itself is never a config value.
        temperature: sampling temperature.
        max_tokens: answer length limit.
        timeout_s: seconds per HTTP request.
        max_retries: retries after a network error, HTTP 429 or 5xx (exponential backoff).
        retry_wait_s: first backoff wait; doubles per retry.
        concurrency: requests in flight at once.
        image_max_side: images are downscaled to this longer side before upload.
        score_prompt: phase-1 prompt (``{caption}`` is replaced).
        high_prompt: phase-2 prompt asking for a good caption.
        low_prompt: phase-2 prompt asking for a weak caption.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 800,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_wait_s: float = 2.0,
        concurrency: int = 4,
        image_max_side: int = 768,
        score_prompt: str = SCORE_PROMPT,
        high_prompt: str = HIGH_PROMPT,
        low_prompt: str = LOW_PROMPT,
    ) -> None:
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.temperature, self.max_tokens, self.timeout_s = temperature, max_tokens, timeout_s
        self.max_retries, self.retry_wait_s, self.concurrency = max_retries, retry_wait_s, max(1, concurrency)
        self.image_max_side = image_max_side
        self.score_prompt, self.high_prompt, self.low_prompt = score_prompt, high_prompt, low_prompt
        self.name = f"chat:{model}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def chat(self, image: Image.Image, text: str) -> str:
        """One request: the image and the text as one user turn; returns the answer text.

        Raises:
            TeacherError: the request failed after ``max_retries`` retries, the answer had no text, or the server
                redirected to another origin (not retried).
        """
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(image, self.image_max_side)}},
                        {"type": "text", "text": text},
                    ],
                }
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            request = urllib.request.Request(
                f"{self.base_url}/chat/completions", data=data, headers=self._headers(), method="POST"
            )
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                last = f"http_{e.code}"
                if e.code == 429 or e.code >= 500:
                    continue
                raise TeacherError(last) from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"network: {getattr(e, 'reason', e)}"
                continue
            except ValueError as e:
                raise TeacherError("bad_response: not JSON") from e
            try:
                content = answer["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as e:
                raise TeacherError("bad_response: no choices[0].message.content") from e
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise TeacherError("bad_response: content is not text")
            return content
        raise TeacherError(f"gave up after {self.max_retries} retries ({last})")

    def _map(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[Reply]:
        def one(args: tuple[Image.Image, str]) -> Reply:
            try:
                return Reply(text=self.chat(*args))
            except TeacherError as e:
                return Reply(error=str(e))

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, zip(images, texts)))

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[Reply]:
        return self._map(images, [_render(self.score_prompt, c) for c in captions])

    def write(
        self,
        images: Sequence[Image.Image],
        captions: Sequence[str],
        keys: Sequence[str],
        high: Sequence[bool],
    ) -> list[Reply]:
        prompts = [_render(self.high_prompt if h else self.low_prompt, c) for c, h in zip(captions, high)]
        replies = self._map(images, prompts)
        return [Reply(r.text.strip().strip('"')) if r.text is not None else r for r in replies]

    def __repr__(self) -> str:
        return f"ChatTeacher({self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"


class CaptionerTeacher(Teacher):
    """Local captioner backends as a teacher.

    Args:
        scorer: a captioner whose prompt is the phase-1 instruction (``{caption}`` filled with the caption) and
            whose post-processing keeps the whole answer (``strip``); its text is parsed like AITQE output.
        writer: a captioner whose prompt asks for a good caption (phase 2 for weak pairs).
        low_writer: a captioner whose prompt asks for a weak caption; ``None`` = degrade the caption with
            ``negatives`` instead.
        negatives: the offline degrader used without ``low_writer``.
        seed: seed of the offline degrader.
    """

    def __init__(
        self,
        scorer: Captioner,
        writer: Captioner,
        low_writer: Captioner | None = None,
        negatives: NegativeGenerator | None = None,
        seed: int = 0,
    ) -> None:
        if low_writer is None and negatives is None:
            raise ValueError("CaptionerTeacher needs low_writer or negatives to write weak captions")
        self.scorer, self.writer, self.low_writer, self.negatives, self.seed = (
            scorer,
            writer,
            low_writer,
            negatives,
            seed,
        )
        self.name = f"captioner:{getattr(scorer, 'name', type(scorer).__name__)}"

    def setup(self, device: str = "cpu") -> None:
        for c in (self.scorer, self.writer, self.low_writer):
            if c is not None:
                c.setup(device)

    @staticmethod
    def _texts(captioner: Captioner, images, captions, keys) -> list[Reply]:
        if not len(images):
            return []
        return [Reply(text=gens[0].raw_text.strip()) for gens in captioner.generate(images, captions, keys)]

    def score(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[Reply]:
        return self._texts(self.scorer, images, captions, keys)

    def write(
        self,
        images: Sequence[Image.Image],
        captions: Sequence[str],
        keys: Sequence[str],
        high: Sequence[bool],
    ) -> list[Reply]:
        out: list[Reply] = [Reply() for _ in captions]
        hi = [i for i, h in enumerate(high) if h]
        lo = [i for i, h in enumerate(high) if not h]
        for idx, captioner in ((hi, self.writer), (lo, self.low_writer)):
            if captioner is None:
                continue
            replies = self._texts(captioner, *([seq[i] for i in idx] for seq in (images, captions, keys)))
            for i, r in zip(idx, replies):
                out[i] = Reply(text=r.text.strip('"'))
        if self.low_writer is not None:
            return out
        for i in lo:
            rng = random.Random(f"{self.seed}:{keys[i]}")
            made = self.negatives.negative(keys[i], captions[i], [captions[i]], {}, rng)
            out[i] = Reply(text=made.caption) if made is not None else Reply(error="no_negative_applies")
        return out
