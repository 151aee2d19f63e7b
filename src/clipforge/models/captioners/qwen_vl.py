"""``QwenVLCaptioner``: the original Qwen-VL through its own remote code, exactly as the seed's ``qwen.py`` runs it.

Qwen-VL ships its model and tokenizer as Python files inside the checkpoint folder (``trust_remote_code``), so this
captioner runs code downloaded with the weights and only does so when the user opts in with
``trust_remote_code: true``. Qwen-VL's tokenizer takes the image as a *path* inside the prompt
(``<img>{path}</img>``) and its model opens the file itself; captioners receive decoded images, so each image is
first written losslessly (PNG) to a scratch folder and the prompt names that file. ``qwen2_vl`` (an
:class:`~clipforge.models.captioners.hf.HFCaptioner` preset) is the native ``transformers`` alternative.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clipforge.models.assets import resolve_asset
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import render_prompt

__all__ = ["QwenVLCaptioner"]

OPT_IN = (
    "{name}: Qwen-VL runs Python code shipped inside the model folder ({path}); read it, then opt in with "
    "trust_remote_code: true (e.g. model.captioners.{name}.trust_remote_code=true), or use the native qwen2_vl preset"
)


class QwenVLCaptioner(BatchedCaptioner):
    """Qwen-VL (``AutoModelForCausalLM`` + ``AutoTokenizer`` with remote code), left padding with ``eod_id``.

    Args:
        name_or_path: HF id or local folder of a Qwen-VL checkpoint (with its ``modeling_qwen.py``).
        trust_remote_code: must be ``true``: the user's explicit permission to run the folder's code.
        name: column name of this captioner's captions.
        prompt: prompt template; ``{image}`` is the image file, ``{caption}`` the raw caption.
        prompt_id: provenance name of the prompt.
        decoding: generation parameters.
        postprocess: ``first_sentence`` (official script) or ``strip``.
        num_captions: captions per image (more than one needs sampling).
        batch_size: rows per ``generate`` call.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
        scratch_dir: folder the images are written to for the tokenizer (``None`` = a fresh temporary folder);
            each batch's files are deleted after its ``generate`` call.
    """

    def __init__(
        self,
        name_or_path: str,
        trust_remote_code: bool = False,
        name: str = "qwen_vl",
        prompt: str = "<img>{image}</img>Express emotional or artistic response:",
        prompt_id: str = "qwen_vl_emotional_artistic",
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "first_sentence",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str = "float32",
        scratch_dir: str | None = None,
    ) -> None:
        if not trust_remote_code:
            raise PermissionError(OPT_IN.format(name=name, path=name_or_path))
        if "{image}" not in prompt:
            raise ValueError(
                f"{name}: the prompt must contain {{image}} (Qwen-VL reads the image from its path)"
            )
        super().__init__(name, name_or_path, prompt_id, decoding, postprocess, num_captions, batch_size)
        self.name_or_path, self.trust_remote_code, self.prompt = name_or_path, trust_remote_code, prompt
        self.dtype, self.scratch_dir = dtype, scratch_dir
        resolve_dtype(dtype)
        self._scratch: str | None = None
        self._written: set[str] = set()

    def _load(self, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_asset(self.name_or_path).path
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        tok.padding_side = "left"
        tok.pad_token_id = tok.eod_id  # the official script: pad and stop with the end-of-document token
        self.tokenizer = tok
        model: Any = AutoModelForCausalLM.from_pretrained(  # remote code: the class is the folder's
            path, trust_remote_code=True, dtype=resolve_dtype(self.dtype)
        )
        self.model = model.to(device).eval()
        if self.scratch_dir:
            os.makedirs(self.scratch_dir, exist_ok=True)
            self._scratch = self.scratch_dir
        else:  # our own temporary folder: removed with this captioner
            self._scratch = tempfile.mkdtemp(prefix=f"{self.name}-")
            weakref.finalize(self, shutil.rmtree, self._scratch, True)

    def _stop_ids(self) -> list[int]:
        return [self.tokenizer.eod_id]

    def image_path(self, image: Image.Image) -> str:
        """Where ``image`` is written for the prompt: ``<scratch>/<content hash>-<W>x<H>.png``."""
        if self._scratch is None:
            raise RuntimeError(f"{self.name}: call setup(device) before image_path()")
        digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
        return os.path.join(self._scratch, f"{digest}-{image.width}x{image.height}.png")

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        paths = [self.image_path(im) for im in images]
        for im, path in zip(images, paths):
            if path not in self._written:
                im.save(path, format="PNG")
                self._written.add(path)
        texts = [render_prompt(self.prompt, c).replace("{image}", p) for c, p in zip(captions, paths)]
        enc = self.tokenizer(texts, return_tensors="pt", padding="longest")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, [{} for _ in texts]

    def _generate_chunk(self, images, captions, seeds):
        try:
            return super()._generate_chunk(images, captions, seeds)
        finally:
            for path in self._written:
                if os.path.exists(path):
                    os.remove(path)
            self._written.clear()

    def _generate_kwargs(self) -> dict:
        # the official script stops at Qwen-VL's end-of-document token
        return {**self.decoding.generate_kwargs(), "eos_token_id": self.tokenizer.eod_id}

    def __repr__(self) -> str:
        return f"QwenVLCaptioner({self.name!r}, {self.name_or_path!r}, trust_remote_code={self.trust_remote_code})"
