"""The judge cache's SQLite file: schema, row checksums, open / check / repair / migrate (:mod:`em.judge.cache`).

Schema version 2 (``PRAGMA user_version``): ``judgments`` (key, judge identity, JSON value, checksum),
``claims`` (key, owner, claimed) and ``owners`` (owner, pid, host, started, heartbeat counter). A file that
does not open as a database is moved aside to ``<file>.corrupt`` (``.corrupt.1``, ...) and rebuilt; a
version-1 file (no checksum column) is migrated in place. Both say so in one warning line. Open / check /
repair / migrate run under an ``flock`` on ``<file>.lock`` so concurrent processes do not repair twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("em.judge")

SCHEMA_VERSION = 2
# SQLite's primary result codes for "this file is not a (sound) database" (sqlite3.Error.sqlite_errorcode & 0xff)
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judge TEXT, value TEXT, checksum TEXT)",
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL)",
    "CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, pid INTEGER, host TEXT, started REAL, "
    "beat INTEGER NOT NULL DEFAULT 0)",
)


def entry_checksum(key: str, judge_id: Optional[str], value: Optional[str]) -> str:
    """The checksum stored with a cache row: sha256 hex of ``[key, judge identity, stored JSON value]``."""
    return hashlib.sha256(json.dumps([key, judge_id, value]).encode()).hexdigest()


class CacheCorrupt(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged (raised internally; the file is then moved aside)."""


def is_corrupt(e: sqlite3.Error) -> bool:
    """Does ``e`` say the file is not a sound database (not: busy, locked, unwritable)?"""
    if isinstance(e, CacheCorrupt):
        return True
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    msg = str(e).lower()
    return "not a database" in msg or "malformed" in msg


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` alive on this host (a zombie counts as dead: it will never answer)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextmanager
def open_lock(path: Path) -> Iterator[None]:
    """Serialise open / check / repair / migrate of one cache file among processes (``<file>.lock``, flock).

    On a filesystem without locks the check goes on unlocked (a repair race there only loses what the other
    process wrote in the same second)."""
    try:
        fd = os.open(str(path.with_name(path.name + ".lock")), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def open_database(path: Path) -> tuple[sqlite3.Connection, Optional[Path], int]:
    """Open the cache file at ``path`` (its directory is created), checked: (the connection in autocommit
    mode, where a damaged file was moved or None, version-1 rows migrated).

    Raises:
        sqlite3.Error: the file cannot be opened for another reason than damage (permissions, a full disk,
            busy for 60 s) -- it is left where it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(path):
        try:
            db, migrated = _connect(path)
            return db, None, migrated
        except sqlite3.DatabaseError as e:
            if not is_corrupt(e):
                raise
            moved = _move_aside(path, e)
        db, migrated = _connect(path)
        return db, moved, migrated


def _connect(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open, check and create / migrate; (the connection, version-1 rows migrated)."""
    db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        db.execute("PRAGMA synchronous=NORMAL")  # durable on commit in WAL mode, much faster
        db.execute("PRAGMA journal_size_limit=524288")  # a reset WAL is truncated to <= 512 kB
        row = db.execute("PRAGMA quick_check(1)").fetchone()
        if not row or row[0] != "ok":
            raise CacheCorrupt(f"quick_check: {row[0] if row else 'no answer'}")
        migrated = _create_or_migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db, migrated


def _create_or_migrate(db: sqlite3.Connection, path: Path) -> int:
    """Create the tables, or migrate a version-1 file (one line); the number of rows given checksums."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return 0
    migrated = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(judgments)")]
        for stmt in SCHEMA:
            db.execute(stmt)
        if cols and "checksum" not in cols:  # version 1: give every row the checksum of what it holds now
            db.execute("ALTER TABLE judgments ADD COLUMN checksum TEXT")
            rows = db.execute("SELECT key, judge, value FROM judgments").fetchall()
            db.executemany("UPDATE judgments SET checksum = ? WHERE key = ?",
                           [(entry_checksum(k, j, v), k) for k, j, v in rows])
            migrated = len(rows)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if migrated:
        log.warning("judge cache %s: migrated from version 1; its %d judgments were given checksums of what "
                    "they hold now (they are still validated as judgments when read)", path, migrated)
    return migrated


def _move_aside(path: Path, e: sqlite3.Error) -> Path:
    """Move a damaged file (and its journal) to ``<file>.corrupt[.n]``, one line; where it went."""
    dest = path.with_name(path.name + ".corrupt")
    n = 0
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, dest)
    for suffix in ("-wal", "-shm"):  # the journal belongs to the damaged file: it must not meet the new one
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, dest.with_name(dest.name + suffix))
    reason = " ".join(str(e).split()) or type(e).__name__
    log.warning("judge cache %s does not open (%s): moved aside to %s; starting an empty cache (its "
                "judgments will be asked again)", path, reason, dest.name)
    return dest


__all__ = ["CacheCorrupt", "SCHEMA_VERSION", "entry_checksum", "is_corrupt", "open_database", "pid_alive"]
