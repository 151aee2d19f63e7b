"""Run metrics as flat ``{key: float}``: what a job reports and writes to ``metrics.json``.

Used by the entry points (:mod:`clipforge.cli.task`) and by the callbacks that keep metrics in checkpoints
(:class:`~clipforge.callbacks.checkpoint.MetricsState`); :mod:`clipforge.utils.runs` reads the file back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

__all__ = ["flat_metrics", "write_metrics"]


def flat_metrics(metrics: Mapping) -> dict[str, float]:
    """Scalar metrics as ``{key: float}`` (tensors unwrapped, NaN kept as ``null``-able floats)."""
    import torch

    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[str(k)] = float(v)
    return dict(sorted(out.items()))


def write_metrics(metrics: Mapping[str, float], output_dir: str) -> str:
    """Write ``metrics.json`` (flat keys) and return its path."""
    path = os.path.join(output_dir, "metrics.json")
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    with open(path, "w") as f:
        json.dump(clean, f, indent=2)
    return path
