"""One pipeline job: a standalone experiment composed with the pipeline's overrides, hashed, run, recorded.

A job is exactly what its standalone command would run (``clipforge train`` / ``clipforge generate`` with
``experiment=<name>`` and a list of overrides): the pipeline only adds overrides that hand paths from one job to
the next. Its **hash** is the SHA-256 of the resolved job config (without Hydra's own node and without
``ckpt_path``) together with the hashes of the jobs it reads from, so a change anywhere upstream reruns it.

Jobs run in this process by default (imports and model weights are loaded once for the whole pipeline); with
``launcher=subprocess`` each job is its own ``python -m clipforge.cli.<primary>`` process, as a user would start
it (the way to run steps under ``trainer=ddp``, where Lightning launches the ranks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("clipforge.pipeline")

__all__ = ["Job", "JobFailed", "override", "run_job"]

PRIMARY_MODULES = {"train": "clipforge.cli.train", "generate": "clipforge.cli.generate"}


class JobFailed(RuntimeError):
    """A job ended with an error; ``str(e)`` is the one line that names the job and the cause."""


def _hydra_value(value: object) -> str:
    """A Python value in Hydra's override grammar (strings quoted only where the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    text = str(value)
    plain = (
        text and all(c.isalnum() or c in "/._-:+~@" for c in text) and text not in ("null", "true", "false")
    )
    if plain and not text[0].isdigit():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override(key: str, value: object) -> str:
    """``++key=value``: set ``key`` whether or not the composed config already has it."""
    return f"++{key}={_hydra_value(value)}"


@dataclass
class Job:
    """A standalone experiment run inside the pipeline.

    Attributes:
        name: job name in ``state.json`` (``recap``, ``train/raw/fold0_s0``, ...).
        primary: ``train`` or ``generate``.
        experiment: the experiment it composes.
        overrides: user overrides of the step (from the pipeline config) followed by the hand-over overrides.
        output_dir: the job's run folder.
        after: names of the jobs whose outputs it reads (their hashes enter this one).
        resume_from_checkpoint: training jobs: resume from ``<output_dir>/checkpoints/last.ckpt`` when present.
    """

    name: str
    primary: str
    experiment: str
    overrides: list[str]
    output_dir: str
    after: list[str] = field(default_factory=list)
    resume_from_checkpoint: bool = False

    @property
    def command(self) -> list[str]:
        """The standalone command line of this job."""
        return [
            "clipforge",
            self.primary,
            f"experiment={self.experiment}",
            *self.overrides,
            f"hydra.run.dir={self.output_dir}",
        ]

    def compose(self):
        """The composed (unresolved) config, as ``@hydra.main`` would build it for :attr:`command`."""
        from clipforge.utils.hydra import compose

        return compose([f"experiment={self.experiment}", *self.overrides], self.primary, self.output_dir)

    def config_hash(self, upstream: Mapping[str, str]) -> str:
        """SHA-256 of the resolved job config (no ``hydra``, no ``ckpt_path``; every moved class under its first
        path, :mod:`clipforge.utils.moved`) and the upstream hashes."""
        from omegaconf import OmegaConf

        from clipforge.utils.hydra import job_config
        from clipforge.utils.moved import first_targets

        # classes under their first path: moving a class does not change the hash of a finished job
        job = first_targets(OmegaConf.to_container(job_config(self.compose()), resolve=True))
        job.pop("ckpt_path", None)
        payload = {
            "primary": self.primary,
            "job": job,
            "after": {n: upstream[n] for n in sorted(self.after)},
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def checkpoint(self) -> str | None:
        last = os.path.join(self.output_dir, "checkpoints", "last.ckpt")
        return last if self.resume_from_checkpoint and os.path.exists(last) else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@contextlib.contextmanager
def _job_log(path: str):
    """Also send the ``clipforge`` / ``lightning`` log records of an in-process job to its ``job.log``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    loggers = [logging.getLogger(n) for n in ("clipforge", "lightning", "lightning.pytorch")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def _run_inprocess(job: Job, extra: Sequence[str]) -> dict:
    from clipforge.utils.hydra import compose

    cfg = compose([f"experiment={job.experiment}", *job.overrides, *extra], job.primary, job.output_dir)
    if job.primary == "train":
        from clipforge.cli.train import train as task
    elif job.primary == "generate":
        from clipforge.cli.generate import generate as task
    else:
        raise ValueError(f"unknown primary {job.primary!r}")
    from clipforge.cli import task as task_module

    task_module.PRINT_ERRORS = False  # the pipeline prints the one line, naming the step
    try:
        with _job_log(os.path.join(job.output_dir, "job.log")):
            _, objects = task(cfg)
    finally:
        task_module.PRINT_ERRORS = True
    return _counts(job, objects)


def _counts(job: Job, objects: Mapping | None = None) -> dict:
    """``rows`` / ``errors`` of a finished job: a generation job's ``summary.json``; for a training job run in
    this process, training items x epochs run and the data errors of its datamodule."""
    summary = os.path.join(job.output_dir, "summary.json")
    if job.primary == "generate" and os.path.exists(summary):
        with open(summary, encoding="utf-8") as f:
            data = json.load(f)
        return {"rows": data.get("rows"), "errors": data.get("errors")}
    if not objects:
        return {"rows": None, "errors": None}
    dm, trainer = objects.get("datamodule"), objects.get("trainer")
    items = sum(len(ds) for ds in getattr(dm, "datasets", {}).get("train", []))
    epochs = getattr(trainer, "current_epoch", 0) or 0
    return {"rows": items * epochs or None, "errors": len(getattr(dm, "index_errors", []) or [])}


def _run_subprocess(job: Job, extra: Sequence[str]) -> dict:
    cmd = [sys.executable, "-m", PRIMARY_MODULES[job.primary], *job.command[2:], *extra]
    with open(os.path.join(job.output_dir, "job.log"), "a", encoding="utf-8") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = _log_tail(os.path.join(job.output_dir, "job.log"))
        raise RuntimeError(f"exit status {proc.returncode}" + (f": {tail}" if tail else ""))
    return _counts(job)


def _log_tail(path: str) -> str:
    """The last error line of a job log (the one-line message of a config error), else its last line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
        if "][ERROR] - " in line:
            return line.split("][ERROR] - ", 1)[1].strip()
    return lines[-1] if lines else ""


def run_job(job: Job, launcher: str = "inprocess") -> tuple[float, dict]:
    """Run a job to completion (resuming what a killed run left).

    Returns:
        ``(wall time in seconds, {"rows", "errors"})``.

    Raises:
        JobFailed: with one line naming the job and the cause (the traceback goes to ``<output_dir>/job.log``).
    """
    os.makedirs(job.output_dir, exist_ok=True)
    with open(os.path.join(job.output_dir, "command.sh"), "w", encoding="utf-8") as f:
        f.write(shlex.join(job.command) + "\n")
    ckpt = job.checkpoint()
    extra = [override("ckpt_path", ckpt)] if ckpt else []
    if ckpt:
        log.info("%s: resuming from %s", job.name, ckpt)
    start = time.perf_counter()
    try:
        if launcher == "subprocess":
            counts = _run_subprocess(job, extra)
        elif launcher == "inprocess":
            counts = _run_inprocess(job, extra)
        else:
            raise ValueError(f"pipeline.launcher={launcher!r} must be inprocess or subprocess")
    except SystemExit as e:  # a config error the entry point already reported as one line (exit 2)
        if e.code in (0, None):
            return time.perf_counter() - start, _counts(job)
        cause = _log_tail(os.path.join(job.output_dir, "job.log")) or f"exit status {e.code}"
        raise JobFailed(f"step {job.name} failed: {cause}") from None
    except Exception as e:
        with open(os.path.join(job.output_dir, "job.log"), "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        raise JobFailed(
            f"step {job.name} failed: {_first_line(e)} (details: {os.path.join(job.output_dir, 'job.log')})"
        ) from None
    return time.perf_counter() - start, counts
