"""Where the tests find the real shared data (COCO photos and caption files that are not ours to redistribute).

The data lives beside the clone, in ``../shared/data`` (the layout ``conf/paths/default.yaml`` also reads), or
wherever ``CLIPFORGE_SHARED_DATA`` points. A test that needs it calls :func:`require` (or takes the
``shared_data`` fixture): without the data it is skipped on a workstation and **fails** when ``CI`` is set
(``.ci/run`` sets ``CI=1``), so a CI run cannot pass by skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "CLIPFORGE_SHARED_DATA"
REPO = Path(__file__).resolve().parents[2]
# what the tests read, relative to the data dir (its README describes them)
COCO_DEV = ("coco-dev",)
COCO_TEXT = ("coco-captions-text", "annotations", "captions_val2017.json")


def shared_data_dir() -> Path:
    """``$CLIPFORGE_SHARED_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get(ENV) or REPO.parent / "shared" / "data")


def in_ci() -> bool:
    """Whether ``CI`` is set to anything but an empty string, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(*parts: str) -> Path:
    """The path ``parts`` under the shared data dir; skips the calling test (fails it in CI) when it is missing.

    Args:
        parts: path components below the data dir, e.g. ``("coco-dev", "train2017")``.

    Returns:
        The existing path.
    """
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        why = f"{path} is missing (the shared data: ../shared/data beside the clone, or set {ENV})"
        if in_ci():
            pytest.fail(f"{why}; CI must run the real-data tests", pytrace=False)
        pytest.skip(why)
    return path
