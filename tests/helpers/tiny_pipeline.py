"""A tiny pipeline source (real image files + captions in a JSONL) and the tiny pipeline's command."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from clipforge.utils.hydra import PROJECT_ROOT

N_IMAGES = 8


def tiny_source(folder: Path, n: int = N_IMAGES) -> Path:
    """``n`` solid-colour PNGs with three captions each, as ``<folder>/data.jsonl`` (keys ``k0``...)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = np.zeros((48, 48, 3), np.uint8)
        arr[...] = rng.integers(0, 255, 3)
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        captions = [f"a photo number {i}", f"picture {i} of a colour", f"image {i}"]
        rows.append({"key": f"k{i}", "image": str(path), "captions": captions})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_overrides(source: Path, log_dir: Path, *extra: str) -> list[str]:
    """Overrides of the tiny pipeline on ``source``, its run folder ``<log_dir>/pipeline/tiny``."""
    return ["preset=tiny", f"data.train.path={source}", f"paths.log_dir={log_dir}", *extra]


def pipeline_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "clipforge.cli.pipeline", *overrides]


def pipeline_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT / "src"), str(PROJECT_ROOT), env.get("PYTHONPATH", "")]
    )
    return env


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def naive_fold(key: str, k: int) -> int:
    """Reference of the k-fold rule: sha1 of ``"0:<key>"``, first 8 bytes as a fraction of 2**64, times k."""
    fraction = int(hashlib.sha1(f"0:{key}".encode()).hexdigest()[:16], 16) / 2**64
    return min(int(fraction * k), k - 1)
