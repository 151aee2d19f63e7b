"""Caption hygiene shared by every reader: one bad caption is dropped and recorded, the row keeps the rest."""

from __future__ import annotations

from collections.abc import Iterable

from clipforge.data.records import ErrorRecord

CAPTION_ERROR_REASONS = ("empty_caption", "non_utf8_caption", "caption_too_long", "bad_caption_type")


def _flatten(values: Iterable) -> Iterable:
    for v in values:
        if isinstance(v, list | tuple):
            yield from _flatten(v)
        elif hasattr(v, "tolist") and not isinstance(v, str | bytes):  # numpy arrays / scalars of captions
            items = v.tolist()
            yield from _flatten(items if isinstance(items, list) else [items])
        else:
            yield v


def clean_caption(value: object, max_chars: int = 2000) -> tuple[str | None, str | None]:
    """One caption value -> ``(caption, None)`` or ``(None, reason)``; ``(None, None)`` for a missing value.

    Bytes are decoded as UTF-8; text holding lone surrogates (undecodable bytes read with ``surrogateescape`` or
    ``\\udcXX`` escapes in JSON) counts as not UTF-8. Surrounding whitespace is stripped.
    """
    if value is None:
        return None, None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, "non_utf8_caption"
    if not isinstance(value, str):
        return None, "bad_caption_type"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "non_utf8_caption"
    value = value.strip()
    if not value:
        return None, "empty_caption"
    if len(value) > max_chars:
        return None, "caption_too_long"
    return value, None


def clean_captions(
    values: Iterable, key: str, source: str, max_chars: int = 2000
) -> tuple[list[str], list[ErrorRecord]]:
    """Clean a row's caption values (lists are flattened; ``None`` = missing, skipped without an error).

    Args:
        values: raw caption values (str, bytes, lists of them, ``None``).
        key: sample key, for the error records.
        source: provenance of the row (``path:line``), for the error records.
        max_chars: longest caption kept, in characters.

    Returns:
        The valid captions in order, and one ``ErrorRecord`` per rejected caption.
    """
    good: list[str] = []
    errors: list[ErrorRecord] = []
    for value in _flatten(values):
        caption, reason = clean_caption(value, max_chars)
        if caption is not None:
            good.append(caption)
        elif reason is not None:
            errors.append(ErrorRecord(key, reason, source))
    return good, errors
