"""Tiny stand-in of Qwen-VL's remote-code tokenizer: bytes as tokens, ``<img>path</img>`` as a fixed-size span.

Like ``QWenTokenizer``, the text between ``<img>`` and ``</img>`` is an image *path*: its UTF-8 bytes are written
into the span, padded with ``<imgpad>`` to ``image_span`` tokens, and the model reads the path back from the ids.
``eod_id`` is the end-of-document token the official script uses as EOS and padding.
"""

import re

from transformers import PreTrainedTokenizer

EOD, IMG_START, IMG_END, IMG_PAD = "<|endoftext|>", "<img>", "</img>", "<imgpad>"
SPECIALS = {EOD: 256, IMG_START: 257, IMG_END: 258, IMG_PAD: 259}
_IMG = re.compile(r"<img>(.*?)</img>", re.S)
_SPECIAL = re.compile("|".join(re.escape(s) for s in SPECIALS))


class QWenTokenizer(PreTrainedTokenizer):
    """Byte-level tokenizer with Qwen-VL's image-path spans."""

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, image_span: int = 256, **kwargs) -> None:
        self.image_span = image_span
        super().__init__(**kwargs)

    @property
    def eod_id(self) -> int:
        return SPECIALS[EOD]

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIALS)

    def get_vocab(self) -> dict:
        return {**{chr(b): b for b in range(256)}, **SPECIALS}

    def _bytes(self, text: str) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _text(self, text: str) -> list[str]:
        tokens, pos = [], 0
        for m in _SPECIAL.finditer(text):
            tokens += self._bytes(text[pos : m.start()]) + [m.group(0)]
            pos = m.end()
        return tokens + self._bytes(text[pos:])

    def tokenize(self, text: str, **kwargs) -> list[str]:
        tokens, pos = [], 0
        for m in _IMG.finditer(text):
            path = self._bytes(m.group(1))
            if len(path) > self.image_span:
                raise ValueError(f"image path longer than {self.image_span} bytes: {m.group(1)!r}")
            tokens += self._text(text[pos : m.start()])
            tokens += [IMG_START, *path, *[IMG_PAD] * (self.image_span - len(path)), IMG_END]
            pos = m.end()
        return tokens + self._text(text[pos:])

    def _convert_token_to_id(self, token: str) -> int:
        return SPECIALS[token] if token in SPECIALS else ord(token)

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index) if index < 256 else next(t for t, i in SPECIALS.items() if i == index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode([self._convert_token_to_id(t) for t in tokens])

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        out, buf = [], []
        for i in token_ids:
            if i < 256:
                buf.append(i)
                continue
            out.append(bytes(buf).decode("utf-8", errors="replace"))
            buf = []
            if not skip_special_tokens:
                out.append(self._convert_id_to_token(i))
        out.append(bytes(buf).decode("utf-8", errors="replace"))
        return "".join(out)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        return ()
