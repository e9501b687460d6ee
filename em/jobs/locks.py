"""One writer per directory: an advisory lock file held while a job, a training run or an evaluation writes.

``<dir>/.em.lock`` is locked with ``fcntl.flock`` (the kernel releases it when the holder dies, however it
dies: kill -9, OOM, a node lost) and holds the holder's ``pid``, ``host`` and ``started`` (unix s) as JSON, so
a second writer is refused with one line naming who holds it. A lock file that still names a holder but is
not locked is stale (its process is gone): it is taken over with a message. On a filesystem without locks
(some network mounts answer ENOLCK / EOPNOTSUPP) the run goes on unlocked, with a warning.

Light on purpose (stdlib only): taken before anything heavy is imported. The file is never deleted (deleting
a lock file lets two processes lock two different files); releasing empties it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from em.errors import EMError

log = logging.getLogger("em.jobs.locks")

LOCK_FILE = ".em.lock"


class DirectoryLocked(EMError):
    """Another live process writes this directory (the message names its pid, host and start time)."""


def _describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (started {when}, {info.get('what', 'a run')})"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        info = json.loads(raw) if raw.strip() else {}
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


class DirLock:
    """The lock of one directory; a context manager (``with DirLock(d, "evaluation"):``).

    Args:
        directory: the directory written (created when missing).
        what: what holds it, for the refusal message (``training``, ``evaluation``, ``job``).

    Skipped (a no-op) in a non-zero rank of a multi-process training job (``RANK`` / ``LOCAL_RANK`` set and
    not 0): rank 0 holds the job's lock for all of them.
    """

    def __init__(self, directory: str | Path, what: str = "a run"):
        self.path = Path(directory) / LOCK_FILE
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "DirLock":
        """Take the lock (never waits).

        Raises:
            DirectoryLocked: another live process holds it: ``<dir> is being written by pid <p> on <host>
                (started <time>, <what>); wait for it or stop it``.
        """
        if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                info = _read(fd)
                os.close(fd)
                raise DirectoryLocked(f"{self.path.parent} is being written by {_describe(info)}; wait for it to "
                                      f"finish or stop it (lock file {self.path})") from None
            os.close(fd)  # ENOLCK / EOPNOTSUPP: a filesystem without locks
            log.warning("cannot lock %s (%s): going on without a lock", self.path, e.strerror)
            return self
        prev = _read(fd)
        if prev.get("pid"):
            print(f"{self.path.parent}: taking over a stale lock of {_describe(prev)}: that process is gone")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                  "what": self.what}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and unlock it (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str | Path) -> Optional[str]:
    """Who the lock file of ``directory`` names (``pid <p> on <host> (started ..., <what>)``), or None when it
    names no one (never locked, or released). A named holder is alive or its lock is stale."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = _read(fd)
    finally:
        os.close(fd)
    return _describe(info) if info.get("pid") else None


__all__ = ["DirLock", "DirectoryLocked", "LOCK_FILE", "holder"]
