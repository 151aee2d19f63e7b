"""The real-data tests find the shared data beside the clone (or where ``CLIPFORGE_SHARED_DATA`` points), skip
without it on a workstation and fail without it in CI, so a CI run can never pass by skipping them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import shared_data

ROOT = Path(__file__).resolve().parents[2]
REAL_DATA_TESTS = [
    "tests/unit/test_data_readers.py::test_real_coco_dev",
    "tests/unit/test_data_readers.py::test_real_coco_text_groups",
    "tests/unit/test_data_split.py::test_split_on_4000_text_groups",
]


def _pytest(env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", shared_data.ENV)} | env
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *REAL_DATA_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(tmp_path):
    missing = str(tmp_path / "no-such-data")
    ci = _pytest({shared_data.ENV: missing, "CI": "1"})
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert f"{len(REAL_DATA_TESTS)} failed" in ci.stdout
    assert f"{missing}/coco-dev" in ci.stdout or f"{missing}/coco-captions-text" in ci.stdout
    local = _pytest({shared_data.ENV: missing})
    assert local.returncode == 0, local.stdout[-2000:]
    assert f"{len(REAL_DATA_TESTS)} skipped" in local.stdout and "CLIPFORGE_SHARED_DATA" in local.stdout


def test_the_data_dir_is_beside_the_clone_unless_the_variable_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv(shared_data.ENV, raising=False)
    assert shared_data.shared_data_dir() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv(shared_data.ENV, str(tmp_path))
    assert shared_data.shared_data_dir() == tmp_path
    (tmp_path / "coco-dev").mkdir()
    assert shared_data.require("coco-dev") == tmp_path / "coco-dev"


@pytest.mark.parametrize(
    ("value", "ci"), [("1", True), ("true", True), ("", False), ("0", False), ("false", False)]
)
def test_ci_is_on_for_any_value_but_empty_zero_or_false(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert shared_data.in_ci() is ci
