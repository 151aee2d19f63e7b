"""The kill campaign's view of a forked run (``tests.helpers.faults.Run``): an ended run reports its own exit code,
even when it ends between the two looks ``poll()`` takes (its exit file, then ``/proc``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.helpers import faults
from tests.helpers.faults import Run


def _zombie() -> subprocess.Popen:
    """A child that has exited and not been reaped: ``/proc/<pid>/stat`` says ``Z``, as a finished forked run does."""
    child = subprocess.Popen(["true"])
    for _ in range(500):
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return child
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


def test_a_run_that_ends_between_the_exit_file_and_proc_reports_its_exit_code(tmp_path, monkeypatch):
    log = tmp_path / "run.log"
    exit_file = Path(str(log) + ".exit")
    exit_file.write_text("")  # the run has opened its exit file, not yet written it
    child = _zombie()
    real = faults.Path.read_text

    def read_text(self, *args, **kwargs):
        text = real(self, *args, **kwargs)
        if self == exit_file and not text:
            exit_file.write_text("0")  # ... and finishes writing it and exits right after this look
        return text

    monkeypatch.setattr(faults.Path, "read_text", read_text)
    try:
        assert Run(child.pid, log).poll() == 0
    finally:
        child.wait()


def test_a_killed_run_reports_sigkill(tmp_path):
    child = _zombie()
    try:
        assert Run(child.pid, tmp_path / "run.log").poll() == -9
    finally:
        child.wait()
