"""``state.json`` of a pipeline run: per job its hash, status, times and outputs, written atomically.

A job is skipped when its recorded status is ``done``, its hash equals the hash of its config now and its outputs
exist. A job whose hash changed starts again in an emptied folder (a generation job's shards, or a training
job's checkpoints, from another config must not be resumed); one recorded as ``running`` with the same hash was
killed and resumes in its folder (generation shards, ``last.ckpt``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone

__all__ = ["RunState", "now"]

STATUSES = ("running", "done", "failed")


def now() -> str:
    """UTC time in ISO format (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunState:
    """The ``steps`` table of ``<run_dir>/state.json`` (one entry per job, in the order they first ran)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "state.json")
        self.steps: dict[str, dict] = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.steps = dict(json.load(f).get("steps", {}))

    def save(self) -> None:
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"steps": self.steps}, f, indent=2)
        os.replace(tmp, self.path)

    def hash_of(self, name: str) -> str | None:
        return (self.steps.get(name) or {}).get("hash")

    def is_done(self, name: str, digest: str) -> bool:
        """Finished with this hash, and every recorded output still on disk."""
        entry = self.steps.get(name) or {}
        if entry.get("status") != "done" or entry.get("hash") != digest:
            return False
        return all(os.path.exists(p) for p in (entry.get("outputs") or {}).values() if p)

    def begin(self, name: str, digest: str, output_dir: str) -> None:
        """Mark a job as running; a folder left by a different config is emptied first."""
        entry = self.steps.get(name) or {}
        if entry.get("hash") not in (None, digest) and os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        resumed = entry.get("hash") == digest and entry.get("status") in ("running", "failed")
        self.steps[name] = {
            "hash": digest,
            "status": "running",
            "started": entry.get("started") if resumed else now(),
            "finished": None,
            "wall_s": entry.get("wall_s") if resumed else None,
            "rows": None,
            "errors": None,
            "rows_per_s": None,
            "outputs": {},
            "error": None,
            "output_dir": output_dir,
        }
        self.save()

    def finish(
        self,
        name: str,
        wall_s: float,
        outputs: Mapping[str, str],
        rows: int | None = None,
        errors: int | None = None,
    ) -> None:
        """Mark a job as done; wall time adds up over the runs of a resumed job."""
        entry = self.steps[name]
        total = (entry.get("wall_s") or 0.0) + wall_s
        entry.update(
            status="done",
            finished=now(),
            wall_s=round(total, 3),
            rows=rows,
            errors=errors,
            rows_per_s=round(rows / total, 3) if rows and total > 0 else None,
            outputs=dict(outputs),
        )
        self.save()

    def fail(self, name: str, wall_s: float, error: str) -> None:
        entry = self.steps[name]
        entry.update(
            status="failed",
            finished=now(),
            wall_s=round((entry.get("wall_s") or 0.0) + wall_s, 3),
            error=error,
        )
        self.save()
