"""Kill -9 fault campaign: SIGKILL generation and training jobs at progress points and at seeded random times, rerun
the same command, and count rows lost / duplicated / different against an uninterrupted run.

    python benchmarks/fault_campaign.py [--trials 3] [--jobs recap_captions clip_train] [--seed 0] [--spawn] \
        [--json out.json]

Per job (tests/helpers/faults.py lists them: recap captioning, enhance scoring, the llm2clip embedding cache, tiny
CLIP training): one uninterrupted reference run, one chain of progress-point kills (after 1 shard, after 3 shards,
between the last shard and the merge; training: after epoch 0's checkpoint, then the rerun after epoch 1's), each
rerun killed at the next point and the last one run to completion, then ``--trials`` independent kills at seeded
random times, each followed by one rerun; then the kills aimed at known windows (``TARGETED``: a bad row logged but
its shard unfinished; ``last.ckpt`` being replaced with ``TMPDIR`` on another filesystem). Every run is its own process, killed with its process group: forked from
a pre-imported launcher, or with ``--spawn`` a fresh ``python -m clipforge.cli.<entry>`` (slow: 10-30 s of imports
per run on a shared 2-core machine). Prints a Markdown table of every trial and a summary per job; exits 1 if any trial lost,
duplicated or changed a row (or a final weight, beyond 1e-6).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.helpers.faults import (  # noqa: E402
    JOBS,
    TARGETED,
    Launcher,
    chain,
    prepare,
    progress_points,
    random_points,
    run,
    table,
)


def campaign(
    jobs: list[str], trials: int, seed: int, root: Path, spawn: bool, targeted: bool = True
) -> tuple[list, dict]:
    """Run the campaign in ``root``; returns the trials and the reference run time per job."""
    files = prepare(root / "inputs")
    results, reference_s = [], {}
    with Launcher(root / "logs", spawn=spawn) as launcher:
        for i, name in enumerate(jobs):
            job = JOBS[name]
            reference = root / name / "reference"
            reference_s[name] = run(launcher, job, reference, files)
            results += chain(launcher, job, reference, root / name / "progress", files, progress_points(job))
            for k, point in enumerate(random_points(seed + i, trials, job, reference_s[name])):
                results += chain(launcher, job, reference, root / name / f"random{k}", files, [point])
            print(table([t for t in results if t.job == name]).split("\n", 2)[-1], flush=True)
        if targeted:
            for job, point, env in TARGETED.values():
                reference = root / job.name / "reference"
                if job.name not in reference_s:
                    reference_s[job.name] = run(launcher, job, reference, files)
                with Launcher(root / "logs", spawn=spawn, env=env) as special:
                    out = root / job.name / f"targeted-{point}"
                    results += chain(special, job, reference, out, files, [point])
                print(table(results[-1:]).split("\n", 2)[-1], flush=True)
    return results, reference_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=3, help="random-time kills per job (besides the progress chain)"
    )
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawn", action="store_true", help="start every run as a fresh interpreter")
    parser.add_argument("--no-targeted", action="store_true", help="skip the kills aimed at known windows")
    parser.add_argument("--json", help="also write every trial to this file")
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault_campaign_") as tmp:
        results, reference_s = campaign(
            args.jobs, args.trials, args.seed, Path(tmp), args.spawn, not args.no_targeted
        )
    elapsed = time.monotonic() - start
    print()
    print(table(results))
    print()
    print(
        "| job | trials | kills landed | lost | duplicated | different | outputs differ | reference run (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in dict.fromkeys(t.job for t in results):
        rows = [t for t in results if t.job == name]
        print(
            f"| {name} | {len(rows)} | {sum(t.landed for t in rows)} | {sum(t.lost for t in rows)} | "
            f"{sum(t.duplicated for t in rows)} | {sum(t.different for t in rows)} | "
            f"{sum(bool(t.files_differ) for t in rows)} | {reference_s[name]:.1f} |"
        )
    print(f"\n{len(results)} trials, {sum(t.landed for t in results)} kills landed, {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([t.as_dict() for t in results], indent=2))
    return 0 if all(t.ok for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
