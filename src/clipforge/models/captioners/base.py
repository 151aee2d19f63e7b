"""The ``Captioner`` protocol every caption backend implements (the post-processing rules: :mod:`.decoding`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass
class Generation:
    """One generated caption with its provenance.

    Attributes:
        text: the caption after post-processing (e.g. cut at the first sentence).
        raw_text: the decoded model output before post-processing.
        model_id: HF id / local path / name of the model that wrote it.
        prompt_id: name (and version) of the prompt template used.
        params: generation parameters (``max_new_tokens``, ``do_sample``, ``temperature``, ...).
        num_tokens: number of generated tokens (in the captioner's own tokenizer).
    """

    text: str
    raw_text: str
    model_id: str
    prompt_id: str
    params: dict = field(default_factory=dict)
    num_tokens: int | None = None

    def to_dict(self) -> dict:
        """Plain dict for JSON rows."""
        return asdict(self)


@runtime_checkable
class Captioner(Protocol):
    """``generate(images, captions, keys) -> one list of generations per image``.

    ``images`` are RGB ``PIL.Image``; ``captions`` are the raw captions (prompts may use them; may be ``""``);
    ``keys`` are sample keys (for logging / seeding). Each image gets ``num_captions`` generations. A
    captioner is built lazily: constructing it must not load weights; ``setup(device)`` does.
    """

    name: str
    num_captions: int

    def setup(self, device: str = "cpu") -> None: ...

    def generate(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[list[Generation]]: ...
