"""Per-step wall times of a finished pipeline run, as the Markdown table BENCHMARKS.md records.

.venv/bin/python benchmarks/pipeline_steps.py logs/pipeline/demo
"""

from __future__ import annotations

import argparse
import json
import os


def table(run_dir: str) -> str:
    with open(os.path.join(run_dir, "state.json"), encoding="utf-8") as f:
        steps = json.load(f)["steps"]
    lines = ["| job | wall (s) | rows | rows/s |", "|---|---:|---:|---:|"]
    total = 0.0
    for name, s in steps.items():
        wall = s.get("wall_s") or 0.0
        total += wall
        rows = "" if s.get("rows") is None else str(s["rows"])
        rate = "" if s.get("rows_per_s") is None else f"{s['rows_per_s']:.2f}"
        lines.append(f"| `{name}` | {wall:.1f} | {rows} | {rate} |")
    lines.append(f"| **all jobs** | **{total:.1f}** | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    print(table(p.parse_args().run_dir))


if __name__ == "__main__":
    main()
