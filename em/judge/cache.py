"""On-disk judge cache: (judge identity, rendered prompt) -> judgment, in one SQLite file.

Keyed by the judge's endpoint + model (+ anything else that changes its answer) and the exact prompt text,
so re-running, resuming, or adding a format / question never re-asks a prompt that was judged. Only final
judgments are stored (a score, a label, or a deterministic "no score" such as < 0.25 mass); failures after
retries are not, so the next run asks again. SQLite gives atomic writes that survive a kill and lets
several evaluation processes share one cache.

Trust (schema version 2, ``PRAGMA user_version``; the file itself: :mod:`em.judge.cache_db`):

- every row carries ``checksum`` = sha256 of (key, judge identity, stored value): a row changed on disk after
  it was written (one flipped byte turns a score of 6.31 into 96.08 and still passes SQLite's
  ``integrity_check``) fails it, is treated as a miss (asked again, the fresh judgment replaces it) and is
  counted in one warning line per lookup;
- a file that does not open as a database (truncated, overwritten, not SQLite at all) is moved aside to
  ``<file>.corrupt`` (``.corrupt.1``, ... when taken) and an empty cache is built in its place, with one
  warning line naming both; :func:`check_cache` runs this when an evaluation starts, before any sampling;
- a version-1 cache (no ``checksum`` column, em before this change) is migrated in place when first opened:
  the column is added and its rows get checksums of what they hold now (they could not be verified before;
  they are still validated as judgments when read), with one line saying how many.

Sharing (several processes on one cache file, possibly on several machines over shared storage): a process
*claims* a key (a row in ``claims`` naming its owner: pid, host, start time, a heartbeat counter) in the same
transaction that re-checks the cache just before it asks, so a prompt another process has judged or is judging
is never paid for twice: its answer is read or waited for instead. A claim whose owner is gone is taken over:
at once when the owner ran on this host and its pid is dead; otherwise when the owner's heartbeat (a counter a
thread of the owner bumps every ``heartbeat_s``) has not moved for ``stale_after_s`` seconds of the waiter's own
monotonic clock (no wall-clock comparison between machines). The WAL is checkpointed every ``checkpoint_every``
writes and truncated on close, so it stays small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional

from em.judge.cache_db import entry_checksum, open_database, pid_alive
from em.judge.scoring import Judgment, JudgeRequest, unsound

log = logging.getLogger("em.judge")


def cache_key(judge_id: str, prompt: str) -> str:
    """The SQLite key of (judge identity, text): a 64-character sha256 hex digest of both, JSON-encoded."""
    return hashlib.sha256(json.dumps([judge_id, prompt]).encode()).hexdigest()


def request_key(judge_id: str, req: JudgeRequest) -> str:
    """The cache key of one request to one judge: identity + rendered prompt + kind (``0_100`` / ``label``).

    Also the ``custom_id`` of the request's Batch API line, so a batch's results land in the same cache entries
    as the synchronous path's."""
    return cache_key(judge_id, req.prompt + "\x00" + req.kind)


class JudgeCache:
    """The judgments of every judge, in one SQLite file (or nothing at all when ``path`` is None).

    Args:
        path: the SQLite file (its directory is created); None: a cache that holds nothing and stores nothing.
        stale_after_s: a claim whose owner's heartbeat has not moved for this many seconds (of this process's
            monotonic clock) is taken over; an owner on this host whose pid is dead is taken over at once.
        heartbeat_s: how often this process bumps its heartbeat while it holds claims.
        checkpoint_every: writes between two WAL checkpoints (``PRAGMA wal_checkpoint(PASSIVE)``).

    Opening checks the file (module docstring): a damaged database is moved aside and rebuilt, an old one
    migrated. Not thread-safe: one thread uses it (the heartbeat thread has its own connection).
    """

    def __init__(self, path: Optional[str | Path], stale_after_s: float = 60.0, heartbeat_s: float = 5.0,
                 checkpoint_every: int = 32):
        self.path = Path(path).expanduser() if path else None
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = float(heartbeat_s)
        self.checkpoint_every = int(checkpoint_every)
        self.moved_aside: Optional[Path] = None  # where a damaged file went (None: it opened)
        self.migrated = 0  # version-1 rows given checksums when this object opened the file
        self.mismatches = 0  # rows that failed their checksum, over this object's lifetime
        self.taken_over = 0  # claims of dead / silent owners this process took over
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._db: Optional[sqlite3.Connection] = None
        self._writes = 0
        self._registered = False
        self._seen: dict[str, tuple[int, float]] = {}  # other owner -> (beat seen, monotonic time first seen)
        self._announced: set[str] = set()
        self._stop = threading.Event()
        self._beat_thread: Optional[threading.Thread] = None
        if self.path is not None:  # checked: a damaged file moved aside and rebuilt, an old one migrated
            self._db, self.moved_aside, self.migrated = open_database(self.path)

    # ------------------------------------------------------------------ reads and writes
    def _verified(self, key: str, judge: Optional[str], value: Optional[str], checksum: Optional[str]
                  ) -> tuple[Optional[Judgment], Optional[str]]:
        """(the row's judgment, None) or (None, why it cannot be served: ``checksum`` or the soundness problem)."""
        if checksum is None or checksum != entry_checksum(key, judge, value):
            return None, "checksum"
        try:
            j = Judgment.from_dict(json.loads(value))
            problem = unsound(j) or (None if j.final else "not final")
        except (ValueError, TypeError) as e:
            problem = f"unreadable entry ({type(e).__name__})"
        return (None, problem) if problem else (j, None)

    def get_many(self, keys: Iterable[str]) -> dict[str, Judgment]:
        """key -> judgment for the keys the cache holds (missing keys are left out).

        Every entry is verified as it is read: its checksum (a row changed on disk since it was written) and
        its soundness (:func:`em.judge.scoring.unsound`: a NaN score or an unsound logprob an older version
        cached). One that fails is left out, so it is asked again and the fresh judgment replaces it; one
        warning line counts them."""
        if self._db is None:
            return {}
        keys = list(keys)
        out: dict[str, Judgment] = {}
        bad: list[str] = []
        mismatched = 0
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, judge, value, checksum FROM judgments WHERE key IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            for k, judge, v, c in rows:
                j, problem = self._verified(k, judge, v, c)
                if problem == "checksum":
                    mismatched += 1
                elif problem:
                    bad.append(problem)
                else:
                    out[k] = j
        self.mismatches += mismatched
        if mismatched or bad:
            parts = ([f"{mismatched} failed their checksum (changed on disk since they were written)"]
                     if mismatched else []) + ([f"{len(bad)} unsound (first: {bad[0]})"] if bad else [])
            log.warning("judge cache %s: %d entries ignored and asked again: %s", self.path,
                        mismatched + len(bad), "; ".join(parts))
        return out

    def put(self, key: str, judge_id: str, judgment: Judgment) -> None:
        """Store a final judgment under ``key`` with its checksum and drop this process's claim on it (one
        transaction); a failure (``final=False``) is not stored, its claim is released."""
        if self._db is None:
            return
        if not judgment.final:
            self.release(key)
            return
        value = json.dumps(judgment.to_dict())
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT OR REPLACE INTO judgments (key, judge, value, checksum) VALUES (?, ?, ?, ?)",
                             (key, judge_id, value, entry_checksum(key, judge_id, value)))
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._wrote()

    # ------------------------------------------------------------------ claims (several processes, one cache)
    def claim(self, key: str) -> tuple[str, Optional[Judgment]]:
        """Re-check the cache for ``key`` and claim it, in one transaction, just before asking a judge.

        A key that is cached or held by a live owner is answered from a plain read (no write lock: processes
        waiting on each other's keys do not slow the writers down); only a free or stale key takes the write
        lock, looks again and inserts the claim.

        Returns:
            ``("cached", judgment)``: another process stored it meanwhile (nothing to ask);
            ``("mine", None)``: this process holds the claim now and should ask (also with no cache file);
            ``("busy", None)``: another live process holds the claim: wait and call again.
        """
        if self._db is None:
            return "mine", None
        self._register()
        status, judgment, _ = self._look(key)
        if status != "free":
            return status, judgment
        self._db.execute("BEGIN IMMEDIATE")
        try:
            status, judgment, holder = self._look(key)
            if status != "free":
                self._db.execute("COMMIT")
                return status, judgment
            if holder is not None and holder != self.owner:
                self.taken_over += 1
            self._db.execute("INSERT OR REPLACE INTO claims (key, owner, claimed) VALUES (?, ?, ?)",
                             (key, self.owner, time.time()))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._wrote()
        return "mine", None

    def _look(self, key: str) -> tuple[str, Optional[Judgment], Optional[str]]:
        """(``cached`` / ``busy`` / ``free``, the cached judgment, the claim's owner if any) for ``key``."""
        row = self._db.execute("SELECT judge, value, checksum FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is not None:
            j, _ = self._verified(key, *row)
            if j is not None:
                return "cached", j, None
        held = self._db.execute("SELECT owner FROM claims WHERE key = ?", (key,)).fetchone()
        holder = held[0] if held else None
        if holder is not None and holder != self.owner and not self._stale(holder):
            return "busy", None, holder
        return "free", None, holder

    def release(self, key: str) -> None:
        """Drop this process's claim on ``key`` (its judgment failed or was never asked): another may ask."""
        if self._db is None or not self._registered:
            return
        self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))
        self._wrote()

    def _stale(self, owner: str) -> bool:
        """Is ``owner`` gone: its row missing, its pid dead on this host, or its heartbeat still for
        ``stale_after_s`` seconds of this process's monotonic clock?"""
        row = self._db.execute("SELECT pid, host, beat FROM owners WHERE owner = ?", (owner,)).fetchone()
        if row is None:
            why = "no owner record"
        elif row[1] == socket.gethostname() and not pid_alive(int(row[0])):
            why = "process gone"
        else:
            beat, now = int(row[2]), time.monotonic()
            seen = self._seen.get(owner)
            if seen is None or seen[0] != beat:
                self._seen[owner] = (beat, now)
                return False
            if now - seen[1] < self.stale_after_s:
                return False
            why = f"no heartbeat for {now - seen[1]:.0f} s"
        if owner not in self._announced:
            self._announced.add(owner)
            pid, host = (row[0], row[1]) if row else ("?", "?")
            log.warning("judge cache %s: taking over the claims of pid %s on %s (%s); its pending prompts are "
                        "asked here", self.path, pid, host, why)
        return True

    def _register(self) -> None:
        """Record this process as an owner and start its heartbeat (once, on the first claim)."""
        if self._registered:
            return
        host, pid = socket.gethostname(), os.getpid()
        self._db.execute("INSERT OR REPLACE INTO owners (owner, pid, host, started, beat) VALUES (?, ?, ?, ?, 0)",
                         (self.owner, pid, host, time.time()))
        self._registered = True
        self._beat_thread = threading.Thread(target=self._heartbeat, args=(pid, host), daemon=True,
                                             name="em-judge-cache-heartbeat")
        self._beat_thread.start()

    def _heartbeat(self, pid: int, host: str) -> None:
        db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not db.execute("UPDATE owners SET beat = beat + 1 WHERE owner = ?", (self.owner,)).rowcount:
                        # taken for gone while it was paused (suspended, a long GC): say it lives again
                        db.execute("INSERT OR REPLACE INTO owners (owner, pid, host, started, beat) "
                                   "VALUES (?, ?, ?, ?, 1)", (self.owner, pid, host, time.time()))
                except sqlite3.Error as e:  # a busy or unwritable cache: the next beat tries again
                    log.debug("judge cache heartbeat: %s", e)
        finally:
            db.close()

    def _wrote(self) -> None:
        self._writes += 1
        if self.checkpoint_every and self._writes % self.checkpoint_every == 0:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def __len__(self) -> int:
        """The number of stored judgments."""
        if self._db is None:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        """Release this process's claims, checkpoint and truncate the WAL, close the database (idempotent)."""
        if self._db is None:
            return
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(10)
        try:
            if self._registered:
                self._db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
                self._db.execute("DELETE FROM owners WHERE owner = ?", (self.owner,))
            self._db.execute("PRAGMA busy_timeout=2000")  # another process busy reading: leave the rest to it
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.debug("judge cache close: %s", e)
        finally:
            self._db.close()
            self._db = None


def check_cache(path: Optional[str | Path]) -> None:
    """Open the cache at ``path`` once and close it: a damaged file is moved aside and rebuilt, an old one is
    migrated (one line each) -- what an evaluation runs when it starts, before any answer is sampled."""
    if path:
        JudgeCache(path).close()


__all__ = ["JudgeCache", "cache_key", "check_cache", "entry_checksum", "request_key"]
