"""Start-up latency of the commands: how long ``--help``, ``--cfg job`` and a config error take to answer.

    python benchmarks/bench_startup.py [--src src] [--repeats 5] [--json bench_startup.json]
    python benchmarks/bench_startup.py --src /tmp/before/src     # another checkout (e.g. a worktree of an older commit)

Each case is a fresh process started as the console script's launcher starts it (``sys.exit(main())`` with
``PYTHONPATH=<src>``), timed from spawn to exit (wall clock); the median and the range of ``--repeats`` runs are
reported after one unreported warm-up run (the OS file cache). A checkout with ``clipforge.cli.main`` is measured
through ``clipforge <command>``; an older one through its ``clipforge-<command>`` scripts (same arguments). The
one-minute load average is printed before and after: other processes on the machine slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=clip_demo", "debug=tiny_clip"]
CASES = {
    "clipforge --help": (None, ["--help"]),
    "train --help": ("train", ["--help"]),
    "train --cfg job": ("train", [*TINY, "--cfg", "job"]),
    "train: bad override": ("train", [*TINY, "trainer.max_epochs=="]),
    "train: unknown key": ("train", [*TINY, "no_such_key=1"]),
    "train: missing data file": ("train", [*TINY, "data.train.path=/no/such/file.json"]),
    "train: bad value": ("train", [*TINY, "data.batch_size=-4"]),
}
"""Case -> (command, arguments); ``None``: the bare ``clipforge`` (only where the checkout has it)."""


def launcher(src: Path, command: str | None) -> list[str] | None:
    """The ``python -c`` line pip's launcher amounts to for ``command`` in checkout ``src`` (None: not there)."""
    if (src / "clipforge" / "cli" / "main.py").exists():
        pre = [] if command is None else [command]
        entry = "from clipforge.cli.main import main"
    elif command is None:
        return None
    else:
        pre, entry = [], f"from clipforge.cli.{command} import main"
    return [sys.executable, "-c", f"import sys\n{entry}\nsys.argv[0] = 'clipforge'\nsys.exit(main())", *pre]


def time_once(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the checkout's src folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    src = args.src.resolve()
    with tempfile.TemporaryDirectory() as logs:
        env = {
            **os.environ,
            "PYTHONPATH": str(src),
            "CLIPFORGE_LOG_DIR": logs,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        load_before = os.getloadavg()
        results = {}
        for name, (command, argv) in CASES.items():
            base = launcher(src, command)
            if base is None:
                continue
            cmd = [*base, *argv]
            time_once(cmd, env)  # warm-up
            runs = [time_once(cmd, env) for _ in range(args.repeats)]
            seconds = [s for s, _ in runs]
            results[name] = {
                "median_s": statistics.median(seconds),
                "min_s": min(seconds),
                "max_s": max(seconds),
                "exit_status": sorted({rc for _, rc in runs}),
            }
            print(
                f"{name:<26} median {results[name]['median_s']:.2f} s  "
                f"(min {min(seconds):.2f}, max {max(seconds):.2f}; exit {results[name]['exit_status']})",
                flush=True,
            )
        load_after = os.getloadavg()
    print(
        f"load average (1 min): {load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"src": str(src), "results": results, "loadavg_1min": [load_before[0], load_after[0]]},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
