"""Kill -9 campaign: run a job, SIGKILL its process group at a chosen point, rerun the same command, and compare
every output with an uninterrupted run of the same command.

Used by ``tests/faults/test_kill.py`` (a few trials per job) and ``benchmarks/fault_campaign.py`` (as many as asked).
Every run is its own OS process in its own session, running the entry point's ``main()`` on the job's command line
(``<overrides> hydra.run.dir=<folder>``), and a kill is ``SIGKILL`` to its whole process group. By default the runs
are forked from a :class:`Launcher` that imported torch, Lightning and transformers once (those imports take
10-30 s per process on a shared 2-core machine and would otherwise be most of the campaign); with ``spawn=True``
each run is ``python -m clipforge.cli.<entry> ...`` started from scratch. The killed run gets the :class:`Throttle`
callback (a pause after every batch, no effect on outputs) so that a job of tiny models lasts long enough for a kill
to land where it is aimed. Kill points (the state on disk is polled every 10 ms):

- ``shards:<k>``: as soon as ``k`` output shards are on disk;
- ``merge``: every shard written, the merged outputs (``summary.json``) not yet;
- ``errors:<k>``: as soon as ``k`` bad rows are in the run's ``data_errors.jsonl``;
- ``ckpt:<k>``: training, as soon as this run has written ``last.ckpt`` ``k`` times (end of an epoch);
- ``torn``: training, while an existing ``last.ckpt`` is being replaced (polled without pause): its temporary file
  exists, or the file itself is seen empty or shorter than before (rewritten in place);
- ``random:<t>s``: ``t`` seconds after the start (seeded by the caller), anywhere from start-up to the end.

After each kill the state on disk is recorded (shards, merged or not, leftover temporary files, checkpoint epoch),
then the command is rerun (training: with ``ckpt_path=<folder>/checkpoints/last.ckpt`` when it exists, as the README
says) and the outputs are compared with the uninterrupted run: rows lost, duplicated or different (by key, tensors
exactly), every other output file byte for byte (the run folder's own path aside), and for training the final
weights, epoch and step.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch

from clipforge.data.shards import read_shard, shard_files

ROOT = Path(__file__).resolve().parents[2]
RUN_FILES = {"config.yaml", "run.cli.yaml", ".hydra", "shards", "checkpoints", "run.log", "run.log.exit"}
"""Entries of a run folder compared otherwise (shards as rows, checkpoints as weights) or not outputs at all (the run
files, the run's log; Hydra's ``<task>.log`` is appended by every rerun and is skipped too)."""
WEIGHT_TOLERANCE = 1e-6
"""Largest absolute difference of a final weight still counted as equal. Resumed training is bit-exact, except that
the frozen-feature cache (``model.cache_frozen_features``, on in ``clip_demo``) is empty after a restart: features
then come from other batch compositions and can differ in the last bit (1.5e-8 seen); the cache's own test allows
the same kind of tolerance."""
METRIC_RTOL = 1e-5
"""Relative tolerance of the training metrics in ``metrics.json`` (same cause)."""


class Throttle(L.Callback):
    """Sleep ``seconds`` after every training and prediction batch: a tiny job then lasts long enough for a kill to
    land mid-way. Outputs are unchanged (it touches no state).

    Args:
        seconds: pause per batch.
    """

    def __init__(self, seconds: float = 0.25) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        time.sleep(self.seconds)


@dataclass(frozen=True)
class Job:
    """A job of the campaign.

    Attributes:
        name: short name (table rows).
        what: one-line description.
        entry: ``generate`` or ``train`` (``clipforge.cli.<entry>``).
        overrides: the command's overrides; ``{data}``, ``{chat_llm}``, ``{llm}`` name the files of
            :func:`prepare`.
        batches: throttled batches of a run (sets the span of random kill times).
    """

    name: str
    what: str
    entry: str
    overrides: tuple[str, ...]
    batches: int


JOBS = {
    "recap_captions": Job(
        "recap_captions",
        "recap captioning (label_llm, tiny Llama + ViT) of 14 photos (1 corrupt, 1 missing), 7 jsonl shards",
        "generate",
        (
            "experiment=recap_label_llm",
            "debug=tiny_recap_label_llm",
            "model.captioners.label_llm.llm={chat_llm}",
            "~model.captioners.label_llm.llm_config",
            "data.predict.path={data}",
            "data.predict.limit=null",
            "data.predict_shard_rows=2",
            "data.eval_batch_size=2",
        ),
        7,
    ),
    "enhance_scores": Job(
        "enhance_scores",
        "enhance scoring (tiny AITQE VLM) of 14 photos (1 corrupt, 1 missing), 5 jsonl shards, rewrite policy",
        "generate",
        (
            "experiment=enhance_score_demo",
            "debug=tiny_enhance_score_demo",
            "data.predict.path={data}",
            "data.predict.limit=null",
            "data.predict_shard_rows=3",
            "data.eval_batch_size=3",
        ),
        5,
    ),
    "llm2clip_cache": Job(
        "llm2clip_cache",
        "llm2clip caption-embedding cache (tiny Llama encoder), 15 caption groups, 5 pt shards (float16)",
        "generate",
        (
            "experiment=llm2clip_embed_demo",
            "debug=tiny_llm2clip_embed_demo",
            "model.llm_encoder.name_or_path={llm}",
            "model.llm_encoder.from_config=null",
            "data.predict.limit=15",
            "data.predict_shard_rows=3",
            "data.batch_size=3",
        ),
        5,
    ),
    "clip_train": Job(
        "clip_train",
        "CLIP training (tiny ViT + text transformer), 3 epochs of 2 steps, resumed from last.ckpt",
        "train",
        ("experiment=clip_demo", "debug=tiny_clip", "trainer.max_epochs=3", "evaluate=false"),
        6,
    ),
}


def _variant(name: str, base: str, *extra: str) -> Job:
    job = JOBS[base]
    return Job(name, job.what, job.entry, (*job.overrides, *extra), job.batches)


def _shm() -> dict[str, str]:
    """``TMPDIR`` on a filesystem other than the run folder's (``/dev/shm``), where the machine has one."""
    shm = Path("/dev/shm")
    return {"TMPDIR": str(shm)} if shm.is_dir() and os.access(shm, os.W_OK) else {}


TARGETED: dict[str, tuple[Job, str, dict[str, str]]] = {
    # one-row batches, two-row shards: the missing photo img-08 opens shard 4; killed once it is logged, before the
    # shard is complete, the rerun computes shard 4 again (the error log must not hold it twice)
    "error_log": (
        _variant(
            "enhance_scores_b1", "enhance_scores", "data.eval_batch_size=1", "data.predict_shard_rows=2"
        ),
        "errors:2",
        {},
    ),
    # TMPDIR on another filesystem (node-local /tmp, shared checkpoints): killed while last.ckpt is replaced
    "torn_checkpoint": (JOBS["clip_train"], "torn", _shm()),
}
"""Kills aimed at one known window each: ``(job, kill point, extra environment)``."""


def prepare(root: Path) -> dict[str, str]:
    """Write the campaign's inputs to ``root``: the photo source and two tiny local models (a chat Llama for the
    captioner, a Llama for the caption encoder), so that no job loads a real tokenizer (seconds each)."""
    from tests.helpers.photos import write_photo_jsonl
    from tests.helpers.tiny_hf import save_tiny_llm
    from tests.helpers.tiny_vlms import save_tiny_chat_llama

    (root / "photos").mkdir(parents=True, exist_ok=True)
    return {
        "data": str(write_photo_jsonl(root / "photos")),
        "chat_llm": save_tiny_chat_llama(root / "chat_llm"),
        "llm": save_tiny_llm(root / "llm", "llama"),
    }


def overrides(job: Job, files: Mapping[str, str]) -> list[str]:
    """The job's overrides with the campaign's files filled in."""
    out = []
    for o in job.overrides:
        for name, path in files.items():
            o = o.replace("{" + name + "}", path)
        out.append(o)
    return out


def environment(log_dir: Path) -> dict:
    """The environment of every run: this checkout first, one thread (identical numerics in every process)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "CLIPFORGE_LOG_DIR": str(log_dir),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }


# -- processes ----------------------------------------------------------------------------------------------------
_LAUNCHER = r"""
import importlib, json, os, sys, traceback
for name in ("torch", "lightning", "transformers", "timm", "clipforge.cli.train", "clipforge.cli.generate",
             "tests.helpers.faults"):
    importlib.import_module(name)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    while True:  # reap the runs that ended
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    pid = os.fork()
    if pid == 0:  # the run: a new session (its own process group), output to its log, the entry point's main()
        os.setsid()
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update(req["env"])
        sys.argv = [req["argv0"], *req["args"]]
        code = 1
        try:
            importlib.import_module(req["module"]).main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(req["log"] + ".exit.tmp", "w") as f:  # renamed: never seen half-written
                f.write(str(code))
            os.replace(req["log"] + ".exit.tmp", req["log"] + ".exit")
            os._exit(code)
    print(pid, flush=True)
"""


class Run:
    """A started run: ``pid`` (also its process-group id), ``poll()`` -> exit code or ``None`` while it runs."""

    def __init__(self, pid: int, log: Path, popen: subprocess.Popen | None = None) -> None:
        self.pid, self.log, self.popen = pid, log, popen

    def poll(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        if (code := self._exit_code()) is not None:
            return code
        try:  # forked by the launcher: gone or a zombie without an exit file = killed
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "X"
        if state not in ("Z", "X"):
            return None
        # it may have written its exit code and ended since the first look
        code = self._exit_code()
        return -signal.SIGKILL if code is None else code

    def _exit_code(self) -> int | None:
        exit_file = Path(str(self.log) + ".exit")
        text = exit_file.read_text() if exit_file.exists() else ""
        return int(text) if text else None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"run writing {self.log.parent} did not end in {timeout} s")
            time.sleep(0.02)
        return code

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Launcher:
    """Starts runs: forked from one pre-imported process (default) or spawned as ``python -m ...`` (``spawn=True``).

    Args:
        log_dir: ``CLIPFORGE_LOG_DIR`` of the runs.
        spawn: start every run as a fresh interpreter instead.
        env: more environment variables of every run (``TMPDIR``...).
    """

    def __init__(self, log_dir: Path, spawn: bool = False, env: Mapping[str, str] | None = None) -> None:
        self.log_dir, self.spawn, self.proc = log_dir, spawn, None
        self.env = {**environment(log_dir), **(env or {})}
        if not spawn:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
                cwd=ROOT,
            )
            if self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the launcher did not start")

    def start(self, job: Job, out: Path, args: Sequence[str]) -> Run:
        """Start ``job`` writing to ``out`` with the command-line ``args``; its output goes to ``out/run.log``."""
        out.mkdir(parents=True, exist_ok=True)
        log = out / "run.log"
        for stale in (log, Path(str(log) + ".exit"), Path(str(log) + ".exit.tmp")):
            stale.unlink(missing_ok=True)
        args = [*args, f"hydra.run.dir={out}"]
        if self.spawn:
            with open(log, "w") as f:
                popen = subprocess.Popen(
                    [sys.executable, "-m", f"clipforge.cli.{job.entry}", *args],
                    env=self.env,
                    cwd=ROOT,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group
                )
            return Run(popen.pid, log, popen)
        request = {
            "module": f"clipforge.cli.{job.entry}",
            "argv0": f"clipforge-{job.entry}",
            "args": args,
            "log": str(log),
            "env": {"CLIPFORGE_LOG_DIR": str(self.log_dir)},
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return Run(int(self.proc.stdout.readline()), log)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- trials ---------------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One kill and what the rerun gave.

    Attributes:
        job: job name.
        point: where the kill was aimed (``shards:2``, ``merge``, ``ckpt:1``, ``random:3.1s``).
        landed: the process was still running when SIGKILL was sent.
        state: what was on disk after the kill (``3/7 shards, not merged``, ``last.ckpt of epoch 0``).
        kill_s: seconds from the start of the killed run to the kill.
        reruns: runs it took to complete afterwards (more than 1 when the rerun was killed again in a chain).
        rows: rows (training: weight tensors) of the reference run; lost, duplicated, different: against it.
        files_differ: other output files that differ from the reference run's.
        max_weight_diff: training: largest absolute difference of a final weight.
        ok: nothing lost, duplicated or different.
    """

    job: str
    point: str
    landed: bool = False
    state: str = ""
    kill_s: float = 0.0
    reruns: int = 0
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    different: int = 0
    files_differ: list[str] = field(default_factory=list)
    max_weight_diff: float | None = None
    ok: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def last_ckpt(out: Path) -> Path:
    return out / "checkpoints" / "last.ckpt"


def resume_overrides(job: Job, out: Path) -> list[str]:
    """What a rerun adds to the command: training resumes from ``last.ckpt`` when there is one (README)."""
    return [f"ckpt_path={last_ckpt(out)}"] if job.entry == "train" and last_ckpt(out).exists() else []


def run(launcher: Launcher, job: Job, out: Path, files: Mapping[str, str], timeout: float = 600) -> float:
    """Run (or rerun) ``job`` into ``out`` to completion; returns its wall time.

    Raises:
        RuntimeError: the run failed (with the tail of its log).
    """
    start = time.monotonic()
    proc = launcher.start(job, out, [*overrides(job, files), *resume_overrides(job, out)])
    code = proc.wait(timeout)
    if code != 0:
        raise RuntimeError(f"{job.name} failed (exit {code}):\n{proc.tail()}")
    return time.monotonic() - start


def shards_done(out: Path) -> int:
    return len(shard_files(str(out / "shards")))


def shards_planned(out: Path) -> int | None:
    try:
        return len(json.loads((out / "shards" / "_plan.json").read_text()))
    except (OSError, ValueError):
        return None


def describe_state(job: Job, out: Path) -> str:
    """What a killed run left on disk, in words."""
    leftovers = sorted(p.name for p in out.rglob("*.tmp"))
    tail = f", leftover {', '.join(leftovers)}" if leftovers else ""
    if job.entry == "train":
        if not last_ckpt(out).exists():
            return "no checkpoint yet" + tail
        ckpt = torch.load(last_ckpt(out), map_location="cpu", weights_only=False)
        return f"last.ckpt of epoch {ckpt['epoch']} (step {ckpt['global_step']})" + tail
    planned = shards_planned(out)
    if planned is None:
        return "start-up (no shard plan yet)" + tail
    merged = "merged" if (out / "summary.json").exists() else "not merged"
    return f"{shards_done(out)}/{planned} shards, {merged}" + tail


def kill_at(
    launcher: Launcher,
    job: Job,
    out: Path,
    files: Mapping[str, str],
    point: str,
    throttle: float = 0.25,
    timeout: float = 600,
) -> tuple[bool, float]:
    """Start (or restart) the job, throttled, and SIGKILL its process group at ``point``.

    Returns:
        ``(landed, seconds)``: whether the process was still running at the kill, and when it was sent.
    """
    extra = [
        "+callbacks.throttle._target_=tests.helpers.faults.Throttle",
        f"+callbacks.throttle.seconds={throttle}",
    ]
    kind, _, arg = point.partition(":")

    def stamp_now() -> int | None:  # last.ckpt is replaced atomically: a new mtime = one more save
        return last_ckpt(out).stat().st_mtime_ns if last_ckpt(out).exists() else None

    saves, stamp, largest = 0, stamp_now(), 0
    proc = launcher.start(job, out, [*overrides(job, files), *resume_overrides(job, out), *extra])
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                return False, time.monotonic() - start  # ended before the kill point
            if kind == "shards":
                hit = shards_done(out) >= int(arg)
            elif kind == "merge":
                planned = shards_planned(out)
                hit = (
                    planned is not None
                    and shards_done(out) == planned
                    and not (out / "summary.json").exists()
                )
            elif kind == "errors":
                log = out / "data_errors.jsonl"
                hit = log.exists() and log.read_text().count("\n") >= int(arg)
            elif kind == "torn":  # last.ckpt being rewritten: its temporary file, or itself cut short
                try:
                    size = last_ckpt(out).stat().st_size
                except OSError:
                    size = None
                rewritten = size is not None and (size == 0 or size < largest)
                hit = rewritten or (size is not None and Path(f"{last_ckpt(out)}.tmp").exists())
                largest = max(largest, size or 0)
                if not hit:
                    continue  # no pause: the window is the write of a few MB
            elif kind == "ckpt":
                now = stamp_now()
                if now is not None and now != stamp:
                    saves, stamp = saves + 1, now
                hit = saves >= int(arg)
            elif kind == "random":
                hit = time.monotonic() - start >= float(arg.rstrip("s"))
            else:
                raise ValueError(f"unknown kill point {point!r}")
            if hit:
                proc.kill()
                return True, time.monotonic() - start
            time.sleep(0.01)
        raise TimeoutError(f"{job.name}: kill point {point} not reached in {timeout} s\n{proc.tail()}")
    finally:
        proc.kill()
        proc.wait(60)


# -- comparison -----------------------------------------------------------------------------------------------------
def _same(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def shard_rows(out: Path) -> list[dict]:
    """Every row of every output shard, error rows included, in shard order."""
    return [r for path in shard_files(str(out / "shards")) for r in read_shard(path)]


def compare_rows(reference: list[dict], rows: list[dict]) -> tuple[int, int, int]:
    """``(lost, duplicated, different)`` of ``rows`` against ``reference``, matching rows by key (and occurrence)."""
    ref_count = collections.Counter(r["key"] for r in reference)
    got_count = collections.Counter(r["key"] for r in rows)
    lost = sum(max(0, n - got_count[k]) for k, n in ref_count.items())
    duplicated = sum(max(0, n - ref_count[k]) for k, n in got_count.items())
    by_key: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_key[r["key"]].append(r)
    seen: collections.Counter = collections.Counter()
    different = 0
    for r in reference:
        i = seen[r["key"]]
        seen[r["key"]] += 1
        if i < len(by_key[r["key"]]) and not _same(r, by_key[r["key"]][i]):
            different += 1
    return lost, duplicated, different


def output_files(out: Path) -> dict[str, bytes]:
    """Every other output file of a run folder, with the folder's own path written as ``<run>``."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and rel.parts[0] not in RUN_FILES and p.suffix not in (".tmp", ".log"):
            files[str(rel)] = p.read_bytes().replace(str(out).encode(), b"<run>")
    return files


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= METRIC_RTOL * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def compare(job: Job, reference: Path, out: Path, trial: Trial) -> Trial:
    """Fill ``trial`` with the differences between the resumed run ``out`` and the uninterrupted ``reference``."""
    ref_files, files = output_files(reference), output_files(out)

    def same(name: str) -> bool:
        a, b = ref_files.get(name), files.get(name)
        if a == b:
            return True
        if job.entry == "train" and name.endswith(".json") and a is not None and b is not None:
            return _close(json.loads(a), json.loads(b))  # training metrics: see WEIGHT_TOLERANCE
        return False

    trial.files_differ = sorted(k for k in ref_files.keys() | files.keys() if not same(k))
    if job.entry == "train":
        a = torch.load(last_ckpt(reference), map_location="cpu", weights_only=False)
        b = torch.load(last_ckpt(out), map_location="cpu", weights_only=False)
        sa, sb = a["state_dict"], b["state_dict"]
        trial.rows = len(sa)
        trial.lost, trial.duplicated = len(sa.keys() - sb.keys()), len(sb.keys() - sa.keys())
        diffs = [(sa[k].double() - sb[k].double()).abs().max().item() for k in sa.keys() & sb.keys()]
        trial.max_weight_diff = max(diffs, default=0.0)
        moved = (a["epoch"], a["global_step"]) != (b["epoch"], b["global_step"])
        trial.different = sum(d > WEIGHT_TOLERANCE for d in diffs) + int(moved)
    else:
        ref_rows, rows = shard_rows(reference), shard_rows(out)
        trial.rows = len(ref_rows)
        trial.lost, trial.duplicated, trial.different = compare_rows(ref_rows, rows)
    trial.ok = not (trial.lost or trial.duplicated or trial.different or trial.files_differ)
    return trial


# -- campaign -------------------------------------------------------------------------------------------------------
def chain(
    launcher: Launcher,
    job: Job,
    reference: Path,
    out: Path,
    files: Mapping[str, str],
    points: Sequence[str],
    throttle: float = 0.25,
) -> list[Trial]:
    """Kill the job at each of ``points`` in turn (each rerun killed at the next point), then rerun it to completion
    and compare with ``reference``; every trial of the chain is given that final outcome."""
    trials = []
    for point in points:
        trial = Trial(job.name, point)
        trial.landed, trial.kill_s = kill_at(launcher, job, out, files, point, throttle)
        trial.state = describe_state(job, out) if trial.landed else "ended before the kill"
        trials.append(trial)
    run(launcher, job, out, files)
    for i, trial in enumerate(trials):
        trial.reruns = len(trials) - i
        compare(job, reference, out, trial)
    return trials


def progress_points(job: Job) -> list[str]:
    """The progress-based kill points of a job, in one chain."""
    if job.entry == "train":
        return ["ckpt:1", "ckpt:1"]  # after epoch 0's checkpoint, then the rerun's after epoch 1
    return ["shards:1", "shards:3", "merge"]


def random_points(seed: int, n: int, job: Job, reference_s: float, throttle: float = 0.25) -> list[str]:
    """``n`` seeded kill times over a throttled run (the reference run's time plus the pauses)."""
    rng = random.Random(seed)
    duration = reference_s + job.batches * throttle
    return [f"random:{rng.uniform(0.05, 1.0) * duration:.2f}s" for _ in range(n)]


def table(trials: Sequence[Trial]) -> str:
    """The trials as a Markdown table."""
    lines = [
        "| job | kill point | landed | state after the kill | rows | lost | dup | diff | other outputs | max Δw |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for t in trials:
        dw = "" if t.max_weight_diff is None else f"{t.max_weight_diff:.1e}"
        lines.append(
            f"| {t.job} | {t.point} | {'yes' if t.landed else 'no'} | {t.state} | {t.rows} | {t.lost} | "
            f"{t.duplicated} | {t.different} | {', '.join(t.files_differ) or 'identical'} | {dw} |"
        )
    return "\n".join(lines)
