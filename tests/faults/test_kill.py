"""kill -9 tier: generation jobs (recap captions, enhance scores, the llm2clip embedding cache) and CLIP training are
SIGKILLed at progress points and at seeded random times, rerun with the same command, and compared with an
uninterrupted run: no row lost, duplicated or changed, every other output identical, final weights equal.

The machinery (processes, kill points, comparison) is ``tests/helpers/faults.py``; ``benchmarks/fault_campaign.py``
runs the same trials in any number (RELIABILITY.md). Runs are forked from one pre-imported launcher, except one
trial that starts fresh interpreters (``python -m clipforge.cli.train``) as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clipforge.utils.hydra import compose
from tests.helpers.faults import (
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

SEED = 0
GENERATE = ["recap_captions", "enhance_scores", "llm2clip_cache"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Inputs, the launcher, and each job's uninterrupted reference run (made on first use)."""
    root = tmp_path_factory.mktemp("kill")
    files = prepare(root / "inputs")
    references: dict[str, tuple[Path, float]] = {}
    with Launcher(root / "logs") as launcher:

        def reference(name: str) -> tuple[Path, float]:
            if name not in references:
                out = root / name / "reference"
                references[name] = (out, run(launcher, JOBS[name], out, files))
            return references[name]

        yield {"root": root, "files": files, "launcher": launcher, "reference": reference}


def _check(trials) -> None:
    print("\n" + table(trials))
    for t in trials:
        assert (t.lost, t.duplicated, t.different) == (0, 0, 0), table([t])
        assert t.files_differ == [], table([t])
        assert t.ok


@pytest.mark.parametrize("name", [*GENERATE, "clip_train"])
def test_kills_at_progress_points_lose_and_duplicate_nothing(name, campaign):
    """One chain per job: killed after 1 shard, its rerun after 3, that rerun between the last shard and the merge
    (training: after epoch 0's checkpoint, then the rerun after epoch 1's); the last rerun completes."""
    job, (reference, _) = JOBS[name], campaign["reference"](name)
    out = campaign["root"] / name / "progress"
    trials = chain(campaign["launcher"], job, reference, out, campaign["files"], progress_points(job))
    assert all(t.landed for t in trials)  # every kill hit a running job, where aimed:
    planned = trials[0].state.split("/")[1].split()[0] if job.entry == "generate" else None
    expected = (
        ["1/", "3/", f"{planned}/{planned} shards, not merged"]
        if job.entry == "generate"
        else ["last.ckpt of epoch 0 ", "last.ckpt of epoch 1 "]
    )
    assert [t.state[: len(e)] for t, e in zip(trials, expected)] == expected
    _check(trials)


@pytest.mark.parametrize("name", [*GENERATE, "clip_train"])
def test_kill_at_a_seeded_random_time(name, campaign):
    job, (reference, seconds) = JOBS[name], campaign["reference"](name)
    (point,) = random_points(SEED + list(JOBS).index(name), 1, job, seconds)
    out = campaign["root"] / name / "random"
    _check(chain(campaign["launcher"], job, reference, out, campaign["files"], [point]))


def test_error_log_of_a_resumed_job_has_each_bad_row_once(campaign):
    """Batches of one row, shards of two: the missing photo (img-08) opens shard 4. Killed once its error is logged
    but before the shard is complete, the rerun computes that shard again: data_errors.jsonl must still hold it
    once, as the uninterrupted run's does."""
    job, point, env = TARGETED["error_log"]
    root, files, launcher = campaign["root"], campaign["files"], campaign["launcher"]
    reference = root / job.name / "reference"
    run(launcher, job, reference, files)
    trials = chain(launcher, job, reference, root / job.name / "errors", files, [point])
    assert trials[0].landed and trials[0].state.startswith("4/7 shards, not merged")
    _check(trials)


def test_data_errors_are_logged_before_the_shard_that_holds_them_is_final(tmp_path):
    """Callback order of generation jobs: the error log records a batch's bad rows before the shard writer may
    complete (and a kill may then skip) their shard, so a kill can never leave a bad row out of data_errors.jsonl."""
    cfg = compose(
        ["experiment=enhance_score_demo", "debug=tiny_enhance_score_demo"], "generate", str(tmp_path)
    )
    names = list(cfg.callbacks)
    assert names.index("data_errors") < names.index("shard_writer")


def test_training_killed_and_resumed_in_fresh_interpreters(campaign):
    """The training chain with every run a fresh ``python -m clipforge.cli.train`` (the user's command), compared
    with the launcher's reference: the launcher changes nothing but start-up time."""
    job, (reference, _) = JOBS["clip_train"], campaign["reference"]("clip_train")
    with Launcher(campaign["root"] / "logs", spawn=True) as spawned:
        out = campaign["root"] / "clip_train" / "spawned"
        trials = chain(spawned, job, reference, out, campaign["files"], ["ckpt:1"])
    assert trials[0].landed and trials[0].state.startswith("last.ckpt of epoch 0 ")
    _check(trials)


def test_kill_while_last_ckpt_is_written_keeps_the_resume_point(campaign):
    """The temporary directory on another filesystem than the run (here /dev/shm; on clusters a node-local /tmp and
    shared checkpoints): last.ckpt must still be replaced in one step, so a kill while it is written leaves the
    previous epoch's checkpoint, and the rerun from it ends where the uninterrupted run does."""
    job, point, env = TARGETED["torn_checkpoint"]
    reference, _ = campaign["reference"](job.name)
    with Launcher(campaign["root"] / "logs", env=env) as launcher:
        out = campaign["root"] / job.name / "torn"
        trials = chain(launcher, job, reference, out, campaign["files"], [point])
    assert trials[0].landed and trials[0].state.startswith("last.ckpt of epoch ")
    _check(trials)
