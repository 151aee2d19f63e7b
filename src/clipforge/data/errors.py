"""Exceptions of the data layer."""

from __future__ import annotations


class DataConfigError(FileNotFoundError):
    """A dataset spec that cannot be read: a missing path, an unknown layout, an empty split.

    The message is one line naming the config field it came from (``data.train.path: no such file: /x.json``);
    entry points print it as is instead of a traceback. Subclasses ``FileNotFoundError`` because a wrong path is
    by far the most common cause.
    """


class ImageLoadError(Exception):
    """An image that cannot be used; ``reason`` is one of :data:`IMAGE_ERROR_REASONS`.

    Args:
        reason: machine-readable reason (counted and written to the error log).
        detail: human-readable detail (path, PIL message).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


IMAGE_ERROR_REASONS = (
    "no_image",
    "missing_file",
    "not_a_file",
    "symlink_loop",
    "zero_byte",
    "unreadable",
    "corrupt_image",
    "truncated",
    "too_many_pixels",
)
