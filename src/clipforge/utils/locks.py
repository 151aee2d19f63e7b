"""An exclusive lock on an output folder, so that two live jobs never write the same folder.

The lock is ``<folder>/_lock``, held with ``fcntl.flock`` for as long as the job runs; the file records the
holder's pid and host for the refusal message. The kernel drops the lock when its process dies, ``kill -9``
included, so a lock left by a killed job never blocks the rerun that resumes it. On a file system without
``flock`` support the recorded pid is checked instead: a holder on this host whose pid is no longer alive is
stale and is replaced; a holder on another host cannot be checked and is refused (delete the file once that job
is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket

__all__ = ["FolderLock", "FolderLockedError"]

LOCK_NAME = "_lock"


class FolderLockedError(RuntimeError):
    """Another live job holds the folder's lock; the message is one line naming the folder and the holder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class FolderLock:
    """Exclusive, non-blocking lock on ``folder`` (created if missing); re-entrant within one instance.

    Args:
        folder: the output folder to lock.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock."""
        return self._fd is not None

    def _holder(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> FolderLockedError:
        who = f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")
        return FolderLockedError(
            f"{self.folder} is being written by another job ({who}); wait for it to end or write elsewhere "
            "(e.g. paths.output_dir=... or run_name=...)"
        )

    def acquire(self) -> None:
        """Take the lock, or raise :class:`FolderLockedError` if a live job holds it.

        Raises:
            FolderLockedError: another live process (or another instance in this one) holds the lock.
        """
        if self._fd is not None:
            self._depth += 1
            return
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise self._refuse(holder) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            holder = self._holder(fd)  # no flock on this file system: judge the recorded holder
            alive = holder.get("pid") is not None and (
                holder.get("host") != socket.gethostname() or _pid_alive(int(holder["pid"]))
            )
            if alive and holder.get("pid") != os.getpid():
                os.close(fd)
                raise self._refuse(holder) from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would let two jobs lock two different files)."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
